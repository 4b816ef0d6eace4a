"""Side-by-side benchmark of presenced, Prosody and ejabberd under one load client; prints JSON.

Each server runs privately, one after the other on this machine: its own config and data
directory under a temporary directory, XMPP on a free loopback port, the accounts created
in bulk before the clock starts, every account's password stored as salted SCRAM keys at
the same 4 096 PBKDF2 iterations (presenced's default; Prosody ``internal_hashed``, whose
own default is 10 000, gets account files written directly; ejabberd
``auth_password_format: scram`` registers them through its HTTP API; a second ejabberd run,
``ejabberd-plain-passwords``, keeps them as they are, ejabberd's default). Then the load client
of ``bench/xmpp.py`` (:func:`bench.xmpp.drive`, the same processes and phases) measures
PLAIN logins over plain TCP, the memory per idle session, chat messages flat out and paced,
STARTTLS + SCRAM-SHA-1 logins, and the same PLAIN logins again (repeat logins). The JSON
gives each server's figures, presenced's
ratio to each peer (``presenced / peer``: above 1 is better for rates, below 1 for memory,
CPU and latency) and the load average during each run.

Peers come from Debian (``bench/install-peers.sh``); a peer that is not installed is
reported as such and skipped. presenced runs the bench config of ``bench/xmpp.py``
(hibernation after 1 s, PLAIN allowed without TLS).

    python3 bench/peers.py --users 2000 --messages 20

``--baseline CHECKOUT`` adds presenced from another checkout (``presenced-baseline``) to the
same run, so a change's before and after stand beside the peers' figures.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.procs import free_port  # noqa: E402
from bench.xmpp import PASSWORD, LoadPlan, drive, import_users, start_server  # noqa: E402

ITERATIONS = 4096
START_TIMEOUT = 60.0
# Every server listens with a backlog of 1024 (presenced's): ejabberd's default of 5 drops
# the connections of a login storm, which then wait for SYN retries.
# Higher is better for these; for every other figure compared, lower is.
RATES = ("login_plain_per_s", "login_plain_repeat_per_s", "login_starttls_scram_per_s",
         "messages_per_s")
COMPARED = RATES + ("idle_rss_kb_per_session", "server_cpu_ms_per_login_plain",
                    "server_cpu_ms_per_login_plain_repeat",
                    "server_cpu_ms_per_login_starttls_scram", "server_cpu_us_per_message",
                    "paced_latency_p50_ms", "paced_latency_p99_ms")


class Server:
    """One running server under test: its process, XMPP port and how to stop it."""

    def __init__(self, process: subprocess.Popen, port: int, version: str):
        self.process = process
        self.port = port
        self.version = version

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the server did not listen on {port}: see {log}")


def debian_version(package: str) -> str:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                            capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for ``localhost`` (the peers' STARTTLS)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    return cert, key


# --- presenced -------------------------------------------------------------------------------

def start_presenced(directory: Path, users: list[str], checkout: Path = REPO) -> Server:
    process, port, config = start_server(directory, ITERATIONS, checkout=checkout)
    try:
        import_users(config, users, directory, checkout)
    except BaseException:
        Server(process, port, "").stop()
        raise
    version = subprocess.run([sys.executable, "-c",
                              "import presenced; print(presenced.__version__)"],
                             capture_output=True, text=True, cwd=checkout).stdout.strip()
    return Server(process, port, version or "checkout")


# --- Prosody ---------------------------------------------------------------------------------

PROSODY_CONFIG = """
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
run_as_root = true
log = {{ warn = "{dir}/prosody.log" }}
interfaces = {{ "127.0.0.1" }}
tcp_backlog = 1024
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "disco"; "ping"; "presence"; "message"; "iq" }}
modules_disabled = {{ "s2s"; "offline"; "c2s_limits" }}
authentication = "internal_hashed"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
ssl = {{ certificate = "{cert}"; key = "{key}" }}
VirtualHost "localhost"
"""


def prosody_account(user: str) -> tuple[str, str]:
    """(file name, contents) of an ``internal_hashed`` account file (Prosody's datamanager
    layout: ``<data>/<host>/accounts/<user>.dat``, a Lua table)."""
    node = user.partition("@")[0]
    salt = str(uuid.uuid4())
    salted = hashlib.pbkdf2_hmac("sha1", PASSWORD.encode(), salt.encode(), ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", "sha1").digest()
    stored = hashlib.sha1(client_key).hexdigest()
    server = hmac.new(salted, b"Server Key", "sha1").hexdigest()
    return (f"{node}.dat", f'return {{\n\t["iteration_count"] = {ITERATIONS};\n'
                           f'\t["salt"] = "{salt}";\n\t["stored_key"] = "{stored}";\n'
                           f'\t["server_key"] = "{server}";\n}};\n')


def start_prosody(directory: Path, users: list[str]) -> Server:
    cert, key = self_signed(directory)
    accounts = directory / "data" / "localhost" / "accounts"
    accounts.mkdir(parents=True)
    with multiprocessing.Pool() as pool:  # PBKDF2 per account on every core
        for name, text in pool.imap_unordered(prosody_account, users, chunksize=64):
            (accounts / name).write_text(text)
    port = free_port()
    config = directory / "prosody.cfg.lua"
    config.write_text(PROSODY_CONFIG.format(dir=directory, port=port, cert=cert, key=key))
    log = directory / "prosody.out"
    with open(log, "wb") as out:
        process = subprocess.Popen(["prosody", "-F", "--config", str(config)], stdout=out,
                                   stderr=subprocess.STDOUT, cwd=directory)
    wait_for_port(port, process, log)
    return Server(process, port, debian_version("prosody"))


# --- ejabberd --------------------------------------------------------------------------------

EJABBERD_CONFIG = """
hosts: [localhost]
loglevel: warning
certfiles: ["{pem}"]
auth_method: internal
auth_password_format: {password_format}
listen:
  - port: {port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls: true
    backlog: 1024
  - port: {http}
    ip: "127.0.0.1"
    module: ejabberd_http
    request_handlers:
      /api: mod_http_api
api_permissions:
  "bench accounts":
    from: [mod_http_api]
    who:
      ip: 127.0.0.1/8
    what: [register]
modules:
  mod_roster: {{}}
  mod_disco: {{}}
  mod_http_api: {{}}
"""


def start_ejabberd(directory: Path, users: list[str], password_format: str = "scram") -> Server:
    """ejabberd's VM started directly (``erl -s ejabberd``, as ``ejabberdctl foreground``
    does, but as this user and without Erlang distribution: no epmd, no cookie).
    ``password_format`` "plain" keeps the passwords themselves (ejabberd's default): PLAIN
    then needs no PBKDF2, SCRAM derives the keys at every login."""
    cert, key = self_signed(directory)
    pem = directory / "ejabberd.pem"
    pem.write_text(cert.read_text() + key.read_text())
    port, http = free_port(), free_port()
    config = directory / "ejabberd.yml"
    config.write_text(EJABBERD_CONFIG.format(pem=pem, port=port, http=http,
                                             password_format=password_format))
    (directory / "spool").mkdir()
    log = directory / "ejabberd.log"
    env = dict(os.environ, EJABBERD_CONFIG_PATH=str(config), EJABBERD_LOG_PATH=str(log),
               ERL_LIBS="/usr/lib/x86_64-linux-gnu", HOME=str(directory),
               ERL_CRASH_DUMP=str(directory / "erl_crash.dump"))
    with open(directory / "ejabberd.out", "wb") as out:
        process = subprocess.Popen(
            ["erl", "+K", "true", "+P", "1000000", "-noinput", "-mnesia", "dir",
             f'"{directory / "spool"}"', "-s", "ejabberd"], env=env, stdout=out,
            stderr=subprocess.STDOUT, cwd=directory)
    server = Server(process, port, debian_version("ejabberd"))
    try:
        wait_for_port(http, process, log)
        wait_for_port(port, process, log)
        register_all(http, users, process)
    except BaseException:
        server.stop()
        raise
    return server


def register_all(http: int, users: list[str], process: subprocess.Popen) -> None:
    """The accounts, through ejabberd's HTTP API (``register``), eight at a time."""

    def register(user: str) -> None:
        body = json.dumps({"user": user.partition("@")[0], "host": "localhost",
                           "password": PASSWORD}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{http}/api/register", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    deadline = time.monotonic() + START_TIMEOUT
    while True:  # the HTTP listener accepts before the API answers
        try:
            register(users[0])
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise
            time.sleep(0.2)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(register, users[1:]))


PEERS: dict[str, tuple[Optional[str], Callable[[Path, list[str]], Server]]] = {
    "presenced": (None, start_presenced),
    "prosody": ("prosody", start_prosody),
    "ejabberd": ("erl", start_ejabberd),
    "ejabberd-plain-passwords": ("erl", partial(start_ejabberd, password_format="plain")),
}


def ratios(ours: dict, theirs: dict) -> dict:
    """presenced's figure over the peer's, for every figure both have."""
    out = {}
    for key in COMPARED:
        a, b = ours.get(key), theirs.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
            out[key] = round(a / b, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=20, help="messages per client")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="logins in flight per load process")
    parser.add_argument("--procs", type=int, default=2, help="load client processes")
    parser.add_argument("--paced-rate", type=float, default=5000.0)
    parser.add_argument("--servers", default=",".join(PEERS),
                        help="comma-separated, run in this order")
    parser.add_argument("--baseline", metavar="CHECKOUT", type=Path,
                        help="another presenced checkout, run as server 'presenced-baseline' "
                             "(name it in --servers; default: first): before/after in one run")
    args = parser.parse_args()
    if args.baseline is not None:
        PEERS["presenced-baseline"] = (None, partial(start_presenced,
                                                     checkout=args.baseline.resolve()))
        if "presenced-baseline" not in args.servers.split(","):
            args.servers = "presenced-baseline," + args.servers
    users = [f"bench{i}@localhost" for i in range(args.users - args.users % 2)]
    plan = LoadPlan(args.procs, args.concurrency, args.messages, args.paced_rate)
    results: dict[str, dict] = {}
    for name in args.servers.split(","):
        binary, start = PEERS[name]
        if binary is not None and shutil.which(binary) is None:
            results[name] = {"skipped": f"{binary} is not installed (bench/install-peers.sh)"}
            continue
        with tempfile.TemporaryDirectory(prefix=f"presenced-bench-peers-{name}-") as tmp:
            started = time.perf_counter()
            server = start(Path(tmp), users)
            try:
                setup = time.perf_counter() - started
                time.sleep(1.0)
                figures = drive(server.process.pid, server.port, users, plan)
                results[name] = {"version": server.version,
                                 "setup_s_with_accounts": round(setup, 1), **figures,
                                 "load_average_1min": round(os.getloadavg()[0], 2)}
            finally:
                server.stop()
    ours = results.get("presenced", {})
    print(json.dumps({
        "users": len(users), "scram_iterations": ITERATIONS,
        "concurrency": args.concurrency * args.procs, "messages_per_client": args.messages,
        "servers": results,
        "presenced_ratio_to": {name: ratios(ours, figures) for name, figures in results.items()
                               if name != "presenced" and "skipped" not in figures},
        "load_average_1min": round(os.getloadavg()[0], 2),
    }, indent=2))


if __name__ == "__main__":
    main()

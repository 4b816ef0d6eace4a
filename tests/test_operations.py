"""Running presenced in production: reload on SIGHUP, /health, the systemd unit, backup and
restore, graceful stop (issue 20)."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
import requests

from presenced import config as configuration
from presenced.reload import merge
from presenced.xmpp.tls import generate_self_signed
from tests.helpers import (HEADER, OTHER_DOORS_OFF, REPO, HTTPStream, J, PresencedProcess,
                           RawClient, free_port, http_get, node_config, roster, thrift_client,
                           write_config)
from tests.ircd import IRCWatcher, NgIRCd

NS_TLS = b"urn:ietf:params:xml:ns:xmpp-tls"


# --- reload -------------------------------------------------------------------------------

def test_merge_applies_live_keys_and_keeps_restart_keys():
    running = configuration.build({})
    new = configuration.build({"xmpp": {"port": 5999, "max_stanza_size": 1000},
                               "store": {"redis_timeout": 1.0},
                               "comet": {"replay_size": 5, "heartbeat_interval": 5.0}})
    merged, applied, waiting = merge(running, new)
    assert merged.xmpp.port == 5222 and merged.store.redis_timeout == 5.0
    assert merged.comet.replay_size == 100
    assert merged.xmpp.max_stanza_size == 1000 and merged.comet.heartbeat_interval == 5.0
    assert applied == ["[xmpp] max_stanza_size", "[comet] heartbeat_interval"]
    assert waiting == ["[store] redis_timeout", "[xmpp] port", "[comet] replay_size"]


def starttls(port: int) -> RawClient:
    client = RawClient(port)
    client.send(HEADER)
    client.read_until(b"</stream:features>")
    client.send(b"<starttls xmlns='%s'/>" % NS_TLS)
    client.read_until(b"<proceed[^>]*/>")
    client.starttls_wrap()
    return client


def served_certificate(port: int) -> bytes:
    client = starttls(port)
    try:
        return client.sock.getpeercert(binary_form=True)
    finally:
        client.close()


def pem_to_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def reload_and_wait(server: PresencedProcess, text: str, ctl: bool = True) -> str:
    """Reload with ``presencedctl reload`` (or a bare SIGHUP, as ``systemctl reload``
    sends); the log once ``text`` appeared in it once more."""
    count = server.log().count(text)
    if ctl:
        server.ctl("reload")
    else:
        server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while server.log().count(text) <= count:
        assert time.monotonic() < deadline, f"{text!r} not logged again:\n{server.log()}"
        assert server.process.poll() is None, server.log()
        time.sleep(0.05)
    return server.log()


def edit_config(server: PresencedProcess, **xmpp: object) -> None:
    """Change ``[xmpp]`` keys in the running server's config file."""
    sections = tomllib.loads(server.config_path.read_text())
    sections["xmpp"].update(xmpp)
    write_config(server.config_path, sections)


@pytest.fixture
def tls_server(tmp_path: Path, presenced_factory):
    cert, key = tmp_path / "xmpp.crt", tmp_path / "xmpp.key"
    generate_self_signed(str(cert), str(key), ["localhost"])
    server = presenced_factory({**OTHER_DOORS_OFF,
                                "xmpp": {"certificate": str(cert), "private_key": str(key)}})
    server.ctl("adduser", "ann@localhost", "--password", "pw")
    return server, cert, key


def test_sighup_serves_new_certificate_and_keeps_sessions(tls_server):
    server, cert, key = tls_server
    first = pem_to_der(cert)
    assert served_certificate(server.ports["xmpp"]) == first
    online = starttls(server.ports["xmpp"])
    online.login("ann", "pw", started=False)

    generate_self_signed(str(cert), str(key), ["localhost"])  # the renewal
    edit_config(server, port=1, max_stanza_size=100000)
    log = reload_and_wait(server, "TLS certificate reloaded")

    assert served_certificate(server.ports["xmpp"]) == pem_to_der(cert) != first
    assert re.search(r"needs a restart: \[xmpp\] port", log), log
    assert "[xmpp] max_stanza_size" in log
    online.send(b"<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert b"id='p1'" in online.read_until(b"<iq[^>]*id='p1'[^>]*/?>")
    online.close()


def certificate_for(port: int, name: str) -> bytes:
    """The certificate the XMPP port serves a STARTTLS client that asks for ``name``."""
    client = RawClient(port)
    client.send(HEADER.replace(b"to='localhost'", b"to='%s'" % name.encode()))
    client.read_until(b"</stream:features>")
    client.send(b"<starttls xmlns='%s'/>" % NS_TLS)
    client.read_until(b"<proceed[^>]*/>")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    sock = context.wrap_socket(client.sock, server_hostname=name)
    try:
        return sock.getpeercert(binary_form=True)
    finally:
        sock.close()


def test_each_domain_gets_its_own_certificate_by_sni(tmp_path: Path, presenced_factory):
    default_cert, default_key = tmp_path / "default.crt", tmp_path / "default.key"
    generate_self_signed(str(default_cert), str(default_key), ["localhost"])
    certs = tmp_path / "certs"
    (certs / "example.org").mkdir(parents=True)      # Let's Encrypt's layout
    generate_self_signed(str(certs / "example.org" / "fullchain.pem"),
                         str(certs / "example.org" / "privkey.pem"), ["example.org"])
    generate_self_signed(str(certs / "example.net.crt"), str(certs / "example.net.key"),
                         ["example.net"])            # Prosody's layout
    server = presenced_factory({
        **OTHER_DOORS_OFF, "server": {"domains": ["localhost", "example.org", "example.net"]},
        "xmpp": {"certificate": str(default_cert), "private_key": str(default_key),
                 "certificate_dir": str(certs)}})
    port = server.ports["xmpp"]
    assert certificate_for(port, "example.org") == pem_to_der(certs / "example.org" /
                                                              "fullchain.pem")
    assert certificate_for(port, "example.net") == pem_to_der(certs / "example.net.crt")
    assert certificate_for(port, "localhost") == pem_to_der(default_cert)
    assert "no certificate for localhost" in server.log()
    # A renewed domain certificate is served after a reload.
    generate_self_signed(str(certs / "example.net.crt"), str(certs / "example.net.key"),
                         ["example.net"])
    reload_and_wait(server, "TLS certificate reloaded")
    assert certificate_for(port, "example.net") == pem_to_der(certs / "example.net.crt")


def test_bad_config_on_reload_is_refused(tls_server):
    server, cert, key = tls_server
    edit_config(server, max_stanza_size=-5)
    checked = server.ctl("reload", check=False)  # presencedctl checks the file first
    assert checked.returncode == 2 and "[xmpp] max_stanza_size" in checked.stderr
    log = reload_and_wait(server, "reload refused", ctl=False)
    assert "[xmpp] max_stanza_size" in log.split("reload refused")[-1]
    client = starttls(server.ports["xmpp"])
    client.login("ann", "pw", started=False)
    client.close()


def edit_sections(server: PresencedProcess, **sections: dict) -> None:
    """Change keys of several sections in the running server's config file."""
    current = tomllib.loads(server.config_path.read_text())
    for name, values in sections.items():
        current.setdefault(name, {}).update(values)
    write_config(server.config_path, current)


def thrift_refused(port: int) -> bool:
    """Whether the Thrift port closes a new connection at once (not in [thrift] allow)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    finally:
        sock.close()


def test_reload_applies_the_other_doors_limits_and_allowlists(presenced_factory):
    server = presenced_factory({"xmpp": {"enabled": False},
                                "comet": {"require_token": False},
                                "thrift": {"timeout": 3.0}})
    comet, thrift, web = (server.ports[d] for d in ("comet", "thrift", "webadmin"))
    assert requests.get(f"http://127.0.0.1:{web}/metrics", timeout=10).status_code == 200
    edit_sections(server, comet={"max_connections_per_ip": 1},
                  thrift={"allow": ["192.0.2.0/24"]}, webadmin={"metrics_token": "s3cret"})
    log = reload_and_wait(server, "config reloaded from")
    for key in ("[comet] max_connections_per_ip", "[thrift] allow", "[webadmin] metrics_token"):
        assert key in log.split("config reloaded from")[-1], log
    assert "needs a restart" not in log
    stream = HTTPStream(comet, "/stream/kim@localhost")
    stream.wait_for("welcome")
    status, _, body = http_get(comet, "/stream/lee@localhost")
    assert status == 503 and b"too many connections" in body
    stream.close()
    assert thrift_refused(thrift)
    scrape = requests.get(f"http://127.0.0.1:{web}/metrics", timeout=10)
    assert scrape.status_code == 401
    assert requests.get(f"http://127.0.0.1:{web}/metrics", timeout=10,
                        headers={"Authorization": "Bearer s3cret"}).status_code == 200

    edit_sections(server, thrift={"allow": ["127.0.0.1", "not-a-network"]})
    log = reload_and_wait(server, "reload refused", ctl=False)
    assert "[thrift] allow" in log.split("reload refused")[-1]
    assert thrift_refused(thrift)                     # the running allowlist is kept


def test_status_names_the_cluster_nodes(redis_server, presenced_factory):
    a = presenced_factory(node_config(redis_server.url, "a", webadmin={"enabled": True}),
                          name="a")
    presenced_factory(node_config(redis_server.url, "b"), name="b")
    deadline = time.monotonic() + 20
    while "cluster_nodes: a, b" not in (out := a.ctl("status").stdout):
        assert time.monotonic() < deadline, out   # b's heartbeat reaches a
        time.sleep(0.1)
    assert "node: a\n" in out


def test_reload_parts_and_joins_irc_channels(tmp_path: Path, presenced_factory):
    ircd = NgIRCd(tmp_path / "ircd")
    ircd.start()
    watcher = IRCWatcher(ircd.port)
    try:
        watcher.join("#one", "#two", "#three")
        server = presenced_factory({
            "irc": {"enabled": True, "server": "127.0.0.1", "port": ircd.port,
                    "channels": ["#one", "#two"], "reconnect_min_seconds": 0.2},
            "xmpp": {"enabled": False}, "comet": {"enabled": False},
            "thrift": {"enabled": False}, "webadmin": {"enabled": False}})
        for channel in ("#one", "#two"):
            watcher.wait_for(lambda m: m.command == "JOIN" and m.nick == "presenced"
                             and m.params[0].lower() == channel)
        edit_sections(server, irc={"channels": ["#three", "#two"]})
        log = reload_and_wait(server, "config reloaded from")
        assert "[irc] channels" in log.split("config reloaded from")[-1]
        watcher.wait_for(lambda m: m.command == "JOIN" and m.nick == "presenced"
                         and m.params[0].lower() == "#three")
        # #one was the auth channel (the first): kept, so private commands still work.
        assert not any(m.command == "PART" and m.nick == "presenced"
                       for m in watcher.collect(1.0))
        edit_sections(server, irc={"channels": ["#three", "#one"]})
        reload_and_wait(server, "config reloaded from")
        watcher.wait_for(lambda m: m.command == "PART" and m.nick == "presenced"
                         and m.params[0].lower() == "#two")
        server.stop()
    finally:
        watcher.close()
        ircd.stop()


def test_workers_serve_the_ports_the_first_picked_before_it_is_ready_and_reload(
        redis_server, presenced_factory):
    """Port 0 with workers: the first process binds a port and hands it on (a port picked
    beforehand by the caller could be taken meanwhile: the bench failed to start so); its
    ``ready`` waits for every worker's (no timer); a reload reaches every worker."""
    server = presenced_factory({
        "server": {"workers": 2}, "cluster": {"enabled": True},
        "store": {"backend": "redis", "redis": [redis_server.url]},
        "xmpp": {"enabled": False}, "thrift": {"enabled": False}})
    log = server.log()
    assert "worker 1 ready" in log
    worker = log.split("worker 1: ", 1)[1]
    assert re.search(rf"comet listening on [^ ]+:{server.ports['comet']}\b", worker)
    log = reload_and_wait(server, "reload sent to 1 worker(s)")
    deadline = time.monotonic() + 20
    while not re.search(r"worker 1: .*config reloaded from", log):
        assert time.monotonic() < deadline, log
        time.sleep(0.05)
        log = server.log()


# --- health -------------------------------------------------------------------------------

def get_health(port: int) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}/health", timeout=10)


def test_health_turns_503_when_redis_stops(redis_server, presenced_factory):
    server = presenced_factory({"store": {"backend": "redis", "redis": [redis_server.url],
                                          "redis_timeout": 1.0, "redis_retries": 0},
                                "xmpp": {"enabled": False}, "thrift": {"enabled": False}})
    for door in ("comet", "webadmin"):
        reply = get_health(server.ports[door])
        assert reply.status_code == 200, reply.text
        assert reply.json()["status"] == "ok"
    redis_server.stop()
    for door in ("comet", "webadmin"):
        reply = get_health(server.ports[door])
        assert reply.status_code == 503, reply.text
        assert reply.json()["status"] == "store unavailable"


# --- the systemd unit ---------------------------------------------------------------------

def test_systemd_unit_verifies(tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    unit = (REPO / "contrib" / "systemd" / "presenced.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    # verify checks that ExecStart's program exists: point it at this machine's twistd.
    twistd = shutil.which("twistd") or sys.executable
    (tmp_path / "presenced.service").write_text(unit.replace("/usr/bin/twistd", twistd))
    result = subprocess.run([analyze, "verify", str(tmp_path / "presenced.service")],
                            capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if "presenced.service" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


# --- backup and restore -------------------------------------------------------------------

def test_backup_during_add_friend_load_restores_acknowledged_friendships(presenced_factory):
    server = presenced_factory({"xmpp": {"enabled": False}, "comet": {"enabled": False},
                                "webadmin": {"enabled": False}})
    acknowledged: list[int] = []
    stop = threading.Event()

    def load() -> None:
        client = thrift_client(server)
        n = 0
        while not stop.is_set():
            client.add_friend(J("hub", "localhost"), J(f"f{n}", "localhost"))
            acknowledged.append(n)
            n += 1
        client.close()

    worker = threading.Thread(target=load)
    worker.start()
    try:
        while len(acknowledged) < 50:
            time.sleep(0.01)
        before = len(acknowledged)
        backup_file = server.directory / "backup.presenced"
        result = server.ctl("backup", str(backup_file))
        assert "backup written" in result.stdout
        while len(acknowledged) < before + 20:  # the server kept serving
            time.sleep(0.01)
    finally:
        stop.set()
        worker.join(30)

    refused = server.ctl("restore", str(backup_file), "--force", check=False)
    assert refused.returncode == 1 and "running" in refused.stderr
    restored = presenced_factory({"xmpp": {"enabled": False}, "comet": {"enabled": False},
                                  "webadmin": {"enabled": False}}, start=False)
    write_config(restored.config_path, {"server": {"data_dir": str(restored.data_dir)}})
    restored.ctl("restore", str(backup_file))
    friends = roster(restored, "hub")
    missing = [n for n in range(before) if f"f{n}@localhost" not in friends]
    assert not missing, missing
    assert set(friends.values()) == {"both"}


# --- graceful stop ------------------------------------------------------------------------

def test_sigterm_sends_system_shutdown_to_100_sessions(presenced_factory):
    server = presenced_factory({**OTHER_DOORS_OFF,
                                "xmpp": {"require_tls": False, "allow_plain": True}})
    server.ctl("import-users", "-", "--quiet",
               input="".join(f"u{i}@localhost pw\n" for i in range(100)))
    clients = []
    for i in range(100):
        client = RawClient(server.ports["xmpp"])
        client.login(f"u{i}", "pw")
        clients.append(client)
    server.process.send_signal(signal.SIGTERM)
    for client in clients:
        assert b"<system-shutdown" in client.read_until(b"</stream:error>", timeout=30)
        client.close()
    server.process.wait(30)


def test_a_stopping_node_leaves_the_cluster_before_its_slow_sessions_end(redis_server,
                                                                          presenced_factory):
    big = {"comet": {"max_buffered_bytes": 64 * 2**20},
           "server": {"stop_grace_period": 30.0}}
    a = presenced_factory(node_config(redis_server.url, "a", **big), name="a")
    b = presenced_factory(node_config(redis_server.url, "b"), name="b")
    admin = thrift_client(a)
    admin.add_friend(J("ann", "localhost"), J("dan", "localhost"))
    dan = HTTPStream(b.ports["comet"], "/stream/dan@localhost")
    dan.wait_for("welcome")
    # ann's browser stops reading: her stream's close cannot finish (15 s at most).
    ann = socket.socket()
    ann.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ann.connect(("127.0.0.1", a.ports["comet"]))
    ann.sendall(b"GET /stream/ann@localhost HTTP/1.1\r\nHost: a\r\n\r\n")
    body = "x" * 60000
    for _ in range(150):                                  # 9 MB she never reads
        admin.spoof_message(J("dan", "localhost"), J("ann", "localhost"), body, "s")
    admin.close()
    time.sleep(0.5)                                       # the directory reached node b
    a.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    gone = dan.wait_for("presence", timeout=10)[0]
    assert gone["from"] == "ann@localhost" and gone["available"] is False
    assert time.monotonic() - started < 5
    assert a.process.poll() is None                       # still in its grace period
    ann.close()
    dan.close()
    a.process.wait(30)


def test_status_prints_health(presenced_factory):
    server = presenced_factory({"xmpp": {"enabled": False}, "thrift": {"enabled": False},
                                "comet": {"require_token": False}})
    stream = HTTPStream(server.ports["comet"], "/stream/kim@localhost")
    stream.wait_for("welcome")
    out = server.ctl("status").stdout
    assert "status: ok" in out and "version: " in out and "uptime: " in out
    assert "sessions: 1\n" in out and "sessions_per_door: comet 1\n" in out, out
    stream.close()
    server.stop()
    stopped = server.ctl("status", check=False)
    assert stopped.returncode == 1 and "no server runs" in stopped.stderr


def test_a_redis_store_backs_up_into_the_embedded_format_and_restores_into_redis(
        presenced_factory, redis_server):
    """The backup file of a Redis store is the embedded store's versioned format, written
    while the server runs: it restores into an empty Redis, friendships and accounts
    intact; a Redis that holds accounts is refused without --force."""
    doors_off = {"xmpp": {"enabled": False}, "comet": {"enabled": False},
                 "webadmin": {"enabled": False}}
    source = presenced_factory({**doors_off, "store": {"backend": "redis",
                                                        "redis": [redis_server.url]}})
    source.ctl("import-users", "-", "--quiet",
               input="".join(f"r{i}@localhost pw{i}\n" for i in range(30)))
    source.ctl("load-friends", "-", "--quiet",
               input="".join(f"r0@localhost r{i}@localhost\n" for i in range(1, 30)))
    backup_file = source.directory / "redis.presenced"
    written = source.ctl("backup", str(backup_file), "--quiet")
    assert "backup written" in written.stdout and "format 1" in written.stdout
    refused = source.ctl("restore", str(backup_file), check=False)
    assert refused.returncode == 1 and "holds 30 accounts" in refused.stderr

    other_db = {"backend": "redis", "redis": [redis_server.url.rsplit("/", 1)[0] + "/5"]}
    empty = presenced_factory({**doors_off, "store": other_db}, name="restored", start=False)
    write_config(empty.config_path, {"server": {"data_dir": str(empty.data_dir)},
                                     "store": other_db})
    assert "restored" in empty.ctl("restore", str(backup_file), "--quiet").stdout
    empty.start()
    friends = roster(empty, "r0")
    assert set(friends) == {f"r{i}@localhost" for i in range(1, 30)}
    assert set(friends.values()) == {"both"}
    assert thrift_client(empty).user_exists(J("r29", "localhost"))

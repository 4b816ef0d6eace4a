"""Helpers shared by the test modules (fixtures live in ``conftest.py``; no test module imports
another). Sections: paths and processes (presenced, Redis), raw XMPP streams, HTTP streams of
the comet door, Thrift clients, the web admin, router sessions, slixmpp clients with PEP.

In-memory XMPP streams (no process) are in :mod:`tests.xmpp_memory`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional
from xml.etree import ElementTree

import pytest
import requests
import slixmpp
import thriftpy2
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.protocol.binary import TBinaryProtocol
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TApplicationException, TMessageType
from thriftpy2.transport import TBufferedTransportFactory, TFramedTransportFactory
from thriftpy2.transport.memory import TMemoryBuffer
from zope.interface import implementer

from presenced.events import Event
from presenced.nowplaying import TUNE_NS
from presenced.router import ISession

REPO = Path(__file__).resolve().parent.parent
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
THRIFT_IDL = REPO / "thrift" / "presenced.thrift"
THRIFT = thriftpy2.load(str(THRIFT_IDL), module_name="tests_presenced_thrift")
J = THRIFT.JabberUser
COMET_ONLY = {"xmpp": {"enabled": False}, "webadmin": {"enabled": False}}


# --- processes: presenced and Redis ----------------------------------------------------------

# The fuzz tests run a few rounds in the suite; scripts/fuzz.sh runs them longer (a scale)
# and with a new seed each time (docs/security.md, "Fuzzing").
FUZZ_SCALE = int(os.environ.get("PRESENCED_FUZZ_SCALE", "1"))
FUZZ_SEED = os.environ.get("PRESENCED_FUZZ_SEED")


def fuzz_rng(default_seed: int) -> random.Random:
    """The fuzz tests' random source: a fixed seed in the suite, ``PRESENCED_FUZZ_SEED``
    in a longer run (printed by scripts/fuzz.sh, so a failure can be replayed)."""
    return random.Random(int(FUZZ_SEED) if FUZZ_SEED else default_seed)


def mutate(rng: random.Random, seed: bytes, edits: int = 5) -> bytes:
    """``seed`` with 1 to ``edits`` random byte changes, deletions or insertions."""
    data = bytearray(seed)
    for _ in range(rng.randrange(1, edits + 1)):
        position = rng.randrange(len(data))
        action = rng.randrange(3)
        if action == 0:
            data[position] = rng.randrange(256)
        elif action == 1:
            del data[position]
        else:
            data[position:position] = bytes(rng.randrange(256)
                                            for _ in range(rng.randrange(1, 8)))
    return bytes(data)


SERVER_ERRORS = re.compile(r"#critical\]|Traceback|Unhandled")  # what bad input must not log


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port free now and not handed out before in this run: once the probing
    socket is closed the kernel may give the same port to the next pick, and servers built
    together (a Redis Cluster's six ports and six bus ports) would then collide."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def subprocess_env() -> dict[str, str]:
    """The environment for child processes: this checkout's code first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class RedisServer:
    """A private redis-server with persistence on (appendfsync always) in its own directory;
    ``extra`` arguments go on its command line (cluster mode, replication)."""

    def __init__(self, directory: Path, port: Optional[int] = None,
                 extra: tuple[str, ...] = ()):
        self.directory = directory
        self.port = port or free_port()
        self.extra = extra
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run scripts/install-test-deps.sh")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.directory), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--protected-mode", "no", "--daemonize", "no", *self.extra],
            stdout=open(self.directory / "redis.log", "ab"), stderr=subprocess.STDOUT)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last write."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def cli(self, *args: str) -> str:
        """A redis-cli command against this server; its output."""
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], check=True,
                              capture_output=True, text=True, timeout=60).stdout


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` (a state another process reaches: no event to await) until true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


class RedisSentinels:
    """A private replicated Redis watched by Sentinel: one master, one replica, ``count``
    sentinels (quorum 2) that fail over after ``down_ms`` of silence."""

    def __init__(self, directory: Path, count: int = 3, down_ms: int = 1000,
                 name: str = "mymaster"):
        self.name = name
        self.directory = directory
        self.down_ms = down_ms
        self.master = RedisServer(directory / "master")
        self.replica = RedisServer(directory / "replica",
                                   extra=("--replicaof", "127.0.0.1", str(self.master.port)))
        self.sentinel_ports = [free_port() for _ in range(count)]
        self.sentinels: list[subprocess.Popen] = []

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{port}" for port in self.sentinel_ports]

    def start(self) -> None:
        self.master.start()
        self.replica.start()
        for i, port in enumerate(self.sentinel_ports):
            directory = self.directory / f"sentinel{i}"
            directory.mkdir(parents=True, exist_ok=True)
            conf = directory / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {directory}\n"
                f"sentinel monitor {self.name} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.name} {self.down_ms}\n"
                f"sentinel failover-timeout {self.name} 10000\n")
            self.sentinels.append(subprocess.Popen(
                [shutil.which("redis-server") or "redis-server", str(conf), "--sentinel"],
                stdout=open(directory / "sentinel.log", "ab"), stderr=subprocess.STDOUT))
            wait_for_port(port)
        wait_until(lambda: "master_link_status:up" in self.replica.cli(
            "INFO", "replication"), "the replica to sync")

    def master_port(self) -> int:
        """The master's port as the first sentinel says it."""
        out = subprocess.run(["redis-cli", "-p", str(self.sentinel_ports[0]), "SENTINEL",
                              "get-master-addr-by-name", self.name], capture_output=True,
                             text=True, timeout=10).stdout.split()
        return int(out[1])

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.terminate()
            sentinel.wait(10)
        self.replica.stop()
        self.master.stop()


class RedisClusterServers:
    """A private Redis Cluster: ``masters`` masters with one replica each, built with
    ``redis-cli --cluster create``; fail-over after ``node_timeout_ms`` of silence."""

    def __init__(self, directory: Path, masters: int = 3, node_timeout_ms: int = 1000):
        self.servers = [
            RedisServer(directory / f"node{i}", extra=(
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(free_port()),
                "--cluster-node-timeout", str(node_timeout_ms), "--appendfsync", "everysec",
                "--repl-diskless-sync-delay", "0"))
            for i in range(2 * masters)]

    @property
    def seeds(self) -> list[str]:
        return [server.url.rsplit("/", 1)[0] for server in self.servers]

    def start(self) -> None:
        for server in self.servers:
            server.start()
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{s.port}" for s in self.servers),
                        "--cluster-replicas", "1", "--cluster-yes"],
                       check=True, capture_output=True, timeout=120)
        wait_until(lambda: all("cluster_state:ok" in s.cli("CLUSTER", "INFO")
                                    for s in self.live()), "the cluster to be ok")
        # A replica that never finished its first sync cannot take over from its master.
        wait_until(lambda: all("master_link_status:up" in s.cli("INFO", "replication")
                               for s in self.live()
                               if "role:slave" in s.cli("INFO", "replication")),
                   "every replica to be in sync")

    def live(self) -> list[RedisServer]:
        return [s for s in self.servers if s.process is not None]

    def masters(self) -> list[RedisServer]:
        return [s for s in self.live() if "role:master" in s.cli("INFO", "replication")]

    def flush(self) -> None:
        for server in self.masters():
            server.cli("FLUSHALL")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


class PresencedProcess:
    """A presenced server run as ``twistd -n presenced`` in a private data directory."""

    def __init__(self, directory: Path, sections: dict[str, dict[str, Any]]):
        self.directory = directory
        self.data_dir = directory / "data"
        self.sections = sections
        self.process: Optional[subprocess.Popen] = None
        self.ports: dict[str, int] = {}
        self.log_path = directory / "presenced.log"

    @property
    def config_path(self) -> Path:
        return self.directory / "presenced.toml"

    def start(self, timeout: float = 30.0) -> None:
        sections = {k: dict(v) for k, v in self.sections.items()}
        sections.setdefault("server", {}).setdefault("data_dir", str(self.data_dir))
        for door in ("xmpp", "comet", "thrift", "webadmin"):
            sections.setdefault(door, {}).setdefault("port", 0)
        sections.setdefault("irc", {}).setdefault("cat_port", 0)
        write_config(self.config_path, sections)
        ports_file = self.data_dir / "run" / "ports.json"
        if ports_file.exists():
            ports_file.unlink()
        self.process = subprocess.Popen(
            TWISTD + ["-n", "--pidfile", "", "--logfile", str(self.log_path), "presenced",
                      "--config", str(self.config_path)],
            cwd=self.directory, env=subprocess_env(),
            stdout=subprocess.DEVNULL, stderr=open(self.directory / "stderr.log", "ab"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"presenced exited with {self.process.returncode}:\n"
                                   + self.log())
            try:
                ports = json.loads(ports_file.read_text())
            except (FileNotFoundError, ValueError):
                ports = {}
            if "ready" in ports:
                self.ports = ports
                return
            time.sleep(0.05)
        raise TimeoutError("presenced did not become ready:\n" + self.log())

    def wait_for_log(self, text: str, timeout: float = 15.0) -> str:
        """The log once ``text`` is in it. ``start()`` returns when ``ready`` is in
        ports.json, which the server writes once it logged its ready line (with workers,
        once each of them has)."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if text in log:
                return log
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not logged after {timeout}s:\n" + log)
            time.sleep(0.05)

    def log(self) -> str:
        text = self.log_path.read_text() if self.log_path.exists() else ""
        err = self.directory / "stderr.log"
        return text + (err.read_text() if err.exists() else "")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """``kill -9``: no chance to flush anything."""
        self.stop(signal.SIGKILL)

    def ctl(self, *args: str, input: Optional[str] = None,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run ``presencedctl --config <this server's config> ARGS``."""
        return subprocess.run(
            [sys.executable, "-m", "presenced.ctl", "--config", str(self.config_path), *args],
            input=input, capture_output=True, text=True, env=subprocess_env(),
            cwd=self.directory, check=check, timeout=120)


# --- XMPP over raw sockets ------------------------------------------------------------------

OTHER_DOORS_OFF = {"comet": {"enabled": False}, "thrift": {"enabled": False},
                   "webadmin": {"enabled": False}}


HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


class RawClient:
    """A minimal XMPP client on a blocking socket, for byte-exact tests."""

    def __init__(self, port: int, direct_tls: bool = False):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if direct_tls:
            self.starttls_wrap()
        self.buffer = b""

    def starttls_wrap(self) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until(self, pattern: bytes, timeout: float = 10.0) -> bytes:
        """Read until ``pattern`` (a regex) matches; return everything read up to its end."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern, re.S)
        while True:
            match = regex.search(self.buffer)
            if match:
                out, self.buffer = self.buffer[:match.end()], self.buffer[match.end():]
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {pattern!r} in {self.buffer[-500:]!r}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError(f"no {pattern!r} in {self.buffer[-500:]!r}") from None
            if not data:
                raise ConnectionError(f"closed before {pattern!r}; got {self.buffer[-500:]!r}")
            self.buffer += data

    def closed(self, timeout: float = 10.0) -> bool:
        """True once the server has closed the connection."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buffer += data
        except (ConnectionResetError, ssl.SSLError):
            return True
        except socket.timeout:
            return False

    def login(self, user: str, password: str, resource: str = "raw",
              started: bool = False) -> bytes:
        """Stream (unless ``started``), SASL PLAIN, bind; returns the bind result. A refused
        login raises PermissionError with the server's answer."""
        if not started:
            self.send(HEADER)
            self.read_until(b"</stream:features>")
        token = base64.b64encode(f"\0{user}\0{password}".encode())
        self.send(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>"
                  % token)
        answer = self.read_until(b"<success[^>]*(/>|>.*?</success>)|</failure>")
        if b"<failure" in answer:
            raise PermissionError(answer)
        self.send(HEADER)
        self.read_until(b"</stream:features>")
        self.send(b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  b"<resource>%s</resource></bind></iq>" % resource.encode())
        return self.read_until(b"</iq>")

    def close(self) -> None:
        self.sock.close()


# --- comet HTTP streams and the Thrift admin ------------------------------------------------

class HTTPStream:
    """A raw-socket HTTP/1.1 client that reads a chunked stream incrementally."""

    def __init__(self, port: int, path: str, headers: Optional[dict[str, str]] = None,
                 host: str = "127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=10)
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.raw = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""           # de-chunked
        self._pending = b""       # chunked bytes not yet decoded
        self.closed = False
        self._read_head()

    def _recv(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return False
        self.raw += data
        return True

    def _read_head(self) -> None:
        deadline = time.monotonic() + 10
        while b"\r\n\r\n" not in self.raw:
            if not self._recv(max(0.01, deadline - time.monotonic())) and \
                    (self.closed or time.monotonic() > deadline):
                raise AssertionError(f"no response head: {self.raw!r}")
        head, _, rest = self.raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in
                        (line.partition(":") for line in lines[1:])}
        self._take(rest)

    def _take(self, data: bytes) -> None:
        if self.headers.get("transfer-encoding") != "chunked":
            self.body += data
            return
        self._pending += data
        while True:
            size_line, sep, rest = self._pending.partition(b"\r\n")
            if not sep:
                return
            size = int(size_line, 16)
            if len(rest) < size + 2:
                return
            self.body += rest[:size]
            self._pending = rest[size + 2:]
            if size == 0:
                return

    def wait(self, predicate: Callable[[bytes], bool], timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        while not predicate(self.body):
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                raise AssertionError(f"not seen in time; body so far: {self.body!r}")
            before = len(self.raw)
            if self._recv(min(left, 0.5)):
                self._take(self.raw[before:])
        return self.body

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.body.split(b"\n") if line.strip()]

    def sse_events(self) -> list[dict[str, Any]]:
        events = []
        for block in self.body.decode().split("\n\n"):
            fields: dict[str, str] = {}
            for line in block.split("\n"):
                name, _, value = line.partition(": ")
                if name in ("id", "data"):
                    fields[name] = value
            if "data" in fields:
                doc = json.loads(fields["data"])
                doc["_sse_id"] = fields.get("id")
                events.append(doc)
        return events

    def wait_for(self, kind: str, count: int = 1, sse: bool = False,
                 timeout: float = 10) -> list[dict[str, Any]]:
        parse = self.sse_events if sse else self.json_lines

        def seen(_: bytes) -> bool:
            return sum(1 for e in parse() if e["type"] == kind) >= count
        self.wait(seen, timeout)
        return [e for e in parse() if e["type"] == kind]

    def wait_closed(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not self.closed:
            if time.monotonic() > deadline:
                raise AssertionError("connection still open")
            self._recv(0.2)

    def close(self) -> None:
        self.sock.close()


def http_get(port: int, path: str, headers: Optional[dict[str, str]] = None,
             method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One complete request and response (the server closes after errors and 404s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        lines = [f"{method} {path} HTTP/1.1", "Host: test", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers_out = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    return int(lines[0].split()[1]), headers_out, body


def thrift_admin(server) -> Any:
    return make_client(THRIFT.PresencedAdmin, "127.0.0.1", server.ports["thrift"], timeout=10000)


def jid(user: str) -> Any:
    name, _, domain = user.partition("@")
    return THRIFT.JabberUser(name=name, server=domain or "localhost")


def token(server, user: str) -> str:
    return server.ctl("stream-token", user).stdout.strip()


def node_config(redis_url: str, node_id: str, **extra: dict) -> dict:
    sections = {
        "store": {"backend": "redis", "redis": [redis_url]},
        "cluster": {"enabled": True, "node_id": node_id, "heartbeat_interval": 0.3,
                    "node_timeout": 1.5},
        "comet": {"require_token": False},
        "xmpp": {"enabled": False},
        "webadmin": {"enabled": False},
    }
    for section, values in extra.items():
        sections.setdefault(section, {}).update(values)
    return sections


def generate(tmp_path: Path, language: str) -> Path:
    out = tmp_path / f"gen-{language}"
    out.mkdir()
    subprocess.run(["thrift", "--gen", language, "-out", str(out), str(THRIFT_IDL)], check=True,
                   capture_output=True, timeout=60)
    return out


def php(gen: Path, port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["php", str(REPO / "tests" / "php" / "ejabthrift_client.php"),
                           str(gen), "127.0.0.1", str(port), *args],
                          capture_output=True, text=True, timeout=60)


def encode_call(name: str, seqid: int, args: object = None) -> bytes:
    buffer = TMemoryBuffer()
    proto = TBinaryProtocol(buffer)
    proto.write_message_begin(name, TMessageType.CALL, seqid)
    proto.write_struct(args if args is not None else THRIFT.PresencedAdmin.online_count_args())
    return buffer.getvalue()


class SocketReader:
    """A blocking thriftpy2 transport over a socket, to read replies one by one."""

    def __init__(self, sock: socket.socket):
        self.file = sock.makefile("rb")

    def read(self, size: int) -> bytes:
        data = self.file.read(size)
        if len(data) < size:
            raise EOFError("connection closed")
        return data


def read_reply(reader: SocketReader):
    proto = TBinaryProtocol(reader)
    name, kind, seqid = proto.read_message_begin()
    if kind == TMessageType.EXCEPTION:
        body = TApplicationException()
    else:
        body = getattr(THRIFT.PresencedAdmin, name + "_result")()
    proto.read_struct(body)
    return name, kind, seqid, body


# --- the web admin's server ---------------------------------------------------------------

def on_store(server: PresencedProcess, body: str) -> str:
    """Run ``body`` (statements using ``store``, an open EmbeddedRosterStore of the running
    server, inside an inlineCallbacks function) in a child process; returns its output."""
    script = "\n".join([
        "import sys",
        "from twisted.internet import defer, task",
        "from presenced.nowplaying import TUNE_NS, TUNE_ITEM_ID, Tune",
        "from presenced.scram import verify_password",
        "from presenced.pep import PepItem", "from presenced.store import RosterItem",
        "from presenced.store.embedded import EmbeddedRosterStore",
        "@defer.inlineCallbacks",
        "def main(reactor, path):",
        "    store = EmbeddedRosterStore(path)",
        "    yield store.start()",
        *("    " + line for line in body.strip().splitlines()),
        "    yield store.stop()",
        "task.react(main, sys.argv[1:])",
    ])
    return subprocess.run([sys.executable, "-c", script,
                           str(server.data_dir / "presenced.sqlite3")],
                          env=subprocess_env(), check=True, timeout=60, capture_output=True,
                          text=True).stdout


def open_stream(server: PresencedProcess, user: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.ports["comet"]), timeout=10)
    sock.sendall(f"GET /stream/{user} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(4096)
    assert received.startswith(b"HTTP/1.1 200"), received
    return sock


def roster(server: PresencedProcess, user: str) -> dict[str, str]:
    lines = server.ctl("roster", user).stdout.splitlines()
    return {line.split("\t")[0]: line.split("\t")[1].split()[0] for line in lines if line}


# --- router sessions ----------------------------------------------------------------------

@implementer(ISession)
class RecordingSession:
    protocol = "test"

    def __init__(self, user: str, label: str = "s"):
        self.user = user
        self.label = label
        self.events: list[Event] = []
        self.closed: list[str] = []

    def deliver(self, event: Event) -> None:
        self.events.append(event)

    def close(self, reason: str) -> None:
        self.closed.append(reason)


# --- slixmpp clients with PEP (User Tune) ---------------------------------------------------

NS_EVENT = "http://jabber.org/protocol/pubsub#event"


PASSWORD = "tune-secret"


TIMEOUT = 15.0


QUIET_SECONDS = 1.5  # how long "nothing arrives" is watched for


class TuneClient(slixmpp.ClientXMPP):
    """A Jabber client with disco, entity caps and (``notify``) User Tune interest."""

    def __init__(self, user: str, notify: bool, moods: bool = False):
        super().__init__(f"{user}@localhost/test", PASSWORD)
        self.enable_direct_tls = False
        self.ssl_context = ssl.create_default_context()
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE  # the server's generated certificate
        plugins = ["xep_0030", "xep_0115", "xep_0060"]
        if notify:
            plugins += ["xep_0163", "xep_0118"]
        if moods:
            plugins += ["xep_0163", "xep_0107"]
        for plugin in plugins:
            self.register_plugin(plugin)
        self.tunes: asyncio.Queue = asyncio.Queue()
        self.started: asyncio.Future = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", self._session_start)
        # Every PEP notification, whatever the plugins: a client without interest must get none.
        self.register_handler(Callback("pep", MatchXPath(
            f"{{jabber:client}}message/{{{NS_EVENT}}}event"), self._notification))
        self.add_event_handler("failed_auth", lambda _: self._fail("authentication failed"))

    def _fail(self, why: str) -> None:
        if not self.started.done():
            self.started.set_exception(RuntimeError(why))

    async def _session_start(self, _event) -> None:
        self.send_presence()
        if not self.started.done():
            self.started.set_result(True)

    def _notification(self, message) -> None:
        """Queue (publisher, tune fields), or (publisher, the item's XML) for another node."""
        item = message.xml.find(f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}items/{{{NS_EVENT}}}item")
        tune = item.find(f"{{{TUNE_NS}}}tune") if item is not None else None
        if tune is None:
            seen = ElementTree.tostring(message.xml, encoding="unicode")
        else:
            seen = {child.tag.partition("}")[2]: child.text or "" for child in tune}
        self.tunes.put_nowait((message["from"].bare, seen))

    async def next_tune(self) -> tuple[str, dict]:
        return await asyncio.wait_for(self.tunes.get(), TIMEOUT)

    async def nothing_more(self) -> None:
        await asyncio.sleep(QUIET_SECONDS)
        assert self.tunes.empty(), f"unexpected tune: {self.tunes.get_nowait()}"

    def publish(self, **fields) -> asyncio.Future:
        return self.plugin["xep_0118"].publish_tune(**fields)


SONG = {"artist": "Yes", "title": "Heart of the Sunrise", "source": "Fragile", "length": 686,
        "track": "4"}


SONG_SEEN = {"artist": "Yes", "title": "Heart of the Sunrise", "source": "Fragile",
             "length": "686", "track": "4"}


# --- slixmpp: a chat client (STARTTLS, SCRAM) ------------------------------------------

class Client(slixmpp.ClientXMPP):
    """slixmpp with the server's self-signed certificate accepted and events collected."""

    def __init__(self, user: str, resource: str = "test", password: str | None = None):
        super().__init__(f"{user}@localhost/{resource}", password or f"{user}-pw")
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        for plugin in ("xep_0030", "xep_0199", "xep_0092", "xep_0054", "xep_0203"):
            self.register_plugin(plugin)
        self.messages: asyncio.Queue = asyncio.Queue()
        self.presences: asyncio.Queue = asyncio.Queue()
        self.pushes: asyncio.Queue = asyncio.Queue()
        self.add_event_handler("message", self.messages.put_nowait)
        self.add_event_handler("presence", self.presences.put_nowait)
        self.add_event_handler("roster_update", self.pushes.put_nowait)
        self.auto_authorize = None
        self.auto_subscribe = False

    async def start(self, port: int, presence: bool = True) -> "Client":
        started = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", lambda _: started.done() or
                               started.set_result(True))
        self.add_event_handler("failed_auth", lambda _: started.done() or
                               started.set_exception(PermissionError("auth failed")))
        self.connect("127.0.0.1", port)
        await asyncio.wait_for(started, 15)
        await self.get_roster()
        if presence:
            self.send_presence()
        return self

    async def presence_from(self, jid: str, kind: str = "available",
                            timeout: float = 5) -> slixmpp.Presence:
        deadline = time.monotonic() + timeout
        while True:
            presence = await asyncio.wait_for(self.presences.get(),
                                              max(0.01, deadline - time.monotonic()))
            if str(presence["from"]).startswith(jid) and presence["type"] == kind:
                return presence

    async def message(self, timeout: float = 5) -> slixmpp.Message:
        while True:
            message = await asyncio.wait_for(self.messages.get(), timeout)
            if message["type"] != "error":
                return message

    async def push_for(self, jid: str, timeout: float = 5) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            iq = await asyncio.wait_for(self.pushes.get(),
                                        max(0.01, deadline - time.monotonic()))
            items = iq["roster"]["items"]
            if slixmpp.JID(jid) in items:
                return items[slixmpp.JID(jid)]

    async def close(self) -> None:
        self.disconnect()
        await asyncio.sleep(0.05)


def run(coroutine) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 60))


def thrift_client(server: PresencedProcess, framed: bool = False, compact: bool = False):
    """A thriftpy2 client of the admin service on ``server``'s Thrift port."""
    return make_client(
        THRIFT.PresencedAdmin, "127.0.0.1", server.ports["thrift"], timeout=20000,
        trans_factory=TFramedTransportFactory() if framed else TBufferedTransportFactory(),
        proto_factory=TCompactProtocolFactory() if compact else TBinaryProtocolFactory())


# --- the web admin --------------------------------------------------------------------

def webadmin_url(server: PresencedProcess) -> str:
    return f"http://127.0.0.1:{server.ports['webadmin']}"


def webadmin_login(server: PresencedProcess, name: str = "admin@localhost",
          password: str = "admin-pw") -> requests.Session:
    http = requests.Session()
    reply = http.post(webadmin_url(server) + "/login", data={"name": name, "password": password},
                      allow_redirects=False, timeout=10)
    assert reply.status_code == 303, reply.text
    return http


def presence_and_chat_across_nodes(a: "PresencedProcess", b: "PresencedProcess",
                                   ben_known_on_a: Callable[[], None]) -> None:
    """Friends ann (node a) and ben (node b, who logs in first): ann's probe is answered by
    ben's resource on node b, ben sees ann come online, ann's chat reaches him, and her
    going offline does too. ``ben_known_on_a()`` returns once node a's directory holds ben's
    login."""
    ben = RawClient(b.ports["xmpp"])
    ben.login("ben", "pw", "b")
    ben.send(b"<presence><status>on node b</status></presence>")
    ben.read_until(b"on node b</status>.*?</presence>")  # the server adds a photo hash
    ben_known_on_a()
    ann = RawClient(a.ports["xmpp"])
    ann.login("ann", "pw", "a")
    ann.send(b"<presence/>")
    probed = ann.read_until(b"<presence from=.ben@localhost/b.[^>]*>.*?</presence>", timeout=5)
    assert b"on node b" in probed.rpartition(b"<presence")[2]
    assert b"ann@localhost/a" in ben.read_until(b"from=.ann@localhost/a.[^>]*/?>")
    ann.send(b"<message to='ben@localhost' type='chat'><body>across</body></message>")
    got = ben.read_until(b"</message>")
    assert b"<body>across</body>" in got and b"ann@localhost/a" in got
    ann.close()
    assert b"unavailable" in ben.read_until(b"from=.ann@localhost/a.[^>]*type=.unavailable.")
    ben.close()

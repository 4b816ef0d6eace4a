"""Connections and timeouts at the listener, on every door (issue 19, items 3, 4 and 11).

In memory: the connection policy (:mod:`presenced.listener`), the WebSocket frame check
(:mod:`presenced.comet.wslimit`) and the HTTP request deadline (:mod:`presenced.httpdeadline`).
Against real server processes: per-IP caps and the open-files budget while other doors and a
logged-in user keep answering, stalled TLS handshakes, idle irccat senders, an oversized
WebSocket message and a slow HTTP request body. Numbers are scaled down from the attacks in
the issue; the shape is kept.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import struct
import threading
import time
from typing import Any, Optional

import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.web import resource, server

from presenced import listener
from presenced.comet.wslimit import CLOSE_TOO_BIG, MessageSizeLimit
from presenced.httpdeadline import DeadlineChannel
from presenced.listener import ConnectionLimits, GuardedFactory, OpenFiles
from presenced.metrics import Metrics
from tests import helpers
from tests.ircd import IRCWatcher, NgIRCd, cat

# --- in memory: the connection policy -----------------------------------------------------


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


def policy(limits: ConnectionLimits, files: Optional[OpenFiles] = None,
           clock: Optional[task.Clock] = None) -> GuardedFactory:
    return GuardedFactory("test", Factory.forProtocol(Recorder), limits,
                          files or OpenFiles(1000), Metrics(), clock or task.Clock())


def connect(factory: GuardedFactory, host: str) -> tuple[Any, StringTransport]:
    protocol = factory.buildProtocol(IPv4Address("TCP", host, 40000))
    transport = StringTransport()
    if protocol is not None:
        protocol.makeConnection(transport)
    return protocol, transport


def refused(factory: GuardedFactory, reason: str) -> float:
    return factory.refusals.metrics.value(listener.REFUSED, door="test", reason=reason)


def test_per_ip_cap_refuses_the_next_connection_and_counts_it():
    factory = policy(ConnectionLimits(10, 2, refusal=b"go away\n"))
    first, _ = connect(factory, "10.0.0.1")
    connect(factory, "10.0.0.1")
    extra, transport = connect(factory, "10.0.0.1")
    assert transport.value() == b"go away\n" and transport.disconnecting
    assert refused(factory, listener.PER_IP) == 1
    other, _ = connect(factory, "10.0.0.2")
    assert other.protocol.transport is other          # another address is let in
    first.connectionLost(None)
    again, _ = connect(factory, "10.0.0.1")           # a place freed is a place again
    assert isinstance(again.protocol, Recorder)
    assert factory.files.open == 3 and dict(factory.per_ip) == {"10.0.0.1": 2, "10.0.0.2": 1}


def test_ipv6_addresses_of_one_64_share_the_per_ip_cap():
    factory = policy(ConnectionLimits(10, 2))
    for host in ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9"):
        assert factory.buildProtocol(IPv6Address("TCP", host, 40000)) is not None
    assert factory.buildProtocol(IPv6Address("TCP", "2001:db8:1:2::77", 1)) is None
    assert refused(factory, listener.PER_IP) == 1
    assert factory.buildProtocol(IPv6Address("TCP", "2001:db8:1:3::1", 1)) is not None
    assert factory.per_ip["2001:db8:1:2::/64"] == 2
    connect(factory, "10.0.0.1")
    assert factory.buildProtocol(IPv6Address("TCP", "::ffff:10.0.0.1", 1)) is not None
    assert factory.per_ip["10.0.0.1"] == 2      # a dual-stack socket's IPv4 client counts once


def test_door_total_and_the_shared_open_files_budget():
    files = OpenFiles(3)
    xmpp = policy(ConnectionLimits(2, 100), files)
    comet = policy(ConnectionLimits(100, 100), files)
    admin = policy(ConnectionLimits(5, 5, public=False), files)
    connect(xmpp, "10.0.0.1")
    connect(xmpp, "10.0.0.2")
    assert xmpp.buildProtocol(IPv4Address("TCP", "10.0.0.3", 1)) is None
    assert refused(xmpp, listener.DOOR_TOTAL) == 1
    connect(comet, "10.0.0.4")
    assert comet.buildProtocol(IPv4Address("TCP", "10.0.0.5", 1)) is None
    assert refused(comet, listener.OPEN_FILES) == 1
    kept, _ = connect(admin, "127.0.0.1")            # the admin doors use the reserve
    assert isinstance(kept.protocol, Recorder) and files.open == 3


def test_refusals_waiting_to_be_written_are_bounded_and_past_the_bound_close_at_once():
    """A flood's accept loop refuses a hundred connections in one reactor turn; each waiting
    for its refusal bytes holds a file, so past MAX_REFUSING the files come back at once."""
    files = OpenFiles(0)
    factory = policy(ConnectionLimits(10, 10, refusal=b"busy\n"), files)
    waiting = [connect(factory, f"10.0.1.{n}") for n in range(listener.MAX_REFUSING)]
    assert all(t.value() == b"busy\n" and t.disconnecting for _, t in waiting)
    assert factory.buildProtocol(IPv4Address("TCP", "10.0.2.1", 1)) is None
    assert refused(factory, listener.OPEN_FILES) == listener.MAX_REFUSING + 1
    waiting[0][0].connectionLost(None)              # one refusal written and closed
    told, transport = connect(factory, "10.0.2.2")
    assert transport.value() == b"busy\n" and files.refusing == listener.MAX_REFUSING


def test_new_caps_apply_to_new_connections_and_keep_open_ones():
    clock = task.Clock()
    factory = policy(ConnectionLimits(10, 10), clock=clock)
    factory.startFactory()
    held = [connect(factory, "10.0.0.1")[1] for _ in range(3)]
    factory.apply(ConnectionLimits(10, 2, idle_timeout=5.0))         # a reload
    assert factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1)) is None
    assert not any(t.disconnecting for t in held)   # a lowered cap closes nobody
    assert factory.per_ip["10.0.0.1"] == 3
    clock.advance(6)                                 # the new idle timeout is swept for
    assert all(t.disconnecting for t in held)


def test_evict_idle_makes_room_for_a_newcomer_and_idle_connections_are_swept():
    clock = task.Clock()
    factory = policy(ConnectionLimits(3, 3, idle_timeout=10.0, evict_idle=True), clock=clock)
    factory.startFactory()
    oldest, oldest_transport = connect(factory, "127.0.0.1")
    clock.advance(1)
    busy, busy_transport = connect(factory, "127.0.0.1")
    clock.advance(1)
    connect(factory, "127.0.0.1")
    clock.advance(1)
    oldest.dataReceived(b"x")                         # no longer the one silent longest
    newcomer, _ = connect(factory, "127.0.0.1")
    assert isinstance(newcomer.protocol, Recorder)
    assert busy_transport.disconnecting               # aborted: it was silent longest
    assert busy not in factory.connections and oldest in factory.connections
    assert not oldest_transport.disconnecting
    clock.advance(10.5)                               # the sweep closes the silent ones
    assert oldest_transport.disconnecting
    factory.stopFactory()


def test_closing_is_bounded_and_a_stalled_tls_handshake_is_aborted_at_once():
    clock = task.Clock()
    factory = policy(ConnectionLimits(10, 10), clock=clock)
    plain, transport = connect(factory, "10.0.0.1")
    aborted = []
    transport.abortConnection = lambda: aborted.append("plain")
    plain.protocol.transport.loseConnection()
    assert transport.disconnecting and not aborted
    clock.advance(listener.CLOSE_GRACE + 1)           # the peer never took the last bytes
    assert aborted == ["plain"]

    tls, transport = connect(factory, "10.0.0.2")
    transport.startTLS = lambda context, normal=True: None
    transport.abortConnection = lambda: aborted.append("tls")
    tls.startTLS(object())
    tls.loseConnection()
    assert aborted == ["plain", "tls"]
    tls.handshakeCompleted()
    assert not tls.handshaking


def test_refusals_are_logged_once_per_interval():
    clock = task.Clock()
    factory = policy(ConnectionLimits(1, 1), clock=clock)
    connect(factory, "10.0.0.1")
    for _ in range(50):
        connect(factory, "10.0.0.1")
    assert refused(factory, listener.PER_IP) == 50
    assert factory.refusals.pending == {listener.PER_IP: 49}
    clock.advance(listener.LOG_INTERVAL)
    assert not factory.refusals.pending and factory.refusals.timer is not None
    clock.advance(listener.LOG_INTERVAL)
    assert factory.refusals.timer is None


# --- in memory: the WebSocket frame check --------------------------------------------------


def frame(opcode: int, length: int, fin: bool = True, payload: Optional[bytes] = None) -> bytes:
    """A masked client frame header (with a zero mask) and ``payload`` (default: zeros)."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    return head + b"\0\0\0\0" + (b"\0" * length if payload is None else payload)


def guarded_ws(limit: int) -> tuple[MessageSizeLimit, Recorder, StringTransport]:
    inner, transport = Recorder(), StringTransport()
    guard = MessageSizeLimit(inner, limit)
    guard.makeConnection(transport)
    return guard, inner, transport


def test_messages_within_the_limit_pass_byte_for_byte_even_split_anywhere():
    guard, inner, transport = guarded_ws(1000)
    data = (frame(0x1, 600, fin=False) + frame(0x9, 4) + frame(0x0, 400)
            + frame(0x2, 1000) + frame(0x1, 70000 - 69990))
    for i in range(0, len(data), 7):
        guard.dataReceived(data[i:i + 7])
    assert inner.received == data and not transport.disconnecting


def test_a_huge_declared_frame_is_refused_at_its_header_with_1009():
    guard, inner, transport = guarded_ws(65536)
    guard.dataReceived(frame(0x1, 2**63 - 1, payload=b"x" * 10))
    assert transport.value() == CLOSE_TOO_BIG and transport.disconnecting
    assert inner.received == b""
    guard.dataReceived(b"more" * 1000)
    assert inner.received == b""


def test_fragments_are_counted_across_the_message():
    guard, inner, transport = guarded_ws(65536)
    fragments = [frame(0x1 if n == 0 else 0x0, 16384, fin=False) for n in range(4)]
    for fragment in fragments:                      # 64 KB so far: at the limit, not past it
        guard.dataReceived(fragment)
    assert not transport.disconnecting
    guard.dataReceived(frame(0x0, 16384, fin=False)[:14])   # the fifth header alone
    assert transport.value() == CLOSE_TOO_BIG
    assert inner.received == b"".join(fragments)


# --- in memory: the HTTP request deadline --------------------------------------------------


class Echo(resource.Resource):
    isLeaf = True

    def render_POST(self, request: server.Request) -> bytes:
        return b"got " + request.content.read()


class LimitedSite(server.Site):
    protocol = DeadlineChannel
    max_body = 10

    def body_limit(self, method: bytes, path: bytes) -> int:
        return self.max_body


def deadline_channel(timeout: float) -> tuple[DeadlineChannel, StringTransport, task.Clock]:
    clock = task.Clock()
    site = LimitedSite(Echo(), timeout=timeout, reactor=clock)
    site.max_body = 1000
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport, clock


def test_a_slow_body_gets_408_at_the_deadline_though_bytes_keep_coming():
    channel, transport, clock = deadline_channel(5.0)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    for _ in range(9):
        clock.advance(0.5)
        channel.dataReceived(b"a")
    assert b"408" not in transport.value()
    clock.advance(0.6)
    assert transport.value().startswith(b"HTTP/1.1 408") and transport.disconnecting


def test_a_complete_request_is_answered_and_the_deadline_restarts_for_the_next():
    channel, transport, clock = deadline_channel(5.0)
    clock.advance(4)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    assert b"got hi" in transport.value()
    clock.advance(4)                                 # a new deadline since the answer
    assert not transport.disconnecting
    transport.clear()
    clock.advance(1.5)                               # idle keep-alive: closed, no 408
    assert transport.disconnecting and transport.value() == b""


def test_a_declared_body_past_the_limit_gets_413_before_it_is_read():
    channel, transport, _ = deadline_channel(5.0)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\nabc")
    assert transport.value().startswith(b"HTTP/1.1 413") and transport.disconnecting
    channel.dataReceived(b"x" * 5000)                # nothing more is read or answered
    assert transport.value().count(b"HTTP/1.1") == 1 and b"got" not in transport.value()


def test_a_chunked_body_is_counted_as_it_arrives():
    channel, transport, _ = deadline_channel(5.0)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    channel.dataReceived(b"3e8\r\n" + b"a" * 1000 + b"\r\n")   # 1000 bytes: at the limit
    assert transport.value() == b""
    channel.dataReceived(b"1\r\nb\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413") and transport.disconnecting
    within, answer, _ = deadline_channel(5.0)       # a body within the limit is served
    within.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"2\r\nhi\r\n0\r\n\r\n")
    assert b"got hi" in answer.value()


# --- real processes ------------------------------------------------------------------------

STREAM = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


def dial(port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0))


def read_until(sock: socket.socket, marker: bytes, timeout: float = 10.0) -> bytes:
    data, deadline = b"", time.monotonic() + timeout
    while marker not in data and time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not chunk:
            break
        data += chunk
    return data


def closed_after(sock: socket.socket, timeout: float) -> Optional[float]:
    """Seconds until the server closed ``sock`` (EOF or reset), or None within ``timeout``."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except socket.timeout:
            return None
        except OSError:
            return time.monotonic() - start
    return None


def login(port: int, user: str, password: str) -> socket.socket:
    """A plain-TCP SASL PLAIN login with a bound resource (``allow_plain`` servers)."""
    sock = dial(port)
    sock.sendall(STREAM)
    assert b"PLAIN" in read_until(sock, b"</stream:features>")
    token = base64.b64encode(f"\0{user}\0{password}".encode())
    sock.sendall(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                 + token + b"</auth>")
    assert b"<success" in read_until(sock, b"success")
    sock.sendall(STREAM)
    read_until(sock, b"</stream:features>")
    sock.sendall(b"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>"
                 b"</iq>")
    assert b"jid" in read_until(sock, b"</iq>")
    return sock


def pings(sock: socket.socket, n: int) -> bool:
    sock.sendall(b"<iq type='get' id='ping%d' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
                 % n)
    return b"result" in read_until(sock, b"ping%d" % n, timeout=15)


def http_get(port: int, path: str, timeout: float = 15.0) -> bytes:
    with dial(port, timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                     .encode())
        return read_until(sock, b"\r\n\r\n", timeout)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class PeakFiles:
    """The most files a process held while the ``with`` block ran, sampled in a thread as
    fast as /proc lists them (a burst of refusals holds its files for a reactor turn)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.most = 0
        self.running = True
        self.sampler = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while self.running:
            self.most = max(self.most, open_fds(self.pid))

    def __enter__(self) -> "PeakFiles":
        self.sampler.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.running = False
        self.sampler.join()


def metric(port: int, series: str) -> float:
    with dial(port) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        body = read_until(sock, b"\x00", timeout=10)
    for line in body.decode().splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def limited_server(presenced_factory, monkeypatch):
    """XMPP over plain TCP with a per-IP cap of 5, in a process allowed 300 open files (so
    the public doors may hold 225 connections together), every other door on."""
    monkeypatch.setattr(helpers, "TWISTD", ["prlimit", "--nofile=300:300", "--"]
                        + helpers.TWISTD)
    process = presenced_factory({
        "server": {"scram_iterations": 1000},
        "xmpp": {"require_tls": False, "allow_plain": True, "max_connections_per_ip": 5},
        "comet": {"require_token": False}})
    process.ctl("import-users", "-", "--quiet", input="alice@localhost alice-pw\n")
    return process


def test_per_ip_cap_and_open_files_budget_leave_the_other_doors_answering(limited_server):
    ports, pid = limited_server.ports, limited_server.process.pid
    alice = login(ports["xmpp"], "alice", "alice-pw")
    held = []
    for _ in range(5):
        sock = dial(ports["xmpp"], "127.0.0.5")
        sock.sendall(STREAM)
        assert b"<stream:features" in read_until(sock, b"</stream:features>")
        held.append(sock)
    extra = dial(ports["xmpp"], "127.0.0.5")
    answer = read_until(extra, b"</stream:stream>")
    assert b"policy-violation" in answer and closed_after(extra, 5) is not None
    other = dial(ports["xmpp"], "127.0.0.6")
    other.sendall(STREAM)
    assert b"<stream:features" in read_until(other, b"</stream:features>")
    assert pings(alice, 1)

    # A flood from many addresses, queued while the server is stopped so that it accepts
    # them in bursts (Twisted accepts more per turn as the queue stays full): the public
    # doors stop at 225 connections together and refusals waiting to be written are bounded,
    # far from the 300 files the process may open, so the admin doors still answer.
    flood = held + [other]
    os.kill(pid, signal.SIGSTOP)
    try:
        for n in range(260):
            flood.append(dial(ports["comet"], f"127.0.{1 + n // 5}.{10 + n % 5}", timeout=5))
    finally:
        os.kill(pid, signal.SIGCONT)
    refused_for_files = 'presenced_connections_refused_total{door="comet",reason="open_files"}'
    peak = PeakFiles(pid)
    with peak:
        helpers.wait_until(lambda: metric(ports["webadmin"], refused_for_files) >= 30,
                           "comet connections refused for the open-files budget", timeout=30)
    assert 225 < peak.most < 300 - 20, peak.most
    assert http_get(ports["webadmin"], "/").startswith(b"HTTP/1.1 ")
    assert pings(alice, 2)
    assert metric(ports["webadmin"], 'presenced_connections_refused_total'
                  '{door="xmpp",reason="per_ip"}') == 1
    for sock in flood + [extra, alice]:
        sock.close()


def test_stalled_tls_handshakes_are_closed_within_the_auth_timeout(presenced_factory):
    process = presenced_factory({
        "xmpp": {"auth_timeout": 1.5, "direct_tls": True, "direct_tls_port": 0},
        "comet": {"enabled": False}, "thrift": {"enabled": False},
        "webadmin": {"enabled": False}})
    pid, ports = process.process.pid, process.ports
    baseline_fds, baseline_rss = open_fds(pid), rss_kb(pid)
    stalled = []                                   # (socket, when it connected)
    for n in range(20):
        sock = dial(ports["xmpp"], f"127.0.3.{n + 1}")
        connected = time.monotonic()
        sock.sendall(STREAM)
        read_until(sock, b"</stream:features>")
        sock.sendall(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        assert b"<proceed" in read_until(sock, b"<proceed")
        stalled.append((sock, connected))          # silent after proceed
    for n in range(20):
        sock = dial(ports["xmpp_tls"], f"127.0.4.{n + 1}")
        if n % 2:
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")   # half a hello
        stalled.append((sock, time.monotonic()))
    # auth_timeout, then at most a second until the deadline sweep, then margin for a
    # loaded machine: far from "never", which is what happened before.
    for sock, connected in stalled:
        closed_after(sock, max(connected + 1.5 + 5.0 - time.monotonic(), 0.01))
        assert time.monotonic() - connected < 1.5 + 5.0, "a stalled handshake is still open"
        assert time.monotonic() - connected > 1.0
        sock.close()
    time.sleep(0.5)
    assert open_fds(pid) <= baseline_fds + 2
    assert rss_kb(pid) < baseline_rss + 20_000


@pytest.fixture
def ircd(tmp_path):
    ngircd = NgIRCd(tmp_path / "ircd")
    ngircd.start()
    yield ngircd
    ngircd.stop()


def test_irccat_idle_senders_are_closed_and_never_lock_out_a_line(ircd, presenced_factory):
    watcher = IRCWatcher(ircd.port)
    try:
        watcher.join("#presenced")
        process = presenced_factory({
            "irc": {"enabled": True, "server": "127.0.0.1", "port": ircd.port,
                    "channels": ["#presenced"], "reconnect_min_seconds": 0.2,
                    "cat_idle_timeout": 3.0, "cat_max_connections": 20},
            "xmpp": {"enabled": False}, "comet": {"enabled": False},
            "thrift": {"enabled": False}, "webadmin": {"enabled": False}})
        watcher.wait_for(lambda m: m.command == "JOIN" and m.nick == "presenced")
        port = process.ports["irc_cat"]
        idle = [dial(port) for _ in range(30)]      # more than the cap, all silent
        time.sleep(0.3)
        cat(port, b"a legitimate line\n")
        watcher.wait_for(lambda m: m.command == "PRIVMSG" and m.params[-1] == "a legitimate line",
                         timeout=10)
        started = time.monotonic()
        for sock in idle:
            assert closed_after(sock, 3.0 + 6.0 - (time.monotonic() - started)) is not None
            sock.close()
    finally:
        watcher.close()


def websocket(port: int, user: str) -> socket.socket:
    sock = dial(port)
    sock.sendall(f"GET /ws/{user} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    assert b"101" in read_until(sock, b"\r\n\r\n").split(b"\r\n")[0]
    return sock


def close_code(sock: socket.socket) -> Optional[int]:
    """The code of the close frame the server sends (skipping the welcome text frame)."""
    data = read_until(sock, b"\x88", timeout=10)
    at = data.find(b"\x88")
    if at < 0:
        return None
    data += read_until(sock, b"\xff" * 64, timeout=1) if len(data) < at + 4 else b""
    return struct.unpack_from("!H", data, at + 2)[0]


def test_oversized_websocket_messages_are_refused_with_1009_and_cost_no_memory(
        presenced_factory):
    process = presenced_factory({
        "comet": {"require_token": False}, "xmpp": {"enabled": False},
        "thrift": {"enabled": False}, "webadmin": {"enabled": False}})
    port, pid = process.ports["comet"], process.process.pid
    sock = websocket(port, "alice")
    sock.sendall(frame(0x1, 2**63 - 1, payload=b""))
    assert close_code(sock) == 1009
    sock.close()
    baseline = rss_kb(pid)
    for _ in range(5):                              # 5 x 20 MB unfinished fragmented messages
        sock = websocket(port, "alice")
        try:
            for _ in range(20):
                sock.sendall(frame(0x1 if _ == 0 else 0x0, 1 << 20, fin=False))
        except OSError:
            pass
        assert close_code(sock) in (1009, None)
        sock.close()
    assert rss_kb(pid) < baseline + 15_000
    sock = websocket(port, "alice")                 # the door still serves WebSockets
    sock.close()


def test_slow_and_oversized_http_bodies_are_refused_on_comet_and_the_web_admin(presenced_factory):
    process = presenced_factory({
        "comet": {"request_timeout": 1.5}, "webadmin": {"request_timeout": 1.5},
        "xmpp": {"enabled": False}, "thrift": {"enabled": False}})
    for port, path in ((process.ports["comet"], "/static/index.html"),
                       (process.ports["webadmin"], "/login")):
        sock = dial(port)
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10000\r\n"
                     "\r\n".encode())
        started, answer = time.monotonic(), b""
        while time.monotonic() - started < 10 and not answer:
            try:
                sock.sendall(b"a")
            except OSError:
                break
            sock.settimeout(0.2)
            try:
                answer = sock.recv(65536)
            except socket.timeout:
                pass
            except OSError:
                break
        elapsed = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), (path, answer)
        assert 1.0 < elapsed < 8.0, elapsed
        sock.close()
    # A body past the door's max_body_bytes (256 KB, 1 MB) is refused before it is sent.
    for port, path, size in ((process.ports["comet"], "/static/index.html", 262145),
                             (process.ports["webadmin"], "/login", 1048577)):
        sock = dial(port)
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {size}\r\n"
                     "\r\n".encode())
        assert read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 413"), path
        assert closed_after(sock, 5.0) is not None
        sock.close()


def test_memory_is_given_back_at_most_once_per_interval(monkeypatch):
    """A full collection pauses the reactor: a storm of closes asks many times, it runs at
    once the first time, then once at the end of each interval, never in between."""
    runs: list[float] = []
    clock = task.Clock()
    monkeypatch.setattr(listener, "_collect_and_trim", lambda: runs.append(clock.seconds()))
    trim = listener.MemoryTrim(clock)
    trim.request()
    clock.advance(0)
    assert runs == [0.0]
    for _ in range(5):
        clock.advance(5)
        trim.request()
    assert runs == [0.0]  # asked five more times within the interval: nothing yet
    clock.advance(listener.TRIM_INTERVAL - 25)
    assert runs == [0.0, listener.TRIM_INTERVAL]  # once, at the end of the interval
    clock.advance(listener.TRIM_INTERVAL * 3)
    assert len(runs) == 2  # nobody asked again

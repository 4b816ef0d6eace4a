"""Comet streams as router sessions, in-process: a real Core and embedded store, the comet door
on a real loopback port, real TCP clients; events sent through ``core.router``."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from presenced import config, events
from presenced.comet.door import CometDoor
from presenced.comet.replay import Channels
from presenced.comet.stream import CometConnection
from presenced.core import Core
from presenced.events import Event
from presenced.router import SubscriptionRouter
from presenced.store.backends import make_store


def sleep(seconds: float) -> defer.Deferred:
    d = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


async def until(condition, timeout: float = 5.0, what: str = "condition") -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await sleep(0.02)
    raise AssertionError(f"{what} not reached in {timeout}s")


class Client(protocol.Protocol):
    """Collects everything the server sends."""

    def __init__(self) -> None:
        self.data = b""
        self.lost = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason=None) -> None:
        self.lost.callback(None)


@pytest.fixture
def comet(tmp_path: Path):
    cfg = config.load(None, {"server": {"data_dir": str(tmp_path / "data")},
                             "comet": {"require_token": False, "replay_size": 3,
                                       "replay_linger": 0.5, "max_buffered_bytes": 65536,
                                       "heartbeat_interval": 60.0}})
    store = make_store(cfg)
    pytest_twisted.blockon(defer.maybeDeferred(store.start))
    core = Core(cfg, store)
    door = CometDoor(core)
    port = reactor.listenTCP(0, door, interface="127.0.0.1")
    yield core, door, port.getHost().port
    core.router.close_all("test over")
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))
    pytest_twisted.blockon(store.stop())


async def open_stream(port: int, path: str, headers: str = "") -> Client:
    client = Client()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    client.transport.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n".encode())
    await until(lambda: b'"welcome"' in client.data, what="welcome")
    return client


def streams_of(core: Core, user: str) -> list:
    return [s for s in core.router.sessions(user) if isinstance(s, CometConnection)]


@pytest_twisted.ensureDeferred
async def test_disconnect_is_cleaned_up_at_once_and_a_late_send_is_harmless(comet):
    core, door, port = comet
    one = await open_stream(port, "/stream/alice")
    two = await open_stream(port, "/stream/alice")
    assert len(streams_of(core, "alice@localhost")) == 2
    session = streams_of(core, "alice@localhost")[0]
    one.transport.loseConnection()
    await one.lost
    await until(lambda: len(streams_of(core, "alice@localhost")) == 1, what="logout")
    session.deliver(Event(events.TUNE, "bob@localhost", {"title": "late"}))   # no error
    core.router.deliver("alice@localhost", Event(events.PEP, "bob@localhost",
                                                 {"node": "geoloc", "item": "<geoloc/>"}))
    assert core.router.deliver("alice@localhost",
                               Event(events.TUNE, "bob@localhost", {"title": "x"})) == 1
    await until(lambda: b'"title":"x"' in two.data, what="event on the other stream")
    assert b'"title":"late"' not in one.data
    assert b"geoloc" not in two.data        # raw PEP items are for XMPP clients only
    assert door.connections == 1


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_cut_off(comet):
    core, door, port = comet
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /stream/slow HTTP/1.1\r\nHost: t\r\n\r\n")
    await until(lambda: streams_of(core, "slow@localhost"), what="login")
    stream = streams_of(core, "slow@localhost")[0]
    big = "x" * 1000
    sent = 0
    while streams_of(core, "slow@localhost") and sent < 20000:
        core.router.deliver("slow@localhost", Event(events.MESSAGE, "bob@localhost",
                                                    {"to": "slow@localhost", "body": big}))
        sent += 1
        if sent % 50 == 0:
            await sleep(0)      # let the reactor try to write (and find the peer full)
    await until(lambda: not streams_of(core, "slow@localhost"), what="cut off")
    assert stream.budget is None or stream.budget.exceeded
    # bounded: cut off after the kernel buffers plus max_buffered_bytes, not 20 MB later
    assert sent * 1000 < 8 * 1024 * 1024
    sock.close()


@pytest_twisted.ensureDeferred
async def test_replay_buffer_is_bounded_and_held_while_the_user_is_away(comet):
    core, door, port = comet
    client = await open_stream(port, "/stream/carol", "Accept: text/event-stream\r\n")
    sent = [Event(events.TUNE, "bob@localhost", {"title": f"t{i}"}) for i in range(5)]
    for event in sent:
        core.router.deliver("carol@localhost", event)
    channel = door.channels.get("carol@localhost")
    assert [e.id for e in channel.events] == [e.id for e in sent[-3:]]   # replay_size 3
    client.transport.loseConnection()
    await client.lost
    # the buffer itself now holds carol's events, though she is offline (no ghost session)
    await until(lambda: door.channels.get("carol@localhost").held_since is not None,
                what="the buffer held")
    assert core.router.sessions("carol@localhost") == ()
    away = Event(events.TUNE, "bob@localhost", {"title": "while away"})
    assert core.router.deliver("carol@localhost", away) == 0
    back = await open_stream(port, "/stream/carol",
                             f"Accept: text/event-stream\r\nLast-Event-ID: {sent[-1].id}\r\n")
    await until(lambda: b"while away" in back.data, what="replayed event")
    assert b'"title":"t4"' not in back.data
    assert core.router.sessions("carol@localhost") == tuple(streams_of(core, "carol@localhost"))
    back.transport.loseConnection()
    await back.lost
    await until(lambda: not streams_of(core, "carol@localhost"), what="logout")
    await sleep(0.6)
    door.channels.expire()          # past replay_linger: the buffer is gone
    assert door.channels.get("carol@localhost") is None
    assert not core.router.is_online("carol@localhost")


def test_a_held_replay_buffer_is_not_an_online_session():
    router = SubscriptionRouter(store=None)  # type: ignore[arg-type]  # delivery never reads it
    channels = Channels(router, size=3, linger=60.0)
    channel = channels.attach("gone@localhost")
    channels.detach(channel)                 # the last stream closed: held
    assert (router.is_online("gone@localhost"), router.online_users(),
            router.session_count(), list(router.all_sessions())) == (False, 0, 0, [])
    event = Event(events.TUNE, "bob@localhost", {"title": "kept"})
    assert router.deliver("gone@localhost", event) == 0
    assert list(channel.events) == [event]   # still collected for the next stream
    channels.attach("gone@localhost")        # back: no longer watching
    router.deliver("gone@localhost", Event(events.TUNE, "bob@localhost", {"title": "x"}))
    assert list(channel.events) == [event]


@pytest_twisted.ensureDeferred
async def test_server_shutdown_ends_streams_with_a_reason(comet):
    core, door, port = comet
    client = await open_stream(port, "/stream/dave")
    core.router.close_all("system-shutdown")
    await client.lost
    assert (b'{"type": "closed", "reason": "system-shutdown", "reconnect": true, '
            b'"retry_ms": 3000}' in client.data)
    assert client.data.endswith(b"0\r\n\r\n")
    assert door.connections == 0


@pytest_twisted.ensureDeferred
async def test_server_shutdown_tells_polls_and_websockets_to_reconnect_a_kick_does_not(comet):
    core, door, port = comet
    poll = Client()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), poll)
    poll.transport.write(b"GET /poll/fred HTTP/1.1\r\nHost: t\r\n\r\n")
    await until(lambda: streams_of(core, "fred@localhost"), what="waiting poll")
    ws = Client()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), ws)
    ws.transport.write(b"GET /ws/gina HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       b"Sec-WebSocket-Version: 13\r\n\r\n")
    await until(lambda: b'"welcome"' in ws.data, what="websocket welcome")
    kicked = await open_stream(port, "/stream/hank")
    streams_of(core, "hank@localhost")[0].close("kicked by admin")
    await kicked.lost
    assert b'{"type": "closed", "reason": "kicked by admin"}' in kicked.data
    core.router.close_all("system-shutdown")
    await poll.lost
    await ws.lost
    assert poll.data.startswith(b"HTTP/1.1 503") and b"Retry-After: 3\r\n" in poll.data
    assert b'"reconnect": true' in ws.data
    assert b"\x88" in ws.data and b"\x03\xe9system-shutdown" in ws.data   # close 1001


WS_UPGRADE = (b"GET /ws/%s HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
PONG = b"\x8a\x80" + b"\x00\x00\x00\x00"     # a masked, empty pong (the mask is all zero)


class Ponger(Client):
    """A browser: answers every ping (an empty ping frame is 0x89 0x00)."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        for _ in range(data.count(b"\x89\x00")):
            self.transport.write(PONG)


@pytest_twisted.ensureDeferred
async def test_a_websocket_that_answers_no_ping_is_closed(tmp_path: Path):
    cfg = config.load(None, {"server": {"data_dir": str(tmp_path / "data")},
                             "comet": {"require_token": False, "heartbeat_interval": 0.2,
                                       "websocket_idle_timeout": 0.7}})
    store = make_store(cfg)
    await defer.maybeDeferred(store.start)
    door = CometDoor(Core(cfg, store))
    port = reactor.listenTCP(0, door, interface="127.0.0.1")
    try:
        silent, browser = Client(), Ponger()
        for client, user in ((silent, b"ida"), (browser, b"jon")):
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
                                  client)
            client.transport.write(WS_UPGRADE % user)
            await until(lambda: b'"welcome"' in client.data, what="websocket welcome")
        await until(lambda: silent.lost.called, timeout=5, what="the silent client closed")
        assert b"\x03\xe9idle: no answer to pings" in silent.data      # close 1001
        assert not browser.lost.called and browser.data.count(b"\x89\x00") >= 4
        browser.transport.loseConnection()
        await browser.lost
    finally:
        await defer.maybeDeferred(port.stopListening)
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_long_poll_keeps_the_connection_for_the_next_poll(comet):
    core, door, port = comet
    client = Client()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    client.transport.write(b"GET /poll/erin HTTP/1.1\r\nHost: t\r\n\r\n")
    await until(lambda: streams_of(core, "erin@localhost"), what="waiting poll")
    first = Event(events.PRESENCE, "bob@localhost", {"show": "away", "status": "lunch"})
    core.router.deliver("erin@localhost", first)
    await until(lambda: b'"next":%d}' % first.id in client.data, what="poll answer")
    assert b'"status":"lunch"' in client.data
    second = Event(events.PRESENCE, "bob@localhost", {"show": "chat", "status": "back"})
    core.router.deliver("erin@localhost", second)          # between polls: held
    client.transport.write(b"GET /poll/erin?since=%d HTTP/1.1\r\nHost: t\r\n\r\n" % first.id)
    await until(lambda: b'"next":%d}' % second.id in client.data, what="second answer")
    assert client.data.count(b"HTTP/1.1 200 OK") == 2
    client.transport.loseConnection()
    await client.lost


@pytest_twisted.ensureDeferred
async def test_a_websocket_that_stops_reading_is_cut_off(comet):
    core, door, port = comet
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /ws/slowws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    await until(lambda: core.router.sessions("slowws@localhost"), what="websocket login")
    assert core.router.sessions("slowws@localhost")[0].label.startswith("ws ")
    def websockets() -> list:
        return list(core.router.sessions("slowws@localhost"))
    big = "y" * 1000
    sent = 0
    while websockets() and sent < 20000:
        core.router.deliver("slowws@localhost", Event(events.MESSAGE, "bob@localhost",
                                                      {"to": "slowws@localhost", "body": big}))
        sent += 1
        if sent % 50 == 0:
            await sleep(0)
    await until(lambda: not websockets(), what="cut off")
    assert sent * 1000 < 8 * 1024 * 1024
    sock.close()


@pytest_twisted.ensureDeferred
async def test_a_stream_sends_each_turns_frames_without_waiting_for_an_acknowledgement(comet):
    """Nagle off: a frame written while the last is unacknowledged goes out at once, not
    after the client's delayed ACK."""
    core, door, port = comet
    client = await open_stream(port, "/stream/alice")
    handle = streams_of(core, "alice@localhost")[0].transport.getHandle()
    assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    client.transport.loseConnection()
    await client.lost

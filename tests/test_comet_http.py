"""The comet port's HTTP parsing in memory: a CometDoor over a Core without a store, each
connection on a StringTransport (bad input, keep-alive hand-off, the twisted.web part)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web import server

from presenced import config, events
from presenced.comet import stream as comet_stream
from presenced.comet.door import CometDoor
from presenced.core import Core
from presenced.events import Event
from presenced.irc.bot import IRCBot
from presenced.irc.http import CatResource
from presenced.tokens import check_token


@pytest.fixture
def door(tmp_path: Path, monkeypatch):
    clock = task.Clock()
    monkeypatch.setattr(comet_stream, "reactor", clock)
    cfg = config.load(None, {"server": {"data_dir": str(tmp_path)},
                             "comet": {"require_token": True, "poll_timeout": 5.0}})
    door = CometDoor(Core(cfg, store=None))  # type: ignore[arg-type]  # HTTP only
    door.clock = clock
    return door


def connect(door: CometDoor):
    connection = door.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
    connection.makeConnection(transport)
    return connection, transport


def answer(door: CometDoor, data: bytes) -> bytes:
    connection, transport = connect(door)
    connection.dataReceived(data)
    return transport.value()


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response else 0


@pytest.mark.parametrize("request_bytes, expected", [
    (b"GET /poll/a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", 400),
    (b"GET /poll/a HTTP/1.1\nHost: x\n\n", 400),
    (b"GET /static/comet-demo.css HTTP/1.1\nHost: x\n\n", 400),
    (b"get /poll/a HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    (b"GET /stream/a?token=1999999999.%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n", 403),
    (b"GET /static/%00 HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    (b"POST /static/index\x92html HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx", 404),
])
def test_bad_requests_get_an_answer_and_log_nothing(door, logged_errors, request_bytes,
                                                    expected):
    assert status(answer(door, request_bytes)) == expected
    assert logged_errors == []


def test_a_non_ascii_token_is_simply_not_valid():
    assert check_token(b"secret", "a@localhost", "1999999999.\u00e9") is False


@pytest.mark.parametrize("extra", [b"Host: y\r\n", b"Sec-WebSocket-Extensions: \xff\r\n",
                                   b"Upgrade: h2c\r\n", b""])
def test_a_bad_websocket_handshake_is_a_quiet_400(door, logged_errors, extra):
    door.require_token = False
    head = (b"GET /ws/a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\n")
    if extra:
        head += b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    response = answer(door, head + extra + b"\r\n")
    assert status(response) == 400 and b"application/json" in response
    assert logged_errors == []


def test_the_web_part_answers_after_a_keep_alive_poll(door):
    door.require_token = False
    connection, transport = connect(door)
    connection.dataReceived(b"GET /poll/a HTTP/1.1\r\nHost: x\r\n\r\n")
    door.router.deliver("a@localhost", Event(events.TUNE, "b@localhost", {"title": "t"}))
    assert transport.value().startswith(b"HTTP/1.1 200 OK")
    transport.clear()
    # handed to twisted.web (a static file, here its JSON 404: no reactor to pull a file)
    connection.dataReceived(b"GET /static/nothing.css HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 404 Not Found")
    assert transport.value().endswith(b'{"error": "no such file"}')


def test_a_poll_that_times_out_without_since_gives_a_usable_next(door):
    door.require_token = False
    connection, transport = connect(door)
    connection.dataReceived(b"GET /poll/a HTTP/1.1\r\nHost: x\r\n\r\n")
    door.clock.advance(5.0)
    body = json.loads(transport.value().split(b"\r\n\r\n", 1)[1])
    assert body["events"] == [] and isinstance(body["next"], int)
    transport.clear()
    later = Event(events.TUNE, "b@localhost", {"title": "between polls"})
    door.router.deliver("a@localhost", later)      # not polling: held for the next one
    connection.dataReceived(b"GET /poll/a?since=%d HTTP/1.1\r\nHost: x\r\n\r\n" % body["next"])
    assert status(transport.value()) == 200
    assert json.loads(transport.value().split(b"\r\n\r\n", 1)[1])["next"] == later.id


@pytest.mark.parametrize("method", [b"HEAD", b"GET"])
def test_irccat_answers_other_methods_with_a_json_405(tmp_path: Path, logged_errors, method):
    core = Core(config.load(None, {"server": {"data_dir": str(tmp_path)}}), store=None)
    site = server.Site(CatResource(IRCBot(core, core.config.irc, clock=task.Clock()), "t"))
    channel = site.buildProtocol(None)
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(method + b" /irccat HTTP/1.1\r\nHost: x\r\n\r\n")
    response = transport.value()
    assert status(response) == 405 and b"application/json" in response
    assert b"Allow: POST" in response and b"<html" not in response
    assert logged_errors == []

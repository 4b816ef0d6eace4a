"""The IRC cat bot against a real IRC server (a private ngircd), watched by a raw client."""

from __future__ import annotations

import json
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import thriftpy2
from thriftpy2.rpc import make_client

from presenced.xmpp.tls import generate_self_signed
from tests.helpers import REPO
from tests.ircd import IRCWatcher, Message, NgIRCd, cat

BOT = "presenced"
CHANNELS = ["#presenced", "#ops"]


@pytest.fixture
def ircd(tmp_path: Path):
    server = NgIRCd(tmp_path / "ircd")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def watchers():
    """Watcher clients, closed after the test."""
    made: list[IRCWatcher] = []

    def make(port: int, nick: str = "watcher", password: str = "") -> IRCWatcher:
        watcher = IRCWatcher(port, nick, password)
        made.append(watcher)
        return watcher

    yield make
    for watcher in made:
        watcher.close()


def start_bot(presenced_factory: Any, ircd: NgIRCd, thrift: bool = False,
              webadmin: bool = False, **irc: Any):
    settings = {"enabled": True, "server": "127.0.0.1", "port": ircd.port, "nick": BOT,
                "channels": CHANNELS, "flood_lines_per_second": 20.0, "flood_burst": 20,
                "reconnect_min_seconds": 0.2, "reconnect_max_seconds": 1.0}
    settings.update(irc)
    return presenced_factory({"irc": settings, "xmpp": {"enabled": False},
                              "comet": {"enabled": False}, "webadmin": {"enabled": webadmin},
                              "thrift": {"enabled": thrift}})


def bot_joins(watcher: IRCWatcher, channel: str, nick: str = BOT) -> Message:
    return watcher.wait_for(lambda m: m.command == "JOIN" and m.nick == nick
                            and m.params[0].lower() == channel.lower())


def said(watcher: IRCWatcher, target: str, text: str) -> Message:
    return watcher.privmsg(target, text)


def test_cat_lines_arrive_where_their_prefix_sends_them(ircd, watchers, presenced_factory):
    watcher = watchers(ircd.port)
    watcher.join(*CHANNELS)
    server = start_bot(presenced_factory, ircd, cat_max_line_bytes=4096)
    for channel in CHANNELS:
        bot_joins(watcher, channel)
    port = server.ports["irc_cat"]

    cat(port, b"plain line goes to the default channel\n"
              b"#ops,@watcher to ops and to me\r\n"
              b"#* to every channel\n"
              b"%TOPIC #ops frozen until monday\n"
              b"#music joined on demand\n")
    said(watcher, "#presenced", "plain line goes to the default channel")
    said(watcher, "#ops", "to ops and to me")
    said(watcher, "watcher", "to ops and to me")
    said(watcher, "#presenced", "to every channel")
    said(watcher, "#ops", "to every channel")
    topic = watcher.wait_for(lambda m: m.command == "TOPIC" and m.nick == BOT)
    assert topic.params == ["#ops", "frozen until monday"]
    watcher.join("#music")
    said(watcher, "#music", "joined on demand")

    # CR, NUL inside a line: spaces, never a second command; CR LF ends a line like LF does.
    cat(port, b"before\rQUIT :injected\x00after\n#ops one\r\nPRIVMSG #ops :two\n")
    injected = said(watcher, "#presenced", "before")
    assert injected.params[-1] == "before QUIT :injected after"
    said(watcher, "#ops", "one")
    literal = said(watcher, "#presenced", "PRIVMSG")
    assert literal.params[-1] == "PRIVMSG #ops :two"

    # Longer than IRC allows: split over several messages, nothing lost.
    words = " ".join(f"w{i:04d}" for i in range(600))
    accents = "é" * 700
    cat(port, f"{words}\n#ops {accents}\n".encode())
    pieces = []
    while not pieces or not pieces[-1].endswith("w0599"):
        pieces.append(said(watcher, "#presenced", "w0").params[-1])
    assert len(pieces) > 1
    assert " ".join(pieces) == words
    chunks = []
    while sum(map(len, chunks)) < len(accents):
        chunks.append(said(watcher, "#ops", "é").params[-1])
    assert len(chunks) > 1 and "".join(chunks) == accents

    # Garbage and oversized lines get an error; the bot stays up and keeps relaying.
    answer = cat(port, b"\xff\xfe\x00\x01\x02 garbage\n" + b"#nope\n", read_answer=2)
    assert b"error: line is not UTF-8" in answer
    assert b"error: nothing to send to #nope" in answer
    answer = cat(port, b"y" * 10000 + b"\nnot sent\n", read_answer=2)
    assert b"error: line longer than 4096 bytes" in answer
    cat(port, bytes(range(256)) * 100)
    cat(port, b"still alive\n")
    said(watcher, "#presenced", "still alive")
    seen = [m.params[-1] for m in watcher.seen if m.command == "PRIVMSG"]
    assert not any("not sent" in text or "garbage" in text for text in seen)
    assert not any(m.command == "QUIT" and m.nick == BOT for m in watcher.seen)


HANDLER = """#!/bin/sh
case "$IRCCAT_COMMAND" in
  echo)
    echo "argv: $*"
    echo "env: $IRCCAT_NICK|$IRCCAT_USER|$IRCCAT_HOST|$IRCCAT_CHANNEL|$IRCCAT_RESPOND_TO|\
$IRCCAT_ARGS|$IRCCAT_RAW"
    ;;
  fail) echo "partial answer"; exit 3 ;;
  hang) echo "started"; sleep 60 ;;
  many) seq 1 10 ;;
  flood) yes 0123456789abcdef ;;
  *) echo "handler does not know $IRCCAT_COMMAND" ;;
esac
"""


def thrift_client(server: Any):
    idl = thriftpy2.load(str(REPO / "thrift" / "presenced.thrift"), module_name="irc_test_thrift")
    return idl, make_client(idl.PresencedAdmin, "127.0.0.1", server.ports["thrift"],
                            timeout=10000)


def test_commands_builtins_handler_hooks_and_thrift_say(ircd, watchers, presenced_factory,
                                                         tmp_path):
    handler = tmp_path / "handler.sh"
    handler.write_text(HANDLER)
    handler.chmod(handler.stat().st_mode | stat.S_IEXEC)
    watcher = watchers(ircd.port)
    watcher.join("#presenced", "#music")
    server = start_bot(presenced_factory, ircd, thrift=True, channels=["#presenced", "#music"],
                       handler=str(handler), handler_timeout=1.5, max_reply_lines=3,
                       handler_max_output_bytes=4096,
                       hooks=[{"events": ["tune"], "users": ["alice"], "channel": "#music",
                               "format": "{user} plays {artist} - {title}"}])
    bot_joins(watcher, "#presenced")
    bot_joins(watcher, "#music")

    watcher.send("PRIVMSG #presenced :?echo one two  three")
    argv = said(watcher, "#presenced", "argv:")
    assert argv.params[-1] == "argv: watcher #presenced echo one two three"
    env = said(watcher, "#presenced", "env:")
    assert env.params[-1] == ("env: watcher|~watcher|127.0.0.1|#presenced|#presenced|"
                              "one two  three|?echo one two  three")
    watcher.send("PRIVMSG #presenced :?fail")
    said(watcher, "#presenced", "partial answer")
    said(watcher, "#presenced", "?fail: handler failed with exit status 3")
    started = time.monotonic()
    watcher.send("PRIVMSG #presenced :?hang")
    said(watcher, "#presenced", "started")
    said(watcher, "#presenced", "?hang: handler timed out after 1.5s and was killed")
    assert time.monotonic() - started < 10
    watcher.send("PRIVMSG #presenced :?many")
    replies = [said(watcher, "#presenced", "").params[-1] for _ in range(3)]
    assert replies == ["1", "2", "... and 8 more lines"]
    watcher.send("PRIVMSG #presenced :?flood")
    said(watcher, "#presenced", "... and")
    said(watcher, "#presenced", "printed more than 4096 bytes")
    # A private message is answered privately.
    watcher.send(f"PRIVMSG {BOT} :?echo privately")
    assert said(watcher, "watcher", "argv:").params[-1] == "argv: watcher  echo privately"

    watcher.send("PRIVMSG #presenced :?help")
    assert "?np <user>" in said(watcher, "#presenced", "?help").params[-1]
    watcher.send("PRIVMSG #presenced :?np alice")
    said(watcher, "#presenced", "alice@localhost: nothing playing")
    watcher.send("PRIVMSG #presenced :?np")
    said(watcher, "#presenced", "?np: usage: ?np <user>")
    server.ctl("add-friend", "alice", "bob")
    watcher.send("PRIVMSG #presenced :?friends alice")
    said(watcher, "#presenced", "alice@localhost has 1 friends: bob@localhost")
    watcher.send("PRIVMSG #presenced :?online bob")
    said(watcher, "#presenced", "bob@localhost is offline")

    idl, client = thrift_client(server)
    try:
        client.publish_np(idl.JabberUser("alice", "localhost"), "Radiohead", "OK Computer",
                          "Airbag", 284, 1)
        # The hook announces it; ?np reads it back from the store.
        said(watcher, "#music", "alice@localhost plays Radiohead - Airbag")
        watcher.send("PRIVMSG #presenced :?np alice")
        said(watcher, "#presenced", "alice@localhost is listening to Radiohead - Airbag "
                                    "(OK Computer)")
        # Bob's tune is not hooked.
        client.publish_np(idl.JabberUser("bob", "localhost"), "Nobody", "", "Hears", 10, 1)
        client.irc_say("#presenced", "said through thrift\nsecond line")
        said(watcher, "#presenced", "said through thrift")
        said(watcher, "#presenced", "second line")
        assert not any("Nobody" in m.params[-1] for m in watcher.seen if m.command == "PRIVMSG")
    finally:
        client.close()


def test_bot_rejoins_after_server_restart_and_kick_and_regains_its_nick(
        ircd, watchers, presenced_factory):
    squatter = watchers(ircd.port, BOT)  # holds the bot's nick
    watcher = watchers(ircd.port)
    watcher.join("#presenced")  # first in: channel operator
    server = start_bot(presenced_factory, ircd, nick_regain_seconds=1.0)
    bot_joins(watcher, "#presenced", nick=BOT + "_")
    squatter.close()
    renamed = watcher.wait_for(lambda m: m.command == "NICK" and m.nick == BOT + "_")
    assert renamed.params[0] == BOT

    watcher.send(f"KICK #presenced {BOT} :out")
    bot_joins(watcher, "#presenced")

    ircd.stop()
    port = server.ports["irc_cat"]
    # Queued while the server is down. A topic, so the check does not depend on whether the
    # watcher or the reconnecting bot gets into the channel first: it sees the TOPIC
    # command, or the topic when it joins.
    cat(port, b"%TOPIC #presenced set while the server was down\n")
    ircd.start()
    watcher = watchers(ircd.port, "watcher2")
    watcher.join("#presenced")
    watcher.wait_for(lambda m: (m.command == "JOIN" and m.nick == BOT) or (
        m.command == "353" and BOT in m.params[-1].replace("@", "").split()))
    topic = watcher.wait_for(lambda m: m.command in ("TOPIC", "332"))
    assert topic.params[-1] == "set while the server was down"
    cat(port, b"after the restart\n")
    said(watcher, "#presenced", "after the restart")


def test_tls_server_password_and_channel_key(tmp_path, watchers, presenced_factory):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_self_signed(str(cert), str(key), ["localhost"])
    ircd = NgIRCd(tmp_path / "tls-ircd", password="hunter2", tls=(cert, key))
    ircd.start()
    try:
        watcher = watchers(ircd.port, password="hunter2")
        watcher.join("#presenced", "#vault")
        watcher.send("MODE #vault +k sesame")
        watcher.wait_for(lambda m: m.command == "MODE" and m.params[:2] == ["#vault", "+k"])
        server = start_bot(presenced_factory, ircd, port=ircd.tls_port, tls=True,
                           tls_verify=False, password="hunter2",
                           channels=["#presenced", "#vault"], channel_keys=["#vault sesame"])
        # The bot is on the port that only speaks TLS, past the password, into the keyed
        # channel.
        bot_joins(watcher, "#vault")
        bot_joins(watcher, "#presenced")
        cat(server.ports["irc_cat"], b"#vault over TLS\n")
        said(watcher, "#vault", "over TLS")
    finally:
        ircd.stop()


def test_cat_lines_over_http_on_the_admin_port(ircd, watchers, presenced_factory):
    watcher = watchers(ircd.port)
    watcher.join(*CHANNELS)
    server = start_bot(presenced_factory, ircd, webadmin=True, http_token="t0ken")
    bot_joins(watcher, "#ops")
    url = f"http://127.0.0.1:{server.ports['webadmin']}/irccat"

    def post(body: bytes, token: str = "t0ken") -> tuple[int, dict]:
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    assert post(b"#ops over http\nplain over http\n") == (200, {"sent": 2, "errors": []})
    said(watcher, "#ops", "over http")
    said(watcher, "#presenced", "plain over http")
    status, answer = post(b"#ops fine\n#nothing\n")
    assert status == 400 and answer["errors"] == ["line 2: nothing to send to #nothing"]
    said(watcher, "#ops", "fine")
    assert post(b"#ops sneaky", token="wrong")[0] == 401
    assert post(b"\xff\xfe")[0] == 400
    assert post(b"x" * 70000)[0] == 413
    cat(server.ports["irc_cat"], b"#ops last\n")
    said(watcher, "#ops", "last")
    assert not any("sneaky" in m.params[-1] for m in watcher.seen if m.command == "PRIVMSG")

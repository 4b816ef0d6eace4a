"""The IRC door's parts on their own: line splitting, cat syntax, flood limit, capability
negotiation with SASL PLAIN (ngircd has no SASL, so the server side is a transcript here),
nonsense from the server, the cat allowlist, and config validation of hooks."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport

from presenced import config, events
from presenced.core import Core
from presenced.events import Event
from presenced.irc.bot import FloodQueue, IRCBot, IRCBotFactory, IRCRefused
from presenced.irc.cat import BadCatLine, CatFactory, CatLine, parse_cat_line
from presenced.irc.hooks import HookAnnouncer
from presenced.irc.text import irccat_formatting, payload_bytes, safe_text, split_to_fit


def make_core(tmp_path: Path, **irc) -> Core:
    settings = config.load(None, {"server": {"data_dir": str(tmp_path)}, "irc": irc})
    return Core(settings, store=None)  # type: ignore[arg-type]  # these parts never read it


def test_hooks_announce_events_about_their_users_once_without_being_sessions(tmp_path: Path):
    core = make_core(tmp_path)
    bot = IRCBot(core, core.config.irc, clock=task.Clock())
    hook = HookAnnouncer(core, bot, {"events": ["message", "tune"], "users": ["alice", "bob"],
                                     "channel": "#presenced",
                                     "format": "{type} {user}>{to}: {body}{title}{nosuch}"})
    hook.start()
    router = core.router
    message = Event(events.MESSAGE, "alice@localhost", {"to": "bob@localhost", "body": "hi"})
    assert router.deliver("bob@localhost", message) == 0  # not a session: nobody reached
    router.deliver("alice@localhost", message)  # the same event seen through alice: once
    assert not router.is_online("bob@localhost")
    router.deliver("bob@localhost", Event(events.TUNE, "bob@localhost", {}))  # stopped
    router.deliver("bob@localhost", Event(events.PRESENCE, "bob@localhost", {"show": "away"}))
    router.deliver("carol@localhost", Event(events.TUNE, "carol@localhost", {"title": "x"}))
    router.deliver("alice@localhost", Event(events.TUNE, "alice@localhost", {"title": "Song"}))
    assert list(bot.queue.lines) == [
        "PRIVMSG #presenced :message alice@localhost>bob@localhost: hi",
        "PRIVMSG #presenced :tune alice@localhost>: Song"]
    hook.stop()
    router.deliver("alice@localhost", Event(events.TUNE, "alice@localhost", {"title": "Later"}))
    assert len(bot.queue.lines) == 2


def test_split_to_fit_never_loses_or_breaks_characters():
    words = " ".join(f"word{i}" for i in range(300))
    pieces = split_to_fit(words, 100)
    assert all(len(p.encode()) <= 100 for p in pieces)
    assert " ".join(pieces) == words
    dense = "ü€𝄞" * 200
    pieces = split_to_fit(dense, 61)
    assert all(len(p.encode()) <= 61 for p in pieces)
    assert "".join(pieces) == dense
    assert split_to_fit("short", 100) == ["short"]
    assert payload_bytes("presenced", "PRIVMSG", "#chan") < 512 - len("PRIVMSG #chan :")


def test_safe_text_removes_line_ends_and_nul():
    assert safe_text("a\rQUIT\nb\0c") == "a QUIT b c"


@pytest.mark.parametrize("line, parsed", [
    ("hello world", CatLine(None, "hello world")),
    ("#ops,#music,@alice Backup done", CatLine(("#ops", "#music", "@alice"), "Backup done")),
    ("#* all of them", CatLine(("#*",), "all of them")),
    ("%TOPIC #ops new topic here", CatLine(("#ops",), "new topic here", topic=True)),
    ("%TOPIC #ops", CatLine(("#ops",), "", topic=True)),
    ("   ", None),
])
def test_cat_syntax_is_irccats(line, parsed):
    assert parse_cat_line(line) == parsed


@pytest.mark.parametrize("line", ["#ops", "#ops,@ text", "%TOPIC nochannel text", "@ text"])
def test_bad_cat_lines_say_why(line):
    with pytest.raises(BadCatLine):
        parse_cat_line(line)


def test_flood_queue_sends_a_burst_then_at_the_rate_and_is_bounded():
    clock = task.Clock()
    queue = FloodQueue(rate=2.0, burst=3, limit=10, clock=clock)
    sent: list[str] = []
    queue.put([f"l{i}" for i in range(6)])
    assert sent == []  # nothing goes out without a connection
    queue.attach(sent.append)
    assert sent == ["l0", "l1", "l2"]
    clock.advance(0.5)
    assert sent[-1] == "l3"
    clock.advance(0.5)
    assert sent[-1] == "l4"
    with pytest.raises(IRCRefused):
        queue.put([f"x{i}" for i in range(10)])
    assert len(queue.lines) == 1  # all or nothing
    clock.advance(10)
    assert sent == [f"l{i}" for i in range(6)]
    queue.detach()
    queue.put(["held"])
    clock.advance(10)
    assert sent[-1] == "l5"


def connect(core: Core) -> tuple[IRCBot, object, StringTransport]:
    bot = IRCBot(core, core.config.irc, clock=task.Clock())
    connection = IRCBotFactory(bot).buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)
    return bot, connection, transport


def sent_lines(transport: StringTransport) -> list[str]:
    lines = transport.value().decode().split("\r\n")
    transport.clear()
    return [line for line in lines if line]


def test_sasl_plain_through_capability_negotiation(tmp_path: Path):
    core = make_core(tmp_path, sasl_username="bot", sasl_password="s3cret", password="srv")
    bot, connection, transport = connect(core)
    assert sent_lines(transport) == ["CAP LS 302", "PASS srv", "NICK presenced",
                                     "USER presenced foo bar :presenced irccat bot"]
    connection.dataReceived(b":srv CAP * LS * :multi-prefix\r\n")
    assert sent_lines(transport) == []
    connection.dataReceived(b":srv CAP * LS :sasl=PLAIN,EXTERNAL\r\n")
    assert sent_lines(transport) == ["CAP REQ :sasl"]
    connection.dataReceived(b":srv CAP * ACK :sasl\r\n")
    assert sent_lines(transport) == ["AUTHENTICATE PLAIN"]
    connection.dataReceived(b"AUTHENTICATE +\r\n")
    token = base64.b64encode(b"bot\0bot\0s3cret").decode()
    assert sent_lines(transport) == [f"AUTHENTICATE {token}"]
    connection.dataReceived(b":srv 903 presenced :SASL authentication successful\r\n")
    assert sent_lines(transport) == ["CAP END"]
    connection.dataReceived(b":srv 001 presenced :Welcome\r\n")
    assert sent_lines(transport) == ["JOIN #presenced"]
    assert bot.connection is connection
    connection.connectionLost(None)
    assert bot.connection is None


def test_failed_sasl_disconnects_rather_than_staying_anonymous(tmp_path: Path):
    core = make_core(tmp_path, sasl_username="bot", sasl_password="wrong")
    bot, connection, transport = connect(core)
    connection.dataReceived(b":srv CAP * LS :sasl\r\n:srv CAP * ACK :sasl\r\n"
                            b"AUTHENTICATE +\r\n:srv 904 presenced :SASL authentication failed\r\n")
    assert sent_lines(transport)[-1].startswith("QUIT :SASL authentication failed")
    assert transport.disconnecting
    assert "SASL authentication failed" in bot.last_error


def test_server_without_sasl_is_left(tmp_path: Path):
    core = make_core(tmp_path, sasl_username="bot", sasl_password="x")
    bot, connection, transport = connect(core)
    connection.dataReceived(b":srv CAP * LS :multi-prefix\r\n")
    assert transport.disconnecting
    assert "offers no SASL" in bot.last_error


def test_nonsense_from_the_server_leaves_the_bot_up(tmp_path: Path):
    core = make_core(tmp_path, channel_keys=["#presenced sesame"])
    bot, connection, transport = connect(core)
    connection.dataReceived(b":srv 001 presenced :Welcome\r\n")
    assert sent_lines(transport)[-1] == "JOIN #presenced sesame"
    connection.dataReceived(b"\xff\xfe\x00\x80garbage\r\n:\r\n \r\nPRIVMSG\r\n:x KICK\r\n"
                            b":x MODE #presenced\r\n:x 353\r\n:x!y@z JOIN\r\n"
                            b":x!y@z PRIVMSG #presenced\r\n:x CAP\r\n")
    assert not transport.disconnecting
    assert core.metrics.value("presenced_irc_bad_lines_total") >= 3
    connection.dataReceived(b"PING :still-here\r\n")
    assert sent_lines(transport)[-1] == "PONG still-here"
    connection.connectionLost(None)


def test_commands_reach_dispatch_without_line_ends_or_nul(tmp_path: Path):
    core = make_core(tmp_path)
    bot, connection, transport = connect(core)
    calls: list[tuple] = []

    class Recorder:
        def dispatch(self, *args: str) -> None:
            calls.append(args)

    bot.commands = Recorder()  # type: ignore[assignment]
    connection.dataReceived(b":srv 001 presenced :Welcome\r\n"
                            b":srv 353 presenced = #presenced :presenced @al\r\n"
                            b":al!~al@h PRIVMSG #presenced :?echo a\x100b\x10nc\r\n"
                            b":al!~al@h PRIVMSG presenced :?np alice\r\n"
                            b":al!~al@h PRIVMSG #presenced :no prefix\r\n")
    assert calls == [("al!~al@h", "#presenced", "#presenced", "?echo a b c"),
                     ("al!~al@h", "presenced", "al", "?np alice")]
    connection.connectionLost(None)


def test_private_commands_only_from_members_of_the_auth_channel(tmp_path: Path):
    core = make_core(tmp_path, channels=["#presenced", "#music"], auth_channel="#ops")
    bot, connection, transport = connect(core)
    calls: list[str] = []

    class Recorder:
        def dispatch(self, sender: str, channel: str, respond_to: str, message: str) -> None:
            calls.append(f"{respond_to} {message}")

    bot.commands = Recorder()  # type: ignore[assignment]
    connection.dataReceived(b":srv 001 presenced :Welcome\r\n")
    assert "JOIN #ops" in sent_lines(transport)        # the bot joins the auth channel

    def private(nick: str) -> None:
        connection.dataReceived(b":%s!~u@h PRIVMSG presenced :?friends alice\r\n" % nick)

    connection.dataReceived(b":presenced!~p@h JOIN #ops\r\n"
                            b":srv 353 presenced @ #ops :presenced @Al +bob\r\n"
                            b":srv 353 presenced = #music :eve\r\n"
                            b":srv 366 presenced #ops :End of /NAMES list.\r\n")
    for nick in (b"al", b"bob", b"eve", b"carol"):
        private(nick)
    assert calls == ["al ?friends alice", "bob ?friends alice"]
    calls.clear()
    connection.dataReceived(b":carol!~c@h JOIN #ops\r\n:al!~a@h PART #ops :bye\r\n"
                            b":bob!~b@h NICK :robert\r\n:x!~x@h KICK #ops carol :out\r\n")
    for nick in (b"al", b"bob", b"robert", b"carol"):
        private(nick)
    assert calls == ["robert ?friends alice"]
    connection.dataReceived(b":eve!~e@h PRIVMSG #music :?online bob\r\n")  # channel: as before
    assert calls[-1] == "#music ?online bob"
    connection.dataReceived(b":robert!~b@h QUIT :gone\r\n:robert!~b@h JOIN #ops\r\n"
                            b":presenced!~p@h PART #ops\r\n")   # the bot left: forgotten
    private(b"robert")
    assert calls[-1] == "#music ?online bob"
    assert core.metrics.value("presenced_irc_commands_total", kind="refused") == 6
    connection.connectionLost(None)


def test_cat_lines_translate_irccat_formatting(tmp_path: Path):
    assert irccat_formatting("Status is%GREEN OK %NORMAL#BOLDx %green #RED5") == \
        "Status is\x0309 OK \x0f\x02x %green \x03045"
    core = make_core(tmp_path)
    bot = IRCBot(core, core.config.irc, clock=task.Clock())
    bot.cat(parse_cat_line("#ops %REDdown%NORMAL since 10:00"))
    bot.cat(parse_cat_line("%TOPIC #ops %BOLDfrozen"))
    assert list(bot.queue.lines)[-2:] == ["PRIVMSG #ops :\x0304down\x0f since 10:00",
                                          "TOPIC #ops :\x02frozen"]


def test_silent_server_is_dropped_at_the_heartbeat(tmp_path: Path):
    core = make_core(tmp_path)
    bot, connection, transport = connect(core)
    connection.dataReceived(b":srv 001 presenced :Welcome\r\n")
    bot.clock.advance(connection.heartbeatInterval)
    connection._sendHeartbeat()  # what the keepalive timer calls
    assert sent_lines(transport)[-1] == "PING srv"
    bot.clock.advance(3 * connection.heartbeatInterval + 1)
    connection._sendHeartbeat()
    assert transport.disconnecting
    connection.connectionLost(None)


def test_channels_joined_on_demand_are_bounded(tmp_path: Path):
    core = make_core(tmp_path)
    bot = IRCBot(core, core.config.irc, clock=task.Clock())
    with pytest.raises(IRCRefused, match="already in 100 channels"):
        for n in range(200):
            bot.say(f"#c{n}", "hi")
    assert len(bot.wanted) == 100


def test_say_refuses_bad_targets_and_unknown_channels_when_configured(tmp_path: Path):
    core = make_core(tmp_path, unknown_targets="report")
    bot = IRCBot(core, core.config.irc, clock=task.Clock())
    for target in ("#a b", "#a,#b", "x\r\nQUIT", ":x", ""):
        with pytest.raises(IRCRefused):
            bot.say(target, "text") if target else bot.say("@", "text")
    with pytest.raises(IRCRefused, match="not in #elsewhere"):
        bot.say("#elsewhere", "text")
    assert bot.say(None, "to the default channel\nand a second line") == 2
    assert list(bot.queue.lines) == ["PRIVMSG #presenced :to the default channel",
                                     "PRIVMSG #presenced :and a second line"]


def test_cat_allowlist(tmp_path: Path):
    core = make_core(tmp_path)
    bot = IRCBot(core, core.config.irc, clock=task.Clock())
    factory = CatFactory(bot, ["10.0.0.0/8", "::1"], 1000)
    assert factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234)) is None
    assert factory.buildProtocol(IPv4Address("TCP", "10.1.2.3", 1234)) is not None
    assert CatFactory(bot, [], 1000).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)) \
        is not None


def test_cat_allowlist_reads_ipv4_mapped_addresses_as_ipv4(tmp_path: Path):
    """A dual-stack listener sees IPv4 clients as ``::ffff:a.b.c.d``: the cat port admits them
    as the Thrift port does (one allowlist policy for every door)."""
    core = make_core(tmp_path)
    bot = IRCBot(core, core.config.irc, clock=task.Clock())
    factory = CatFactory(bot, ["127.0.0.1"], 1000)
    assert factory.buildProtocol(IPv6Address("TCP", "::ffff:127.0.0.1", 1234)) is not None
    assert factory.buildProtocol(IPv6Address("TCP", "::ffff:10.0.0.1", 1234)) is None


@pytest.mark.parametrize("irc, problem", [
    ({"hooks": [{"events": ["tune"], "users": ["a"], "channel": "#m"}]}, "needs exactly"),
    ({"hooks": [{"events": ["roster"], "users": ["a"], "channel": "#m", "format": "x"}]},
     "events must be"),
    ({"hooks": [{"events": ["tune"], "users": [], "channel": "#m", "format": "x"}]},
     "users must be"),
    ({"hooks": [{"events": ["tune"], "users": ["a"], "channel": "m", "format": "x"}]},
     "channel must be"),
    ({"hooks": [{"events": ["tune"], "users": ["a"], "channel": "#m", "format": "{x"}]},
     "bad format"),
    ({"hooks": ["tune"]}, r"expected list\[table\]"),
    ({"channel_keys": ["#a"]}, "#channel key"),
    ({"auth_channel": "ops"}, "not a channel name"),
    ({"cat_allow": ["nowhere"]}, "not an IP address"),
    ({"unknown_targets": "ignore"}, "not one of"),
    ({"channels": ["#ok", "presenced"]}, "not a channel name"),
])
def test_bad_irc_config_names_the_key(irc, problem):
    with pytest.raises(config.ConfigError, match=problem) as e:
        config.load(None, {"irc": irc})
    assert e.value.key == f"[irc] {next(iter(irc))}"

"""IRC channels bridged to group chat rooms ([irc] bridges).

In memory: the real IRC bot protocol on a StringTransport (server lines fed to it, what it
writes read back) over the in-memory XMPP door and room service, for both directions, CR/LF
safety, joins and parts, and a reconnect. End to end: a private ngircd, a raw IRC client
and slixmpp in the room."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest_twisted
import slixmpp
from twisted.internet import task
from twisted.internet.testing import StringTransport

from presenced.irc.bot import IRCBot, IRCBotFactory
from presenced.irc.bridge import RoomBridge
from tests.helpers import Client, run
from tests.ircd import IRCWatcher, NgIRCd
from tests.xmpp_memory import MemoryClient

ROOM = "ops@conference.localhost"
NS_MUC = "http://jabber.org/protocol/muc"


def connect(bot: IRCBot) -> tuple[Any, StringTransport]:
    connection = IRCBotFactory(bot).buildProtocol(None)
    transport = StringTransport()
    connection.makeConnection(transport)
    return connection, transport


def sent(transport: StringTransport) -> list[str]:
    lines = transport.value().decode().split("\r\n")
    transport.clear()
    return [line for line in lines if line]


def feed(connection: Any, *lines: str) -> None:
    connection.dataReceived("".join(f"{line}\r\n" for line in lines).encode())


async def presence_of(client: MemoryClient, nick: str, kind: str = "available"):
    return await client.expect(lambda s: s.name == "presence"
                               and s.getAttribute("from") == f"{ROOM}/{nick}"
                               and s.getAttribute("type", "available") == kind)


async def groupchat(client: MemoryClient, nick: str):
    return await client.expect(lambda s: s.name == "message"
                               and s.getAttribute("from") == f"{ROOM}/{nick}"
                               and any(c.name == "body" for c in s.elements()))


def body(stanza) -> str:
    return str(next(c for c in stanza.elements() if c.name == "body"))


@pytest_twisted.ensureDeferred
async def test_a_channel_and_a_room_both_ways_in_memory(memory_xmpp):
    node = await memory_xmpp({"irc": {"channels": ["#presenced"], "flood_burst": 100,
                                      "bridges": {"#ops": ROOM}}})
    await node.add_users("alice", "bob")
    bot = IRCBot(node.core, node.config.irc, clock=task.Clock())
    bridge = RoomBridge(node.core, bot, "#ops", ROOM)
    bot.add_bridge(bridge)
    bridge.start()
    connection, transport = connect(bot)
    feed(connection, ":srv 001 presenced :Welcome")
    assert {"JOIN #presenced", "JOIN #ops"} <= set(sent(transport))
    feed(connection, ":presenced!p@h JOIN #ops", ":srv 353 presenced = #ops :presenced @dave erin",
         ":srv 366 presenced #ops :End of NAMES")
    await node.settle()

    alice = await node.online("alice")
    alice.send(f"<presence to='{ROOM}/Alice'><x xmlns='{NS_MUC}'/></presence>")
    for nick in ("presenced", "dave", "erin"):
        await presence_of(alice, nick)
    await presence_of(alice, "Alice")
    await node.settle()
    assert sent(transport) == ["PRIVMSG #ops :* Alice joined ops@conference.localhost"]

    # IRC -> room: formatting codes dropped (XML cannot carry them), /me kept.
    feed(connection, ":dave!d@h PRIVMSG #ops :deploy \x02done\x02 \x0304ok",
         ":erin!e@h PRIVMSG #ops :\x01ACTION waves\x01")
    assert body(await groupchat(alice, "dave")) == "deploy done ok"
    assert body(await groupchat(alice, "erin")) == "/me waves"
    await node.settle()
    assert sent(transport) == []  # the channel's own lines are not said back

    # room -> IRC: one message per line, CR and LF never start another command.
    alice.send(f"<message to='{ROOM}' type='groupchat'><body>first\nQUIT :bye&#13;\n"
               "PRIVMSG #x :evil</body></message>")
    await groupchat(alice, "Alice")
    await node.settle()
    assert sent(transport) == ["PRIVMSG #ops :<Alice> first", "PRIVMSG #ops :<Alice> QUIT :bye",
                               "PRIVMSG #ops :<Alice> PRIVMSG #x :evil"]

    # Parts, nick changes and quits on the channel are presence in the room.
    feed(connection, ":dave!d@h PART #ops :later", ":erin!e@h NICK :erin2")
    await presence_of(alice, "dave", "unavailable")
    await presence_of(alice, "erin", "unavailable")
    await presence_of(alice, "erin2")
    bob = await node.online("bob")
    bob.send(f"<presence to='{ROOM}/erin2'><x xmlns='{NS_MUC}'/></presence>")
    refused = await bob.expect(lambda s: s.getAttribute("type") == "error")
    assert "conflict" in refused.toXml()  # an IRC nick is an occupant like any other

    # The connection drops: IRC occupants leave, but for the bot's own; what the room says
    # meanwhile waits for the reconnect.
    connection.connectionLost(None)
    await presence_of(alice, "erin2", "unavailable")
    await alice.nothing(lambda s: s.getAttribute("from") == f"{ROOM}/presenced")
    alice.send(f"<message to='{ROOM}' type='groupchat'><body>anyone?</body></message>")
    await groupchat(alice, "Alice")
    connection, transport = connect(bot)
    feed(connection, ":srv 001 presenced :Welcome", ":presenced!p@h JOIN #ops",
         ":srv 353 presenced = #ops :presenced erin2")
    await presence_of(alice, "erin2")
    await node.settle()
    assert "PRIVMSG #ops :<Alice> anyone?" in sent(transport)
    feed(connection, ":erin2!e@h PRIVMSG #ops :back")
    assert body(await groupchat(alice, "erin2")) == "back"
    bridge.stop()


def test_a_room_bridged_to_a_channel_on_ngircd(tmp_path, presenced_factory):
    ircd = NgIRCd(tmp_path / "ircd")
    ircd.start()
    watcher = None
    try:
        watcher = IRCWatcher(ircd.port, "dave")
        watcher.join("#ops")
        server = presenced_factory({
            "irc": {"enabled": True, "server": "127.0.0.1", "port": ircd.port,
                    "nick": "presenced", "channels": ["#presenced"],
                    "bridges": {"#ops": ROOM}, "flood_lines_per_second": 20.0,
                    "flood_burst": 20, "reconnect_min_seconds": 0.2,
                    "reconnect_max_seconds": 1.0},
            "comet": {"enabled": False}, "webadmin": {"enabled": False},
            "thrift": {"enabled": False},
            "server": {"scram_iterations": 100},
            "xmpp": {"require_tls": False, "allow_plain": True, "auth_failure_delay": 0.0}})
        server.ctl("adduser", "alice@localhost", "--password", "alice-pw")
        watcher.wait_for(lambda m: m.command == "JOIN" and m.nick == "presenced")

        async def scenario():
            alice = Client("alice")
            alice.register_plugin("xep_0045")
            room_messages: asyncio.Queue = asyncio.Queue()
            alice.add_event_handler("groupchat_message", room_messages.put_nowait)
            await alice.start(server.ports["xmpp"])
            _, _, occupants, _ = await alice.plugin["xep_0045"].join_muc_wait(
                slixmpp.JID(ROOM), "Alice", timeout=10)
            assert {p["from"].resource for p in occupants} >= {"presenced", "dave"}
            await asyncio.to_thread(watcher.wait_for, lambda m: m.command == "PRIVMSG"
                                    and "Alice joined" in m.params[-1])
            watcher.send("PRIVMSG #ops :hello from irc")
            while True:
                message = await asyncio.wait_for(room_messages.get(), 10)
                if message["body"] == "hello from irc":
                    assert message["from"].resource == "dave"
                    break
            alice.send_message(mto=ROOM, mbody="hello from xmpp\r\nJOIN #evil",
                               mtype="groupchat")
            line = await asyncio.to_thread(watcher.privmsg, "#ops", "hello from xmpp")
            assert line.params[-1] == "<Alice> hello from xmpp"
            evil = await asyncio.to_thread(watcher.privmsg, "#ops", "JOIN #evil")
            assert evil.params[-1] == "<Alice> JOIN #evil"  # said as text, not a command
            await alice.close()

        run(scenario())
    finally:
        if watcher is not None:
            watcher.close()
        ircd.stop()

"""What Thrift admin calls do to logged-in Jabber users: PHP's add_friend and publish_np, and
presencedctl through the admin port, seen by real slixmpp clients."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import slixmpp
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath
from thriftpy2.rpc import make_client

from presenced.nowplaying import TUNE_NS
from tests.helpers import THRIFT as admin
from tests.helpers import J, generate, php

NS_EVENT = "http://jabber.org/protocol/pubsub#event"
PASSWORD = "thrift-secret"
TIMEOUT = 15.0


class Watcher(slixmpp.ClientXMPP):
    """A Jabber client that records roster pushes, presence, messages and tunes it gets."""

    def __init__(self, user: str):
        super().__init__(f"{user}@localhost/web", PASSWORD)
        self.enable_direct_tls = False
        self.ssl_context = ssl.create_default_context()
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE  # the server's generated certificate
        for plugin in ("xep_0030", "xep_0115", "xep_0060", "xep_0163", "xep_0118"):
            self.register_plugin(plugin)
        self.seen: asyncio.Queue = asyncio.Queue()
        self.history: list[tuple] = []
        self.started: asyncio.Future = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", self._session_start)
        self.add_event_handler("failed_auth", lambda _: self.started.set_exception(
            RuntimeError("authentication failed")))
        self.add_event_handler("roster_update", self._roster_push)
        self.register_handler(Callback("presence", MatchXPath("{jabber:client}presence"),
                                       self._presence))
        self.add_event_handler("message", lambda m: self.seen.put_nowait(
            ("message", m["from"].bare, m["type"], m["body"], m["subject"] or "",
             m["thread"] or "")))
        self.add_event_handler("user_tune_publish", self._tune)

    async def _session_start(self, _event) -> None:
        await self.get_roster()
        self.send_presence()
        if not self.started.done():
            self.started.set_result(True)

    def _presence(self, presence) -> None:
        self.seen.put_nowait((presence["type"], presence["from"].bare))

    def _roster_push(self, iq) -> None:
        for jid, item in iq["roster"]["items"].items():
            self.seen.put_nowait(("roster", jid.bare, item["subscription"]))

    def _tune(self, message) -> None:
        tune = message.xml.find(f"{{{NS_EVENT}}}event/{{{NS_EVENT}}}items/{{{NS_EVENT}}}item/"
                                f"{{{TUNE_NS}}}tune")
        fields = {child.tag.partition("}")[2]: child.text or "" for child in tune}
        self.seen.put_nowait(("tune", message["from"].bare, fields))

    async def expect(self, wanted: tuple) -> None:
        """Wait for ``wanted`` to have arrived (in any order with other things)."""
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while wanted not in self.history:
            left = deadline - asyncio.get_running_loop().time()
            try:
                self.history.append(await asyncio.wait_for(self.seen.get(), max(left, 0)))
            except asyncio.TimeoutError:
                raise AssertionError(f"{self.boundjid.bare} never got {wanted}; got "
                                     f"{self.history}") from None
        self.history.remove(wanted)


@pytest.fixture
def server(presenced_factory):
    return presenced_factory({"server": {"scram_iterations": 64},
                              "xmpp": {"bind": "127.0.0.1"},
                              "comet": {"enabled": False}, "webadmin": {"enabled": False}})


async def online(server, user: str) -> Watcher:
    client = Watcher(user)
    client.connect("127.0.0.1", server.ports["xmpp"])
    await asyncio.wait_for(client.started, TIMEOUT)
    return client


def test_php_add_friend_and_publish_np_reach_online_jabber_users(server, tmp_path: Path):
    gen = generate(tmp_path, "php")
    port = server.ports["thrift"]
    c = make_client(admin.PresencedAdmin, "127.0.0.1", port, timeout=20000)
    for user in ("alice", "bob"):
        assert c.register_user(J(user, ""), PASSWORD) is True

    async def scenario() -> None:
        alice = await online(server, "alice")
        bob = await online(server, "bob")
        await asyncio.sleep(0.5)  # the server learns the clients' caps (tune+notify)

        # add_friend: roster pushes with subscription both, and presence both ways.
        result = await asyncio.to_thread(php, gen, port, "add_friend", "alice@localhost",
                                         "bob@localhost")
        assert result.stdout == "ok\n", result.stderr
        await alice.expect(("roster", "bob@localhost", "both"))
        await bob.expect(("roster", "alice@localhost", "both"))
        await alice.expect(("available", "bob@localhost"))
        await bob.expect(("available", "alice@localhost"))

        # publish_np: a User Tune notification from alice, as if her client published it.
        result = await asyncio.to_thread(php, gen, port, "publish_np", "alice@localhost",
                                         "Broadcast", "Tender Buttons", "Tears", "200", "5")
        assert result.stdout == "ok\n", result.stderr
        song = {"artist": "Broadcast", "source": "Tender Buttons", "title": "Tears",
                "length": "200", "track": "5"}
        await bob.expect(("tune", "alice@localhost", song))
        await alice.expect(("tune", "alice@localhost", song))

        # spoof_chat and spoof_message: delivered as if alice sent them.
        result = await asyncio.to_thread(php, gen, port, "spoof_chat", "alice@localhost",
                                         "bob@localhost", "hello from the site", "t-1")
        assert result.stdout == "ok\n", result.stderr
        await bob.expect(("message", "alice@localhost", "chat", "hello from the site", "",
                          "t-1"))
        await asyncio.to_thread(c.spoof_message, J("alice", ""), J("bob", ""), "body", "subj")
        await bob.expect(("message", "alice@localhost", "normal", "body", "subj", ""))

        sessions = await asyncio.to_thread(c.user_sessions, J("bob", ""))
        assert [(s.protocol, s.label) for s in sessions] == [("xmpp", "web")]
        assert await asyncio.to_thread(c.online_count) == 2

        # presencedctl goes through the admin port: the push arrives at once.
        result = await asyncio.to_thread(server.ctl, "remove-friend", "alice", "bob")
        assert result.returncode == 0
        await alice.expect(("roster", "bob@localhost", "remove"))
        await bob.expect(("roster", "alice@localhost", "remove"))
        result = await asyncio.to_thread(server.ctl, "add-friend", "alice", "bob")
        await alice.expect(("roster", "bob@localhost", "both"))

        for client in (alice, bob):
            client.disconnect()
        await asyncio.sleep(0.2)

    asyncio.run(scenario())
    c.close()

"""What today's clients ask of a server beyond RFC 6120/6121, with slixmpp's own plugins:
the legacy session IQ after bind, message carbons (XEP-0280), blocking (XEP-0191, on every
door), private XML storage (XEP-0049: bookmarks, roster notes) and last activity (XEP-0012)."""

from __future__ import annotations

import asyncio

import pytest
import slixmpp
from slixmpp.exceptions import IqError
from slixmpp.xmlstream import ET
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TApplicationException

from tests.helpers import THRIFT as admin, Client, PresencedProcess, RawClient, run

USERS = ("alice", "bob", "carol", "mallory", "olive")
PLUGINS = ("xep_0280", "xep_0191", "xep_0049", "xep_0012", "xep_0048", "xep_0352")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = PresencedProcess(tmp_path_factory.mktemp("xmpp-modern"), {
        "comet": {"enabled": False}, "webadmin": {"enabled": False},
        "thrift": {"port": 0},
        "server": {"scram_iterations": 100, "private_storage_bytes": 2000},
        "xmpp": {"require_tls": False, "allow_plain": True, "auth_failure_delay": 0.0}})
    process.start()
    process.ctl("import-users", "-", "--quiet",
                input="".join(f"{user}@localhost {user}-pw\n" for user in USERS))
    for a, b in (("alice", "bob"), ("alice", "mallory"), ("alice", "olive")):
        process.ctl("add-friend", f"{a}@localhost", f"{b}@localhost")
    yield process
    process.stop()


async def client(server, user: str, resource: str = "test", priority: int = 0) -> Client:
    c = Client(user, resource)
    for plugin in PLUGINS:
        c.register_plugin(plugin)
    c.carbons: asyncio.Queue = asyncio.Queue()
    c.add_event_handler("carbon_received", lambda m: c.carbons.put_nowait(("received", m)))
    c.add_event_handler("carbon_sent", lambda m: c.carbons.put_nowait(("sent", m)))
    c.blocklist_pushes: asyncio.Queue = asyncio.Queue()
    c.add_event_handler("blocked", c.blocklist_pushes.put_nowait)
    c.add_event_handler("unblocked", c.blocklist_pushes.put_nowait)
    await c.start(server.ports["xmpp"], presence=False)
    c.send_presence(ppriority=priority)
    await asyncio.sleep(0.1)
    return c


async def nothing_more(queue: asyncio.Queue, wait: float = 0.4) -> None:
    await asyncio.sleep(wait)
    assert queue.empty(), f"unexpected: {queue.get_nowait()}"


def test_session_iq_after_bind_is_answered(server):
    raw = RawClient(server.ports["xmpp"])
    assert b"<jid>" in raw.login("alice", "alice-pw", "old-client")
    raw.send(b"<iq type='set' id='sess1'><session "
             b"xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
    answer = raw.read_until(b"<iq[^>]*id=.sess1.[^>]*>|<iq[^>]*id=.sess1.[^>]*/>")
    assert b"type='result'" in answer or b'type="result"' in answer, answer
    raw.close()


def test_disco_lists_the_modern_features(server):
    async def scenario():
        alice = await client(server, "alice")
        info = await alice.plugin["xep_0030"].get_info(jid="localhost")
        features = set(info["disco_info"]["features"])
        assert {"urn:xmpp:carbons:2", "urn:xmpp:blocking", "jabber:iq:last",
                "jabber:iq:private"} <= features  # poezio looks for private storage here
        account = await alice.plugin["xep_0030"].get_info(jid="alice@localhost")
        assert "jabber:iq:private" in set(account["disco_info"]["features"])
        await alice.close()
    run(scenario())


def test_carbons_copy_sent_and_received_chats_to_enabled_resources(server):
    async def scenario():
        phone = await client(server, "alice", "phone", priority=0)
        desk = await client(server, "alice", "desk", priority=5)
        bob = await client(server, "bob")
        await phone.plugin["xep_0280"].enable()
        await desk.plugin["xep_0280"].enable()

        # Sent by one resource: the other gets a <sent/> copy.
        phone.send_message(mto="bob@localhost", mbody="from the phone", mtype="chat")
        assert (await bob.message())["body"] == "from the phone"
        direction, carbon = await asyncio.wait_for(desk.carbons.get(), 5)
        assert direction == "sent"
        forwarded = carbon["carbon_sent"]
        assert forwarded["body"] == "from the phone"
        assert str(forwarded["from"]) == "alice@localhost/phone"
        assert str(forwarded["to"]) == "bob@localhost"

        # To the bare JID: the desk (higher priority) gets it, the phone a <received/> copy.
        bob.send_message(mto="alice@localhost", mbody="to the account", mtype="chat")
        assert (await desk.message())["body"] == "to the account"
        direction, carbon = await asyncio.wait_for(phone.carbons.get(), 5)
        assert (direction, carbon["carbon_received"]["body"]) == ("received", "to the account")

        # To one full JID: the other resource gets a <received/> copy.
        bob.send_message(mto="alice@localhost/phone", mbody="to the phone", mtype="chat")
        assert (await phone.message())["body"] == "to the phone"
        direction, carbon = await asyncio.wait_for(desk.carbons.get(), 5)
        assert (direction, carbon["carbon_received"]["body"]) == ("received", "to the phone")

        # <private/> with a no-copy hint, and headlines, are not copied.
        secret = phone.make_message(mto="bob@localhost", mbody="private", mtype="chat")
        secret.append(ET.Element("{urn:xmpp:carbons:2}private"))
        secret.append(ET.Element("{urn:xmpp:hints}no-copy"))
        secret.send()
        assert (await bob.message())["body"] == "private"
        phone.send_message(mto="bob@localhost", mbody="news", mtype="headline")
        assert (await bob.message())["body"] == "news"
        await nothing_more(desk.carbons)

        # Disabled: no more copies.
        await desk.plugin["xep_0280"].disable()
        phone.send_message(mto="bob@localhost", mbody="after disable", mtype="chat")
        assert (await bob.message())["body"] == "after disable"
        await nothing_more(desk.carbons)
        for c in (phone, desk, bob):
            await c.close()
    run(scenario())


def test_blocking_on_every_door(server):
    thrift = make_client(admin.Ejabthrift, "127.0.0.1", server.ports["thrift"], timeout=10000)

    async def scenario():
        alice = await client(server, "alice", "main")
        other = await client(server, "alice", "other")
        mallory = await client(server, "mallory")
        assert await other.plugin["xep_0191"].get_blocked_jids() == set()
        await mallory.presence_from("alice@localhost/main")

        await alice.plugin["xep_0191"].block(["mallory@localhost", "spam.example"])
        assert await alice.plugin["xep_0191"].get_blocked_jids() == {
            slixmpp.JID("mallory@localhost"), slixmpp.JID("spam.example")}
        push = await asyncio.wait_for(other.blocklist_pushes.get(), 5)
        assert {item["jid"] for item in push["block"]} == {
            slixmpp.JID("mallory@localhost"), slixmpp.JID("spam.example")}
        # The blocked contact sees alice go offline.
        await mallory.presence_from("alice@localhost/main", "unavailable")

        # Nothing from mallory reaches alice: bare, full, or through the Thrift door.
        mallory.send_message(mto="alice@localhost", mbody="hello?", mtype="chat")
        error = await asyncio.wait_for(mallory.messages.get(), 5)
        assert error["type"] == "error"
        assert error["error"]["condition"] == "service-unavailable"
        mallory.send_message(mto="alice@localhost/main", mbody="psst", mtype="chat")
        error = await asyncio.wait_for(mallory.messages.get(), 5)
        assert error["error"]["condition"] == "service-unavailable"
        with pytest.raises(TApplicationException, match="blocks"):
            await asyncio.to_thread(thrift.spoof_chat, admin.JabberUser("mallory", ""),
                                    admin.JabberUser("alice", ""), "spoofed", "")
        # alice cannot write to mallory either: not-acceptable with <blocked/>.
        alice.send_message(mto="mallory@localhost", mbody="go away", mtype="chat")
        error = await asyncio.wait_for(alice.messages.get(), 5)
        assert error["error"]["condition"] == "not-acceptable"
        assert "urn:xmpp:blocking:errors" in str(error)
        await nothing_more(mallory.messages, 0.1)
        await nothing_more(alice.messages, 0.3)

        # Unblocked: mallory sees alice again and their chats flow.
        await alice.plugin["xep_0191"].unblock(["mallory@localhost"])
        await mallory.presence_from("alice@localhost/main")
        mallory.send_message(mto="alice@localhost", mbody="friends again", mtype="chat")
        assert (await alice.message())["body"] == "friends again"
        push = await asyncio.wait_for(other.blocklist_pushes.get(), 5)
        assert [item["jid"] for item in push["unblock"]] == [slixmpp.JID("mallory@localhost")]

        # Blocked while offline: nothing kept for alice.
        await alice.plugin["xep_0191"].block(["mallory@localhost"])
        await alice.close()
        await other.close()
        await asyncio.sleep(0.2)
        mallory.send_message(mto="alice@localhost", mbody="offline spam", mtype="chat")
        mallory.send_message(mto="alice@localhost", mbody="not kept", mtype="normal")
        await asyncio.sleep(0.3)
        olive = await client(server, "olive")
        olive.send_message(mto="alice@localhost", mbody="kept", mtype="chat")
        await asyncio.sleep(0.3)
        alice = await client(server, "alice", "back")
        assert (await alice.message())["body"] == "kept"
        await nothing_more(alice.messages)
        for c in (alice, mallory, olive):
            await c.close()
    run(scenario())


def test_private_storage_keeps_bookmarks_and_roster_notes(server):
    async def scenario():
        carol = await client(server, "carol", "one")
        await carol.plugin["xep_0048"].set_bookmarks(_bookmarks("room@conference.localhost"),
                                              method="xep_0049")
        notes = ET.fromstring("<storage xmlns='storage:rosternotes'>"
                              "<note jid='bob@localhost'>met at the gig</note></storage>")
        store = carol.make_iq_set()
        query = ET.SubElement(store.xml, "{jabber:iq:private}query")
        query.append(notes)
        await store.send()
        await carol.close()

        again = await client(server, "carol", "two")
        result = await again.plugin["xep_0048"].get_bookmarks(method="xep_0049")
        conferences = result["private"]["bookmarks"]["conferences"]
        assert [str(c["jid"]) for c in conferences] == ["room@conference.localhost"]
        fetch = again.make_iq_get()
        ET.SubElement(ET.SubElement(fetch.xml, "{jabber:iq:private}query"),
                      "{storage:rosternotes}storage")
        answer = await fetch.send()
        assert "met at the gig" in str(answer)

        # Not private namespaces, and documents past the limit, are refused.
        bad = again.make_iq_set()
        ET.SubElement(ET.SubElement(bad.xml, "{jabber:iq:private}query"),
                      "{jabber:client}message")
        with pytest.raises(IqError) as refused:
            await bad.send()
        assert refused.value.condition == "not-acceptable"
        big = again.make_iq_set()
        huge = ET.SubElement(ET.SubElement(big.xml, "{jabber:iq:private}query"),
                             "{urn:example:settings}big")
        huge.text = "x" * 3000
        with pytest.raises(IqError) as refused:
            await big.send()
        assert refused.value.condition == "not-acceptable"
        result = await again.plugin["xep_0048"].get_bookmarks(method="xep_0049")
        assert len(result["private"]["bookmarks"]["conferences"]) == 1
        await again.close()
    run(scenario())


def _bookmarks(room: str):
    from slixmpp.plugins.xep_0048 import Bookmarks
    bookmarks = Bookmarks()
    bookmarks.add_conference(room, "carol", name="The room", autojoin=False)
    return bookmarks


def test_last_activity_for_contacts_and_the_server(server):
    async def scenario():
        alice = await client(server, "alice", "idle")
        bob = await client(server, "bob")
        carol = await client(server, "carol")
        uptime = await bob.plugin["xep_0012"].get_last_activity("localhost")
        assert int(uptime["last_activity"]["seconds"]) >= 0
        online = await bob.plugin["xep_0012"].get_last_activity("alice@localhost")
        assert int(online["last_activity"]["seconds"]) == 0

        alice.send_presence(ptype="unavailable", pstatus="gone fishing")
        await bob.presence_from("alice@localhost/idle", "unavailable")
        await alice.close()
        await asyncio.sleep(1.2)
        last = await bob.plugin["xep_0012"].get_last_activity("alice@localhost")
        assert int(last["last_activity"]["seconds"]) >= 1
        assert last["last_activity"]["status"] == "gone fishing"
        with pytest.raises(IqError) as refused:
            await carol.plugin["xep_0012"].get_last_activity("alice@localhost")
        assert refused.value.condition == "forbidden"
        await bob.close()
        await carol.close()
    run(scenario())


BOOKMARKS = "urn:xmpp:bookmarks:1"
AVATAR_DATA, AVATAR_META = "urn:xmpp:avatar:data", "urn:xmpp:avatar:metadata"


async def pep_client(server, user: str, resource: str, interests: tuple[str, ...]) -> Client:
    """A client with entity caps announcing ``+notify`` for ``interests``; PEP events queued
    as (kind, node, item ids)."""
    c = Client(user, resource)
    for plugin in ("xep_0115", "xep_0163", "xep_0060", "xep_0004"):
        c.register_plugin(plugin)
    c.pep_events: asyncio.Queue = asyncio.Queue()
    for kind in ("publish", "retract", "purge"):
        c.add_event_handler(f"pubsub_{kind}", lambda m, kind=kind: c.pep_events.put_nowait(
            (kind, m["pubsub_event"]["items"]["node"], ids(m["pubsub_event"]["items"]))))
    await c.start(server.ports["xmpp"], presence=False)
    for node in interests:
        c.plugin["xep_0163"].add_interest(node)
    c.send_presence()
    await asyncio.sleep(0.3)
    return c


def ids(items) -> list[str]:
    """The ids of a pubsub ``<items/>``' children, in order."""
    return [child.get("id") for child in items.xml]


def publish_options(c: Client, **fields: str):
    form = c.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden",
                   value="http://jabber.org/protocol/pubsub#publish-options")
    for name, value in fields.items():
        form.add_field(var=f"pubsub#{name}", value=value)
    return form


def payload(xml: str):
    return ET.fromstring(xml)


def test_pep_nodes_access_models_items_and_bookmarks_2(server):
    async def scenario():
        laptop = await pep_client(server, "alice", "laptop", (BOOKMARKS,))
        phone = await pep_client(server, "alice", "phone", (BOOKMARKS,))
        bob = await pep_client(server, "bob", "b", (BOOKMARKS, AVATAR_META))
        carol = await pep_client(server, "carol", "c", ())
        pubsub = laptop.plugin["xep_0060"]
        private = dict(persist_items="true", max_items="max",
                       send_last_published_item="never", access_model="whitelist")

        # Bookmarks 2: one item per room, private to the account's own resources.
        for room in ("one@rooms.localhost", "two@rooms.localhost"):
            await pubsub.publish("alice@localhost", BOOKMARKS, id=room, payload=payload(
                f"<conference xmlns='{BOOKMARKS}' name='{room[:3]}' autojoin='true'/>"),
                options=publish_options(laptop, **private))
            assert await asyncio.wait_for(phone.pep_events.get(), 5) == (
                "publish", BOOKMARKS, [room])
        items = await pubsub.get_items("alice@localhost", BOOKMARKS)
        assert ids(items["pubsub"]["items"]) == ["one@rooms.localhost", "two@rooms.localhost"]
        with pytest.raises(IqError) as refused:
            await bob.plugin["xep_0060"].get_items("alice@localhost", BOOKMARKS)
        assert refused.value.condition == "not-allowed" and "closed-node" in str(
            refused.value.iq)
        await nothing_more(bob.pep_events, 0.2)

        # Retract one item; a publish whose options the node does not meet is refused.
        await pubsub.retract("alice@localhost", BOOKMARKS, "one@rooms.localhost")
        assert await asyncio.wait_for(phone.pep_events.get(), 5) == (
            "retract", BOOKMARKS, ["one@rooms.localhost"])
        items = await pubsub.get_items("alice@localhost", BOOKMARKS)
        assert ids(items["pubsub"]["items"]) == ["two@rooms.localhost"]
        with pytest.raises(IqError) as refused:
            await pubsub.publish("alice@localhost", BOOKMARKS, id="x", payload=payload(
                f"<conference xmlns='{BOOKMARKS}'/>"),
                options=publish_options(laptop, access_model="presence"))
        assert refused.value.condition == "conflict"
        assert "precondition-not-met" in str(refused.value.iq)
        config = await pubsub.get_node_config("alice@localhost", BOOKMARKS)
        fields = config["pubsub_owner"]["configure"]["form"].get_values()
        assert fields["pubsub#access_model"] == "whitelist"
        assert fields["pubsub#max_items"] == "256"
        await pubsub.purge("alice@localhost", BOOKMARKS)
        items = await pubsub.get_items("alice@localhost", BOOKMARKS)
        assert ids(items["pubsub"]["items"]) == []

        # Open nodes are readable by anyone; presence nodes by subscribed contacts only.
        await pubsub.publish("alice@localhost", "urn:example:open", id="1",
                             payload=payload("<open xmlns='urn:example:open'/>"),
                             options=publish_options(laptop, access_model="open"))
        items = await carol.plugin["xep_0060"].get_items("alice@localhost", "urn:example:open")
        assert ids(items["pubsub"]["items"]) == ["1"]

        # Avatars (XEP-0084): data and metadata nodes reach friends who want them.
        avatar = b"\x89PNG fake image"
        await laptop.plugin["xep_0060"].publish(
            "alice@localhost", AVATAR_DATA, id="abc123", payload=payload(
                f"<data xmlns='{AVATAR_DATA}'>iVBORw0K</data>"))
        await laptop.plugin["xep_0060"].publish(
            "alice@localhost", AVATAR_META, id="abc123", payload=payload(
                f"<metadata xmlns='{AVATAR_META}'><info id='abc123' type='image/png' "
                f"bytes='{len(avatar)}'/></metadata>"))
        assert await asyncio.wait_for(bob.pep_events.get(), 5) == (
            "publish", AVATAR_META, ["abc123"])
        data = await bob.plugin["xep_0060"].get_item("alice@localhost", AVATAR_DATA, "abc123")
        assert "iVBORw0K" in str(data)
        with pytest.raises(IqError) as refused:
            await carol.plugin["xep_0060"].get_items("alice@localhost", AVATAR_DATA)
        assert refused.value.condition == "not-authorized"
        for c in (laptop, phone, bob, carol):
            await c.close()
    run(scenario())


def test_client_state_indication_holds_and_collapses_presence(server):
    async def scenario():
        alice = await client(server, "alice", "pocket")
        bob = await client(server, "bob", "b")
        await alice.presence_from("bob@localhost/b")
        assert alice.plugin["xep_0352"].enabled, "the server did not offer <csi/>"
        alice.plugin["xep_0352"].send_inactive()
        await asyncio.sleep(0.2)
        for status in ("first", "second", "third"):
            bob.send_presence(pstatus=status)
        bob.send_message(mto="alice@localhost/pocket", mbody="right now", mtype="chat")
        assert (await alice.message())["body"] == "right now"  # messages are not held
        await asyncio.sleep(0.3)
        assert alice.presences.empty(), "presence was sent to an inactive client"

        alice.plugin["xep_0352"].send_active()
        presence = await alice.presence_from("bob@localhost/b")
        assert presence["status"] == "third"  # only the newest was held
        await nothing_more(alice.presences)
        bob.send_presence(pstatus="live")
        assert (await alice.presence_from("bob@localhost/b"))["status"] == "live"
        await alice.close()
        await bob.close()
    run(scenario())

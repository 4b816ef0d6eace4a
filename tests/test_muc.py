"""Multi-User Chat (XEP-0045) in memory (tests/xmpp_memory.py: the real c2s door, core and
room service over an embedded store): joining, presence and status codes, messages, nick
conflicts, history, subject, occupant ids, self-ping, disco, configuration, moderation and
invitations. The slixmpp end-to-end test is in test_muc_clients.py."""

from __future__ import annotations

from typing import Optional

import pytest_twisted
from twisted.words.xish import domish

from tests.xmpp_memory import MemoryClient

ROOM = "lounge@conference.localhost"
NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = f"{NS_MUC}#user"
NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"
CONFIG_CHANGED = 104


def muc_x(stanza: domish.Element) -> Optional[domish.Element]:
    return next(stanza.elements(NS_USER, "x"), None)


def codes(stanza: domish.Element) -> set[int]:
    x = muc_x(stanza)
    return {int(s["code"]) for s in x.elements(NS_USER, "status")} if x is not None else set()


def item(stanza: domish.Element) -> domish.Element:
    return next(muc_x(stanza).elements(NS_USER, "item"))


def text(stanza: domish.Element, name: str) -> Optional[str]:
    child = next((c for c in stanza.elements() if c.name == name), None)
    return None if child is None else str(child)


async def presence_of(client: MemoryClient, nick: str, kind: str = "available",
                      room: str = ROOM) -> domish.Element:
    return await client.expect(lambda s: s.name == "presence"
                               and s.getAttribute("from") == f"{room}/{nick}"
                               and s.getAttribute("type", "available") == kind)


async def join(client: MemoryClient, nick: str, room: str = ROOM, extra: str = "") -> domish.Element:
    """Join and return the self-presence (status 110), after which come history and subject."""
    client.send(f"<presence to='{room}/{nick}'><x xmlns='{NS_MUC}'>{extra}</x></presence>")
    return await client.expect(lambda s: s.name == "presence" and
                               s.getAttribute("from") == f"{room}/{nick}" and 110 in codes(s)
                               or s.getAttribute("type") == "error")


async def subject(client: MemoryClient) -> domish.Element:
    return await client.expect(lambda s: s.name == "message" and text(s, "subject") is not None
                               and text(s, "body") is None)


async def groupchat(client: MemoryClient, nick: str) -> domish.Element:
    return await client.expect(lambda s: s.name == "message"
                               and s.getAttribute("type") == "groupchat"
                               and s.getAttribute("from") == f"{ROOM}/{nick}"
                               and text(s, "body") is not None)


@pytest_twisted.ensureDeferred
async def test_first_join_creates_a_room_and_others_see_each_other(memory_xmpp):
    node = await memory_xmpp()
    await node.add_users("alice", "bob")
    alice = await node.online("alice")
    bob = await node.online("bob")

    own = await join(alice, "Alice")
    assert codes(own) == {110, 201}
    assert (item(own)["affiliation"], item(own)["role"]) == ("owner", "moderator")
    assert item(own)["jid"] == "alice@localhost/test"  # one's own real JID is always shown
    alice_id = next(own.elements(NS_OCCUPANT_ID, "occupant-id"))["id"]
    assert (await subject(alice))["from"] == ROOM

    bob_own = await join(bob, "Bob")
    assert codes(bob_own) == {110}
    assert (item(bob_own)["affiliation"], item(bob_own)["role"]) == ("none", "participant")
    seen_alice = await presence_of(bob, "Alice")
    assert next(seen_alice.elements(NS_OCCUPANT_ID, "occupant-id"))["id"] == alice_id
    assert item(seen_alice).getAttribute("jid") is None  # semi-anonymous: bob is no moderator
    seen_bob = await presence_of(alice, "Bob")
    assert item(seen_bob)["jid"] == "bob@localhost/test"  # moderators see real JIDs
    assert codes(seen_bob) == set()

    bob.send(f"<message to='{ROOM}' type='groupchat' id='m1'><body>hi all</body></message>")
    for client in (alice, bob):
        said = await groupchat(client, "Bob")
        assert text(said, "body") == "hi all" and said["id"] == "m1"
        assert next(said.elements(NS_OCCUPANT_ID, "occupant-id"))["id"]

    bob.send(f"<presence to='{ROOM}/Bob' type='unavailable'/>")
    gone = await presence_of(alice, "Bob", "unavailable")
    assert item(gone)["role"] == "none"
    assert codes(await presence_of(bob, "Bob", "unavailable")) == {110}


@pytest_twisted.ensureDeferred
async def test_nick_conflict_nick_change_and_disconnect(memory_xmpp):
    node = await memory_xmpp()
    await node.add_users("alice", "bob")
    alice = await node.online("alice")
    bob = await node.online("bob")
    await join(alice, "Alice")
    refused = await join(bob, "Alice")
    assert refused["type"] == "error" and "conflict" in refused.toXml()
    other_resource = await node.online("alice", "phone")
    refused = await join(other_resource, "Alice")  # one occupant per nick, even one's own
    assert refused["type"] == "error" and "conflict" in refused.toXml()
    await alice.nothing(lambda s: s.name == "presence" and "Alice" in s.getAttribute("from", ""))

    await join(bob, "Bob")
    bob.send(f"<presence to='{ROOM}/Robert'/>")
    changed = await presence_of(alice, "Bob", "unavailable")
    assert codes(changed) == {303} and item(changed)["nick"] == "Robert"
    await presence_of(alice, "Robert")
    assert codes(await presence_of(bob, "Bob", "unavailable")) == {303, 110}

    bob.disconnect()
    await presence_of(alice, "Robert", "unavailable")
    again = await node.online("bob", "two")
    assert codes(await join(again, "Robert")) == {110}  # the nick was freed


@pytest_twisted.ensureDeferred
async def test_an_inactive_client_gets_the_newest_occupant_presence_before_news(memory_xmpp):
    """CSI: presence updates of an occupant collapse while the client is inactive; a nick
    change (status 303) is news: what is held goes out before it, in order."""
    node = await memory_xmpp()
    await node.add_users("alice", "bob")
    alice = await node.online("alice")
    bob = await node.online("bob")
    await join(alice, "Alice")
    await join(bob, "Bob")
    await presence_of(alice, "Bob")
    alice.send("<inactive xmlns='urn:xmpp:csi:0'/>")
    for show in ("away", "xa", "dnd"):
        bob.send(f"<presence to='{ROOM}/Bob'><show>{show}</show></presence>")
        assert text(await presence_of(bob, "Bob"), "show") == show
    await alice.nothing(lambda s: s.name == "presence" and s["from"].startswith(ROOM))

    bob.send(f"<presence to='{ROOM}/Robert'/>")
    await presence_of(bob, "Robert")
    newest = await presence_of(alice, "Bob")
    assert text(newest, "show") == "dnd"
    changed = await presence_of(alice, "Bob", "unavailable")
    assert codes(changed) == {303}
    assert alice.log.index(newest) < alice.log.index(changed)
    assert not [s for s in alice.received if s.name == "presence"
                and s.getAttribute("from") == f"{ROOM}/Bob"]


@pytest_twisted.ensureDeferred
async def test_history_on_join_subject_and_delay(memory_xmpp):
    node = await memory_xmpp()
    await node.add_users("alice", "bob", "carol", "dave")
    alice = await node.online("alice")
    await join(alice, "Alice")
    assert text(await subject(alice), "subject") == ""  # no subject yet, still sent
    for n in range(3):
        alice.send(f"<message to='{ROOM}' type='groupchat'><body>line {n}</body></message>")
        await groupchat(alice, "Alice")
    alice.send(f"<message to='{ROOM}' type='groupchat'><subject>Plans</subject></message>")
    assert text(await subject(alice), "subject") == "Plans"

    bob = await node.online("bob")
    await join(bob, "Bob", extra="<history maxstanzas='2'/>")
    old = [await groupchat(bob, "Alice") for _ in range(2)]
    assert [text(m, "body") for m in old] == ["line 1", "line 2"]
    assert all(next(m.elements("urn:xmpp:delay", "delay"))["from"] == ROOM for m in old)
    topic = await subject(bob)
    assert text(topic, "subject") == "Plans" and topic["from"] == f"{ROOM}/Alice"

    carol = await node.online("carol")
    await join(carol, "Carol", extra="<history since='2000-01-01T00:00:00Z' maxstanzas='9'/>")
    assert [text(await groupchat(carol, "Alice"), "body") for _ in range(3)] == [
        "line 0", "line 1", "line 2"]
    dave = await node.online("dave")
    await join(dave, "Dave", extra="<history maxstanzas='0'/>")
    assert text(await subject(dave), "subject") == "Plans"
    await dave.nothing(lambda s: s.name == "message" and text(s, "body") is not None)

    # A participant may not change the subject by default.
    bob.send(f"<message to='{ROOM}' type='groupchat' id='s'><subject>mine</subject></message>")
    assert "forbidden" in (await bob.expect(lambda s: s.getAttribute("type") == "error")).toXml()


@pytest_twisted.ensureDeferred
async def test_self_ping_and_disco(memory_xmpp):
    node = await memory_xmpp()
    await node.add_users("alice", "bob")
    alice = await node.online("alice")
    bob = await node.online("bob")
    await join(alice, "Alice")

    items = await alice.iq("<iq type='get' id='d1' to='localhost'><query "
                           "xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    assert "conference.localhost" in items.toXml()
    info = await alice.iq("<iq type='get' id='d2' to='conference.localhost'><query "
                          "xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    assert "category='conference'" in info.toXml() or 'category="conference"' in info.toXml()
    assert NS_MUC in info.toXml()
    rooms = await alice.iq("<iq type='get' id='d3' to='conference.localhost'><query "
                           "xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    assert ROOM in rooms.toXml()
    room_info = await alice.iq(f"<iq type='get' id='d4' to='{ROOM}'><query "
                               "xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    assert room_info["type"] == "result"
    for feature in ("muc_temporary", "muc_open", "muc_semianonymous", NS_OCCUPANT_ID):
        assert feature in room_info.toXml()
    missing = await alice.iq("<iq type='get' id='d5' to='nothing@conference.localhost'><query "
                             "xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    assert missing["type"] == "error" and "item-not-found" in missing.toXml()

    ping = "<iq type='get' id='{id}' to='{to}'><ping xmlns='urn:xmpp:ping'/></iq>"
    assert (await alice.iq(ping.format(id="p1", to=f"{ROOM}/Alice")))["type"] == "result"
    answer = await bob.iq(ping.format(id="p2", to=f"{ROOM}/Bob"))
    assert answer["type"] == "error" and "not-acceptable" in answer.toXml()


def form(**fields: str) -> str:
    values = "".join(f"<field var='muc#roomconfig_{k}'><value>{v}</value></field>"
                     for k, v in fields.items())
    return (f"<iq type='set' id='cfg' to='{ROOM}'><query xmlns='{NS_MUC}#owner'>"
            "<x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE'><value>"
            f"{NS_MUC}#roomconfig</value></field>{values}</x></query></iq>")


def admin(items: str, kind: str = "set") -> str:
    return (f"<iq type='{kind}' id='adm' to='{ROOM}'><query xmlns='{NS_MUC}#admin'>{items}"
            "</query></iq>")


@pytest_twisted.ensureDeferred
async def test_configuration_form_members_only_password_and_max_occupants(memory_xmpp):
    node = await memory_xmpp()
    await node.add_users("alice", "bob", "carol")
    alice = await node.online("alice")
    await join(alice, "Alice")
    got = await alice.iq(f"<iq type='get' id='g' to='{ROOM}'><query xmlns='{NS_MUC}#owner'/></iq>")
    xml = got.toXml()
    for var in ("roomname", "roomdesc", "persistentroom", "publicroom", "membersonly",
                "roomsecret", "moderatedroom", "maxusers", "whois", "historylength"):
        assert f"muc#roomconfig_{var}" in xml

    done = await alice.iq(form(roomname="Lounge", membersonly="1", whois="anyone"))
    assert done["type"] == "result"
    assert CONFIG_CHANGED in codes(await alice.expect(lambda s: s.name == "message" and
                                                      muc_x(s) is not None))
    bob = await node.online("bob")
    refused = await join(bob, "Bob")
    assert refused["type"] == "error" and "registration-required" in refused.toXml()
    assert (await alice.iq(admin("<item affiliation='member' jid='bob@localhost'/>")))["type"] \
        == "result"
    assert 100 in codes(await join(bob, "Bob"))  # non-anonymous now

    assert (await alice.iq(form(membersonly="0", passwordprotectedroom="1", roomsecret="s3",
                                maxusers="2")))["type"] == "result"
    carol = await node.online("carol")
    refused = await join(carol, "Carol", extra="<password>wrong</password>")
    assert "not-authorized" in refused.toXml()
    full = await join(carol, "Carol", extra="<password>s3</password>")
    assert full["type"] == "error" and "service-unavailable" in full.toXml()
    bad = await alice.iq(form(maxusers="many"))
    assert bad["type"] == "error" and "not-acceptable" in bad.toXml()

    listing = await alice.iq(admin("<item affiliation='member'/>", "get"))
    assert [i["jid"] for i in listing.firstChildElement().elements()] == ["bob@localhost"]
    assert "forbidden" in (await bob.iq(admin("<item affiliation='member'/>", "get"))).toXml()


@pytest_twisted.ensureDeferred
async def test_moderation_voice_kick_and_ban(memory_xmpp):
    node = await memory_xmpp()
    await node.add_users("alice", "bob")
    alice = await node.online("alice")
    bob = await node.online("bob")
    await join(alice, "Alice")
    assert (await alice.iq(form(moderatedroom="1")))["type"] == "result"
    assert item(await join(bob, "Bob"))["role"] == "visitor"
    bob.send(f"<message to='{ROOM}' type='groupchat' id='v'><body>let me</body></message>")
    assert "forbidden" in (await bob.expect(lambda s: s.getAttribute("type") == "error")).toXml()

    assert (await alice.iq(admin("<item nick='Bob' role='participant'/>")))["type"] == "result"
    assert item(await presence_of(bob, "Bob"))["role"] == "participant"
    bob.send(f"<message to='{ROOM}' type='groupchat'><body>thanks</body></message>")
    await groupchat(alice, "Bob")
    # Bob may not kick the owner.
    assert (await bob.iq(admin("<item nick='Alice' role='none'/>")))["type"] == "error"

    assert (await alice.iq(admin("<item nick='Bob' role='none'><reason>calm down</reason>"
                                 "</item>")))["type"] == "result"
    kicked = await presence_of(bob, "Bob", "unavailable")
    assert codes(kicked) == {307, 110} and text(item(kicked), "reason") == "calm down"
    assert codes(await presence_of(alice, "Bob", "unavailable")) == {307}

    await join(bob, "Bob")
    assert (await alice.iq(admin("<item affiliation='outcast' jid='bob@localhost'/>")))[
        "type"] == "result"
    assert codes(await presence_of(bob, "Bob", "unavailable")) == {301, 110}
    assert "forbidden" in (await join(bob, "Bob")).toXml()


@pytest_twisted.ensureDeferred
async def test_mediated_invitation_and_private_message(memory_xmpp):
    node = await memory_xmpp()
    await node.add_users("alice", "bob")
    alice = await node.online("alice")
    bob = await node.online("bob")
    await join(alice, "Alice")
    alice.send(f"<message to='{ROOM}'><x xmlns='{NS_USER}'><invite to='bob@localhost'>"
               "<reason>come</reason></invite></x></message>")
    invitation = await bob.expect(lambda s: s.name == "message" and muc_x(s) is not None)
    invite = next(muc_x(invitation).elements(NS_USER, "invite"))
    assert invitation["from"] == ROOM and invite["from"] == "alice@localhost"
    assert text(invite, "reason") == "come"

    await join(bob, "Bob")
    bob.send(f"<message to='{ROOM}/Alice' type='chat'><body>psst</body></message>")
    private = await alice.expect(lambda s: s.name == "message" and s.getAttribute("type") == "chat")
    assert private["from"] == f"{ROOM}/Bob" and text(private, "body") == "psst"
    await bob.nothing(lambda s: s.name == "message" and s.getAttribute("type") == "chat")


@pytest_twisted.ensureDeferred
async def test_persistent_rooms_keep_configuration_affiliations_and_subject(tmp_path):
    from tests.xmpp_memory import MemoryServer

    node = await MemoryServer(tmp_path).start()
    try:
        await node.add_users("alice", "bob", "carol")
        alice = await node.online("alice")
        await join(alice, "Alice")
        assert (await alice.iq(form(persistentroom="1", membersonly="1", roomname="Lounge")
                               ))["type"] == "result"
        await alice.iq(admin("<item affiliation='member' jid='bob@localhost'/>"))
        alice.send(f"<message to='{ROOM}' type='groupchat'><subject>Kept</subject></message>")
        await subject(alice)
        alice.send(f"<presence to='{ROOM}/Alice' type='unavailable'/>")
        await presence_of(alice, "Alice", "unavailable")
        # A temporary room goes with its last occupant; this one stays.
        temporary = "scratch@conference.localhost"
        await join(alice, "Alice", room=temporary)
        alice.send(f"<presence to='{temporary}/Alice' type='unavailable'/>")
        await presence_of(alice, "Alice", "unavailable", room=temporary)
    finally:
        await node.stop()

    again = await MemoryServer(tmp_path).start()
    try:
        bob = await again.online("bob")
        rooms = await bob.iq("<iq type='get' id='r' to='conference.localhost'><query "
                             "xmlns='http://jabber.org/protocol/disco#items'/></iq>")
        assert ROOM in rooms.toXml() and "Lounge" in rooms.toXml()
        assert "scratch@" not in rooms.toXml()
        own = await join(bob, "Bob")
        assert codes(own) == {110} and item(own)["affiliation"] == "member"
        assert text(await subject(bob), "subject") == "Kept"
        carol = await again.online("carol")
        assert "registration-required" in (await join(carol, "Carol")).toXml()
    finally:
        await again.stop()


@pytest_twisted.ensureDeferred
async def test_admin_rpcs_create_list_occupants_affiliate_say_destroy(memory_xmpp):
    """The Thrift handler over the same core (the wire is tested in test_muc_clients.py)."""
    from twisted.internet import reactor

    from presenced.thrift import admin
    from presenced.thrift.handler import AdminHandler

    node = await memory_xmpp()
    await node.add_users("alice", "bob")
    rpc = AdminHandler(node.core, reactor)
    await rpc.create_room("Ops@conference.localhost", admin.JabberUser(name="", server=""),
                          True)
    try:
        await rpc.create_room("ops@conference.localhost", None, False)
    except admin.InvalidArgument as e:
        assert "conflict" in e.message
    else:
        raise AssertionError("a second room of the same name was created")
    try:
        await rpc.create_room("ops@elsewhere", None, False)
    except admin.InvalidArgument as e:
        assert "conference.localhost" in e.message
    else:
        raise AssertionError("a room outside the service was created")
    await rpc.set_room_affiliation("ops@conference.localhost",
                                   admin.JabberUser(name="alice", server="localhost"), "owner")
    alice = await node.online("alice")
    own = await join(alice, "Alice", room="ops@conference.localhost")
    assert item(own)["affiliation"] == "owner"
    [listed] = await rpc.list_rooms()
    assert (listed.jid, listed.persistent, listed.occupants) == (
        "ops@conference.localhost", True, 1)
    [occupant] = await rpc.room_occupants("ops@conference.localhost")
    assert (occupant.nick, occupant.jid, occupant.role) == (
        "Alice", "alice@localhost/test", "moderator")

    await rpc.send_room_message("ops@conference.localhost", "maintenance at noon")
    notice = await alice.expect(lambda s: s.name == "message" and text(s, "body") ==
                                "maintenance at noon")
    assert notice["from"] == "ops@conference.localhost"

    await rpc.destroy_room("ops@conference.localhost", "done")
    gone = await alice.expect(lambda s: s.name == "presence" and s.getAttribute("type") ==
                              "unavailable")
    assert next(muc_x(gone).elements(NS_USER, "destroy"), None) is not None
    assert await rpc.list_rooms() == []


@pytest_twisted.ensureDeferred
async def test_bad_input_gets_a_clear_error_and_nothing_is_logged(memory_xmpp, logged_errors):
    node = await memory_xmpp()
    await node.add_users("alice")
    alice = await node.online("alice")

    async def error_for(xml: str) -> str:
        alice.send(xml)
        return (await alice.expect(lambda s: s.getAttribute("type") == "error")).toXml()

    assert "bad-request" in await error_for(
        f"<presence to='{ROOM}/Alice'><x xmlns='{NS_MUC}'><history maxstanzas='lots'/></x>"
        "</presence>")
    assert "jid-malformed" in await error_for(f"<presence to='{ROOM}'/>")
    assert "item-not-found" in await error_for(
        "<presence to='conference.localhost/x'/>")  # the service itself is no room
    await join(alice, "Alice")
    assert "bad-request" in await error_for(
        f"<message to='{ROOM}/Alice' type='groupchat'><body>x</body></message>")
    assert "bad-request" in await error_for(f"<message to='{ROOM}'><body>not groupchat</body>"
                                            "</message>")
    assert "bad-request" in await error_for(
        f"<iq type='set' id='a1' to='{ROOM}'><query xmlns='{NS_MUC}#admin'/></iq>")
    assert "bad-request" in await error_for(admin("<item nick='Alice' role='emperor'/>"))
    assert "not-acceptable" in await error_for(form(historylength="100000"))
    assert "service-unavailable" in await error_for(
        f"<iq type='get' id='v' to='{ROOM}/Alice'><vCard xmlns='vcard-temp'/></iq>")
    assert "item-not-found" in await error_for(
        "<iq type='get' id='n' to='nothing@conference.localhost'><query "
        f"xmlns='{NS_MUC}#owner'/></iq>")
    # The room is still there and still works.
    alice.send(f"<message to='{ROOM}' type='groupchat'><body>still here</body></message>")
    assert text(await groupchat(alice, "Alice"), "body") == "still here"
    assert logged_errors == []


@pytest_twisted.ensureDeferred
async def test_room_archive_with_mam_when_archives_are_on(memory_xmpp):
    node = await memory_xmpp({"xmpp": {"archive_days": 1}})
    await node.add_users("alice", "bob", "carol")
    alice = await node.online("alice")
    await join(alice, "Alice")
    for n in range(3):
        alice.send(f"<message to='{ROOM}' type='groupchat'><body>kept {n}</body></message>")
        await groupchat(alice, "Alice")
    info = await alice.iq(f"<iq type='get' id='i' to='{ROOM}'><query "
                          "xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    assert "urn:xmpp:mam:2" in info.toXml()

    bob = await node.online("bob")  # not in the room: an open room's archive is public

    async def page(rsm: str) -> tuple[list[domish.Element], domish.Element]:
        done = await bob.iq(f"<iq type='set' id='q' to='{ROOM}'><query xmlns='urn:xmpp:mam:2' "
                            f"queryid='x'><set xmlns='http://jabber.org/protocol/rsm'>{rsm}"
                            "</set></query></iq>")
        assert done["type"] == "result"
        results = [s for s in bob.received if s.name == "message"]
        del bob.received[:]
        forwarded = [next(next(r.elements("urn:xmpp:mam:2", "result")).elements())
                     for r in results]
        return [next(c for c in f.elements() if c.name == "message") for f in forwarded], \
            done.firstChildElement()

    messages, fin = await page("<max>2</max>")
    assert [text(m, "body") for m in messages] == ["kept 0", "kept 1"]
    assert all(m["from"] == f"{ROOM}/Alice" for m in messages)
    assert fin["complete"] == "false"
    last = str(next(e for e in next(fin.elements()).elements() if e.name == "last"))
    messages, fin = await page(f"<max>2</max><after>{last}</after>")
    assert [text(m, "body") for m in messages] == ["kept 2"] and fin["complete"] == "true"

    assert (await alice.iq(form(membersonly="1")))["type"] == "result"
    refused = await bob.iq(f"<iq type='set' id='q2' to='{ROOM}'><query "
                           "xmlns='urn:xmpp:mam:2'/></iq>")
    assert refused["type"] == "error" and "forbidden" in refused.toXml()


def stanza_ids(stanza: domish.Element) -> dict[str, str]:
    return {e["by"]: e["id"] for e in stanza.elements("urn:xmpp:sid:0", "stanza-id")}


@pytest_twisted.ensureDeferred
async def test_forged_stanza_ids_are_stripped_and_an_archiving_room_stamps_its_own(memory_xmpp):
    """XEP-0359 4: a ``<stanza-id/>`` a client claims a JID served here gave (the room's, a
    user's, the server's) is removed; another's passes; a room that archives stamps its
    messages with their archive ids, which page its archive."""
    forged = "".join(f"<stanza-id xmlns='urn:xmpp:sid:0' by='{by}' id='forged'/>"
                     for by in (ROOM, "bob@localhost", "localhost", "elsewhere.example"))
    for archive_days, stamped in ((0, False), (1, True)):
        node = await memory_xmpp({"xmpp": {"archive_days": archive_days}})
        await node.add_users("alice", "bob")
        alice, bob = await node.online("alice"), await node.online("bob")
        await join(alice, "Alice")
        await join(bob, "Bob")
        alice.send(f"<message to='{ROOM}' type='groupchat'><body>hi</body>{forged}</message>")
        ids = stanza_ids(await groupchat(bob, "Alice"))
        if not stamped:
            assert ids == {"elsewhere.example": "forged"}
        else:
            assert ids.keys() == {ROOM, "elsewhere.example"} and ids[ROOM] != "forged"
            info = await bob.iq(f"<iq type='get' id='i' to='{ROOM}'><query "
                                "xmlns='http://jabber.org/protocol/disco#info'/></iq>")
            assert "urn:xmpp:sid:0" in info.toXml()
            await node.settle()  # the room appends after it relayed the message
            done = await bob.iq(f"<iq type='set' id='q' to='{ROOM}'><query "
                                "xmlns='urn:xmpp:mam:2' queryid='x'/></iq>")
            assert done["type"] == "result"
            results = [r for s in bob.received for r in s.elements("urn:xmpp:mam:2", "result")]
            assert [r["id"] for r in results] == [ids[ROOM]]
        alice.send(f"<message to='{ROOM}/Bob' type='chat'><body>psst</body>{forged}</message>")
        private = await bob.expect(lambda s: s.name == "message" and text(s, "body") == "psst")
        assert stanza_ids(private) == {"elsewhere.example": "forged"}

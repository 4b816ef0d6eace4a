"""XMPP server logic in memory (tests/xmpp_memory.py: the real c2s door, core and embedded
store, no process): the subscription state machine, offline storage of requests and
messages, message routing by priority (RFC 6121 8.5.2), in-band registration, roster
versioning, pre-approval and directed presence. The same features with real clients over
TCP and TLS are in test_xmpp.py."""

from __future__ import annotations

from typing import Optional

import pytest_twisted
from twisted.words.xish import domish

from tests.xmpp_memory import HEADER, MemoryClient, sleep

NS_ROSTER = "jabber:iq:roster"


async def push_for(client: MemoryClient, jid: str) -> domish.Element:
    """The item for ``jid`` of the next roster push that has one (answered, as clients do)."""
    def has_item(stanza: domish.Element) -> bool:
        query = stanza.firstChildElement()
        return (stanza.name == "iq" and stanza.getAttribute("type") == "set"
                and query is not None and query.uri == NS_ROSTER
                and any(item.getAttribute("jid") == jid for item in query.elements()))
    push = await client.expect(has_item)
    client.send(f"<iq type='result' id='{push['id']}'/>")
    return next(item for item in push.firstChildElement().elements()
                if item.getAttribute("jid") == jid)


async def presence_from(client: MemoryClient, jid: str, kind: str = "available"
                        ) -> domish.Element:
    """The next presence whose ``from`` starts with ``jid`` and whose type is ``kind``
    (``available``: no type attribute)."""
    def wanted(stanza: domish.Element) -> bool:
        return (stanza.name == "presence" and stanza.getAttribute("from", "").startswith(jid)
                and stanza.getAttribute("type", "available") == kind)
    return await client.expect(wanted)


def child_text(stanza: domish.Element, name: str) -> Optional[str]:
    for child in stanza.elements():
        if child.name == name:
            return str(child)
    return None


async def message(client: MemoryClient) -> domish.Element:
    return await client.expect(lambda s: s.name == "message"
                               and s.getAttribute("type") != "error")


@pytest_twisted.ensureDeferred
async def test_subscription_request_approval_and_cancel(memory_xmpp):
    node = await memory_xmpp()
    await node.add_users("erin", "frank")
    erin = await node.online("erin")
    frank = await node.online("frank")
    erin.send("<presence to='frank@localhost' type='subscribe'/>")
    assert (await push_for(erin, "frank@localhost"))["ask"] == "subscribe"
    request = await presence_from(frank, "erin@localhost", "subscribe")
    assert request["from"] == "erin@localhost"
    frank.send("<presence to='erin@localhost' type='subscribed'/>")
    await presence_from(erin, "frank@localhost", "subscribed")
    item = await push_for(erin, "frank@localhost")
    assert item["subscription"] == "to"
    await presence_from(erin, "frank@localhost/test")
    # frank now has erin as a subscriber: his new presence reaches her.
    frank.send("<presence><show>dnd</show><status>busy</status></presence>")
    seen = await erin.expect(lambda s: s.name == "presence"
                             and s.getAttribute("from") == "frank@localhost/test"
                             and child_text(s, "show") == "dnd")
    assert child_text(seen, "status") == "busy"

    erin.send("<presence to='frank@localhost' type='unsubscribe'/>")
    item = await push_for(erin, "frank@localhost")
    assert item["subscription"] == "none"
    await presence_from(frank, "erin@localhost", "unsubscribe")
    await presence_from(erin, "frank@localhost/test", "unavailable")


@pytest_twisted.ensureDeferred
async def test_pending_request_and_offline_message_on_login(memory_xmpp):
    node = await memory_xmpp()
    await node.add_users("grace", "heidi")
    grace = await node.online("grace")
    grace.send("<presence to='heidi@localhost' type='subscribe'/>")
    grace.send("<message to='heidi@localhost' type='chat'><body>while you were out</body>"
               "</message>")
    await push_for(grace, "heidi@localhost")
    await node.settle()
    heidi = await node.online("heidi")
    request = await presence_from(heidi, "grace@localhost", "subscribe")
    assert request["to"] == "heidi@localhost"
    stored = await message(heidi)
    assert child_text(stored, "body") == "while you were out"
    assert stored["from"] == "grace@localhost/test"
    delays = [c for c in stored.elements() if (c.uri, c.name) == ("urn:xmpp:delay", "delay")]
    assert delays and delays[0].getAttribute("stamp")


async def prioritised(node, user: str, resource: str, priority: int) -> MemoryClient:
    client = await node.online(user, resource, roster=False,
                               presence=b"<presence><priority>%d</priority></presence>"
                               % priority)
    await client.expect(f"from='{user}@localhost/{resource}'")
    return client


@pytest_twisted.ensureDeferred
async def test_bare_jid_messages_prefer_the_highest_priority(memory_xmpp):
    node = await memory_xmpp()
    await node.add_users("sender", "multi")
    high = await prioritised(node, "multi", "high", 5)
    low = await prioritised(node, "multi", "low", 1)
    sender = await prioritised(node, "sender", "s", 0)
    sender.send("<message to='multi@localhost' type='chat' id='c1'><body>chat</body></message>")
    assert child_text(await high.expect(lambda s: s.name == "message"), "body") == "chat"
    sender.send("<message to='multi@localhost' type='headline' id='h1'><body>news</body>"
                "</message>")
    assert child_text(await high.expect(lambda s: s.name == "message"), "body") == "news"
    got = await low.expect(lambda s: s.name == "message")
    assert child_text(got, "body") == "news"
    await low.nothing("<body>chat</body>")
    # A full JID reaches exactly that resource, whatever its priority.
    sender.send("<message to='multi@localhost/low' id='f1'><body>direct</body></message>")
    assert child_text(await low.expect(lambda s: s.name == "message"), "body") == "direct"
    # A negative priority takes no bare-JID messages: stored offline instead.
    low.send("<presence><priority>-1</priority></presence>")
    high.send("<presence><priority>-1</priority></presence>")
    await high.expect("<priority>-1</priority>")
    sender.send("<message to='multi@localhost' type='chat' id='o1'><body>later</body>"
                "</message>")
    await node.settle()
    await high.nothing("<body>later</body>")
    await low.nothing("<body>later</body>")
    fresh = await node.online("multi", "fresh", roster=False)
    stored = await fresh.expect("<body>later</body>")
    assert "urn:xmpp:delay" in stored.toXml()


@pytest_twisted.ensureDeferred
async def test_registration_roster_versioning_preapproval_and_directed_presence(memory_xmpp):
    node = await memory_xmpp({"xmpp": {"allow_registration": True}})
    for name in ("newbie", "oldie"):
        client = node.open()
        client.send(HEADER)
        assert "iq-register" in (await client.expect(lambda s: s.name == "features")).toXml()
        form = await client.iq("<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>")
        assert "<password" in form.toXml()
        created = await client.iq("<iq type='set' id='r2'><query xmlns='jabber:iq:register'>"
                                  f"<username>{name}</username><password>pw</password>"
                                  "</query></iq>")
        assert created["type"] == "result"
        again = await client.iq("<iq type='set' id='r3'><query xmlns='jabber:iq:register'>"
                                f"<username>{name}</username><password>pw</password>"
                                "</query></iq>")
        assert "<conflict" in again.toXml()
    newbie = await node.online("newbie", "n", presence=None, roster=False)
    first = await newbie.iq("<iq type='get' id='v1'><query xmlns='jabber:iq:roster' ver=''/>"
                            "</iq>")
    assert "ver='0'" in first.toXml()
    # Pre-approve oldie, then oldie's request is approved at once.
    newbie.send("<presence to='oldie@localhost' type='subscribed'/>")
    push = await newbie.expect(lambda s: s.name == "iq" and s.getAttribute("type") == "set")
    assert "approved='true'" in push.toXml() and "ver='1'" in push.toXml()
    unchanged = await newbie.iq("<iq type='get' id='v2'><query xmlns='jabber:iq:roster' "
                                "ver='1'/></iq>")
    assert "<item" not in unchanged.toXml() and unchanged["type"] == "result"
    newbie.send("<presence/>")
    oldie = await node.online("oldie", "o", roster=False)
    oldie.send("<presence to='newbie@localhost' type='subscribe'/>")
    got = await presence_from(oldie, "newbie@localhost", "subscribed")
    assert got["from"] == "newbie@localhost"
    await presence_from(oldie, "newbie@localhost/n")
    # Directed presence to a stranger's resource, and its unavailable on logout.
    await node.add_users("stranger")
    stranger = await node.online("stranger", "s", roster=False)
    newbie.send("<presence to='stranger@localhost/s'><status>psst</status></presence>")
    assert child_text(await presence_from(stranger, "newbie@localhost/n"), "status") == "psst"
    newbie.send("</stream:stream>")
    await presence_from(stranger, "newbie@localhost/n", "unavailable")


PHOTO = b"\x89PNG not really an image"
NS_UPDATE = "vcard-temp:x:update"


def photo_of(presence: domish.Element) -> Optional[str]:
    """The XEP-0153 photo hash a presence carries ('' for an empty ``<photo/>``), or None."""
    for x in presence.elements(NS_UPDATE, "x"):
        for photo in x.elements(NS_UPDATE, "photo"):
            return str(photo)
    return None


@pytest_twisted.ensureDeferred
async def test_the_server_adds_the_vcard_photo_hash_to_presence(memory_xmpp):
    import base64
    import hashlib
    node = await memory_xmpp()
    await node.add_users("vera", "walt")
    await node.add_friends(("vera", "walt"))
    walt = await node.online("walt")
    vera = await node.online("vera")
    assert photo_of(await presence_from(walt, "vera@localhost/test")) == ""  # no vCard yet
    binval = base64.b64encode(PHOTO).decode()
    await vera.iq(f"<iq type='set' id='v1'><vCard xmlns='vcard-temp'><PHOTO><TYPE>image/png"
                  f"</TYPE><BINVAL>{binval[:10]}\n{binval[10:]}</BINVAL></PHOTO></vCard></iq>")
    await node.settle()
    vera.send("<presence><show>away</show></presence>")
    seen = await walt.expect(lambda s: s.name == "presence" and child_text(s, "show") == "away")
    assert photo_of(seen) == hashlib.sha1(PHOTO).hexdigest()
    # A client that states its own hash (or is not ready: an empty <x/>) is left alone.
    vera.send(f"<presence><show>dnd</show><x xmlns='{NS_UPDATE}'/></presence>")
    seen = await walt.expect(lambda s: s.name == "presence" and child_text(s, "show") == "dnd")
    assert [x.toXml() for x in seen.elements(NS_UPDATE, "x")] == [f"<x xmlns='{NS_UPDATE}'/>"]
    # A second resource binding later knows the hash at once.
    await node.online("vera", resource="phone", presence=b"<presence><show>xa</show></presence>")
    seen = await walt.expect(lambda s: s.name == "presence" and child_text(s, "show") == "xa")
    assert photo_of(seen) == hashlib.sha1(PHOTO).hexdigest()


@pytest_twisted.ensureDeferred
async def test_a_presence_sent_before_the_vcard_read_landed_still_carries_the_hash(
        memory_xmpp):
    """The hash is read at bind; a client that sends its presence at once (no roster fetch
    in between) used to have it broadcast without ``<x><photo/></x>`` whenever the read was
    slower (the cluster test's flake): its stanzas now wait for the read."""
    from twisted.internet import defer

    from presenced.store import PRIVATE_STORE
    node = await memory_xmpp()
    await node.add_users("vera", "walt")
    await node.add_friends(("vera", "walt"))
    walt = await node.online("walt")
    held: defer.Deferred = defer.Deferred()
    open_map = node.store.open_map

    def slow_private(name):
        opened = open_map(name)
        if name == PRIVATE_STORE:
            get = opened.get
            opened.get = lambda *key: held.addCallback(lambda _: get(*key))
        return opened

    node.store.open_map = slow_private
    vera = node.open()
    await vera.login("vera")
    node.store.open_map = open_map
    vera.send("<presence><status>first</status></presence>")
    vera.send("<presence><status>second</status></presence>")
    held.callback(None)
    first = await presence_from(walt, "vera@localhost/test")
    assert (child_text(first, "status"), photo_of(first)) == ("first", "")
    second = await presence_from(walt, "vera@localhost/test")
    assert (child_text(second, "status"), photo_of(second)) == ("second", "")


LEGACY = ("<storage xmlns='storage:bookmarks'>"
          "<conference jid='ops@conference.localhost' name='Ops' autojoin='1'><nick>vee</nick>"
          "</conference><url name='Docs' url='https://example.org/'/></storage>")


def rooms_of(reply: domish.Element) -> dict[str, dict[str, Optional[str]]]:
    """The XEP-0048 conferences of a private storage answer."""
    storage = reply.firstChildElement().firstChildElement()
    return {c["jid"]: {"name": c.getAttribute("name"), "autojoin": c.getAttribute("autojoin"),
                       "nick": child_text(c, "nick")}
            for c in storage.elements("storage:bookmarks", "conference")}


@pytest_twisted.ensureDeferred
async def test_private_storage_bookmarks_and_bookmarks_2_are_one_list(memory_xmpp):
    node = await memory_xmpp()
    await node.add_users("vera")
    vera = await node.online("vera")
    info = await vera.iq("<iq type='get' id='d' to='vera@localhost'>"
                         "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    assert "urn:xmpp:bookmarks:1#compat" in {
        f.getAttribute("var") for f in info.firstChildElement().elements()}
    await vera.iq(f"<iq type='set' id='p1'><query xmlns='jabber:iq:private'>{LEGACY}"
                  f"</query></iq>")
    await node.settle()
    items = await vera.iq("<iq type='get' id='i1'><pubsub xmlns='http://jabber.org/protocol/"
                          "pubsub'><items node='urn:xmpp:bookmarks:1'/></pubsub></iq>")
    (item,) = items.firstChildElement().firstChildElement().elements()
    assert item["id"] == "ops@conference.localhost"
    conference = item.firstChildElement()
    assert (conference.uri, conference["autojoin"], conference["name"]) == (
        "urn:xmpp:bookmarks:1", "true", "Ops")
    assert child_text(conference, "nick") == "vee"

    # A bookmarks 2 client adds a room: the XEP-0048 view has both, and the stored URL.
    await vera.iq("<iq type='set' id='i2'><pubsub xmlns='http://jabber.org/protocol/pubsub'>"
                  "<publish node='urn:xmpp:bookmarks:1'><item id='dev@conference.localhost'>"
                  "<conference xmlns='urn:xmpp:bookmarks:1' autojoin='false'/></item></publish>"
                  "</pubsub></iq>")
    get = ("<iq type='get' id='p2'><query xmlns='jabber:iq:private'>"
           "<storage xmlns='storage:bookmarks'/></query></iq>")
    reply = await vera.iq(get)
    assert rooms_of(reply) == {
        "ops@conference.localhost": {"name": "Ops", "autojoin": "true", "nick": "vee"},
        "dev@conference.localhost": {"name": None, "autojoin": "false", "nick": None}}
    storage = reply.firstChildElement().firstChildElement()
    assert [u["url"] for u in storage.elements("storage:bookmarks", "url")] == [
        "https://example.org/"]

    # A XEP-0048 client drops a room: it is retracted from bookmarks 2 too.
    await vera.iq("<iq type='set' id='p3'><query xmlns='jabber:iq:private'>"
                  "<storage xmlns='storage:bookmarks'><conference jid='dev@conference.localhost'"
                  " autojoin='false'/></storage></query></iq>")
    await node.settle()
    assert set(rooms_of(await vera.iq(get))) == {"dev@conference.localhost"}
    items = await vera.iq("<iq type='get' id='i3'><pubsub xmlns='http://jabber.org/protocol/"
                          "pubsub'><items node='urn:xmpp:bookmarks:1'/></pubsub></iq>")
    assert [i["id"] for i in items.firstChildElement().firstChildElement().elements()] == [
        "dev@conference.localhost"]


@pytest_twisted.ensureDeferred
async def test_a_burst_of_chats_is_archived_in_order_for_both_parties(memory_xmpp,
                                                                     logged_errors):
    """2 000 messages in one read, the first decided by store reads and the rest queued
    behind it: each is archived once per party, in order (the queue was once a chain of
    awaits that overflowed the stack and lost the archive's writes)."""
    from presenced.store import MAM_STORE
    count = 2000
    node = await memory_xmpp({"xmpp": {"archive_days": 7, "stanzas_per_second": 1e6,
                                       "stanza_burst": 10 * count,
                                       "max_pending_stanzas": 10 * count}})
    await node.add_users("ann", "ben")
    ann = await node.online("ann")
    await node.online("ben")
    ann.send(b"".join(b"<message to='ben@localhost' type='chat'><body>m%d</body></message>"
                      % i for i in range(count)))
    await node.settle(20)
    archive = node.store.open_archive(MAM_STORE)
    for owner in ("ann@localhost", "ben@localhost"):
        page = await archive.query(owner, limit=10 * count)
        bodies = [e.value.partition("<body>")[2].partition("</body>")[0] for e in page.entries]
        assert bodies == [f"m{i}" for i in range(count)]
    assert logged_errors == []


@pytest_twisted.ensureDeferred
async def test_messages_past_the_archive_queue_bound_are_counted_not_kept(memory_xmpp,
                                                                        monkeypatch):
    from presenced.store import MAM_STORE
    monkeypatch.setattr("presenced.xmpp.mam.MAX_QUEUED", 5)
    node = await memory_xmpp({"xmpp": {"archive_days": 7}})
    await node.add_users("ann", "ben")
    ann = await node.online("ann")
    await node.online("ben")
    # ann's preferences are not in memory yet: her first message waits for the store, and
    # the next ones queue behind it.
    ann.send(b"".join(b"<message to='ben@localhost' type='chat'><body>m%d</body></message>"
                      % i for i in range(20)))
    await node.settle(20)
    for owner in ("ann@localhost", "ben@localhost"):
        page = await node.store.open_archive(MAM_STORE).query(owner)
        assert len(page.entries) == 5
    assert node.core.metrics.value("presenced_archive_skipped_total") == 30


@pytest_twisted.ensureDeferred
async def test_a_sender_is_held_while_its_recipient_does_not_read(memory_xmpp):
    node = await memory_xmpp()
    await node.add_users("gus", "hal")
    await node.add_friends(("gus", "hal"))
    gus = await node.online("gus")
    hal = await node.online("hal")
    hal.stream.budget.pauseProducing()    # hal's kernel buffer and queue are full
    gus.send("<message to='hal@localhost/test' type='chat'><body>1</body></message>")
    assert gus.transport.producerState == "paused"   # gus is read no more meanwhile
    hal.stream.budget.resumeProducing()   # hal reads again
    assert gus.transport.producerState == "producing"
    await message(hal)
    hal.stream.budget.pauseProducing()    # a recipient that never reads holds a sender
    gus.send("<message to='hal@localhost/test' type='chat'><body>2</body></message>")
    assert gus.transport.producerState == "paused"
    await sleep(1.2)                      # for RECIPIENT_WAIT at most
    assert gus.transport.producerState == "producing"


@pytest_twisted.ensureDeferred
async def test_a_failing_archive_append_is_counted_and_the_message_still_delivered(
        memory_xmpp, monkeypatch, logged_errors):
    def broken(conn, store, rows):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("presenced.store.embedded._archive_append_batch", broken)
    node = await memory_xmpp({"xmpp": {"archive_days": 7}})
    await node.add_users("ann", "ben")
    ann = await node.online("ann")
    ben = await node.online("ben")
    ann.send(b"".join(b"<message to='ben@localhost' type='chat'><body>m%d</body></message>"
                      % i for i in range(3)))
    for i in range(3):
        await ben.expect(lambda e, i=i: e.name == "message" and str(e.body) == f"m{i}")
    await node.settle(20)
    assert node.core.metrics.value("presenced_archive_failed_total") == 6
    assert logged_errors and all("disk on fire" in str(e) for e in logged_errors)
    logged_errors.clear()


@pytest_twisted.ensureDeferred
async def test_a_read_of_ten_messages_reaches_the_partner_in_one_write(memory_xmpp):
    """flow.ReadBatch: what one client's read causes goes to each recipient in one write,
    in order (one send per recipient per read, not one per stanza)."""
    node = await memory_xmpp()
    await node.add_users("ann", "bob")
    ann = await node.online("ann", roster=False)
    bob = await node.online("bob", roster=False)
    writes: list[bytes] = []
    budget = bob.stream.budget
    send = budget._write
    budget._write = lambda data: (writes.append(data), send(data))
    ann.send(b"".join(b"<message to='bob@localhost' type='chat' id='m%d'><body>%d</body>"
                      b"</message>" % (n, n) for n in range(10)))
    assert len(writes) == 1
    got = [await message(bob) for _ in range(10)]
    assert [m["id"] for m in got] == [f"m{n}" for n in range(10)]
    bob.send(b"<message to='ann@localhost' type='chat' id='r'><body>hi</body></message>")
    assert (await message(ann))["id"] == "r"


@pytest_twisted.ensureDeferred
async def test_a_stream_error_goes_out_after_the_answers_its_read_queued(memory_xmpp):
    """A read that is answered and then breaks the stream: the answer, then the error,
    then the close."""
    node = await memory_xmpp()
    await node.add_users("ann")
    ann = await node.online("ann", roster=False)
    ann.transport.clear()
    ann.stream.dataReceived(b"<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq><a<")
    data = ann.transport.value()
    assert ann.transport.disconnecting
    assert data.index(b"id='p1'") < data.index(b"not-well-formed") < data.index(
        b"</stream:stream>")


@pytest_twisted.ensureDeferred
async def test_a_forged_stanza_id_is_stripped_and_the_body_kept(memory_xmpp):
    """XEP-0359 5: a client's ``<stanza-id/>`` claiming this server is removed on the way
    to a bare JID (archive off too); one by another server, and the body, pass."""
    node = await memory_xmpp()
    await node.add_users("ann", "bob")
    ann = await node.online("ann", roster=False)
    bob = await node.online("bob", roster=False)
    ann.send(b"<message to='bob@localhost' type='chat' id='f'><body>a &amp; b</body>"
             b"<stanza-id xmlns='urn:xmpp:sid:0' by='bob@localhost' id='x'/>"
             b"<stanza-id xmlns='urn:xmpp:sid:0' by='elsewhere.example' id='y'/>"
             b"</message>")
    got = await message(bob)
    assert child_text(got, "body") == "a & b"
    assert [c["by"] for c in got.elements() if c.name == "stanza-id"] == ["elsewhere.example"]


async def test_archiving_that_cannot_ask_the_store_logs_one_line_not_one_per_message(
        memory_xmpp, monkeypatch, logged_errors):
    """A failing store (Redis past its timeout under a burst) failed every queued message's
    decision with a traceback of its own, each after a request of its own: megabytes of log
    a minute and a retry storm on top of the outage. Now the owner's queue is given up at
    the first failure (counted as failed appends)."""
    from twisted.internet import defer

    from presenced.store import StoreError
    from presenced.store.embedded import EmbeddedMap

    node = await memory_xmpp({"xmpp": {"archive_days": 7}})
    await node.add_users("ann", "ben")
    ann = await node.online("ann")
    ben = await node.online("ben")
    monkeypatch.setattr(EmbeddedMap, "get",
                        lambda self, user, key: defer.fail(StoreError("store is down")))
    ann.send(b"".join(b"<message to='ben@localhost' type='chat'><body>m%d</body></message>"
                      % i for i in range(5)))
    for i in range(5):  # delivered all the same
        await ben.expect(lambda e, i=i: e.name == "message" and str(e.body) == f"m{i}")
    await node.settle(20)
    assert len(logged_errors) == 1 and "store is down" in str(logged_errors[0])
    assert node.core.metrics.value("presenced_archive_failed_total") == 10  # both archives
    logged_errors.clear()

"""Now playing: the Tune model, entity caps hashing and caching, the core publish path, and
PEP (XEP-0163) with User Tune (XEP-0118) through a real server and real slixmpp clients."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.words.xish import domish

from presenced import config, events
from presenced.core import Core
from presenced.nowplaying import TUNE_NS, BadTune, Tune, parse_tune_xml
from presenced.store.embedded import EmbeddedRosterStore
from presenced.xmlparse import parse_element
from presenced.xmpp.caps import (BadCaps, EntityCaps, caps_hash, notify_nodes,
                                 parse_disco_info, verification_string)
from tests.helpers import (NS_EVENT, PASSWORD, SONG, SONG_SEEN, TIMEOUT, RecordingSession,
                           TuneClient)


def parse(xml: str) -> domish.Element:
    """One element from XML text, with domish's own parser (as the server reads stanzas)."""
    return parse_element(xml)


# --- the Tune model -------------------------------------------------------------------------

def test_tune_round_trips_through_xml_and_payload():
    tune = Tune(artist="Yes & <Friends>", title="Heart of the Sunrise", source="Fragile",
                length=686, track="3", rating=8, uri="http://example.com/yes")
    assert parse_tune_xml(tune.to_xml()) == tune
    assert Tune.from_payload(tune.to_payload()) == tune
    assert tune.to_payload()["length"] == 686
    assert tune.describe() == "Yes & <Friends> - Heart of the Sunrise (Fragile)"


def test_empty_fields_mean_unset_and_empty_tune_is_stopped():
    tune = Tune(artist="A", source="", title="T", length=0)
    assert tune.source is None
    assert tune.to_payload() == {"artist": "A", "title": "T", "length": 0}
    stop = Tune()
    assert stop.stopped and stop.to_payload() == {}
    assert parse_tune_xml(stop.to_xml()).stopped
    assert not tune.stopped


@pytest.mark.parametrize("fields, problem", [
    ({"length": -1}, "length"),
    ({"length": 65536}, "length"),
    ({"length": "3"}, "integer"),
    ({"length": True}, "integer"),
    ({"rating": 0}, "rating"),
    ({"rating": 11}, "rating"),
    ({"artist": "x" * 1025}, "longer"),
    ({"title": "bell\x07"}, "XML"),
    ({"track": 3}, "text"),
])
def test_bad_tunes_are_refused_with_the_field_named(fields, problem):
    with pytest.raises(BadTune, match=problem):
        Tune(**fields)


@pytest.mark.parametrize("xml, problem", [
    ("<tune xmlns='http://jabber.org/protocol/tune'><length>abc</length></tune>", "length"),
    ("<tune xmlns='http://jabber.org/protocol/tune'><length>-5</length></tune>", "length"),
    ("<tune xmlns='http://jabber.org/protocol/tune'><rating>11</rating></tune>", "rating"),
    ("<tune xmlns='http://jabber.org/protocol/tune'><colour>red</colour></tune>", "colour"),
    ("<tune xmlns='http://jabber.org/protocol/tune'><title>a</title><title>b</title></tune>",
     "twice"),
    ("<mood xmlns='http://jabber.org/protocol/mood'/>", "expected"),
])
def test_bad_tune_elements_are_refused(xml, problem):
    with pytest.raises(BadTune, match=problem):
        Tune.from_element(parse(xml))


def test_tune_element_ignores_foreign_extensions():
    tune = Tune.from_element(parse(
        "<tune xmlns='http://jabber.org/protocol/tune'><title>T</title>"
        "<x xmlns='urn:example'>ignored</x><length> 42 </length></tune>"))
    assert tune == Tune(title="T", length=42)


# --- entity caps ------------------------------------------------------------------------------

SIMPLE_INFO = """<query xmlns='http://jabber.org/protocol/disco#info'>
  <identity category='client' name='Exodus 0.9.1' type='pc'/>
  <feature var='http://jabber.org/protocol/caps'/>
  <feature var='http://jabber.org/protocol/disco#info'/>
  <feature var='http://jabber.org/protocol/disco#items'/>
  <feature var='http://jabber.org/protocol/muc'/>
</query>"""

COMPLEX_INFO = """<query xmlns='http://jabber.org/protocol/disco#info'>
  <identity xml:lang='en' category='client' name='Psi 0.11' type='pc'/>
  <identity xml:lang='el' category='client' name='\u03a8 0.11' type='pc'/>
  <feature var='http://jabber.org/protocol/caps'/>
  <feature var='http://jabber.org/protocol/disco#info'/>
  <feature var='http://jabber.org/protocol/disco#items'/>
  <feature var='http://jabber.org/protocol/muc'/>
  <x xmlns='jabber:x:data' type='result'>
    <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:dataforms:softwareinfo</value></field>
    <field var='ip_version' type='text-multi'><value>ipv6</value><value>ipv4</value></field>
    <field var='os'><value>Mac</value></field>
    <field var='os_version'><value>10.5.1</value></field>
    <field var='software'><value>Psi</value></field>
    <field var='software_version'><value>0.11</value></field>
  </x>
</query>"""


def test_caps_hash_of_the_xep_0115_simple_example():
    assert caps_hash(parse_disco_info(parse(SIMPLE_INFO))) == "QgayPKawpkPSDYmwT/WM94uAlu0="


def test_caps_hash_of_the_xep_0115_complex_example_with_a_form():
    info = parse_disco_info(parse(COMPLEX_INFO))
    assert verification_string(info).startswith("client/pc/el/\u03a8 0.11<client/pc/en/Psi 0.11<")
    assert "ip_version<ipv4<ipv6<" in verification_string(info)
    assert caps_hash(info) == "q07IKJEyjvHSyhy//CH0CxmKi8w="


def test_caps_hash_of_disco_info_with_a_duplicate_feature_is_refused():
    doubled = SIMPLE_INFO.replace("</query>",
                                  "<feature var='http://jabber.org/protocol/muc'/></query>")
    with pytest.raises(BadCaps):
        parse_disco_info(parse(doubled))


def test_notify_nodes():
    assert notify_nodes({TUNE_NS + "+notify", "urn:x", "http://jabber.org/protocol/mood+notify"}) \
        == {TUNE_NS, "http://jabber.org/protocol/mood"}


def caps_presence(ver: str, hash_name: str = "sha-1") -> domish.Element:
    return parse(f"<presence xmlns='jabber:client'><c xmlns='http://jabber.org/protocol/caps' "
                 f"hash='{hash_name}' node='http://example.com/client' ver='{ver}'/></presence>")


class DiscoAnswers:
    """Answers disco#info queries like a client would, later, counting them."""

    def __init__(self, xml: str):
        self.xml = xml
        self.asked: list[tuple[object, str]] = []
        self.waiting: list[defer.Deferred] = []

    def __call__(self, session: object, node: str) -> defer.Deferred:
        self.asked.append((session, node))
        d: defer.Deferred = defer.Deferred()
        self.waiting.append(d)
        return d

    def answer_all(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(parse(self.xml))


def test_entity_caps_asks_once_per_hash_and_shares_the_verified_answer():
    info = SIMPLE_INFO.replace("</query>", f"<feature var='{TUNE_NS}+notify'/></query>")
    ver = caps_hash(parse_disco_info(parse(info)))
    answers = DiscoAnswers(info)
    caps = EntityCaps(answers)
    changes: list[tuple[object, frozenset, frozenset]] = []
    caps.listeners.append(lambda s, old, new: changes.append((s, old, new)))
    first, second = caps.learn("s1", caps_presence(ver)), caps.learn("s2", caps_presence(ver))
    assert answers.asked == [("s1", f"http://example.com/client#{ver}")]
    answers.answer_all()
    assert TUNE_NS + "+notify" in first.result and second.result == first.result
    assert caps.features("s2") == first.result
    assert sorted(c[0] for c in changes) == ["s1", "s2"] and changes[0][1] == frozenset()
    # A later session with the same hash is served from the cache.
    assert caps.learn("s3", caps_presence(ver)).result == first.result
    assert len(answers.asked) == 1 and caps.cached_hashes() == 1
    # The same presence again changes nothing; forgetting a session drops its features.
    caps.learn("s3", caps_presence(ver))
    assert len(changes) == 3
    caps.forget("s3")
    assert caps.features("s3") == frozenset()


def test_entity_caps_does_not_cache_an_answer_that_does_not_match_its_hash():
    answers = DiscoAnswers(SIMPLE_INFO)
    caps = EntityCaps(answers)
    lying = caps.learn("s1", caps_presence("AAAAAAAAAAAAAAAAAAAAAAAAAAA="))
    answers.answer_all()
    assert "http://jabber.org/protocol/muc" in lying.result  # still serves the one session
    assert caps.cached_hashes() == 0
    caps.learn("s2", caps_presence("AAAAAAAAAAAAAAAAAAAAAAAAAAA="))
    assert len(answers.asked) == 2


def test_entity_caps_without_an_answer_knows_nothing_and_other_sessions_ask_themselves():
    answers = DiscoAnswers(SIMPLE_INFO)
    caps = EntityCaps(answers)
    ver = "QgayPKawpkPSDYmwT/WM94uAlu0="
    first, second = caps.learn("s1", caps_presence(ver)), caps.learn("s2", caps_presence(ver))
    answers.waiting.pop().errback(RuntimeError("client went away"))
    assert first.result == frozenset()
    assert [s for s, _ in answers.asked] == ["s1", "s2"]  # s2 asks its own client now
    answers.answer_all()
    assert "http://jabber.org/protocol/muc" in second.result
    assert caps.cached_hashes() == 1
    # s1's next presence with the same caps is answered (from the cache now).
    assert "http://jabber.org/protocol/muc" in caps.learn("s1", caps_presence(ver)).result


def test_entity_caps_cache_is_bounded():
    caps = EntityCaps(DiscoAnswers(SIMPLE_INFO), cache_size=2)
    for n in range(5):
        caps._remember(("sha-1", f"v{n}"), frozenset())
    assert caps.cached_hashes() == 2


# --- the core publish path ------------------------------------------------------------------

@pytest.fixture
def core(tmp_path: Path):
    cfg = config.load(overrides={"server": {"data_dir": str(tmp_path / "data")}})
    store = EmbeddedRosterStore(str(tmp_path / "pep.sqlite3"))
    pytest_twisted.blockon(store.start())
    yield Core(cfg, store)
    pytest_twisted.blockon(store.stop())


@pytest_twisted.ensureDeferred
async def test_core_publish_tune_stores_it_and_sends_one_event_to_friends(core):
    await core.store.add_friends([("rj@localhost", "bob@localhost")])
    rj, bob, stranger = (RecordingSession(u) for u in
                         ("rj@localhost", "bob@localhost", "eve@localhost"))
    for s in (rj, bob, stranger):
        core.router.login(s.user, s)
    tune = Tune(artist="Yes", title="Roundabout", source="Fragile", length=510, track="1")
    assert await core.publish_tune("rj@localhost", tune) == 2
    assert [e.type for e in bob.events] == [events.TUNE]
    assert bob.events[0].payload == {"artist": "Yes", "title": "Roundabout",
                                     "source": "Fragile", "length": 510, "track": "1"}
    assert rj.events == bob.events and stranger.events == []
    assert await core.now_playing("rj@localhost") == tune
    assert core.metrics.value("presenced_tunes_published_total") == 1

    assert await core.publish_tune("rj@localhost", None) == 2
    assert bob.events[-1].payload == {}
    assert await core.now_playing("rj@localhost") is None
    assert await core.now_playing("nobody@localhost") is None


# --- PEP with real slixmpp clients through a real server --------------------------------------


async def online(server, user: str, notify: bool = True, moods: bool = False) -> TuneClient:
    client = TuneClient(user, notify, moods)
    client.connect("127.0.0.1", server.ports["xmpp"])
    await asyncio.wait_for(client.started, TIMEOUT)
    return client


async def offline(*clients: TuneClient) -> None:
    for client in clients:
        client.disconnect()
    await asyncio.sleep(0.2)


@pytest.fixture
def server(presenced_factory):
    server = presenced_factory({"server": {"scram_iterations": 64},
                                "xmpp": {"bind": "127.0.0.1"},
                                "comet": {"enabled": False}, "webadmin": {"enabled": False}})
    server.ctl("import-users", "-", "--quiet", input="".join(
        f"{user}@localhost {PASSWORD}\n" for user in ("alice", "bob", "carol", "dave", "erin")))
    server.ctl("load-friends", "-", "--quiet", input="".join(
        f"alice@localhost {friend}@localhost\n" for friend in ("bob", "carol", "erin")))
    # A running server reads the store on login: the accounts above are seen without restart.
    return server


def test_a_tune_reaches_friends_with_notify_only_and_later_logins_get_the_last_one(server):
    async def scenario() -> None:
        alice = await online(server, "alice")
        bob = await online(server, "bob")
        carol = await online(server, "carol", notify=False)   # a friend without tune+notify
        dave = await online(server, "dave")                     # +notify, but not a friend
        await asyncio.sleep(0.5)  # let the server learn the clients' caps

        await alice.publish(**SONG)
        assert await bob.next_tune() == ("alice@localhost", SONG_SEEN)
        assert await alice.next_tune() == ("alice@localhost", SONG_SEEN)  # own resources too
        await dave.nothing_more()
        await carol.nothing_more()

        # A friend who logs in later is sent the last tune.
        erin = await online(server, "erin")
        assert await erin.next_tune() == ("alice@localhost", SONG_SEEN)

        # Stop: an empty <tune/> travels the same way.
        await alice.plugin["xep_0118"].stop()
        assert await bob.next_tune() == ("alice@localhost", {})
        assert await erin.next_tune() == ("alice@localhost", {})
        await dave.nothing_more()
        await offline(alice, bob, carol, dave, erin)

    asyncio.run(scenario())


def test_the_last_tune_survives_a_restart(server):
    async def publish() -> None:
        alice = await online(server, "alice")
        await alice.publish(**SONG)
        await offline(alice)

    async def later() -> None:
        bob = await online(server, "bob")
        assert await bob.next_tune() == ("alice@localhost", SONG_SEEN)
        await offline(bob)

    asyncio.run(publish())
    server.stop()
    server.start()
    asyncio.run(later())


def test_thrift_publish_np_takes_the_same_path_as_a_client_publish(server):
    import thriftpy2
    from thriftpy2.rpc import make_client

    from tests.helpers import REPO

    idl = thriftpy2.load(str(REPO / "thrift" / "presenced.thrift"), module_name="pep_np_thrift")

    def publish_np(*args) -> None:
        # An old PHP-era client: the original Ejabthrift service, buffered binary.
        admin = make_client(idl.Ejabthrift, "127.0.0.1", server.ports["thrift"], timeout=10000)
        try:
            admin.publish_np(idl.JabberUser("alice", "localhost"), *args)
        finally:
            admin.close()

    async def scenario() -> None:
        bob = await online(server, "bob")
        dave = await online(server, "dave")
        await asyncio.sleep(0.5)
        await asyncio.to_thread(publish_np, "Yes", "Fragile", "Heart of the Sunrise", 686, 4)
        assert await bob.next_tune() == ("alice@localhost", SONG_SEEN)
        await dave.nothing_more()
        items = await bob.plugin["xep_0060"].get_items("alice@localhost", TUNE_NS)
        assert "Heart of the Sunrise" in str(items)
        await offline(bob, dave)

    asyncio.run(scenario())


# --- PEP in memory: the same door and store, no process (see tests/xmpp_memory.py) ----------

MOOD_NS = "http://jabber.org/protocol/mood"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
TUNE_CLIENT = [TUNE_NS + "+notify", TUNE_NS]        # slixmpp with xep_0118 registered
MOOD_CLIENT = [MOOD_NS + "+notify", MOOD_NS]        # slixmpp with xep_0107 registered
NO_PEP = []                                          # a client without any +notify


def tune_xml(**fields) -> str:
    return f"<tune xmlns='{TUNE_NS}'>" + "".join(
        f"<{name}>{value}</{name}>" for name, value in fields.items()) + "</tune>"


def publish_iq(iq_id: str, node: str, payload: str, to: str = "", options: str = "") -> str:
    """A PEP publish as slixmpp's xep_0163 sends it (item id ``current``)."""
    to = f" to='{to}'" if to else ""
    return (f"<iq type='set' id='{iq_id}'{to}><pubsub xmlns='http://jabber.org/protocol/pubsub'>"
            f"<publish node='{node}'><item id='current'>{payload}</item></publish>{options}"
            "</pubsub></iq>")


def items_iq(iq_id: str, owner: str, node: str) -> str:
    return (f"<iq type='get' id='{iq_id}' to='{owner}'><pubsub "
            f"xmlns='http://jabber.org/protocol/pubsub'><items node='{node}'/></pubsub></iq>")


def condition(iq: domish.Element) -> str:
    """The defined condition of an error reply ('' for a result)."""
    for error in (e for e in iq.elements() if e.name == "error"):
        for child in error.elements():
            if child.uri == "urn:ietf:params:xml:ns:xmpp-stanzas" and child.name != "text":
                return child.name
    return ""


def is_notification(stanza: domish.Element) -> bool:
    return stanza.name == "message" and any(
        child.uri == NS_EVENT and child.name == "event" for child in stanza.elements())


async def next_notification(client) -> tuple[str, object]:
    """(publisher, tune fields) or (publisher, the message's XML), as TuneClient queues them."""
    message = await client.expect(is_notification)
    tunes = [tune for event in message.elements(NS_EVENT, "event")
             for items in event.elements(NS_EVENT, "items")
             for item in items.elements(NS_EVENT, "item")
             for tune in item.elements(TUNE_NS, "tune")]
    publisher = message["from"].partition("/")[0]
    if not tunes:
        return publisher, message.toXml()
    return publisher, {child.name: str(child) for child in tunes[0].elements()}


async def pep_node(memory_xmpp):
    """The accounts and friendships of the process fixture ``server`` above, in memory."""
    node = await memory_xmpp()
    await node.add_users("alice", "bob", "carol", "dave", "erin", password=PASSWORD)
    await node.add_friends(("alice", "bob"), ("alice", "carol"), ("alice", "erin"))
    return node


@pytest_twisted.ensureDeferred
async def test_bad_tunes_get_bad_request_and_change_nothing(memory_xmpp):
    node = await pep_node(memory_xmpp)
    alice = await node.online("alice", password=PASSWORD, features=TUNE_CLIENT)
    bob = await node.online("bob", password=PASSWORD, features=TUNE_CLIENT)
    answer = await alice.iq(publish_iq("p1", TUNE_NS, tune_xml(**SONG)))
    assert answer["type"] == "result"
    assert await next_notification(bob) == ("alice@localhost", SONG_SEEN)
    for number, bad in enumerate(({"title": "x", "length": "abc"}, {"title": "x", "rating": 11})):
        answer = await alice.iq(publish_iq(f"bad{number}", TUNE_NS, tune_xml(**bad)))
        assert answer["type"] == "error" and condition(answer) == "bad-request"
        assert "invalid-payload" in answer.toXml()
    await bob.nothing(is_notification)
    # The server still plays the good song.
    items = await bob.iq(items_iq("i1", "alice@localhost", TUNE_NS))
    assert items["type"] == "result" and "Heart of the Sunrise" in items.toXml()


@pytest_twisted.ensureDeferred
async def test_pep_items_and_disco_follow_the_presence_access_model(memory_xmpp):
    node = await pep_node(memory_xmpp)
    alice = await node.online("alice", password=PASSWORD, features=TUNE_CLIENT)
    bob = await node.online("bob", password=PASSWORD, features=TUNE_CLIENT)
    dave = await node.online("dave", password=PASSWORD, features=TUNE_CLIENT)
    assert (await alice.iq(publish_iq("p1", TUNE_NS, tune_xml(**SONG))))["type"] == "result"
    info = await bob.iq("<iq type='get' id='d1' to='alice@localhost'><query "
                        "xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    query = info.firstChildElement()
    assert ("pubsub", "pep") in [(i.getAttribute("category"), i.getAttribute("type"))
                                 for i in query.elements(NS_DISCO_INFO, "identity")]
    assert "http://jabber.org/protocol/pubsub#publish" in [
        f["var"] for f in query.elements(NS_DISCO_INFO, "feature")]
    items = await bob.iq(items_iq("i1", "alice@localhost", TUNE_NS))
    assert items["type"] == "result" and "Fragile" in items.toXml()
    refused = await dave.iq(items_iq("i2", "alice@localhost", TUNE_NS))
    assert condition(refused) == "not-authorized"
    # Only the owner publishes; PEP nodes offer the presence access model only.
    not_yours = tune_xml(title="Not yours")
    refused = await dave.iq(publish_iq("p2", TUNE_NS, not_yours, to="alice@localhost"))
    assert condition(refused) == "forbidden"
    options = ("<publish-options><x xmlns='jabber:x:data' type='submit'>"
               "<field var='FORM_TYPE' type='hidden'><value>"
               "http://jabber.org/protocol/pubsub#publish-options</value></field>"
               "<field var='pubsub#access_model'><value>open</value></field></x>"
               "</publish-options>")
    refused = await alice.iq(publish_iq("p3", TUNE_NS, not_yours, to="alice@localhost",
                                        options=options))
    assert condition(refused) == "conflict" and "precondition-not-met" in refused.toXml()
    items = await bob.iq(items_iq("i3", "alice@localhost", TUNE_NS))
    assert "Fragile" in items.toXml() and "Not yours" not in items.toXml()
    deleted = await alice.iq(
        f"<iq type='set' id='x1' to='alice@localhost'><pubsub xmlns='http://jabber.org/"
        f"protocol/pubsub#owner'><delete node='{TUNE_NS}'/></pubsub></iq>")
    assert deleted["type"] == "result"
    gone = await bob.iq(items_iq("i4", "alice@localhost", TUNE_NS))
    assert condition(gone) == "item-not-found"


@pytest_twisted.ensureDeferred
async def test_other_pep_nodes_are_kept_and_delivered_to_their_own_notify(memory_xmpp):
    node = await pep_node(memory_xmpp)
    alice = await node.online("alice", password=PASSWORD, features=MOOD_CLIENT)
    bob = await node.online("bob", password=PASSWORD, features=MOOD_CLIENT)
    carol = await node.online("carol", password=PASSWORD, features=TUNE_CLIENT)
    mood = f"<mood xmlns='{MOOD_NS}'><happy/><text>new record out</text></mood>"
    assert (await alice.iq(publish_iq("m1", MOOD_NS, mood)))["type"] == "result"
    sender, xml = await next_notification(bob)
    assert sender == "alice@localhost"
    assert MOOD_NS in xml and "happy" in xml
    await carol.nothing(is_notification)
    # Kept as the node's last item: a friend interested in moods who comes later gets it.
    erin = await node.online("erin", password=PASSWORD, features=MOOD_CLIENT)
    sender, xml = await next_notification(erin)
    assert "new record out" in xml
    # Retract: the item goes, subscribers are told.
    retracted = await alice.iq(
        f"<iq type='set' id='r1'><pubsub xmlns='http://jabber.org/protocol/pubsub'>"
        f"<retract node='{MOOD_NS}' notify='true'><item id='current'/></retract></pubsub></iq>")
    assert retracted["type"] == "result"
    sender, xml = await next_notification(bob)
    assert "retract" in xml
    gone = await bob.iq(items_iq("i1", "alice@localhost", MOOD_NS))
    assert condition(gone) == "item-not-found"


@pytest_twisted.ensureDeferred
async def test_a_client_pipelining_publishes_to_a_multi_item_node_loses_none(memory_xmpp):
    node = await pep_node(memory_xmpp)
    alice = await node.online("alice", password=PASSWORD)
    options = ("<publish-options><x xmlns='jabber:x:data' type='submit'><field var='FORM_TYPE' "
               "type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value>"
               "</field><field var='pubsub#max_items'><value>10</value></field></x>"
               "</publish-options>")
    alice.send("".join(
        f"<iq type='set' id='p{n}'><pubsub xmlns='http://jabber.org/protocol/pubsub'>"
        f"<publish node='urn:x:list'><item id='{n}'><e xmlns='urn:x'/></item></publish>"
        f"{options}</pubsub></iq>" for n in range(6)))  # sent at once, not waiting
    for n in range(6):
        answer = await alice.expect(lambda s, n=n: s.name == "iq" and s["id"] == f"p{n}")
        assert answer["type"] == "result"
    items = await alice.iq(items_iq("i", "alice@localhost", "urn:x:list"))
    assert [i["id"] for i in items.pubsub.items.elements()] == [str(n) for n in range(6)]


@pytest.mark.parametrize("store", ["embedded", "redis"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_pipelined_publishes_to_one_multi_item_node_are_all_kept(store, tmp_path):
    """Six publishes begun before any is stored (a client pipelining them) keep six items:
    each change of the account's nodes waits for the one before."""
    settings = config.load(overrides={"server": {"data_dir": str(tmp_path / "data")}})
    core = Core(settings, store)
    options = {"pubsub#max_items": "10"}
    await defer.gatherResults([defer.ensureDeferred(core.pep.publish(
        "ann@localhost", "urn:x:list", str(n), f"<e xmlns='urn:x'>{n}</e>", options))
        for n in range(6)])
    node = await core.pep.get_node("ann@localhost", "urn:x:list")
    assert [i.item_id for i in node.items] == [str(n) for n in range(6)]
    retracted = [defer.ensureDeferred(core.pep.retract("ann@localhost", "urn:x:list", [str(n)]))
                 for n in (0, 1)]
    assert await defer.gatherResults(retracted) == [True, True]
    node = await core.pep.get_node("ann@localhost", "urn:x:list")
    assert [i.item_id for i in node.items] == ["2", "3", "4", "5"]
    assert len(core.pep.turns) == 0  # no lock is kept once the changes are done

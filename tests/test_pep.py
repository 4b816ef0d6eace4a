"""Now playing: the Tune model, entity caps hashing and caching, the core publish path, and
PEP (XEP-0163) with User Tune (XEP-0118) through a real server and real slixmpp clients."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.words.xish import domish
from zope.interface import implementer

from presenced import config, events
from presenced.core import Core
from presenced.events import Event
from presenced.nowplaying import TUNE_NS, BadTune, Tune, parse_tune_xml
from presenced.router import ISession
from presenced.store.embedded import EmbeddedRosterStore
from presenced.xmpp.caps import (BadCaps, EntityCaps, caps_hash, notify_nodes,
                                 parse_disco_info, verification_string)


def parse(xml: str) -> domish.Element:
    """One element from XML text, with domish's own parser (as the server reads stanzas)."""
    found: list[domish.Element] = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = found.append
    stream.DocumentEndEvent = lambda: None
    stream.parse(("<wrap>" + xml + "</wrap>").encode("utf-8"))
    assert len(found) == 1
    return found[0]


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


def test_entity_caps_cache_is_bounded():
    caps = EntityCaps(DiscoAnswers(SIMPLE_INFO), cache_size=2)
    for n in range(5):
        caps._remember(("sha-1", f"v{n}"), frozenset())
    assert caps.cached_hashes() == 2


# --- the core publish path ------------------------------------------------------------------

@implementer(ISession)
class RecordingSession:
    protocol = "test"

    def __init__(self, user: str):
        self.user = user
        self.label = "r"
        self.events: list[Event] = []

    def deliver(self, event: Event) -> None:
        self.events.append(event)

    def close(self, reason: str) -> None:
        pass


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

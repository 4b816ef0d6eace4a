"""Topics and site events in memory: subject syntax, Core.publish's checks, delivery to
router sessions (the comet JSON shape), XMPP resources (tests/xmpp_memory.py) and IRC hooks.
The same over HTTP, Thrift and real clients is in test_http_api.py."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from presenced import events
from presenced.comet import frames
from presenced.irc.hooks import HookAnnouncer
from presenced.irc.options import irc_hooks
from presenced import subjects
from presenced.subjects import (BadEvent, BadSubject, SubjectCache, check_event_data,
                                is_topic, normalize_subject)
from presenced.users import BadUser
from presenced.xmpp.siteevents import NS_JSON
from tests.helpers import RecordingSession

NS_EVENT = "http://jabber.org/protocol/pubsub#event"


@pytest.mark.parametrize("text, expected", [
    ("artist/radiohead", "artist/radiohead"),
    ("photo/789", "photo/789"),
    (" news/Front-Page.v2/2026 ", "news/Front-Page.v2/2026"),
    ("alice", "alice@localhost"),
    ("Bob@Example.com", "bob@example.com"),
])
def test_subjects_are_users_or_topics(text, expected):
    assert normalize_subject(text, "localhost") == expected
    assert is_topic(expected) == ("@" not in expected)


@pytest.mark.parametrize("text", [
    "artist/", "/radiohead", "Artist/radiohead", "artist//x", "artist/a b", "artist/../x",
    "artist/.", "a/" + "x" * 129, "a/b/c/d/e/f/g/h/i", "artist/radi<o", "k" * 33 + "/x",
])
def test_bad_topics_are_refused_with_a_reason(text):
    with pytest.raises(BadSubject, match="is not a topic"):
        normalize_subject(text, "localhost")


def test_the_subject_cache_answers_as_the_check_keeps_no_refusal_and_stays_bounded(
        monkeypatch):
    monkeypatch.setattr(subjects, "SUBJECT_CACHE", 3)
    cache = SubjectCache("localhost")
    for _ in range(2):
        assert cache("Bob@Example.com") == "bob@example.com"
        assert cache("alice") == "alice@localhost" and cache("photo/789") == "photo/789"
        with pytest.raises(BadSubject):
            cache("artist/../x")
    assert cache.known == {"Bob@Example.com": "bob@example.com", "alice": "alice@localhost",
                           "photo/789": "photo/789"}
    assert cache("carol") == "carol@localhost" and cache.known == {"carol": "carol@localhost"}
    long_name = "u" * (subjects.SUBJECT_CACHE_TEXT + 1)
    assert cache(long_name) == long_name + "@localhost" and long_name not in cache.known


def test_a_jid_with_a_resource_is_no_topic():
    with pytest.raises(BadUser):
        normalize_subject("alice@localhost/phone", "localhost")


@pytest_twisted.ensureDeferred
async def test_publish_checks_type_and_data_before_sending(memory_xmpp):
    node = await memory_xmpp({"server": {"max_event_bytes": 64}})
    core = node.core
    watcher = RecordingSession("artist/radiohead")
    core.router.login("artist/radiohead", watcher)
    for kind, data, problem in (("tune", {}, "reserved"), ("Photo", {}, "must be"),
                                ("photo", [1], "JSON object"),
                                ("photo", {"x": "y" * 64}, "max_event_bytes"),
                                ("photo", {"x": float("nan")}, "not JSON")):
        with pytest.raises(BadEvent, match=problem):
            core.publish("artist/radiohead", kind, data)
    assert watcher.events == []


@pytest_twisted.ensureDeferred
async def test_a_batch_is_checked_whole_then_sent_in_order_also_while_a_login_loads(
        memory_xmpp):
    node = await memory_xmpp()
    core = node.core
    await core.add_subscriptions([("bob@localhost", "artist/radiohead")])
    bob = RecordingSession("bob@localhost")
    core.router.login(bob.user, bob)
    assert core.router.followers.loading       # bob's subscriptions are being read: sends wait
    with pytest.raises(BadEvent, match=r"events\[1\]: .*reserved"):
        core.publish_many([("artist/radiohead", "photo", {}), ("artist/radiohead", "tune", {})])
    held = core.publish_many([("artist/radiohead", "photo", {"n": 1}),
                              ("bob@localhost", "news", {"n": 2})])
    assert bob.events == []
    sent = await held
    assert [reached for _, reached in sent] == [1, 1]
    assert bob.events == [event for event, _ in sent]
    assert [e.payload["data"] for e in bob.events] == [{"n": 1}, {"n": 2}]
    at_once = core.publish_many([("artist/radiohead", "photo", {"n": 3})])
    assert at_once.called and bob.events[-1].payload["data"] == {"n": 3}


@pytest_twisted.ensureDeferred
async def test_a_batch_past_the_sessions_of_one_turn_goes_on_in_the_next(memory_xmpp,
                                                                          monkeypatch):
    """A batch to big topics does not hold the reactor: past ``BATCH_TURN_SESSIONS``
    deliveries the rest waits for the next reactor turn, and every event arrives in order."""
    from presenced import core as core_module

    monkeypatch.setattr(core_module, "BATCH_TURN_SESSIONS", 4)
    node = await memory_xmpp()
    core = node.core
    fans = [RecordingSession(f"fan{n}@localhost") for n in range(3)]
    await core.add_subscriptions([(fan.user, "artist/big") for fan in fans])
    for fan in fans:
        core.router.login(fan.user, fan)
    await core.publish("artist/big", "warmup", {})     # the logins' reads are in
    sent = core.publish_many([("artist/big", "step", {"n": n}) for n in range(5)])
    assert not sent.called
    assert [e.payload["data"] for e in fans[0].events[1:]] == [{"n": 0}]   # 1 + 3 sessions
    results = await sent
    assert [reached for _, reached in results] == [3] * 5
    for fan in fans:
        assert [e.payload["data"]["n"] for e in fan.events[1:]] == [0, 1, 2, 3, 4]


@pytest_twisted.ensureDeferred
async def test_topic_events_reach_followers_with_the_sites_type(memory_xmpp):
    node = await memory_xmpp()
    core = node.core
    await core.add_subscriptions([("bob@localhost", "artist/radiohead"),
                                  ("carol@localhost", "artist/radiohead")])
    bob, carol, dave = (RecordingSession(u) for u in
                        ("bob@localhost", "carol@localhost", "dave@localhost"))
    for session in (bob, carol, dave):
        core.router.login(session.user, session)
    event, reached = await core.publish("artist/radiohead", "photo", {"url": "/p/1.jpg"})
    assert reached == 2
    assert bob.events == carol.events == [event] and dave.events == []
    doc = json.loads(event.to_json())
    assert doc == {"type": "photo", "from": "artist/radiohead", "time": doc["time"],
                   "id": event.id, "data": {"url": "/p/1.jpg"}}
    # Comet streams it (as it does a tune) with that type.
    assert event.type in frames.STREAMED_TYPES
    assert b'"type":"photo"' in frames.ndjson_frame(event)


@pytest_twisted.ensureDeferred
async def test_xmpp_followers_get_pubsub_notifications(memory_xmpp):
    node = await memory_xmpp()
    await node.add_users("alice", "bob", "carol")
    await node.add_friends(("alice", "bob"))
    await node.core.add_subscriptions([("carol@localhost", "artist/radiohead")])
    bob = await node.online("bob")
    carol = await node.online("carol")
    # A topic's event comes from the pubsub service, on the topic's node.
    _, reached = await node.core.publish("artist/radiohead", "news", {"text": "a <new> album"})
    assert reached == 1
    note = await carol.expect(lambda s: s.name == "message")
    assert note["from"] == "pubsub.localhost" and note["type"] == "headline"
    items = note.event.items
    assert items.uri == NS_EVENT and items["node"] == "artist/radiohead"
    payload = items.item.firstChildElement()
    assert payload.uri == NS_JSON
    doc = json.loads(str(payload))
    assert doc["type"] == "news" and doc["data"] == {"text": "a <new> album"}
    assert items.item["id"] == str(doc["id"])
    # A user's event comes from the user's bare JID, on urn:presenced:events:<type>.
    _, reached = await node.core.publish("alice@localhost", "photo", {"id": 7})
    assert reached == 1
    note = await bob.expect(lambda s: s.name == "message")
    assert note["from"] == "alice@localhost"
    assert note.event.items["node"] == "urn:presenced:events:photo"
    assert json.loads(str(note.event.items.item.firstChildElement()))["data"] == {"id": 7}
    await carol.nothing(lambda s: s.name == "message")


class SaidLines:
    """The IRC bot as a hook uses it: ``say(channel, text)``; remembers what was said."""

    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def say(self, channel: str, text: str) -> int:
        self.lines.append((channel, text))
        return 1


@pytest_twisted.ensureDeferred
async def test_irc_hooks_announce_site_events_of_topics(memory_xmpp):
    node = await memory_xmpp()
    hook = {"events": ["photo"], "users": ["photo/789"], "channel": "#photos",
            "format": "{type} on {user}: {url}"}
    assert irc_hooks([hook]) is None
    bot = SaidLines()
    announcer = HookAnnouncer(node.core, bot, hook)
    announcer.start()
    await node.core.publish("photo/789", "photo", {"url": "https://x/789.jpg"})
    await node.core.publish("photo/789", "comment", {"url": "ignored"})
    assert bot.lines == [("#photos", "photo on photo/789: https://x/789.jpg")]
    announcer.stop()


def test_hook_config_takes_site_types_but_not_reserved_names():
    base = {"users": ["a"], "channel": "#c", "format": "{type}"}
    assert irc_hooks([{**base, "events": ["newsfeed", "tune"]}]) is None
    assert "site event types" in irc_hooks([{**base, "events": ["roster"]}])
    assert "site event types" in irc_hooks([{**base, "events": ["Bad Type"]}])


def test_site_event_json_is_the_documented_shape():
    event = events.Event(events.SITE, "alice@localhost", {"type": "photo", "data": {"a": 1}})
    assert events.public_type(event) == "photo"
    assert json.loads(event.to_json())["type"] == "photo"


def test_event_data_that_is_not_json_is_refused_with_the_reason():
    cycle: dict = {}
    cycle["self"] = cycle
    for data, reason in (({"x": float("nan")}, "Out of range float"),
                         ({"x": object()}, "not JSON serializable"),
                         (cycle, "recursion")):
        with pytest.raises(BadEvent, match=reason):
            check_event_data(data, 10000)
    with pytest.raises(BadEvent, match="larger than 10 bytes"):
        check_event_data({"text": "eleven char"}, 10)


def test_a_published_events_json_is_built_around_its_checked_data_unchanged():
    data = {"caption": "caf\u00e9 \"z\"", "n": [1, 2.5, None, True], "nested": {"k": "v"}}
    event = events.site_event("artist/sigur-r\u00f3s", "photo", data,
                              check_event_data(data, 10000))
    encoded_once = event.to_json()
    event_json_from_scratch = events.Event(events.SITE, event.sender, dict(event.payload),
                                           when=event.time, event_id=event.id).to_json()
    assert encoded_once == event_json_from_scratch
    assert json.loads(encoded_once)["data"] == data


NS_PUBSUB = "http://jabber.org/protocol/pubsub"


@pytest_twisted.ensureDeferred
async def test_subscribing_on_the_pubsub_service_is_following_the_topic(memory_xmpp):
    node = await memory_xmpp()
    await node.add_users("erin")
    erin = await node.online("erin")
    answer = await erin.iq(
        f"<iq type='set' id='s1' to='pubsub.localhost'><pubsub xmlns='{NS_PUBSUB}'>"
        "<subscribe node='artist/radiohead' jid='erin@localhost'/></pubsub></iq>")
    assert answer["type"] == "result"
    assert answer.pubsub.subscription["subscription"] == "subscribed"
    # The same graph edge a site makes with add_subscriptions.
    assert await node.core.store.get_subscribers("artist/radiohead") == ["erin@localhost"]
    listing = await erin.iq(f"<iq type='get' id='s2' to='pubsub.localhost'>"
                            f"<pubsub xmlns='{NS_PUBSUB}'><subscriptions/></pubsub></iq>")
    assert [s["node"] for s in listing.pubsub.subscriptions.elements()] == ["artist/radiohead"]
    _, reached = await node.core.publish("artist/radiohead", "news", {"n": 1})
    assert reached == 1
    note = await erin.expect(lambda s: s.name == "message")
    assert note["from"] == "pubsub.localhost"
    answer = await erin.iq(
        f"<iq type='set' id='s3' to='pubsub.localhost'><pubsub xmlns='{NS_PUBSUB}'>"
        "<unsubscribe node='artist/radiohead' jid='erin@localhost'/></pubsub></iq>")
    assert answer["type"] == "result"
    assert await node.core.store.get_subscribers("artist/radiohead") == []


@pytest_twisted.ensureDeferred
async def test_the_pubsub_service_refuses_what_it_does_not_do(memory_xmpp):
    node = await memory_xmpp()
    await node.add_users("erin")
    erin = await node.online("erin")
    for n, (payload, condition) in enumerate((
            ("<subscribe node='artist/x' jid='bob@localhost'/>", "bad-request"),
            ("<subscribe node='no-slash' jid='erin@localhost'/>", "item-not-found"),
            ("<create/>", "not-acceptable"),  # no instant nodes: a node is a topic
            ("<options node='artist/x' jid='erin@localhost'><x xmlns='jabber:x:data' "
             "type='submit'><field var='FORM_TYPE' type='hidden'><value>"
             "http://jabber.org/protocol/pubsub#subscribe_options</value></field></x>"
             "</options>", "feature-not-implemented"))):
        answer = await erin.iq(f"<iq type='set' id='r{n}' to='pubsub.localhost'>"
                               f"<pubsub xmlns='{NS_PUBSUB}'>{payload}</pubsub></iq>")
        assert answer["type"] == "error", payload
        assert answer.error.firstChildElement().name == condition, payload
    assert await node.core.store.get_subscribers("artist/x") == []
    items = await erin.iq("<iq type='get' id='d' to='localhost'>"
                          "<query xmlns='http://jabber.org/protocol/disco#items'/></iq>")
    assert "pubsub.localhost" in [i["jid"] for i in items.query.elements()]
    info = await erin.iq("<iq type='get' id='i' to='pubsub.localhost'>"
                         "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    assert [i["type"] for i in info.query.elements() if i.name == "identity"] == ["service"]

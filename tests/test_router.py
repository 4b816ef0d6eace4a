"""The subscription router over a real embedded store."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from presenced.events import Event
from presenced.router import SubscriptionRouter
from presenced.store.embedded import EmbeddedRosterStore
from tests.helpers import RecordingSession


@pytest.fixture
def store(tmp_path: Path):
    s = EmbeddedRosterStore(str(tmp_path / "router.sqlite3"))
    pytest_twisted.blockon(s.start())
    yield s
    pytest_twisted.blockon(s.stop())


@pytest_twisted.ensureDeferred
async def test_send_reaches_own_and_online_subscribers_sessions(store):
    router = SubscriptionRouter(store)
    await store.add_friends([("rj@x", "bob@x"), ("rj@x", "offline@x")])
    await store.add_subscriptions([("fan@x", "rj@x")])
    rj, bob1, bob2, fan, stranger = (RecordingSession("rj@x"), RecordingSession("bob@x", "1"),
                                     RecordingSession("bob@x", "2"), RecordingSession("fan@x"),
                                     RecordingSession("stranger@x"))
    for s in (rj, bob1, bob2, fan, stranger):
        router.login(s.user, s)
    event = Event("tune", "rj@x", {"title": "Song"})
    assert await router.send("rj@x", event) == 4
    for s in (rj, bob1, bob2, fan):
        assert s.events == [event]
    assert stranger.events == []
    assert router.online_users() == 4
    assert router.session_count() == 5


@pytest_twisted.ensureDeferred
async def test_logout_stops_delivery_and_is_idempotent(store):
    router = SubscriptionRouter(store)
    await store.add_friends([("a@x", "b@x")])
    b = RecordingSession("b@x")
    router.login("b@x", b)
    router.login("b@x", b)
    assert router.session_count() == 1
    router.logout(b)
    router.logout(b)
    assert not router.is_online("b@x")
    assert await router.send("a@x", Event("tune", "a@x", {})) == 0
    assert b.events == []


@pytest_twisted.ensureDeferred
async def test_a_failing_session_does_not_stop_the_others(store):
    router = SubscriptionRouter(store)

    class Broken(RecordingSession):
        def deliver(self, event):
            raise RuntimeError("peer exploded")

    broken, fine = Broken("u@x", "broken"), RecordingSession("u@x", "fine")
    router.login("u@x", broken)
    router.login("u@x", fine)
    assert router.deliver("u@x", Event("message", "v@x", {"to": "u@x", "body": "hi"})) == 1
    assert len(fine.events) == 1
    assert router.delivery_errors == 1


@pytest_twisted.ensureDeferred
async def test_a_session_may_log_out_during_a_fan_out(store):
    router = SubscriptionRouter(store)

    class LeavesOnEvent(RecordingSession):
        def deliver(self, event):
            super().deliver(event)
            router.logout(self)

    first, second = LeavesOnEvent("u@x", "1"), RecordingSession("u@x", "2")
    router.login("u@x", first)
    router.login("u@x", second)
    assert router.deliver("u@x", Event("admin", "ops@x", {"text": "x"})) == 2
    assert len(second.events) == 1
    assert router.sessions("u@x") == (second,)


def test_login_and_logout_listeners_see_sessions(store):
    router = SubscriptionRouter(store)
    seen = []
    router.login_listeners.append(lambda user, s: seen.append(("in", user, s.label)))
    router.logout_listeners.append(lambda user, s: seen.append(("out", user, s.label)))
    s = RecordingSession("u@x", "r1")
    router.login("u@x", s)
    router.close_all("system-shutdown")
    router.logout(s)
    assert seen == [("in", "u@x", "r1"), ("out", "u@x", "r1")]
    assert s.closed == ["system-shutdown"]


def test_event_json_is_built_once_with_the_common_shape():
    event = Event("tune", "rj@x", {"artist": "A", "title": "T", "item": object()})
    doc = event.to_json()
    assert event.to_json() is doc
    import json

    parsed = json.loads(doc)
    assert parsed["type"] == "tune" and parsed["from"] == "rj@x" and parsed["id"] == event.id
    assert parsed["artist"] == "A" and "item" not in parsed


def test_roster_events_carry_the_item_in_json():
    import json

    from presenced.store import RosterItem

    event = Event("roster", "bob@x", {"to": "rj@x", "jid": "bob@x",
                                      "item": RosterItem("bob@x", "both", groups=("Friends",))})
    parsed = json.loads(event.to_json())
    assert parsed["item"]["subscription"] == "both"
    assert parsed["item"]["groups"] == ["Friends"]

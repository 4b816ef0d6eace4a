"""The subscription router over a real embedded store."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from presenced.events import Event
from presenced.router import SubscriptionRouter
from presenced.store import StoreError
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


@pytest_twisted.ensureDeferred
async def test_a_send_during_a_login_waits_for_that_users_subscriptions(store):
    """A user logged in before a send receives it, although its subscriptions are still
    being read: the send is held until the read is in the index, and sends keep their
    order."""
    router = SubscriptionRouter(store)
    await store.add_subscriptions([("fan@x", "rj@x")])
    fan = RecordingSession("fan@x")
    router.login("fan@x", fan)
    assert router.followers.loading
    first = router.send("rj@x", Event("tune", "rj@x", {"title": "1"}))
    second = router.send("rj@x", Event("tune", "rj@x", {"title": "2"}))
    assert fan.events == []
    assert await first == 1 and await second == 1
    assert [e.payload["title"] for e in fan.events] == ["1", "2"]
    assert not router.followers.loading


@pytest_twisted.ensureDeferred
async def test_a_change_heard_while_a_login_reads_is_not_undone_by_the_read(store):
    router = SubscriptionRouter(store)
    await store.add_subscriptions([("fan@x", "old@x")])
    fan = RecordingSession("fan@x")
    router.login("fan@x", fan)
    # While the read is in flight the graph changes (the store has both already).
    await store.remove_subscriptions([("fan@x", "old@x")])
    router.subscriptions_changed(removed=[("fan@x", "old@x")])
    await store.add_subscriptions([("fan@x", "new@x")])
    router.subscriptions_changed(added=[("fan@x", "new@x")])
    await router.send("fan@x", Event("tune", "fan@x", {}))  # waits for the read
    assert set(router.followers.follows["fan@x"]) == {"fan@x", "new@x"}


@pytest_twisted.ensureDeferred
async def test_a_watched_offline_user_still_sees_its_subjects_events(store):
    """A watcher (a comet replay buffer, an IRC hook) of a user with no session sees what
    reaches that user: the index keeps the user while it is watched."""
    router = SubscriptionRouter(store)
    await store.add_subscriptions([("fan@x", "rj@x")])
    watcher = RecordingSession("fan@x", "watcher")
    router.watch("fan@x", watcher)
    assert await router.send("rj@x", Event("tune", "rj@x", {"title": "1"})) == 0
    assert [e.payload["title"] for e in watcher.events] == ["1"]
    assert not router.is_online("fan@x")
    router.unwatch("fan@x", watcher)
    assert router.followers.follows == {}
    await router.send("rj@x", Event("tune", "rj@x", {"title": "2"}))
    assert len(watcher.events) == 1


@pytest_twisted.ensureDeferred
async def test_a_refresh_catches_up_with_changes_the_index_missed(store):
    """After a lost cluster subscription the index reads its users again: edges added and
    removed meanwhile (announcements it never heard) are right afterwards; sends do not wait
    for such a re-read."""
    router = SubscriptionRouter(store)
    await store.add_subscriptions([("fan@x", "old@x")])
    fan = RecordingSession("fan@x")
    router.login("fan@x", fan)
    await router.send("fan@x", Event("tune", "fan@x", {}))  # the login's read is in
    await store.remove_subscriptions([("fan@x", "old@x")])
    await store.add_subscriptions([("fan@x", "new@x")])
    router.followers.refresh()
    assert not router.followers.loading
    assert set(router.followers.follows["fan@x"]) == {"fan@x", "old@x"}  # until the answer
    for _ in range(500):  # the store thread answers within a few turns
        if set(router.followers.follows["fan@x"]) == {"fan@x", "new@x"}:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    assert set(router.followers.follows["fan@x"]) == {"fan@x", "new@x"}
    assert not router.followers.of("old@x")


@pytest_twisted.ensureDeferred
async def test_a_follower_may_log_out_during_a_send(store):
    """The followers list a send iterates is replaced, not changed, by a logout."""
    router = SubscriptionRouter(store)
    await store.add_subscriptions([("a@x", "rj@x"), ("b@x", "rj@x"), ("c@x", "rj@x")])

    class LeavesOnEvent(RecordingSession):
        def deliver(self, event):
            super().deliver(event)
            router.logout(self)

    sessions = [LeavesOnEvent("a@x"), LeavesOnEvent("b@x"), LeavesOnEvent("c@x")]
    for s in sessions:
        router.login(s.user, s)
    assert await router.send("rj@x", Event("tune", "rj@x", {})) == 3
    assert all(len(s.events) == 1 for s in sessions)
    assert not router.followers.of("rj@x") and router.followers.follows == {}


@pytest_twisted.ensureDeferred
async def test_following_answers_from_the_index_while_online_and_from_the_store_otherwise(
        store, monkeypatch):
    """An online user's subjects come from what its login read (changes heard since
    included), so presence on login does not read them again; an offline user's from the
    store."""
    router = SubscriptionRouter(store)
    await store.add_subscriptions([("fan@x", "rj@x"), ("fan@x", "topic/a")])
    assert sorted(await router.following("fan@x")) == ["rj@x", "topic/a"]  # offline: store
    fan = RecordingSession("fan@x")
    router.login("fan@x", fan)
    during = router.following("fan@x")  # the login's read is in flight: waits for it
    reads: list[str] = []
    monkeypatch.setattr(store, "get_subscriptions", lambda user: reads.append(user))
    assert sorted(await during) == ["rj@x", "topic/a"]
    router.subscriptions_changed(added=[("fan@x", "new@x")],
                                 removed=[("fan@x", "topic/a")])
    assert sorted(await router.following("fan@x")) == ["new@x", "rj@x"]
    assert reads == []


@pytest_twisted.ensureDeferred
async def test_a_failed_read_of_subscriptions_is_made_again_while_the_user_is_online(
        store, monkeypatch):
    """A login's read that fails (a Redis reply past its timeout in a login storm) used to
    leave the user following nobody until a restart: it is made again, later and later,
    until an answer is in, and no longer once the user has gone."""
    router = SubscriptionRouter(store)
    clock = task.Clock()
    router.followers.clock = clock
    await store.add_subscriptions([("fan@x", "rj@x"), ("gone@x", "rj@x")])
    real, reads, answered = store.get_subscriptions, [], []

    def flaky(user):
        reads.append(user)
        if len(reads) <= 2 or user == "gone@x":
            return defer.fail(StoreError("timed out"))
        answered.append(real(user))
        return answered[-1]
    monkeypatch.setattr(store, "get_subscriptions", flaky)
    fan = RecordingSession("fan@x")
    router.login("fan@x", fan)
    assert await router.send("rj@x", Event("tune", "rj@x", {"n": 1})) == 0
    clock.advance(0.9)
    assert reads == ["fan@x"]
    clock.advance(0.1)                             # the second read fails too
    assert reads == ["fan@x"] * 2
    clock.advance(1.9)
    assert reads == ["fan@x"] * 2
    clock.advance(0.1)
    await answered[0]
    assert reads == ["fan@x"] * 3 and not clock.getDelayedCalls()
    event = Event("tune", "rj@x", {"n": 2})
    assert await router.send("rj@x", event) == 1 and fan.events == [event]
    gone = RecordingSession("gone@x")
    router.login("gone@x", gone)
    assert len(clock.getDelayedCalls()) == 1
    router.logout(gone)
    assert not clock.getDelayedCalls()

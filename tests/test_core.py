"""Core operations in memory: a real Core over the embedded store, recording sessions."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import task

from presenced import config, events
from presenced.core import Core
from presenced.metrics import Metrics
from presenced.store.embedded import EmbeddedRosterStore
from presenced.thrift import admin
from presenced.thrift.handler import AdminHandler
from presenced.users import BadUser
from tests.helpers import RecordingSession


@pytest.fixture
def core(tmp_path: Path):
    cfg = config.load(overrides={"server": {"data_dir": str(tmp_path / "data"),
                                            "domains": ["localhost", "example.com"]}})
    store = EmbeddedRosterStore(str(tmp_path / "core.sqlite3"))
    pytest_twisted.blockon(store.start())
    yield Core(cfg, store)
    pytest_twisted.blockon(store.stop())


@pytest_twisted.ensureDeferred
async def test_remove_user_drops_it_from_its_contacts_online_rosters(core):
    await core.accounts.register("alice@localhost", "pw")
    await core.add_friends([("alice@localhost", "bob@localhost"),
                            ("alice@localhost", "carol@localhost")])
    bob, carol, alice = (RecordingSession(u) for u in
                         ("bob@localhost", "carol@localhost", "alice@localhost"))
    for s in (bob, carol, alice):
        core.router.login(s.user, s)
    assert await core.accounts.remove("alice@localhost") is True
    for contact in (bob, carol):
        assert [(e.type, e.sender, e.payload["item"]) for e in contact.events] == [
            (events.ROSTER, "alice@localhost", None)]
    assert alice.closed == ["account removed"]
    assert await core.store.get_roster("bob@localhost") == []


def test_only_served_domains_become_accounts_or_friends(core):
    assert core.local_user("Alice@Example.com") == "alice@example.com"
    with pytest.raises(BadUser, match="not a domain this server serves"):
        core.local_user("x@otherdomain.org")
    with pytest.raises(BadUser):
        core.accounts.register("x@otherdomain.org", "pw")
    handler = AdminHandler(core, task.Clock())
    with pytest.raises(admin.BadJid):
        handler.add_friend(admin.JabberUser("alice", ""), admin.JabberUser("x", "otherdomain.org"))
    with pytest.raises(admin.BadJid):
        handler.register_user(admin.JabberUser("x", "otherdomain.org"), "pw")


def test_counters_nothing_counted_yet_are_exported_as_zero():
    metrics = Metrics()
    metrics.describe("presenced_things_total", "counter", "Things")
    metrics.describe("presenced_level", "gauge", "A level")
    text = metrics.render()
    assert "# TYPE presenced_things_total counter\npresenced_things_total 0\n" in text
    assert "presenced_level" not in text          # a gauge has no value until it is read
    metrics.inc("presenced_things_total", kind="x")
    assert "presenced_things_total 0" not in metrics.render()
    assert 'presenced_things_total{kind="x"} 1' in metrics.render()


def titles(session: RecordingSession) -> list[str]:
    return [e.payload["title"] for e in session.events if e.type == events.TUNE]


@pytest_twisted.ensureDeferred
async def test_graph_changes_while_both_are_online_change_the_next_events_recipients(core):
    """The router's followers index follows every graph change the core makes, at once:
    no login again, no store read per event."""
    alice, bob = RecordingSession("alice@localhost"), RecordingSession("bob@localhost")
    for s in (alice, bob):
        core.router.login(s.user, s)

    async def tune(subject: str, title: str) -> int:
        return await core.router.send(subject, events.Event(events.TUNE, subject,
                                                            {"title": title}))

    assert await tune("alice@localhost", "before") == 1
    await core.add_subscriptions([("bob@localhost", "alice@localhost")])
    assert await tune("alice@localhost", "subscribed") == 2
    await core.remove_subscriptions([("bob@localhost", "alice@localhost")])
    assert await tune("alice@localhost", "unsubscribed") == 1
    await core.add_friends([("alice@localhost", "bob@localhost")])
    assert await tune("bob@localhost", "friends") == 2
    await core.remove_friends([("alice@localhost", "bob@localhost")])
    assert await tune("bob@localhost", "no longer") == 1
    # A topic is a subject like any other (not a user, never online).
    await core.add_subscriptions([("bob@localhost", "artist/radiohead")])
    assert await tune("artist/radiohead", "topic") == 1
    assert titles(alice) == ["before", "subscribed", "unsubscribed", "friends"]
    assert titles(bob) == ["subscribed", "friends", "no longer", "topic"]


@pytest_twisted.ensureDeferred
async def test_a_removed_account_stops_reaching_its_online_followers(core):
    await core.accounts.register("alice@localhost", "pw")
    await core.add_subscriptions([("bob@localhost", "alice@localhost")])
    bob = RecordingSession("bob@localhost")
    core.router.login(bob.user, bob)
    assert await core.router.send("alice@localhost", events.Event(
        events.TUNE, "alice@localhost", {"title": "first"})) == 1
    await core.accounts.remove("alice@localhost")
    assert not core.router.followers.of("alice@localhost")
    assert await core.router.send("alice@localhost", events.Event(
        events.TUNE, "alice@localhost", {"title": "after removal"})) == 0
    assert titles(bob) == ["first"]


@pytest_twisted.ensureDeferred
async def test_the_index_holds_only_online_users_and_sends_read_no_store(core):
    await core.add_friends([("alice@localhost", "bob@localhost")])
    bob = RecordingSession("bob@localhost")
    core.router.login(bob.user, bob)
    await core.router.send("alice@localhost", events.Event(events.TUNE, "alice@localhost",
                                                           {"title": "one"}))
    reads = []
    core.store.get_subscribers = lambda subject: reads.append(subject)
    assert await core.router.send("alice@localhost", events.Event(
        events.TUNE, "alice@localhost", {"title": "two"})) == 1
    assert reads == []
    assert {user: set(subjects) for user, subjects in core.router.followers.follows.items()} \
        == {"bob@localhost": {"bob@localhost", "alice@localhost"}}
    core.router.logout(bob)
    assert core.router.followers.follows == {} and core.router.followers.followers == {}


@pytest_twisted.ensureDeferred
async def test_a_tune_is_announced_at_once_and_acknowledged_once_stored(core):
    from presenced.nowplaying import Tune

    await core.add_friends([("alice@localhost", "bob@localhost")])
    bob = RecordingSession("bob@localhost")
    core.router.login(bob.user, bob)
    await core.router.send("bob@localhost", events.Event(events.ADMIN, "ops", {}))  # loaded
    published = core.publish_tune("alice@localhost", Tune(artist="A", title="Song"))
    assert titles(bob) == ["Song"]  # before the store answered
    assert not published.called
    assert await published == 1
    assert (await core.now_playing("alice@localhost")).title == "Song"

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

"""``presencedctl copy-store``: an embedded store with every kind of data copied to a real
Redis Cluster and back to a fresh embedded store, an interrupted copy resumed without doubling
anything, and the command itself from embedded to Redis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

from presenced.copystore import StoreCopy, read_user
from presenced.scram import make_credentials, verify_password
from presenced.store import RosterItem
from presenced.store.embedded import EmbeddedRosterStore
from presenced.store.redis import RedisRosterStore
from tests.helpers import RedisServer, subprocess_env, write_config


class Interrupted(Exception):
    pass


async def filled(path: Path) -> EmbeddedRosterStore:
    """A store with one of everything: friends, one-sided and named items, directed edges,
    a graph-only user, maps, lists, archives."""
    store = EmbeddedRosterStore(str(path))
    await store.start()
    for i in range(12):
        await store.create_user(f"u{i}@x", make_credentials(f"pw{i}", iterations=4))
    await store.add_friends([(f"u{i}@x", f"u{(i + 1) % 12}@x") for i in range(12)])
    await store.set_roster_item("u0@x", RosterItem("u1@x", "both", name="One",
                                                   groups=("Pals",)))
    await store.set_roster_item("u2@x", RosterItem("u9@x", "to", ask=True))
    await store.add_subscriptions([("fan@web", "u3@x"), ("u4@x", "star@web")])
    await store.add_friends([("a1@web", "z1@web")])  # edges both ways, an item on one side
    await store.remove_roster_item("z1@web", "a1@web")
    await store.open_map("pep").set("u5@x", "tune", "<tune>5</tune>")
    await store.open_map("pending").set("u6@x", "u7@x", "<presence/>")
    for n in range(3):
        await store.open_list("offline").push("u7@x", f"<message id='{n}'/>", 100)
        await store.open_archive("mam").append("u8@x", f"m{n}", 1000.0 + n, "u9@x")
    return store


@pytest_twisted.ensureDeferred
async def test_embedded_to_cluster_and_back_resumes_and_verifies(tmp_path, shared_redis_cluster):
    shared_redis_cluster.flush()
    source = await filled(tmp_path / "source.sqlite3")
    cluster = RedisRosterStore(shared_redis_cluster.seeds, cluster=True)
    back = EmbeddedRosterStore(str(tmp_path / "back.sqlite3"))
    await cluster.start()
    await back.start()
    try:
        lines: list[str] = []

        def interrupt_after_two_batches(line: str) -> None:
            lines.append(line)
            if len(lines) == 2:
                raise Interrupted()

        copier = StoreCopy(source, cluster, str(tmp_path / "progress"),
                           report=interrupt_after_two_batches, batch=3)
        with pytest.raises(Interrupted):
            await copier.copy()
        copier.report = lines.append
        counts = await copier.copy()
        assert lines[2].startswith("resuming after ") and "(6 users copied before)" in lines[2]
        assert counts.users == 16 and counts.accounts == 12
        assert counts.list_entries == 3 and counts.archive_entries == 3
        agreed, differ = await copier.verify()
        assert differ == [] and agreed == counts

        assert await cluster.open_list("offline").peek("u7@x") == [
            f"<message id='{n}'/>" for n in range(3)]
        assert await cluster.get_roster_item("u0@x", "u1@x") == RosterItem(
            "u1@x", "both", name="One", groups=("Pals",))
        assert await cluster.get_roster_item("u1@x", "u0@x") == RosterItem("u0@x", "both")
        assert sorted(await cluster.get_subscribers("u3@x")) == ["fan@web", "u2@x", "u4@x"]
        assert await cluster.get_subscribers("star@web") == ["u4@x"]
        assert verify_password(await cluster.get_credentials("u3@x"), "pw3")
        assert await cluster.count_users() == 12

        again = StoreCopy(cluster, back, str(tmp_path / "progress-back"), report=lines.append)
        assert await again.copy() == counts
        assert (await again.verify())[1] == []
        assert await cluster.get_roster("z1@web") == []
        assert await cluster.get_subscribers("z1@web") == ["a1@web"]
        for user in ("u0@x", "u7@x", "u8@x", "fan@web", "z1@web"):
            assert await read_user(back, user) == await read_user(source, user)
        await back.open_map("pep").set("u5@x", "tune", "<tune>changed</tune>")
        assert (await again.verify())[1] == ["u5@x"]
    finally:
        for store in (source, cluster, back):
            await store.stop()


def test_copy_store_command_embedded_to_redis(tmp_path: Path):
    source_dir = tmp_path / "source"
    make = subprocess.run(
        [sys.executable, "-m", "presenced.ctl", "--data-dir", str(source_dir), "add-friend",
         "alice", "bob"], capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert make.returncode == 0, make.stderr
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        source = write_config(tmp_path / "source.toml",
                              {"server": {"data_dir": str(source_dir)}})
        target = write_config(tmp_path / "target.toml", {
            "server": {"data_dir": str(tmp_path / "target")},
            "store": {"backend": "redis", "redis": [redis.url]}})
        copy = subprocess.run(
            [sys.executable, "-m", "presenced.ctl", "copy-store", "--from", str(source),
             "--to", str(target)], capture_output=True, text=True, env=subprocess_env(),
            timeout=120)
        assert copy.returncode == 0, copy.stderr
        assert "verified: 2 users" in copy.stdout
        roster = subprocess.run(
            [sys.executable, "-m", "presenced.ctl", "--config", str(target), "roster",
             "alice"], capture_output=True, text=True, env=subprocess_env(), timeout=60)
        assert "bob@localhost" in roster.stdout and "both" in roster.stdout
        missing = subprocess.run(
            [sys.executable, "-m", "presenced.ctl", "copy-store", "--from",
             str(tmp_path / "nope.toml"), "--to", str(target)], capture_output=True,
            text=True, env=subprocess_env(), timeout=60)
        assert missing.returncode == 2 and "nope.toml" in missing.stderr
    finally:
        redis.stop()

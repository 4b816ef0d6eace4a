"""The Redis store on a real Redis Cluster (3 masters, 3 replicas) while it changes under
load: a master SIGKILLed during 2 000 add_friend calls (with ``redis_wait_replicas = 1``
every acknowledged friendship is there after its replica took over, and the same store keeps
serving), and slots migrated with ``redis-cli --cluster reshard`` with no failed request.
A write no replica confirms fails and says so. The store suite itself runs on the cluster
through the ``store`` fixture (conftest)."""

from __future__ import annotations

import re
import subprocess

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from presenced.store import RosterItem, StoreError
from presenced.store.redis import RedisRosterStore
from tests.helpers import wait_until


def replica_port(master) -> int:
    return int(re.search(r"slave0:ip=[^,]+,port=(\d+)", master.cli("INFO", "replication"))[1])


def role(server) -> str:
    return re.search(r"role:(\w+)", server.cli("INFO", "replication"))[1]


async def started(cluster, **options) -> RedisRosterStore:
    store = RedisRosterStore(cluster.seeds, cluster=True, **options)
    await store.start()
    return store


@pytest_twisted.ensureDeferred
async def test_acknowledged_friendships_survive_a_master_sigkill(redis_cluster):
    store = await started(redis_cluster, timeout=10.0, wait_replicas=1)
    victim = redis_cluster.masters()[0]
    heir = next(s for s in redis_cluster.servers if s.port == replica_port(victim))
    acked: list[int] = []
    failed: list[int] = []
    after_rejoin: list[bool] = []
    rejoined = False
    gate = defer.DeferredSemaphore(16)

    async def befriend(i: int) -> None:
        started_after = rejoined
        try:
            await store.add_friends([(f"a{i}@x", f"b{i}@x")])
            acked.append(i)
            ok = True
        except StoreError:
            failed.append(i)
            ok = False
        if started_after:
            after_rejoin.append(ok)

    calls = defer.DeferredList([gate.run(lambda i=i: defer.ensureDeferred(befriend(i)))
                                for i in range(2000)])
    while len(acked) < 300:
        await threads.deferToThread(lambda: None)
    victim.kill()
    killed_at = len(acked)
    await threads.deferToThread(wait_until, lambda: role(heir) == "master",
                                "the replica to take over")
    victim.start()  # it comes back as the replica of its heir, so WAIT 1 can succeed again
    await threads.deferToThread(
        wait_until,
        lambda: "master_link_status:up" in victim.cli("INFO", "replication"),
        "the old master to follow its heir")
    rejoined = True
    await calls
    await store.stop()

    assert len(acked) + len(failed) == 2000
    assert killed_at < 2000 - 300, "the kill came after the load"
    assert after_rejoin and all(after_rejoin), \
        "requests started after the shard has a replica again fail"
    check = await started(redis_cluster)
    try:
        for i in acked:
            assert await check.get_subscribers(f"a{i}@x") == [f"b{i}@x"], i
            assert await check.get_roster_item(f"b{i}@x", f"a{i}@x") == RosterItem(
                f"a{i}@x", "both"), i
    finally:
        await check.stop()


@pytest_twisted.ensureDeferred
async def test_slots_migrate_under_load_without_a_failed_request(redis_cluster):
    store = await started(redis_cluster, timeout=10.0)
    users = [f"r{i}@x" for i in range(400)]
    pep = store.open_map("pep")
    offline = store.open_list("offline")
    source, target = redis_cluster.masters()[:2]
    reshard = threads.deferToThread(
        subprocess.run, ["redis-cli", "--cluster", "reshard", f"127.0.0.1:{source.port}",
                         "--cluster-from", source.cli("CLUSTER", "MYID").strip(),
                         "--cluster-to", target.cli("CLUSTER", "MYID").strip(),
                         "--cluster-slots", "2000", "--cluster-yes"],
        capture_output=True, text=True, timeout=300)
    rounds = 0
    while not reshard.called or rounds < 2:
        for k in range(0, len(users), 20):
            batch = users[k:k + 20]
            await defer.gatherResults([defer.gatherResults([
                store.add_friends([(user, users[(j + rounds + 1) % len(users)])]),
                store.user_exists(user),
                pep.set(user, "tune", f"<tune>{rounds}</tune>"),
                offline.push(user, f"<message id='{rounds}'/>", 1000),
                store.get_roster(user),
            ], consumeErrors=True) for j, user in enumerate(batch, start=k)],
                consumeErrors=True)
        rounds += 1
    done = await reshard
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Moving slot" in done.stdout
    for i, user in enumerate(users):
        friends = set(await store.get_subscribers(user))
        assert {users[(i + r + 1) % len(users)] for r in range(rounds)} <= friends, user
        assert await pep.get(user, "tune") == f"<tune>{rounds - 1}</tune>"
        assert len(await offline.peek(user)) == rounds
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_requests_follow_ask_and_moved_while_one_slot_moves(redis_cluster):
    """One slot moved by hand, a user's keys at a time: a user already moved is answered
    through ASK, one not yet moved by the source, a new one waits (TRYAGAIN) until the slot
    has moved, then everything follows MOVED."""
    from presenced.scram import make_credentials
    from presenced.store.rediscluster import key_slot
    from presenced.store.redis import user_key

    store = await started(redis_cluster, timeout=10.0)
    slot = key_slot(user_key("s0@x", "acct"))
    moved, stays, new = [u for u in (f"s{i}@x" for i in range(200000))
                         if key_slot(user_key(u, "acct")) == slot][:3]
    creds = make_credentials("pw", iterations=4)
    for user in (moved, stays):
        assert await store.create_user(user, creds)
        await store.open_map("pep").set(user, "tune", f"<tune>{user}</tune>")
    await store.add_friends([(moved, stays)])
    owner = next(s for s in redis_cluster.masters()
                 if int(s.cli("CLUSTER", "COUNTKEYSINSLOT", str(slot))) > 0)
    target = next(s for s in redis_cluster.masters() if s is not owner)
    owner_id, target_id = (s.cli("CLUSTER", "MYID").strip() for s in (owner, target))
    target.cli("CLUSTER", "SETSLOT", str(slot), "IMPORTING", owner_id)
    owner.cli("CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
    owner.cli("MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS",
              *owner.cli("KEYS", f"u:{{{moved}}}:*").split())

    # ASK, then ASKING on the target
    assert await store.open_map("pep").get(moved, "tune") == f"<tune>{moved}</tune>"
    assert await store.user_exists(moved)
    assert await store.get_subscribers(moved) == [stays]
    assert await store.get_subscribers(stays) == [moved]  # still on the source
    # A script over keys on both sides (a new account, the slot's index still on the
    # source): Redis answers TRYAGAIN until the slot has moved.
    waiting = [store.get_roster(moved), store.create_user(new, creds)]
    await threads.deferToThread(lambda: None)
    assert not any(d.called for d in waiting)

    def finish() -> None:
        rest = owner.cli("CLUSTER", "GETKEYSINSLOT", str(slot), "1000").split()
        owner.cli("MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", *rest)
        for server in redis_cluster.masters():
            server.cli("CLUSTER", "SETSLOT", str(slot), "NODE", target_id)

    await threads.deferToThread(finish)
    assert await waiting[0] == [RosterItem(stays, "both")]
    assert await waiting[1] is True
    assert await store.user_exists(new)  # MOVED: the map now names the target
    assert sorted(await store.search_users("s", 10)) == sorted([moved, stays, new])
    assert int(target.cli("CLUSTER", "COUNTKEYSINSLOT", str(slot))) > 0
    assert int(owner.cli("CLUSTER", "COUNTKEYSINSLOT", str(slot))) == 0
    await store.stop()


@pytest_twisted.ensureDeferred
async def test_a_write_no_replica_confirms_fails_and_says_so(redis_server):
    """``wait_replicas`` on a Redis without replicas: writes run but are never acknowledged
    (the error says the write may be there), reads are answered as usual."""
    store = RedisRosterStore([redis_server.url], timeout=1.0, wait_replicas=1)
    await store.start()
    try:
        with pytest.raises(StoreError, match="0 of 1 replicas confirmed"):
            await store.add_friends([("a@x", "b@x")])
        with pytest.raises(StoreError, match="0 of 1 replicas confirmed"):
            await store.open_map("pep").set("a@x", "tune", "<tune/>")
        assert await store.get_subscribers("a@x") == ["b@x"]  # it ran on the master
        assert await store.get_roster_version("a@x") == 1
    finally:
        await store.stop()

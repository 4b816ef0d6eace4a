"""The Redis store on a Sentinel-managed master (one master, one replica, three sentinels):
the master is SIGKILLed under load, the sentinels promote the replica and the same store
follows it; with ``redis_wait_replicas = 1`` no acknowledged write is lost."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, threads

from presenced.store import StoreError
from presenced.store.redis import RedisRosterStore
from presenced.store.redissentinel import sentinel_store
from tests.helpers import wait_until


@pytest_twisted.ensureDeferred
async def test_the_store_follows_a_sentinel_fail_over_under_load(redis_sentinels):
    store = sentinel_store(redis_sentinels.urls, redis_sentinels.name, timeout=10.0,
                           wait_replicas=1)
    await store.start()
    old_master = redis_sentinels.master
    acked: list[int] = []
    outcomes_after_rejoin: list[bool] = []
    rejoined = False
    gate = defer.DeferredSemaphore(8)

    async def write(i: int) -> None:
        started_after = rejoined
        try:
            await store.add_friends([(f"a{i}@x", f"b{i}@x")])
            await store.open_map("pep").set(f"a{i}@x", "tune", f"<tune>{i}</tune>")
            acked.append(i)
            ok = True
        except StoreError:
            ok = False
        if started_after:
            outcomes_after_rejoin.append(ok)

    calls = defer.DeferredList([gate.run(lambda i=i: defer.ensureDeferred(write(i)))
                                for i in range(3000)])
    while len(acked) < 200:
        await threads.deferToThread(lambda: None)
    old_master.kill()
    killed_at = len(acked)
    await threads.deferToThread(
        wait_until, lambda: redis_sentinels.master_port() == redis_sentinels.replica.port,
        "the sentinels to promote the replica")
    old_master.start()  # the sentinels turn it into the new master's replica
    await threads.deferToThread(
        wait_until, lambda: "master_link_status:up" in old_master.cli("INFO", "replication"),
        "the old master to follow the new one")
    rejoined = True
    await calls
    await store.stop()

    assert killed_at < 3000 - 500, "the kill came after the load"
    assert outcomes_after_rejoin and all(outcomes_after_rejoin), \
        "writes started after the shard has a replica again fail"
    check = RedisRosterStore([redis_sentinels.replica.url])  # the promoted one, directly
    await check.start()
    try:
        for i in acked:
            assert await check.get_subscribers(f"a{i}@x") == [f"b{i}@x"], i
            assert await check.open_map("pep").get(f"a{i}@x", "tune") == f"<tune>{i}</tune>"
    finally:
        await check.stop()

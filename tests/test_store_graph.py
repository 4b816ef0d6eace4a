"""Friendships and the subscription graph when one side changes, on every backend.

The Redis store keeps a friendship as one set member; these cases check that changing one
direction of it (a roster item, one subscription) behaves exactly as in the embedded store,
where rosters and graph edges are separate rows.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from presenced.store import RosterItem, StoreError
from presenced.store.redis import RedisRosterStore


@pytest_twisted.ensureDeferred
async def test_removing_one_subscription_of_a_friendship_keeps_the_other(store):
    await store.add_friends([("a@x", "b@x")])
    versions = [await store.get_roster_version(u) for u in ("a@x", "b@x")]
    assert min(versions) > 0
    await store.remove_subscriptions([("a@x", "b@x")])  # a no longer receives b's events
    after = [await store.get_roster_version(u) for u in ("a@x", "b@x")]
    assert all(a >= b for a, b in zip(after, versions))  # the rosters did not change
    assert await store.get_subscribers("b@x") == []
    assert await store.get_subscribers("a@x") == ["b@x"]
    assert await store.get_subscriptions("b@x") == ["a@x"]
    assert await store.get_subscriptions("a@x") == []
    assert (await store.get_roster_item("a@x", "b@x")).subscription == "both"
    assert (await store.get_roster_item("b@x", "a@x")).subscription == "both"
    await store.remove_friends([("a@x", "b@x")])
    assert await store.get_subscribers("a@x") == []
    assert await store.get_roster("a@x") == await store.get_roster("b@x") == []
    for user, before in zip(("a@x", "b@x"), versions):
        assert await store.get_roster_version(user) > before


@pytest_twisted.ensureDeferred
async def test_changing_a_friends_roster_item_keeps_the_graph(store):
    await store.add_friends([("a@x", "b@x"), ("a@x", "c@x")])
    v1 = await store.get_roster_version("a@x")
    v2 = await store.set_roster_item("a@x", RosterItem("b@x", "both", name="Bob"))
    assert v2 > v1
    assert await store.get_roster_item("a@x", "b@x") == RosterItem("b@x", "both", name="Bob")
    assert [i.jid for i in await store.get_roster("a@x")] == ["b@x", "c@x"]
    assert sorted(await store.get_subscribers("a@x")) == ["b@x", "c@x"]
    assert sorted(await store.get_subscriptions("a@x")) == ["b@x", "c@x"]
    v3 = await store.remove_roster_item("a@x", "c@x")
    assert v3 > v2
    assert await store.get_roster_item("a@x", "c@x") is None
    assert sorted(await store.get_subscribers("a@x")) == ["b@x", "c@x"]
    await store.add_friends([("a@x", "b@x")])  # back to a plain friendship
    assert await store.get_roster_item("a@x", "b@x") == RosterItem("b@x", "both")
    await store.remove_friends([("a@x", "b@x"), ("a@x", "c@x")])
    assert await store.get_subscribers("a@x") == []
    assert await store.get_subscriptions("a@x") == []
    assert await store.get_roster("a@x") == []
    assert await store.get_roster_version("a@x") > v3


@pytest_twisted.ensureDeferred
async def test_explicit_subscriptions_and_friendship_together(store):
    await store.add_subscriptions([("fan@x", "star@x")])
    await store.add_friends([("fan@x", "star@x")])
    assert await store.get_subscribers("star@x") == ["fan@x"]
    await store.remove_subscriptions([("fan@x", "star@x")])
    assert await store.get_subscribers("star@x") == []
    assert await store.get_subscribers("fan@x") == ["star@x"]


@pytest_twisted.ensureDeferred
async def test_redis_refuses_names_that_would_break_its_bulk_format(redis_server):
    store = RedisRosterStore([redis_server.url])
    await store.start()
    try:
        for bad in ("bad\tname@x", "bad\nname@x", ""):
            with pytest.raises(StoreError, match="tabs or newlines"):
                await store.add_friends([("ok@x", "fine@x"), (bad, "ok@x")])
            with pytest.raises(StoreError, match="tabs or newlines"):
                await store.begin_friends_load().add([("ok@x", "fine@x"), (bad, "ok@x")])
        with pytest.raises(StoreError, match="tabs or newlines"):
            await store.begin_friends_load().add([("", "")])
        assert await store.get_roster("ok@x") == []
        assert await store.add_friends([("ok@x", "fine@x")]) == 1
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_redis_requests_after_stop_fail_at_once(redis_server):
    store = RedisRosterStore([redis_server.url])
    with pytest.raises(StoreError, match="not started"):
        await store.get_roster("a@x")
    await store.start()
    assert await store.add_friends([("a@x", "b@x")]) == 1
    await store.stop()
    with pytest.raises(StoreError, match="not started"):
        await store.get_subscribers("a@x")


@pytest_twisted.ensureDeferred
async def test_redis_unreachable_at_start_is_a_clear_error():
    from tests.helpers import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisRosterStore([url], timeout=0.5)
    with pytest.raises(StoreError, match=f"cannot connect to Redis \\({url}\\) within 0.5s"):
        await store.start()


@pytest_twisted.ensureDeferred
async def test_bulk_write_larger_than_one_script(store):
    pairs = [(f"big{i}@x", f"big{i + 1}@x") for i in range(12_000)]
    assert await store.add_friends(pairs) == len(pairs)
    for i in (1, 5_000, 11_999):
        assert sorted(await store.get_subscribers(f"big{i}@x")) == sorted(
            [f"big{i - 1}@x", f"big{i + 1}@x"])
    assert await store.get_roster_version("big12000@x") == 1


@pytest_twisted.ensureDeferred
async def test_load_friends_leaves_the_input_graph_in_both_directions(store):
    """The bulk loader (what ``presencedctl load-friends`` and bench/store.py run): every
    edge of a preferential-attachment graph, repeated and reversed edges included, ends up as
    subscribers and ``both`` roster items on each side, and nothing else does."""
    import io
    import random

    from presenced import bulk

    rng = random.Random(7)
    lines, friends = [], {}
    for new in range(1, 400):
        for old in {rng.randrange(new) for _ in range(3)}:
            a, b = (f"u{new}", f"u{old}") if rng.random() < 0.5 else (f"u{old}", f"u{new}")
            lines.append(f"{a} {b}\n")
            friends.setdefault(f"{a}@x", set()).add(f"{b}@x")
            friends.setdefault(f"{b}@x", set()).add(f"{a}@x")
    lines += lines[:50]  # a repeated load of the same edges changes nothing
    bad: list[int] = []
    pairs = bulk.parse_edges(io.StringIO("".join(lines)), "x", lambda n, *_: bad.append(n))
    assert await bulk.load_friends(store, pairs, bulk.Progress("f", None)) == len(lines)
    assert bad == []
    for user, expected in friends.items():
        assert set(await store.get_subscribers(user)) == expected, user
        roster = await store.get_roster(user)
        assert {(i.jid, i.subscription) for i in roster} == {(j, "both") for j in expected}


@pytest_twisted.ensureDeferred
async def test_a_staged_load_is_written_at_finish_in_owner_ranges(tmp_path, monkeypatch):
    """The embedded bulk load stages its batches and merges them range by range: nothing is
    visible before ``finish``, every pair is afterwards (over many ranges as over one),
    friendships and roster items already stored are kept, and each roster version moves on."""
    from presenced.store import embedded

    monkeypatch.setattr(embedded, "PARTITION_BITS", 2)  # 4 owners per merge transaction
    store = embedded.EmbeddedRosterStore(str(tmp_path / "store.sqlite3"))
    await store.start()
    try:
        await store.add_friends([("old@x", "u1@x")])
        await store.set_roster_item("u2@x", RosterItem("fan@x", "to", name="Fan"))
        await store.add_subscriptions([("fan@x", "u2@x")])
        before = await store.get_roster_version("u2@x")
        pairs = [(f"u{i}@x", f"u{j}@x") for i in range(1, 40) for j in range(i + 1, 40, 7)]
        load = store.begin_friends_load()
        assert await load.add(pairs[:100]) == 100
        assert await load.add(pairs[100:] + pairs[:5]) == len(pairs) - 95
        assert sorted(await store.get_subscribers("u2@x")) == ["fan@x"]  # not yet merged
        reported: list[int] = []
        await load.finish(reported.append)
        assert len(reported) > 3 and sum(reported) == len(pairs) + 5
        for i in range(1, 40):
            user = f"u{i}@x"
            expected = {f"u{j}@x" for a, b in pairs for j in range(40)
                        if (a, b) in ((user, f"u{j}@x"), (f"u{j}@x", user))}
            expected |= {"old@x"} if i == 1 else {"fan@x"} if i == 2 else set()
            assert set(await store.get_subscribers(user)) == expected, user
        assert await store.get_roster_item("u2@x", "fan@x") == RosterItem("fan@x", "to",
                                                                            name="Fan")
        assert await store.get_roster_version("u2@x") > before
        assert await store.get_subscribers("old@x") == ["u1@x"]
    finally:
        await store.stop()


def _graph_pairs(users: int) -> list[tuple[str, str]]:
    return [(f"u{i}@x", f"u{j}@x") for i in range(1, users) for j in range(0, i, 3)]


def _friends_of(pairs: list[tuple[str, str]]) -> dict[str, set[str]]:
    friends: dict[str, set[str]] = {}
    for a, b in pairs:
        friends.setdefault(a, set()).add(b)
        friends.setdefault(b, set()).add(a)
    return friends


async def _command_calls(store: RedisRosterStore) -> dict[str, int]:
    node = store.layout.nodes[0]
    info = await node.execute("INFO", "commandstats")
    return {line.split(":")[0][len("cmdstat_"):]: int(line.split("calls=")[1].split(",")[0])
            for line in info.splitlines() if line.startswith("cmdstat_")}


@pytest_twisted.ensureDeferred
async def test_redis_bulk_load_writes_each_user_once_with_all_its_friends(redis_server,
                                                                           monkeypatch):
    """However many batches name a user, the load sends one ``SADD`` per user at ``finish``
    (at a million users a batch names a user with a handful of friends: a command each was
    most of Redis's work), and nothing is visible before ``finish``."""
    from presenced import bulk
    from presenced.store import redisload

    monkeypatch.setattr(redisload.RedisFriendsLoad, "batch", 97)
    store = RedisRosterStore([redis_server.url])
    await store.start()
    try:
        await store.add_friends([("u1@x", "old@x")])
        pairs = _graph_pairs(60)
        before = await _command_calls(store)
        load = store.begin_friends_load()
        assert load.batch == 97
        written: list[int] = []

        async def loaded():
            for batch in bulk.batches(pairs, load.batch):
                assert await load.add(batch) == len(batch)
            assert await store.get_subscribers("u2@x") == []
            await load.finish(written.append)
        await loaded()
        assert sum(written) == len(pairs)
        calls = await _command_calls(store)
        friends = _friends_of(pairs)
        assert calls["sadd"] - before.get("sadd", 0) == len(friends)
        assert calls["evalsha"] == before["evalsha"]  # no graph script
        friends["u1@x"].add("old@x")
        for user, expected in friends.items():
            assert set(await store.get_subscribers(user)) == expected, user
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_redis_bulk_load_falls_back_to_the_script_when_a_write_fails(redis_server,
                                                                           monkeypatch):
    """A part whose ``SADD`` commands fail (a connection lost mid-way) is sent again through
    the graph script, which waits for the node and retries: the load is still complete."""
    import txredisapi
    from twisted.internet import defer

    store = RedisRosterStore([redis_server.url])
    failed: list[int] = []

    def lost(node, payload, commands):
        failed.append(commands)
        return defer.fail(txredisapi.ConnectionError("Lost connection"))
    monkeypatch.setattr(store, "write_encoded", lost)
    await store.start()
    try:
        pairs = _graph_pairs(40)
        load = store.begin_friends_load()
        await load.add(pairs)
        await load.finish()
        assert sum(failed) == len(_friends_of(pairs))
        for user, expected in _friends_of(pairs).items():
            assert set(await store.get_subscribers(user)) == expected, user
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_redis_bulk_load_reports_a_refused_write(redis_server):
    """A user whose friends key holds another type makes its ``SADD`` fail (WRONGTYPE) in
    the middle of a node's commands: the load fails with the reason, the others are
    written."""
    store = RedisRosterStore([redis_server.url])
    await store.start()
    try:
        await store.layout.nodes[0].execute("SET", "u:{u5@x}:friends", "not a set")
        pairs = _graph_pairs(30)
        load = store.begin_friends_load()
        await load.add(pairs)
        with pytest.raises(StoreError, match="WRONGTYPE"):
            await load.finish()
        for user, expected in _friends_of(pairs).items():
            if user != "u5@x":
                assert set(await store.get_subscribers(user)) == expected, user
    finally:
        await store.stop()

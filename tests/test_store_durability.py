"""What the roster store promises when processes die: acknowledged writes are never lost.

- embedded: a writer SIGKILLed mid-stream (a child process, and the real server) loses nothing
  it acknowledged; the file reopens cleanly.
- Redis (appendfsync always, as conftest runs it): a restart or SIGKILL of redis-server under a
  running store and under a running server; requests during the outage fail with StoreError or
  succeed after the retry, requests after it succeed, acknowledged data is all there.
- Redis sharded over two servers: users are spread over both; a write spanning both nodes that
  fails on one is reported as such and repaired by running it again.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
import thriftpy2
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TApplicationException
from twisted.internet import defer, reactor, task

from presenced.scram import make_credentials
from presenced.store import RosterItem, StoreError
from presenced.store.embedded import EmbeddedRosterStore
from presenced.store.redis import RedisRosterStore
from tests.helpers import REPO, RedisServer, subprocess_env

ONLY_THRIFT = {"xmpp": {"enabled": False}, "comet": {"enabled": False},
               "webadmin": {"enabled": False}, "thrift": {}}
admin = thriftpy2.load(str(REPO / "thrift" / "presenced.thrift"),
                       module_name="test_store_durability_thrift")
J = admin.JabberUser

# A writer that acknowledges each write on stdout once the store's Deferred fired, keeping
# several in flight (so group commit batches them), and never stops by itself.
WRITER = r"""
import sys
from twisted.internet import defer, task
from presenced.scram import make_credentials
from presenced.store.embedded import EmbeddedRosterStore

@defer.inlineCallbacks
def write(store, i):
    yield defer.gatherResults([
        store.add_friends([(f"a{i}@x", f"b{i}@x")]),
        store.create_user(f"a{i}@x", make_credentials("pw", iterations=4)),
        store.open_map("pep").set(f"a{i}@x", "tune", f"<tune>{i}</tune>"),
    ])
    sys.stdout.write(f"{i}\n")
    sys.stdout.flush()

@defer.inlineCallbacks
def main(reactor):
    store = EmbeddedRosterStore(sys.argv[1])
    yield store.start()
    i = 0
    while True:
        yield defer.gatherResults([write(store, i + k) for k in range(8)])
        i += 8

task.react(main)
"""


def thrift_client(server):
    return make_client(admin.PresencedAdmin, "127.0.0.1", server.ports["thrift"],
                       timeout=20000)


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


# --- embedded -----------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_embedded_writes_acknowledged_before_sigkill_are_on_disk(tmp_path: Path):
    path = tmp_path / "store.sqlite3"
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=subprocess_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked: list[int] = []
    try:
        while len(acked) < 400:
            line = child.stdout.readline()
            assert line, f"the writer died: {child.stderr.read()}"
            acked.append(int(line))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL

    store = EmbeddedRosterStore(str(path))
    await store.start()
    try:
        for i in acked:
            assert await store.get_roster_item(f"b{i}@x", f"a{i}@x") == RosterItem(
                f"a{i}@x", "both")
            assert await store.get_subscribers(f"a{i}@x") == [f"b{i}@x"]
            assert await store.user_exists(f"a{i}@x")
            assert await store.open_map("pep").get(f"a{i}@x", "tune") == f"<tune>{i}</tune>"
        assert await store.count_users() >= len(acked)
    finally:
        await store.stop()


def test_embedded_server_sigkill_keeps_what_it_acknowledged(presenced_factory):
    server = presenced_factory(ONLY_THRIFT)
    c = thrift_client(server)
    for i in range(40):
        assert c.register_user(J(f"k{i}", ""), "pw") is True
        c.add_friend(J(f"k{i}", ""), J(f"k{i + 1}", ""))
    c.close()
    server.ctl("adduser", "offline-made", "--password", "pw")  # straight into the store
    server.kill()
    server.start()
    c = thrift_client(server)
    for i in range(40):
        assert c.user_exists(J(f"k{i}", "")) is True
        expected = {f"k{i + 1}@localhost"} | ({f"k{i - 1}@localhost"} if i else set())
        assert set(c.get_subscribers(J(f"k{i}", ""))) == expected
    assert c.user_exists(J("offline-made", "")) is True
    c.close()
    roster = server.ctl("roster", "k3").stdout
    assert "k2@localhost\tboth" in roster and "k4@localhost\tboth" in roster


# --- Redis restarts -----------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_redis_restart_under_a_running_store(redis_server: RedisServer):
    store = RedisRosterStore([redis_server.url], timeout=3.0, retries=3)
    await store.start()
    try:
        pairs = [(f"r{i}@x", f"r{i + 1}@x") for i in range(200)]
        assert await store.add_friends(pairs) == 200
        assert await store.create_user("r0@x", make_credentials("pw", iterations=4))
        version = await store.get_roster_version("r1@x")

        redis_server.stop()
        started = time.monotonic()
        with pytest.raises(StoreError, match="did not answer"):
            await store.get_subscribers("r0@x")
        assert time.monotonic() - started < 5

        late = store.add_friends([("late@x", "r0@x")])  # waits for Redis to come back
        redis_server.start()
        assert await late == 1

        assert await store.user_exists("r0@x")
        assert sorted(await store.get_subscribers("r0@x")) == ["late@x", "r1@x"]
        for i in range(1, 200):
            assert sorted(await store.get_subscribers(f"r{i}@x")) == sorted(
                [f"r{i - 1}@x", f"r{i + 1}@x"])
        assert await store.get_roster_version("r1@x") == version
        assert await store.set_roster_item("r1@x", RosterItem("new@x")) > version
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_a_scripted_write_is_not_overtaken_by_a_read_after_redis_forgot_its_scripts(
        redis_server: RedisServer):
    """A Redis that has just started (or restarted) knows no scripts. A write made by a script
    and a read of the same key in one turn must read the write: the EVALSHA's NOSCRIPT used to
    send the EVAL after the read had gone (the read found nothing)."""
    store = RedisRosterStore([redis_server.url], timeout=3.0, retries=3)
    await store.start()
    try:
        private = store.open_map("private")
        written = private.set("s@x", "doc", "first")
        assert await private.get("s@x", "doc") == "first"
        await written

        redis_server.stop()
        redis_server.start()
        while True:  # the store reconnects on its own
            try:
                await private.get("s@x", "doc")
                break
            except StoreError:
                await sleep(0.05)
        written = private.set("s@x", "doc", "second")
        assert await private.get("s@x", "doc") == "second"
        await written
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_redis_sigkill_with_requests_in_flight(redis_server: RedisServer):
    store = RedisRosterStore([redis_server.url], timeout=5.0, retries=3)
    await store.start()
    try:
        writes = [store.open_map("private").set(f"p{i}@x", "doc", str(i)) for i in range(300)]
        pushes = [store.open_list("offline").push("box@x", f"<message id='{i}'/>", 1000) for i in range(300)]
        await sleep(0.01)
        redis_server.process.send_signal(signal.SIGKILL)
        redis_server.process.wait()
        redis_server.process = None
        redis_server.start()
        results = await defer.DeferredList(writes + pushes, consumeErrors=True)
        for ok, value in results:
            if not ok:
                assert value.check(StoreError), value
        stored = await store.open_list("offline").peek("box@x")
        for i, (ok, _) in enumerate(results[:300]):
            if ok:
                assert await store.open_map("private").get(f"p{i}@x", "doc") == str(i)
        for i, (ok, pushed) in enumerate(results[300:]):
            if ok and pushed:
                assert f"<message id='{i}'/>" in stored
        assert sum(ok for ok, _ in results[:300]) == 300  # idempotent writes were retried
    finally:
        await store.stop()


def test_server_on_redis_survives_a_redis_restart(presenced_factory, redis_server: RedisServer):
    server = presenced_factory({**ONLY_THRIFT, "store": {
        "backend": "redis", "redis": [redis_server.url], "redis_timeout": 2.0}})
    c = thrift_client(server)
    for i in range(20):
        c.add_friend(J(f"s{i}", ""), J(f"s{i + 1}", ""))
    c.close()

    redis_server.stop()
    c = thrift_client(server)
    started = time.monotonic()
    with pytest.raises(TApplicationException):
        c.add_friend(J("during", ""), J("outage", ""))
    assert time.monotonic() - started < 10
    c.close()
    assert server.process.poll() is None

    redis_server.start()
    deadline = time.monotonic() + 10
    while True:  # the first request after Redis is back may race the reconnection
        c = thrift_client(server)
        try:
            c.add_friend(J("after", ""), J("restart", ""))
            break
        except TApplicationException:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        finally:
            c.close()
    c = thrift_client(server)
    for i in range(1, 20):
        assert sorted(c.get_subscribers(J(f"s{i}", ""))) == sorted(
            [f"s{i - 1}@localhost", f"s{i + 1}@localhost"])
    assert c.get_subscribers(J("after", "")) == ["restart@localhost"]
    c.close()


# --- sharding -----------------------------------------------------------------------------

@pytest.fixture
def two_redis(tmp_path: Path):
    servers = [RedisServer(tmp_path / f"redis{i}") for i in range(2)]
    for s in servers:
        s.start()
    yield servers
    for s in servers:
        s.stop()


@pytest_twisted.ensureDeferred
async def test_sharded_users_live_whole_on_one_node_and_spread_over_both(two_redis):
    store = RedisRosterStore([s.url for s in two_redis], timeout=3.0)
    await store.start()
    try:
        users = [f"user{i}@x" for i in range(200)]
        await store.add_friends(list(zip(users, users[1:])))
        for user in users[:50]:
            await store.create_user(user, make_credentials("pw", iterations=4))
        placed = {user: store.nodes.index(store.node_of(user)) for user in users}
        assert 40 < sum(placed.values()) < 160  # both nodes got a fair share
        for index, node in enumerate(store.nodes):
            keys = await node.execute("KEYS", "u:*")
            owners = {key.split("{", 1)[1].split("}", 1)[0] for key in keys}
            assert owners == {u for u, i in placed.items() if i == index}
        assert await store.count_users() == 50
        assert await store.search_users("user1", 100) == sorted(
            u for u in users[:50] if "user1" in u)
        assert sorted(await store.get_subscribers("user7@x")) == ["user6@x", "user8@x"]
        assert await store.remove_user("user7@x") is True
        assert await store.get_subscribers("user6@x") == ["user5@x"]
        assert await store.get_roster_item("user8@x", "user7@x") is None
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_cross_node_write_failure_is_reported_and_repaired(two_redis):
    store = RedisRosterStore([s.url for s in two_redis], timeout=1.0, retries=1)
    await store.start()
    try:
        users = [f"c{i}@x" for i in range(50)]
        a = next(u for u in users if store.node_of(u) is store.nodes[0])
        b = next(u for u in users if store.node_of(u) is store.nodes[1])
        two_redis[1].stop()
        with pytest.raises(StoreError) as failed:
            await store.add_friends([(a, b)])
        message = str(failed.value)
        assert two_redis[1].url in message and f"written on {two_redis[0].url}" in message
        assert "repeat the request" in message
        assert (await store.get_roster_item(a, b)).subscription == "both"  # half-written

        two_redis[1].start()
        await sleep(1.5)  # reconnect
        assert await store.add_friends([(a, b)]) == 1
        assert (await store.get_roster_item(b, a)).subscription == "both"
        assert await store.get_subscribers(b) == [a]
        assert await store.get_subscribers(a) == [b]
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_embedded_writes_of_one_turn_and_a_stop_in_it_are_all_done(tmp_path: Path):
    """Requests reach the SQLite thread at the end of their reactor turn, together: a stop
    asked in that same turn still lets them run first, and more of them than one
    transaction takes are all done."""
    path = str(tmp_path / "store.sqlite3")
    store = EmbeddedRosterStore(path)
    await store.start()
    pep = store.open_map("pep")
    writes = [pep.set(f"u{i}@x", "tune", f"<tune>{i}</tune>") for i in range(1200)]
    stopped = store.stop()
    await defer.gatherResults(writes)
    await stopped
    store = EmbeddedRosterStore(path)
    await store.start()
    try:
        for i in (0, 511, 512, 1199):
            assert await store.open_map("pep").get(f"u{i}@x", "tune") == f"<tune>{i}</tune>"
    finally:
        await store.stop()

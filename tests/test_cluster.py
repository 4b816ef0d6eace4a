"""Several nodes over one real Redis: directory, pub/sub delivery, dead nodes, Redis restarts.

The nodes here are in one process (each with its own Core, router, store connection and
cluster service) so the test can see every session; tests with whole server processes on
several nodes live with the front doors.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from presenced import config as configuration
from presenced import events
from presenced.cluster import link as link_module
from presenced.cluster.service import ClusterService
from presenced.core import Core
from presenced.events import Event
from presenced.cluster import shardedlink
from presenced.store.backends import make_store
from presenced.store.redis import RedisRosterStore
from tests.helpers import RecordingSession


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


async def eventually(check, timeout: float = 10.0, step: float = 0.05):
    waited = 0.0
    while not check():
        if waited > timeout:
            raise AssertionError("condition not met in time")
        await sleep(step)
        waited += step


class Node:
    """``redis_url`` a Redis's URL, or a Redis Cluster's seeds (sharded pub/sub)."""

    def __init__(self, tmp_path: Path, name: str, redis_url: str | list[str]):
        on_cluster = isinstance(redis_url, list)
        self.config = configuration.build({
            "server": {"data_dir": str(tmp_path / name)},
            "store": ({"backend": "redis", "redis_cluster": redis_url} if on_cluster
                      else {"backend": "redis", "redis": [redis_url]}),
            "cluster": {"enabled": True, "node_id": name, "heartbeat_interval": 0.2,
                        "node_timeout": 1.0},
        })
        self.store = make_store(self.config) if on_cluster else RedisRosterStore([redis_url])
        self.core = Core(self.config, self.store)
        self.cluster = ClusterService(self.core)

    async def start(self) -> "Node":
        await self.store.start()
        await self.cluster.join()
        self.cluster.startService()
        return self

    async def stop(self) -> None:
        if self.cluster.running:
            await self.cluster.stopService()
        await self.store.stop()

    def crash(self) -> None:
        """Stop heartbeats and drop the Redis links without saying goodbye."""
        self.cluster.directory._heartbeat.stop()
        self.cluster.link._factory.stopTrying()
        self.cluster.link._protocol.transport.abortConnection()
        self.cluster.running = False

    def session(self, user: str, label: str = "r") -> RecordingSession:
        s = RecordingSession(user, label)
        self.core.router.login(user, s)
        return s


@pytest.fixture
def nodes(tmp_path: Path, redis_server):
    made: list[Node] = []

    async def make(name: str) -> Node:
        node = await Node(tmp_path, name, redis_server.url).start()
        made.append(node)
        return node

    yield make
    for node in made:
        pytest_twisted.blockon(defer.ensureDeferred(node.stop()))


@pytest_twisted.ensureDeferred
async def test_events_cross_nodes_once_per_node(nodes):
    a, b = await nodes("a"), await nodes("b")
    await a.store.add_friends([("rj@x", "bob@x"), ("rj@x", "ann@x")])
    rj = a.session("rj@x")
    bob1, bob2, ann = b.session("bob@x", "1"), b.session("bob@x", "2"), b.session("ann@x")
    await eventually(lambda: "bob@x" in a.cluster.directory.nodes_of
                     and "ann@x" in a.cluster.directory.nodes_of)
    await eventually(lambda: "rj@x" in b.cluster.link.listening)  # b hears rj's channel
    published = a.cluster.transport.published
    tune = Event(events.TUNE, "rj@x", {"artist": "A", "title": "T"})
    assert await a.core.router.send("rj@x", tune) == 1  # rj's own session here
    await eventually(lambda: bob1.events and bob2.events and ann.events)
    assert a.cluster.transport.published == published + 1
    for s in (rj, bob1, bob2, ann):
        assert [(e.type, e.sender, e.payload["title"], e.id) for e in s.events] == \
            [("tune", "rj@x", "T", tune.id)]


@pytest_twisted.ensureDeferred
async def test_messages_reach_a_user_wherever_their_sessions_are(nodes):
    a, b = await nodes("a"), await nodes("b")
    here, there = a.session("carol@x", "desk"), b.session("carol@x", "phone")
    await eventually(lambda: "carol@x" in b.cluster.directory.nodes_of)
    assert b.core.send_message("dave@x", "carol@x", "hello", kind="chat") == 1
    await eventually(lambda: here.events)
    assert here.events[0].payload["body"] == "hello"
    assert there.events[0].payload["body"] == "hello"
    b.core.router.logout(there)
    await eventually(lambda: "carol@x" not in a.cluster.directory.nodes_of)


@pytest_twisted.ensureDeferred
async def test_removing_an_account_closes_its_sessions_on_every_node(nodes):
    a, b = await nodes("a"), await nodes("b")
    assert await a.core.accounts.register("erin@localhost", "pw")
    here, there = a.session("erin@localhost", "desk"), b.session("erin@localhost", "phone")
    other = b.session("frank@localhost")
    await eventually(lambda: "erin@localhost" in a.cluster.directory.nodes_of)
    assert await a.core.accounts.remove("erin@localhost")
    await eventually(lambda: there.closed)
    assert here.closed == there.closed == ["account removed"]
    assert not other.closed and not there.events


@pytest_twisted.ensureDeferred
async def test_a_dead_nodes_users_go_unavailable_for_their_friends(nodes):
    a, b = await nodes("a"), await nodes("b")
    await a.store.add_friends([("ann@x", "bob@x")])
    ann = a.session("ann@x")
    b.session("bob@x")
    await eventually(lambda: "bob@x" in a.cluster.directory.nodes_of)
    b.crash()
    await eventually(lambda: any(e.type == "presence" for e in ann.events), timeout=5)
    gone = [e for e in ann.events if e.type == "presence"][0]
    assert gone.sender == "bob@x" and gone.payload["available"] is False
    assert "bob@x" not in a.cluster.directory.nodes_of
    assert "b" not in a.cluster.directory.nodes()


@pytest_twisted.ensureDeferred
async def test_a_new_node_loads_who_is_online_elsewhere(nodes):
    a = await nodes("a")
    a.session("early@x")
    await sleep(0.3)
    b = await nodes("b")
    assert b.cluster.directory.nodes_of.get("early@x") == {"a"}
    assert b.cluster.directory.nodes() == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_delivery_resumes_after_a_redis_restart(nodes, redis_server):
    a, b = await nodes("a"), await nodes("b")
    await a.store.add_friends([("p@x", "q@x")])
    b.session("q@x")
    await eventually(lambda: "q@x" in a.cluster.directory.nodes_of)
    redis_server.restart()
    await eventually(lambda: a.cluster.link.reconnects >= 1 and b.cluster.link.reconnects >= 1,
                     timeout=15)
    q_sessions = b.core.router.sessions("q@x")

    def got_it() -> bool:
        return any(e.payload.get("title") == "again" for e in q_sessions[0].events)

    # Events published while Redis is away are lost (pub/sub keeps nothing); once the links
    # are back, a send reaches the other node again.
    errors: list[str] = []
    for _ in range(100):
        try:
            await a.core.router.send("p@x", Event(events.TUNE, "p@x", {"title": "again"}))
        except Exception as e:
            errors.append(repr(e))
        await sleep(0.1)
        if got_it():
            break
    assert got_it(), (a.cluster.directory.nodes_of, b.cluster.directory.nodes_of,
                      a.cluster.transport.published, b.cluster.transport.received, errors)


@pytest_twisted.ensureDeferred
async def test_events_for_a_node_in_one_reactor_turn_share_one_publish(nodes):
    a, b = await nodes("a"), await nodes("b")
    carol = b.session("carol@x")
    await eventually(lambda: "carol@x" in a.cluster.directory.nodes_of)
    channels: list[str] = []
    publish = a.cluster.link.publish
    a.cluster.link.publish = lambda channel, message, **kw: (channels.append(channel),
                                                             publish(channel, message, **kw))[1]
    for i in range(5):
        a.core.send_message("dave@x", "carol@x", f"message {i}", kind="chat")
    await eventually(lambda: len(carol.events) == 5)
    assert [e.payload["body"] for e in carol.events] == [f"message {i}" for i in range(5)]
    assert channels == ["presenced:node:b"]


@pytest_twisted.ensureDeferred
async def test_messages_outlive_a_redis_answering_later_than_the_reply_timeout(
        nodes, redis_server, monkeypatch):
    """Events published while Redis lags (it shares a busy machine) must not be lost: a
    late answer used to make txredisapi abort the connection, queued PUBLISHes and all."""
    monkeypatch.setattr(link_module, "REPLY_TIMEOUT", 0.3)
    a, b = await nodes("a"), await nodes("b")
    carol = b.session("carol@x")
    await eventually(lambda: "carol@x" in a.cluster.directory.nodes_of)
    a.core.send_message("dave@x", "carol@x", "warm-up", kind="chat")
    await eventually(lambda: len(carol.events) == 1)
    with socket.create_connection(("127.0.0.1", redis_server.port)) as lagging:
        lagging.sendall(b"CLIENT PAUSE 800 ALL\r\n")
        assert lagging.recv(64).startswith(b"+OK")
        for i in range(20):
            a.core.send_message("dave@x", "carol@x", f"message {i}", kind="chat")
        await eventually(lambda: len(carol.events) == 21)
    assert [e.payload["body"] for e in carol.events[1:]] == [f"message {i}" for i in range(20)]


@pytest_twisted.ensureDeferred
async def test_messages_outlive_redis_cluster_masters_answering_late(
        tmp_path, shared_redis_cluster, monkeypatch):
    """The same over sharded pub/sub: SPUBLISHes went over connections with a reply timeout
    (``COMMAND_TIMEOUT``), and a late answer aborted them with everything queued."""
    shared_redis_cluster.flush()
    monkeypatch.setattr(shardedlink, "COMMAND_TIMEOUT", 0.2)
    made = [await Node(tmp_path, name, shared_redis_cluster.seeds).start() for name in "ab"]
    try:
        a, b = made
        carol = b.session("carol@x")
        await eventually(lambda: "carol@x" in a.cluster.directory.nodes_of)
        a.core.send_message("dave@x", "carol@x", "warm-up", kind="chat")
        await eventually(lambda: len(carol.events) == 1)
        pausing = [socket.create_connection(("127.0.0.1", master.port))
                   for master in shared_redis_cluster.masters()]
        for lagging in pausing:
            lagging.sendall(b"CLIENT PAUSE 600 ALL\r\n")
        for lagging in pausing:
            assert lagging.recv(64).startswith(b"+OK")
            lagging.close()
        for i in range(20):
            a.core.send_message("dave@x", "carol@x", f"message {i}", kind="chat")
            await sleep(0.02)  # spread over the pause: many turns, many publishes
        await eventually(lambda: len(carol.events) >= 21)
        await sleep(0.2)  # nothing more comes
        assert [e.payload["body"] for e in carol.events[1:]] == [
            f"message {i}" for i in range(20)]
    finally:
        for node in made:
            await node.stop()


@pytest_twisted.ensureDeferred
async def test_messages_to_a_user_on_another_node_arrive_once_and_in_order(nodes):
    """Many turns of many messages (each turn one batch serialised at its end) lose,
    repeat and reorder none; a message JSON cannot carry costs only itself, not its turn."""
    a, b = await nodes("a"), await nodes("b")
    carol = b.session("carol@x")
    await eventually(lambda: "carol@x" in a.cluster.directory.nodes_of)
    sent = []
    for turn in range(10):
        for i in range(30):
            body = f"{turn}.{i}"
            sent.append(body)
            a.core.send_message("dave@x", "carol@x", body, kind="chat")
        a.core.router.deliver("carol@x", Event("photo", "dave@x", {"bad": {1, 2}}))
        await sleep(0)
    await eventually(lambda: len(carol.events) >= len(sent))
    await sleep(0.2)  # nothing more comes
    assert [e.payload["body"] for e in carol.events] == sent


def tune_titles(session: RecordingSession) -> list[str]:
    return [e.payload["title"] for e in session.events if e.type == events.TUNE]


@pytest_twisted.ensureDeferred
async def test_a_subscription_changed_on_one_node_changes_who_receives_on_another(nodes):
    """Bob (node b) starts or stops following alice (node a) while both are online; the
    change is made on node a. Node b subscribes to alice's channel once it hears of the
    change; a removal reaches node b before the next event does."""
    a, b = await nodes("a"), await nodes("b")
    await a.store.add_subscriptions([("bob@x", "carol@x")])
    alice, bob = a.session("alice@x"), b.session("bob@x")
    await eventually(lambda: "carol@x" in b.cluster.link.listening)
    assert "alice@x" not in b.cluster.link.joined  # nobody on b follows alice yet

    async def tune(subject: str, title: str) -> None:
        await a.core.router.send(subject, Event(events.TUNE, subject, {"title": title}))

    await a.core.add_subscriptions([("bob@x", "alice@x")])
    await eventually(lambda: "alice@x" in b.cluster.link.listening)
    await tune("alice@x", "followed")
    await eventually(lambda: tune_titles(bob) == ["followed"])

    await a.core.remove_subscriptions([("bob@x", "alice@x")])
    await tune("alice@x", "unfollowed")
    await tune("carol@x", "still followed")
    await eventually(lambda: "still followed" in tune_titles(bob))
    assert tune_titles(bob) == ["followed", "still followed"]
    assert tune_titles(alice) == ["followed", "unfollowed"]
    await eventually(lambda: "alice@x" not in b.cluster.link.joined)


@pytest_twisted.ensureDeferred
async def test_a_node_hears_only_subjects_its_sessions_follow(nodes):
    a, b = await nodes("a"), await nodes("b")
    await a.store.add_friends([("rj@x", "bob@x")])
    a.session("loner@x")
    b.session("bob@x")
    await eventually(lambda: b.cluster.link.listening == {"bob@x", "rj@x"})
    assert a.cluster.link.joined == {"loner@x"}
    received = b.cluster.transport.received
    await a.core.router.send("loner@x", Event(events.TUNE, "loner@x", {"title": "alone"}))
    await a.core.router.send("rj@x", Event(events.TUNE, "rj@x", {"title": "heard"}))
    await eventually(lambda: b.cluster.transport.received == received + 1)


@pytest_twisted.ensureDeferred
async def test_a_broadcast_skips_whom_the_subject_blocks_on_other_nodes_too(nodes):
    """Node b does not hold alice's blocklist: node a sends it along with her event."""
    a, b = await nodes("a"), await nodes("b")
    await a.store.add_friends([("alice@x", "bob@x"), ("alice@x", "carol@x"),
                               ("bob@x", "carol@x")])
    a.session("alice@x")
    bob, carol = b.session("bob@x"), b.session("carol@x")
    await a.core.blocking.block("alice@x", ["bob@x"])
    await eventually(lambda: "alice@x" in b.cluster.link.listening)
    await a.core.router.send("alice@x", Event(events.TUNE, "alice@x", {"title": "hidden"}))
    await a.core.router.send("carol@x", Event(events.TUNE, "carol@x", {"title": "later"}))
    await eventually(lambda: "later" in tune_titles(bob))
    assert tune_titles(bob) == ["later"]
    assert tune_titles(carol) == ["hidden", "later"]


def test_site_data_holding_the_wire_tag_crosses_nodes_unchanged():
    """A site's event data may use any key, the wire format's own tag included."""
    from presenced.cluster import wire

    data = {"__presenced__": "bytes", "text": "not bytes", "nested": {"__presenced__": "xml"}}
    event = Event("photo", "alice@example.com", {"data": data, "raw": b"\xff<x/>"})
    [(recipients, received)] = wire.decode(wire.encode(["bob@example.com"], event))
    assert recipients == ["bob@example.com"]
    assert received.payload == {"data": data, "raw": b"\xff<x/>"}


def test_a_frame_carries_stanzas_raw_and_gives_back_equal_events():
    """Events for given users travel as a frame: headers in JSON, UTF-8 bytes values (the
    stanza) as they are; several events, newlines and non-ASCII inside a stanza, bytes that
    are no UTF-8 (tagged JSON then) and the payload's key order all come back unchanged."""
    from presenced.cluster import wire
    stanza = "<message to='bob@x'><body>line one\nl\u00efne two \U0001f3b5</body></message>"
    events_sent = [
        Event(events.MESSAGE, "alice@x", {"to": "bob@x", "body": "hi", "subject": None,
                                          "stanza": stanza.encode("utf-8"), "kind": "chat"}),
        Event("photo", "alice@x", {"raw": b"\xff\n<x/>", "n": 3}),
        Event(events.MESSAGE, "carol@x", {"stanza": b"", "to": "bob@x"}),
    ]
    text = wire.frame([wire.record(["bob@x", "dave@x"], e) for e in events_sent])
    assert stanza in text  # not escaped into the JSON
    received = wire.decode(text)
    assert [r for r, _ in received] == [["bob@x", "dave@x"]] * 3
    for sent, (_, got) in zip(events_sent, received):
        assert (got.type, got.sender, got.time, got.id) == (sent.type, sent.sender,
                                                             sent.time, sent.id)
        assert list(got.payload.items()) == list(sent.payload.items())

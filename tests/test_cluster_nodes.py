"""Whole presenced processes as one cluster over a private Redis: events cross nodes, a killed
node's users go unavailable for friends elsewhere, a Redis restart is survived."""

from __future__ import annotations

import json
import threading
import time

import pytest
from thriftpy2.rpc import make_client

from tests.helpers import THRIFT, HTTPStream, J, http_get, node_config

def admin(node):
    return make_client(THRIFT.PresencedAdmin, "127.0.0.1", node.ports["thrift"], timeout=20000)


@pytest.fixture
def two_nodes(redis_server, presenced_factory):
    a = presenced_factory(node_config(redis_server.url, "a"), name="a")
    b = presenced_factory(node_config(redis_server.url, "b"), name="b")
    return a, b


def test_thrift_on_one_node_reaches_streams_on_the_other(two_nodes):
    a, b = two_nodes
    bob = HTTPStream(b.ports["comet"], "/stream/bob@localhost")
    rj_here = HTTPStream(a.ports["comet"], "/stream/rj@localhost")
    time.sleep(0.5)  # the directory announcement of bob's stream reaches node a
    client = admin(a)
    client.add_friend(J(name="rj", server="localhost"), J(name="bob", server="localhost"))
    roster = bob.wait_for("roster")[0]
    assert roster["from"] == "rj@localhost" and roster["item"]["subscription"] == "both"
    client.publish_np(J(name="rj", server="localhost"), "Air", "Moon Safari", "La femme d'argent",
                      431, 1)
    tune = bob.wait_for("tune")[0]
    assert (tune["from"], tune["artist"], tune["title"], tune["source"], tune["length"]) == \
        ("rj@localhost", "Air", "La femme d'argent", "Moon Safari", 431)
    assert rj_here.wait_for("tune")[0]["id"] == tune["id"]
    client.spoof_message(J(name="rj", server="localhost"), J(name="bob", server="localhost"),
                         "hello from node a", "hi")
    message = bob.wait_for("message")[0]
    assert message["body"] == "hello from node a" and message["from"] == "rj@localhost"
    for stream in (bob, rj_here):
        stream.close()


def test_a_killed_nodes_users_go_unavailable_for_friends_elsewhere(two_nodes):
    a, b = two_nodes
    admin(a).add_friend(J(name="ann", server="localhost"), J(name="dan", server="localhost"))
    dan = HTTPStream(b.ports["comet"], "/stream/dan@localhost")
    ann = HTTPStream(a.ports["comet"], "/stream/ann@localhost")
    time.sleep(0.5)
    a.kill()
    gone = dan.wait_for("presence", timeout=10)[0]
    assert gone["from"] == "ann@localhost" and gone["available"] is False
    dan.close()
    ann.close()


def test_nodes_deliver_again_after_redis_restarts(two_nodes, redis_server):
    a, b = two_nodes
    admin(a).add_friend(J(name="eve", server="localhost"), J(name="fay", server="localhost"))
    fay = HTTPStream(b.ports["comet"], "/stream/fay@localhost")
    time.sleep(0.5)
    redis_server.restart()
    deadline = time.monotonic() + 20
    delivered = False
    while not delivered and time.monotonic() < deadline:
        try:
            admin(a).publish_np(J(name="eve", server="localhost"), "A", "B", "after restart",
                                100, 1)
        except Exception:
            time.sleep(0.3)
            continue
        try:
            fay.wait_for("tune", timeout=1)
            delivered = True
        except AssertionError:
            pass
    assert delivered, a.log()[-3000:] + b.log()[-3000:]
    assert [t["title"] for t in fay.json_lines() if t["type"] == "tune"][-1] == "after restart"
    fay.close()


def test_a_node_stops_promptly_while_redis_is_down(two_nodes, redis_server):
    a, _ = two_nodes
    redis_server.stop()
    started = time.monotonic()
    a.process.terminate()
    a.process.wait(12)
    assert time.monotonic() - started < 8
    assert "could not deregister" in a.log() or "did not close" in a.log()


def test_a_token_made_on_one_node_opens_a_stream_on_the_other(redis_server, presenced_factory):
    """The nodes share one secret (kept in Redis), so a load balancer may send a stream to
    any node: a token from presencedctl against node A's config, or from node B's Thrift,
    is good on the other node."""
    a = presenced_factory(node_config(redis_server.url, "a", comet={"require_token": True}),
                          name="a")
    b = presenced_factory(node_config(redis_server.url, "b", comet={"require_token": True}),
                          name="b")
    from_ctl = a.ctl("stream-token", "gil@localhost").stdout.strip().splitlines()[-1]
    stream = HTTPStream(b.ports["comet"], f"/stream/gil@localhost?token={from_ctl}")
    assert stream.status == 200
    stream.close()
    from_thrift = admin(b).stream_token(J(name="gil", server="localhost"), 60)
    stream = HTTPStream(a.ports["comet"], f"/stream/gil@localhost?token={from_thrift}")
    assert stream.status == 200
    stream.close()
    forged = HTTPStream(b.ports["comet"], f"/stream/gil@localhost?token={from_ctl[:-2]}00")
    assert forged.status == 403
    forged.close()


def test_an_address_banned_on_one_node_is_refused_by_the_others(redis_server,
                                                                 presenced_factory):
    strict = {"comet": {"require_token": True}, "server": {"auth_failures_per_ip": 3}}
    a = presenced_factory(node_config(redis_server.url, "a", **strict), name="a")
    b = presenced_factory(node_config(redis_server.url, "b", **strict), name="b")
    for _ in range(3):
        status, _, _ = http_get(a.ports["comet"], "/poll/eve@localhost?token=guess")
        assert status == 403
    assert http_get(a.ports["comet"], "/poll/eve@localhost?token=guess")[0] == 429
    deadline = time.monotonic() + 10
    while http_get(b.ports["comet"], "/poll/eve@localhost?token=guess")[0] != 429:
        assert time.monotonic() < deadline, b.log()       # the ban reaches node b
        time.sleep(0.05)
    # A node that joins later reads the bans still running.
    c = presenced_factory(node_config(redis_server.url, "c", **strict), name="c")
    assert http_get(c.ports["comet"], "/poll/eve@localhost?token=guess")[0] == 429


def test_online_count_and_user_sessions_answer_for_the_whole_cluster(two_nodes):
    a, b = two_nodes
    streams = [HTTPStream(a.ports["comet"], "/stream/hal@localhost"),
               HTTPStream(a.ports["comet"], "/stream/ida@localhost"),
               HTTPStream(b.ports["comet"], "/stream/ida@localhost"),
               HTTPStream(b.ports["comet"], "/stream/jon@localhost")]
    ida = J(name="ida", server="localhost")
    deadline = time.monotonic() + 20
    while True:  # the logins reach the other node's directory
        counts = [admin(node).online_count() for node in (a, b)]
        sessions = [admin(node).user_sessions(ida) for node in (a, b)]
        if counts == [3, 3] and [len(s) for s in sessions] == [2, 2]:
            break
        assert time.monotonic() < deadline, (counts, sessions)
        time.sleep(0.1)
    assert {s.protocol for s in sessions[0]} == {"comet"}
    assert sorted(s.label for s in sessions[0]) == sorted(s.label for s in sessions[1])
    for stream in streams:
        stream.close()


def test_a_node_restarted_before_its_timeout_clears_its_old_users(redis_server,
                                                                  presenced_factory):
    """Killed and started again before the others declared it dead, a node comes back with
    no sessions and announces ``sync``: users the others knew there are gone, and their
    friends elsewhere are told at once, not when the (long) node timeout would have passed."""
    slow = {"cluster": {"node_timeout": 60.0}}
    a = presenced_factory(node_config(redis_server.url, "a", **slow), name="a")
    b = presenced_factory(node_config(redis_server.url, "b", **slow), name="b")
    admin(a).add_friend(J(name="kim", server="localhost"), J(name="lou", server="localhost"))
    lou = HTTPStream(b.ports["comet"], "/stream/lou@localhost")
    kim = HTTPStream(a.ports["comet"], "/stream/kim@localhost")
    deadline = time.monotonic() + 20
    while admin(b).online_count() != 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    a.kill()
    kim.close()
    a.start()
    gone = lou.wait_for("presence", timeout=20)[0]
    assert gone["from"] == "kim@localhost" and gone["available"] is False
    lou.close()


def test_two_nodes_changing_one_pubsub_node_at_once_lose_no_change(two_nodes, redis_server):
    """Each node serialises its own changes of a pubsub node; across nodes the record is
    written by compare-and-set, so racing changes from both are all kept."""
    a, b = two_nodes
    admin(a).create_node("band/race", J(name="owner", server="localhost"), {})
    fans = [f"fan{i}" for i in range(80)]
    failures: list[BaseException] = []

    def change(node, names: list[str]) -> None:
        try:
            client = admin(node)
            for name in names:
                client.set_node_affiliation("band/race", J(name=name, server="localhost"),
                                            "member")
        except BaseException as e:  # reported below, with the test's thread
            failures.append(e)

    workers = [threading.Thread(target=change, args=(node, fans[i::4]))
               for i, node in enumerate((a, b, a, b))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert failures == []
    record = json.loads(redis_server.cli("HGET", "u:{band/race}:pubsub", "node"))
    assert record["affiliations"] == {f"{name}@localhost": "member" for name in fans}

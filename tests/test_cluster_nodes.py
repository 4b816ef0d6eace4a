"""Whole presenced processes as one cluster over a private Redis: events cross nodes, a killed
node's users go unavailable for friends elsewhere, a Redis restart is survived."""

from __future__ import annotations

import time

import pytest
from thriftpy2.rpc import make_client

from tests.helpers import THRIFT, HTTPStream, J, node_config

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

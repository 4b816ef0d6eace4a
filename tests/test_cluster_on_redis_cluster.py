"""Two presenced nodes whose store is a real Redis Cluster (3 masters, 3 replicas): the
cluster channel runs over sharded pub/sub there (SSUBSCRIBE/SPUBLISH, no classic channel),
and comet and XMPP events cross nodes as they do over one Redis."""

from __future__ import annotations

import pytest
from thriftpy2.rpc import make_client

from tests.helpers import (THRIFT, HTTPStream, J, node_config,
                           presence_and_chat_across_nodes, wait_until)


def admin(node):
    return make_client(THRIFT.PresencedAdmin, "127.0.0.1", node.ports["thrift"], timeout=20000)


def on_cluster(cluster, node_id: str, **extra: dict) -> dict:
    sections = node_config("redis://unused", node_id, **extra)
    sections["store"] = {"backend": "redis", "redis_cluster": cluster.seeds}
    return sections


def online_everywhere(nodes, user: str, sessions: int) -> None:
    """Wait until every node's directory lists ``sessions`` sessions of ``user``."""
    wait_until(lambda: all(len(admin(n).user_sessions(J(name=user, server="localhost")))
                           == sessions for n in nodes), f"{user}'s login to reach every node",
               timeout=20)


@pytest.fixture
def cluster(shared_redis_cluster):
    shared_redis_cluster.flush()
    return shared_redis_cluster


def test_comet_events_cross_nodes_over_sharded_pubsub(cluster, presenced_factory):
    a = presenced_factory(on_cluster(cluster, "a"), name="a")
    b = presenced_factory(on_cluster(cluster, "b"), name="b")
    bob = HTTPStream(b.ports["comet"], "/stream/bob@localhost")
    rj_here = HTTPStream(a.ports["comet"], "/stream/rj@localhost")
    online_everywhere((a, b), "bob", 1)
    client = admin(a)
    client.add_friend(J(name="rj", server="localhost"), J(name="bob", server="localhost"))
    roster = bob.wait_for("roster")[0]
    assert roster["from"] == "rj@localhost" and roster["item"]["subscription"] == "both"
    client.publish_np(J(name="rj", server="localhost"), "Air", "Moon Safari", "Talisman",
                      431, 1)
    tune = bob.wait_for("tune")[0]
    assert (tune["from"], tune["title"]) == ("rj@localhost", "Talisman")
    assert rj_here.wait_for("tune")[0]["id"] == tune["id"]
    client.spoof_message(J(name="rj", server="localhost"), J(name="bob", server="localhost"),
                         "hello from node a", "hi")
    assert bob.wait_for("message")[0]["body"] == "hello from node a"

    sharded = set()
    for master in cluster.masters():
        sharded.update(master.cli("PUBSUB", "SHARDCHANNELS").split())
        assert master.cli("PUBSUB", "CHANNELS").split() == []
    assert {"{presenced}presenced:directory", "{presenced}presenced:node:a",
            "{presenced}presenced:node:b", "presenced:subject:rj@localhost"} <= sharded
    online_everywhere((b,), "rj", 1)
    a.stop()
    online_everywhere((b,), "rj", 0)  # node a's goodbye crossed the cluster too
    for stream in (bob, rj_here):
        stream.close()


def test_xmpp_presence_and_messages_cross_nodes(cluster, presenced_factory):
    xmpp = {"server": {"scram_iterations": 100}, "comet": {"enabled": False},
            "xmpp": {"enabled": True, "require_tls": False, "allow_plain": True}}
    a = presenced_factory(on_cluster(cluster, "a", **xmpp), name="a")
    b = presenced_factory(on_cluster(cluster, "b", **xmpp), name="b")
    a.ctl("import-users", "-", "--quiet", input="ann@localhost pw\nben@localhost pw\n")
    a.ctl("add-friend", "ann@localhost", "ben@localhost")

    presence_and_chat_across_nodes(a, b, lambda: online_everywhere((a, b), "ben", 1))


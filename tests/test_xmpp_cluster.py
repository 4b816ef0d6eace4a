"""XMPP on two cluster nodes over a private Redis: presence and messages cross nodes, and a
resource coming online on one node gets the current presence of contacts on the other."""

from __future__ import annotations

import time

from tests.helpers import RawClient, presence_and_chat_across_nodes


def node(redis_url: str, node_id: str) -> dict:
    return {
        "store": {"backend": "redis", "redis": [redis_url]},
        "server": {"scram_iterations": 100},
        "cluster": {"enabled": True, "node_id": node_id, "heartbeat_interval": 0.3,
                    "node_timeout": 1.5},
        "xmpp": {"require_tls": False, "allow_plain": True},
        "comet": {"enabled": False}, "thrift": {"enabled": False},
        "webadmin": {"enabled": False},
    }


def test_presence_and_messages_cross_nodes(redis_server, presenced_factory):
    a = presenced_factory(node(redis_server.url, "a"), name="a")
    b = presenced_factory(node(redis_server.url, "b"), name="b")
    a.ctl("import-users", "-", "--quiet", input="ann@localhost pw\nben@localhost pw\n")
    a.ctl("add-friend", "ann@localhost", "ben@localhost")

    # ben's login reaches node a's directory within half a second.
    presence_and_chat_across_nodes(a, b, lambda: time.sleep(0.5))


def test_binding_a_resource_bound_on_another_node_replaces_it(redis_server, presenced_factory):
    a = presenced_factory(node(redis_server.url, "a"), name="a")
    b = presenced_factory(node(redis_server.url, "b"), name="b")
    a.ctl("import-users", "-", "--quiet", input="cy@localhost pw\n")
    first = RawClient(a.ports["xmpp"])
    first.login("cy", "pw", "laptop")
    time.sleep(0.5)  # the login reaches node b's directory
    second = RawClient(b.ports["xmpp"])
    second.login("cy", "pw", "laptop")
    assert b"<conflict" in first.read_until(b"<conflict[^>]*/>", timeout=5)
    assert first.closed()
    second.send(b"<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert b"id='p1'" in second.read_until(b"<iq[^>]*id=.p1.[^>]*/?>")

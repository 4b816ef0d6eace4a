"""Message routing between resources (RFC 6121 8.5.2), over raw streams."""

from __future__ import annotations

import pytest

from tests.helpers import OTHER_DOORS_OFF, PresencedProcess, RawClient


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = PresencedProcess(tmp_path_factory.mktemp("xmpp-routing"), {
        **OTHER_DOORS_OFF, "server": {"scram_iterations": 100},
        "xmpp": {"require_tls": False, "allow_plain": True}})
    process.start()
    for user in ("sender", "multi"):
        process.ctl("adduser", f"{user}@localhost", "--password", "pw")
    yield process
    process.stop()


def online(server, user: str, resource: str, priority: int) -> RawClient:
    client = RawClient(server.ports["xmpp"])
    client.login(user, "pw", resource)
    client.send(b"<presence><priority>%d</priority></presence>" % priority)
    client.read_until(b"from=.%s@localhost/%s.[^>]*>" % (user.encode(), resource.encode()))
    return client


def test_bare_jid_messages_prefer_the_highest_priority(server):
    high = online(server, "multi", "high", 5)
    low = online(server, "multi", "low", 1)
    sender = online(server, "sender", "s", 0)
    sender.send(b"<message to='multi@localhost' type='chat' id='c1'><body>chat</body></message>")
    assert b"<body>chat</body>" in high.read_until(b"</message>")
    sender.send(b"<message to='multi@localhost' type='headline' id='h1'><body>news</body>"
                b"</message>")
    assert b"<body>news</body>" in high.read_until(b"</message>")
    got = low.read_until(b"</message>")
    assert b"<body>news</body>" in got and b"<body>chat</body>" not in got
    # A full JID reaches exactly that resource, whatever its priority.
    sender.send(b"<message to='multi@localhost/low' id='f1'><body>direct</body></message>")
    assert b"<body>direct</body>" in low.read_until(b"</message>")
    # A negative priority takes no bare-JID messages: stored offline instead.
    low.send(b"<presence><priority>-1</priority></presence>")
    high.send(b"<presence><priority>-1</priority></presence>")
    high.read_until(b"<priority>-1</priority></presence>")
    sender.send(b"<message to='multi@localhost' type='chat' id='o1'><body>later</body>"
                b"</message>")
    fresh = RawClient(server.ports["xmpp"])
    fresh.login("multi", "pw", "fresh")
    fresh.send(b"<presence/>")
    stored = fresh.read_until(b"<body>later</body>.*?</message>")
    assert b"urn:xmpp:delay" in stored.rpartition(b"<message")[2]
    for client in (high, low, sender, fresh):
        client.close()

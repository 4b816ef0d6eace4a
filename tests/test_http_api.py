"""Topics and site events through a running server: Thrift ``publish_event`` (thriftpy2 and
PHP), a topic's followers on comet and XMPP (slixmpp). In-memory checks of the same logic are
in test_topics.py."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from tests.helpers import (PASSWORD, THRIFT, TIMEOUT, HTTPStream, TuneClient, generate, php,
                           run, thrift_client)

J = THRIFT.JabberUser
TOPIC = "artist/radiohead"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.helpers import PresencedProcess

    directory = tmp_path_factory.mktemp("topics")
    process = PresencedProcess(directory, {
        "comet": {"require_token": False},
        "xmpp": {"require_tls": False, "allow_plain": True}})
    process.start()
    yield process
    process.stop()


def follow(server, user: str, subject: str) -> None:
    c = thrift_client(server)
    try:
        edge = THRIFT.Subscription(subscriber=J(user, ""), subject=J(subject, ""))
        assert c.add_subscriptions([edge]) == 1
    finally:
        c.close()


def test_thrift_publish_event_reaches_a_topics_comet_follower(server):
    follow(server, "tfan", TOPIC)
    stream = HTTPStream(server.ports["comet"], "/stream/tfan")
    stream.wait_for("welcome")
    c = thrift_client(server)
    try:
        assert c.get_subscribers(J(TOPIC, "")) == ["tfan@localhost"]
        assert c.publish_event(TOPIC, "photo", json.dumps({"url": "/p/1.jpg"})) == 1
        [event] = stream.wait_for("photo")
        assert event["from"] == TOPIC and event["data"] == {"url": "/p/1.jpg"}
        with pytest.raises(THRIFT.BadJid):
            c.publish_event("artist/../x", "photo", "{}")
        with pytest.raises(THRIFT.InvalidArgument, match="JSON object"):
            c.publish_event(TOPIC, "photo", "[1, 2]")
        with pytest.raises(THRIFT.InvalidArgument, match="reserved"):
            c.publish_event(TOPIC, "tune", "{}")
        # A user subject: the user's own stream gets it too.
        assert c.publish_event("tfan", "newsfeed", "") == 1
        assert stream.wait_for("newsfeed")[0]["data"] == {}
    finally:
        c.close()
        stream.close()


def test_php_publishes_to_a_topic(tmp_path, server):
    if shutil.which("php") is None:
        pytest.fail("php-cli is not installed: run scripts/install-test-deps.sh")
    gen = generate(tmp_path, "php")
    port = server.ports["thrift"]
    added = php(gen, port, "add_subscription", "phpfan@localhost", "photo/789")
    assert added.stdout == "1\n", added.stderr
    stream = HTTPStream(server.ports["comet"], "/stream/phpfan")
    stream.wait_for("welcome")
    result = php(gen, port, "publish_event", "photo/789", "comment", '{"text": "nice"}')
    assert result.stdout == "1\n", result.stderr
    assert stream.wait_for("comment")[0]["data"] == {"text": "nice"}
    stream.close()
    refused = php(gen, port, "publish_event", "photo/789", "comment", "not json")
    assert refused.returncode == 1 and "InvalidArgument" in refused.stderr


def test_a_topic_reaches_its_xmpp_follower(server):
    c = thrift_client(server)
    try:
        assert c.register_user(J("xfan", "localhost"), PASSWORD)
    finally:
        c.close()
    follow(server, "xfan", "artist/portishead")

    async def scenario():
        client = TuneClient("xfan", notify=False)
        client.connect("127.0.0.1", server.ports["xmpp"])
        await asyncio.wait_for(client.started, TIMEOUT)
        # A round trip after the initial presence: the server has seen it.
        await client.plugin["xep_0030"].get_info(jid="localhost")
        try:
            publisher = thrift_client(server)
            try:
                assert publisher.publish_event("artist/portishead", "news",
                                               json.dumps({"text": "Dummy"})) == 1
            finally:
                publisher.close()
            sender, xml = await client.next_tune()
            assert sender == "pubsub.localhost"
            assert "node=\"artist/portishead\"" in xml and "Dummy" in xml
            assert "urn:xmpp:json:0" in xml
        finally:
            client.disconnect()

    run(scenario())

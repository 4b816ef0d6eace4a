"""Topics, site events and the HTTP API through a running server: Thrift ``publish_event``
(thriftpy2 and PHP), ``POST /api/publish/...`` reaching a topic's followers on comet and XMPP
(slixmpp), API tokens and their scopes, every admin method over HTTP/JSON checked against
``/api/openapi.json``. In-memory checks of the same logic are in test_topics.py."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import shutil
import time

import pytest

from tests.helpers import (PASSWORD, THRIFT, TIMEOUT, HTTPStream, TuneClient, generate, php,
                           node_config, run, thrift_client, wait_until, webadmin_login,
                           webadmin_url)

J = THRIFT.JabberUser
TOPIC = "artist/radiohead"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.helpers import PresencedProcess

    directory = tmp_path_factory.mktemp("topics")
    process = PresencedProcess(directory, {
        "comet": {"require_token": False},
        "xmpp": {"require_tls": False, "allow_plain": True},
        "webadmin": {"admins": ["admin@localhost"]}})
    process.start()
    c = thrift_client(process)
    try:
        assert c.register_user(J("admin", "localhost"), "admin-pw")
    finally:
        c.close()
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


# --- the HTTP API ---------------------------------------------------------------------------

def api_token(server, scope: str = "publish") -> str:
    """What a site operator does: the token is the last line presencedctl prints."""
    return server.ctl("api-token", "--scope", scope).stdout.strip().splitlines()[-1]


def api(server, path: str, body=None, token: str | None = None, method: str = "POST",
        raw: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """One request as curl makes it; the status and the JSON answer."""
    connection = http.client.HTTPConnection("127.0.0.1", server.ports["webadmin"], timeout=20)
    try:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                               else None)
        if payload is not None:
            sent.setdefault("Content-Type", "application/json")
        connection.request(method, path, body=payload, headers=sent)
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        connection.close()


def test_an_http_publish_reaches_a_topics_comet_and_xmpp_followers(server):
    admin_token = api_token(server, "admin")
    token = api_token(server)
    c = thrift_client(server)
    try:
        assert c.register_user(J("hfan", "localhost"), PASSWORD)
    finally:
        c.close()
    status, answer = api(server, "/api/add_subscriptions", {"pairs": [
        {"subscriber": "cfan", "subject": "artist/blur"},
        {"subscriber": "hfan@localhost", "subject": "artist/blur"}]}, admin_token)
    assert (status, answer) == (200, {"result": 2})
    stream = HTTPStream(server.ports["comet"], "/stream/cfan")
    stream.wait_for("welcome")

    async def scenario():
        client = TuneClient("hfan", notify=False)
        client.connect("127.0.0.1", server.ports["xmpp"])
        await asyncio.wait_for(client.started, TIMEOUT)
        await client.plugin["xep_0030"].get_info(jid="localhost")
        try:
            # Two publishes on one keep-alive connection, each answered at once.
            connection = http.client.HTTPConnection("127.0.0.1", server.ports["webadmin"],
                                                    timeout=20)
            headers = {"Authorization": f"Bearer {token}"}
            connection.request("POST", "/api/publish/artist/blur?type=news",
                               body=b'{"title": "Parklife"}', headers=headers)
            reply = connection.getresponse()
            first = json.loads(reply.read())
            assert reply.status == 200 and first["reached"] == 2
            connection.request("POST", "/api/publish/artist/blur", body=b"plain words",
                               headers=headers)
            reply = connection.getresponse()
            second = json.loads(reply.read())
            assert reply.status == 200 and second["id"] > first["id"]
            connection.close()
            sender, xml = await client.next_tune()
            assert sender == "pubsub.localhost" and "Parklife" in xml
            sender, xml = await client.next_tune()
            assert "plain words" in xml
            # Nchan's channel info: both followers online, one session each.
            status, info = api(server, "/api/subjects/artist/blur", token=token, method="GET")
            assert status == 200
            assert info == {"subject": "artist/blur", "subscribers": 2,
                            "online_subscribers": 2, "sessions": 2}
        finally:
            client.disconnect()
        return first, second

    first, second = asyncio.run(asyncio.wait_for(scenario(), 60))
    news = stream.wait_for("news")[0]
    assert (news["id"], news["from"], news["data"]) == (first["id"], "artist/blur",
                                                        {"title": "Parklife"})
    assert stream.wait_for("event")[0]["data"] == {"text": "plain words"}
    stream.close()
    # A bare local part is that user on the first domain, as in stream URLs.
    status, answer = api(server, "/api/publish/cfan?type=photo", {"n": 1}, token)
    assert (status, answer["reached"]) == (200, 0)
    for path, body, problem in (("/api/publish/artist/..", {}, "not a topic"),
                                ("/api/publish/artist/blur?type=tune", {}, "reserved")):
        status, answer = api(server, path, body, token)
        assert status == 400 and problem in answer["message"]


def test_a_batch_publish_sends_every_event_in_order_or_none(server):
    """``POST /api/publish``: several events to several subjects in one request, answered
    in order; one bad event refuses the batch before any is sent (the stream gets nothing
    until the fixed batch, whose events arrive in order)."""
    token = api_token(server)
    status, document = api(server, "/api/openapi.json", method="GET")
    operation = document["paths"]["/api/publish"]["post"]
    request_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    stream = HTTPStream(server.ports["comet"], "/stream/bfan")
    stream.wait_for("welcome")
    follow(server, "bfan", "artist/batch")
    for body, status, error, where in (
            ({"events": [{"subject": "bfan", "type": "step", "data": {"n": 0}},
                         {"subject": "artist/..", "data": {}}]}, 400, "BadJid", "events[1]"),
            ({"events": [{"subject": "bfan", "type": "tune"}]}, 400, "InvalidArgument",
             "events[0]"),
            ({"events": [{"subject": "bfan", "data": [1]}]}, 400, "BadArgument", "events[0]"),
            ({"events": [{"subject": "bfan", "colour": "red"}]}, 400, "BadArgument",
             "'colour'"),
            ({"events": []}, 400, "BadArgument", "one event or more"),
            ({"event": {"subject": "bfan"}}, 400, "BadArgument", "one event or more"),
            ({"events": [{"subject": "bfan"}] * 1001}, 413, "TooManyEvents", "at most 1000")):
        got, answer = api(server, "/api/publish", body, token)
        assert (got, answer["error"]) == (status, error) and where in answer["message"], answer
        assert str(got) in operation["responses"]
    assert api(server, "/api/publish", {"events": [{"subject": "bfan"}]})[0] == 401
    assert api(server, "/api/publish", token=token, method="GET")[0] == 405
    batch = {"events": [{"subject": "bfan", "type": "step", "data": {"n": 0}},
                        {"subject": "artist/batch", "type": "step", "data": {"n": 1}},
                        {"subject": "nobody-follows", "type": "step"},
                        {"subject": "bfan@localhost", "type": "step", "data": {"n": 3}}]}
    assert conforms(batch, request_schema, document)
    status, answer = api(server, "/api/publish", batch, token)
    assert status == 200
    assert conforms(answer, operation["responses"]["200"]["content"]["application/json"][
        "schema"], document)
    results = answer["results"]
    assert [r["reached"] for r in results] == [1, 1, 0, 1]
    assert [r["id"] for r in results] == sorted(r["id"] for r in results)
    events = stream.wait_for("step", count=3)
    assert [(e["id"], e["from"], e["data"]) for e in events] == [
        (results[0]["id"], "bfan@localhost", {"n": 0}),
        (results[1]["id"], "artist/batch", {"n": 1}),
        (results[3]["id"], "bfan@localhost", {"n": 3})]
    stream.close()


def test_token_scopes_revocation_and_bad_tokens(server):
    publish, admin = api_token(server), api_token(server, "admin")
    status, answer = api(server, "/api/online_count", {})
    assert status == 401 and answer["error"] == "Unauthorized"
    assert api(server, "/api/online_count", {}, "pd1.admin.00.1.ab")[0] == 401
    status, answer = api(server, "/api/online_count", {}, publish)
    assert status == 403 and "admin token" in answer["message"]
    assert api(server, "/api/online_count", {}, admin)[0] == 200
    assert api(server, "/api/publish/artist/x", {}, admin)[0] == 200
    # The web admin lists the token (never its secret part) and revokes it.
    console = webadmin_login(server)
    page = console.get(webadmin_url(server) + "/api-tokens", timeout=10).text
    token_id = publish.split(".")[2]
    assert token_id in page and publish.split(".")[-1] not in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    done = console.post(webadmin_url(server) + "/api-tokens/revoke",
                        data={"csrf": csrf, "id": token_id}, timeout=10)
    assert done.status_code == 200 and f"Revoked token {token_id}" in done.text
    assert api(server, "/api/publish/artist/x", {}, publish)[0] == 401


def test_bad_tokens_are_counted_by_the_auth_guard(presenced_factory):
    server = presenced_factory({"server": {"auth_failures_per_ip": 2},
                                "xmpp": {"enabled": False}, "comet": {"enabled": False}})
    good = api_token(server)
    for _ in range(2):
        assert api(server, "/api/publish/a/b", {}, "pd1.publish.00.1.ab")[0] == 401
    status, answer = api(server, "/api/publish/a/b", {}, good)
    assert status == 429 and "try again in" in answer["message"]


def test_bodies_past_the_limit_are_refused_before_reading(presenced_factory):
    server = presenced_factory({"webadmin": {"max_body_bytes": 1000},
                                "xmpp": {"enabled": False}, "comet": {"enabled": False}})
    token = api_token(server)
    status, answer = api(server, "/api/publish/a/b", raw=b"x" * 1001, token=token)
    assert status == 413 and answer["error"] == "RequestTooLarge"
    assert api(server, "/api/publish/a/b", raw=b"x" * 1000, token=token)[0] == 200


# Arguments for each admin method, as a site would send them; every IDL method must be here.
CALLS = {
    "register_user": {"user": "apia@localhost", "password": "pw"},
    "set_password": {"user": "apia", "password": "pw2"},
    "user_exists": {"user": "apia"},
    "add_friend": {"luser": "apia", "ruser": "apib@localhost"},
    "get_roster": {"user": "apia"},
    "get_subscribers": {"user": {"name": "apib", "server": "localhost"}},
    "add_subscriptions": {"pairs": [{"subscriber": "apia", "subject": "artist/api"}]},
    "remove_subscriptions": {"pairs": [{"subscriber": "apia", "subject": "artist/api"}]},
    "publish_np": {"fromuser": "apia", "artist": "Can", "album": "Tago Mago",
                   "track": "Halleluhwah", "tracklength": 1110, "tracknum": 3},
    "get_now_playing": {"user": "apia"},
    "spoof_message": {"fromuser": "apib", "touser": "apia", "msg": "hi", "subject": "s"},
    "spoof_chat": {"fromuser": "apib", "touser": "apia", "msg": "hi", "thread": "t"},
    "user_sessions": {"user": "apia"},
    "online_count": {},
    "stream_token": {"user": "apia", "ttl": 60},
    "stats": {},
    "irc_say": {"target": "", "text": "hi"},
    "publish_event": {"subject": "artist/api", "type": "photo", "json_data": "{}"},
    "create_room": {"room": "apiroom@conference.localhost",
                    "owner": {"name": "apia", "server": "localhost"}, "persistent": True},
    "list_rooms": {},
    "room_occupants": {"room": "apiroom@conference.localhost"},
    "set_room_affiliation": {"room": "apiroom@conference.localhost",
                             "user": {"name": "apib", "server": "localhost"},
                             "affiliation": "member"},
    "send_room_message": {"room": "apiroom@conference.localhost", "body": "hello room"},
    "destroy_room": {"room": "apiroom@conference.localhost", "reason": "done"},
    "create_node": {"topic": "artist/nodes", "owner": "apia",
                    "config": {"pubsub#access_model": "whitelist", "pubsub#max_items": "5"}},
    "configure_node": {"topic": "artist/nodes", "config": {"pubsub#title": "Nodes"}},
    "set_node_affiliation": {"topic": "artist/nodes", "user": "apib",
                             "affiliation": "member"},
    "list_nodes": {},
    "purge_node": {"topic": "artist/nodes"},
    "delete_node": {"topic": "artist/nodes"},
    "remove_friend": {"luser": "apia", "ruser": "apib"},
    "remove_user": {"user": "apia"},
}
# This server runs no IRC bot: irc_say answers the documented 503.
NOT_ENABLED = {"irc_say"}


def conforms(value, schema: dict, document: dict) -> bool:
    """``value`` fits ``schema`` (the subset of OpenAPI 3 the document uses)."""
    if "$ref" in schema:
        return conforms(value, document["components"]["schemas"][schema["$ref"].rsplit(
            "/", 1)[1]], document)
    if "oneOf" in schema:
        return any(conforms(value, s, document) for s in schema["oneOf"])
    if value is None:
        return bool(schema.get("nullable"))
    kind = schema.get("type")
    checks = {"string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
    if kind in checks:
        return checks[kind](value)
    if kind == "array":
        return isinstance(value, list) and all(conforms(v, schema["items"], document)
                                               for v in value)
    if kind == "object":
        if not isinstance(value, dict) or not set(schema.get("required", ())) <= set(value):
            return False
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return all(conforms(v, properties[k], document) if k in properties
                   else (extra is not False and (not isinstance(extra, dict)
                                                 or conforms(v, extra, document)))
                   for k, v in value.items())
    raise AssertionError(f"schema the check does not know: {schema}")


def test_every_admin_method_over_http_matches_the_openapi_document(server):
    token = api_token(server, "admin")
    status, document = api(server, "/api/openapi.json", method="GET")
    assert status == 200 and document["openapi"].startswith("3.")
    methods = set(THRIFT.PresencedAdmin.thrift_services)
    documented = {p.rsplit("/", 1)[1] for p in document["paths"]
                  if p.count("/") == 2 and "{" not in p} - {"publish"}   # the batch publisher
    assert documented == methods == set(CALLS)
    for name, body in CALLS.items():
        operation = document["paths"][f"/api/{name}"]["post"]
        request_schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert conforms(body, request_schema, document), name
        status, answer = api(server, f"/api/{name}", body, token)
        expected = "503" if name in NOT_ENABLED else "200"
        assert str(status) == expected, (name, answer)
        reply_schema = operation["responses"][expected]["content"]["application/json"]["schema"]
        assert conforms(answer, reply_schema, document), (name, answer)
    # What the calls did, seen through other methods.
    assert api(server, "/api/user_exists", {"user": "apia"}, token)[1] == {"result": False}
    # Errors: the status each documents, and the JSON shape.
    for name, body, status, error in (
            ("get_roster", {"user": "nobody"}, 404, "UnknownUser"),
            ("user_exists", {"user": "not a jid@@"}, 400, "BadJid"),
            ("register_user", {"user": "x", "password": ""}, 400, "InvalidArgument"),
            ("stream_token", {"user": "x", "ttl": "long"}, 400, "BadArgument"),
            ("online_count", {"extra": 1}, 400, "BadArgument"),
            ("delete_node", {"topic": "artist/none"}, 400, "InvalidArgument"),
            ("purge_node", {"topic": "apia"}, 400, "BadJid"),
            ("no_such_method", {}, 404, "NotFound")):
        got, answer = api(server, f"/api/{name}", body, token)
        assert (got, answer["error"]) == (status, error), (name, answer)
        assert conforms(answer, {"$ref": "#/components/schemas/Error"}, document)
        if name in document["paths"]:
            assert str(status) in document["paths"][f"/api/{name}"]["post"]["responses"]
    assert api(server, "/api/stats", raw=b"{not json", token=token)[0] == 400
    assert api(server, "/api/stats", token=token, method="GET")[0] == 405
    # The publisher's own paths answer as documented too.
    for path, method in (("/api/publish/{subject}", "post"), ("/api/subjects/{subject}", "get"),
                         ("/api/publish", "post")):
        assert "200" in document["paths"][path][method]["responses"]


def test_a_token_from_one_node_publishes_on_another(redis_server, presenced_factory):
    """Tokens and topics cluster-wide: a token made for node a works on node b, and a topic
    event posted on b reaches a follower streaming on a."""
    a = presenced_factory(node_config(redis_server.url, "a", webadmin={"enabled": True}),
                          name="a")
    b = presenced_factory(node_config(redis_server.url, "b", webadmin={"enabled": True}),
                          name="b")
    token = api_token(a)
    assert api(b, "/api/add_subscriptions", {"pairs": [
        {"subscriber": "kfan", "subject": "label/warp"}]}, api_token(a, "admin"))[0] == 200
    stream = HTTPStream(a.ports["comet"], "/stream/kfan")
    stream.wait_for("welcome")
    deadline = time.monotonic() + 10
    # Node b learns from the cluster directory that the follower is online on a.
    while api(b, "/api/subjects/label/warp", token=token, method="GET")[1][
            "online_subscribers"] != 1:
        assert time.monotonic() < deadline, "node b never saw the follower online"
        time.sleep(0.05)
    # Node a hears the topic once its subscription to the topic's channel is in place
    # (events published before that are not replayed: docs/cluster.md).
    wait_until(lambda: redis_server.cli("PUBSUB", "NUMSUB", "presenced:subject:label/warp")
               .split()[-1] != "0", "node a to subscribe to the topic's channel")
    status, answer = api(b, "/api/publish/label/warp?type=release", {"title": "Selected"},
                         token)
    assert status == 200
    assert stream.wait_for("release")[0]["data"] == {"title": "Selected"}
    stream.close()


def test_a_slixmpp_client_subscribes_to_a_topic_node_and_gets_an_http_publish(server):
    c = thrift_client(server)
    try:
        assert c.register_user(J("sfan", "localhost"), PASSWORD)
    finally:
        c.close()
    token = api_token(server)

    async def scenario():
        client = TuneClient("sfan", notify=False)
        client.connect("127.0.0.1", server.ports["xmpp"])
        await asyncio.wait_for(client.started, TIMEOUT)
        try:
            pubsub = client.plugin["xep_0060"]
            await pubsub.subscribe("pubsub.localhost", "artist/suede")
            subscriptions = await pubsub.get_subscriptions("pubsub.localhost")
            assert [s["node"] for s in subscriptions["pubsub"]["subscriptions"]] == [
                "artist/suede"]
            # The XMPP subscription is a follower of the topic, as the site sees it.
            status, info = api(server, "/api/subjects/artist/suede", token=token,
                               method="GET")
            assert (status, info["subscribers"], info["online_subscribers"]) == (200, 1, 1)
            status, answer = api(server, "/api/publish/artist/suede?type=news",
                                 {"title": "Animal Nitrate"}, token)
            assert (status, answer["reached"]) == (200, 1)
            sender, xml = await client.next_tune()
            assert sender == "pubsub.localhost" and "Animal Nitrate" in xml
            await pubsub.unsubscribe("pubsub.localhost", "artist/suede")
            assert api(server, "/api/subjects/artist/suede", token=token,
                       method="GET")[1]["subscribers"] == 0
        finally:
            client.disconnect()

    run(scenario())

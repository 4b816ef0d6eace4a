"""Comet HTTP streams against a real presenced process: auth, errors, hostile clients, and
events from a real producer (the Thrift admin door: add_friend, publish_np, spoof_message)."""

from __future__ import annotations

import json
import socket
import time

import pytest
import websocket

from presenced.tokens import make_token
from tests.helpers import (COMET_ONLY, FUZZ_SCALE, SERVER_ERRORS, HTTPStream, fuzz_rng,
                           http_get, jid, mutate, thrift_admin, token)

# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture
def server(presenced_factory):
    return presenced_factory({**COMET_ONLY, "comet": {"heartbeat_interval": 1.0,
                                                       "header_timeout": 1.0,
                                                       "max_request_bytes": 2048,
                                                       "poll_timeout": 2.0,
                                                       "replay_linger": 30.0,
                                                       "cors_origins": ["https://fans.example"]}})


# --- HTTP behaviour ------------------------------------------------------------------------

def test_unknown_paths_get_json_404(server):
    port = server.ports["comet"]
    for path in ("/nope", "/stream/", "/stream/alice/extra", "/ws/"):
        status, headers, body = http_get(port, path)
        assert status == 404, path
        assert headers["content-type"] == "application/json"
        assert "error" in json.loads(body)


def test_tokens_missing_bad_expired_and_good(server):
    port = server.ports["comet"]
    status, headers, body = http_get(port, "/stream/alice")
    assert status == 401 and "token" in json.loads(body)["error"]
    assert headers["www-authenticate"].startswith("Bearer")
    bob_token = token(server, "bob")
    for path in ("/stream/alice?token=123.abc", f"/stream/alice?token={bob_token}",
                 f"/poll/alice?token={bob_token}"):
        status, _, body = http_get(port, path)
        assert status == 403, path
        assert "alice@localhost" in json.loads(body)["error"]
    secret = bytes.fromhex((server.data_dir / "secret").read_text().strip())
    expired = make_token(secret, "alice@localhost", ttl=-10)   # presencedctl refuses ttl < 1
    assert http_get(port, f"/stream/alice?token={expired}")[0] == 403

    good = token(server, "alice")
    stream = HTTPStream(port, f"/stream/alice?token={good}")
    assert stream.status == 200
    assert stream.wait_for("welcome")[0]["user"] == "alice@localhost"
    stream.close()
    bearer = HTTPStream(port, "/stream/alice@localhost",
                        headers={"Authorization": f"Bearer {good}"})
    assert bearer.status == 200
    bearer.close()


def test_bad_requests_get_clear_errors_and_the_server_stays_up(server):
    port = server.ports["comet"]
    alice = token(server, "alice")
    assert http_get(port, f"/stream/alice?token={alice}", method="POST")[0] == 405
    status, _, body = http_get(port, "/stream/a%20b@@x?token=x")
    assert status == 400 and "error" in json.loads(body)
    assert http_get(port, f"/stream/alice?token={alice}&since=yesterday")[0] == 400
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 400 ")
    assert http_get(port, "/nope")[0] == 404


def test_slowloris_head_is_cut_off(server):
    port = server.ports["comet"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /stream/alice HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        for _ in range(3):      # trickle a header line every 0.3 s: never completes the head
            time.sleep(0.3)
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
        data = b""
        while chunk := sock.recv(1024):
            data += chunk
        assert data.startswith(b"HTTP/1.1 408 "), data
        assert time.monotonic() - started < 4


def test_oversized_request_head_is_refused(server):
    port = server.ports["comet"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /stream/alice HTTP/1.1\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    assert data.startswith(b"HTTP/1.1 431 "), data[:100]
    assert http_get(port, "/nope")[0] == 404


def test_cors_preflight_and_headers(server):
    port = server.ports["comet"]
    status, headers, _ = http_get(port, "/stream/alice", method="OPTIONS",
                                  headers={"Origin": "https://fans.example",
                                           "Access-Control-Request-Method": "GET"})
    assert status == 204
    assert headers["access-control-allow-origin"] == "https://fans.example"
    assert "Authorization" in headers["access-control-allow-headers"]
    assert http_get(port, "/stream/alice", method="OPTIONS",
                    headers={"Origin": "https://evil.example"})[0] == 403
    status, headers, _ = http_get(port, "/stream/alice", headers={"Origin": "https://fans.example"})
    assert status == 401        # and the page may read why
    assert headers["access-control-allow-origin"] == "https://fans.example"
    stream = HTTPStream(port, f"/stream/alice?token={token(server, 'alice')}",
                        headers={"Origin": "https://fans.example"})
    assert stream.headers["access-control-allow-origin"] == "https://fans.example"
    stream.close()


def test_demo_page_is_served(server):
    status, headers, body = http_get(server.ports["comet"], "/")
    assert status == 200 and b"comet-demo.js" in body and b"id=\"token\"" in body
    status, _, script = http_get(server.ports["comet"], "/static/comet-demo.js")
    assert status == 200 and b"new EventSource" in script


# --- events from a real producer -----------------------------------------------------------

def test_thrift_tune_and_message_reach_every_stream_of_a_friend(server):
    port = server.ports["comet"]
    admin = thrift_admin(server)
    admin.add_friend(jid("alice"), jid("bob"))
    bob = token(server, "bob")
    first = HTTPStream(port, f"/stream/bob?token={bob}")
    second = HTTPStream(port, f"/stream/bob?token={bob}", headers={"Accept": "text/event-stream"})
    first.wait_for("welcome")
    second.wait_for("welcome", sse=True)
    stranger = HTTPStream(port, f"/stream/carol?token={token(server, 'carol')}")
    stranger.wait_for("welcome")

    admin.publish_np(jid("alice"), "Boards of Canada", "Geogaddi", "Music Is Math", 321, 4)
    tune = first.wait_for("tune")[0]
    assert tune["from"] == "alice@localhost"
    assert (tune["artist"], tune["title"], tune["source"], tune["length"], tune["track"]) == \
        ("Boards of Canada", "Music Is Math", "Geogaddi", 321, "4")
    assert isinstance(tune["id"], int) and isinstance(tune["time"], float)
    sse_tune = second.wait_for("tune", sse=True)[0]
    assert sse_tune["_sse_id"] == str(tune["id"])

    admin.spoof_message(jid("alice"), jid("bob"), "hello bob", "greetings")
    message = first.wait_for("message")[0]
    assert (message["from"], message["to"], message["body"], message["subject"]) == \
        ("alice@localhost", "bob@localhost", "hello bob", "greetings")
    second.wait_for("message", sse=True)

    first.close()   # the other stream keeps receiving at once
    admin.publish_np(jid("alice"), "Autechre", "Amber", "Foil", 0, 0)
    assert second.wait_for("tune", 2, sse=True)[1]["title"] == "Foil"
    time.sleep(0.3)
    assert not any(e["type"] == "tune" for e in stranger.json_lines())
    second.close()
    stranger.close()


def test_sse_resumes_from_last_event_id_and_poll_misses_nothing(server):
    port = server.ports["comet"]
    admin = thrift_admin(server)
    admin.add_friend(jid("alice"), jid("bob"))
    bob = token(server, "bob")
    sse = {"Accept": "text/event-stream"}
    stream = HTTPStream(port, f"/stream/bob?token={bob}", headers=sse)
    stream.wait_for("welcome", sse=True)
    admin.publish_np(jid("alice"), "A", "", "one", 0, 0)
    seen = stream.wait_for("tune", sse=True)[0]
    stream.close()
    time.sleep(0.2)
    admin.publish_np(jid("alice"), "A", "", "two", 0, 0)     # while bob is away
    admin.publish_np(jid("alice"), "A", "", "three", 0, 0)

    resumed = HTTPStream(port, f"/stream/bob?token={bob}",
                         headers={**sse, "Last-Event-ID": seen["_sse_id"]})
    tunes = resumed.wait_for("tune", 2, sse=True)
    assert [t["title"] for t in tunes] == ["two", "three"]
    last_id = tunes[-1]["id"]
    resumed.close()

    status, _, body = http_get(port, f"/poll/bob?token={bob}&since={last_id}")  # waits 2 s
    assert status == 200 and json.loads(body) == {"events": [], "next": last_id}
    admin.publish_np(jid("alice"), "A", "", "four", 0, 0)
    status, _, body = http_get(port, f"/poll/bob?token={bob}&since={last_id}")
    answer = json.loads(body)
    assert [e["title"] for e in answer["events"]] == ["four"]
    assert answer["next"] == answer["events"][0]["id"]


def test_websocket_gets_welcome_and_events(server):
    port = server.ports["comet"]
    admin = thrift_admin(server)
    admin.add_friend(jid("alice"), jid("bob"))
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(f"ws://127.0.0.1:{port}/ws/bob", timeout=5)
    assert refused.value.status_code == 401
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws/bob?token={token(server, 'bob')}",
                                     timeout=5)
    try:
        assert json.loads(ws.recv())["type"] == "welcome"
        admin.publish_np(jid("alice"), "Aphex Twin", "", "Xtal", 0, 0)
        event = json.loads(ws.recv())
        assert (event["type"], event["from"], event["title"]) == ("tune", "alice@localhost", "Xtal")
    finally:
        ws.close()


def test_heartbeats_keep_an_idle_stream_alive(server):
    stream = HTTPStream(server.ports["comet"], f"/stream/alice?token={token(server, 'alice')}")
    stream.wait_for("welcome")
    stream.wait(lambda body: body.count(b"\n") >= 3, timeout=5)   # blank heartbeat lines
    assert not stream.closed
    stream.close()


# --- fuzzing -------------------------------------------------------------------------------

SEEDS = [b"GET /stream/alice@localhost?token=abc HTTP/1.1\r\nHost: x\r\n\r\n",
         b"GET /poll/alice@localhost?since=3&token=%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n",
         b"GET /stream/bob HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
         b"Last-Event-ID: 7\r\n\r\n",
         b"GET /ws/carol HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
         b"POST /static/index.html HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
         b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
         b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]


@pytest.mark.fuzz
def test_fuzzed_requests_are_answered_never_an_error_of_the_server(server):
    rng = fuzz_rng(4321)
    port = server.ports["comet"]
    for _ in range(60 * FUZZ_SCALE):
        data = mutate(rng, rng.choice(SEEDS), edits=4)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            try:
                sock.sendall(data)
                sock.settimeout(0.1)
                sock.recv(65536)
            except OSError:
                pass
    assert http_get(port, "/health")[0] == 200
    assert not SERVER_ERRORS.search(server.log()), server.log()[-4000:]

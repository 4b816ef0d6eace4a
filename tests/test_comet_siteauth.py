"""Site-side stream authorization (``[comet] authorize_url``) with a real site: an HTTP
server in this process that answers by cookie and counts what it was asked."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import websocket

from tests.helpers import HTTPStream, free_port, http_get


class Site(BaseHTTPRequestHandler):
    """``session=alice`` is alice's browser; ``session=mallory`` is refused; ``slow``
    never answers in time."""

    asked: list = []  # the request headers (case-insensitive lookups)

    def do_GET(self) -> None:
        Site.asked.append(self.headers)
        cookie = self.headers.get("Cookie", "")
        if "session=alice" in cookie:
            body = json.dumps({"user": "alice"}).encode()
            self.send_response(200)
        elif "session=broken" in cookie:
            body = b"<html>oops</html>"
            self.send_response(200)
        else:
            body = b"{}"
            self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def site():
    Site.asked = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_the_site_names_the_user_of_a_stream_without_a_token(presenced_factory, site):
    server = presenced_factory({
        "comet": {"authorize_url": f"http://127.0.0.1:{site}/auth"},
        "xmpp": {"enabled": False}, "webadmin": {"enabled": False}})
    port = server.ports["comet"]
    stream = HTTPStream(port, "/stream/alice", {"Cookie": "session=alice; theme=dark",
                                                "User-Agent": "test-browser"})
    assert stream.status == 200
    assert stream.wait_for("welcome")[0]["user"] == "alice@localhost"
    asked = Site.asked[0]
    assert asked["Cookie"] == "session=alice; theme=dark"
    assert asked["X-Original-URI"] == "/stream/alice" and asked["User-Agent"] == "test-browser"
    # The same browser again: answered from the cache, the site is not asked twice.
    again = HTTPStream(port, "/stream/alice", {"Cookie": "session=alice; theme=dark"})
    assert again.wait_for("welcome") and len(Site.asked) == 1
    for s in (stream, again):
        s.close()
    # Alice's cookie does not open bob's stream; a refused cookie opens nothing.
    assert http_get(port, "/stream/bob", {"Cookie": "session=alice; theme=dark"})[0] == 403
    status, _, body = http_get(port, "/stream/alice", {"Cookie": "session=mallory"})
    assert status == 403 and b"does not allow" in body
    # A site answer that is not the agreed JSON is a 503, not a stream.
    assert http_get(port, "/stream/alice", {"Cookie": "session=broken"})[0] == 503
    # A token still works without asking the site.
    token = server.ctl("stream-token", "carol").stdout.strip()
    before = len(Site.asked)
    assert HTTPStream(port, f"/stream/carol?token={token}").wait_for("welcome")
    assert len(Site.asked) == before


def test_a_site_that_cannot_answer_means_503(presenced_factory):
    server = presenced_factory({
        "comet": {"authorize_url": f"http://127.0.0.1:{free_port()}/auth",
                  "authorize_timeout": 2.0},
        "xmpp": {"enabled": False}, "webadmin": {"enabled": False}})
    status, _, body = http_get(server.ports["comet"], "/poll/alice", {"Cookie": "session=a"})
    assert status == 503 and b"authorization" in body


# A site served by twisted.web in its own process: alice's cookie names alice, others are
# refused; it prints its port, then serves until the test closes its stdin.
TWISTED_SITE = r'''
import json, sys
from twisted.internet import reactor, stdio
from twisted.internet.protocol import Protocol
from twisted.web.resource import Resource
from twisted.web.server import Site

class Auth(Resource):
    isLeaf = True
    def render_GET(self, request):
        sys.stderr.write((request.getHeader(b"x-original-uri") or b"").decode() + "\n")
        sys.stderr.flush()
        request.setHeader(b"content-type", b"application/json")
        if b"session=alice" in (request.getHeader(b"cookie") or b""):
            return json.dumps({"user": "alice"}).encode()
        request.setResponseCode(403)
        return b"{}"

class Quit(Protocol):
    def connectionLost(self, reason):
        reactor.stop()

port = reactor.listenTCP(0, Site(Auth()), interface="127.0.0.1")
print(port.getHost().port, flush=True)
stdio.StandardIO(Quit())
reactor.run()
'''


@pytest.fixture
def twisted_site():
    proc = subprocess.Popen([sys.executable, "-c", TWISTED_SITE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc, int(proc.stdout.readline())
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def test_the_site_names_the_user_of_a_websocket_without_a_token(presenced_factory,
                                                                twisted_site):
    proc, site_port = twisted_site
    server = presenced_factory({
        "comet": {"authorize_url": f"http://127.0.0.1:{site_port}/auth"},
        "xmpp": {"enabled": False}, "webadmin": {"enabled": False}})
    url = f"ws://127.0.0.1:{server.ports['comet']}/ws/alice"
    for _ in range(2):  # the second upgrade is answered from the cache
        ws = websocket.create_connection(url, timeout=5, cookie="session=alice")
        try:
            assert json.loads(ws.recv())["user"] == "alice@localhost"
        finally:
            ws.close()
    # Alice's cookie does not open bob's socket; a refused cookie opens nothing.
    for path, cookie in (("/ws/bob", "session=alice"), ("/ws/alice", "session=mallory")):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(url.replace("/ws/alice", path), timeout=5,
                                        cookie=cookie)
        assert refused.value.status_code == 403
    proc.stdin.close()
    proc.wait(timeout=10)
    # Asked once for alice's two sockets, once for bob's path, once for mallory's cookie.
    assert proc.stderr.read().split() == ["/ws/alice", "/ws/bob", "/ws/alice"]


def test_a_websocket_is_refused_with_503_before_upgrade_when_the_site_is_down(
        presenced_factory):
    server = presenced_factory({
        "comet": {"authorize_url": f"http://127.0.0.1:{free_port()}/auth",
                  "authorize_timeout": 2.0},
        "xmpp": {"enabled": False}, "webadmin": {"enabled": False}})
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(f"ws://127.0.0.1:{server.ports['comet']}/ws/alice",
                                    timeout=5, cookie="session=alice")
    assert refused.value.status_code == 503

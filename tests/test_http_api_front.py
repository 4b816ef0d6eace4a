"""The web admin port's lean channel (presenced/webadmin/front.py) through a running server:
``/api`` requests answered on keep-alive and pipelined connections, errors with their
headers, a connection handed to twisted.web for the console (and for bodies the channel does
not read), the request deadline. The API's own behaviour is in test_http_api.py."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.helpers import HTTPStream

TIMEOUT = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.helpers import PresencedProcess

    process = PresencedProcess(tmp_path_factory.mktemp("front"), {
        "comet": {"require_token": False}, "xmpp": {"enabled": False},
        "webadmin": {"max_body_bytes": 4096}})
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def token(server) -> str:
    return server.ctl("api-token", "--scope", "publish").stdout.strip().splitlines()[-1]


def connect(server) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.ports["webadmin"]), timeout=TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def publish_request(path: str, body: bytes, token: str, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


class Responses:
    """Reads whole responses (head, Content-Length body) off one connection."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"connection closed; unread: {self.buf!r}")
        self.buf += data

    def next(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        status = int(lines[0].split()[1])
        if head_only:
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            return status, headers, self._chunks()
        return status, headers, self._take(int(headers.get("content-length", "0")))

    def _take(self, length: int) -> bytes:
        while len(self.buf) < length:
            self._fill()
        taken, self.buf = self.buf[:length], self.buf[length:]
        return taken

    def _chunks(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buf:
                self._fill()
            size, _, self.buf = self.buf.partition(b"\r\n")
            chunk = self._take(int(size, 16) + 2)[:-2]
            if not chunk:
                return body
            body += chunk

    def closed(self) -> bool:
        """The server closed the connection with nothing more to read."""
        try:
            return self.buf == b"" and self.sock.recv(1) == b""
        except ConnectionResetError:
            return True


def test_pipelined_publishes_on_one_connection_are_answered_and_delivered_in_order(
        server, token):
    stream = HTTPStream(server.ports["comet"], "/stream/piper")
    stream.wait_for("welcome")
    with connect(server) as s:
        s.sendall(b"".join(publish_request("/api/publish/piper?type=step",
                                           b'{"n": %d}' % n, token) for n in range(5)))
        answers = Responses(s)
        ids = []
        for _ in range(5):
            status, headers, body = answers.next()
            assert status == 200 and headers["content-type"] == "application/json"
            assert json.loads(body)["reached"] == 1
            ids.append(json.loads(body)["id"])
        assert ids == sorted(ids)
        s.sendall(publish_request("/api/publish/piper?type=step", b'{"n": 5}', token))
        assert answers.next()[0] == 200              # the connection stayed open
    events = stream.wait_for("step", count=6)
    assert [e["data"]["n"] for e in events] == list(range(6))
    stream.close()


def test_each_request_is_read_with_its_own_headers_when_the_previous_ones_repeat(
        server, token):
    """The channel reuses the previous request's headers only for the same header bytes: a
    token changed, dropped or given again on one connection is the one that counts."""
    with connect(server) as s:
        answers = Responses(s)
        body = b'{"n": 1}'
        s.sendall(publish_request("/api/publish/nobody-here", body, token))
        assert answers.next()[0] == 200
        s.sendall(publish_request("/api/publish/nobody-here", body, token + "x"))
        assert answers.next()[0] == 401
        s.sendall(b"POST /api/publish/nobody-here HTTP/1.1\r\nHost: t\r\n"
                  b"Content-Length: 8\r\n\r\n" + body)
        assert answers.next()[0] == 401
        s.sendall(publish_request("/api/publish/nobody-here", body, token))
        assert answers.next()[0] == 200
        s.sendall(publish_request("/api/publish/nobody-here", body, token,
                                  "Connection: close\r\n"))
        assert answers.next()[1]["connection"] == "close" and answers.closed()


def test_a_body_json_reads_but_orjson_refuses_is_still_the_event_data(server, token):
    """Bodies are decoded by orjson, and by json.loads when orjson refuses them: an
    integer past 64 bits and a UTF-16 body stay JSON objects, not ``{"text": ...}``."""
    stream = HTTPStream(server.ports["comet"], "/stream/bigint")
    stream.wait_for("welcome")
    with connect(server) as s:
        answers = Responses(s)
        s.sendall(publish_request("/api/publish/bigint?type=big", b'{"n": %d}' % 2 ** 70,
                                  token))
        assert answers.next()[0] == 200
        s.sendall(publish_request("/api/publish/bigint?type=big",
                                  '{"n": "\u00e9t\u00e9"}'.encode("utf-16"), token))
        assert answers.next()[0] == 200
    events = stream.wait_for("big", count=2)
    assert [e["data"] for e in events] == [{"n": 2 ** 70}, {"n": "\u00e9t\u00e9"}]
    stream.close()


def test_errors_keep_their_status_and_headers_and_the_connection(server, token):
    with connect(server) as s:
        answers = Responses(s)
        s.sendall(b"POST /api/publish/x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        status, headers, body = answers.next()
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert json.loads(body)["error"] == "Unauthorized"
        s.sendall(publish_request("/api/nothing-here", b"{}", token))
        status, _, body = answers.next()
        assert status == 404 and json.loads(body)["error"] == "NotFound"
        s.sendall(publish_request("/api/publish/bad%20user@@x", b"{}", token))
        assert answers.next()[0] == 400
        s.sendall(b"HEAD /api/openapi.json HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = answers.next(head_only=True)
        assert status == 200 and int(headers["content-length"]) > 1000 and body == b""
        s.sendall(publish_request("/api/publish/closer", b"{}", token, "Connection: close\r\n"))
        status, headers, _ = answers.next()
        assert status == 200 and headers["connection"] == "close"
        assert answers.closed()


def test_a_bad_content_length_or_a_body_past_the_limit_closes_the_connection(server, token):
    with connect(server) as s:
        s.sendall(b"POST /api/publish/x HTTP/1.1\r\nHost: t\r\nContent-Length: ten\r\n\r\n")
        answers = Responses(s)
        status, _, body = answers.next()
        assert status == 400 and answers.closed()
        assert json.loads(body) == {"error": "BadRequest",
                                    "message": "Content-Length must be a number"}
    with connect(server) as s:
        s.sendall(publish_request("/api/publish/x", b"", token).replace(
            b"Content-Length: 0", b"Content-Length: 4097"))
        answers = Responses(s)
        status, _, body = answers.next()
        assert status == 413 and json.loads(body)["error"] == "RequestTooLarge"
        assert answers.closed()


def test_the_console_after_an_api_call_is_served_by_twisted_web_on_the_same_connection(
        server, token):
    with connect(server) as s:
        answers = Responses(s)
        s.sendall(publish_request("/api/publish/visitor", b"{}", token))
        assert answers.next()[0] == 200
        s.sendall(b"GET /login HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = answers.next()
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b"<form" in body
        s.sendall(publish_request("/api/publish/visitor", b"{}", token))  # twisted.web's now
        status, _, body = answers.next()
        assert status == 200 and set(json.loads(body)) == {"id", "reached"}


@pytest.mark.parametrize("framing", ["chunked", "expect-100-continue"])
def test_bodies_the_channel_does_not_read_are_handed_to_twisted_web(server, token, framing):
    stream = HTTPStream(server.ports["comet"], "/stream/framer")
    stream.wait_for("welcome")
    body = b'{"how": "%s"}' % framing.encode()
    with connect(server) as s:
        answers = Responses(s)
        head = (f"POST /api/publish/framer HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
                f"{token}\r\n").encode()
        if framing == "chunked":
            s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                      % (len(body), body))
        else:
            s.sendall(head + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
            assert answers.next(head_only=True)[0] == 100
            s.sendall(body)
        status, _, answer = answers.next()
        assert status == 200 and json.loads(answer)["reached"] == 1
    assert stream.wait_for("event")[0]["data"] == {"how": framing}
    stream.close()


def test_an_api_request_not_in_by_the_deadline_gets_408_an_idle_one_is_closed(
        presenced_factory):
    server = presenced_factory({"webadmin": {"request_timeout": 1.0},
                                "xmpp": {"enabled": False}, "comet": {"enabled": False}})
    with connect(server) as slow, connect(server) as idle:
        started = time.monotonic()
        slow.sendall(b"POST /api/publish/x HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n{")
        answers = Responses(slow)
        assert answers.next()[0] == 408 and answers.closed()
        assert time.monotonic() - started >= 0.9
        assert Responses(idle).closed()

"""XMPP for web clients on the HTTP door: WebSocket (RFC 7395) and BOSH (XEP-0124/0206)
with raw clients, host-meta (XEP-0156); the TCP peers are raw streams on the same server.
The framing helpers are tested without a process."""

from __future__ import annotations

import base64
import json
import re
import socket
import time

import pytest
import websocket

from twisted.web.test.requesthelper import DummyRequest

from presenced.xmpp.hostmeta import ConnectionLinks
from presenced.xmpp.websocket import FramingError, framing_element
from presenced.xmpp.webstream import qualified, stream_header
from tests.helpers import PresencedProcess, RawClient, http_get

USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "gina", "hank", "ivan", "judy"]
OPEN = ("<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>")
CLOSE = "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"
ALLOWED = "http://pages.example"
EMPTY = "<body xmlns='http://jabber.org/protocol/httpbind'/>"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = PresencedProcess(tmp_path_factory.mktemp("web"), {
        "webadmin": {"enabled": False}, "thrift": {"enabled": False},
        "server": {"scram_iterations": 1000},
        "comet": {"cors_origins": [ALLOWED]},
        "xmpp": {"allow_plain": True, "require_tls": False, "auth_failure_delay": 0.1,
                 "bosh_max_wait": 3.0, "bosh_inactivity": 2.0}})
    process.start()
    process.ctl("import-users", "-", "--quiet",
                input="".join(f"{user}@localhost {user}-pw\n" for user in USERS))
    process.ctl("add-friend", "alice@localhost", "bob@localhost")
    process.ctl("add-friend", "carol@localhost", "dave@localhost")
    process.ctl("add-friend", "erin@localhost", "frank@localhost")
    process.ctl("add-friend", "gina@localhost", "hank@localhost")
    process.ctl("add-friend", "ivan@localhost", "judy@localhost")
    yield process
    process.stop()


class WebSocketClient:
    """A raw RFC 7395 client: one text message per element."""

    def __init__(self, server: PresencedProcess, **options):
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{server.ports['comet']}/xmpp-websocket", timeout=10,
            subprotocols=["xmpp"], **options)

    def send(self, text: str) -> None:
        self.ws.send(text)

    def recv(self) -> str:
        return self.ws.recv()

    def until(self, pattern: str) -> list[str]:
        """Messages up to the first that matches ``pattern``."""
        seen = []
        while True:
            message = self.recv()
            seen.append(message)
            if re.search(pattern, message):
                return seen

    def login(self, user: str, resource: str = "web") -> str:
        self.send(OPEN)
        assert self.recv().startswith("<open ")
        features = self.recv()
        assert "PLAIN" in features and "starttls" not in features
        token = base64.b64encode(f"\0{user}\0{user.split('@')[0]}-pw".encode()).decode()
        self.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}"
                  "</auth>")
        assert self.recv().startswith("<success")
        self.send(OPEN)
        assert self.recv().startswith("<open ")
        assert "xmpp-bind" in self.recv()
        self.send("<iq xmlns='jabber:client' type='set' id='b'>"
                  "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  f"<resource>{resource}</resource></bind></iq>")
        return self.recv()


def tcp_login(server: PresencedProcess, user: str) -> RawClient:
    client = RawClient(server.ports["xmpp"])
    client.login(user, f"{user.split('@')[0]}-pw")
    client.send(b"<presence/>")
    return client


def test_websocket_login_presence_and_chat_with_a_tcp_client(server):
    bob = tcp_login(server, "bob@localhost")
    bob.read_until(b"<presence[^>]*from=.bob@localhost/raw")
    web = WebSocketClient(server)
    assert web.ws.subprotocol == "xmpp"
    bound = web.login("alice@localhost")
    assert bound.startswith("<iq xmlns='jabber:client'") and "alice@localhost/web" in bound
    web.send("<presence xmlns='jabber:client'/>")
    presence = web.until("from=.bob@localhost/raw")[-1]
    assert presence.startswith("<presence xmlns='jabber:client'")
    bob.read_until(b"<presence[^>]*from=.alice@localhost/web")

    bob.send(b"<message to='alice@localhost' type='chat'><body>over tcp</body></message>")
    message = web.until("over tcp")[-1]
    assert message.startswith("<message xmlns='jabber:client'")
    web.send("<message xmlns='jabber:client' to='bob@localhost' type='chat'>"
             "<body>over websocket</body></message>")
    bob.read_until(b"over websocket")

    web.send(CLOSE)
    assert web.until("<close ")[-1] == CLOSE
    bob.read_until(b"<presence[^>]*from=.alice@localhost/web[^>]*type=.unavailable")
    bob.close()


def test_a_websocket_killed_mid_stream_is_a_lost_connection(server):
    """The socket dies with half a stanza sent: the friend sees the resource go, and the
    account logs in again at once."""
    dave = tcp_login(server, "dave@localhost")
    dave.read_until(b"<presence[^>]*from=.dave@localhost/raw")
    web = WebSocketClient(server)
    web.login("carol@localhost")
    web.send("<presence xmlns='jabber:client'/>")
    dave.read_until(b"<presence[^>]*from=.carol@localhost/web")
    web.ws.sock.sendall(b"\x81\xfe\x01\x00" + b"\0\0\0\0" + b"<message><bo")  # half a frame
    web.ws.sock.shutdown(socket.SHUT_RDWR)
    web.ws.sock.close()
    dave.read_until(b"<presence[^>]*from=.carol@localhost/web[^>]*type=.unavailable")
    again = WebSocketClient(server)
    assert "carol@localhost/web" in again.login("carol@localhost")
    dave.close()


def test_stream_management_resumes_a_websocket_session_on_a_new_websocket(server):
    """XEP-0198 over WebSocket: the socket dies, a message waits, a new WebSocket resumes
    the session and gets it."""
    judy = tcp_login(server, "judy@localhost")
    web = WebSocketClient(server)
    web.login("ivan@localhost", "sm")
    web.send("<enable xmlns='urn:xmpp:sm:3' resume='true'/>")
    enabled = web.until("<enabled ")[-1]
    previd = re.search(r"id='([^']+)'", enabled).group(1)
    web.send("<presence xmlns='jabber:client'/>")
    judy.read_until(b"<presence[^>]*from=.ivan@localhost/sm")
    web.ws.sock.shutdown(socket.SHUT_RDWR)
    web.ws.sock.close()
    judy.send(b"<message to='ivan@localhost/sm' type='chat'><body>while away</body></message>")
    again = WebSocketClient(server)
    again.send(OPEN)
    again.recv(), again.recv()
    token = base64.b64encode(b"\0ivan@localhost\0ivan-pw").decode()
    again.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}"
               "</auth>")
    assert again.recv().startswith("<success")
    again.send(OPEN)
    again.recv(), again.recv()
    again.send(f"<resume xmlns='urn:xmpp:sm:3' previd='{previd}' h='0'/>")
    seen = again.until("while away")
    assert any(m.startswith("<resumed ") for m in seen)
    judy.close()


def test_a_message_with_half_a_stanza_ends_the_session_with_a_stream_error(server):
    web = WebSocketClient(server)
    web.login("alice@localhost", "half")
    web.send("<message xmlns='jabber:client' to='bob@localhost'><body>")
    seen = web.until("<close ")
    assert "not-well-formed" in seen[-2] and "xmlns:stream=" in seen[-2]


def test_binary_messages_and_foreign_framing_are_stream_errors(server):
    web = WebSocketClient(server)
    web.send(OPEN)
    web.recv(), web.recv()
    web.ws.send_binary(b"<presence/>")
    assert "bad-format" in web.until("<close ")[-2]
    other = WebSocketClient(server)
    other.send("<open xmlns='urn:example' to='localhost' version='1.0'/>")
    assert "invalid-namespace" in other.until("<close ")[-2]


def test_websocket_origin_and_subprotocol_are_checked(server):
    base = f"ws://127.0.0.1:{server.ports['comet']}/xmpp-websocket"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(base, subprotocols=["xmpp"], origin="http://evil.example")
    assert refused.value.status_code == 403
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(base, origin=ALLOWED)
    assert refused.value.status_code == 400
    allowed = WebSocketClient(server, origin=ALLOWED)
    allowed.send(OPEN)
    assert allowed.recv().startswith("<open ")


class BoshClient:
    """A raw BOSH client: each request a POST of its own, answered on its connection."""

    def __init__(self, server: PresencedProcess, rid: int = 1000):
        self.port = server.ports["comet"]
        self.rid = rid
        self.sid = None

    def post(self, body: str, headers: dict[str, str] | None = None) -> socket.socket:
        data = body.encode("utf-8")
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        lines = ["POST /http-bind HTTP/1.1", "Host: test", "Content-Type: text/xml",
                 f"Content-Length: {len(data)}"] + [f"{k}: {v}" for k, v in
                                                    (headers or {}).items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
        return sock

    @staticmethod
    def answer(sock: socket.socket) -> tuple[int, str]:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode("utf-8")

    def body(self, inner: str = "", rid: int | None = None, **attrs: str) -> str:
        if rid is None:
            self.rid += 1
            rid = self.rid
        extra = "".join(f" {k.replace('_', ':')}='{v}'" for k, v in attrs.items())
        sid = f" sid='{self.sid}'" if self.sid else ""
        return (f"<body xmlns='http://jabber.org/protocol/httpbind' "
                f"xmlns:xmpp='urn:xmpp:xbosh' rid='{rid}'{sid}{extra}>{inner}</body>")

    def request(self, inner: str = "", **attrs: str) -> str:
        status, body = self.answer(self.post(self.body(inner, **attrs)))
        assert status == 200, body
        return body

    def until(self, pattern: str, inner: str = "") -> str:
        """Requests (the first with ``inner``; then empty ones, held until something comes
        or ``wait``) until an answer matches."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            body = self.request(inner)
            inner = ""
            if re.search(pattern, body):
                return body
        raise TimeoutError(pattern)

    def login(self, user: str, resource: str = "bosh") -> str:
        created = self.request(to="localhost", wait="3", hold="1", xmpp_version="1.0")
        self.sid = re.search(r"sid='([^']+)'", created).group(1)
        if "PLAIN" not in created:
            created = self.until("PLAIN")
        assert "starttls" not in created
        token = base64.b64encode(f"\0{user}\0{user.split('@')[0]}-pw".encode()).decode()
        assert "<success" in self.request(
            f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>")
        assert "xmpp-bind" in self.request(xmpp_restart="true", to="localhost")
        return self.request("<iq xmlns='jabber:client' type='set' id='b'>"
                            "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                            f"<resource>{resource}</resource></bind></iq>")


def test_bosh_login_presence_chat_and_terminate(server):
    bob = tcp_login(server, "frank@localhost")
    bob.read_until(b"<presence[^>]*from=.frank@localhost/raw")
    web = BoshClient(server)
    bound = web.login("erin@localhost")
    assert "<iq xmlns='jabber:client'" in bound and "erin@localhost/bosh" in bound
    assert "<presence xmlns='jabber:client'" in web.until("frank@localhost/raw",
                                                         "<presence xmlns='jabber:client'/>")
    bob.read_until(b"<presence[^>]*from=.erin@localhost/bosh")

    held = web.post(web.body())          # waits for something to say
    bob.send(b"<message to='erin@localhost' type='chat'><body>to bosh</body></message>")
    status, body = web.answer(held)
    assert status == 200 and "<message xmlns='jabber:client'" in body and "to bosh" in body
    web.request("<message xmlns='jabber:client' to='frank@localhost' type='chat'>"
                "<body>from bosh</body></message>")
    bob.read_until(b"from bosh")

    ended = web.request("<presence xmlns='jabber:client' type='unavailable'/>",
                        type="terminate")
    assert "type='terminate'" in ended
    bob.read_until(b"<presence[^>]*from=.erin@localhost/bosh[^>]*type=.unavailable")
    assert "item-not-found" in web.answer(web.post(web.body()))[1]
    bob.close()


def test_bosh_rid_replay_order_and_window(server):
    web = BoshClient(server)
    web.login("gina@localhost")
    # An answer lost on the way is sent again, the same, for the same rid.
    first = web.request("<iq xmlns='jabber:client' type='get' id='p1'>"
                        "<ping xmlns='urn:xmpp:ping'/></iq>")
    assert "id='p1'" in first
    assert web.answer(web.post(web.body(rid=web.rid)))[1] == first
    # A request that comes early waits for the one before it.
    later = web.post(web.body("<iq xmlns='jabber:client' type='get' id='p3'>"
                              "<ping xmlns='urn:xmpp:ping'/></iq>", rid=web.rid + 2))
    status, body = web.answer(web.post(web.body(
        "<iq xmlns='jabber:client' type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")))
    assert body.index("id='p2'") < body.index("id='p3'")
    web.rid += 1
    # A held request whose connection died is sent again and gets the answer.
    held = web.post(web.body())
    assert web.answer(later)[1] == EMPTY        # hold = 1: the new one is held instead
    held.close()
    again = web.post(web.body(rid=web.rid))
    hank = tcp_login(server, "hank@localhost")
    hank.send(b"<message to='gina@localhost/bosh' type='chat'><body>after the loss</body></message>")
    assert "after the loss" in web.answer(again)[1]
    # Out of the window: the session ends.
    status, body = web.answer(web.post(web.body(rid=web.rid + 10)))
    assert "item-not-found" in body and "type='terminate'" in body
    assert "item-not-found" in web.answer(web.post(web.body()))[1]
    hank.close()


def test_bosh_inactivity_ends_the_session(server):
    dave = tcp_login(server, "dave@localhost")
    dave.read_until(b"<presence[^>]*from=.dave@localhost/raw")
    web = BoshClient(server)
    web.login("carol@localhost", "idle")
    web.request("<presence xmlns='jabber:client'/>")
    dave.read_until(b"<presence[^>]*from=.carol@localhost/idle")
    started = time.monotonic()
    dave.read_until(b"<presence[^>]*from=.carol@localhost/idle[^>]*type=.unavailable")
    assert time.monotonic() - started >= 1.5      # bosh_inactivity = 2
    dave.close()


def test_bosh_bad_bodies_and_unknown_sessions(server):
    web = BoshClient(server)
    status, body = web.answer(web.post("<body xmlns='urn:other' rid='1'/>"))
    assert status == 400 and "bad-request" in body
    status, body = web.answer(web.post("not xml"))
    assert status == 400
    web.sid = "nope"
    status, body = web.answer(web.post(web.body()))
    assert status == 404 and "item-not-found" in body
    web.sid = None
    assert "host-unknown" in web.request(to="elsewhere.example")
    status, body = web.answer(web.post(web.body(to="localhost"),
                                       {"Origin": "http://evil.example"}))
    assert status == 403
    legacy = web.request(to="localhost", wait="3", hold="1")     # no xmpp:version
    assert "remote-stream-error" in legacy and "unsupported-version" in legacy
    created = web.request(to="localhost", wait="3", hold="1", xmpp_version="1.0")
    web.sid = re.search(r"sid='([^']+)'", created).group(1)
    ended = web.request("<message xmlns='jabber:client'><body>half")
    assert "condition='remote-stream-error'" in ended and "not-well-formed" in ended


def test_bosh_hold_answers_the_older_request_empty(server):
    web = BoshClient(server)
    web.login("alice@localhost", "hold")
    first = web.post(web.body())
    second = web.post(web.body())
    assert web.answer(first)[1] == EMPTY
    assert web.answer(second)[1] == EMPTY       # after bosh_max_wait


def test_host_meta_names_both_urls(server):
    port = server.ports["comet"]
    status, headers, body = http_get(port, "/.well-known/host-meta.json")
    assert status == 200
    links = {link["rel"]: link["href"] for link in json.loads(body)["links"]}
    assert links["urn:xmpp:alt-connections:websocket"] == "ws://test/xmpp-websocket"
    assert links["urn:xmpp:alt-connections:xbosh"] == "http://test/http-bind"
    assert headers["access-control-allow-origin"] == "*"
    status, headers, body = http_get(port, "/.well-known/host-meta")
    assert status == 200 and headers["content-type"].startswith("application/xrd+xml")
    assert b"<Link rel=\"urn:xmpp:alt-connections:websocket\" href=\"ws://test/xmpp-websocket\"/>" in body


def test_host_meta_behind_a_proxy_names_the_public_urls():
    request = DummyRequest([b"host-meta"])
    request.requestHeaders.setRawHeaders(b"host", [b"127.0.0.1:8000"])
    links = ConnectionLinks("https://chat.example/", websocket=True, bosh=True)
    assert links.links(request) == [
        ("urn:xmpp:alt-connections:websocket", "wss://chat.example/xmpp-websocket"),
        ("urn:xmpp:alt-connections:xbosh", "https://chat.example/http-bind")]


# --- framing, without a process --------------------------------------------------------------

def test_stanzas_get_their_namespace_once():
    assert qualified(b"<iq type='result' id='1'/>") == (
        b"<iq xmlns='jabber:client' type='result' id='1'/>")
    assert qualified(b"<presence/>") == b"<presence xmlns='jabber:client'/>"
    assert qualified(b"<message xmlns='jabber:client'><body>a</body></message>") == (
        b"<message xmlns='jabber:client'><body>a</body></message>")
    assert qualified(b"<a xmlns='urn:xmpp:sm:3' h='1'/>") == b"<a xmlns='urn:xmpp:sm:3' h='1'/>"


def test_open_becomes_a_stream_header():
    element = framing_element(b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' "
                              b"to='local&amp;host' version='1.0'/>")
    assert stream_header(element.getAttribute("to"), element.getAttribute("version")) == (
        b"<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'"
        b" to=\"local&amp;host\" version=\"1.0\">")
    assert framing_element(b"<message/>") is None
    with pytest.raises(FramingError):
        framing_element(b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing'><!-- x --></open>")


def test_a_body_past_max_body_bytes_is_refused_unread(server):
    web = BoshClient(server)
    sock = socket.create_connection(("127.0.0.1", web.port), timeout=10)
    sock.sendall(b"POST /http-bind HTTP/1.1\r\nHost: test\r\nContent-Length: 100000000\r\n\r\n"
                 + b"<" * 1000)
    status, body = web.answer(sock)
    assert status == 413 and "too large" in body

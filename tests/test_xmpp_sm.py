"""Stream management (XEP-0198) against a real presenced, over raw sockets: enable and acks,
resumption after a dead connection (every unacknowledged message exactly once, no
unavailable presence seen by contacts), the resumption timeout (messages kept offline), the
bound on unacknowledged stanzas, and sessions that end at once (clean close, rebind)."""

from __future__ import annotations

import base64
import re
import socket
import time
import xml.etree.ElementTree as ET
from typing import Callable, Optional

import pytest

from tests.helpers import HEADER, OTHER_DOORS_OFF, PresencedProcess

SM = "urn:xmpp:sm:3"
CLIENT = "jabber:client"
STREAMS = "http://etherx.jabber.org/streams"
MAX_UNACKED = 20
PRIMER = (b"<stream:stream xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams'>")


class SmClient:
    """A raw XMPP client that parses what it receives and counts stanzas for ``h`` as a
    stream management client does (from ``<enabled/>`` or ``<resumed/>`` on)."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        self.parser: Optional[ET.XMLPullParser] = None
        self.depth = 0
        self.elements: list[ET.Element] = []  # top-level elements, in order
        self.counting = False
        self.handled = 0
        self.closed = False
        self.features = b""

    # --- negotiation (regular expressions on raw bytes) -------------------------------------

    def _read_until(self, pattern: bytes) -> bytes:
        regex = re.compile(pattern, re.S)
        while not regex.search(self.buffer):
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(self.buffer)
            self.buffer += data
        match = regex.search(self.buffer)
        out, self.buffer = self.buffer[:match.end()], self.buffer[match.end():]
        return out

    def authenticate(self, user: str, password: str = "pw") -> bytes:
        """Stream, SASL PLAIN, restart; returns the features of the authenticated stream.
        From here on everything received is parsed."""
        self.sock.sendall(HEADER)
        self.features = self._read_until(b"</stream:features>")
        token = base64.b64encode(f"\0{user}\0{password}".encode())
        self.sock.sendall(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' "
                          b"mechanism='PLAIN'>%s</auth>" % token)
        self._read_until(b"<success[^>]*(/>|>.*?</success>)")
        self.sock.sendall(HEADER)
        features = self._read_until(b"</stream:features>")
        self.parser = ET.XMLPullParser(["start", "end"])
        self.parser.feed(PRIMER)
        self._events()
        self._feed(self.buffer)
        return features

    def bind(self, resource: str) -> None:
        self.send(b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  b"<resource>%s</resource></bind></iq>" % resource.encode())
        self.wait(lambda: self.find(f"{{{CLIENT}}}iq", id="bind"))

    def login(self, user: str, resource: str, presence: bool = True) -> None:
        self.authenticate(user)
        self.bind(resource)
        if presence:
            self.send(b"<presence/>")

    # --- parsed input -----------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self.parser.feed(data)
        self._events()

    def _events(self) -> None:
        for event, element in self.parser.read_events():
            if event == "start":
                self.depth += 1
                continue
            self.depth -= 1
            if self.depth != 1:
                continue
            self.elements.append(element)
            if element.tag in (f"{{{SM}}}enabled", f"{{{SM}}}resumed"):
                self.counting = True
            elif self.counting and element.tag.startswith(f"{{{CLIENT}}}"):
                self.handled += 1

    def wait(self, predicate: Callable[[], object], timeout: float = 10.0):
        """Read until ``predicate()`` is true; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value is not None and value is not False:  # an empty Element is falsy
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed:
                raise TimeoutError(f"waited in vain; got {[e.tag for e in self.elements]}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
            else:
                self._feed(data)

    def find(self, *tags: str, **attributes: str) -> Optional[ET.Element]:
        """The first element received with one of ``tags`` and ``attributes``."""
        for element in self.elements:
            if element.tag in tags and all(element.get(k) == v for k, v in attributes.items()):
                return element
        return None

    def bodies(self) -> list[str]:
        return [e.findtext(f"{{{CLIENT}}}body") for e in self.elements
                if e.tag == f"{{{CLIENT}}}message" and e.find(f"{{{CLIENT}}}body") is not None]

    def stream_error(self) -> Optional[str]:
        error = self.find(f"{{{STREAMS}}}error")
        if error is None:
            return None
        return next(child.tag.partition("}")[2] for child in error)

    # --- output -----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def enable(self, resume: bool = True, max_seconds: Optional[int] = None) -> ET.Element:
        extra = b" max='%d'" % max_seconds if max_seconds is not None else b""
        self.send(b"<enable xmlns='urn:xmpp:sm:3'%s%s/>" % (
            b" resume='true'" if resume else b"", extra))
        return self.wait(lambda: self.find(f"{{{SM}}}enabled", f"{{{SM}}}failed"))

    def ack(self) -> None:
        self.send(b"<a xmlns='urn:xmpp:sm:3' h='%d'/>" % self.handled)

    def chat(self, to: str, body: str) -> None:
        self.send(b"<message to='%s' type='chat'><body>%s</body></message>"
                  % (to.encode(), body.encode()))

    def kill(self) -> None:
        """The connection dies: no ``</stream>``."""
        self.sock.close()


def unavailable_from(client: SmClient, full: str) -> bool:
    return any(e.tag == f"{{{CLIENT}}}presence" and e.get("type") == "unavailable"
               and e.get("from") == full for e in client.elements)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = PresencedProcess(tmp_path_factory.mktemp("xmpp-sm"), {
        **OTHER_DOORS_OFF, "server": {"scram_iterations": 64},
        "xmpp": {"require_tls": False, "allow_plain": True, "auth_failure_delay": 0.0,
                 "hibernate_after": 0.3, "resume_timeout": 60,
                 "sm_max_unacked": MAX_UNACKED}})
    process.start()
    for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
        process.ctl("adduser", f"{user}@localhost", "--password", "pw")
    for a, b in (("alice", "bob"), ("carol", "dave"), ("erin", "frank")):
        process.ctl("add-friend", f"{a}@localhost", f"{b}@localhost")
    yield process
    process.stop()


def connect(server: PresencedProcess) -> SmClient:
    return SmClient(server.ports["xmpp"])


def pair(server: PresencedProcess, user: str, contact: str,
         max_seconds: Optional[int] = None) -> tuple[SmClient, SmClient, ET.Element]:
    """``user`` (stream management with resumption) and ``contact``, online and friends."""
    peer = connect(server)
    peer.login(f"{contact}@localhost", "pc")
    client = connect(server)
    client.login(f"{user}@localhost", "phone", presence=False)
    enabled = client.enable(max_seconds=max_seconds)
    client.send(b"<presence/>")
    peer.wait(lambda: peer.find(f"{{{CLIENT}}}presence", **{"from": f"{user}@localhost/phone"}))
    return client, peer, enabled


def test_enable_is_offered_after_authentication_and_counts_both_ways(server):
    client = connect(server)
    features = client.authenticate("alice@localhost")
    assert b"urn:xmpp:sm:3" not in client.features  # not before authentication
    assert b"<sm xmlns='urn:xmpp:sm:3'/>" in features
    client.bind("acks")
    client.send(b"<iq type='get' id='before'><ping xmlns='urn:xmpp:ping'/></iq>")
    client.wait(lambda: client.find(f"{{{CLIENT}}}iq", id="before"))
    enabled = client.enable()
    assert enabled.tag == f"{{{SM}}}enabled"
    assert enabled.get("resume") == "true" and enabled.get("max") == "60" and enabled.get("id")
    client.send(b"<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>"
                b"<iq type='get' id='p2'><ping xmlns='urn:xmpp:ping'/></iq>")
    client.wait(lambda: client.find(f"{{{CLIENT}}}iq", id="p2"))
    time.sleep(1.0)  # idle past hibernate_after: the parser is dropped, the counts are not
    client.send(b"<r xmlns='urn:xmpp:sm:3'/>")
    answer = client.wait(lambda: client.find(f"{{{SM}}}a"))
    assert answer.get("h") == "2"  # the two pings after <enable/>, not the one before
    client.send(b"<enable xmlns='urn:xmpp:sm:3'/>")
    client.wait(lambda: client.find(f"{{{SM}}}failed"))
    client.send(b"<a xmlns='urn:xmpp:sm:3' h='%d'/>" % (client.handled + 5))
    client.wait(lambda: client.stream_error())
    assert client.stream_error() == "undefined-condition"


def test_the_server_requests_acks_and_acked_stanzas_are_forgotten(server):
    client, peer, _ = pair(server, "erin", "frank")
    for i in range(3 * MAX_UNACKED):  # far more than the bound: only acks keep it open
        peer.chat("erin@localhost", f"e{i}")
        if i % 4 == 3:
            client.wait(lambda: len(client.bodies()) == i + 1)
            client.ack()
    client.wait(lambda: len(client.bodies()) == 3 * MAX_UNACKED)
    requests = [e for e in client.elements if e.tag == f"{{{SM}}}r"]
    assert requests, "the server never asked for an acknowledgement"
    assert client.stream_error() is None and not client.closed
    client.send(b"</stream:stream>")


def test_a_dead_connection_is_resumed_with_every_unacknowledged_message_once(server):
    alice, bob, enabled = pair(server, "alice", "bob")
    bob.chat("alice@localhost", "m1")
    alice.wait(lambda: "m1" in alice.bodies())
    alice.ack()
    bob.chat("alice@localhost", "m2")
    alice.wait(lambda: "m2" in alice.bodies())  # handled, but not acknowledged
    alice.kill()
    time.sleep(0.5)
    bob.chat("alice@localhost", "m3")
    bob.chat("alice@localhost", "m4")
    bob.send(b"<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
    bob.wait(lambda: bob.find(f"{{{CLIENT}}}iq", id="sync"))

    again = connect(server)
    again.authenticate("alice@localhost")
    again.handled = alice.handled
    again.send(b"<resume xmlns='urn:xmpp:sm:3' previd='%s' h='%d'/>"
               % (enabled.get("id").encode(), alice.handled))
    resumed = again.wait(lambda: again.find(f"{{{SM}}}resumed"))
    assert resumed.get("previd") == enabled.get("id")
    again.wait(lambda: "m4" in again.bodies())
    bob.chat("alice@localhost", "m5")
    again.wait(lambda: "m5" in again.bodies())
    time.sleep(0.3)
    assert again.bodies() == ["m3", "m4", "m5"]  # m1, m2 were handled: not sent again
    assert not unavailable_from(bob, "alice@localhost/phone")
    again.send(b"<r xmlns='urn:xmpp:sm:3'/>")
    # Handled from the client across both connections: its presence (<a/> is no stanza).
    assert again.wait(lambda: again.find(f"{{{SM}}}a")).get("h") == "1"
    # A previd that is not (or no longer) a session here.
    other = connect(server)
    other.authenticate("alice@localhost")
    other.send(b"<resume xmlns='urn:xmpp:sm:3' previd='nope' h='0'/>")
    failed = other.wait(lambda: other.find(f"{{{SM}}}failed"))
    assert failed.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None
    other.bind("laptop")  # the stream is still good for a bind
    # The resumed session ends cleanly: at once, and it cannot be resumed again.
    again.ack()
    again.send(b"</stream:stream>")
    bob.wait(lambda: unavailable_from(bob, "alice@localhost/phone"), timeout=3)
    late = connect(server)
    late.authenticate("alice@localhost")
    late.send(b"<resume xmlns='urn:xmpp:sm:3' previd='%s' h='0'/>" % enabled.get("id").encode())
    late.wait(lambda: late.find(f"{{{SM}}}failed"))


def test_resuming_a_half_open_connection_closes_the_old_one(server):
    carol, dave, enabled = pair(server, "carol", "dave")
    dave.chat("carol@localhost", "hello")
    carol.wait(lambda: "hello" in carol.bodies())
    again = connect(server)
    again.authenticate("carol@localhost")
    again.send(b"<resume xmlns='urn:xmpp:sm:3' previd='%s' h='0'/>"
               % enabled.get("id").encode())
    again.wait(lambda: again.find(f"{{{SM}}}resumed"))
    again.wait(lambda: "hello" in again.bodies())  # h=0: everything is sent again
    carol.wait(lambda: carol.closed)
    assert carol.stream_error() == "conflict"
    assert not unavailable_from(dave, "carol@localhost/phone")
    # A rebind of the resource ends a session at once (no resumption wait).
    again.kill()
    time.sleep(0.3)
    rebound = connect(server)
    rebound.login("carol@localhost", "phone")
    dave.wait(lambda: unavailable_from(dave, "carol@localhost/phone"), timeout=3)
    later = connect(server)
    later.authenticate("carol@localhost")
    later.send(b"<resume xmlns='urn:xmpp:sm:3' previd='%s' h='0'/>"
               % enabled.get("id").encode())
    later.wait(lambda: later.find(f"{{{SM}}}failed"))


def test_after_the_timeout_the_session_ends_and_unacked_messages_wait_offline(server):
    alice, bob, enabled = pair(server, "alice", "bob", max_seconds=1)
    assert enabled.get("max") == "1"  # the client asked for less than the server's 60
    bob.chat("alice@localhost", "t1")
    alice.wait(lambda: "t1" in alice.bodies())  # never acknowledged
    alice.kill()
    time.sleep(0.3)
    bob.chat("alice@localhost", "t2")
    assert not unavailable_from(bob, "alice@localhost/phone")
    bob.wait(lambda: unavailable_from(bob, "alice@localhost/phone"), timeout=5)
    again = connect(server)
    again.authenticate("alice@localhost")
    again.send(b"<resume xmlns='urn:xmpp:sm:3' previd='%s' h='%d'/>"
               % (enabled.get("id").encode(), alice.handled))
    failed = again.wait(lambda: again.find(f"{{{SM}}}failed"))
    assert failed.find("{urn:ietf:params:xml:ns:xmpp-stanzas}item-not-found") is not None
    again.bind("phone")
    again.send(b"<presence/>")
    again.wait(lambda: "t2" in again.bodies())
    time.sleep(0.3)
    assert sorted(again.bodies()) == ["t1", "t2"]
    assert all(e.find("{urn:xmpp:delay}delay") is not None for e in again.elements
               if e.tag == f"{{{CLIENT}}}message")
    again.send(b"</stream:stream>")
    bob.send(b"</stream:stream>")


def test_unacknowledged_stanzas_are_bounded_and_kept_offline(server):
    dave = connect(server)
    dave.login("dave@localhost", "bound", presence=False)
    assert dave.enable(resume=False).get("id") is None
    dave.send(b"<presence/>")
    carol = connect(server)
    carol.login("carol@localhost", "sender")
    count = MAX_UNACKED + 5
    for i in range(count):
        carol.chat("dave@localhost", f"b{i}")
    dave.wait(lambda: dave.closed)
    assert dave.stream_error() == "resource-constraint"
    carol.send(b"<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>")
    carol.wait(lambda: carol.find(f"{{{CLIENT}}}iq", id="sync"))
    time.sleep(0.3)
    again = connect(server)
    again.login("dave@localhost", "bound")
    again.wait(lambda: len(again.bodies()) >= count)
    time.sleep(0.3)
    assert sorted(again.bodies()) == sorted(f"b{i}" for i in range(count))

"""BOSH (XEP-0124, XEP-0206) at ``/http-bind`` on the HTTP door.

A BOSH session carries an ordinary :class:`~presenced.xmpp.stream.C2SStream`, as a
WebSocket does: the session request stands for the stream header, a body's children go to
the stream's parser, ``xmpp:restart`` is a new header, ``type='terminate'`` the end of the
stream. What the stream writes is queued (bounded) and leaves in the response to the oldest
request held.

The HTTP side, per session: requests are taken in ``rid`` order (one that arrives early
waits for the ones before it, within ``requests``); at most ``hold`` are held, each at most
``wait`` seconds; the last ``requests`` responses are kept, so a request sent again (its
connection was lost) gets the same answer; a session with no request held for
``inactivity`` seconds ends as a TCP stream does when its connection is lost. While the
stream's flood control stops reading, requests wait unread, as a TCP socket's bytes do.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet import reactor, task
from twisted.internet.interfaces import IAddress, IPushProducer
from twisted.python.failure import Failure
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.words.xish import domish

from presenced.xmpp.parser import StanzaParser
from presenced.xmpp.stanzas import NS_STREAMS
from presenced.xmpp.stream import STREAM_END, C2SStream, TCPFraming
from presenced.xmpp.webstream import header, origin_allowed, qualified, stream_header

if TYPE_CHECKING:
    from presenced.xmpp.server import C2SServer

NS_HTTPBIND = "http://jabber.org/protocol/httpbind"
NS_XBOSH = "urn:xmpp:xbosh"
BODY_END = b"</body>"
EMPTY = b"<body xmlns='http://jabber.org/protocol/httpbind'/>"
OPEN = (b"<body xmlns='http://jabber.org/protocol/httpbind' "
        b"xmlns:stream='http://etherx.jabber.org/streams'>")
MAX_HEAD_BYTES = 4096


@dataclass(frozen=True)
class BoshLimits:
    """The ``[xmpp] bosh_*`` keys: what a client may ask for, at most."""

    wait: float
    hold: int
    requests: int
    inactivity: float
    queue_bytes: int

    @classmethod
    def from_config(cls, xmpp: Any, queue_bytes: int) -> "BoshLimits":
        return cls(xmpp.bosh_max_wait, xmpp.bosh_max_hold, xmpp.bosh_max_requests,
                   xmpp.bosh_inactivity, queue_bytes)


class BoshFraming(TCPFraming):
    """The stream's header and end are the session's (body attributes): only the
    features and stream errors are payload."""

    starttls = False
    coalesce = False  # each stanza goes to the session's queue of held requests
    end = b""

    def opening(self, domain: bytes, stream_id: int, features: bytes) -> tuple[bytes, ...]:
        return (features,) if features else ()

    def error(self, error: domish.Element) -> tuple[bytes, ...]:
        return (error.toXml(prefixes={NS_STREAMS: "stream"},
                            prefixesInScope=["stream"]).encode("utf-8"),)


BOSH = BoshFraming()


class BadBody(ValueError):
    """A request body that is not a BOSH ``<body/>`` (HTTP 400, ``bad-request``)."""


def parse_body(data: bytes) -> tuple[domish.Element, bytes]:
    """The ``<body/>`` element (attributes only) and the bytes of its children."""
    data = data.strip()
    end = start_tag_end(data)
    head = data[:end + 1]
    if head.endswith(b"/>"):
        content = b""
    elif data.endswith(BODY_END):
        head = head + BODY_END
        content = data[end + 1:-len(BODY_END)]
    else:
        raise BadBody("the request is not one <body/> element")
    found: list[domish.Element] = []
    parser = StanzaParser(MAX_HEAD_BYTES)
    parser.DocumentStartEvent = found.append
    parser.ElementEvent = parser.DocumentEndEvent = _nothing
    try:
        parser.parse(head)
    except domish.ParserError as e:
        raise BadBody(str(e)) from None
    finally:
        parser.close()
    if not found or found[0].uri != NS_HTTPBIND or found[0].name != "body":
        raise BadBody(f"expected <body xmlns='{NS_HTTPBIND}'/>")
    return found[0], content


def start_tag_end(data: bytes) -> int:
    """Where the first start tag of ``data`` ends (its ``>``), quotes respected."""
    if not data.startswith(b"<"):
        raise BadBody("the request is not XML")
    quote = 0
    for i in range(1, min(len(data), MAX_HEAD_BYTES)):
        c = data[i]
        if quote:
            if c == quote:
                quote = 0
        elif c in (0x22, 0x27):
            quote = c
        elif c == 0x3E:
            return i
    raise BadBody(f"the <body> tag is longer than {MAX_HEAD_BYTES} bytes")


def _nothing(*args: object) -> None:
    """Parser events the body's start tag has no use for."""


def terminate(condition: Optional[str] = None, payload: bytes = b"") -> bytes:
    head = b"<body xmlns='http://jabber.org/protocol/httpbind' type='terminate'"
    if condition:
        head += b" condition='%s'" % condition.encode()
    if not payload:
        return head + b"/>"
    return head + b" xmlns:stream='http://etherx.jabber.org/streams'>" + payload + BODY_END


class BoshLink:
    """The transport a BOSH session's stream writes to (the session itself answers)."""

    __slots__ = ("session",)

    def __init__(self, session: "BoshSession"):
        self.session = session

    def write(self, data: bytes) -> None:
        if data:
            self.session.queue(data)

    def loseConnection(self) -> None:
        self.session.end()

    def abortConnection(self) -> None:
        self.session.end("policy-violation")

    def getPeer(self) -> IAddress:
        return self.session.peer

    def getHost(self) -> IAddress:
        return self.session.peer

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        """The stream's write budget: never paused, the session bounds its own queue."""

    def unregisterProducer(self) -> None:
        pass

    def pauseProducing(self) -> None:
        self.session.paused = True

    def resumeProducing(self) -> None:
        self.session.paused = False
        self.session.take_requests()


class BoshSession:
    """One BOSH session: its stream, the requests held and waiting, the output queued."""

    __slots__ = ("manager", "sid", "stream", "peer", "limits", "wait", "hold", "rid",
                 "held", "inbox", "answers", "pending", "pending_bytes", "idle_since",
                 "paused", "ended", "created", "flush_call", "domain")

    def __init__(self, manager: "BoshSessions", sid: str, peer: IAddress, rid: int,
                 wait: float, hold: int, domain: str):
        self.manager = manager
        self.sid = sid
        self.peer = peer
        self.limits = manager.limits
        self.wait = wait
        self.hold = hold
        self.domain = domain
        self.rid = rid              # the last rid taken
        self.held: list[tuple[int, Optional[Request], float]] = []
        self.inbox: dict[int, tuple[domish.Element, bytes, Request]] = {}
        self.answers: OrderedDict[int, bytes] = OrderedDict()   # rid -> response, for replay
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.idle_since = time.monotonic()
        self.paused = False
        self.ended = False
        self.created = False        # the session response has gone
        self.flush_call = None
        self.stream: Optional[C2SStream] = None

    # --- requests ------------------------------------------------------------------------

    def receive(self, body: domish.Element, content: bytes, request: Request) -> None:
        """A request of this session, in whatever order it came."""
        rid = int_attr(body, "rid")
        if rid is None:
            answer(request, terminate("bad-request"), 400)
            return
        if rid <= self.rid:
            self.replay(rid, request)
        elif rid > self.rid + self.limits.requests or len(self.inbox) >= self.limits.requests:
            answer(request, terminate("item-not-found"), 404)
            self.end("item-not-found")
        else:
            early = self.inbox.get(rid)
            if early is not None:       # sent again before its turn: the copy counts
                answer(early[2], EMPTY)
            self.inbox[rid] = (body, content, request)
            request.notifyFinish().addErrback(self.gone, request)
            self.take_requests()

    def replay(self, rid: int, request: Request) -> None:
        """A request sent again: the answer it had, or it replaces the one held for it."""
        old = self.answers.get(rid)
        if old is not None:
            answer(request, old)
            return
        for i, (held_rid, _, since) in enumerate(self.held):
            if held_rid == rid:
                self.held[i] = (rid, request, since)
                request.notifyFinish().addErrback(self.gone, request)
                return
        answer(request, terminate("item-not-found"), 404)

    def take_requests(self) -> None:
        """Hand the stream the requests next in ``rid`` order, while it reads."""
        while not self.paused and not self.ended and self.rid + 1 in self.inbox:
            self.rid += 1
            body, content, request = self.inbox.pop(self.rid)
            self.held.append((self.rid, request, time.monotonic()))
            self.feed(body, content)
        self.flush()

    def feed(self, body: domish.Element, content: bytes) -> None:
        stream = self.stream
        if body.getAttribute((NS_XBOSH, "restart")) == "true":
            stream.dataReceived(stream_header(self.domain, "1.0"))
        if content.strip() and not stream.closing:
            stream.dataReceived(content)
            parser = stream.stream
            if not stream.closing and parser is not None and parser.depth > 1:
                stream.stream_error("not-well-formed", "a BOSH body holds whole elements")
        if body.getAttribute("type") == "terminate" and not stream.closing:
            stream.dataReceived(STREAM_END)

    def gone(self, failure: Failure, request: Request) -> None:
        """The client's connection closed before the answer: a held request keeps its
        place, and its answer is kept for when the client sends the rid again; one not
        taken yet is forgotten (sent again, it is taken then)."""
        self.held = [(rid, None if held is request else held, since)
                     for rid, held, since in self.held]
        for rid, entry in list(self.inbox.items()):
            if entry[2] is request:
                del self.inbox[rid]

    # --- output --------------------------------------------------------------------------

    def queue(self, data: bytes) -> None:
        if self.ended:
            return
        self.pending.append(qualified(data))
        self.pending_bytes += len(data)
        if self.pending_bytes > self.limits.queue_bytes:
            self.pending.clear()
            self.end("policy-violation")
        elif self.flush_call is None and not self.stream.parsing:
            self.flush_call = reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Answer held requests: the oldest takes what is queued; beyond ``hold`` the
        oldest go back empty."""
        call, self.flush_call = self.flush_call, None
        if call is not None and call.active():
            call.cancel()
        while self.held and (self.pending or not self.created):
            self.respond(self.held.pop(0), self.take_payload())
        while len(self.held) > self.hold:
            self.respond(self.held.pop(0), b"")
        if not self.held:
            self.idle_since = time.monotonic()

    def take_payload(self) -> bytes:
        payload = b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        return payload

    def respond(self, entry: tuple[int, Optional[Request], float], payload: bytes) -> None:
        rid, request, _ = entry
        if not self.created:
            self.created = True
            data = self.manager.session_head(self) + payload + BODY_END
        elif payload:
            data = OPEN + payload + BODY_END
        else:
            data = EMPTY
        self.remember(rid, data)
        answer(request, data)

    def remember(self, rid: int, data: bytes) -> None:
        self.answers[rid] = data
        while len(self.answers) > self.limits.requests:
            self.answers.popitem(last=False)

    def expire(self, now: float) -> bool:
        """The sweep: held requests past ``wait`` go back empty; True when the session
        has had no request for ``inactivity`` seconds (it ends)."""
        while self.held and now - self.held[0][2] >= self.wait:
            self.respond(self.held.pop(0), b"")
            if not self.held:
                self.idle_since = now
        return not self.held and not self.inbox and now - self.idle_since > self.limits.inactivity

    # --- the end -------------------------------------------------------------------------

    def end(self, condition: Optional[str] = None) -> None:
        """The stream is over (it ended, erred, or the client went): held requests get
        ``terminate`` with what is queued, the stream learns its connection is gone."""
        if self.ended:
            return
        self.ended = True
        payload = self.take_payload()
        if condition is None and payload.startswith(b"<stream:error"):
            condition = "remote-stream-error"
        for entry in self.held:
            self.remember(entry[0], terminate(condition, payload))
            answer(entry[1], terminate(condition, payload))
            payload = b""
        self.held.clear()
        for _, _, request in self.inbox.values():
            answer(request, terminate(condition))
        self.inbox.clear()
        self.manager.forget(self)
        reactor.callLater(0, self.lost)

    def lost(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.connectionLost(Failure(ConnectionError("BOSH session ended")))


def int_attr(body: domish.Element, name: str) -> Optional[int]:
    value = body.getAttribute(name)
    if value is None or not value.isdigit():
        return None
    return int(value)


def answer(request: Optional[Request], data: bytes, status: int = 200) -> None:
    """Finish ``request`` with a BOSH body, unless its client is gone (None)."""
    if request is None:
        return
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/xml; charset=utf-8")
    request.setHeader(b"content-length", b"%d" % len(data))
    request.write(data)
    request.finish()


class BoshSessions:
    """Every BOSH session of the node, by ``sid``, and the sweep that times them."""

    def __init__(self, server: "C2SServer", limits: BoshLimits):
        self.server = server
        self.limits = limits
        self.sessions: dict[str, BoshSession] = {}
        self.sweep = task.LoopingCall(self.expire)

    def create(self, body: domish.Element, content: bytes, request: Request) -> None:
        """A session request (XEP-0124 7.1, XEP-0206 3)."""
        rid = int_attr(body, "rid")
        to = (body.getAttribute("to") or "").lower()
        if rid is None:
            answer(request, terminate("bad-request"), 400)
            return
        if to not in self.server.domains:
            answer(request, terminate("host-unknown"))
            return
        limits = self.limits
        wait = min(float(int_attr(body, "wait") or limits.wait), limits.wait)
        hold = max(1, min(int_attr(body, "hold") or 1, limits.hold))
        session = BoshSession(self, secrets.token_urlsafe(18), request.getClientAddress(),
                              rid, wait, hold, to)
        self.sessions[session.sid] = session
        stream = session.stream = self.server.build_stream(request.isSecure(), BOSH)
        stream.makeConnection(BoshLink(session))
        session.rid = rid
        session.held.append((rid, request, time.monotonic()))
        request.notifyFinish().addErrback(session.gone, request)
        stream.dataReceived(stream_header(to, body.getAttribute((NS_XBOSH, "version"))))
        if not session.ended:
            session.feed(body, content)
            session.flush()
        if not self.sweep.running:
            self.sweep.start(1.0, now=False)

    def session_head(self, session: BoshSession) -> bytes:
        limits = self.limits
        return (b"<body xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh' "
                b"xmlns:stream='http://etherx.jabber.org/streams' sid='%s' wait='%d' "
                b"hold='%d' requests='%d' inactivity='%d' polling='1' ver='1.11' from='%s' "
                b"xmpp:version='1.0' xmpp:restartlogic='true'>" % (
                    session.sid.encode(), session.wait, session.hold, limits.requests,
                    limits.inactivity, session.domain.encode("utf-8")))

    def forget(self, session: BoshSession) -> None:
        self.sessions.pop(session.sid, None)
        if not self.sessions and self.sweep.running:
            self.sweep.stop()

    def expire(self) -> None:
        now = time.monotonic()
        for session in [s for s in self.sessions.values() if s.expire(now)]:
            session.end()


class BoshResource(resource.Resource):
    """``/http-bind``: POSTed bodies to their sessions, CORS for the allowed origins."""

    isLeaf = True

    def __init__(self, sessions: BoshSessions, origins: frozenset[str]):
        super().__init__()
        self.sessions = sessions
        self.origins = origins

    def render_POST(self, request: Request) -> bytes | int:
        if not self.cors(request):
            return _refuse(request, 403, "origin not allowed: add it to [comet] cors_origins")
        data = request.content.read()
        request.content.close()
        request.content = None          # a held request keeps no copy of its body
        try:
            body, content = parse_body(data)
        except BadBody as e:
            return _refuse(request, 400, str(e), terminate("bad-request"))
        sid = body.getAttribute("sid")
        if sid is None:
            self.sessions.create(body, content, request)
        else:
            session = self.sessions.sessions.get(sid)
            if session is None:
                answer(request, terminate("item-not-found"), 404)
            else:
                session.receive(body, content, request)
        return NOT_DONE_YET

    def render_OPTIONS(self, request: Request) -> bytes:
        if not self.cors(request):
            return _refuse(request, 403, "origin not allowed: add it to [comet] cors_origins")
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-methods", b"POST, OPTIONS")
        request.setHeader(b"access-control-allow-headers", b"Content-Type")
        request.setHeader(b"access-control-max-age", b"600")
        return b""

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"BOSH (XEP-0124, XEP-0206): POST <body/> elements here.\n"

    def cors(self, request: Request) -> bool:
        """False for an origin not allowed; the CORS headers for one that is."""
        if not origin_allowed(self.origins, request):
            return False
        origin = header(request, b"origin")
        if origin:
            request.setHeader(b"access-control-allow-origin", origin.encode("latin-1"))
            request.setHeader(b"vary", b"Origin")
        request.setHeader(b"cache-control", b"no-store")
        return True


def _refuse(request: Request, status: int, message: str, body: bytes = b"") -> bytes:
    request.setResponseCode(status)
    if body:
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        return body
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return message.encode("utf-8") + b"\n"

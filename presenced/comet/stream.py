"""One comet connection: a lean HTTP/1.1 protocol that holds streams at about 1 KB each.

A connection reads one request head (bounded in size and time: slowloris and oversized heads
are answered and closed), then:

- ``GET /stream/<user>``: a chunked response held open; a welcome line, then one JSON event
  per line (``Accept: text/event-stream``: Server-Sent Events with ids, resumed from
  ``Last-Event-ID``);
- ``GET /poll/<user>?since=<id>``: events after ``since`` at once, or the next one within
  ``poll_timeout``; the connection may then carry the next poll (keep-alive);
- anything else is handed, with the bytes read so far, to the door's ``twisted.web`` site.

While streaming or polling the connection is an :class:`presenced.router.ISession` of its
user. Its output goes through :class:`presenced.flow.WriteBudget`: a client that stops
reading is cut off. The class has no ``__dict__`` and keeps one reference per field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IDelayedCall, IProtocol, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from presenced.comet import frames
from presenced.httphead import (HTTPError, RequestHead, error_body, json_response,
                                  parse_head, response_head)
from presenced.comet.replay import UserChannel
from presenced.events import Event
from presenced.flow import WriteBudget
from presenced.router import ISession

if TYPE_CHECKING:
    from presenced.comet.door import CometDoor

READING, NDJSON, SSE, POLLING, DONE, AUTHORIZING = range(6)
log = Logger()
HOT_PATHS = ("stream", "poll")


def parse_cursor(text: str) -> Optional[int]:
    """An event id sent back by a client (``since``, ``Last-Event-ID``); None if absent."""
    text = text.strip()
    if not text:
        return None
    if not text.isdigit():
        raise HTTPError(400, f"{text!r} is not an event id")
    return int(text)


@implementer(IProtocol, ISession)
class CometConnection:
    """A comet HTTP connection, and while it streams or polls, a session of its user."""

    __slots__ = ("door", "transport", "mode", "buf", "timer", "channel", "budget", "request",
                 "cursor")

    protocol = "comet"

    def __init__(self, door: "CometDoor"):
        self.door = door
        self.transport: Optional[ITransport] = None
        self.mode = READING
        self.buf: Optional[bytearray] = bytearray()
        self.timer: Optional[IDelayedCall] = None
        self.channel: Optional[UserChannel] = None
        self.budget: Optional[WriteBudget] = None
        self.request: Optional[RequestHead] = None   # the request being answered
        self.cursor: Optional[int] = None             # a waiting poll's ``since``

    @property
    def user(self) -> Optional[str]:
        return self.channel.user if self.channel is not None else None

    @property
    def label(self) -> str:
        peer = self.transport.getPeer() if self.transport is not None else None
        return f"{peer.host}:{peer.port}" if peer is not None else "closed"

    def __repr__(self) -> str:
        return f"<CometConnection {self.user} {self.label} mode={self.mode}>"

    # --- IProtocol -----------------------------------------------------------------------

    def makeConnection(self, transport: ITransport) -> None:
        self.transport = transport
        self.connectionMade()

    def connectionMade(self) -> None:
        self.door.connection_made()
        self._expect_head()

    def dataReceived(self, data: bytes) -> None:
        buf = self.buf
        if buf is None:                  # streaming: a client has nothing more to say
            return
        buf += data
        if self.mode != READING:
            if len(buf) > self.door.max_request_bytes:   # pipelining past a waiting poll
                self._fail(HTTPError(431, "request head too large"))
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0 or end + 4 > self.door.max_request_bytes:
            if len(buf) > self.door.max_request_bytes:
                self._fail(HTTPError(431, "request head too large"))
            elif end < 0 and b"\n\n" in buf:     # bare LF lines: answered, not waited for
                self._fail(HTTPError(400, "request lines must end with CR LF"))
            return
        self._cancel_timer()
        try:
            self.request = parse_head(bytes(buf[:end]))
            self._route(self.request, end + 4)
        except HTTPError as e:
            self._fail(e)

    def connectionLost(self, reason: Failure = None) -> None:
        self.mode = DONE
        self.buf = None
        self._cancel_timer()
        self._leave()
        self.door.connection_lost()
        self.budget = None
        self.transport = None

    # --- routing -------------------------------------------------------------------------

    def _route(self, request: RequestHead, consumed: int) -> None:
        kind, _, user_text = request.path[1:].partition("/")
        if kind not in HOT_PATHS:
            self._hand_off()
            return
        if request.method == "OPTIONS":
            self._preflight(request)
            return
        if request.method != "GET":
            raise HTTPError(405, f"{request.method} is not allowed here; use GET")
        if request.has_body:
            raise HTTPError(413, "requests to streams carry no body")
        token, host = request.bearer_token(), getattr(self.transport.getPeer(), "host", "?")
        if self.door.needs_site(token):
            self.mode = AUTHORIZING  # what arrives meanwhile waits in buf (bounded)
            d = defer.ensureDeferred(self.door.authorize_by_site(user_text, request, host))
            d.addCallbacks(self._authorized, self._not_authorized,
                           callbackArgs=(kind, request, consumed))
            return
        self._authorized(self.door.authorize(user_text, token, host), kind, request, consumed)

    def _authorized(self, user: str, kind: str, request: RequestHead, consumed: int) -> None:
        if self.mode == DONE:       # the client left while the site was asked
            return
        self.mode = READING
        del self.buf[:consumed]
        if kind == "poll":
            self._start_poll(user, request)
        else:
            self._start_stream(user, request)

    def _not_authorized(self, failure: Failure) -> None:
        if not failure.check(HTTPError):
            log.failure("asking the site about a stream", failure)
        if self.mode != DONE:
            self._fail(failure.value if failure.check(HTTPError)
                       else HTTPError(503, "stream authorization failed"))

    def _hand_off(self) -> None:
        """Give the connection, and every byte read, to the door's twisted.web site."""
        self.mode = DONE
        raw, self.buf = bytes(self.buf), None
        transport = self.transport
        if self.budget is not None:     # a keep-alive poll's; twisted.web registers its own
            transport.unregisterProducer()
            self.budget = None
        channel = self.door.web_channel(transport)
        transport.protocol = channel
        self.transport = None
        self.door.connection_lost()
        channel.makeConnection(transport)
        channel.dataReceived(raw)

    def _preflight(self, request: RequestHead) -> None:
        cors = self.door.cors_headers(request.header(b"origin"))
        if not cors:
            raise HTTPError(403, "origin not allowed")
        cors += [("Access-Control-Allow-Methods", "GET, OPTIONS"),
                 ("Access-Control-Allow-Headers", "Authorization, Last-Event-ID, Accept"),
                 ("Access-Control-Max-Age", "600"), ("Content-Length", "0"),
                 ("Connection", "close")]
        self.transport.write(response_head(204, cors))
        self._finish()

    def _fail(self, error: HTTPError) -> None:
        """Answer with a JSON error and close (a bad request loses nothing else)."""
        request, self.request = self.request, None
        extra = self.door.cors_headers(request.header(b"origin")) if request else []
        if error.status == 401:
            extra.append(("WWW-Authenticate", 'Bearer realm="presenced"'))
        self._cancel_timer()
        self.transport.write(json_response(error.status, error_body(error.message), extra))
        self._finish()

    def _finish(self) -> None:
        self.mode = DONE
        self.buf = None
        self.transport.loseConnection()

    # --- streams -------------------------------------------------------------------------

    def _start_stream(self, user: str, request: RequestHead) -> None:
        sse = "text/event-stream" in request.header(b"accept")
        cursor = parse_cursor(request.query.get("since") or
                              (request.header(b"last-event-id") if sse else ""))
        headers = [("Content-Type", "text/event-stream" if sse else "application/x-ndjson"),
                   ("Transfer-Encoding", "chunked"), ("Cache-Control", "no-cache"),
                   ("X-Accel-Buffering", "no"), ("Connection", "keep-alive")]
        headers += self.door.cors_headers(request.header(b"origin"))
        door = self.door
        self.request = None
        self.buf = None
        self.mode = SSE if sse else NDJSON
        self.channel = channel = door.channels.attach(user)
        self.budget = WriteBudget(self.transport, door.max_buffered_bytes, direct=True)
        # Each turn's frames go out in one send(); with Nagle on, a frame sent while the last
        # is unacknowledged waited for the client's delayed ACK (up to 40 ms on Linux).
        self.transport.setTcpNoDelay(True)
        welcome = door.welcome(user, "sse" if sse else "ndjson")
        out = [response_head(200, headers),
               frames.sse_data(welcome, retry=True) if sse else frames.ndjson_line(welcome)]
        frame = door.sse if sse else door.ndjson
        out.extend(frame(event) for event in channel.after(cursor))
        self.budget.write(b"".join(out))
        door.stream_opened(self, user)

    def deliver(self, event: Event) -> None:
        """Record ``event`` for replay and queue its frame (built once per event for every
        stream of the fan-out) for this turn's write. Called once per recipient stream: the
        door and the frame are looked up once each."""
        if event.type not in frames.STREAMED_TYPES:
            return
        mode = self.mode
        if mode == NDJSON or mode == SSE:
            door = self.door
            self.channel.record(event)
            door.events_out += 1
            door.batch.write(self.budget,
                             (door.ndjson if mode == NDJSON else door.sse)(event), event)
        elif mode == POLLING:
            self.channel.record(event)
            self._answer_poll(event)

    def heartbeat(self) -> None:
        if self.mode == NDJSON:
            self.door.batch.write_now(self.budget, frames.NDJSON_HEARTBEAT)
        elif self.mode == SSE:
            self.door.batch.write_now(self.budget, frames.SSE_HEARTBEAT)

    def close(self, reason: str) -> None:
        """Say why, end the response, disconnect (an operator's kick, server stopping)."""
        mode = self.mode
        if mode in (NDJSON, SSE):
            doc = frames.closed_doc(reason)
            self.door.batch.write_now(self.budget, (frames.sse_data(doc) if mode == SSE
                                                    else frames.ndjson_line(doc))
                                      + frames.LAST_CHUNK)
        elif mode == POLLING:
            self._leave()
            retry = ([("Retry-After", str(frames.RECONNECT_AFTER_MS // 1000))]
                     if reason == frames.SERVER_STOPPING else [])
            self.transport.write(json_response(503, error_body(reason), retry))
        if mode != DONE and self.transport is not None:
            self._finish()

    # --- long polling --------------------------------------------------------------------

    def _start_poll(self, user: str, request: RequestHead) -> None:
        self.cursor = parse_cursor(request.query.get("since", ""))
        self.channel = channel = self.door.channels.attach(user)
        if self.budget is None:
            self.budget = WriteBudget(self.transport, self.door.max_buffered_bytes)
        if channel.after(self.cursor):
            self._answer_poll(None)
            return
        self.mode = POLLING
        self.door.stream_opened(self, user)
        self.timer = reactor.callLater(self.door.poll_timeout, self._answer_poll, None)

    def _answer_poll(self, event: Optional[Event]) -> None:
        """Answer a poll with the events after its cursor (and ``event``, just delivered)."""
        self._cancel_timer()
        events = self.channel.after(self.cursor)
        if event is not None and (not events or events[-1] is not event):
            events.append(event)
        request = self.request
        last = events[-1].id if events else self.cursor
        if last is None:    # timed out without ``since``: a cursor that replays what comes
            last = self.channel.last_id()
        body = b'{"events":[%b],"next":%d}' % (b",".join(e.to_json() for e in events), last)
        self.door.events_out += len(events)
        self._leave()
        keep_alive = request.keep_alive
        self.request = None
        self.budget.write(json_response(200, body, self.door.cors_headers(
            request.header(b"origin")), keep_alive=keep_alive))
        if not keep_alive:
            self._finish()
            return
        self.mode = READING
        self._expect_head()
        if self.buf:
            self.dataReceived(b"")

    # --- housekeeping --------------------------------------------------------------------

    def _expect_head(self) -> None:
        self.timer = reactor.callLater(self.door.header_timeout, self._head_timeout)

    def _head_timeout(self) -> None:
        self.timer = None
        self._fail(HTTPError(408, "request head not received in time"))

    def _cancel_timer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _leave(self) -> None:
        """Stop being a session: out of the router, the channel detached (at once, so no
        later fan-out reaches a closed connection)."""
        channel = self.channel
        if channel is not None:
            self.door.stream_closed(self, channel)
            self.channel = None

"""The web admin port's lean HTTP/1.1 channel: ``/api`` requests answered without twisted.web.

twisted.web spends tens of microseconds on every request (a Request object, header objects,
resource traversal, a Date header, a queued write): most of the server's time per
``POST /api/publish/...`` in ``bench/comet.py --publish http``. A connection on this port is
read first by an :class:`AdminFront`: a request for ``/api/...`` whose resource
(``core.web_resources[b"api"]``, offered by the Thrift door) provides
:class:`presenced.core.ILeanResource` is read here (head, then a ``Content-Length`` body) and
answered from prebuilt headers, on a keep-alive connection, one request after the other. The
first request for anything else (the console, ``/metrics``, ``/health``), or one this channel
does not read (a chunked body, ``Expect: 100-continue``), hands the connection with every byte
read to twisted.web's channel (:class:`presenced.httpdeadline.DeadlineChannel`) for good.

The limits are the port's: each request must arrive whole within ``[webadmin]
request_timeout`` (408; an idle keep-alive connection is closed), a body may hold
``max_body_bytes`` (413 before it is read), a head ``MAX_HEAD_BYTES`` (431); answers a client
does not read are bounded by ``MAX_UNREAD_BYTES`` (then the connection is cut).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IProtocol, ITransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from presenced.core import ILeanResource
from presenced.flow import WriteBudget
from presenced.httpdeadline import TIMEOUT_RESPONSE, TOO_LARGE_RESPONSE
from presenced.httphead import HTTPError, RequestHead, json_response, parse_head, response_head

if TYPE_CHECKING:
    from presenced.webadmin.service import AdminSite

MAX_HEAD_BYTES = 16384        # twisted.web's own bound on a request's headers
MAX_UNREAD_BYTES = 1048576    # answers queued for a client that does not read them
API_PREFIX = b"/api/"
# Every answer's headers but its length; a 200 on a kept-alive connection is these and a body.
OK_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
           b"Content-Length: %d\r\n\r\n")
ERROR_NAMES = {431: "RequestHeaderFieldsTooLarge", 500: "InternalError", 501: "NotImplemented",
               505: "HTTPVersionNotSupported"}  # the others: "BadRequest" (400)
log = Logger()


@implementer(IProtocol)
class AdminFront:
    """One connection of the web admin port until it asks for something else than ``/api``."""

    __slots__ = ("site", "transport", "host", "buf", "timer", "deadline", "budget", "busy",
                 "paused", "previous",
                 "offered", "api")

    def __init__(self, site: "AdminSite"):
        self.site = site
        self.transport: Optional[ITransport] = None
        self.host = "?"
        self.buf: Optional[bytearray] = bytearray()
        self.timer: Optional[IDelayedCall] = None
        self.deadline: Optional[float] = None  # when the request awaited is late
        self.budget: Optional[WriteBudget] = None
        self.busy = False       # a request is being answered; what follows waits in buf
        self.paused = False     # reading stopped: buf holds a whole request or more
        self.previous: Optional[RequestHead] = None   # the last request read, for its headers
        self.offered: object = None     # core.web_resources[b"api"] when last looked at
        self.api: Optional[ILeanResource] = None    # ... if it is lean

    # --- IProtocol -----------------------------------------------------------------------

    def makeConnection(self, transport: ITransport) -> None:
        self.transport = transport
        self.connectionMade()

    def connectionMade(self) -> None:
        self.budget = WriteBudget(self.transport, MAX_UNREAD_BYTES, direct=True)
        self.host = getattr(self.transport.getPeer(), "host", "?")
        self._wait_for_request()

    def dataReceived(self, data: bytes) -> None:
        buf = self.buf
        if buf is None:         # closing, or handed to twisted.web
            return
        if buf or self.busy:    # the rest of a request, or one to answer after this one
            buf += data
            if self.busy:
                if len(buf) > MAX_HEAD_BYTES + self.site.max_body_bytes and not self.paused:
                    self.paused = True
                    self.transport.pauseProducing()
                return
            data = bytes(buf)
            buf.clear()
        self._read_requests(data)   # usually whole requests, read without a copy

    def connectionLost(self, reason: Failure = None) -> None:
        self.buf = None
        self._cancel_timer()
        self.budget = None
        self.transport = None

    # --- requests ------------------------------------------------------------------------

    def _read_requests(self, data: bytes) -> None:
        """Answer every whole request in ``data`` (what ``buf`` held, then what arrived), in
        order, while answers come at once; what is left waits in ``buf``."""
        pos, size = 0, len(data)
        while pos < size and not self.busy:
            line_end = data.find(b"\r\n", pos)
            if line_end < 0:
                if self._head_too_large(size - pos):
                    return
                break
            api = self._api() if data.find(API_PREFIX, pos, line_end) >= 0 else None
            if api is None:
                self._hand_off(data[pos:])
                return
            end = data.find(b"\r\n\r\n", pos)
            if end < 0:
                if self._head_too_large(size - pos):
                    return
                break
            try:
                head = self.previous = parse_head(data[pos:end], self.previous)
                length = _content_length(head)
            except HTTPError as e:
                self._fail(e)
                return
            if not head.path.startswith("/api/") or length is None:
                self._hand_off(data[pos:])
                return
            if length > self.site.max_body_bytes:
                self._refuse(TOO_LARGE_RESPONSE)
                return
            start = end + 4
            if size < start + length:
                break
            pos = start + length
            self._answer(api, head, data[start:pos])
            if self.buf is None:        # answered and closed
                return
        if pos < size:
            self.buf += data[pos:]

    def _head_too_large(self, unfinished: int) -> bool:
        """A request head not finished after ``unfinished`` bytes: past the bound, the
        connection is failed with 431 (True); otherwise it waits for more."""
        if unfinished <= MAX_HEAD_BYTES:
            return False
        self._fail(HTTPError(431, "request head too large"))
        return True

    def _api(self) -> Optional[ILeanResource]:
        """The lean ``/api`` resource on offer now; asked of zope.interface once per resource
        offered, not per request."""
        offered = self.site.core.web_resources.get(b"api")
        if offered is not self.offered:
            self.offered = offered
            self.api = offered if ILeanResource.providedBy(offered) else None
        return self.api

    def _answer(self, api: ILeanResource, head: RequestHead, body: bytes) -> None:
        self.deadline = None
        self.busy = True
        try:
            answer = api.answer_lean(head, body, self.host)
        except Exception:
            self._crashed(Failure())
            return
        if isinstance(answer, Deferred):
            answer.addCallbacks(self._respond, self._crashed, callbackArgs=(head, True))
        else:
            self._respond(answer, head, False)

    def _respond(self, answer: tuple[int, bytes, list[tuple[bytes, bytes]]],
                 head: RequestHead, later: bool) -> None:
        """Send the answer; ``later``: it came after the read that brought its request,
        so the requests waiting in ``buf`` are read now."""
        if self.transport is None:      # the client left meanwhile
            return
        status, body, extra = answer
        keep_alive = head.keep_alive
        if status == 200 and keep_alive and not extra:
            data = OK_HEAD % len(body)
        else:
            data = response_head(status, [
                ("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                ("Content-Length", str(len(body))),
                ("Connection", "keep-alive" if keep_alive else "close"),
                *((n.decode("latin-1"), v.decode("latin-1")) for n, v in extra)])
        self.budget.write(data if head.method == "HEAD" else data + body)
        if not keep_alive:
            self._close()
            return
        self.busy = False
        if self.paused:
            self.paused = False
            self.transport.resumeProducing()
        self._wait_for_request()
        if later and self.buf:
            data = bytes(self.buf)
            self.buf.clear()
            self._read_requests(data)

    def _crashed(self, failure: Failure) -> None:
        log.failure("answering an /api request", failure)
        if self.transport is not None:
            self._fail(HTTPError(500, "internal error; the server log has details"))

    # --- endings -------------------------------------------------------------------------

    def _hand_off(self, raw: bytes) -> None:
        """Give the connection, and ``raw`` (every byte read and not answered), to
        twisted.web's channel for good."""
        self._cancel_timer()
        self.buf = None
        transport, self.transport = self.transport, None
        transport.unregisterProducer()
        self.budget = None
        channel = self.site.web_channel(transport.getPeer())
        transport.protocol = channel
        channel.makeConnection(transport)
        if raw:
            channel.dataReceived(raw)

    def _fail(self, error: HTTPError) -> None:
        """A JSON error in the API's shape, and close (a request this channel cannot read
        loses nothing else)."""
        body = json.dumps({"error": ERROR_NAMES.get(error.status, "BadRequest"),
                           "message": error.message}).encode("utf-8")
        self._refuse(json_response(error.status, body))

    def _refuse(self, response: bytes) -> None:
        self.transport.write(response)
        self._close()

    def _close(self) -> None:
        self._cancel_timer()
        self.buf = None
        self.transport.loseConnection()

    # --- the deadline --------------------------------------------------------------------

    def _wait_for_request(self) -> None:
        """The next request must be in within ``request_timeout``. One timer per connection,
        moved only when it fires (not cancelled and set again for every request)."""
        self.deadline = reactor.seconds() + self.site.timeOut
        if self.timer is None:
            self.timer = reactor.callLater(self.site.timeOut, self._check_deadline)

    def _check_deadline(self) -> None:
        """The request awaited did not arrive in time: 408 if it began, else just close (an
        idle keep-alive connection)."""
        self.timer = None
        deadline = self.deadline
        if deadline is None or self.buf is None:    # answering one; closed
            return
        left = deadline - reactor.seconds()
        if left > 0:
            self.timer = reactor.callLater(left, self._check_deadline)
        elif self.buf:
            self._refuse(TIMEOUT_RESPONSE)
        else:
            self._close()

    def _cancel_timer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()


def _content_length(head: RequestHead) -> Optional[int]:
    """The body's length; None for a request this channel leaves to twisted.web (a chunked
    body, ``Expect: 100-continue``)."""
    if head.headers.get(b"transfer-encoding") or head.headers.get(b"expect"):
        return None
    text = head.header(b"content-length").strip()
    if not text:
        return 0
    if not text.isdigit():
        raise HTTPError(400, "Content-Length must be a number")
    return int(text)

"""``/ws/<user>``: the same events over a WebSocket (``twisted.web.websocket``).

Each event is one text message holding the event's JSON; the first message is the welcome.
Messages from the client are ignored. Auth (a token, or the site's answer when
``[comet] authorize_url`` is set), replay (``?since=``), heartbeats (WebSocket pings)
and the slow-client bound are the same as for streams. A client that has sent nothing, not
even the pong a browser answers each ping with, for ``[comet] websocket_idle_timeout``
seconds is gone (a dead network path holds a socket open for hours): the server closes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import h11
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.websocket import WebSocketResource, WebSocketTransport
from wsproto import ConnectionType
from wsproto.handshake import H11Handshake
from wsproto.utilities import ProtocolError
from zope.interface import implementer

from presenced.comet import frames
from presenced.comet.frames import STREAMED_TYPES
from presenced.httphead import HTTPError, bearer_token, error_body
from presenced.comet.replay import UserChannel
from presenced.comet.stream import parse_cursor
from presenced.events import Event
from presenced.flow import WriteBudget
from presenced.router import ISession

if TYPE_CHECKING:
    from presenced.comet.door import CometDoor

log = Logger()


class WebSocketOutput:
    """What :class:`WriteBudget` writes to: text messages out, flow control of the TCP link."""

    __slots__ = ("ws", "tcp")

    def __init__(self, ws: WebSocketTransport, tcp: ITCPTransport):
        self.ws = ws
        self.tcp = tcp

    def write(self, data: str) -> None:
        self.ws.sendTextMessage(data)

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.tcp.unregisterProducer()   # the upgraded HTTP channel's, no longer in charge
        self.tcp.registerProducer(producer, streaming)

    def abortConnection(self) -> None:
        self.tcp.abortConnection()


@implementer(ISession)
class CometWebSocket:
    """One WebSocket of a user: a router session while open."""

    __slots__ = ("door", "user", "cursor", "label", "ws", "channel", "budget", "heard")

    protocol = "comet"

    def __init__(self, door: "CometDoor", user: str, cursor: Optional[int], label: str):
        self.door = door
        self.user = user
        self.cursor = cursor
        self.label = label
        self.ws: Optional[WebSocketTransport] = None
        self.channel: Optional[UserChannel] = None
        self.budget: Optional[WriteBudget] = None
        self.heard = reactor.seconds()

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self.ws = transport

    def negotiationFinished(self) -> None:
        door = self.door
        self.channel = door.channels.attach(self.user)
        self.budget = WriteBudget(WebSocketOutput(self.ws, self.ws.transport),
                                  door.max_buffered_bytes)
        door.connection_made()
        self.budget.write(door.welcome(self.user, "websocket").decode("utf-8"))
        for event in self.channel.after(self.cursor):
            self.budget.write(door.text(event))
        door.stream_opened(self, self.user)

    def deliver(self, event: Event) -> None:
        if self.channel is not None and event.type in STREAMED_TYPES:
            self.channel.record(event)
            self.door.events_out += 1
            self.budget.write(self.door.text(event))

    def heartbeat(self) -> None:
        """Ping; close a client silent past the idle timeout (it answered no ping)."""
        if self.channel is None:
            return
        if reactor.seconds() - self.heard > self.door.websocket_idle_timeout:
            self.ws.loseConnection(1001, "idle: no answer to pings")
            return
        self.ws.ping(b"")

    def close(self, reason: str) -> None:
        """The closed document as the last message (as on streams), then close 1001."""
        if self.channel is not None:
            self.budget.write(frames.closed_doc(reason).decode("utf-8"))
            self.ws.loseConnection(1001, reason)

    def textMessageReceived(self, message: str) -> None:
        self.heard = reactor.seconds()

    def bytesMessageReceived(self, data: bytes) -> None:
        self.heard = reactor.seconds()

    def pongReceived(self, payload: bytes) -> None:
        self.heard = reactor.seconds()

    def connectionLost(self, reason: Failure) -> None:
        channel = self.channel
        if channel is not None:
            self.door.stream_closed(self, channel)
            self.door.connection_lost()
            self.channel = None
        self.budget = None


def check_handshake(request: Request) -> None:
    """Raise :class:`HTTPError` 400 for an upgrade request wsproto refuses: Twisted would log
    each one (an h11 error such as a second Host header, critical) and answer 500."""
    headers = [(name, value) for name, values in request.requestHeaders.getAllRawHeaders()
               for value in values]
    try:
        H11Handshake(ConnectionType.SERVER).initiate_upgrade_connection(headers, request.path)
    except (ProtocolError, h11.ProtocolError, UnicodeError) as e:
        raise HTTPError(400, f"not a valid WebSocket handshake: {e}") from None


class SiteAsk:
    """What :meth:`SiteAuthorizer.user_for` reads of an upgrade request: lower-case
    headers and the path the browser asked for."""

    __slots__ = ("headers", "path")

    def __init__(self, request: Request):
        self.headers = {name.lower(): values[0] for name, values
                        in request.requestHeaders.getAllRawHeaders()}
        self.path = request.uri.decode("utf-8", "replace").partition("?")[0]


def refusal(request: Request, e: HTTPError) -> bytes:
    """The JSON error answer of a refused upgrade (the status and headers are set here)."""
    request.setResponseCode(e.status)
    request.setHeader(b"content-type", b"application/json")
    if e.status == 401:
        request.setHeader(b"www-authenticate", b'Bearer realm="presenced"')
    return error_body(e.message)


class UserWebSocket(WebSocketResource):
    """The WebSocket endpoint of one user: checks the token, then upgrades."""

    isLeaf = True

    def __init__(self, door: "CometDoor", user_text: str):
        super().__init__(self)
        self.door = door
        self.user_text = user_text

    def render_GET(self, request: Request):
        request.setHeader(b"cache-control", b"no-store")
        try:
            if request.postpath:
                raise HTTPError(404, "no such path: expected /ws/<user>")
            query = {k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace")
                     for k, v in request.args.items()}
            token = bearer_token(query.get("token"),
                                 (request.getHeader(b"authorization") or b"").decode("latin-1"))
            host = getattr(request.getClientAddress(), "host", "?")
            self.cursor = parse_cursor(query.get("since", ""))
            check_handshake(request)
            if self.door.needs_site(token):
                # As on streams: the site names the user; its answer (or a 403/503) comes
                # before the upgrade, so a site that is down never leaves an open socket.
                d = defer.ensureDeferred(
                    self.door.authorize_by_site(self.user_text, SiteAsk(request), host))
                d.addCallbacks(self._site_allowed, self._site_refused,
                               callbackArgs=(request,), errbackArgs=(request,))
                return NOT_DONE_YET
            self.user = self.door.authorize(self.user_text, token, host)
        except HTTPError as e:
            return refusal(request, e)
        return super().render_GET(request)

    def _site_allowed(self, user: str, request: Request) -> None:
        if request.channel is None or request.channel.transport is None:
            return      # the browser left while the site was asked
        self.user = user
        super().render_GET(request)

    def _site_refused(self, failure: Failure, request: Request) -> None:
        if not failure.check(HTTPError):
            log.failure("asking the site about a WebSocket", failure)
        if request.channel is None or request.channel.transport is None:
            return
        error = (failure.value if failure.check(HTTPError)
                 else HTTPError(503, "stream authorization failed"))
        request.write(refusal(request, error))
        request.finish()

    def buildProtocol(self, request: Request) -> CometWebSocket:
        peer = request.getClientAddress()
        return CometWebSocket(self.door, self.user, self.cursor,
                              f"ws {getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}")

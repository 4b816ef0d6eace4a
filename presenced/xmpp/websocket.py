"""XMPP over WebSocket (RFC 7395) at ``/xmpp-websocket`` on the HTTP door.

A WebSocket carries an ordinary :class:`~presenced.xmpp.stream.C2SStream`: the same parser,
negotiation, limits and sessions as a TCP client. Only the framing differs, and it is
translated at the edge: the client's ``<open/>`` becomes the stream header the stream
expects, ``<close/>`` its end, every other message goes to the stream's parser as it is;
the stream's output leaves one element per text message (:class:`WebSocketFraming`), each
stanza with its own ``jabber:client`` namespace (RFC 7395 3.3.3). A message that does not
hold whole elements, or a binary one, ends the session with a stream error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import h11
from twisted.internet.interfaces import IAddress, IPushProducer, ITCPTransport
from twisted.python.failure import Failure
from twisted.web import resource
from twisted.web._websocket_impl import _WebSocketWireProtocol, serverBootstrap
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.websocket import WebSocketTransport
from twisted.words.xish import domish
from wsproto import ConnectionType
from wsproto.events import AcceptConnection
from wsproto.handshake import H11Handshake
from wsproto.utilities import ProtocolError

from presenced.xmpp.parser import StanzaParser
from presenced.xmpp.stanzas import NS_STREAMS
from presenced.xmpp.stream import STREAM_END, C2SStream, TCPFraming
from presenced.xmpp.webstream import header, origin_allowed, qualified, stream_header

if TYPE_CHECKING:
    from presenced.xmpp.server import C2SServer

NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
SUBPROTOCOL = "xmpp"
CLOSE = b"<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>"
FEATURES = b"<stream:features"
STREAM_PREFIX = b" xmlns:stream='http://etherx.jabber.org/streams'"
# The first bytes of a framing element (anything else is a stanza or a nonza).
FRAMING_HEADS = (b"<open", b"<close")
MAX_FRAMING_BYTES = 4096


class WebSocketFraming(TCPFraming):
    """RFC 7395: ``<open/>`` and ``<close/>`` in the framing namespace, one element per
    message, ``stream:`` prefixes declared where they are used."""

    starttls = False
    coalesce = False  # one message per element
    end = CLOSE

    def opening(self, domain: bytes, stream_id: int, features: bytes) -> tuple[bytes, ...]:
        head = (b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' version='1.0' "
                b"xml:lang='en' id='%016x' from=%s/>" % (stream_id, domain))
        if not features:
            return (head,)
        return head, FEATURES + STREAM_PREFIX + features[len(FEATURES):]

    def error(self, error: domish.Element) -> tuple[bytes, ...]:
        return (error.toXml(prefixes={NS_STREAMS: "stream"}).encode("utf-8"), CLOSE)


WEBSOCKET = WebSocketFraming()


class FramingError(ValueError):
    """A framing element the server cannot take (stream error ``invalid-namespace`` or
    ``not-well-formed``)."""

    def __init__(self, condition: str, text: str):
        super().__init__(text)
        self.condition = condition


def framing_element(data: bytes) -> Optional[domish.Element]:
    """The ``<open/>`` or ``<close/>`` element ``data`` holds; None for anything else."""
    if not data.lstrip().startswith(FRAMING_HEADS):
        return None
    if len(data) > MAX_FRAMING_BYTES:
        raise FramingError("policy-violation", "framing element too large")
    found: list[domish.Element] = []
    parser = StanzaParser(MAX_FRAMING_BYTES)
    parser.DocumentStartEvent = found.append
    parser.ElementEvent = parser.DocumentEndEvent = _nothing
    try:
        parser.parse(data)
    except domish.ParserError as e:
        raise FramingError("not-well-formed", str(e)) from None
    finally:
        parser.close()
    if not found or found[0].uri != NS_FRAMING:
        raise FramingError("invalid-namespace", f"expected {NS_FRAMING}")
    return found[0]


class WebSocketLink:
    """The transport a WebSocket stream writes to: text messages out, reads paced and
    output bounded on the TCP connection beneath (as for a TCP stream)."""

    __slots__ = ("ws", "tcp")

    def __init__(self, ws: WebSocketTransport, tcp: ITCPTransport):
        self.ws = ws
        self.tcp = tcp

    def write(self, data: bytes) -> None:
        self.ws.sendTextMessage(qualified(data).decode("utf-8"))

    def loseConnection(self) -> None:
        self.ws.loseConnection(1000)

    def abortConnection(self) -> None:
        self.tcp.abortConnection()

    def getPeer(self) -> IAddress:
        return self.tcp.getPeer()

    def getHost(self) -> IAddress:
        return self.tcp.getHost()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.tcp.unregisterProducer()   # the upgraded HTTP channel's, no longer in charge
        self.tcp.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.tcp.unregisterProducer()

    def pauseProducing(self) -> None:
        self.tcp.pauseProducing()

    def resumeProducing(self) -> None:
        self.tcp.resumeProducing()


class XMPPWebSocket:
    """One WebSocket connection (``twisted.web.websocket.WebSocketProtocol``): its messages
    in and out of one :class:`C2SStream`."""

    __slots__ = ("server", "secure", "ws", "stream")

    def __init__(self, server: "C2SServer", secure: bool):
        self.server = server
        self.secure = secure
        self.ws: Optional[WebSocketTransport] = None
        self.stream: Optional[C2SStream] = None

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self.ws = transport

    def negotiationFinished(self) -> None:
        self.stream = self.server.build_stream(self.secure, WEBSOCKET)
        self.stream.makeConnection(WebSocketLink(self.ws, self.ws.transport))

    def textMessageReceived(self, message: str) -> None:
        stream = self.stream
        if stream is None or stream.closing:
            return
        data = message.encode("utf-8")
        if data.isspace() or not data:
            return                      # a keepalive some clients send anyway
        try:
            element = framing_element(data)
        except FramingError as e:
            stream.stream_error(e.condition, str(e))
            return
        if element is not None:
            data = (stream_header(element.getAttribute("to"), element.getAttribute("version"))
                    if element.name == "open" else STREAM_END)
        stream.dataReceived(data)
        parser = stream.stream
        if not stream.closing and parser is not None and parser.depth > 1:
            stream.stream_error("not-well-formed", "a WebSocket message holds whole "
                                                   "elements (RFC 7395 3.3.3)")

    def bytesMessageReceived(self, data: bytes) -> None:
        if self.stream is not None:
            self.stream.stream_error("bad-format", "XMPP over WebSocket is text messages")

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.connectionLost(reason)


def _nothing(*args: object) -> None:
    """Parser events a framing element has no use for."""


class XMPPWebSocketResource(resource.Resource):
    """``/xmpp-websocket``: checks the Origin (:func:`origin_allowed`) and upgrades with
    the ``xmpp`` subprotocol, which Twisted's ``WebSocketResource`` cannot select, so its
    handshake is done here with wsproto and the connection handed to Twisted's WebSocket
    wire protocol as that resource does."""

    isLeaf = True

    def __init__(self, server: "C2SServer", origins: frozenset[str]):
        super().__init__()
        self.server = server
        self.origins = origins

    def render_GET(self, request: Request) -> bytes | int:
        request.setHeader(b"cache-control", b"no-store")
        if not origin_allowed(self.origins, request):
            return _refuse(request, 403, "origin not allowed: add it to [comet] cors_origins")
        offered = [p.strip() for p in header(request, b"sec-websocket-protocol").split(",")]
        if SUBPROTOCOL not in offered:
            return _refuse(request, 400, "ask for the 'xmpp' WebSocket subprotocol (RFC 7395)")
        headers = [(name, value) for name, values in request.requestHeaders.getAllRawHeaders()
                   for value in values]
        handshake = H11Handshake(ConnectionType.SERVER)
        try:
            handshake.initiate_upgrade_connection(headers, request.path)
        except (ProtocolError, h11.ProtocolError, UnicodeError) as e:
            return _refuse(request, 400, f"not a valid WebSocket handshake: {e}")
        accept = handshake.send(AcceptConnection(subprotocol=SUBPROTOCOL))
        protocol = XMPPWebSocket(self.server, request.isSecure())
        wire = _WebSocketWireProtocol(handshake.connection, serverBootstrap, protocol)
        request.channel._protocolUpgradeForWebsockets(wire)
        request.channel.transport.write(accept)
        protocol.negotiationFinished()
        return NOT_DONE_YET


def _refuse(request: Request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return message.encode("utf-8") + b"\n"

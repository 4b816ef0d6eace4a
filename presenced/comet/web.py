"""Everything on the comet port that is not a stream: demo page, WebSocket, JSON 404s.

Served by ``twisted.web`` on connections the lean parser handed over. Each such connection
carries one request: the next one may be a stream, which only the lean parser serves. The
request must arrive whole within ``[comet] request_timeout``, its body within
``max_body_bytes``; a WebSocket's messages are bounded by ``websocket_max_message_bytes``.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Optional

from twisted.internet.interfaces import IProtocol
from twisted.web import resource, server, static

from presenced.comet.http import error_body, json_response
from presenced.comet.websocket import UserWebSocket
from presenced.comet.wslimit import MessageSizeLimit
from presenced.health import HealthResource
from presenced.httpdeadline import DeadlineChannel

if TYPE_CHECKING:
    from presenced.comet.door import CometDoor

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")


class JSONError(resource.Resource):
    """A JSON ``{"error": ...}`` answer to any method."""

    isLeaf = True

    def __init__(self, status: int, message: str):
        super().__init__()
        self.status = status
        self.message = message

    def render(self, request: server.Request) -> bytes:
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        return error_body(self.message)


def not_found(request: server.Request) -> JSONError:
    return JSONError(404, f"no such path: {request.path.decode('utf-8', 'replace')}")


class StaticFiles(static.File):
    """``/static/``: a missing file is a JSON 404 like every other on this port, and so is a
    name with NUL (the OS refuses it with ValueError, which would answer 500)."""

    childNotFound = JSONError(404, "no such file")

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        if b"\0" in path:
            return self.childNotFound
        return super().getChild(path, request)


class WebSockets(resource.Resource):
    """``/ws/<user>``."""

    def __init__(self, door: "CometDoor"):
        super().__init__()
        self.door = door

    def getChild(self, name: bytes, request: server.Request) -> resource.Resource:
        if not name:
            return not_found(request)
        return UserWebSocket(self.door, name.decode("utf-8", "replace"))


class CometRoot(resource.Resource):
    """``/`` (the demo page), ``/static/``, ``/ws/``, ``/health`` (:mod:`presenced.health`),
    what other doors offer in ``core.http_resources`` (looked up per request: those doors
    may start after this one); a JSON 404 for anything else."""

    def __init__(self, door: "CometDoor"):
        super().__init__()
        self.offered = door.core.http_resources
        self.putChild(b"", static.File(os.path.join(STATIC_DIR, "index.html")))
        self.putChild(b"static", StaticFiles(STATIC_DIR))
        self.putChild(b"ws", WebSockets(door))
        self.putChild(b"health", HealthResource(door.core))

    def getChild(self, name: bytes, request: server.Request) -> resource.Resource:
        offered = self.offered.get(name)
        return not_found(request) if offered is None else offered


class OneRequestChannel(DeadlineChannel):
    """An HTTP channel that closes after its request, so a stream request that follows on
    the same connection reaches the lean parser on a new one."""

    def checkPersistence(self, request: server.Request, version: bytes) -> bool:
        request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        return False

    def _protocolUpgradeForWebsockets(self, protocol: IProtocol) -> None:
        """The WebSocket's bytes pass the message size check first."""
        super()._protocolUpgradeForWebsockets(
            MessageSizeLimit(protocol, self.site.websocket_max_message_bytes))


TOO_LARGE = json_response(413, error_body("request body too large"))


class BoundedRequest(server.Request):
    """A request whose body may be at most the site's ``max_body_bytes`` (BOSH bodies):
    twisted.web takes a body of any size, spooled to a temporary file past 100 KB (blocking
    writes). Past the limit: ``413`` and closed, the body never held."""

    received = 0
    refused = False

    def gotLength(self, length: Optional[int]) -> None:
        self.content = io.BytesIO()
        if length is not None and length > self.channel.site.max_body_bytes:
            self.refuse()

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return
        self.received += len(data)
        if self.received > self.channel.site.max_body_bytes:
            self.refuse()
        else:
            self.content.write(data)

    def process(self) -> None:
        if not self.refused:
            super().process()

    def refuse(self) -> None:
        self.refused = True
        self.channel.transport.write(TOO_LARGE)
        self.channel.transport.loseConnection()


class CometSite(server.Site):
    protocol = OneRequestChannel
    requestFactory = BoundedRequest
    displayTracebacks = False

    def __init__(self, root: resource.Resource, timeout: float, websocket_max_message_bytes: int,
                 max_body_bytes: int):
        super().__init__(root, timeout=timeout)
        self.websocket_max_message_bytes = websocket_max_message_bytes
        self.max_body_bytes = max_body_bytes


def make_site(door: "CometDoor") -> server.Site:
    settings = door.core.config.comet
    site = CometSite(CometRoot(door), settings.request_timeout,
                     settings.websocket_max_message_bytes, settings.max_body_bytes)
    site.noisy = False
    return site

"""Everything on the comet port that is not a stream: demo page, WebSocket, JSON 404s.

Served by ``twisted.web`` on connections the lean parser handed over. Each such connection
carries one request: the next one may be a stream, which only the lean parser serves. The
request must arrive whole within ``[comet] request_timeout``, its body within
``max_body_bytes``; a WebSocket's messages are bounded by ``websocket_max_message_bytes``.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet.interfaces import IProtocol
from twisted.web import resource, server, static

from presenced.httphead import error_body
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
    name with NUL (the OS refuses it with ValueError, which would answer 500) or one that is
    not UTF-8 (twisted.web would log a traceback for each: a fuzzer's flood of log lines)."""

    childNotFound = JSONError(404, "no such file")

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        if b"\0" in path:
            return self.childNotFound
        try:
            path.decode("utf-8")
        except UnicodeDecodeError:
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
    ``/upload/`` (:mod:`presenced.comet.upload`, mounted by the door), what other
    doors offer in ``core.http_resources`` (looked up per request: those doors may start
    after this one); a JSON 404 for anything else."""

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


class CometRequest(server.Request):
    """A request whose body is kept in memory: the channel bounds it (``body_limit``), so
    twisted.web's spooling of a large body to a temporary file (blocking writes) is never
    needed."""

    def gotLength(self, length: Optional[int]) -> None:
        self.content = io.BytesIO()


class CometSite(server.Site):
    protocol = OneRequestChannel
    requestFactory = CometRequest
    displayTracebacks = False

    def __init__(self, root: resource.Resource, settings: Any):
        super().__init__(root, timeout=settings.request_timeout)
        # (method, path prefix) -> the body limit of such requests, where it is not
        # max_body_bytes (an upload's PUT, bounded by its slot).
        self.large_bodies: dict[tuple[bytes, bytes], int] = {}
        self.apply(settings)

    def apply(self, settings: Any) -> None:
        """The ``[comet]`` limits of the twisted.web part (a reload: for the connections
        handed over and the requests begun from now on)."""
        self.timeOut = settings.request_timeout
        self.websocket_max_message_bytes = settings.websocket_max_message_bytes
        self.max_body_bytes = settings.max_body_bytes

    def body_limit(self, method: bytes, path: bytes) -> int:
        """The most a request body may hold here (``DeadlineChannel`` asks)."""
        for (large_method, prefix), limit in self.large_bodies.items():
            if method == large_method and path.startswith(prefix):
                return limit
        return self.max_body_bytes


def make_site(door: "CometDoor") -> server.Site:
    site = CometSite(CometRoot(door), door.core.config.comet)
    site.noisy = False
    return site

"""``GET /health`` for load balancers, on the comet HTTP door and the web admin.

200 ``{"status": "ok", ...}`` when every door listens (the node is ready) and the store
answers a cheap read within :data:`STORE_DEADLINE`; 503 with the reason while the node
starts or stops, or when the store does not answer, so a balancer takes the node out of
rotation before its users notice.

Parts of the server add their own figures through the hook ``health-details`` (each handler
returns a dict merged into the body): the cluster its live nodes, the web admin's session
census the sessions per door. Every figure is kept up to date as things happen, so a check
costs the same however many users are online.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, reactor
from twisted.web import resource, server

from presenced import __version__

if TYPE_CHECKING:
    from presenced.core import Core

STORE_DEADLINE = 2.0
# A user name no account can have (no domain is "invalid"): the read touches one index.
PROBE_USER = "health-probe@invalid"


async def check(core: "Core") -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body of a health check now."""
    body: dict[str, Any] = {"status": "ok", "state": core.state, "version": __version__,
                            "store": core.store.name,
                            "uptime": round(time.time() - core.started_at, 1),
                            "sessions": core.router.session_count()}
    for details in core.hooks.collect("health-details"):
        body.update(details)
    if core.state != "ready":
        body["status"] = core.state
        return 503, body
    started = time.monotonic()
    d = defer.maybeDeferred(core.store.user_exists, PROBE_USER)
    d.addTimeout(STORE_DEADLINE, reactor)
    try:
        await d
    except Exception as e:  # any failure of the read means the store is not usable
        body.update(status="store unavailable", store_error=f"{type(e).__name__}: {e}")
        return 503, body
    body["store_ms"] = round((time.monotonic() - started) * 1000, 1)
    return 200, body


class HealthResource(resource.Resource):
    """The ``/health`` resource; no login or token (it tells nothing about users)."""

    isLeaf = True

    def __init__(self, core: "Core"):
        super().__init__()
        self.core = core

    def render_GET(self, request: server.Request) -> Any:
        d = defer.ensureDeferred(check(self.core))
        d.addCallback(self._answer, request)
        return server.NOT_DONE_YET

    @staticmethod
    def _answer(result: tuple[int, dict[str, Any]], request: server.Request) -> None:
        status, body = result
        if request.finished or request._disconnected:
            return
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.write(json.dumps(body).encode())
        request.finish()

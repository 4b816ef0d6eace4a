"""``GET /metrics``: everything in ``core.metrics`` as Prometheus text, plus the router and
store figures this module registers there (so every scraper sees one list).

The doors count their own connections, logins, auth failures and stanzas
(``presenced_connections{door}``...); here are the figures no door owns: router deliveries and
errors, sessions per front door, store latency and Redis reconnects.
"""

from __future__ import annotations

import hmac
import math
import time
from typing import Optional

from twisted.web.resource import Resource

from presenced.core import Core
from presenced.doors import SESSION_DOORS
from presenced.webadmin.stats import EventRates, SessionCensus, StoreProbe

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def register_metrics(core: Core, rates: EventRates, probe: StoreProbe) -> SessionCensus:
    """Describe and register the router and store series; returns the session census that
    keeps ``presenced_router_sessions{door}`` up to date."""
    m, router, store = core.metrics, core.router, core.store
    m.describe("presenced_uptime_seconds", "gauge", "Seconds since this node started.")
    m.gauge("presenced_uptime_seconds", lambda: time.time() - core.started_at)
    m.describe("presenced_router_online_users", "gauge",
               "Users with at least one session on this node.")
    m.gauge("presenced_router_online_users", router.online_users)
    m.describe("presenced_router_events_sent_total", "counter",
               "Events fanned out to a subject's subscribers (router.send).")
    m.gauge("presenced_router_events_sent_total", lambda: router.events_sent)
    m.describe("presenced_router_deliveries_total", "counter",
               "Events handed to a session (one event to three sessions counts three).")
    m.gauge("presenced_router_deliveries_total", lambda: router.deliveries)
    m.describe("presenced_router_delivery_errors_total", "counter",
               "Deliveries dropped because the session raised.")
    m.gauge("presenced_router_delivery_errors_total", lambda: router.delivery_errors)
    m.describe("presenced_router_deliveries_per_second", "gauge",
               "Deliveries per second over the last sampling interval.")
    m.gauge("presenced_router_deliveries_per_second", lambda: rates.deliveries_per_second)
    m.describe("presenced_store_latency_seconds", "gauge",
               "Round trip of the last store probe (count_users), or of the one in flight "
               "when longer.")
    m.gauge("presenced_store_latency_seconds", lambda: probe.latency or 0.0)
    m.describe("presenced_store_probe_failures_total", "counter", "Store probes that failed.")
    m.gauge("presenced_store_probe_failures_total", lambda: probe.failures)
    m.describe("presenced_accounts", "gauge", "Accounts in the store (at the last probe).")
    m.gauge("presenced_accounts", lambda: probe.accounts or 0)
    if hasattr(store, "reconnects"):
        m.describe("presenced_store_reconnects_total", "counter",
                   "Times the store reconnected to a Redis server.")
        m.gauge("presenced_store_reconnects_total", lambda: store.reconnects)
    m.describe("presenced_router_sessions", "gauge", "Online sessions per front door.")

    def track(door: str) -> None:
        m.gauge("presenced_router_sessions", lambda: census.counts[door], door=door)

    # Doors whose clients hold router sessions: their series exist (at 0) from the start.
    enabled = [door for door in SESSION_DOORS if getattr(core.config, door).enabled]
    census = SessionCensus(router, enabled, track)
    return census


class MetricsResource(Resource):
    """The scrape endpoint; open, or behind ``Authorization: Bearer <metrics_token>``."""

    isLeaf = True

    def __init__(self, core: Core):
        super().__init__()
        self.core = core

    @property
    def token(self) -> bytes:
        """``[webadmin] metrics_token``, read on each scrape (a reload changes it)."""
        return self.core.config.webadmin.metrics_token.encode("utf-8")

    def render_GET(self, request) -> bytes:
        if self.token:
            refused = self._refused(request)
            if refused is not None:
                return refused
        request.setHeader(b"content-type", CONTENT_TYPE)
        return self.core.metrics.render().encode("utf-8")

    def _refused(self, request) -> Optional[bytes]:
        """The answer to a scrape without the right token, or None when it has it. A wrong
        token counts with the auth guard (per address); a banned address gets 429."""
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        host = getattr(request.getClientAddress(), "host", "?")
        guard = self.core.auth_guard
        wait = guard.refusal(host)
        if wait:
            request.setResponseCode(429)
            request.setHeader(b"retry-after", str(math.ceil(wait)).encode())
            return b"too many wrong metrics tokens from this address: try again later\n"
        scheme, _, credential = (request.getHeader(b"authorization") or b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), self.token):
            return None
        if credential:
            guard.failed("webadmin", host)
        request.setResponseCode(401)
        request.setHeader(b"www-authenticate", b'Bearer realm="presenced metrics"')
        return b"metrics need Authorization: Bearer <[webadmin] metrics_token>\n"

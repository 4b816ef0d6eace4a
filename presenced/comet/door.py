"""The comet door: what every comet connection shares (settings, auth, framing, heartbeats).

Connections start in :class:`presenced.comet.stream.CometConnection`, the lean parser that
serves ``/stream/<user>`` and ``/poll/<user>``; every other path is handed to the
``twisted.web`` site of :mod:`presenced.comet.web` (demo page, WebSocket, JSON 404s).
"""

from __future__ import annotations

import json
import math
from typing import Optional

from twisted.internet import reactor, task
from twisted.internet.interfaces import IAddress, IProtocol, ITransport
from twisted.internet.protocol import Factory
from twisted.web.server import Site

from presenced.comet.frames import ndjson_frame, sse_frame
from presenced.events import RenderCache
from presenced.httphead import HTTPError
from presenced.comet.replay import Channels, UserChannel
from presenced.comet.siteauth import make_authorizer
from presenced.comet.stream import CometConnection
from presenced.comet.upload import mount as mount_uploads
from presenced.comet.web import make_site
from presenced.config import Config
from presenced.core import Core
from presenced.flow import TurnBatch
from presenced.tokens import check_token
from presenced.users import BadUser

DOOR = "comet"


class CometDoor(Factory):
    """Builds comet connections; holds what they share."""

    noisy = False

    def __init__(self, core: Core):
        settings = core.config.comet
        self.core = core
        self.router = core.router
        self.apply(core.config)
        self.channels = Channels(core.router, settings.replay_size, settings.replay_linger)
        self.ndjson = RenderCache(ndjson_frame)
        self.sse = RenderCache(sse_frame)
        self.text = RenderCache(lambda event: event.to_json().decode("utf-8"))  # WebSocket
        # Streams' event frames, one write per stream per reactor turn.
        self.batch = TurnBatch(reactor)
        self.streams: set = set()      # open streams, waiting polls, WebSockets
        self.connections = 0           # open connections, but those handed to twisted.web
        self.events_out = 0
        self.site: Site = make_site(self)
        mount_uploads(self.site, self)
        # [comet] authorize_url: the site names the user of a request without a token.
        self.site_auth = make_authorizer(reactor, settings, core.user)
        self._heartbeat = task.LoopingCall(self.beat)
        self._describe_metrics()
        core.hooks.add("config-reloaded", self.config_reloaded)

    def apply(self, config: Config) -> None:
        """Take the ``[comet]`` keys that apply to requests from now on (a reload changes
        them for new requests and streams; open streams keep their buffer bound)."""
        settings = config.comet
        self.require_token = settings.require_token
        self.cors_origins = frozenset(settings.cors_origins)
        self.heartbeat_interval = settings.heartbeat_interval
        self.poll_timeout = settings.poll_timeout
        self.max_buffered_bytes = settings.max_buffered_bytes
        self.header_timeout = settings.header_timeout
        self.max_request_bytes = settings.max_request_bytes
        self.websocket_idle_timeout = settings.websocket_idle_timeout

    def config_reloaded(self, old: Config, new: Config) -> None:
        self.apply(new)
        self.site.apply(new.comet)
        if self._heartbeat.running and old.comet.heartbeat_interval != self.heartbeat_interval:
            self._heartbeat.stop()
            self._heartbeat.start(self.heartbeat_interval, now=False)

    # --- factory -------------------------------------------------------------------------

    def buildProtocol(self, addr: IAddress):
        return CometConnection(self)

    def startFactory(self) -> None:
        if not self._heartbeat.running:
            self._heartbeat.start(self.heartbeat_interval, now=False)

    def stopFactory(self) -> None:
        if self._heartbeat.running:
            self._heartbeat.stop()

    def beat(self) -> None:
        """Heartbeat every stream (proxies keep them open) and expire idle replay buffers."""
        for stream in list(self.streams):
            stream.heartbeat()
        self.channels.expire()

    # --- shared decisions ----------------------------------------------------------------

    def authorize(self, user_text: str, token: Optional[str], host: str) -> str:
        """The user a request from ``host`` may stream, or :class:`HTTPError`
        400/401/403/404, or 429 while the auth guard bans ``host``. Bad tokens count per
        address only: a token cannot be guessed, so banning the account would only let
        anyone shut its owner out."""
        if not user_text or "/" in user_text:
            raise HTTPError(404, "no such path: expected /stream/<user> or /ws/<user>")
        try:
            user = self.core.user(user_text)
        except BadUser as e:
            raise HTTPError(400, str(e)) from None
        if not self.require_token:
            return user
        if token is None:
            self.core.metrics.inc("presenced_auth_failures_total", door=DOOR)
            raise HTTPError(401, "a stream token is required: ?token= or Authorization: Bearer")
        guard = self.core.auth_guard
        wait = guard.refusal(host)
        if wait:
            raise HTTPError(429, "too many bad tokens from this address: try again in "
                                 f"{math.ceil(wait)} seconds")
        if not check_token(self.core.secret, user, token):
            self.core.metrics.inc("presenced_auth_failures_total", door=DOOR)
            guard.failed(DOOR, host)
            raise HTTPError(403, f"the token is not valid for {user} (wrong user or expired)")
        return user

    def needs_site(self, token: Optional[str]) -> bool:
        """A request without a token goes to the site when ``authorize_url`` is set."""
        return token is None and self.require_token and self.site_auth is not None

    async def authorize_by_site(self, user_text: str, request, host: str) -> str:
        """The user the site allows ``request`` for; 403 when the path names another user,
        503 when the site cannot say (:mod:`presenced.comet.siteauth`)."""
        if not user_text or "/" in user_text:
            raise HTTPError(404, "no such path: expected /stream/<user> or /ws/<user>")
        try:
            wanted = self.core.user(user_text)
        except BadUser as e:
            raise HTTPError(400, str(e)) from None
        user = await self.site_auth.user_for(request.headers, request.path, host)
        if user != wanted:
            raise HTTPError(403, f"the site allows this browser {user}'s stream, not {wanted}'s")
        return user

    def cors_headers(self, origin: str) -> list[tuple[str, str]]:
        if origin and (origin in self.cors_origins or "*" in self.cors_origins):
            return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        return []

    def welcome(self, user: str, kind: str) -> bytes:
        return json.dumps({"type": "welcome", "user": user, "format": kind,
                           "heartbeat": self.heartbeat_interval},
                          separators=(",", ":")).encode("utf-8")

    def stream_opened(self, stream: object, user: str) -> None:
        self.streams.add(stream)
        self.core.metrics.inc("presenced_comet_streams_opened_total")
        self.router.login(user, stream)

    def stream_closed(self, stream: object, channel: UserChannel) -> None:
        """Out of the router and the heartbeats at once; the replay channel detached."""
        self.streams.discard(stream)
        self.router.logout(stream)
        self.channels.detach(channel)

    def connection_made(self) -> None:
        self.connections += 1
        self.core.metrics.inc("presenced_connections_total", door=DOOR)

    def connection_lost(self) -> None:
        self.connections -= 1

    def web_channel(self, transport: ITransport) -> IProtocol:
        """A twisted.web channel to take over a connection whose path is not a stream's."""
        return self.site.buildProtocol(transport.getPeer())

    # --- metrics -------------------------------------------------------------------------

    def _describe_metrics(self) -> None:
        metrics = self.core.metrics
        metrics.describe("presenced_comet_streams", "gauge",
                         "Open comet streams, long polls and WebSockets")
        metrics.describe("presenced_comet_streams_opened_total", "counter",
                         "Comet streams, long polls and WebSockets opened")
        metrics.describe("presenced_comet_replay_users", "gauge",
                         "Users with a comet replay buffer")
        metrics.gauge("presenced_connections", lambda: self.connections, door=DOOR)
        metrics.gauge("presenced_events_out_total", lambda: self.events_out, door=DOOR)
        metrics.gauge("presenced_comet_streams", lambda: len(self.streams))
        metrics.gauge("presenced_comet_replay_users", lambda: len(self.channels))


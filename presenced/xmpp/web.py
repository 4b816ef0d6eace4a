"""What the XMPP door offers the public HTTP door (``core.http_resources``, served on the
``[comet]`` port): ``/xmpp-websocket`` (RFC 7395, :mod:`presenced.xmpp.websocket`),
``/http-bind`` (BOSH, :mod:`presenced.xmpp.bosh`) and ``/.well-known/host-meta`` naming
them (XEP-0156, :mod:`presenced.xmpp.hostmeta`). Web streams are streams of the door's one
:class:`~presenced.xmpp.server.C2SServer`, like TCP ones."""

from __future__ import annotations

from typing import TYPE_CHECKING

from presenced.xmpp.bosh import BoshLimits, BoshResource, BoshSessions
from presenced.xmpp.hostmeta import ConnectionLinks, WellKnown
from presenced.xmpp.websocket import XMPPWebSocketResource

if TYPE_CHECKING:
    from presenced.core import Core
    from presenced.xmpp.server import C2SServer


def offer_web_resources(core: "Core", server: "C2SServer") -> None:
    """Fill ``core.http_resources`` with what ``[xmpp] websocket`` and ``bosh`` enable."""
    settings = core.config.xmpp
    origins = frozenset(core.config.comet.cors_origins)
    if settings.websocket:
        core.http_resources[b"xmpp-websocket"] = XMPPWebSocketResource(server, origins)
    if settings.bosh:
        limits = BoshLimits.from_config(settings, core.config.router.session_queue_bytes)
        core.http_resources[b"http-bind"] = BoshResource(BoshSessions(server, limits), origins)
    if settings.websocket or settings.bosh:
        core.http_resources[b".well-known"] = WellKnown(
            ConnectionLinks(settings.web_public_url, settings.websocket, settings.bosh))

"""The base of every c2s feature handler, and what a handler may use of the server.

This module imports no feature: the feature list is assembled at the door's composition
root, :mod:`presenced.xmpp.service`, and handed to the server. A handler declares the stanzas
it answers (``routes``) and the router events it renders (``event_renderers``); it reaches
other features only through named hooks on ``core.hooks`` (see :mod:`presenced.xmpp`), never
through another handler's attributes.
"""

from __future__ import annotations

import presenced.wokkel_compat  # noqa: F401  (before any wokkel import)

from typing import TYPE_CHECKING, Optional

from twisted.logger import Logger
from wokkel import disco
from wokkel.iwokkel import IDisco
from wokkel.subprotocols import XMPPHandler
from zope.interface import Attribute, Interface, implementer

if TYPE_CHECKING:
    from presenced.core import Core
    from presenced.xmpp.session import C2SSession
    from presenced.xmpp.stanzas import Address


class IC2SServer(Interface):
    """What the c2s server offers its feature handlers (and nothing else)."""

    core = Attribute("The node's :class:`presenced.core.Core`.")
    handlers = Attribute("Every feature handler, in composition order (disco gathers them).")
    events_out = Attribute("Counter of stanzas rendered from router events (an int).")
    domains = Attribute("The XMPP domains this server serves (a frozenset).")
    services = Attribute("Service domain (``upload.localhost``) -> the function serving it.")

    def route(session, stanza, target: str, address) -> None:
        """Hand a stanza to the routes of ``target`` (``host``, ``self``, ``bare``, ``full``
        or a service's label)."""

    def find_session(address: "Address") -> Optional["C2SSession"]:
        """The local resource at a full address, or None."""

    def must_start_tls(stream) -> bool:
        """Whether ``stream`` has to negotiate TLS before anything else."""


@implementer(IDisco)
class FeatureHandler(XMPPHandler):
    """One feature of every c2s session, created once per server.

    ``routes`` maps event names (``iq-get/host/urn:xmpp:ping:ping``, ``message/bare``...) to
    method names; ``pre_auth_routes`` maps IQ namespaces answered before authentication
    to methods called as ``method(stream, iq)``; ``event_renderers`` maps router event types to method names called as
    ``method(session, event)``. ``server_features`` / ``account_features`` are the disco#info
    features this handler contributes for the server's JID and for account (bare) JIDs;
    override ``getDiscoInfo`` for anything richer (identities, nodes).
    """

    log = Logger()  # handlers' errbacks log through it
    routes: dict[str, str] = {}
    pre_auth_routes: dict[str, str] = {}  # namespace -> method(stream, iq), before SASL
    event_renderers: dict[str, str] = {}
    # Top-level non-stanza elements by namespace -> method(stream, element), once
    # authenticated (bound or not), and (namespace, name) offered in the stream features.
    nonza_routes: dict[str, str] = {}
    stream_features: tuple[tuple[str, str], ...] = ()
    server_features: tuple[str, ...] = ()
    account_features: tuple[str, ...] = ()
    # The route label of a service on subdomains of its own (``upload``), "" for none.
    service: str = ""

    def __init__(self, server: IC2SServer):
        super().__init__()
        self.server = server
        self.core: "Core" = server.core

    def service_domains(self) -> tuple[str, ...]:
        """Service domains this handler serves (``conference.localhost``): every stanza a
        client sends to that domain or a JID on it goes to :meth:`on_service_stanza`,
        whatever its kind. With a ``service`` label: its :meth:`service_hosts`."""
        return tuple(self.service_hosts()) if self.service else ()

    def on_service_stanza(self, session, stanza, address) -> Optional[object]:
        """A stanza to one of :meth:`service_domains`. By default it takes the routes with
        the ``service`` label as target (``iq-get/upload/urn:xmpp:http:upload:0:request``;
        ``iq-get/service/...`` answers for every service: disco); a handler that serves
        whole JIDs itself (group chat rooms) overrides this."""
        return self.server.route(session, stanza, self.service, address)

    def attached(self) -> None:
        """Called once the server has wired the handler's routes (register hooks here)."""

    def service_hosts(self) -> list[str]:
        """The hosts of this handler's ``service``: ``<service>.<domain>`` for every domain
        (none while the service is off, in an override)."""
        return [f"{self.service}.{domain}" for domain in self.core.domains]

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        if nodeIdentifier or target.host not in self.server.domains:
            return []
        names = self.account_features if target.user else self.server_features
        return [disco.DiscoFeature(name) for name in names]

    def getDiscoItems(self, requestor, target, nodeIdentifier=""):
        return []

"""The feature handlers of the c2s door: the one list, and the base class they share.

Adding a feature is writing a :class:`FeatureHandler` subclass in its own module and naming
it in :data:`FEATURES`. The server creates each handler once, wires its ``routes`` and
``event_renderers`` (see :mod:`presenced.xmpp`) and asks it for disco features.
"""

from __future__ import annotations

import presenced.wokkel_compat  # noqa: F401  (before any wokkel import)

from typing import TYPE_CHECKING

from wokkel import disco
from wokkel.iwokkel import IDisco
from wokkel.subprotocols import XMPPHandler
from zope.interface import implementer

if TYPE_CHECKING:
    from presenced.xmpp.server import C2SServer


@implementer(IDisco)
class FeatureHandler(XMPPHandler):
    """One feature of every c2s session, created once per server.

    ``server_features`` / ``account_features`` are the disco#info features this handler
    contributes for the server's JID and for account (bare) JIDs; override ``getDiscoInfo``
    for anything richer (identities, nodes).
    """

    routes: dict[str, str] = {}
    event_renderers: dict[str, str] = {}
    server_features: tuple[str, ...] = ()
    account_features: tuple[str, ...] = ()

    def __init__(self, server: "C2SServer"):
        super().__init__()
        self.server = server
        self.core = server.core

    def attached(self) -> None:
        """Called once the server has wired the handler's routes (register hooks here)."""

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        if nodeIdentifier:
            return []
        names = self.account_features if target.user else self.server_features
        return [disco.DiscoFeature(name) for name in names]

    def getDiscoItems(self, requestor, target, nodeIdentifier=""):
        return []


def _features() -> tuple[type[FeatureHandler], ...]:
    from presenced.xmpp.disco import DiscoHandler
    from presenced.xmpp.messages import MessageHandler
    from presenced.xmpp.pep import PepHandler
    from presenced.xmpp.ping import PingHandler
    from presenced.xmpp.presence import PresenceHandler
    from presenced.xmpp.register import RegisterHandler
    from presenced.xmpp.roster import RosterHandler
    from presenced.xmpp.vcard import VCardHandler
    from presenced.xmpp.version import VersionHandler

    return (DiscoHandler, RosterHandler, PresenceHandler, MessageHandler, PingHandler,
            VersionHandler, VCardHandler, RegisterHandler, PepHandler)


FEATURES: tuple[type[FeatureHandler], ...] = _features()

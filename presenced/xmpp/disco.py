"""Service Discovery (XEP-0030) for the server and for accounts.

The answer is assembled from every feature handler's ``getDiscoInfo``/``getDiscoItems``
(wokkel's ``IDisco``) by wokkel's own ``DiscoHandler`` gathering, so no list of features is
kept by hand. The identities are ours: the server is ``server/im``, an account
``account/registered``.
"""

from __future__ import annotations

import presenced.wokkel_compat  # noqa: F401  (before any wokkel import)

from twisted.internet import defer
from twisted.words.protocols.jabber.jid import JID
from wokkel import disco

from presenced.xmpp.features import FeatureHandler

INFO = f"{disco.NS_DISCO_INFO}:query"
ITEMS = f"{disco.NS_DISCO_ITEMS}:query"


class DiscoHandler(FeatureHandler):
    routes = {f"iq-get/{target}/{query}": method
              for target in ("host", "self", "bare", "service")
              for query, method in ((INFO, "on_info"), (ITEMS, "on_items"))}
    server_features = (disco.NS_DISCO_INFO, disco.NS_DISCO_ITEMS)
    account_features = (disco.NS_DISCO_INFO, disco.NS_DISCO_ITEMS)

    def attached(self) -> None:
        self.gatherer = disco.DiscoHandler()
        self.gatherer.parent = self.server.handlers

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        if nodeIdentifier:
            return []
        if target.host not in self.server.domains:    # a service: its handler names it
            return [disco.DiscoFeature(name) for name in self.server_features]
        if target.user:
            identity = disco.DiscoIdentity("account", "registered")
        else:
            identity = disco.DiscoIdentity("server", "im", "presenced")
        return [identity] + super().getDiscoInfo(requestor, target, nodeIdentifier)

    @defer.inlineCallbacks
    def on_info(self, session, iq):
        target, node = self._target(session, iq)
        if (target.user and target.host in self.server.domains
                and target.userhost() != session.user):
            exists = yield self.core.accounts.exists(target.userhost())
            if not exists:
                session.error(iq, "item-not-found")
                return
        found = yield self.gatherer.info(session.jid, target, node)
        if node and not found:
            session.error(iq, "item-not-found")
            return
        info = disco.DiscoInfo()
        info.nodeIdentifier = node
        for element in found:
            info.append(element)
        session.result(iq, info.toElement())

    @defer.inlineCallbacks
    def on_items(self, session, iq):
        target, node = self._target(session, iq)
        found = yield self.gatherer.items(session.jid, target, node)
        items = disco.DiscoItems()
        items.nodeIdentifier = node
        for element in found:
            items.append(element)
        session.result(iq, items.toElement())

    @staticmethod
    def _target(session, iq) -> tuple[JID, str]:
        to = iq.getAttribute("to")
        target = JID(to) if to else JID(session.user)
        return target, iq.firstChildElement().getAttribute("node", "")

"""vcard-temp (XEP-0054): each account stores its own vCard; anyone may read it.

Kept as the client sent it (bounded by the stanza size limit) in the store's private
documents, so clients that fetch vCards on login get an answer instead of stalling.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.words.xish import domish

from presenced.store import PRIVATE_STORE
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.stanzas import attr

NS_VCARD = "vcard-temp"
KEY = "vcard-temp"


class VCardHandler(FeatureHandler):
    routes = {f"iq-get/self/{NS_VCARD}:vCard": "on_get",
              f"iq-get/bare/{NS_VCARD}:vCard": "on_get",
              f"iq-set/self/{NS_VCARD}:vCard": "on_set"}
    server_features = (NS_VCARD,)
    account_features = (NS_VCARD,)

    @defer.inlineCallbacks
    def on_get(self, session, iq):
        owner = iq.getAttribute("to") or session.user
        text = yield self.core.store.open_map(PRIVATE_STORE).get(owner, KEY)
        if text is None:
            session.result(iq, domish.Element((NS_VCARD, "vCard")))
        else:
            session.write(("<iq type='result' id=%s from=%s>%s</iq>" % (
                attr(iq["id"]), attr(owner), text)).encode("utf-8"))

    def on_set(self, session, iq):
        vcard = iq.firstChildElement()
        d = self.core.store.open_map(PRIVATE_STORE).set(session.user, KEY, vcard.toXml())
        d.addCallback(self._stored, session, iq, vcard)
        return d

    def _stored(self, _: object, session, iq, vcard: domish.Element) -> None:
        session.result(iq)
        self.core.hooks.fire("xmpp-vcard-stored", session, vcard)

"""Private XML Storage (XEP-0049, ``jabber:iq:private``): any namespace a client keeps on the
server for itself — bookmarks (XEP-0048 ``storage:bookmarks``), roster notes (XEP-0145
``storage:rosternotes``), client settings.

Each document is kept whole, by its element's qualified name, in the account's ``private``
map (beside the vCard); the documents of one account together stay within ``[server]
private_storage_bytes``: a store past it is refused with ``not-acceptable`` and keeps
nothing of that request.

The feature is listed on the server's disco#info as well as on accounts', as Prosody does:
clients look for it there (poezio 0.14 checks only the server's features, and without it
says "No remote bookmark storage available" and keeps bookmarks locally).

Hooks: ``xmpp-private-document(user, wanted_element, stored_text)`` is collected on a get (a
handler may answer a Deferred of the document to serve instead: bookmarks from PEP);
``xmpp-private-stored(session, document)`` fires for each document stored.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.words.xish import domish

from presenced.store import PRIVATE_STORE
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.stanzas import NS_CLIENT, attr

NS_PRIVATE = "jabber:iq:private"
KEY_PREFIX = "xep0049 "
# Namespaces that are not private data (XEP-0049 3: a request for them is not-acceptable).
_NOT_PRIVATE = frozenset((NS_PRIVATE, NS_CLIENT, "jabber:server", "vcard-temp"))


def _key(element: domish.Element) -> str:
    return f"{KEY_PREFIX}{{{element.uri}}}{element.name}"


class PrivateStorageHandler(FeatureHandler):
    routes = {f"iq-get/self/{NS_PRIVATE}:query": "on_get",
              f"iq-set/self/{NS_PRIVATE}:query": "on_set"}
    server_features = (NS_PRIVATE,)
    account_features = (NS_PRIVATE,)

    def attached(self) -> None:
        self.limit = self.core.config.server.private_storage_bytes

    def _documents(self, session, iq: domish.Element):
        """The query's child elements; None after refusing a bad request."""
        children = list(iq.firstChildElement().elements())
        if len(children) != 1 and iq["type"] == "get":
            session.error(iq, "bad-request", "ask for exactly one namespace")
            return None
        if not children or any(c.uri in _NOT_PRIVATE or not c.uri for c in children):
            session.error(iq, "not-acceptable", "not a private namespace")
            return None
        return children

    @defer.inlineCallbacks
    def on_get(self, session, iq: domish.Element):
        documents = self._documents(session, iq)
        if documents is None:
            return
        wanted = documents[0]
        text = yield self.core.store.open_map(PRIVATE_STORE).get(session.user, _key(wanted))
        for provided in self.core.hooks.collect("xmpp-private-document", session.user, wanted,
                                                text):
            if provided is not None:
                text = yield provided
                break
        if text is None:
            text = domish.Element((wanted.uri, wanted.name)).toXml()
        session.write((f"<iq type='result' id={attr(iq['id'])}>"
                       f"<query xmlns='{NS_PRIVATE}'>{text}</query></iq>").encode("utf-8"))

    @defer.inlineCallbacks
    def on_set(self, session, iq: domish.Element):
        documents = self._documents(session, iq)
        if documents is None:
            return
        private = self.core.store.open_map(PRIVATE_STORE)
        kept = yield private.items(session.user)
        texts = {_key(d): d.toXml() for d in documents}
        sizes = {k: len(v.encode("utf-8")) for k, v in kept.items() if k.startswith(KEY_PREFIX)}
        sizes.update((k, len(v.encode("utf-8"))) for k, v in texts.items())
        if sum(sizes.values()) > self.limit:
            session.error(iq, "not-acceptable",
                          f"private storage holds at most {self.limit} bytes per account")
            return
        for key, text in texts.items():
            yield private.set(session.user, key, text)
        session.result(iq)
        for document in documents:
            self.core.hooks.fire("xmpp-private-stored", session, document)

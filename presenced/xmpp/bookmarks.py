"""Bookmarks kept in sync between private XML storage and PEP (XEP-0402 5.3,
``urn:xmpp:bookmarks:1#compat``): a client that stores XEP-0048 ``storage:bookmarks`` through
XEP-0049 and one that uses bookmarks 2 in PEP see the same rooms.

Once an account has a ``urn:xmpp:bookmarks:1`` PEP node, that node is the truth for rooms:

- storing ``storage:bookmarks`` in private storage (the ``xmpp-private-stored`` hook) publishes
  each ``<conference/>`` as a bookmarks 2 item (id = the room JID; an existing item only when
  it changed) and retracts the rooms the document no longer lists, so bookmarks 2 clients are
  notified as usual; the first such store creates the node;
- reading ``storage:bookmarks`` (the ``xmpp-private-document`` hook) answers the node's rooms,
  with the ``<url/>`` bookmarks of the stored document (bookmarks 2 has none) after them.

Without the node (an account that never stored bookmarks either way) the stored document is
answered as it is. Deleting the node falls back to the last stored document.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import defer
from twisted.words.xish import domish

from presenced.pep import PepError, PepNode
from presenced.xmlparse import parse_element
from presenced.xmpp.features import FeatureHandler

NS_LEGACY = "storage:bookmarks"
NS_BOOKMARKS = "urn:xmpp:bookmarks:1"
NS_COMPAT = f"{NS_BOOKMARKS}#compat"
# The node configuration XEP-0402 asks for.
NODE_OPTIONS = {"pubsub#persist_items": "true", "pubsub#access_model": "whitelist",
                "pubsub#max_items": "max", "pubsub#send_last_published_item": "never"}


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true")


def items_of(storage: domish.Element) -> dict[str, str]:
    """Room JID -> its bookmarks 2 ``<conference/>`` (serialised) for each conference of a
    XEP-0048 document; conferences without a JID are skipped."""
    items = {}
    for legacy in storage.elements(NS_LEGACY, "conference"):
        room = (legacy.getAttribute("jid") or "").strip()
        if not room:
            continue
        conference = domish.Element((NS_BOOKMARKS, "conference"))
        if legacy.getAttribute("name"):
            conference["name"] = legacy["name"]
        conference["autojoin"] = "true" if _truthy(legacy.getAttribute("autojoin")) else "false"
        for name in ("nick", "password"):
            for child in legacy.elements(NS_LEGACY, name):
                conference.addElement(name, content=str(child))
                break
        items[room] = conference.toXml()
    return items


def storage_of(node: PepNode, stored: Optional[domish.Element]) -> domish.Element:
    """A XEP-0048 document of the node's rooms, then the stored document's URL bookmarks."""
    storage = domish.Element((NS_LEGACY, "storage"))
    for item in node.items:
        try:
            conference = parse_element(item.payload)
        except Exception:
            continue  # a client published something that is no XML we can read
        if (conference.uri, conference.name) != (NS_BOOKMARKS, "conference"):
            continue
        legacy = storage.addElement("conference")
        legacy["jid"] = item.item_id
        if conference.getAttribute("name"):
            legacy["name"] = conference["name"]
        legacy["autojoin"] = "true" if _truthy(conference.getAttribute("autojoin")) else "false"
        for name in ("nick", "password"):
            for child in conference.elements(NS_BOOKMARKS, name):
                legacy.addElement(name, content=str(child))
                break
    if stored is not None:
        for url in stored.elements(NS_LEGACY, "url"):
            storage.addChild(url)
    return storage


class BookmarksCompatHandler(FeatureHandler):
    account_features = (NS_COMPAT,)

    def attached(self) -> None:
        self._busy: dict[str, defer.Deferred] = {}
        self.core.hooks.add("xmpp-private-stored", self._stored)
        self.core.hooks.add("xmpp-private-document", self._document)

    def _document(self, user: str, wanted: domish.Element,
                  stored: Optional[str]) -> Optional[defer.Deferred]:
        if (wanted.uri, wanted.name) != (NS_LEGACY, "storage"):
            return None
        return defer.ensureDeferred(self._render(user, stored))

    async def _render(self, user: str, stored: Optional[str]) -> Optional[str]:
        node = await self.core.pep.get_node(user, NS_BOOKMARKS)
        if node is None:
            return stored
        return storage_of(node, None if stored is None else parse_element(stored)).toXml()

    def _stored(self, session, document: domish.Element) -> None:
        """Publish a stored XEP-0048 document's rooms, one user's documents in order."""
        if (document.uri, document.name) != (NS_LEGACY, "storage"):
            return
        user = session.user
        previous = self._busy.get(user)

        async def in_order() -> None:
            if previous is not None:
                await previous
            await self._publish(user, items_of(document))

        d = defer.ensureDeferred(in_order())
        d.addErrback(lambda f: self.log.failure("bookmarks of {user} to PEP", f, user=user))
        self._busy[user] = d
        d.addBoth(self._done, user, d)

    def _done(self, _: object, user: str, d: defer.Deferred) -> None:
        if self._busy.get(user) is d:
            del self._busy[user]

    async def _publish(self, user: str, wanted: dict[str, str]) -> None:
        pep = self.core.pep
        node = await pep.get_node(user, NS_BOOKMARKS)
        current = {} if node is None else {i.item_id: i.payload for i in node.items}
        options = NODE_OPTIONS if node is None else None
        for room, xml in wanted.items():
            if current.get(room) != xml:
                try:
                    await pep.publish(user, NS_BOOKMARKS, room, xml, options)
                except PepError as e:
                    self.log.warn("bookmark {room} of {user} not published: {why}",
                                  room=room, user=user, why=e)
                    return
                options = None
        gone = [room for room in current if room not in wanted]
        if gone:
            await pep.retract(user, NS_BOOKMARKS, gone)

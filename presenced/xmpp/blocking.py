"""Blocking Command (XEP-0191, ``urn:xmpp:blocking``): the list, block, unblock, pushes.

The lists and their enforcement on every door are the core's (:mod:`presenced.blocking`);
this module translates the IQs, pushes changes to the resources that asked for the list
(on every node: the core's ``blocklist`` router event), tells blocked contacts the user went
unavailable and unblocked ones the current presence, and refuses stanzas a client addresses
to a JID it blocks (``not-acceptable`` with ``<blocked xmlns='urn:xmpp:blocking:errors'/>``)
or to a local user who blocks it (``service-unavailable``, as if nobody were there).
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import defer
from twisted.words.xish import domish

from presenced import events
from presenced.blocking import BLOCKLIST, matches
from presenced.events import Event
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.session import available_sessions
from presenced.xmpp.stanzas import Address, attr, children_bytes, error_reply, parse_address

NS_BLOCKING = "urn:xmpp:blocking"
NS_BLOCKING_ERRORS = "urn:xmpp:blocking:errors"


class BlockingHandler(FeatureHandler):
    routes = {f"iq-get/self/{NS_BLOCKING}:blocklist": "on_list",
              f"iq-set/self/{NS_BLOCKING}:block": "on_block",
              f"iq-set/self/{NS_BLOCKING}:unblock": "on_unblock"}
    event_renderers = {BLOCKLIST: "push"}
    server_features = (NS_BLOCKING,)
    account_features = (NS_BLOCKING,)

    def attached(self) -> None:
        self.interested: set = set()  # sessions that fetched the list get the pushes
        self.core.hooks.add("xmpp-session-ended", self.interested.discard)
        self.server.stanza_filters.append(self.refuse)

    # --- the IQs -----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def on_list(self, session, iq: domish.Element):
        items = yield defer.ensureDeferred(self.core.blocking.items(session.user))
        self.interested.add(session)
        answer = domish.Element((NS_BLOCKING, "blocklist"))
        for jid in sorted(items):
            answer.addElement("item")["jid"] = jid
        session.result(iq, answer)

    def on_block(self, session, iq: domish.Element):
        jids = self._items(session, iq)
        if not jids:
            if jids is not None:
                session.error(iq, "bad-request", "block at least one JID")
            return None
        return defer.ensureDeferred(self._block(session, iq, jids))

    async def _block(self, session, iq: domish.Element, jids: list[str]) -> None:
        try:
            await self.core.blocking.block(session.user, jids)
        except ValueError as e:
            session.error(iq, "resource-constraint", str(e))
            return
        session.result(iq)
        for jid in jids:
            if "@" in jid:
                self._show(session.user, jid.partition("/")[0], available=False)

    def on_unblock(self, session, iq: domish.Element):
        jids = self._items(session, iq)
        if jids is None:
            return None
        return defer.ensureDeferred(self._unblock(session, iq, jids or None))

    async def _unblock(self, session, iq: domish.Element, jids: Optional[list[str]]) -> None:
        before = await self.core.blocking.items(session.user)
        await self.core.blocking.unblock(session.user, jids)
        session.result(iq)
        subscribers = set(await self.core.store.get_subscribers(session.user))
        for jid in before if jids is None else jids:
            contact = jid.partition("/")[0]
            if contact in subscribers:
                self._show(session.user, contact, available=True)

    def _items(self, session, iq: domish.Element) -> Optional[list[str]]:
        """The normalised JIDs of the request's items; None after answering bad input."""
        jids = []
        for item in iq.firstChildElement().elements(NS_BLOCKING, "item"):
            try:
                jids.append(parse_address(item.getAttribute("jid", "")).full)
            except ValueError:
                session.error(iq, "jid-malformed", item.getAttribute("jid", ""))
                return None
        return jids

    def _show(self, user: str, contact: str, available: bool) -> None:
        """The user's resources' presence to one contact (unavailable on block, current on
        unblock), as PRESENCE events to that contact alone."""
        for session in available_sessions(self.core, user):
            payload = {"resource": session.label, "available": available,
                       "priority": session.priority,
                       "xml": children_bytes(session.presence) if available else b""}
            self.core.router.deliver(contact, Event(events.PRESENCE, user, payload))

    # --- pushes and refusals ------------------------------------------------------------------

    def push(self, session, event: Event) -> None:
        if session not in self.interested:
            return
        payload = event.payload
        name = "block" if payload["block"] else "unblock"
        items = "".join(f"<item jid={attr(jid)}/>" for jid in payload[name])
        session.write((f"<iq type='set' id='push-{event.time:.6f}' to={attr(session.full)}>"
                       f"<{name} xmlns='{NS_BLOCKING}'>{items}</{name}></iq>").encode("utf-8"))

    def refuse(self, session, stanza: domish.Element, address: Address) -> bool:
        """The server's outbound check: True when the stanza was refused here."""
        blocking = self.core.blocking
        if not blocking.hides(session.user, address.full):
            return False
        kind = stanza.getAttribute("type")
        if stanza.name == "presence" or kind in ("error", "result"):
            return True  # dropped without a word (XEP-0191 3.4, 3.5)
        own = blocking.lists.get(session.user)
        if own is not None and matches(own, address.full):
            reply = error_reply(stanza, "not-acceptable", None, own_jid=session.user)
            reply.error.addElement((NS_BLOCKING_ERRORS, "blocked"))
            session.send(reply)
        else:
            session.error(stanza, "service-unavailable")
        return True


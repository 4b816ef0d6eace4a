"""Roster management (RFC 6121 2): get (with versioning), set, remove, and roster pushes.

Every roster change, from this door or another (``core.add_friends`` from Thrift), is a
router ROSTER event to the owner's sessions; an XMPP session that asked for its roster turns
it into a push. When a change links two accounts (``to``/``both``) without the subscription
protocol having run (an admin made them friends), the session also receives the contact's
current presence, or its unavailable presence when the link is gone.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import defer
from twisted.words.xish import domish

from presenced import events
from presenced.events import Event
from presenced.store import RosterItem
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.stanzas import NS_CLIENT, NS_ROSTER, parse_address

QUERY = f"{NS_ROSTER}:query"


def item_element(item: Optional[RosterItem], jid: str) -> domish.Element:
    element = domish.Element((NS_ROSTER, "item"))
    element["jid"] = jid
    if item is None:
        element["subscription"] = "remove"
        return element
    element["subscription"] = item.subscription
    if item.name:
        element["name"] = item.name
    if item.ask:
        element["ask"] = "subscribe"
    if item.approved:
        element["approved"] = "true"
    for group in item.groups:
        element.addElement("group", content=group)
    return element


class RosterHandler(FeatureHandler):
    routes = {f"iq-get/self/{QUERY}": "on_get", f"iq-set/self/{QUERY}": "on_set"}
    event_renderers = {events.ROSTER: "render"}
    account_features = ()

    # --- client requests ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def on_get(self, session, iq):
        store = self.core.store
        version = yield store.get_roster_version(session.user)
        session.roster_requested = True
        asked = iq.firstChildElement().getAttribute("ver")
        if asked is not None and asked == str(version):
            session.result(iq)
            return
        items = yield store.get_roster(session.user)
        query = domish.Element((NS_ROSTER, "query"))
        query["ver"] = str(version)
        for item in items:
            query.addChild(item_element(item, item.jid))
        session.result(iq, query)

    @defer.inlineCallbacks
    def on_set(self, session, iq):
        items = list(iq.firstChildElement().elements(NS_ROSTER, "item"))
        if len(items) != 1:
            session.error(iq, "bad-request", "a roster set carries exactly one item")
            return
        element = items[0]
        try:
            contact = parse_address(element.getAttribute("jid", "")).full
        except ValueError:
            session.error(iq, "jid-malformed")
            return
        if "/" in contact or contact == session.user:
            session.error(iq, "not-allowed", "roster items are other accounts' bare JIDs")
            return
        groups = [str(g).strip() for g in element.elements(NS_ROSTER, "group")]
        if any(not g for g in groups) or len(set(groups)) != len(groups):
            session.error(iq, "not-acceptable", "groups must be named and distinct")
            return
        user, store = session.user, self.core.store
        existing = yield store.get_roster_item(user, contact)
        if element.getAttribute("subscription") == "remove":
            if existing is None:
                session.error(iq, "item-not-found")
                return
            yield defer.gatherResults([
                defer.ensureDeferred(work) for work in
                self.core.hooks.collect("xmpp-roster-removing", user, contact, existing)])
            version = yield store.remove_roster_item(user, contact)
            session.result(iq)
            self.core.roster_changed(user, contact, None, version, presence_exchanged=True)
            return
        item = RosterItem(contact, "none", element.getAttribute("name") or None, groups)
        if existing is not None:
            item.subscription, item.ask, item.approved = (
                existing.subscription, existing.ask, existing.approved)
        version = yield store.set_roster_item(user, item)
        session.result(iq)
        self.core.roster_changed(user, contact, item, version, presence_exchanged=True)

    # --- router events -------------------------------------------------------------------------

    def render(self, session, event: Event) -> None:
        payload = event.payload
        item, contact = payload.get("item"), payload.get("jid")
        if session.roster_requested:
            version = payload.get("version")
            if version is None:
                d = self.core.store.get_roster_version(session.user)
                d.addCallback(lambda v: self._push(session, item, contact, v))
                d.addErrback(lambda f: self.log.failure("roster push to {s}", f, s=session))
            else:
                self._push(session, item, contact, version)
        if session.available and not payload.get("presence_exchanged"):
            linked = item is not None and item.subscription in ("to", "both")
            self.core.hooks.fire("xmpp-contact-linked", session, contact, linked)

    def _push(self, session, item: Optional[RosterItem], contact: str, version: int) -> None:
        if session.stream.session is not session:
            return
        iq = domish.Element((NS_CLIENT, "iq"))
        iq["type"] = "set"
        iq["id"] = f"push{version}"
        iq["to"] = session.full
        query = iq.addElement((NS_ROSTER, "query"))
        query["ver"] = str(version)
        query.addChild(item_element(item, contact))
        session.send(iq)
        self.server.events_out += 1

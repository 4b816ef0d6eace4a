"""Presence (RFC 6121 4-5): broadcast, probes, directed presence, subscriptions.

A resource's available/unavailable presence is ONE router event sent with
``core.router.send(user, Event(PRESENCE, ...))``: it reaches the user's own resources and every
subscriber (contacts with ``from``/``both``) on every door, comet streams included. Each XMPP
session renders the event with its own ``to``; the stanza body is serialised once per event.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import defer
from twisted.words.xish import domish

from presenced import events
from presenced.events import Event
from presenced.store import PENDING_STORE
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.session import available_sessions, presence_bytes
from presenced.xmpp.stanzas import NS_CLIENT, attr, children_bytes, parse_address
from presenced.xmpp.subscription import Subscriptions

SUBSCRIPTION_TYPES = ("subscribe", "subscribed", "unsubscribe", "unsubscribed")
MAX_DIRECTED = 100
_RENDERED = "xmpp_rendered"
PROBE = "xmpp_probe"  # a resource on another node asks for current presence (its full JID)
FOR = "xmpp_for"  # the one resource that should render this presence (a probe's answer)


def _children(presence: domish.Element) -> bytes:
    return children_bytes(presence)


def _event_children(payload: dict) -> bytes:
    """Children of a presence event made by another door (show/status only)."""
    xml = payload.get("xml")
    if xml is not None:
        return xml
    parts = []
    if payload.get("show"):
        parts.append(f"<show>{domish.escapeToXml(payload['show'])}</show>")
    if payload.get("status"):
        parts.append(f"<status>{domish.escapeToXml(payload['status'])}</status>")
    return "".join(parts).encode("utf-8")


class PresenceHandler(FeatureHandler):
    routes = {"presence/self": "on_broadcast", "presence/host": "on_broadcast",
              "presence/bare": "on_addressed", "presence/full": "on_addressed"}
    event_renderers = {events.PRESENCE: "render"}
    account_features = ()

    def attached(self) -> None:
        self.subscriptions = Subscriptions(self.server)
        hooks = self.core.hooks
        hooks.add("xmpp-session-ended", self.unavailable)
        hooks.add("xmpp-roster-removing", self.subscriptions.cancel_both)
        hooks.add("xmpp-contact-linked", self.contact_linked)

    # --- from the client ---------------------------------------------------------------------

    def on_broadcast(self, session, presence: domish.Element):
        kind = presence.getAttribute("type")
        if kind is None:
            return self.available(session, presence)
        if kind == "unavailable":
            self.unavailable(session, _children(presence))
        return None

    def available(self, session, presence: domish.Element) -> Optional[defer.Deferred]:
        initial = not session.available
        try:
            priority = int(str(presence.priority or "0").strip())
        except ValueError:
            priority = 0
        session.priority = max(-128, min(127, priority))
        session.presence = presence
        session.available = True
        self.broadcast(session, True, _children(presence))
        self.core.hooks.fire("xmpp-available", session, presence)
        if initial:
            return defer.ensureDeferred(self._came_online(session))
        return None

    async def _came_online(self, session) -> None:
        """Probes, pending requests, then the backlogs other features keep for the resource
        (offline messages: the ``xmpp-initial-backlog`` hook, Prosody's
        ``message/offline/broadcast``), RFC 6121 4.2.2. The reads are issued together so the
        store answers them in one batch.

        Probes are answered here for contacts online on this node; a contact online on
        another node of a cluster is asked through the router (a PRESENCE event carrying
        ``xmpp_probe``) and its resources answer with PRESENCE events for this resource."""
        store, user = self.core.store, session.user
        contacts = store.get_subscriptions(user)
        pending = store.open_map(PENDING_STORE).items(user)
        backlogs = self.core.hooks.collect("xmpp-initial-backlog", session)
        for contact in await contacts:
            for other in available_sessions(self.core, contact):
                session.write(presence_bytes(other, session.full))
            self.probe_elsewhere(session, contact)
        for stanza in (await pending).values():
            session.write(stanza.encode("utf-8"))
        for backlog in backlogs:
            for stanza in await backlog:
                session.write(stanza.encode("utf-8"))

    def probe_elsewhere(self, session, contact: str) -> None:
        """Ask ``contact``'s resources on other cluster nodes for their presence (they
        answer with PRESENCE events for ``session`` alone); nothing on a single node."""
        if session.available and self.core.router.transport.remote_nodes(contact):
            probe = self._payload(session, True, _children(session.presence))
            probe[PROBE] = session.full
            self.core.router.deliver(contact, Event(events.PRESENCE, session.user, probe))

    def unavailable(self, session, children: bytes = b"") -> None:
        if not session.available:
            return
        session.available = False
        session.presence = None
        self.broadcast(session, False, children)
        if session.directed:
            data = b" type='unavailable'>%s</presence>" % children
            head = b"<presence from=%s" % attr(session.full).encode("utf-8")
            for target in session.directed:
                recipient = self.server.find_session(parse_address(target))
                targets = [recipient] if recipient else available_sessions(self.core, target)
                for other in targets:
                    other.write(head + b" to=%s" % attr(other.full).encode("utf-8") + data)
            session.directed = None
        self.core.hooks.fire("xmpp-unavailable", session)

    def broadcast(self, session, available: bool, children: bytes) -> None:
        payload = self._payload(session, available, children)
        d = self.core.router.send(session.user, Event(events.PRESENCE, session.user, payload))
        d.addErrback(lambda f: self.log.failure("presence broadcast", f))

    @staticmethod
    def _payload(session, available: bool, children: bytes) -> dict:
        """A PRESENCE event payload for one resource (show/status for other doors)."""
        payload = {"resource": session.label, "available": available,
                   "priority": session.priority, "xml": children}
        presence = session.presence
        if presence is not None:
            payload["show"] = str(presence.show) if presence.show else None
            payload["status"] = str(presence.status) if presence.status else None
        return payload

    def on_addressed(self, session, presence: domish.Element):
        kind = presence.getAttribute("type")
        address = parse_address(presence["to"])
        if kind in SUBSCRIPTION_TYPES:
            return defer.ensureDeferred(self._subscription(session, kind, address.bare,
                                                           presence))
        if kind == "probe":
            return defer.ensureDeferred(self._probe(session, address.bare))
        if kind not in (None, "unavailable") or not session.available:
            return None
        self._directed(session, presence, address)
        return None

    async def _subscription(self, session, kind: str, contact: Optional[str],
                            presence: domish.Element) -> None:
        user = session.user
        if contact is None or contact == user:
            return
        subscriptions = self.subscriptions
        if kind == "subscribe":
            await subscriptions.subscribe(user, contact, presence)
        elif kind == "subscribed":
            await subscriptions.subscribed(user, contact)
        elif kind == "unsubscribe":
            await subscriptions.unsubscribe(user, contact)
        else:
            await subscriptions.unsubscribed(user, contact)

    async def _probe(self, session, contact: Optional[str]) -> None:
        if contact is None:
            return
        item = await self.core.store.get_roster_item(session.user, contact)
        if item is not None and item.subscription in ("to", "both"):
            for other in available_sessions(self.core, contact):
                session.write(presence_bytes(other, session.full))

    def _directed(self, session, presence: domish.Element, address) -> None:
        data = presence.toXml(defaultUri=NS_CLIENT).encode("utf-8")
        if address.resource is not None:
            recipient = self.server.find_session(address)
            targets = [recipient] if recipient is not None and recipient.available else []
        else:
            targets = available_sessions(self.core, address.bare)
        for target in targets:
            target.write(data)
        if presence.getAttribute("type") is None:
            if session.directed is None:
                session.directed = set()
            if len(session.directed) < MAX_DIRECTED:
                session.directed.add(address.full)
        elif session.directed:
            session.directed.discard(address.full)

    # --- to the client -----------------------------------------------------------------------

    def contact_linked(self, session, contact: str, linked: bool) -> None:
        """The ``xmpp-contact-linked`` hook: an admin (un)made ``contact`` a friend of the
        resource's user without the subscription protocol: show its presence, or its
        going."""
        for other in available_sessions(self.core, contact):
            session.write(presence_bytes(other, session.full, available=linked))
        if linked:
            self.probe_elsewhere(session, contact)
        elif self.core.router.transport.remote_nodes(contact):
            session.write(b"<presence from=%s to=%s type='unavailable'/>" % (
                attr(contact).encode("utf-8"), attr(session.full).encode("utf-8")))

    def render(self, session, event: Event) -> None:
        """A PRESENCE router event to an available resource."""
        if not session.available:
            return
        payload = event.payload
        if PROBE in payload:
            self._answer_probe(session, payload[PROBE])
            return
        if payload.get(FOR, session.full) != session.full:
            return
        rendered = payload.get(_RENDERED)
        if rendered is None:
            resource = payload.get("resource")
            sender = f"{event.sender}/{resource}" if resource else event.sender
            kind = b"" if payload.get("available", True) else b" type='unavailable'"
            rendered = payload[_RENDERED] = (
                b"<presence from=%s" % attr(sender).encode("utf-8"),
                kind + b">" + _event_children(payload) + b"</presence>")
        session.write(rendered[0] + b" to=" + attr(session.full).encode("utf-8") + rendered[1])
        self.server.events_out += 1

    def _answer_probe(self, session, prober: str) -> None:
        """Our presence for a resource that came online on another node (a local prober
        was answered directly)."""
        if self.server.find_session(parse_address(prober)) is not None:
            return
        answer = self._payload(session, True, _children(session.presence))
        answer[FOR] = prober
        self.core.router.deliver(prober.partition("/")[0],
                                 Event(events.PRESENCE, session.user, answer))

"""Presence (RFC 6121 4-5): broadcast, probes, directed presence, subscriptions.

A resource's available/unavailable presence is ONE router event sent with
``core.router.send(user, Event(PRESENCE, ...))``: it reaches the user's own resources and every
subscriber (contacts with ``from``/``both``) on every door, comet streams included. Each XMPP
session renders the event with its own ``to``; the stanza body is serialised once per event.

A resource is not shown a contact resource's presence it already shows: when both come
online at once, each gets the other's broadcast *and* the answer to its own probe (on one
node, the broadcast lands while the probes read the store; across nodes, while the probe
travels), and clients would see every contact arrive twice. A user-wide unavailable presence
(its node died: nobody knows its resources any more) is shown as the unavailable presence of
each of its resources this resource was shown, as clients track resources.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import defer
from twisted.words.xish import domish

from presenced import events
from presenced.events import Event, RenderCache
from presenced.store import PENDING_STORE
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.session import PROBE, PROBE_ANSWER, available_sessions, presence_bytes
from presenced.xmpp.stanzas import NS_CLIENT, attr, children_bytes, parse_address
from presenced.xmpp.subscription import Subscriptions

SUBSCRIPTION_TYPES = ("subscribe", "subscribed", "unsubscribe", "unsubscribed")
MAX_DIRECTED = 100


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


def _presence_parts(event: Event) -> tuple[bytes, bytes]:
    """A PRESENCE event as a stanza cut where each recipient's ``to`` goes."""
    payload = event.payload
    resource = payload.get("resource")
    sender = f"{event.sender}/{resource}" if resource else event.sender
    kind = b"" if payload.get("available", True) else b" type='unavailable'"
    return (b"<presence from=%s" % attr(sender).encode("utf-8"),
            kind + b">" + _event_children(payload) + b"</presence>")


class PresenceHandler(FeatureHandler):
    routes = {"presence/self": "on_broadcast", "presence/host": "on_broadcast",
              "presence/bare": "on_addressed", "presence/full": "on_addressed"}
    event_renderers = {events.PRESENCE: "render", PROBE: "answer_probe",
                       PROBE_ANSWER: "render_answer"}
    account_features = ()

    def attached(self) -> None:
        self.wire = RenderCache(_presence_parts)
        # session -> contact full JID -> the presence children it was last shown (available
        # contact resources only, so bounded by what the roster has online).
        self.shown: dict[object, dict[str, bytes]] = {}
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
            self.unavailable(session, _children(presence),
                             str(presence.status) if presence.status else "")
        return None

    def available(self, session, presence: domish.Element) -> Optional[defer.Deferred]:
        initial = not session.available
        try:
            priority = int(str(presence.priority or "0").strip())
        except ValueError:
            priority = 0
        session.priority = max(-128, min(127, priority))
        self.core.hooks.fire("xmpp-presence-broadcasting", session, presence)
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
        another node of a cluster is asked through the router (an ``xmpp-probe`` event)
        and its resources answer with ``xmpp-probe-answer`` events."""
        store, user = self.core.store, session.user
        contacts = self.core.router.following(user)  # read at login, no second read
        pending = store.open_map(PENDING_STORE).items(user)
        backlogs = self.core.hooks.collect("xmpp-initial-backlog", session)
        blocking = self.core.blocking
        for contact in await contacts:
            if blocking.hides(user, contact):
                continue
            for other in available_sessions(self.core, contact):
                if self._fresh(session, other.full, children_bytes(other.presence)):
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
            probe["prober"] = session.full
            self.core.router.deliver(contact, Event(PROBE, session.user, probe))

    def unavailable(self, session, children: bytes = b"", status: str = "") -> None:
        self.shown.pop(session, None)  # shown again in full when it comes back
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
        self.core.hooks.fire("xmpp-unavailable", session, status)

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
            if not linked:
                self.shown.get(session, {}).pop(other.full, None)
            elif not self._fresh(session, other.full, children_bytes(other.presence)):
                continue
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
        payload, to = event.payload, attr(session.full).encode("utf-8")
        resource = payload.get("resource")
        sender = f"{event.sender}/{resource}" if resource else event.sender
        if payload.get("available", True):
            if not self._fresh(session, sender, _event_children(payload)):
                return
        elif resource is None and self._went(session, event.sender, to):
            return
        else:
            self.shown.get(session, {}).pop(sender, None)
        rendered = self.wire(event)
        session.write(rendered[0] + b" to=" + to + rendered[1])
        self.server.events_out += 1

    def _fresh(self, session, sender: str, children: bytes) -> bool:
        """Whether ``session`` does not show this available presence of ``sender`` yet
        (and from now on does)."""
        shown = self.shown.setdefault(session, {})
        if shown.get(sender) == children:
            return False
        shown[sender] = children
        return True

    def _went(self, session, user: str, to: bytes) -> bool:
        """A user-wide unavailable presence as one per resource ``session`` was shown;
        False when it was shown none (the bare one is sent)."""
        shown = self.shown.get(session)
        prefix = user + "/"
        gone = [full for full in shown or () if full.startswith(prefix)]
        for full in gone:
            del shown[full]
            session.write(b"<presence from=%s to=%s type='unavailable'/>" % (
                attr(full).encode("utf-8"), to))
        return bool(gone)

    def answer_probe(self, session, event: Event) -> None:
        """Our presence for a resource that came online on another node (a local prober
        was answered directly)."""
        prober = event.payload["prober"]
        if not session.available or self.server.find_session(parse_address(prober)):
            return
        answer = self._payload(session, True, _children(session.presence))
        answer["for"] = prober
        self.core.router.deliver(prober.partition("/")[0],
                                 Event(PROBE_ANSWER, session.user, answer))

    def render_answer(self, session, event: Event) -> None:
        """A contact's presence answering this resource's probe."""
        if event.payload["for"] == session.full:
            self.render(session, event)

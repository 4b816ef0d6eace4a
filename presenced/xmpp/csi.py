"""Client State Indication (XEP-0352, ``urn:xmpp:csi:0``): a phone in a pocket says
``<inactive/>`` and the server holds what can wait.

While a resource is inactive, presence, tune and PEP events for it are held and collapsed:
only the newest per contact resource, per tune publisher, per PEP node and item, per room
occupant survives. Messages and everything else pass at once. A room presence with status
codes (a nick change, one's own presence, a kick) is news that cannot be collapsed: it flushes
what is held first, so the client never sees an occupant's older state after it. ``<active/>`` flushes what is held, oldest first;
so does passing :data:`MAX_HELD` distinct entries (a bounded buffer: the client then gets
them as if it were active). The held events live here, keyed by session: an active session
costs nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Hashable

from twisted.words.xish import domish

from presenced import events
from presenced.events import Event
from presenced.muc.service import ROOM_PRESENCE
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.session import PROBE_ANSWER

if TYPE_CHECKING:
    from presenced.xmpp.session import C2SSession

NS_CSI = "urn:xmpp:csi:0"
MAX_HELD = 500  # distinct (contact, node) entries held per inactive session


def _key(event: Event) -> Hashable:
    """What a newer event of the same kind replaces; None: never held."""
    kind, payload = event.type, event.payload
    if kind in (events.PRESENCE, PROBE_ANSWER):
        return ("presence", event.sender, payload.get("resource"))
    if kind == events.TUNE:
        return ("tune", event.sender)
    if kind == events.PEP:
        return ("pep", event.sender, payload["node"], payload.get("item_id"))
    if kind == ROOM_PRESENCE and not payload["codes"]:
        return ("room", payload["room"], payload["nick"])
    return None


class ClientStateHandler(FeatureHandler):
    nonza_routes = {NS_CSI: "on_element"}
    stream_features = ((NS_CSI, "csi"),)

    def attached(self) -> None:
        self.held: dict["C2SSession", dict[Hashable, Event]] = {}
        self.core.hooks.add("xmpp-session-ended", self._forget)

    def on_element(self, stream, element: domish.Element) -> None:
        """``<inactive/>`` or ``<active/>``; before a resource is bound there is nothing to
        hold, and other names are ignored (XEP-0352 defines no errors)."""
        session = stream.session
        if session is None:
            return
        if element.name == "inactive" and session not in self.held:
            self.held[session] = {}
            self.server.holds[session] = self.hold
        elif element.name == "active":
            self.flush(session)
            self._forget(session)

    def hold(self, session: "C2SSession", event: Event) -> bool:
        key = _key(event)
        if key is None:
            if event.type == ROOM_PRESENCE:
                self.flush(session)
            return False
        held = self.held[session]
        held.pop(key, None)  # the newest goes last: flushed in arrival order
        held[key] = event
        if len(held) >= MAX_HELD:
            self.flush(session)
        return True

    def flush(self, session: "C2SSession") -> None:
        """Render what is held now (oldest first), as if it had just arrived."""
        held = self.held.get(session)
        if not held:
            return
        pending = list(held.values())
        held.clear()
        renderers: dict[str, Callable] = self.server.event_renderers
        for event in pending:
            renderer = renderers.get(event.type)
            if renderer is not None:
                renderer(session, event)

    def _forget(self, session: "C2SSession") -> None:
        self.held.pop(session, None)
        self.server.holds.pop(session, None)

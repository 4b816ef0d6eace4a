"""Message Carbons (XEP-0280, ``urn:xmpp:carbons:2``): every resource that asks for them sees
the chats its account's other resources send and receive.

A resource enables carbons with an IQ; the set of enabled sessions lives here (a session
gets no new attribute). Copies travel as router events of their own type (:data:`CARBON`)
to the account's sessions, so resources on other cluster nodes get them too:

- *sent*: a resource sent an eligible message (the ``xmpp-message-out`` hook);
- *received*: a message to one full JID reached that resource (``xmpp-message-in``); a
  message to the bare JID reaches every node's resources as it is, and a resource the
  priority rules passed over gets its copy on its own node (``xmpp-message-passed-over``).

Eligible (XEP-0280 6): ``chat`` messages and ``normal`` ones with a body, unless they carry
``<private xmlns='urn:xmpp:carbons:2'/>`` or a ``<no-copy/>`` hint (XEP-0334).
"""

from __future__ import annotations

import re

from twisted.words.xish import domish

from presenced.events import Event
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.stanzas import attr, forwardable, message_bytes

NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
CARBON = "xmpp-carbon"  # payload: direction ("sent"/"received"), stanza (bytes), skip (full JID)

_NO_COPY = re.compile(rb"<private[^>]+urn:xmpp:carbons:2|<no-copy[^>]+urn:xmpp:hints"
                      rb"|<(?:sent|received)[^>]+urn:xmpp:carbons:2")


def eligible(data: bytes, kind: str) -> bool:
    """Whether a message (as serialised) is copied to the account's other resources."""
    if kind != "chat" and (kind != "normal" or b"<body" not in data):
        return False
    return _NO_COPY.search(data) is None


class CarbonsHandler(FeatureHandler):
    routes = {f"iq-set/self/{NS_CARBONS}:enable": "on_enable",
              f"iq-set/host/{NS_CARBONS}:enable": "on_enable",
              f"iq-set/self/{NS_CARBONS}:disable": "on_disable",
              f"iq-set/host/{NS_CARBONS}:disable": "on_disable"}
    event_renderers = {CARBON: "render"}
    server_features = (NS_CARBONS,)

    def attached(self) -> None:
        self.enabled: set = set()
        hooks = self.core.hooks
        hooks.add("xmpp-message-out", self.sent)
        hooks.add("xmpp-message-in", self.received)
        hooks.add("xmpp-message-passed-over", self.passed_over)
        hooks.add("xmpp-session-ended", self.enabled.discard)

    def on_enable(self, session, iq: domish.Element) -> None:
        self.enabled.add(session)
        session.result(iq)

    def on_disable(self, session, iq: domish.Element) -> None:
        self.enabled.discard(session)
        session.result(iq)

    # --- copies ------------------------------------------------------------------------------

    def sent(self, session, data: bytes, kind: str) -> None:
        self._copy("sent", session.user, session.full, data, kind)

    def received(self, recipient, data: bytes, kind: str) -> None:
        self._copy("received", recipient.user, recipient.full, data, kind)

    def _copy(self, direction: str, user: str, skip: str, data: bytes, kind: str) -> None:
        router = self.core.router
        if not (len(router.sessions(user)) > 1 or router.transport.remote_nodes(user)):
            return  # no other resource anywhere: the common case costs one lookup
        if eligible(data, kind):
            router.deliver(user, Event(CARBON, user, {"direction": direction,
                                                      "stanza": data, "skip": skip}))

    def passed_over(self, session, event: Event) -> None:
        """A message to the bare JID that the priority rules did not give this resource."""
        if session not in self.enabled:
            return
        payload = event.payload
        data = payload.get("stanza")
        if data is None:
            data = message_bytes(event)
        if eligible(data, payload.get("kind") or "normal"):
            self._write(session, "received", data)

    def render(self, session, event: Event) -> None:
        payload = event.payload
        if session in self.enabled and session.full != payload["skip"]:
            self._write(session, payload["direction"], payload["stanza"])

    def _write(self, session, direction: str, data: bytes) -> None:
        session.write(b"<message from=%s to=%s type='chat'><%s xmlns='%s'>"
                      b"<forwarded xmlns='%s'>%s</forwarded></%s></message>" % (
                          attr(session.user).encode(), attr(session.full).encode(),
                          direction.encode(), NS_CARBONS.encode(), NS_FORWARD.encode(),
                          forwardable(data), direction.encode()))
        self.server.events_out += 1

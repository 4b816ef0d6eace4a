"""Site events (``Core.publish``: a photo, a newsfeed item) and the pubsub service's node
events as XEP-0060 notifications; the service itself is :mod:`presenced.xmpp.pubsub`.

A site event reaches a follower's available resources as a ``<message type='headline'>``
with a ``pubsub#event`` whose item carries the event's JSON, exactly the document a comet
stream receives, in a XEP-0335 ``<json xmlns='urn:xmpp:json:0'/>`` element:

- from a **user**: from the user's bare JID, on the PEP node ``urn:presenced:events:<type>``;
- from a **topic**: from the pubsub service ``pubsub.<domain>`` (the recipient's domain), on
  the node named after the topic (``artist/radiohead``).

Unlike PEP's own nodes no ``+notify`` is asked for: the follower chose the subject through
the site (``add_subscriptions``), as a pubsub subscription is chosen (docs/topics.md). A
node's own events (an item published over XMPP with its XML, a retraction, a purge, a
deletion, an approved subscription) come from the service the same way.
"""

from __future__ import annotations

import presenced.wokkel_compat  # noqa: F401  (before any wokkel import)

from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

from wokkel.pubsub import NS_PUBSUB_EVENT

from presenced import events
from presenced.events import Event, RenderCache
from presenced.subjects import is_topic
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.pep import event_content
from presenced.xmpp.stanzas import attr

if TYPE_CHECKING:
    from presenced.xmpp.session import C2SSession

NS_JSON = "urn:xmpp:json:0"
USER_NODE_PREFIX = "urn:presenced:events:"
PUBSUB_SERVICE = "pubsub."


class SiteEventHandler(FeatureHandler):
    """Router ``site`` and ``pubsub-node`` events rendered for available resources."""

    event_renderers = {events.SITE: "render", events.NODE: "render_node"}

    def __init__(self, server) -> None:
        super().__init__(server)
        # One build of the notification's body per event, whatever the fan-out.
        self._body = RenderCache(_notification_body)
        self._node_body = RenderCache(_node_notification_body)

    def render(self, session: "C2SSession", event: Event) -> None:
        if session.available:
            self._write(session, event.sender, self._body(event))

    def _write(self, session: "C2SSession", sender: str, body: bytes) -> None:
        if is_topic(sender):
            sender = PUBSUB_SERVICE + session.user.rpartition("@")[2]
        session.write(b"<message type='headline' from=%b to=%b%b" % (
            attr(sender).encode("utf-8"), attr(session.full).encode("utf-8"), body))
        self.server.events_out += 1

    def render_node(self, session: "C2SSession", event: Event) -> None:
        """A node's item, retraction, purge, deletion or a subscription's new state, from
        the pubsub service (:mod:`presenced.topicnodes`)."""
        if session.available:
            self._write(session, event.sender, self._node_body(event))


def node_of(event: Event) -> str:
    """The pubsub node a site event is published on (see the module docstring)."""
    if is_topic(event.sender):
        return event.sender
    return USER_NODE_PREFIX + events.public_type(event)


def _notification_body(event: Event) -> bytes:
    return (f"><event xmlns='{NS_PUBSUB_EVENT}'><items node={attr(node_of(event))}>"
            f"<item id='{event.id}'><json xmlns='{NS_JSON}'>"
            f"{escape(event.to_json().decode('utf-8'))}</json></item></items></event>"
            f"</message>").encode("utf-8")


def _node_notification_body(event: Event) -> bytes:
    payload = event.payload
    if "subscription" in payload:
        content = (f"<subscription node={attr(payload['node'])} jid={attr(payload['jid'])} "
                   f"subscription={attr(payload['subscription'])}/>")
    else:
        content = event_content(event, payload["node"])
    return f"><event xmlns='{NS_PUBSUB_EVENT}'>{content}</event></message>".encode("utf-8")

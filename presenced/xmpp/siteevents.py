"""The pubsub service ``pubsub.<domain>`` (XEP-0060): topics as nodes, and site events
(``Core.publish``: a photo, a newsfeed item) as XEP-0060 notifications.

A topic (``artist/radiohead``) is a node of the service. Subscribing to it from XMPP is
following it (``core.add_subscriptions``): XMPP subscribers and web followers are one
subscription graph, so one publish from HTTP or Thrift reaches both. The service answers
subscribe, unsubscribe and the subscriptions of the asking account; node management
(create, configure, delete, purge), items, retract and affiliations are answered
``feature-not-implemented`` (topics need no creation; docs/topics.md).

A site event reaches a follower's available resources as a ``<message type='headline'>``
with a ``pubsub#event`` whose item carries the event's JSON, exactly the document a comet
stream receives, in a XEP-0335 ``<json xmlns='urn:xmpp:json:0'/>`` element:

- from a **user**: from the user's bare JID, on the PEP node ``urn:presenced:events:<type>``;
- from a **topic**: from the pubsub service ``pubsub.<domain>`` (the recipient's domain), on
  the node named after the topic (``artist/radiohead``).

Unlike PEP's own nodes no ``+notify`` is asked for: the follower chose the subject through
the site (``add_subscriptions``), as a pubsub subscription is chosen (docs/topics.md).
"""

from __future__ import annotations

import presenced.wokkel_compat  # noqa: F401  (before any wokkel import)

from typing import TYPE_CHECKING, Optional
from xml.sax.saxutils import escape

from twisted.internet import defer
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from wokkel import disco
from wokkel.pubsub import NS_PUBSUB, NS_PUBSUB_EVENT

from presenced import events
from presenced.events import Event, RenderCache
from presenced.subjects import is_topic
from presenced.users import BadUser
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.pep import parse_request
from presenced.xmpp.stanzas import attr

if TYPE_CHECKING:
    from presenced.xmpp.session import C2SSession

NS_JSON = "urn:xmpp:json:0"
NS_PUBSUB_ERRORS = "http://jabber.org/protocol/pubsub#errors"
USER_NODE_PREFIX = "urn:presenced:events:"
PUBSUB_SERVICE = "pubsub."
SERVICE_FEATURES = tuple(f"{NS_PUBSUB}#{name}" for name in (
    "subscribe", "retrieve-subscriptions", "auto-create")) + (NS_PUBSUB,)


class SiteEventHandler(FeatureHandler):
    """The ``pubsub.<domain>`` service: topic subscriptions, and router ``site`` events
    rendered for available resources."""

    service = "pubsub"
    routes = {f"iq-set/pubsub/{NS_PUBSUB}:pubsub": "on_set",
              f"iq-get/pubsub/{NS_PUBSUB}:pubsub": "on_get"}
    event_renderers = {events.SITE: "render"}

    def __init__(self, server) -> None:
        super().__init__(server)
        # One build of the notification's body per event, whatever the fan-out.
        self._body = RenderCache(_notification_body)

    def render(self, session: "C2SSession", event: Event) -> None:
        if not session.available:
            return
        sender = event.sender
        if is_topic(sender):
            sender = PUBSUB_SERVICE + session.user.rpartition("@")[2]
        session.write(b"<message type='headline' from=%b to=%b%b" % (
            attr(sender).encode("utf-8"), attr(session.full).encode("utf-8"),
            self._body(event)))
        self.server.events_out += 1

    # --- the service ---------------------------------------------------------------------------

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        if nodeIdentifier or target.user or target.host not in self.service_hosts():
            return []
        return [disco.DiscoIdentity("pubsub", "service", "Topics")] + [
            disco.DiscoFeature(name) for name in SERVICE_FEATURES]

    def getDiscoItems(self, requestor, target, nodeIdentifier=""):
        if nodeIdentifier or target.user or target.host not in self.server.domains:
            return []
        return [disco.DiscoItem(JID(PUBSUB_SERVICE + target.host), name="Topics")]

    def on_set(self, session: "C2SSession", iq: domish.Element) -> Optional[defer.Deferred]:
        request = parse_request(session, iq)
        if request is None:
            return None
        if request.verb not in ("subscribe", "unsubscribe"):
            return self._unsupported(session, iq, request.verb)
        topic = self._topic(session, iq, request.nodeIdentifier)
        if topic is None:
            return None
        if request.subscriber is None or request.subscriber.userhost() != session.user:
            session.send(StanzaError("bad-request", text="subscribe your own bare JID",
                                     appCondition=domish.Element(
                                         (NS_PUBSUB_ERRORS, "invalid-jid"))).toResponse(iq))
            return None
        return defer.ensureDeferred(self._follow(session, iq, topic,
                                                 request.verb == "subscribe"))

    async def _follow(self, session: "C2SSession", iq: domish.Element, topic: str,
                      add: bool) -> None:
        edge = [(session.user, topic)]
        if add:
            await self.core.add_subscriptions(edge)
            answer = domish.Element((NS_PUBSUB, "pubsub"))
            subscription = answer.addElement("subscription")
            subscription["node"], subscription["jid"] = topic, session.user
            subscription["subscription"] = "subscribed"
            session.result(iq, answer)
        else:
            await self.core.remove_subscriptions(edge)
            session.result(iq)

    def on_get(self, session: "C2SSession", iq: domish.Element) -> Optional[defer.Deferred]:
        request = parse_request(session, iq)
        if request is None:
            return None
        if request.verb != "subscriptions":
            return self._unsupported(session, iq, request.verb)
        return defer.ensureDeferred(self._subscriptions(session, iq, request.nodeIdentifier))

    async def _subscriptions(self, session: "C2SSession", iq: domish.Element,
                             node: Optional[str]) -> None:
        followed = await self.core.store.get_subscriptions(session.user)
        answer = domish.Element((NS_PUBSUB, "pubsub"))
        listing = answer.addElement("subscriptions")
        for topic in sorted(t for t in followed if is_topic(t) and (not node or t == node)):
            item = listing.addElement("subscription")
            item["node"], item["jid"], item["subscription"] = topic, session.user, "subscribed"
        session.result(iq, answer)

    def _topic(self, session: "C2SSession", iq: domish.Element,
               node: Optional[str]) -> Optional[str]:
        """The topic a node names; answers an error and returns None otherwise."""
        try:
            topic = self.core.subject(node or "")
        except BadUser as e:
            topic, problem = None, str(e)
        else:
            problem = "" if is_topic(topic) else "a node of this service is a topic"
        if problem:
            session.send(StanzaError("item-not-found", text=problem).toResponse(iq))
            return None
        return topic

    def _unsupported(self, session: "C2SSession", iq: domish.Element, verb: str) -> None:
        session.error(iq, "feature-not-implemented",
                      f"this pubsub service offers subscribe, unsubscribe and subscriptions "
                      f"of topics, not {verb}")


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

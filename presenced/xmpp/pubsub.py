"""The pubsub service ``pubsub.<domain>`` (XEP-0060): every topic is a node.

This door translates; :mod:`presenced.topicnodes` decides (owners, access models,
affiliations, items). Subscribing is following the topic in the one subscription graph
(docs/topics.md), so a follower the site added is a subscriber here and the reverse. The
JIDs of ``[xmpp] admins`` manage every node, as the site does. Notifications are rendered
by :mod:`presenced.xmpp.siteevents`; what this handler writes itself is the owner's
XEP-0060 §8.6 authorization form for a subscriber waiting on an ``authorize`` node, and it
reads the owner's answer (a submitted form in a ``<message/>`` to the service).
"""

from __future__ import annotations

import presenced.wokkel_compat  # noqa: F401  (before any wokkel import)

from typing import TYPE_CHECKING, Any, Awaitable, Optional

from twisted.internet import defer
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.protocols.jabber.jid import JID, InvalidFormat
from twisted.words.xish import domish
from wokkel import data_form, disco
from wokkel.pubsub import NS_PUBSUB, NS_PUBSUB_OWNER, PubSubRequest

from presenced import events
from presenced.events import Event
from presenced.pep import PepError
from presenced.subjects import is_topic
from presenced.users import BadUser
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.pep import parse_request, publish_options
from presenced.xmpp.stanzas import attr

if TYPE_CHECKING:
    from presenced.topicnodes import Refused, TopicConfig
    from presenced.xmpp.session import C2SSession

NS_PUBSUB_ERRORS = "http://jabber.org/protocol/pubsub#errors"
NS_AUTHORIZATION = NS_PUBSUB + "#subscribe_authorization"
NS_NODE_CONFIG = NS_PUBSUB + "#node_config"
NS_META_DATA = NS_PUBSUB + "#meta-data"
SERVICE_FEATURES = tuple(f"{NS_PUBSUB}#{name}" for name in (
    "access-authorize", "access-open", "access-whitelist", "auto-create", "config-node",
    "create-and-configure", "create-nodes", "delete-items", "delete-nodes", "item-ids",
    "manage-affiliations", "manage-subscriptions", "meta-data", "modify-affiliations",
    "multi-items", "persistent-items", "publish", "publish-options", "purge-nodes",
    "retract-items", "retrieve-affiliations", "retrieve-default", "retrieve-items",
    "retrieve-subscriptions", "subscribe", "subscription-notifications",
    )) + (NS_PUBSUB,)


class PubsubServiceHandler(FeatureHandler):
    """Node management, publish, items and subscriptions on ``pubsub.<domain>``."""

    service = "pubsub"
    routes = {f"iq-set/pubsub/{NS_PUBSUB}:pubsub": "on_set",
              f"iq-get/pubsub/{NS_PUBSUB}:pubsub": "on_get",
              f"iq-set/pubsub/{NS_PUBSUB_OWNER}:pubsub": "on_owner_set",
              f"iq-get/pubsub/{NS_PUBSUB_OWNER}:pubsub": "on_owner_get",
              "message/pubsub": "on_message"}
    event_renderers = {events.NODE_AUTHORIZE: "render_authorization"}

    # --- disco ------------------------------------------------------------------------------

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        if target.user or target.host not in self.service_hosts():
            return []
        if nodeIdentifier:
            return defer.ensureDeferred(self._node_info(nodeIdentifier))
        return [disco.DiscoIdentity("pubsub", "service", "Topics")] + [
            disco.DiscoFeature(name) for name in SERVICE_FEATURES]

    async def _node_info(self, topic: str) -> list:
        node = await self.core.nodes.get(topic)
        if node is None:
            return []
        form = data_form.Form("result", formNamespace=NS_META_DATA)
        fields = dict(node.config.as_fields(), **{"pubsub#owner": node.owner})
        for name, value in fields.items():
            form.addField(data_form.Field(var=name, value=value))
        return [disco.DiscoIdentity("pubsub", "leaf", node.config.title or None), form]

    def getDiscoItems(self, requestor, target, nodeIdentifier=""):
        if target.user:
            return []
        if target.host in self.server.domains and not nodeIdentifier:
            return [disco.DiscoItem(JID(self.service + "." + target.host), name="Topics")]
        if target.host in self.service_hosts() and not nodeIdentifier:
            return defer.ensureDeferred(self._node_items(target.host))
        return []

    async def _node_items(self, host: str) -> list:
        owners = await self.core.nodes.owners()
        return [disco.DiscoItem(JID(host), topic) for topic in sorted(owners)]

    # --- requests ---------------------------------------------------------------------------

    def on_set(self, session: "C2SSession", iq: domish.Element) -> Optional[defer.Deferred]:
        request = self._request(session, iq)
        if request is None:
            return None
        verb, user, nodes = request.verb, session.user, self.core.nodes
        if verb == "create":
            fields = request.options.getValues() if request.options is not None else {}
            return self._answer(session, iq, nodes.create(user, request.topic, fields))
        if verb == "publish":
            return self._answer(session, iq, self._publish(session, iq, request))
        if verb == "retract":
            return self._answer(session, iq, nodes.retract(
                self._actor(session), request.topic, request.itemIdentifiers,
                _notify_flag(iq)))
        if verb in ("subscribe", "unsubscribe"):
            if request.subscriber is None or request.subscriber.userhost() != user:
                session.send(StanzaError("bad-request", text="subscribe your own bare JID",
                                         appCondition=_app("invalid-jid")).toResponse(iq))
                return None
            if verb == "unsubscribe":
                return self._answer(session, iq, nodes.unsubscribe(user, request.topic))
            return self._answer(session, iq, self._subscribe(session, iq, request.topic))
        return self._unsupported(session, iq, verb)

    def on_get(self, session: "C2SSession", iq: domish.Element) -> Optional[defer.Deferred]:
        request = self._request(session, iq, node_needed=False)
        if request is None:
            return None
        if request.verb == "subscriptions":
            return self._answer(session, iq, self._subscriptions(session, request))
        if request.verb == "affiliations":
            return self._answer(session, iq, self._own_affiliations(session, request))
        if request.verb == "items" and request.topic:
            return self._answer(session, iq, self._items(session, request))
        return self._unsupported(session, iq, request.verb)

    def on_owner_set(self, session: "C2SSession", iq: domish.Element,
                     ) -> Optional[defer.Deferred]:
        request = self._request(session, iq)
        if request is None:
            return None
        actor, topic, nodes = self._actor(session), request.topic, self.core.nodes
        if request.verb == "configureSet":
            if request.options.formType == "cancel":
                session.result(iq)
                return None
            return self._answer(session, iq, nodes.configure(
                actor, topic, request.options.getValues()))
        if request.verb == "delete":
            return self._answer(session, iq, nodes.delete(actor, topic))
        if request.verb == "purge":
            return self._answer(session, iq, nodes.purge(actor, topic))
        if request.verb == "affiliationsSet":
            changes = {entity.userhost(): affiliation
                       for entity, affiliation in request.affiliations.items()}
            return self._answer(session, iq, _partly(
                "affiliation", topic, nodes.set_affiliations(actor, topic, changes)))
        if request.verb == "subscriptionsSet":
            return self._answer(session, iq, self._set_subscriptions(actor, topic, iq))
        return self._unsupported(session, iq, request.verb)

    def on_owner_get(self, session: "C2SSession", iq: domish.Element,
                     ) -> Optional[defer.Deferred]:
        request = self._request(session, iq)
        if request is None:
            return None
        if request.verb == "configureGet":
            return self._answer(session, iq, self._configuration(session, request.topic))
        if request.verb == "affiliationsGet":
            return self._answer(session, iq, self._node_affiliations(session, request.topic))
        if request.verb == "subscriptionsGet":
            return self._answer(session, iq, self._node_subscriptions(session, request.topic))
        if request.verb == "default" and request.nodeType == "leaf":
            answer = domish.Element((NS_PUBSUB_OWNER, "pubsub"))
            answer.addElement("default").addChild(
                _config_form(self.core.nodes.default_config()).toElement())
            session.result(iq, answer)
            return None
        return self._unsupported(session, iq, request.verb)

    # --- the work ---------------------------------------------------------------------------

    async def _publish(self, session: "C2SSession", iq: domish.Element,
                       request: PubSubRequest) -> domish.Element:
        if len(request.items) != 1 or len(list(request.items[0].elements())) > 1:
            raise PepError("bad-request", "publish one item of at most one payload",
                           app="invalid-payload")
        item = request.items[0]
        payload = "".join(child.toXml() for child in item.elements())
        item_id = await self.core.nodes.publish(session.user, request.topic,
                                                item.getAttribute("id"), payload,
                                                publish_options(iq))
        answer = domish.Element((NS_PUBSUB, "pubsub"))
        publish = answer.addElement("publish")
        publish["node"] = request.topic
        publish.addElement("item")["id"] = item_id
        return answer

    async def _subscribe(self, session: "C2SSession", iq: domish.Element,
                         topic: str) -> domish.Element:
        state = await self.core.nodes.subscribe(session.user, topic)
        answer = domish.Element((NS_PUBSUB, "pubsub"))
        _add_entry(answer, "subscription", topic, session.user, state)
        return answer

    async def _subscriptions(self, session: "C2SSession",
                             request: PubSubRequest) -> domish.Element:
        followed = await self.core.store.get_subscriptions(session.user)
        topics = sorted(t for t in followed if is_topic(t)
                        and (not request.nodeIdentifier or t == request.nodeIdentifier))
        answer = domish.Element((NS_PUBSUB, "pubsub"))
        listing = answer.addElement("subscriptions")
        for topic in topics:
            _add_entry(listing, "subscription", topic, session.user, "subscribed")
        return answer

    async def _own_affiliations(self, session: "C2SSession",
                                request: PubSubRequest) -> domish.Element:
        owners = await self.core.nodes.owners()
        answer = domish.Element((NS_PUBSUB, "pubsub"))
        listing = answer.addElement("affiliations")
        for topic in sorted(t for t, owner in owners.items() if owner == session.user):
            entry = listing.addElement("affiliation")
            entry["node"], entry["affiliation"] = topic, "owner"
        return answer

    async def _items(self, session: "C2SSession", request: PubSubRequest) -> domish.Element:
        found = await self.core.nodes.items(self._actor(session), request.topic,
                                            request.itemIdentifiers, request.maxItems)
        answer = domish.Element((NS_PUBSUB, "pubsub"))
        items = answer.addElement("items")
        items["node"] = request.topic
        for item in found:
            element = items.addElement("item")
            element["id"] = item.item_id
            if item.payload:
                element.addRawXml(item.payload)
        return answer

    async def _configuration(self, session: "C2SSession", topic: str) -> domish.Element:
        node = await self.core.nodes.managed(self._actor(session), topic)
        answer = domish.Element((NS_PUBSUB_OWNER, "pubsub"))
        configure = answer.addElement("configure")
        configure["node"] = topic
        configure.addChild(_config_form(node.config).toElement())
        return answer

    async def _node_affiliations(self, session: "C2SSession", topic: str) -> domish.Element:
        pairs = await self.core.nodes.affiliations(self._actor(session), topic)
        return _owner_listing("affiliation", topic, pairs)

    async def _set_subscriptions(self, actor: Optional[str], topic: str,
                                 iq: domish.Element) -> None:
        changes = _subscription_changes(iq)  # a malformed request: refused whole, here
        await _partly("subscription", topic,
                      self.core.nodes.set_subscriptions(actor, topic, changes))

    async def _node_subscriptions(self, session: "C2SSession", topic: str) -> domish.Element:
        pairs = await self.core.nodes.subscribers(self._actor(session), topic)
        return _owner_listing("subscription", topic, pairs)

    # --- authorization of pending subscriptions (XEP-0060 §8.6) -----------------------------

    def attached(self) -> None:
        self.core.hooks.add("xmpp-initial-backlog", self._waiting_requests)

    def render_authorization(self, session: "C2SSession", event: Event) -> None:
        """Ask the owner's available resources to approve a subscriber."""
        if session.available:
            session.write(self._authorization_request(
                session, event.payload["node"], event.payload["subscriber"]).encode("utf-8"))

    def _waiting_requests(self, session: "C2SSession") -> defer.Deferred:
        """On the owner's initial presence, the requests made while no resource of theirs
        was available to be asked (every pending one, as ejabberd and Prosody ask again)."""
        async def requests() -> list[str]:
            return [self._authorization_request(session, topic, subscriber)
                    for topic, subscriber in await self.core.nodes.awaiting(session.user)]
        return defer.ensureDeferred(requests())

    def _authorization_request(self, session: "C2SSession", topic: str,
                               subscriber: str) -> str:
        """The XEP-0060 §8.6 form asking the owner to approve ``subscriber``."""
        form = data_form.Form("form", formNamespace=NS_AUTHORIZATION,
                              title="Subscription request")
        form.addField(data_form.Field(var="pubsub#node", value=topic))
        form.addField(data_form.Field("jid-single", var="pubsub#subscriber_jid",
                                      value=subscriber))
        form.addField(data_form.Field("boolean", var="pubsub#allow", value=False,
                                      label=f"Allow {subscriber} to subscribe to {topic}?"))
        host = self.service + "." + session.user.rpartition("@")[2]
        return (f"<message from={attr(host)} to={attr(session.full)}>"
                f"{form.toElement().toXml()}</message>")

    def on_message(self, session: "C2SSession", message: domish.Element,
                   ) -> Optional[defer.Deferred]:
        form = data_form.findForm(message, NS_AUTHORIZATION)
        if form is None or form.formType != "submit":
            session.error(message, "feature-not-implemented",
                          "this service reads only subscription authorization answers")
            return None
        values = form.getValues()
        try:
            topic = self.core.subject(str(values.get("pubsub#node", "")))
            subscriber = JID(str(values.get("pubsub#subscriber_jid", ""))).userhost()
        except (BadUser, InvalidFormat) as e:
            session.error(message, "bad-request", str(e))
            return None
        allow = str(values.get("pubsub#allow", "false")).lower() in ("1", "true")
        work = self.core.nodes.authorize(self._actor(session), topic, subscriber, allow)
        return defer.ensureDeferred(self._authorized(session, message, work))

    async def _authorized(self, session: "C2SSession", message: domish.Element,
                          work: Awaitable[None]) -> None:
        try:
            await work
        except PepError as e:
            session.error(message, e.condition, str(e))

    # --- parsing, answers and errors --------------------------------------------------------

    def _actor(self, session: "C2SSession") -> Optional[str]:
        """Who asks, for the core: None (the site's rights) for ``[xmpp] admins``."""
        return None if session.user in self.core.config.xmpp.admins else session.user

    def _request(self, session: "C2SSession", iq: domish.Element,
                 node_needed: bool = True) -> Optional[PubSubRequest]:
        """The parsed request with ``topic`` set (the node's topic, "" when none was named
        and ``node_needed`` is False); on a bad request the client is answered."""
        request = parse_request(session, iq)
        if request is None:
            return None
        if request.verb == "subscriptionsSet":  # wokkel reads neither its node nor entries
            request.nodeIdentifier = iq.pubsub.subscriptions.getAttribute("node")
        node = request.nodeIdentifier or ""
        if not node and (not node_needed or request.verb == "default"):
            request.topic = ""
            return request
        try:
            request.topic = self.core.subject(node)
        except BadUser as e:
            problem = str(e)
        else:
            problem = "" if is_topic(request.topic) else "a node of this service is a topic"
        if not node:
            session.send(StanzaError("not-acceptable", text="name the node",
                                     appCondition=_app("nodeid-required")).toResponse(iq))
            return None
        if problem:
            session.send(StanzaError("item-not-found", text=problem).toResponse(iq))
            return None
        return request

    def _answer(self, session: "C2SSession", iq: domish.Element,
                work: Awaitable[Any]) -> defer.Deferred:
        """Run the core's work: its element (or nothing) as the result, its
        :class:`PepError` as the error."""
        return defer.ensureDeferred(_answered(session, iq, work))

    def _unsupported(self, session: "C2SSession", iq: domish.Element, verb: str) -> None:
        session.error(iq, "feature-not-implemented",
                      f"this pubsub service does not offer {verb}")


class PartlyRefused(PepError):
    """Some entries of an owner's change of several affiliations or subscriptions were
    refused, the others made: the error carries the refused ones back with the state they
    keep (XEP-0060 §8.8.2.4, §8.9.2.4)."""

    def __init__(self, kind: str, topic: str, refused: "list[Refused]"):
        super().__init__("not-acceptable", "; ".join(r.reason for r in refused))
        self.payload = _owner_listing(kind, topic, [(r.jid, r.current) for r in refused])


async def _partly(kind: str, topic: str, work: "Awaitable[list[Refused]]") -> None:
    """Run an owner's change of several entries; raise :class:`PartlyRefused` for those
    the node refused."""
    refused = await work
    if refused:
        raise PartlyRefused(kind, topic, refused)


async def _answered(session: "C2SSession", iq: domish.Element, work: Awaitable[Any]) -> None:
    try:
        answer = await work
    except PepError as e:
        error = StanzaError(e.condition, text=str(e), appCondition=_app(e.app) if e.app else None)
        error.type = error.type or "modify"  # policy-violation (RFC 6120) is not in Twisted's
        response = error.toResponse(iq)
        if isinstance(e, PartlyRefused):  # the refused entries, not the whole request
            response.children = [e.payload, response.children[-1]]
        session.send(response)
        return
    session.result(iq, answer if isinstance(answer, domish.Element) else None)


def _app(condition: str) -> domish.Element:
    return domish.Element((NS_PUBSUB_ERRORS, condition))


def _notify_flag(iq: domish.Element) -> bool:
    """A retract's ``notify`` attribute (XEP-0060 §7.2.2.1): notify unless it says no."""
    for retract in iq.pubsub.elements(NS_PUBSUB, "retract"):
        return retract.getAttribute("notify", "true").lower() in ("1", "true")
    return True


def _subscription_changes(iq: domish.Element) -> dict[str, str]:
    """The owner's §8.8.2 ``<subscription jid=... subscription=.../>`` entries, by bare JID.
    A malformed request (a bad JID, two entries for one JID: this service has no subids)
    is refused whole, before anything is changed."""
    changes = {}
    for entry in iq.pubsub.subscriptions.elements(NS_PUBSUB_OWNER, "subscription"):
        try:
            jid = JID(entry.getAttribute("jid", "")).userhost()
        except InvalidFormat as e:
            raise PepError("bad-request", f"jid {entry.getAttribute('jid')!r}: {e}",
                           app="invalid-jid") from None
        if jid in changes:
            raise PepError("bad-request", f"two subscriptions for {jid}")
        changes[jid] = entry.getAttribute("subscription", "")
    return changes


def _config_form(config: TopicConfig) -> data_form.Form:
    """A node's configuration form (§8.2), or the default one a new node gets (§8.3)."""
    form = data_form.Form("form", formNamespace=NS_NODE_CONFIG)
    form.addField(data_form.Field("list-single", var="pubsub#access_model",
                                  value=config.access_model,
                                  options=[data_form.Option(m) for m in type(config).ACCESS]))
    form.addField(data_form.Field("text-single", var="pubsub#max_items",
                                  value=str(config.max_items)))
    form.addField(data_form.Field("boolean", var="pubsub#persist_items",
                                  value=config.persist_items))
    form.addField(data_form.Field("text-single", var="pubsub#title", value=config.title))
    return form


def _owner_listing(kind: str, topic: str, pairs: list[tuple[str, str]]) -> domish.Element:
    """The owner's ``<affiliations/>`` or ``<subscriptions/>`` of a node: ``(jid, state)``."""
    answer = domish.Element((NS_PUBSUB_OWNER, "pubsub"))
    listing = answer.addElement(kind + "s")
    listing["node"] = topic
    for jid, state in pairs:
        entry = listing.addElement(kind)
        entry["jid"], entry[kind] = jid, state
    return answer


def _add_entry(parent: domish.Element, name: str, node: str, jid: str, state: str) -> None:
    entry = parent.addElement(name)
    entry["node"], entry["jid"], entry["subscription"] = node, jid, state

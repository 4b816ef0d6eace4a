"""Personal Eventing Protocol (XEP-0163) on every account's bare JID, User Tune first.

Every account is a virtual pubsub service with PEP's fixed defaults: nodes are created by the
first publish, keep one item, use the *presence* access model and notify on publish. What a
client publishes goes through the core, so every door sees it:

- the tune node (XEP-0118) is validated by :class:`presenced.nowplaying.Tune` and published
  with ``core.publish_tune`` — the same path as Thrift ``publish_np``: store, then ONE router
  ``tune`` event that comet streams and IRC hooks read too;
- any other node (mood, activity, ...) is kept as the node's last item and sent as a router
  ``pep`` event, which only XMPP renders.

A router event reaching an XMPP session becomes a ``<message type='headline'>`` with a
``pubsub#event`` only when the resource is available and its entity capabilities
(:mod:`presenced.xmpp.caps`) include ``<node>+notify``. The router already limits recipients
to the publisher and its subscribers (contacts with subscription ``from``/``both``). When a
resource comes online, or newly advertises ``+notify``, it is sent the last item of those
nodes from itself and from every contact it receives events from.
"""

from __future__ import annotations

import presenced.wokkel_compat  # noqa: F401  (before any wokkel import)

from typing import TYPE_CHECKING, Iterable, Optional

from twisted.internet import defer
from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.protocols.jabber.jid import InvalidFormat
from twisted.words.xish import domish
from wokkel import data_form, disco
from wokkel.pubsub import NS_PUBSUB, NS_PUBSUB_EVENT, NS_PUBSUB_OWNER, BadRequest, PubSubRequest

from presenced import events
from presenced.events import Event
from presenced.nowplaying import TUNE_ITEM_ID, TUNE_NS, BadTune, Tune, tune_xml
from presenced.pep import NodeConfig, PepError, PepItem, PepNode
from presenced.xmpp.caps import DISCO_INFO_NS, EntityCaps, notify_nodes
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.stanzas import NS_CLIENT, attr

if TYPE_CHECKING:
    from presenced.xmpp.session import C2SSession

NS_PUBSUB_ERRORS = "http://jabber.org/protocol/pubsub#errors"
MAX_NODE_NAME = 256
# Store lookups in flight for last items: a login storm (every resource asks for each of its
# contacts' items) must queue here, not swamp the store until its requests time out.
LAST_ITEM_LOOKUPS = 32

PEP_FEATURES = tuple(f"{NS_PUBSUB}#{name}" for name in (
    "access-open", "access-presence", "access-roster", "access-whitelist", "auto-create",
    "auto-subscribe", "config-node", "create-nodes", "delete-items", "delete-nodes",
    "filtered-notifications", "item-ids", "last-published", "multi-items",
    "persistent-items", "presence-notifications", "publish", "publish-options",
    "purge-nodes", "retract-items", "retrieve-items")) + (NS_PUBSUB,)


class PepHandler(FeatureHandler):
    """PEP publish/retract/items/delete on account JIDs, and +notify delivery."""

    routes = {
        f"iq-set/self/{NS_PUBSUB}:pubsub": "on_set",
        f"iq-set/bare/{NS_PUBSUB}:pubsub": "on_foreign_set",
        f"iq-get/self/{NS_PUBSUB}:pubsub": "on_get",
        f"iq-get/bare/{NS_PUBSUB}:pubsub": "on_get",
        f"iq-set/self/{NS_PUBSUB_OWNER}:pubsub": "on_owner_set",
        f"iq-get/self/{NS_PUBSUB_OWNER}:pubsub": "on_owner_get",
    }
    event_renderers = {events.TUNE: "render_tune", events.PEP: "render_pep"}

    def __init__(self, server) -> None:
        super().__init__(server)
        self.caps = EntityCaps(self._ask_disco_info)
        # The event being fanned out and its notification, cut where ``to`` goes. Keyed by
        # the object, not Event.id: events relayed from other nodes keep their node's ids.
        self._rendered: tuple[Optional[Event], bytes, bytes] = (None, b"", b"")
        self._to: dict["C2SSession", bytes] = {}  # quoted full JID of available resources
        self.notifications = 0
        self._lookups = defer.DeferredSemaphore(LAST_ITEM_LOOKUPS)

    def attached(self) -> None:
        hooks = self.core.hooks
        hooks.add("xmpp-available", self._available)
        hooks.add("xmpp-unavailable", self._unavailable)
        hooks.add("friends-added", self._friends_added)
        self.caps.listeners.append(self._interests_changed)
        metrics = self.core.metrics
        metrics.describe("presenced_pep_notifications_total", "counter",
                         "PEP notifications sent to XMPP resources.")
        metrics.gauge("presenced_pep_notifications_total", lambda: self.notifications)
        metrics.describe("presenced_caps_cached", "gauge",
                         "Verified entity capabilities hashes in the cache.")
        metrics.gauge("presenced_caps_cached", self.caps.cached_hashes)

    # --- disco ------------------------------------------------------------------------------

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        if nodeIdentifier or not target.user or target.host not in self.server.domains:
            return []
        return [disco.DiscoIdentity("pubsub", "pep")] + [
            disco.DiscoFeature(name) for name in PEP_FEATURES]

    # --- publish, retract, create -----------------------------------------------------------

    def on_set(self, session: "C2SSession", iq: domish.Element) -> Optional[defer.Deferred]:
        publish = _plain_publish(iq)
        if publish is not None:
            return defer.ensureDeferred(self._publish(session, iq, *publish))
        request = parse_request(session, iq)
        if request is None:
            return None
        if request.verb == "publish":
            return defer.ensureDeferred(self._publish(session, iq, request.nodeIdentifier,
                                                      request.items))
        if request.verb == "retract":
            return defer.ensureDeferred(self._retract(session, iq, request))
        if request.verb == "create":
            # Nodes exist from their first publish; an explicit create is a no-op success.
            session.result(iq)
            return None
        return self._unsupported(session, iq, request.verb)

    def on_foreign_set(self, session: "C2SSession", iq: domish.Element) -> None:
        session.error(iq, "forbidden", "only the account owner publishes to its PEP nodes")

    def on_owner_set(self, session: "C2SSession", iq: domish.Element) -> Optional[defer.Deferred]:
        request = parse_request(session, iq)
        if request is None:
            return None
        node = request.nodeIdentifier
        if request.verb == "delete":
            return defer.ensureDeferred(self._owner(session, iq, self.core.pep.delete(
                session.user, node)))
        if request.verb == "purge":
            return defer.ensureDeferred(self._owner(session, iq, self.core.pep.purge(
                session.user, node)))
        if request.verb == "configureSet":
            fields = request.options.getValues() if request.options is not None else {}
            return defer.ensureDeferred(self._owner(session, iq, self.core.pep.configure(
                session.user, node, fields)))
        return self._unsupported(session, iq, request.verb)

    def on_owner_get(self, session: "C2SSession", iq: domish.Element) -> Optional[defer.Deferred]:
        request = parse_request(session, iq)
        if request is None:
            return None
        if request.verb == "configureGet":
            return defer.ensureDeferred(self._configuration(session, iq, request.nodeIdentifier))
        return self._unsupported(session, iq, request.verb)

    async def _owner(self, session: "C2SSession", iq: domish.Element, work) -> None:
        """Answer an owner request: its coroutine returns False when the node is missing."""
        try:
            done = await work
        except PepError as e:
            session.error(iq, e.condition, str(e))
            return
        if done is False:
            session.error(iq, "item-not-found")
        else:
            session.result(iq)

    async def _configuration(self, session: "C2SSession", iq: domish.Element,
                             node: str) -> None:
        found = await self.core.pep.get_node(session.user, node)
        if found is None:
            session.error(iq, "item-not-found")
            return
        form = data_form.Form("form", formNamespace=NS_PUBSUB + "#node_config")
        for name, value in found.config.as_fields().items():
            form.addField(data_form.Field(var=name, value=value))
        answer = domish.Element((NS_PUBSUB_OWNER, "pubsub"))
        configure = answer.addElement("configure")
        configure["node"] = node
        configure.addChild(form.toElement())
        session.result(iq, answer)

    async def _publish(self, session: "C2SSession", iq: domish.Element, node: str,
                       items: list[domish.Element]) -> None:
        if not self._node_ok(session, iq, node):
            return
        if len(items) != 1:
            return self._bad(session, iq, "item-required" if not items
                             else "invalid-payload", "publish exactly one item")
        item = items[0]
        payloads = list(item.elements())
        if len(payloads) != 1:
            return self._bad(session, iq, "invalid-payload", "an item carries one payload")
        options = publish_options(iq)
        user = session.user
        if node == TUNE_NS:
            try:  # the tune node is every door's: its rules are fixed
                NodeConfig().require(options)
            except PepError as e:
                self._refuse(session, iq, e)
                return
            try:
                tune = Tune.from_element(payloads[0])
            except BadTune as e:
                return self._bad(session, iq, "invalid-payload", str(e))
            await self.core.publish_tune(user, tune)
            item_id = TUNE_ITEM_ID
        else:
            try:
                item_id = await self.core.pep.publish(user, node, item.getAttribute("id"),
                                                      payloads[0].toXml(), options)
            except PepError as e:
                self._refuse(session, iq, e)
                return
        # Written as text: one answer per publish, on the hot path.
        to = iq.getAttribute("to")
        session.write((f"<iq type='result' id={attr(iq['id'])}"
                       f"{' from=' + attr(to) if to else ''}><pubsub xmlns='{NS_PUBSUB}'>"
                       f"<publish node={attr(node)}><item id={attr(item_id)}/></publish>"
                       f"</pubsub></iq>").encode("utf-8"))

    async def _retract(self, session: "C2SSession", iq: domish.Element,
                       request: PubSubRequest) -> None:
        node, user = request.nodeIdentifier, session.user
        if not request.itemIdentifiers:
            return self._bad(session, iq, "item-required", "name the item to retract")
        if not await self.core.pep.retract(user, node, request.itemIdentifiers):
            session.error(iq, "item-not-found")
            return
        session.result(iq)

    # --- items ------------------------------------------------------------------------------

    def on_get(self, session: "C2SSession", iq: domish.Element) -> Optional[defer.Deferred]:
        request = parse_request(session, iq)
        if request is None:
            return None
        if request.verb != "items":
            return self._unsupported(session, iq, request.verb)
        return defer.ensureDeferred(self._items(session, iq, request))

    async def _items(self, session: "C2SSession", iq: domish.Element,
                     request: PubSubRequest) -> None:
        to = iq.getAttribute("to")
        owner = to if to else session.user
        node = request.nodeIdentifier
        found = await self.core.pep.get_node(owner, node)
        if owner != session.user and not await self._may_read(session, iq, owner, found):
            return
        if found is None:
            session.error(iq, "item-not-found")
            return
        answer = domish.Element((NS_PUBSUB, "pubsub"))
        items = answer.addElement("items")
        items["node"] = node
        chosen = [i for i in found.items
                  if not request.itemIdentifiers or i.item_id in request.itemIdentifiers]
        if request.maxItems:
            chosen = chosen[-request.maxItems:]
        for item in chosen:
            element = items.addElement("item")
            element["id"] = item.item_id
            element.addRawXml(item.payload)
        session.result(iq, answer)

    async def _may_read(self, session: "C2SSession", iq: domish.Element, owner: str,
                        found: Optional[PepNode]) -> bool:
        """The node's access model for another account's read; refuses and says so."""
        model = found.config.access_model if found is not None else "presence"
        if model == "open":
            return True
        if model == "whitelist":
            error = StanzaError("not-allowed", appCondition=domish.Element(
                (NS_PUBSUB_ERRORS, "closed-node")))
            session.send(error.toResponse(iq))
            return False
        contact = await self.core.store.get_roster_item(owner, session.user)
        if contact is None or contact.subscription not in ("from", "both"):
            condition = ("presence-subscription-required" if model == "presence"
                         else "not-in-roster-group")
            error = StanzaError("not-authorized", appCondition=domish.Element(
                (NS_PUBSUB_ERRORS, condition)))
            session.send(error.toResponse(iq))
            return False
        return True

    # --- notifications ------------------------------------------------------------------------

    def render_tune(self, session: "C2SSession", event: Event) -> None:
        """A router ``tune`` event, as PEP notification for resources with tune+notify."""
        if session.available and TUNE_NOTIFY in self.caps.features(session):
            self._notify(session, event, TUNE_NS)

    def render_pep(self, session: "C2SSession", event: Event) -> None:
        node = event.payload["node"]
        if session.available and node + "+notify" in self.caps.features(session):
            self._notify(session, event, node)

    def _notify(self, session: "C2SSession", event: Event, node: str) -> None:
        """Write the notification; its bytes are built once per event, whatever the fan-out."""
        rendered_event, head, tail = self._rendered
        if rendered_event is not event:
            head, tail = _split_notification(event.sender, event_content(event, node))
            self._rendered = (event, head, tail)
        session.write(head + self._quoted_jid(session) + tail)
        self.notifications += 1
        self.server.events_out += 1

    # --- last items for resources that (newly) want them --------------------------------------

    def _available(self, session: "C2SSession", presence: domish.Element) -> None:
        self.caps.learn(session, presence)

    def _unavailable(self, session: "C2SSession", status: str = "") -> None:
        self.caps.forget(session)
        self._to.pop(session, None)

    def _quoted_jid(self, session: "C2SSession") -> bytes:
        quoted = self._to.get(session)
        if quoted is None:
            quoted = self._to[session] = attr(session.full).encode("utf-8")
        return quoted

    def _interests_changed(self, session: "C2SSession", old: frozenset,
                           new: frozenset) -> None:
        nodes = notify_nodes(new) - notify_nodes(old)
        if nodes:
            defer.ensureDeferred(self._send_last_items(session, nodes)).addErrback(
                self._log_failure, session.user)

    async def _send_last_items(self, session: "C2SSession", nodes: frozenset) -> None:
        owners = [session.user] + list(await self.core.store.get_subscriptions(session.user))
        await self._deliver_last_items([session], owners, nodes)

    async def _deliver_last_items(self, sessions: list["C2SSession"], owners: Iterable[str],
                                  nodes: Optional[frozenset]) -> None:
        """Send each session the last item of ``owners``' nodes it wants (``nodes``: only
        these)."""
        owners = list(owners)
        found = await defer.gatherResults([self._last_items_of(o) for o in owners])
        for owner, owned in zip(owners, found):
            for node, pep_node in owned.items():
                if nodes is not None and node not in nodes:
                    continue
                config, item = pep_node.config, pep_node.last
                if (item is None or config.send_last_published_item == "never"
                        or (config.access_model == "whitelist"
                            and any(s.user != owner for s in sessions))):
                    continue
                data = None
                for session in sessions:
                    if (session.available and session.stream.session is session
                            and node + "+notify" in self.caps.features(session)):
                        if data is None:
                            data = _split_notification(owner, _item_xml(node, item))
                        session.write(data[0] + self._quoted_jid(session) + data[1])
                        self.notifications += 1

    def _last_items_of(self, owner: str) -> defer.Deferred:
        """``{node: PepItem}`` of ``owner``; ``{}`` (logged) when the store fails, so one
        unreadable contact does not cost the others."""
        d = self._lookups.run(self.core.pep.get_nodes, owner)
        return d.addErrback(self._lookup_failed, owner)

    def _lookup_failed(self, failure, owner: str) -> dict:
        self.server.log.warn("last PEP items of {owner}: {error}", owner=owner,
                             error=failure.getErrorMessage())
        return {}

    def _friends_added(self, pairs: list[tuple[str, str]]) -> None:
        """New friends see each other's last items at once (XEP-0163 §6.1.2)."""
        from presenced.xmpp.session import available_sessions

        for a, b in pairs:
            for viewer, owner in ((a, b), (b, a)):
                sessions = available_sessions(self.core, viewer)
                if sessions:
                    defer.ensureDeferred(self._deliver_last_items(sessions, [owner], None)) \
                        .addErrback(self._log_failure, viewer)

    def _log_failure(self, failure, viewer: str) -> None:
        self.server.log.failure("sending last PEP items to {viewer}", failure, viewer=viewer)

    # --- entity caps --------------------------------------------------------------------------

    def _ask_disco_info(self, session: "C2SSession", node: str) -> defer.Deferred:
        iq = domish.Element((NS_CLIENT, "iq"))
        iq["type"] = "get"
        iq["from"] = session.user.rpartition("@")[2]
        iq.addElement((DISCO_INFO_NS, "query"))["node"] = node
        return session.request(iq).addCallback(_disco_query)

    # --- request parsing and errors ------------------------------------------------------------

    def _node_ok(self, session: "C2SSession", iq: domish.Element, node: str) -> bool:
        if not node or len(node) > MAX_NODE_NAME:
            self._bad(session, iq, "nodeid-required",
                      f"a node name of 1..{MAX_NODE_NAME} characters")
            return False
        return True

    def _refuse(self, session: "C2SSession", iq: domish.Element, error: PepError) -> None:
        """A publish the node's rules refused; a precondition carries its own condition."""
        if error.app:
            session.send(StanzaError(error.condition, text=str(error), appCondition=(
                domish.Element((NS_PUBSUB_ERRORS, error.app)))).toResponse(iq))
        else:
            session.error(iq, error.condition, str(error))

    def _bad(self, session: "C2SSession", iq: domish.Element, condition: str, text: str) -> None:
        session.send(BadRequest(condition, text).toResponse(iq))

    def _unsupported(self, session: "C2SSession", iq: domish.Element, verb: str) -> None:
        session.error(iq, "feature-not-implemented",
                      f"PEP here offers publish, retract, items and delete, not {verb}")


TUNE_NOTIFY = TUNE_NS + "+notify"


def parse_request(session: "C2SSession", iq: domish.Element) -> Optional[PubSubRequest]:
    """wokkel's parse of a pubsub request (PEP's and the pubsub service's); on an error the
    client is answered and None returned."""
    try:
        return PubSubRequest.fromElement(iq)
    except StanzaError as e:
        session.send(e.toResponse(iq))
    except InvalidFormat as e:  # a JID wokkel read (an owner's affiliation entry)
        session.send(StanzaError("bad-request", text=f"bad JID: {e}", appCondition=(
            domish.Element((NS_PUBSUB_ERRORS, "invalid-jid")))).toResponse(iq))
    except NotImplementedError:
        session.error(iq, "feature-not-implemented", "unknown pubsub request")
    return None


def _plain_publish(iq: domish.Element) -> Optional[tuple[str, list[domish.Element]]]:
    """(node, items) of a ``<pubsub><publish node='...'>`` with nothing else but
    publish-options; None for anything else, which wokkel parses.

    The fast path exists because wokkel's generic stanza parsing walks class dictionaries by
    reflection on every request: a tenth of the server's time per publish in ``bench/pep.py``.
    """
    publish = None
    for child in iq.pubsub.elements(NS_PUBSUB):
        if child.name == "publish" and publish is None:
            publish = child
        elif child.name != "publish-options":
            return None
    node = publish.getAttribute("node") if publish is not None else None
    if not node:
        return None
    return node, list(publish.elements(NS_PUBSUB, "item"))


def publish_options(iq: domish.Element) -> Optional[dict]:
    """The fields of a publish's XEP-0060 publish-options form, or None (PEP's and the
    pubsub service's publishes)."""
    for options in iq.pubsub.elements(NS_PUBSUB, "publish-options"):
        form = data_form.findForm(options, NS_PUBSUB + "#publish-options")
        if form is not None:
            return form.getValues()
    return None


def _disco_query(iq: domish.Element) -> domish.Element:
    for child in iq.elements(DISCO_INFO_NS, "query"):
        return child
    raise ValueError("disco#info result without <query/>")


def event_content(event: Event, node: str) -> str:
    """The ``<items/>`` or ``<delete/>`` of a router event's notification."""
    payload = event.payload
    if event.type == events.TUNE:
        return _item_xml(node, PepItem(TUNE_ITEM_ID, tune_xml(payload)))
    if payload.get("delete"):
        return f"<delete node={attr(node)}/>"
    if payload.get("purge"):
        return f"<purge node={attr(node)}/>"
    if "retract" in payload:
        retracted = "".join(f"<retract id={attr(i)}/>" for i in payload["retract"])
        return f"<items node={attr(node)}>{retracted}</items>"
    return _item_xml(node, PepItem(payload["item_id"], payload["item"]))


def _item_xml(node: str, item: PepItem) -> str:
    return f"<items node={attr(node)}><item id={attr(item.item_id)}>{item.payload}</item></items>"


def _split_notification(sender: str, content: str) -> tuple[bytes, bytes]:
    """The notification message, cut where each recipient's ``to`` goes."""
    head = f"<message from={attr(sender)} type='headline' to="
    tail = f"><event xmlns='{NS_PUBSUB_EVENT}'>{content}</event></message>"
    return head.encode("utf-8"), tail.encode("utf-8")

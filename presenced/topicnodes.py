"""Nodes of the pubsub service (XEP-0060 on ``pubsub.<domain>``): a topic's owner, rules,
affiliations and items, decided here for every door.

A topic needs no node: it is followed and published to as it is (docs/topics.md), with the
``open`` access model, no owner and no items. Creating a node (``create``, or the first
XMPP publish to the topic) gives it an owner, the creating user, and a configuration:

- access model ``open`` (anyone not outcast subscribes), ``whitelist`` (only the owner,
  publishers and members; others get ``closed-node``) or ``authorize`` (others wait for the
  owner's approval, asked with an :data:`~presenced.events.NODE_AUTHORIZE` event);
- ``max_items`` / ``persist_items`` / ``title``, read and written by PEP's own form code
  (:class:`presenced.pep.NodeConfig`).

A node's subscribers are the topic's followers in the subscription graph, whoever added
them (an XMPP subscribe, Thrift or HTTP ``add_subscriptions``): one graph, so a site event
posted over HTTP reaches XMPP subscribers, and a subscriber over XMPP is a web follower.
Only pending approvals are kept in the node. Items, retractions, purges and deletion reach
the followers as one router :data:`~presenced.events.NODE` event (PEP's payload shape).

``actor`` None in the calls below is the site itself (the HTTP API, a server admin): it may
manage every node. The record of a node is one value of the ``pubsub`` map store under the
topic; the ``pubsub`` key holds the index (topic -> owner) that disco and the per-user
bound read; under an owner's JID, the topics of the nodes with subscribers waiting for
that owner's approval (asked again on each of the owner's logins). Changes of one node are
made one at a time on this server (a client pipelining publishes loses none) and written
with the store's compare-and-set, so two cluster nodes changing one node at once lose
neither change: the one that wrote second reads the other's record and makes its change
again (:mod:`presenced.turns`). Removing an account deletes the nodes it owns.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Collection, Optional

from twisted.internet import defer

from presenced import events
from presenced.events import Event
from presenced.pep import NodeConfig, PepError, PepItem, PepNode
from presenced.store import PUBSUB_STORE
from presenced.turns import MAX_ATTEMPTS, Conflict, Turns, one_at_a_time

if TYPE_CHECKING:
    from presenced.core import Core
    from presenced.store import IMapStore

TOPIC_ACCESS = ("open", "whitelist", "authorize")
AFFILIATIONS = ("owner", "publisher", "member", "none", "outcast")
MEMBERS = ("owner", "publisher", "member")  # who passes a whitelist and needs no approval
INDEX = "pubsub"     # the map's "user" that lists every node (never a topic: no "/")
RECORD = "node"      # the map key of a node's record, under its topic
MAX_PENDING = 1000   # subscribers one node keeps waiting for approval (docs/security.md)
MAX_ASKED_AT_LOGIN = 100  # pending requests asked again on an owner's login (the same)


@dataclass(frozen=True, slots=True)
class TopicConfig(NodeConfig):
    """A topic node's configuration: the service's access models and defaults."""

    ACCESS: ClassVar[tuple[str, ...]] = TOPIC_ACCESS

    access_model: str = "open"
    max_items: int = 10
    send_last_published_item: str = "never"


@dataclass(frozen=True, slots=True)
class TopicNode:
    """A node as stored: owner, configuration, items (oldest first), affiliations other
    than the owner's and ``none``, and subscribers waiting for approval."""

    owner: str
    config: TopicConfig = TopicConfig()
    items: tuple[PepItem, ...] = ()
    affiliations: tuple[tuple[str, str], ...] = ()
    pending: tuple[str, ...] = ()
    # The record this node was read from (None: none was stored): what the write of a
    # change of it expects to replace. Kept by ``replace()``, never compared nor encoded.
    stored: Optional[str] = field(default=None, compare=False, repr=False)

    def affiliation(self, jid: Optional[str]) -> str:
        if jid == self.owner:
            return "owner"
        return dict(self.affiliations).get(jid, "none")

    def encode(self) -> str:
        return json.dumps({"owner": self.owner, "config": self.config.as_fields(),
                           "items": [[i.item_id, i.payload] for i in self.items],
                           "affiliations": dict(self.affiliations),
                           "pending": list(self.pending)})

    @classmethod
    def decode(cls, text: str) -> "TopicNode":
        data = json.loads(text)
        return cls(data["owner"], TopicConfig.from_fields(data["config"]),
                   tuple(PepItem(*pair) for pair in data["items"]),
                   tuple(sorted(data["affiliations"].items())), tuple(data["pending"]),
                   stored=text)


class NodeChanged(PepError, Conflict):
    """Another server wrote the node's record since this change read it: the change is
    made again (:func:`presenced.turns.one_at_a_time`); past that many tries, the answer."""

    def __init__(self, topic: str):
        super().__init__("resource-constraint", f"the node {topic} changed on other servers "
                         f"{MAX_ATTEMPTS} times during this change: try again")


@dataclass(frozen=True, slots=True)
class Refused:
    """An entry of an owner's change of several affiliations or subscriptions that was not
    made (XEP-0060 §8.8.2.4, §8.9.2.4: the others were): the entity's state as it stays, and
    why."""

    jid: str
    current: str
    reason: str


class TopicNodes:
    """The core's pubsub service nodes: every door's node management, publish and reads."""

    def __init__(self, core: "Core"):
        self.core = core
        self.turns = Turns()  # topics being changed here

    def forget_user(self, user: str) -> defer.Deferred:
        """The account is being deleted: so are the nodes it owns (followers are told)."""
        async def forget() -> None:
            for topic, owner in (await self.owners()).items():
                if owner == user:
                    await self.delete(None, topic)
        return defer.ensureDeferred(forget())

    @property
    def _map(self) -> "IMapStore":
        return self.core.store.open_map(PUBSUB_STORE)

    @property
    def _limits(self):
        return self.core.config.server

    # --- reads ------------------------------------------------------------------------------

    async def get(self, topic: str) -> Optional[TopicNode]:
        text = await self._map.get(topic, RECORD)
        return None if text is None else TopicNode.decode(text)

    def default_config(self) -> TopicConfig:
        """The configuration a node created without a form gets (XEP-0060 §8.3)."""
        return self._config({})

    async def owners(self) -> dict[str, str]:
        """``{topic: owner}`` of every node."""
        return await self._map.items(INDEX)

    async def items(self, actor: Optional[str], topic: str, item_ids: Collection[str] = (),
                    max_items: Optional[int] = None) -> list[PepItem]:
        """The node's items (those of ``item_ids`` when given, the newest ``max_items``)."""
        node = await self._existing(topic)
        await self._check_read(actor, topic, node)
        chosen = [i for i in node.items if not item_ids or i.item_id in item_ids]
        return chosen[-max_items:] if max_items else chosen

    async def subscribers(self, actor: Optional[str], topic: str) -> list[tuple[str, str]]:
        """``(jid, "subscribed" | "pending")`` of the node, for its owner."""
        node = await self.managed(actor, topic)
        followers = await self.core.store.get_subscribers(topic)
        return ([(jid, "subscribed") for jid in sorted(followers)]
                + [(jid, "pending") for jid in node.pending])

    async def awaiting(self, owner: str, limit: int = MAX_ASKED_AT_LOGIN,
                       ) -> list[tuple[str, str]]:
        """``(topic, subscriber)`` of the subscription requests waiting for ``owner``'s
        approval, oldest first per node, at most ``limit`` (up to 64 nodes x 1 000 could
        wait): what to ask the owner again when they log in. The others stay pending, in
        the owner's list of subscriptions, and are asked once these are answered."""
        asks: list[tuple[str, str]] = []
        for topic in sorted(await self._map.items(owner)):
            node = await self.get(topic)
            if node is not None and node.owner == owner:
                asks.extend((topic, subscriber) for subscriber in node.pending)
            if len(asks) >= limit:
                break
        return asks[:limit]

    async def affiliations(self, actor: Optional[str], topic: str) -> list[tuple[str, str]]:
        node = await self.managed(actor, topic)
        return [(node.owner, "owner")] + list(node.affiliations)

    # --- node management --------------------------------------------------------------------

    @one_at_a_time("topic")
    async def create(self, owner: str, topic: str, fields: Optional[dict[str, Any]] = None,
                     by_site: bool = False) -> TopicNode:
        """A new node owned by ``owner``; ``conflict`` when the topic has one already,
        ``policy-violation`` past ``[server] pubsub_nodes_per_user``; a user (not
        ``by_site``) creates only in the kinds of ``[server] pubsub_create_kinds``."""
        if await self.get(topic) is not None:
            raise PepError("conflict", f"the node {topic} exists")
        return await self._create(owner, topic, fields or {}, by_site)

    @one_at_a_time("topic")
    async def configure(self, actor: Optional[str], topic: str,
                        fields: dict[str, Any]) -> None:
        """Change the node's configuration; fewer ``max_items`` drops the oldest."""
        node = await self.managed(actor, topic)
        config = self._config(fields, node.config)
        kept = node.items[-config.max_items:] if config.persist_items else ()
        await self._save(topic, replace(node, config=config, items=kept))

    @one_at_a_time("topic")
    async def delete(self, actor: Optional[str], topic: str) -> None:
        """Delete the node: its followers hear ``<delete/>`` and stop following it."""
        node = await self.managed(actor, topic)
        if not await self._map.compare_and_set(topic, RECORD, node.stored, None):
            raise NodeChanged(topic)
        await self._map.delete(INDEX, topic)
        if node.pending:
            await self._map.delete(node.owner, topic)
        await self._notify(topic, {"delete": True})
        followers = await self.core.store.get_subscribers(topic)
        await self.core.remove_subscriptions([(jid, topic) for jid in followers])

    @one_at_a_time("topic")
    async def purge(self, actor: Optional[str], topic: str) -> None:
        node = await self.managed(actor, topic)
        await self._save(topic, replace(node, items=()))
        await self._notify(topic, {"purge": True})

    @one_at_a_time("topic")
    async def set_affiliations(self, actor: Optional[str], topic: str,
                               changes: dict[str, str]) -> list[Refused]:
        """Owner's changes (jid -> publisher/member/none/outcast); an outcast stops
        following the node. The valid entries are made; the others (another affiliation,
        the owner's own) are returned, with the affiliation they keep."""
        node = await self.managed(actor, topic)
        current = dict(node.affiliations)
        refused, banned = [], []
        for jid, affiliation in changes.items():
            if affiliation not in AFFILIATIONS or affiliation == "owner" or jid == node.owner:
                refused.append(Refused(jid, node.affiliation(jid), f"{jid}: affiliation "
                                       f"{affiliation!r} (publisher, member, none or "
                                       "outcast; not the owner's)"))
                continue
            current.pop(jid, None)
            if affiliation != "none":
                current[jid] = affiliation
            if affiliation == "outcast":
                banned.append((jid, topic))
        if len(refused) < len(changes):
            await self._save(topic, replace(node,
                                            affiliations=tuple(sorted(current.items()))))
        if banned:
            await self.core.remove_subscriptions(banned)
        return refused

    # --- publish ----------------------------------------------------------------------------

    @one_at_a_time("topic")
    async def publish(self, actor: str, topic: str, item_id: Optional[str], xml: str,
                      options: Optional[dict[str, Any]] = None) -> str:
        """Keep an item (when the node persists items) and send it to the followers; the
        topic's node is created, owned by ``actor``, on its first publish, configured by
        ``options`` (publish-options fields). Only the owner and publishers publish; an
        existing node whose configuration does not meet ``options`` is refused as PEP
        refuses it (:meth:`NodeConfig.require`). Returns the item id (generated when None)."""
        node = await self.get(topic)
        if node is None:
            node = await self._create(actor, topic, options or {})
        elif node.affiliation(actor) not in ("owner", "publisher"):
            raise PepError("forbidden", "only the node's owner and publishers publish")
        else:
            node.config.require(options, limit=self._limits.pubsub_max_items)
        limit = self._limits.pubsub_item_bytes
        if len(xml.encode("utf-8")) > limit:
            raise PepError("not-acceptable", f"an item is at most {limit} bytes "
                           "([server] pubsub_item_bytes)", app="payload-too-big")
        item = PepItem(item_id or secrets.token_hex(8), xml)
        if node.config.persist_items:
            kept = PepNode(node.config, node.items).with_item(
                item, limit * self._limits.pubsub_max_items).items
            await self._save(topic, replace(node, items=kept))
        await self._notify(topic, {"item_id": item.item_id, "item": xml})
        return item.item_id

    @one_at_a_time("topic")
    async def retract(self, actor: str, topic: str, item_ids: Collection[str],
                      notify: bool = True) -> None:
        node = await self._existing(topic)
        if actor is not None and node.affiliation(actor) not in ("owner", "publisher"):
            raise PepError("forbidden", "only the node's owner and publishers retract")
        gone = [i.item_id for i in node.items if i.item_id in item_ids]
        if not gone:
            raise PepError("item-not-found", "no such item")
        await self._save(topic, replace(node, items=tuple(
            i for i in node.items if i.item_id not in gone)))
        if notify:
            await self._notify(topic, {"retract": gone})

    # --- subscriptions ----------------------------------------------------------------------

    @one_at_a_time("topic")
    async def subscribe(self, user: str, topic: str) -> str:
        """Follow the topic as its node's rules allow: "subscribed", or "pending" while the
        owner of an ``authorize`` node decides (the owner is asked at once)."""
        node = await self.get(topic)
        if node is not None:
            affiliation, model = node.affiliation(user), node.config.access_model
            if affiliation == "outcast":
                raise PepError("forbidden", "you are banned from this node")
            if affiliation not in MEMBERS and model == "whitelist":
                raise PepError("not-allowed", "this node is open to its members only",
                               app="closed-node")
            if affiliation not in MEMBERS and model == "authorize":
                if user not in node.pending:
                    if len(node.pending) >= MAX_PENDING:
                        raise PepError("resource-constraint", f"{MAX_PENDING} subscribers "
                                       "already wait for the owner's approval")
                    asked = replace(node, pending=node.pending + (user,))
                    await self._save_pending(topic, asked)
                self.core.router.deliver(node.owner, Event(events.NODE_AUTHORIZE, topic, {
                    "node": topic, "subscriber": user}))
                return "pending"
        await self.core.add_subscriptions([(user, topic)])
        return "subscribed"

    @one_at_a_time("topic")
    async def unsubscribe(self, user: str, topic: str) -> None:
        node = await self.get(topic)
        if node is not None and user in node.pending:
            await self._save_pending(topic, replace(node, pending=tuple(
                p for p in node.pending if p != user)))
        await self.core.remove_subscriptions([(user, topic)])

    @one_at_a_time("topic")
    async def authorize(self, actor: Optional[str], topic: str, subscriber: str,
                        allow: bool) -> None:
        """The owner's answer to a pending subscription; the subscriber is told."""
        node = await self.managed(actor, topic)
        if subscriber not in node.pending:
            raise PepError("item-not-found", f"{subscriber} is not waiting for approval")
        await self._set_states(topic, node, {subscriber: "subscribed" if allow else "none"})

    @one_at_a_time("topic")
    async def set_subscriptions(self, actor: Optional[str], topic: str,
                                changes: dict[str, str]) -> list[Refused]:
        """The owner's XEP-0060 §8.8.2 changes, jid -> ``subscribed`` (approves a pending
        subscriber, or subscribes anyone not outcast) or ``none`` (drops a subscriber or a
        pending request); each affected user is told. The valid entries are made; the
        others (another state, an outcast subscribed) are returned, with the state they
        keep."""
        node = await self.managed(actor, topic)
        made, refused = {}, []
        for jid, state in changes.items():
            if state not in ("subscribed", "none"):
                reason = f"{jid}: subscription {state!r} (subscribed or none)"
            elif state == "subscribed" and node.affiliation(jid) == "outcast":
                reason = f"{jid} is an outcast of this node"
            else:
                made[jid] = state
                continue
            refused.append(Refused(jid, await self._subscription(topic, node, jid), reason))
        if made:
            await self._set_states(topic, node, made)
        return refused

    async def _subscription(self, topic: str, node: TopicNode, jid: str) -> str:
        """``jid``'s subscription to the node: subscribed, pending or none."""
        if jid in node.pending:
            return "pending"
        return "subscribed" if topic in await self.core.store.get_subscriptions(jid) \
            else "none"

    async def _set_states(self, topic: str, node: TopicNode, states: dict[str, str]) -> None:
        """Make each jid's subscription ``subscribed`` or ``none``, whether it was pending
        or not, and tell it its new state."""
        if any(jid in node.pending for jid in states):
            await self._save_pending(topic, replace(node, pending=tuple(
                p for p in node.pending if p not in states)))
        added = [(jid, topic) for jid, state in states.items() if state == "subscribed"]
        removed = [(jid, topic) for jid, state in states.items() if state == "none"]
        if added:
            await self.core.add_subscriptions(added)
        if removed:
            await self.core.remove_subscriptions(removed)
        for jid, state in states.items():
            self.core.router.deliver(jid, Event(events.NODE, topic, {
                "node": topic, "jid": jid, "subscription": state}))

    # --- helpers ----------------------------------------------------------------------------

    async def _create(self, owner: str, topic: str, fields: dict[str, Any],
                      by_site: bool = False) -> TopicNode:
        kinds = self._limits.pubsub_create_kinds
        if kinds and not by_site and topic.partition("/")[0] not in kinds:
            # A user owning a site's topic could delete it, and its followers with it.
            raise PepError("forbidden", f"users create nodes of the kinds {', '.join(kinds)} "
                           "only ([server] pubsub_create_kinds)")
        limit = self._limits.pubsub_nodes_per_user
        owned = sum(1 for who in (await self.owners()).values() if who == owner)
        if owned >= limit:
            raise PepError("policy-violation", f"a user may own {limit} nodes "
                           "([server] pubsub_nodes_per_user)")
        node = await self._save(topic, TopicNode(owner, self._config(fields)))
        await self._map.set(INDEX, topic, owner)
        return node

    def _config(self, fields: dict[str, Any], base: Optional[TopicConfig] = None,
                ) -> TopicConfig:
        """A form's configuration; ``max_items`` never above ``[server] pubsub_max_items``,
        the default (10) included."""
        limit = self._limits.pubsub_max_items
        config = TopicConfig.from_fields(fields, base, limit=limit)
        return config if config.max_items <= limit else replace(config, max_items=limit)

    async def _existing(self, topic: str) -> TopicNode:
        node = await self.get(topic)
        if node is None:
            raise PepError("item-not-found", f"no node {topic}")
        return node

    async def managed(self, actor: Optional[str], topic: str) -> TopicNode:
        """The node, when ``actor`` may manage it (its owner, or the site)."""
        node = await self._existing(topic)
        if actor is not None and node.affiliation(actor) != "owner":
            raise PepError("forbidden", "only the node's owner manages it")
        return node

    async def _check_read(self, actor: Optional[str], topic: str, node: TopicNode) -> None:
        """Items are for anyone on an open node, else for members and subscribers."""
        if actor is None:
            return
        affiliation = node.affiliation(actor)
        if affiliation == "outcast":
            raise PepError("forbidden", "you are banned from this node")
        if node.config.access_model == "open" or affiliation in MEMBERS:
            return
        if topic in await self.core.store.get_subscriptions(actor):
            return
        if node.config.access_model == "whitelist":
            raise PepError("not-allowed", "this node is open to its members only",
                           app="closed-node")
        raise PepError("not-authorized", "subscribe to read this node's items",
                       app="not-subscribed")

    async def _save(self, topic: str, node: TopicNode) -> TopicNode:
        """Write the changed node over the record it was read from (none for a new node);
        :class:`NodeChanged` when another server wrote the record in between. Returns the
        node as now stored."""
        text = node.encode()
        if not await self._map.compare_and_set(topic, RECORD, node.stored, text):
            raise NodeChanged(topic)
        return replace(node, stored=text)

    async def _save_pending(self, topic: str, node: TopicNode) -> None:
        """Save a node whose pending approvals changed, and the owner's list of the nodes
        with approvals to give (read on each of the owner's logins: one small read)."""
        await self._save(topic, node)
        if node.pending:
            await self._map.set(node.owner, topic, str(len(node.pending)))
        else:
            await self._map.delete(node.owner, topic)

    def _notify(self, topic: str, what: dict[str, Any]):
        """One router event to the topic's followers on every node."""
        return self.core.router.send(topic, Event(events.NODE, topic, dict(node=topic, **what)))

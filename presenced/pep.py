"""PEP nodes of every account (XEP-0163), kept and announced by the core for every door.

Publishing, retracting, purging and deleting are one path whatever door asks (an XMPP
client, Thrift ``publish_np``, the web admin): the node (its configuration and items) is kept
in the ``pep`` map store and ONE router event is sent. A published item is announced while
its write is in flight (the router's followers index needs no store read, so subscribers
hear of it at once); the publisher is answered only once the item is stored, and a failed
write fails the publish. The User Tune node is one node among
others; its event is a :data:`~presenced.events.TUNE` with the tune's fields (comet and IRC
read it), any other node's a :data:`~presenced.events.PEP` that only XMPP renders. Events are
never changed after they are sent.

A node's configuration (XEP-0060 publish-options / node configuration) decides who hears of
it: the ``presence`` (default) and ``roster`` access models reach the owner and its
subscribers, ``open`` the same (there are no other subscribers here), ``whitelist`` the
owner alone — which is what XEP-0223 private storage and bookmarks (XEP-0402) use.

The changes of one account's nodes are made one at a time on this server
(:mod:`presenced.turns`): a client pipelining publishes to a multi-item node loses none.
"""

from __future__ import annotations

import json
import secrets
from json.encoder import encode_basestring_ascii as _json_string
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Collection, Optional

from twisted.internet import defer

from presenced import events
from presenced.events import Event
from presenced.nowplaying import TUNE_ITEM_ID, TUNE_NS, Tune, parse_tune_xml, tune_xml
from presenced.store import PEP_STORE
from presenced.turns import Turns, one_at_a_time

if TYPE_CHECKING:
    from presenced.metrics import Metrics
    from presenced.router import SubscriptionRouter
    from presenced.store import IMapStore, IRosterStore

MAX_NODES = 64            # PEP nodes per account
DEFAULT_ITEM_ID = "current"  # XEP-0060: the id of a singleton node's item when none is given
MAX_ITEMS = 256           # items kept per node (a node's max_items is capped to it)
MAX_NODE_BYTES = 262144   # bytes of items per node: what one node may make us store
ACCESS_MODELS = ("presence", "open", "roster", "whitelist")
SEND_LAST = ("never", "on_sub", "on_sub_and_presence")
MAX_TITLE = 256           # characters of a node's pubsub#title kept


class PepError(Exception):
    """A request the node's rules refuse; ``condition`` is the XMPP error to answer and
    ``app`` the XEP-0060 ``pubsub#errors`` condition beside it ("" for none)."""

    def __init__(self, condition: str, text: str, app: str = ""):
        super().__init__(text)
        self.condition = condition
        self.app = app


@dataclass(frozen=True, slots=True)
class PepItem:
    """One item of a PEP node; ``payload`` is the item's XML."""

    item_id: str
    payload: str

    def encode(self) -> str:
        """A single-item node with the default configuration, as releases before kept it:
        JSON ``[item id, payload]`` (the bytes ``json.dumps`` writes, without its encoder
        set-up: every tune publish stores one)."""
        return f"[{_json_string(self.item_id)}, {_json_string(self.payload)}]"

    @classmethod
    def decode(cls, text: str) -> "PepItem":
        return PepNode.decode(text).last


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """The XEP-0060 fields presenced honours, with PEP's defaults (XEP-0163 and XEP-0222).
    The pubsub service's nodes (:mod:`presenced.topicnodes`) subclass it with their own
    access models and defaults, so both read and write forms one way."""

    ACCESS: ClassVar[tuple[str, ...]] = ACCESS_MODELS

    access_model: str = "presence"
    max_items: int = 1
    persist_items: bool = True
    send_last_published_item: str = "on_sub_and_presence"
    title: str = ""

    @classmethod
    def from_fields(cls, fields: dict[str, Any], base: Optional["NodeConfig"] = None,
                    limit: int = MAX_ITEMS) -> "NodeConfig":
        """A configuration from form fields (``pubsub#max_items`` ...); unknown fields are
        ignored, bad values raise :class:`PepError` (``not-acceptable``); ``max_items`` is
        capped to ``limit``."""
        config = base or cls()
        values: dict[str, Any] = {}
        model = fields.get("pubsub#access_model")
        if model is not None:
            if model not in cls.ACCESS:
                raise PepError("not-acceptable", f"access model {model!r} is not offered "
                               f"(only {', '.join(cls.ACCESS)})")
            values["access_model"] = model
        count = fields.get("pubsub#max_items")
        if count is not None:
            if str(count) == "max":
                values["max_items"] = limit
            else:
                try:
                    values["max_items"] = max(1, min(limit, int(count)))
                except ValueError:
                    raise PepError("not-acceptable", f"max_items {count!r}") from None
        title = fields.get("pubsub#title")
        if title is not None:
            values["title"] = str(title)[:MAX_TITLE]
        persist = fields.get("pubsub#persist_items")
        if persist is not None:
            values["persist_items"] = str(persist).lower() in ("1", "true")
        send_last = fields.get("pubsub#send_last_published_item")
        if send_last is not None:
            if send_last not in SEND_LAST:
                raise PepError("not-acceptable", f"send_last_published_item {send_last!r}")
            values["send_last_published_item"] = send_last
        return replace(config, **values)

    def as_fields(self) -> dict[str, str]:
        fields = {"pubsub#access_model": self.access_model,
                  "pubsub#max_items": str(self.max_items),
                  "pubsub#persist_items": "true" if self.persist_items else "false",
                  "pubsub#send_last_published_item": self.send_last_published_item}
        if self.title:
            fields["pubsub#title"] = self.title
        return fields

    def differs(self, fields: dict[str, Any], limit: int = MAX_ITEMS) -> Optional[str]:
        """The first publish-options field this configuration does not meet (a failed
        XEP-0060 7.1.5 precondition), or None; ``limit`` is what ``max`` means here."""
        wanted = type(self).from_fields(fields, self, limit)
        for name in ("access_model", "max_items", "persist_items",
                     "send_last_published_item"):
            if getattr(wanted, name) != getattr(self, name):
                return f"pubsub#{name}"
        return None

    def require(self, fields: Optional[dict[str, Any]], limit: int = MAX_ITEMS) -> None:
        """Refuse a publish whose publish-options (XEP-0060 7.1.5) this configuration does
        not meet: ``conflict`` with ``precondition-not-met``, for PEP and the pubsub
        service alike. No options, no precondition."""
        mismatch = self.differs(fields, limit) if fields else None
        if mismatch is not None:
            raise PepError("conflict", f"the node's {mismatch} is not the publish-options'",
                           app="precondition-not-met")


@dataclass(frozen=True, slots=True)
class PepNode:
    """A node as stored: its configuration and items, oldest first."""

    config: NodeConfig = field(default_factory=NodeConfig)
    items: tuple[PepItem, ...] = ()

    @property
    def last(self) -> Optional[PepItem]:
        return self.items[-1] if self.items else None

    def encode(self) -> str:
        if self.config == NodeConfig() and len(self.items) == 1:
            return self.items[0].encode()
        return json.dumps({"config": self.config.as_fields(),
                           "items": [[i.item_id, i.payload] for i in self.items]})

    @classmethod
    def decode(cls, text: str) -> "PepNode":
        data = json.loads(text)
        if isinstance(data, list):  # a single item with the defaults
            return cls(NodeConfig(), (PepItem(*data),))
        return cls(NodeConfig.from_fields(data["config"]),
                   tuple(PepItem(*pair) for pair in data["items"]))

    def with_item(self, item: PepItem, max_bytes: int = MAX_NODE_BYTES) -> "PepNode":
        kept = [i for i in self.items if i.item_id != item.item_id]
        kept.append(item)
        if not self.config.persist_items:
            kept = kept[-1:]
        kept = kept[-self.config.max_items:]
        if sum(len(i.payload) for i in kept) > max_bytes:
            raise PepError("not-acceptable", f"a node keeps at most {max_bytes} bytes")
        return replace(self, items=tuple(kept))


class PepService:
    """The core's PEP: every door's publish, retract, purge and delete, and the reads."""

    def __init__(self, store: "IRosterStore", router: "SubscriptionRouter",
                 metrics: "Metrics"):
        self.store = store
        self.router = router
        self.metrics = metrics
        self.turns = Turns()  # accounts whose nodes are being changed here
        metrics.describe("presenced_tunes_published_total", "counter",
                         "Tunes published (stops included), from every door.")

    @property
    def nodes(self) -> "IMapStore":
        """The "pep" map, opened on use: a core built without a store (in-memory door
        tests) never touches PEP."""
        return self.store.open_map(PEP_STORE)

    def get_node(self, user: str, node: str) -> defer.Deferred:
        """Fires the :class:`PepNode`, or None."""
        return self.nodes.get(user, node).addCallback(
            lambda text: None if text is None else PepNode.decode(text))

    def get_item(self, user: str, node: str) -> defer.Deferred:
        """Fires the node's last :class:`PepItem`, or None."""
        return self.get_node(user, node).addCallback(
            lambda found: None if found is None else found.last)

    def get_nodes(self, user: str) -> defer.Deferred:
        """Fires ``{node: PepNode}`` of every node of ``user``."""
        return self.nodes.items(user).addCallback(
            lambda found: {node: PepNode.decode(text) for node, text in found.items()})

    @one_at_a_time("user")
    async def publish(self, user: str, node: str, item_id: Optional[str], xml: str,
                      options: Optional[dict[str, Any]] = None) -> str:
        """Add ``xml`` to a node other than the tune's (see :meth:`publish_tune`), creating
        it with ``options`` (publish-options fields) when new, and notify. An existing node
        whose configuration does not meet ``options`` is refused
        (:meth:`NodeConfig.require`). Returns the item id (generated when None)."""
        existing = await self.nodes.items(user)
        text = existing.get(node)
        if text is None:
            if len(existing) >= MAX_NODES:
                raise PepError("policy-violation", f"at most {MAX_NODES} PEP nodes per account")
            current = PepNode(NodeConfig.from_fields(options or {}))
        else:
            current = PepNode.decode(text)
            current.config.require(options)
        if item_id is None:
            item_id = DEFAULT_ITEM_ID if current.config.max_items == 1 else secrets.token_hex(8)
        updated = current.with_item(PepItem(item_id, xml))
        stored = self.nodes.set(user, node, updated.encode())
        await self._send(user, updated.config, {"node": node, "item_id": item_id, "item": xml})
        await stored
        return item_id

    @one_at_a_time("user")
    async def configure(self, user: str, node: str, fields: dict[str, Any]) -> None:
        """Change an existing node's configuration (fewer max_items drops the oldest)."""
        current = await self.get_node(user, node)
        if current is None:
            raise PepError("item-not-found", f"no node {node!r}")
        config = NodeConfig.from_fields(fields, current.config)
        items = current.items[-config.max_items:]
        await self.nodes.set(user, node, PepNode(config, items).encode())

    @one_at_a_time("user")
    async def publish_tune(self, user: str, tune: Optional[Tune]) -> int:
        """Keep ``tune`` (None: stopped) as the User Tune node's item and announce it; the
        number of sessions reached, once the item is stored. The announcement does not wait
        for the write; the publisher's answer does."""
        payload = tune.to_payload() if tune is not None else {}
        stored = self.nodes.set(user, TUNE_NS, PepItem(TUNE_ITEM_ID, tune_xml(payload)).encode())
        reached = await self._announce_tune(user, payload)
        await stored
        return reached

    @one_at_a_time("user")
    async def retract(self, user: str, node: str, item_ids: Collection[str]) -> bool:
        """Retract the node's items among ``item_ids``; False if none of them is there."""
        current = await self.get_node(user, node)
        gone = [i.item_id for i in current.items if i.item_id in item_ids] if current else []
        if not gone:
            return False
        if node == TUNE_NS or len(gone) == len(current.items) and current.config == NodeConfig():
            await self._remove(user, node, current.config, {"retract": gone})
            return True
        kept = tuple(i for i in current.items if i.item_id not in gone)
        await self.nodes.set(user, node, replace(current, items=kept).encode())
        await self._send(user, current.config, {"node": node, "retract": gone})
        return True

    @one_at_a_time("user")
    async def purge(self, user: str, node: str) -> bool:
        """Drop every item of the node, keeping its configuration; False when no node."""
        current = await self.get_node(user, node)
        if current is None:
            return False
        if node == TUNE_NS or current.config == NodeConfig():
            await self._remove(user, node, current.config, {"purge": True})
        else:
            await self.nodes.set(user, node, replace(current, items=()).encode())
            await self._send(user, current.config, {"node": node, "purge": True})
        return True

    @one_at_a_time("user")
    async def delete(self, user: str, node: str) -> bool:
        """Delete the node and its items; False when there was none."""
        current = await self.get_node(user, node)
        if current is None:
            return False
        await self._remove(user, node, current.config, {"delete": True})
        return True

    async def _remove(self, user: str, node: str, config: NodeConfig,
                      what: dict[str, Any]) -> None:
        """Drop the node and notify; without its item the tune is stopped."""
        await self.nodes.delete(user, node)
        if node == TUNE_NS:
            await self._announce_tune(user, {})
        else:
            await self._send(user, config, dict(node=node, **what))

    def _send(self, user: str, config: NodeConfig, payload: dict[str, Any]) -> defer.Deferred:
        """One PEP event to whoever the node's access model lets hear it."""
        event = Event(events.PEP, user, payload)
        if config.access_model == "whitelist":
            return defer.succeed(self.router.deliver(user, event))
        return self.router.send(user, event)

    def _announce_tune(self, user: str, payload: dict[str, Any]) -> defer.Deferred:
        """``payload``: the tune's (:meth:`Tune.to_payload`, ``{}`` = stopped), handed over."""
        self.metrics.inc("presenced_tunes_published_total")
        return self.router.send(user, Event(events.TUNE, user, payload))

    async def now_playing(self, user: str) -> Optional[Tune]:
        """``user``'s last published :class:`Tune`, or None when stopped or never set."""
        item = await self.get_item(user, TUNE_NS)
        if item is None:
            return None
        tune = parse_tune_xml(item.payload)
        return None if tune.stopped else tune

"""PEP nodes of every account (XEP-0163), kept and announced by the core for every door.

Publishing, retracting and deleting are one path whatever door asks (an XMPP client, Thrift
``publish_np``, the web admin): the item is kept in the ``pep`` map store as the node's last
item, then ONE router event is sent. The User Tune node is one node among others; its event is
a :data:`~presenced.events.TUNE` with the tune's fields (comet and IRC read it), any other
node's a :data:`~presenced.events.PEP` that only XMPP renders. Events are never changed after
they are sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Collection, Optional

from twisted.internet import defer

from presenced import events
from presenced.events import Event
from presenced.nowplaying import TUNE_ITEM_ID, TUNE_NS, Tune, parse_tune_xml
from presenced.store import PEP_STORE

if TYPE_CHECKING:
    from presenced.metrics import Metrics
    from presenced.router import SubscriptionRouter
    from presenced.store import IMapStore, IRosterStore

MAX_NODES = 64  # PEP nodes per account: bounds what one user can make us store


class TooManyNodes(Exception):
    """A publish would create a node beyond :data:`MAX_NODES`."""


@dataclass(frozen=True, slots=True)
class PepItem:
    """The last item published on one PEP node; ``payload`` is the item's XML."""

    item_id: str
    payload: str

    def encode(self) -> str:
        """The map store's value: JSON ``[item id, payload]`` (as releases before kept it)."""
        return json.dumps([self.item_id, self.payload])

    @classmethod
    def decode(cls, text: str) -> "PepItem":
        return cls(*json.loads(text))


class PepService:
    """The core's PEP: every door's publish, retract and delete, and the reads of items."""

    def __init__(self, store: "IRosterStore", router: "SubscriptionRouter",
                 metrics: "Metrics"):
        self.store = store
        self.router = router
        self.metrics = metrics
        metrics.describe("presenced_tunes_published_total", "counter",
                         "Tunes published (stops included), from every door.")

    @property
    def nodes(self) -> "IMapStore":
        """The "pep" map, opened on use: a core built without a store (in-memory door
        tests) never touches PEP."""
        return self.store.open_map(PEP_STORE)

    def get_item(self, user: str, node: str) -> defer.Deferred:
        """Fires the node's last :class:`PepItem`, or None."""
        return self.nodes.get(user, node).addCallback(
            lambda text: None if text is None else PepItem.decode(text))

    def get_nodes(self, user: str) -> defer.Deferred:
        """Fires ``{node: PepItem}`` of every node of ``user``."""
        return self.nodes.items(user).addCallback(
            lambda found: {node: PepItem.decode(text) for node, text in found.items()})

    async def publish(self, user: str, node: str, item_id: str, xml: str) -> int:
        """Keep ``xml`` as the last item of a node other than the tune's (see
        :meth:`publish_tune`) and notify; raises :class:`TooManyNodes`. Returns the number
        of sessions reached."""
        existing = await self.nodes.items(user)
        if node not in existing and len(existing) >= MAX_NODES:
            raise TooManyNodes(f"at most {MAX_NODES} PEP nodes per account")
        await self.nodes.set(user, node, PepItem(item_id, xml).encode())
        return await self.router.send(user, Event(events.PEP, user, {
            "node": node, "item_id": item_id, "item": xml}))

    async def publish_tune(self, user: str, tune: Optional[Tune]) -> int:
        """Keep ``tune`` (None: stopped) as the User Tune node's item and announce it."""
        tune = tune if tune is not None else Tune()
        await self.nodes.set(user, TUNE_NS, PepItem(TUNE_ITEM_ID, tune.to_xml()).encode())
        return await self._announce_tune(user, tune)

    async def retract(self, user: str, node: str, item_ids: Collection[str]) -> bool:
        """Retract the node's item if its id is one of ``item_ids``; False if it is not."""
        current = await self.get_item(user, node)
        if current is None or current.item_id not in item_ids:
            return False
        await self._remove(user, node, {"retract": current.item_id})
        return True

    async def delete(self, user: str, node: str) -> bool:
        """Delete the node and its item; False when there was none."""
        if await self.nodes.get(user, node) is None:
            return False
        await self._remove(user, node, {"delete": True})
        return True

    async def _remove(self, user: str, node: str, what: dict[str, Any]) -> None:
        """Drop the node's item and notify; without its item the tune is stopped."""
        await self.nodes.delete(user, node)
        if node == TUNE_NS:
            await self._announce_tune(user, Tune())
        else:
            await self.router.send(user, Event(events.PEP, user, dict(node=node, **what)))

    def _announce_tune(self, user: str, tune: Tune) -> defer.Deferred:
        self.metrics.inc("presenced_tunes_published_total")
        return self.router.send(user, Event(events.TUNE, user, tune.to_payload()))

    async def now_playing(self, user: str) -> Optional[Tune]:
        """``user``'s last published :class:`Tune`, or None when stopped or never set."""
        item = await self.get_item(user, TUNE_NS)
        if item is None:
            return None
        tune = parse_tune_xml(item.payload)
        return None if tune.stopped else tune

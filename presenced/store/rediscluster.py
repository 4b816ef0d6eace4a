"""Redis Cluster routing for the Redis store: txredisapi has none, so this is the small part
a cluster client needs on top of its connections.

- The slot map comes from ``CLUSTER SHARDS`` (Redis >= 7) of any reachable node: each of the
  16384 slots belongs to one master. A key's slot is CRC16 (XMODEM) of its hash tag, mod 16384.
- A command goes to the master of its key's slot. ``MOVED`` (the slot has a new owner, after a
  fail-over or a finished migration) updates that slot at once and refreshes the whole map in
  the background; ``ASK`` (the slot is being migrated, the key already moved) sends the one
  command to the target once, preceded by ``ASKING``, and leaves the map alone.
- A master that cannot be reached (killed, its replica not promoted yet) fails the attempt with
  ``ConnectionError("Not connected")`` and refreshes the map, so the store's retry loop
  (:meth:`presenced.store.redis.RedisRosterStore._call`) tries again, within the request's
  deadline, on whichever master the cluster elected.

One :class:`~presenced.store.redis.RedisNode` (one reconnecting connection) per master address,
opened when the map first names it and kept while the process runs.
"""

from __future__ import annotations

import binascii
from typing import Any, Callable, Optional
from urllib.parse import urlsplit, urlunsplit

import txredisapi
from twisted.internet import defer, reactor
from twisted.logger import Logger

SLOTS = 16384
_REDIRECTS = 16  # MOVED/ASK answers followed for one attempt before giving up
_REFRESH_INTERVAL = 0.1  # seconds between two slot map refreshes at most


def key_slot(key: str) -> int:
    """The cluster slot of ``key``: CRC16 of its ``{hash tag}`` when it has a non-empty one."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return binascii.crc_hqx(key.encode(), 0) % SLOTS


def slot_tags() -> list[str]:
    """For each slot a short hash tag that falls in it: the keys the store keeps one per slot
    (the accounts index) are named with these. About 160 000 CRC16s, tens of milliseconds."""
    tags: list[Optional[str]] = [None] * SLOTS
    missing = SLOTS
    i = 0
    while missing:
        tag = format(i, "x")
        slot = binascii.crc_hqx(tag.encode(), 0) % SLOTS
        if tags[slot] is None:
            tags[slot] = tag
            missing -= 1
        i += 1
    return tags  # type: ignore[return-value]


class SlotRoute:
    """What the store sends one slot's commands through: the slot's master, redirects followed.
    Has the ``execute`` of a :class:`~presenced.store.redis.RedisNode`, so the store treats a
    slot like a node."""

    __slots__ = ("cluster", "slot")

    def __init__(self, cluster: "ClusterMap", slot: int):
        self.cluster = cluster
        self.slot = slot

    def __str__(self) -> str:
        return f"slot {self.slot} ({self.cluster.owner_name(self.slot)})"

    def execute(self, *args: Any) -> defer.Deferred:
        return defer.ensureDeferred(self.cluster.execute(self.slot, args))

    def execute_confirmed(self, *args: Any) -> defer.Deferred:
        """Run a write and wait until the master's replicas have it (``WAIT``)."""
        return defer.ensureDeferred(self.cluster.execute(self.slot, args, confirmed=True))


class ClusterMap:
    """The slot map of one Redis Cluster and a connection to each of its masters."""

    log = Logger()

    def __init__(self, seeds: list[str], connect: Callable[[str], Any], timeout: float):
        """``connect(url)`` makes a started node for a master's URL (the store's RedisNode);
        each seed gets ``timeout`` seconds to answer."""
        self.seeds = list(seeds)
        self.timeout = timeout
        self._connect = connect
        first = urlsplit(self.seeds[0])
        self._netloc_auth = first.netloc.rpartition("@")[0]
        self._nodes: dict[str, Any] = {}
        self._owners: list[Optional[Any]] = [None] * SLOTS
        self._refreshing: Optional[defer.Deferred] = None
        self._last_refresh = 0.0

    def node(self, address: str) -> Any:
        """The connection to ``host:port``, opened on first use."""
        node = self._nodes.get(address)
        if node is None:
            netloc = f"{self._netloc_auth}@{address}" if self._netloc_auth else address
            node = self._nodes[address] = self._connect(urlunsplit(("redis", netloc, "", "",
                                                                    "")))
        return node

    def masters(self) -> list[Any]:
        """The connections of the masters that own slots now."""
        return list({id(n): n for n in self._owners if n is not None}.values())

    def slots_by_master(self) -> dict[Any, list[int]]:
        """The slots each master owns now."""
        owned: dict[Any, list[int]] = {}
        for slot, node in enumerate(self._owners):
            if node is not None:
                owned.setdefault(node, []).append(slot)
        return owned

    def owner(self, slot: int) -> Optional[Any]:
        """The connection to the slot's master, None while no master is known."""
        return self._owners[slot]

    def owner_name(self, slot: int) -> str:
        owner = self._owners[slot]
        return "no master known" if owner is None else str(owner)

    def route(self, slot: int) -> SlotRoute:
        return SlotRoute(self, slot)

    async def start(self) -> None:
        """Learn the slot map from the first seed that answers; fails if none does."""
        errors = []
        for url in self.seeds:
            parts = urlsplit(url)
            node = self.node(f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}")
            try:
                await self._load(node, self.timeout)
                return
            except Exception as e:  # every seed is tried before giving up
                errors.append(f"{url}: {e}")
        raise txredisapi.ConnectionError("no seed answered CLUSTER SHARDS: " + "; ".join(errors))

    async def _load(self, node: Any, timeout: Optional[float] = None) -> None:
        asked = node.execute("CLUSTER", "SHARDS")
        if timeout is not None:
            asked.addTimeout(timeout, reactor)
        shards = await asked
        owners: list[Optional[Any]] = [None] * SLOTS
        for shard in shards:
            fields = _pairs(shard)
            masters = [_pairs(n) for n in fields.get("nodes", [])]
            masters = [n for n in masters if n.get("role") == "master"
                       and n.get("health") != "failed"]
            ranges = fields.get("slots", [])
            if not masters or not ranges:
                continue
            owner = self.node(f"{masters[0]['ip']}:{masters[0]['port']}")
            for i in range(0, len(ranges), 2):
                for slot in range(int(ranges[i]), int(ranges[i + 1]) + 1):
                    owners[slot] = owner
        missing = owners.count(None)
        if missing == SLOTS:
            raise txredisapi.ResponseError("CLUSTERDOWN no slot has a master")
        self._owners = owners
        if missing:
            self.log.warn("Redis Cluster: {missing} slots have no master", missing=missing)

    def refresh(self) -> None:
        """Reload the slot map soon (at most every 100 ms, one load at a time), from any
        master or seed that answers."""
        if self._refreshing is not None or reactor.seconds() - self._last_refresh < \
                _REFRESH_INTERVAL:
            return
        self._last_refresh = reactor.seconds()
        self._refreshing = defer.ensureDeferred(self._refresh())

    async def reload(self) -> None:
        """Load the slot map now, from a node that answers, else from the seeds (what a
        connection that must find a slot's master again waits for)."""
        for node in self.masters() + list(self._nodes.values()):
            if node.connected():
                try:
                    await self._load(node, self.timeout)
                    return
                except Exception:  # ask the next node
                    continue
        await self.start()

    async def _refresh(self) -> None:
        try:
            for node in self.masters() + list(self._nodes.values()):
                if node.connected():
                    try:  # bounded: a node may wait for answers however late
                        await self._load(node, self.timeout)
                        return
                    except Exception:  # ask the next node
                        continue
        finally:
            self._refreshing = None
            self._last_refresh = reactor.seconds()

    async def execute(self, slot: int, args: tuple, confirmed: bool = False) -> Any:
        """One command on the slot's master, following MOVED and ASK answers."""
        asking = None
        for _ in range(_REDIRECTS):
            node = asking or self._owners[slot]
            if node is None or not node.connected():
                self.refresh()
                raise txredisapi.ConnectionError("Not connected")
            try:
                if asking is not None:
                    node.execute("ASKING").addErrback(lambda _: None)
                    asking = None
                if confirmed:
                    return await node.execute_confirmed(*args)
                return await node.execute(*args)
            except txredisapi.ResponseError as e:
                text = str(e)
                kind, _, where = text.partition(" ")
                if kind == "MOVED":
                    self._owners[slot] = self.node(where.split()[1])
                    self.refresh()
                elif kind == "ASK":
                    asking = self.node(where.split()[1])
                else:
                    if kind in ("CLUSTERDOWN", "TRYAGAIN"):
                        self.refresh()
                    raise
            except txredisapi.ConnectionError:
                self.refresh()
                raise
        raise txredisapi.ResponseError(f"TRYAGAIN more than {_REDIRECTS} redirects for slot "
                                       f"{slot}")

    def close(self) -> defer.Deferred:
        return defer.gatherResults([node.close() for node in self._nodes.values()],
                                   consumeErrors=True)


def _pairs(flat: Any) -> dict:
    """A RESP2 map (a flat list of names and values) as a dict."""
    if isinstance(flat, dict):
        return flat
    it = iter(flat)
    return dict(zip(it, it))

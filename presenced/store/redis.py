"""The Redis store: :class:`IRosterStore` over Redis through txredisapi: a hash ring of
independent servers (:class:`RingLayout`), a Redis Cluster (:class:`ClusterLayout`, routing in
:mod:`presenced.store.rediscluster`) or one Sentinel-managed master
(:mod:`presenced.store.redissentinel`).

Layout. Every key of a user carries the user's bare JID as a hash tag, so all of one user's
data lives on one node (under Redis Cluster: in one slot)::

    u:{alice@x}:acct      string  credentials (codec JSON); the account exists iff this does
    u:{alice@x}:friends   set     mutual friends: each a ``both`` roster item and graph edges
                                  both ways, in one member (what bulk loads write)
    u:{alice@x}:roster    hash    contact -> roster item text (codec), for every other item
    u:{alice@x}:ver       string  roster changes other than added friends (see below)
    u:{alice@x}:subs      set     other subscribers: who else receives alice's events
    u:{alice@x}:subd      set     other subjects: whose events alice receives besides friends
    u:{alice@x}:stores    set     names of the capability stores that hold data of alice
    u:{alice@x}:<name>    hash    a map store (pep, pending, private): key -> value
                          list    a list store (offline): values, oldest first
                          zset    an archive store: ``id:[when, value, peer]`` scored by id,
                                  ids assigned by the node (``:seq``, the counter of
                                  earlier versions, is no longer written)
    accounts              zset    (one per node) names of the node's accounts, for search/count
    accounts:{tag}        zset    the same under Redis Cluster, one per slot (``tag`` falls in
                                  it), so creating an account stays one script on one slot

A contact in ``friends`` is a ``both`` item whatever ``roster`` says about it;
``get_subscribers`` is ``SUNION friends subs``. The roster version is ``ver + SCARD friends``:
adding friends raises it by the set's growth with no write of its own (a bulk load writes one
SADD per user with all its friends, nothing else: :mod:`presenced.store.redisload`), every other change adds to ``ver`` at least what it
takes from the set plus one, so the version grows with every change and never goes back. Keeping a friendship as one set member (rather than a hash field and two set
members) makes bulk loads about twice as fast and the graph about half the size; changing one
side of it (``set_roster_item``, ``remove_subscriptions``) moves it to the explicit records.

Sharding. With several URLs each user is placed on one node by consistent hashing of the JID
(:class:`HashRing`, points named after the URL strings: keep the URLs as written, or users move).
Under Redis Cluster a command goes to its slot's master; graph writes go one script per master
(:meth:`RedisRosterStore._graph_on_masters`), sent again on the new map when a slot moved.

Writes that span nodes. ``add_friends`` of (A, B) writes A's side on A's node and B's side on
B's node, in Lua script calls of up to 5000 users each, each atomic on its node (so a bulk load
holds a node for a few milliseconds at a time). Every graph write is idempotent (SADD, SREM,
HSET, HDEL; a version only grows). If a node fails, the Deferred fails with
:class:`StoreError` naming the nodes that failed and the nodes that were written: some pairs
may then be half-written (A lists B, B does not list A), and running the same ``add_friends``
(or ``remove_friends``) again repairs them. ``remove_user`` first unlinks the user from
everyone it relates to and deletes its own keys last, so a failed removal leaves the account in
place and running it again finishes the job.

Outages. Each node has one connection that reconnects within a second of Redis coming back.
A request waits for the connection, for at most ``timeout`` seconds in all, then fails with
:class:`StoreError`. A request whose connection is lost after it was sent is sent again (up to
``retries`` times) when it is idempotent; list pushes and pops and archive appends are not, so they
fail instead (a lost reply may hide a push that happened, or a pop that deleted the values).
Replies only come after Redis accepted the write, so with ``appendonly yes`` and ``appendfsync
always`` nothing acknowledged is lost when Redis restarts (``everysec``: at most one second).

Durability. Replication is asynchronous: a replica promoted after its master died may lack the
master's last writes. With ``wait_replicas`` every write (a write command, a script that
writes) is acknowledged only after ``WAIT`` says that many replicas have it
(:class:`ReplicaConfirmation`); fewer within half the timeout fail the request.

Replies are parsed by hiredis when it is installed (txredisapi picks it up by itself): its C
parser is what keeps large ``get_subscribers`` replies well under a millisecond.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import zlib
from collections import defaultdict
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

import txredisapi
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from presenced.store import (OFFLINE_STORE, PENDING_STORE, PEP_STORE, PRIVATE_STORE,
                             ArchiveEntry, ArchiveIds, ArchivePage, ArchiveRow,
                             CapabilityRegistry, Credentials, IArchiveStore, IListStore,
                             IMapStore, IRosterStore, Pair, RosterItem, StoreError)
from presenced.store.redisload import RedisFriendsLoad
from presenced.store.rediscluster import ClusterMap, SlotRoute, key_slot, slot_tags
from presenced.store.codec import (BOTH, credentials_from_json, credentials_to_json,
                                   roster_item_from_text, roster_item_to_text)

_USER_KEYS = ("acct", "roster", "friends", "ver", "subs", "subd", "stores")
# Capability stores that releases before the ``stores`` set wrote (their keys are the same).
_UNLISTED_STORES = (PEP_STORE, OFFLINE_STORE, PENDING_STORE, PRIVATE_STORE)
_ACCOUNTS = "accounts"
_KINDS = {"hash": "map", "list": "list", "zset": "archive"}  # Redis TYPE -> capability kind
_SEARCH_CHUNK = 1000
_SCRIPT_LINES = 5000  # users per graph script call
_SCRIPT_BYTES = 1 << 20  # and about this much text (~40 000 friends: ~50 ms of one node)
# Errors Redis answers before running the command: waiting and asking again is always safe.
_TRANSIENT = ("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN")
# A script stopped part way because a key it reached has just been migrated to another slot
# owner: asking again (elsewhere) is safe when the request is idempotent.
_PARTIAL = "non local key"
_log = Logger()


def user_key(user: str, kind: str) -> str:
    """The key of one of a user's records: ``u:{alice@x}:roster``."""
    return f"u:{{{user}}}:{kind}"


class _Script:
    """A Lua script run by EVALSHA, loaded with EVAL when the node does not know it yet.
    ``writes``: its reply waits for replicas under ``wait_replicas`` (see Durability).
    Every script made is in ``every``: a new connection loads them all first
    (:class:`ScriptsFirst`)."""

    __slots__ = ("source", "sha", "writes")
    every: list["_Script"] = []

    def __init__(self, source: str, writes: bool = True):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.writes = writes
        _Script.every.append(self)


# Graph writes for many users at once. ARGV[1] is the text of a ``both`` roster item, ARGV[2]
# one line per user: ``op TAB user TAB contact TAB contact ...``. Ops: F/f add/remove friends,
# S/s add/remove subscribers, D/d add/remove subjects. A friend is one member of ``friends``
# (a ``both`` roster item and edges both ways); removing one direction of a friendship keeps
# what remains as a roster item and an explicit edge.
_GRAPH = _Script(r"""
local call, unpack, find = redis.call, unpack, string.find
local both = ARGV[1]
local lines = 0
for op, user, rest in string.gmatch(ARGV[2], '(%a)\t([^\t\n]+)\t([^\n]+)') do
  local p = 'u:{' .. user .. '}:'
  local f
  if find(rest, '\t', 1, true) then
    f = {}
    for field in string.gmatch(rest, '[^\t]+') do f[#f + 1] = field end
  else
    f = {rest}
  end
  local bump = 0
  for first = 1, #f, 1000 do
    local last = math.min(first + 999, #f)
    if op == 'F' then
      call('SADD', p .. 'friends', unpack(f, first, last))
    elseif op == 'f' then
      bump = bump + call('HDEL', p .. 'roster', unpack(f, first, last))
        + 2 * call('SREM', p .. 'friends', unpack(f, first, last))
      call('SREM', p .. 'subs', unpack(f, first, last))
      call('SREM', p .. 'subd', unpack(f, first, last))
    elseif op == 'S' then call('SADD', p .. 'subs', unpack(f, first, last))
    elseif op == 'D' then call('SADD', p .. 'subd', unpack(f, first, last))
    elseif op == 's' or op == 'd' then
      local gone, kept = 'subs', 'subd'
      if op == 'd' then gone, kept = 'subd', 'subs' end
      call('SREM', p .. gone, unpack(f, first, last))
      for i = first, last do
        if call('SREM', p .. 'friends', f[i]) == 1 then
          call('HSET', p .. 'roster', f[i], both)
          call('SADD', p .. kept, f[i])
          bump = bump + 1
        end
      end
    else return redis.error_reply('unknown graph op ' .. op) end
  end
  if bump > 0 then call('INCRBY', p .. 'ver', bump) end
  lines = lines + 1
end
return lines
""")

# Under Redis Cluster one graph script serves every user of one master, whatever their slots.
_GRAPH_ON_MASTER = _Script("#!lua flags=allow-cross-slot-keys\n" + _GRAPH.source)

_CREATE_USER = _Script("""
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('ZADD', KEYS[2], 0, ARGV[2])
  return 1
end
return 0
""")

# Roster scripts. KEYS: roster, friends, ver, subs, subd. A contact in ``friends`` is a
# ``both`` item whatever ``roster`` holds for it (add_friends leaves an older item there rather
# than pay an HDEL per edge); a contact leaving ``friends`` for the hash keeps its graph edges
# as explicit ones. The version is ``ver + SCARD friends``.
_GET_ROSTER_VERSION = _Script("""
return tonumber(redis.call('GET', KEYS[1]) or 0) + redis.call('SCARD', KEYS[2])
""", writes=False)

_GET_ROSTER = _Script("""
return {redis.call('HGETALL', KEYS[1]), redis.call('SMEMBERS', KEYS[2])}
""", writes=False)

_GET_ROSTER_ITEM = _Script("""
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return ARGV[2] end
return redis.call('HGET', KEYS[1], ARGV[1])
""", writes=False)

_SET_ROSTER_ITEM = _Script("""
local bump = 1
if redis.call('SREM', KEYS[2], ARGV[1]) == 1 then
  redis.call('SADD', KEYS[4], ARGV[1])
  redis.call('SADD', KEYS[5], ARGV[1])
  bump = 2
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('INCRBY', KEYS[3], bump) + redis.call('SCARD', KEYS[2])
""")

_REMOVE_ROSTER_ITEM = _Script("""
local bump = redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('SREM', KEYS[2], ARGV[1]) == 1 then
  redis.call('SADD', KEYS[4], ARGV[1])
  redis.call('SADD', KEYS[5], ARGV[1])
  bump = bump + 2
end
if bump == 0 then return false end
return redis.call('INCRBY', KEYS[3], bump) + redis.call('SCARD', KEYS[2])
""")

_ROSTER_KEYS = ("roster", "friends", "ver", "subs", "subd")

# KEYS: the account key, the user's other keys, the node's accounts set. ARGV[1]: the user,
# ARGV[2]: the key prefix, ARGV[3...]: capability stores not listed in ``stores``.
_DELETE_USER_KEYS = _Script("""
local existed = redis.call('DEL', KEYS[1])
local names = redis.call('SMEMBERS', ARGV[2] .. 'stores')
for i = 3, #ARGV do names[#names + 1] = ARGV[i] end
for _, name in ipairs(names) do
  redis.call('DEL', ARGV[2] .. name, ARGV[2] .. name .. ':seq')
end
redis.call('DEL', unpack(KEYS, 2, #KEYS - 1))
redis.call('ZREM', KEYS[#KEYS], ARGV[1])
return existed
""")


class HashRing:
    """Consistent hashing: each node owns ``replicas`` points on a 32-bit circle and a key
    belongs to the first point at or after its hash. Adding a node moves about 1/n of keys."""

    def __init__(self, names: list[str], replicas: int = 160):
        points = sorted((zlib.crc32(f"{name}#{i}".encode()), index)
                        for index, name in enumerate(names) for i in range(replicas))
        self._hashes = [h for h, _ in points]
        self._owners = [index for _, index in points]

    def index(self, key: str) -> int:
        """The index (in ``names``) of the node that owns ``key``."""
        i = bisect.bisect_left(self._hashes, zlib.crc32(key.encode()))
        return self._owners[i if i < len(self._hashes) else 0]


class ScriptsFirst:
    """For txredisapi connection factories: a new connection's first commands load every
    script (SCRIPT LOAD, not waited for: Redis runs one connection's commands in order), so
    no EVALSHA sent on it meets NOSCRIPT. The EVAL that answers NOSCRIPT is sent only after
    that reply, behind commands sent later: a write to a key, then a read of it in the same
    turn, would read the old value (a Redis that restarted knows no scripts)."""

    def addConnection(self, conn: Any) -> None:
        if not self.disconnectCalled and conn.connected:
            for script in _Script.every:
                conn.execute_command("SCRIPT", "LOAD", script.source).addErrback(
                    _script_not_loaded, conn)
        super().addConnection(conn)  # type: ignore[misc]


def _script_not_loaded(failure: Failure, conn: Any) -> None:
    """A failed SCRIPT LOAD costs only the EVAL fallback (and, if the connection dropped,
    nothing: the next one loads again)."""
    failure.trap(txredisapi.ResponseError)
    _log.warn("Redis {peer}: SCRIPT LOAD failed: {error}", peer=conn.transport.getPeer(),
              error=failure.getErrorMessage())


class _ReconnectingFactory(ScriptsFirst, txredisapi.RedisFactory):
    """txredisapi's pool, retrying every second at most so a restarted Redis is back at once."""

    initialDelay = 0.1
    maxDelay = 1.0


class RedisNode:
    """One Redis URL: a reconnecting connection (txredisapi) and the name errors report.

    With ``wait_replicas`` set, :meth:`execute_confirmed` follows a write with ``WAIT`` so its
    reply only comes once that many replicas have it (see Durability). ``timed_replies``
    False: a late answer is waited for (txredisapi aborts a connection whose answer is later
    than ``timeout``, and every command queued on it with it: the cluster's publishes)."""

    def __init__(self, url: str, timeout: float, wait_replicas: int = 0,
                 timed_replies: bool = True):
        self.url = url
        parts = urlsplit(url)
        try:
            if parts.scheme == "unix":
                db = int(parse_qs(parts.query).get("db", ["0"])[0])
                self._endpoint = UNIXClientEndpoint(reactor, parts.path, timeout=timeout)
            elif parts.scheme == "redis":
                db = int(parts.path.strip("/") or 0)
                self._endpoint = HostnameEndpoint(reactor, parts.hostname or "127.0.0.1",
                                                  parts.port or 6379, timeout=timeout)
            else:
                raise ValueError("not a redis:// or unix:// URL")
        except ValueError as e:
            raise StoreError(f"bad Redis URL {url!r}: {e}") from None
        self._factory = _ReconnectingFactory(
            url, db or None, 1, isLazy=True, handler=txredisapi.ConnectionHandler,
            charset="utf-8", password=unquote(parts.password) if parts.password else None,
            replyTimeout=timeout if timed_replies else None, convertNumbers=False,
            username=unquote(parts.username) if parts.username else None)
        self._confirmation = ReplicaConfirmation(self, wait_replicas, timeout)

    def __str__(self) -> str:
        return self.url

    def connect(self) -> defer.Deferred:
        """Start connecting; fires once the connection is usable."""
        ready = self._factory.deferred
        self._factory.startConnecting(self._endpoint)
        return ready

    def connected(self) -> bool:
        return self._factory.size > 0

    def execute(self, *args: Any) -> defer.Deferred:
        return self._factory.handler.execute_command(*args)

    def execute_confirmed(self, *args: Any) -> defer.Deferred:
        """Run a write; with ``wait_replicas``, fire its reply once the replicas have it."""
        return defer.ensureDeferred(self._confirmation.write(args))

    @property
    def confirms(self) -> bool:
        """Whether writes wait for replicas (``wait_replicas``)."""
        return self._confirmation.replicas > 0

    @defer.inlineCallbacks
    def execute_encoded(self, payload: bytes, commands: int):
        """Send ``commands`` commands the caller encoded (RESP) in one write; fires their
        replies, or fails with the first error reply. Bulk loads use it: txredisapi's
        encoding costs about 2 µs per argument in Python. Written on the connection the
        other requests use and its replies taken from the same queue, in the same turn, so
        the order of requests and replies is kept. Fails past ``timeout`` without a
        connection; past it after the write the connection is dropped (a reply still due
        would answer the wrong request)."""
        timeout = self._confirmation.timeout
        conn = yield self._factory.getConnection(peek=True).addTimeout(timeout, reactor)
        if not conn.connected:
            raise txredisapi.ConnectionError("Not connected")
        conn.transport.write(payload)
        # Replies come in order: once the last is here, so are the others (an error reply,
        # or the connection lost, is the exception itself as a reply's value).
        replies = [conn.replyQueue.get() for _ in range(commands)]
        last = yield replies[-1].addTimeout(
            timeout, reactor, onTimeoutCancel=lambda *_: conn.transport.abortConnection())
        values = [reply.result for reply in replies[:-1]] + [last]
        for value in values:
            if isinstance(value, Exception):
                raise value
        return values

    def close(self) -> defer.Deferred:
        return self._factory.disconnect()


class NotReplicated(Exception):
    """A write ran on the master but fewer replicas than ``redis_wait_replicas`` confirmed it
    in time: a fail-over now could lose it."""


class ReplicaConfirmation:
    """``WAIT`` for one node, shared by the writes in flight (group commit): a write whose
    reply came joins the next ``WAIT``, one at a time on the connection, since ``WAIT`` holds
    the connection until the replicas answer and covers every write sent on it before."""

    def __init__(self, node: RedisNode, replicas: int, timeout: float):
        self._node = node
        self.replicas = replicas
        self.timeout = timeout
        self._timeout_ms = max(1, int(timeout * 500))  # half the request deadline
        self._next: list[defer.Deferred] = []
        self._waiting = False

    async def write(self, args: tuple) -> Any:
        reply = await self._node.execute(*args)
        if not self.replicas:
            return reply
        confirmed: defer.Deferred = defer.Deferred()
        self._next.append(confirmed)
        if not self._waiting:
            self._send()
        acked = await confirmed
        if acked < self.replicas:
            raise NotReplicated(f"{args[0]} ran on {self._node} but {acked} of "
                                f"{self.replicas} replicas confirmed it within "
                                f"{self._timeout_ms} ms")
        return reply

    def _send(self) -> None:
        waiters, self._next = self._next, []
        self._waiting = True

        def done(result: Any) -> None:
            self._waiting = False
            if self._next:
                self._send()
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(int(result))

        self._node.execute("WAIT", self.replicas, self._timeout_ms).addBoth(done)


# Per-master scripts over the accounts index of a cluster: one key per slot, named in ARGV
# (declared KEYS must share a slot; these only share the master). ARGV of the search: the
# lower-case pattern, the limit, then the keys.
_COUNT_INDEX = _Script("""#!lua flags=allow-cross-slot-keys,no-writes
local n = 0
for i = 1, #ARGV do n = n + redis.call('ZCARD', ARGV[i]) end
return n
""", writes=False)

_SEARCH_INDEX = _Script("""#!lua flags=allow-cross-slot-keys,no-writes
local pattern, limit, found = ARGV[1], tonumber(ARGV[2]), {}
for i = 3, #ARGV do
  local start, matched = '-', 0
  while matched < limit do
    local names = redis.call('ZRANGEBYLEX', ARGV[i], start, '+', 'LIMIT', 0, 1000)
    for _, name in ipairs(names) do
      if matched < limit and string.find(string.lower(name), pattern, 1, true) then
        found[#found + 1] = name
        matched = matched + 1
      end
    end
    if #names < 1000 then break end
    start = '(' .. names[#names]
  end
  if #found > 4 * limit then
    table.sort(found)
    for j = #found, limit + 1, -1 do found[j] = nil end
  end
end
return found
""", writes=False)


class RingLayout:
    """Independent Redis servers (or one), each user placed on one by consistent hashing;
    a place is a node's index. Also one Sentinel-managed master (``nodes`` of one)."""

    def __init__(self, nodes: list[Any], names: list[str]):
        self.nodes = nodes
        self.names = names
        self._ring = HashRing(names) if len(nodes) > 1 else None

    def start(self, timeout: float) -> defer.Deferred:
        return defer.gatherResults([node.connect() for node in self.nodes], consumeErrors=True)

    def close(self) -> defer.Deferred:
        return defer.gatherResults([node.close() for node in self.nodes], consumeErrors=True)

    def place(self, user: str) -> int:
        return self._ring.index(user) if self._ring else 0

    def target(self, place: int) -> Any:
        return self.nodes[place]

    def node_of_place(self, place: int) -> Optional[RedisNode]:
        return self.nodes[place]

    def accounts_key(self, place: int) -> str:
        return _ACCOUNTS

    def every_node(self) -> list[Any]:
        return self.nodes


class ClusterLayout:
    """Redis Cluster: a place is a slot, sent through :class:`SlotRoute`; the accounts index
    is one sorted set per slot (``accounts:{tag}``), so creating an account stays one script
    on the user's slot."""

    def __init__(self, seeds: list[str], timeout: float, wait_replicas: int):
        self.names = list(seeds)
        self.map = ClusterMap(seeds, lambda url: _started(RedisNode(url, timeout,
                                                                    wait_replicas)),
                              timeout / max(1, len(seeds)))
        self._tags: list[str] = []

    def start(self, timeout: float) -> defer.Deferred:
        self._tags = slot_tags()
        return defer.ensureDeferred(self.map.start())

    def close(self) -> defer.Deferred:
        return self.map.close()

    def place(self, user: str) -> int:
        return key_slot(user_key(user, "acct"))

    def target(self, place: int) -> SlotRoute:
        return self.map.route(place)

    def node_of_place(self, place: int) -> Optional[RedisNode]:
        """The slot's master now, None while none is known."""
        return self.map.owner(place)

    def accounts_key(self, place: int) -> str:
        return f"{_ACCOUNTS}:{{{self._tags[place]}}}"

    def every_node(self) -> list[Any]:
        return self.map.masters()

    def index_keys(self) -> dict[Any, list[str]]:
        """The accounts keys of the slots each master owns now."""
        return {node: [self.accounts_key(slot) for slot in slots]
                for node, slots in self.map.slots_by_master().items()}


def _started(node: RedisNode) -> RedisNode:
    node.connect().addErrback(lambda _: None)  # requests wait for it, or time out
    return node


def _retry_later(failure: Failure) -> bool:
    """Whether a failed idempotent attempt may be sent again once the slot map is reloaded."""
    if failure.check(txredisapi.ConnectionError, defer.TimeoutError):
        return True
    text = failure.getErrorMessage()
    return bool(failure.check(txredisapi.ResponseError)) and (
        text.startswith(_TRANSIENT) or _PARTIAL in text)


def _script_chunks(lines: list[str]) -> Iterator[str]:
    """Graph lines joined into script arguments of at most ``_SCRIPT_LINES`` users and about
    ``_SCRIPT_BYTES``: a user's line of a bulk load holds all their friends (thousands for
    the best connected), and one script call blocks the node while it runs."""
    chunk: list[str] = []
    size = 0
    for line in lines:
        chunk.append(line)
        size += len(line)
        if len(chunk) >= _SCRIPT_LINES or size >= _SCRIPT_BYTES:
            yield "\n".join(chunk)
            chunk, size = [], 0
    if chunk:
        yield "\n".join(chunk)


def _some(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _bound(keep: Optional[int], since: Optional[float]) -> tuple[Any, str]:
    """``keep`` and ``since`` as the append scripts take them ('' for none)."""
    return "" if keep is None else int(keep), "" if since is None else repr(float(since))


def _pairs_to_dict(flat: list) -> dict:
    it = iter(flat)
    return dict(zip(it, it))


@implementer(IRosterStore)
class RedisRosterStore:
    """:class:`IRosterStore` over Redis: independent nodes placed by consistent hashing, one
    Redis Cluster (``cluster=True``: ``urls`` are seeds) or one ready-made ``node``
    (:func:`presenced.store.redissentinel.sentinel_store`)."""

    name = "redis"

    def __init__(self, urls: list[str], timeout: float = 5.0, retries: int = 3,
                 cluster: bool = False, wait_replicas: int = 0,
                 node: Optional[RedisNode] = None):
        if not urls:
            raise StoreError("the Redis store needs at least one URL")
        self.urls = list(urls)
        self.timeout = timeout
        self.retries = retries
        self.layout: Any
        if cluster:
            self.layout = ClusterLayout(self.urls, timeout, wait_replicas)
        elif node is not None:  # made by its own module (a Sentinel-managed master)
            self.layout = RingLayout([node], [str(node)])
        else:
            self.layout = RingLayout([RedisNode(url, timeout, wait_replicas)
                                      for url in self.urls], self.urls)
        self._confirms = wait_replicas > 0 or (node is not None and node.confirms)
        self._open = False
        self._stores = CapabilityRegistry(self)
        self.archive_ids = ArchiveIds()
        self._dumped: Optional[list[str]] = None

    # --- plumbing ---------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        d = self.layout.start(self.timeout)

        def unreachable(failure: Failure, timeout: float) -> Failure:
            return Failure(StoreError(
                f"cannot connect to Redis ({', '.join(self.urls)}) within {timeout:g}s"))

        d.addTimeout(self.timeout, reactor, onTimeoutCancel=unreachable)

        def failed(failure: Failure) -> Failure:
            self.layout.close()
            if failure.check(defer.FirstError):
                failure = failure.value.subFailure
            if failure.check(StoreError):
                return failure
            return Failure(StoreError(f"cannot connect to Redis: {failure.getErrorMessage()}"))

        def opened(_: Any) -> None:
            self._open = True

        return d.addCallbacks(opened, failed)

    def stop(self) -> defer.Deferred:
        """Close the connections; Redis itself makes the writes durable (AOF, replicas)."""
        self._open = False
        return self.layout.close().addCallback(lambda _: None)

    @property
    def nodes(self) -> list[Any]:
        """The Redis servers that hold data now (a cluster's masters)."""
        return self.layout.every_node()

    def node_of(self, user: str) -> Any:
        """Where ``user``'s data is: a node, or a cluster slot's route."""
        return self.layout.target(self.layout.place(user))

    def _call(self, node: Any, *args: Any, retriable: bool = True,
              write: bool = False) -> defer.Deferred:
        """Run one command on ``node``; fires its reply or fails with :class:`StoreError`
        once ``timeout`` seconds have passed, retrying as the module docstring says."""
        if not self._open:
            return defer.fail(StoreError("the store is not started"))
        d = defer.ensureDeferred(self._attempts(node, args, retriable, write))

        def too_late(failure: Failure, timeout: float) -> Failure:
            return Failure(StoreError(f"Redis {node} did not answer {args[0]} "
                                      f"within {timeout:g}s"))

        return d.addTimeout(self.timeout, reactor, onTimeoutCancel=too_late)

    async def _attempts(self, node: Any, args: tuple, retriable: bool, write: bool) -> Any:
        lost = 0
        while True:
            try:
                if write:
                    return await node.execute_confirmed(*args)
                return await node.execute(*args)
            except NotReplicated as e:
                raise StoreError(f"Redis {e}") from None
            except txredisapi.ResponseError as e:
                text = str(e)
                if not (text.startswith(_TRANSIENT) or (retriable and _PARTIAL in text)):
                    raise StoreError(f"Redis {node}: {text}") from None
                await task.deferLater(reactor, 0.1)
            except txredisapi.ConnectionError as e:
                never_sent = str(e) == "Not connected"
                if not never_sent and (not retriable or lost >= self.retries):
                    raise StoreError(f"Redis {node}: {e} during {args[0]}"
                                     + ("" if retriable else " (not retried: it may or may "
                                        "not have been applied)")) from None
                if never_sent:  # the connection died just now: wait for the next one
                    await task.deferLater(reactor, 0.05)
                lost += not never_sent

    def _eval(self, node: Any, script: _Script, keys: list[str], argv: list[Any],
              retriable: bool = True) -> defer.Deferred:
        """Run a Lua script: EVALSHA, or EVAL once if the node has not cached it yet (it
        forgets its scripts when it restarts)."""
        d = self._call(node, "EVALSHA", script.sha, len(keys), *keys, *argv,
                       retriable=retriable, write=script.writes)

        def unknown_script(failure: Failure) -> Any:
            failure.trap(StoreError)
            if "NOSCRIPT" not in str(failure.value):
                return failure
            return self._call(node, "EVAL", script.source, len(keys), *keys, *argv,
                              retriable=retriable, write=script.writes)

        return d.addErrback(unknown_script)

    def _user_call(self, user: str, *args: Any, write: bool = False) -> defer.Deferred:
        return self._call(self.node_of(user), *args, write=write)

    def _user_eval(self, user: str, script: _Script, kinds: Iterable[str], argv: list[Any],
                   retriable: bool = True) -> defer.Deferred:
        return self._eval(self.node_of(user), script, [user_key(user, k) for k in kinds], argv,
                          retriable)

    async def _on_every_node(self, what: str, requests: dict[Any, defer.Deferred]) -> list:
        """Wait for one request per node; when some fail, say which nodes were written."""
        results = await defer.DeferredList(list(requests.values()), consumeErrors=True)
        failed = [(node, r) for node, (ok, r) in zip(requests, results) if not ok]
        if not failed:
            return [r for _, r in results]
        done = [str(node) for node, (ok, _) in zip(requests, results) if ok]
        reasons = "; ".join(f"{node}: {f.getErrorMessage()}" for node, f in failed[:5])
        written = f"written on {_some(done)}" if done else "nothing written"
        raise StoreError(f"{what} failed on {len(failed)} of {len(requests)} Redis node(s) "
                         f"({reasons}{'; ...' if len(failed) > 5 else ''}); "
                         f"{written}. The writes are idempotent: repeat the request to repair "
                         f"what may be half-written")

    def _graph(self, what: str, lines: Iterable[tuple[str, str, list[str]]]) -> defer.Deferred:
        """Send graph ops (see ``_GRAPH``) to the nodes of their users, one script per node
        (under Redis Cluster, per master: :meth:`_graph_on_masters`)."""
        by_place: dict[int, list[str]] = defaultdict(list)
        tabs: dict[int, int] = defaultdict(int)
        place_of = self.layout.place
        for op, user, contacts in lines:
            place = place_of(user)
            by_place[place].append(f"{op}\t{user}\t" + "\t".join(contacts))
            tabs[place] += 1 + len(contacts)
        for place, place_lines in by_place.items():  # all checked before anything is sent
            payload = "\n".join(place_lines)
            if (payload.count("\t") != tabs[place] or payload.count("\n") != len(place_lines) - 1
                    or "\t\t" in payload or "\t\n" in payload or payload.endswith("\t")):
                return defer.fail(StoreError(f"{what}: empty user names or names with tabs "
                                             f"or newlines cannot be stored"))
        return self.send_graph_lines(what, by_place)

    def send_graph_lines(self, what: str, by_place: dict[int, list[str]]) -> defer.Deferred:
        """Send graph lines already checked and grouped by :meth:`place` of their users."""
        if isinstance(self.layout, ClusterLayout):
            return defer.ensureDeferred(self._graph_on_masters(what, by_place))
        requests = {self.layout.target(place): defer.ensureDeferred(
                        self._graph_chunks(self.layout.target(place), place_lines))
                    for place, place_lines in by_place.items()}
        return defer.ensureDeferred(self._on_every_node(what, requests))

    @property
    def takes_encoded(self) -> bool:
        """Whether bulk writes may go as commands encoded by the caller
        (:meth:`write_encoded`): when no write waits for replicas' confirmation."""
        return not self._confirms

    @staticmethod
    def encode_friend_sets(friends: list[tuple[str, str]]) -> bytes:
        """``SADD`` commands in RESP for ``[(user, "friend<TAB>friend..."), ...]``, one per
        user with all its friends: what :meth:`write_encoded` sends. No side effects, so any
        thread may call it."""
        commands = []
        for user, names in friends:
            key = user_key(user, "friends").encode("utf-8", "surrogateescape")
            members = names.encode("utf-8", "surrogateescape").split(b"\t")
            commands.append(b"*%d\r\n$4\r\nSADD\r\n$%d\r\n%s\r\n"
                            % (len(members) + 2, len(key), key))
            commands.append(b"".join([b"$%d\r\n%s\r\n" % (len(m), m) for m in members]))
        return b"".join(commands)

    def nodes_of_places(self, places: Iterable[int]) -> dict[Optional[RedisNode], list[int]]:
        """``places`` grouped by the node that holds them now (under Redis Cluster a slot's
        master, None for slots without one): one :meth:`write_encoded` per node."""
        nodes: defaultdict[Optional[RedisNode], list[int]] = defaultdict(list)
        for place in places:
            nodes[self.layout.node_of_place(place)].append(place)
        return nodes

    def write_encoded(self, node: Optional[RedisNode], payload: bytes,
                      commands: int) -> defer.Deferred:
        """Send commands made by :meth:`encode_friend_sets` to ``node``. Fails on the first
        error reply, a slot moved away (MOVED, ASK) included: the caller sends the same
        writes again through :meth:`send_graph_lines`, which follows the slot map."""
        if node is None:
            return defer.fail(txredisapi.ConnectionError("no master known"))
        return node.execute_encoded(payload, commands)

    def place(self, user: str) -> int:
        """Where ``user``'s keys live (a node's index, or a cluster slot); a pure function
        of the name and the configured nodes, so any thread may call it."""
        return self.layout.place(user)

    async def _graph_chunks(self, node: Any, lines: list[str]) -> None:
        """One chunk after the other (short scripts, so other clients of the node wait a few
        ms at most): each gets the whole timeout, however big the request."""
        for payload in _script_chunks(lines):
            await self._eval(node, _GRAPH, [], [BOTH, payload])

    async def _graph_on_masters(self, what: str, by_slot: dict[int, list[str]]) -> None:
        """Graph lines grouped by the master that owns their slots, one script per master
        (a bulk load touches thousands of slots). When a master fails over or a slot moves
        (the script meets a key that is not local), the lines of that master are grouped
        again on the new map and sent again, until the request's deadline: they are
        idempotent, so a script stopped part way is simply run once more."""
        layout: ClusterLayout = self.layout
        deadline = reactor.seconds() + self.timeout
        pending = list(by_slot.items())
        while True:
            groups: dict[Any, list[tuple[int, list[str]]]] = defaultdict(list)
            for slot, slot_lines in pending:
                groups[layout.map.owner(slot)].append((slot, slot_lines))
            attempts = {node: defer.ensureDeferred(self._graph_attempt(
                            node, [line for _, ls in group for line in ls], deadline))
                        for node, group in groups.items()}
            results = await defer.DeferredList(list(attempts.values()), consumeErrors=True)
            pending, failed = [], []
            for (node, group), (ok, result) in zip(groups.items(), results):
                if ok:
                    continue
                if reactor.seconds() < deadline and _retry_later(result):
                    pending.extend(group)
                else:
                    failed.append(f"{node or 'no master'}: {result.getErrorMessage()}")
            if failed:
                raise StoreError(f"{what} failed on {len(failed)} of {len(groups)} Redis "
                                 f"Cluster master(s) ({'; '.join(failed)}). The writes are "
                                 f"idempotent: repeat the request to repair what may be "
                                 f"half-written")
            if not pending:
                return
            layout.map.refresh()
            await task.deferLater(reactor, 0.1)

    async def _graph_attempt(self, node: Any, lines: list[str], deadline: float) -> None:
        """One try of a master's graph lines, chunk after chunk, each on the connection as it
        is (no waiting for a dead master: the caller regroups)."""
        if node is None or not node.connected():
            raise txredisapi.ConnectionError("Not connected")
        script = _GRAPH_ON_MASTER
        for payload in _script_chunks(lines):
            argv = (BOTH, payload)
            for command, first in (("EVALSHA", script.sha), ("EVAL", script.source)):
                d = node.execute_confirmed(command, first, 0, *argv)
                d.addTimeout(max(0.01, deadline - reactor.seconds()), reactor)
                try:
                    await d
                    break
                except txredisapi.ResponseError as e:
                    if command == "EVAL" or not str(e).startswith("NOSCRIPT"):
                        raise

    def size_bytes(self) -> defer.Deferred:
        """Memory Redis uses for the data, summed over nodes (INFO memory: used_memory)."""
        async def total() -> int:
            infos = await self._on_every_node(
                "INFO", {node: self._call(node, "INFO", "memory") for node in self.nodes})
            return sum(int(line.split(":", 1)[1]) for info in infos
                       for line in info.splitlines() if line.startswith("used_memory:"))
        return defer.ensureDeferred(total())

    # --- dump (copy-store) -------------------------------------------------------------

    def dump_users(self, after: str, limit: int) -> defer.Deferred:
        """Users are found by SCAN of every node (``u:{user}:*`` keys) on the first call and
        kept, sorted, for the calls after it: a copy reads a store nobody writes."""
        return defer.ensureDeferred(self._dump_users(after, limit))

    async def _dump_users(self, after: str, limit: int) -> list[str]:
        if self._dumped is None:
            found: set[str] = set()
            for node in self.nodes:
                cursor = "0"
                while True:
                    cursor, keys = await self._call(node, "SCAN", cursor, "MATCH", "u:{*",
                                                    "COUNT", 1000)
                    found.update(key[3:key.rindex("}:")] for key in keys)
                    if cursor in ("0", 0):
                        break
            self._dumped = sorted(found)
        start = bisect.bisect_right(self._dumped, after)
        return self._dumped[start:start + limit]

    def user_store_names(self, user: str) -> defer.Deferred:
        d = self._user_eval(user, _STORE_TYPES, ("stores",),
                            [user_key(user, ""), *_UNLISTED_STORES])
        return d.addCallback(lambda flat: {name: _KINDS[kind] for name, kind
                                           in _pairs_to_dict(flat).items() if kind in _KINDS})

    # --- accounts ---------------------------------------------------------------------

    def create_user(self, user: str, credentials: Credentials) -> defer.Deferred:
        place = self.layout.place(user)
        d = self._eval(self.layout.target(place), _CREATE_USER,
                       [user_key(user, "acct"), self.layout.accounts_key(place)],
                       [credentials_to_json(credentials), user])
        return d.addCallback(bool)

    def set_credentials(self, user: str, credentials: Credentials) -> defer.Deferred:
        d = self._user_call(user, "SET", user_key(user, "acct"),
                            credentials_to_json(credentials), "XX", write=True)
        return d.addCallback(lambda reply: reply is not None)

    def get_credentials(self, user: str) -> defer.Deferred:
        d = self._user_call(user, "GET", user_key(user, "acct"))
        return d.addCallback(lambda text: None if text is None else credentials_from_json(text))

    def user_exists(self, user: str) -> defer.Deferred:
        return self._user_call(user, "EXISTS", user_key(user, "acct")).addCallback(bool)

    def remove_user(self, user: str) -> defer.Deferred:
        return defer.ensureDeferred(self._remove_user(user))

    async def _remove_user(self, user: str) -> bool:
        roster, related = await defer.gatherResults([
            self._user_call(user, "HKEYS", user_key(user, "roster")),
            self._user_call(user, "SUNION", *(user_key(user, k) for k in ("friends", "subs",
                                                                         "subd"))),
        ], consumeErrors=True).addErrback(lambda f: f.value.subFailure)
        related = set(related).union(roster)
        related.discard(user)
        if related:
            await self._graph(f"remove_user {user}", (("f", other, [user]) for other in related))
        place = self.layout.place(user)
        keys = [user_key(user, kind) for kind in _USER_KEYS]
        existed = await self._eval(self.layout.target(place), _DELETE_USER_KEYS,
                                   keys + [self.layout.accounts_key(place)],
                                   [user, user_key(user, ""), *_UNLISTED_STORES])
        return bool(existed)

    def search_users(self, pattern: str, limit: int = 50) -> defer.Deferred:
        return defer.ensureDeferred(self._search_users(pattern.lower(), limit))

    async def _search_users(self, pattern: str, limit: int) -> list[str]:
        if isinstance(self.layout, ClusterLayout):
            found = await self._per_master("search_users", _SEARCH_INDEX, [pattern, limit])
        else:
            found = await self._on_every_node("search_users", {
                node: defer.ensureDeferred(self._search_node(node, pattern, limit))
                for node in self.nodes})
        return sorted(name for names in found for name in names)[:limit]

    async def _search_node(self, node: RedisNode, pattern: str, limit: int) -> list[str]:
        """Walk the node's names in order, a chunk at a time, until ``limit`` match: the
        first ``limit`` of every node hold the first ``limit`` overall."""
        matches: list[str] = []
        start = "-"
        while len(matches) < limit:
            names = await self._call(node, "ZRANGEBYLEX", _ACCOUNTS, start, "+",
                                     "LIMIT", 0, _SEARCH_CHUNK)
            matches.extend(name for name in names if pattern in name.lower())
            if len(names) < _SEARCH_CHUNK:
                break
            start = "(" + names[-1]
        return matches[:limit]

    async def _per_master(self, what: str, script: _Script, argv: list[Any]) -> list:
        """Run an index script on every master over the accounts keys of its slots; while
        slots move (a key is no longer local) the map is reloaded and the round repeated."""
        deadline = reactor.seconds() + self.timeout
        while True:
            try:
                return await self._on_every_node(what, {
                    node: self._eval(node, script, [], [*argv, *keys], retriable=False)
                    for node, keys in self.layout.index_keys().items()})
            except StoreError as e:
                if _PARTIAL not in str(e) or reactor.seconds() > deadline:
                    raise
                self.layout.map.refresh()
                await task.deferLater(reactor, 0.1)

    def count_users(self) -> defer.Deferred:
        if isinstance(self.layout, ClusterLayout):
            d = defer.ensureDeferred(self._per_master("count_users", _COUNT_INDEX, []))
        else:
            d = defer.ensureDeferred(self._on_every_node(
                "count_users", {node: self._call(node, "ZCARD", _ACCOUNTS)
                                for node in self.nodes}))
        return d.addCallback(sum)

    # --- rosters ----------------------------------------------------------------------

    def get_roster(self, user: str) -> defer.Deferred:
        d = self._user_eval(user, _GET_ROSTER, ("roster", "friends"), [])

        def items(reply: list) -> list[RosterItem]:
            texts = _pairs_to_dict(reply[0])
            texts.update((friend, BOTH) for friend in reply[1])
            return [roster_item_from_text(jid, text) for jid, text in sorted(texts.items())]

        return d.addCallback(items)

    def get_roster_item(self, user: str, contact: str) -> defer.Deferred:
        d = self._user_eval(user, _GET_ROSTER_ITEM, ("roster", "friends"), [contact, BOTH])
        return d.addCallback(
            lambda text: None if text is None else roster_item_from_text(contact, text))

    def set_roster_item(self, user: str, item: RosterItem) -> defer.Deferred:
        return self._user_eval(user, _SET_ROSTER_ITEM, _ROSTER_KEYS,
                               [item.jid, roster_item_to_text(item)])

    def remove_roster_item(self, user: str, contact: str) -> defer.Deferred:
        return self._user_eval(user, _REMOVE_ROSTER_ITEM, _ROSTER_KEYS, [contact])

    def get_roster_version(self, user: str) -> defer.Deferred:
        return self._user_eval(user, _GET_ROSTER_VERSION, ("ver", "friends"), [])

    def add_friends(self, pairs: Iterable[Pair]) -> defer.Deferred:
        return self._friends("F", "add_friends", pairs)

    def remove_friends(self, pairs: Iterable[Pair]) -> defer.Deferred:
        return self._friends("f", "remove_friends", pairs)

    def begin_friends_load(self) -> RedisFriendsLoad:
        return RedisFriendsLoad(self)

    def _friends(self, op: str, what: str, pairs: Iterable[Pair]) -> defer.Deferred:
        contacts: defaultdict[str, list[str]] = defaultdict(list)
        count = 0
        for a, b in pairs:
            contacts[a].append(b)
            contacts[b].append(a)
            count += 1
        d = self._graph(what, ((op, user, cs) for user, cs in contacts.items()))
        return d.addCallback(lambda _: count)

    # --- subscription graph -----------------------------------------------------------

    def add_subscriptions(self, pairs: Iterable[Pair]) -> defer.Deferred:
        return self._subscriptions("S", "D", "add_subscriptions", pairs)

    def remove_subscriptions(self, pairs: Iterable[Pair]) -> defer.Deferred:
        return self._subscriptions("s", "d", "remove_subscriptions", pairs)

    def _subscriptions(self, subject_op: str, subscriber_op: str, what: str,
                       pairs: Iterable[Pair]) -> defer.Deferred:
        subscribers: defaultdict[str, list[str]] = defaultdict(list)
        subjects: defaultdict[str, list[str]] = defaultdict(list)
        count = 0
        for subscriber, subject in pairs:
            subscribers[subject].append(subscriber)
            subjects[subscriber].append(subject)
            count += 1
        lines = [(subject_op, user, cs) for user, cs in subscribers.items()]
        lines += [(subscriber_op, user, cs) for user, cs in subjects.items()]
        return self._graph(what, lines).addCallback(lambda _: count)

    def get_subscribers(self, subject: str) -> defer.Deferred:
        return self._union(subject, "friends", "subs")

    def get_subscriptions(self, subscriber: str) -> defer.Deferred:
        return self._union(subscriber, "friends", "subd")

    def _union(self, user: str, first: str, second: str) -> defer.Deferred:
        """Two of a user's sets together. Under Redis Cluster as two reads: a multi-key
        command on a slot being migrated waits (TRYAGAIN) until the slot has moved, while
        each single-key read is answered at once, by the source or through ASK."""
        if not isinstance(self.layout, ClusterLayout):
            return self._user_call(user, "SUNION", user_key(user, first), user_key(user, second))
        d = defer.gatherResults([self._user_call(user, "SMEMBERS", user_key(user, first)),
                                 self._user_call(user, "SMEMBERS", user_key(user, second))],
                                consumeErrors=True)
        d.addErrback(lambda f: f.value.subFailure)
        return d.addCallback(lambda sets: list(set(sets[0]).union(sets[1])))

    # --- capability stores ------------------------------------------------------------

    def open_map(self, name: str) -> "RedisMap":
        return self._stores.open(name, RedisMap)

    def open_list(self, name: str) -> "RedisList":
        return self._stores.open(name, RedisList)

    def open_archive(self, name: str) -> "RedisArchive":
        return self._stores.open(name, RedisArchive)


# Writes of capability stores also add the store's name to the user's ``stores`` set, so
# remove_user finds every store whatever process wrote it. KEYS[1]: the data, KEYS[2]: stores.
_MAP_SET = _Script("""
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
""")

# Compare and set one field: ARGV[1] the field, ARGV[2] the SHA-1 of the value expected
# ("" for an absent field), ARGV[3] "1" to set ARGV[4] (else delete), ARGV[5] the store name.
_MAP_COMPARE_AND_SET = _Script("""
local now = redis.call('HGET', KEYS[1], ARGV[1])
if (now and redis.sha1hex(now) or '') ~= ARGV[2] then return 0 end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
  redis.call('SADD', KEYS[2], ARGV[5])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
""")

_LIST_PUSH = _Script("""
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
""")

_LIST_POP_ALL = _Script("""
local values = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return values
""")

# The append of entries, Lua functions of both append scripts: ``member`` is the entry's JSON
# (``[when, value, peer]``), stored as ``id:member`` so equal values stay distinct entries;
# ``bound`` drops entries beyond ``keep`` ('' for all) and older than ``since`` ('' for
# none): ids grow with time, so the expired entries are the lowest ranks, walked 100 at a
# time once the lowest one is expired (one ZRANGE of one member when none is).
_APPEND_ONE = """
local function add(key, id, member)
  redis.call('ZADD', key, id, id .. ':' .. member)
end
local function at(member)
  return tonumber(string.match(member, ':%[([^,]+),'))
end
local function bound(key, keep, since)
  keep, since = tonumber(keep), tonumber(since)
  if keep then redis.call('ZREMRANGEBYRANK', key, 0, -keep - 1) end
  if not since then return end
  local lowest = redis.call('ZRANGE', key, 0, 0)[1]
  if not lowest or at(lowest) >= since then return end
  local expired = 0
  while true do
    local batch, old = redis.call('ZRANGE', key, expired, expired + 99), 0
    for _, m in ipairs(batch) do
      if at(m) >= since then break end
      old = old + 1
    end
    expired = expired + old
    if old < 100 then break end
  end
  redis.call('ZREMRANGEBYRANK', key, 0, expired - 1)
end
"""

# ARGV: member, name, keep, since, id.
_ARCHIVE_APPEND = _Script(_APPEND_ONE + """
add(KEYS[1], ARGV[5], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
bound(KEYS[1], ARGV[3], ARGV[4])
return ARGV[5]
""")

# Entries of users of one node (under Redis Cluster: of one slot): KEYS[2i - 1] and KEYS[2i]
# are the archive and the stores set of entry i, ARGV[1] the store's name, then id, member,
# keep and since of each entry. Each archive is bounded (and named in its user's stores)
# once, by its last entry's bounds.
_ARCHIVE_APPEND_MANY = _Script(_APPEND_ONE + """
local last = {}
for i = 1, #KEYS / 2 do
  add(KEYS[2 * i - 1], ARGV[4 * i - 2], ARGV[4 * i - 1])
  last[KEYS[2 * i - 1]] = i
end
for key, i in pairs(last) do
  redis.call('SADD', KEYS[2 * i], ARGV[1])
  bound(key, ARGV[4 * i], ARGV[4 * i + 1])
end
return #KEYS / 2
""")
_APPEND_BATCH = 256  # entries in one script call (a burst holds the node briefly)

# ARGV: low and high score bounds, newest first (1/0), limit (-1: none), start, end ('' for
# none), peer ('' for any). Walks the id range in the direction of paging, filtering on time
# and peer, until limit + 1 entries matched (the one more says the page is not complete).
_ARCHIVE_QUERY = _Script("""
local key, lo, hi, newest, limit = KEYS[1], ARGV[1], ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
local first, last, peer = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local out, offset = {}, 0
while true do
  local batch
  if newest then batch = redis.call('ZREVRANGEBYSCORE', key, hi, lo, 'LIMIT', offset, 200)
  else batch = redis.call('ZRANGEBYSCORE', key, lo, hi, 'LIMIT', offset, 200) end
  for _, member in ipairs(batch) do
    local e = cjson.decode(string.sub(member, string.find(member, ':', 1, true) + 1))
    if (not first or e[1] >= first) and (not last or e[1] <= last)
        and (peer == '' or e[3] == peer) then
      out[#out + 1] = member
      if limit >= 0 and #out > limit then return out end
    end
  end
  if #batch < 200 then return out end
  offset = offset + 200
end
""", writes=False)

# KEYS[1]: the user's ``stores`` set; ARGV[1]: the key prefix, ARGV[2...]: the unlisted stores.
# Fires name, TYPE, name, TYPE... for each store name (what copy-store reads per user).
_STORE_TYPES = _Script("""
local names, out = redis.call('SMEMBERS', KEYS[1]), {}
for i = 2, #ARGV do names[#names + 1] = ARGV[i] end
for _, name in ipairs(names) do
  out[#out + 1] = name
  out[#out + 1] = redis.call('TYPE', ARGV[1] .. name)['ok']
end
return out
""", writes=False)

_ARCHIVE_DELETE_ALL = _Script("""
local n = redis.call('ZCARD', KEYS[1])
redis.call('DEL', KEYS[1])
return n
""")


class _Capability:
    """A capability store of the Redis backend: the key ``u:{user}:<name>`` of each user."""

    def __init__(self, backend: RedisRosterStore, name: str):
        self._backend = backend
        self.name = name

    def _call(self, user: str, *args: Any, write: bool = False) -> defer.Deferred:
        return self._backend._call(self._backend.node_of(user), *args, write=write)

    def _eval(self, user: str, script: _Script, kinds: Iterable[str], argv: list[Any],
              retriable: bool = True) -> defer.Deferred:
        return self._backend._user_eval(user, script, kinds, argv, retriable)


@implementer(IMapStore)
class RedisMap(_Capability):
    def get(self, user: str, key: str) -> defer.Deferred:
        return self._call(user, "HGET", user_key(user, self.name), key)

    def set(self, user: str, key: str, value: str) -> defer.Deferred:
        d = self._eval(user, _MAP_SET, (self.name, "stores"), [key, value, self.name])
        return d.addCallback(lambda _: None)

    def delete(self, user: str, key: str) -> defer.Deferred:
        return self._call(user, "HDEL", user_key(user, self.name), key,
                          write=True).addCallback(bool)

    def items(self, user: str) -> defer.Deferred:
        return self._call(user, "HGETALL", user_key(user, self.name)).addCallback(
            _pairs_to_dict)

    def compare_and_set(self, user: str, key: str, expected: Optional[str],
                        value: Optional[str]) -> defer.Deferred:
        """The expected value travels as its SHA-1 (a node record may be large)."""
        digest = "" if expected is None else hashlib.sha1(expected.encode("utf-8")).hexdigest()
        d = self._eval(user, _MAP_COMPARE_AND_SET, (self.name, "stores"),
                       [key, digest, "0" if value is None else "1", value or "", self.name],
                       retriable=False)
        return d.addCallback(bool)


@implementer(IListStore)
class RedisList(_Capability):
    """Pushes and pops are not idempotent: they are never retried (see Outages)."""

    def push(self, user: str, value: str, limit: int) -> defer.Deferred:
        d = self._eval(user, _LIST_PUSH, (self.name, "stores"), [value, limit, self.name],
                       retriable=False)
        return d.addCallback(bool)

    def pop_all(self, user: str) -> defer.Deferred:
        return self._eval(user, _LIST_POP_ALL, (self.name,), [], retriable=False)

    def peek(self, user: str) -> defer.Deferred:
        return self._call(user, "LRANGE", user_key(user, self.name), 0, -1)


@implementer(IArchiveStore)
class RedisArchive(_Capability):
    """A sorted set scored by id, members ``id:[when, value, peer]``; ids are the node's
    (:class:`presenced.store.ArchiveIds`). Appends are not retried (a lost reply may hide
    one)."""

    def __init__(self, backend: RedisRosterStore, name: str):
        super().__init__(backend, name)
        self._turn: dict[int, list[tuple]] = defaultdict(list)  # place -> (user, id, ...)
        self._batch: Optional[defer.Deferred] = None  # append_entries()'s, one per turn

    def new_id(self, when: float) -> str:
        return self._backend.archive_ids.new_id(when)

    def append(self, user: str, value: str, when: float, with_: Optional[str] = None,
               keep: Optional[int] = None, since: Optional[float] = None,
               id: Optional[str] = None) -> defer.Deferred:
        if id is None:
            id = self.new_id(when)
        keep_arg, since_arg = _bound(keep, since)
        d = self._eval(user, _ARCHIVE_APPEND, (self.name, "stores"),
                       [json.dumps([when, value, with_]), self.name, keep_arg, since_arg,
                        str(int(id))], retriable=False)
        return d.addCallback(lambda _: id)

    def append_entries(self, entries: Sequence[ArchiveRow], keep: Optional[int] = None,
                       since: Optional[float] = None) -> defer.Deferred:
        """The turn's entries go in one script call per node (per slot under Redis
        Cluster), of at most :data:`_APPEND_BATCH` entries: not retried, as appends."""
        if self._batch is None:
            self._batch = defer.Deferred()
            reactor.callLater(0, self._flush)
        keep_arg, since_arg = _bound(keep, since)
        place_of = self._backend.layout.place
        encoded: tuple[Optional[str], str] = (None, "")  # the entries of a message share it
        for user, id_, value, when, with_ in entries:
            if encoded[0] is not value:
                encoded = (value, json.dumps(value))
            member = f"[{when!r},{encoded[1]},{json.dumps(with_)}]"
            self._turn[place_of(user)].append((user, id_, member, keep_arg, since_arg))
        return self._batch

    def _flush(self) -> None:
        turn, batch = self._turn, self._batch
        self._turn, self._batch = defaultdict(list), None
        writes = []
        for place, rows in turn.items():
            node = self._backend.layout.target(place)
            for i in range(0, len(rows), _APPEND_BATCH):
                keys: list[str] = []
                argv: list[Any] = [self.name]
                for user, id_, member, keep, since in rows[i:i + _APPEND_BATCH]:
                    keys += (user_key(user, self.name), user_key(user, "stores"))
                    argv += (id_, member, keep, since)
                writes.append(self._backend._eval(node, _ARCHIVE_APPEND_MANY, keys, argv,
                                                  retriable=False))
        defer.gatherResults(writes, consumeErrors=True).addCallbacks(
            lambda _: batch.callback(None),
            lambda failure: batch.errback(failure.value.subFailure))

    def query(self, user: str, after_id: Optional[str] = None, before_id: Optional[str] = None,
              start: Optional[float] = None, end: Optional[float] = None,
              with_: Optional[str] = None, limit: Optional[int] = None,
              last: bool = False) -> defer.Deferred:
        try:
            low = "-inf" if after_id is None else f"({int(after_id)}"
            high = "+inf" if before_id is None else f"({int(before_id)}"
        except ValueError:
            return defer.fail(ValueError(f"not an archive id: {after_id or before_id!r}"))
        newest = last or before_id is not None
        d = self._eval(user, _ARCHIVE_QUERY, (self.name,), [
            low, high, int(newest), -1 if limit is None else limit,
            "" if start is None else repr(float(start)), "" if end is None else repr(float(end)),
            with_ or ""])

        def page(members: list[str]) -> ArchivePage:
            complete = limit is None or len(members) <= limit
            members = members[:limit] if limit is not None else members
            if newest:
                members.reverse()
            entries = []
            for member in members:
                id_, _, text = member.partition(":")
                when, value, peer = json.loads(text)
                entries.append(ArchiveEntry(id_, when, value, peer))
            return ArchivePage(tuple(entries), complete)

        return d.addCallback(page)

    def delete_all(self, user: str) -> defer.Deferred:
        return self._eval(user, _ARCHIVE_DELETE_ALL, (self.name,), []).addCallback(int)

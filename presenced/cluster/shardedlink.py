"""The cluster channel on Redis Cluster: :class:`ShardedLink` has the interface of
:class:`~presenced.cluster.link.RedisLink`, so the directory and the transport do not know
which one they have.

- Commands (``link.commands``, ``link.ordered``: txredisapi's command methods) go to the master
  of their key's slot (:class:`~presenced.store.rediscluster.ClusterMap`); a multi-key ``DEL``
  is sent one key at a time, since the directory's keys lie in different slots.
- Messages use sharded pub/sub (Redis >= 7): ``SPUBLISH`` goes to the master of the channel's
  slot and reaches only the subscribers of that master, where ``PUBLISH`` on a cluster is
  copied to every node. Each master has one subscriber connection holding the channels of its
  slots; when a slot moves or a master fails, Redis ends those subscriptions (``sunsubscribe``,
  or the connection drops), the map is reloaded and each channel subscribed where it is now.
- The fixed channels travel as ``{presenced}<name>``: one slot, so their messages reach a node
  in publish order, as the directory needs. The family (subject) channels keep their names
  and spread over the slots; an event on one and a graph change on a fixed channel may reach
  a node in either order.
- Order: the directory needs Redis to hold an entry before the others hear of it. On a cluster
  the entry and the channel may be on different masters, so an ``ordered`` publish waits until
  every ``ordered`` command sent before it has been answered (writes are not held back).
- Late answers: ``ordered`` and the publishes have connections of their own that wait for
  Redis's answer however late it is (as :class:`~presenced.cluster.link.RedisLink`'s do): with
  a reply timeout, one late answer (this reactor or Redis behind, under load) made txredisapi
  abort the connection and every command queued on it, publishes lost. Reads keep
  ``COMMAND_TIMEOUT``; a master that is gone is found by its connection dropping.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import txredisapi
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger

from presenced.cluster.link import (RECONNECT_MAX_DELAY, FamilyHandler, MessageHandler, _text,
                                    dispatch)
from presenced.store.rediscluster import ClusterMap, key_slot
from presenced.store.redis import RedisNode

# The fixed channels (directory, node, graph) share one hash tag, so one master carries them
# and each node hears them on one connection, in the order they were published, as over one
# Redis (a directory "+" before the events it makes routable); the subject channels spread.
_FIXED_TAG = "{presenced}"
COMMAND_TIMEOUT = 5.0  # seconds a command retries while a slot has no reachable master
_RETRY = ("CLUSTERDOWN", "TRYAGAIN")


class RoutedCommands:
    """txredisapi's command methods over a cluster; with ``ordered``, publishes wait for the
    ordered commands sent before them."""

    def __init__(self, cluster: ClusterMap, ordered: bool):
        self._cluster = cluster
        self._ordered = ordered
        self._in_flight: set[defer.Deferred] = set()

    def __getattr__(self, name: str) -> Callable[..., defer.Deferred]:
        return partial(getattr(txredisapi.BaseRedisProtocol, name), self)

    def execute_command(self, *args: Any, **_: Any) -> defer.Deferred:
        return self._track(defer.ensureDeferred(self._execute(key_slot(str(args[1])), args)))

    async def _execute(self, slot: int, args: tuple) -> Any:
        deadline = reactor.seconds() + COMMAND_TIMEOUT
        while True:
            try:
                return await self._cluster.execute(slot, args)
            except (txredisapi.ConnectionError, txredisapi.ResponseError) as e:
                retry = (str(e) == "Not connected" or str(e).startswith(_RETRY))
                if not retry or reactor.seconds() > deadline:
                    raise
                await task.deferLater(reactor, 0.1)

    def delete(self, keys: Any, *args: Any) -> defer.Deferred:
        keys = [keys] if isinstance(keys, str) else list(keys)
        d = defer.gatherResults([self.execute_command("DEL", key) for key in [*keys, *args]],
                                consumeErrors=True)
        return d.addCallback(sum)

    def publish(self, channel: str, message: str) -> defer.Deferred:
        slot = key_slot(channel)
        if not (self._ordered and self._in_flight):
            return self._track(defer.ensureDeferred(
                self._execute(slot, ("SPUBLISH", channel, message))))
        before = defer.DeferredList(list(self._in_flight))
        published: defer.Deferred = defer.Deferred()
        before.addCallback(lambda _: defer.ensureDeferred(
            self._execute(slot, ("SPUBLISH", channel, message))).chainDeferred(published))
        return self._track(published)

    def _track(self, d: defer.Deferred) -> defer.Deferred:
        if not self._ordered:
            return d
        answered: defer.Deferred = defer.Deferred()
        self._in_flight.add(answered)

        def done(result: Any) -> Any:
            self._in_flight.discard(answered)
            answered.callback(None)
            return result

        return d.addBoth(done)

    def disconnect(self) -> defer.Deferred:
        return defer.succeed(None)


class _ShardSubscriber(txredisapi.SubscriberProtocol):
    """The sharded subscriptions (``SSUBSCRIBE``) held on one master."""

    def connectionMade(self) -> Any:
        d = defer.maybeDeferred(super().connectionMade)
        d.addCallback(lambda _: self.factory.link._connected(self.factory.address, self))
        return d

    def replyReceived(self, reply: Any) -> None:
        kind = _text(reply[0]) if isinstance(reply, list) and reply else None
        if kind == "smessage" and len(reply) == 3:
            self.factory.link._received(_text(reply[1]), _text(reply[2]))
        elif kind == "sunsubscribe" and not self.replyQueue.waiting:
            self.factory.link._moved()  # a slot moved away: subscribe where it went
        else:
            super().replyReceived(reply)

    def connectionLost(self, why: Any) -> None:
        self.factory.link._lost(self.factory.address, self)
        super().connectionLost(why)


class ShardedLink:
    """:class:`~presenced.cluster.link.RedisLink` over a Redis Cluster of ``seeds``: fixed
    channels (:meth:`subscribe`) and a family joined and left while running
    (:meth:`join`, :meth:`leave`), each subscribed on the master of its slot, one subscriber
    connection per master."""

    log = Logger()

    def __init__(self, seeds: list[str]):
        self.cluster = ClusterMap(seeds, partial(self._node, True), COMMAND_TIMEOUT)
        self.untimed = ClusterMap(seeds, partial(self._node, False), COMMAND_TIMEOUT)
        self.commands = RoutedCommands(self.cluster, ordered=False)
        self.publishing = RoutedCommands(self.untimed, ordered=False)
        self.ordered = RoutedCommands(self.untimed, ordered=True)
        self.handlers: dict[str, MessageHandler] = {}
        self.family_prefix = ""
        self.family_handler: FamilyHandler | None = None
        self.joined: set[str] = set()
        self.listening: set[str] = set()  # joined, and Redis confirmed the SSUBSCRIBE
        self.on_reconnect: list[Callable[[], Any]] = []
        self.ready: defer.Deferred = defer.Deferred()
        self.reconnects = 0
        self._factories: dict[str, txredisapi.SubscriberFactory] = {}  # master address ->
        self._protocols: dict[str, _ShardSubscriber] = {}
        self._on: dict[str, str] = {}  # channel -> address of the master it is subscribed on
        self._confirmed: set[str] = set()  # channels Redis confirmed where ``_on`` says
        self._seen: set[str] = set()  # masters whose subscriber connected once
        self._syncing: Optional[defer.Deferred] = None
        self._stopped = False

    @staticmethod
    def _node(timed_replies: bool, url: str) -> RedisNode:
        node = RedisNode(url, COMMAND_TIMEOUT, timed_replies=timed_replies)
        node.connect().addErrback(lambda _: None)
        return node

    def subscribe(self, channel: str, handler: MessageHandler) -> None:
        """Call before :meth:`start`; channels are (re)subscribed on every connection."""
        self.handlers[channel] = handler

    def subscribe_family(self, prefix: str, handler: FamilyHandler) -> None:
        """Messages of joined channels named ``prefix + name`` go to ``handler(name, msg)``."""
        self.family_prefix, self.family_handler = prefix, handler

    def join(self, name: str) -> None:
        """Receive the family channel ``name`` (subscribed on its master at once, or when
        that master's connection is back)."""
        self.joined.add(name)
        self._place(self.family_prefix + name)

    def leave(self, name: str) -> None:
        self.joined.discard(name)
        self.listening.discard(name)
        channel = self.family_prefix + name
        address = self._on.pop(channel, None)
        self._confirmed.discard(channel)
        protocol = self._protocols.get(address) if address else None
        if protocol is not None:
            protocol.execute_command("SUNSUBSCRIBE", channel).addErrback(self._failed)

    def _channels(self) -> list[str]:
        return ([_FIXED_TAG + c for c in self.handlers]
                + [self.family_prefix + name for name in self.joined])

    def _physical(self, channel: str) -> str:
        """The sharded channel a logical one is carried on (see the module docstring)."""
        if self.family_prefix and channel.startswith(self.family_prefix):
            return channel
        return _FIXED_TAG + channel

    async def open_commands(self) -> None:
        """Learn the slot map, so commands can be sent (without subscribing)."""
        await defer.gatherResults([defer.ensureDeferred(self.cluster.start()),
                                   defer.ensureDeferred(self.untimed.start())],
                                  consumeErrors=True)

    def start(self) -> defer.Deferred:
        """Fires when every fixed channel is subscribed."""
        return defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        await self.open_commands()
        self._sync()
        await self.ready

    def _sync(self) -> None:
        """Subscribe every channel on the master of its slot; masters no longer named by the
        map lose their subscriber."""
        masters = {_address(node) for node in self.cluster.masters()}
        for address in list(self._factories):
            if address not in masters:
                self._factories.pop(address).disconnect()
                self._protocols.pop(address, None)
        for address in masters:  # a family channel joined later is subscribed at once
            self._subscriber(address)
        for channel in self._channels():
            self._place(channel)

    def _place(self, channel: str) -> None:
        owner = self.cluster.owner(key_slot(channel))
        if owner is None:
            return
        address = _address(owner)
        if self._on.get(channel) == address:
            return
        protocol = self._protocols.get(address)
        if protocol is None:
            self._subscriber(address)  # it subscribes what belongs there once connected
            return
        self._on[channel] = address
        d = protocol.execute_command("SSUBSCRIBE", channel, apply_timeout=False)
        d.addCallback(lambda _: self._listening(channel, address))
        d.addErrback(self._failed)

    def _subscriber(self, address: str) -> None:
        if address in self._factories or self._stopped:
            return
        host, _, port = address.rpartition(":")
        factory = txredisapi.SubscriberFactory(isLazy=True)
        factory.protocol = _ShardSubscriber
        factory.link = self
        factory.address = address
        factory.maxDelay = RECONNECT_MAX_DELAY
        self._factories[address] = factory
        factory.startConnecting(HostnameEndpoint(reactor, host, int(port), timeout=5))

    def _listening(self, channel: str, address: str) -> None:
        """Redis confirmed ``channel`` on ``address``."""
        if self._on.get(channel) != address:
            return
        self._confirmed.add(channel)
        prefix = self.family_prefix
        if prefix and channel.startswith(prefix) and channel[len(prefix):] in self.joined:
            self.listening.add(channel[len(prefix):])

    @defer.inlineCallbacks
    def _connected(self, address: str, protocol: _ShardSubscriber):
        """A master's subscriber (re)connected: subscribe what belongs there; then, as
        RedisLink does, ``on_reconnect`` runs (state is re-read) and the first time
        every fixed channel is in place and every master has a subscriber, :attr:`ready`
        fires."""
        self._protocols[address] = protocol
        again = address in self._seen
        self._seen.add(address)
        mine = [c for c in self._channels()
                if _address_of(self.cluster.owner(key_slot(c))) == address]
        for channel in mine:
            self._on[channel] = address
        yield defer.gatherResults([protocol.execute_command("SSUBSCRIBE", c,
                                                             apply_timeout=False)
                                   for c in mine], consumeErrors=True)
        for channel in mine:
            self._listening(channel, address)
        first = (not self.ready.called
                 and {_FIXED_TAG + c for c in self.handlers} <= self._confirmed
                 and set(self._factories) <= set(self._protocols))
        if not (first or (again and self.ready.called)):
            return
        if again:
            self.reconnects += 1
            self.log.info("cluster: Redis Cluster subscriptions restored on {a}", a=address)
        for callback in self.on_reconnect:
            yield defer.maybeDeferred(callback)
        if first:
            self.ready.callback(None)

    def _lost(self, address: str, protocol: _ShardSubscriber) -> None:
        if self._protocols.get(address) is not protocol:
            return
        del self._protocols[address]
        for channel, on in list(self._on.items()):
            if on == address:
                del self._on[channel]
                self._confirmed.discard(channel)
                if channel.startswith(self.family_prefix) and self.family_prefix:
                    self.listening.discard(channel[len(self.family_prefix):])
        if not self._stopped:
            self.log.warn("cluster: lost the subscriptions on {a}, reconnecting", a=address)
            self._moved()

    def _moved(self) -> None:
        """Reload the slot map, then subscribe each channel where its slot is now."""
        if self._syncing is not None or self._stopped:
            return
        self._syncing = defer.ensureDeferred(self._resync())

    async def _resync(self) -> None:
        try:
            await task.deferLater(reactor, 0.1)
            await self.cluster.reload()
            await self.untimed.reload()
            moved = [c for c, a in self._on.items()
                     if _address_of(self.cluster.owner(key_slot(c))) != a]
            for channel in moved:
                del self._on[channel]
                self._confirmed.discard(channel)
            self._sync()
        except Exception as e:  # the next loss or move tries again
            self.log.warn("cluster: reloading the Redis Cluster map failed: {e}", e=e)
        finally:
            self._syncing = None

    def _failed(self, failure: Any) -> None:
        self.log.warn("cluster: (un)subscribing failed: {e}", e=failure.getErrorMessage())

    @defer.inlineCallbacks
    def stop(self):
        self._stopped = True
        closing = [factory.disconnect() for factory in self._factories.values()]
        closing += [self.cluster.close(), self.untimed.close()]
        d = defer.gatherResults(closing, consumeErrors=True)
        d.addTimeout(2.0, reactor)
        try:
            yield d
        except Exception:
            self.log.warn("cluster: Redis Cluster connections did not close in time")

    def publish(self, channel: str, message: str, ordered: bool = False) -> defer.Deferred:
        d = (self.ordered if ordered else self.publishing).publish(self._physical(channel),
                                                                    message)
        return d.addErrback(self._publish_failed, channel)

    def _publish_failed(self, failure: Any, channel: str) -> None:
        self.log.warn("cluster publish to {channel} failed: {error}", channel=channel,
                      error=failure.getErrorMessage())

    def _received(self, channel: str, message: str) -> None:
        if channel.startswith(_FIXED_TAG):
            channel = channel[len(_FIXED_TAG):]
        dispatch(self, channel, message)


def _address(node: Any) -> str:
    parts = urlsplit(node.url)
    return f"{parts.hostname}:{parts.port}"


def _address_of(node: Any) -> Optional[str]:
    return None if node is None else _address(node)

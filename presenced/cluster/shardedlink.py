"""The cluster channel on Redis Cluster: :class:`ShardedLink` has the interface of
:class:`~presenced.cluster.link.RedisLink`, so the directory and the transport do not know
which one they have.

- Commands (``link.commands``, ``link.ordered``: txredisapi's command methods) go to the master
  of their key's slot (:class:`~presenced.store.rediscluster.ClusterMap`); a multi-key ``DEL``
  is sent one key at a time, since the directory's keys lie in different slots.
- Messages use sharded pub/sub (Redis >= 7): ``SPUBLISH`` goes to the master of the channel's
  slot and reaches only the subscribers of that master, where ``PUBLISH`` on a cluster is
  copied to every node. Each channel has one subscriber connection, to the master of its slot,
  found again before every (re)connection; when the slot moves, Redis ends the subscription
  (``sunsubscribe``) and the connection is opened again where the slot went.
- Order: the directory needs Redis to hold an entry before the others hear of it. On a cluster
  the entry and the channel may be on different masters, so an ``ordered`` publish waits until
  every ``ordered`` command sent before it has been answered (writes are not held back).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable
from urllib.parse import urlsplit

import txredisapi
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from presenced.cluster.link import RECONNECT_MAX_DELAY, MessageHandler, _text
from presenced.store.rediscluster import ClusterMap, key_slot
from presenced.store.redis import RedisNode

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
    """One channel's sharded subscription (``SSUBSCRIBE``)."""

    def connectionMade(self) -> Any:
        d = defer.maybeDeferred(super().connectionMade)
        d.addCallback(lambda _: self.execute_command("SSUBSCRIBE", self.factory.channel,
                                                     apply_timeout=False))
        d.addCallback(lambda _: self.factory.link._subscribed(self.factory.channel))
        return d

    def replyReceived(self, reply: Any) -> None:
        kind = _text(reply[0]) if isinstance(reply, list) and reply else None
        if kind == "smessage" and len(reply) == 3:
            self.factory.link._received(_text(reply[1]), _text(reply[2]))
        elif kind == "sunsubscribe" and not self.replyQueue.waiting:
            self.transport.loseConnection()  # the slot moved: subscribe where it went
        else:
            super().replyReceived(reply)

    def connectionLost(self, why: Any) -> None:
        self.factory.link._lost(self.factory.channel)
        super().connectionLost(why)


@implementer(IStreamClientEndpoint)
class _SlotOwnerEndpoint:
    """Connects to the master of ``slot`` as a freshly loaded slot map names it."""

    def __init__(self, cluster: ClusterMap, slot: int):
        self.cluster = cluster
        self.slot = slot

    def connect(self, factory: Any) -> defer.Deferred:
        return defer.ensureDeferred(self._connect(factory))

    async def _connect(self, factory: Any) -> Any:
        await self.cluster.reload()
        owner = self.cluster.owner(self.slot)
        if owner is None:
            raise txredisapi.ConnectionError(f"no master for slot {self.slot}")
        parts = urlsplit(owner.url)
        return await HostnameEndpoint(reactor, parts.hostname, parts.port,
                                      timeout=5).connect(factory)


class ShardedLink:
    """:class:`~presenced.cluster.link.RedisLink` over a Redis Cluster of ``seeds``."""

    log = Logger()

    def __init__(self, seeds: list[str]):
        self.cluster = ClusterMap(seeds, self._node, COMMAND_TIMEOUT)
        self.commands = RoutedCommands(self.cluster, ordered=False)
        self.ordered = RoutedCommands(self.cluster, ordered=True)
        self.handlers: dict[str, MessageHandler] = {}
        self.on_reconnect: list[Callable[[], Any]] = []
        self.ready: defer.Deferred = defer.Deferred()
        self.reconnects = 0
        self._factories: list[txredisapi.SubscriberFactory] = []
        self._subscribed_channels: set[str] = set()

    @staticmethod
    def _node(url: str) -> RedisNode:
        node = RedisNode(url, COMMAND_TIMEOUT)
        node.connect().addErrback(lambda _: None)
        return node

    def subscribe(self, channel: str, handler: MessageHandler) -> None:
        """Call before :meth:`start`; channels are (re)subscribed on every connection."""
        self.handlers[channel] = handler

    async def open_commands(self) -> None:
        """Learn the slot map, so commands can be sent (without subscribing)."""
        await self.cluster.start()

    def start(self) -> defer.Deferred:
        """Fires when every channel is subscribed."""
        return defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        await self.open_commands()
        for channel in self.handlers:
            factory = txredisapi.SubscriberFactory(isLazy=True)
            factory.protocol = _ShardSubscriber
            factory.link = self
            factory.channel = channel
            factory.maxDelay = RECONNECT_MAX_DELAY
            self._factories.append(factory)
            factory.startConnecting(_SlotOwnerEndpoint(self.cluster, key_slot(channel)))
        await self.ready

    @defer.inlineCallbacks
    def stop(self):
        closing = [factory.disconnect() for factory in self._factories]
        closing.append(self.cluster.close())
        d = defer.gatherResults(closing, consumeErrors=True)
        d.addTimeout(2.0, reactor)
        try:
            yield d
        except Exception:
            self.log.warn("cluster: Redis Cluster connections did not close in time")

    def publish(self, channel: str, message: str, ordered: bool = False) -> defer.Deferred:
        d = (self.ordered if ordered else self.commands).publish(channel, message)
        return d.addErrback(self._publish_failed, channel)

    def _publish_failed(self, failure: Any, channel: str) -> None:
        self.log.warn("cluster publish to {channel} failed: {error}", channel=channel,
                      error=failure.getErrorMessage())

    @defer.inlineCallbacks
    def _subscribed(self, channel: str):
        self._subscribed_channels.add(channel)
        if len(self._subscribed_channels) < len(self.handlers):
            return
        first = not self.ready.called
        if not first:
            self.reconnects += 1
            self.log.info("cluster: Redis Cluster subscription restored")
        for callback in self.on_reconnect:
            yield defer.maybeDeferred(callback)
        if first:
            self.ready.callback(None)

    def _lost(self, channel: str) -> None:
        if channel in self._subscribed_channels:
            self._subscribed_channels.discard(channel)
            self.log.warn("cluster: lost the subscription of {channel}, reconnecting",
                          channel=channel)

    def _received(self, channel: str, message: str) -> None:
        handler = self.handlers.get(channel)
        if handler is not None:
            try:
                handler(message)
            except Exception:
                self.log.failure("cluster message on {channel} failed", channel=channel)

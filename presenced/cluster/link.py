"""Redis for the cluster: a command pool and one subscriber connection that resubscribes.

Pub/sub messages sent while a node is disconnected are lost (Redis does not keep them), so
whoever needs a consistent view registers ``on_reconnect`` and reloads its state from Redis
keys after each (re)subscription.

Besides the fixed channels (:meth:`RedisLink.subscribe`, before start), a family of channels
sharing a prefix may be joined and left while running (:meth:`RedisLink.join`,
:meth:`RedisLink.leave`: the cluster's per-subject channels). Joins and leaves of one reactor
turn go out as one ``SUBSCRIBE`` and one ``UNSUBSCRIBE``.
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlparse

import txredisapi
from twisted.internet import defer, endpoints, reactor
from twisted.logger import Logger

MessageHandler = Callable[[str], None]
FamilyHandler = Callable[[str, str], None]  # (channel without the prefix, message)

RECONNECT_MAX_DELAY = 1.0
# Seconds a read or heartbeat waits for Redis's answer before its connection is dropped.
REPLY_TIMEOUT = 5.0


class _Subscriber(txredisapi.SubscriberProtocol):
    def connectionMade(self) -> Any:
        d = defer.maybeDeferred(super().connectionMade)
        d.addCallback(lambda _: self.factory.link._subscribed(self))
        return d

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory.link._received(_text(channel), _text(message))

    def connectionLost(self, why: Any) -> None:
        self.factory.link._lost(self)
        super().connectionLost(why)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class RedisLink:
    """Commands through a lazy pool; messages of subscribed channels to their handlers."""

    log = Logger()

    def __init__(self, url: str):
        parsed = urlparse(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 6379
        db = parsed.path.strip("/")
        self.commands = self._pool(parsed, int(db) if db else None, 4, REPLY_TIMEOUT)
        # The publishing connections wait for no answer in time: when this reactor is behind
        # (a burst), a late answer made txredisapi abort the connection and every PUBLISH
        # still queued on it was lost. An unreachable Redis is found by the heartbeat (on
        # ``commands``) and by the connection dropping; the directory's stop has a deadline.
        self.publishing = self._pool(parsed, int(db) if db else None, 1, None)
        # One connection: Redis runs its commands in the order they were sent (a pool spreads
        # them over connections), so a directory entry is written before it is announced, a
        # user's "+" and "-" reach the other nodes in the order they happened, and so do the
        # events for given users that follow them.
        self.ordered = self._pool(parsed, int(db) if db else None, 1, None)
        self.handlers: dict[str, MessageHandler] = {}
        self.family_prefix = ""
        self.family_handler: FamilyHandler | None = None
        self.joined: set[str] = set()
        self.listening: set[str] = set()  # joined, and Redis confirmed the SUBSCRIBE
        self._changed: set[str] = set()
        self.on_reconnect: list[Callable[[], Any]] = []
        self._factory: txredisapi.SubscriberFactory | None = None
        self._protocol: _Subscriber | None = None
        self.ready: defer.Deferred = defer.Deferred()
        self.reconnects = 0

    def _pool(self, parsed: Any, db: int | None, size: int, timeout: float | None) -> Any:
        pool = txredisapi.lazyConnectionPool(self.host, self.port, dbid=db, poolsize=size,
                                             password=parsed.password, replyTimeout=timeout)
        # Reconnect within a second or so once Redis is back (txredisapi waits up to 10 s).
        pool._factory.maxDelay = RECONNECT_MAX_DELAY
        return pool

    def subscribe(self, channel: str, handler: MessageHandler) -> None:
        """Call before :meth:`start`; channels are (re)subscribed on every connection."""
        self.handlers[channel] = handler

    async def open_commands(self) -> None:
        """Commands can be sent at once: the pools connect on first use."""

    def subscribe_family(self, prefix: str, handler: FamilyHandler) -> None:
        """Messages of joined channels named ``prefix + name`` go to ``handler(name, msg)``."""
        self.family_prefix, self.family_handler = prefix, handler

    def join(self, name: str) -> None:
        """Receive the family channel ``name`` (subscribed at the end of this turn)."""
        self._change(name, True)

    def leave(self, name: str) -> None:
        self._change(name, False)

    def _change(self, name: str, joined: bool) -> None:
        if joined:
            self.joined.add(name)
        else:
            self.joined.discard(name)
            self.listening.discard(name)
        if not self._changed:
            reactor.callLater(0, self._apply_changes)
        self._changed.add(name)

    def _apply_changes(self) -> None:
        changed, self._changed = self._changed, set()
        protocol = self._protocol
        if protocol is None:  # the next connection subscribes to every joined channel
            return
        prefix = self.family_prefix
        joins = [name for name in changed if name in self.joined]
        leaves = [prefix + name for name in changed if name not in self.joined]
        if joins:
            d = protocol.subscribe([prefix + name for name in joins])
            d.addCallback(lambda _: self._listening(joins, protocol))
            d.addErrback(self._subscribe_failed)
        if leaves:
            protocol.unsubscribe(leaves).addErrback(self._subscribe_failed)

    def _listening(self, names: list[str], protocol: _Subscriber) -> None:
        if protocol is self._protocol:
            self.listening.update(name for name in names if name in self.joined)

    def _subscribe_failed(self, failure: Any) -> None:
        self.log.warn("cluster: (un)subscribing failed: {e}", e=failure.getErrorMessage())

    def start(self) -> defer.Deferred:
        """Fires when the first subscription is in place."""
        factory = txredisapi.SubscriberFactory(isLazy=True)
        factory.protocol = _Subscriber
        factory.link = self
        factory.maxDelay = RECONNECT_MAX_DELAY
        self._factory = factory
        factory.startConnecting(endpoints.TCP4ClientEndpoint(reactor, self.host, self.port,
                                                             timeout=5))
        return self.ready

    @defer.inlineCallbacks
    def stop(self):
        if self._factory is not None:
            self._factory.stopTrying()
            if self._protocol is not None and self._protocol.transport is not None:
                self._protocol.transport.loseConnection()
        closing = defer.gatherResults([self.commands.disconnect(), self.ordered.disconnect(),
                                       self.publishing.disconnect()])
        closing.addTimeout(2.0, reactor)
        try:
            yield closing
        except defer.TimeoutError:
            self.log.warn("cluster: Redis connections did not close in time")

    def publish(self, channel: str, message: str, ordered: bool = False) -> defer.Deferred:
        """``ordered``: on :attr:`ordered`, after the commands sent there before."""
        d = (self.ordered if ordered else self.publishing).publish(channel, message)
        d.addErrback(self._publish_failed, channel)
        return d

    def _publish_failed(self, failure: Any, channel: str) -> None:
        self.log.warn("cluster publish to {channel} failed: {error}", channel=channel,
                      error=failure.getErrorMessage())

    @defer.inlineCallbacks
    def _subscribed(self, protocol: _Subscriber):
        self._protocol = protocol
        prefix = self.family_prefix
        names = list(self.joined)
        yield protocol.subscribe(list(self.handlers) + [prefix + n for n in names])
        self._listening(names, protocol)
        first = not self.ready.called
        if not first:
            self.reconnects += 1
            self.log.info("cluster: Redis subscription restored")
        for callback in self.on_reconnect:
            yield defer.maybeDeferred(callback)
        if first:
            self.ready.callback(None)

    def _lost(self, protocol: _Subscriber) -> None:
        if self._protocol is protocol:
            self._protocol = None
            self.listening.clear()
            self.log.warn("cluster: lost the Redis subscription, reconnecting")

    def _received(self, channel: str, message: str) -> None:
        dispatch(self, channel, message)


def dispatch(link: Any, channel: str, message: str) -> None:
    """Hand a message to the handler of its fixed channel or of its family (a link's
    ``handlers``, ``family_prefix`` and ``family_handler``); a failing handler is logged."""
    handler = link.handlers.get(channel)
    try:
        if handler is not None:
            handler(message)
        elif link.family_handler is not None and channel.startswith(link.family_prefix):
            link.family_handler(channel[len(link.family_prefix):], message)
    except Exception:
        link.log.failure("cluster message on {channel} failed", channel=channel)

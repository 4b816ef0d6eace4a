"""The Redis store on a Sentinel-managed master: txredisapi's Sentinel support asks the
sentinels for the master's address before every connection, and its connection checks the
server's role, so after a fail-over the store reconnects to the promoted replica.

A master demoted while its connection stays open answers writes with ``READONLY``: the
connection is then dropped (so the next one asks the sentinels again) and the write is
treated as never sent, which the store's retry loop sends again within its deadline.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import txredisapi
from twisted.internet import defer

from presenced.store import StoreError
from presenced.store.redis import RedisNode, RedisRosterStore, ReplicaConfirmation, ScriptsFirst


class _SentinelFactory(ScriptsFirst, txredisapi.SentinelConnectionFactory):
    """The master's connections, each loading the scripts first."""


class SentinelNode(RedisNode):
    """The master that ``sentinels`` (``redis://[user:password@]host:port`` URLs, the
    credentials used for the sentinels and the master alike) know as ``master``."""

    def __init__(self, sentinels: list[str], master: str, timeout: float,
                 wait_replicas: int = 0):
        addresses, credentials = [], {}
        for url in sentinels:
            parts = urlsplit(url)
            if parts.scheme != "redis":
                raise StoreError(f"bad Redis Sentinel URL {url!r}: not a redis:// URL")
            addresses.append((parts.hostname or "127.0.0.1", parts.port or 26379))
            if parts.password:
                credentials = {"password": unquote(parts.password),
                               "username": unquote(parts.username) if parts.username else None}
        self.url = f"{master} (Sentinel {', '.join(f'{h}:{p}' for h, p in addresses)})"
        self._master = master
        self._timeout = timeout
        self._credentials = credentials
        self._sentinel = txredisapi.Sentinel(addresses, **credentials)
        self._sentinel.discovery_timeout = timeout
        self._factory: Any = None
        self._confirmation = ReplicaConfirmation(self, wait_replicas, timeout)

    def connect(self) -> defer.Deferred:
        handler = self._sentinel.master_for(
            self._master, factory_class=_SentinelFactory, poolsize=1, isLazy=True,
            charset="utf-8", replyTimeout=self._timeout, convertNumbers=False,
            **self._credentials)
        self._factory = handler._factory
        return self._factory.deferred

    def connected(self) -> bool:
        return self._factory is not None and self._factory.size > 0

    def execute(self, *args: Any) -> defer.Deferred:
        def demoted(failure: Any) -> Any:
            failure.trap(txredisapi.ResponseError)
            if not str(failure.value).startswith("READONLY"):
                return failure
            for conn in list(self._factory.pool):
                conn.transport.loseConnection()
            raise txredisapi.ConnectionError("Not connected")

        return self._factory.handler.execute_command(*args).addErrback(demoted)

    def close(self) -> defer.Deferred:
        closing = [self._sentinel.disconnect()]
        if self._factory is not None:
            closing.append(self._factory.disconnect())
        return defer.gatherResults(closing, consumeErrors=True)


def sentinel_store(sentinels: list[str], master: str, timeout: float = 5.0, retries: int = 3,
                   wait_replicas: int = 0) -> RedisRosterStore:
    """The Redis store on the master ``sentinels`` know as ``master``."""
    return RedisRosterStore(sentinels, timeout=timeout, retries=retries,
                            wait_replicas=wait_replicas,
                            node=SentinelNode(sentinels, master, timeout, wait_replicas))

"""One secret for the whole cluster, kept in Redis.

Stream tokens (and the fake SCRAM salts of unknown users) are HMACs with the server's
secret. Behind a load balancer a token made on one node must open a stream on any other, so
the nodes share one: the first node to join stores its own ``<data_dir>/secret`` under
``presenced:secret`` with ``SET NX`` (atomic: of nodes starting together exactly one wins) and
every node, that one included, uses what Redis then holds. A cluster made from a single node
keeps that node's secret, so tokens it handed out before stay valid.
"""

from __future__ import annotations

from typing import Any

from presenced.cluster.link import RedisLink
from presenced.config import Config

SECRET_KEY = "presenced:secret"


def cluster_redis_url(config: Config) -> str:
    """The Redis of the cluster channel: ``[cluster] redis``, else the first store URL."""
    return config.cluster.redis or config.store.redis[0]


def make_link(config: Config) -> Any:
    """The cluster channel: sharded pub/sub on the store's Redis Cluster when the store is one
    and ``[cluster] redis`` names no other Redis, else :class:`RedisLink`."""
    if config.store.redis_cluster and not config.cluster.redis:
        from presenced.cluster.shardedlink import ShardedLink

        return ShardedLink(config.store.redis_cluster)
    return RedisLink(cluster_redis_url(config))


async def shared_secret(commands: Any, candidate: bytes) -> bytes:
    """The cluster's secret, storing ``candidate`` as that secret when there is none yet."""
    await commands.set(SECRET_KEY, candidate.hex(), only_if_not_exists=True)
    value = await commands.get(SECRET_KEY)
    text = value.decode("ascii") if isinstance(value, bytes) else value
    return bytes.fromhex(text)


async def fetch_shared_secret(config: Config, candidate: bytes) -> bytes:
    """:func:`shared_secret` over a connection of its own (presencedctl, no node running)."""
    link = make_link(config)
    await link.open_commands()
    try:
        return await shared_secret(link.commands, candidate)
    finally:
        await link.stop()

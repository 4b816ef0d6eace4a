"""Choosing a backend: the one module that knows them all (the backends import the store
interfaces from :mod:`presenced.store`, so the choice cannot live there)."""

from __future__ import annotations

import os

from presenced.config import Config
from presenced.store import IRosterStore


def make_store(config: Config) -> IRosterStore:
    """The backend the config names; it still needs ``start()``."""
    if config.store.backend == "redis":
        from presenced.store.redis import RedisRosterStore

        store = config.store
        if store.redis_cluster:
            return RedisRosterStore(store.redis_cluster, timeout=store.redis_timeout,
                                    retries=store.redis_retries, cluster=True,
                                    wait_replicas=store.redis_wait_replicas)
        if store.redis_sentinels:
            from presenced.store.redissentinel import sentinel_store

            return sentinel_store(store.redis_sentinels, store.redis_sentinel_master,
                                  timeout=store.redis_timeout, retries=store.redis_retries,
                                  wait_replicas=store.redis_wait_replicas)
        return RedisRosterStore(store.redis, timeout=store.redis_timeout,
                                retries=store.redis_retries,
                                wait_replicas=store.redis_wait_replicas)
    from presenced.store.embedded import EmbeddedRosterStore

    return EmbeddedRosterStore(os.path.join(config.server.data_dir, "presenced.sqlite3"))

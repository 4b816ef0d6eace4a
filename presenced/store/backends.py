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

        return RedisRosterStore(config.store.redis, timeout=config.store.redis_timeout,
                                retries=config.store.redis_retries)
    from presenced.store.embedded import EmbeddedRosterStore

    return EmbeddedRosterStore(os.path.join(config.server.data_dir, "presenced.sqlite3"))

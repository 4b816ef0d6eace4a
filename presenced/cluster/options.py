"""The ``[cluster]`` keys: several nodes over Redis (docs/cluster.md). The rules that tie
them to ``[store]`` and ``[server] workers`` are checked in :mod:`presenced.config`."""

from __future__ import annotations

from presenced.options import Key, Keys, positive

KEYS: Keys = {
    "enabled": Key(False, "bool"),
    "node_id": Key("", "str"),
    "redis": Key("", "str"),
    "heartbeat_interval": Key(2.0, "float", positive),
    "node_timeout": Key(10.0, "float", positive),
}

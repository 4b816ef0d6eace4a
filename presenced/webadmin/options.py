"""The ``[webadmin]`` keys: the console and ``/metrics`` (docs/admin-console.md)."""

from __future__ import annotations

from presenced.options import Key, Keys, port, positive

KEYS: Keys = {
    "enabled": Key(True, "bool"),
    "port": Key(8001, "int", port),
    "bind": Key("127.0.0.1", "str"),
    "admins": Key([], "list[str]"),
    "session_ttl": Key(3600, "int", positive),
    "metrics_token": Key("", "str"),
    "stats_interval": Key(5.0, "float", positive),
    "request_timeout": Key(30.0, "float", positive),
    "max_body_bytes": Key(1048576, "int", positive),
    "max_connections": Key(128, "int", positive),
    "max_connections_per_ip": Key(64, "int", positive),
}

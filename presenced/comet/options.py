"""The ``[comet]`` keys: HTTP streams, long polls and WebSockets (docs/comet.md)."""

from __future__ import annotations

from presenced.options import Key, Keys, non_negative, port, positive

KEYS: Keys = {
    "enabled": Key(True, "bool"),
    "port": Key(8000, "int", port),
    "bind": Key("0.0.0.0", "str"),
    "require_token": Key(True, "bool"),
    "cors_origins": Key([], "list[str]"),
    "heartbeat_interval": Key(25.0, "float", positive),
    "replay_size": Key(100, "int", non_negative),
    "replay_linger": Key(60.0, "float", non_negative),
    "poll_timeout": Key(30.0, "float", positive),
    "max_buffered_bytes": Key(262144, "int", positive),
    "header_timeout": Key(10.0, "float", positive),
    "max_request_bytes": Key(8192, "int", positive),
    "request_timeout": Key(30.0, "float", positive),
    "websocket_max_message_bytes": Key(65536, "int", positive),
    "max_body_bytes": Key(262144, "int", positive),
    "websocket_idle_timeout": Key(75.0, "float", positive),
    "max_connections": Key(100000, "int", positive),
    "max_connections_per_ip": Key(1000, "int", positive),
    "authorize_url": Key("", "str"),
    "authorize_timeout": Key(5.0, "float", positive),
    "authorize_cache_seconds": Key(10.0, "float", non_negative),
    "authorize_cache_size": Key(10000, "int", positive),
}

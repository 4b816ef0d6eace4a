"""The ``[thrift]`` keys: the admin interface (docs/admin-thrift.md)."""

from __future__ import annotations

from presenced.allowlist import allowlist_problem
from presenced.options import Key, Keys, one_of, port, positive

KEYS: Keys = {
    "enabled": Key(True, "bool"),
    "port": Key(9000, "int", port),
    "bind": Key("127.0.0.1", "str"),
    "transport": Key("buffered", "str", one_of("buffered", "framed")),
    "protocol": Key("binary", "str", one_of("binary", "compact")),
    "max_message_bytes": Key(1048576, "int", positive),
    "max_pending_calls": Key(32, "int", positive),
    "max_unread_bytes": Key(4194304, "int", positive),
    "timeout": Key(30.0, "float", positive),
    "allow": Key([], "list[str]", allowlist_problem),
    "max_connections": Key(256, "int", positive),
    "max_connections_per_ip": Key(256, "int", positive),
}

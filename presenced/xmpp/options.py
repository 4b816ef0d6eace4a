"""The ``[xmpp]`` keys: client connections (docs/xmpp.md)."""

from __future__ import annotations

from typing import Optional

from presenced.options import (Key, Keys, existing_dir_or_empty, existing_file_or_empty,
                               non_negative, port, positive)


def bare_jids(value: list) -> Optional[str]:
    """Each entry a bare JID ``user@domain`` (lower case: JIDs are compared as written)."""
    for entry in value:
        local, at, domain = entry.partition("@")
        if not (local and at and domain) or "/" in entry or entry != entry.strip().lower():
            return f"{entry!r} is not a bare JID in lower case (user@domain)"
    return None


KEYS: Keys = {
    "enabled": Key(True, "bool"),
    "port": Key(5222, "int", port),
    "bind": Key("0.0.0.0", "str"),
    "require_tls": Key(True, "bool"),
    "allow_plain": Key(False, "bool"),
    "certificate": Key("", "str", existing_file_or_empty),
    "private_key": Key("", "str", existing_file_or_empty),
    "certificate_dir": Key("", "str", existing_dir_or_empty),
    "direct_tls": Key(False, "bool"),
    "direct_tls_port": Key(5223, "int", port),
    "max_stanza_size": Key(262144, "int", positive),
    "auth_timeout": Key(30.0, "float", positive),
    "auth_failure_delay": Key(1.0, "float", non_negative),
    "allow_registration": Key(False, "bool"),
    "extauth_program": Key("", "str"),
    "extauth_pool_size": Key(1, "int", positive),
    "extauth_timeout": Key(30.0, "float", positive),
    "hibernate_after": Key(60.0, "float", non_negative),
    "resume_timeout": Key(300, "int", non_negative),
    "sm_max_unacked": Key(1000, "int", positive),
    "sm_max_unacked_bytes": Key(1048576, "int", positive),
    "max_connections": Key(50000, "int", positive),
    "max_connections_per_ip": Key(200, "int", positive),
    # Floods (docs/security.md): read pacing, stanza rate, work in flight, partial stanzas.
    "read_bytes_per_second": Key(65536.0, "float", positive),
    "read_burst_bytes": Key(1048576, "int", positive),
    "stanzas_per_second": Key(100.0, "float", positive),
    "stanza_burst": Key(1000, "int", positive),
    "max_pending_stanzas": Key(16, "int", positive),
    "stanza_timeout": Key(30.0, "float", positive),
    "max_sessions_per_user": Key(10, "int", positive),
    "archive_days": Key(0, "int", non_negative),
    "archive_limit": Key(10000, "int", positive),
    # Web clients, on the HTTP door ([comet] port): docs/web-clients.md.
    "websocket": Key(True, "bool"),
    "bosh": Key(True, "bool"),
    "bosh_max_wait": Key(60.0, "float", positive),
    "bosh_max_hold": Key(1, "int", positive),
    "bosh_max_requests": Key(2, "int", positive),
    "bosh_inactivity": Key(60.0, "float", positive),
    "web_public_url": Key("", "str"),
    # Ad-hoc service administration (XEP-0133, docs/xmpp.md): who may run the commands.
    "admins": Key([], "list[str]", bare_jids),
}

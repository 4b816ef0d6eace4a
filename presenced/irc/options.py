"""The ``[irc]`` keys and the checks only IRC needs: channel names, channel keys and
``[[irc.hooks]]`` tables (docs/irc.md)."""

from __future__ import annotations

import string
from typing import Optional

from presenced import events
from presenced.allowlist import allowlist_problem
from presenced.options import Key, Keys, non_empty, one_of, port, positive


def irc_channels(value: list) -> Optional[str]:
    for name in value:
        if not name.startswith(("#", "&")) or len(name) < 2 or any(c in name for c in " ,\r\n\0"):
            return f"{name!r} is not a channel name like \"#presenced\""
    return None


def irc_auth_channel(value: str) -> Optional[str]:
    return irc_channels([value]) if value else None


def irc_channel_keys(value: list) -> Optional[str]:
    for text in value:
        if len(text.split()) != 2 or not text.startswith(("#", "&")):
            return f"{text!r} is not \"#channel key\""
    return None


def irc_bridges(value: dict) -> Optional[str]:
    """``[irc.bridges]``: ``"#channel" = "room@conference.domain"``."""
    for channel, room in value.items():
        if irc_channels([channel]) or "/" in channel:
            return f"{channel!r} is not a channel name like \"#ops\" (without \"/\")"
        if room.count("@") != 1 or "/" in room or room.startswith("@") or room.endswith("@"):
            return f"{channel} = {room!r}: expected a room JID like \"ops@conference.localhost\""
    if len({c.lower() for c in value}) != len(value):
        return "a channel is bridged twice"
    return None


HOOK_KEYS = {"events": "list of event types", "users": "list of users",
             "channel": "channel name", "format": "format string"}


def irc_hooks(value: list) -> Optional[str]:
    """``[[irc.hooks]]`` tables: which events of which users go to which channel, and how."""
    kinds = (events.TUNE, events.PRESENCE, events.MESSAGE, events.ADMIN)
    for n, hook in enumerate(value, 1):
        if set(hook) != set(HOOK_KEYS):
            return f"hook {n} needs exactly the keys {', '.join(HOOK_KEYS)}"
        if not hook["events"] or not isinstance(hook["events"], list) \
                or not all(isinstance(e, str) and (e in kinds or events.is_site_type(e))
                           for e in hook["events"]):
            return (f"hook {n}: events must be a non-empty list of {', '.join(kinds)} or "
                    "site event types (docs/topics.md)")
        if not hook["users"] or not isinstance(hook["users"], list) \
                or not all(isinstance(u, str) and u for u in hook["users"]):
            return f"hook {n}: users must be a non-empty list of user names or topics"
        if not isinstance(hook["channel"], str) or not hook["channel"].startswith(("#", "&")) \
                or len(hook["channel"].split()) != 1:
            return f"hook {n}: channel must be a channel name like \"#music\""
        if not isinstance(hook["format"], str) or not hook["format"]:
            return f"hook {n}: format must be a non-empty string"
        try:
            list(string.Formatter().parse(hook["format"]))
        except ValueError as e:
            return f"hook {n}: bad format string: {e}"
    return None


KEYS: Keys = {
    "enabled": Key(False, "bool"),
    "server": Key("127.0.0.1", "str"),
    "port": Key(6667, "int", port),
    "nick": Key("presenced", "str", non_empty),
    "channels": Key(["#presenced"], "list[str]", irc_channels),
    "cat_port": Key(12345, "int", port),
    "cat_bind": Key("127.0.0.1", "str"),
    "command_prefix": Key("?", "str", non_empty),
    "auth_channel": Key("", "str", irc_auth_channel),
    "handler": Key("", "str"),
    "tls": Key(False, "bool"),
    "tls_verify": Key(True, "bool"),
    "password": Key("", "str"),
    "sasl_username": Key("", "str"),
    "sasl_password": Key("", "str"),
    "channel_keys": Key([], "list[str]", irc_channel_keys),
    "flood_lines_per_second": Key(2.0, "float", positive),
    "flood_burst": Key(5, "int", positive),
    "queue_lines": Key(1000, "int", positive),
    "reconnect_min_seconds": Key(1.0, "float", positive),
    "reconnect_max_seconds": Key(60.0, "float", positive),
    "nick_regain_seconds": Key(30.0, "float", positive),
    "unknown_targets": Key("join", "str", one_of("join", "report")),
    "cat_allow": Key([], "list[str]", allowlist_problem),
    "cat_max_line_bytes": Key(16384, "int", positive),
    "cat_idle_timeout": Key(60.0, "float", positive),
    "cat_max_connections": Key(256, "int", positive),
    "cat_max_connections_per_ip": Key(256, "int", positive),
    "handler_timeout": Key(10.0, "float", positive),
    "handler_max_running": Key(4, "int", positive),
    "handler_max_output_bytes": Key(65536, "int", positive),
    "max_reply_lines": Key(5, "int", positive),
    "http_token": Key("", "str"),
    "hooks": Key([], "list[table]", irc_hooks),
    "bridges": Key({}, "table[str]", irc_bridges),
}

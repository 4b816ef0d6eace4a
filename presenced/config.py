"""Configuration: one TOML file, every key declared here with its type and default.

The schema is the single place that knows which keys exist; ``config/presenced.toml``
documents the same keys for users, and a test checks that the two agree. A user error (unknown
key, wrong type, impossible value) raises :class:`ConfigError` naming the key, which the
command-line entry points turn into a one-line message and a non-zero exit.
"""

from __future__ import annotations

import os
import string
import tomllib
from dataclasses import dataclass
from typing import Any, Callable, Optional

from presenced import events
from presenced.allowlist import allowlist_problem

Check = Callable[[Any], Optional[str]]


class ConfigError(Exception):
    """A configuration value a user must fix; the message names the key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config error: {key}: {problem}")


@dataclass(frozen=True)
class Key:
    default: Any
    kind: str  # "int", "str", "bool", "float", "list[str]"
    check: Optional[Check] = None


def port(value: int) -> Optional[str]:
    if not 0 <= value <= 65535:
        return f"{value} is not a TCP port (0-65535; 0 picks a free one)"
    return None


def positive(value: float) -> Optional[str]:
    return None if value > 0 else f"{value} must be greater than 0"


def non_negative(value: float) -> Optional[str]:
    return None if value >= 0 else f"{value} must be 0 or more"


def one_of(*choices: str) -> Check:
    def check(value: str) -> Optional[str]:
        if value not in choices:
            return f"{value!r} is not one of {', '.join(repr(c) for c in choices)}"
        return None

    return check


def existing_file_or_empty(value: str) -> Optional[str]:
    if value and not os.path.isfile(value):
        return f"file {value!r} does not exist"
    return None


def non_empty(value: Any) -> Optional[str]:
    return None if value else "must not be empty"


def redis_urls(value: list) -> Optional[str]:
    if not value:
        return "needs at least one redis:// URL"
    for url in value:
        if not url.startswith(("redis://", "unix://")):
            return f"{url!r} is not a redis:// or unix:// URL"
    return None


def irc_channels(value: list) -> Optional[str]:
    for name in value:
        if not name.startswith(("#", "&")) or len(name) < 2 or any(c in name for c in " ,\r\n\0"):
            return f"{name!r} is not a channel name like \"#presenced\""
    return None


def irc_channel_keys(value: list) -> Optional[str]:
    for text in value:
        if len(text.split()) != 2 or not text.startswith(("#", "&")):
            return f"{text!r} is not \"#channel key\""
    return None


IRC_HOOK_KEYS = {"events": "list of event types", "users": "list of users",
                 "channel": "channel name", "format": "format string"}


def irc_hooks(value: list) -> Optional[str]:
    """``[[irc.hooks]]`` tables: which events of which users go to which channel, and how."""
    kinds = (events.TUNE, events.PRESENCE, events.MESSAGE, events.ADMIN)
    for n, hook in enumerate(value, 1):
        if set(hook) != set(IRC_HOOK_KEYS):
            return f"hook {n} needs exactly the keys {', '.join(IRC_HOOK_KEYS)}"
        if not hook["events"] or not isinstance(hook["events"], list) \
                or not set(hook["events"]) <= set(kinds):
            return f"hook {n}: events must be a non-empty list of {', '.join(kinds)}"
        if not hook["users"] or not isinstance(hook["users"], list) \
                or not all(isinstance(u, str) and u for u in hook["users"]):
            return f"hook {n}: users must be a non-empty list of user names"
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


SCHEMA: dict[str, dict[str, Key]] = {
    "server": {
        "domains": Key(["localhost"], "list[str]", non_empty),
        "data_dir": Key("presenced-data", "str", non_empty),
        "workers": Key(1, "int", positive),
        "scram_iterations": Key(4096, "int", positive),
        "offline_limit": Key(1000, "int", non_negative),
        "blocklist_limit": Key(1000, "int", non_negative),
        "private_storage_bytes": Key(262144, "int", non_negative),
    },
    "store": {
        "backend": Key("embedded", "str", one_of("embedded", "redis")),
        "redis": Key(["redis://127.0.0.1:6379/0"], "list[str]", redis_urls),
        "redis_timeout": Key(5.0, "float", positive),
        "redis_retries": Key(3, "int", non_negative),
    },
    "cluster": {
        "enabled": Key(False, "bool"),
        "node_id": Key("", "str"),
        "redis": Key("", "str"),
        "heartbeat_interval": Key(2.0, "float", positive),
        "node_timeout": Key(10.0, "float", positive),
    },
    "router": {
        "session_queue_bytes": Key(1048576, "int", positive),
    },
    "xmpp": {
        "enabled": Key(True, "bool"),
        "port": Key(5222, "int", port),
        "bind": Key("0.0.0.0", "str"),
        "require_tls": Key(True, "bool"),
        "allow_plain": Key(False, "bool"),
        "certificate": Key("", "str", existing_file_or_empty),
        "private_key": Key("", "str", existing_file_or_empty),
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
        "archive_days": Key(365, "int", non_negative),
        "archive_limit": Key(10000, "int", positive),
    },
    "comet": {
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
    },
    "thrift": {
        "enabled": Key(True, "bool"),
        "port": Key(9000, "int", port),
        "bind": Key("127.0.0.1", "str"),
        "transport": Key("buffered", "str", one_of("buffered", "framed")),
        "protocol": Key("binary", "str", one_of("binary", "compact")),
        "max_message_bytes": Key(1048576, "int", positive),
        "max_pending_calls": Key(32, "int", positive),
        "max_unread_bytes": Key(4194304, "int", positive),
        "timeout": Key(30.0, "float", positive),
        "allow": Key([], "list[str]"),
    },
    "webadmin": {
        "enabled": Key(True, "bool"),
        "port": Key(8001, "int", port),
        "bind": Key("127.0.0.1", "str"),
        "admins": Key([], "list[str]"),
        "session_ttl": Key(3600, "int", positive),
        "metrics_token": Key("", "str"),
        "stats_interval": Key(5.0, "float", positive),
    },
    "irc": {
        "enabled": Key(False, "bool"),
        "server": Key("127.0.0.1", "str"),
        "port": Key(6667, "int", port),
        "nick": Key("presenced", "str", non_empty),
        "channels": Key(["#presenced"], "list[str]", irc_channels),
        "cat_port": Key(12345, "int", port),
        "cat_bind": Key("127.0.0.1", "str"),
        "command_prefix": Key("?", "str", non_empty),
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
        "handler_timeout": Key(10.0, "float", positive),
        "handler_max_running": Key(4, "int", positive),
        "handler_max_output_bytes": Key(65536, "int", positive),
        "max_reply_lines": Key(5, "int", positive),
        "http_token": Key("", "str"),
        "hooks": Key([], "list[table]", irc_hooks),
    },
}

_KIND_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
    "list[table]": lambda v: isinstance(v, list) and all(isinstance(i, dict) for i in v),
}


class Section:
    """The keys of one ``[section]`` as attributes: ``config.xmpp.port``."""

    def __init__(self, name: str, values: dict[str, Any]):
        self._name = name
        self.__dict__.update(values)

    def __repr__(self) -> str:
        keys = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return f"<Section [{self._name}] {keys}>"


class Config:
    """A validated configuration; ``path`` is the file it came from, or None for defaults."""

    def __init__(self, sections: dict[str, dict[str, Any]], path: Optional[str] = None):
        self.path = path
        self._sections = {name: Section(name, values) for name, values in sections.items()}

    def __getattr__(self, name: str) -> Section:
        try:
            return self.__dict__["_sections"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def default_domain(self) -> str:
        return self.server.domains[0]


def _coerce(section: str, name: str, key: Key, value: Any) -> Any:
    full = f"[{section}] {name}"
    if not _KIND_CHECKS[key.kind](value):
        raise ConfigError(full, f"expected {key.kind}, got {type(value).__name__} {value!r}")
    if key.kind == "float":
        value = float(value)
    if key.check is not None:
        problem = key.check(value)
        if problem:
            raise ConfigError(full, problem)
    return value


def build(raw: dict[str, Any], path: Optional[str] = None) -> Config:
    """Validate a parsed TOML document against the schema and fill in defaults."""
    sections: dict[str, dict[str, Any]] = {}
    for section, table in raw.items():
        if section not in SCHEMA:
            raise ConfigError(f"[{section}]", f"unknown section (known: {', '.join(SCHEMA)})")
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}]", "must be a table")
        for name in table:
            if name not in SCHEMA[section]:
                raise ConfigError(f"[{section}] {name}", "unknown key")
    for section, keys in SCHEMA.items():
        table = raw.get(section, {})
        sections[section] = {
            name: _coerce(section, name, key, table[name]) if name in table else _copy(key.default)
            for name, key in keys.items()
        }
    _check_together(sections)
    return Config(sections, path)


def _check_together(sections: dict[str, dict[str, Any]]) -> None:
    """Rules that involve more than one key."""
    cluster = sections["cluster"]
    if cluster["enabled"] and sections["store"]["backend"] != "redis":
        raise ConfigError("[cluster] enabled",
                          'nodes share their state through Redis: set [store] backend = "redis"')
    if cluster["redis"] and redis_urls([cluster["redis"]]):
        raise ConfigError("[cluster] redis", redis_urls([cluster["redis"]]))
    if sections["server"]["workers"] > 1:
        if not cluster["enabled"]:
            raise ConfigError("[server] workers",
                              "several workers coordinate as a cluster: set [cluster] enabled "
                              "= true (and [store] backend = \"redis\")")
        for door in ("xmpp", "comet", "thrift", "webadmin"):
            if sections[door]["enabled"] and sections[door]["port"] == 0:
                raise ConfigError(f"[{door}] port", "workers share fixed ports: 0 is not allowed "
                                  "with several workers")
    if cluster["heartbeat_interval"] >= cluster["node_timeout"]:
        raise ConfigError("[cluster] node_timeout",
                          "must be longer than heartbeat_interval, or every node looks dead")


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def load(path: Optional[str] = None, overrides: Optional[dict[str, dict[str, Any]]] = None) -> Config:
    """Read the TOML file at ``path`` (None: every default), then apply ``overrides``."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError("--config", f"file {path!r} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(path, f"not valid TOML: {e}") from None
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    return build(raw, path)

"""Configuration: one TOML file, every key declared with its type and default.

:data:`SCHEMA` is the single place that knows which keys exist: the core's sections are
declared here, each door's in its own package (``presenced/<door>/options.py``, listed in
:mod:`presenced.doors`) with the types and checks of :mod:`presenced.options`.
``config/presenced.toml`` documents the same keys for users, and a test checks that the two
agree. A user error (unknown
key, wrong type, impossible value) raises :class:`ConfigError` naming the key, which the
command-line entry points turn into a one-line message and a non-zero exit.
"""

from __future__ import annotations

import tomllib
from typing import Any, Callable, Optional

from presenced.cluster import options as cluster_options
from presenced.doors import DOORS
from presenced.muc import options as muc_options
from presenced.options import (Key, Keys, non_empty, non_negative, one_of, optional_redis_urls,
                               positive, redis_urls)


class ConfigError(Exception):
    """A configuration value a user must fix; the message names the key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config error: {key}: {problem}")


# Sections in the order config/presenced.toml documents them: the core's here, the cluster's
# and each door's from its own package (``presenced/<name>/options.py``).
SCHEMA: dict[str, Keys] = {
    "server": {
        "domains": Key(["localhost"], "list[str]", non_empty),
        "data_dir": Key("presenced-data", "str", non_empty),
        "workers": Key(1, "int", positive),
        "scram_iterations": Key(4096, "int", positive),
        "verified_password_cache": Key(100000, "int", non_negative),
        "offline_limit": Key(1000, "int", non_negative),
        "blocklist_limit": Key(1000, "int", non_negative),
        "private_storage_bytes": Key(262144, "int", non_negative),
        "max_event_bytes": Key(8192, "int", positive),
        "pubsub_nodes_per_user": Key(64, "int", non_negative),
        "pubsub_max_items": Key(64, "int", positive),
        "pubsub_item_bytes": Key(8192, "int", positive),
        "pubsub_create_kinds": Key([], "list[str]"),
        "api_tokens_max": Key(1000, "int", positive),
        "api_token_cache_seconds": Key(10.0, "float", non_negative),
        "auth_failures_per_ip": Key(20, "int", non_negative),
        "auth_failures_per_account": Key(50, "int", non_negative),
        "auth_failure_period": Key(600.0, "float", positive),
        "auth_ban_seconds": Key(900.0, "float", positive),
        "reserved_files": Key(1024, "int", non_negative),
        "log_file_bytes": Key(1000000, "int", positive),
        "log_files": Key(10, "int", positive),
        "stop_grace_period": Key(10.0, "float", non_negative),
    },
    "store": {
        "backend": Key("embedded", "str", one_of("embedded", "redis")),
        "redis": Key(["redis://127.0.0.1:6379/0"], "list[str]", redis_urls),
        "redis_timeout": Key(5.0, "float", positive),
        "redis_retries": Key(3, "int", non_negative),
        "redis_cluster": Key([], "list[str]", optional_redis_urls),
        "redis_wait_replicas": Key(0, "int", non_negative),
        "redis_sentinels": Key([], "list[str]", optional_redis_urls),
        "redis_sentinel_master": Key("mymaster", "str", non_empty),
    },
    "cluster": cluster_options.KEYS,
    "router": {
        "session_queue_bytes": Key(1048576, "int", positive),
    },
    "muc": muc_options.KEYS,
    # HTTP File Upload (presenced.uploads): slots by XMPP, files on the comet door's port.
    "upload": {
        "enabled": Key(True, "bool"),
        "url": Key("", "str"),
        "max_file_size": Key(10485760, "int", positive),
        "quota_bytes": Key(104857600, "int", non_negative),
        "max_files": Key(1000, "int", positive),
        "expire_after": Key(604800.0, "float", non_negative),
        "slot_timeout": Key(300, "int", positive),
        "put_timeout": Key(300.0, "float", positive),
        "cleanup_interval": Key(3600.0, "float", positive),
    },
    **{door.section: door.keys for door in DOORS},
}

_KIND_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
    "list[table]": lambda v: isinstance(v, list) and all(isinstance(i, dict) for i in v),
    "table[str]": lambda v: isinstance(v, dict) and all(isinstance(i, str) for i in v.values()),
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

    def sections(self) -> dict[str, dict[str, Any]]:
        """Every section's keys and values, copied: what a reload compares and merges."""
        return {name: {k: _copy(v) for k, v in section.__dict__.items() if not k.startswith("_")}
                for name, section in self._sections.items()}


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
    store = sections["store"]
    if store["redis_cluster"] and store["redis_sentinels"]:
        raise ConfigError("[store] redis_sentinels",
                          "a Redis Cluster has no Sentinel: set redis_cluster or "
                          "redis_sentinels, not both")
    cluster = sections["cluster"]
    if cluster["enabled"] and store["redis_sentinels"] and not cluster["redis"]:
        raise ConfigError("[cluster] redis",
                          "the cluster channel does not follow Sentinel fail-overs: name its "
                          "Redis here when [store] redis_sentinels is set")
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
    if cluster["heartbeat_interval"] >= cluster["node_timeout"]:
        raise ConfigError("[cluster] node_timeout",
                          "must be longer than heartbeat_interval, or every node looks dead")


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
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
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(path, f"not valid TOML: {e}") from None
        except OSError as e:
            raise ConfigError("--config", f"cannot read {path!r}: {e.strerror or e}") from None
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)
    return build(raw, path)

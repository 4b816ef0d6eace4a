"""Reloading the configuration while the server runs (SIGHUP, ``presencedctl reload``).

A renewed certificate or a changed limit must not cost every user their connection, as a
restart would. The file given with ``--config`` is read again and validated as at start-up;
a file with an error is refused as a whole (the key is logged) and the running config kept.
Keys the running server cannot change in place (what it listens on, which store and cluster
it joined, the data it was started over) keep their running values and are named in one
"needs a restart" log line, so nothing is half-applied. The others replace ``core.config``,
and the hook ``config-reloaded(old, new)`` lets doors refresh what they copied at start (the
XMPP door: its TLS certificate and stanza limits).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.logger import Logger

from presenced import config as configuration
from presenced.config import Config, ConfigError

log = Logger()

# The keys a running node takes up on reload: read on each use, or refreshed by a door's
# ``config-reloaded`` hook. Every other key was copied when the node was built (listening
# sockets, the store and cluster, limits held by long-lived objects) and waits for a restart,
# so a change is never half-applied. A door that learns to refresh a key adds it here.
LIVE_KEYS = frozenset({
    ("server", "offline_limit"),
    ("router", "session_queue_bytes"),
    ("xmpp", "certificate"), ("xmpp", "private_key"), ("xmpp", "certificate_dir"),
    ("xmpp", "require_tls"),
    ("xmpp", "allow_plain"), ("xmpp", "max_stanza_size"), ("xmpp", "auth_timeout"),
    ("xmpp", "auth_failure_delay"),
    # Read by the c2s server's apply_limits: streams opened after the reload use them.
    ("xmpp", "read_bytes_per_second"), ("xmpp", "read_burst_bytes"),
    ("xmpp", "stanzas_per_second"), ("xmpp", "stanza_burst"),
    ("xmpp", "max_pending_stanzas"), ("xmpp", "stanza_timeout"),
    ("xmpp", "max_sessions_per_user"),
    # Connection caps of every door: ListeningService reads them again (new connections).
    *((door, key) for door in ("xmpp", "comet", "thrift", "webadmin")
      for key in ("max_connections", "max_connections_per_ip")),
    ("irc", "cat_max_connections"), ("irc", "cat_max_connections_per_ip"),
    ("irc", "cat_idle_timeout"),
    # IRCBot.reconfigure: parts and joins at once.
    ("irc", "channels"), ("irc", "channel_keys"),
    # CometDoor.apply and CometSite.apply: requests and streams begun after the reload.
    ("comet", "require_token"), ("comet", "cors_origins"), ("comet", "heartbeat_interval"),
    ("comet", "poll_timeout"), ("comet", "max_buffered_bytes"), ("comet", "header_timeout"),
    ("comet", "max_request_bytes"), ("comet", "request_timeout"),
    ("comet", "websocket_max_message_bytes"), ("comet", "max_body_bytes"),
    ("comet", "websocket_idle_timeout"),
    # AdminFactory.config_reloaded: allow for new connections, the bounds for all.
    ("thrift", "allow"), ("thrift", "max_message_bytes"), ("thrift", "max_pending_calls"),
    ("thrift", "max_unread_bytes"), ("thrift", "timeout"),
    # The web admin: the scrape token is read per request, the deadline per connection.
    ("webadmin", "metrics_token"), ("webadmin", "request_timeout"),
    ("webadmin", "max_body_bytes"),
})


def needs_restart(section: str, key: str) -> bool:
    """Whether a change of ``[section] key`` only takes effect after a restart."""
    return (section, key) not in LIVE_KEYS


def merge(running: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """The config to run after a reload: ``new``'s values, except keys that need a restart,
    which keep their running values. Returns it with the keys applied and those that wait
    for a restart, each as ``[section] key``."""
    merged = new.sections()
    old = running.sections()
    applied: list[str] = []
    waiting: list[str] = []
    for section, values in merged.items():
        for key, value in values.items():
            before = old[section][key]
            if value == before:
                continue
            if needs_restart(section, key):
                values[key] = before
                waiting.append(f"[{section}] {key}")
            else:
                applied.append(f"[{section}] {key}")
    return Config(merged, new.path), applied, waiting


class ConfigReloader:
    """Re-reads ``path`` (with the command line's ``overrides``) into ``core``."""

    def __init__(self, core: Any, path: Optional[str],
                 overrides: Optional[dict[str, dict[str, Any]]] = None):
        self.core = core
        self.path = path
        self.overrides = overrides or {}

    def reload(self) -> bool:
        """Apply the file as it is now; False (and the running config kept) if it is bad."""
        try:
            new = configuration.load(self.path, self.overrides)
        except ConfigError as e:
            log.error("reload refused, running config kept: {error}", error=str(e))
            return False
        old = self.core.config
        merged, applied, waiting = merge(old, new)
        self.core.config = merged
        self.core.hooks.fire("config-reloaded", old, merged)
        log.info("config reloaded from {path}: {changed}",
                 path=self.path or "built-in defaults",
                 changed=", ".join(applied) or "no key changed")
        if waiting:
            log.warn("needs a restart: {keys} (running values kept)", keys=", ".join(waiting))
        return True

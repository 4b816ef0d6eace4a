"""A Twisted client of the admin port, for ``presencedctl``.

Commands that change what online users see (``add-friend``, ``remove-friend``, ``deluser``)
must reach the running server, which pushes roster changes and presence to online sessions at
once; writing the store behind its back would leave them stale until they reconnect. These
functions call the admin port of the server running on the configured data directory (found
in ``<data_dir>/run/ports.json``), and fire None when no server runs there (nothing recorded,
the recording process gone, or connection refused), so the caller falls back to the store.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import HostnameEndpoint
from twisted.python.failure import Failure

from presenced.config import Config
from presenced.thrift import admin
from presenced.thrift.codec import BadMessage, MessageDecoder, MessageEncoder
from thriftpy2.thrift import TApplicationException, TMessageType

CONNECT_TIMEOUT = 5
CALL_TIMEOUT = 60


class AdminCallFailed(Exception):
    """The admin port is there but the call did not succeed; the message says why."""


class AdminClientProtocol(protocol.Protocol):
    """Sends calls and matches replies by sequence id; each call fires its result or fails
    with the exception the server answered."""

    def __init__(self, config: Config):
        settings = config.thrift
        framed = settings.transport == "framed"
        self.service = admin.PresencedAdmin
        self.encoder = MessageEncoder(settings.protocol, framed)
        self.decoder = MessageDecoder(self.service, settings.protocol, framed,
                                      settings.max_message_bytes, replies=True)
        self.pending: dict[int, defer.Deferred] = {}
        self.seqid = 0

    def call(self, name: str, *args: Any) -> defer.Deferred:
        self.seqid += 1
        body = getattr(self.service, name + "_args")(*args)
        d: defer.Deferred = defer.Deferred()
        self.pending[self.seqid] = d
        self.transport.write(self.encoder.encode(name, TMessageType.CALL, self.seqid, body))
        return d

    def dataReceived(self, data: bytes) -> None:
        self.decoder.feed(data)
        try:
            while (message := self.decoder.next_message()) is not None:
                d = self.pending.pop(message.seqid, None)
                if d is not None:
                    _settle(d, message.body)
        except BadMessage as e:
            self._fail_all(AdminCallFailed(f"bad reply from the admin port: {e.reason}"))
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:
        self._fail_all(AdminCallFailed(
            "the admin port closed the connection (is this address in [thrift] allow? "
            "do [thrift] transport and protocol match the server's?)"))

    def _fail_all(self, exc: Exception) -> None:
        pending, self.pending = self.pending, {}
        for d in pending.values():
            d.errback(exc)


def _settle(d: defer.Deferred, body: Any) -> None:
    if isinstance(body, TApplicationException):
        d.errback(body)
        return
    for fid, spec in sorted(body.thrift_spec.items()):
        value = getattr(body, spec[1], None)
        if fid != 0 and value is not None:
            d.errback(value)
            return
    d.callback(getattr(body, "success", None))


def admin_address(config: Config) -> Optional[tuple[str, int]]:
    """Where the admin port of the server running on this data directory listens: the port
    it recorded in ``<data_dir>/run/ports.json``, if the process that wrote it is alive."""
    if not config.thrift.enabled:
        return None
    try:
        with open(os.path.join(config.server.data_dir, "run", "ports.json")) as f:
            ports = json.load(f)
        port, pid = int(ports["thrift"]), int(ports["ready"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _alive(pid):
        return None
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(config.thrift.bind,
                                                                       config.thrift.bind)
    return host, port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, alive
    return True


@defer.inlineCallbacks
def call_running_server(config: Config, name: str, *args: Any):
    """Fires ``name(*args)``'s result from the running server (True for a void method), or
    None when none listens.

    A declared exception (``admin.UnknownUser``...) fails the Deferred; any other failure
    after the port accepted the connection is :class:`AdminCallFailed`.
    """
    address = admin_address(config)
    if address is None:
        return None
    from twisted.internet import reactor

    endpoint = HostnameEndpoint(reactor, address[0], address[1], timeout=CONNECT_TIMEOUT)
    try:
        client = yield endpoint.connect(protocol.Factory.forProtocol(
            lambda: AdminClientProtocol(config)))
    except (error.ConnectionRefusedError, error.DNSLookupError):
        return None
    except error.ConnectError as e:
        raise AdminCallFailed(f"cannot reach the admin port {address[0]}:{address[1]}: {e}")
    try:
        d = client.call(name, *args)
        d.addTimeout(CALL_TIMEOUT, reactor)
        result = yield d
    except defer.TimeoutError:
        raise AdminCallFailed(f"no answer from the admin port in {CALL_TIMEOUT}s") from None
    except TApplicationException as e:
        raise AdminCallFailed(f"the server refused {name}: {e}") from None
    finally:
        client.transport.loseConnection()
    return result if result is not None else True


def jabber_user(user: str) -> Any:
    """``alice@example.com`` -> ``JabberUser(name="alice", server="example.com")``; a topic
    ``artist/radiohead`` -> ``JabberUser(name="artist/radiohead", server="")``."""
    name, at, server = user.rpartition("@")
    return admin.JabberUser(name=name, server=server) if at else admin.JabberUser(name=user,
                                                                                server="")


@defer.inlineCallbacks
def follow(config: Config, subscriber: str, subject: str, add: bool = True):
    """Fires True when the running server added (``add``) or removed the edge, None when
    none runs (the router may keep the graph in memory: never write behind its back)."""
    edge = admin.Subscription(subscriber=jabber_user(subscriber), subject=jabber_user(subject))
    return (yield call_running_server(
        config, "add_subscriptions" if add else "remove_subscriptions", [edge]))


@defer.inlineCallbacks
def add_friend(config: Config, a: str, b: str):
    """Fires True when the running server made them friends, None when none runs."""
    return (yield call_running_server(config, "add_friend", jabber_user(a), jabber_user(b)))


@defer.inlineCallbacks
def remove_friend(config: Config, a: str, b: str):
    """Fires True when the running server ended their friendship, None when none runs."""
    return (yield call_running_server(config, "remove_friend", jabber_user(a),
                                      jabber_user(b)))


@defer.inlineCallbacks
def remove_user(config: Config, user: str):
    """Fires True (deleted) or False (no such user) from the running server, None when none
    runs."""
    try:
        return (yield call_running_server(config, "remove_user", jabber_user(user)))
    except admin.UnknownUser:
        return False

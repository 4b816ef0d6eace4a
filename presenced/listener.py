"""Connection limits at the listener, the same for every door (docs/security.md).

Every door listens through :class:`presenced.service.ListeningService`, which wraps the door's
factory in a :class:`GuardedFactory`. Before the door's protocol is built, three caps are
checked: connections from the source address (an IPv6 address counts as its /64,
``addresses.py``), connections of the door, and for the doors the
public reaches, their connections together against the process's open-files limit less a
reserve (:class:`OpenFiles`), so a flood on one door leaves files for the admin doors, the
store, the logs and Redis. A refused connection gets the door's refusal bytes (if any) and is
closed once they are written; it is counted in ``presenced_connections_refused_total{door,reason}``
and logged at most once per ``LOG_INTERVAL`` per door. Twisted accepts a hundred connections
and more in one go during a flood, and each refusal keeps its file until a later reactor turn
writes the bytes: at most ``MAX_REFUSING`` refusals wait so in the process, and past them a
refused connection is closed at once without the bytes (the reserve stays the reserve).

An admitted connection is carried by a :class:`GuardedConnection`, the transport the door's
protocol sees. It bounds closing, which Twisted does not: a close asked for during a TLS
handshake aborts at once (what was written cannot reach a peer that never finishes the
handshake: stalled handshakes used to stay open for good), and any other close is aborted if
the peer has not taken the last bytes within ``CLOSE_GRACE`` seconds. With ``idle_timeout`` a
sweep closes connections silent for that long; with ``evict_idle`` a newcomer at a cap takes
the place of the connection silent longest (irccat: senders that connect and say nothing must
not lock out the next script).
"""

from __future__ import annotations

import gc
import resource
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import task
from twisted.internet.interfaces import (IDelayedCall, IHalfCloseableProtocol,
                                         IHandshakeListener, IProtocol, IProtocolFactory,
                                         IReactorTime, ISSLTransport)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import alsoProvides, directlyProvides, implementer, providedBy

from presenced.addresses import address_key
from presenced.flow import direct_tls_records
from presenced.memory import release_free_memory
from presenced.metrics import Metrics

log = Logger()

CLOSE_GRACE = 15.0      # seconds a closing peer has to take our last bytes (Twisted web's too)
LOG_INTERVAL = 10.0     # at most one refusal log line per door this often
TRIM_AFTER = 100        # closed connections (and more than remain open in the process)
                        # after which freed memory goes back to the OS
TRIM_INTERVAL = 60.0    # seconds between two such collections at the most: a full collection
                        # pauses the reactor (0.7 s over a bench/xmpp.py run when unpaced)
MAX_REFUSING = 16      # refused connections waiting for their refusal bytes to be written
REFUSED = "presenced_connections_refused_total"
PER_IP, DOOR_TOTAL, OPEN_FILES = "per_ip", "door_total", "open_files"

# Declarations made by _also_provides, by (declaration before, interface added): one per
# transport class and protocol kind, a handful; past the cap they are built each time.
_DECLARATIONS: dict[tuple, Any] = {}
MAX_DECLARATIONS = 64
HTTP_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Content-Length: 32\r\nRetry-After: 10\r\nConnection: close\r\n\r\n"
                b'{"error":"too many connections"}')


@dataclass(frozen=True)
class ConnectionLimits:
    """What one door admits.

    ``public``: the door's connections count against :class:`OpenFiles` (the admin doors are
    bounded by their own small caps, which the reserve covers). ``refusal``: bytes written to a
    refused connection before it is closed (none on a direct-TLS port).
    """

    max_connections: int
    max_per_ip: int
    public: bool = True
    refusal: bytes = b""
    idle_timeout: float = 0.0
    evict_idle: bool = False


def _collect_and_trim() -> None:
    """Closed TLS connections sit in reference cycles: collect them, then give the pages back."""
    gc.collect()
    release_free_memory()


class MemoryTrim:
    """Runs :func:`_collect_and_trim` when asked, but at most once per ``TRIM_INTERVAL``: a
    request inside the interval is served at its end (the memory still goes back after an
    attack, a storm of reconnects does not pause the reactor again and again)."""

    def __init__(self, clock: IReactorTime):
        self.clock = clock
        self.last: Optional[float] = None
        self.pending: Optional[Any] = None

    def request(self) -> None:
        if self.pending is not None and self.pending.active():
            return
        now = self.clock.seconds()
        delay = 0.0 if self.last is None else max(0.0, self.last + TRIM_INTERVAL - now)
        self.pending = self.clock.callLater(delay, self._run)

    def _run(self) -> None:
        self.pending = None
        self.last = self.clock.seconds()
        _collect_and_trim()


class OpenFiles:
    """The connections the public doors may hold together: the process's open-files limit
    less ``reserved`` (at most a quarter of the limit), so accepting never fails with EMFILE
    and the admin doors still answer during a flood."""

    def __init__(self, limit: int):
        self.limit = limit
        self.open = 0
        self.refusing = 0          # :class:`Refused` connections not yet closed
        self._trim: Optional[MemoryTrim] = None

    def trim(self, clock: IReactorTime) -> MemoryTrim:
        """The process's one :class:`MemoryTrim` (memory is the process's, like the files)."""
        if self._trim is None:
            self._trim = MemoryTrim(clock)
        return self._trim

    @classmethod
    def for_process(cls, reserved: int) -> "OpenFiles":
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            soft = 1 << 20
        return cls(soft - min(reserved, soft // 4))


class RefusalLog:
    """Counts refusals; logs the first of a burst at once, then a summary per interval."""

    def __init__(self, door: str, metrics: Metrics, clock: IReactorTime):
        self.door = door
        self.metrics = metrics
        self.clock = clock
        self.pending: Counter[str] = Counter()
        self.timer: Optional[IDelayedCall] = None

    def record(self, reason: str, host: str) -> None:
        self.metrics.inc(REFUSED, door=self.door, reason=reason)
        if self.timer is not None:
            self.pending[reason] += 1
            return
        log.warn("{door}: refusing connections ({reason}), first from {host}",
                 door=self.door, reason=reason, host=host)
        self.timer = self.clock.callLater(LOG_INTERVAL, self.flush)

    def flush(self) -> None:
        self.timer = None
        if self.pending:
            log.warn("{door}: {count} more connections refused in {seconds:.0f} s ({reasons})",
                     door=self.door, count=sum(self.pending.values()), seconds=LOG_INTERVAL,
                     reasons=", ".join(f"{r}: {n}" for r, n in sorted(self.pending.items())))
            self.pending.clear()
            self.timer = self.clock.callLater(LOG_INTERVAL, self.flush)


class Refused(Protocol):
    """Says why (the door's refusal bytes) and closes; counted in ``files.refusing`` until
    the file is closed."""

    def __init__(self, message: bytes, files: OpenFiles):
        self.message = message
        self.files = files
        files.refusing += 1

    def connectionMade(self) -> None:
        self.transport.write(self.message)
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.files.refusing -= 1


class GuardedFactory(Factory):
    """Admits connections within the caps of ``limits`` and carries each in a
    :class:`GuardedConnection`; ``tls`` (a ``TLSMemoryBIOFactory``) for a direct-TLS port,
    whose handshake then runs inside the caps."""

    noisy = False

    def __init__(self, door: str, wrapped: IProtocolFactory, limits: ConnectionLimits,
                 files: OpenFiles, metrics: Metrics, clock: IReactorTime, tls: Any = None):
        self.door = door
        self.wrapped = wrapped
        self.limits = limits
        self.files = files
        self.clock = clock
        self.tls = tls
        self.connections: set[GuardedConnection] = set()
        self.per_ip: Counter[str] = Counter()
        self.refusals = RefusalLog(door, metrics, clock)
        self.closed_since_trim = 0
        self.trim = files.trim(clock)
        self.sweep = task.LoopingCall(self.close_idle)
        self.sweep.clock = clock
        self.listening = False

    def startFactory(self) -> None:
        self.wrapped.doStart()
        self.listening = True
        self._start_sweep()

    def stopFactory(self) -> None:
        self.listening = False
        if self.sweep.running:
            self.sweep.stop()
        self.wrapped.doStop()

    def _start_sweep(self) -> None:
        if self.limits.idle_timeout > 0:
            self.sweep.start(min(1.0, self.limits.idle_timeout / 2), now=False)

    def apply(self, limits: ConnectionLimits) -> None:
        """New caps (a reload): new connections are checked against them; connections
        already open are never closed for a lowered cap, only counted."""
        idle_changed = limits.idle_timeout != self.limits.idle_timeout
        self.limits = limits
        if idle_changed and self.listening:
            if self.sweep.running:
                self.sweep.stop()
            self._start_sweep()

    def buildProtocol(self, addr: Any) -> Optional[IProtocol]:
        host = address_key(getattr(addr, "host", ""))
        reason = self.refusal_reason(host)
        if reason is not None and not (self.limits.evict_idle and self.make_room(host, reason)):
            self.refusals.record(reason, host)
            if self.tls is None and self.limits.refusal and self.files.refusing < MAX_REFUSING:
                return Refused(self.limits.refusal, self.files)
            return None
        inner = self.wrapped.buildProtocol(addr)
        if inner is None:
            return None
        connection = GuardedConnection(self, inner, host, handshaking=self.tls is not None)
        self.connections.add(connection)
        self.per_ip[host] += 1
        if self.limits.public:
            self.files.open += 1
        if self.tls is not None:
            return self.tls.protocol(self.tls, connection)
        return connection

    def refusal_reason(self, host: str) -> Optional[str]:
        """Which cap a new connection from ``host`` (an :func:`address_key`) would exceed,
        or None."""
        if self.per_ip[host] >= self.limits.max_per_ip:
            return PER_IP
        if len(self.connections) >= self.limits.max_connections:
            return DOOR_TOTAL
        if self.limits.public and self.files.open >= self.files.limit:
            return OPEN_FILES
        return None

    def make_room(self, host: str, reason: str) -> bool:
        """Close the connection (of ``host`` for the per-IP cap) silent longest."""
        if reason == OPEN_FILES:
            return False
        candidates = [c for c in self.connections if reason == DOOR_TOTAL or c.host == host]
        if not candidates:
            return False
        victim = min(candidates, key=lambda c: c.last_read)
        self.release(victim)
        victim.abortConnection()
        return True

    def release(self, connection: "GuardedConnection") -> None:
        """Uncount a connection (at once when evicted, not a reactor turn later)."""
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        self.per_ip[connection.host] -= 1
        if not self.per_ip[connection.host]:
            del self.per_ip[connection.host]
        if self.limits.public:
            self.files.open -= 1
        self.closed_since_trim += 1
        if self.closed_since_trim >= max(TRIM_AFTER, len(self.connections), self.files.open):
            self.closed_since_trim = 0
            self.trim.request()

    def close_idle(self) -> None:
        """Close the connections that have sent nothing for ``idle_timeout``."""
        horizon = self.clock.seconds() - self.limits.idle_timeout
        for connection in [c for c in self.connections if c.last_read < horizon]:
            connection.loseConnection()


def _also_provides(connection: Any, interface: Any) -> None:
    """``alsoProvides(connection, interface)``, sharing the declaration it makes between
    connections that provided the same before: zope builds a new one per call (about 10 us,
    at every accept and every STARTTLS), and a shared one is what zope's own
    ``directlyProvides`` cache hands out."""
    key = (connection.__provides__, interface)
    declaration = _DECLARATIONS.get(key)
    if declaration is not None:
        connection.__provides__ = declaration
        return
    alsoProvides(connection, interface)
    if len(_DECLARATIONS) < MAX_DECLARATIONS:
        _DECLARATIONS[key] = connection.__provides__


@implementer(IProtocol, IHandshakeListener)
class GuardedConnection:
    """One admitted connection: the door's protocol above it, the TCP (or TLS) transport
    below. It forwards everything, uncounts itself when lost and bounds closing.

    Writes are on every stanza's path and need nothing of the wrapper: ``write`` and
    ``writeSequence`` are the transport's own methods, bound when the connection is made
    (TLS started later goes through the same transport object)."""

    __slots__ = ("factory", "wrapped", "transport", "host", "handshaking", "last_read",
                 "closer", "write", "writeSequence", "__provides__")

    def __init__(self, factory: GuardedFactory, wrapped: IProtocol, host: str,
                 handshaking: bool = False):
        self.factory = factory
        self.wrapped = wrapped
        self.transport: Any = None
        self.host = host
        self.handshaking = handshaking
        self.last_read = factory.clock.seconds()
        self.closer: Optional[IDelayedCall] = None

    @property
    def protocol(self) -> IProtocol:
        """The protocol carried; assignable, as on a TCP transport (comet hands a
        connection over to its twisted.web site this way)."""
        return self.wrapped

    @protocol.setter
    def protocol(self, value: IProtocol) -> None:
        self.wrapped = value

    # --- IProtocol, from below --------------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.write = transport.write
        self.writeSequence = transport.writeSequence
        directlyProvides(self, providedBy(transport))
        if IHalfCloseableProtocol.providedBy(self.wrapped):
            _also_provides(self, IHalfCloseableProtocol)
        self.wrapped.makeConnection(self)

    def dataReceived(self, data: bytes) -> None:
        self.last_read = self.factory.clock.seconds()
        self.wrapped.dataReceived(data)

    def readConnectionLost(self) -> None:
        self.wrapped.readConnectionLost()

    def writeConnectionLost(self) -> None:
        self.wrapped.writeConnectionLost()

    def handshakeCompleted(self) -> None:
        self.handshaking = False
        if IHandshakeListener.providedBy(self.wrapped):
            self.wrapped.handshakeCompleted()

    def connectionLost(self, reason: Any) -> None:
        closer, self.closer = self.closer, None
        if closer is not None and closer.active():
            closer.cancel()
        self.factory.release(self)
        self.wrapped.connectionLost(reason)

    # --- the transport, from above ------------------------------------------------------------

    def loseConnection(self) -> None:
        if self.transport is None:
            return
        if self.handshaking:
            self.transport.abortConnection()
            return
        # A closing connection produces nothing more. Left registered, a producer paused
        # while the peer's buffer was full (flow.WriteBudget) is resumed by Twisted once the
        # buffer drains, instead of the connection being closed: it stayed open until the
        # grace below ran out.
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()
        self.transport.loseConnection()
        if self.closer is None:
            self.closer = self.factory.clock.callLater(CLOSE_GRACE, self.abortConnection)

    def abortConnection(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def startTLS(self, context: Any, normal: bool = True) -> None:
        self.transport.startTLS(context, normal)
        direct_tls_records(self.transport)
        self.handshaking = True
        _also_provides(self, ISSLTransport)

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # zope's __provides__ before makeConnection, copy, pickle
            raise AttributeError(name)
        return getattr(self.transport, name)

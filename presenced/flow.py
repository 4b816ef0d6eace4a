"""Bounded output for a TCP peer that may stop reading.

Twisted's transports buffer every write in memory. A door protocol wraps its transport in a
:class:`WriteBudget`: the transport tells it (as a push producer) when the kernel buffer is
full; while paused, bytes written are counted, and past ``limit`` the connection is aborted.
The policy is *disconnect*: an event stream with a hole in it is worse than a reconnect.

Input is paced the other way round: a :class:`ReadGate` pauses reading from a connection
(``transport.pauseProducing``) while its :class:`TokenBucket` is in debt or while the output
it caused waits for the peer, so a client can make the server neither buffer nor work
without bound. That output includes what it sends to others: while a door handles a
client's stanza it names that client's gate in :data:`SENDER`, and a write to a recipient
whose queue is full holds the sender too ("recipients"), until that recipient reads again
or ``RECIPIENT_WAIT`` has passed (a recipient that never reads must not stall its senders
for good: it is cut off at its own limit).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITransport
from twisted.logger import Logger
from zope.interface import implementer


_log = Logger()


class SocketWriter:
    """``transport.write`` that hands bytes to the kernel at once when nothing is queued.

    Twisted queues every write and asks epoll to report the socket writable, then sends from
    the next reactor iteration and deregisters again: three system calls for each event a
    stream receives, two of them ``epoll_ctl``. A fan-out writes one frame to each of
    thousands of idle sockets whose kernel buffers are empty, so the frame is sent directly
    (one ``send``) and only what the kernel does not take is queued with Twisted as before,
    which keeps producers, flow control and errors its business. Used for plain TCP only
    (under TLS the bytes must pass the TLS layer: Twisted's write is used)."""

    __slots__ = ("tcp", "fallback")

    def __init__(self, transport: ITransport):
        self.fallback = transport.write
        raw = getattr(transport, "transport", transport)  # under listener.GuardedConnection
        self.tcp = raw if _plain_tcp(raw) else None

    def __call__(self, data: bytes) -> None:
        raw = self.tcp
        if raw is None or raw.TLS:
            self.fallback(data)
        else:
            send_now(raw, data, self.fallback)


def send_now(raw: Any, data: bytes, queue: Callable[[bytes], None]) -> None:
    """``data`` to the socket of the TCP connection ``raw`` at once when Twisted holds none
    of its bytes; what the kernel does not take (or all, when bytes wait) goes to ``queue``
    (Twisted's write), so the order stays."""
    if (raw._tempDataBuffer or raw.dataBuffer or not raw.connected or raw.disconnecting
            or raw._writeDisconnected):
        queue(data)
        return
    try:
        sent = raw.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:  # the connection is failing: Twisted finds out and reports it
        queue(data)
        return
    if sent < len(data):
        queue(data[sent:])


class TLSRecordWriter:
    """What Twisted's TLS layer writes its records to, sending them at once like
    :class:`SocketWriter` does plain bytes: a STARTTLS login makes about nine writes (the
    handshake, tickets, features, SASL, bind), each otherwise an ``epoll_ctl`` pair and a
    reactor iteration. ``bypass`` is the TLS layer's own transport (Twisted's ``_BypassTLS``),
    which everything else still goes to."""

    def __init__(self, bypass: Any, raw: Any):
        self._bypass = bypass
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bypass, name)

    def write(self, data: bytes) -> None:
        send_now(self._raw, data, self._bypass.write)


def direct_tls_records(raw: object) -> None:
    """Once ``raw`` (a TCP connection; anything else is left alone) has started TLS, its
    records go through a :class:`TLSRecordWriter`."""
    from twisted.internet import tcp

    if isinstance(raw, tcp.Connection) and raw.TLS:
        tls = raw.protocol  # Twisted's TLS layer, now between the stream and the socket
        tls.transport = TLSRecordWriter(tls.transport, raw)


def _plain_tcp(raw: object) -> bool:
    from twisted.internet import tcp

    return isinstance(raw, tcp.Connection) and not getattr(raw, "TLS", False)


class TurnBatch:
    """Frames for many connections gathered during one reactor turn, each connection's sent
    with one write when the turn's work is done (a call at the start of the next iteration,
    before it polls again).

    A fan-out that handles several events in one turn (16 publishers' requests read
    together) otherwise makes one ``send`` per event per stream; with this it makes one per
    stream. Only fan-outs wait: the first connection an event reaches is written at once
    (an event for one stream goes out as before, without a timed call per turn), the others
    at the end of the turn. Every write of a connection that uses a batch must go through it
    (``write`` for an event's frame, ``write_now`` for what must go out in order at once: a
    heartbeat, the last chunk), so nothing overtakes what is queued.

    A connection's frames wait on its budget (``WriteBudget.turn_queued``) and the turn keeps a
    list of the budgets that have some: a fan-out to thousands of streams appends to a list
    instead of filling (and growing, every turn) a dictionary of lists."""

    __slots__ = ("clock", "pending", "call", "event")

    def __init__(self, clock: IReactorTime):
        self.clock = clock
        self.pending: list[WriteBudget] = []
        self.call: Optional[IDelayedCall] = None
        self.event: object = None     # the event whose fan-out is under way

    def write(self, budget: "WriteBudget", data: bytes, event: object) -> None:
        """``data``, the frame of ``event``, for ``budget``'s connection."""
        if event is not self.event:
            self.event = event
            self.write_now(budget, data)
            return
        queued = budget.turn_queued
        if queued is None:
            budget.turn_queued = data
            self.pending.append(budget)
            if self.call is None:
                self.call = self.clock.callLater(0, self.flush)
        elif type(queued) is bytes:   # a second frame this turn: appended from now on
            budget.turn_queued = bytearray(queued) + data
        else:
            queued += data

    def write_now(self, budget: "WriteBudget", data: bytes) -> None:
        """Write ``data`` after what is queued for ``budget``, at once."""
        queued = budget.turn_queued
        if queued is not None:
            budget.turn_queued = None  # still listed in ``pending``: the flush passes it by
            data = bytes(queued) + data
        budget.write(data)

    def flush(self) -> None:
        self.call = None
        pending, self.pending = self.pending, []
        for budget in pending:
            queued = budget.turn_queued
            if queued is not None:
                budget.turn_queued = None
                budget.write(queued if type(queued) is bytes else bytes(queued))


class ReadBatch:
    """Writes made while one client's read is handled, sent per connection when the read
    is done: one ``send`` per recipient per read instead of one per stanza.

    A client writes its messages in bursts (a read carries ten to its partner) and each
    ``send`` on loopback costs more than handling the stanza did. The door opens the batch
    around a read (``open``/``close``, nested reads count); a :class:`WriteBudget` made with
    ``coalesce`` queues its writes while one is open and :meth:`close` sends each queue as
    one write, in the order the connections were first written. Writes made outside a read
    (store answers, timers, other doors) go out at once, as before. Only byte streams
    coalesce: a framing that sends one message per element (RFC 7395) must not."""

    __slots__ = ("depth", "pending")

    def __init__(self) -> None:
        self.depth = 0
        self.pending: list[WriteBudget] = []

    def open(self) -> None:
        self.depth += 1

    def close(self) -> None:
        self.depth -= 1
        if self.depth or not self.pending:
            return
        pending, self.pending = self.pending, []
        for budget in pending:
            try:
                budget.flush()
            except Exception:  # one connection's failure must not keep the others' bytes
                _log.failure("writing a read's output to {budget!r}", budget=budget)


READS = ReadBatch()

RECIPIENT_WAIT = 1.0  # seconds a sender is held at most for a recipient that does not read


class Sender:
    """The gate of the client whose input is being handled now, or None (the reactor runs
    one handler at a time; a door sets it around a stanza's synchronous handling)."""

    __slots__ = ("gate",)

    def __init__(self) -> None:
        self.gate: Optional["ReadGate"] = None


SENDER = Sender()


@implementer(IPushProducer)
class WriteBudget:
    """Counts bytes queued while the peer is not reading; aborts past ``limit``. With a
    ``gate``, reading from the peer stops meanwhile: a client that does not take its replies
    gets no more work done for it."""

    __slots__ = ("transport", "limit", "pending", "paused", "exceeded", "gate", "senders",
                 "_write", "coalesce", "read_queued", "turn_queued")

    def __init__(self, transport: ITransport, limit: int, gate: Optional["ReadGate"] = None,
                 direct: bool = False, coalesce: bool = False):
        """``direct``: write through a :class:`SocketWriter` (a door fanning events out to
        many idle sockets). ``coalesce``: writes made during a read wait for its end
        (:class:`ReadBatch`); call :meth:`flush` before closing the connection."""
        self.transport = transport
        self._write = SocketWriter(transport) if direct else transport.write
        self.coalesce = coalesce
        self.read_queued: Optional[list[bytes]] = None  # written during this read, not sent
        self.limit = limit
        self.pending = 0
        self.paused = False
        self.exceeded = False
        self.gate = gate
        self.senders: set[ReadGate] = set()  # held while this peer is not reading
        self.turn_queued: Optional[bytes | bytearray] = None  # frames waiting in a TurnBatch
        transport.registerProducer(self, True)

    def write(self, data: bytes) -> bool:
        """Write ``data``; False (and the connection aborted) once the budget is spent."""
        if self.exceeded:
            return False
        if self.paused:
            self.pending += len(data)
            if self.pending > self.limit:
                self.exceeded = True
                self._release_senders()
                self.transport.abortConnection()
                return False
            sender = SENDER.gate
            if sender is not None and sender is not self.gate:
                sender.hold_for("recipients", RECIPIENT_WAIT)
                self.senders.add(sender)
        if self.coalesce and READS.depth:
            queued = self.read_queued
            if queued is None:
                self.read_queued = [data]
                READS.pending.append(self)
            else:
                queued.append(data)
            return True
        self._write(data)
        return True

    def flush(self) -> None:
        """Send what this read queued (nothing once the connection was aborted)."""
        queued, self.read_queued = self.read_queued, None
        if queued and not self.exceeded:
            self._write(queued[0] if len(queued) == 1 else b"".join(queued))

    def pauseProducing(self) -> None:
        self.paused = True
        if self.gate is not None:
            self.gate.hold("output")

    def resumeProducing(self) -> None:
        self.paused = False
        self.pending = 0
        if self.gate is not None:
            self.gate.release("output")
        self._release_senders()

    def stopProducing(self) -> None:
        self.paused = True
        self._release_senders()

    def _release_senders(self) -> None:
        senders, self.senders = self.senders, set()
        for sender in senders:
            sender.release("recipients")


class TokenBucket:
    """A rate with a burst: ``take`` spends tokens, which come back at ``rate`` per second up
    to ``burst``. A negative balance is a debt the caller pays by waiting (``wait``)."""

    __slots__ = ("rate", "burst", "tokens", "stamp", "clock")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.clock = clock
        self.stamp = clock()

    def take(self, amount: float) -> float:
        """Spend ``amount``; return the balance left (negative: in debt)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate) - amount
        self.stamp = now
        return self.tokens

    def wait(self) -> float:
        """Seconds until the balance is back to zero."""
        return max(0.0, -self.tokens / self.rate)


class ReadGate:
    """Stops reading from a transport while any reason holds (a rate debt, replies the peer
    has not taken, work in progress), and reads again when none does. Nothing is buffered:
    the kernel's receive window fills and the peer's sends block, which is the point.

    Every connection has one and most never hold: the reasons are a shared empty frozenset
    and the timers None until the first hold (an empty set and dict were 280 bytes of every
    idle session)."""

    __slots__ = ("transport", "holds", "timers", "reactor")

    def __init__(self, transport: IPushProducer, clock: Optional[IReactorTime] = None):
        self.transport: Optional[IPushProducer] = transport
        self.holds: frozenset[str] = _NO_HOLDS
        self.timers: Optional[dict[str, IDelayedCall]] = None
        self.reactor = clock if clock is not None else _reactor()

    def hold(self, reason: str) -> None:
        if not self.holds and self.transport is not None:
            self.transport.pauseProducing()
        self.holds = self.holds | {reason}

    def release(self, reason: str) -> None:
        if reason not in self.holds:
            return
        self.holds = self.holds - {reason}
        timer = self.timers.pop(reason, None) if self.timers else None
        if timer is not None and timer.active():
            timer.cancel()
        if not self.holds and self.transport is not None:
            self.transport.resumeProducing()

    def hold_for(self, reason: str, seconds: float) -> None:
        """Hold for ``seconds`` (a rate debt being paid), unless already held for it."""
        if reason in self.holds:
            return
        self.hold(reason)
        if self.timers is None:
            self.timers = {}
        self.timers[reason] = self.reactor.callLater(seconds, self.release, reason)

    def close(self) -> None:
        """The connection is gone: cancel the timers, touch the transport no more."""
        self.transport = None
        for timer in (self.timers or {}).values():
            if timer.active():
                timer.cancel()
        self.timers = None
        self.holds = _NO_HOLDS


_NO_HOLDS: frozenset[str] = frozenset()


def _reactor() -> IReactorTime:
    from twisted.internet import reactor

    return reactor  # type: ignore[return-value]

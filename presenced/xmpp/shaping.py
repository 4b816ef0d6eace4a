"""Flood control of one client stream: read pacing, stanza rate, work in flight.

Like ejabberd's ``c2s_shaper`` and Prosody's ``limits``, a connection is read at a bounded
byte rate; past it the server stops reading (the client's own sends block), it never buffers.
Reading also stops while the stream's replies wait for the client to read them (its
:class:`~presenced.flow.WriteBudget` is paused) and while more than ``max_pending_stanzas`` of
its stanzas are still being handled (store lookups, offline messages being written): what a
client can make the server hold is bounded by what one read brings. A client that pipelines
far past the stanza rate anyway is closed with ``policy-violation``.

The shaper sits on every stanza's path, so within its limits a client costs it a counter:
each read settles the stanzas since the last one with the bucket (one clock reading) and
learns how many more the bucket holds for sure (its allowance); a stanza within the
allowance is counted and passes, and only past it is the bucket asked stanza by stanza.
Tokens only grow between settlements, so this admits nothing the bucket would refuse.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from presenced.flow import ReadGate, TokenBucket

if TYPE_CHECKING:
    from presenced.xmpp.stream import C2SStream


@dataclass(frozen=True)
class FloodLimits:
    """The ``[xmpp]`` flood keys, read once per node."""

    read_rate: float
    read_burst: int
    stanza_rate: float
    stanza_burst: int
    max_pending: int
    stanza_timeout: float

    @classmethod
    def from_config(cls, xmpp: Any) -> "FloodLimits":
        return cls(xmpp.read_bytes_per_second, xmpp.read_burst_bytes, xmpp.stanzas_per_second,
                   xmpp.stanza_burst, xmpp.max_pending_stanzas, xmpp.stanza_timeout)


class StreamShaper:
    """The flood state of one stream; the stream reports reads, stanzas and work to it."""

    __slots__ = ("stream", "limits", "gate", "bytes", "stanzas", "pending", "partial_since",
                 "finished", "allowance", "unbilled")

    def __init__(self, stream: "C2SStream", limits: FloodLimits,
                 clock: Optional[IReactorTime] = None):
        self.stream = stream
        self.limits = limits
        self.gate = ReadGate(stream.transport, clock)
        now = time.monotonic if clock is None else clock.seconds
        self.bytes = TokenBucket(limits.read_rate, limits.read_burst, now)
        self.stanzas = TokenBucket(limits.stanza_rate, limits.stanza_burst, now)
        self.pending = 0
        self.partial_since: Optional[float] = None  # when the unfinished stanza began
        self.finished = False  # a stanza was finished since the last read
        self.allowance = limits.stanza_burst  # stanzas the bucket held at the last settling
        self.unbilled = 0  # stanzas passed within the allowance, not yet taken from it

    def read(self, size: int, partial: bool) -> None:
        """``size`` bytes were parsed; ``partial``: they ended inside a stanza."""
        if self.bytes.take(size) < 0:
            self.gate.hold_for("bytes", self.bytes.wait())
        self._settle()
        if not partial:
            self.partial_since = None
        elif self.partial_since is None or self.finished:
            self.partial_since = time.monotonic()
        self.finished = False

    def stanza(self) -> bool:
        """One stanza arrived. False: the client is so far over the rate that it was closed."""
        self.finished = True
        if self.unbilled < self.allowance:
            self.unbilled += 1
            return True
        self._settle()
        balance = self.stanzas.take(1)
        if balance >= 0:
            return True
        if balance < -self.limits.stanza_burst:
            self.stream.stream_error("policy-violation", "too many stanzas")
            return False
        self.gate.hold_for("stanzas", self.stanzas.wait())
        return True

    def _settle(self) -> None:
        """Take the stanzas passed within the allowance from the bucket; the new allowance
        is what it holds now (none while in debt)."""
        balance = self.stanzas.take(self.unbilled)
        self.unbilled = 0
        self.allowance = int(balance) if balance > 0 else 0

    def track(self, work: defer.Deferred) -> None:
        """A stanza's handling goes on: count it until ``work`` fires."""
        self.pending += 1
        if self.pending > self.limits.max_pending:
            self.gate.hold("work")
        work.addBoth(self._done)

    def _done(self, result: object) -> object:
        self.pending -= 1
        if self.pending <= self.limits.max_pending // 2:
            self.gate.release("work")
        return result

    def stanza_overdue(self, now: float) -> bool:
        """A stanza was begun more than ``stanza_timeout`` seconds ago and is not finished."""
        since = self.partial_since
        return since is not None and now - since > self.limits.stanza_timeout

    def close(self) -> None:
        self.gate.close()


class TooManySessions(ValueError):
    """The account has ``max_sessions_per_user`` resources bound here already (the bind
    is answered ``resource-constraint``, RFC 6120 7.6.2.1)."""

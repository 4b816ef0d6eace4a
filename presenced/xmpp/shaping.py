"""Flood control of one client stream: read pacing, stanza rate, work in flight.

Like ejabberd's ``c2s_shaper`` and Prosody's ``limits``, a connection is read at a bounded
byte rate; past it the server stops reading (the client's own sends block), it never buffers.
Reading also stops while the stream's replies wait for the client to read them (its
:class:`~presenced.flow.WriteBudget` is paused) and while more than ``max_pending_stanzas`` of
its stanzas are still being handled (store lookups, offline messages being written): what a
client can make the server hold is bounded by what one read brings. A client that pipelines
far past the stanza rate anyway is closed with ``policy-violation``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet import defer

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
                 "finished")

    def __init__(self, stream: "C2SStream", limits: FloodLimits):
        self.stream = stream
        self.limits = limits
        self.gate = ReadGate(stream.transport)
        self.bytes = TokenBucket(limits.read_rate, limits.read_burst)
        self.stanzas = TokenBucket(limits.stanza_rate, limits.stanza_burst)
        self.pending = 0
        self.partial_since: Optional[float] = None  # when the unfinished stanza began
        self.finished = False  # a stanza was finished since the last read

    def read(self, size: int, partial: bool) -> None:
        """``size`` bytes were parsed; ``partial``: they ended inside a stanza."""
        if self.bytes.take(size) < 0:
            self.gate.hold_for("bytes", self.bytes.wait())
        if not partial:
            self.partial_since = None
        elif self.partial_since is None or self.finished:
            self.partial_since = time.monotonic()
        self.finished = False

    def stanza(self) -> bool:
        """One stanza arrived. False: the client is so far over the rate that it was closed."""
        self.finished = True
        balance = self.stanzas.take(1)
        if balance >= 0:
            return True
        if balance < -self.limits.stanza_burst:
            self.stream.stream_error("policy-violation", "too many stanzas")
            return False
        self.gate.hold_for("stanzas", self.stanzas.wait())
        return True

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

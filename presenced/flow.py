"""Bounded output for a TCP peer that may stop reading.

Twisted's transports buffer every write in memory. A door protocol wraps its transport in a
:class:`WriteBudget`: the transport tells it (as a push producer) when the kernel buffer is
full; while paused, bytes written are counted, and past ``limit`` the connection is aborted.
The policy is *disconnect*: an event stream with a hole in it is worse than a reconnect.
"""

from __future__ import annotations

from twisted.internet.interfaces import IPushProducer, ITransport
from zope.interface import implementer


@implementer(IPushProducer)
class WriteBudget:
    """Counts bytes queued while the peer is not reading; aborts past ``limit``."""

    __slots__ = ("transport", "limit", "pending", "paused", "exceeded")

    def __init__(self, transport: ITransport, limit: int):
        self.transport = transport
        self.limit = limit
        self.pending = 0
        self.paused = False
        self.exceeded = False
        transport.registerProducer(self, True)

    def write(self, data: bytes) -> bool:
        """Write ``data``; False (and the connection aborted) once the budget is spent."""
        if self.exceeded:
            return False
        if self.paused:
            self.pending += len(data)
            if self.pending > self.limit:
                self.exceeded = True
                self.transport.abortConnection()
                return False
        self.transport.write(data)
        return True

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.pending = 0

    def stopProducing(self) -> None:
        self.paused = True

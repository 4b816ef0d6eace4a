"""What the overview and ``/metrics`` read besides plain counters: rates, store latency, and
sessions per front door.

Each is cheap at scrape time: rates and the store probe are sampled every
``[webadmin] stats_interval`` seconds, and sessions are counted as they log in and out (a
router listener), never by walking a million sessions per request.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Iterable, Optional

from twisted.internet import defer
from twisted.logger import Logger

from presenced.router import ISession, SubscriptionRouter
from presenced.store import IRosterStore


class EventRates:
    """Events sent and deliveries per second over the last sampling interval."""

    def __init__(self, router: SubscriptionRouter, clock: Callable[[], float] = time.monotonic):
        self.router = router
        self.clock = clock
        self._last = (clock(), router.events_sent, router.deliveries)
        self.events_per_second = 0.0
        self.deliveries_per_second = 0.0

    def sample(self) -> None:
        now, sent, delivered = self.clock(), self.router.events_sent, self.router.deliveries
        then, sent_before, delivered_before = self._last
        elapsed = now - then
        if elapsed > 0:
            self.events_per_second = (sent - sent_before) / elapsed
            self.deliveries_per_second = (delivered - delivered_before) / elapsed
        self._last = (now, sent, delivered)


class StoreProbe:
    """Times one cheap store request (``count_users``) per interval.

    ``latency`` is the last round trip, or how long the one in flight has taken so far when
    that is longer: a hung store shows as growing latency rather than a stale good figure.
    """

    log = Logger()

    def __init__(self, store: IRosterStore, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.clock = clock
        self.last_latency: Optional[float] = None
        self.accounts: Optional[int] = None
        self.failures = 0
        self._started: Optional[float] = None

    @property
    def latency(self) -> Optional[float]:
        if self._started is not None:
            running = self.clock() - self._started
            if self.last_latency is None or running > self.last_latency:
                return running
        return self.last_latency

    def sample(self) -> Optional[defer.Deferred]:
        """Start a probe unless one is still in flight."""
        if self._started is not None:
            return None
        self._started = self.clock()
        d = defer.maybeDeferred(self.store.count_users)
        d.addCallbacks(self._done, self._failed)
        return d

    def _done(self, accounts: int) -> None:
        assert self._started is not None
        self.last_latency = self.clock() - self._started
        self.accounts = accounts
        self._started = None

    def _failed(self, failure) -> None:
        self.failures += 1
        self._started = None
        self.log.warn("store probe failed: {error}", error=failure.getErrorMessage())


class SessionCensus:
    """Online sessions per front door (``ISession.protocol``), kept by router listeners."""

    def __init__(self, router: SubscriptionRouter, expected: Iterable[str] = (),
                 on_new_protocol: Callable[[str], None] = lambda protocol: None):
        self.counts: Counter[str] = Counter({protocol: 0 for protocol in expected})
        self.counts.update(s.protocol for s in router.all_sessions())
        self.on_new_protocol = on_new_protocol
        for protocol in self.counts:
            on_new_protocol(protocol)
        router.login_listeners.append(self._login)
        router.logout_listeners.append(self._logout)

    def _login(self, user: str, session: ISession) -> None:
        protocol = session.protocol
        if protocol not in self.counts:
            self.on_new_protocol(protocol)
        self.counts[protocol] += 1

    def _logout(self, user: str, session: ISession) -> None:
        self.counts[session.protocol] -= 1

"""Failed authentications counted across connections and doors, as ejabberd's mod_fail2ban.

Every door that checks a secret asks one :class:`AuthGuard` first (``refusal``), then tells it
how the check went (``failed`` / ``succeeded``). Failures are counted per source address and
per account over ``[server] auth_failure_period``; past ``auth_failures_per_ip`` (or
``auth_failures_per_account``) that address (or account) is refused for ``auth_ban_seconds``
without any password being checked. Until then each failure is answered after a backoff that
doubles with the failures already counted past the first three (:func:`backoff`), so guessing from many
connections at once is no faster than from one.

Failures are counted per node; bans are shared: ``ban_listeners`` hear every ban this node
decides (the cluster passes them on, ``cluster/bans.py``) and :meth:`ban` applies one decided
elsewhere, so an address banned on one node is refused by all.

The guard also runs the deliberately slow password checks (PBKDF2, scrypt) on threads of
their own (:class:`CheckPool`), one per core, with a bounded queue, so a flood of attempts can
neither stall the reactor nor queue unbounded work.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger

from presenced.addresses import address_key
from presenced.metrics import Metrics

FREE_FAILURES = 3  # failures answered after the first delay before the backoff doubles it
MAX_BACKOFF_FACTOR = 16  # the backoff stops doubling here (16 s with a 1 s first delay)
MAX_TRACKED = 100_000  # addresses and accounts remembered at most; the oldest are forgotten
# Slow checks waiting for a core; more are refused (Busy). Each stream has at most one
# attempt in flight and connections are capped, so this only stops a runaway: it must stay
# well above a login storm's size (1000 clients reconnecting at once after a restart were
# refused at the first value tried, 256).
MAX_QUEUED_CHECKS = 8192
BAN_LOG_LINES = 10  # ban log lines per minute at most; the rest are summed up in the next one


class Busy(Exception):
    """Too many password checks are waiting: the attempt is refused, try again later."""


@dataclass(slots=True)
class Record:
    """What is known of one address or account: failures since ``since``, a ban until."""

    failures: int = 0
    since: float = 0.0
    banned_until: float = 0.0


def backoff(first_delay: float, failures: int) -> float:
    """Seconds before answering a failure, when ``failures`` have been counted (this one
    included): ``first_delay`` for the first few (typos happen), then doubled per failure,
    at most 16 times ``first_delay``."""
    return first_delay * min(2 ** max(failures - FREE_FAILURES, 0), MAX_BACKOFF_FACTOR)


class CheckPool:
    """Slow checks on ``cores`` threads of their own, started on first use. A thread that
    finishes a check takes the next one from the queue at once: waiting for the reactor to
    hand over the next (a semaphore released on the reactor thread) left a core idle for as
    long as the reactor was busy, which in a login storm is all the time. The reactor sees
    each result once, through ``callFromThread``."""

    def __init__(self, cores: int, reactor: Optional[IReactorThreads] = None):
        self.cores = cores
        self.reactor = reactor
        self.outstanding = 0  # running and queued
        self.executor: Optional[ThreadPoolExecutor] = None

    def run(self, check: Callable[..., Any], *args: Any) -> defer.Deferred:
        """``check(*args)`` on a check thread; fails with :class:`Busy` at once when
        MAX_QUEUED_CHECKS are already waiting for one."""
        if self.outstanding >= self.cores + MAX_QUEUED_CHECKS:
            return defer.fail(Busy("too many password checks waiting"))
        if self.executor is None:
            if self.reactor is None:
                from twisted.internet import reactor

                self.reactor = reactor  # type: ignore[assignment]
            self.executor = ThreadPoolExecutor(self.cores, "presenced-checks")
            self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)
        self.outstanding += 1
        future = self.executor.submit(check, *args)
        d: defer.Deferred = defer.Deferred(lambda _: future.cancel())
        future.add_done_callback(lambda f: self.reactor.callFromThread(self._done, f, d))
        return d

    def _done(self, future: Future, d: defer.Deferred) -> None:
        self.outstanding -= 1
        if d.called:  # cancelled by the caller
            return
        error = None if future.cancelled() else future.exception()
        if future.cancelled():
            d.cancel()
        elif error is not None:
            d.errback(error)
        else:
            d.callback(future.result())

    def stop(self) -> None:
        """Queued checks are dropped; running ones finish on their threads."""
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None


class AuthGuard:
    """One per node (``core.auth_guard``): bans, backoff and the slow-check pool."""

    log = Logger()

    def __init__(self, clock: IReactorTime, metrics: Metrics, per_ip: int, per_account: int,
                 period: float, ban_seconds: float, cores: Optional[int] = None):
        self.clock = clock
        self.metrics = metrics
        self.limits = {"ip": per_ip, "account": per_account}
        self.period = period
        self.ban_seconds = ban_seconds
        self.records: dict[tuple[str, str], Record] = {}
        self.checks = CheckPool(cores or os.cpu_count() or 1)
        self._next_prune = 0.0
        self._log_window = 0.0
        self._log_lines = 0
        self._log_suppressed = 0
        # Called with (kind, name, seconds) for every ban this node decides.
        self.ban_listeners: list[Callable[[str, str, float], None]] = []
        metrics.describe("presenced_auth_bans_total", "counter",
                         "Addresses and accounts banned after too many failed authentications, "
                         "by the door of the failure that caused the ban")
        metrics.describe("presenced_password_checks_total", "counter",
                         "Slow password checks (PBKDF2, scrypt) run in the thread pool")

    # --- bans and backoff ------------------------------------------------------------------

    def refusal(self, host: str, account: Optional[str] = None) -> float:
        """Seconds until ``host`` (and ``account``, when given) may try again; 0: go ahead."""
        if not self.records:  # nobody failed lately: every login asks
            return 0.0
        now = self.clock.seconds()
        wait = 0.0
        for key in self._keys(host, account):
            record = self.records.get(key)
            if record is not None and record.banned_until > now:
                wait = max(wait, record.banned_until - now)
        return wait

    def failed(self, door: str, host: str, account: Optional[str] = None) -> int:
        """Count a failed attempt; returns the failures now counted for the worse of the
        address and the account (for :func:`backoff`). Reaching a limit bans that key."""
        now = self.clock.seconds()
        self._prune(now)
        worst = 0
        for key in self._keys(host, account):
            limit = self.limits[key[0]]
            if not limit:
                continue
            record = self.records.get(key)
            if (record is None or now - record.since > self.period
                    or 0 < record.banned_until <= now):  # a ban served: a fresh count
                record = self.records[key] = Record(0, now, 0.0)
            record.failures += 1
            worst = max(worst, record.failures)
            if record.failures >= limit and record.banned_until <= now:
                record.banned_until = now + self.ban_seconds
                self._banned(door, key, record.failures)
        return worst

    def ban(self, kind: str, name: str, seconds: float) -> None:
        """Apply a ban decided on another node (``kind``: ``ip`` or ``account``, ``name``
        as counted there) for the ``seconds`` it has left; a longer one held here stays."""
        if kind not in self.limits or seconds <= 0:
            return
        now = self.clock.seconds()
        self._prune(now)
        record = self.records.setdefault((kind, name), Record(0, now, 0.0))
        record.banned_until = max(record.banned_until, now + seconds)

    def succeeded(self, host: str, account: Optional[str] = None) -> None:
        """A right password: the account's failures are forgotten (its owner is back). The
        address keeps its count, or an attacker could reset it with an account of their own."""
        if account is not None:
            self.records.pop(("account", account), None)

    def _keys(self, host: str, account: Optional[str]) -> list[tuple[str, str]]:
        keys = [("ip", address_key(host))]
        if account is not None:
            keys.append(("account", account))
        return keys

    def _banned(self, door: str, key: tuple[str, str], failures: int) -> None:
        self.metrics.inc("presenced_auth_bans_total", door=door)
        for listener in self.ban_listeners:
            listener(key[0], key[1], self.ban_seconds)
        now = self.clock.seconds()
        if now - self._log_window >= 60:
            self._log_window, self._log_lines = now, 0
        if self._log_lines >= BAN_LOG_LINES:
            self._log_suppressed += 1
            return
        self._log_lines += 1
        suppressed, self._log_suppressed = self._log_suppressed, 0
        self.log.warn("auth: {kind} {name} banned for {seconds:.0f} s after {failures} failed "
                      "authentications (last on {door}){more}", kind=key[0], name=key[1],
                      seconds=self.ban_seconds, failures=failures, door=door,
                      more=f"; {suppressed} more bans not logged" if suppressed else "")

    def _prune(self, now: float) -> None:
        """Forget expired records once per period, and the oldest past MAX_TRACKED."""
        if now >= self._next_prune:
            self._next_prune = now + self.period
            self.records = {key: r for key, r in self.records.items()
                            if r.banned_until > now or now - r.since <= self.period}
        while len(self.records) >= MAX_TRACKED:
            del self.records[next(iter(self.records))]

    # --- slow checks ------------------------------------------------------------------------

    def run_check(self, check: Callable[..., Any], *args: Any) -> defer.Deferred:
        """``check(*args)`` on the check threads, one per core; fails with :class:`Busy` at
        once when MAX_QUEUED_CHECKS are already waiting."""
        d = self.checks.run(check, *args)
        if not d.called:
            self.metrics.inc("presenced_password_checks_total")
        return d

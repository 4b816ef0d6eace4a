"""Authentication throttling (docs/security-auth.md): the auth guard in memory on a
task.Clock, then real servers: pipelined SASL attempts cost one password check each, bans per
account and per address across doors and their expiry, the web admin login throttle and its
same-site redirects."""

from __future__ import annotations

import base64
import os
import re
import socket
import time
import urllib.parse
from types import SimpleNamespace

import pytest
import requests
from twisted.internet import task

from presenced.authguard import MAX_QUEUED_CHECKS, AuthGuard, Busy, address_key, backoff
from presenced.metrics import Metrics
from presenced.tokens import check_token
from presenced.webadmin.console import local_path
from tests.conftest import PresencedProcess
from tests.test_xmpp_bad_input import HEADER, RawClient


def make_guard(per_ip: int = 5, per_account: int = 3, period: float = 60.0,
               ban: float = 30.0) -> tuple[AuthGuard, task.Clock, Metrics]:
    clock, metrics = task.Clock(), Metrics()
    return AuthGuard(clock, metrics, per_ip, per_account, period, ban, cores=1), clock, metrics


# --- the guard in memory ------------------------------------------------------------------


def test_an_address_is_banned_after_its_limit_and_the_ban_expires():
    guard, clock, metrics = make_guard(per_ip=5, per_account=0)
    for n in range(4):
        guard.failed("xmpp", "192.0.2.1", f"user{n}@localhost")
        assert guard.refusal("192.0.2.1") == 0
    guard.failed("xmpp", "192.0.2.1", "user9@localhost")
    assert guard.refusal("192.0.2.1") == 30.0
    assert guard.refusal("192.0.2.1", "anyone@localhost") == 30.0  # right password or not
    assert guard.refusal("192.0.2.2") == 0  # another address is not affected
    assert metrics.value("presenced_auth_bans_total", door="xmpp") == 1
    clock.advance(29)
    assert guard.refusal("192.0.2.1") == pytest.approx(1.0)
    clock.advance(1.5)
    assert guard.refusal("192.0.2.1") == 0


def test_an_account_is_banned_whatever_the_address():
    guard, clock, metrics = make_guard(per_ip=0, per_account=3)
    for n in range(3):
        guard.failed("webadmin", f"198.51.100.{n}", "alice@localhost")
    assert guard.refusal("203.0.113.9", "alice@localhost") == 30.0
    assert guard.refusal("203.0.113.9", "bob@localhost") == 0
    assert guard.refusal("203.0.113.9") == 0
    assert metrics.value("presenced_auth_bans_total", door="webadmin") == 1


def test_failures_are_forgotten_after_the_period_and_an_account_on_success():
    guard, clock, _ = make_guard(per_ip=3, per_account=3, period=60.0)
    guard.failed("xmpp", "192.0.2.1", "alice@localhost")
    guard.failed("xmpp", "192.0.2.1", "alice@localhost")
    clock.advance(61)
    guard.failed("xmpp", "192.0.2.1", "alice@localhost")  # a new period: 1, not 3
    assert guard.refusal("192.0.2.1", "alice@localhost") == 0
    guard.failed("xmpp", "192.0.2.2", "alice@localhost")
    guard.succeeded("192.0.2.2", "alice@localhost")
    assert guard.failed("xmpp", "192.0.2.3", "alice@localhost") == 1  # her count restarted
    assert guard.failed("xmpp", "192.0.2.1") == 2  # the address keeps its count


def test_failed_returns_the_worse_count_for_the_backoff():
    guard, _, _ = make_guard(per_ip=100, per_account=100)
    for _ in range(4):
        guard.failed("xmpp", "192.0.2.1", "alice@localhost")
    assert guard.failed("xmpp", "192.0.2.7", "alice@localhost") == 5
    assert [backoff(1.0, n) for n in range(1, 10)] == [1, 1, 1, 2, 4, 8, 16, 16, 16]
    assert backoff(0.0, 50) == 0.0


def test_ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4():
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    guard, _, _ = make_guard(per_ip=2, per_account=0)
    guard.failed("xmpp", "2001:db8::1")
    guard.failed("xmpp", "2001:db8::2")
    assert guard.refusal("2001:db8::3")


def test_bans_are_logged_at_a_bounded_rate(monkeypatch):
    guard, clock, metrics = make_guard(per_ip=1, per_account=0)
    lines = []
    monkeypatch.setattr(guard, "log", SimpleNamespace(warn=lambda fmt, **kw: lines.append(kw)))
    for n in range(30):
        guard.failed("xmpp", f"192.0.2.{n}")
    assert len(lines) == 10 and metrics.value("presenced_auth_bans_total", door="xmpp") == 30
    clock.advance(61)
    guard.failed("xmpp", "198.51.100.1")
    assert "20 more bans not logged" in lines[-1]["more"]


def test_slow_checks_wait_for_a_core_and_a_full_queue_is_refused():
    guard, _, _ = make_guard()
    guard.checks.acquire()  # the one core is busy
    waiting = [guard.run_check(lambda: True) for _ in range(MAX_QUEUED_CHECKS)]
    assert not any(d.called for d in waiting)
    refused = guard.run_check(lambda: True)
    assert refused.called
    refused.addErrback(lambda f: f.trap(Busy))  # fails at once with Busy
    for d in waiting:
        d.cancel()
        d.addErrback(lambda f: None)

"""Authentication throttling (docs/security-auth.md): the auth guard in memory on a
task.Clock, then real servers: pipelined SASL attempts cost one password check each, bans per
account and per address across doors and their expiry, the web admin login throttle and its
same-site redirects."""

from __future__ import annotations

import base64
import os
import re
import socket
import threading
import time
import urllib.parse
from types import SimpleNamespace

import pytest
import requests
from twisted.internet import defer, task

from presenced.addresses import address_key
from presenced.authguard import MAX_QUEUED_CHECKS, AuthGuard, Busy, backoff
from presenced.metrics import Metrics
from presenced.tokens import check_token
from presenced.webadmin.console import local_path
from tests.helpers import HEADER, PresencedProcess, RawClient


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


def test_bans_are_told_to_listeners_and_bans_from_elsewhere_apply():
    guard, clock, _ = make_guard(per_ip=2, per_account=0)
    heard: list[tuple[str, str, float]] = []
    guard.ban_listeners.append(lambda *ban: heard.append(ban))
    guard.failed("xmpp", "2001:db8::1")
    guard.failed("xmpp", "2001:db8::2")
    assert heard == [("ip", "2001:db8::/64", 30.0)]
    guard.ban("account", "eve@localhost", 10.0)      # decided on another node
    assert guard.refusal("192.0.2.9", "eve@localhost") == 10.0
    guard.ban("ip", "2001:db8::/64", 5.0)            # a shorter one does not cut ours
    assert guard.refusal("2001:db8::3") == 30.0
    assert len(heard) == 1                           # a ban applied is not told again
    clock.advance(10.5)
    assert guard.refusal("192.0.2.9", "eve@localhost") == 0


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
    guard.checks.reactor = reactor = FakeThreadsReactor()
    busy = threading.Event()
    running = guard.run_check(busy.wait)  # the one core is busy
    waiting = [guard.run_check(lambda: True) for _ in range(MAX_QUEUED_CHECKS)]
    assert not any(d.called for d in waiting)
    refused = guard.run_check(lambda: True)
    assert refused.called
    refused.addErrback(lambda f: f.trap(Busy))  # fails at once with Busy
    for d in waiting[1:]:
        d.cancel()
        d.addErrback(lambda f: f.trap(defer.CancelledError))
    busy.set()
    # Every check reports once through callFromThread: the cancelled ones at once, the two
    # that ran from the check thread.
    for _ in range(MAX_QUEUED_CHECKS + 1):
        assert reactor.arrived.acquire(timeout=10)
    reactor.run_calls()
    assert running.result is True and waiting[0].result is True
    assert guard.checks.outstanding == 0
    guard.checks.stop()


class FakeThreadsReactor:
    """callFromThread collected, run when the test says (no reactor runs in unit tests)."""

    def __init__(self):
        self.calls = []
        self.arrived = threading.Semaphore(0)

    def callFromThread(self, f, *args):
        self.calls.append((f, args))
        self.arrived.release()

    def addSystemEventTrigger(self, *args):
        pass

    def run_calls(self):
        while self.calls:
            f, args = self.calls.pop(0)
            f(*args)


@pytest.mark.parametrize("target", ["/\t/evil.example", "/\n/evil.example", "//evil.example",
                                    "/\\evil.example", "https://evil.example", "/ /x",
                                    "/\x7f/x", "evil.example", "", None])
def test_only_same_site_paths_are_redirect_targets(target):
    assert local_path(target) == "/"


def test_same_site_paths_are_kept():
    assert local_path("/users?q=al%20ice") == "/users?q=al%20ice"
    assert local_path("/") == "/"


def test_a_token_with_non_ascii_characters_is_simply_wrong():
    assert not check_token(b"secret", "alice@localhost", "9999999999.é\u2603")


# --- real servers ---------------------------------------------------------------------------


def plain_auth(user: str, password: str) -> bytes:
    token = base64.b64encode(f"\0{user}\0{password}".encode())
    return b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>" % token


def metric(server: PresencedProcess, name: str, **labels: str) -> float:
    text = requests.get(f"http://127.0.0.1:{server.ports['webadmin']}/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else "") + r" (\S+)"
    match = re.search("^" + pattern + "$", text, re.M)
    return float(match.group(1)) if match else 0.0


def server_cpu_seconds(server: PresencedProcess) -> float:
    fields = open(f"/proc/{server.process.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sasl_answer(client: RawClient, user: str, password: str) -> bytes:
    client.send(HEADER)
    client.read_until(b"</stream:features>")
    client.send(plain_auth(user, password))
    return client.read_until(b"<success[^>]*(/>|>.*?</success>)|</failure>")


def login_page(server: PresencedProcess, name: str, password: str, target: str = "/"):
    return requests.post(f"http://127.0.0.1:{server.ports['webadmin']}/login",
                         data={"name": name, "password": password, "next": target},
                         allow_redirects=False, timeout=30)


ACCOUNTS = ("alice", "bob", "carol", "dave", "erin", "admin")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Per-account bans (3 failures, 3 s); the address limit out of the way."""
    process = PresencedProcess(tmp_path_factory.mktemp("auth-throttle"), {
        "server": {"auth_failures_per_ip": 10000, "auth_failures_per_account": 3,
                   "auth_ban_seconds": 3.0},
        "xmpp": {"require_tls": False, "allow_plain": True, "auth_failure_delay": 0.05},
        "comet": {"enabled": False}, "thrift": {"enabled": False},
        "webadmin": {"admins": ["admin@localhost", "erin@localhost"]}})
    process.start()
    for name in ACCOUNTS:
        process.ctl("adduser", f"{name}@localhost", "--password", f"{name}-pw")
    yield process
    process.stop()


def test_web_admin_logins_are_throttled_with_xmpp_failures_counted_too(server):
    """First: the backoff grows with the address's failures, which later tests add."""
    assert login_page(server, "erin@localhost", "wrong").status_code == 401
    assert b"<not-authorized/>" in sasl_answer(RawClient(server.ports["xmpp"]), "erin",
                                               "wrong")
    assert login_page(server, "erin@localhost", "wrong").status_code == 401
    refused = login_page(server, "erin@localhost", "erin-pw")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "Too many failed logins" in refused.text
    assert metric(server, "presenced_auth_bans_total", door="webadmin") >= 1
    time.sleep(4.0)
    assert login_page(server, "erin@localhost", "erin-pw").status_code == 303


def test_pipelined_auth_costs_one_password_check_and_closes_the_stream(server):
    checks = metric(server, "presenced_password_checks_total")
    cpu = server_cpu_seconds(server)
    clients = [RawClient(server.ports["xmpp"]) for _ in range(20)]
    for client in clients:
        client.send(HEADER)
        client.read_until(b"</stream:features>")
    flood = b"".join(plain_auth("alice", f"guess{n}") for n in range(1000))
    for client in clients:
        client.send(flood)
    for client in clients:
        error = client.read_until(b"</stream:error>", timeout=30)
        assert b"<policy-violation" in error and b"wait for the answer" in error
        assert client.closed()
    # One check per connection at most (the first attempt), not 20 000.
    assert metric(server, "presenced_password_checks_total") - checks <= 20
    assert server_cpu_seconds(server) - cpu < 10.0  # 20 000 PBKDF2 would be about a minute
    assert b"/check" in RawClient(server.ports["xmpp"]).login("bob", "bob-pw", "check")


def test_an_attempt_after_its_answer_is_allowed(server):
    client = RawClient(server.ports["xmpp"])
    assert b"<not-authorized/>" in sasl_answer(client, "carol", "wrong")
    client.send(plain_auth("carol", "carol-pw"))
    assert b"<success" in client.read_until(b"<success[^>]*(/>|>.*?</success>)|</failure>")


def test_an_account_past_its_limit_is_refused_then_allowed_again(server):
    bans = metric(server, "presenced_auth_bans_total", door="xmpp")
    for _ in range(3):
        assert b"<not-authorized/>" in sasl_answer(RawClient(server.ports["xmpp"]), "dave",
                                                   "wrong")
    refused = sasl_answer(RawClient(server.ports["xmpp"]), "dave", "dave-pw")
    assert b"<temporary-auth-failure/>" in refused and b"try again in" in refused
    assert metric(server, "presenced_auth_bans_total", door="xmpp") == bans + 1
    # Other accounts from the same address are not affected.
    assert b"/other" in RawClient(server.ports["xmpp"]).login("bob", "bob-pw", "other")
    time.sleep(4.0)  # the ban is 3 s
    assert b"/back" in RawClient(server.ports["xmpp"]).login("dave", "dave-pw", "back")
    assert "banned for 3 s" in server.log()


@pytest.mark.parametrize("target", ["/%09/evil.example", "/%0a/evil.example", "//evil.example",
                                    "/%5Cevil.example", "/\\evil.example",
                                    "https://evil.example"])
def test_login_redirects_only_to_same_site_paths(server, target):
    raw = f"name=admin%40localhost&password=admin-pw&next={target}"
    reply = requests.post(f"http://127.0.0.1:{server.ports['webadmin']}/login", data=raw,
                          headers={"content-type": "application/x-www-form-urlencoded"},
                          allow_redirects=False, timeout=30)
    assert reply.status_code == 303 and reply.headers["location"] == "/"
    form = requests.get(f"http://127.0.0.1:{server.ports['webadmin']}/login?next={target}",
                        timeout=10)
    assert 'value="/"' in form.text  # the form carries the safe target on


def test_login_keeps_a_same_site_target(server):
    reply = login_page(server, "admin@localhost", "admin-pw", "/users?q=al")
    assert reply.status_code == 303 and reply.headers["location"] == "/users?q=al"


@pytest.fixture
def strict_server(presenced_factory):
    """Per-address bans: 4 failures, banned for 3 s."""
    process = presenced_factory({
        "server": {"auth_failures_per_ip": 4, "auth_failures_per_account": 0,
                   "auth_ban_seconds": 3.0},
        "xmpp": {"require_tls": False, "allow_plain": True, "auth_failure_delay": 0.0},
        "comet": {"require_token": True}, "thrift": {"enabled": False}})
    for name in ("alice", "bob"):
        process.ctl("adduser", f"{name}@localhost", "--password", f"{name}-pw")
    return process


def comet_status(server: PresencedProcess, path: str) -> int:
    with socket.create_connection(("127.0.0.1", server.ports["comet"]), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        head = sock.recv(4096)
    return int(head.split()[1])


def test_a_banned_address_is_refused_on_every_door_until_the_ban_ends(strict_server):
    server = strict_server
    token = server.ctl("stream-token", "bob@localhost").stdout.strip().splitlines()[-1]
    for n in range(4):
        assert b"<not-authorized/>" in sasl_answer(RawClient(server.ports["xmpp"]),
                                                   f"nobody{n}", "wrong")
    refused = sasl_answer(RawClient(server.ports["xmpp"]), "alice", "alice-pw")
    assert b"<temporary-auth-failure/>" in refused
    assert comet_status(server, f"/poll/bob?token={urllib.parse.quote(token)}") == 429
    time.sleep(4.0)  # the ban is 3 s
    assert b"/back" in RawClient(server.ports["xmpp"]).login("alice", "alice-pw", "back")
    assert comet_status(server, "/stream/bob?token=1.bad") == 403  # a fresh count: 1 of 4


def test_parallel_guessing_is_cut_off_at_the_address_limit(strict_server):
    """50 connections guessing at once: at most the limit plus the attempts already in
    flight are checked, everything after is refused without a password check."""
    server = strict_server
    checks = metric(server, "presenced_password_checks_total")
    clients = [RawClient(server.ports["xmpp"]) for _ in range(50)]
    for client in clients:
        client.send(HEADER)
        client.read_until(b"</stream:features>")
    refused = 0
    for _round in range(3):
        for client in clients:
            client.send(plain_auth("alice", "guess"))
        for client in clients:
            answer = client.read_until(b"</failure>|</stream:error>", timeout=30)
            refused += b"<temporary-auth-failure/>" in answer
    assert metric(server, "presenced_password_checks_total") - checks <= 4 + 50
    assert refused >= 150 - 4 - 50
    assert metric(server, "presenced_auth_bans_total", door="xmpp") >= 1

"""Accounts as a core service (``core.accounts``): the store's keys, or the extauth program,
answering the same for every door -- XMPP, Thrift and the web admin.

In memory: :class:`presenced.accounts.Accounts` over the embedded store, and over a stand-in
for the program pool. Against a real server: an extauth program that owns the accounts is
asked by Thrift and the web admin as by XMPP, whichever doors are enabled.
"""

from __future__ import annotations

import json
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import pytest_twisted
import requests
from twisted.internet import defer, task

from presenced import accounts as accounts_module
from presenced import authguard
from presenced import config
from presenced.core import Core
from presenced.store import RosterItem
from presenced.store.embedded import EmbeddedRosterStore
from presenced.thrift import admin as served
from presenced.thrift.handler import AdminHandler
from presenced.webadmin.auth import AdminAccounts
from presenced.xmpp import sasl
from tests.helpers import (HEADER, J, THRIFT as admin, PresencedProcess, RawClient,
                           thrift_client as client, webadmin_login as login,
                           webadmin_url as base)


class ProgramStub:
    """Answers like an extauth program (``presenced.extauth.ExternalAuth.request``) from a
    dict of ``user@server -> password``, and records what it was asked."""

    def __init__(self, users: dict[str, str]):
        self.users = dict(users)
        self.asked: list[str] = []
        self.running = False

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False

    def request(self, command: str, local: str, server: str, *password: str) -> defer.Deferred:
        self.asked.append(command)
        user = f"{local}@{server}"
        known = user in self.users
        if command == "auth":
            answer = known and self.users[user] == password[0]
        elif command == "isuser":
            answer = known
        elif command == "tryregister":
            answer = not known
            self.users.setdefault(user, password[0])
        elif command == "setpass":
            answer = known
            if known:
                self.users[user] = password[0]
        elif command == "removeuser":
            answer = self.users.pop(user, None) is not None
        else:
            raise AssertionError(command)
        return defer.succeed(answer)


class RecordingSession:
    protocol, label = "test", "r"

    def __init__(self, user: str):
        self.user = user
        self.closed: list[str] = []

    def deliver(self, event) -> None:
        pass

    def close(self, reason: str) -> None:
        self.closed.append(reason)


@pytest.fixture
def store(tmp_path: Path):
    store = EmbeddedRosterStore(str(tmp_path / "accounts.sqlite3"))
    pytest_twisted.blockon(store.start())
    yield store
    pytest_twisted.blockon(store.stop())


def make_core(tmp_path: Path, store, program=None) -> Core:
    cfg = config.load(overrides={"server": {"data_dir": str(tmp_path / "data"),
                                            "scram_iterations": 100}})
    return Core(cfg, store, external_auth=program)


@pytest_twisted.ensureDeferred
async def test_a_repeat_check_of_a_verified_password_skips_pbkdf2(tmp_path, store,
                                                                  monkeypatch):
    """The first right password runs PBKDF2; the same again does not, a wrong one always
    does, and a new password (new salt and keys) or a re-created account is checked afresh."""
    slow: list[str] = []
    verify = accounts_module.verify_password

    def counting(credentials, password):
        slow.append(password)
        return verify(credentials, password)

    monkeypatch.setattr(accounts_module, "verify_password", counting)
    accounts = make_core(tmp_path, store).accounts
    await accounts.register("a@localhost", "pw")
    assert await accounts.check_password("a@localhost", "pw")
    assert await accounts.check_password("a@localhost", "pw")
    assert slow == ["pw"]
    assert not await accounts.check_password("a@localhost", "bad")
    assert not await accounts.check_password("a@localhost", "bad")
    assert slow == ["pw", "bad", "bad"]  # failures are never remembered
    await accounts.set_password("a@localhost", "new")
    assert not await accounts.check_password("a@localhost", "pw")
    assert await accounts.check_password("a@localhost", "new")
    await accounts.remove("a@localhost")
    assert not await accounts.check_password("a@localhost", "new")
    await accounts.register("a@localhost", "new")
    slow.clear()
    assert await accounts.check_password("a@localhost", "new")
    assert slow == ["new"]


def test_verified_passwords_are_bounded_and_hold_no_password():
    from presenced.scram import make_credentials
    from presenced.verified import VerifiedPasswords

    cache = VerifiedPasswords(2)
    creds = {name: make_credentials(name, iterations=1) for name in "abc"}
    for name in "abc":
        cache.remember(name, creds[name], name + "-pw")
    assert len(cache) == 2
    assert not cache.known("a", creds["a"], "a-pw")  # the oldest went first
    assert cache.known("b", creds["b"], "b-pw") and cache.known("c", creds["c"], "c-pw")
    assert not cache.known("b", creds["c"], "b-pw")  # other keys: no match
    assert all(b"-pw" not in digest for digest in cache._digests)
    off = VerifiedPasswords(0)
    off.remember("a", creds["a"], "a-pw")
    assert len(off) == 0 and not off.known("a", creds["a"], "a-pw")


@pytest_twisted.ensureDeferred
async def test_store_accounts_register_check_change_and_remove(tmp_path, store, monkeypatch):
    hashed_on: list[threading.Thread] = []
    derive = accounts_module.make_credentials

    def recording(*args):
        hashed_on.append(threading.current_thread())
        return derive(*args)

    monkeypatch.setattr(accounts_module, "make_credentials", recording)
    core = make_core(tmp_path, store)
    accounts = core.accounts
    assert not accounts.external_passwords
    assert await accounts.register("a@localhost", "pw") is True
    assert await accounts.register("a@localhost", "other") is False
    assert hashed_on and threading.main_thread() not in hashed_on  # never on the reactor
    assert await accounts.exists("a@localhost") and not await accounts.exists("b@localhost")
    assert await accounts.check_password("a@localhost", "pw") is True
    assert await accounts.check_password("a@localhost", "other") is False
    assert await accounts.check_password("b@localhost", "pw") is False
    assert await accounts.credentials("a@localhost") is not None
    assert await accounts.set_password("a@localhost", "new") is True
    assert await accounts.set_password("b@localhost", "new") is False
    assert not await accounts.check_password("a@localhost", "pw")
    assert await accounts.check_password("a@localhost", "new")

    removed: list[str] = []
    core.hooks.add("user-removed", lambda user, contacts: removed.append(user))
    session = RecordingSession("a@localhost")
    core.router.login("a@localhost", session)
    assert await accounts.remove("a@localhost") is True
    assert session.closed == ["account removed"] and removed == ["a@localhost"]
    assert not await accounts.exists("a@localhost")
    assert await accounts.remove("a@localhost") is False


@pytest_twisted.ensureDeferred
async def test_new_passwords_are_derived_on_the_bounded_check_threads(tmp_path, store,
                                                                      monkeypatch):
    """Registering and changing a password derive keys on the auth guard's check threads, as
    a login's check does -- never Twisted's general pool, which the store shares -- and a full
    check queue refuses the derivation (Busy) instead of queueing it without bound."""
    derived_on: list[str] = []
    derive = accounts_module.make_credentials

    def recording(*args):
        derived_on.append(threading.current_thread().name)
        return derive(*args)

    monkeypatch.setattr(accounts_module, "make_credentials", recording)
    core = make_core(tmp_path, store)
    assert await core.accounts.register("a@localhost", "pw") is True
    assert await core.accounts.set_password("a@localhost", "new") is True
    assert len(derived_on) == 2
    assert all(name.startswith("presenced-checks") for name in derived_on), derived_on
    monkeypatch.setattr(core.auth_guard.checks, "outstanding",
                        core.auth_guard.checks.cores + authguard.MAX_QUEUED_CHECKS)
    with pytest.raises(authguard.Busy):
        await core.accounts.register("b@localhost", "pw")
    assert len(derived_on) == 2


@pytest_twisted.ensureDeferred
async def test_a_program_that_owns_the_accounts_answers_every_question(tmp_path, store):
    program = ProgramStub({"ext@localhost": "ext-pw"})
    core = make_core(tmp_path, store, program)
    accounts = core.accounts
    # The store has an account the program does not know: the program decides.
    await core.store.create_user("stored@localhost", accounts_module.make_credentials("pw", 100))
    accounts.start()
    assert program.running and accounts.external_passwords
    assert await accounts.exists("ext@localhost") is True
    assert await accounts.exists("stored@localhost") is False
    assert await accounts.check_password("ext@localhost", "ext-pw") is True
    assert await accounts.check_password("stored@localhost", "pw") is False
    assert await accounts.credentials("stored@localhost") is None  # no keys: no SCRAM
    assert sasl.mechanisms(core, secure=True) == ("PLAIN",)

    assert await accounts.register("new@localhost", "n") is True
    assert await accounts.register("new@localhost", "n") is False
    assert await accounts.set_password("ext@localhost", "changed") is True
    assert await accounts.set_password("nobody@localhost", "x") is False
    assert program.users == {"ext@localhost": "changed", "new@localhost": "n"}
    assert await core.store.user_exists("new@localhost") is False  # the store is not asked

    await core.add_friends([("ext@localhost", "new@localhost")])
    assert await accounts.remove("ext@localhost") is True
    assert await core.store.get_roster("new@localhost") == []  # its data went too
    await core.add_friends([("stored@localhost", "new@localhost")])
    assert await accounts.remove("stored@localhost") is False  # not the program's: untouched
    assert await core.store.get_roster("new@localhost") == [
        RosterItem("stored@localhost", "both")]
    accounts.stop()
    assert not program.running


@pytest_twisted.ensureDeferred
async def test_thrift_and_the_web_admin_ask_the_program(tmp_path, store):
    program = ProgramStub({"ext@localhost": "ext-pw", "boss@localhost": "boss-pw"})
    core = make_core(tmp_path, store, program)
    handler = AdminHandler(core, task.Clock())
    assert await handler.user_exists(J("ext", "")) is True
    assert await handler.user_exists(J("nobody", "")) is False
    assert await handler.get_roster(J("ext", "")) == []
    with pytest.raises(served.UnknownUser):
        await handler.get_roster(J("nobody", ""))
    admins = AdminAccounts(["boss@localhost"], core.accounts, "localhost",
                           core.auth_guard.run_check)
    assert await admins.check("boss", "boss-pw") == "boss@localhost"
    assert await admins.check("boss", "wrong") is None
    assert await admins.check("ext", "ext-pw") is None  # not an admin


PROGRAM = textwrap.dedent("""\
    # An extauth program keeping its accounts in a JSON file (shared by the pool).
    import json, os, struct, sys
    path = sys.argv[1]
    read, write = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = read.read(2)
        if len(head) < 2:
            break
        command, local, server, *password = (
            read.read(struct.unpack(">H", head)[0]).decode().split(":", 3))
        with open(path) as f:
            users = json.load(f)
        user = local + "@" + server
        known = user in users
        if command == "auth":
            ok = known and users[user] == password[0]
        elif command == "isuser":
            ok = known
        elif command in ("tryregister", "setpass"):
            ok = known == (command == "setpass")
            if ok:
                users[user] = password[0]
        elif command == "removeuser":
            ok = users.pop(user, None) is not None
        else:
            ok = False
        with open(path + ".tmp", "w") as f:
            json.dump(users, f)
        os.replace(path + ".tmp", path)
        write.write(b"\\x00\\x02\\x00\\x01" if ok else b"\\x00\\x02\\x00\\x00")
        write.flush()
""")


def program_server(tmp_path: Path, users: dict[str, str], **doors: dict) -> PresencedProcess:
    script, state = tmp_path / "extauth.py", tmp_path / "users.json"
    script.write_text(PROGRAM)
    state.write_text(json.dumps(users))
    sections: dict[str, dict] = {"comet": {"enabled": False}, **doors}
    sections["xmpp"] = {**sections.get("xmpp", {}), "require_tls": False,
                        "allow_plain": True, "auth_failure_delay": 0.0,
                        "extauth_program": f"{sys.executable} {script} {state}",
                        "extauth_pool_size": 2, "extauth_timeout": 5.0}
    process = PresencedProcess(tmp_path, sections)
    process.start()
    return process


def test_the_program_answers_for_thrift_the_web_admin_and_xmpp_alike(tmp_path: Path):
    process = program_server(tmp_path, {"ext@localhost": "ext-pw", "boss@localhost": "boss-pw"},
                             webadmin={"admins": ["boss@localhost"]})
    try:
        c = client(process)
        assert c.user_exists(J("ext", "")) is True
        assert c.user_exists(J("nobody", "localhost")) is False
        assert c.get_roster(J("ext", "")) == []
        assert c.register_user(J("newbie", ""), "n-pw") is True
        c.set_password(J("ext", ""), "new-pw")
        with pytest.raises(admin.UnknownUser):
            c.remove_user(J("nobody", ""))
        # What Thrift changed is what XMPP logs in with.
        xmpp = process.ports["xmpp"]
        features = RawClient(xmpp)
        features.send(HEADER)
        assert b"SCRAM" not in features.read_until(b"</stream:features>")
        assert b"newbie@localhost/raw" in RawClient(xmpp).login("newbie", "n-pw")
        assert b"ext@localhost/raw" in RawClient(xmpp).login("ext", "new-pw")
        with pytest.raises(PermissionError):
            RawClient(xmpp).login("ext", "ext-pw")
        # The console: an admin known only to the program logs in; its users exist.
        http = login(process, "boss@localhost", "boss-pw")
        page = http.get(base(process) + "/user", params={"jid": "ext@localhost"}, timeout=10)
        assert page.status_code == 200 and "exists" in page.text
        assert "only in the graph" not in page.text
        refused = requests.post(base(process) + "/login", allow_redirects=False, timeout=10,
                                data={"name": "boss@localhost", "password": "wrong"})
        assert refused.status_code != 303
    finally:
        process.stop()


def test_the_program_runs_without_the_xmpp_door(tmp_path: Path):
    process = program_server(tmp_path, {"ext@localhost": "pw"}, xmpp={"enabled": False},
                             webadmin={"enabled": False})
    try:
        c = client(process)
        assert c.user_exists(J("ext", "")) is True
        assert c.user_exists(J("other", "")) is False
    finally:
        process.stop()

"""presencedctl against the embedded store, run as the command users run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

from presenced.scram import verify_password
from presenced.store.embedded import EmbeddedRosterStore
from presenced.tokens import check_token
from tests.helpers import subprocess_env


def ctl(tmp_path: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "presenced.ctl", "--data-dir",
                           str(tmp_path / "data"), *args], input=input, capture_output=True,
                          text=True, env=subprocess_env(), timeout=120)


def test_account_lifecycle(tmp_path: Path):
    created = ctl(tmp_path, "adduser", "Alice", input="pw1\n")
    assert created.returncode == 0, created.stderr
    assert "alice@localhost" in created.stdout
    duplicate = ctl(tmp_path, "adduser", "alice@localhost", "--password", "x")
    assert duplicate.returncode == 1
    assert "already exists" in duplicate.stderr
    assert ctl(tmp_path, "passwd", "alice", input="pw2\n").returncode == 0
    assert ctl(tmp_path, "passwd", "nobody", input="pw\n").returncode == 1
    db = tmp_path / "data" / "presenced.sqlite3"
    assert b"pw2" not in db.read_bytes()
    assert ctl(tmp_path, "deluser", "alice").returncode == 0
    gone = ctl(tmp_path, "deluser", "alice")
    assert gone.returncode == 1 and "no such user" in gone.stderr


@pytest_twisted.ensureDeferred
async def test_password_is_checked_against_salted_keys(tmp_path: Path):
    assert ctl(tmp_path, "adduser", "bob", "--password", "hunter2").returncode == 0
    store = EmbeddedRosterStore(str(tmp_path / "data" / "presenced.sqlite3"))
    await store.start()
    try:
        creds = await store.get_credentials("bob@localhost")
    finally:
        await store.stop()
    assert verify_password(creds, "hunter2")
    assert not verify_password(creds, "hunter3")


def test_friends_roster_and_subscribers(tmp_path: Path):
    assert ctl(tmp_path, "add-friend", "rj", "bob@localhost").returncode == 0
    roster = ctl(tmp_path, "roster", "rj")
    assert roster.stdout.split() == ["bob@localhost", "both"]
    assert ctl(tmp_path, "subscribers", "bob").stdout.split() == ["rj@localhost"]
    assert ctl(tmp_path, "add-friend", "rj", "rj").returncode == 1
    assert ctl(tmp_path, "remove-friend", "bob", "rj").returncode == 0
    assert ctl(tmp_path, "roster", "rj").stdout == ""
    bad = ctl(tmp_path, "roster", "not a user")
    assert bad.returncode == 1 and "not a valid JID" in bad.stderr


def test_load_friends_reports_bad_lines_and_loads_the_rest(tmp_path: Path):
    edges = tmp_path / "edges.txt"
    edges.write_text("# friends\n1 2\n\n2 3  # trailing comment\nonly-one\n4 4\n"
                     "5 carol@example.org\nx y z\n")
    result = ctl(tmp_path, "load-friends", str(edges))
    assert result.returncode == 0, result.stderr
    assert "loaded 3 friendships" in result.stdout
    assert f"{edges}:5: skipped" in result.stderr
    assert f"{edges}:6: skipped" in result.stderr
    assert f"{edges}:8: skipped" in result.stderr
    assert sorted(ctl(tmp_path, "subscribers", "2").stdout.split()) == \
        ["1@localhost", "3@localhost"]
    assert ctl(tmp_path, "subscribers", "carol@example.org").stdout.split() == ["5@localhost"]


def test_load_friends_shows_progress_on_large_files(tmp_path: Path):
    edges = tmp_path / "edges.txt"
    edges.write_text("".join(f"{i} {i + 1}\n" for i in range(200000)))
    result = ctl(tmp_path, "load-friends", str(edges))
    assert result.returncode == 0, result.stderr
    assert "loaded 200,000 friendships" in result.stdout
    assert ctl(tmp_path, "subscribers", "100").stdout.split() == ["101@localhost",
                                                                  "99@localhost"]


def test_import_users_creates_accounts_in_bulk(tmp_path: Path):
    users = tmp_path / "users.txt"
    users.write_text("".join(f"user{i}@localhost pass{i}\n" for i in range(300))
                     + "bad@@x pw\nnopass@localhost\n")
    result = ctl(tmp_path, "import-users", str(users), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "created 300 account(s)" in result.stdout
    assert "2 bad line(s)" in result.stdout
    again = ctl(tmp_path, "import-users", str(users), "--quiet")
    assert "300 existed already" in again.stdout


def test_stream_token_verifies_with_the_server_secret(tmp_path: Path):
    token = ctl(tmp_path, "stream-token", "alice", "--ttl", "60").stdout.strip()
    secret = bytes.fromhex((tmp_path / "data" / "secret").read_text().strip())
    assert check_token(secret, "alice@localhost", token)
    assert not check_token(secret, "bob@localhost", token)
    assert not check_token(b"other secret", "alice@localhost", token)


@pytest.mark.parametrize("args", [["--help"], ["load-friends", "--help"]])
def test_help_explains_commands(tmp_path: Path, args: list[str]):
    result = ctl(tmp_path, *args)
    assert result.returncode == 0
    assert "usage: presencedctl" in result.stdout


def test_unreachable_redis_is_a_clear_error(tmp_path: Path):
    config = tmp_path / "redis.toml"
    config.write_text('[store]\nbackend = "redis"\nredis = ["redis://127.0.0.1:1/0"]\n'
                      'redis_timeout = 1.0\n')
    result = subprocess.run([sys.executable, "-m", "presenced.ctl", "--config", str(config),
                             "roster", "alice"], capture_output=True, text=True,
                            env=subprocess_env(), timeout=60)
    assert result.returncode == 1
    assert "cannot connect to Redis" in result.stderr
    assert "Traceback" not in result.stderr

"""presencedctl against the embedded store, run as the command users run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

from presenced.config import ConfigError
from presenced.ctl import _load_config, build_parser
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
    foreign = ctl(tmp_path, "add-friend", "rj", "x@otherdomain.org")
    assert foreign.returncode == 1 and "not a domain this server serves" in foreign.stderr


def test_subscribe_to_a_topic_without_a_server(tmp_path: Path):
    done = ctl(tmp_path, "subscribe", "rj", "artist/radiohead")
    assert done.returncode == 0, done.stderr
    assert "rj@localhost follows artist/radiohead" in done.stdout
    assert ctl(tmp_path, "subscribers", "artist/radiohead").stdout.split() == ["rj@localhost"]
    bad = ctl(tmp_path, "subscribe", "rj", "artist/../x")
    assert bad.returncode == 1 and "is not a topic" in bad.stderr
    assert ctl(tmp_path, "unsubscribe", "rj", "artist/radiohead").returncode == 0
    assert ctl(tmp_path, "subscribers", "artist/radiohead").stdout == ""


def test_load_friends_reports_bad_lines_and_loads_the_rest(tmp_path: Path):
    edges = tmp_path / "edges.txt"
    edges.write_bytes(b"# friends\n1 2\n\n2 3  # trailing comment\nonly-one\n4 4\n"
                      b"5 carol@example.org\nx y z\n6 \xff7\n8 9\n")
    result = ctl(tmp_path, "load-friends", str(edges))
    assert result.returncode == 0, result.stderr
    assert "loaded 3 friendships" in result.stdout and "5 bad line(s)" in result.stdout
    for number in (5, 6, 7, 8, 9):
        assert f"{edges}:{number}: skipped" in result.stderr
    assert "does not serve" in result.stderr and "not UTF-8" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(ctl(tmp_path, "subscribers", "2").stdout.split()) == \
        ["1@localhost", "3@localhost"]
    assert ctl(tmp_path, "subscribers", "8").stdout.split() == ["9@localhost"]
    assert ctl(tmp_path, "subscribers", "carol@example.org").stdout == ""


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
                     + "bad@@x pw\nnopass@localhost\nbad user@localhost pw\n"
                     "x@otherdomain.org pw\n")
    result = ctl(tmp_path, "import-users", str(users), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "created 300 account(s)" in result.stdout
    assert "4 bad line(s)" in result.stdout
    assert ctl(tmp_path, "passwd", "bad", "--password", "x").returncode == 1   # no account
    again = ctl(tmp_path, "import-users", str(users), "--quiet")
    assert "300 existed already" in again.stdout


def test_bulk_batches_overlap_two_at_a_time():
    """``import-users`` and ``load-friends`` start the next batch while the last is written
    (the check threads never wait for the store), and never more than two: a long file queues
    bounded work."""
    from twisted.internet import defer

    from presenced import bulk

    writes: list[defer.Deferred] = []

    def works():
        for _ in range(5):
            writes.append(defer.Deferred())
            yield writes[-1]

    done = bulk.overlapped(works())
    assert len(writes) == 2 and not done.called  # the second started before the first ended
    writes[1].callback(None)
    assert len(writes) == 2  # still waiting for the oldest
    writes[0].callback(None)
    assert len(writes) == 4
    for d in writes[2:]:
        d.callback(None)
    assert len(writes) == 5 and not done.called
    writes[4].callback(None)
    assert done.called


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


def run_ctl(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "presenced.ctl", *args], cwd=cwd,
                          capture_output=True, text=True, env=subprocess_env(), timeout=120)


def test_user_errors_are_messages_not_tracebacks(tmp_path: Path):
    missing = ctl(tmp_path, "load-friends", str(tmp_path / "nope.txt"))
    assert missing.returncode == 1 and "cannot open" in missing.stderr
    config = tmp_path / "latin1.toml"
    config.write_bytes(b"# caf\xe9\n[server]\n")
    bad_config = run_ctl(tmp_path, "--config", str(config), "roster", "alice")
    assert bad_config.returncode == 2 and "not valid TOML" in bad_config.stderr
    for result in (missing, bad_config):
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_no_data_directory_is_made_up(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="--config FILE"):
        _load_config(build_parser().parse_args(["adduser", "alice"]))
    assert not (tmp_path / "presenced-data").exists()
    (tmp_path / "presenced-data").mkdir()    # where the server keeps it by default
    config = _load_config(build_parser().parse_args(["adduser", "alice"]))
    assert config.server.data_dir == "presenced-data"


def test_options_are_taken_after_the_command_too(tmp_path: Path):
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "elsewhere"}"\n')
    for argv in (["roster", "a", "--config", str(config)], ["-c", str(config), "roster", "a"]):
        assert _load_config(build_parser().parse_args(argv)).server.data_dir == \
            str(tmp_path / "elsewhere")
    args = build_parser().parse_args(["--data-dir", "x", "roster", "a", "-c", str(config)])
    assert (args.data_dir, args.config) == ("x", str(config))
    assert _load_config(args).server.data_dir == "x"


@pytest.mark.parametrize("ttl", ["0", "-5", "soon"])
def test_stream_token_refuses_a_ttl_that_is_not_positive(ttl: str, capsys):
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(["stream-token", "alice", f"--ttl={ttl}"])
    assert exit.value.code == 2
    assert "--ttl" in capsys.readouterr().err

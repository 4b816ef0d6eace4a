"""``presencedctl``: operate a presenced installation from the shell.

Each command opens the configured store directly (as ``prosodyctl`` does), except those that
change what online users see (``add-friend``, ``remove-friend``, ``deluser``): they go through
the running server's Thrift admin port when one answers, so online sessions get roster pushes
and presence at once, and use the store only when no server runs. Exit status: 0 on success,
1 when the command failed (unknown user, unreadable file...), 2 for a usage or config error;
a user's mistake is a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import io
import json
import os
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any, Iterator, Optional, Sequence

from twisted.internet import defer, task, threads

from presenced import backup as backups
from presenced import bulk
from presenced import config as configuration
from presenced.apitokens import DEFAULT_TTL as API_TOKEN_TTL
from presenced.apitokens import SCOPES, TokenRefused
from presenced.copystore import StoreCopy
from presenced.core import Core
from presenced.store import StoreError
from presenced.store.backends import make_store
from presenced.thrift import client as admin_port
from presenced.users import BadUser


class CommandFailed(Exception):
    """The command ran but could not do what was asked; the message says why."""


def _password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return args.password
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Again: "):
            raise CommandFailed("passwords differ")
        return first
    line = sys.stdin.readline().rstrip("\n")
    if not line:
        raise CommandFailed("no password on stdin")
    return line


@defer.inlineCallbacks
def cmd_adduser(core: Core, args):
    user = core.local_user(args.user)
    if not (yield core.accounts.register(user, _password(args))):
        raise CommandFailed(f"{user} already exists")
    print(f"created {user}")


@defer.inlineCallbacks
def cmd_passwd(core: Core, args):
    user = core.user(args.user)
    if not (yield core.accounts.set_password(user, _password(args))):
        raise CommandFailed(f"no such user {user}")
    print(f"password changed for {user}")


@defer.inlineCallbacks
def cmd_deluser(core: Core, args):
    user = core.user(args.user)
    removed = yield admin_port.remove_user(core.config, user)
    if removed is None:  # no server running
        removed = yield core.accounts.remove(user)
    if not removed:
        raise CommandFailed(f"no such user {user}")
    print(f"deleted {user}")


@defer.inlineCallbacks
def cmd_add_friend(core: Core, args):
    a, b = core.local_user(args.a), core.local_user(args.b)
    if a == b:
        raise CommandFailed("a user cannot be their own friend")
    if (yield admin_port.add_friend(core.config, a, b)) is None:
        yield core.add_friends([(a, b)])
    print(f"{a} and {b} are friends")


@defer.inlineCallbacks
def cmd_remove_friend(core: Core, args):
    a, b = core.user(args.a), core.user(args.b)
    if (yield admin_port.remove_friend(core.config, a, b)) is None:
        yield core.remove_friends([(a, b)])
    print(f"{a} and {b} are no longer friends")


@defer.inlineCallbacks
def cmd_roster(core: Core, args):
    user = core.user(args.user)
    items = yield core.store.get_roster(user)
    if args.json:
        print(json.dumps([{"jid": i.jid, "subscription": i.subscription, "name": i.name,
                           "groups": list(i.groups), "ask": i.ask, "approved": i.approved}
                          for i in items], indent=2))
        return
    for i in items:
        extra = " ask" if i.ask else ""
        groups = f" [{', '.join(i.groups)}]" if i.groups else ""
        name = f" ({i.name})" if i.name else ""
        print(f"{i.jid}\t{i.subscription}{extra}{name}{groups}")


@defer.inlineCallbacks
def cmd_subscribers(core: Core, args):
    user = core.subject(args.user)
    for subscriber in sorted((yield core.store.get_subscribers(user))):
        print(subscriber)


@defer.inlineCallbacks
def cmd_subscribe(core: Core, args):
    user, subject = core.user(args.user), core.subject(args.subject)
    if (yield admin_port.follow(core.config, user, subject)) is None:
        yield core.add_subscriptions([(user, subject)])
    print(f"{user} follows {subject}")


@defer.inlineCallbacks
def cmd_unsubscribe(core: Core, args):
    user, subject = core.user(args.user), core.subject(args.subject)
    if (yield admin_port.follow(core.config, user, subject, add=False)) is None:
        yield core.remove_subscriptions([(user, subject)])
    print(f"{user} no longer follows {subject}")


@defer.inlineCallbacks
def cmd_load_friends(core: Core, args):
    bad = 0

    def on_bad(number: int, line: str, reason: str) -> None:
        nonlocal bad
        bad += 1
        print(f"{args.file}:{number}: skipped: {reason}: {line!r}", file=sys.stderr)

    progress = bulk.Progress("friendships", None if args.quiet else sys.stderr)
    with _open(args.file) as f:
        pairs = bulk.parse_edges(f, core.config.default_domain, on_bad, core.domains)
        loaded = yield bulk.load_friends(core.store, pairs, progress)
    print(f"loaded {loaded:,} friendships ({progress.rate():,.0f}/s), {bad} bad line(s) skipped")


# Accounts registered together in one batch of ``import-users``; two batches are in flight, so
# the check threads derive the next batch's keys while the store writes the last (at most
# 2 x 256 derivations queued, far below authguard.MAX_QUEUED_CHECKS).
IMPORT_BATCH = 256


@defer.inlineCallbacks
def cmd_import_users(core: Core, args):
    counts = {"created": 0, "existing": 0, "bad": 0}
    progress = bulk.Progress("accounts", None if args.quiet else sys.stderr)

    def accounts(f) -> Iterator[tuple[str, str]]:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            try:
                yield _account_line(core, line, fields), fields[1]
            except BadUser as e:
                counts["bad"] += 1
                print(f"{args.file}:{number}: skipped: {e}", file=sys.stderr)

    def registered(answers: list[bool]) -> None:
        counts["created"] += sum(answers)
        counts["existing"] += len(answers) - sum(answers)
        progress.add(len(answers))

    with _open(args.file) as f:
        yield bulk.overlapped(
            defer.gatherResults([core.accounts.register(user, password)
                                 for user, password in batch]).addCallback(registered)
            for batch in bulk.batches(accounts(f), IMPORT_BATCH))
    print(f"created {counts['created']:,} account(s), {counts['existing']:,} existed already, "
          f"{counts['bad']} bad line(s)")


def _account_line(core: Core, line: str, fields: list[str]) -> str:
    """The account of an ``import-users`` line ``user@domain password``; raises
    :class:`BadUser` for any other shape, so ``bad user@localhost pw`` is no account ``bad``."""
    if bulk.undecodable(line):
        raise BadUser("not UTF-8")
    if len(fields) != 2:
        raise BadUser(f"expected 'user@domain password', found {len(fields)} field(s)")
    return core.local_user(fields[0])


async def _use_cluster_secret(core: Core) -> None:
    """Sign with the secret every node checks tokens with."""
    if core.config.cluster.enabled:
        from presenced.cluster.secret import fetch_shared_secret

        core.secret = await fetch_shared_secret(core.config, core.secret)


@defer.inlineCallbacks
def cmd_stream_token(core: Core, args):
    yield defer.ensureDeferred(_use_cluster_secret(core))
    print(core.stream_token(core.user(args.user), args.ttl))


@defer.inlineCallbacks
def cmd_api_token(core: Core, args):
    yield defer.ensureDeferred(_use_cluster_secret(core))
    try:
        token, entry = yield defer.ensureDeferred(core.api_tokens.create(args.scope, args.ttl))
    except TokenRefused as e:
        raise CommandFailed(str(e)) from None
    print(f"token {entry.id}, scope {entry.scope}, valid until "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(entry.expires))}:")
    print(token)


# Commands below run without opening the store (they must not, or cannot: restore).

def cmd_reload(config: configuration.Config, args) -> None:
    pid = backups.server_pid(config.server.data_dir)
    if pid is None:
        raise CommandFailed(f"no server runs over {config.server.data_dir}")
    os.kill(pid, signal.SIGHUP)
    print(f"asked presenced (pid {pid}) to reload its config; its log says what changed")


@defer.inlineCallbacks
def cmd_status(config: configuration.Config, args):
    body = yield threads.deferToThread(_health, config)
    for key, value in body.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        print(f"{key}: {value}")
    if body.get("status") != "ok":
        raise CommandFailed(f"the server is not healthy: {body.get('status')}")


def _health(config: configuration.Config) -> dict:
    """The running server's ``/health`` answer, asked on the web admin or the comet port
    recorded in ``run/ports.json``."""
    if backups.server_pid(config.server.data_dir) is None:
        raise CommandFailed(f"no server runs over {config.server.data_dir}")
    with open(os.path.join(config.server.data_dir, "run", "ports.json")) as f:
        ports = json.load(f)
    for door in ("webadmin", "comet"):
        if door in ports:
            host = getattr(config, door).bind
            host = "127.0.0.1" if host in ("0.0.0.0", "") else host
            url = f"http://{host}:{ports[door]}/health"
            try:
                with urllib.request.urlopen(url, timeout=10) as reply:
                    return json.load(reply)
            except urllib.error.HTTPError as e:
                return json.load(e)
            except (OSError, ValueError) as e:
                raise CommandFailed(f"{url}: {e}") from None
    raise CommandFailed("neither the web admin nor the comet door is enabled")


def cmd_backup(config: configuration.Config, args):
    return defer.ensureDeferred(_backup(config, args))


async def _backup(config: configuration.Config, args) -> None:
    """The embedded store: SQLite's online backup. Another store (Redis): copied into an
    embedded store in a scratch directory (as copy-store does), verified, and written as
    the same versioned file, so either restores into either."""
    if config.store.backend == "embedded":
        meta = await threads.deferToThread(backups.backup, config.server.data_dir, args.file)
    else:
        with tempfile.TemporaryDirectory(prefix="presenced-backup-") as scratch:
            await _copy_between(make_store(config), _embedded_store(scratch), scratch,
                                args.quiet)
            meta = await threads.deferToThread(backups.backup, scratch, args.file)
    print(f"backup written to {args.file} (format {meta['format']}, schema {meta['schema']})")


def cmd_restore(config: configuration.Config, args):
    if config.store.backend == "embedded":
        backups.restore(args.file, config.server.data_dir, args.force)
        print(f"restored {args.file} into {backups.store_path(config.server.data_dir)}")
        return None
    return defer.ensureDeferred(_restore_by_copy(config, args))


async def _restore_by_copy(config: configuration.Config, args) -> None:
    """A backup file into a store other than the embedded one, which must be empty (or
    ``--force``: what the file holds replaces those users' data, others stay)."""
    target = make_store(config)
    try:
        await target.start()
        users = await target.count_users()
    except StoreError as e:
        raise CommandFailed(str(e)) from None
    finally:
        await target.stop()
    if users and not args.force:
        raise CommandFailed(f"the {config.store.backend} store holds {users} accounts: "
                            "restore into an empty store, or pass --force")
    with tempfile.TemporaryDirectory(prefix="presenced-restore-") as scratch:
        await threads.deferToThread(backups.restore, args.file, scratch)
        await _copy_between(_embedded_store(scratch), make_store(config), scratch,
                            args.quiet)
    print(f"restored {args.file} into the {config.store.backend} store")


def _embedded_store(data_dir: str):
    return make_store(configuration.load(None, {"server": {"data_dir": data_dir}}))


def cmd_copy_store(_config: Optional[configuration.Config], args):
    """Two stores, each from its own config; the source is only read."""
    return defer.ensureDeferred(_copy_store(args))


async def _copy_store(args) -> None:
    source_config, target_config = (configuration.load(path) for path in (args.source,
                                                                         args.target))
    progress = args.progress or os.path.join(target_config.server.data_dir,
                                             "copy-store.progress")
    await _copy_between(make_store(source_config), make_store(target_config), progress,
                        args.quiet, args.restart)


async def _copy_between(source, target, progress: str, quiet: bool,
                        restart: bool = False) -> None:
    """Copy one store into another and verify them (copy-store, and backups of stores
    other than the embedded one); ``progress`` is the resume file, or a scratch directory
    to keep it in."""
    if os.path.isdir(progress):
        progress = os.path.join(progress, "copy.progress")
    opened = []
    try:
        for store in (source, target):
            await store.start()
            opened.append(store)
        copier = StoreCopy(source, target, progress,
                           report=(lambda line: None) if quiet else print)
        counts = await copier.copy(restart=restart)
        print(f"copied: {counts.describe()}")
        agreed, differ = await copier.verify()
        print(f"verified: {agreed.describe()}")
        if differ or agreed.users != counts.users:
            raise CommandFailed(f"the stores differ for {len(differ) or 'some'} user(s)"
                                + (f": {', '.join(differ)}" if differ else "")
                                + " (run copy-store again with --restart)")
    except StoreError as e:
        raise CommandFailed(str(e)) from None
    finally:
        for store in opened:
            await store.stop()


def _open(path: str):
    """A bulk file as text; bytes that are not UTF-8 become a bad line (see
    :func:`presenced.bulk.undecodable`), not an abort of the whole load."""
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
    return open(path, encoding="utf-8", errors="surrogateescape")


def _positive_ttl(text: str) -> int:
    """``--ttl`` as the Thrift ``stream_token`` takes it: a token valid for no time is refused."""
    try:
        ttl = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if ttl <= 0:
        raise argparse.ArgumentTypeError(f"ttl {ttl} is not positive")
    return ttl


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="presencedctl",
        description="Manage presenced accounts, rosters and the subscription graph. "
                    "User names are bare JIDs (alice@example.com); a bare local part means "
                    "that user on the first configured domain.")
    _common_options(parser, argparse.SUPPRESS)
    # The same options after the command (presencedctl roster alice --config x.toml); SUPPRESS
    # keeps a subcommand's absent option from hiding one given before it.
    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        p.set_defaults(fn=fn)
        return p

    for name, fn, text in (("adduser", cmd_adduser, "create an account"),
                           ("passwd", cmd_passwd, "change an account's password")):
        p = command(name, fn, text + " (password from --password, the terminal or stdin)")
        p.add_argument("user")
        p.add_argument("--password", help="the password (visible in ps: prefer stdin)")
    command("deluser", cmd_deluser, "delete an account and its data").add_argument("user")
    for name, fn, text in (("add-friend", cmd_add_friend, "make A and B mutual friends"),
                           ("remove-friend", cmd_remove_friend, "end A and B's friendship")):
        p = command(name, fn, text)
        p.add_argument("a")
        p.add_argument("b")
    p = command("roster", cmd_roster, "print a user's roster")
    p.add_argument("user")
    p.add_argument("--json", action="store_true", help="print JSON")
    command("subscribers", cmd_subscribers,
            "print who receives a user's or a topic's events").add_argument("user")
    for name, fn, text in (("subscribe", cmd_subscribe, "make USER follow SUBJECT (a user "
                                                         "or a topic such as artist/radiohead)"),
                           ("unsubscribe", cmd_unsubscribe, "make USER stop following SUBJECT")):
        p = command(name, fn, text)
        p.add_argument("user")
        p.add_argument("subject")
    p = command("load-friends", cmd_load_friends,
                "load an edge list: two user ids per line, each a mutual friendship "
                "('-' reads stdin; '#' comments and blank lines skipped)")
    p.add_argument("file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p = command("import-users", cmd_import_users,
                "create accounts from lines 'user@domain password' ('-' reads stdin)")
    p.add_argument("file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p = command("stream-token", cmd_stream_token, "print a comet stream token for a user")
    p.add_argument("user")
    p.add_argument("--ttl", type=_positive_ttl, default=86400,
                   help="validity in seconds, more than 0 (default 1 day)")
    p = command("api-token", cmd_api_token, "print a bearer token for the HTTP API on the "
                "admin port (docs/http-api.md), on its last line")
    p.add_argument("--scope", choices=SCOPES, default="publish",
                   help="publish: publish events and read subject counts (default); "
                        "admin: every admin method too")
    p.add_argument("--ttl", type=_positive_ttl, default=API_TOKEN_TTL,
                   help="validity in seconds, more than 0 (default 365 days)")
    command("status", cmd_status, "print the running server's health: state, uptime, "
            "sessions, store, version").set_defaults(store=False)
    command("reload", cmd_reload, "make the running server reload its config and TLS "
            "certificates (SIGHUP)").set_defaults(store=False)
    p = command("backup", cmd_backup, "write a copy of the store to FILE while the server "
                "runs: the embedded store's online backup, or a Redis store copied and "
                "verified into the same versioned file")
    p.add_argument("file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.set_defaults(store=False)
    p = command("restore", cmd_restore, "replace the embedded store of a stopped server by "
                "the backup FILE, or copy FILE into an empty Redis store")
    p.add_argument("file")
    p.add_argument("--force", action="store_true",
                   help="replace an existing embedded store; into Redis: a store that holds "
                        "accounts already")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.set_defaults(store=False)
    p = command("copy-store", cmd_copy_store, "copy every account, roster, graph edge and "
                "capability store from the store of one config to that of another (any "
                "backends), resumable, verified at the end")
    p.add_argument("--from", dest="source", required=True, metavar="CONFIG",
                   help="config of the store to read (no server should write to it)")
    p.add_argument("--to", dest="target", required=True, metavar="CONFIG",
                   help="config of the store to fill")
    p.add_argument("--progress", metavar="FILE",
                   help="resume file (default: copy-store.progress in the target's data_dir)")
    p.add_argument("--restart", action="store_true", help="ignore the progress file")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.set_defaults(store=False, own_config=True)
    return parser


def _common_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--config", "-c", default=default,
                        help="the server's TOML config file")
    parser.add_argument("--data-dir", default=default,
                        help="data directory (overrides [server] data_dir)")


def _load_config(args: argparse.Namespace) -> configuration.Config:
    """The config the server uses; never an empty data directory made up on the spot (a
    typo'd or missing ``--config`` must not show an empty roster and write accounts nobody
    serves): without ``--config``/``--data-dir`` the server's default directory must exist."""
    path, data_dir = getattr(args, "config", None), getattr(args, "data_dir", None)
    if path is None and data_dir is None:
        default = configuration.load(None).server.data_dir
        if not os.path.isdir(default):
            raise configuration.ConfigError(
                "--config", f"no ./{default} here, where the server keeps its data by "
                "default: give the server's config (--config FILE) or --data-dir DIR")
    overrides = {"server": {"data_dir": data_dir}} if data_dir else {}
    return configuration.load(path, overrides)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        config = None if getattr(args, "own_config", False) else _load_config(args)
        if config is None:
            for path in (args.source, args.target):
                configuration.load(path)  # a config error is a usage error (exit 2)
    except configuration.ConfigError as e:
        print(f"presencedctl: {e}", file=sys.stderr)
        sys.exit(2)
    status: list[int] = [0]

    @defer.inlineCallbacks
    def run(reactor: Any):
        if not getattr(args, "store", True):
            try:
                yield defer.maybeDeferred(args.fn, config, args)
            except (CommandFailed, backups.BackupError, OSError) as e:
                print(f"presencedctl: {e}", file=sys.stderr)
                status[0] = 1
            return
        store = make_store(config)
        try:
            yield store.start()
            core = Core(config, store)
            yield defer.maybeDeferred(args.fn, core, args)
        except (CommandFailed, BadUser, admin_port.AdminCallFailed, StoreError) as e:
            print(f"presencedctl: {e}", file=sys.stderr)
            status[0] = 1
        except OSError as e:
            print(f"presencedctl: cannot open {e.filename or 'input'}: {e.strerror or e}",
                  file=sys.stderr)
            status[0] = 1
        finally:
            yield store.stop()

    try:
        task.react(lambda reactor: run(reactor))
    except SystemExit as e:
        if e.code:
            sys.exit(e.code)
    sys.exit(status[0])


if __name__ == "__main__":
    main()

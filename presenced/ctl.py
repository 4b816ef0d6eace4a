"""``presencedctl``: operate a presenced installation from the shell.

Each command opens the configured store directly (as ``prosodyctl`` does), except those that
change what online users see (``add-friend``, ``remove-friend``, ``deluser``): they go through
the running server's Thrift admin port when one answers, so online sessions get roster pushes
and presence at once, and use the store only when no server runs. Exit status: 0 on success,
1 when the command failed (unknown user...), 2 for a usage or config error.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any, Optional, Sequence

from twisted.internet import defer, task

from presenced import bulk
from presenced import config as configuration
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
    user = core.user(args.user)
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
    a, b = core.user(args.a), core.user(args.b)
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
    user = core.user(args.user)
    for subscriber in sorted((yield core.store.get_subscribers(user))):
        print(subscriber)


@defer.inlineCallbacks
def cmd_load_friends(core: Core, args):
    bad = 0

    def on_bad(number: int, line: str, reason: str) -> None:
        nonlocal bad
        bad += 1
        print(f"{args.file}:{number}: skipped: {reason}: {line!r}", file=sys.stderr)

    progress = bulk.Progress("friendships", None if args.quiet else sys.stderr)
    with _open(args.file) as f:
        pairs = bulk.parse_edges(f, core.config.default_domain, on_bad)
        loaded = yield bulk.load_friends(core.store, pairs, progress)
    print(f"loaded {loaded:,} friendships ({progress.rate():,.0f}/s), {bad} bad line(s) skipped")


@defer.inlineCallbacks
def cmd_import_users(core: Core, args):
    created = existing = bad = 0
    progress = bulk.Progress("accounts", None if args.quiet else sys.stderr)
    pending: list[defer.Deferred] = []
    with _open(args.file) as f:
        for number, line in enumerate(f, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            user_text, _, password = line.rstrip("\n").strip().partition(" ")
            try:
                user = core.user(user_text)
            except BadUser as e:
                bad += 1
                print(f"{args.file}:{number}: skipped: {e}", file=sys.stderr)
                continue
            if not password:
                bad += 1
                print(f"{args.file}:{number}: skipped: no password", file=sys.stderr)
                continue
            pending.append(core.accounts.register(user, password))
            if len(pending) >= 256:
                for ok in (yield defer.gatherResults(pending)):
                    created, existing = created + ok, existing + (not ok)
                progress.add(len(pending))
                pending = []
    for ok in (yield defer.gatherResults(pending)):
        created, existing = created + ok, existing + (not ok)
    print(f"created {created:,} account(s), {existing:,} existed already, {bad} bad line(s)")


@defer.inlineCallbacks
def cmd_stream_token(core: Core, args):
    if core.config.cluster.enabled:  # sign with the secret every node checks tokens with
        from presenced.cluster.secret import fetch_shared_secret

        core.secret = yield defer.ensureDeferred(fetch_shared_secret(core.config, core.secret))
    print(core.stream_token(core.user(args.user), args.ttl))


def _open(path: str):
    return sys.stdin if path == "-" else open(path, encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="presencedctl",
        description="Manage presenced accounts, rosters and the subscription graph. "
                    "User names are bare JIDs (alice@example.com); a bare local part means "
                    "that user on the first configured domain.")
    parser.add_argument("--config", "-c", help="TOML config file (default: built-in defaults)")
    parser.add_argument("--data-dir", help="data directory (overrides [server] data_dir)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
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
            "print who receives a user's events").add_argument("user")
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
    p.add_argument("--ttl", type=int, default=86400, help="validity in seconds (default 1 day)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    overrides = {"server": {"data_dir": args.data_dir}} if args.data_dir else {}
    try:
        config = configuration.load(args.config, overrides)
    except configuration.ConfigError as e:
        print(f"presencedctl: {e}", file=sys.stderr)
        sys.exit(2)
    status: list[int] = [0]

    @defer.inlineCallbacks
    def run(reactor: Any):
        store = make_store(config)
        try:
            yield store.start()
            core = Core(config, store)
            yield defer.maybeDeferred(args.fn, core, args)
        except (CommandFailed, BadUser, admin_port.AdminCallFailed, StoreError) as e:
            print(f"presencedctl: {e}", file=sys.stderr)
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

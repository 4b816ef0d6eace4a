"""Who may use the console: the ``[webadmin] admins`` list, checked off the reactor thread.

An entry is either a chat account (``admin@example.com``: its own password, checked by
``core.accounts`` -- the store's salted keys, or the extauth program when one owns the
accounts -- so an operator has one password for chat and console) or a console-only account
``name:scrypt$N$r$p$salt$hash`` for operators who should have no chat account. Make the
latter with ``python3 -m presenced.webadmin.auth NAME`` (password from the terminal or stdin).

Both checks cost tens of milliseconds of CPU by design, so they run through the core's auth
guard (:meth:`presenced.authguard.AuthGuard.run_check`: the check threads, one per core at a
time) — ``core.accounts`` does the same with the store's keys, or asks the program: a login
never stalls other doors, and a flood of logins cannot queue unbounded work.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet import defer

from presenced.config import ConfigError
from presenced.users import BadUser, normalize_user

if TYPE_CHECKING:
    from presenced.accounts import Accounts

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1


@dataclass(frozen=True, slots=True)
class ScryptHash:
    """A console-only password: scrypt (RFC 7914) with its parameters and salt."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def make(cls, password: str) -> "ScryptHash":
        salt = os.urandom(16)
        return cls(SCRYPT_N, SCRYPT_R, SCRYPT_P, salt, _scrypt(password, salt, SCRYPT_N,
                                                               SCRYPT_R, SCRYPT_P))

    @classmethod
    def parse(cls, text: str) -> "ScryptHash":
        scheme, n, r, p, salt, digest = text.split("$")
        if scheme != "scrypt":
            raise ValueError(f"unknown hash scheme {scheme!r}")
        return cls(int(n), int(r), int(p), _unb64(salt), _unb64(digest))

    def __str__(self) -> str:
        return f"scrypt${self.n}${self.r}${self.p}${_b64(self.salt)}${_b64(self.digest)}"

    def verify(self, password: str) -> bool:
        candidate = _scrypt(password, self.salt, self.n, self.r, self.p)
        return hmac.compare_digest(candidate, self.digest)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=256 * 1024 * 1024, dklen=32)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


class AdminAccounts:
    """The configured admins; :meth:`check` fires the admin's name or None."""

    def __init__(self, entries: list[str], accounts: "Accounts", default_domain: str,
                 run_check: Callable[..., Any]):
        self.accounts = accounts
        self.run_check = run_check  # AuthGuard.run_check: the slow part off the reactor
        self.default_domain = default_domain
        self.chat_accounts: set[str] = set()
        self.console_accounts: dict[str, ScryptHash] = {}
        for entry in entries:
            name, colon, hashed = entry.partition(":")
            try:
                if colon:
                    if not name:
                        raise ValueError("empty name")
                    self.console_accounts[name] = ScryptHash.parse(hashed)
                else:
                    self.chat_accounts.add(normalize_user(entry, default_domain))
            except (ValueError, BadUser) as e:
                raise ConfigError("[webadmin] admins",
                                  f"bad entry {entry!r}: {e} (expected user@domain or "
                                  "name:scrypt$... from python3 -m presenced.webadmin.auth)"
                                  ) from None

    def __bool__(self) -> bool:
        return bool(self.chat_accounts or self.console_accounts)

    @defer.inlineCallbacks
    def check(self, name: str, password: str):
        """Fires the canonical admin name when ``password`` is right, else None."""
        if not password:
            return None
        hashed = self.console_accounts.get(name)
        if hashed is not None:
            ok = yield self.run_check(hashed.verify, password)
            return name if ok else None
        user = self._chat_account(name)
        if user is None:
            return None
        ok = yield self.accounts.check_password(user, password)
        return user if ok else None

    def _chat_account(self, name: str) -> Optional[str]:
        try:
            user = normalize_user(name, self.default_domain)
        except BadUser:
            return None
        return user if user in self.chat_accounts else None


def main(argv: Optional[list[str]] = None) -> int:
    """Print an ``admins`` entry for a console-only account."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or ":" in args[0] or not args[0]:
        print("usage: python3 -m presenced.webadmin.auth NAME  (no ':' in NAME; password "
              "from the terminal or stdin)", file=sys.stderr)
        return 2
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Again: "):
            print("passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("empty password", file=sys.stderr)
        return 1
    print(f"{args[0]}:{ScryptHash.make(password)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

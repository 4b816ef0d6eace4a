"""Console logins: a random cookie per login, each with its own CSRF token.

Logins live in memory (a restart logs operators out, which is fine for a console) and are
bounded: past ``MAX_LOGINS`` the least recently used one is dropped, and one idle longer than
the configured ``session_ttl`` is gone. Every form that changes something carries the login's
CSRF token; a page from another site cannot read it, so it cannot forge the form.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from typing import Callable, Optional

from twisted.web.iweb import IRequest

COOKIE = b"presenced_admin"
MAX_LOGINS = 1000


class AdminLogin:
    """One operator's login: who, and the token their forms must carry."""

    __slots__ = ("admin", "csrf", "seen")

    def __init__(self, admin: str, now: float):
        self.admin = admin
        self.csrf = secrets.token_urlsafe(32)
        self.seen = now

    def csrf_ok(self, token: Optional[str]) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class AdminLogins:
    """Cookie -> :class:`AdminLogin`, idle-expiring and bounded."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.clock = clock
        self._logins: OrderedDict[str, AdminLogin] = OrderedDict()

    def __len__(self) -> int:
        return len(self._logins)

    def start(self, request: IRequest, admin: str) -> AdminLogin:
        """Log ``admin`` in: a fresh cookie (never one the browser brought) and CSRF token."""
        self._forget(request)
        while len(self._logins) >= MAX_LOGINS:
            self._logins.popitem(last=False)
        key = secrets.token_urlsafe(32)
        login = self._logins[key] = AdminLogin(admin, self.clock())
        request.addCookie(COOKIE, key.encode(), path=b"/", httpOnly=True, sameSite="strict",
                          secure=request.isSecure())
        return login

    def get(self, request: IRequest) -> Optional[AdminLogin]:
        """The request's login, if its cookie names a live one (which then stays alive)."""
        key = _cookie(request)
        login = self._logins.get(key) if key else None
        if login is None:
            return None
        now = self.clock()
        if now - login.seen > self.ttl:
            del self._logins[key]
            return None
        login.seen = now
        self._logins.move_to_end(key)
        return login

    def end(self, request: IRequest) -> None:
        """Log out: forget the login and tell the browser to drop the cookie."""
        self._forget(request)
        request.addCookie(COOKIE, b"", path=b"/", httpOnly=True, sameSite="strict",
                          max_age=b"0", secure=request.isSecure())

    def _forget(self, request: IRequest) -> None:
        key = _cookie(request)
        if key:
            self._logins.pop(key, None)


def _cookie(request: IRequest) -> Optional[str]:
    value = request.getCookie(COOKIE)
    if not value:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None

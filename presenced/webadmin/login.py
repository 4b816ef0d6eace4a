"""Logging in and out of the console (a form and a cookie rather than HTTP Basic: the password
check is deliberately slow, so it runs once per login, not once per request).

Logins go through the core's auth guard like every other door: a wrong password is answered
after the guard's backoff, and a banned address or account gets 429 without any check."""

from __future__ import annotations

import math
from typing import Optional

from twisted.internet import defer, reactor, task
from twisted.logger import Logger
from twisted.web.template import Tag, tags

from presenced.authguard import Busy, backoff
from presenced.users import BadUser, normalize_user
from presenced.webadmin.console import Console, arg, local_path
from presenced.webadmin.layout import Page, errors, hidden

log = Logger()
MAX_FIELD = 1024
FIRST_FAILURE_DELAY = 1.0  # seconds before the first wrong password is answered (then doubled)


def login_form(console: Console, name: str, target: str, problems: list[str]) -> Tag:
    if not console.accounts:
        problems = problems + ["No admin accounts are configured: list some in [webadmin] "
                               "admins (see docs/admin-console.md)."]
    return tags.form(
        errors(problems),
        tags.label("Admin account", tags.input(name="name", value=name, required="required",
                                               autocomplete="username", autofocus="autofocus")),
        tags.label("Password", tags.input(name="password", type="password",
                                          required="required",
                                          autocomplete="current-password")),
        *hidden(next=target),
        tags.button("Log in", type="submit"),
        method="post", action="/login", class_="login")


def register(console: Console) -> None:
    metrics = console.core.metrics
    guard = console.core.auth_guard

    @console.route("GET", "/login", public=True)
    def show(console: Console, request, login) -> Page:
        target = local_path(arg(request, "next"))
        if login is not None:
            return Page.redirect(target)
        return Page("Log in", login_form(console, "", target, []))

    @console.route("POST", "/login", public=True)
    @defer.inlineCallbacks
    def check(console: Console, request, login):
        name = (arg(request, "name") or "").strip()
        password = arg(request, "password") or ""
        target = local_path(arg(request, "next"))
        problems = _validate(name, password)
        host = getattr(request.getClientAddress(), "host", "?")
        account = _account(name, console.core.config.default_domain)
        wait = guard.refusal(host, account) if not problems else 0.0
        if wait:
            request.setHeader(b"retry-after", str(math.ceil(wait)).encode())
            return Page("Log in", login_form(console, name[:MAX_FIELD], target, [
                "Too many failed logins from this address or for this account: try again "
                f"in {math.ceil(wait)} seconds."]), 429)
        admin: Optional[str] = None
        if not problems:
            try:
                admin = yield console.accounts.check(name, password)
            except Busy:
                request.setHeader(b"retry-after", b"5")
                return Page("Log in", login_form(console, name[:MAX_FIELD], target, [
                    "The server is busy checking other logins: try again."]), 503)
            if admin is None:
                problems = ["Wrong account name or password."]
                failures = guard.failed("webadmin", host, account)
                yield task.deferLater(reactor, backoff(FIRST_FAILURE_DELAY, failures))
        if admin is None:
            metrics.inc("presenced_auth_failures_total", door="webadmin")
            log.info("webadmin: failed login as {name!r} from {peer}", name=name[:100],
                     peer=request.getClientAddress())
            return Page("Log in", login_form(console, name[:MAX_FIELD], target, problems), 401)
        guard.succeeded(host, account)
        console.logins.start(request, admin)
        metrics.inc("presenced_logins_total", door="webadmin")
        log.info("webadmin: {admin} logged in from {peer}", admin=admin,
                 peer=request.getClientAddress())
        return Page.redirect(target)

    @console.route("POST", "/logout")
    def logout(console: Console, request, login) -> Page:
        console.logins.end(request)
        return Page.redirect("/login")


def _account(name: str, default_domain: str) -> str:
    """The name the guard counts failures under: the same as XMPP's for a store account."""
    try:
        return normalize_user(name, default_domain)
    except BadUser:
        return name.lower()


def _validate(name: str, password: str) -> list[str]:
    problems = []
    if not name:
        problems.append("Enter the admin account name.")
    elif len(name) > MAX_FIELD:
        problems.append("That account name is too long.")
    if not password:
        problems.append("Enter the password.")
    elif len(password) > MAX_FIELD:
        problems.append("That password is too long.")
    return problems

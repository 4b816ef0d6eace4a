"""Logging in and out of the console (a form and a cookie rather than HTTP Basic: the password
check is deliberately slow, so it runs once per login, not once per request)."""

from __future__ import annotations

from typing import Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.template import Tag, tags

from presenced.webadmin.console import Console, arg, local_path
from presenced.webadmin.layout import Page, errors, hidden

log = Logger()
MAX_FIELD = 1024


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
        admin: Optional[str] = None
        if not problems:
            admin = yield console.accounts.check(name, password)
            if admin is None:
                problems = ["Wrong account name or password."]
        if admin is None:
            metrics.inc("presenced_auth_failures_total", door="webadmin")
            log.info("webadmin: failed login as {name!r} from {peer}", name=name[:100],
                     peer=request.getClientAddress())
            return Page("Log in", login_form(console, name[:MAX_FIELD], target, problems), 401)
        console.logins.start(request, admin)
        metrics.inc("presenced_logins_total", door="webadmin")
        log.info("webadmin: {admin} logged in from {peer}", admin=admin,
                 peer=request.getClientAddress())
        return Page.redirect(target)

    @console.route("POST", "/logout")
    def logout(console: Console, request, login) -> Page:
        console.logins.end(request)
        return Page.redirect("/login")


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

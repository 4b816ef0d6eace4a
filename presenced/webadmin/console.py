"""The console's HTTP side: one resource tree, routes to page handlers, login enforcement.

A handler is ``handler(console, request, login) -> Page`` (or a Deferred of one). Every route
but the login page needs a live login: a browser without one is sent to ``/login``, a form
post without one gets 403, and every POST must carry the login's CSRF token. Pages go out with
headers that forbid framing (clickjacking a confirmation page) and any script or style not
served from ``/static``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional, Union

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import IResource, NoResource, Resource
from twisted.web.static import File
from twisted.web.template import flattenString, tags

from presenced.core import Core
from presenced.store import StoreError
from presenced.webadmin.auth import AdminAccounts
from presenced.webadmin.layout import AdminPage, Page, href
from presenced.webadmin.sessions import AdminLogin, AdminLogins
from presenced.webadmin.stats import EventRates, SessionCensus, StoreProbe

STATIC = __file__.rsplit("/", 1)[0] + "/static"
SECURITY_HEADERS = {
    b"content-security-policy": b"default-src 'self'; img-src 'self' data:; "
                                b"form-action 'self'; frame-ancestors 'none'",
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"same-origin",
    b"cache-control": b"no-store",
}

Handler = Callable[["Console", server.Request, Optional[AdminLogin]],
                   Union[Page, defer.Deferred, Awaitable[Page]]]


@dataclass
class Route:
    handler: Handler
    public: bool = False
    json: bool = False


@dataclass
class Console:
    """Everything a page handler may read: the core and the console's own state."""

    core: Core
    accounts: AdminAccounts
    logins: AdminLogins
    rates: EventRates
    probe: StoreProbe
    census: SessionCensus
    routes: dict[tuple[bytes, str], Route] = field(default_factory=dict)

    def route(self, method: str, path: str, public: bool = False,
              json: bool = False) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes[(method.encode(), path)] = Route(handler, public, json)
            return handler

        return register


def arg(request: server.Request, name: str) -> Optional[str]:
    """A query or form field as text (bad UTF-8 is replaced, then fails validation)."""
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


class PageDispatcher(Resource):
    """Leaf resource for every console page: finds the route, checks login and CSRF."""

    isLeaf = True
    log = Logger()

    def __init__(self, console: Console):
        super().__init__()
        self.console = console

    def render(self, request: server.Request) -> Any:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        path = request.path.decode("utf-8", "replace")
        method = b"GET" if request.method == b"HEAD" else request.method
        route = self.console.routes.get((method, path))
        login = self.console.logins.get(request)
        if route is None:
            if any(p == path for _, p in self.console.routes):
                page = Page("Not allowed", tags.p("This page does not take that method."), 405)
            else:
                page = Page("Not found", tags.p("There is no such page."), 404)
        elif route.public or login is not None:
            if method == b"POST" and not route.public and not login.csrf_ok(arg(request, "csrf")):
                page = Page("Form expired", tags.p(
                    "This form did not come from this console login (or the login has "
                    "changed). Go back, reload the page and try again."), 403)
            else:
                d = defer.maybeDeferred(route.handler, self.console, request, login)
                d.addErrback(self._failed, request)
                d.addCallback(self._send, request, login, route)
                return server.NOT_DONE_YET
        elif route.json:
            return self._json(request, 401, {"error": "not logged in"})
        elif method == b"GET":
            page = Page.redirect(href("/login", next=_local_target(request)))
        else:
            page = Page("Not logged in", tags.p("Log in first."), 403)
        self._send(page, request, login, route)
        return server.NOT_DONE_YET

    def _failed(self, failure: Failure, request: server.Request) -> Page:
        if failure.check(StoreError):
            self.log.warn("webadmin {path}: store error: {error}", path=request.path,
                          error=failure.getErrorMessage())
            return Page("Store unavailable", tags.p(
                "The roster store did not answer: ", failure.getErrorMessage(),
                ". Try again: every action can safely be repeated."), 503)
        self.log.failure("webadmin {path} failed", failure, path=request.path)
        return Page("Server error", tags.p("This page failed; the server log has details."),
                    500)

    def _send(self, page: Any, request: server.Request, login: Optional[AdminLogin],
              route: Optional[Route]) -> None:
        if request._disconnected:
            return
        if route is not None and route.json and not isinstance(page, Page):
            request.write(self._json(request, 200, page))
            request.finish()
            return
        # The login may have started or ended while the handler ran.
        login = self.console.logins.get(request) if login is None else login
        request.setResponseCode(page.status)
        if page.location is not None:
            request.setHeader(b"location", page.location.encode("utf-8"))
            request.finish()
            return
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        d = flattenString(request, AdminPage(page, login))
        d.addCallback(lambda html: _finish(request, b"<!DOCTYPE html>\n" + html))
        d.addErrback(lambda f: (self.log.failure("rendering {path}", f, path=request.path),
                                _finish(request, b"page failed to render")))

    @staticmethod
    def _json(request: server.Request, status: int, document: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(document).encode("utf-8")


def _finish(request: server.Request, body: bytes) -> None:
    if not request._disconnected:
        request.write(body)
        request.finish()


def _local_target(request: server.Request) -> str:
    return request.uri.decode("utf-8", "replace")


def local_path(target: Optional[str]) -> str:
    """Where to go after logging in: only a path on this console, never another site.

    Browsers drop tabs and newlines from a URL and read a backslash as a slash, so
    ``/%09/evil.example`` (a tab) or ``/%5Cevil.example`` would be ``//evil.example``: a
    path must start with one ``/`` and hold no backslash, whitespace or control character;
    anything else goes to the console's home."""
    if (target and target.startswith("/") and not target.startswith("//")
            and "\\" not in target
            and all(c.isprintable() and not c.isspace() for c in target)):
        return target
    return "/"


class StaticFiles(File):
    """The stylesheet and script; no directory listings."""

    def directoryListing(self) -> Resource:
        return NoResource()


class ConsoleRoot(Resource):
    """``/static``, ``mounted`` resources (``/metrics``), resources other doors offer in
    ``core.web_resources`` (looked up per request, since those doors may start after this
    one), and pages for everything else."""

    def __init__(self, console: Console, mounted: dict[bytes, Resource]):
        super().__init__()
        self.console = console
        self.pages = PageDispatcher(console)
        self.putChild(b"static", StaticFiles(STATIC))
        for name, resource in mounted.items():
            self.putChild(name, resource)

    def getChild(self, path: bytes, request: server.Request) -> IResource:
        offered = self.console.core.web_resources.get(path)
        return self.pages if offered is None else offered

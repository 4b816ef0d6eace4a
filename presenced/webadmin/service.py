"""The web admin door: the console and ``/metrics`` on ``[webadmin] port`` (127.0.0.1:8001).

Pages are registered here from one module per page; a resource another door offers for this
port in ``core.web_resources`` (the IRC bot's HTTP cat endpoint, ``/irccat``) is served once
that door has started.
"""

from __future__ import annotations

from typing import Any

from twisted.application import internet, service
from twisted.web import http, server
from twisted.web.resource import Resource

from presenced.config import Config
from presenced.core import Core
from presenced.health import HealthResource
from presenced.httpdeadline import DeadlineChannel
from presenced.listener import HTTP_REFUSAL, ConnectionLimits
from presenced.service import ListeningService
from presenced.workers import is_worker
from presenced.webadmin import actions, graph, login, overview, tokens, users
from presenced.webadmin.auth import AdminAccounts
from presenced.webadmin.console import Console, ConsoleRoot
from presenced.webadmin.front import AdminFront
from presenced.webadmin.prometheus import MetricsResource, register_metrics
from presenced.webadmin.sessions import AdminLogins
from presenced.webadmin.stats import EventRates, StoreProbe

PAGES = (login, overview, users, graph, actions, tokens)


class AdminRequest(server.Request):
    """A console request; the JSON API's bodies are never read as HTML form submissions
    (twisted.web would parse every POST's Content-Type for that: a seventh of the server's
    time per ``/api/publish`` in ``bench/comet.py --publish http``)."""

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if path.startswith(b"/api/"):
            self._parsePOSTFormSubmission = False
        super().requestReceived(command, path, version)


class AdminSite(server.Site):
    """The console's site: no access log lines per request (the doors log what matters);
    each request must arrive whole within ``[webadmin] request_timeout``, its body at most
    ``[webadmin] max_body_bytes``."""

    protocol = DeadlineChannel
    requestFactory = AdminRequest

    def log(self, request: server.Request) -> None:
        pass

    def __init__(self, core: Core, root: Resource, settings: Any):
        super().__init__(root, timeout=settings.request_timeout)
        self.core = core
        self.max_body_bytes: int = settings.max_body_bytes

    def buildProtocol(self, addr: Any) -> AdminFront:
        """Every connection is read first by the lean channel (``/api``,
        :mod:`presenced.webadmin.front`), which hands the others to :meth:`web_channel`."""
        return AdminFront(self)

    def web_channel(self, addr: Any) -> http.HTTPChannel:
        """twisted.web's channel, to take over a connection from the lean one."""
        return super().buildProtocol(addr)

    def config_reloaded(self, old: Config, new: Config) -> None:
        """Connections opened from now on get the new ``request_timeout``; requests begun
        from now on the new ``max_body_bytes``."""
        self.timeOut = new.webadmin.request_timeout
        self.max_body_bytes = new.webadmin.max_body_bytes

    def body_limit(self, method: bytes, path: bytes) -> int:
        """The most a request body may hold (``DeadlineChannel`` asks)."""
        return self.max_body_bytes


def limits(config: Config) -> ConnectionLimits:
    """The console port's caps (read again on reload), within the files kept in reserve."""
    return ConnectionLimits(config.webadmin.max_connections,
                            config.webadmin.max_connections_per_ip, public=False,
                            refusal=HTTP_REFUSAL)


def make_console(core: Core) -> Console:
    settings = core.config.webadmin
    rates, probe = EventRates(core.router), StoreProbe(core.store)
    accounts = AdminAccounts(settings.admins, core.accounts, core.config.default_domain,
                             core.auth_guard.run_check)
    census = register_metrics(core, rates, probe)
    console = Console(core, accounts, AdminLogins(settings.session_ttl), rates, probe, census)
    core.hooks.add("health-details", lambda: {"sessions_per_door": dict(census.counts)})
    for page in PAGES:
        page.register(console)
    return console


def make_service(core: Core) -> service.IService:
    """The console, in the first process only: with ``[server] workers`` > 1 the others share
    its port with SO_REUSEPORT, and logins kept in one process must not land in another."""
    door = service.MultiService()
    if is_worker():
        return door
    settings = core.config.webadmin
    console = make_console(core)
    mounted: dict[bytes, Resource] = {b"metrics": MetricsResource(core),
                                      b"health": HealthResource(core)}
    site = AdminSite(core, ConsoleRoot(console, mounted), settings)
    core.hooks.add("config-reloaded", site.config_reloaded)
    ListeningService(core, "webadmin", settings.port, settings.bind, site,
                     limits).setServiceParent(door)
    for sampler in (console.rates.sample, console.probe.sample):
        internet.TimerService(settings.stats_interval, sampler).setServiceParent(door)
    return door

"""The web admin door: the console and ``/metrics`` on ``[webadmin] port`` (127.0.0.1:8001).

Pages are registered here from one module per page; a resource another door offers for this
port in ``core.web_resources`` (the IRC bot's HTTP cat endpoint, ``/irccat``) is served once
that door has started.
"""

from __future__ import annotations

from twisted.application import internet, service
from twisted.web import server
from twisted.web.resource import Resource

from presenced.core import Core
from presenced.health import HealthResource
from presenced.httpdeadline import DeadlineChannel
from presenced.listener import HTTP_REFUSAL, ConnectionLimits
from presenced.service import ListeningService
from presenced.workers import is_worker
from presenced.webadmin import actions, graph, login, overview, tokens, users
from presenced.webadmin.auth import AdminAccounts
from presenced.webadmin.console import Console, ConsoleRoot
from presenced.webadmin.prometheus import MetricsResource, register_metrics
from presenced.webadmin.sessions import AdminLogins
from presenced.webadmin.stats import EventRates, StoreProbe

PAGES = (login, overview, users, graph, actions, tokens)


class AdminSite(server.Site):
    """The console's site: no access log lines per request (the doors log what matters);
    each request must arrive whole within ``[webadmin] request_timeout``, its body at most
    ``[webadmin] max_body_bytes``."""

    protocol = DeadlineChannel

    def __init__(self, root: Resource, timeout: float, max_body_bytes: int):
        super().__init__(root, timeout=timeout)
        self.max_body_bytes = max_body_bytes  # DeadlineChannel answers 413 past it

    def log(self, request: server.Request) -> None:
        pass


def make_console(core: Core) -> Console:
    settings = core.config.webadmin
    rates, probe = EventRates(core.router), StoreProbe(core.store)
    accounts = AdminAccounts(settings.admins, core.accounts, core.config.default_domain,
                             core.auth_guard.run_check)
    console = Console(core, accounts, AdminLogins(settings.session_ttl), rates, probe,
                      register_metrics(core, rates, probe))
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
    mounted: dict[bytes, Resource] = {b"metrics": MetricsResource(core, settings.metrics_token),
                                      b"health": HealthResource(core)}
    site = AdminSite(ConsoleRoot(console, mounted), settings.request_timeout,
                     settings.max_body_bytes)
    limits = ConnectionLimits(settings.max_connections, settings.max_connections_per_ip,
                              public=False, refusal=HTTP_REFUSAL)
    ListeningService(core, "webadmin", settings.port, settings.bind, site,
                     limits).setServiceParent(door)
    for sampler in (console.rates.sample, console.probe.sample):
        internet.TimerService(settings.stats_interval, sampler).setServiceParent(door)
    return door

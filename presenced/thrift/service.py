"""The Thrift admin door: ``make_service(core)`` for :mod:`presenced.service`.

The same handler also answers the HTTP/JSON API (:mod:`presenced.thrift.http`), which this
door offers the web admin's port as ``core.web_resources[b"api"]``."""

from __future__ import annotations

from twisted.application.service import IService
from twisted.internet import reactor

from presenced.allowlist import Allowlist
from presenced.config import Config
from presenced.core import Core
from presenced.listener import ConnectionLimits
from presenced.service import ListeningService
from presenced.thrift import admin
from presenced.thrift.handler import AdminHandler
from presenced.thrift.http import AdminAPI
from presenced.thrift.protocol import AdminFactory


def make_service(core: Core) -> IService:
    """Serve ``PresencedAdmin`` (``Ejabthrift`` included) on ``[thrift] bind:port``."""
    settings = core.config.thrift
    handler = AdminHandler(core, reactor)
    factory = AdminFactory(core, admin.PresencedAdmin, handler, reactor,
                           Allowlist(settings.allow))  # the [thrift] allow check parsed it
    core.web_resources[b"api"] = AdminAPI(core, admin.PresencedAdmin, handler)
    return ListeningService(core, "thrift", settings.port, settings.bind, factory, limits)


def limits(config: Config) -> ConnectionLimits:
    """The admin port's caps (read again on reload), within the files kept in reserve."""
    return ConnectionLimits(config.thrift.max_connections, config.thrift.max_connections_per_ip,
                            public=False)

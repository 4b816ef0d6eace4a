"""The Thrift admin door: ``make_service(core)`` for :mod:`presenced.service`.

The same handler also answers the HTTP/JSON API (:mod:`presenced.thrift.http`), which this
door offers the web admin's port as ``core.web_resources[b"api"]``."""

from __future__ import annotations

from twisted.application.service import IService
from twisted.internet import reactor

from presenced.allowlist import Allowlist
from presenced.config import ConfigError
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
    try:
        allow = Allowlist(settings.allow)
    except ValueError as e:
        raise ConfigError("[thrift] allow", str(e)) from None
    handler = AdminHandler(core, reactor)
    factory = AdminFactory(core, admin.PresencedAdmin, handler, reactor, allow)
    core.web_resources[b"api"] = AdminAPI(core, admin.PresencedAdmin, handler)
    limits = ConnectionLimits(settings.max_connections, settings.max_connections_per_ip,
                              public=False)
    return ListeningService(core, "thrift", settings.port, settings.bind, factory, limits)

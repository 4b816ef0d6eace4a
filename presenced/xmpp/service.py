"""The XMPP c2s front door as a service: port 5222 (STARTTLS) and the optional XEP-0368
direct-TLS port, over one :class:`~presenced.xmpp.server.C2SServer`."""

from __future__ import annotations

from typing import Optional

from twisted.application import service
from twisted.internet import task

from presenced.core import Core
from presenced.service import ListeningService
from presenced.xmpp.extauth import ExternalAuth
from presenced.xmpp.server import C2SFactory, C2SServer
from presenced.xmpp.tls import context_factory


class XMPPService(service.MultiService):
    """Runs the listeners and the extauth pool; says ``system-shutdown`` to every stream
    on stop."""

    def __init__(self, core: Core):
        super().__init__()
        self.setName("xmpp-door")
        config = core.config.xmpp
        tls = context_factory(config.certificate, config.private_key,
                              core.config.server.data_dir, list(core.domains))
        self.extauth: Optional[ExternalAuth] = None
        if config.extauth_program:
            self.extauth = ExternalAuth(config.extauth_program, config.extauth_pool_size,
                                        config.extauth_timeout)
        self.server = C2SServer(core, tls, self.extauth)
        self.sweep = task.LoopingCall(self.server.hibernate_idle)
        self.deadlines = task.LoopingCall(self.server.close_late_streams)
        ListeningService(core, "xmpp", config.port, config.bind,
                         C2SFactory(self.server)).setServiceParent(self)
        if config.direct_tls:
            ListeningService(core, "xmpp_tls", config.direct_tls_port, config.bind,
                             C2SFactory(self.server, direct_tls=True), tls=tls
                             ).setServiceParent(self)

    def startService(self) -> None:
        if self.extauth is not None:
            self.extauth.start()
        super().startService()
        self.deadlines.start(1.0, now=False)
        interval = self.server.core.config.xmpp.hibernate_after
        if interval > 0:
            self.sweep.start(interval, now=False)

    def stopService(self):
        for loop in (self.sweep, self.deadlines):
            if loop.running:
                loop.stop()
        self.server.close_all("system-shutdown")
        if self.extauth is not None:
            self.extauth.stop()
        return super().stopService()


def make_service(core: Core) -> service.IService:
    return XMPPService(core)

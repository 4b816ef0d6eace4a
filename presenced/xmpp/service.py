"""The XMPP c2s front door as a service: port 5222 (STARTTLS) and the optional XEP-0368
direct-TLS port, over one :class:`~presenced.xmpp.server.C2SServer`.

This is the door's composition root: :data:`FEATURES` is the one list of feature handlers,
and the only module that imports them all. Adding a feature is writing its module and naming
its handler here."""

from __future__ import annotations

from typing import Optional

from twisted.application import service
from twisted.internet import task

from presenced.core import Core
from presenced.service import ListeningService
from presenced.xmpp.blocking import BlockingHandler
from presenced.xmpp.carbons import CarbonsHandler
from presenced.xmpp.disco import DiscoHandler
from presenced.xmpp.extauth import ExternalAuth
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.last import LastActivityHandler
from presenced.xmpp.mam import ArchiveHandler
from presenced.xmpp.messages import MessageHandler
from presenced.xmpp.pep import PepHandler
from presenced.xmpp.ping import PingHandler
from presenced.xmpp.presence import PresenceHandler
from presenced.xmpp.private import PrivateStorageHandler
from presenced.xmpp.register import RegisterHandler
from presenced.xmpp.roster import RosterHandler
from presenced.xmpp.server import C2SFactory, C2SServer
from presenced.xmpp.session_iq import LegacySessionHandler
from presenced.xmpp.tls import context_factory
from presenced.xmpp.vcard import VCardHandler
from presenced.xmpp.version import VersionHandler

FEATURES: tuple[type[FeatureHandler], ...] = (
    DiscoHandler, RosterHandler, PresenceHandler, MessageHandler, PingHandler,
    VersionHandler, VCardHandler, RegisterHandler, PepHandler, LegacySessionHandler,
    CarbonsHandler, BlockingHandler, PrivateStorageHandler, LastActivityHandler,
    ArchiveHandler)


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
        self.server = C2SServer(core, tls, FEATURES, self.extauth)
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

"""The XMPP c2s front door as a service: port 5222 (STARTTLS) and the optional XEP-0368
direct-TLS port, over one :class:`~presenced.xmpp.server.C2SServer`.

This is the door's composition root: :data:`FEATURES` is the one list of feature handlers,
and the only module that imports them all. Adding a feature is writing its module and naming
its handler here."""

from __future__ import annotations

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from presenced.config import Config
from presenced.core import Core
from presenced.listener import ConnectionLimits
from presenced.service import ListeningService
from presenced.xmpp.admin import AdminCommandsHandler
from presenced.xmpp.avatars import VCardAvatarHandler
from presenced.xmpp.blocking import BlockingHandler
from presenced.xmpp.bookmarks import BookmarksCompatHandler
from presenced.xmpp.carbons import CarbonsHandler
from presenced.xmpp.csi import ClientStateHandler
from presenced.xmpp.disco import DiscoHandler
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.last import LastActivityHandler
from presenced.xmpp.mam import ArchiveHandler
from presenced.xmpp.messages import MessageHandler
from presenced.xmpp.muc import MucHandler
from presenced.xmpp.pep import PepHandler
from presenced.xmpp.ping import PingHandler
from presenced.xmpp.presence import PresenceHandler
from presenced.xmpp.private import PrivateStorageHandler
from presenced.xmpp.register import RegisterHandler
from presenced.xmpp.roster import RosterHandler
from presenced.xmpp.server import C2SFactory, C2SServer
from presenced.xmpp.session_iq import LegacySessionHandler
from presenced.xmpp.pubsub import PubsubServiceHandler
from presenced.xmpp.siteevents import SiteEventHandler
from presenced.xmpp.sm import StreamManagementHandler
from presenced.xmpp.tls import LOAD_ERRORS, context_factory
from presenced.xmpp.upload import UploadHandler
from presenced.xmpp.vcard import VCardHandler
from presenced.xmpp.version import VersionHandler
from presenced.xmpp.web import offer_web_resources

FEATURES: tuple[type[FeatureHandler], ...] = (
    DiscoHandler, RosterHandler, PresenceHandler, MessageHandler, PingHandler,
    VersionHandler, VCardHandler, RegisterHandler, PepHandler, LegacySessionHandler,
    CarbonsHandler, BlockingHandler, PrivateStorageHandler, LastActivityHandler,
    ClientStateHandler, StreamManagementHandler, ArchiveHandler, VCardAvatarHandler,
    BookmarksCompatHandler, SiteEventHandler, PubsubServiceHandler, MucHandler, UploadHandler,
    AdminCommandsHandler)

# What a connection past [xmpp] max_connections(_per_ip) reads before it is closed.
REFUSAL = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
           b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'><stream:error>"
           b"<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
           b"<text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>too many connections</text>"
           b"</stream:error></stream:stream>")


def limits(config: Config) -> ConnectionLimits:
    """The caps of both XMPP ports (each counts its own; read again on reload)."""
    return ConnectionLimits(config.xmpp.max_connections, config.xmpp.max_connections_per_ip,
                            refusal=REFUSAL)


class XMPPService(service.MultiService):
    """Runs the listeners; says ``system-shutdown`` to every stream on stop. (Accounts,
    external auth included, are the core's: ``core.accounts``.)"""

    log = Logger()

    def __init__(self, core: Core):
        super().__init__()
        self.setName("xmpp-door")
        config = core.config.xmpp
        tls = context_factory(config.certificate, config.private_key,
                              core.config.server.data_dir, list(core.domains),
                              config.certificate_dir)
        self.tls = tls
        self.server = C2SServer(core, tls, FEATURES)
        core.hooks.add("config-reloaded", self.config_reloaded)
        self.sweep = task.LoopingCall(self.server.hibernate_idle)
        self.deadlines = task.LoopingCall(self.server.close_late_streams)
        offer_web_resources(core, self.server)
        ListeningService(core, "xmpp", config.port, config.bind,
                         C2SFactory(self.server), limits).setServiceParent(self)
        if config.direct_tls:
            ListeningService(core, "xmpp_tls", config.direct_tls_port, config.bind,
                             C2SFactory(self.server, direct_tls=True), limits, tls=tls
                             ).setServiceParent(self)

    def config_reloaded(self, old: Config, new: Config) -> None:
        """Read the certificate files again (a renewal replaced them) and the limits the
        server copied; a certificate that does not load keeps the running one."""
        settings = new.xmpp
        try:
            fresh = context_factory(settings.certificate, settings.private_key,
                                    new.server.data_dir, list(self.server.core.domains),
                                    settings.certificate_dir)
        except LOAD_ERRORS as e:
            self.log.error("reload: [xmpp] certificate: {error}; the running certificate is "
                           "kept", error=e)
        else:
            self.tls.replace(fresh)
            self.log.info("xmpp: TLS certificate reloaded for new connections")
        self.server.apply_limits(new)

    def startService(self) -> None:
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
        return super().stopService()


def make_service(core: Core) -> service.IService:
    return XMPPService(core)

"""The comet front door as a service: ``make_service(core)`` listens on ``[comet] port``, and
sweeps expired uploads (``[upload] cleanup_interval``) when the door serves them."""

from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.internet import threads

from presenced.comet.door import CometDoor
from presenced.config import Config
from presenced.core import Core
from presenced.listener import HTTP_REFUSAL, ConnectionLimits
from presenced.service import ListeningService


def limits(config: Config) -> ConnectionLimits:
    """The comet port's caps (read again on reload)."""
    return ConnectionLimits(config.comet.max_connections, config.comet.max_connections_per_ip,
                            refusal=HTTP_REFUSAL)


def make_service(core: Core) -> IService:
    settings = core.config.comet
    listening = ListeningService(core, "comet", settings.port, settings.bind, CometDoor(core),
                                 limits)
    if not core.uploads.enabled:
        return listening
    door = MultiService()
    listening.setServiceParent(door)
    TimerService(core.config.upload.cleanup_interval, threads.deferToThread,
                 core.uploads.expire).setServiceParent(door)
    return door

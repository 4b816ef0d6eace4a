"""The IRC door: the bot's connection, the cat listener, the hooks, the HTTP cat resource."""

from __future__ import annotations

from typing import Any, Optional

from twisted.application import service
from twisted.internet import reactor, ssl
from twisted.internet.interfaces import IConnector

from presenced.config import Config, ConfigError
from presenced.core import Core
from presenced.irc.bot import IRCBot, IRCBotFactory
from presenced.irc.bridge import RoomBridge
from presenced.irc.cat import CatFactory
from presenced.irc.commands import Commands
from presenced.irc.hooks import HookAnnouncer
from presenced.irc.http import CatResource
from presenced.listener import ConnectionLimits
from presenced.muc.room import RoomError
from presenced.service import ListeningService
from presenced.workers import is_worker
from presenced.users import BadUser


class BotConnectionService(service.Service):
    """Keeps the bot connected while running (plain TCP or TLS), says goodbye on stop."""

    def __init__(self, bot: IRCBot, hooks: list[HookAnnouncer]):
        self.setName("irc_bot")
        self.bot = bot
        self.hooks = hooks
        self.factory = IRCBotFactory(bot)
        self.connector: Optional[IConnector] = None

    def startService(self) -> None:
        super().startService()
        settings = self.bot.settings
        if settings.tls:
            options = ssl.optionsForClientTLS(settings.server) if settings.tls_verify \
                else ssl.CertificateOptions(verify=False)
            self.connector = reactor.connectSSL(settings.server, settings.port, self.factory,
                                                options)
        else:
            self.connector = reactor.connectTCP(settings.server, settings.port, self.factory)
        for hook in self.hooks:
            hook.start()
        for bridge in self.bot.bridges.values():
            bridge.start()

    def stopService(self) -> Any:
        super().stopService()
        for hook in self.hooks:
            hook.stop()
        for bridge in self.bot.bridges.values():
            bridge.stop()
        self.factory.stopTrying()
        self.bot.quit("presenced stopping")
        if self.connector is not None:
            self.connector.disconnect()
        return None


def cat_limits(config: Config) -> ConnectionLimits:
    """The cat port's caps and idle timeout (read again on reload)."""
    settings = config.irc
    return ConnectionLimits(settings.cat_max_connections, settings.cat_max_connections_per_ip,
                            refusal=b"error: too many connections\n",
                            idle_timeout=settings.cat_idle_timeout, evict_idle=True)


def make_service(core: Core) -> service.IService:
    """The bot, its cat port and hooks; in the master process only (one bot per server,
    however many workers: a worker gets an empty service and ``core.irc`` stays None).
    The bot becomes ``core.irc``; with ``http_token`` its HTTP cat endpoint is offered to the
    web admin as ``/irccat``."""
    door = service.MultiService()
    door.setName("irc")
    if is_worker():
        return door
    settings = core.config.irc
    bot = IRCBot(core, settings)
    core.hooks.add("config-reloaded", bot.config_reloaded)
    bot.commands = Commands(core, bot)
    try:
        hooks = [HookAnnouncer(core, bot, hook) for hook in settings.hooks]
    except BadUser as e:
        raise ConfigError("[irc] hooks", str(e)) from None
    for channel, room in settings.bridges.items():
        if not core.rooms.enabled:
            raise ConfigError("[irc] bridges", "group chat is off ([muc] enabled = false)")
        try:
            bot.add_bridge(RoomBridge(core, bot, channel, core.rooms.room_jid(room)))
        except RoomError as e:
            raise ConfigError("[irc] bridges", f"{channel} = {room!r}: {e.text}") from None
    BotConnectionService(bot, hooks).setServiceParent(door)
    cat = CatFactory(bot, settings.cat_allow, settings.cat_max_line_bytes)
    ListeningService(core, "irc_cat", settings.cat_port, settings.cat_bind, cat,
                     cat_limits).setServiceParent(door)
    core.irc = bot
    if settings.http_token:
        core.web_resources[b"irccat"] = CatResource(bot, settings.http_token)
    return door

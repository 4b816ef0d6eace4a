"""The IRC bot: one connection to the configured server, kept up, and the one path to IRC.

:class:`IRCBot` outlives connections: it knows the channels it wants, queues what should be
said (bounded, sent at the flood limit, kept across a reconnect) and is what other parts call
(cat lines, command replies, hooks; other doors as ``core.irc``, an
:class:`~presenced.core.IIRCAnnouncer`: Thrift ``irc_say``, the web admin's status).
:class:`IRCBotProtocol` is one connection, on Twisted's ``IRCClient``, plus what it lacks:
IRCv3 capability negotiation with SASL PLAIN, nick regain, tolerance of nonsense.
"""

from __future__ import annotations

import base64
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet import protocol, reactor, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.words.protocols import irc
from zope.interface import implementer

from presenced.core import IIRCAnnouncer, IRCStatus
from presenced.irc.cat import ALL_CHANNELS, CatLine
from presenced.irc.members import ChannelMembers
from presenced.irc.text import (irccat_formatting, is_safe_word, payload_bytes, safe_text,
                                split_to_fit)

if TYPE_CHECKING:
    from presenced.config import Config, Section
    from presenced.core import Core
    from presenced.irc.bridge import RoomBridge
    from presenced.irc.commands import Commands

log = Logger()

CHANNEL_PREFIXES = ("#", "&")
# Channels joined on demand (cat lines to new channels) stop here: each costs memory and a
# server slot, and a sender must not be able to make the list grow without end.
MAX_CHANNELS = 100
# SASL (IRCv3 sasl-3.1): AUTHENTICATE payloads travel in 400-byte base64 chunks.
SASL_CHUNK = 400


class IRCRefused(ValueError):
    """The bot cannot send this; the message says why (bad target, queue full...)."""


def is_channel(target: str) -> bool:
    return target.startswith(CHANNEL_PREFIXES)


class FloodQueue:
    """Lines waiting for the server: sent ``rate`` per second after a burst of ``burst``
    (a token bucket), at most ``limit`` waiting; held while no connection is attached."""

    def __init__(self, rate: float, burst: int, limit: int,
                 clock: IReactorTime = reactor):  # type: ignore[assignment]
        self.rate = rate
        self.burst = burst
        self.limit = limit
        self.clock = clock
        self.lines: deque[str] = deque()
        self.tokens = float(burst)
        self.stamp = clock.seconds()
        self.send: Optional[Callable[[str], None]] = None
        self.timer: Optional[IDelayedCall] = None

    def put(self, lines: list[str]) -> None:
        """Queue all of ``lines`` or none (:class:`IRCRefused` when they do not fit)."""
        if len(self.lines) + len(lines) > self.limit:
            raise IRCRefused(f"send queue full ({self.limit} lines waiting); try again later")
        self.lines.extend(lines)
        self.drain()

    def push_front(self, lines: list[str]) -> None:
        """Lines that go before everything waiting (the JOINs after a reconnect); outside
        the bound, which they cannot stretch far: there are at most MAX_CHANNELS."""
        self.lines.extendleft(reversed(lines))

    def attach(self, send: Callable[[str], None]) -> None:
        self.send = send
        self.drain()

    def detach(self) -> None:
        self.send = None
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def drain(self) -> None:
        if self.send is None or (self.timer is not None and self.timer.active()):
            return
        now = self.clock.seconds()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        while self.lines and self.tokens >= 1:
            self.tokens -= 1
            self.send(self.lines.popleft())
        if self.lines:
            self.timer = self.clock.callLater((1 - self.tokens) / self.rate, self.drain)


class IRCBotProtocol(irc.IRCClient):
    """One connection to the IRC server."""

    realname = "presenced irccat bot"
    heartbeatInterval = 60

    def __init__(self, bot: "IRCBot"):
        self.bot = bot
        settings = bot.settings
        self.wanted_nick = settings.nick
        self.nickname = settings.nick
        self.username = settings.nick
        self.password = settings.password or None
        self.sasl = (settings.sasl_username, settings.sasl_password) \
            if settings.sasl_username else None
        self.caps_offered: set[str] = set()
        self.regain: Optional[task.LoopingCall] = None
        self.last_heard = bot.clock.seconds()

    # --- registration, capabilities, SASL ---------------------------------------------

    def register(self, nickname: str, hostname: str = "foo", servername: str = "bar") -> None:
        if self.sasl is not None:
            self.sendLine("CAP LS 302")
        super().register(nickname, hostname, servername)

    def irc_CAP(self, prefix: str, params: list[str]) -> None:
        sub = params[1].upper() if len(params) > 1 else ""
        caps = params[-1].split()
        if sub == "LS":
            self.caps_offered.update(c.split("=", 1)[0] for c in caps)
            if len(params) > 3 and params[2] == "*":
                return  # more LS lines follow
            if "sasl" in self.caps_offered:
                self.sendLine("CAP REQ :sasl")
            else:
                self.give_up("the server offers no SASL (IRCv3 sasl capability)")
        elif sub == "ACK" and "sasl" in caps:
            self.sendLine("AUTHENTICATE PLAIN")
        elif sub == "NAK":
            self.give_up("the server refused the sasl capability")

    def irc_AUTHENTICATE(self, prefix: str, params: list[str]) -> None:
        if params[0] != "+" or self.sasl is None:
            return
        user, password = self.sasl
        token = base64.b64encode(f"{user}\0{user}\0{password}".encode("utf-8")).decode()
        chunks = [token[i:i + SASL_CHUNK] for i in range(0, len(token), SASL_CHUNK)]
        if len(token) % SASL_CHUNK == 0:
            chunks.append("+")
        for chunk in chunks:
            self.sendLine(f"AUTHENTICATE {chunk}")

    def irc_903(self, prefix: str, params: list[str]) -> None:
        log.info("IRC: SASL authentication succeeded")
        self.sendLine("CAP END")

    def sasl_failed(self, prefix: str, params: list[str]) -> None:
        self.give_up(f"SASL authentication failed: {params[-1]}")

    irc_902 = irc_904 = irc_905 = irc_906 = irc_908 = sasl_failed

    def irc_ERR_PASSWDMISMATCH(self, prefix: str, params: list[str]) -> None:
        self.give_up("the server refused our password")

    def give_up(self, reason: str) -> None:
        """Leave rather than stay connected without the identity the config asks for."""
        log.error("IRC: {reason}; disconnecting (retrying with backoff)", reason=reason)
        self.bot.last_error = reason
        self.sendLine("QUIT :" + safe_text(reason))
        self.transport.loseConnection()

    def signedOn(self) -> None:
        self.bot.signed_on(self)
        if self.nickname != self.wanted_nick:
            self.regain = task.LoopingCall(self.setNick, self.wanted_nick)
            self.regain.start(self.bot.settings.nick_regain_seconds, now=False)

    # --- nick regain ------------------------------------------------------------------

    def irc_ERR_NICKNAMEINUSE(self, prefix: str, params: list[str]) -> None:
        if not self._registered:
            super().irc_ERR_NICKNAMEINUSE(prefix, params)
        # Once registered, a refused regain attempt just leaves us on the nick we have.

    def nickChanged(self, nick: str) -> None:
        super().nickChanged(nick)
        if nick == self.wanted_nick:
            self.stop_regain()
            log.info("IRC: regained nick {nick}", nick=nick)

    def userQuit(self, user: str, quitMessage: str) -> None:
        self.bot.members.quit(user)
        for bridge in self.bot.bridges.values():
            bridge.left(user)
        self.regain_from(user)

    def userRenamed(self, oldname: str, newname: str) -> None:
        self.bot.members.renamed(oldname, newname)
        for bridge in self.bot.bridges.values():
            bridge.renamed(oldname, newname)
        self.regain_from(oldname)

    def regain_from(self, nick: str) -> None:
        """``nick`` is free now: take it when it is ours."""
        if nick == self.wanted_nick and self.nickname != self.wanted_nick:
            self.setNick(self.wanted_nick)

    def stop_regain(self) -> None:
        if self.regain is not None and self.regain.running:
            self.regain.stop()
        self.regain = None

    # --- channels ---------------------------------------------------------------------

    def joined(self, channel: str) -> None:
        self.bot.joined_channel(channel)

    def left(self, channel: str) -> None:
        self.bot.left_channel(channel)

    # who is in the auth channel (ChannelMembers)
    def irc_RPL_NAMREPLY(self, prefix: str, params: list[str]) -> None:
        if len(params) >= 4:
            self.bot.members.names(params[2], params[3])
            bridge = self.bot.bridges.get(params[2].lower())
            if bridge is not None:
                bridge.names(params[3])

    def userJoined(self, user: str, channel: str) -> None:
        self.bot.members.joined(user, channel)
        bridge = self.bot.bridges.get(channel.lower())
        if bridge is not None:
            bridge.joined(user.split("!", 1)[0])

    def userLeft(self, user: str, channel: str) -> None:
        self.bot.members.left(user, channel)
        bridge = self.bot.bridges.get(channel.lower())
        if bridge is not None:
            bridge.left(user.split("!", 1)[0])

    def userKicked(self, kickee: str, channel: str, kicker: str, message: str) -> None:
        self.bot.members.left(kickee, channel)
        bridge = self.bot.bridges.get(channel.lower())
        if bridge is not None:
            bridge.left(kickee)

    def kickedFrom(self, channel: str, kicker: str, message: str) -> None:
        log.warn("IRC: kicked from {channel} by {kicker}: {message}", channel=channel,
                 kicker=kicker, message=message)
        self.bot.left_channel(channel)
        self.bot.rejoin_later(channel)

    def join_failed(self, prefix: str, params: list[str]) -> None:
        channel = params[1] if len(params) > 2 else "?"
        log.warn("IRC: cannot join {channel}: {why}", channel=channel, why=params[-1])
        self.bot.last_error = f"cannot join {channel}: {params[-1]}"
        self.bot.rejoin_later(channel)

    irc_ERR_BANNEDFROMCHAN = irc_ERR_INVITEONLYCHAN = irc_ERR_BADCHANNELKEY = join_failed
    irc_ERR_CHANNELISFULL = join_failed

    # --- commands -----------------------------------------------------------------------

    def privmsg(self, user: str, channel: str, message: str) -> None:
        bridge = self.bot.bridges.get(channel.lower())
        if bridge is not None and not message.startswith(self.bot.settings.command_prefix):
            bridge.said(user.split("!", 1)[0], message)
            return
        if self.bot.commands is not None and \
                message.startswith(self.bot.settings.command_prefix):
            nick = user.split("!", 1)[0]
            if not is_channel(channel) and nick not in self.bot.members:
                # Private commands only from members of the auth channel (as irccat):
                # rosters and who is online are not for anyone who can message the bot.
                # Unanswered, so strangers cannot spend the bot's flood budget either.
                self.bot.core.metrics.inc("presenced_irc_commands_total", kind="refused")
                return
            respond_to = channel if is_channel(channel) else nick
            # IRCClient undoes CTCP low-level quoting: a message may carry NUL, CR or LF,
            # which must not reach a handler's argv or environment.
            self.bot.commands.dispatch(user, channel, respond_to, safe_text(message))

    def action(self, user: str, channel: str, data: str) -> None:
        bridge = self.bot.bridges.get(channel.lower())
        if bridge is not None:
            bridge.said(user.split("!", 1)[0], f"/me {data}")

    # --- robustness -------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        """Whatever the server sends, the bot stays up: bad bytes, bad lines, bad params."""
        self.bot.core.metrics.inc("presenced_irc_lines_in_total")
        self.last_heard = self.bot.clock.seconds()
        try:
            super().lineReceived(line.decode("utf-8", "replace"))
        except Exception:
            self.bot.core.metrics.inc("presenced_irc_bad_lines_total")
            log.failure("IRC: could not handle a server line {line!r}", line=line[:200])

    def handleCommand(self, command: str, prefix: str, params: list[str]) -> None:
        method = getattr(self, f"irc_{command}", None)
        try:
            if method is not None:
                method(prefix, params)
            else:
                self.irc_unknown(prefix, command, params)
        except Exception:
            self.bot.core.metrics.inc("presenced_irc_bad_lines_total")
            log.failure("IRC: bad {command} from the server: {params!r}", command=command,
                        params=params[:5])

    def badMessage(self, line: str, excType: Any, excValue: Any, tb: Any) -> None:
        self.bot.core.metrics.inc("presenced_irc_bad_lines_total")
        log.warn("IRC: unparsable line from the server: {line!r}", line=line[:200])

    def _sendHeartbeat(self) -> None:
        """Keepalive PING; a server silent for three intervals is gone (a vanished peer may
        never close the TCP connection), so drop it and reconnect."""
        if self.bot.clock.seconds() - self.last_heard > 3 * self.heartbeatInterval:
            log.warn("IRC: nothing from the server for {s:.0f}s; reconnecting",
                     s=self.bot.clock.seconds() - self.last_heard)
            self.transport.abortConnection()
            return
        super()._sendHeartbeat()

    def connectionLost(self, reason: Any = None) -> None:
        self.stop_regain()
        super().connectionLost(reason)
        self.bot.disconnected(self)


class IRCBotFactory(protocol.ReconnectingClientFactory):
    """Reconnects with exponential backoff; a successful sign-on resets the delay."""

    noisy = False  # our own log lines say what happened to the connection

    def __init__(self, bot: "IRCBot"):
        self.bot = bot
        self.initialDelay = self.delay = bot.settings.reconnect_min_seconds
        self.maxDelay = bot.settings.reconnect_max_seconds
        self.factor = 2.0

    def buildProtocol(self, addr: Any) -> IRCBotProtocol:
        connection = IRCBotProtocol(self.bot)
        connection.factory = self
        return connection

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        super().clientConnectionFailed(connector, reason)
        self.bot.last_error = reason.getErrorMessage()
        log.warn("IRC: cannot connect to {server}: {why}; next try in {delay:.1f}s",
                 server=f"{connector.host}:{connector.port}", why=reason.getErrorMessage(),
                 delay=self.delay)

    def clientConnectionLost(self, connector: Any, reason: Any) -> None:
        super().clientConnectionLost(connector, reason)
        if self.continueTrying:
            log.info("IRC: connection lost ({why}); next try in {delay:.1f}s",
                     why=reason.getErrorMessage(), delay=self.delay)


@implementer(IIRCAnnouncer)
def channel_keys(settings: "Section") -> dict[str, str]:
    """``[irc] channel_keys`` ("#channel key" each) by lower-cased channel name."""
    return {name.lower(): key for name, key in map(str.split, settings.channel_keys)}


class IRCBot:
    """What the rest of presenced sees of IRC: ``say``, cat lines, commands, channels."""

    def __init__(self, core: "Core", settings: "Section",
                 clock: IReactorTime = reactor):  # type: ignore[assignment]
        self.core = core
        self.settings = settings
        self.clock = clock
        self.keys = channel_keys(settings)
        # Channels we want to be in (lower-cased name -> (name, key)): the configured ones,
        # then those cat lines asked for. Rejoined after every reconnect.
        self.wanted: dict[str, tuple[str, Optional[str]]] = {
            c.lower(): (c, self.keys.get(c.lower())) for c in settings.channels}
        # Members of the auth channel may send private commands (empty name: nobody may).
        # It is kept over reloads (who is in it is only known from joining it).
        auth = settings.auth_channel or (settings.channels[0] if settings.channels else "")
        if auth:
            self.wanted.setdefault(auth.lower(), (auth, self.keys.get(auth.lower())))
        self.members = ChannelMembers(auth)
        self.joined: set[str] = set()
        self.rejoins: dict[str, int] = {}
        self.queue = FloodQueue(settings.flood_lines_per_second, settings.flood_burst,
                                settings.queue_lines, clock)
        self.connection: Optional[IRCBotProtocol] = None
        self.commands: Optional[Commands] = None  # set by the service; None: no commands
        # Channels mirrored into rooms (lower-cased name -> bridge), set by the service.
        self.bridges: dict[str, RoomBridge] = {}
        self.last_error = ""
        metrics = core.metrics
        metrics.describe("presenced_irc_connected", "gauge", "1 while the IRC bot is signed on")
        metrics.gauge("presenced_irc_connected", lambda: int(self.connection is not None))
        metrics.describe("presenced_irc_queue_lines", "gauge", "Lines waiting for the flood limit")
        metrics.gauge("presenced_irc_queue_lines", lambda: len(self.queue.lines))
        metrics.describe("presenced_irc_lines_in_total", "counter", "Lines from the IRC server")
        metrics.describe("presenced_irc_bad_lines_total", "counter",
                         "Lines from the IRC server the bot could not use")

    def config_reloaded(self, old: "Config", new: "Config") -> None:
        self.reconfigure(new.irc)

    def reconfigure(self, settings: "Section") -> None:
        """A reload: the bot reads ``settings`` from now on; channels no longer configured
        are parted (the auth channel and those cat lines asked for stay), new ones joined,
        and changed keys used from the next join."""
        old = {c.lower() for c in self.settings.channels}
        self.settings = settings
        self.keys = channel_keys(settings)
        new = {c.lower(): c for c in settings.channels}
        lines = []
        for key in old - set(new):
            if key != self.members.channel and key in self.wanted:
                name = self.wanted.pop(key)[0]
                lines.append(f"PART {name}")
        for key, name in new.items():
            entry = (name, self.keys.get(key))
            if self.wanted.get(key) != entry:
                if key not in self.wanted:
                    lines.append(self.join_line(*entry))
                self.wanted[key] = entry
        if lines:
            log.info("IRC: channels reconfigured: {lines}", lines=", ".join(lines))
            if self.connection is not None:  # else the next sign-on joins what is wanted
                self.queue.push_front(lines)
                self.queue.drain()

    @property
    def nickname(self) -> str:
        return self.connection.nickname if self.connection else self.settings.nick

    @property
    def default_channel(self) -> str:
        if not self.settings.channels:
            raise IRCRefused("no default channel configured: name a #channel or @nick")
        return self.settings.channels[0]

    # --- what others call --------------------------------------------------------------

    def status(self) -> IRCStatus:
        """For operators (the web admin overview), so they never read the bot's fields."""
        return IRCStatus(connected=self.connection is not None, nickname=self.nickname,
                         channels=tuple(sorted(self.joined)),
                         lines_waiting=len(self.queue.lines), last_error=self.last_error)

    def say(self, target: Optional[str], text: str, max_lines: Optional[int] = None) -> int:
        """Send ``text`` to a channel or nick (``@nick`` works too; None: the default
        channel). Each line of it becomes one message, or several when longer than IRC
        allows; past ``max_lines`` messages the rest is counted, not sent. Returns the number
        of messages queued; raises :class:`IRCRefused` (nothing queued) when it cannot."""
        target, join = self.route(target or self.default_channel)
        limit = payload_bytes(self.nickname, "PRIVMSG", target)
        lines = [f"PRIVMSG {target} :{piece}"
                 for raw in text.split("\n") if (line := safe_text(raw).rstrip())
                 for piece in split_to_fit(line, limit)]
        if not lines:
            return 0
        if max_lines is not None and len(lines) > max_lines:
            hidden = len(lines) - max_lines + 1
            lines[max_lines - 1:] = [f"PRIVMSG {target} :... and {hidden} more lines"]
        self.enqueue(target, join, lines)
        return len(lines)

    def route(self, target: str) -> tuple[str, bool]:
        """The target as IRC names it, and whether the bot must join it first; refuses bad
        targets, and channels it is not in unless ``unknown_targets = "join"``."""
        target = target[1:] if target.startswith("@") else target
        if not is_safe_word(target) or "," in target:
            raise IRCRefused(f"bad target {target!r}")
        join = is_channel(target) and target.lower() not in self.wanted
        if join and self.settings.unknown_targets != "join":
            raise IRCRefused(f"not in {target} (unknown_targets = \"report\")")
        if join and len(self.wanted) >= MAX_CHANNELS:
            raise IRCRefused(f"not in {target}, and already in {MAX_CHANNELS} channels")
        return target, join

    def enqueue(self, target: str, join: bool, lines: list[str]) -> None:
        """Queue ``lines`` for ``target``, after a JOIN when it is a new channel."""
        if not join:
            self.queue.put(lines)
            return
        key = self.keys.get(target.lower())
        self.queue.put([self.join_line(target, key)] + lines)
        self.wanted[target.lower()] = (target, key)

    def reply(self, target: str, lines: list[str], status: Optional[str] = None) -> None:
        """A command's answer: at most ``max_reply_lines`` messages of ``lines``, then the
        ``status`` line (an error, a timeout), which is never cut."""
        try:
            self.say(target, "\n".join(lines), self.settings.max_reply_lines)
            if status:
                self.say(target, status)
        except IRCRefused as e:
            log.warn("IRC: reply to {target} dropped: {why}", target=target, why=e)

    def set_topic(self, channel: str, text: str) -> None:
        """Set a channel's topic (empty: clear it). A topic is one line: too long is refused."""
        if not is_channel(channel):
            raise IRCRefused(f"bad channel {channel!r}")
        channel, join = self.route(channel)
        text = safe_text(text).strip()
        room = payload_bytes(self.nickname, "TOPIC", channel)
        if len(text.encode("utf-8")) > room:
            raise IRCRefused(f"topic longer than {room} bytes")
        self.enqueue(channel, join, [f"TOPIC {channel} :{text}"])

    def cat(self, line: CatLine) -> int:
        """Send one parsed cat line; returns IRC lines queued, raises :class:`IRCRefused`."""
        targets = line.targets or (self.default_channel,)
        if line.topic:
            self.set_topic(targets[0], irccat_formatting(line.text))
            return 1
        expanded: list[str] = []
        for target in targets:
            if target == ALL_CHANNELS:
                expanded.extend(name for key, (name, _) in self.wanted.items()
                                if key in self.joined or not self.joined)
            else:
                expanded.append(target)
        sent = 0
        text = irccat_formatting(line.text)
        for target in dict.fromkeys(expanded):
            sent += self.say(target, text)
        return sent

    def add_bridge(self, bridge: "RoomBridge") -> None:
        """Mirror ``bridge.channel`` into its room: the channel is joined like a
        configured one."""
        key = bridge.channel.lower()
        self.bridges[key] = bridge
        self.wanted.setdefault(key, (bridge.channel, self.keys.get(key)))

    # --- connection events -------------------------------------------------------------

    def join_line(self, channel: str, key: Optional[str]) -> str:
        return f"JOIN {channel} {key}" if key else f"JOIN {channel}"

    def signed_on(self, connection: IRCBotProtocol) -> None:
        log.info("IRC: signed on as {nick}", nick=connection.nickname)
        self.connection = connection
        self.last_error = ""
        connection.factory.resetDelay()
        self.queue.push_front([self.join_line(name, key) for name, key in self.wanted.values()])
        self.queue.attach(self.send_line)

    def send_line(self, line: str) -> None:
        if self.connection is not None:
            self.core.metrics.inc("presenced_events_out_total", door="irc")
            self.connection.sendLine(line)

    def joined_channel(self, channel: str) -> None:
        self.joined.add(channel.lower())
        self.rejoins.pop(channel.lower(), None)
        log.info("IRC: joined {channel}", channel=channel)
        bridge = self.bridges.get(channel.lower())
        if bridge is not None:
            bridge.bot_joined()

    def left_channel(self, channel: str) -> None:
        self.joined.discard(channel.lower())
        self.members.bot_left(channel)
        bridge = self.bridges.get(channel.lower())
        if bridge is not None:
            bridge.lost()

    def rejoin_later(self, channel: str) -> None:
        """Rejoin a channel we were kicked from (or could not join), with backoff."""
        entry = self.wanted.get(channel.lower())
        if entry is None:
            return
        tries = self.rejoins.get(channel.lower(), 0)
        self.rejoins[channel.lower()] = tries + 1
        delay = min(self.settings.reconnect_max_seconds,
                    self.settings.reconnect_min_seconds * 2 ** tries)
        self.clock.callLater(delay, self.rejoin, channel.lower())

    def rejoin(self, key: str) -> None:
        entry = self.wanted.get(key)
        if entry is not None and self.connection is not None and key not in self.joined:
            self.connection.sendLine(self.join_line(*entry))

    def disconnected(self, connection: IRCBotProtocol) -> None:
        if self.connection is connection:
            self.connection = None
            self.joined.clear()
            self.members.bot_left()
            self.queue.detach()
            for bridge in self.bridges.values():
                bridge.lost()

    def quit(self, message: str) -> None:
        if self.connection is not None:
            self.connection.quit(safe_text(message))
            self.connection.transport.loseConnection()

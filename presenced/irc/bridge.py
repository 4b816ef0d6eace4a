"""IRC channels bridged to group chat rooms (``[irc] bridges``, docs/irc.md#bridges).

Each bridge is one router session (user ``irc:<channel>``) of the room service, and the IRC
side of one channel:

- every nick on the channel (the bot's own included) is an occupant of the room under that
  nick, or ``nick[irc]`` when an XMPP occupant has it; its real JID is
  ``irc:<channel>/<n>``, so XMPP clients never see an IRC address as a JID of theirs;
- a channel line becomes that occupant's groupchat message; a room message from anyone
  else is said by the bot as ``<nick> text``, through the bot's flood queue and line
  splitting, one IRC message per line of the body (CR, LF and NUL never reach the wire);
- joins, parts, quits, kicks and nick changes on the channel are occupants' presence;
  XMPP occupants' joins, leaves and nick changes are told to the channel in one line each;
- when the bot loses the channel or the connection, the other IRC occupants leave the room
  (the bot's own stays); the bot's rejoin after a reconnect (NAMES) brings them back, and
  room messages said while it was away wait in its queue.

Room calls of one bridge run one after another (a join before that nick's first line).
"""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING, Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from presenced.muc.room import NICK_CHANGED, SELF, RoomConfig, RoomError
from presenced.muc.service import ROOM_MESSAGE, ROOM_PRESENCE
from presenced.router import ISession

if TYPE_CHECKING:
    from presenced.core import Core
    from presenced.events import Event
    from presenced.irc.bot import IRCBot

# IRC colours (with their digits), formatting and other control characters: not allowed in
# XML 1.0, so never in a room.
_CONTROL = re.compile("\x03(?:[0-9]{1,2}(?:,[0-9]{1,2})?)?|[\x00-\x08\x0b\x0c\x0e-\x1f]")
_NAMES_PREFIXES = "~&@%+"


def room_text(text: str) -> str:
    """An IRC line as room text: colours, bold and other control codes dropped."""
    return _CONTROL.sub("", text)


@implementer(ISession)
class RoomBridge:
    """One channel mirrored into one room."""

    log = Logger()
    protocol = "irc"

    def __init__(self, core: "Core", bot: "IRCBot", channel: str, room: str):
        self.core = core
        self.bot = bot
        self.channel = channel
        self.room = room
        self.user = f"irc:{channel.lower()}"
        self.label = room
        self.reals: dict[str, str] = {}  # IRC nick, lower-cased -> occupant's real JID
        self.room_nicks: dict[str, str] = {}  # real JID -> nick in the room
        self.others: set[str] = set()  # nicks of the room's non-IRC occupants
        # The bot's own occupant: the one whose presence events count, and in the room
        # from the bot's first join of the channel until the door stops.
        self.listener: Optional[str] = None
        self.ready = False  # the listener is in: later joins are news for the channel
        self._ids = itertools.count(1)
        self._chain: defer.Deferred = defer.succeed(None)

    # --- life --------------------------------------------------------------------------------

    def start(self) -> None:
        self.core.router.login(self.user, self)

    def deliver(self, event: "Event") -> None:
        if event.payload.get("room") != self.room:
            return
        if event.type == ROOM_MESSAGE:
            self._relay_message(event.payload)
        elif event.type == ROOM_PRESENCE and event.payload["to"] == self.listener:
            self._relay_presence(event.payload)

    def close(self, reason: str) -> None:
        """The router closes sessions when the server stops: the bot leaves with the door."""

    # --- IRC -> room -----------------------------------------------------------------------

    def bot_joined(self) -> None:
        self._then(self._ensure_room)

    def names(self, names: str) -> None:
        for name in names.split():
            self.joined(name.lstrip(_NAMES_PREFIXES))

    def joined(self, nick: str) -> None:
        if nick and nick.lower() not in self.reals:
            real = self.reals[nick.lower()] = f"{self.user}/{next(self._ids)}"
            if nick.lower() == self.bot.nickname.lower():
                self.listener = real
            self._then(self._enter, real, nick)

    def left(self, nick: str) -> None:
        real = self.reals.pop(nick.lower(), None)
        if real is not None:
            self._then(self._leave, real)

    def renamed(self, old: str, new: str) -> None:
        real = self.reals.pop(old.lower(), None)
        if real is not None:
            self.reals[new.lower()] = real
            self._then(self._enter, real, new)

    def said(self, nick: str, text: str) -> None:
        if nick.lower() not in self.reals:
            self.joined(nick)
        real = self.reals[nick.lower()]
        self._then(self._say, real, room_text(text))

    def lost(self) -> None:
        """The bot is out of the channel (parted, kicked, disconnected): so are the nicks it
        saw there. Its own occupant stays, so what the room says meanwhile still reaches
        the bridge and waits in the bot's queue."""
        for nick, real in list(self.reals.items()):
            if real != self.listener:
                del self.reals[nick]
                self._then(self._leave, real)

    def stop(self) -> None:
        """The IRC door stops: every occupant of the bridge leaves, the bot's own too."""
        self.lost()
        for real in self.reals.values():
            self._then(self._leave, real)
        self.reals.clear()
        self.listener = None
        self.core.router.logout(self)

    # --- room calls, in order ----------------------------------------------------------------

    def _then(self, call: Callable, *args) -> None:
        def run(_):
            return defer.ensureDeferred(call(*args))

        def failed(failure):
            if failure.check(RoomError):
                self.log.warn("IRC bridge {channel} -> {room}: {why}", channel=self.channel,
                              room=self.room, why=failure.value)
            else:
                self.log.failure("IRC bridge {channel} -> {room}", failure,
                                 channel=self.channel, room=self.room)
        self._chain.addCallback(run).addErrback(failed)

    async def _ensure_room(self) -> None:
        rooms = self.core.rooms
        try:
            await rooms.create(self.room, None, RoomConfig(
                name=self.channel, persistent=True, history_length=rooms.default_history))
        except RoomError as e:
            if e.condition != "conflict":
                raise

    async def _enter(self, real: str, nick: str) -> None:
        rooms = self.core.rooms
        for candidate in (nick, f"{nick}[irc]"):
            self.room_nicks[real] = candidate  # before the join's presence events arrive
            try:
                await rooms.join(self.room, candidate, real)
            except RoomError as e:
                del self.room_nicks[real]
                if e.condition != "conflict":
                    raise
            else:
                return
        raise RoomError("conflict", f"{nick} and {nick}[irc] are taken in the room")

    async def _leave(self, real: str) -> None:
        self.room_nicks.pop(real, None)
        await self.core.rooms.leave(self.room, real)

    async def _say(self, real: str, text: str) -> None:
        if real in self.room_nicks and text:
            await self.core.rooms.say(self.room, real, text)

    # --- room -> IRC -----------------------------------------------------------------------

    def _relay_message(self, payload) -> None:
        """A room message, once per fan-out (the event reaches this one session)."""
        body = payload["body"]
        nick = payload["nick"]
        if payload["kind"] != "groupchat" or payload["delay"] is not None or not body or \
                nick in self.room_nicks.values():
            return  # private, history, subject only, or one of ours said it
        lines = [line for line in body.split("\n") if line.strip()]
        text = "\n".join(f"<{nick}> {line}" if nick else line for line in lines)
        self._tell(text)

    def _relay_presence(self, payload) -> None:
        """Occupants' comings and goings as the listener sees them; those already in when
        the bot (re)joined are not news."""
        nick = payload["nick"]
        if SELF in payload["codes"]:
            self.ready = self.ready or payload["available"]
            return
        if nick in self.room_nicks.values():
            return
        if payload["available"]:
            if nick not in self.others:
                self.others.add(nick)
                if self.ready:
                    self._tell(f"* {nick} joined {self.room}")
        elif NICK_CHANGED in payload["codes"]:
            self.others.discard(nick)
            self.others.add(payload["new_nick"])
            self._tell(f"* {nick} is now known as {payload['new_nick']}")
        else:
            self.others.discard(nick)
            self._tell(f"* {nick} left {self.room}")

    def _tell(self, text: str) -> None:
        try:
            self.bot.say(self.channel, text)
        except ValueError as e:  # the queue is full: the line is dropped and logged
            self.log.warn("IRC bridge {channel}: {why}", channel=self.channel, why=e)

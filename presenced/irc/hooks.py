"""Hooks: router events announced in IRC channels, as ``[[irc.hooks]]`` tables configure.

Each hook watches its users in the subscription router (:meth:`SubscriptionRouter.watch`:
it sees what reaches them without making them online) and says every event of its types that
is *about* one of them — sent by them (a tune, a presence change, an admin notice) or
addressed to them (a message) — in its channel, through the format string.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from zope.interface import implementer

from presenced import events
from presenced.events import Event
from presenced.irc.bot import IRCRefused
from presenced.router import ISession

if TYPE_CHECKING:
    from presenced.core import Core
    from presenced.irc.bot import IRCBot

log = Logger()

# Events seen through two watched users at once (alice's tune reaching watched bob) are
# announced once: the ids of the last few announced are remembered.
RECENT_EVENTS = 256


class _Fields(dict):
    """Format fields; a field the event does not have is empty rather than an error."""

    def __missing__(self, key: str) -> str:
        return ""


@implementer(ISession)
class HookAnnouncer:
    """One hook table: which event types of which users go to which channel, and how."""

    protocol = "irc"

    def __init__(self, core: "Core", bot: "IRCBot", hook: dict[str, Any]):
        self.core = core
        self.bot = bot
        self.types = frozenset(hook["events"])
        self.users = tuple(dict.fromkeys(core.subject(u) for u in hook["users"]))
        self.channel = hook["channel"]
        self.format = hook["format"]
        self.label = f"hook {self.channel}"
        self.user = self.users[0]
        self.recent: deque[int] = deque(maxlen=RECENT_EVENTS)

    def start(self) -> None:
        for user in self.users:
            self.core.router.watch(user, self)

    def stop(self) -> None:
        for user in self.users:
            self.core.router.unwatch(user, self)

    def deliver(self, event: Event) -> None:
        if events.public_type(event) not in self.types or event.id in self.recent:
            return
        if event.sender not in self.users and event.payload.get("to") not in self.users:
            return
        if event.type == events.TUNE and not event.payload:
            return  # stopped: nothing to announce
        self.recent.append(event.id)
        try:
            self.bot.say(self.channel, self.text(event))
        except IRCRefused as e:
            log.warn("IRC hook for {channel} dropped {event!r}: {why}", channel=self.channel,
                     event=event, why=e)

    def text(self, event: Event) -> str:
        fields = _Fields({k: v for k, v in event.payload.items()
                          if isinstance(v, (str, int, float))})
        data = event.payload.get("data") if event.type == events.SITE else None
        if isinstance(data, dict):  # a site event's fields: {text}, {url}...
            fields.update((k, v) for k, v in data.items() if isinstance(v, (str, int, float)))
        fields.update(type=events.public_type(event), user=event.sender,
                      to=event.payload.get("to") or "",
                      time=time.strftime("%H:%M:%S", time.gmtime(event.time)))
        try:
            return self.format.format_map(fields)
        except (ValueError, IndexError, AttributeError, KeyError) as e:
            return f"[hook format error: {e}] {event.type} from {event.sender}"

    def close(self, reason: str) -> None:
        """Hooks are not disconnected by operators; they end with the IRC service."""

"""Per-user replay buffers: what lets an SSE client resume and a long-poll client miss nothing.

Every event that reaches one of a user's comet streams is kept (once, however many streams
took it) in a bounded buffer. When the user's last stream closes, the buffer watches the user
(``router.watch``) for ``replay_linger`` seconds, so events that arrive while a client
reconnects or between two polls are still collected; then it is dropped. A held buffer is not a
session: the user is offline for every count, ``?online`` and the cluster directory, and a
message to the user counts as not delivered (XMPP keeps it offline too).
Memory is bounded by ``replay_size`` events per user, for online users and those seen within
the linger time.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Optional

from zope.interface import implementer

from presenced.comet.frames import STREAMED_TYPES
from presenced.events import Event
from presenced.router import ISession, SubscriptionRouter


@implementer(ISession)
class UserChannel:
    """One user's replay buffer; a router watcher only while the user has no stream."""

    __slots__ = ("user", "events", "streams", "held_since", "_owner")

    protocol = "comet"
    label = "held"

    def __init__(self, user: str, owner: "Channels"):
        self.user = user
        self.events: Optional[deque[Event]] = None
        self.streams = 0
        self.held_since: Optional[float] = None
        self._owner = owner

    def record(self, event: Event) -> None:
        """Keep ``event`` (called by each stream that took it: recorded once)."""
        events = self.events
        if events is None:
            size = self._owner.size
            if not size:
                return
            events = self.events = deque(maxlen=size)
        elif events and events[-1] is event:
            return
        events.append(event)

    def after(self, cursor: Optional[int]) -> list[Event]:
        """Events delivered after the one with id ``cursor``; all kept ones when ``cursor`` is
        no longer (or never was) in the buffer; none for ``cursor`` None."""
        if cursor is None or not self.events:
            return []
        events = list(self.events)
        for index in range(len(events) - 1, -1, -1):
            if events[index].id == cursor:
                return events[index + 1:]
        return events

    def last_id(self) -> int:
        """The newest kept event's id, or 0 (no event has it): as a cursor, either replays
        exactly what is kept after now."""
        return self.events[-1].id if self.events else 0

    # while held (a router watcher)
    def deliver(self, event: Event) -> None:
        if event.type in STREAMED_TYPES:
            self.record(event)

    def close(self, reason: str) -> None:
        self._owner.drop(self)


class Channels:
    """The replay buffers of one comet door, by user."""

    def __init__(self, router: SubscriptionRouter, size: int, linger: float):
        self.router = router
        self.size = size
        self.linger = linger
        self._by_user: dict[str, UserChannel] = {}

    def __len__(self) -> int:
        return len(self._by_user)

    def get(self, user: str) -> Optional[UserChannel]:
        return self._by_user.get(user)

    def attach(self, user: str) -> UserChannel:
        """A stream of ``user`` opens: its channel stops being held (the stream records)."""
        channel = self._by_user.get(user)
        if channel is None:
            channel = self._by_user[user] = UserChannel(user, self)
        elif channel.held_since is not None:
            channel.held_since = None
            self.router.unwatch(user, channel)
        channel.streams += 1
        return channel

    def detach(self, channel: UserChannel) -> None:
        """A stream closed; the last one leaves the channel held for ``linger`` seconds."""
        channel.streams -= 1
        if channel.streams:
            return
        if self.linger <= 0 or self._by_user.get(channel.user) is not channel:
            self.drop(channel)
            return
        channel.held_since = time.monotonic()
        self.router.watch(channel.user, channel)

    def drop(self, channel: UserChannel) -> None:
        if self._by_user.get(channel.user) is channel and not channel.streams:
            del self._by_user[channel.user]
        if channel.held_since is not None:
            channel.held_since = None
            self.router.unwatch(channel.user, channel)

    def expire(self, now: Optional[float] = None) -> int:
        """Drop channels held longer than the linger time; returns how many."""
        deadline = (time.monotonic() if now is None else now) - self.linger
        stale = [c for c in self._by_user.values()
                 if c.held_since is not None and c.held_since <= deadline]
        for channel in stale:
            self.drop(channel)
        return len(stale)

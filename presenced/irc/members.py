"""Who is in one channel, as the bot sees it: the auth channel whose members may send the bot
private commands (irccat's ``commands.auth_channel``).

Kept from what the server tells every member anyway: the NAMES list sent when the bot joins
(``353``), then JOIN, PART, KICK, QUIT and NICK lines. Forgotten when the bot leaves the
channel or the connection, so nobody is trusted on stale knowledge.
"""

from __future__ import annotations

from typing import Optional

# Prefixes a NAMES reply puts before a nick: owner, admin, op, half-op, voice.
_STATUS_PREFIXES = "~&@%+"


class ChannelMembers:
    """The nicks (lower-cased) in ``channel`` while the bot is in it."""

    def __init__(self, channel: str):
        self.channel = channel.lower()
        self.nicks: set[str] = set()

    def __contains__(self, nick: str) -> bool:
        return nick.lower() in self.nicks

    def names(self, channel: str, names: str) -> None:
        """A ``353`` NAMES reply: ``@al +bob carol`` (several may come for one channel)."""
        if channel.lower() == self.channel:
            self.nicks.update(n.lstrip(_STATUS_PREFIXES).lower() for n in names.split())

    def joined(self, nick: str, channel: str) -> None:
        if channel.lower() == self.channel:
            self.nicks.add(nick.lower())

    def left(self, nick: str, channel: str) -> None:
        """Parted or was kicked."""
        if channel.lower() == self.channel:
            self.nicks.discard(nick.lower())

    def quit(self, nick: str) -> None:
        self.nicks.discard(nick.lower())

    def renamed(self, old: str, new: str) -> None:
        if old.lower() in self.nicks:
            self.nicks.discard(old.lower())
            self.nicks.add(new.lower())

    def bot_left(self, channel: Optional[str] = None) -> None:
        """The bot left ``channel`` (None: the connection): what it knew is stale."""
        if channel is None or channel.lower() == self.channel:
            self.nicks.clear()

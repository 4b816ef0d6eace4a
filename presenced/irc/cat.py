"""The cat listener: every line a script sends to the cat port shows up in IRC.

The line syntax is irccat's, so existing senders work unchanged::

    Backup done                      -> the default channel (the first configured)
    #ops,#music,@alice Backup done   -> those channels and that nick
    #* Deploying                     -> every channel the bot is in
    %TOPIC #ops Frozen until Monday  -> sets the topic of #ops

Lines are UTF-8 and end with LF (CR LF works too). A line that is not UTF-8, longer than
``cat_max_line_bytes`` or refused by the bot gets ``error: ...`` back on the connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from twisted.internet import protocol
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols import basic
from zope.interface import implementer

from presenced.allowlist import Allowlist
from presenced.flow import WriteBudget

if TYPE_CHECKING:
    from presenced.irc.bot import IRCBot

ALL_CHANNELS = "#*"
TOPIC = "%TOPIC"
ERROR_BUFFER_BYTES = 65536
# Cat lines received, on the cat port and over HTTP (:mod:`presenced.irc.http`).
CAT_LINES = "presenced_irc_cat_lines_total"


class BadCatLine(ValueError):
    """A cat line the bot cannot send; the message tells the sender why."""


@dataclass(frozen=True, slots=True)
class CatLine:
    """Where a cat line goes (``None``: the default channel) and what it says."""

    targets: Optional[tuple[str, ...]]
    text: str
    topic: bool = False


def parse_cat_line(line: str) -> Optional[CatLine]:
    """irccat's syntax; None for a blank line (nothing to send)."""
    line = line.strip()
    if not line:
        return None
    head, _, rest = line.partition(" ")
    if head.upper() == TOPIC:
        channel, _, text = rest.strip().partition(" ")
        if not channel.startswith(("#", "&")):
            raise BadCatLine("%TOPIC needs a channel: %TOPIC #channel new topic")
        return CatLine((channel,), text.strip(), topic=True)
    if head.startswith(("#", "@")):
        targets = tuple(t for t in head.split(",") if t)
        text = rest.strip()
        if not text:
            raise BadCatLine(f"nothing to send to {head}")
        for target in targets:
            if not target.startswith(("#", "&", "@")) or len(target) < 2:
                raise BadCatLine(f"bad target {target!r}: use #channel or @nick")
        return CatLine(targets, text)
    return CatLine(None, line)


@implementer(IHalfCloseableProtocol)
class CatProtocol(basic.LineReceiver):
    """One sender: any number of lines, each handed to the bot. A sender that is done
    (``nc -q0`` shuts its side) still gets its error answers before we close."""

    delimiter = b"\n"

    def __init__(self, factory: "CatFactory"):
        self.factory = factory
        self.MAX_LENGTH = factory.max_line_bytes

    def connectionMade(self) -> None:
        # Error answers to a sender that never reads must not pile up in memory.
        self.out = WriteBudget(self.transport, ERROR_BUFFER_BYTES)
        self.factory.opened(self)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: object = None) -> None:
        self.factory.closed(self)

    def lineReceived(self, line: bytes) -> None:
        metrics = self.factory.bot.core.metrics
        metrics.inc(CAT_LINES)
        try:
            text = line.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            self.error("line is not UTF-8 text")
            return
        try:
            parsed = parse_cat_line(text)
            if parsed is not None:
                self.factory.bot.cat(parsed)
        except ValueError as e:
            self.error(str(e))

    def lineLengthExceeded(self, line: bytes) -> None:
        self.error(f"line longer than {self.MAX_LENGTH} bytes refused; closing")
        self.transport.loseConnection()

    def error(self, text: str) -> None:
        self.factory.bot.core.metrics.inc("presenced_irc_cat_errors_total")
        self.out.write(f"error: {text}\n".encode("utf-8"))


class CatFactory(protocol.Factory):
    """Accepts senders from the allowlist (empty: anyone who can reach the port). How many
    and for how long silent is the listener's part ([irc] cat_max_connections...)."""

    noisy = False

    def __init__(self, bot: "IRCBot", allow: list[str], max_line_bytes: int):
        self.bot = bot
        self.allow = Allowlist(allow)
        self.max_line_bytes = max_line_bytes
        self.connections: set[CatProtocol] = set()
        metrics = bot.core.metrics
        metrics.gauge("presenced_connections", lambda: len(self.connections), door="irc")
        metrics.describe(CAT_LINES, "counter", "Cat lines received (cat port and HTTP)")
        metrics.describe("presenced_irc_cat_errors_total", "counter",
                         "Cat lines refused with an error to their sender")

    def buildProtocol(self, addr: object) -> Optional[CatProtocol]:
        if not self.allow.admits(getattr(addr, "host", "")):
            self.bot.core.metrics.inc("presenced_auth_failures_total", door="irc")
            return None
        return CatProtocol(self)

    def opened(self, connection: CatProtocol) -> None:
        self.connections.add(connection)
        self.bot.core.metrics.inc("presenced_connections_total", door="irc")

    def closed(self, connection: CatProtocol) -> None:
        self.connections.discard(connection)

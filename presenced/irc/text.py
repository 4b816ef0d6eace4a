"""Text that goes out to IRC: made safe to put in one protocol line, split to fit it.

IRC is line-based: a CR or LF inside a message would end it and start another command, and a
NUL is not allowed at all. Every piece of text the bot sends passes through :func:`safe_text`
(which turns those into spaces) and :func:`split_to_fit` (which splits, never truncates).
"""

from __future__ import annotations

import re

# RFC 1459/2812: a message is at most 512 bytes, CR LF included.
IRC_LINE_BYTES = 512
# What the server puts before our text when relaying it: ":nick!user@host ". The host part
# is up to 63 bytes (a DNS name); the user part up to 10 on most servers.
_PREFIX_SLACK = 1 + 1 + 10 + 1 + 63 + 1

_UNSAFE = re.compile("[\r\n\0]")


def safe_text(text: str) -> str:
    """``text`` with CR, LF and NUL replaced by spaces: it can never end the IRC line."""
    return _UNSAFE.sub(" ", text)


def is_safe_word(word: str) -> bool:
    """A target or parameter: non-empty, no spaces, nothing that ends a line."""
    return bool(word) and not _UNSAFE.search(word) and " " not in word and \
        not word.startswith(":")


def payload_bytes(nick: str, command: str, target: str) -> int:
    """Bytes left for the text of ``COMMAND target :text`` as other clients receive it."""
    overhead = len(nick.encode()) + _PREFIX_SLACK + len(command) + 1 + \
        len(target.encode()) + 2 + 2
    return IRC_LINE_BYTES - overhead


def split_to_fit(text: str, limit: int) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` UTF-8 bytes, at a space when one is
    near the end, never inside a character. Nothing is dropped except the spaces split at."""
    data = text.encode("utf-8")
    pieces: list[str] = []
    while len(data) > limit:
        cut = limit
        while cut > 0 and (data[cut] & 0xC0) == 0x80:  # not inside a UTF-8 sequence
            cut -= 1
        space = data.rfind(b" ", limit // 2, cut + 1)
        if space > 0:
            pieces.append(data[:space].decode("utf-8"))
            data = data[space + 1:]
        else:
            pieces.append(data[:cut].decode("utf-8"))
            data = data[cut:]
    if data or not pieces:
        pieces.append(data.decode("utf-8"))
    return pieces


# irccat's formatting words (``%GREEN``, ``#BOLD``...), as its senders write them: each
# becomes the mIRC control code; colours are two digits, so a digit after one stays text.
_FORMATTING = {
    "NORMAL": "\x0f", "BOLD": "\x02", "UNDERLINE": "\x1f", "REVERSE": "\x16",
    "WHITE": "\x0300", "BLACK": "\x0301", "DBLUE": "\x0302", "DGREEN": "\x0303",
    "RED": "\x0304", "BROWN": "\x0305", "PURPLE": "\x0306", "ORANGE": "\x0307",
    "YELLOW": "\x0308", "GREEN": "\x0309", "TEAL": "\x0310", "CYAN": "\x0311",
    "BLUE": "\x0312", "PINK": "\x0313", "DGRAY": "\x0314", "GRAY": "\x0315",
}
_FORMATTING_WORD = re.compile("[%#](" + "|".join(_FORMATTING) + ")")


def irccat_formatting(text: str) -> str:
    """``Status is %GREENOK%NORMAL`` -> the same with mIRC colour and style codes, as
    irccat translates it (upper case only: ``#green`` stays a word)."""
    return _FORMATTING_WORD.sub(lambda m: _FORMATTING[m.group(1)], text)

"""User names as every door receives them: a bare JID, or a local part on the first domain."""

from __future__ import annotations

import re

from twisted.words.protocols.jabber.jid import InvalidFormat, JID

# Names that stringprep leaves as they are once lowercased: skip it (bulk loads parse millions).
_PLAIN = re.compile(r"[a-z0-9._+-]+@[a-z0-9.-]+\Z")


class BadUser(ValueError):
    """A user name that is not a valid bare JID."""


def normalize_user(text: str, default_domain: str) -> str:
    """``alice`` -> ``alice@<default_domain>``; ``Alice@Example.com`` -> ``alice@example.com``.

    Raises :class:`BadUser` for anything that is not a bare JID with a local part.
    """
    text = text.strip().lower() if text.isascii() else text.strip()
    if not text:
        raise BadUser("empty user name")
    if "@" not in text:
        text = f"{text}@{default_domain}"
    if _PLAIN.match(text) and ".." not in text:
        return text
    try:
        jid = JID(text)
    except (InvalidFormat, UnicodeError, ValueError) as e:
        raise BadUser(f"{text!r} is not a valid JID: {e}") from None
    if not jid.user or jid.resource:
        raise BadUser(f"{text!r} is not a bare JID user@domain")
    return jid.userhost()

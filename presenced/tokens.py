"""Stream tokens: an HMAC over user and expiry with the server's secret.

A site hands a browser a token for its user (``presencedctl stream-token``, Thrift
``stream_token``); comet checks it without any lookup. Format:
``<expiry unix seconds>.<hex HMAC-SHA256(secret, "user\\nexpiry")>``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Optional

DEFAULT_TTL = 86400


def make_token(secret: bytes, user: str, ttl: int = DEFAULT_TTL,
               now: Optional[float] = None) -> str:
    expiry = int((time.time() if now is None else now) + ttl)
    return f"{expiry}.{_mac(secret, user, expiry)}"


def check_token(secret: bytes, user: str, token: str, now: Optional[float] = None) -> bool:
    """True when ``token`` was made for ``user`` with ``secret`` and has not expired."""
    if not token.isascii():     # never a token of ours; compare_digest takes ASCII only
        return False
    expiry_text, _, mac = token.partition(".")
    if not expiry_text.isdigit() or not mac:
        return False
    expiry = int(expiry_text)
    if expiry < (time.time() if now is None else now):
        return False
    # As bytes: compare_digest refuses str with non-ASCII characters (a forged token may
    # hold any).
    return hmac.compare_digest(mac.encode("utf-8", "replace"),
                               _mac(secret, user, expiry).encode("ascii"))


def _mac(secret: bytes, user: str, expiry: int) -> str:
    return hmac.new(secret, f"{user}\n{expiry}".encode("utf-8"), hashlib.sha256).hexdigest()

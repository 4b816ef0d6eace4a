"""Passwords recently verified, remembered as keyed digests so a repeat login skips PBKDF2.

A SASL PLAIN login (and a web admin or Thrift password check) costs thousands of PBKDF2
rounds; a client that reconnects with the same password pays them again each time. Like the
caches of verified credentials in other servers, :class:`VerifiedPasswords` keeps, for the
last ``size`` successful checks, ``HMAC-SHA-256(secret, user NUL stored key NUL password)``
with a secret drawn at start and held only in memory: never the password, and nothing that
outlives the process.

The account's stored key is part of the digest, and every login reads the credentials from
the store first, so a changed password (new salt, new keys, on any node of a cluster) or a
removed account never matches an old entry: nothing has to be told to forget. Entries are
dropped oldest first past ``size`` (``[server] verified_password_cache``; 0: every check
runs PBKDF2). What an attacker who reads the process's memory gains is documented in
docs/security.md: the secret and the digests, which make guessing a cached account's
password one HMAC per guess instead of one PBKDF2.
"""

from __future__ import annotations

import hmac
import os
from collections import OrderedDict
from typing import Optional

from presenced.store import Credentials


class VerifiedPasswords:
    """A bounded set of (account, stored key, password) digests that checked out."""

    def __init__(self, size: int, secret: Optional[bytes] = None):
        self.size = size
        self._secret = secret or os.urandom(32)
        self._digests: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._digests)

    def _digest(self, user: str, credentials: Credentials, password: str) -> Optional[bytes]:
        keys = b"".join(cred.stored_key for _, cred in sorted(credentials.scram.items()))
        if not keys:
            return None
        message = b"\0".join((user.encode("utf-8"), keys, password.encode("utf-8")))
        return hmac.new(self._secret, message, "sha256").digest()

    def known(self, user: str, credentials: Credentials, password: str) -> bool:
        """True when this password was verified against exactly these stored keys lately."""
        if not self.size:
            return False
        digest = self._digest(user, credentials, password)
        if digest is None or digest not in self._digests:
            return False
        self._digests.move_to_end(digest)
        return True

    def remember(self, user: str, credentials: Credentials, password: str) -> None:
        """Keep a password just verified the slow way; the oldest entry goes past ``size``."""
        if not self.size:
            return
        digest = self._digest(user, credentials, password)
        if digest is None:
            return
        self._digests[digest] = None
        self._digests.move_to_end(digest)
        while len(self._digests) > self.size:
            self._digests.popitem(last=False)

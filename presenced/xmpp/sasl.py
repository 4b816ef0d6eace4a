"""Server side of SASL (RFC 6120 6): SCRAM-SHA-1/SHA-256 (RFC 5802, 7677) and PLAIN (RFC 4616).

A mechanism is a small object per authentication attempt: ``step(data)`` fires a
:class:`Step` -- a challenge to send, success (with the authenticated bare JID and optional
additional data) or a failure condition. SCRAM checks the client's proof against the stored
keys, never seeing the password; PLAIN hands the password to ``core.accounts``, which hashes
it in the auth guard's bounded thread pool (the reactor keeps serving) or asks the external
auth program. When the program owns the passwords (``core.accounts.external_passwords``)
there are no keys, so only PLAIN is offered. Each mechanism asks ``admit(user)`` as soon as it
knows the account, before any costly work: a banned address or account gets
``temporary-auth-failure`` (as Prosody's mod_limit_auth).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
from typing import TYPE_CHECKING, Callable, Optional

from twisted.internet import defer

from presenced.authguard import Busy
from presenced.scram import HASHES
from presenced.users import BadUser

if TYPE_CHECKING:
    from presenced.core import Core


class Step:
    """One answer of a mechanism: ``kind`` is challenge, success or failure."""

    __slots__ = ("kind", "data", "user", "condition", "text")

    def __init__(self, kind: str, data: bytes = b"", user: Optional[str] = None,
                 condition: str = "", text: str = ""):
        self.kind = kind
        self.data = data
        self.user = user
        self.condition = condition
        self.text = text


def failure(condition: str, text: str = "") -> Step:
    return Step("failure", condition=condition, text=text)


def refused(wait: float) -> Step:
    """The answer to an attempt from a banned address or for a banned account."""
    return failure("temporary-auth-failure", "too many failed authentication attempts: try "
                   f"again in {math.ceil(wait)} seconds")


def _admit_all(user: str) -> float:
    """``admit`` of a mechanism no stream has given a guard: nobody waits."""
    return 0.0


class Plain:
    """PLAIN: ``[authzid] NUL authcid NUL password``, checked by ``core.accounts``."""

    name = "PLAIN"

    def __init__(self, core: "Core", domain: str):
        self.core = core
        self.domain = domain
        self.user: Optional[str] = None
        # Seconds this account must wait (0: go ahead); the stream sets it to its guard.
        self.admit: Callable[[str], float] = _admit_all

    @defer.inlineCallbacks
    def step(self, data: bytes):
        try:
            authzid, authcid, password = data.decode("utf-8").split("\0", 2)
            user = self.core.user(f"{authcid}@{self.domain}" if "@" not in authcid else authcid)
        except (ValueError, UnicodeDecodeError, BadUser):
            return failure("malformed-request", "expected authzid NUL authcid NUL password")
        if authzid and authzid not in (user, authcid):
            return failure("invalid-authzid")
        if user.rpartition("@")[2] != self.domain or not password:
            return failure("not-authorized")
        self.user = user
        wait = self.admit(user)
        if wait:
            return refused(wait)
        try:
            ok = yield self.core.accounts.check_password(user, password)
        except Busy:
            return failure("temporary-auth-failure", "the server is busy: try again")
        return Step("success", user=user) if ok else failure("not-authorized")


class Scram:
    """SCRAM without channel binding (we do not offer -PLUS); unknown users get a fake
    salt so the failure looks like a wrong password."""

    def __init__(self, core: "Core", domain: str, name: str):
        self.core = core
        self.domain = domain
        self.name = name
        self.hash = HASHES[name]
        self.user: Optional[str] = None
        self.credential = None
        self.nonce = ""
        self.client_first_bare = ""
        self.server_first = ""
        self.gs2_header = ""
        self.admit: Callable[[str], float] = _admit_all  # as Plain.admit

    def step(self, data: bytes) -> defer.Deferred:
        if self.user is None:
            return defer.ensureDeferred(self._first(data))
        return defer.succeed(self._final(data))

    async def _first(self, data: bytes) -> Step:
        try:
            text = data.decode("utf-8")
            cbind, authzid, bare = text.split(",", 2)
            fields = dict(part.split("=", 1) for part in bare.split(","))
            name = fields["n"].replace("=2C", ",").replace("=3D", "=")
            client_nonce = fields["r"]
        except (ValueError, KeyError, UnicodeDecodeError):
            return failure("malformed-request", "bad client-first-message")
        if cbind not in ("n", "y") or not client_nonce or "m" in fields:
            return failure("malformed-request", "channel binding is not supported")
        try:
            self.user = self.core.user(name if "@" in name else f"{name}@{self.domain}")
        except BadUser:
            return failure("not-authorized")
        if authzid and authzid[2:] not in (self.user, name):
            return failure("invalid-authzid")
        wait = self.admit(self.user)
        if wait:
            return refused(wait)
        creds = None
        if self.user.rpartition("@")[2] == self.domain:
            creds = await self.core.accounts.credentials(self.user)
        self.credential = creds.scram.get(self.name) if creds is not None else None
        if self.credential is not None:
            salt, iterations = self.credential.salt, self.credential.iterations
        else:
            salt = hmac.new(self.core.secret, self.user.encode(), "sha256").digest()[:16]
            iterations = self.core.config.server.scram_iterations
        self.gs2_header = f"{cbind},{authzid},"
        self.client_first_bare = bare
        self.nonce = client_nonce + base64.b64encode(os.urandom(18)).decode()
        self.server_first = (f"r={self.nonce},s={base64.b64encode(salt).decode()},"
                             f"i={iterations}")
        return Step("challenge", self.server_first.encode())

    def _final(self, data: bytes) -> Step:
        try:
            text = data.decode("utf-8")
            without_proof, _, proof_field = text.rpartition(",p=")
            fields = dict(part.split("=", 1) for part in without_proof.split(","))
            proof = base64.b64decode(proof_field, validate=True)
            channel = base64.b64decode(fields["c"])
        except (ValueError, KeyError, UnicodeDecodeError):
            return failure("malformed-request", "bad client-final-message")
        if fields.get("r") != self.nonce or channel != self.gs2_header.encode():
            return failure("not-authorized")
        cred = self.credential
        if cred is None:
            return failure("not-authorized")
        auth_message = ",".join((self.client_first_bare, self.server_first,
                                 without_proof)).encode()
        signature = hmac.new(cred.stored_key, auth_message, self.hash).digest()
        if len(proof) != len(signature):
            return failure("not-authorized")
        client_key = bytes(a ^ b for a, b in zip(proof, signature))
        if not hmac.compare_digest(hashlib.new(self.hash, client_key).digest(),
                                   cred.stored_key):
            return failure("not-authorized")
        server_signature = hmac.new(cred.server_key, auth_message, self.hash).digest()
        return Step("success", b"v=" + base64.b64encode(server_signature), user=self.user)


def mechanisms(core: "Core", secure: bool) -> tuple[str, ...]:
    """Mechanism names to offer on a stream (``secure``: TLS is on)."""
    plain_ok = secure or core.config.xmpp.allow_plain
    if core.accounts.external_passwords:
        return ("PLAIN",) if plain_ok else ()
    names = ("SCRAM-SHA-256", "SCRAM-SHA-1")
    return names + ("PLAIN",) if plain_ok else names


def make_mechanism(name: str, core: "Core", domain: str) -> "Plain | Scram":
    if name == "PLAIN":
        return Plain(core, domain)
    return Scram(core, domain, name)

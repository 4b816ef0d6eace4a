"""SCRAM key derivation (RFC 5802, RFC 7677): accounts keep salted keys, never passwords.

The same keys serve SASL SCRAM (the server checks the client proof without knowing the
password) and SASL PLAIN (the password is salted and hashed, then compared).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from presenced.store import Credentials, ScramCredential

HASHES = {"SCRAM-SHA-1": "sha1", "SCRAM-SHA-256": "sha256"}
DEFAULT_ITERATIONS = 4096


def salted_password(hash_name: str, password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac(hash_name, password.encode("utf-8"), salt, iterations)


def derive(hash_name: str, password: str, salt: bytes, iterations: int) -> ScramCredential:
    salted = salted_password(hash_name, password, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hash_name).digest()
    stored_key = hashlib.new(hash_name, client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hash_name).digest()
    return ScramCredential(salt, iterations, stored_key, server_key)


def make_credentials(password: str, iterations: int = DEFAULT_ITERATIONS) -> Credentials:
    """Fresh salted keys for every supported SCRAM hash."""
    return Credentials({
        mech: derive(h, password, os.urandom(16), iterations) for mech, h in HASHES.items()
    })


def verify_password(credentials: Credentials, password: str) -> bool:
    """Check a plaintext password (SASL PLAIN) against the stored keys."""
    for mech, hash_name in HASHES.items():
        cred = credentials.scram.get(mech)
        if cred is not None:
            candidate = derive(hash_name, password, cred.salt, cred.iterations)
            return hmac.compare_digest(candidate.stored_key, cred.stored_key)
    return False

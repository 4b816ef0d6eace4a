"""API tokens: bearer tokens for the HTTP API (``/api/...`` on the admin port), with a scope.

``presencedctl api-token [--scope publish|admin] [--ttl S]`` makes one; the web admin lists
and revokes them. A token is signed like a stream token (:mod:`presenced.tokens`, the
server's secret, which a cluster shares) and registered in the capability store
``api-tokens`` (one map, kept under the first domain), so it is valid on every node and can
be revoked:

    ``pd1.<scope>.<id>.<expiry>.<HMAC-SHA256(secret, "api\\n<scope>\\n<id>\\nexpiry")>``

Scopes: ``publish`` may publish events and read subject counts; ``admin`` may call every
admin method as well. A token whose signature holds is looked up in the registry, the answer
kept for ``[server] api_token_cache_seconds`` (so a token revoked on another node stops working
there within that time; on this node at once). The HMAC is computed once per token text and
secret: a publisher sends the same token on every request, and the signature check was a few
per cent of the reactor's time per HTTP publish (py-spy); its expiry is still checked each time.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from presenced.store import IMapStore, IRosterStore
from presenced.tokens import check_token, make_token

SCOPES = ("publish", "admin")
STORE = "api-tokens"
VERSION = "pd1"
DEFAULT_TTL = 365 * 86400


class Unknown:
    """The type of :data:`UNKNOWN`."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = Unknown()  # ApiTokens.check_cached: only the registry can tell


class TokenRefused(ValueError):
    """A token cannot be made (bad scope or ttl, too many tokens); the message says why."""


@dataclass(frozen=True)
class ApiToken:
    """A registered token, as the web admin lists it (never the secret part)."""

    id: str
    scope: str
    created: int
    expires: int

    def allows(self, scope: str) -> bool:
        """``admin`` tokens may do what ``publish`` tokens may, and more."""
        return self.scope == "admin" or self.scope == scope


class ApiTokens:
    """The registry of one node (``core.api_tokens``); see the module docstring."""

    def __init__(self, store: IRosterStore, owner: str, secret: Callable[[], bytes],
                 limit: int, cache_seconds: float, clock: Callable[[], float] = time.time):
        self.store = store
        self.owner = owner          # the first domain: whose map holds the registry
        self.secret = secret        # read at each use: a cluster node swaps in the shared one
        self.limit = limit
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._known: dict[str, tuple[Optional[ApiToken], float]] = {}
        # Token texts whose signature held: the secret that signed them, and their expiry.
        self._signed: dict[str, tuple[bytes, int]] = {}

    @property
    def tokens(self) -> IMapStore:
        """The registry's capability map, opened on use (a core built without a store, as
        in-memory door tests make, never touches it)."""
        return self.store.open_map(STORE)

    async def create(self, scope: str, ttl: int = DEFAULT_TTL) -> tuple[str, ApiToken]:
        """A new token (the text to hand out) and its registry entry."""
        if scope not in SCOPES:
            raise TokenRefused(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
        if ttl <= 0:
            raise TokenRefused(f"ttl {ttl} is not positive")
        if len(await self.tokens.items(self.owner)) >= self.limit:
            raise TokenRefused(f"{self.limit} tokens exist already ([server] api_tokens_max):"
                               " revoke some in the web admin")
        now = int(self.clock())
        token_id = secrets.token_hex(8)
        signed = make_token(self.secret(), _label(scope, token_id), ttl, now=now)
        entry = ApiToken(token_id, scope, now, int(signed.partition(".")[0]))
        await self.tokens.set(self.owner, token_id, json.dumps(asdict(entry)))
        return f"{VERSION}.{scope}.{token_id}.{signed}", entry

    async def list(self) -> list[ApiToken]:
        """Every registered token, oldest first (expired ones included, until revoked)."""
        found = [_entry(value) for value in (await self.tokens.items(self.owner)).values()]
        return sorted(found, key=lambda t: (t.created, t.id))

    async def revoke(self, token_id: str) -> bool:
        self._known.pop(token_id, None)
        return await self.tokens.delete(self.owner, token_id)

    async def check(self, text: str) -> Optional[ApiToken]:
        """The registered, unexpired token ``text`` is, or None."""
        verdict = self.check_cached(text)
        if verdict is not UNKNOWN:
            return verdict
        _, scope, token_id = text.split(".", 3)[:3]
        value = await self.tokens.get(self.owner, token_id)
        if len(self._known) >= 2 * self.limit:  # only signed ids get here: stays small
            self._known.clear()
        entry = _entry(value) if value is not None else None
        self._known[token_id] = (entry, self.clock())
        return entry if entry is not None and entry.scope == scope else None

    def check_cached(self, text: str) -> "Optional[ApiToken] | Unknown":
        """What :meth:`check` answers, without a store read: :data:`UNKNOWN` when the
        registry must be asked (a token not seen for ``cache_seconds``). The HTTP publisher's
        hot path calls it to answer within one reactor turn."""
        version, _, rest = text.partition(".")
        scope, _, rest = rest.partition(".")
        token_id, _, signed = rest.partition(".")
        if version != VERSION or scope not in SCOPES or not token_id.isalnum():
            return None
        now = self.clock()
        if not self._signature_holds(text, _label(scope, token_id), signed, now):
            return None
        cached = self._known.get(token_id)
        if cached is None or now - cached[1] > self.cache_seconds:
            return UNKNOWN
        entry = cached[0]
        return entry if entry is not None and entry.scope == scope else None

    def _signature_holds(self, text: str, label: str, signed: str, now: float) -> bool:
        """True when ``signed`` is a valid, unexpired signature of ``label``; a text verified
        before under the same secret skips the HMAC."""
        secret = self.secret()
        known = self._signed.get(text)
        if known is not None and known[0] == secret:
            return known[1] >= now
        if not check_token(secret, label, signed, now=now):
            return False
        if len(self._signed) >= 2 * self.limit:   # only signed texts get here: stays small
            self._signed.clear()
        self._signed[text] = (secret, int(signed.partition(".")[0]))
        return True


def _label(scope: str, token_id: str) -> str:
    return f"api\n{scope}\n{token_id}"


def _entry(value: str) -> ApiToken:
    return ApiToken(**json.loads(value))

"""API tokens (presenced.apitokens) over every store backend: made, checked, scoped,
expired, tampered with, revoked, bounded; what a node caches and for how long."""

from __future__ import annotations

import pytest
import pytest_twisted

from presenced import apitokens
from presenced.apitokens import ApiTokens, TokenRefused

SECRET = b"k" * 32


class Clock:
    """Seconds as the registry reads them, moved by the test."""

    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def registry(store, clock: Clock, secret: bytes = SECRET, limit: int = 3) -> ApiTokens:
    return ApiTokens(store, "localhost", lambda: secret, limit, 10.0, clock)


@pytest_twisted.ensureDeferred
async def test_tokens_are_checked_by_scope_expiry_and_signature(store):
    clock = Clock()
    tokens = registry(store, clock)
    text, entry = await tokens.create("publish", ttl=100)
    assert text.startswith("pd1.publish.") and entry.scope == "publish"
    found = await tokens.check(text)
    assert found == entry and found.allows("publish") and not found.allows("admin")
    clock.now += 1
    admin_text, admin = await tokens.create("admin", ttl=100)
    assert (await tokens.check(admin_text)).allows("publish")
    # Another scope written into the token, another secret, garbage: refused.
    assert await tokens.check(text.replace(".publish.", ".admin.")) is None
    assert await registry(store, clock, secret=b"x" * 32).check(text) is None
    for bad in ("", "pd1", "pd1.publish.x.1.2", "Bearer " + text, text + "0", "pd1.ädmin.a.b.c"):
        assert await tokens.check(bad) is None
    clock.now += 100
    assert await tokens.check(text) is None
    assert [t.id for t in await tokens.list()] == [entry.id, admin.id]


@pytest_twisted.ensureDeferred
async def test_revoked_tokens_stop_at_once_here_and_after_the_cache_elsewhere(store):
    clock = Clock()
    here, there = registry(store, clock), registry(store, clock)
    text, entry = await here.create("publish")
    assert await there.check(text) == entry       # now cached on the other node
    assert await here.revoke(entry.id)
    assert await here.check(text) is None
    assert await there.check(text) == entry       # within api_token_cache_seconds
    clock.now += 11
    assert await there.check(text) is None
    assert not await here.revoke(entry.id)


@pytest_twisted.ensureDeferred
async def test_a_token_text_is_verified_once_per_secret_and_still_expires(store, monkeypatch):
    clock, secret = Clock(), [SECRET]
    tokens = ApiTokens(store, "localhost", lambda: secret[0], 3, 10.0, clock)
    text, entry = await tokens.create("publish", ttl=100)
    verified = []
    real_check = apitokens.check_token
    monkeypatch.setattr(apitokens, "check_token",
                        lambda *args, **kw: verified.append(1) or real_check(*args, **kw))
    for _ in range(5):
        assert await tokens.check(text) == entry
    assert len(verified) == 1
    assert await tokens.check(text + "0") is None       # a forged text is verified, refused
    secret[0] = b"x" * 32                               # the node took a cluster's secret
    assert await tokens.check(text) is None
    secret[0] = SECRET
    assert await tokens.check(text) == entry
    clock.now += 101
    assert await tokens.check(text) is None             # expired, cached signature or not


@pytest_twisted.ensureDeferred
async def test_scopes_ttls_and_the_number_of_tokens_are_bounded(store):
    tokens = registry(store, Clock(), limit=2)
    with pytest.raises(TokenRefused, match="scope"):
        await tokens.create("root")
    with pytest.raises(TokenRefused, match="ttl"):
        await tokens.create("publish", ttl=0)
    await tokens.create("publish")
    await tokens.create("admin")
    with pytest.raises(TokenRefused, match="api_tokens_max"):
        await tokens.create("publish")

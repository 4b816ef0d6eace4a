"""API tokens (``core.api_tokens``): the list of tokens made with ``presencedctl api-token``,
and revoking one. The secret part of a token is never shown: only its id, scope and dates."""

from __future__ import annotations

import time

from twisted.internet import defer
from twisted.web.template import tags

from presenced.webadmin.console import Console, arg
from presenced.webadmin.layout import Page, hidden, href, post_form, table


def _when(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def register(console: Console) -> None:
    @console.route("GET", "/api-tokens")
    @defer.inlineCallbacks
    def listing(console: Console, request, login):
        found = yield defer.ensureDeferred(console.core.api_tokens.list())
        now = time.time()
        revoked = arg(request, "revoked")
        rows = [(token.id, token.scope, _when(token.created),
                 _when(token.expires) + (" (expired)" if token.expires < now else ""),
                 post_form("/api-tokens/revoke", login, *hidden(id=token.id),
                           tags.button("Revoke", type="submit")))
                for token in found]
        return Page("API tokens", [
            tags.p(f"Revoked token {revoked}.", class_="notice") if revoked else "",
            tags.p("Bearer tokens of the HTTP API (/api/..., docs/http-api.md). Make one with ",
                   tags.code("presencedctl api-token [--scope publish|admin]"),
                   "; a revoked token stops working on this node at once and on the other "
                   "nodes of a cluster within [server] api_token_cache_seconds."),
            table(("id", "scope", "made", "valid until", ""), rows, "No API tokens."),
        ])

    @console.route("POST", "/api-tokens/revoke")
    @defer.inlineCallbacks
    def revoke(console: Console, request, login):
        token_id = arg(request, "id") or ""
        if not (yield defer.ensureDeferred(console.core.api_tokens.revoke(token_id))):
            return Page("No such token", tags.p(f"There is no API token {token_id[:40]!r}: "
                                                "revoked already?"), 404)
        return Page.redirect(href("/api-tokens", revoked=token_id))

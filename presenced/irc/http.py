"""Cat lines over HTTP, as newer irccat versions accept them: ``POST`` the same text.

The web admin serves this resource at ``/irccat`` (the IRC door offers it as
``core.web_resources[b"irccat"]`` when ``[irc] http_token`` is set). The body is one or more
cat lines in irccat syntax; the request needs ``Authorization: Bearer <http_token>``. The
answer is JSON:
``{"sent": <IRC lines queued>, "errors": ["line 2: ...", ...]}``, status 200 when every line
was taken, 400 when some were refused (the others were still sent).
"""

from __future__ import annotations

import hmac
import json
from typing import TYPE_CHECKING

from twisted.web.resource import Resource
from twisted.web.server import Request

from presenced.irc.cat import CAT_LINES, parse_cat_line

if TYPE_CHECKING:
    from presenced.irc.bot import IRCBot

# A POST is a few cat lines, not a file upload.
MAX_BODY_BYTES = 65536


class CatResource(Resource):
    """``POST`` cat lines with a bearer token."""

    isLeaf = True

    def __init__(self, bot: "IRCBot", token: str):
        super().__init__()
        self.bot = bot
        self.expected = f"Bearer {token}".encode("utf-8")

    def render(self, request: Request) -> bytes:
        """Only POST; any other method (HEAD and GET included: Resource's HEAD would call a
        render_GET there is none of) gets a JSON 405, as every answer here is JSON."""
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            return self.answer(request, 405, 0, ["use POST with cat lines as the body"])
        return self.render_POST(request)

    def render_POST(self, request: Request) -> bytes:
        given = request.getHeader(b"authorization") or b""
        if not hmac.compare_digest(given, self.expected):
            self.bot.core.metrics.inc("presenced_auth_failures_total", door="irc")
            request.setHeader(b"www-authenticate", b'Bearer realm="irccat"')
            return self.answer(request, 401, 0, ["missing or wrong bearer token"])
        body = request.content.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            return self.answer(request, 413, 0, [f"body over {MAX_BODY_BYTES} bytes"])
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return self.answer(request, 400, 0, ["body is not UTF-8 text"])
        sent, errors = 0, []
        for number, line in enumerate(text.split("\n"), 1):
            self.bot.core.metrics.inc(CAT_LINES)
            try:
                parsed = parse_cat_line(line.rstrip("\r"))
                if parsed is not None:
                    sent += self.bot.cat(parsed)
            except ValueError as e:
                errors.append(f"line {number}: {e}")
        return self.answer(request, 400 if errors else 200, sent, errors)

    def answer(self, request: Request, status: int, sent: int, errors: list[str]) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"sent": sent, "errors": errors}).encode("utf-8")

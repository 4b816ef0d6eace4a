"""The little HTTP/1.1 the lean HTTP protocols need: parse one request head, build responses.

A held-open ``twisted.web`` request costs several KB and a short one tens of microseconds of
machinery; a comet stream, and an ``/api/publish`` on the web admin's port, need only the
request line and a handful of headers, read once. Everything else (the demo page, WebSocket,
the console) is handed to ``twisted.web`` with the bytes already read.
"""

from __future__ import annotations

import json
from typing import Iterable, Optional
from urllib.parse import parse_qsl, unquote

# Headers the lean endpoints look at; the others are skipped without being stored.
WANTED = frozenset((b"accept", b"authorization", b"last-event-id", b"origin", b"connection",
                    b"content-length", b"transfer-encoding", b"upgrade", b"cookie",
                    b"user-agent", b"expect"))

REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           413: "Content Too Large", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
           501: "Not Implemented", 505: "HTTP Version Not Supported"}
# Headers whose repetition makes the request ambiguous (RFC 9112 6.3: a 400, never a guess).
SINGLE = frozenset((b"content-length", b"host"))
KEPT = WANTED | SINGLE


class HTTPError(Exception):
    """A request we answer with ``status`` and a JSON ``{"error": message}`` body."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class RequestHead:
    """The parts of one request head the stream endpoints use."""

    __slots__ = ("method", "path", "query", "version", "headers", "header_lines")

    def __init__(self, method: str, path: str, query: dict[str, str], version: str,
                 headers: dict[bytes, bytes], header_lines: bytes = b""):
        self.method = method
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers          # shared with the next request when its lines repeat
        self.header_lines = header_lines    # the head after the request line, as received

    def header(self, name: bytes) -> str:
        return self.headers.get(name, b"").decode("latin-1")

    @property
    def keep_alive(self) -> bool:
        connection = self.header(b"connection").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    @property
    def has_body(self) -> bool:
        length = self.header(b"content-length").strip()
        return bool(self.headers.get(b"transfer-encoding")) or (length not in ("", "0"))

    def bearer_token(self) -> Optional[str]:
        return bearer_token(self.query.get("token"), self.header(b"authorization"))


def bearer_token(query_token: Optional[str], authorization: str) -> Optional[str]:
    """The stream token from ``?token=`` (an EventSource cannot set headers) or from
    ``Authorization: Bearer``; None when neither has one."""
    if query_token:
        return query_token
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def parse_head(head: bytes, previous: Optional[RequestHead] = None) -> RequestHead:
    """Parse a request head (without the blank line); raises :class:`HTTPError`
    400/501/505. ``previous``: the request before on the same connection, whose headers are
    taken as they are when this head's header lines are the same bytes (a keep-alive
    publisher repeats them: a third of the parse)."""
    request_line, _, header_lines = head.partition(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[0].isalpha():
        raise HTTPError(400, "malformed request line")
    if not parts[0].isupper():      # methods are case-sensitive (RFC 9110 9.1): "get" is none
        raise HTTPError(501, f"unknown method {parts[0].decode('latin-1')!r}")
    method, target, version = (parts[0].decode("latin-1"), parts[1].decode("latin-1"),
                               parts[2].decode("latin-1"))
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HTTPError(505, f"{version} is not supported; use HTTP/1.1")
    if not target.startswith("/"):
        raise HTTPError(400, "request target must be a path")
    path, _, query_text = target.partition("?")
    try:
        path = unquote(path, errors="strict")
        query = dict(parse_qsl(query_text, errors="strict")) if query_text else {}
    except UnicodeDecodeError:
        raise HTTPError(400, "request target is not valid UTF-8") from None
    if previous is not None and previous.header_lines == header_lines:
        headers = previous.headers
    else:
        headers = _parse_headers(header_lines)
    return RequestHead(method, path, query, version, headers, header_lines)


def _parse_headers(header_lines: bytes) -> dict[bytes, bytes]:
    """The headers lean endpoints use (:data:`KEPT`), by lower-case name."""
    headers: dict[bytes, bytes] = {}
    if not header_lines:
        return headers
    for line in header_lines.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise HTTPError(400, "malformed header line")
        name = name.lower()
        if name in SINGLE and name in headers:
            raise HTTPError(400, f"more than one {name.decode('latin-1')} header")
        if name in KEPT:
            headers[name] = value.strip()
    return headers


def response_head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_response(status: int, body: bytes, extra: Iterable[tuple[str, str]] = (),
                  keep_alive: bool = False) -> bytes:
    """A complete response with a JSON body."""
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-store"), ("Connection", "keep-alive" if keep_alive else "close")]
    headers.extend(extra)
    return response_head(status, headers) + body


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode("utf-8")

"""What the web transports of the XMPP door share (:mod:`presenced.xmpp.websocket`,
:mod:`presenced.xmpp.bosh`): the stream header a client's ``<open/>`` or BOSH session
request stands for, stanzas qualified for a framing without a stream header, the Origin
check and request headers as text."""

from __future__ import annotations

from typing import Optional

from twisted.web.server import Request

from presenced.xmpp.stanzas import attr

STANZAS = (b"<message", b"<presence", b"<iq")


def stream_header(to: Optional[str], version: Optional[str]) -> bytes:
    """The TCP stream header for the stream's parser, saying what the web framing said."""
    parts = [b"<stream:stream xmlns='jabber:client' "
             b"xmlns:stream='http://etherx.jabber.org/streams'"]
    for name, value in (("to", to), ("version", version)):
        if value is not None:
            parts.append(b" %s=%s" % (name.encode(), attr(value).encode("utf-8")))
    parts.append(b">")
    return b"".join(parts)


def qualified(data: bytes) -> bytes:
    """A stanza with its ``jabber:client`` namespace on the top element, which a stream's
    serialisation leaves to the stream header (every top ``>`` in our output is the end of
    the start tag: attribute values escape it)."""
    if not data.startswith(STANZAS):
        return data
    end = data.index(b">")
    if b"xmlns=" in data[:end]:
        return data
    name_end = next(len(head) for head in STANZAS if data.startswith(head))
    return data[:name_end] + b" xmlns='jabber:client'" + data[name_end:]


def header(request: Request, name: bytes) -> str:
    return (request.getHeader(name) or b"").decode("latin-1")


def origin_allowed(origins: frozenset[str], request: Request) -> bool:
    """A request without Origin (not a browser), from an origin in ``[comet] cors_origins``
    (or ``"*"``), or from a page of this host."""
    origin = header(request, b"origin")
    if not origin or "*" in origins or origin in origins:
        return True
    return origin.partition("://")[2] == header(request, b"host")

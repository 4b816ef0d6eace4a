"""How an event goes on the wire of each comet format, built once per event.

Every format is an HTTP/1.1 chunk so proxies pass each event on at once: newline-delimited
JSON (``curl -N``), Server-Sent Events with the event id for ``Last-Event-ID`` resume.
"""

from __future__ import annotations

import json

from presenced import events
from presenced.events import Event

# The event types comet clients see; others (raw PEP items) are for XMPP clients only. Site
# events go out with the site's own type (events.public_type).
STREAMED_TYPES = frozenset((events.TUNE, events.PRESENCE, events.MESSAGE, events.ROSTER,
                            events.ADMIN, events.SITE))

# What a stream writes when nothing happened for a heartbeat interval, and at its end.
NDJSON_HEARTBEAT = b"1\r\n\n\r\n"
SSE_HEARTBEAT = b"3\r\n:\n\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
SSE_RETRY_MS = 3000
# The reason the server closes every session with when it stops (``PresencedService``): the
# client is told to reconnect, after a pause, and a load balancer sends it to a node that runs.
SERVER_STOPPING = "system-shutdown"
RECONNECT_AFTER_MS = 3000


def closed_doc(reason: str) -> bytes:
    """The last document of a stream the server ends: why, and whether to reconnect (after
    a server stop, yes: after ``retry_ms``; after an operator's kick, no)."""
    doc: dict[str, object] = {"type": "closed", "reason": reason}
    if reason == SERVER_STOPPING:
        doc.update(reconnect=True, retry_ms=RECONNECT_AFTER_MS)
    return json.dumps(doc).encode("utf-8")


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def ndjson_frame(event: Event) -> bytes:
    return chunk(event.to_json() + b"\n")


def sse_frame(event: Event) -> bytes:
    return chunk(b"id: %d\ndata: %b\n\n" % (event.id, event.to_json()))


def ndjson_line(doc: bytes) -> bytes:
    """A JSON document that is not an event (welcome, closed) as an NDJSON chunk."""
    return chunk(doc + b"\n")


def sse_data(doc: bytes, retry: bool = False) -> bytes:
    """A JSON document without an event id (welcome, closed) as an SSE chunk."""
    prefix = b"retry: %d\n" % SSE_RETRY_MS if retry else b""
    return chunk(prefix + b"data: " + doc + b"\n\n")

"""Stream management (XEP-0198, ``urn:xmpp:sm:3``): acknowledgements and resumption.

Why: a mobile client's TCP connection dies without a ``</stream>``; what the server wrote
into the dead socket is lost, and the contacts see the user leave and come back at every
network change. With stream management the client acknowledges what it handled, the server
keeps what it did not, and a client that reconnects within ``[xmpp] resume_timeout`` picks its
session up where it was (``<resume/>``): still online for everyone, every unacknowledged
stanza sent again.

Cheap when unused: a session that never sends ``<enable/>`` has ``session.sm is None`` and
pays one attribute test per stanza. An enabled session gets one :class:`SmState`.

Bounds: a session keeps at most ``[xmpp] sm_max_unacked`` stanzas and
``sm_max_unacked_bytes`` bytes unacknowledged; past either, its stream is closed with
``resource-constraint`` (the server will not buffer more for it) and the session ends at
once, without resumption. When an enabled session ends -- timeout, bound, replaced, clean
close, shutdown -- the stanzas it never acknowledged go to the ``xmpp-unacknowledged`` hook
(:mod:`presenced.xmpp.messages` keeps the messages offline).

Resumption lives in this node's memory: a ``<resume/>`` reaching another node of a cluster
finds no such session and fails with ``item-not-found``; the client then binds afresh.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from typing import TYPE_CHECKING, Optional

from twisted.internet import reactor
from twisted.internet.interfaces import IDelayedCall
from twisted.words.xish import domish

from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.stanzas import attr

if TYPE_CHECKING:
    from presenced.xmpp.session import C2SSession
    from presenced.xmpp.stream import C2SStream

NS_SM = "urn:xmpp:sm:3"
# Counters are unsigned 32-bit and wrap (XEP-0198 4).
MASK = 0xFFFFFFFF
# An ack is requested once this many stanzas are unacknowledged and none is outstanding.
ACK_EVERY = 5
REQUEST = b"<r xmlns='urn:xmpp:sm:3'/>"
UNEXPECTED = (b"<failed xmlns='urn:xmpp:sm:3'>"
              b"<unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>")
NOT_FOUND = (b"<failed xmlns='urn:xmpp:sm:3'>"
             b"<item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>")


def _counter(text: Optional[str]) -> Optional[int]:
    """An ``h`` attribute, or None when it is not an unsigned 32-bit integer."""
    if text is None or not text.isdigit():
        return None
    value = int(text)
    return value if value <= MASK else None


class SmState:
    """The stream management state of one enabled session.

    ``queue`` holds ``(stanza bytes, time sent)`` not yet acknowledged, oldest first;
    ``timer`` is set while the connection is gone and the session waits for ``<resume/>``.
    """

    __slots__ = ("manager", "id", "timeout", "handled", "sent", "queue", "queued_bytes",
                 "requested", "timer", "full")

    def __init__(self, manager: "StreamManagementHandler", resume_id: Optional[str],
                 timeout: int):
        self.manager = manager
        self.id = resume_id  # None: acknowledgements only, no resumption
        self.timeout = timeout
        self.handled = 0  # stanzas received from the client
        self.sent = 0  # stanzas sent to the client
        self.queue: deque[tuple[bytes, float]] = deque()
        self.queued_bytes = 0
        self.requested = False  # an <r/> is outstanding
        self.timer: Optional[IDelayedCall] = None
        self.full = False  # past the bound: the session ends

    def stanza_handled(self) -> None:
        """A stanza from the client was taken (the server's dispatch calls this)."""
        self.handled = (self.handled + 1) & MASK

    def stanza_sent(self, session: "C2SSession", data: bytes) -> None:
        """A stanza to the client: kept until acknowledged, within the session's bound."""
        self.sent = (self.sent + 1) & MASK
        queue = self.queue
        queue.append((data, time.time()))
        self.queued_bytes += len(data)
        manager = self.manager
        if len(queue) > manager.max_stanzas or self.queued_bytes > manager.max_bytes:
            if not self.full:
                # Not inside this delivery: its sender still counts the stanza as delivered
                # (and kept here), so it must not find the user gone and store it twice.
                self.full = True
                reactor.callLater(0, manager.overflowed, session, self)
        elif len(queue) >= ACK_EVERY and not self.requested and self.timer is None:
            self.requested = True
            session.stream.write(REQUEST)

    def acknowledge(self, h: int) -> bool:
        """Forget the stanzas the client says it handled; False if it claims more than
        were sent."""
        queue = self.queue
        count = (h - (self.sent - len(queue))) & MASK
        if count > len(queue):
            return False
        for _ in range(count):
            self.queued_bytes -= len(queue.popleft()[0])
        self.requested = False
        return True

    def detach(self, session: "C2SSession") -> bool:
        """The connection died without ``</stream>``: wait ``timeout`` seconds for a
        resumption (True), or not at all when the client did not ask for one (False)."""
        if self.id is None or self.timeout <= 0:
            return False
        self.requested = False
        self.timer = reactor.callLater(self.timeout, self.manager.expire, session)
        return True


class StreamManagementHandler(FeatureHandler):
    """``<enable/>``, ``<r/>``, ``<a/>`` on bound streams, ``<resume/>`` instead of a bind;
    the registry of resumable sessions on this node."""

    stream_features = ((NS_SM, "sm"),)
    nonza_routes = {NS_SM: "on_element"}

    def attached(self) -> None:
        config = self.core.config.xmpp
        self.resume_timeout: int = config.resume_timeout
        self.max_stanzas: int = config.sm_max_unacked
        self.max_bytes: int = config.sm_max_unacked_bytes
        self.resumable: dict[str, "C2SSession"] = {}
        self.core.hooks.add("xmpp-session-ended", self.session_ended)

    def on_element(self, stream: "C2SStream", element: domish.Element) -> None:
        """Every top-level ``urn:xmpp:sm:3`` element of an authenticated stream."""
        name, session = element.name, stream.session
        if session is None:
            if name == "resume":
                self.resume(stream, element)
            else:
                stream.write(UNEXPECTED)
        elif name == "enable":
            self.enable(session, element)
        elif session.sm is None:
            stream.write(UNEXPECTED)
        elif name == "r":
            stream.write(b"<a xmlns='urn:xmpp:sm:3' h='%d'/>" % session.sm.handled)
        elif name == "a":
            h = _counter(element.getAttribute("h"))
            if h is None or not session.sm.acknowledge(h):
                stream.stream_error("undefined-condition",
                                    "h is not a count of the stanzas sent to you")
        else:
            stream.write(UNEXPECTED)

    def enable(self, session: "C2SSession", element: domish.Element) -> None:
        if session.sm is not None:
            session.stream.write(UNEXPECTED)
            return
        timeout = self.resume_timeout
        wanted = _counter(element.getAttribute("max"))
        if wanted:
            timeout = min(timeout, wanted)
        if element.getAttribute("resume") not in ("true", "1") or timeout <= 0:
            session.sm = SmState(self, None, 0)
            session.stream.write(b"<enabled xmlns='urn:xmpp:sm:3'/>")
            return
        resume_id = secrets.token_urlsafe(18)
        session.sm = SmState(self, resume_id, timeout)
        self.resumable[resume_id] = session
        session.stream.write(b"<enabled xmlns='urn:xmpp:sm:3' id='%s' resume='true' "
                             b"max='%d'/>" % (resume_id.encode(), timeout))

    def resume(self, stream: "C2SStream", element: domish.Element) -> None:
        """``<resume previd h/>`` after authentication: the session takes this stream,
        the old connection (if still half-open) is closed, the unacknowledged stanzas are
        sent again."""
        previd = element.getAttribute("previd") or ""
        session = self.resumable.get(previd)
        h = _counter(element.getAttribute("h"))
        if session is None or session.user != stream.user or h is None:
            stream.write(NOT_FOUND)
            return
        sm = session.sm
        if not sm.acknowledge(h):
            stream.stream_error("undefined-condition",
                                "h is not a count of the stanzas sent to you")
            return
        old = session.stream
        if old.session is session:
            old.session = None
            old.stream_error("conflict", "the session was resumed on another connection")
        if sm.timer is not None:
            sm.timer.cancel()
            sm.timer = None
        stream.attach(session)
        stream.write(b"<resumed xmlns='urn:xmpp:sm:3' previd=%s h='%d'/>" % (
            attr(previd).encode(), sm.handled))
        for data, _ in sm.queue:
            stream.write(data)
        if len(sm.queue) >= ACK_EVERY:
            sm.requested = True
            stream.write(REQUEST)

    def overflowed(self, session: "C2SSession", sm: SmState) -> None:
        """Past the bound: the stream is closed and the session ends (not resumable)."""
        if session.sm is sm:
            session.end("resource-constraint", "too many unacknowledged stanzas")

    def expire(self, session: "C2SSession") -> None:
        """No resumption in time: the session ends as if the connection had just closed."""
        session.sm.timer = None
        session.ended()

    def session_ended(self, session: "C2SSession") -> None:
        """The ``xmpp-session-ended`` hook: forget the session, hand its unacknowledged
        stanzas on (``xmpp-unacknowledged``) so that none is lost."""
        sm = session.sm
        if sm is None:
            return
        session.sm = None
        if sm.id is not None:
            self.resumable.pop(sm.id, None)
        if sm.timer is not None:
            sm.timer.cancel()
        if sm.queue:
            self.core.hooks.fire("xmpp-unacknowledged", session, list(sm.queue))

"""A bound resource: the router's view of one XMPP client (an ``ISession``).

The session turns router events into stanzas (``deliver``), keeps the resource's presence
state, and hands the client's stanzas to the server's dispatch. Small by design (``__slots__``,
no per-session handler objects): a node holds hundreds of thousands.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Optional

from twisted.internet import defer
from twisted.words.protocols.jabber.error import exceptionFromStanza
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from zope.interface import implementer

from presenced.router import ISession
from presenced.xmpp.stanzas import attr, children_bytes, error_reply, result_reply, to_bytes

if TYPE_CHECKING:
    from presenced.core import Core
    from presenced.events import Event
    from presenced.xmpp.server import C2SServer
    from presenced.xmpp.sm import SmState
    from presenced.xmpp.stream import C2SStream

_request_ids = itertools.count(1)

# Router event: a resource of this user was bound on another node; ours of that name yields.
RESOURCE_CLAIMED = "xmpp-resource-claimed"
# XMPP's own router events between nodes, never streamed to other doors. A probe asks a
# contact's resources on another node for their presence (payload: a PRESENCE payload and
# ``prober``, the asking full JID); the answer is a presence for that one resource
# (payload: a PRESENCE payload and ``for``).
PROBE = "xmpp-probe"
PROBE_ANSWER = "xmpp-probe-answer"

STREAM_CONDITIONS = frozenset((
    "conflict", "system-shutdown", "connection-timeout", "policy-violation", "not-authorized",
    "reset", "see-other-host", "resource-constraint"))


@implementer(ISession)
class C2SSession:
    """One resource of one account, bound on one stream."""

    protocol = "xmpp"

    __slots__ = ("stream", "server", "user", "label", "full", "presence", "available",
                 "priority", "roster_requested", "directed", "requests", "sm", "_jid",
                 "_held")

    def __init__(self, stream: "C2SStream", user: str, resource: str):
        self.stream = stream
        self.server: "C2SServer" = stream.server
        self.user = user
        self.label = resource
        self.full = f"{user}/{resource}"
        self.presence: Optional[domish.Element] = None
        self.available = False
        self.priority = 0
        self.roster_requested = False
        self.directed: Optional[set[str]] = None
        self.requests: Optional[dict[str, defer.Deferred]] = None
        self.sm: Optional["SmState"] = None  # stream management, once the client enabled it
        self._jid: Optional[JID] = None
        # The client's stanzas that arrived while what binding started is still read (its
        # reading paused meanwhile), or None: handled in order once the reads are in.
        self._held: Optional[list[domish.Element]] = None

    def __repr__(self) -> str:
        return f"<C2SSession {self.full}>"

    @property
    def jid(self) -> JID:
        if self._jid is None:
            self._jid = JID(self.full)
        return self._jid

    @property
    def resource(self) -> str:
        return self.label

    # --- life cycle --------------------------------------------------------------------------

    def bound(self) -> None:
        """Logged in; the stanzas the client sends next wait for what the ``xmpp-bound``
        handlers read (the vCard photo hash its first presence carries), so a client that
        does not wait for its bind result finds the same state as one that does."""
        pending = [d for d in self.server.session_bound(self)
                   if isinstance(d, defer.Deferred) and not d.called]
        if not pending:
            return
        self._held = []
        gate = self.stream.shaper.gate
        gate.hold("binding")
        done = defer.gatherResults(pending, consumeErrors=True)
        done.addBoth(lambda _: self._release(gate))

    def _release(self, gate) -> None:
        held, self._held = self._held or [], None
        gate.release("binding")
        for stanza in held:
            if self.stream.session is not self:
                return  # the stream ended meanwhile: nothing it sent is handled
            self.server.dispatch(self, stanza)

    def disconnected(self, clean: bool) -> None:
        """The connection is gone. The session ends, unless it died without a clean close
        and stream management keeps the session for a resumption."""
        if clean or self.sm is None or not self.sm.detach(self):
            self.ended()

    def ended(self) -> None:
        """The session is over (connection closed, replaced, not resumed in time)."""
        self.server.session_ended(self)
        if self.requests:
            requests, self.requests = self.requests, None
            for d in requests.values():
                d.errback(ConnectionError("the client disconnected"))

    def close(self, reason: str) -> None:
        """Disconnect (``ISession``): a stream error on the connection; a session waiting
        for resumption has none and ends at once."""
        if self.stream.session is not self:
            self.ended()
            return
        condition = reason if reason in STREAM_CONDITIONS else "reset"
        self.stream.stream_error(condition, None if condition == reason else reason)

    def end(self, condition: str, text: Optional[str] = None) -> None:
        """Close the stream with ``condition`` and end the session now, not when the
        connection is gone: nothing more reaches it and it cannot be resumed."""
        stream = self.stream
        if stream.session is self:
            stream.session = None
            stream.stream_error(condition, text)
        self.ended()

    # --- output ----------------------------------------------------------------------------

    def send(self, obj) -> None:
        """A domish element, str or bytes to the client."""
        if isinstance(obj, domish.Element):
            obj = to_bytes(obj)
        elif isinstance(obj, str):
            obj = obj.encode("utf-8")
        self.write(obj)

    def write(self, data: bytes) -> None:
        """One stanza's bytes to the client (stream management counts and keeps them)."""
        if self.sm is not None:
            self.sm.stanza_sent(self, data)
        self.stream.write(data)

    def result(self, iq: domish.Element, child: Optional[domish.Element] = None) -> None:
        self.send(result_reply(iq, child))

    def error(self, stanza: domish.Element, condition: str, text: Optional[str] = None) -> None:
        """Answer ``stanza`` with a stanza error (never for errors: no loops)."""
        if stanza.getAttribute("type") == "error":
            return
        self.send(error_reply(stanza, condition, text, own_jid=self.user))

    def request(self, iq: domish.Element) -> defer.Deferred:
        """Send an IQ get/set to the client; fires with its result, errbacks on its error."""
        if self.requests is None:
            self.requests = {}
        iq["id"] = request_id = f"s{next(_request_ids)}"
        iq["to"] = self.full
        d: defer.Deferred = defer.Deferred()
        self.requests[request_id] = d
        self.send(iq)
        return d

    def response(self, iq: domish.Element) -> bool:
        """A result/error addressed to the server: resolve our request, if it is one."""
        d = self.requests.pop(iq.getAttribute("id", ""), None) if self.requests else None
        if d is None:
            return False
        if iq.getAttribute("type") == "result":
            d.callback(iq)
        else:
            d.errback(exceptionFromStanza(iq))
        return True

    # --- input -----------------------------------------------------------------------------

    def received(self, stanza: domish.Element) -> None:
        if self._held is not None:
            self._held.append(stanza)  # at most what the last read held: reading is paused
            return
        self.server.dispatch(self, stanza)

    # --- router events -----------------------------------------------------------------------

    def deliver(self, event: "Event") -> None:
        server = self.server
        if server.holds:
            hold = server.holds.get(self)
            if hold is not None and hold(self, event):
                return
        renderer = server.event_renderers.get(event.type)
        if renderer is not None:
            renderer(self, event)


def replace(session: C2SSession) -> None:
    """End ``session`` because its resource was bound again (RFC 6120 7.7.2.2)."""
    session.end("conflict")


def presence_bytes(other: C2SSession, to: str, available: bool = True) -> bytes:
    """The current presence of resource ``other`` as sent to ``to``."""
    head = b"<presence from=%s to=%s" % (attr(other.full).encode("utf-8"),
                                         attr(to).encode("utf-8"))
    if not available or other.presence is None:
        return head + b" type='unavailable'/>"
    return head + b">" + children_bytes(other.presence) + b"</presence>"


def xmpp_sessions(core: "Core", user: str) -> list[C2SSession]:
    """The local XMPP resources of ``user``."""
    return [s for s in core.router.sessions(user) if s.protocol == "xmpp"]


def available_sessions(core: "Core", user: str) -> list[C2SSession]:
    """The local XMPP resources of ``user`` that have sent available presence."""
    return [s for s in core.router.sessions(user) if s.protocol == "xmpp" and s.available]


def message_targets(core: "Core", user: str) -> list[C2SSession]:
    """Resources that take messages to the bare JID (RFC 6121 8.5.2.1): available with a
    non-negative priority."""
    return [s for s in core.router.sessions(user)
            if s.protocol == "xmpp" and s.available and s.priority >= 0]

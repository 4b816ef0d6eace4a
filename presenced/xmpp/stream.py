"""One client connection: the XML stream and its negotiation (RFC 6120 4-7).

:class:`C2SStream` is a ``twisted.words.xish`` XML stream that takes the receiving side of
negotiation, which neither twisted.words nor wokkel provide: stream headers, STARTTLS, SASL,
resource binding and the legacy session IQ. Once a resource is bound every stanza goes to its
:class:`~presenced.xmpp.session.C2SSession` and from there to the feature handlers.
"""

from __future__ import annotations

import base64
import binascii
import random
import secrets
import time
from functools import partial
from typing import TYPE_CHECKING, Optional

from twisted.internet import reactor
from twisted.logger import Logger
from twisted.words.protocols.jabber.error import StreamError
from twisted.words.xish import domish, xmlstream

from presenced.authguard import backoff
from presenced.flow import READS, SENDER, WriteBudget
from presenced.xmpp import sasl
from presenced.xmpp.parser import PolicyViolation, RestrictedXML, StanzaParser
from presenced.xmpp.session import C2SSession
from presenced.xmpp.shaping import StreamShaper, TooManySessions
from presenced.xmpp.stanzas import (NS_BIND, NS_CLIENT, NS_SASL, NS_SESSION,
                                    NS_STREAMS, NS_TLS, attr, error_reply, result_reply,
                                    to_bytes)

if TYPE_CHECKING:
    from presenced.xmpp.server import C2SServer

MAX_AUTH_FAILURES = 3
COUNTED_FAILURES = ("not-authorized", "invalid-authzid")  # wrong guesses, not bad encodings
# Stream ids: unique and unguessable enough for c2s, without a syscall per stream restart.
_stream_ids = random.Random(secrets.randbits(128))
# Opens the parser of a woken stream: the namespaces of every c2s stream header.
RESUME_HEADER = (b"<stream:stream xmlns='jabber:client' "
                 b"xmlns:stream='http://etherx.jabber.org/streams'>")
STREAM_END = b"</stream:stream>"
TLS_FAILURE = b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"


class TCPFraming:
    """How a stream opens and ends on the wire. Over TCP (RFC 6120 4) the whole stream is
    one ``<stream:stream>`` document; other framings (RFC 7395's WebSocket ``<open/>``,
    BOSH bodies) give their own pieces and the stream is otherwise the same. Each piece
    returned is written with one ``write``: a framing that sends messages gets one per
    element."""

    starttls = True  # STARTTLS may be offered (web framings get TLS from the HTTP door)
    coalesce = True  # the writes of one read may go out as one (flow.ReadBatch)
    end = STREAM_END

    def opening(self, domain: bytes, stream_id: int, features: bytes) -> tuple[bytes, ...]:
        """Our stream header for ``domain`` (an XML attribute value, quoted) and the
        features, in one write: one TLS record."""
        return (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0' "
                b"xml:lang='en' id='%016x' from=%s>%s" % (stream_id, domain, features),)

    def error(self, error: domish.Element) -> tuple[bytes, ...]:
        """A stream error and the end of the stream."""
        return (error.toXml(prefixes={NS_STREAMS: "stream"}, prefixesInScope=["stream"])
                .encode("utf-8") + STREAM_END,)


TCP = TCPFraming()


class C2SStream(xmlstream.XmlStream):
    """The server side of a jabber:client stream, from TCP accept to close."""

    log = Logger()
    __slots__ = ("server", "secure", "domain", "user", "session", "mechanism", "failures",
                 "header_sent", "closing", "budget", "deadline", "retired", "parsing",
                 "recent", "at_boundary", "auth_pending", "shaper", "framing")

    def __init__(self, server: "C2SServer", direct_tls: bool = False,
                 framing: TCPFraming = TCP):
        super().__init__()
        self.server = server
        self.secure = direct_tls
        self.framing = framing
        self.domain: Optional[str] = None
        self.user: Optional[str] = None
        self.session: Optional[C2SSession] = None
        self.mechanism = None
        self.failures = 0
        self.header_sent = False
        self.closing = False
        self.budget: Optional[WriteBudget] = None
        self.deadline = 0.0  # monotonic time by which a resource must be bound
        self.retired: Optional[StanzaParser] = None  # replaced inside Parse(), closed after
        self.parsing = False
        self.recent = True  # data arrived since the last hibernation sweep
        self.at_boundary = False  # the last read ended between stanzas
        self.auth_pending = False  # a SASL step or a delayed failure is not answered yet
        self.shaper: Optional[StreamShaper] = None

    # --- connection ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.shaper = StreamShaper(self, self.server.flood_limits)
        self._initializeStream()
        self.server.stream_opened(self)
        self.deadline = time.monotonic() + self.server.auth_timeout

    def _initializeStream(self) -> None:
        self.stream = StanzaParser(self.server.max_stanza_size)
        self.stream.DocumentStartEvent = self.onDocumentStart
        self.stream.ElementEvent = self.onElement
        self.stream.DocumentEndEvent = self.onDocumentEnd

    def _restart(self) -> None:
        """A stream restart (after STARTTLS and SASL): a fresh parser, a new header."""
        old = self.stream
        old.DocumentStartEvent = old.ElementEvent = old.DocumentEndEvent = _ignore
        self.retired = old  # still inside Parse(): closed when it returns
        self.header_sent = False
        self._initializeStream()

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        last = data.rstrip()[-1:]
        if not last:  # a whitespace keepalive: no activity, nothing to wake up for
            if self.stream is None:
                return
        else:
            self.recent = True
        self.parsing = True
        READS.open()
        try:
            if self.stream is None:
                self._wake()
            self.stream.parse(data)
            if last:
                self.at_boundary = self.stream is not None and self.stream.depth == 1 and (
                    last == b">")
            self._paced(len(data))
        except PolicyViolation as e:
            self.stream_error("policy-violation", str(e))
        except RestrictedXML as e:
            self.stream_error("restricted-xml", str(e))
        except domish.ParserError as e:
            self.stream_error("not-well-formed", str(e))
        finally:
            READS.close()
            self.parsing = False
            if self.retired is not None:
                self.retired.close()
                self.retired = None

    def connectionLost(self, reason: object) -> None:
        self.server.stream_closed(self)
        if self.shaper is not None:
            self.shaper.close()
        if self.session is not None:
            session, self.session = self.session, None
            session.disconnected(clean=self.closing)
        self.closing = True  # nothing more is written; answers on their way (SASL) are dropped
        if self.stream is not None:
            self.retired = self.stream  # closed here, or after Parse() if inside it
            if not self.parsing:
                self.retired.close()
                self.retired = None
        self.stream = None

    def hibernate(self) -> bool:
        """Drop the parser of a bound stream that has been idle (as ejabberd hibernates idle
        sessions): an expat parser holds about 10 KB. Only between stanzas, so nothing
        half-parsed is lost; the next read wakes it with a fresh parser."""
        parser = self.stream
        if (parser is None or self.session is None or self.recent or not self.at_boundary
                or parser.depth != 1 or self.closing):
            return False
        self.stream = None
        parser.close()
        return True

    def _wake(self) -> None:
        """A parser for a hibernated stream, primed with the stream's namespaces."""
        self._initializeStream()
        self.stream.DocumentStartEvent = _ignore
        self.stream.parse(RESUME_HEADER)
        self.stream.DocumentStartEvent = self.onDocumentStart

    def _paced(self, size: int) -> None:
        """Flood control after a read (:mod:`presenced.xmpp.shaping`): pace the reading,
        and time a stanza the read left unfinished (bound streams: before binding the
        ``auth_timeout`` covers everything)."""
        if self.closing or self.stream is None:  # closed meanwhile
            return
        partial = self.session is not None and not self.at_boundary
        self.shaper.read(size, partial)
        self.server.stanza_started(self, partial)

    def timed_out(self, now: float) -> bool:
        """Called by the server's sweep: an unbound stream past its deadline is closed."""
        if self.session is None and now > self.deadline:
            self.stream_error("connection-timeout", "authenticate and bind a resource sooner")
            return True
        return False

    # --- output ---------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Bytes to the peer; bounded once a resource is bound (slow readers are cut)."""
        if self.closing:
            return
        if self.budget is not None:
            self.budget.write(data)
        else:
            self.transport.write(data)

    def send(self, obj) -> None:
        if isinstance(obj, domish.Element):
            obj = to_bytes(obj)
        elif isinstance(obj, str):
            obj = obj.encode("utf-8")
        self.write(obj)

    def send_header(self, then: bytes = b"") -> None:
        """Our stream header, and ``then`` (the features), as the framing has them."""
        domain = self.domain or self.server.core.config.default_domain
        for data in self.framing.opening(attr(domain).encode(), _stream_ids.getrandbits(64),
                                         then):
            self.write(data)
        self.header_sent = True

    def stream_error(self, condition: str, text: Optional[str] = None) -> None:
        """Send a stream error and close (RFC 6120 4.9)."""
        if self.closing or self.transport is None:
            return
        if not self.header_sent:
            self.send_header()
        for data in self.framing.error(StreamError(condition, text=text).getElement()):
            self.write(data)
        self.closing = True
        self.server.count_error(condition)
        self._hang_up()

    def _hang_up(self) -> None:
        """Close after what was written (a read's queued writes first)."""
        if self.budget is not None:
            self.budget.flush()
        self.transport.loseConnection()

    # --- stream header -----------------------------------------------------------------------

    def onDocumentStart(self, root: domish.Element) -> None:
        if root.uri != NS_STREAMS or root.name != "stream":
            self.stream_error("invalid-namespace", "expected http://etherx.jabber.org/streams")
            return
        if root.defaultUri != NS_CLIENT:
            self.stream_error("invalid-namespace", "this is a jabber:client port")
            return
        to = (root.getAttribute("to") or "").lower()
        if self.domain is None:
            if to not in self.server.domains:
                self.domain = None
                self.stream_error("host-unknown", f"{to or 'no host'} is not served here")
                return
            self.domain = to
        elif to and to != self.domain:
            self.stream_error("host-unknown", "the host changed on stream restart")
            return
        if not (root.getAttribute("version") or "").startswith("1."):
            self.stream_error("unsupported-version", "XMPP 1.0 streams only")
            return
        self.send_header(self.server.features(self))

    def onDocumentEnd(self) -> None:
        if not self.closing:
            self.write(self.framing.end)
            self.closing = True
        self._hang_up()

    # --- stanzas ---------------------------------------------------------------------------

    def onElement(self, element: domish.Element) -> None:
        if self.closing or not self.shaper.stanza():
            return
        if self.session is not None:
            SENDER.gate = self.shaper.gate  # a full recipient queue holds this client too
            try:
                self.session.received(element)
            finally:
                SENDER.gate = None
        elif element.uri == NS_TLS and element.name == "starttls":
            self._starttls()
        elif element.uri == NS_SASL:
            self._sasl(element)
        elif element.name == "iq" and element.uri == NS_CLIENT:
            self._pre_bind_iq(element)
        elif self.user is not None and element.uri in self.server.nonzas:
            self.server.nonzas[element.uri](self, element)  # <resume/> instead of a bind
        else:
            self.stream_error("not-authorized", "authenticate first")

    def _starttls(self) -> None:
        context = self.server.tls_context
        if (self.secure or context is None or self.user is not None
                or not self.framing.starttls):
            for data in (TLS_FAILURE, self.framing.end):
                self.write(data)
            self.closing = True
            self.transport.loseConnection()
            return
        self.write(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.transport.startTLS(context)
        self.secure = True
        self._restart()

    # --- SASL ------------------------------------------------------------------------------

    def _sasl(self, element: domish.Element) -> None:
        if self.user is not None:
            self.stream_error("policy-violation", "already authenticated")
        elif self.server.must_start_tls(self):
            self.stream_error("policy-violation", "STARTTLS first")
        elif self.auth_pending and element.name != "abort":
            # Pipelined attempts would each cost a password check while only the last is
            # answered: one attempt in flight per stream, as RFC 6120 6.4 has clients wait.
            self.stream_error("policy-violation", "wait for the answer to the SASL attempt "
                                                  "in progress")
        elif element.name == "auth":
            name = element.getAttribute("mechanism", "")
            if name not in sasl.mechanisms(self.server.core, self.secure):
                self._sasl_failure(sasl.failure("invalid-mechanism"))
                return
            self.mechanism = sasl.make_mechanism(name, self.server.core, self.domain)
            self.mechanism.admit = partial(self.server.core.auth_guard.refusal, self.peer_host)
            self._sasl_step(str(element))
        elif element.name == "response" and self.mechanism is not None:
            self._sasl_step(str(element))
        elif element.name == "abort":
            self.mechanism = None
            self._sasl_failure(sasl.failure("aborted"), delay=0)
        else:
            self.stream_error("policy-violation", "unexpected SASL element")

    def _sasl_step(self, text: str) -> None:
        text = text.strip()
        try:
            data = b"" if text in ("", "=") else base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            self._sasl_failure(sasl.failure("incorrect-encoding"))
            return
        mechanism = self.mechanism
        self.auth_pending = True
        d = mechanism.step(data)
        d.addCallback(self._sasl_answer, mechanism)
        d.addErrback(self._sasl_error, mechanism)

    def _sasl_error(self, failure, mechanism) -> None:
        self.log.failure("SASL {name} failed", failure, name=mechanism.name)
        self._sasl_answer(sasl.failure("temporary-auth-failure"), mechanism)

    @property
    def peer_host(self) -> str:
        """The client's address, as the auth guard counts it."""
        return getattr(self.transport.getPeer(), "host", "?")

    def _sasl_answer(self, step: sasl.Step, mechanism) -> None:
        delay = self._sasl_judged(step, mechanism)
        self.auth_pending = False
        if self.closing or self.stream is None or mechanism is not self.mechanism:
            return
        if step.kind == "challenge":
            self.write(b"<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>%s</challenge>"
                       % base64.b64encode(step.data))
        elif step.kind == "success":
            self.mechanism = None
            self.user = step.user
            data = base64.b64encode(step.data) if step.data else b""
            self.write(b"<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>%s</success>" % data)
            self.server.count("presenced_logins_total")
            self._restart()
        else:
            self.mechanism = None
            self._sasl_failure(step, delay)

    def _sasl_judged(self, step: sasl.Step, mechanism) -> Optional[float]:
        """Tell the auth guard how an attempt ended, even when the client has gone (or
        hanging up before the answer would make guesses free); returns the failure's
        backoff, None when the guard does not count it."""
        guard = self.server.core.auth_guard
        if step.kind == "success":
            guard.succeeded(self.peer_host, step.user)
        elif step.kind == "failure" and step.condition in COUNTED_FAILURES:
            failures = guard.failed("xmpp", self.peer_host, mechanism.user)
            return backoff(self.server.auth_failure_delay, failures)
        return None

    def _sasl_failure(self, step: sasl.Step, delay: Optional[float] = None) -> None:
        """Failures are answered after a delay and end the stream after a few: guessing
        passwords over one connection is slow, and reconnecting costs a TLS handshake."""
        if step.condition in COUNTED_FAILURES:
            self.failures += 1
            self.server.count("presenced_auth_failures_total")
        text = b"<text>%s</text>" % domish.escapeToXml(step.text).encode() if step.text else b""
        data = (b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><%s/>%s</failure>"
                % (step.condition.encode(), text))
        delay = self.server.auth_failure_delay if delay is None else delay
        if self.failures and delay:
            self.auth_pending = True  # until answered: no timer per pipelined <auth>
            reactor.callLater(delay, self._send_delayed_failure, data)
        else:
            self._send_failure(data)

    def _send_delayed_failure(self, data: bytes) -> None:
        self.auth_pending = False
        self._send_failure(data)

    def _send_failure(self, data: bytes) -> None:
        if self.closing or self.transport is None:
            return
        self.write(data)
        if self.failures >= MAX_AUTH_FAILURES:
            self.stream_error("policy-violation", "too many failed authentication attempts")

    # --- resource binding --------------------------------------------------------------------

    def _pre_bind_iq(self, iq: domish.Element) -> None:
        child = iq.firstChildElement()
        kind = iq.getAttribute("type")
        if self.user is None:
            handler = self.server.pre_auth.get(child.uri) if child is not None else None
            if handler is not None:
                handler(self, iq)
            else:
                self.stream_error("not-authorized", "authenticate first")
        elif kind == "set" and child is not None and child.uri == NS_BIND and child.name == "bind":
            self._bind(iq, child)
        elif child is not None and child.uri == NS_SESSION:
            self.send(result_reply(iq))
        else:
            self.send(error_reply(iq, "not-authorized", "bind a resource first"))

    def _bind(self, iq: domish.Element, bind: domish.Element) -> None:
        requested = None
        for child in bind.elements(NS_BIND, "resource"):
            requested = str(child).strip()
        try:
            resource = self.server.choose_resource(self.user, requested)
        except TooManySessions as e:
            self.send(error_reply(iq, "resource-constraint", str(e)))
            return
        except ValueError as e:
            self.send(error_reply(iq, "bad-request", str(e)))
            return
        session = C2SSession(self, self.user, resource)
        self.attach(session)
        answer = domish.Element((NS_BIND, "bind"))
        answer.addElement("jid", content=session.full)
        self.send(result_reply(iq, answer))
        session.bound()

    def attach(self, session: C2SSession) -> None:
        """From now on ``session`` (new, or resumed from another connection) talks over
        this stream, whose output is bounded from here on."""
        self.budget = WriteBudget(self.transport, self.server.session_queue_bytes,
                                  self.shaper.gate, direct=True,
                                  coalesce=self.framing.coalesce)
        self.session = session
        session.stream = self
        self.server.unbound.discard(self)


def _ignore(*args: object) -> None:
    """Events of a parser replaced by a stream restart."""

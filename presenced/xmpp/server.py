"""The c2s door's per-node state: feature handlers, stanza dispatch, stream features, limits.

Dispatch follows Prosody's naming (see :mod:`presenced.xmpp`): the server stamps ``from``,
classifies the ``to`` address (host, self, bare, full) and looks the event name up in the
routes the feature handlers declared. The server itself knows no feature.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Callable, Iterable, Optional

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.words.xish import domish
from zope.interface import implementer

from presenced.events import Event
from presenced.memory import release_free_memory
from presenced.xmpp import sasl
from presenced.xmpp.features import IC2SServer
from presenced.xmpp.session import RESOURCE_CLAIMED, replace, xmpp_sessions
from presenced.xmpp.shaping import FloodLimits, TooManySessions
from presenced.xmpp.stream import TCP, C2SStream, TCPFraming
from presenced.xmpp.stanzas import (NS_BIND, NS_CLIENT, NS_PREAPPROVAL, NS_REGISTER,
                                    NS_REGISTER_FEATURE,
                                    NS_ROSTERVER, NS_SESSION, NS_TLS, Address, parse_address,
                                    to_bytes)

if TYPE_CHECKING:
    from presenced.config import Config
    from presenced.core import Core
    from presenced.xmpp.features import FeatureHandler
    from presenced.xmpp.session import C2SSession

DOOR = "xmpp"
# The targets of routes that name an address's form (a service's label must differ).
ADDRESS_TARGETS = frozenset(("host", "self", "bare", "full", "service"))


@implementer(IC2SServer)
class C2SServer:
    """Everything the streams of one node share."""

    log = Logger()

    def __init__(self, core: "Core", tls_context,
                 features: Iterable[type["FeatureHandler"]]):
        self.core = core
        self.tls_context = tls_context
        self.domains = frozenset(core.domains)
        self.apply_limits(core.config)
        self.streams: set["C2SStream"] = set()
        self.unbound: set["C2SStream"] = set()
        self.partial: set["C2SStream"] = set()  # bound streams inside an unfinished stanza
        # Hot-path counters: plain ints, read by the metrics at scrape time.
        self.stanzas_in = 0
        self.events_out = 0
        self.routes: dict[str, Callable] = {}
        self.event_renderers: dict[str, Callable] = {}
        self._features_cache: dict[tuple, bytes] = {}
        self.handlers: list["FeatureHandler"] = []
        # Stanzas answered before authentication, by namespace (XEP-0077 registration).
        self.pre_auth: dict[str, Callable] = {}
        # Checks of every stanza a client addresses to a user, ``f(session, stanza, address)
        # -> True`` when the check refused it (blocking); features append theirs.
        self.stanza_filters: list[Callable] = []
        # Top-level elements that are not stanzas, by namespace (XEP-0198's <enable/>,
        # <r/>, <resume/>...): ``f(stream, element)``, on authenticated streams.
        self.nonzas: dict[str, Callable] = {}
        # Elements offered in the features of authenticated streams, as (namespace, name).
        self.stream_features: list[tuple[str, str]] = []
        # Service domains (conference.<domain>, upload.<domain>) -> ``f(session, stanza,
        # address)`` of the handler serving every stanza addressed there
        # (FeatureHandler.service_domains and on_service_stanza).
        self.services: dict[str, Callable] = {}
        self.service_labels: set[str] = set()  # route targets of label-routed services
        # Sessions whose events a feature holds back (XEP-0352 while inactive): session ->
        # ``hold(session, event) -> bool`` (True: held, not rendered now).
        self.holds: dict["C2SSession", Callable] = {}
        for feature in features:
            self.add_handler(feature(self))
        self.event_renderers[RESOURCE_CLAIMED] = _yield_claimed_resource
        self._describe_metrics()

    # --- handlers ----------------------------------------------------------------------------

    def add_handler(self, handler: "FeatureHandler") -> None:
        self.handlers.append(handler)
        for name, method in handler.routes.items():
            if name in self.routes:
                raise ValueError(f"two handlers route {name}")
            self.routes[name] = getattr(handler, method)
        for kind, method in handler.event_renderers.items():
            if kind in self.event_renderers:
                raise ValueError(f"two handlers render {kind} events")
            self.event_renderers[kind] = getattr(handler, method)
        for namespace, method in handler.pre_auth_routes.items():
            self.pre_auth[namespace] = getattr(handler, method)
        for namespace, method in handler.nonza_routes.items():
            self.nonzas[namespace] = getattr(handler, method)
        self.stream_features.extend(handler.stream_features)
        if handler.service:
            if handler.service in ADDRESS_TARGETS:
                raise ValueError(f"{handler.service!r} names addresses; a service needs "
                                 "a label of its own")
            self.service_labels.add(handler.service)
        for domain in handler.service_domains():
            if domain in self.services or domain in self.domains:
                raise ValueError(f"two handlers serve {domain}")
            self.services[domain] = handler.on_service_stanza
        handler.attached()

    # --- streams -----------------------------------------------------------------------------

    def apply_limits(self, config: "Config") -> None:
        """Copy the limits every stream reads (at start and on a config reload: streams
        opened after it get the new values)."""
        self.max_stanza_size = config.xmpp.max_stanza_size
        self.auth_timeout = config.xmpp.auth_timeout
        self.auth_failure_delay = config.xmpp.auth_failure_delay
        self.session_queue_bytes = config.router.session_queue_bytes
        self.flood_limits = FloodLimits.from_config(config.xmpp)
        self.max_sessions_per_user = config.xmpp.max_sessions_per_user

    def build_stream(self, direct_tls: bool, framing: TCPFraming = TCP) -> "C2SStream":
        """A stream for a new connection (``framing``: a web door's, RFC 7395 or BOSH)."""
        return C2SStream(self, direct_tls, framing)

    def stream_opened(self, stream: "C2SStream") -> None:
        self.streams.add(stream)
        self.unbound.add(stream)
        self.core.metrics.inc("presenced_connections_total", door=DOOR)

    def stream_closed(self, stream: "C2SStream") -> None:
        self.streams.discard(stream)
        self.unbound.discard(stream)
        self.partial.discard(stream)

    def stanza_started(self, stream: "C2SStream", partial: bool) -> None:
        """Whether a read left ``stream`` inside a stanza (timed by the sweep)."""
        if partial:
            self.partial.add(stream)
        else:
            self.partial.discard(stream)

    def close_late_streams(self) -> None:
        """Once a second: ``connection-timeout`` for streams not bound within
        ``auth_timeout``, ``policy-violation`` for a stanza not finished within
        ``stanza_timeout`` (one sweep instead of a timer per connection)."""
        now = time.monotonic()
        for stream in [s for s in self.unbound if s.timed_out(now)]:
            self.unbound.discard(stream)
        for stream in [s for s in self.partial if s.shaper.stanza_overdue(now)]:
            self.partial.discard(stream)
            stream.stream_error("policy-violation", "a stanza must be finished within "
                                f"{self.flood_limits.stanza_timeout:g} seconds")

    def must_start_tls(self, stream: "C2SStream") -> bool:
        return self.offers_starttls(stream) and self.core.config.xmpp.require_tls

    def offers_starttls(self, stream: "C2SStream") -> bool:
        """STARTTLS is for TCP streams; a web stream's TLS is the HTTP door's."""
        return not stream.secure and self.tls_context is not None and stream.framing.starttls

    def features(self, stream: "C2SStream") -> bytes:
        """The ``<stream:features/>`` for the stream's state, serialised once per state."""
        offers = self.offers_starttls(stream)
        tls = offers and self.core.config.xmpp.require_tls
        key = (stream.user is not None, stream.secure, offers, tls)
        cached = self._features_cache.get(key)
        if cached is not None:
            return cached
        features = domish.Element(("http://etherx.jabber.org/streams", "features"))
        if stream.user is not None:
            features.addElement((NS_BIND, "bind"))
            features.addElement((NS_SESSION, "session")).addElement("optional")
            features.addElement((NS_ROSTERVER, "ver"))
            features.addElement((NS_PREAPPROVAL, "sub"))
            for feature in self.stream_features:
                features.addElement(feature)
        else:
            if offers:
                starttls = features.addElement((NS_TLS, "starttls"))
                if tls:
                    starttls.addElement("required")
            if not tls:
                mechs = features.addElement(("urn:ietf:params:xml:ns:xmpp-sasl", "mechanisms"))
                for name in sasl.mechanisms(self.core, stream.secure):
                    mechs.addElement("mechanism", content=name)
                if NS_REGISTER in self.pre_auth:
                    features.addElement((NS_REGISTER_FEATURE, "register"))
        data = features.toXml(prefixes={"http://etherx.jabber.org/streams": "stream"},
                              prefixesInScope=["stream"]).encode("utf-8")
        self._features_cache[key] = data
        return data

    def choose_resource(self, user: str, requested: Optional[str]) -> str:
        """The resource to bind: the client's (an older session on it is replaced, RFC 6120
        7.7.2.2) or a generated one; :class:`TooManySessions` past ``max_sessions_per_user``
        (a replaced resource does not count)."""
        resource = None
        if requested:
            resource = parse_address(f"{user}/{requested}").resource
            if not resource:
                raise ValueError("empty resource")
        sessions = xmpp_sessions(self.core, user)
        replaced = [s for s in sessions if resource is not None and s.label == resource]
        if len(sessions) - len(replaced) >= self.max_sessions_per_user:
            raise TooManySessions(f"at most {self.max_sessions_per_user} resources per account")
        if resource is None:
            return secrets.token_hex(6)
        for session in replaced:
            replace(session)
        if self.core.router.transport.remote_nodes(user):
            # The same resource on another node of the cluster is replaced there.
            self.core.router.deliver(user, Event(RESOURCE_CLAIMED, user,
                                                 {"resource": resource}))
        return resource

    # --- sessions ----------------------------------------------------------------------------

    def session_bound(self, session: "C2SSession") -> list:
        """Log ``session`` in; returns what the ``xmpp-bound`` handlers returned (Deferreds
        of reads the session's next stanzas wait for)."""
        self.core.router.login(session.user, session)
        return self.core.hooks.collect("xmpp-bound", session)

    def session_ended(self, session: "C2SSession") -> None:
        self.core.hooks.fire("xmpp-session-ended", session)
        self.core.router.logout(session)

    def session_count(self) -> int:
        return sum(1 for s in self.core.router.all_sessions() if s.protocol == DOOR)

    # --- dispatch ------------------------------------------------------------------------

    def dispatch(self, session: "C2SSession", stanza: domish.Element) -> None:
        """Route one stanza from a bound client (RFC 6120 8, RFC 6121 8)."""
        name = stanza.name
        if stanza.uri != NS_CLIENT or name not in ("message", "presence", "iq"):
            nonza = self.nonzas.get(stanza.uri)
            if nonza is not None:
                nonza(session.stream, stanza)
            else:
                session.stream.stream_error("unsupported-stanza-type", f"<{name}/>")
            return
        self.stanzas_in += 1
        if session.sm is not None:
            session.sm.stanza_handled()
        attributes = stanza.attributes
        attributes["from"] = session.full
        to = attributes.get("to")
        if to is not None:      # to="" is no address, not "to myself": jid-malformed
            try:
                address = parse_address(to)
            except ValueError:
                session.error(stanza, "jid-malformed")
                return
            if address.domain not in self.domains:
                service = self.services.get(address.domain)
                if service is not None:
                    stanza["to"] = address.full
                    self._call(lambda s, st: service(s, st, address), session, stanza)
                    return
                session.error(stanza, "remote-server-not-found",
                              "this server does not federate")
                return
            attributes["to"] = address.full
            if address.bare is None:
                target = "host" if address.resource is None else "full"
            elif address.resource is not None:
                target = "full"
            else:
                target = "self" if address.bare == session.user else "bare"
        else:
            address = None
            target = "self"
        if self.stanza_filters and address is not None and address.bare is not None:
            for refused in self.stanza_filters:
                if refused(session, stanza, address):
                    return
        self.route(session, stanza, target, address)

    def route(self, session: "C2SSession", stanza: domish.Element, target: str,
              address: Optional[Address]) -> None:
        """Hand a stanza to the route of ``target``: ``host``, ``self``, ``bare``, ``full``
        or a label-routed service's label (``upload``)."""
        name, kind = stanza.name, stanza.attributes.get("type")
        if name == "iq":
            self._dispatch_iq(session, stanza, kind, target, address)
            return
        method = self.routes.get(f"{name}/{target}")
        if method is not None:
            self._call(method, session, stanza)
        elif name == "message":
            session.error(stanza, "service-unavailable")

    def _dispatch_iq(self, session: "C2SSession", iq: domish.Element, kind: Optional[str],
                     target: str, address: Optional[Address]) -> None:
        if kind in ("get", "set"):
            child = iq.firstChildElement()
            if child is None or iq.getAttribute("id") is None:
                session.error(iq, "bad-request", "an IQ needs an id and one child")
                return
            query = f"{child.uri}:{child.name}"
            method = self.routes.get(f"iq-{kind}/{target}/{query}")
            if method is None and target in self.service_labels:
                method = self.routes.get(f"iq-{kind}/service/{query}")  # disco of any service
            if method is not None:
                self._call(method, session, iq)
            elif target == "full":
                self.route_to_full(session, iq, address)
            else:
                session.error(iq, "service-unavailable")
        elif kind in ("result", "error"):
            if target == "full":
                self.route_to_full(session, iq, address)
            elif target in ("self", "host"):
                session.response(iq)
        else:
            session.error(iq, "bad-request", "IQ type must be get, set, result or error")

    def route_to_full(self, session: "C2SSession", stanza: domish.Element,
                      address: Address) -> bool:
        """Hand a stanza to one resource; IQ get/set to a missing resource is an error."""
        recipient = self.find_session(address)
        if recipient is not None:
            recipient.write(to_bytes(stanza))
            return True
        if stanza.name == "iq" and stanza.getAttribute("type") in ("get", "set"):
            session.error(stanza, "service-unavailable")
        return False

    def find_session(self, address: Address) -> Optional["C2SSession"]:
        if address.bare is None:
            return None
        for candidate in self.core.router.sessions(address.bare):
            if candidate.protocol == DOOR and candidate.label == address.resource:
                return candidate
        return None

    def _call(self, method: Callable, session: "C2SSession", stanza: domish.Element) -> None:
        try:
            result = method(session, stanza)
        except Exception:
            self.log.failure("handling {stanza}", stanza=stanza.toXml()[:200])
            session.error(stanza, "internal-server-error")
            return
        # Most handlers return None; ``isinstance`` against Deferred (an ABC through
        # Awaitable) is costly enough to skip on the message path.
        if result is not None and isinstance(result, defer.Deferred):
            if not result.called:
                session.stream.shaper.track(result)
            result.addErrback(self._failed, session, stanza)

    def _failed(self, failure, session: "C2SSession", stanza: domish.Element) -> None:
        self.log.failure("handling {stanza}", failure, stanza=stanza.toXml()[:200])
        if session.stream.session is session:
            session.error(stanza, "internal-server-error")

    # --- memory -------------------------------------------------------------------------------

    def hibernate_idle(self) -> int:
        """Hibernate the streams idle since the last call; give freed memory back to the OS."""
        count = 0
        for stream in self.streams:
            if stream.recent:
                stream.recent = False
            elif stream.hibernate():
                count += 1
        if count:
            release_free_memory()
        return count

    # --- shutdown and metrics ------------------------------------------------------------

    def close_all(self, condition: str) -> None:
        for stream in list(self.streams):
            stream.stream_error(condition)

    def count(self, name: str) -> None:
        self.core.metrics.inc(name, door=DOOR)

    def count_error(self, condition: str) -> None:
        self.core.metrics.inc("presenced_xmpp_stream_errors_total", condition=condition)

    def _describe_metrics(self) -> None:
        metrics = self.core.metrics
        metrics.gauge("presenced_connections", lambda: len(self.streams), door=DOOR)
        metrics.gauge("presenced_stanzas_in_total", lambda: self.stanzas_in, door=DOOR)
        metrics.gauge("presenced_events_out_total", lambda: self.events_out, door=DOOR)
        metrics.describe("presenced_xmpp_stream_errors_total", "counter",
                         "XMPP stream errors sent, by condition.")


def _yield_claimed_resource(session: "C2SSession", event: Event) -> None:
    """A resource of this user was bound on another node: ours of that name yields."""
    if event.payload["resource"] == session.label:
        replace(session)


class C2SFactory(protocol.ServerFactory):
    """Builds a stream per accepted connection (``direct_tls``: XEP-0368 port)."""

    noisy = False

    def __init__(self, server: C2SServer, direct_tls: bool = False):
        self.server = server
        self.direct_tls = direct_tls

    def buildProtocol(self, addr) -> "C2SStream":
        stream = self.server.build_stream(self.direct_tls)
        stream.factory = self
        return stream

"""Entity capabilities (XEP-0115): what each resource supports, learned from its presence.

A client's presence carries ``<c xmlns='http://jabber.org/protocol/caps' hash='sha-1'
node='...' ver='...'/>``, where ``ver`` is a hash over its disco#info. A hash seen before is
answered from the cache, so thousands of logins of one client version cost one query. An
unknown hash is asked for once (disco#info to the resource with ``node='node#ver'``, shared by
every session that announces it meanwhile); the answer is hashed again (§5) and cached only
when it matches, since a cached lie would mislead every later session with that hash. A
mismatching or legacy (no ``hash``) answer still serves the resource that gave it.

PEP reads :meth:`EntityCaps.features` to find resources with ``<node>+notify`` and listens to
:attr:`EntityCaps.listeners` to deliver last items when a resource's interests change.
"""

from __future__ import annotations

import base64
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.words.xish import domish

CAPS_NS = "http://jabber.org/protocol/caps"
DISCO_INFO_NS = "http://jabber.org/protocol/disco#info"
DATA_FORMS_NS = "jabber:x:data"
XML_NS = "http://www.w3.org/XML/1998/namespace"  # xml:lang, as domish's parser keys it

# IANA hash names (XEP-0115 §4) -> hashlib names; MD5 is not accepted.
HASHES = {"sha-1": "sha1", "sha-224": "sha224", "sha-256": "sha256", "sha-384": "sha384",
          "sha-512": "sha512"}
NO_FEATURES: frozenset[str] = frozenset()

Identity = tuple[str, str, str, str]               # category, type, xml:lang, name
Form = tuple[str, tuple[tuple[str, tuple[str, ...]], ...]]  # FORM_TYPE, ((var, values), ...)


class BadCaps(ValueError):
    """A disco#info answer that XEP-0115 §5.4 says must not be used for a hash."""


@dataclass(frozen=True, slots=True)
class DiscoInfo:
    """The parts of a disco#info answer the caps hash covers."""

    identities: tuple[Identity, ...]
    features: frozenset[str]
    forms: tuple[Form, ...] = ()


def parse_disco_info(query: domish.Element) -> DiscoInfo:
    """Read a ``<query xmlns='...disco#info'/>``; raises :class:`BadCaps` when §5.4 forbids
    hashing it (duplicate identity or feature, a form without or with a repeated
    FORM_TYPE)."""
    identities: list[Identity] = []
    features: list[str] = []
    forms: list[Form] = []
    for child in query.elements():
        if child.uri == DISCO_INFO_NS and child.name == "identity":
            identities.append((child.getAttribute("category", ""), child.getAttribute("type", ""),
                               child.getAttribute((XML_NS, "lang"), ""),
                               child.getAttribute("name", "")))
        elif child.uri == DISCO_INFO_NS and child.name == "feature":
            features.append(child.getAttribute("var", ""))
        elif child.uri == DATA_FORMS_NS and child.name == "x":
            form = _parse_form(child)
            if form is not None:
                forms.append(form)
    if len(set(identities)) != len(identities):
        raise BadCaps("the same identity is listed twice")
    if len(set(features)) != len(features):
        raise BadCaps("the same feature is listed twice")
    if len({form_type for form_type, _ in forms}) != len(forms):
        raise BadCaps("two extended forms share a FORM_TYPE")
    return DiscoInfo(tuple(identities), frozenset(features), tuple(forms))


def _parse_form(x: domish.Element) -> Optional[Form]:
    """A result form as (FORM_TYPE, sorted fields); None for a form without FORM_TYPE, which
    §5.4 says to leave out of the hash."""
    form_type: Optional[str] = None
    fields: list[tuple[str, tuple[str, ...]]] = []
    for field in x.elements(DATA_FORMS_NS, "field"):
        var = field.getAttribute("var", "")
        values = tuple(str(v) for v in field.elements(DATA_FORMS_NS, "value"))
        if var == "FORM_TYPE":
            if form_type is not None or len(values) != 1:
                raise BadCaps("FORM_TYPE must be one field with one value")
            if field.getAttribute("type", "hidden") != "hidden":
                continue
            form_type = values[0]
        else:
            fields.append((var, values))
    if form_type is None:
        return None
    return form_type, tuple(sorted(fields))


def verification_string(info: DiscoInfo) -> str:
    """The string XEP-0115 §5.1 hashes: identities, features and forms, each sorted."""
    parts: list[str] = []
    for category, kind, lang, name in sorted(info.identities):
        parts.append(f"{category}/{kind}/{lang}/{name}<")
    parts.extend(f"{feature}<" for feature in sorted(info.features))
    for form_type, fields in sorted(info.forms):
        parts.append(f"{form_type}<")
        for var, values in fields:
            parts.append(f"{var}<")
            parts.extend(f"{value}<" for value in sorted(values))
    return "".join(parts)


def caps_hash(info: DiscoInfo, algorithm: str = "sha-1") -> str:
    """The base64 ``ver`` of ``info`` (raises KeyError for a hash XEP-0115 does not allow)."""
    digest = hashlib.new(HASHES[algorithm], verification_string(info).encode("utf-8"))
    return base64.b64encode(digest.digest()).decode("ascii")


@dataclass(frozen=True, slots=True)
class CapsAnnouncement:
    """A presence's ``<c/>``: what the resource claims, before we know it."""

    node: str
    ver: str
    algorithm: Optional[str]  # None: legacy caps (before XEP-0115 1.4), no verifiable hash

    @classmethod
    def from_presence(cls, presence: domish.Element) -> Optional["CapsAnnouncement"]:
        for c in presence.elements(CAPS_NS, "c"):
            node, ver = c.getAttribute("node"), c.getAttribute("ver")
            if node and ver:
                return cls(node, ver, c.getAttribute("hash"))
        return None

    @property
    def query_node(self) -> str:
        return f"{self.node}#{self.ver}"


# Asks one session's client for its disco#info at ``node``: fires the <query/> element.
DiscoQuery = Callable[[Any, str], defer.Deferred]
# Told (session, old features, new features) whenever a session's features change.
FeaturesListener = Callable[[Any, frozenset, frozenset], None]


class EntityCaps:
    """Features per session, learned from presence, with a bounded cache by verified hash.

    ``query`` is the XMPP door's way to send a disco#info request to a session's client.
    """

    log = Logger()

    def __init__(self, query: DiscoQuery, cache_size: int = 4096, timeout: float = 30.0,
                 clock: IReactorTime = reactor):
        self._query = query
        self._cache_size = cache_size
        self._timeout = timeout
        self._clock = clock
        self._by_hash: OrderedDict[tuple[str, str], frozenset[str]] = OrderedDict()
        self._pending: dict[tuple[str, str],
                            list[tuple[Any, CapsAnnouncement, defer.Deferred]]] = {}
        self._sessions: dict[Any, frozenset[str]] = {}
        self._announced: dict[Any, CapsAnnouncement] = {}
        self.listeners: list[FeaturesListener] = []

    def features(self, session: Any) -> frozenset[str]:
        """What ``session``'s client supports, as far as we know yet (empty until learned)."""
        return self._sessions.get(session, NO_FEATURES)

    def forget(self, session: Any) -> None:
        """The session ended."""
        self._sessions.pop(session, None)
        self._announced.pop(session, None)

    def cached_hashes(self) -> int:
        return len(self._by_hash)

    def learn(self, session: Any, presence: domish.Element) -> defer.Deferred:
        """Read the caps of an available presence; fires the session's features once known.

        A presence without ``<c/>`` keeps what we knew; a changed ``ver`` replaces it.
        """
        announced = CapsAnnouncement.from_presence(presence)
        if announced is None or announced == self._announced.get(session):
            return defer.succeed(self.features(session))
        self._announced[session] = announced
        d = self._resolve(session, announced)
        d.addCallback(self._learned, session, announced)
        return d

    def _learned(self, features: Optional[frozenset[str]], session: Any,
                 announced: CapsAnnouncement) -> frozenset[str]:
        if self._announced.get(session) != announced:
            return self.features(session)  # gone, or a newer presence superseded this one
        if features is None:
            # No answer: keep what we knew, and ask again on the next presence with this <c/>.
            del self._announced[session]
            return self.features(session)
        old = self._sessions.get(session, NO_FEATURES)
        self._sessions[session] = features
        if features != old:
            for listener in list(self.listeners):
                try:
                    listener(session, old, features)
                except Exception:
                    self.log.failure("caps listener {listener!r} failed", listener=listener)
        return features

    def _resolve(self, session: Any, announced: CapsAnnouncement) -> defer.Deferred:
        algorithm = announced.algorithm
        if algorithm is None or algorithm not in HASHES:
            return self._ask(session, announced, verify=False)
        key = (algorithm, announced.ver)
        cached = self._by_hash.get(key)
        if cached is not None:
            self._by_hash.move_to_end(key)
            return defer.succeed(cached)
        waiting = self._pending.get(key)
        if waiting is not None:
            d: defer.Deferred = defer.Deferred()
            waiting.append((session, announced, d))
            return d
        self._pending[key] = []
        d = self._ask(session, announced, verify=True)
        d.addBoth(self._settle, key)
        return d

    def _settle(self, result: Any, key: tuple[str, str]) -> Any:
        """Hand a shared query's outcome to the sessions that waited for the same hash.

        Only a verified answer is shared; after a failed or mismatching one, each waiter's
        own client is asked.
        """
        shared = self._by_hash.get(key)
        for session, announced, d in self._pending.pop(key, []):
            if shared is not None:
                d.callback(shared)
            else:
                self._ask(session, announced, verify=True).chainDeferred(d)
        return result

    def _ask(self, session: Any, announced: CapsAnnouncement, verify: bool) -> defer.Deferred:
        d = defer.maybeDeferred(self._query, session, announced.query_node)
        d.addTimeout(self._timeout, self._clock)
        d.addCallback(self._answered, announced, verify)
        d.addErrback(self._unanswered, session, announced)
        return d

    def _answered(self, query: domish.Element, announced: CapsAnnouncement,
                  verify: bool) -> frozenset[str]:
        try:
            info = parse_disco_info(query)
        except BadCaps as e:
            self.log.info("caps {node}: unusable disco#info ({e})", node=announced.query_node, e=e)
            return NO_FEATURES
        if verify and announced.algorithm is not None:
            if caps_hash(info, announced.algorithm) == announced.ver:
                self._remember((announced.algorithm, announced.ver), info.features)
            else:
                self.log.info("caps {node}: hash does not match the disco#info; not cached",
                              node=announced.query_node)
        return info.features

    def _unanswered(self, failure: Any, session: Any, announced: CapsAnnouncement) -> None:
        self.log.info("caps {node}: no disco#info answer ({error})",
                      node=announced.query_node, error=failure.getErrorMessage())
        return None

    def _remember(self, key: tuple[str, str], features: frozenset[str]) -> None:
        self._by_hash[key] = features
        self._by_hash.move_to_end(key)
        while len(self._by_hash) > self._cache_size:
            self._by_hash.popitem(last=False)


def notify_nodes(features: Iterable[str]) -> frozenset[str]:
    """The PEP nodes a feature set asks notifications for (``<node>+notify``)."""
    return frozenset(f[:-7] for f in features if f.endswith("+notify"))

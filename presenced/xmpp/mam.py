"""Message Archive Management (XEP-0313, ``urn:xmpp:mam:2``): each account's archive of its
one-to-one chats, queried by contact, time and id, paged with RSM (XEP-0059).

What is kept: ``chat`` messages, and ``normal`` ones, with a body, in the archive of each local
party (sender and recipient), unless the party's preferences say otherwise or the message
carries a no-store hint (XEP-0334). Each message is archived once per party, from one of two
hooks:

- ``xmpp-message-archiving``: a client's message, before it is delivered (to a bare JID, or
  to a full JID whose resource is here: the server's stanza filter has already refused
  blocked ones). The hook answers the ids the parties' archives give the message, which
  the delivered copy and the carbons carry as ``<stanza-id/>`` (XEP-0359);
- the core's ``message-archiving``: a message from another door (Thrift
  ``spoof_chat``/``spoof_message``), before delivery; the core puts the recipient's id on
  the event, so its XMPP copies carry it as ``<stanza-id/>`` too.

A local recipient that blocks the sender of a bare-JID message refused it
(:mod:`presenced.blocking`): it is in neither archive.

Bounds (``[xmpp]``): ``archive_days`` of retention, applied by every append (the store drops
the owner's older entries in the same request) and by every query, so an expired entry is
never served; ``archive_limit`` entries per account, the oldest dropped for the new ones;
pages of at most :data:`MAX_PAGE`. ``archive_days = 0`` turns the feature off: nothing is
archived, queries get ``service-unavailable`` and disco does not announce it.

Deciding costs nothing for users online here (preferences and blocklists are in memory): the
message is appended at once, both parties' entries in one ``append_entries`` call whose
Deferred is the reactor turn's (the store writes a turn's entries together; a message costs
no Deferred, hook lookup or object of its own beyond its entry tuples). Otherwise it waits in its owner's queue for the store's answers
(does the account exist, is the peer on the roster), at most :data:`MAX_QUEUED` messages per
owner; past that a message is not archived (``presenced_archive_skipped_total``, a log line).

Ids are the node's (:class:`presenced.store.ArchiveIds`): a message has its id in each
archive before the store has it, so the copy a recipient gets carries
``<stanza-id by='recipient' id='...'/>``, and the copy the sender's other resources get (sent
carbon) the sender's. Result ids of queries are the same ids: a client pages ``after`` a live
message's id. A message whose archiving waits for the store's answers has its id at once; if
the answer is not to archive it, the id names no entry (paging from it still works: ids
order the archive). A ``with`` that is a full JID matches the conversation with its bare
JID.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional

from twisted.internet import defer
from twisted.words.xish import domish

from presenced.events import Event
from presenced.logs import RepeatLimiter
from presenced.store import MAM_PREFS_STORE, MAM_STORE, ArchivePage, ArchiveRow
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.session import xmpp_sessions
from presenced.xmpp.stanzas import NS_SID, attr, forwardable, message_bytes, parse_address

NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_DATA = "jabber:x:data"
NS_FORWARD = "urn:xmpp:forward:0"
NS_DELAY = "urn:xmpp:delay"

MAX_PAGE = 100          # results per query page, whatever a client asks
MAX_PREFS_JIDS = 1000   # JIDs in one account's always + never lists
MAX_QUEUED = 10000      # messages of one owner waiting for the store before being archived
ARCHIVED_KINDS = ("chat", "normal")
PREFS_KEY = "prefs"     # the one key of an account's preferences in the MAM_PREFS_STORE map
PREFS_CHANGED = "xmpp-mam-prefs"  # router event to the user's sessions; payload: prefs (JSON)

_BODY = re.compile(rb"<body[\s>/]")
_NO_STORE = re.compile(rb"<no-(?:permanent-)?store[^>]+urn:xmpp:hints")
_FORM_FIELDS = (("with", "jid-single"), ("start", "text-single"), ("end", "text-single"),
                ("after-id", "text-single"), ("before-id", "text-single"))


@dataclass(frozen=True, slots=True)
class Pending:
    """A message on its way into one owner's archive."""

    peer: str
    text: str
    when: float
    id: str
    blocking: Optional[tuple[str, str]]  # (sender, recipient): refused if the recipient blocks


class BadQuery(ValueError):
    """A query or preferences request the client has to fix (``bad-request``)."""


def archivable(data: bytes, kind: str) -> bool:
    """Whether a message (as serialised) goes into archives."""
    return kind in ARCHIVED_KINDS and _BODY.search(data) is not None \
        and _NO_STORE.search(data) is None


def stamp(when: float) -> str:
    """XEP-0082 date and time, to the microsecond (clients resume by time); never later
    than ``when`` (a query starting at the stamp finds the entry)."""
    seconds, micros = divmod(math.floor(when * 1e6), 1_000_000)
    moment = datetime.fromtimestamp(seconds, timezone.utc).replace(microsecond=micros)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> float:
    """POSIX seconds of an XEP-0082 date and time (UTC when it names no zone)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadQuery(f"not a date and time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _bare(text: str) -> str:
    try:
        address = parse_address(text.strip())
    except ValueError:
        raise BadQuery(f"not a JID: {text!r}") from None
    return address.bare or address.domain


# --- preferences ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Prefs:
    """An account's archiving preferences (XEP-0313 6): ``never`` wins over ``always``, which
    wins over ``default`` (``always``, ``never``, or ``roster``: contacts on the roster)."""

    default: str = "always"
    always: frozenset[str] = field(default_factory=frozenset)
    never: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_json(cls, text: Optional[str]) -> "Prefs":
        if text is None:
            return cls()
        doc = json.loads(text)
        return cls(doc["default"], frozenset(doc["always"]), frozenset(doc["never"]))

    def to_json(self) -> str:
        return json.dumps({"default": self.default, "always": sorted(self.always),
                           "never": sorted(self.never)})

    @classmethod
    def from_element(cls, prefs: domish.Element) -> "Prefs":
        default = prefs.getAttribute("default")
        if default not in ("always", "never", "roster"):
            raise BadQuery("default must be always, never or roster")
        lists = {}
        for name in ("always", "never"):
            lists[name] = frozenset(_bare(str(jid)) for element in prefs.elements(NS_MAM, name)
                                    for jid in element.elements(NS_MAM, "jid"))
        if len(lists["always"]) + len(lists["never"]) > MAX_PREFS_JIDS:
            raise BadQuery(f"at most {MAX_PREFS_JIDS} JIDs")
        return cls(default, lists["always"], lists["never"])

    def element(self) -> domish.Element:
        prefs = domish.Element((NS_MAM, "prefs"))
        prefs["default"] = self.default
        for name in ("always", "never"):
            element = prefs.addElement(name)
            for jid in sorted(getattr(self, name)):
                element.addElement("jid", content=jid)
        return prefs

    def decides(self, peer: str) -> Optional[bool]:
        """Whether to archive a message with ``peer``; None: as the roster says."""
        if peer in self.never:
            return False
        if peer in self.always or self.default == "always":
            return True
        return None if self.default == "roster" else False


# --- queries --------------------------------------------------------------------------------

@dataclass
class Query:
    """A parsed archive query: the filters of its data form and its RSM page."""

    with_: Optional[str] = None
    start: Optional[float] = None
    end: Optional[float] = None
    after_id: Optional[str] = None
    before_id: Optional[str] = None
    last: bool = False
    limit: int = MAX_PAGE

    @classmethod
    def from_element(cls, query: domish.Element) -> "Query":
        parsed = cls()
        for form in query.elements(NS_DATA, "x"):
            for item in form.elements(NS_DATA, "field"):
                parsed._field(item.getAttribute("var"),
                              [str(v) for v in item.elements(NS_DATA, "value")])
        for rsm in query.elements(NS_RSM, "set"):
            parsed._rsm(rsm)
        return parsed

    def _field(self, var: Optional[str], values: list[str]) -> None:
        if var == "FORM_TYPE":
            if values != [NS_MAM]:
                raise BadQuery(f"FORM_TYPE must be {NS_MAM}")
        elif var not in dict(_FORM_FIELDS):
            raise BadQuery(f"unknown field {var!r}")
        elif values and values[0].strip():
            value = values[0].strip()
            if var == "with":
                self.with_ = _bare(value)
            elif var in ("start", "end"):
                setattr(self, var, parse_time(value))
            else:
                setattr(self, var.replace("-", "_"), value)

    def _rsm(self, rsm: domish.Element) -> None:
        for child in rsm.elements():
            text = str(child).strip()
            if child.name == "max":
                if not text.isdigit():
                    raise BadQuery("max must be a number")
                self.limit = min(int(text), MAX_PAGE)
            elif child.name == "after":
                self.after_id = text or None
            elif child.name == "before":
                self.before_id = text or None
                self.last = not text
            elif child.name == "index":
                raise BadQuery("paging by index is not supported: use after and before")


def fin_element(page: ArchivePage) -> domish.Element:
    """The ``<fin/>`` that ends the answer to a query: complete or not, the page's RSM ids."""
    fin = domish.Element((NS_MAM, "fin"))
    fin["complete"] = "true" if page.complete else "false"
    rsm = fin.addElement((NS_RSM, "set"))
    if page.entries:
        rsm.addElement("first", content=page.entries[0].id)
        rsm.addElement("last", content=page.entries[-1].id)
    return fin


def form_element() -> domish.Element:
    """The query form a client discovers (XEP-0313 7.1)."""
    query = domish.Element((NS_MAM, "query"))
    form = query.addElement((NS_DATA, "x"))
    form["type"] = "form"
    hidden = form.addElement("field")
    hidden["var"], hidden["type"] = "FORM_TYPE", "hidden"
    hidden.addElement("value", content=NS_MAM)
    for var, kind in _FORM_FIELDS:
        item = form.addElement("field")
        item["var"], item["type"] = var, kind
    return query


# --- the handler ----------------------------------------------------------------------------

class ArchiveHandler(FeatureHandler):
    """Archives chats as they pass and answers queries and preferences of the account's own
    archive (IQs to the own bare JID or with no ``to``)."""

    routes = {f"iq-set/self/{NS_MAM}:query": "on_query",
              f"iq-get/self/{NS_MAM}:query": "on_form",
              f"iq-get/self/{NS_MAM}:prefs": "on_get_prefs",
              f"iq-set/self/{NS_MAM}:prefs": "on_set_prefs"}

    account_features = (NS_MAM, NS_SID)
    event_renderers = {PREFS_CHANGED: "prefs_changed"}

    def attached(self) -> None:
        config = self.core.config.xmpp
        self.retention = config.archive_days * 86400.0
        self.limit = config.archive_limit
        self._archive = self._prefs = None
        self._queues: dict[str, deque[Pending]] = {}  # owner -> messages awaiting the store
        self._repeats = RepeatLimiter()
        self.core.metrics.describe("presenced_archive_skipped_total", "counter",
                                   "Messages not archived: their owner had "
                                   f"{MAX_QUEUED} waiting for the store.")
        self.core.metrics.describe("presenced_archive_failed_total", "counter",
                                   "Archive entries not written: the store failed their "
                                   "append, or a question about them (the messages were "
                                   "delivered, not archived).")
        self._known: dict[str, Prefs] = {}  # prefs of users with a resource on this node
        self._failure_log = RepeatLimiter()
        self._batch: Optional[defer.Deferred] = None  # the store's Deferred of this turn
        self._batch_entries = [0]                     # and how many entries it holds
        if self.retention:
            self.core.hooks.add("message-archiving", self.message_archiving)
            self.core.hooks.add("xmpp-message-archiving", self.archiving)
            self.core.hooks.add("xmpp-session-ended", self._session_ended)

    @property
    def archive(self):
        """The archive, opened on use (a core without a store still starts)."""
        if self._archive is None:
            self._archive = self.core.store.open_archive(MAM_STORE)
        return self._archive

    @property
    def prefs(self):
        if self._prefs is None:
            self._prefs = self.core.store.open_map(MAM_PREFS_STORE)
        return self._prefs

    def getDiscoInfo(self, requestor, target, nodeIdentifier=""):
        if not self.retention:
            return []
        return super().getDiscoInfo(requestor, target, nodeIdentifier)

    def _refused(self, session, iq: domish.Element) -> bool:
        """Archiving is off (``archive_days = 0``): the IQ is answered as if nobody knew it."""
        if self.retention:
            return False
        session.error(iq, "service-unavailable")
        return True

    # --- archiving ---------------------------------------------------------------------------

    def archiving(self, sender: str, to: str, data: bytes, kind: str,
                  refused_if_blocked: bool) -> dict[str, str]:
        """The XMPP door's hook, before it delivers a client's message: archive it and
        answer ``{owner: id}`` for the archives that (may) keep it."""
        if not archivable(data, kind):
            return {}
        return self._archive_both(sender, to, data, time.time(), refused_if_blocked)

    def message_archiving(self, event: Event) -> dict[str, str]:
        """The core's hook, before it delivers a message from another door (the XMPP door's
        go through :meth:`archiving`): archive it and answer ``{owner: id}``."""
        payload = event.payload
        if (payload.get("kind") or "normal") not in ARCHIVED_KINDS or not payload.get("body"):
            return {}
        data = message_bytes(event)
        if _NO_STORE.search(data) is not None:
            return {}
        return self._archive_both(event.sender, payload["to"].partition("/")[0], data,
                                  event.time, refused_if_blocked=True)

    def _archive_both(self, sender: str, to: str, data: bytes, when: float,
                      refused_if_blocked: bool) -> dict[str, str]:
        """Archive the message for each local party; the ids of those that (may) keep it.
        What memory decides is written at once, both parties' entries in one call; the
        rest waits in its owner's queue."""
        text = forwardable(data).decode("utf-8")
        when = math.floor(when * 1e6) / 1e6  # what a stamp says, so start=stamp finds it
        blocking = (sender, to) if refused_if_blocked else None
        refused = self._refused_now(blocking)
        ids: dict[str, str] = {}
        entries: list[ArchiveRow] = []
        is_local, queues, new_id = self.core.is_local, self._queues, self.archive.new_id
        for owner, peer in ((sender, to), (to, sender)) if sender != to else ((sender, to),):
            if not is_local(owner):
                continue
            id_ = new_id(when)
            decided = None if refused is None or owner in queues else (
                not refused and self._decide_now(owner, peer))
            if decided:
                entries.append((owner, id_, text, when, peer))
                ids[owner] = id_
            elif decided is None and self._enqueue(owner, Pending(peer, text, when, id_,
                                                                  blocking)):
                ids[owner] = id_
        if entries:
            self._write(entries, when)
        return ids

    def _enqueue(self, owner: str, item: "Pending") -> bool:
        """Queue ``item`` for the owner's drain (the store's answers are asked once for a
        burst), behind the owner's undecided messages. False when the queue is full (the
        message is not archived)."""
        queue = self._queues.get(owner)
        if queue is None:
            queue = self._queues[owner] = deque((item,))
            d = defer.ensureDeferred(self._drain(owner, queue))
            d.addErrback(lambda f: self.log.failure("archiving for {owner}", f, owner=owner))
        elif len(queue) < MAX_QUEUED:
            queue.append(item)
        else:
            self.core.metrics.inc("presenced_archive_skipped_total")
            repeats = self._repeats.allow(owner)
            if repeats is not None:
                self.log.warn("archive of {owner}: {max} messages wait for the store, so "
                              "newer ones are not archived ({repeats} more since the last "
                              "such line)", owner=owner, max=MAX_QUEUED, repeats=repeats)
            return False
        return True

    async def _drain(self, owner: str, queue: "deque[Pending]") -> None:
        """Decide and append the owner's queued messages in order. What the store said
        (the account exists, the roster has the peer) holds for the rest of the drain, so a
        burst costs one read per peer, not one per message; once the preferences are in
        memory the rest is decided from there, without a coroutine step each (a burst's
        first messages wait here for the first answer)."""
        answers: dict[str, bool] = {}
        try:
            while queue:
                item = queue[0]
                try:
                    refused = self._refused_now(item.blocking)
                    decided = None if refused is None else (
                        not refused and self._decide_now(owner, item.peer))
                    if decided is None:
                        decided = await self._decide(owner, item, answers)
                    if decided:
                        self._write([(owner, item.id, item.text, item.when, item.peer)],
                                    item.when)
                except Exception:
                    # The store is failing (a Redis past its timeout in a burst): the rest
                    # of the queue is not archived rather than asked again message by
                    # message (each one more request behind the backlog); one line a minute.
                    self.core.metrics.inc("presenced_archive_failed_total", len(queue))
                    repeats = self._failure_log.allow("decide")
                    if repeats is not None:
                        self.log.failure("archiving {count} messages for {owner} ({repeats} "
                                         "more failed since the last line)", owner=owner,
                                         count=len(queue), repeats=repeats)
                    queue.clear()
                    break
                queue.popleft()
        finally:
            del self._queues[owner]

    def _write(self, entries: list[ArchiveRow], when: float) -> None:
        """Hand ``entries`` to the store; its Deferred is the turn's, shared by the
        messages of the turn: one errback each, counting its entries on failure."""
        d = self.archive.append_entries(entries, keep=self.limit,
                                        since=when - self.retention)
        if d is not self._batch:
            self._batch, self._batch_entries = d, [0]
            d.addErrback(self._append_failed, self._batch_entries)
        self._batch_entries[0] += len(entries)

    def _append_failed(self, failure, entries: list[int]) -> None:
        """The store refused or lost a turn's appends: the messages were delivered all the
        same. One line a minute, with the count."""
        self.core.metrics.inc("presenced_archive_failed_total", entries[0])
        repeats = self._failure_log.allow("append")
        if repeats is not None:
            self.log.failure("archiving {entries} entries ({repeats} more failed since the "
                             "last line)", failure, entries=entries[0], repeats=repeats)

    def _refused_now(self, blocking: Optional[tuple[str, str]]) -> Optional[bool]:
        """Whether a local recipient refuses the sender (``blocking``: the sender and
        recipient to check, None: nothing to check), from what this node holds in memory;
        None: ask the store."""
        if blocking is None:
            return False
        sender, to = blocking
        return self.core.blocking.known_blocks(to, sender) if self.core.is_local(to) else False

    def _decide_now(self, owner: str, peer: str) -> Optional[bool]:
        """Whether ``owner`` archives a message with ``peer``, from what this node holds in
        memory; None: ask the store."""
        prefs = self._known.get(owner)
        if prefs is None or not self.core.router.is_online_anywhere(owner):
            return None
        return prefs.decides(peer)  # None: the roster decides

    async def _decide(self, owner: str, item: "Pending", answers: dict[str, bool]) -> bool:
        """Whether to archive: the refusal of a blocked sender (``item.blocking``: the
        sender and recipient to check), then whether ``owner`` is an account that archives
        messages with the peer. ``answers`` keeps the store's answers of this drain."""
        if item.blocking is not None:
            sender, to = item.blocking
            if self.core.is_local(to) and await self.core.blocking.blocks(to, sender):
                return False
        if "" not in answers:
            answers[""] = self.core.router.is_online_anywhere(owner) \
                or await self.core.accounts.exists(owner)
        if not answers[""]:
            return False
        decided = (await self._prefs_of(owner)).decides(item.peer)
        if decided is not None:
            return decided
        if item.peer not in answers:
            answers[item.peer] = await self.core.store.get_roster_item(owner,
                                                                       item.peer) is not None
        return answers[item.peer]

    # --- preferences, kept in memory for users online here -----------------------------------

    async def _prefs_of(self, user: str) -> Prefs:
        """The user's preferences: every message asks, so a user with a resource on this
        node has them in memory (changes reach every node as :data:`PREFS_CHANGED`)."""
        prefs = self._known.get(user)
        if prefs is None:
            prefs = Prefs.from_json(await self.prefs.get(user, PREFS_KEY))
            if xmpp_sessions(self.core, user):
                self._known[user] = prefs
        return prefs

    def prefs_changed(self, session, event: Event) -> None:
        if session.user in self._known:
            self._known[session.user] = Prefs.from_json(event.payload["prefs"])

    def _session_ended(self, session) -> None:
        if all(s is session for s in xmpp_sessions(self.core, session.user)):
            self._known.pop(session.user, None)

    # --- queries -----------------------------------------------------------------------------

    def on_query(self, session, iq: domish.Element):
        if self._refused(session, iq):
            return None
        try:
            query = Query.from_element(iq.firstChildElement())
        except BadQuery as e:
            session.error(iq, "bad-request", str(e))
            return None
        return defer.ensureDeferred(self._answer(session, iq, query))

    async def _answer(self, session, iq: domish.Element, query: Query) -> None:
        expired = time.time() - self.retention
        try:
            page = await self.archive.query(
                session.user, after_id=query.after_id, before_id=query.before_id,
                start=expired if query.start is None else max(query.start, expired),
                end=query.end, with_=query.with_, limit=query.limit, last=query.last)
        except ValueError:
            session.error(iq, "item-not-found", "no such archive id")
            return
        queryid = iq.firstChildElement().getAttribute("queryid")
        head = (f"<message from={attr(session.user)} to={attr(session.full)}>"
                f"<result xmlns='{NS_MAM}'"
                + ("" if queryid is None else f" queryid={attr(queryid)}")).encode("utf-8")
        for entry in page.entries:
            session.write(head + (
                f" id={attr(entry.id)}><forwarded xmlns='{NS_FORWARD}'>"
                f"<delay xmlns='{NS_DELAY}' stamp='{stamp(entry.when)}'/>{entry.value}"
                f"</forwarded></result></message>").encode("utf-8"))
        session.result(iq, fin_element(page))

    def on_form(self, session, iq: domish.Element) -> None:
        if self._refused(session, iq):
            return
        session.result(iq, form_element())

    # --- preferences -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def on_get_prefs(self, session, iq: domish.Element):
        if self._refused(session, iq):
            return
        prefs = yield defer.ensureDeferred(self._prefs_of(session.user))
        session.result(iq, prefs.element())

    @defer.inlineCallbacks
    def on_set_prefs(self, session, iq: domish.Element):
        if self._refused(session, iq):
            return
        try:
            prefs = Prefs.from_element(iq.firstChildElement())
        except BadQuery as e:
            session.error(iq, "bad-request", str(e))
            return
        text = prefs.to_json()
        yield self.prefs.set(session.user, PREFS_KEY, text)
        self._known.pop(session.user, None)
        self.core.router.deliver(session.user, Event(PREFS_CHANGED, session.user,
                                                     {"prefs": text}))
        session.result(iq, prefs.element())

"""The core every front door stands on: config, store, router, hooks, metrics, secret, and
the auth guard (failed logins counted across doors, :mod:`presenced.authguard`).

Operations that more than one door offers (add a friend, register a user, publish a tune)
live here once; doors translate their wire format into these calls. Doors that must react to
a change (XMPP sends roster pushes and presence) listen to router events or hooks; the core
never imports a door.

Account existence and passwords are :attr:`Core.accounts` (:mod:`presenced.accounts`): the
store's keys, or the external auth program, for every door alike.

Hooks fired here:

- ``friends-added(pairs)`` / ``friends-removed(pairs)`` after the store wrote them;
- ``user-removed(user, contacts)`` after an account was deleted (by
  :mod:`presenced.accounts`); the core drops it from its contacts' rosters (ROSTER events);
- ``message-archiving(event)`` before :meth:`Core.send_message` hands a message from a door
  other than XMPP to anyone: each archive answers ``{owner: id}`` for the parties whose
  archive keeps it, and the event delivered carries the recipient's id as ``archive_id``
  (XMPP renders it as a XEP-0359 ``<stanza-id/>``);
- ``message-sent(event, reached)`` after :meth:`Core.send_message` handed a message to the
  recipient's sessions (``reached`` of them); XMPP stores it offline when no resource took it.

What one door offers the others has a typed slot here, filled by that door when it starts:
``core.irc`` (an :class:`IIRCAnnouncer`, None while no IRC bot runs: callers report "not
enabled"), ``core.web_resources`` (resources the web admin serves for other doors) and
``core.http_resources`` (resources the public HTTP door serves for other doors).
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

from twisted.internet import defer, reactor
from twisted.logger import Logger
from zope.interface import Interface

from presenced import events
from presenced.accounts import Accounts
from presenced.apitokens import ApiTokens
from presenced.blocking import Blocklists
from presenced.authguard import AuthGuard
from presenced.config import Config
from presenced.events import Event
from presenced.hooks import Hooks
from presenced.listener import OpenFiles
from presenced.metrics import Metrics
from presenced.muc.service import RoomService
from presenced.nowplaying import Tune
from presenced.pep import PepService
from presenced.router import SubscriptionRouter
from presenced.store import IRosterStore, Pair, RosterItem
from presenced.topicnodes import TopicNodes
from presenced.subjects import BadEvent, SubjectCache, check_event_data, check_event_type
from presenced.tokens import make_token
from presenced.uploads import FileShare
from presenced.users import BadUser, normalize_user

if TYPE_CHECKING:
    from twisted.web.resource import IResource

    from presenced.extauth import ExternalAuth
    from presenced.httphead import RequestHead


def load_secret(data_dir: str) -> bytes:
    """The server's secret (stream tokens), created on first start, readable by us only."""
    path = os.path.join(data_dir, "secret")
    os.makedirs(data_dir, exist_ok=True)
    try:
        with open(path, "rb") as f:
            return bytes.fromhex(f.read().decode().strip())
    except FileNotFoundError:
        secret = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret.hex() + "\n")
        return secret


@dataclass(frozen=True)
class IRCStatus:
    """What the IRC bot is doing, as operators see it (web admin overview)."""

    connected: bool
    nickname: str
    channels: tuple[str, ...]  # joined now, lower-cased, sorted
    lines_waiting: int  # queued behind the flood limit
    last_error: str  # "" when none since the last sign-on


class ILeanResource(Interface):
    """A resource in ``core.web_resources`` that also answers whole requests read by the web
    admin port's lean channel, without twisted.web's machinery per request (the HTTP
    publisher's path): the door offering it keeps one implementation of its logic for both."""

    def answer_lean(head: "RequestHead", body: bytes, host: str) -> Any:
        """``(status, body bytes, extra headers as (name, value) bytes pairs)`` for the
        request ``head`` with ``body`` from the client at ``host``, or a Deferred firing it
        (a hot path answers at once, without one)."""


class IIRCAnnouncer(Interface):
    """The IRC bot as other doors use it (``core.irc``): the Thrift ``irc_say``, the web
    admin's status. The IRC door provides it; nobody else reaches into the bot."""

    def say(target: Optional[str], text: str) -> int:
        """Queue ``text`` for a channel or nick (``@nick``; None: the default channel), one
        message per line; returns the messages queued. Raises ``ValueError`` (nothing
        queued) for a bad target or a full queue."""

    def status() -> IRCStatus:
        """The bot's connection, channels and queue now."""


# Sessions a batch of site events may reach in one reactor turn (about 25 ms at the ~1.2 us
# a delivery takes in a fan-out); the rest of the batch goes on in the next turn.
BATCH_TURN_SESSIONS = 20000


class BatchSend:
    """The checked events of one :meth:`Core.publish_many`, sent in order in as many reactor
    turns as their deliveries need: a batch to topics with many followers must not hold the
    reactor for seconds (1 000 events to a topic of 5 000 followers are 5 million
    deliveries). Other requests' events may come between two turns of a batch."""

    __slots__ = ("router", "events", "sent", "done")

    def __init__(self, router: SubscriptionRouter, events: list[tuple[str, Event]]):
        self.router = router
        self.events = events
        self.sent: list[Any] = []   # sessions reached, or a Deferred of it (held for logins)
        self.done: defer.Deferred = defer.Deferred()

    def start(self) -> defer.Deferred:
        self._send()
        return self.done

    def _send(self) -> None:
        router, events, sent = self.router, self.events, self.sent
        budget = BATCH_TURN_SESSIONS
        while len(sent) < len(events):
            if budget <= 0:
                reactor.callLater(0, self._send)
                return
            subject, event = events[len(sent)]
            reached = router.send_now(subject, event)
            if reached is None:        # held for logins, as every event after it will be
                reached = router.send(subject, event)
            else:
                budget -= 1 + reached
            sent.append(reached)
        self._finish()

    def _finish(self) -> None:
        events = [event for _, event in self.events]
        if not any(isinstance(r, defer.Deferred) for r in self.sent):
            self.done.callback(list(zip(events, self.sent)))
            return
        counts = defer.gatherResults([r if isinstance(r, defer.Deferred) else defer.succeed(r)
                                      for r in self.sent], consumeErrors=True)
        counts.addCallback(lambda reached: list(zip(events, reached)))
        counts.chainDeferred(self.done)


class Core:
    """Shared state and shared operations of one presenced node."""

    log = Logger()

    def __init__(self, config: Config, store: IRosterStore,
                 router: Optional[SubscriptionRouter] = None,
                 external_auth: Optional["ExternalAuth"] = None):
        """``external_auth``: the extauth pool that owns the accounts (the server passes the
        configured one and starts it with ``accounts.start()``); None: the store does."""
        self.config = config
        self.store = store
        self.router = router or SubscriptionRouter(store)
        self.hooks = Hooks()
        self.metrics = Metrics()
        server = config.server
        # Every door asks it before checking a secret and tells it the outcome.
        self.auth_guard = AuthGuard(reactor, self.metrics, server.auth_failures_per_ip,
                                    server.auth_failures_per_account,
                                    server.auth_failure_period, server.auth_ban_seconds)
        self.accounts = Accounts(store, self.router, self.hooks, server.scram_iterations,
                                 external_auth, run_check=self.auth_guard.run_check,
                                 domains=tuple(server.domains),
                                 verified_cache=server.verified_password_cache)
        self.hooks.add("user-removed", self._drop_from_contacts)
        self.hooks.add("user-removed", self._drop_from_graph)
        self.secret = load_secret(config.server.data_dir)
        self.started_at = time.time()
        # "starting", "ready" (every door listens) or "stopping": what /health reports.
        self.state = "starting"
        self.domains = tuple(config.server.domains)
        self._subjects = SubjectCache(self.domains[0])
        # Filled by the doors that offer them, when they start (see the module docstring).
        self.irc: Optional[IIRCAnnouncer] = None
        # URL segment (b"irccat") -> resource the web admin serves there for another door;
        # looked up per request, so a door may add one after the console started.
        self.web_resources: dict[bytes, IResource] = {}
        # The same for the public HTTP door (comet, port 8000): the XMPP door's
        # /xmpp-websocket, /http-bind and /.well-known (XEP-0156).
        self.http_resources: dict[bytes, IResource] = {}
        self.pep = PepService(store, self.router, self.metrics)
        # Nodes of the pubsub service: topics with owners, rules and items (topicnodes.py).
        self.nodes = TopicNodes(self)
        self.hooks.add("user-removing", self.nodes.forget_user)
        # Bearer tokens of the HTTP API (presenced.apitokens), valid on every node.
        self.api_tokens = ApiTokens(store, self.domains[0],
                                    lambda: self.secret, server.api_tokens_max,
                                    server.api_token_cache_seconds)
        self.blocking = Blocklists(store, self.router, server.blocklist_limit)
        self.rooms = RoomService(self)  # group chat (presenced.muc), for every door
        # HTTP File Upload: slots for the XMPP door, files for the HTTP door (uploads.py).
        self.uploads = FileShare(config, store, lambda: self.secret, self.metrics)
        self.hooks.add("user-removing", self.uploads.forget_user)
        # What the public doors' listeners may hold together (presenced.listener).
        self.open_files = OpenFiles.for_process(config.server.reserved_files)

    def user(self, text: str) -> str:
        """Normalize a user name from any door (raises :class:`presenced.users.BadUser`)."""
        return normalize_user(text, self.config.default_domain)

    def subject(self, text: str) -> str:
        """A user name (as :meth:`user`) or a topic (``artist/radiohead``,
        :mod:`presenced.subjects`): what may be followed or published to. Raises
        :class:`presenced.users.BadUser` (a :class:`presenced.subjects.BadSubject` for a
        bad topic)."""
        return self._subjects(text)

    def local_user(self, text: str) -> str:
        """:meth:`user` on a domain this server serves: what may become an account or a
        friend (raises :class:`presenced.users.BadUser` for another domain)."""
        user = self.user(text)
        if not self.is_local(user):
            raise BadUser(f"{user}: {user.rpartition('@')[2]} is not a domain this server "
                          f"serves ({', '.join(self.domains)})")
        return user

    def is_local(self, user: str) -> bool:
        return user.rpartition("@")[2] in self.domains

    def stream_token(self, user: str, ttl: int = 86400) -> str:
        return make_token(self.secret, user, ttl)

    # --- messages --------------------------------------------------------------------------

    def send_message(self, sender: str, to: str, body: str, subject: Optional[str] = None,
                     thread: Optional[str] = None, kind: str = "normal",
                     stanza: Optional[bytes] = None) -> int:
        """Deliver a message from ``sender`` to ``to``'s sessions on every door; returns how
        many sessions took it. ``kind`` is the XMPP message type (``chat``, ``normal``);
        ``stanza`` is the XMPP form when the message came from an XMPP client (forwarded as
        is, with its extensions)."""
        event = Event(events.MESSAGE, sender, {"to": to, "body": body, "subject": subject,
                                               "thread": thread, "kind": kind,
                                               "stanza": stanza})
        if stanza is None:  # an XMPP client's message was archived, and stamped, by its door
            event = self._archived(event)
        reached = self.router.deliver(to, event)
        self.hooks.fire("message-sent", event, reached)
        return reached

    def _archived(self, event: Event) -> Event:
        """``event`` archived (``message-archiving``), with the recipient's archive id when
        its archive keeps it, so the copy delivered names the entry a client pages from."""
        for ids in self.hooks.collect("message-archiving", event):
            to = event.payload["to"].partition("/")[0]
            if ids and to in ids:
                return Event(events.MESSAGE, event.sender,
                             {**event.payload, "archive_id": ids[to]}, event.time, event.id)
        return event

    # --- now playing -----------------------------------------------------------------------

    def publish_tune(self, user: str, tune: Optional[Tune]) -> defer.Deferred:
        """Announce what ``user`` plays (None: stopped) to every door; fires the number of
        sessions reached. Validation is :class:`Tune`'s; see :mod:`presenced.pep`."""
        return defer.ensureDeferred(self.pep.publish_tune(user, tune))

    def now_playing(self, user: str) -> defer.Deferred:
        """Fires ``user``'s current :class:`Tune`, or None when stopped or never set."""
        return defer.ensureDeferred(self.pep.now_playing(user))

    # --- site events -----------------------------------------------------------------------

    def publish(self, subject: str, kind: str, data: dict) -> defer.Deferred:
        """Send the site event ``kind`` with ``data`` (a JSON object) from ``subject`` (a
        normalized user or topic) to its followers' sessions on every door, as a friend's
        tune goes; fires ``(event, sessions reached)``. Raises
        :class:`presenced.subjects.BadEvent` for a reserved or malformed type and for data
        past ``[server] max_event_bytes``, before anything is sent."""
        event = self._site_event(subject, kind, data)
        return self.router.send(subject, event).addCallback(lambda reached: (event, reached))

    def publish_now(self, subject: str, kind: str, data: dict) -> Optional[tuple[Event, int]]:
        """:meth:`publish` within this call: ``(event, sessions reached)``, or None, having
        sent nothing, while the router holds events for logins being read (then
        :meth:`publish`). Raises as :meth:`publish` does."""
        event = self._site_event(subject, kind, data)
        reached = self.router.send_now(subject, event)
        return None if reached is None else (event, reached)

    def publish_many(self, items: Sequence[tuple[str, str, dict]]) -> defer.Deferred:
        """:meth:`publish` for several events in order (a site's batch): every event is
        checked before any is sent, so a bad one (:class:`presenced.subjects.BadEvent`,
        ``events[n]: why``) sends none; fires ``[(event, sessions reached), ...]``. Sent
        within this call while the router holds nothing for logins, as :meth:`publish_now`,
        unless the batch reaches more than :data:`BATCH_TURN_SESSIONS` sessions
        (:class:`BatchSend`)."""
        built = []
        for n, (subject, kind, data) in enumerate(items):
            try:
                built.append((subject, self._site_event(subject, kind, data)))
            except BadEvent as e:
                raise BadEvent(f"events[{n}]: {e}") from None
        return BatchSend(self.router, built).start()

    def _site_event(self, subject: str, kind: str, data: dict) -> Event:
        check_event_type(kind)
        encoded = check_event_data(data, self.config.server.max_event_bytes)
        return events.site_event(subject, kind, data, encoded)

    # --- friendships -----------------------------------------------------------------------

    @defer.inlineCallbacks
    def add_friends(self, pairs: Iterable[Pair]):
        """Make each pair mutual friends and tell their online sessions (roster events)."""
        pairs = list(pairs)
        yield self.store.add_friends(pairs)
        self.router.subscriptions_changed(added=_both_ways(pairs))
        for a, b in pairs:
            self.roster_changed(a, b, RosterItem(b, "both"))
            self.roster_changed(b, a, RosterItem(a, "both"))
        self.hooks.fire("friends-added", pairs)
        return len(pairs)

    @defer.inlineCallbacks
    def remove_friends(self, pairs: Iterable[Pair]):
        pairs = list(pairs)
        yield self.store.remove_friends(pairs)
        self.router.subscriptions_changed(removed=_both_ways(pairs))
        for a, b in pairs:
            self.roster_changed(a, b, None)
            self.roster_changed(b, a, None)
        self.hooks.fire("friends-removed", pairs)
        return len(pairs)

    def _drop_from_graph(self, user: str, contacts: Iterable[str]) -> None:
        """A removed account follows nobody and nobody follows it any more (the store
        dropped its edges both ways)."""
        self.router.subscriptions_changed(gone=[user])

    def _drop_from_contacts(self, user: str, contacts: Iterable[str]) -> None:
        """A removed account leaves its contacts' rosters on every door (roster push
        ``remove``, a comet roster event)."""
        for contact in contacts:
            self.roster_changed(contact, user, None)

    def roster_changed(self, owner: str, contact: str, item: Optional[RosterItem],
                       version: Optional[int] = None, presence_exchanged: bool = False) -> None:
        """The one producer of ROSTER events: ``contact``'s item on ``owner``'s roster is now
        ``item`` (None: removed) at ``version`` (None: not known here, doors read it).
        ``presence_exchanged`` says the subscription protocol already showed both sides'
        presence; otherwise (an admin linked them) XMPP resources exchange it now."""
        self.router.deliver(owner, Event(events.ROSTER, contact, {
            "to": owner, "item": item, "jid": contact, "version": version,
            "presence_exchanged": presence_exchanged}))

    # --- subscription graph ----------------------------------------------------------------

    # Every change of the graph passes here, after the store wrote it, and is told to the
    # router (its followers index on every node): the core is the graph's one producer.

    @defer.inlineCallbacks
    def add_subscriptions(self, pairs: Iterable[Pair]):
        """``(subscriber, subject)`` edges: the subscriber receives the subject's events
        from the next one on. Subjects are users or topics (any string)."""
        pairs = list(pairs)
        count = yield self.store.add_subscriptions(pairs)
        self.router.subscriptions_changed(added=pairs)
        return count

    @defer.inlineCallbacks
    def remove_subscriptions(self, pairs: Iterable[Pair]):
        pairs = list(pairs)
        count = yield self.store.remove_subscriptions(pairs)
        self.router.subscriptions_changed(removed=pairs)
        return count


def _both_ways(pairs: list[Pair]) -> list[Pair]:
    """A friendship's two graph edges for each pair."""
    return pairs + [(b, a) for a, b in pairs]

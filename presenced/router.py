"""The subscription router: who is online where, and who receives whose events.

A session is any protocol's endpoint (an XMPP resource, a comet stream, an IRC hook) that
implements :class:`ISession`. ``send(subject, event)`` reaches the subject's own sessions and
the sessions of every online subscriber of the subject (the roster store's subscription graph).
Who those are on this node is :class:`presenced.followers.FollowersIndex`, kept in memory, so a
send reads nothing from the store: a dictionary lookup and a loop. The core tells the router
of every graph change (:meth:`SubscriptionRouter.subscriptions_changed`).

An event sent while users are logging in here (their subscriptions being read) is held until
those reads are done, then delivered in order: a user logged in before a send receives it,
exactly as when every send read the store. At most :data:`MAX_HELD` events wait so; past that
an event goes out at once, without the users still loading.

Sessions must never block the router: ``deliver`` only queues bytes. A session whose peer does
not keep up is bounded by :class:`presenced.flow.WriteBudget` and disconnected when it passes
its bound (the documented policy: disconnect, never buffer without limit).

Between nodes the router hands recipients to a transport: :class:`InProcessTransport` for one
node; a Redis pub/sub transport can replace it without the router or the doors changing. A
send goes to the transport once per event (:meth:`IRouterTransport.broadcast`): the other
nodes whose sessions follow the subject fan it out from their own index.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable, Optional, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from presenced.events import END_SESSIONS, Event
from presenced.followers import FollowersIndex
from presenced.logs import RepeatLimiter
from presenced.store import IRosterStore, Pair

# Events held back while logins read their subscriptions (see the module docstring); held
# only for the length of a store read, so the bound is met only when the store stalls.
MAX_HELD = 10000
_NOBODY: frozenset[str] = frozenset()


class ISession(Interface):
    """An endpoint that takes events for one user."""

    user = Attribute("The bare JID this session belongs to.")
    protocol = Attribute("Front door name: 'xmpp', 'comet', 'irc'...")
    label = Attribute("Human-readable name within the user: an XMPP resource, a peer address.")

    def deliver(event: Event) -> None:
        """Queue the event for the peer; never blocks and never raises."""

    def close(reason: str) -> None:
        """Disconnect the peer (kicked by an operator, replaced, server stopping)."""


class IRouterTransport(Interface):
    """Carries events to the nodes that hold the recipients' sessions."""

    def route(router: "SubscriptionRouter", recipients: Iterable[str], event: Event) -> int:
        """Deliver ``event`` to each recipient's sessions; return how many sessions it reached
        (on this node; other nodes count their own)."""

    def broadcast(router: "SubscriptionRouter", subject: str, event: Event,
                  hidden: frozenset[str]) -> None:
        """Carry ``subject``'s event to the other nodes whose sessions follow it; each
        delivers it with :meth:`SubscriptionRouter.fan_out_local`, skipping ``hidden`` (the
        JIDs the subject blocks, as this node knows them). Nothing on one node."""

    def subscriptions_changed(added: Sequence[Pair], removed: Sequence[Pair],
                              gone: Sequence[str]) -> None:
        """Tell the other nodes' indexes of a graph change made here (nothing on one node)."""

    def remote_nodes(user: str) -> Iterable[str]:
        """The other nodes that hold sessions of ``user`` (empty on a single node)."""

    def remote_users() -> Iterable[str]:
        """Users with sessions on other nodes (the admin views count the whole cluster)."""

    def remote_sessions(user: str) -> defer.Deferred:
        """Fires ``(protocol, label)`` of each of ``user``'s sessions on other nodes."""


@implementer(IRouterTransport)
class InProcessTransport:
    """One node: every recipient's sessions are in this process."""

    def route(self, router: "SubscriptionRouter", recipients: Iterable[str], event: Event) -> int:
        reached = 0
        for user in recipients:
            reached += router.deliver_local(user, event)
        return reached

    def broadcast(self, router: "SubscriptionRouter", subject: str, event: Event,
                  hidden: frozenset[str]) -> None:
        pass

    def subscriptions_changed(self, added: Sequence[Pair], removed: Sequence[Pair],
                              gone: Sequence[str]) -> None:
        pass

    def remote_nodes(self, user: str) -> Iterable[str]:
        return ()

    def remote_users(self) -> Iterable[str]:
        return ()

    def remote_sessions(self, user: str) -> defer.Deferred:
        return defer.succeed([])


LoginListener = Callable[[str, ISession], None]


class SubscriptionRouter:
    """Online sessions by user, and event fan-out over the subscription graph."""

    log = Logger()

    def __init__(self, store: IRosterStore, transport: Optional[IRouterTransport] = None):
        self.store = store
        self.transport: IRouterTransport = transport or InProcessTransport()
        self.followers = FollowersIndex(store)
        # (load number current when sent, subject, event, Deferred of the send)
        self._held: deque[tuple[int, str, Event, defer.Deferred]] = deque()
        self._overflow_log = RepeatLimiter()
        # Tuples, replaced on every change: handed out as they are (a fan-out iterating one
        # is not disturbed by a login or logout meanwhile), not copied per lookup.
        self._sessions: dict[str, tuple[ISession, ...]] = {}
        self._count = 0
        self._watchers: dict[str, list[ISession]] = {}
        self.login_listeners: list[LoginListener] = []
        self.logout_listeners: list[LoginListener] = []
        # Set by the core's blocklists: whether a user refuses an event, and who of a
        # broadcast's recipients may see it.
        self.delivery_filter: Optional[Callable[[str, Event], bool]] = None
        # (subject, recipients, hidden or None: as this node knows the subject's list)
        self.recipient_filter: Optional[
            Callable[[str, Sequence[str], Optional[frozenset[str]]], Sequence[str]]] = None
        # What a subject's broadcasts skip, carried to the other nodes with the event.
        self.broadcast_hidden: Optional[Callable[[str], frozenset[str]]] = None
        self.events_sent = 0
        self.deliveries = 0
        self.delivery_errors = 0

    # --- who is online ---------------------------------------------------------------

    def login(self, user: str, session: ISession) -> None:
        """Make ``session`` receive ``user``'s events and those of everyone ``user`` follows."""
        sessions = self._sessions.get(user)
        if sessions is None:
            self._sessions[user] = (session,)
            self._index(user)
        elif session in sessions:
            return
        else:
            self._sessions[user] = sessions + (session,)
        self._count += 1
        for listener in self.login_listeners:
            listener(user, session)

    def logout(self, session: ISession) -> None:
        """Forget ``session``; safe to call twice and from inside a delivery."""
        user = session.user
        sessions = self._sessions.get(user)
        if not sessions or session not in sessions:
            return
        if len(sessions) == 1:
            del self._sessions[user]
            self._unindex(user)
        else:
            self._sessions[user] = tuple(s for s in sessions if s is not session)
        self._count -= 1
        for listener in self.logout_listeners:
            listener(user, session)

    def _index(self, user: str) -> None:
        """``user`` gained its first session or watcher here: the followers index reads
        what it follows (a no-op when it has one already)."""
        loaded = self.followers.user_online(user)
        if loaded is not None:
            loaded.addCallback(self._release_held)

    def _unindex(self, user: str) -> None:
        if user not in self._sessions and user not in self._watchers:
            self.followers.user_offline(user)

    def following(self, user: str) -> defer.Deferred:
        """Fires the subjects ``user`` follows: from the followers index while ``user`` is
        online here (no store read), else from the store."""
        indexed = self.followers.following(user)
        if indexed is not None:
            return indexed
        if self.store is None:  # a router without a store (door tests): no graph
            return defer.succeed([])
        return defer.maybeDeferred(self.store.get_subscriptions, user)

    def sessions(self, user: str) -> tuple[ISession, ...]:
        return self._sessions.get(user, ())

    def is_online(self, user: str) -> bool:
        return user in self._sessions

    def is_online_anywhere(self, user: str) -> bool:
        """Online on this node or, in a cluster, on another one."""
        return user in self._sessions or bool(self.transport.remote_nodes(user))

    def online_users(self) -> int:
        return len(self._sessions)

    def online_users_anywhere(self) -> int:
        """Users online on any node (this one's count on a single node)."""
        remote = self.transport.remote_users()
        return len(self._sessions.keys() | set(remote)) if remote else len(self._sessions)

    @defer.inlineCallbacks
    def sessions_anywhere(self, user: str):
        """Fires ``(protocol, label)`` of ``user``'s sessions on every node."""
        remote = yield self.transport.remote_sessions(user)
        return [(s.protocol, str(s.label)) for s in self.sessions(user)] + list(remote)

    def session_count(self) -> int:
        return self._count

    def all_sessions(self) -> Iterable[ISession]:
        for sessions in list(self._sessions.values()):
            yield from sessions

    # --- delivery ----------------------------------------------------------------------

    def watch(self, user: str, watcher: ISession) -> None:
        """Show ``watcher`` every event that reaches ``user`` on this node, without making
        ``user`` online or counting as a delivery (an IRC hook announcing a user's tunes must
        not keep that user's messages from going offline). A watched user is in the
        followers index as an online one is: its subjects' events reach the watcher."""
        self._watchers[user] = self._watchers.get(user, []) + [watcher]
        self._index(user)

    def unwatch(self, user: str, watcher: ISession) -> None:
        remaining = [w for w in self._watchers.get(user, ()) if w is not watcher]
        if remaining:
            self._watchers[user] = remaining
        elif self._watchers.pop(user, None) is not None:
            self._unindex(user)

    def _show_watchers(self, user: str, event: Event) -> None:
        for watcher in self._watchers.get(user, ()):
            try:
                watcher.deliver(event)
            except Exception:
                self.log.failure("watcher {watcher!r} failed to take {event!r}",
                                 watcher=watcher, event=event)

    def deliver_local(self, user: str, event: Event) -> int:
        """Hand ``event`` to every session of ``user`` on this node; return how many."""
        if self._watchers:
            self._show_watchers(user, event)
        sessions = self._sessions.get(user)
        if not sessions:
            return 0
        if event.type == END_SESSIONS:
            for session in list(sessions):
                session.close(event.payload["reason"])
            return len(sessions)
        if self.delivery_filter is not None and self.delivery_filter(user, event):
            return 0
        reached = 0
        for session in sessions:
            try:
                session.deliver(event)
            except Exception:
                self.delivery_errors += 1
                self.log.failure("session {session!r} failed to take {event!r}",
                                 session=session, event=event)
            else:
                reached += 1
        self.deliveries += reached
        return reached

    def deliver(self, user: str, event: Event) -> int:
        """Hand ``event`` to ``user``'s own sessions, wherever they are (a message, a push)."""
        return self.transport.route(self, (user,), event)

    def end_sessions(self, user: str, reason: str) -> int:
        """Close every session of ``user`` on every node (account removed, an administrator's
        order); returns how many were closed on this node (other nodes close theirs as the
        event reaches them)."""
        return self.transport.route(self, (user,), Event(END_SESSIONS, user, {"reason": reason}))

    def send(self, subject: str, event: Event) -> defer.Deferred:
        """Deliver ``event`` to ``subject``'s sessions and every subscriber's, on every node;
        fires the number of sessions reached on this node."""
        self.events_sent += 1
        if self._held or self.followers.loading:
            if len(self._held) < MAX_HELD:
                d: defer.Deferred = defer.Deferred()
                self._held.append((self.followers.started(), subject, event, d))
                return d
            repeats = self._overflow_log.allow("held")
            if repeats is not None:
                self.log.warn("router: {n} events wait for logins; {event!r} goes out "
                              "without the users still loading ({repeats} more since the "
                              "last line)", n=len(self._held), event=event, repeats=repeats)
        try:
            return defer.succeed(self._publish(subject, event))
        except Exception:
            return defer.fail()

    def send_now(self, subject: str, event: Event) -> Optional[int]:
        """:meth:`send` when it can deliver within this call (no login's read in flight):
        the number of sessions reached on this node; None, having sent nothing, when the
        event would have to wait (then :meth:`send` it). A hot path's way round a Deferred
        per event (the HTTP publisher)."""
        if self._held or self.followers.loading:
            return None
        self.events_sent += 1
        return self._publish(subject, event)

    def _publish(self, subject: str, event: Event) -> int:
        reached = self.fan_out_local(subject, event)
        hidden = _NOBODY if self.broadcast_hidden is None else self.broadcast_hidden(subject)
        self.transport.broadcast(self, subject, event, hidden)
        return reached

    def fan_out_local(self, subject: str, event: Event,
                      hidden: Optional[frozenset[str]] = None) -> int:
        """Deliver ``event`` to the sessions on this node of ``subject`` and of the users
        that follow it; ``hidden``: what the subject's node said its broadcasts skip (an
        event of another node arrives here), None: this node's own knowledge."""
        recipients = self.followers.of(subject)
        if not recipients:
            return 0
        if self.recipient_filter is not None:
            recipients = self.recipient_filter(subject, recipients, hidden)
        deliver = self.deliver_local
        reached = 0
        for user in recipients:
            reached += deliver(user, event)
        return reached

    def _release_held(self, _: object = None) -> None:
        """Deliver, in order, the held events whose logins have all been read."""
        held = self._held
        while held:
            oldest = self.followers.oldest_loading()
            mark, subject, event, d = held[0]
            if oldest is not None and oldest <= mark:
                return
            held.popleft()
            try:
                reached = self._publish(subject, event)
            except Exception:
                d.errback()
            else:
                d.callback(reached)

    def subscriptions_changed(self, added: Sequence[Pair] = (), removed: Sequence[Pair] = (),
                              gone: Sequence[str] = ()) -> None:
        """The graph changed and the store holds it (the core is the one caller): the index
        here and, in a cluster, every node's index follow at once."""
        self.followers.apply(added, removed, gone)
        self.transport.subscriptions_changed(added, removed, gone)

    def close_all(self, reason: str) -> None:
        """Close every session (server stopping)."""
        for session in list(self.all_sessions()):
            try:
                session.close(reason)
            except Exception:
                self.log.failure("closing {session!r}", session=session)

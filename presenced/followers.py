"""The followers index: for each subject, which users online on this node follow it.

``SubscriptionRouter.send`` used to read the subject's subscribers from the store for every
event (a worker-thread round trip on SQLite, a network round trip on Redis). The index turns
that into a dictionary lookup: it holds the graph edges of the users with a session on this
node, and nothing else.

- A user's first session on this node logs in: the user follows itself at once (its own
  sessions see its events), and its subscriptions are read from the store once
  (``get_subscriptions``). While that read is in flight the user is *loading*: graph changes
  that concern it are kept and applied on top of what the store answers, so a change made
  meanwhile is never lost or undone.
- Every graph change reaches the index from the core, after the store wrote it
  (:meth:`FollowersIndex.apply`): friends added or removed, subscriptions added or removed, an
  account removed. Edges of users not online here are ignored.
- The user's last session logs out: its edges leave the index.
- A read that fails (the store down, a Redis reply past its timeout during a login storm)
  leaves the user following only itself and what changes were heard: the sends it holds go
  on, and the read is made again after ``RETRY_DELAYS`` (then every last delay) for as long
  as the user stays online here, keeping the index as it is until an answer is in. One timer
  per user online here at most.

Subjects are plain strings (a user's bare JID, or a topic such as ``artist/radiohead``); the
index never assumes a subject is a user or online. :attr:`on_interest` and
:attr:`on_no_interest` tell whoever cares (the cluster transport) when a subject gains its
first follower on this node and loses its last one.

Memory: both maps hold lists, not sets (a set costs some 40 bytes per entry, a list 8):
one pointer per edge of an online user in each map, a list per online user and per followed
subject; ``bench/followers.py`` measures it. A subject's followers list is never changed in
place but replaced, so a fan-out iterates it without a copy even when a delivery logs
someone out. Membership checks are linear, which only graph changes and logins pay.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable, Optional, Sequence

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from presenced.store import IRosterStore, Pair

SubjectListener = Callable[[str], None]
_EMPTY: tuple[str, ...] = ()
# Seconds before a failed read of a user's subscriptions is made again; the last repeats.
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)


class _Load:
    """One read of a user's subscriptions, with the changes heard while it is in flight."""

    __slots__ = ("number", "changes", "done", "refresh", "failures")

    def __init__(self, number: int, refresh: bool = False, failures: int = 0):
        self.number = number
        self.refresh = refresh  # a re-read of an indexed user: sends do not wait for it
        self.failures = failures  # reads of this user that failed before this one
        self.changes: list[tuple[bool, str]] = []  # (added?, subject), in the order heard
        self.done: defer.Deferred = defer.Deferred()


class FollowersIndex:
    """Subject -> users online here that follow it; kept true by :meth:`apply`."""

    log = Logger()

    def __init__(self, store: Optional[IRosterStore], clock: Optional[IReactorTime] = None):
        self.store = store
        self.clock: IReactorTime = clock if clock is not None else reactor  # type: ignore
        self._retries: dict[str, IDelayedCall] = {}  # users whose read is made again later
        self.followers: dict[str, list[str]] = {}  # replaced, never changed in place
        self.follows: dict[str, list[str]] = {}
        self.on_interest: list[SubjectListener] = []
        self.on_no_interest: list[SubjectListener] = []
        self._loads: dict[str, _Load] = {}
        self._holding: dict[int, _Load] = {}  # logins' loads by number, oldest first
        self._started = 0
        self.load_failures = 0

    # --- questions ------------------------------------------------------------------------

    def of(self, subject: str) -> Sequence[str]:
        """The users online here that receive ``subject``'s events (the subject itself when
        online here). Never changed once returned: iterate it while delivering."""
        return self.followers.get(subject, _EMPTY)

    def subjects(self) -> Iterable[str]:
        """Every subject someone online here follows."""
        return self.followers.keys()

    @property
    def loading(self) -> bool:
        """Whether a login's read is in flight (sends wait for those)."""
        return bool(self._holding)

    def started(self) -> int:
        """The number of the latest load begun (loads are numbered from 1)."""
        return self._started

    def oldest_loading(self) -> Optional[int]:
        """The number of the oldest load still in flight, None when none is."""
        return next(iter(self._holding), None)

    # --- users coming and going -----------------------------------------------------------

    def user_online(self, user: str) -> Optional[defer.Deferred]:
        """``user``'s first session here logged in: index it and read what it follows;
        the Deferred fires (None) once the read is in the index (None: already indexed)."""
        if user in self.follows:
            return None
        self.follows[user] = []
        self._link(user, user)
        if self.store is None:  # a router without a store (door tests): no graph
            return None
        self._started += 1
        load = self._holding[self._started] = _Load(self._started)
        self._read(user, load)
        return load.done

    def following(self, user: str) -> Optional[defer.Deferred]:
        """Fires the subjects ``user`` follows (itself left out) from the index, once its
        login's read is in; None when ``user`` is not indexed here (ask the store)."""
        subjects = self.follows.get(user)
        if subjects is None:
            return None
        load = self._loads.get(user)
        if load is None or load.refresh:
            return defer.succeed([s for s in subjects if s != user])
        answer: defer.Deferred = defer.Deferred()

        def loaded(result: object) -> object:
            answer.callback([s for s in self.follows.get(user, ()) if s != user])
            return result

        load.done.addBoth(loaded)
        return answer

    def refresh(self) -> None:
        """Read every indexed user's subscriptions again, keeping the index as it is until
        each answer is in (after changes may have been missed: a lost Redis subscription)."""
        if self.store is None:
            return
        for user in list(self.follows):
            if user in self._loads:
                continue  # its read is in flight, and changes heard meanwhile apply to it
            self._read(user, _Load(0, refresh=True))

    def _read(self, user: str, load: _Load) -> None:
        assert self.store is not None
        retry = self._retries.pop(user, None)
        if retry is not None:  # this read answers for it
            retry.cancel()
        self._loads[user] = load
        d = defer.maybeDeferred(self.store.get_subscriptions, user)
        d.addCallbacks(self._loaded, self._load_failed, callbackArgs=(user, load),
                       errbackArgs=(user, load))

    def user_offline(self, user: str) -> None:
        """``user``'s last session here logged out: drop its edges."""
        subjects = self.follows.pop(user, None)
        if subjects is None:
            return
        retry = self._retries.pop(user, None)
        if retry is not None:
            retry.cancel()
        load = self._loads.pop(user, None)
        for subject in subjects:
            self._unlink_subject(user, subject)
        if load is not None:
            self._holding.pop(load.number, None)
            load.done.callback(None)

    def _loaded(self, subjects: Iterable[str], user: str, load: _Load) -> None:
        if self._loads.get(user) is not load:  # logged out (and perhaps in again) meanwhile
            return
        read = {sys.intern(subject) for subject in subjects}  # one string per subject
        if load.refresh:
            for subject in [s for s in self.follows[user] if s not in read and s != user]:
                self._unlink(user, subject)
        link = self._link
        for subject in read:
            link(user, subject)
        self._finish(user, load)

    def _load_failed(self, failure, user: str, load: _Load) -> None:
        self.load_failures += 1
        if self._loads.get(user) is not load:
            return
        delay = RETRY_DELAYS[min(load.failures, len(RETRY_DELAYS) - 1)]
        self.log.warn("followers: could not read {user}'s subscriptions ({e}); it follows "
                      "what the index knew (itself, and changes heard since) and the read "
                      "is made again in {delay:.0f} s", user=user,
                      e=failure.getErrorMessage(), delay=delay)
        self._finish(user, load)
        self._retries[user] = self.clock.callLater(delay, self._read_again, user,
                                                   load.failures + 1)

    def _read_again(self, user: str, failures: int) -> None:
        del self._retries[user]
        if user not in self._loads:  # else a read in flight (a refresh) answers already
            self._read(user, _Load(0, refresh=True, failures=failures))

    def _finish(self, user: str, load: _Load) -> None:
        for added, subject in load.changes:
            (self._link if added else self._unlink)(user, subject)
        del self._loads[user]
        self._holding.pop(load.number, None)
        load.done.callback(None)

    # --- graph changes --------------------------------------------------------------------

    def apply(self, added: Iterable[Pair] = (), removed: Iterable[Pair] = (),
              gone: Iterable[str] = ()) -> None:
        """The graph changed (the store already holds it): ``(subscriber, subject)`` edges
        ``added`` and ``removed``, and accounts ``gone`` (their edges both ways)."""
        follows, loads = self.follows, self._loads
        for subscriber, subject in added:
            if subscriber in follows:
                self._link(subscriber, subject)
                if subscriber in loads:
                    loads[subscriber].changes.append((True, subject))
        for subscriber, subject in removed:
            if subscriber in follows and subscriber != subject:
                self._unlink(subscriber, subject)
                if subscriber in loads:
                    loads[subscriber].changes.append((False, subject))
        for user in gone:
            for follower in list(self.followers.get(user, ())):
                if follower != user:
                    self._unlink(follower, user)
                    if follower in loads:
                        loads[follower].changes.append((False, user))

    # --- the two maps ---------------------------------------------------------------------

    def _link(self, user: str, subject: str) -> None:
        subjects = self.follows[user]
        if subject in subjects:
            return
        subjects.append(subject)
        followers = self.followers.get(subject)
        if followers is None:
            self.followers[subject] = [user]
            for listener in self.on_interest:
                listener(subject)
        else:
            self.followers[subject] = followers + [user]

    def _unlink(self, user: str, subject: str) -> None:
        subjects = self.follows.get(user)
        if subjects is None or subject not in subjects:
            return
        subjects.remove(subject)
        self._unlink_subject(user, subject)

    def _unlink_subject(self, user: str, subject: str) -> None:
        followers = self.followers.get(subject)
        if followers is None or user not in followers:
            return
        if len(followers) > 1:
            self.followers[subject] = [f for f in followers if f != user]
            return
        del self.followers[subject]
        for listener in self.on_no_interest:
            listener(subject)

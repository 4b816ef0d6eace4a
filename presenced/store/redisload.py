"""The Redis bulk load of friendships: every user's friends of the whole load in one ``SADD``.

Redis spends most of a bulk load per command, not per friend (at a million users a script
line of 4 friends costs 2.9 µs of server CPU per friend, one of 30 friends 1.3 µs), and
batches written as they come give a user only the friends one batch names: ``2 · batch / n``
on average, a handful at a million users. So the batches are staged per user in temporary
files (:class:`~presenced.store.spill.FriendSpill`) and written at :meth:`finish`, one part
of the users at a time, each user one plain ``SADD`` with all their friends (the graph
script costs three times as much of Redis's CPU per friend as a plain ``SADD``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable, Optional

from twisted.internet import defer, threads
from zope.interface import implementer

from presenced.store import IFriendsLoad, Pair, StoreError
from presenced.store.spill import FriendSpill

PARTS_IN_FLIGHT = 3  # parts being read or written at once: the node never waits for Python


@implementer(IFriendsLoad)
class RedisFriendsLoad:
    """A bulk load into a :class:`~presenced.store.redis.RedisRosterStore`: batches grouped
    per user and staged on a thread (the reactor keeps answering), the staged parts read
    back at ``finish`` and sent as one ``SADD`` per user (as graph script lines when the
    store does not take encoded commands, or when they fail). Nothing is visible before
    ``finish``; an interrupted load is resumed by loading the same file again (``SADD`` is
    idempotent)."""

    batch = 500_000  # pairs grouped at once: ~75 MB of the loader's memory per batch

    def __init__(self, store):
        self._store = store
        self._spill = FriendSpill()
        self._written = 0  # friends written, both directions

    def add(self, pairs: Iterable[Pair]) -> defer.Deferred:
        return threads.deferToThread(self._stage, list(pairs))

    def _stage(self, pairs: list[Pair]) -> int:
        friends: defaultdict[str, list[str]] = defaultdict(list)
        for a, b in pairs:
            friends[a].append(b)
            friends[b].append(a)
        names = "\n".join(friends)  # every name of the batch is a key, once
        if "\t" in names or names.count("\n") != len(friends) - 1 or "" in friends:
            raise StoreError("load_friends: empty user names or names with tabs or newlines "
                             "cannot be stored")
        self._spill.add(friends)
        return len(pairs)

    def finish(self, report: Optional[Callable[[int], None]] = None) -> defer.Deferred:
        window = defer.DeferredSemaphore(PARTS_IN_FLIGHT)
        parts = [window.run(self._write_part, part, report)
                 for part in range(self._spill.parts)]
        def done(results: list[tuple[bool, Any]]) -> None:
            """Every part written or failed: a user refused (a key of another type) costs
            the load that user's writes, not the parts after it."""
            self._spill.close()
            for ok, result in results:
                if not ok:
                    result.raiseException()
        return defer.DeferredList(parts, consumeErrors=True).addCallback(done)

    def _write_part(self, part: int, report: Optional[Callable[[int], None]]):
        d = threads.deferToThread(self._prepare, part)

        def send(prepared: tuple[dict[int, list[tuple[str, str]]], dict[int, bytes], int]):
            by_place, encoded, friends = prepared
            if encoded:
                writes = [self._send(node, {place: by_place[place] for place in places},
                                     b"".join([encoded[place] for place in places]))
                          for node, places in self._store.nodes_of_places(by_place).items()]
            else:
                writes = [self._script(by_place)]
            d = defer.gatherResults(writes, consumeErrors=True)
            d.addErrback(lambda f: f.value.subFailure)
            return d.addCallback(lambda _: self._wrote(friends, report))
        return d.addCallback(send)

    def _prepare(self, part: int):
        """One part's users by place (``(user, "friend<TAB>...")``), their ``SADD``
        commands when the store takes them encoded, and how many friends they add."""
        place = self._store.place
        by_place: defaultdict[int, list[tuple[str, str]]] = defaultdict(list)
        friends = 0
        for user, names in self._spill.read(part).items():
            by_place[place(user)].append((user, names))
            friends += names.count("\t") + 1
        encoded = {}
        if self._store.takes_encoded:
            encoded = {p: self._store.encode_friend_sets(users) for p, users in by_place.items()}
        return by_place, encoded, friends

    def _send(self, node, by_place: dict[int, list[tuple[str, str]]],
              encoded: bytes) -> defer.Deferred:
        """Plain ``SADD`` commands to one node (a third of the node's CPU of the graph
        script); when they fail (a lost connection, a Redis loading or busy, a slot moved)
        the graph script's path, which waits, retries and follows the slot map (``SADD`` of
        what was written already changes nothing)."""
        commands = sum(len(users) for users in by_place.values())
        d = self._store.write_encoded(node, encoded, commands)
        return d.addErrback(lambda _: self._script(by_place))

    def _script(self, by_place: dict[int, list[tuple[str, str]]]) -> defer.Deferred:
        lines = {place: ["F\t" + user + "\t" + names for user, names in users]
                 for place, users in by_place.items()}
        return self._store.send_graph_lines("load_friends", lines)

    def _wrote(self, friends: int, report: Optional[Callable[[int], None]]) -> None:
        """Report pairs written: each pair is a friend on both sides."""
        before = self._written // 2
        self._written += friends
        if report is not None and self._written // 2 > before:
            report(self._written // 2 - before)

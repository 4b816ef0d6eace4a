"""Friendship changes from many calls, written together.

Sites call ``add_friend`` in bursts (pipelined, over many connections). One store request per
call would pay a request's fixed cost (a queue hand-off, a savepoint, a callback from the store
thread) for every pair; :class:`FriendshipBatcher` gathers the pairs that arrive in one
reactor turn and hands them to ``core.add_friends``/``core.remove_friends`` together. Order is
kept: consecutive adds go out as one call, then the removes after them, so an add followed by
a remove of the same pair still ends removed.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from presenced.store import Pair

Write = Callable[[list[Pair]], defer.Deferred]


class FriendshipBatcher:
    """Queues friendship changes; writes them at the end of the reactor turn (or when
    ``max_batch`` are waiting). Each change's Deferred fires when its write is done."""

    def __init__(self, add: Write, remove: Write, clock: IReactorTime, max_batch: int = 512):
        self._writers = {"add": add, "remove": remove}
        self._clock = clock
        self._max_batch = max_batch
        self._queue: list[tuple[str, Pair, defer.Deferred]] = []
        self._scheduled: Any = None

    def add(self, pair: Pair) -> defer.Deferred:
        return self._enqueue("add", pair)

    def remove(self, pair: Pair) -> defer.Deferred:
        return self._enqueue("remove", pair)

    def _enqueue(self, kind: str, pair: Pair) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._queue.append((kind, pair, d))
        if len(self._queue) >= self._max_batch:
            self.flush()
        elif self._scheduled is None:
            self._scheduled = self._clock.callLater(0, self.flush)
        return d

    def flush(self) -> None:
        """Write everything queued, in order: one call per run of the same kind."""
        if self._scheduled is not None:
            if self._scheduled.active():
                self._scheduled.cancel()
            self._scheduled = None
        queue, self._queue = self._queue, []
        start = 0
        while start < len(queue):
            kind = queue[start][0]
            end = start
            while end < len(queue) and queue[end][0] == kind:
                end += 1
            run = queue[start:end]
            write = defer.maybeDeferred(self._writers[kind], [pair for _, pair, _ in run])
            write.addBoth(_settle, [d for _, _, d in run])
            start = end


def _settle(outcome: Any, waiting: list[defer.Deferred]) -> None:
    for d in waiting:
        if isinstance(outcome, Failure):
            d.errback(outcome)
        else:
            d.callback(None)

"""Changes of one stored record made one at a time on this server.

A node (a PEP node, a pubsub service node) is read, changed and written back in several
store round trips; two changes begun together (a client pipelining publishes) would both
read the old record and the second write would drop the first's change. Each change takes
its turn on the record's key instead: a per-key :class:`~twisted.internet.defer.DeferredLock`
that exists only while changes of that key are running or waiting.

That serialises on this server only. Across cluster nodes a change writes its record with
the store's compare-and-set (``IMapStore.compare_and_set``) and raises :class:`Conflict`
when another server wrote the record since it was read; the change is then made again from
the start, on what that server wrote, up to :data:`MAX_ATTEMPTS` times (a change that lost
that often gets the last :class:`Conflict`). A change made so writes its record before it
does anything else (notifications, graph edges), so a repeat redoes nothing twice.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Awaitable, Callable, Hashable, TypeVar

from twisted.internet import defer

Result = TypeVar("Result")
MAX_ATTEMPTS = 100  # tries of one change while other servers keep changing its record


class Conflict(Exception):
    """Another server wrote the record between this change's read and its write."""


class Turns:
    """Per-key locks, made on first use and dropped when nobody holds or waits for them."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, defer.DeferredLock] = {}

    def __len__(self) -> int:
        """Keys being changed now (0 once every change is done: nothing is kept)."""
        return len(self._locks)

    async def run(self, key: Hashable, work: Callable[..., Awaitable[Result]],
                  *args: Any, **kwargs: Any) -> Result:
        """``await work(*args, **kwargs)`` in the turn of ``key``, after the changes begun
        before it."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = defer.DeferredLock()
        await lock.acquire()
        try:
            return await work(*args, **kwargs)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                del self._locks[key]


def one_at_a_time(argument: str) -> Callable[[Callable[..., Awaitable[Result]]],
                                             Callable[..., Awaitable[Result]]]:
    """Decorate an async method of an object with a ``turns`` (:class:`Turns`) attribute:
    each call runs in the turn of the value of its parameter named ``argument``."""
    def decorate(method: Callable[..., Awaitable[Result]]) -> Callable[..., Awaitable[Result]]:
        # The parameter's place after ``self``, found once: tune publishes come this way.
        position = list(inspect.signature(method).parameters).index(argument) - 1

        async def attempts(self: Any, *args: Any, **kwargs: Any) -> Result:
            attempt = 1
            while True:
                try:
                    return await method(self, *args, **kwargs)
                except Conflict:
                    if attempt >= MAX_ATTEMPTS:
                        raise
                    attempt += 1

        @functools.wraps(method)
        async def in_turn(self: Any, *args: Any, **kwargs: Any) -> Result:
            key = args[position] if position < len(args) else kwargs[argument]
            return await self.turns.run(key, attempts, self, *args, **kwargs)
        return in_turn
    return decorate

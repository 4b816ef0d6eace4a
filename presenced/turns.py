"""Changes of one stored record made one at a time on this server.

A node (a PEP node, a pubsub service node) is read, changed and written back in several
store round trips; two changes begun together (a client pipelining publishes) would both
read the old record and the second write would drop the first's change. Each change takes
its turn on the record's key instead: a per-key :class:`~twisted.internet.defer.DeferredLock`
that exists only while changes of that key are running or waiting. It serialises on this
server only; two cluster nodes changing one record at once may still lose a change.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Awaitable, Callable, Hashable, TypeVar

from twisted.internet import defer

Result = TypeVar("Result")


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

        @functools.wraps(method)
        async def in_turn(self: Any, *args: Any, **kwargs: Any) -> Result:
            key = args[position] if position < len(args) else kwargs[argument]
            return await self.turns.run(key, method, self, *args, **kwargs)
        return in_turn
    return decorate

"""Bulk loads: the friends edge list (``load-friends``) and account lists (``import-users``).

The same code serves ``presencedctl`` and ``bench/store.py``, so the benchmark measures what
operators run. Edges are written in batches through ``IRosterStore.add_friends``; several
batches are in flight at once so the store never waits for the parser.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Collection, Iterable, Iterator, Optional, TextIO, TypeVar

from twisted.internet import defer

from presenced.store import IRosterStore, Pair
from presenced.users import BadUser, normalize_user

IN_FLIGHT = 2  # batches the store writes while the parser reads the next

BadLine = Callable[[int, str, str], None]
T = TypeVar("T")


def undecodable(line: str) -> bool:
    """True for a line read with ``errors="surrogateescape"`` that held bytes not UTF-8: one
    bad byte spoils its line only, never the whole file."""
    if line.isascii():
        return False
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_edges(lines: Iterable[str], default_domain: str, on_bad: BadLine,
                domains: Optional[Collection[str]] = None) -> Iterator[Pair]:
    """Yield ``(a, b)`` for each edge line; blank lines and ``#`` comments are skipped, bad
    lines reported through ``on_bad(line_number, line, reason)``; with ``domains``, a user on
    another domain makes a bad line (no friend the server does not serve)."""
    cache: dict[str, str] = {}
    get = cache.get

    def name(text: str) -> str:
        """A name not seen yet (or dropped with the cache), checked once and kept."""
        user = normalize_user(text, default_domain)
        if domains is not None and user.rpartition("@")[2] not in domains:
            raise BadUser("a user on a domain this server does not serve")
        if len(cache) > 2_000_000:
            cache.clear()
        cache[text] = user
        return user

    for number, line in enumerate(lines, 1):
        # the common line (ASCII, no comment, two ids) costs as few steps as it can
        fields = (line.split("#", 1)[0] if "#" in line else line).split()
        if len(fields) != 2 or not line.isascii():
            if not fields:
                continue
            if undecodable(line):
                on_bad(number, line.rstrip("\n"), "not UTF-8")
                continue
            if len(fields) != 2:
                on_bad(number, line.rstrip("\n"),
                       f"expected two user ids, found {len(fields)}")
                continue
        first, second = fields
        try:
            a = get(first) or name(first)
            b = get(second) or name(second)
        except BadUser as e:
            on_bad(number, line.rstrip("\n"), str(e))
            continue
        if a == b:
            on_bad(number, line.rstrip("\n"), "a user cannot be their own friend")
            continue
        yield a, b


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class Progress:
    """Prints ``done, rate`` to a stream at most every ``every`` seconds."""

    def __init__(self, what: str, stream: Optional[TextIO] = sys.stderr, every: float = 1.0):
        self.what = what
        self.stream = stream
        self.every = every
        self.started = self.last = time.monotonic()
        self.done = 0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.stream is not None and now - self.last >= self.every:
            self.last = now
            self.stream.write(f"  {self.done:,} {self.what} ({self.rate():,.0f}/s)\n")
            self.stream.flush()

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0


@defer.inlineCallbacks
def overlapped(works: Iterable[defer.Deferred], limit: int = IN_FLIGHT):
    """Wait for each of ``works`` (an iterator that starts one when asked for it), with at
    most ``limit`` started and unfinished: the next batch is prepared and started while the
    last is being written, yet a long file never queues more than ``limit`` batches."""
    in_flight: list[defer.Deferred] = []
    for d in works:
        in_flight.append(d)
        if len(in_flight) >= limit:
            yield in_flight.pop(0)
    for d in in_flight:
        yield d


@defer.inlineCallbacks
def load_friends(store: IRosterStore, pairs: Iterable[Pair], progress: Progress):
    """Write every pair as a mutual friendship through the store's bulk load
    (:meth:`IRosterStore.begin_friends_load`); fires the number of pairs written. A backend
    that stages the batches reports its final writes on a second progress line."""
    load = store.begin_friends_load()
    yield overlapped(load.add(batch).addCallback(progress.add)
                     for batch in batches(pairs, load.batch))
    written = Progress(f"of {progress.done:,} friendships written", progress.stream,
                       progress.every)
    yield load.finish(written.add)
    return progress.done

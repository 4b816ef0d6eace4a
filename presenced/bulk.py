"""Bulk loads: the friends edge list (``load-friends``) and account lists (``import-users``).

The same code serves ``presencedctl`` and ``bench/store.py``, so the benchmark measures what
operators run. Edges are written in batches through ``IRosterStore.add_friends``; several
batches are in flight at once so the store never waits for the parser.
"""

from __future__ import annotations

import operator
import re
import sys
import time
from itertools import islice
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


# A chunk of lines is parsed in one go when every line is two plain local parts (lowercase
# ASCII that needs no stringprep, see presenced.users) and one space: the common file, at
# under half the per-line cost. Any other chunk goes line by line.
_CHUNK_LINES = 16_384
_PLAIN_CHUNK = re.compile(r"(?:[a-z0-9._+-]++ [a-z0-9._+-]++\n)*+")
_NAME_CACHE = 2_000_000  # names checked and kept: ~300 MB at most


def parse_edges(lines: Iterable[str], default_domain: str, on_bad: BadLine,
                domains: Optional[Collection[str]] = None) -> Iterator[Pair]:
    """Yield ``(a, b)`` for each edge line; blank lines and ``#`` comments are skipped, bad
    lines reported through ``on_bad(line_number, line, reason)``; with ``domains``, a user on
    another domain makes a bad line (no friend the server does not serve)."""
    names = _EdgeNames(default_domain, domains)
    lines = iter(lines)
    number = 0
    while True:
        chunk = list(islice(lines, _CHUNK_LINES))
        if not chunk:
            return
        if len(names.cache) > _NAME_CACHE:
            names.cache.clear()
        pairs = _plain_chunk(chunk, names)
        if pairs is None:
            pairs = _chunk_by_line(chunk, number, names, on_bad)
        yield from pairs
        number += len(chunk)


class _EdgeNames:
    """User ids of an edge list as normalized JIDs, each checked once and kept."""

    def __init__(self, default_domain: str, domains: Optional[Collection[str]]):
        self.default_domain = default_domain
        self.domains = domains
        self.cache: dict[str, str] = {}
        try:  # a plain local part on the default domain is that JID as it is
            self.suffix: Optional[str] = self.name("plain")[len("plain"):]
        except BadUser:
            self.suffix = None  # then every id goes through name()

    def name(self, text: str) -> str:
        """A name not seen yet: checked (:class:`BadUser` if it is not a user) and kept."""
        user = normalize_user(text, self.default_domain)
        if self.domains is not None and user.rpartition("@")[2] not in self.domains:
            raise BadUser("a user on a domain this server does not serve")
        self.cache[text] = user
        return user


def _plain_chunk(chunk: list[str], names: _EdgeNames) -> Optional[list[Pair]]:
    """The pairs of a chunk of plain lines (see ``_PLAIN_CHUNK``, no user befriending
    themselves), made by a few calls over the whole chunk; None for any other chunk."""
    text = "".join(chunk)
    if names.suffix is None or not text.endswith("\n") or ".." in text \
            or _PLAIN_CHUNK.fullmatch(text) is None:
        return None
    suffix = names.suffix
    users = text.replace(" ", suffix + " ").replace("\n", suffix + "\n").split()
    firsts, seconds = users[0::2], users[1::2]
    if any(map(operator.eq, firsts, seconds)):
        return None
    return list(zip(firsts, seconds))


def _chunk_by_line(chunk: list[str], number: int, names: _EdgeNames,
                   on_bad: BadLine) -> Iterator[Pair]:
    """The pairs of a chunk one line at a time, each bad line reported."""
    get = names.cache.get
    for number, line in enumerate(chunk, number + 1):
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
            a = get(first) or names.name(first)
            b = get(second) or names.name(second)
        except BadUser as e:
            on_bad(number, line.rstrip("\n"), str(e))
            continue
        if a == b:
            on_bad(number, line.rstrip("\n"), "a user cannot be their own friend")
            continue
        yield a, b


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    items = iter(items)
    while True:
        batch = list(islice(items, size))
        if not batch:
            return
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

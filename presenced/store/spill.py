"""Friend lists of a whole bulk load grouped per owner, in bounded memory.

A store whose fastest write is one command per user (Redis: one ``SADD`` with every friend
of the user) needs each user's friends together, but an edge list names a user on many lines
spread over the file. :class:`FriendSpill` appends each batch's per-user lists to one of
``parts`` temporary files chosen by the user, then gives back one part at a time with every
user's lists joined: the loader holds one batch, or one part (a ``1/parts`` share of the
file), never the whole graph.
"""

from __future__ import annotations

import tempfile
import threading
from typing import Optional, TextIO

PARTS = 256  # a part of a 15-million-pair load: ~120 000 friends, ~3 MB of text


class FriendSpill:
    """Per-user friend lists staged in temporary files (unlinked at once: nothing is left
    behind when the process ends, however it ends). About 20 bytes of temporary disk per
    friend and direction (some 600 MB for 15 million pairs), freed as each part is read.
    Names must hold no tab or newline (the caller checks them). :meth:`add` may be called
    from several threads; each part is read once, after the last :meth:`add`."""

    def __init__(self, parts: int = PARTS):
        self.parts = parts
        self._files: list[Optional[TextIO]] = [None] * parts
        self._lock = threading.Lock()

    def add(self, friends: dict[str, list[str]]) -> None:
        """Append ``{user: [friend, ...]}`` to the users' parts."""
        lines: list[list[str]] = [[] for _ in range(self.parts)]
        parts = self.parts
        for user, names in friends.items():
            lines[hash(user) % parts].append(user + "\t" + "\t".join(names) + "\n")
        with self._lock:
            for part, part_lines in enumerate(lines):
                if part_lines:
                    self._file(part).write("".join(part_lines))

    def read(self, part: int) -> dict[str, str]:
        """``{user: "friend<TAB>friend..."}`` of one part, every batch's lists of a user
        joined (a friend named twice stays twice: the store's writes are idempotent); the
        part's file is closed and its disk freed."""
        f = self._files[part]
        if f is None:
            return {}
        self._files[part] = None
        lists: dict[str, list[str]] = {}
        with f:
            f.seek(0)
            for line in f:
                user, _, names = line.partition("\t")
                found = lists.get(user)
                if found is None:
                    lists[user] = [names[:-1]]
                else:
                    found.append(names[:-1])
        return {user: "\t".join(names) for user, names in lists.items()}

    def close(self) -> None:
        """Drop what was not read (an abandoned load)."""
        for part, f in enumerate(self._files):
            if f is not None:
                f.close()
                self._files[part] = None

    def _file(self, part: int) -> TextIO:
        f = self._files[part]
        if f is None:
            # only "\n" ends a line, so a name may hold any other character
            f = self._files[part] = tempfile.TemporaryFile(
                "w+", encoding="utf-8", errors="surrogateescape", newline="\n",
                prefix="presenced-load-")
        return f

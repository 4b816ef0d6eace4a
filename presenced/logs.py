"""Bounded logging: repeated lines rate-limited, log files rotated and capped.

A flood repeats the same event thousands of times a second; logging each one costs more
than the event and fills the disk (one run wrote 262 rotated files of 1 MB). A
:class:`RepeatLimiter` lets one line per key through per interval and counts the rest, so
the next line that gets through says how many were left out. twistd rotates its log file
every megabyte but keeps every rotated file; :func:`cap_twistd_log_file` gives it a log
file that keeps a fixed number.
"""

from __future__ import annotations

import signal
import time
from typing import Callable, Hashable, Optional

from twisted.logger import ILogObserver, textFileLogObserver
from twisted.python import logfile


class RepeatLimiter:
    """At most one line per key every ``interval`` seconds.

    ``allow(key)`` answers None while the key is quiet-listed, else how many lines of that
    key were held back since the last one allowed (put it in the line: ``{repeats}``).
    Keys are forgotten once quiet, so the table does not grow with the keys a flood uses.
    """

    __slots__ = ("interval", "clock", "seen", "max_keys")

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 1024):
        self.interval = interval
        self.clock = clock
        self.max_keys = max_keys
        self.seen: dict[Hashable, list] = {}  # key -> [time allowed, held back since]

    def allow(self, key: Hashable) -> Optional[int]:
        now = self.clock()
        entry = self.seen.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return None
        repeats = entry[1] if entry is not None else 0
        if entry is None and len(self.seen) >= self.max_keys:
            self._forget(now)
        self.seen[key] = [now, 0]
        return repeats

    def _forget(self, now: float) -> None:
        """Drop keys past their interval; if all are recent, the table starts over."""
        for key in [k for k, (t, _) in self.seen.items() if now - t >= self.interval]:
            del self.seen[key]
        if len(self.seen) >= self.max_keys:
            self.seen.clear()


# What twistd's ``--logger`` is to open: it takes the dotted name of a factory, not an object.
_log_file: Optional[tuple[str, int, int]] = None


def cap_twistd_log_file(twistd_options: dict, rotate_bytes: int, max_files: int) -> None:
    """Have twistd log through :func:`capped_log_file` when it would write a file itself
    (not for ``-n`` without ``--logfile``, ``--logfile -``, ``--syslog`` or a ``--logger``
    of the operator's)."""
    global _log_file
    path = twistd_options.get("logfile")
    if twistd_options.get("logger") or twistd_options.get("syslog") or path == "-":
        return
    if twistd_options.get("nodaemon") and not path:
        return
    _log_file = (path or "twistd.log", rotate_bytes, max_files)
    twistd_options["logger"] = f"{__name__}.capped_log_file"


def capped_log_file() -> ILogObserver:
    """The file observer twistd itself would make (SIGUSR1 rotates), keeping ``max_files``
    rotated files instead of all of them."""
    assert _log_file is not None, "cap_twistd_log_file() first"
    path, rotate_bytes, max_files = _log_file
    out = logfile.LogFile.fromFullPath(path, rotateLength=rotate_bytes,
                                       maxRotatedFiles=max_files)
    if not signal.getsignal(signal.SIGUSR1):
        signal.signal(signal.SIGUSR1, lambda *_: _reactor().callFromThread(out.rotate))
    return textFileLogObserver(out)


def _reactor():
    from twisted.internet import reactor

    return reactor

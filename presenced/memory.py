"""Giving freed memory back to the operating system, and the cyclic collector's policy.

glibc keeps the small blocks a burst of connections freed in its arenas, so the process's RSS
stays at its peak after an attack ends; ``malloc_trim`` returns the free pages. Called after
idle XMPP streams hibernate and after many connections closed (:mod:`presenced.listener`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

# Young collections every 10 000 net container allocations, not Python's 700: a login
# allocates a few thousand (streams, TLS, parser, stanzas), and with thousands of sessions
# online each collection of the older generations scans them all again; at 700 the
# collector took about a fifth of the reactor's time during a burst of STARTTLS + SCRAM
# logins. A tenth of the young collections also sweep the middle generation, so the
# cycles closed connections leave (TLS) are still freed within about 100 000 allocations.
COLLECT_THRESHOLDS = (10_000, 10, 10)


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_trim = _malloc_trim()


def release_free_memory() -> None:
    """Return the allocator's free pages to the OS (nothing where there is no glibc)."""
    if _trim is not None:
        _trim(0)


def tune_collector() -> None:
    """Collect less often (:data:`COLLECT_THRESHOLDS`): called when the server starts."""
    gc.set_threshold(*COLLECT_THRESHOLDS)


def freeze_startup_objects() -> int:
    """Move everything alive once the doors are open (modules, config, handlers: hundreds of
    thousands of objects that live as long as the process) out of the collector's sight, so
    a full collection scans only what sessions and connections allocated since. Returns how
    many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()

"""The process's memory: freed memory given back to the operating system, and the cyclic
garbage collector's pace.

glibc keeps the small blocks a burst of connections freed in its arenas, so the process's RSS
stays at its peak after an attack ends; ``malloc_trim`` returns the free pages. Called after
idle XMPP streams hibernate and after many connections closed (:mod:`presenced.listener`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

# Young (generation 1) collections between two full ones; CPython's default is 10.
FULL_COLLECTION_EVERY = 100


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


def pace_collector() -> int:
    """Called once the server is ready; returns how many objects it froze. A full collection
    walks every tracked object and blocks the reactor meanwhile: with 5 000 comet streams and
    their replay buffers (``bench/comet.py --publish http``) each took 0.1-0.3 s, and the
    events the buffers keep (they outlive two young collections) made CPython run one every
    ~10 000 publishes: 4-6 % of the server's CPU per publish, and as many pauses; during
    2 000 STARTTLS + SCRAM logins the collector took 0.47 s of the reactor, 0.31 s once
    frozen. So what start-up built (modules, the IDL, the config: alive for the process's
    life) is frozen out of every collection, and full collections come ten times less often.
    Young collections keep CPython's pace (collecting every 10 000 allocations instead cost
    more per chat message than it saved); a flood of closed connections still ends in a full
    collection (:mod:`presenced.listener`)."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
    return gc.get_freeze_count()

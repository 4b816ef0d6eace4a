"""Giving freed memory back to the operating system, and the cyclic collector's policy.

glibc keeps the small blocks a burst of connections freed in its arenas, so the process's RSS
stays at its peak after an attack ends; ``malloc_trim`` returns the free pages. Called after
idle XMPP streams hibernate and after many connections closed (:mod:`presenced.listener`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc


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


def freeze_startup_objects() -> int:
    """Move everything alive once the doors are open (modules, config, handlers: hundreds of
    thousands of objects that live as long as the process) out of the collector's sight, so
    a full collection scans only what sessions and connections allocated since. (During a
    burst of 2 000 STARTTLS + SCRAM logins the collector took 0.47 s of the reactor's CPU
    before, 0.31 s after.) Returns how
    many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()

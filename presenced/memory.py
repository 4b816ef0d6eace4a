"""Giving freed memory back to the operating system.

glibc keeps the small blocks a burst of connections freed in its arenas, so the process's RSS
stays at its peak after an attack ends; ``malloc_trim`` returns the free pages. Called after
idle XMPP streams hibernate and after many connections closed (:mod:`presenced.listener`).
"""

from __future__ import annotations

import ctypes
import ctypes.util


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

"""What a configuration key is (type, default, check), and the checks several sections share.

Each door declares its own keys beside its code (``presenced/<door>/options.py``) with these;
:mod:`presenced.config` assembles the schema from them. This module imports nothing of
presenced, so an options module can be read without pulling in the door it configures.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

# A check returns a problem to report (the key is named by the caller), or None.
Check = Callable[[Any], Optional[str]]


@dataclass(frozen=True)
class Key:
    """One key of a section: its default, its TOML type and an optional value check."""

    default: Any
    kind: str  # "int", "str", "bool", "float", "list[str]", "list[table]", "table[str]"
    check: Optional[Check] = None


# The keys of one ``[section]``, in the order config/presenced.toml documents them.
Keys = dict[str, Key]


def port(value: int) -> Optional[str]:
    if not 0 <= value <= 65535:
        return f"{value} is not a TCP port (0-65535; 0 picks a free one)"
    return None


def positive(value: float) -> Optional[str]:
    return None if value > 0 else f"{value} must be greater than 0"


def non_negative(value: float) -> Optional[str]:
    return None if value >= 0 else f"{value} must be 0 or more"


def one_of(*choices: str) -> Check:
    def check(value: str) -> Optional[str]:
        if value not in choices:
            return f"{value!r} is not one of {', '.join(repr(c) for c in choices)}"
        return None

    return check


def existing_file_or_empty(value: str) -> Optional[str]:
    if value and not os.path.isfile(value):
        return f"file {value!r} does not exist"
    return None


def existing_dir_or_empty(value: str) -> Optional[str]:
    if value and not os.path.isdir(value):
        return f"directory {value!r} does not exist"
    return None


def non_empty(value: Any) -> Optional[str]:
    return None if value else "must not be empty"


def optional_redis_urls(value: list) -> Optional[str]:
    """Like :func:`redis_urls`, but empty means the feature is off."""
    return redis_urls(value) if value else None


def redis_urls(value: list) -> Optional[str]:
    if not value:
        return "needs at least one redis:// URL"
    for url in value:
        if not url.startswith(("redis://", "unix://")):
            return f"{url!r} is not a redis:// or unix:// URL"
    return None

"""The ``[muc]`` keys: group chat rooms (docs/muc.md)."""

from __future__ import annotations

from presenced.options import Key, Keys, non_negative, positive

KEYS: Keys = {
    "enabled": Key(True, "bool"),
    "domain": Key("", "str"),
    "max_rooms": Key(10000, "int", positive),
    "max_occupants": Key(500, "int", positive),
    "default_history": Key(20, "int", non_negative),
    "max_history": Key(100, "int", non_negative),
}

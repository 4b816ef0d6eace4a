"""Text encodings of store records, shared by the backends that keep records as strings."""

from __future__ import annotations

import json

from presenced.store import Credentials, RosterItem, ScramCredential


def credentials_to_json(credentials: Credentials) -> str:
    return json.dumps({
        name: {"salt": c.salt.hex(), "i": c.iterations, "stored": c.stored_key.hex(),
               "server": c.server_key.hex()}
        for name, c in credentials.scram.items()
    }, sort_keys=True)


def credentials_from_json(text: str) -> Credentials:
    return Credentials({
        name: ScramCredential(bytes.fromhex(c["salt"]), c["i"], bytes.fromhex(c["stored"]),
                              bytes.fromhex(c["server"]))
        for name, c in json.loads(text).items()
    })


_FLAG_ASK, _FLAG_APPROVED = 1, 2


def roster_item_to_text(item: RosterItem) -> str:
    """``sub|flags|name|groups`` with groups as a JSON list: compact for bulk loads."""
    flags = (_FLAG_ASK if item.ask else 0) | (_FLAG_APPROVED if item.approved else 0)
    name = "" if item.name is None else json.dumps(item.name)
    groups = json.dumps(list(item.groups)) if item.groups else ""
    return f"{item.subscription}|{flags}|{name}|{groups}"


def roster_item_from_text(jid: str, text: str) -> RosterItem:
    sub, flags, rest = text.split("|", 2)
    name_text, _, groups_text = _split_json_field(rest)
    f = int(flags)
    return RosterItem(jid, sub, json.loads(name_text) if name_text else None,
                      tuple(json.loads(groups_text)) if groups_text else (),
                      bool(f & _FLAG_ASK), bool(f & _FLAG_APPROVED))


def _split_json_field(text: str) -> tuple[str, str, str]:
    """Split ``name|groups`` where ``name`` is a JSON string that may itself hold ``|``."""
    if not text.startswith('"'):
        return text.partition("|")
    decoder = json.JSONDecoder()
    _, end = decoder.raw_decode(text)
    return text[:end], "|", text[end + 1:]


BOTH = roster_item_to_text(RosterItem("", "both"))

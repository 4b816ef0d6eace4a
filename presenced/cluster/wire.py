"""Events on the wire between nodes: JSON, with the few non-JSON payload values tagged.

Payloads may carry a :class:`RosterItem` (roster events), a stanza already serialised as
``bytes`` or a ``domish.Element`` (XMPP events); these are turned into tagged JSON objects and back, so a
session on another node receives an event equal to the one sent here.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.words.xish import domish

from presenced.events import Event
from presenced.store import RosterItem
from presenced.store.codec import roster_item_from_text, roster_item_to_text
from presenced.xmlparse import parse_element

_TAG = "__presenced__"


def _encode_value(value: Any) -> Any:
    if isinstance(value, RosterItem):
        return {_TAG: "roster-item", "jid": value.jid, "text": roster_item_to_text(value)}
    if isinstance(value, bytes):
        return {_TAG: "bytes", "text": value.decode("utf-8", "surrogateescape")}
    if isinstance(value, domish.Element):
        return {_TAG: "xml", "xml": value.toXml()}
    if isinstance(value, (list, tuple)):
        return [_encode_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode_value(v) for k, v in value.items()}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict) and _TAG in value:
        kind = value[_TAG]
        if kind == "roster-item":
            return roster_item_from_text(value["jid"], value["text"])
        if kind == "bytes":
            return value["text"].encode("utf-8", "surrogateescape")
        if kind == "xml":
            return parse_element(value["xml"])
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _decode_value(v) for k, v in value.items()}
    return value


def encode(recipients: list[str], event: Event) -> str:
    return json.dumps({
        "r": recipients, "t": event.type, "s": event.sender, "w": event.time, "i": event.id,
        "p": {k: _encode_value(v) for k, v in event.payload.items()},
    }, separators=(",", ":"))


def batch(encoded: list[str]) -> str:
    """Several encoded events as one message (one PUBLISH per node per reactor turn)."""
    return "[" + ",".join(encoded) + "]"


def decode(text: str) -> list[tuple[list[str], Event]]:
    """The ``(recipients, event)`` pairs of one message (a batch or a single event)."""
    docs = json.loads(text)
    if isinstance(docs, dict):
        docs = [docs]
    return [(doc["r"], Event(doc["t"], doc["s"], {k: _decode_value(v) for k, v in
                                                  doc["p"].items()},
                             when=doc["w"], event_id=doc["i"])) for doc in docs]

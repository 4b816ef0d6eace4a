"""Events on the wire between nodes: JSON, with the few non-JSON payload values tagged.

Payloads may carry a :class:`RosterItem` (roster events), a stanza already serialised as
``bytes`` or a ``domish.Element`` (XMPP events); these are turned into tagged JSON objects and back, so a
session on another node receives an event equal to the one sent here. A site's own data may hold
any key, the tag's too: such a dictionary travels wrapped (kind ``dict``) so it is never taken
for a tagged value.

Events for given users (a chat message: its stanza is most of it) travel as a **frame**: one
JSON array of the turn's event headers, a newline (JSON text has none), then the ``bytes``
values that are UTF-8 (a stanza) as they are, one after the other, each header giving their
lengths. The stanza is neither escaped into JSON nor scanned by the decoder, and an event whose
other values are plain JSON is rebuilt without a pass over its values.
"""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from twisted.words.xish import domish

from presenced.events import Event
from presenced.store import Pair, RosterItem
from presenced.store.codec import roster_item_from_text, roster_item_to_text
from presenced.xmlparse import parse_element

TAG = "__presenced__"  # marks an encoded non-JSON value

# Values JSON carries as they are: most payload values of the hot path (a message's to, body,
# kind), so they skip the tagging checks.
_PLAIN = frozenset({str, int, float, bool, type(None)})
# Made once: ``json.dumps`` with options builds a new encoder for every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode_value(value: Any) -> Any:
    """A payload value as JSON-able data (RosterItem, bytes and elements tagged)."""
    if value.__class__ in _PLAIN:
        return value
    if isinstance(value, RosterItem):
        return {TAG: "roster-item", "jid": value.jid, "text": roster_item_to_text(value)}
    if isinstance(value, bytes):
        return {TAG: "bytes", "text": value.decode("utf-8", "surrogateescape")}
    if isinstance(value, domish.Element):
        return {TAG: "xml", "xml": value.toXml()}
    if isinstance(value, (list, tuple)):
        return [encode_value(v) for v in value]
    if isinstance(value, dict):
        encoded = {k: encode_value(v) for k, v in value.items()}
        return {TAG: "dict", "items": encoded} if TAG in value else encoded
    return value


def decode_value(value: Any) -> Any:
    """The value :func:`encode_value` made."""
    if value.__class__ in _PLAIN:
        return value
    if isinstance(value, dict) and TAG in value:
        kind = value[TAG]
        if kind == "roster-item":
            return roster_item_from_text(value["jid"], value["text"])
        if kind == "bytes":
            return value["text"].encode("utf-8", "surrogateescape")
        if kind == "xml":
            return parse_element(value["xml"])
        if kind == "dict":
            return {k: decode_value(v) for k, v in value["items"].items()}
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if isinstance(value, dict):
        return {k: decode_value(v) for k, v in value.items()}
    return value


def event_doc(recipients: list[str], event: Event,
              hidden: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``event`` as JSON-able data for a subject channel, made when the event is sent (its
    payload copied then) and serialised with the rest of its reactor turn's batch
    (:func:`subject_batch`); ``hidden``: JIDs the subject's broadcast skips (its blocklist)."""
    doc = {"r": recipients, "t": event.type, "s": event.sender, "w": event.time,
           "i": event.id, "p": {k: encode_value(v) for k, v in event.payload.items()}}
    if hidden:
        doc["h"] = sorted(hidden)
    return doc


Record = tuple[list, list[str]]  # (header, the UTF-8 texts of its bytes values)


def record(recipients: list[str], event: Event) -> Record:
    """``event`` for ``recipients`` as one entry of a :func:`frame`, made when the event is
    routed. The header is ``[recipients, type, sender, time, id, payload, raw keys,
    tagged]``: in ``payload`` a raw key's value is its text's length (the key keeps its
    place), ``tagged`` says a value needs :func:`decode_value`."""
    payload: dict[str, Any] = {}
    raw: list[str] = []
    texts: list[str] = []
    tagged = False
    for key, value in event.payload.items():
        kind = value.__class__
        if kind in _PLAIN:
            payload[key] = value
            continue
        if kind is bytes:
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:  # tagged below, with surrogates for the bad bytes
                pass
            else:
                payload[key] = len(text)
                raw.append(key)
                texts.append(text)
                continue
        payload[key] = encode_value(value)
        tagged = True
    return [recipients, event.type, event.sender, event.time, event.id, payload, raw,
            tagged], texts


def frame(records: list[Record]) -> str:
    """Several :func:`record` as one message (one PUBLISH per node per reactor turn), the
    headers serialised in one call: an encoder call costs more to set up than an event."""
    return "".join([_ENCODER.encode([header for header, _ in records]), "\n",
                    *[text for _, texts in records for text in texts]])


def encode(recipients: list[str], event: Event) -> str:
    """One event as a message of its own (:func:`decode` reads it)."""
    return frame([record(recipients, event)])


def encodable(entries: list[Any]) -> list[Any]:
    """The entries (records, docs) JSON can carry (a payload value of a type it cannot is
    left out), for a batch that failed: one bad event must not cost the others of its turn."""
    kept = []
    for entry in entries:
        try:
            _ENCODER.encode(entry)
        except (TypeError, ValueError):
            continue
        kept.append(entry)
    return kept


def decode(text: str) -> list[tuple[list[str], Event]]:
    """The ``(recipients, event)`` pairs of one :func:`frame`."""
    end = text.index("\n")
    at = end + 1
    decoded = []
    for recipients, kind, sender, when, event_id, payload, raw, tagged in json.loads(
            text[:end]):
        if tagged:
            payload = {k: decode_value(v) for k, v in payload.items()}
        for key in raw:
            start, at = at, at + payload[key]
            payload[key] = text[start:at].encode("utf-8")
        decoded.append((recipients, Event(kind, sender, payload, when=when,
                                          event_id=event_id)))
    return decoded


def _event(doc: dict[str, Any]) -> Event:
    return Event(doc["t"], doc["s"], {k: decode_value(v) for k, v in doc["p"].items()},
                 when=doc["w"], event_id=doc["i"])


def subject_batch(origin: str, docs: list[dict[str, Any]]) -> str:
    """A subject channel's events of one reactor turn (each an :func:`event_doc` with no
    recipients: every node that follows the subject finds its own), from node ``origin``."""
    return _ENCODER.encode({"o": origin, "e": docs})


def decode_subject_batch(text: str) -> tuple[str, list[tuple[Event, Optional[frozenset[str]]]]]:
    """``(origin node, [(event, hidden or None)])`` of a :func:`subject_batch` message."""
    doc = json.loads(text)
    return doc["o"], [(_event(e), frozenset(e["h"]) if "h" in e else None) for e in doc["e"]]


def encode_graph(origin: str, added: Sequence[Pair], removed: Sequence[Pair],
                 gone: Sequence[str]) -> str:
    """A change of the subscription graph made on node ``origin``."""
    return _ENCODER.encode({"o": origin, "a": list(added), "r": list(removed),
                            "g": list(gone)})


def decode_graph(text: str) -> tuple[str, list[Pair], list[Pair], list[str]]:
    doc = json.loads(text)
    return (doc["o"], [tuple(p) for p in doc["a"]], [tuple(p) for p in doc["r"]],
            list(doc["g"]))

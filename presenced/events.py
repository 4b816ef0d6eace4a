"""The one event model every front door speaks: now playing, presence, messages, roster changes.

An event is made once by its producer and handed to every session that should see it; its
JSON form is built at most once, however many comet streams it reaches.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from json.encoder import encode_basestring_ascii as _json_string  # json.dumps of a str
import re
import time
from types import MappingProxyType
from typing import Any, Callable, Generic, Optional, TypeVar

_ids = itertools.count(1)

# Event types. Producers and doors use these names; the comet docs list their payloads.
TUNE = "tune"          # payload: artist, title, source, length, track, rating, uri ({} = stopped)
PRESENCE = "presence"  # payload: show, status, available (bool), resource
MESSAGE = "message"    # payload: to, body, subject, thread, kind ("chat"/"normal"), stanza
ROSTER = "roster"      # payload: to, jid, item (RosterItem or None when removed), version
                       # (int or None), presence_exchanged (bool); see Core.roster_changed
ADMIN = "admin"        # payload: free-form admin notice (text)
PEP = "pep"            # payload: node, and item_id + item (XML text) | retract (item ids) |
                       # purge | delete (True); PEP nodes other than the tune, XMPP only
SITE = "site"          # payload: type (the site's event type), data (a JSON object); sender
                       # is a user or a topic (presenced.subjects, Core.publish)
NODE = "pubsub-node"  # sender: a topic; payload as PEP's (node, item_id + item | retract |
                      # purge | delete) or subscription + jid (an authorization answered):
                      # a node of the pubsub service (presenced.topicnodes), XMPP only
NODE_AUTHORIZE = "pubsub-authorize"  # to a node's owner: node, subscriber (pending approval)
END_SESSIONS = "end-sessions"  # payload: reason; the router closes the recipient's sessions
                               # on every node instead of delivering (router.end_sessions)

# What a site may name its events (presenced.subjects): short, lower case, not one of ours.
SITE_TYPE = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")
OWN_TYPES = frozenset((TUNE, PRESENCE, MESSAGE, ROSTER, ADMIN, PEP, SITE, NODE, NODE_AUTHORIZE,
                       END_SESSIONS, "welcome", "closed"))


def is_site_type(name: str) -> bool:
    """``name`` may be a site event's type: the pattern, and none of presenced's own types
    (which comet clients already read with another meaning)."""
    return bool(SITE_TYPE.match(name)) and name not in OWN_TYPES


class Event:
    """Something ``sender`` did, on its way to sessions. Immutable once sent."""

    __slots__ = ("type", "sender", "payload", "time", "id", "_json")

    def __init__(self, type: str, sender: str, payload: dict[str, Any],
                 when: Optional[float] = None, event_id: Optional[int] = None):
        self.type = type
        self.sender = sender
        # Read-only for every door (a render cache written here would travel to other nodes
        # and doors; caches live beside the door, RenderCache). Not copied: the producer
        # hands its dict over, and the hot path makes one per message.
        self.payload = MappingProxyType(payload)
        self.time = time.time() if when is None else when
        self.id = next(_ids) if event_id is None else event_id
        self._json: Optional[bytes] = None

    def to_json(self) -> bytes:
        """``{"type", "from", "time", "id", ...payload}`` as UTF-8, cached."""
        if self._json is None:
            doc = {"type": public_type(self), "from": self.sender,
                   "time": round(self.time, 3), "id": self.id}
            for key, value in self.payload.items():
                if key in doc:
                    continue
                if _jsonable(value):  # the common case first: is_dataclass costs more
                    doc[key] = value
                elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                    doc[key] = dataclasses.asdict(value)
            self._json = json.dumps(doc, separators=(",", ":")).encode("utf-8")
        return self._json

    def __repr__(self) -> str:
        return f"<Event {self.type} from {self.sender} #{self.id}>"


def site_event(sender: str, kind: str, data: dict[str, Any], data_json: str) -> Event:
    """A site event (``SITE``) whose data its producer has already encoded, compactly, to
    check its size: the event's JSON form is put together around that encoding, the same
    bytes :meth:`Event.to_json` would make, without encoding the data a second time."""
    event = Event(SITE, sender, {"type": kind, "data": data})
    event._json = ('{"type":%s,"from":%s,"time":%r,"id":%d,"data":%s}' % (
        _json_string(kind), _json_string(sender), round(event.time, 3), event.id,
        data_json)).encode("utf-8")
    return event


def public_type(event: Event) -> str:
    """The type clients see: a site event's own type (``photo``), else the event's."""
    return event.payload["type"] if event.type == SITE else event.type


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, dict))


Rendered = TypeVar("Rendered")


class RenderCache(Generic[Rendered]):
    """A door's rendering of the last event it saw: built by the first session an event
    reaches, reused by every other session of the same fan-out (one build per event, not one
    per session), and kept beside the door because events are immutable once sent. Keyed by
    the object, not ``Event.id``: events relayed from other nodes keep their node's ids."""

    __slots__ = ("build", "event", "value")

    def __init__(self, build: Callable[[Event], Rendered]):
        self.build = build
        self.event: Optional[Event] = None
        self.value: Any = None

    def __call__(self, event: Event) -> Rendered:
        if event is not self.event:
            self.value = self.build(event)
            self.event = event
        return self.value

"""Subjects beyond users: topics, and the site events published to any subject.

A *subject* is what others follow in the subscription graph: a user (a bare JID) or a
**topic**, a name such as ``artist/radiohead`` or ``photo/789`` (docs/topics.md). A topic is
told from a user by its ``/``, which a bare JID never holds; it is kept in the store as its
name, so following a topic is an ordinary ``(subscriber, subject)`` edge.

Topic syntax: a kind of 1..32 characters ``[a-z0-9_-]``, then one to seven more segments
separated by ``/``, each of 1..128 characters ``[A-Za-z0-9._~-]`` (URL-safe, so a topic
travels in a URL path as it is) and never ``.`` or ``..``; 255 characters at most.
Topics are case-sensitive.

A *site event* is ``(type, data)``: a short name the site chooses (``photo``, ``newsfeed``)
and a JSON object, at most ``[server] max_event_bytes`` once encoded.
"""

from __future__ import annotations

import json
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore
import re
from typing import Any

from presenced import events
from presenced.users import BadUser, normalize_user

MAX_TOPIC = 255
SUBJECT_CACHE = 4096        # validated subjects kept by SubjectCache (then it starts afresh)
SUBJECT_CACHE_TEXT = 256    # longer texts are validated each time, never kept
_TOPIC = re.compile(r"[a-z0-9_-]{1,32}(?:/[A-Za-z0-9._~-]{1,128}){1,7}\Z")
DEFAULT_EVENT_TYPE = "event"


class BadSubject(BadUser):
    """Neither a bare JID nor a valid topic (every door already answers BadUser)."""


class BadEvent(ValueError):
    """A site event's type or data is unusable; the message says why."""


def is_topic(subject: str) -> bool:
    """A normalized subject is a topic (a bare JID never holds ``/``)."""
    return "/" in subject


def normalize_subject(text: str, default_domain: str) -> str:
    """A topic as it is (checked), anything else as a user name
    (:func:`presenced.users.normalize_user`). Raises :class:`BadSubject` / ``BadUser``."""
    text = text.strip()
    if "/" not in text or "@" in text:
        return normalize_user(text, default_domain)
    if (len(text) > MAX_TOPIC or not _TOPIC.match(text)
            or any(segment in (".", "..") for segment in text.split("/"))):
        raise BadSubject(f"{text[:80]!r} is not a topic: kind/name, as artist/radiohead "
                         "(docs/topics.md)")
    return text


class SubjectCache:
    """:func:`normalize_subject` remembered for the texts it accepted: a publisher names the
    same few subjects again and again, and a user name's normalization (stringprep) is a
    tenth of an HTTP publish. Bounded: at most :data:`SUBJECT_CACHE` texts of at most
    :data:`SUBJECT_CACHE_TEXT` characters (a few MB), forgotten all at once when full;
    refusals are not kept, so a bad subject costs its check every time and fills nothing.
    ``default_domain`` is fixed for the node's life (``[server] domains`` needs a restart)."""

    __slots__ = ("default_domain", "known")

    def __init__(self, default_domain: str):
        self.default_domain = default_domain
        self.known: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        known = self.known.get(text)
        if known is None:
            known = normalize_subject(text, self.default_domain)
            if len(text) <= SUBJECT_CACHE_TEXT:
                if len(self.known) >= SUBJECT_CACHE:
                    self.known.clear()
                self.known[text] = known
        return known


def check_event_type(kind: str) -> str:
    """``kind`` when a site may use it as an event type; raises :class:`BadEvent`."""
    if not events.SITE_TYPE.match(kind or ""):
        raise BadEvent(f"event type {kind[:40]!r} must be 1..32 characters a-z 0-9 _ -, "
                       "starting with a letter")
    if kind in events.OWN_TYPES:
        raise BadEvent(f"event type {kind!r} is reserved for presenced's own events")
    return kind


# json.dumps and JSONEncoder.encode build their C encoder again on every call (13 % of the
# reactor's time per HTTP publish, py-spy --gil): an event's data is encoded with one built
# once. Without the check for circular references, which data decoded from JSON cannot have
# (a cycle is a RecursionError, refused below).
_COMPACT = json.JSONEncoder(separators=(",", ":"), allow_nan=False, check_circular=False)
_C_ENCODER = (c_make_encoder(None, _COMPACT.default, encode_basestring_ascii, None, ":", ",",
                             False, False, False) if c_make_encoder is not None else None)


def _compact_json(data: dict) -> str:
    return "".join(_C_ENCODER(data, 0)) if _C_ENCODER is not None else _COMPACT.encode(data)


def check_event_data(data: Any, max_bytes: int) -> str:
    """``data``'s compact JSON encoding when it is a JSON object of at most ``max_bytes``
    encoded (the event's JSON is built from it: :func:`presenced.events.site_event`); raises
    :class:`BadEvent`."""
    if not isinstance(data, dict):
        raise BadEvent("event data must be a JSON object")
    try:
        encoded = _compact_json(data)
    except (TypeError, ValueError, RecursionError) as e:
        raise BadEvent(f"event data is not JSON: {e}") from None
    if len(encoded) > max_bytes:    # ASCII: json.dumps escapes the rest
        raise BadEvent(f"event data is larger than {max_bytes} bytes ([server] "
                       "max_event_bytes)")
    return encoded

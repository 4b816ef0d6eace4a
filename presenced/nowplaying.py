"""Now playing: the User Tune model (XEP-0118): validation, and XML and payload forms.

Whoever announces a song — a Jabber client publishing to its PEP tune node, the Thrift
``publish_np`` call, anything else — builds a :class:`Tune` and hands it to the core's PEP
service (:mod:`presenced.pep`), which keeps it as the tune node's item and sends ONE router
event (:data:`presenced.events.TUNE`) to every door.

The event payload holds the tune's fields that are set (``artist``, ``title``, ``source``,
``length``, ``track``, ``rating``, ``uri``); an empty payload means "stopped".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from xml.sax.saxutils import escape
from typing import Any, Optional

from twisted.words.xish import domish

from presenced.xmlparse import parse_element

TUNE_NS = "http://jabber.org/protocol/tune"
# The tune node is a singleton: one item, with the id XEP-0060 recommends for such nodes.
TUNE_ITEM_ID = "current"
# Characters per text field: enough for any real title, small enough to bound every copy.
MAX_TEXT = 1024
# XEP-0118's schema: length is xs:unsignedShort seconds, rating 1..10.
MAX_LENGTH = 65535
RATING_RANGE = (1, 10)

TEXT_FIELDS = ("artist", "source", "title", "track", "uri")
INT_FIELDS = ("length", "rating")
# Characters XML 1.0 cannot carry: a tune holding one would break every reader's stream.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class BadTune(ValueError):
    """A tune that breaks XEP-0118's rules; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class Tune:
    """What a user is listening to (XEP-0118). Every field is optional; none set = stopped.

    Empty strings count as unset, so a caller filling every field from a form or from
    ``publish_np`` need not filter them.
    """

    artist: Optional[str] = None
    length: Optional[int] = None
    rating: Optional[int] = None
    source: Optional[str] = None
    title: Optional[str] = None
    track: Optional[str] = None
    uri: Optional[str] = None

    def __post_init__(self) -> None:
        for name in TEXT_FIELDS:
            value = getattr(self, name)
            if value == "":
                object.__setattr__(self, name, None)
            elif value is not None:
                _check_text(name, value)
        _check_int("length", self.length, 0, MAX_LENGTH)
        _check_int("rating", self.rating, *RATING_RANGE)

    @property
    def stopped(self) -> bool:
        """True for the empty tune that says the user stopped listening."""
        return all(getattr(self, name) is None for name in FIELD_NAMES)

    def to_payload(self) -> dict[str, Any]:
        """The set fields, as router event payload and JSON (``{}`` = stopped)."""
        return {name: value for name in FIELD_NAMES
                if (value := getattr(self, name)) is not None}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "Tune":
        """The tune a :data:`~presenced.events.TUNE` event carries (other keys ignored)."""
        return cls(**{name: payload.get(name) for name in FIELD_NAMES})

    @classmethod
    def from_element(cls, element: domish.Element) -> "Tune":
        """Parse ``<tune xmlns='http://jabber.org/protocol/tune'>``; raises :class:`BadTune`."""
        if element.name != "tune" or element.uri != TUNE_NS:
            raise BadTune(f"expected <tune xmlns='{TUNE_NS}'>, got <{element.name}>")
        values: dict[str, Any] = {}
        for child in element.elements():
            if child.uri != TUNE_NS:
                continue  # extensions in other namespaces are allowed and ignored
            name = child.name
            if name not in TEXT_FIELDS and name not in INT_FIELDS:
                raise BadTune(f"unknown tune field <{name}>")
            if name in values:
                raise BadTune(f"<{name}> given twice")
            text = str(child)
            values[name] = _parse_int(name, text) if name in INT_FIELDS else text
        return cls(**values)

    def to_xml(self) -> str:
        return tune_xml(self.to_payload())

    def describe(self) -> str:
        """One line for people (IRC ``?np``, the web admin): ``Artist - Title (Source)``."""
        if self.stopped:
            return "nothing playing"
        text = " - ".join(v for v in (self.artist, self.title) if v) or self.uri or "?"
        if self.source:
            text += f" ({self.source})"
        return text


FIELD_NAMES = tuple(f.name for f in fields(Tune))


def tune_xml(payload: dict[str, Any]) -> str:
    """The ``<tune/>`` element as text for a tune's payload (a :data:`~presenced.events.TUNE`
    event's), without building a Tune again: this runs once per publish on the hot path."""
    body = "".join(f"<{name}>{escape(str(value))}</{name}>" for name in FIELD_NAMES
                   if (value := payload.get(name)) is not None)
    return f"<tune xmlns='{TUNE_NS}'>{body}</tune>" if body else f"<tune xmlns='{TUNE_NS}'/>"


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise BadTune(f"{name} must be text, got {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise BadTune(f"{name} is longer than {MAX_TEXT} characters")
    if _NOT_XML.search(value):
        raise BadTune(f"{name} contains a character XML cannot carry")


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadTune(f"{name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise BadTune(f"{name} {value} is not in {low}..{high}")


def _parse_int(name: str, text: str) -> int:
    text = text.strip()
    if not text.isdigit() or len(text) > 6:
        raise BadTune(f"{name} {text[:20]!r} is not a whole number")
    return int(text)


def parse_tune_xml(xml: str) -> Tune:
    """The tune kept in the store as XML text (as :meth:`Tune.to_xml` wrote it)."""
    try:
        element = parse_element(xml)
    except ValueError:
        raise BadTune("stored tune is not one <tune/> element") from None
    return Tune.from_element(element)

"""One XML element from text we serialised ourselves (the store, another node)."""

from __future__ import annotations

from twisted.words.xish import domish


def parse_element(xml: str) -> domish.Element:
    """Parse ``xml`` holding exactly one element; ValueError otherwise."""
    found: list[domish.Element] = []
    stream = domish.elementStream()
    stream.DocumentStartEvent = lambda root: None
    stream.ElementEvent = found.append
    stream.DocumentEndEvent = lambda: None
    # Top-level children of a document come out as ElementEvents: wrap the text in one.
    stream.parse(b"<wrap>" + xml.encode("utf-8") + b"</wrap>")
    if len(found) != 1:
        raise ValueError("expected exactly one element")
    return found[0]

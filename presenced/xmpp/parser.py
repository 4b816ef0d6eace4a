"""The restricted XML parser of a client stream (RFC 6120 11.1) with memory bounds.

twisted.words' expat element stream, with what XMPP forbids refused outright -- DTDs, entity
declarations (billion laughs), comments, processing instructions -- and limits per stanza on
bytes, element count, nesting depth and attributes per element, so one stanza can neither
exhaust memory nor the serialiser's recursion.
"""

from __future__ import annotations

from typing import Optional

from twisted.words.xish import domish


class RestrictedXML(domish.ParserError):
    """The peer sent XML that XMPP does not allow (stream error ``restricted-xml``)."""


class PolicyViolation(domish.ParserError):
    """A stanza over a limit (stream error ``policy-violation``)."""


class StanzaParser(domish.ExpatElementStream):
    """One stream's parser; a stream restart makes a new one."""

    max_depth = 32
    max_attributes = 64

    def __init__(self, max_stanza_size: int, max_elements: int = 10000):
        super().__init__()
        self.maxStanzaSize = max_stanza_size
        self.maxElementCount = max_elements
        self.depth = 0
        self.stanza_start = 0
        self.fed = 0  # bytes given to the parser
        self.stanza_end: Optional[int] = None  # where the last stanza of a read ended
        self.declarations = 0  # xmlns declarations of the element about to start
        parser = self.parser
        parser.StartDoctypeDeclHandler = self._forbidden
        parser.EntityDeclHandler = self._forbidden
        parser.CommentHandler = self._forbidden
        parser.ProcessingInstructionHandler = self._forbidden
        parser.SetParamEntityParsing(0)

    def close(self) -> None:
        """Break the parser <-> handler reference cycle so the memory goes at once, not at
        the next full garbage collection."""
        self.parser = None
        self.DocumentStartEvent = self.ElementEvent = self.DocumentEndEvent = None

    def _forbidden(self, *args: object) -> None:
        raise RestrictedXML("DTDs, entities, comments and processing instructions are not "
                            "allowed in XMPP")

    def parse(self, buffer: bytes) -> None:
        if self.depth > 1 or not buffer.isspace():   # keepalives between stanzas are free
            self.stanzaSize += len(buffer)
        self.fed += len(buffer)
        self.stanza_end = None
        try:
            self.parser.Parse(buffer)
        except self.error as e:
            raise domish.ParserError(str(e)) from None
        if self.stanza_end is not None:
            # What follows the read's last stanza is the next one's start: it counts at
            # once (expat holds it, a partial start tag fires no event to check it at).
            self.stanzaSize = self.fed - self.stanza_end
        if self.stanzaSize > self.maxStanzaSize:
            raise self._too_large()

    def _too_large(self) -> PolicyViolation:
        """Within one read a whole stanza may arrive: the handlers measure it by the
        parser's offsets (only inside a stanza: whitespace keepalives between stanzas are
        not counted), inline, as every element and text of every stanza passes there."""
        return PolicyViolation(f"stanza larger than {self.maxStanzaSize} bytes")

    def _onStartElement(self, name: str, attrs: dict) -> None:
        """domish's element building, checks first; inlined because every element of
        every stanza passes here (the parse was a third of a chat message's cost)."""
        depth = self.depth = self.depth + 1
        if depth == 2:
            self.stanza_start = self.parser.CurrentByteIndex
        elif depth > self.max_depth:
            raise PolicyViolation(f"elements nested deeper than {self.max_depth}")
        elif (depth > 2
              and self.parser.CurrentByteIndex - self.stanza_start > self.maxStanzaSize):
            raise self._too_large()
        declarations = self.declarations
        if declarations:
            self.declarations = 0
        if len(attrs) + declarations > self.max_attributes:
            raise PolicyViolation(f"more than {self.max_attributes} attributes")
        uri, _, local = name.rpartition(" ")  # expat: "uri name", or "name" without one
        for key in attrs:
            if " " in key:
                attrs = _qualified(attrs)
                break
        element = _new_element(_Element)
        prefixes = self.localPrefixes
        if prefixes:
            self.localPrefixes = {}
            element.localPrefixes = prefixes
        else:
            element.localPrefixes = {}
        element.uri = uri
        element.name = local
        element.defaultUri = self.defaultNsStack[-1]
        element.attributes = attrs
        element.children = []
        element.parent = None
        if not self.documentStarted:
            self.documentStarted = 1
            self.DocumentStartEvent(element)
            return
        self.elementCount += 1
        if self.elementCount > self.maxElementCount:
            raise PolicyViolation("Maximum element count exceeded")
        current = self.currElem
        if current is not None:
            current.children.append(element)
            element.parent = current
        self.currElem = element

    def _onStartNamespace(self, prefix: str, uri: str) -> None:
        """An ``xmlns`` declaration is an attribute too (expat reports it apart): counted
        against ``max_attributes``, refused as soon as there are too many."""
        self.declarations += 1
        if self.declarations > self.max_attributes:
            raise PolicyViolation(f"more than {self.max_attributes} attributes")
        super()._onStartNamespace(prefix, uri)

    def _onCdata(self, data: str) -> None:
        if (self.depth >= 2
                and self.parser.CurrentByteIndex - self.stanza_start > self.maxStanzaSize):
            raise self._too_large()
        current = self.currElem
        if current is not None:
            children = current.children
            if children and children[-1].__class__ is str:
                children[-1] += data
            else:
                children.append(data)

    def _onEndElement(self, name: str) -> None:
        depth = self.depth
        if depth >= 2:
            position = self.parser.CurrentByteIndex
            if position - self.stanza_start > self.maxStanzaSize:
                raise self._too_large()
            if depth == 2:
                self.stanza_end = position
        self.depth = depth - 1
        current = self.currElem
        if current is None:
            self.DocumentEndEvent()
        elif current.parent is None:
            self.ElementEvent(current)
            self.currElem = None
            self.elementCount = 0
            self.stanzaSize = 0
        else:
            self.currElem = current.parent


_Element = domish.Element
_new_element = object.__new__


def _qualified(attrs: dict) -> dict:
    """Attributes with ``(uri, name)`` keys for namespaced ones, as domish has them
    (unqualified first, in order, then the qualified)."""
    plain = {key: value for key, value in attrs.items() if " " not in key}
    for key, value in attrs.items():
        if " " in key:
            uri, _, local = key.rpartition(" ")
            plain[(uri, local)] = value
    return plain

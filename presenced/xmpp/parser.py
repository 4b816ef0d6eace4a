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
            raise PolicyViolation(f"stanza larger than {self.maxStanzaSize} bytes")

    def _check_size(self) -> None:
        """Within one read a whole stanza may arrive: measure it by the parser's offsets
        (only inside a stanza: whitespace keepalives between stanzas are not counted)."""
        if self.depth >= 2 and self.parser.CurrentByteIndex - self.stanza_start > self.maxStanzaSize:
            raise PolicyViolation(f"stanza larger than {self.maxStanzaSize} bytes")

    def _onStartElement(self, name: str, attrs: dict) -> None:
        self.depth += 1
        if self.depth == 2:
            self.stanza_start = self.parser.CurrentByteIndex
        elif self.depth > self.max_depth:
            raise PolicyViolation(f"elements nested deeper than {self.max_depth}")
        else:
            self._check_size()
        declarations, self.declarations = self.declarations, 0
        if len(attrs) + declarations > self.max_attributes:
            raise PolicyViolation(f"more than {self.max_attributes} attributes")
        try:
            super()._onStartElement(name, attrs)
        except domish.ParserError as e:
            raise PolicyViolation(str(e)) from None

    def _onStartNamespace(self, prefix: str, uri: str) -> None:
        """An ``xmlns`` declaration is an attribute too (expat reports it apart): counted
        against ``max_attributes``, refused as soon as there are too many."""
        self.declarations += 1
        if self.declarations > self.max_attributes:
            raise PolicyViolation(f"more than {self.max_attributes} attributes")
        super()._onStartNamespace(prefix, uri)

    def _onCdata(self, data: str) -> None:
        self._check_size()
        super()._onCdata(data)

    def _onEndElement(self, name: str) -> None:
        self._check_size()
        if self.depth == 2:
            self.stanza_end = self.parser.CurrentByteIndex
        self.depth -= 1
        super()._onEndElement(name)

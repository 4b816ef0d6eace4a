"""The size of a WebSocket message a client may send, checked at each frame header.

wsproto streams a frame's payload as it arrives and Twisted's WebSocket joins the pieces
until the message is finished, so a message of any size (one frame declaring 2^63-1 bytes, or
fragments that never end) is held in memory whole. :class:`MessageSizeLimit` sits in front of
the wire protocol and reads only the frame headers as the bytes pass: once the lengths the
frames of one message declare add up past the limit, the connection is closed with 1009
(message too big) before any of that payload is read on.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.interfaces import IProtocol
from zope.interface import implementer

CONTINUATION = 0x0
MESSAGE_TOO_BIG = 1009
CLOSE_TOO_BIG = b"\x88\x11" + struct.pack("!H", MESSAGE_TOO_BIG) + b"message too big"


def header_length(head: bytes) -> int:
    """Bytes of a frame header (RFC 6455 5.2) whose first two bytes are ``head[:2]``."""
    code = head[1] & 0x7F
    extended = 2 if code == 126 else 8 if code == 127 else 0
    return 2 + extended + (4 if head[1] & 0x80 else 0)


def payload_length(head: bytes) -> int:
    code = head[1] & 0x7F
    if code == 126:
        return struct.unpack_from("!H", head, 2)[0]
    if code == 127:
        return struct.unpack_from("!Q", head, 2)[0]
    return code


@implementer(IProtocol)
class MessageSizeLimit:
    """Passes bytes to ``wrapped`` (the WebSocket wire protocol) while every message stays
    within ``limit`` bytes; control frames (ping, pong, close: at most 125 bytes) do not count."""

    __slots__ = ("wrapped", "limit", "transport", "head", "skip", "message", "refused")

    def __init__(self, wrapped: IProtocol, limit: int):
        self.wrapped = wrapped
        self.limit = limit
        self.transport: Any = None
        self.head = bytearray()   # the frame header being read
        self.skip = 0             # payload bytes of the current frame still to pass
        self.message = 0          # bytes the frames of the current message declared
        self.refused = False

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.wrapped.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        i, end = 0, len(data)
        while i < end:
            if self.skip:
                step = min(self.skip, end - i)
                self.skip -= step
                i += step
                continue
            head = self.head
            need = 2 if len(head) < 2 else header_length(head)
            step = min(need - len(head), end - i)
            head += data[i:i + step]
            i += step
            if len(head) >= 2 and len(head) == header_length(head):
                if not self._frame(bytes(head)):
                    self._refuse()
                    return
                head.clear()
        self.wrapped.dataReceived(data)

    def _frame(self, head: bytes) -> bool:
        """Count a complete frame header; False if its message is now too big."""
        length = payload_length(head)
        opcode = head[0] & 0x0F
        if opcode < 0x8:  # a data frame: text, binary or a continuation
            self.message = self.message + length if opcode == CONTINUATION else length
            if self.message > self.limit:
                return False
        self.skip = length
        return True

    def _refuse(self) -> None:
        self.refused = True
        self.transport.write(CLOSE_TOO_BIG)
        self.transport.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        self.wrapped.connectionLost(reason)

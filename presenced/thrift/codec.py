"""Thrift messages to and from bytes that arrive in pieces.

thriftpy2's protocols read from a transport that blocks until it has the bytes asked for; on
the reactor nothing may block, and an unframed (buffered) request has no length prefix, so
its end is only known once it parses. :class:`MessageDecoder` runs thriftpy2's pure-Python
binary or compact protocol over the bytes received so far; a read past their end stops the
attempt and records how many bytes the message needs at least, so a large message is not
re-parsed for every piece of it. Every declared length is checked against the size limit
before anything is read or allocated: a 2 GB string header in a 20-byte request is an error at
once, not a wait for data that will never come.

:class:`MessageEncoder` writes replies (and, for the client side, calls) with thriftpy2's
Cython binary protocol or its compact protocol, framed or not.
"""

from __future__ import annotations

import struct
from typing import Any, Optional

from thriftpy2.protocol.binary import TBinaryProtocol
from thriftpy2.protocol.compact import TCompactProtocol
from thriftpy2.protocol.cybin import TCyBinaryProtocol
from thriftpy2.protocol.exc import TProtocolException
from thriftpy2.thrift import TApplicationException, TException, TMessageType, TType
from thriftpy2.transport.memory import TCyMemoryBuffer, TMemoryBuffer

PROTOCOLS = ("binary", "compact")
_FRAME = struct.Struct("!i")
_VARINT_MAX_BYTES = 10  # a 64-bit varint never needs more


class BadMessage(Exception):
    """Bytes that are not a usable Thrift message; the connection cannot go on after them.

    ``name`` and ``seqid`` are set when the message header was readable, so the peer can be
    told what went wrong before the connection closes.
    """

    def __init__(self, reason: str, name: Optional[str] = None, seqid: Optional[int] = None):
        super().__init__(reason)
        self.reason = reason
        self.name = name
        self.seqid = seqid


class _ShortRead(Exception):
    """The message continues past the bytes received so far (it needs ``needed`` bytes)."""

    def __init__(self, needed: int):
        self.needed = needed


class _ReceivedBytes:
    """A thriftpy2 transport over received bytes: never blocks, never reads past ``limit``."""

    __slots__ = ("data", "pos", "end", "limit", "framed")

    def __init__(self, data: bytes, pos: int, end: int, limit: int, framed: bool):
        self.data = data
        self.pos = pos
        self.end = end
        self.limit = limit
        self.framed = framed

    def read(self, size: int) -> bytes:
        start = self.pos
        stop = start + size
        if stop > self.end or size < 0:
            self._refuse(size, stop)
        self.pos = stop
        return self.data[start:stop]

    def _refuse(self, size: int, stop: int) -> None:
        if size < 0:
            raise BadMessage(f"negative length {size}")
        if self.framed:
            raise BadMessage("message runs past the end of its frame")
        if stop > self.limit:
            raise BadMessage(f"declared length {size} goes past the message size limit")
        raise _ShortRead(stop)


class _CompactReceivedBytes(_ReceivedBytes):
    """The compact protocol reads varints a byte at a time and would build an unbounded
    integer from a run of continuation bytes: this transport stops such a run."""

    __slots__ = ("varint_run",)

    def __init__(self, data: bytes, pos: int, end: int, limit: int, framed: bool):
        super().__init__(data, pos, end, limit, framed)
        self.varint_run = 0

    def read(self, size: int) -> bytes:
        data = _ReceivedBytes.read(self, size)
        if size == 1:
            if data[0] & 0x80:
                self.varint_run += 1
                if self.varint_run > _VARINT_MAX_BYTES:
                    raise BadMessage("varint longer than 10 bytes")
            else:
                self.varint_run = 0
        return data


class Message:
    """One decoded message. ``body`` is the args (or result) struct, a
    ``TApplicationException``, or None for a call to a method the service does not have."""

    __slots__ = ("name", "type", "seqid", "body")

    def __init__(self, name: str, type: int, seqid: int, body: Any):
        self.name = name
        self.type = type
        self.seqid = seqid
        self.body = body

    def __repr__(self) -> str:
        return f"<Message {self.name} type {self.type} seq {self.seqid}>"


class MessageDecoder:
    """Cuts the bytes of one connection into messages of ``service``.

    ``replies=False`` (a server) accepts calls and decodes ``<method>_args``; ``replies=True``
    (a client) accepts replies and decodes ``<method>_result`` or the exception sent instead.
    """

    def __init__(self, service: Any, protocol: str = "binary", framed: bool = False,
                 max_bytes: int = 1048576, replies: bool = False):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown Thrift protocol {protocol!r}")
        self.service = service
        self.compact = protocol == "compact"
        self.framed = framed
        self.max_bytes = max_bytes
        self.replies = replies
        self._reader = _CompactReceivedBytes if self.compact else _ReceivedBytes
        self._buffer = bytearray()
        self._snapshot: Optional[bytes] = None  # the buffer as bytes, until the next feed
        self._pos = 0
        self._needed = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes received that are not a decoded message yet."""
        return len(self._buffer) - self._pos

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buffer[:self._pos]
            self._needed = max(0, self._needed - self._pos)
            self._pos = 0
        self._buffer += data
        self._snapshot = None

    def next_message(self) -> Optional[Message]:
        """The next whole message received, or None until more bytes arrive; raises
        :class:`BadMessage`. Messages not taken yet stay buffered (flow control)."""
        if len(self._buffer) < self._needed or self._pos == len(self._buffer):
            return None
        if self._snapshot is None:
            self._snapshot = bytes(self._buffer)
        decoded = self._decode_one(self._snapshot, self._pos)
        if decoded is None:
            return None
        message, self._pos = decoded
        self._needed = 0
        return message

    def _decode_one(self, data: bytes, pos: int) -> Optional[tuple[Message, int]]:
        available = len(data)
        if self.framed:
            if available - pos < 4:
                self._needed = pos + 4
                return None
            (length,) = _FRAME.unpack_from(data, pos)
            if length <= 0 or length > self.max_bytes:
                raise BadMessage(f"frame length {length} outside 1..{self.max_bytes}")
            start, end = pos + 4, pos + 4 + length
            if end > available:
                self._needed = end
                return None
            reader = self._reader(data, start, end, end, True)
        else:
            reader = self._reader(data, pos, available, pos + self.max_bytes, False)
        try:
            message = self._read_message(reader)
        except _ShortRead as short:
            self._needed = short.needed
            return None
        if self.framed and reader.pos != reader.end:
            raise BadMessage("frame longer than the message in it", message.name, message.seqid)
        return message, reader.pos

    def _read_message(self, reader: _ReceivedBytes) -> Message:
        if self.compact:
            proto: Any = TCompactProtocol(reader, strict_decode=True)
        else:
            proto = TBinaryProtocol(reader, strict_read=False, strict_decode=True)
        name: Optional[str] = None
        seqid: Optional[int] = None
        try:
            name, kind, seqid = proto.read_message_begin()
            if self.replies:
                body = self._read_reply(proto, name, kind)
            elif kind not in (TMessageType.CALL, TMessageType.ONEWAY):
                raise BadMessage(f"message type {kind} is not a call", name, seqid)
            elif name in self.service.thrift_services:
                body = getattr(self.service, name + "_args")()
                proto.read_struct(body)
            else:
                proto.skip(TType.STRUCT)
                body = None
            proto.read_message_end()
        except _ShortRead:
            raise
        except BadMessage as e:
            if e.seqid is None:
                e.name, e.seqid = name, seqid
            raise
        except UnicodeDecodeError:
            raise BadMessage("string is not UTF-8", name, seqid) from None
        except RecursionError:
            raise BadMessage("structs nested too deep", name, seqid) from None
        except (TException, TProtocolException, ValueError, TypeError, struct.error,
                AssertionError, KeyError) as e:
            raise BadMessage(f"malformed message: {e or type(e).__name__}", name,
                             seqid) from None
        return Message(name, kind, seqid, body)

    def _read_reply(self, proto: Any, name: str, kind: int) -> Any:
        if kind == TMessageType.EXCEPTION:
            body = TApplicationException()
        elif kind == TMessageType.REPLY and name in self.service.thrift_services:
            body = getattr(self.service, name + "_result")()
        else:
            raise BadMessage(f"unexpected reply {name!r} of type {kind}")
        proto.read_struct(body)
        return body


class MessageEncoder:
    """Writes messages in the connection's protocol and transport."""

    def __init__(self, protocol: str = "binary", framed: bool = False):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown Thrift protocol {protocol!r}")
        self.compact = protocol == "compact"
        self.framed = framed

    def encode(self, name: str, kind: int, seqid: int, body: Any) -> bytes:
        if self.compact:
            buffer: Any = TMemoryBuffer()
            proto: Any = TCompactProtocol(buffer)
        else:
            buffer = TCyMemoryBuffer()
            proto = TCyBinaryProtocol(buffer)
        proto.write_message_begin(name, kind, seqid)
        proto.write_struct(body)
        proto.write_message_end()
        data = buffer.getvalue()
        if self.framed:
            return _FRAME.pack(len(data)) + data
        return data

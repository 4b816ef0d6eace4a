"""Thrift messages to and from bytes that arrive in pieces.

thriftpy2's protocols read from a transport that blocks until it has the bytes asked for; on
the reactor nothing may block, and an unframed (buffered) request has no length prefix, so
its end is only known once it parses. :class:`MessageDecoder` finds each message's end in the
bytes received so far, and decodes it once it is whole:

- binary protocol: :class:`_BinaryExtent` walks the message's type tags and lengths without
  building anything, checking every declared length (a string's, or a list's item count)
  against the bytes there can be; then thriftpy2's Cython protocol decodes the whole, checked
  message. The Cython reader must never see bytes that are short or lie about lengths — it
  would read past them or allocate what a length header claims;
- compact protocol: thriftpy2's pure-Python reader over the received bytes, where a read past
  their end stops the attempt. It reads a sequence id as an unsigned varint (Apache clients
  write a negative i32 id so: -1 is ``ff ff ff ff 0f``), so the id a reply echoes is never
  negative — thriftpy2's compact writer would never end on a negative varint.

Either way a short attempt records how many bytes the message needs at least, so a large
message is not re-parsed for every piece of it, and a declared length beyond the size limit
is an error at once (a 2 GB string header in a 20-byte request), not a wait for data that will
never come.

:class:`MessageEncoder` writes replies (and, for the client side, calls) with thriftpy2's
Cython binary protocol or its compact protocol, framed or not.
"""

from __future__ import annotations

import struct
from typing import Any, Optional

from thriftpy2.protocol.binary import DEFAULT_MAX_DEPTH, VERSION_1, VERSION_MASK
from thriftpy2.protocol.compact import TCompactProtocol
from thriftpy2.protocol.cybin import ProtocolError, TCyBinaryProtocol
from thriftpy2.protocol.exc import TProtocolException
from thriftpy2.thrift import TApplicationException, TException, TMessageType, TType
from thriftpy2.transport.memory import TCyMemoryBuffer, TMemoryBuffer

PROTOCOLS = ("binary", "compact")
_I32 = struct.Struct("!i")  # also the frame length prefix
# Bytes a value of each fixed-size binary-protocol type takes.
_FIXED_SIZES = {TType.BOOL: 1, TType.BYTE: 1, TType.DOUBLE: 8, TType.I16: 2, TType.I32: 4,
                TType.I64: 8}
_STRINGS = (TType.STRING, TType.BINARY)
_STRICT_START = _I32.pack(VERSION_1)[:2]  # b"\x80\x01": a strict binary message begins so
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


class _BinaryExtent:
    """Where a binary-protocol message ends, from its type tags and lengths alone.

    ``end`` is where the received bytes (or the frame) end, ``limit`` how far the message may
    reach. Raises :class:`_ShortRead` when the message goes on past ``end``, and
    :class:`BadMessage` when it cannot be a message within ``limit``.
    """

    __slots__ = ("data", "end", "limit", "framed")

    def __init__(self, data: bytes, end: int, limit: int, framed: bool):
        self.data = data
        self.end = end
        self.limit = limit
        self.framed = framed

    def message(self, pos: int) -> int:
        first = self._i32(pos)
        if first < 0:  # strict: version and type, name, sequence id
            if first & VERSION_MASK != VERSION_1:
                raise BadMessage(f"bad protocol version {first & VERSION_MASK:#x}")
            name_at = pos + 4
            seqid_at = self._string(name_at)
        else:  # old style: name, type byte, sequence id
            if not self.framed:
                # A frame's length, then a strict header: a framed client on this buffered
                # port (no method name starts with byte 0x80). Refused at once: it would
                # otherwise wait for a "name" as long as its frame, until the timeout.
                self._need(pos + 6)
                if self.data[pos + 4:pos + 6] == _STRICT_START:
                    raise BadMessage("a framed message on a buffered port (set [thrift] "
                                     "transport = \"framed\" or use a buffered client)")
            name_at = pos
            seqid_at = self._string(name_at) + 1
        self._need(seqid_at + 4)
        try:
            return self._value(seqid_at + 4, TType.STRUCT, DEFAULT_MAX_DEPTH)
        except BadMessage as e:  # the header is readable: say which call was refused
            name_end = seqid_at - (0 if first < 0 else 1)
            e.name = self.data[name_at + 4:name_end].decode("utf-8", "replace")
            e.seqid = _I32.unpack_from(self.data, seqid_at)[0]
            raise

    def _need(self, stop: int) -> None:
        if stop > self.end:
            if self.framed:
                raise BadMessage("message runs past the end of its frame")
            if stop > self.limit:
                raise BadMessage("declared length goes past the message size limit")
            raise _ShortRead(stop)

    def _i32(self, pos: int) -> int:
        self._need(pos + 4)
        return _I32.unpack_from(self.data, pos)[0]

    def _byte(self, pos: int) -> int:
        self._need(pos + 1)
        return self.data[pos]

    def _string(self, pos: int) -> int:
        size = self._i32(pos)
        if size < 0:
            raise BadMessage(f"negative length {size}")
        stop = pos + 4 + size
        self._need(stop)
        return stop

    def _value(self, pos: int, ttype: int, depth: int) -> int:
        size = _FIXED_SIZES.get(ttype)
        if size is not None:
            self._need(pos + size)
            return pos + size
        if ttype in _STRINGS:
            return self._string(pos)
        if depth <= 0:
            raise BadMessage("structs nested too deep")
        if ttype == TType.STRUCT:
            while (field_type := self._byte(pos)) != TType.STOP:
                pos = self._value(pos + 3, field_type, depth - 1)  # type, id, value
            return pos + 1
        if ttype in (TType.LIST, TType.SET):
            return self._items(pos + 5, self._i32(pos + 1), (self._byte(pos),), depth)
        if ttype == TType.MAP:
            types = (self._byte(pos), self._byte(pos + 1))
            return self._items(pos + 6, self._i32(pos + 2), types, depth)
        raise BadMessage(f"unknown type {ttype}")

    def _items(self, pos: int, count: int, types: tuple[int, ...], depth: int) -> int:
        if count < 0:
            raise BadMessage(f"negative item count {count}")
        sizes = [_FIXED_SIZES.get(t) for t in types]
        if None not in sizes:
            stop = pos + count * sum(sizes)  # type: ignore[arg-type]
            self._need(stop)
            return stop
        self._need(pos + count)  # every item takes a byte at least
        for _ in range(count):
            for ttype in types:
                pos = self._value(pos, ttype, depth - 1)
        return pos


class _ReceivedBytes:
    """A thriftpy2 transport over received bytes, for the compact protocol: never blocks,
    never reads past ``limit``, and stops a run of varint continuation bytes (from which the
    compact reader would build an unbounded integer)."""

    __slots__ = ("data", "pos", "end", "limit", "framed", "varint_run")

    def __init__(self, data: bytes, pos: int, end: int, limit: int, framed: bool):
        self.data = data
        self.pos = pos
        self.end = end
        self.limit = limit
        self.framed = framed
        self.varint_run = 0

    def read(self, size: int) -> bytes:
        start = self.pos
        stop = start + size
        if stop > self.end or size < 0:
            self._refuse(size, stop)
        self.pos = stop
        if size == 1:
            if self.data[start] & 0x80:
                self.varint_run += 1
                if self.varint_run > _VARINT_MAX_BYTES:
                    raise BadMessage("varint longer than 10 bytes")
            else:
                self.varint_run = 0
        return self.data[start:stop]

    def _refuse(self, size: int, stop: int) -> None:
        if size < 0:
            raise BadMessage(f"negative length {size}")
        if self.framed:
            raise BadMessage("message runs past the end of its frame")
        if stop > self.limit:
            raise BadMessage(f"declared length {size} goes past the message size limit")
        raise _ShortRead(stop)


class _CheckedCompactProtocol(TCompactProtocol):
    """thriftpy2's compact reader, refusing item counts that the bytes left before ``limit``
    cannot hold, and reading no collection before it has a byte per item: its skip of a
    zero-width type would otherwise loop over any count, whatever arrived."""

    def _read_collection_begin(self) -> tuple[int, int]:
        etype, size = super()._read_collection_begin()
        self._check_count(size)
        return etype, size

    def _read_map_begin(self) -> tuple[int, int, int]:
        ktype, vtype, size = super()._read_map_begin()
        self._check_count(size)
        return ktype, vtype, size

    def _check_count(self, size: int) -> None:
        reader = self.trans
        if size > reader.limit - reader.pos:
            raise BadMessage(f"item count {size} goes past the message size limit")
        if size > reader.end - reader.pos:
            raise _ShortRead(reader.pos + size)


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
            (length,) = _I32.unpack_from(data, pos)
            if length <= 0 or length > self.max_bytes:
                raise BadMessage(f"frame length {length} outside 1..{self.max_bytes}")
            start, end = pos + 4, pos + 4 + length
            if end > available:
                self._needed = end
                return None
            limit = end
        else:
            start, end, limit = pos, available, pos + self.max_bytes
        try:
            if self.compact:
                reader = _ReceivedBytes(data, start, end, limit, self.framed)
                message = self._read_message(_CheckedCompactProtocol(reader, strict_decode=True))
                stop = reader.pos
            else:
                stop = _BinaryExtent(data, end, limit, self.framed).message(start)
                whole = TCyMemoryBuffer(data[start:stop])
                message = self._read_message(TCyBinaryProtocol(whole, strict_read=False,
                                                               strict_decode=True))
                if whole.getvalue():
                    raise BadMessage("message shorter than its lengths say", message.name,
                                     message.seqid)
        except _ShortRead as short:
            self._needed = short.needed
            return None
        if self.framed and stop != end:
            raise BadMessage("frame longer than the message in it", message.name, message.seqid)
        return message, stop

    def _read_message(self, proto: Any) -> Message:
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
        except (TException, TProtocolException, ProtocolError, ValueError, TypeError,
                struct.error, AssertionError, KeyError) as e:
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
        self._empty: dict[str, bytes] = {}  # method name: its empty reply with seqid 0

    def empty_reply(self, name: str, seqid: int, result: Any) -> bytes:
        """The REPLY of a call whose ``result`` struct has no field set (a void method's
        success): in the binary protocol its bytes differ by sequence id alone, so they are
        encoded once per method and the id put in (``publish_np`` and ``add_friend``
        answer so on every call)."""
        if self.compact:  # a varint sequence id: no fixed place to put it
            return self.encode(name, TMessageType.REPLY, seqid, result)
        template = self._empty.get(name)
        if template is None:
            template = self._empty[name] = self.encode(name, TMessageType.REPLY, 0, result)
        # ... sequence id (4 bytes), then the empty struct's STOP byte
        return template[:-5] + _I32.pack(seqid) + template[-1:]

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
            return _I32.pack(len(data)) + data
        return data

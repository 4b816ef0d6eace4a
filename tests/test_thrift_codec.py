"""The incremental decoder against bytes written by thriftpy2's own protocols, cut anywhere."""

from __future__ import annotations

import struct

import pytest
from thriftpy2.protocol.binary import TBinaryProtocol
from thriftpy2.protocol.compact import TCompactProtocol
from thriftpy2.thrift import TApplicationException, TMessageType
from thriftpy2.transport.memory import TMemoryBuffer

from presenced.thrift import admin
from presenced.thrift.codec import BadMessage, MessageDecoder, MessageEncoder
from presenced.thrift.dispatch import describe

SERVICE = admin.PresencedAdmin
J = admin.JabberUser


def written_by_thriftpy2(protocol: str, framed: bool, name: str, seqid: int, args) -> bytes:
    buffer = TMemoryBuffer()
    proto = (TCompactProtocol if protocol == "compact" else TBinaryProtocol)(buffer)
    proto.write_message_begin(name, TMessageType.CALL, seqid)
    proto.write_struct(args)
    proto.write_message_end()
    data = buffer.getvalue()
    return struct.pack("!i", len(data)) + data if framed else data


CALLS = [
    ("add_friend", SERVICE.add_friend_args(J("alice", "example.com"), J("bob", ""))),
    ("publish_np", SERVICE.publish_np_args(J("ålice", ""), "Sigur Rós", "()", "Untitled #1",
                                           -1, 2 ** 31 - 1)),
    ("add_subscriptions", SERVICE.add_subscriptions_args(
        [admin.Subscription(J(f"s{i}", ""), J("star", "")) for i in range(40)])),
    ("online_count", SERVICE.online_count_args()),
    ("nonexistent", SERVICE.user_exists_args(J("x", ""))),
]


@pytest.mark.parametrize("protocol", ["binary", "compact"])
@pytest.mark.parametrize("framed", [False, True], ids=["buffered", "framed"])
def test_messages_cut_anywhere_decode_the_same(protocol, framed):
    stream = b"".join(written_by_thriftpy2(protocol, framed, name, seqid, args)
                      for seqid, (name, args) in enumerate(CALLS))
    for step in (1, 3, 7, len(stream)):
        decoder = MessageDecoder(SERVICE, protocol, framed)
        decoded = []
        for at in range(0, len(stream), step):
            decoder.feed(stream[at:at + step])
            while (message := decoder.next_message()) is not None:
                decoded.append(message)
        assert [(m.name, m.seqid) for m in decoded] == [(name, seqid) for seqid, (name, _)
                                                        in enumerate(CALLS)]
        for message, (name, args) in zip(decoded, CALLS):
            assert message.body == (None if name == "nonexistent" else args)
        assert decoder.pending_bytes == 0


@pytest.mark.parametrize("protocol", ["binary", "compact"])
@pytest.mark.parametrize("framed", [False, True], ids=["buffered", "framed"])
def test_our_replies_are_read_back_by_the_client_side_decoder(protocol, framed):
    result = SERVICE.get_roster_result(success=[admin.RosterItem("b@x", "both", "", ["g"],
                                                                 False)])
    data = MessageEncoder(protocol, framed).encode("get_roster", TMessageType.REPLY, 9, result)
    decoder = MessageDecoder(SERVICE, protocol, framed, replies=True)
    decoder.feed(data)
    message = decoder.next_message()
    assert (message.name, message.type, message.seqid, message.body) == (
        "get_roster", TMessageType.REPLY, 9, result)


@pytest.mark.parametrize("protocol", ["binary", "compact"])
@pytest.mark.parametrize("framed", [False, True], ids=["buffered", "framed"])
def test_empty_replies_are_the_bytes_a_full_encoding_writes(protocol, framed):
    """The void reply spliced from a per-method template, for any sequence id."""
    encoder = MessageEncoder(protocol, framed)
    for name in ("publish_np", "add_friend"):
        # (thriftpy2's compact writer never ends on a negative sequence id)
        for seqid in (0, 1, 300, 2 ** 31 - 1) + ((-5,) if protocol == "binary" else ()):
            result = getattr(SERVICE, name + "_result")()
            assert encoder.empty_reply(name, seqid, result) == MessageEncoder(
                protocol, framed).encode(name, TMessageType.REPLY, seqid, result)


@pytest.mark.parametrize("framed", [False, True], ids=["buffered", "framed"])
def test_compact_sequence_ids_are_read_unsigned_and_answered_as_sent(framed):
    """A negative i32 id as Apache Thrift writes it (the varint of its unsigned value) is
    read as that unsigned value, so replies and protocol errors write a non-negative varint,
    the same bytes (thriftpy2's writer would never end on a negative one)."""
    head = b"\x82\x21\xff\xff\xff\xff\x0f\x0conline_count"

    def framing(data: bytes) -> bytes:
        return struct.pack("!i", len(data)) + data if framed else data

    decoder = MessageDecoder(SERVICE, "compact", framed)
    decoder.feed(framing(head + b"\x00"))
    message = decoder.next_message()
    assert (message.name, message.seqid) == ("online_count", 2 ** 32 - 1)
    encoder = MessageEncoder("compact", framed)
    reply = encoder.encode("online_count", TMessageType.REPLY, message.seqid,
                           SERVICE.online_count_result(success=0))
    assert reply == framing(b"\x82\x41" + head[2:] + b"\x05\x00\x00\x00")

    decoder = MessageDecoder(SERVICE, "compact", framed)
    decoder.feed(framing(head + b"\x1d\x00"))  # field 1 of compact type 13: none such
    with pytest.raises(BadMessage) as bad:
        decoder.next_message()
    assert (bad.value.name, bad.value.seqid) == ("online_count", 2 ** 32 - 1)
    error = encoder.encode("online_count", TMessageType.EXCEPTION, bad.value.seqid,
                           TApplicationException(TApplicationException.PROTOCOL_ERROR, "x"))
    assert (error[4:] if framed else error).startswith(b"\x82\x61" + head[2:])


def test_a_large_message_in_pieces_is_not_parsed_again_for_every_piece():
    args = SERVICE.register_user_args(J("big", ""), "p" * 500000)
    data = written_by_thriftpy2("binary", False, "register_user", 1, args)
    decoder = MessageDecoder(SERVICE)
    attempts = 0
    original = decoder._decode_one

    def counting(*a):
        nonlocal attempts
        attempts += 1
        return original(*a)

    decoder._decode_one = counting
    for at in range(0, len(data), 1000):
        decoder.feed(data[at:at + 1000])
        message = decoder.next_message()
    assert message is not None and message.body.password == "p" * 500000
    assert attempts <= 3  # the header tells how long the password is: no retry until then


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_a_framed_call_on_a_buffered_port_is_refused_at_its_first_bytes(protocol):
    call = written_by_thriftpy2(protocol, True, "online_count", 1, SERVICE.online_count_args())
    decoder = MessageDecoder(SERVICE, protocol, framed=False)
    decoder.feed(call[:6])                  # the frame length and two bytes are enough
    with pytest.raises(BadMessage):
        decoder.next_message()


def test_compact_varint_without_end_is_refused():
    decoder = MessageDecoder(SERVICE, "compact")
    decoder.feed(b"\x82\x21" + b"\xff" * 64)
    with pytest.raises(BadMessage) as bad:
        decoder.next_message()
    assert "varint" in bad.value.reason


@pytest.mark.parametrize("protocol", ["binary", "compact"])
def test_declared_lengths_beyond_the_limit_are_refused_before_the_data(protocol):
    args = SERVICE.user_exists_args(J("a" * 2000, ""))
    data = written_by_thriftpy2(protocol, False, "user_exists", 1, args)
    decoder = MessageDecoder(SERVICE, protocol, max_bytes=1000)
    decoder.feed(data[:40])  # only the start: the length alone condemns it
    with pytest.raises(BadMessage) as bad:
        decoder.next_message()
    assert (bad.value.name, bad.value.seqid) == ("user_exists", 1)


def test_binary_list_count_beyond_the_limit_is_refused_at_once():
    args = SERVICE.add_subscriptions_args([admin.Subscription(J("a", ""), J("b", ""))])
    data = written_by_thriftpy2("binary", False, "add_subscriptions", 4, args)
    at = data.index(b"\x0c\x00\x00\x00\x01")  # list of structs, one item
    decoder = MessageDecoder(SERVICE, max_bytes=4096)
    decoder.feed(data[:at + 1] + struct.pack("!i", 100000) + data[at + 5:])
    with pytest.raises(BadMessage) as bad:
        decoder.next_message()
    assert (bad.value.name, bad.value.seqid) == ("add_subscriptions", 4)


@pytest.mark.parametrize("protocol", ["binary", "compact"])
@pytest.mark.parametrize("framed", [False, True], ids=["buffered", "framed"])
def test_mutated_messages_decode_or_are_refused_never_anything_else(protocol, framed):
    """Random damage to valid calls: the decoder yields messages, waits for more, or raises
    BadMessage — no other exception, no crash in the Cython reader, bounded work."""
    import random

    rng = random.Random(f"{protocol}-{framed}")
    valid = b"".join(written_by_thriftpy2(protocol, framed, name, seqid, args)
                     for seqid, (name, args) in enumerate(CALLS))
    for _ in range(1500):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(data))
            action = rng.random()
            if action < 0.6:
                data[at] = rng.randrange(256)
            elif action < 0.8:
                del data[at:at + rng.randint(1, 8)]
            else:
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        decoder = MessageDecoder(SERVICE, protocol, framed, max_bytes=65536)
        decoder.feed(bytes(data))
        try:
            while decoder.next_message() is not None:
                pass
        except BadMessage:
            pass


def test_compact_list_of_zero_width_items_does_not_spin():
    """thriftpy2's compact skip reads nothing for a list of STOP-typed items: a count of a
    million must not make a million turns of that loop."""
    header = written_by_thriftpy2("compact", False, "online_count", 1,
                                  SERVICE.online_count_args())[:-1]  # without the STOP
    million = b"\xc0\x84\x3d"  # varint 1 000 000
    data = header + b"\x19" + b"\xf0" + million + b"\x00"  # field 1: list<STOP>, then STOP
    with pytest.raises(BadMessage):
        decoder = MessageDecoder(SERVICE, "compact", max_bytes=65536)
        decoder.feed(data)
        decoder.next_message()
    decoder = MessageDecoder(SERVICE, "compact", max_bytes=10_000_000)
    decoder.feed(data)
    assert decoder.next_message() is None  # waits for a byte per item before reading any


def test_application_exception_messages_are_sentences():
    assert describe(admin.BadJid(jid="a b", reason="not a valid JID")) == \
        "bad user name a b: not a valid JID"
    assert describe(admin.UnknownUser(jid="x@localhost")) == "no such user x@localhost"
    assert describe(admin.InvalidArgument(message="the password is empty")) == \
        "the password is empty"
    assert describe(admin.NotEnabled(feature="irc", message="")) == \
        "irc is not enabled on this server"
    for error in (admin.BadJid(jid="x", reason="y"), admin.UnknownUser(jid="x")):
        assert "=" not in describe(error) and "'" not in describe(error)

"""Bad input on the Thrift admin port: each case closes that connection or answers a
``TApplicationException``; memory stays bounded and other clients never notice."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest
import thriftpy2
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TApplicationException, TMessageType
from thriftpy2.transport import TFramedTransportFactory

from presenced import config
from tests.helpers import (FUZZ_SCALE, REPO, PresencedProcess, SocketReader, encode_call,
                           fuzz_rng, read_reply)

admin = thriftpy2.load(str(REPO / "thrift" / "presenced.thrift"),
                       module_name="test_abuse_admin_thrift")
SERVICE = admin.PresencedAdmin
J = admin.JabberUser
TIMEOUT = 2.0  # the server's [thrift] timeout in these tests
LIMIT = 65536  # the server's [thrift] max_message_bytes in these tests


def start(directory: Path, **thrift: object) -> PresencedProcess:
    directory.mkdir()
    settings = {"timeout": TIMEOUT, "max_message_bytes": LIMIT, **thrift}
    server = PresencedProcess(directory, {"xmpp": {"enabled": False},
                                          "comet": {"enabled": False},
                                          "webadmin": {"enabled": False},
                                          "thrift": settings})
    server.start()
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = start(tmp_path_factory.mktemp("abuse") / "s", allow=["127.0.0.0/8", "::1"])
    yield process
    process.stop()


def connect(server: PresencedProcess, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.ports["thrift"]), timeout=timeout)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes the connection within ``seconds`` (data is drained)."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return False


def rss_kib(server: PresencedProcess) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def healthy(server: PresencedProcess) -> None:
    """Another client is served normally."""
    c = make_client(SERVICE, "127.0.0.1", server.ports["thrift"], timeout=10000)
    assert c.online_count() == 0
    assert c.user_exists(J("nobody", "")) is False
    c.close()


@pytest.mark.fuzz
def test_garbage_bytes_close_the_connection(server):
    bystander = make_client(SERVICE, "127.0.0.1", server.ports["thrift"], timeout=10000)
    rng = fuzz_rng(5)
    for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                    *(bytes(rng.randrange(256) for _ in range(4096)) for _ in range(FUZZ_SCALE)),
                    b"\x80\x01\x00\x09" + b"\x00" * 64):  # version ok, message type 9
        sock = connect(server)
        sock.sendall(garbage)
        assert closed_within(sock, TIMEOUT / 2), garbage[:16]
        sock.close()
    assert bystander.online_count() == 0  # opened before, still served
    bystander.close()


def test_a_framed_client_on_the_buffered_port_is_closed_at_once(server):
    call = encode_call("online_count", 1)
    sock = connect(server)
    sock.sendall(struct.pack("!i", len(call)) + call)
    assert closed_within(sock, TIMEOUT / 2)   # at once, not at the [thrift] timeout
    sock.close()


def test_declared_string_length_far_beyond_the_data(server):
    # In the message header: nothing to answer to, the connection closes at once.
    sock = connect(server)
    sock.sendall(b"\x80\x01\x00\x01" + struct.pack("!i", 0x7FFFFFF0) + b"abc")
    assert closed_within(sock, TIMEOUT / 2)
    sock.close()
    # In an argument: the header was readable, so the client is told why, then closed.
    call = encode_call("user_exists", 41, SERVICE.user_exists_args(J("abc", "")))
    at = call.index(b"abc") - 4
    sock = connect(server)
    sock.sendall(call[:at] + struct.pack("!i", 0x7FFFFFF0) + call[at + 4:])
    name, kind, seqid, body = read_reply(SocketReader(sock))
    assert (name, kind, seqid) == ("user_exists", TMessageType.EXCEPTION, 41)
    assert body.type == TApplicationException.PROTOCOL_ERROR
    assert "size limit" in body.message
    assert closed_within(sock, TIMEOUT / 2)
    sock.close()
    healthy(server)


def test_declared_list_length_far_beyond_the_data(server):
    before = rss_kib(server)
    pair = admin.Subscription(J("a", ""), J("b", ""))
    call = encode_call("add_subscriptions", 5, SERVICE.add_subscriptions_args([pair] * 3))
    at = call.index(b"\x0c\x00\x00\x00\x03")  # element type struct, count 3

    def with_count(count: int) -> bytes:
        return call[:at + 1] + struct.pack("!i", count) + call[at + 5:]

    # More items than the size limit has bytes for: refused at once, with the reason.
    sock = connect(server)
    sock.sendall(with_count(0x7FFFFFFF))
    _, kind, seqid, body = read_reply(SocketReader(sock))
    assert (kind, seqid, body.type) == (TMessageType.EXCEPTION, 5,
                                        TApplicationException.PROTOCOL_ERROR)
    assert closed_within(sock, TIMEOUT / 2)
    sock.close()
    # Within the limit but far beyond the data: the rest never comes, closed at the timeout.
    sock = connect(server)
    sock.sendall(with_count(LIMIT // 2))
    started = time.monotonic()
    assert closed_within(sock, TIMEOUT + 3)
    assert time.monotonic() - started >= TIMEOUT * 0.9
    sock.close()
    assert rss_kib(server) - before < 20000
    healthy(server)


def test_message_over_the_size_limit(server):
    call = encode_call("register_user", 8,
                       SERVICE.register_user_args(J("big", ""), "x" * (LIMIT + 10)))
    sock = connect(server)
    sock.sendall(call)
    name, kind, seqid, body = read_reply(SocketReader(sock))
    assert (kind, seqid, body.type) == (TMessageType.EXCEPTION, 8,
                                        TApplicationException.PROTOCOL_ERROR)
    assert closed_within(sock, TIMEOUT / 2)
    sock.close()
    c = make_client(SERVICE, "127.0.0.1", server.ports["thrift"], timeout=10000)
    assert c.user_exists(J("big", "")) is False  # nothing was done
    c.close()


def test_string_that_is_not_utf8(server):
    call = encode_call("user_exists", 3, SERVICE.user_exists_args(J("abc", "")))
    sock = connect(server)
    sock.sendall(call.replace(b"abc", b"a\xff\xfe"))
    _, kind, seqid, body = read_reply(SocketReader(sock))
    assert (kind, seqid, body.type) == (TMessageType.EXCEPTION, 3,
                                        TApplicationException.PROTOCOL_ERROR)
    assert "UTF-8" in body.message
    assert closed_within(sock, TIMEOUT / 2)
    sock.close()


def test_unknown_method_is_answered_and_the_connection_goes_on(server):
    sock = connect(server)
    reader = SocketReader(sock)
    sock.sendall(encode_call("no_such_method", 7, SERVICE.user_exists_args(J("x", "")))
                 + encode_call("online_count", 8))
    name, kind, seqid, body = read_reply(reader)
    assert (name, kind, seqid) == ("no_such_method", TMessageType.EXCEPTION, 7)
    assert body.type == TApplicationException.UNKNOWN_METHOD
    assert "no_such_method" in body.message
    name, kind, seqid, body = read_reply(reader)
    assert (name, kind, seqid, body.success) == ("online_count", TMessageType.REPLY, 8, 0)
    sock.close()


def test_request_in_pieces_is_served(server):
    call = encode_call("user_exists", 9, SERVICE.user_exists_args(J("piecemeal", "")))
    sock = connect(server)
    for i in range(len(call)):
        sock.sendall(call[i:i + 1])
        time.sleep(0.002)
    _, kind, seqid, body = read_reply(SocketReader(sock))
    assert (kind, seqid, body.success) == (TMessageType.REPLY, 9, False)
    sock.close()


def test_connection_that_stops_mid_message_is_closed(server):
    call = encode_call("add_friend", 1, SERVICE.add_friend_args(J("m1", ""), J("m2", "")))
    sock = connect(server)
    started = time.monotonic()
    sock.sendall(call[:len(call) // 2])
    assert closed_within(sock, TIMEOUT + 3)
    assert time.monotonic() - started >= TIMEOUT * 0.9
    sock.close()
    healthy(server)


def test_ten_thousand_calls_without_reading_replies(server):
    """Pipelined calls are all answered, in order, with bounded server memory."""
    calls = b"".join(encode_call("user_exists", seqid, SERVICE.user_exists_args(J(f"u{seqid}", "")))
                     for seqid in range(1, 10001))
    before = rss_kib(server)
    sock = connect(server, timeout=30)
    sock.sendall(calls)
    healthy(server)  # while this connection's replies pile up unread
    reader = SocketReader(sock)
    for expected in range(1, 10001):
        name, kind, seqid, body = read_reply(reader)
        assert (name, kind, seqid, body.success) == ("user_exists", TMessageType.REPLY,
                                                     expected, False)
    sock.close()
    assert rss_kib(server) - before < 30000


def test_client_that_never_reads_big_replies_is_disconnected(server):
    c = make_client(SERVICE, "127.0.0.1", server.ports["thrift"], timeout=10000)
    c.add_subscriptions([admin.Subscription(J(f"follower{i:04d}", ""), J("celebrity", ""))
                         for i in range(400)])
    c.close()
    call = encode_call("get_subscribers", 1, SERVICE.get_subscribers_args(J("celebrity", "")))
    before = rss_kib(server)
    sock = connect(server)
    sock.setblocking(False)
    for _ in range(10000):
        try:
            sock.send(call)
        except BlockingIOError:
            break  # the server stopped reading calls: it waits for us to read replies
    healthy(server)  # while this connection's replies pile up unread
    time.sleep(TIMEOUT + 1)  # still not reading: the server gives up on us
    received, closed = 0, False
    sock.setblocking(True)
    sock.settimeout(5)
    try:
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
        closed = True
    except ConnectionResetError:
        closed = True
    except socket.timeout:
        pass
    assert closed, "a client that never reads its replies was not disconnected"
    reply_size = len(str(["follower0000@localhost"] * 400))  # about the encoded size
    assert received < 10000 * reply_size / 2
    sock.close()
    assert rss_kib(server) - before < 30000
    healthy(server)


def test_allowlist_refuses_other_addresses(tmp_path):
    server = start(tmp_path / "deny", allow=["192.0.2.0/24"])
    try:
        sock = connect(server)
        sock.sendall(encode_call("online_count", 1))
        assert closed_within(sock, 2)
        sock.close()
    finally:
        server.stop()


def test_a_bad_allowlist_entry_is_a_config_error_naming_the_key(tmp_path):
    # Checked when the config is read (at start and on reload), not when the door starts.
    with pytest.raises(config.ConfigError) as failed:
        config.build({"thrift": {"allow": ["127.0.0.1", "localhost-ish"]}})
    assert failed.value.key == "[thrift] allow"
    assert "'localhost-ish' is not an IP address or network" in str(failed.value)
    with pytest.raises(RuntimeError, match="exited with"):
        start(tmp_path / "badallow", allow=["127.0.0.1", "localhost-ish"])


def test_framed_transport_bad_frames(tmp_path):
    server = start(tmp_path / "framed", transport="framed")
    try:
        port = server.ports["thrift"]
        for frame in (struct.pack("!i", 0x7FFFFFFF) + b"abc",  # absurd length
                      struct.pack("!i", -4),
                      struct.pack("!i", 10) + b"\x80\x01\x00\x01" + b"\x00" * 6):  # too short
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(frame)
            assert closed_within(sock, TIMEOUT + 3), frame
            sock.close()
        # Unknown method in a frame: answered, and the connection goes on.
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        for name, seqid in (("nope", 1), ("online_count", 2)):
            message = encode_call(name, seqid)
            sock.sendall(struct.pack("!i", len(message)) + message)
        reader = SocketReader(sock)
        for expected_kind, expected_seqid in ((TMessageType.EXCEPTION, 1),
                                              (TMessageType.REPLY, 2)):
            reader.read(4)
            _, kind, seqid, _ = read_reply(reader)
            assert (kind, seqid) == (expected_kind, expected_seqid)
        sock.close()
        c = make_client(SERVICE, "127.0.0.1", port, timeout=10000,
                        trans_factory=TFramedTransportFactory())
        assert c.online_count() == 0
        c.close()
    finally:
        server.stop()

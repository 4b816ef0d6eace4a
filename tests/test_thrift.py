"""The Thrift admin port with real clients: thriftpy2, Apache Thrift's Python library with
code from ``thrift --gen py``, and PHP with code from ``thrift --gen php``; every method, in
buffered and framed transports and both protocols; presencedctl routing through the port.

Bad input (garbage, absurd lengths, stalls, unread replies) is in ``test_thrift_abuse.py``.
"""

from __future__ import annotations

import importlib
import json
import shutil
import socket
import struct
import sys
from pathlib import Path

import pytest
from thriftpy2.thrift import TApplicationException

from tests.helpers import (REPO, THRIFT, thrift_client, PresencedProcess, SocketReader, encode_call, generate, php,
                           read_reply)

IDL = REPO / "thrift" / "presenced.thrift"
admin = THRIFT  # the IDL module thrift_client's answers and exceptions come from
J = admin.JabberUser
ONLY_THRIFT = {"xmpp": {"enabled": False}, "comet": {"enabled": False},
               "webadmin": {"enabled": False}}


def start_server(directory: Path, **thrift: object) -> PresencedProcess:
    directory.mkdir(parents=True, exist_ok=True)
    server = PresencedProcess(directory, {**ONLY_THRIFT, "thrift": dict(thrift)})
    server.start()
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = start_server(tmp_path_factory.mktemp("thrift"))
    yield process
    process.stop()


def test_the_idl_ships_in_the_package():
    packaged = REPO / "presenced" / "presenced.thrift"
    assert packaged.read_text() == IDL.read_text()
    assert "presenced = *.thrift" in (REPO / "setup.cfg").read_text()


def test_ejabthrift_is_the_designed_interface():
    """Names, field ids and types of the original service, as existing PHP code expects."""
    assert admin.JabberUser.thrift_spec == {1: (11, "name", False), 2: (11, "server", False)}
    service = admin.Ejabthrift
    assert sorted(service.thrift_services) == [
        "add_friend", "publish_np", "remove_friend", "spoof_chat", "spoof_message"]

    def args(method):
        return [(fid, spec[0], spec[1]) for fid, spec in
                getattr(service, method + "_args").thrift_spec.items()]

    assert args("add_friend") == [(1, 12, "luser"), (2, 12, "ruser")]
    assert args("remove_friend") == [(1, 12, "luser"), (2, 12, "ruser")]
    assert args("spoof_message") == [(1, 12, "fromuser"), (2, 12, "touser"), (3, 11, "msg"),
                                     (4, 11, "subject")]
    assert args("spoof_chat") == [(1, 12, "fromuser"), (2, 12, "touser"), (3, 11, "msg"),
                                  (4, 11, "thread")]
    assert args("publish_np") == [(1, 12, "fromuser"), (2, 11, "artist"), (3, 11, "album"),
                                  (4, 11, "track"), (5, 8, "tracklength"), (6, 8, "tracknum")]
    for method in service.thrift_services:  # void, no declared exceptions
        assert list(getattr(service, method + "_result").thrift_spec) == []
    assert set(service.thrift_services) < set(admin.PresencedAdmin.thrift_services)


def test_accounts(server):
    c = thrift_client(server)
    assert c.register_user(J("acc1", ""), "secret") is True
    assert c.register_user(J("acc1", "localhost"), "other") is False
    assert c.user_exists(J("ACC1", "localhost")) is True
    assert c.user_exists(J("acc2", "")) is False
    c.set_password(J("acc1", ""), "new")
    with pytest.raises(admin.UnknownUser) as unknown:
        c.set_password(J("acc2", ""), "x")
    assert unknown.value.jid == "acc2@localhost"
    with pytest.raises(admin.InvalidArgument):
        c.register_user(J("acc2", ""), "")
    with pytest.raises(admin.BadJid) as bad:
        c.register_user(J("bad user", ""), "x")
    assert bad.value.jid == "bad user"
    c.remove_user(J("acc1", ""))
    assert c.user_exists(J("acc1", "")) is False
    with pytest.raises(admin.UnknownUser):
        c.remove_user(J("acc1", ""))
    c.close()


def test_friends_rosters_and_subscribers(server):
    c = thrift_client(server)
    for name in ("fa", "fb", "fc"):
        c.register_user(J(name, ""), "pw")
    c.add_friend(J("fa", "localhost"), J("fb", ""))
    c.add_friend(J("fa", ""), J("fc", ""))
    roster = {item.jid: item for item in c.get_roster(J("fa", ""))}
    assert set(roster) == {"fb@localhost", "fc@localhost"}
    assert roster["fb@localhost"].subscription == "both"
    assert roster["fb@localhost"].ask is False
    assert [i.jid for i in c.get_roster(J("fb", ""))] == ["fa@localhost"]
    assert c.get_subscribers(J("fa", "")) == ["fb@localhost", "fc@localhost"]
    c.remove_friend(J("fb", ""), J("fa", ""))
    assert [i.jid for i in c.get_roster(J("fa", ""))] == ["fc@localhost"]
    assert c.get_roster(J("fb", "")) == []
    with pytest.raises(admin.UnknownUser):
        c.get_roster(J("nobody", ""))
    # Ejabthrift declares no exceptions: errors come as TApplicationException with the reason.
    with pytest.raises(TApplicationException) as e:
        c.add_friend(J("fa", ""), J("fa", ""))
    assert "own friend" in str(e.value)
    with pytest.raises(TApplicationException) as e:
        c.add_friend(J("a b", ""), J("fa", ""))
    assert "bad user name a b" in str(e.value)
    c.close()


def test_subscription_graph_in_bulk(server):
    c = thrift_client(server)
    S = admin.Subscription
    pairs = [S(J(f"sub{i}", ""), J("star", "")) for i in range(50)]
    assert c.add_subscriptions(pairs) == 50
    assert len(c.get_subscribers(J("star", ""))) == 50
    assert c.remove_subscriptions(pairs[:20]) == 20
    assert c.get_subscribers(J("star", ""))[0] == "sub20@localhost"
    assert len(c.get_subscribers(J("star", ""))) == 30
    with pytest.raises(admin.BadJid):
        c.add_subscriptions([S(J("ok", ""), J("@@", ""))])
    assert c.add_subscriptions([]) == 0
    c.close()


def test_now_playing_messages_and_the_rest(server):
    c = thrift_client(server)
    empty = c.get_now_playing(J("np", ""))
    assert empty.playing is False and empty.artist == ""
    c.publish_np(J("np", ""), "Boards of Canada", "Geogaddi", "Julie and Candy", 330, 7)
    tune = c.get_now_playing(J("np", ""))
    assert (tune.artist, tune.album, tune.track, tune.tracklength, tune.tracknum,
            tune.playing) == ("Boards of Canada", "Geogaddi", "Julie and Candy", 330, 7, True)
    with pytest.raises(TApplicationException) as e:
        c.publish_np(J("np", ""), "a", "b", "c", -5, 1)
    assert "length" in str(e.value)
    c.publish_np(J("np", ""), "", "", "", 0, 0)  # stopped
    assert c.get_now_playing(J("np", "")).playing is False
    # Nobody is online: delivered to no session, but accepted.
    c.spoof_message(J("np", ""), J("other", ""), "hello", "subject")
    c.spoof_chat(J("np", ""), J("other", ""), "hi", "thread-1")
    assert c.user_sessions(J("np", "")) == []
    assert c.online_count() == 0
    token = c.stream_token(J("np", ""), 60)
    assert token and isinstance(token, str)
    assert c.stream_token(J("np", ""), 0) != token
    with pytest.raises(admin.InvalidArgument):
        c.stream_token(J("np", ""), -1)
    with pytest.raises(admin.NotEnabled) as off:
        c.irc_say("#presenced", "hello")
    assert off.value.message == "IRC bot not enabled"
    stats = c.stats()
    assert stats["users"] >= 1 and stats["online_users"] == 0
    assert stats["uptime_seconds"] >= 0 and stats["thrift_calls"] > 10
    c.close()


@pytest.mark.parametrize("transport, protocol", [("framed", "binary"),
                                                 ("buffered", "compact"),
                                                 ("framed", "compact")])
def test_thriftpy2_framed_and_compact(tmp_path, transport, protocol):
    server = start_server(tmp_path / "s", transport=transport, protocol=protocol)
    try:
        c = thrift_client(server, framed=transport == "framed", compact=protocol == "compact")
        assert c.register_user(J("x", ""), "pw") is True
        c.add_friend(J("x", ""), J("y", ""))
        assert [i.jid for i in c.get_roster(J("x", ""))] == ["y@localhost"]
        with pytest.raises(admin.UnknownUser):
            c.get_roster(J("z", ""))
        c.close()
    finally:
        server.stop()


@pytest.fixture
def apache_generated(tmp_path):
    """``thrift --gen py`` output, imported; removed from sys.modules afterwards."""
    out = generate(tmp_path, "py")
    sys.path.insert(0, str(out))
    try:
        yield (importlib.import_module("presenced_admin.PresencedAdmin"),
               importlib.import_module("presenced_admin.ttypes"))
    finally:
        sys.path.remove(str(out))
        for name in [n for n in sys.modules if n.startswith("presenced_admin")]:
            del sys.modules[name]


def apache_client(service, server: PresencedProcess, framed: bool, protocol):
    """A client of Apache Thrift's generated code on the server's port, and its open
    transport."""
    from thrift.transport import TSocket, TTransport

    sock = TSocket.TSocket("127.0.0.1", server.ports["thrift"])
    sock.setTimeout(20000)
    transport = (TTransport.TFramedTransport(sock) if framed
                 else TTransport.TBufferedTransport(sock))
    transport.open()
    return service.Client(protocol(transport)), transport


@pytest.mark.parametrize("framed", [False, True], ids=["buffered", "framed"])
def test_apache_thrift_generated_client(tmp_path, server, apache_generated, framed):
    from thrift.protocol import TBinaryProtocol
    from thrift.Thrift import TApplicationException as ApacheAppException

    service, ttypes = apache_generated
    target = server
    if framed:
        target = start_server(tmp_path / "framed", transport="framed")
    try:
        c, transport = apache_client(service, target, framed, TBinaryProtocol.TBinaryProtocol)
        user = ttypes.JabberUser
        prefix = "apf" if framed else "apb"
        assert c.register_user(user(f"{prefix}1", "localhost"), "pw") is True
        c.add_friend(user(f"{prefix}1", ""), user(f"{prefix}2", ""))
        c.publish_np(user(f"{prefix}1", ""), "Artist", "Album", "Track", 100, 2)
        assert c.get_now_playing(user(f"{prefix}1", "")).track == "Track"
        roster = c.get_roster(user(f"{prefix}1", ""))
        assert [(i.jid, i.subscription) for i in roster] == [(f"{prefix}2@localhost", "both")]
        with pytest.raises(ttypes.UnknownUser):
            c.get_roster(user(f"{prefix}9", ""))
        with pytest.raises(ApacheAppException):
            c.add_friend(user(f"{prefix}1", ""), user(f"{prefix}1", ""))
        assert c.stats()["users"] >= 1
        transport.close()
    finally:
        if framed:
            target.stop()


@pytest.mark.parametrize("framed", [False, True], ids=["buffered", "framed"])
def test_compact_calls_with_a_negative_sequence_id_are_answered(tmp_path, apache_generated,
                                                               framed):
    """Apache Thrift clients write a negative i32 sequence id as the varint of its unsigned
    value (-1: ff ff ff ff 0f). The server reads that as 4294967295, never as a negative
    number, and echoes the same bytes: thriftpy2's compact writer, which never ends on a
    negative varint, is not reached by anything a client sends."""
    from thrift.protocol import TCompactProtocol

    server = start_server(tmp_path / "s", transport="framed" if framed else "buffered",
                          protocol="compact")
    try:
        name = b"online_count"
        call = b"\x82\x21\xff\xff\xff\xff\x0f" + bytes([len(name)]) + name + b"\x00"
        with socket.create_connection(("127.0.0.1", server.ports["thrift"]), timeout=10) as s:
            s.sendall(struct.pack("!i", len(call)) + call if framed else call)
            reply = b""
            expected = b"\x82\x41\xff\xff\xff\xff\x0f" + bytes([len(name)]) + name \
                + b"\x05\x00\x00\x00"  # REPLY, seqid -1; success (field 0, i32) = 0; STOP
            wanted = len(expected) + (4 if framed else 0)
            while len(reply) < wanted:
                chunk = s.recv(4096)
                assert chunk, f"connection closed after {reply!r}"
                reply += chunk
        assert reply == (struct.pack("!i", len(expected)) + expected if framed else expected)

        service, _ = apache_generated
        c, transport = apache_client(service, server, framed, TCompactProtocol.TCompactProtocol)
        for seqid in (-1, -2 ** 31, 2 ** 31 - 1):
            c._seqid = seqid  # the generated client sends this id with the next call
            assert c.online_count() == 0
        transport.close()
    finally:
        server.stop()


def test_php_client_add_friend_and_publish_np(tmp_path, server):
    if shutil.which("php") is None:
        pytest.fail("php-cli is not installed: run scripts/install-test-deps.sh")
    gen = generate(tmp_path, "php")
    port = server.ports["thrift"]
    assert php(gen, port, "register_user", "phpa@localhost", "pw").stdout == "true\n"
    result = php(gen, port, "add_friend", "phpa@localhost", "phpb@localhost")
    assert result.stdout == "ok\n", result.stderr
    result = php(gen, port, "publish_np", "phpa@localhost", "Stereolab", "Dots and Loops",
                 "Miss Modular", "270", "3")
    assert result.stdout == "ok\n", result.stderr
    # The effect, seen by another client (thriftpy2) and by PHP itself.
    c = thrift_client(server)
    assert [(i.jid, i.subscription) for i in c.get_roster(J("phpa", ""))] == [
        ("phpb@localhost", "both")]
    assert c.get_now_playing(J("phpa", "")).artist == "Stereolab"
    c.close()
    assert php(gen, port, "get_roster", "phpa@localhost").stdout == "phpb@localhost both\n"
    assert json.loads(php(gen, port, "get_now_playing", "phpa@localhost").stdout) == {
        "artist": "Stereolab", "album": "Dots and Loops", "track": "Miss Modular",
        "tracklength": 270, "tracknum": 3, "playing": True}
    refused = php(gen, port, "add_friend", "phpa@localhost", "phpa@localhost")
    assert refused.returncode == 1 and "own friend" in refused.stderr
    unknown = php(gen, port, "get_roster", "nobody@localhost")
    assert unknown.returncode == 1 and "UnknownUser" in unknown.stderr


def test_presencedctl_goes_through_the_running_server(tmp_path):
    server = start_server(tmp_path / "ctl")
    c = thrift_client(server)
    c.register_user(J("ca", ""), "pw")
    before = c.stats()["thrift_calls"]
    server.ctl("add-friend", "ca", "cb")
    assert [i.jid for i in c.get_roster(J("ca", ""))] == ["cb@localhost"]
    server.ctl("remove-friend", "ca", "cb")
    assert c.get_roster(J("ca", "")) == []
    assert server.ctl("deluser", "ca").stdout == "deleted ca@localhost\n"
    missing = server.ctl("deluser", "ca", check=False)
    assert missing.returncode == 1 and "no such user ca@localhost" in missing.stderr
    # The four commands were four calls on the admin port; this client made three more
    # (the first stats call, two get_roster) since ``before`` was read.
    assert c.stats()["thrift_calls"] - before == 4 + 3
    c.close()
    # No server running: the same commands work on the store.
    server.stop()
    server.ctl("adduser", "cc", "--password", "pw")
    assert server.ctl("add-friend", "cc", "cd").returncode == 0
    assert "cd@localhost\tboth" in server.ctl("roster", "cc").stdout
    assert server.ctl("deluser", "cc").stdout == "deleted cc@localhost\n"


def test_presencedctl_reports_an_admin_port_that_refuses_it(tmp_path):
    server = start_server(tmp_path / "deny", allow=["192.0.2.0/24"])
    try:
        result = server.ctl("add-friend", "da", "db", check=False)
        assert result.returncode == 1
        assert "allow" in result.stderr and "Traceback" not in result.stderr
    finally:
        server.stop()


def test_pipelined_friendship_changes_keep_their_order(server):
    """Calls sent back to back are written together, in the order they came."""
    S = admin.PresencedAdmin
    calls = [("remove_friend", ("pa", "pc")), ("add_friend", ("pa", "pb")),
             ("remove_friend", ("pa", "pb")), ("add_friend", ("pa", "pc")),
             ("add_friend", ("pa", "pd")), ("remove_friend", ("pa", "pd")),
             ("add_friend", ("pa", "pd"))]
    data = b"".join(encode_call(name, seqid, getattr(S, name + "_args")(J(a, ""), J(b, "")))
                    for seqid, (name, (a, b)) in enumerate(calls))
    c = thrift_client(server)
    c.register_user(J("pa", ""), "pw")
    with socket.create_connection(("127.0.0.1", server.ports["thrift"]), timeout=10) as sock:
        sock.sendall(data)
        reader = SocketReader(sock)
        assert [read_reply(reader)[2] for _ in calls] == list(range(len(calls)))
    assert sorted(i.jid for i in c.get_roster(J("pa", ""))) == ["pc@localhost",
                                                                "pd@localhost"]
    c.close()

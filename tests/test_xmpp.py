"""The XMPP c2s door with real clients: slixmpp over STARTTLS with SCRAM (roster, presence,
messages, admin friend pushes through the Thrift door, disco, ping, version, vcard),
go-sendxmpp, and raw streams where bytes matter (resource conflict, system-shutdown, direct
TLS, extauth). Server logic without a process (subscriptions, offline storage, routing by
priority, registration, roster versioning) is tested in memory in test_xmpp_memory.py."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from pathlib import Path

import pytest
import slixmpp
from thriftpy2.rpc import make_client

from tests.helpers import (HEADER, OTHER_DOORS_OFF, THRIFT, Client, PresencedProcess,
                           RawClient, run)

admin = THRIFT
USERS = ["alice", "bob", "carol", "dave", "ivan", "judy", "kim", "leo"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = PresencedProcess(tmp_path_factory.mktemp("xmpp"), {
        "comet": {"enabled": False}, "webadmin": {"enabled": False},
        "thrift": {"port": 0}, "server": {"scram_iterations": 1000},
        "xmpp": {"direct_tls": True, "direct_tls_port": 0, "auth_failure_delay": 0.2}})
    process.start()
    process.ctl("import-users", "-", "--quiet",
                input="".join(f"{user}@localhost {user}-pw\n" for user in USERS))
    process.ctl("add-friend", "alice@localhost", "bob@localhost")
    yield process
    process.stop()


def test_login_starttls_scram_roster_presence_and_chat(server):
    async def scenario():
        alice = await Client("alice").start(server.ports["xmpp"])
        mechanism = alice.plugin["feature_mechanisms"].mech.name
        assert mechanism.startswith("SCRAM-SHA-"), mechanism
        assert alice.is_connected() and alice.transport.get_extra_info("sslcontext")
        roster = alice.client_roster
        assert roster["bob@localhost"]["subscription"] == "both"
        bob = await Client("bob").start(server.ports["xmpp"])
        assert bob.client_roster["alice@localhost"]["subscription"] == "both"
        seen = await alice.presence_from("bob@localhost/test")
        assert seen["to"] == "alice@localhost/test"
        await bob.presence_from("alice@localhost/test")

        alice.send_message(mto="bob@localhost", mbody="hello bob", mtype="chat")
        got = await bob.message()
        assert (got["from"], got["body"], got["type"]) == ("alice@localhost/test",
                                                           "hello bob", "chat")
        bob.send_message(mto="alice@localhost/test", mbody="hi alice", msubject="re")
        got = await alice.message()
        assert (got["from"], got["body"], got["subject"]) == ("bob@localhost/test",
                                                              "hi alice", "re")

        # A client cannot send as someone else: the server stamps from.
        forged = alice.make_message(mto="bob@localhost", mbody="forged", mfrom="carol@localhost")
        forged.send()
        got = await bob.message()
        assert got["from"] == "alice@localhost/test" and got["body"] == "forged"

        await bob.close()
        gone = await alice.presence_from("bob@localhost/test", "unavailable")
        assert gone["type"] == "unavailable"
        await alice.close()

    run(scenario())


def test_admin_add_friend_pushes_roster_and_presence(server):
    thrift = make_client(admin.PresencedAdmin, "127.0.0.1", server.ports["thrift"],
                         timeout=10000)

    async def scenario():
        carol = await Client("carol").start(server.ports["xmpp"])
        dave = await Client("dave").start(server.ports["xmpp"])
        await asyncio.get_running_loop().run_in_executor(None, lambda: thrift.add_friend(
            admin.JabberUser("carol", "localhost"), admin.JabberUser("dave", "localhost")))
        item = await carol.push_for("dave@localhost")
        assert item["subscription"] == "both"
        assert (await dave.push_for("carol@localhost"))["subscription"] == "both"
        await carol.presence_from("dave@localhost/test")
        await dave.presence_from("carol@localhost/test")

        await asyncio.get_running_loop().run_in_executor(None, lambda: thrift.spoof_chat(
            admin.JabberUser("dave", "localhost"), admin.JabberUser("carol", "localhost"),
            "spoofed", "thread-1"))
        got = await carol.message()
        assert (got["from"], got["body"], got["thread"], got["type"]) == (
            "dave@localhost", "spoofed", "thread-1", "chat")

        await asyncio.get_running_loop().run_in_executor(None, lambda: thrift.remove_friend(
            admin.JabberUser("carol", "localhost"), admin.JabberUser("dave", "localhost")))
        assert (await carol.push_for("dave@localhost"))["subscription"] == "remove"
        await carol.presence_from("dave@localhost/test", "unavailable")
        await carol.close()
        await dave.close()

    run(scenario())
    thrift.close()


def test_disco_ping_version_vcard_and_unknown_iq(server):
    async def scenario():
        ivan = await Client("ivan").start(server.ports["xmpp"])
        info = await ivan.plugin["xep_0030"].get_info(jid="localhost")
        features = info["disco_info"]["features"]
        for feature in ("urn:xmpp:ping", "jabber:iq:version", "vcard-temp", "msgoffline",
                        "http://jabber.org/protocol/disco#info"):
            assert feature in features
        assert ("server", "im", None, "presenced") in info["disco_info"]["identities"]
        account = await ivan.plugin["xep_0030"].get_info(jid="judy@localhost")
        assert ("account", "registered", None, None) in account["disco_info"]["identities"]
        assert await ivan.plugin["xep_0199"].ping(jid="localhost", timeout=5) < 5
        version = await ivan.plugin["xep_0092"].get_version("localhost")
        assert version["software_version"]["name"] == "presenced"
        empty = await ivan.plugin["xep_0054"].get_vcard("judy@localhost")
        assert empty["vcard_temp"]["FN"] == ""
        card = ivan.plugin["xep_0054"].make_vcard()
        card["FN"] = "Ivan Example"
        await ivan.plugin["xep_0054"].publish_vcard(card)
        again = await ivan.plugin["xep_0054"].get_vcard("ivan@localhost")
        assert again["vcard_temp"]["FN"] == "Ivan Example"
        unknown = ivan.make_iq_get(queryxmlns="urn:example:nothing", ito="localhost")
        with pytest.raises(slixmpp.exceptions.IqError) as caught:
            await unknown.send(timeout=5)
        assert caught.value.condition == "service-unavailable"
        await ivan.close()

    run(scenario())


def test_go_sendxmpp_delivers_a_message(server):
    async def scenario():
        kim = await Client("kim").start(server.ports["xmpp"])
        process = await asyncio.create_subprocess_exec(
            "go-sendxmpp", "-u", "leo@localhost", "-p", "leo-pw", "-j",
            f"127.0.0.1:{server.ports['xmpp']}", "-n", "kim@localhost",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(process.communicate(b"hello from go-sendxmpp\n"), 30)
        assert process.returncode == 0, out
        got = await kim.message(timeout=10)
        assert got["body"].strip() == "hello from go-sendxmpp"
        assert str(got["from"]).startswith("leo@localhost")
        await kim.close()

    run(scenario())


def test_resource_conflict_replaces_the_old_session(server):
    async def scenario():
        first = await Client("judy", "same").start(server.ports["xmpp"])
        closed = asyncio.get_running_loop().create_future()
        first.add_event_handler("stream_error", lambda e: closed.done() or
                                closed.set_result(e["condition"]))
        second = await Client("judy", "same").start(server.ports["xmpp"])
        assert await asyncio.wait_for(closed, 5) == "conflict"
        assert second.boundjid.full == "judy@localhost/same"
        await second.close()

    run(scenario())


def test_plain_needs_tls_and_direct_tls_works(server):
    client = RawClient(server.ports["xmpp"])
    client.send(HEADER)
    features = client.read_until(b"</stream:features>")
    assert b"<required/>" in features and b"<mechanisms" not in features
    client.send(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>")
    assert b"policy-violation" in client.read_until(b"</stream:error>")

    direct = RawClient(server.ports["xmpp_tls"], direct_tls=True)
    direct.send(HEADER)
    features = direct.read_until(b"</stream:features>")
    assert b"starttls" not in features and b"<mechanism>PLAIN</mechanism>" in features
    assert b"<mechanism>SCRAM-SHA-256</mechanism>" in features
    assert b"kim@localhost/raw" in direct.login("kim", "kim-pw", started=True)


def test_system_shutdown_on_stop(tmp_path: Path):
    process = PresencedProcess(tmp_path, {**OTHER_DOORS_OFF,
                                          "xmpp": {"require_tls": False, "allow_plain": True}})
    process.start()
    process.ctl("adduser", "zed@localhost", "--password", "pw")
    bound = RawClient(process.ports["xmpp"])
    bound.login("zed", "pw")
    waiting = RawClient(process.ports["xmpp"])
    waiting.send(HEADER)
    waiting.read_until(b"</stream:features>")
    process.stop()
    assert b"<system-shutdown" in bound.read_until(b"</stream:error>")
    assert b"<system-shutdown" in waiting.read_until(b"</stream:error>")


EXTAUTH = textwrap.dedent("""\
    import struct, sys, time
    read, write = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = read.read(2)
        if len(head) < 2:
            break
        fields = read.read(struct.unpack(">H", head)[0]).decode().split(":", 3)
        if fields[0] == "auth" and fields[1] == "hang":
            time.sleep(60)
        if fields[0] == "auth" and fields[1] == "garbage":
            write.write(b"\\x00\\x02\\x00\\x07")
            write.flush()
            continue
        if fields[0] == "auth" and fields[1] == "die":
            sys.exit(3)
        ok = fields[0] == "auth" and fields[3] == "open:sesame" or fields[0] == "isuser"
        write.write(b"\\x00\\x02\\x00\\x01" if ok else b"\\x00\\x02\\x00\\x00")
        write.flush()
""")


def test_external_auth_program(tmp_path: Path):
    script = tmp_path / "extauth.py"
    script.write_text(EXTAUTH)
    process = PresencedProcess(tmp_path, {**OTHER_DOORS_OFF, "xmpp": {
        "require_tls": False, "allow_plain": True, "auth_failure_delay": 0.0,
        "extauth_program": f"{sys.executable} {script}", "extauth_pool_size": 2,
        "extauth_timeout": 1.0}})
    process.start()
    try:
        client = RawClient(process.ports["xmpp"])
        client.send(HEADER)
        features = client.read_until(b"</stream:features>")
        assert b"<mechanism>PLAIN</mechanism>" in features and b"SCRAM" not in features
        ok = RawClient(process.ports["xmpp"])
        assert b"anyone@localhost/raw" in ok.login("anyone", "open:sesame")
        started = time.monotonic()
        hung = RawClient(process.ports["xmpp"])
        with pytest.raises(PermissionError, match="not-authorized"):
            hung.login("hang", "open:sesame")
        assert time.monotonic() - started < 10
        # The hung program was replaced: logins work again.
        again = RawClient(process.ports["xmpp"])
        assert b"other@localhost/raw" in again.login("other", "open:sesame")
        wrong = RawClient(process.ports["xmpp"])
        with pytest.raises(PermissionError, match="not-authorized"):
            wrong.login("other", "wrong")
        # An invalid reply or a program that exits fails that login only.
        for broken in ("garbage", "die"):
            with pytest.raises(PermissionError, match="not-authorized"):
                RawClient(process.ports["xmpp"]).login(broken, "open:sesame")
        time.sleep(1.5)  # the dead program is restarted after a second
        for name in ("p1", "p2", "p3"):
            assert b"/raw" in RawClient(process.ports["xmpp"]).login(name, "open:sesame")
        assert process.process.poll() is None
    finally:
        process.stop()


def test_wrong_password_is_refused_over_scram(server):
    async def scenario():
        client = Client("alice", "wrongpw", password="not-the-password")
        with pytest.raises(PermissionError):
            await client.start(server.ports["xmpp"])
        client.disconnect()

    run(scenario())

"""Group chat end to end: slixmpp's XEP-0045 plugin against a presenced process, the room
admin RPCs over the Thrift wire and the HTTP API, and one room over two cluster nodes. The room rules themselves are tested in memory
(test_muc.py)."""

from __future__ import annotations

import asyncio
import http.client
import json

import pytest
import slixmpp

from tests.helpers import Client, PresencedProcess, node_config, run, thrift_client

USERS = ("alice", "bob", "carol")
ROOM = "lounge@conference.localhost"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = PresencedProcess(tmp_path_factory.mktemp("muc"), {
        "comet": {"enabled": False},
        "thrift": {"port": 0},
        "server": {"scram_iterations": 100},
        "xmpp": {"require_tls": False, "allow_plain": True, "auth_failure_delay": 0.0}})
    process.start()
    process.ctl("import-users", "-", "--quiet",
                input="".join(f"{user}@localhost {user}-pw\n" for user in USERS))
    yield process
    process.stop()


async def muc_client(server: PresencedProcess, user: str) -> Client:
    c = Client(user)
    c.register_plugin("xep_0045")
    c.register_plugin("xep_0004")
    c.groupchat: asyncio.Queue = asyncio.Queue()
    c.add_event_handler("groupchat_message", c.groupchat.put_nowait)
    c.room_presences: asyncio.Queue = asyncio.Queue()
    c.add_event_handler("groupchat_presence", c.room_presences.put_nowait)
    await c.start(server.ports["xmpp"])
    return c


def api(server: PresencedProcess, method: str, body: dict) -> tuple[int, dict]:
    """``POST /api/<method>`` on the admin port with an admin token, as curl would."""
    token = server.ctl("api-token", "--scope", "admin").stdout.strip().splitlines()[-1]
    connection = http.client.HTTPConnection("127.0.0.1", server.ports["webadmin"], timeout=20)
    try:
        connection.request("POST", f"/api/{method}", body=json.dumps(body).encode(),
                           headers={"Authorization": f"Bearer {token}",
                                    "Content-Type": "application/json"})
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        connection.close()


async def said(c: Client, body: str) -> slixmpp.Message:
    while True:
        message = await asyncio.wait_for(c.groupchat.get(), 5)
        if message["body"] == body:
            return message


def test_a_room_with_slixmpp_and_the_admin_rpcs(server):
    async def scenario():
        alice, bob, carol = [await muc_client(server, u) for u in USERS]
        muc = alice.plugin["xep_0045"]
        own, subject, occupants, history = await muc.join_muc_wait(
            slixmpp.JID(ROOM), "Alice", timeout=5)
        assert {110, 201} <= set(own["muc"]["status_codes"])
        assert own["muc"]["affiliation"] == "owner"

        form = await muc.get_room_config(ROOM)
        assert "muc#roomconfig_persistentroom" in form.get_fields()
        form.reply()  # becomes the submission, keeping the fields' values
        form.set_values({"FORM_TYPE": "http://jabber.org/protocol/muc#roomconfig",
                         "muc#roomconfig_persistentroom": True,
                         "muc#roomconfig_roomname": "The lounge"})
        await muc.set_room_config(ROOM, form)
        alice.send_message(mto=ROOM, mbody="before you came", mtype="groupchat")
        await said(alice, "before you came")
        muc.set_subject(ROOM, "Tea")

        _, subject, occupants, history = await bob.plugin["xep_0045"].join_muc_wait(
            slixmpp.JID(ROOM), "Bob", maxstanzas=5, timeout=5)
        assert [m["body"] for m in history] == ["before you came"]
        assert subject["subject"] == "Tea"
        assert sorted(str(p["from"]) for p in occupants) == [f"{ROOM}/Alice", f"{ROOM}/Bob"]
        await carol.plugin["xep_0045"].join_muc_wait(slixmpp.JID(ROOM), "Carol", timeout=5)

        carol.send_message(mto=ROOM, mbody="hello both", mtype="groupchat")
        for c in (alice, bob, carol):
            message = await said(c, "hello both")
            assert str(message["from"]) == f"{ROOM}/Carol"

        admin = thrift_client(server)
        try:
            [room] = await asyncio.to_thread(admin.list_rooms)
            assert (room.jid, room.name, room.persistent, room.occupants) == (
                ROOM, "The lounge", True, 3)
            nicks = {o.nick: o for o in await asyncio.to_thread(admin.room_occupants, ROOM)}
            assert sorted(nicks) == ["Alice", "Bob", "Carol"]
            assert nicks["Bob"].jid == "bob@localhost/test"
            await asyncio.to_thread(admin.send_room_message, ROOM, "from the operators")
            for c in (alice, bob, carol):
                assert str((await said(c, "from the operators"))["from"]) == ROOM
        finally:
            admin.close()
        # The same RPCs on the HTTP API (POST /api/<method>, JSON).
        status, answer = await asyncio.to_thread(api, server, "room_occupants", {"room": ROOM})
        assert status == 200
        assert sorted(o["nick"] for o in answer["result"]) == ["Alice", "Bob", "Carol"]
        status, answer = await asyncio.to_thread(api, server, "create_room", {
            "room": "ops@elsewhere.example", "owner": {"name": "", "server": ""},
            "persistent": False})
        assert status == 400 and answer["error"] == "InvalidArgument"

        await muc.set_role(ROOM, "Bob", "none", reason="out")
        while True:
            kicked = await asyncio.wait_for(bob.room_presences.get(), 5)
            if kicked["type"] == "unavailable" and kicked["from"].resource == "Bob":
                break
        assert {307, 110} <= set(kicked["muc"]["status_codes"])
        for c in (alice, bob, carol):
            await c.close()

    run(scenario())


def test_one_room_for_three_clients_over_two_cluster_nodes(redis_server, presenced_factory):
    """The room lives on the node of its first occupant; the other node forwards its
    clients' calls there. When that node dies, the others are told (332) and the room
    lives again on the surviving node at the next join."""
    extra = {"server": {"scram_iterations": 64},
             "xmpp": {"enabled": True, "bind": "127.0.0.1", "require_tls": False,
                      "allow_plain": True, "auth_failure_delay": 0.0}}
    a = presenced_factory(node_config(redis_server.url, "a", **extra), name="a")
    b = presenced_factory(node_config(redis_server.url, "b", **extra), name="b")
    a.ctl("import-users", "-", "--quiet",
          input="".join(f"{user}@localhost {user}-pw\n" for user in USERS))

    async def scenario():
        alice = await muc_client(a, "alice")
        bob, carol = [await muc_client(b, u) for u in ("bob", "carol")]
        own, _, _, _ = await alice.plugin["xep_0045"].join_muc_wait(
            slixmpp.JID(ROOM), "Alice", timeout=10)
        assert 201 in own["muc"]["status_codes"]
        for c, nick in ((bob, "Bob"), (carol, "Carol")):
            own, _, occupants, _ = await c.plugin["xep_0045"].join_muc_wait(
                slixmpp.JID(ROOM), nick, timeout=10)
            assert 201 not in own["muc"]["status_codes"]  # one room, made once
        assert sorted(p["from"].resource for p in occupants) == ["Alice", "Bob", "Carol"]

        carol.send_message(mto=ROOM, mbody="from node b", mtype="groupchat")
        alice.send_message(mto=ROOM, mbody="from node a", mtype="groupchat")
        for c in (alice, bob, carol):  # in either order: they start on different nodes
            got = {}
            while len(got) < 2:
                message = await asyncio.wait_for(c.groupchat.get(), 5)
                got[message["body"]] = str(message["from"])
            assert got == {"from node b": f"{ROOM}/Carol", "from node a": f"{ROOM}/Alice"}

        await bob.close()
        while True:  # bob's session ended on node b: he left the room on node a
            gone = await asyncio.wait_for(alice.room_presences.get(), 10)
            if gone["type"] == "unavailable" and gone["from"].resource == "Bob":
                break

        a.kill()
        while True:
            out = await asyncio.wait_for(carol.room_presences.get(), 15)
            if out["type"] == "unavailable" and out["from"].resource == "Carol":
                break
        assert 332 in out["muc"]["status_codes"]
        own, _, occupants, _ = await carol.plugin["xep_0045"].join_muc_wait(
            slixmpp.JID(ROOM), "Carol", timeout=10)
        assert 201 in own["muc"]["status_codes"]  # made anew on the live node
        assert [p["from"].resource for p in occupants] == ["Carol"]
        await carol.close()

    run(scenario())

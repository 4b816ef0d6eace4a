"""Message Archive Management (XEP-0313, mam:2) against a real server, with slixmpp's MAM,
RSM and MAM-preferences stanzas: chats archived once for each party (bare and full JID, from
XMPP and from Thrift spoof_chat/spoof_message), queries by contact and time, RSM paging and
the last page, preferences, blocked senders, account removal, the Redis backend with a
per-account limit, and the feature switched off."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

import pytest
import slixmpp
from slixmpp.exceptions import IqError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath
from thriftpy2.rpc import make_client

from tests.helpers import THRIFT as admin, Client, PresencedProcess, run

USERS = ("alice", "bob", "carol", "pam", "quinn", "tina", "tom", "uma", "rita", "sam",
         "vera", "walt", "xena", "yuri", "zoe", "dave", "erin", "fay", "gus", "hal", "ivy")
PLUGINS = ("xep_0313", "xep_0059", "xep_0441", "xep_0191", "xep_0280")
NS_SID = "urn:xmpp:sid:0"
XMPP = {"require_tls": False, "allow_plain": True, "auth_failure_delay": 0.0,
        "archive_days": 365}  # archiving is off by default


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = PresencedProcess(tmp_path_factory.mktemp("mam"), {
        "comet": {"enabled": False}, "webadmin": {"enabled": False},
        "thrift": {"port": 0}, "server": {"scram_iterations": 100}, "xmpp": XMPP})
    process.start()
    process.ctl("import-users", "-", "--quiet",
                input="".join(f"{user}@localhost {user}-pw\n" for user in USERS))
    yield process
    process.stop()


def thrift(server: PresencedProcess):
    return make_client(admin.Ejabthrift, "127.0.0.1", server.ports["thrift"], timeout=10000)


def jabber_user(name: str):
    return admin.JabberUser(name=name, server="localhost")


async def client(server: PresencedProcess, user: str, resource: str = "test") -> Client:
    c = Client(user, resource)
    for plugin in PLUGINS:
        c.register_plugin(plugin)
    c.mam_results = {}
    c.register_handler(Callback(
        "mam results", MatchXPath("{jabber:client}message/{urn:xmpp:mam:2}result"),
        lambda m: c.mam_results.setdefault(m["mam_result"]["queryid"], []).append(m)))
    await c.start(server.ports["xmpp"])
    await asyncio.sleep(0.1)
    return c


class Page:
    """One answered archive query: the result messages and the ``<fin/>``."""

    def __init__(self, results: list, fin):
        self.results = results
        self.fin = fin
        self.messages = [r["mam_result"]["forwarded"]["stanza"] for r in results]
        self.bodies = [m["body"] for m in self.messages]
        self.ids = [r["mam_result"]["id"] for r in results]
        self.complete = {"true": True, "false": False}[fin["complete"]]
        self.first, self.last = fin["rsm"]["first"], fin["rsm"]["last"]


_queries = iter(range(1_000_000))


async def archive(c: Client, with_: str | None = None, start: datetime | None = None,
                  end: datetime | None = None, max: int | None = None,
                  after: str | None = None, before: str | bool | None = None,
                  fields: dict | None = None) -> Page:
    """Query the client's own archive (``before=True``: RSM's empty ``<before/>``)."""
    iq = c.make_iq_set(ito=c.boundjid.bare)
    queryid = f"q{next(_queries)}"
    iq["mam"]["queryid"] = queryid
    if with_ is not None:
        iq["mam"]["with"] = slixmpp.JID(with_)
    if start is not None:
        iq["mam"]["start"] = start
    if end is not None:
        iq["mam"]["end"] = end
    for var, value in (fields or {}).items():
        iq["mam"].set_custom_field(var, value)
    rsm = iq["mam"]["rsm"]
    if max is not None:
        rsm["max"] = str(max)
    if after is not None:
        rsm["after"] = after
    if before is not None:
        rsm["before"] = before
    result = await iq.send(timeout=10)
    results = c.mam_results.pop(queryid, [])
    for r in results:
        assert str(r["from"]) == c.boundjid.bare and str(r["to"]) == c.boundjid.full
    return Page(results, result["mam_fin"])


async def archived(c: Client, count: int, timeout: float = 5, newest: str | None = None,
                   **query) -> Page:
    """The archive once it holds ``count`` matching entries (archiving follows delivery),
    the newest with the body ``newest`` if given."""
    deadline = time.monotonic() + timeout
    while True:
        page = await archive(c, **query)
        done = len(page.results) >= count and newest in (None, page.bodies[-1])
        if done or time.monotonic() > deadline:
            assert len(page.results) == count, page.bodies
            return page
        await asyncio.sleep(0.05)


async def chat(sender: Client, recipient: Client, to: str, body: str, kind: str = "chat"):
    sender.send_message(mto=to, mbody=body, mtype=kind)
    assert (await recipient.message())["body"] == body


def test_disco_and_form_discovery(server):
    async def scenario():
        alice = await client(server, "alice")
        info = await alice.plugin["xep_0030"].get_info(jid="alice@localhost")
        assert "urn:xmpp:mam:2" in info["disco_info"]["features"]
        form = await alice.plugin["xep_0313"].get_fields(jid="alice@localhost")
        assert {"FORM_TYPE", "with", "start", "end"} <= set(form.get_fields())
        assert form.get_fields()["FORM_TYPE"]["value"] in ("urn:xmpp:mam:2", ["urn:xmpp:mam:2"])
        await alice.close()
    run(scenario())


def stanza_ids(message) -> dict[str, str]:
    """``{by: id}`` of a message's XEP-0359 stanza ids."""
    return {e.get("by"): e.get("id") for e in message.xml.findall(f"{{{NS_SID}}}stanza-id")}


def test_live_messages_carry_their_archive_ids_and_forged_ones_are_stripped(server):
    async def scenario():
        fay = await client(server, "fay", "phone")
        desk = await client(server, "fay", "desk")
        gus = await client(server, "gus")
        info = await fay.plugin["xep_0030"].get_info(jid="fay@localhost")
        assert NS_SID in info["disco_info"]["features"]
        await desk.plugin["xep_0280"].enable()
        carbons: asyncio.Queue = asyncio.Queue()
        desk.add_event_handler("carbon_sent", lambda m: carbons.put_nowait(m["carbon_sent"]))

        # Forged: a stanza-id "by" the recipient, one by the server; another's is kept.
        forged = fay.make_message(mto="gus@localhost", mbody="first", mtype="chat")
        for by in ("gus@localhost", "localhost", "elsewhere.example"):
            forged.append(slixmpp.xmlstream.ET.Element(
                f"{{{NS_SID}}}stanza-id", {"by": by, "id": "forged"}))
        forged.send()
        first = await gus.message()
        ids = stanza_ids(first)
        assert ids.keys() == {"gus@localhost", "elsewhere.example"}
        assert ids["gus@localhost"] != "forged" and ids["elsewhere.example"] == "forged"
        sent = stanza_ids(await asyncio.wait_for(carbons.get(), 5))
        assert sent.keys() == {"fay@localhost", "elsewhere.example"}  # by the sender

        for body in ("second", "third"):
            fay.send_message(mto="gus@localhost/test", mbody=body, mtype="chat")  # full JID
            assert (await gus.message())["body"] == body
        page = await archived(gus, 3, with_="fay@localhost")
        assert page.bodies == ["first", "second", "third"]
        assert page.ids[0] == ids["gus@localhost"]
        following = await archive(gus, after=ids["gus@localhost"])
        assert following.bodies == ["second", "third"]
        assert (await archive(gus, before=page.ids[2])).bodies == ["first", "second"]
        mine = await archived(fay, 3)
        assert mine.ids[0] == sent["fay@localhost"]
        assert (await archive(fay, after=sent["fay@localhost"], max=1)).bodies == ["second"]
        for c in (fay, desk, gus):
            await c.close()
    run(scenario())


def test_chats_are_archived_once_for_each_party_and_queried_by_contact(server):
    async def scenario():
        alice = await client(server, "alice", "phone")
        bob = await client(server, "bob")
        carol = await client(server, "carol")
        await chat(alice, bob, "bob@localhost", "one")
        await chat(bob, alice, "alice@localhost", "two")
        await chat(alice, bob, "bob@localhost/test", "three")          # to a full JID
        await chat(bob, alice, "alice@localhost/phone", "four", "normal")
        await chat(carol, alice, "alice@localhost", "from carol")
        state = bob.make_message(mto="alice@localhost", mtype="chat")  # no body: not kept
        state.append(slixmpp.xmlstream.ET.Element(
            "{http://jabber.org/protocol/chatstates}composing"))
        state.send()
        await chat(bob, alice, "alice@localhost", "news", "headline")   # not a chat
        await chat(bob, alice, "alice@localhost", "five")

        page = await archived(alice, 5, with_="bob@localhost")
        assert page.bodies == ["one", "two", "three", "four", "five"]
        assert page.complete and (page.first, page.last) == (page.ids[0], page.ids[-1])
        assert [int(i) for i in page.ids] == sorted(int(i) for i in page.ids)
        first = page.results[0]
        assert str(first["mam_result"]["forwarded"]["delay"]["stamp"].year) >= "2024"
        assert str(page.messages[0]["from"]) == "alice@localhost/phone"
        assert str(page.messages[0]["to"]) == "bob@localhost"
        assert str(page.messages[1]["from"]) == "bob@localhost/test"
        assert page.messages[3]["type"] == "normal"
        everything = await archived(alice, 6)
        assert "from carol" in everything.bodies
        assert (await archived(bob, 5)).bodies == ["one", "two", "three", "four", "five"]
        assert (await archived(carol, 1)).bodies == ["from carol"]
        for c in (alice, bob, carol):
            await c.close()
    run(scenario())


def test_rsm_pages_forward_and_from_the_last_page(server):
    async def scenario():
        pam = await client(server, "pam")
        quinn = await client(server, "quinn")
        for i in range(5):
            await chat(pam, quinn, "quinn@localhost", f"m{i}")
        await archived(pam, 5)

        page = await archive(pam, max=2)
        assert (page.bodies, page.complete) == (["m0", "m1"], False)
        page = await archive(pam, max=2, after=page.last)
        assert (page.bodies, page.complete) == (["m2", "m3"], False)
        page = await archive(pam, max=2, after=page.last)
        assert (page.bodies, page.complete) == (["m4"], True)

        page = await archive(pam, max=2, before=True)                  # the last page
        assert (page.bodies, page.complete) == (["m3", "m4"], False)
        page = await archive(pam, max=2, before=page.first)
        assert (page.bodies, page.complete) == (["m1", "m2"], False)
        page = await archive(pam, max=2, before=page.first)
        assert (page.bodies, page.complete) == (["m0"], True)
        page = await archive(pam, max=2, after=page.last, with_="quinn@localhost")
        assert page.bodies == ["m1", "m2"]
        empty = await archive(pam, with_="nobody@localhost")
        assert empty.results == [] and empty.complete and not empty.first

        with pytest.raises(IqError) as e:
            await archive(pam, fields={"colour": "blue"})
        assert e.value.iq["error"]["condition"] == "bad-request"
        with pytest.raises(IqError) as e:
            await archive(pam, after="not-an-id")
        assert e.value.iq["error"]["condition"] == "item-not-found"
        for c in (pam, quinn):
            await c.close()
    run(scenario())


def test_query_by_time_range(server):
    async def scenario():
        tina = await client(server, "tina")
        bob = await client(server, "bob", "times")
        for i in range(4):
            await chat(tina, bob, "bob@localhost", f"t{i}")
            await asyncio.sleep(0.3)
        stamps = [r["mam_result"]["forwarded"]["delay"]["stamp"]
                  for r in (await archived(tina, 4)).results]
        assert stamps == sorted(stamps) and stamps[0] < stamps[1]
        page = await archive(tina, start=stamps[1], end=stamps[2] + timedelta(seconds=0.1))
        assert page.bodies == ["t1", "t2"]
        assert (await archive(tina, start=stamps[3])).bodies == ["t3"]
        assert (await archive(tina, end=stamps[0] + timedelta(seconds=0.1))).bodies == ["t0"]
        assert (await archive(tina, end=stamps[0] - timedelta(days=1))).bodies == []
        for c in (tina, bob):
            await c.close()
    run(scenario())


def test_thrift_spoofed_messages_are_archived(server):
    admin_client = thrift(server)
    admin_client.spoof_chat(jabber_user("tom"), jabber_user("uma"), "hello uma", "t-1")
    admin_client.spoof_message(jabber_user("tom"), jabber_user("uma"), "a note", "subject")
    admin_client.spoof_message(jabber_user("tom"), jabber_user("uma"), "", "no body")

    async def scenario():
        uma = await client(server, "uma")
        page = await archived(uma, 2, with_="tom@localhost")
        assert page.bodies == ["hello uma", "a note"]
        assert [m["type"] for m in page.messages] == ["chat", "normal"]
        assert page.messages[0]["thread"] == "t-1" and page.messages[1]["subject"] == "subject"
        assert str(page.messages[0]["from"]) == "tom@localhost"
        await uma.close()
        tom = await client(server, "tom")
        assert (await archived(tom, 2, with_="uma@localhost")).bodies == ["hello uma", "a note"]
        await tom.close()
    run(scenario())


def test_thrift_spoofed_messages_carry_their_archive_ids(server):
    """A spoofed chat, delivered live and from offline storage, names its entry in the
    recipient's archive, so the client pages on from it."""
    admin_client = thrift(server)
    admin_client.spoof_chat(jabber_user("hal"), jabber_user("ivy"), "while away", "")

    async def scenario():
        ivy = await client(server, "ivy")
        ivy.send_presence()
        offline = await ivy.message()
        assert offline["body"] == "while away"
        admin_client.spoof_chat(jabber_user("hal"), jabber_user("ivy"), "live", "t")
        live = await ivy.message()
        assert live["body"] == "live"
        offline_ids, live_ids = stanza_ids(offline), stanza_ids(live)
        assert offline_ids.keys() == live_ids.keys() == {"ivy@localhost"}
        page = await archived(ivy, 2, with_="hal@localhost")
        assert page.bodies == ["while away", "live"]
        assert page.ids == [offline_ids["ivy@localhost"], live_ids["ivy@localhost"]]
        assert (await archive(ivy, after=offline_ids["ivy@localhost"])).bodies == ["live"]
        assert stanza_ids(page.messages[1]) == {}  # the archived copy is the message as sent
        await ivy.close()
    run(scenario())


def test_a_page_holds_at_most_100_results(server):
    admin_client = thrift(server)
    for i in range(105):
        admin_client.spoof_chat(jabber_user("rita"), jabber_user("sam"), f"n{i}", "")

    async def scenario():
        sam = await client(server, "sam")
        page = await archived(sam, 100, max=500)
        assert (page.bodies[0], page.bodies[-1], page.complete) == ("n0", "n99", False)
        assert (await archive(sam, after=page.last)).bodies == [f"n{i}" for i in range(100, 105)]
        await sam.close()
    run(scenario())


def test_preferences_never_and_always(server):
    async def scenario():
        vera = await client(server, "vera")
        walt = await client(server, "walt")
        xena = await client(server, "xena")
        prefs = vera.plugin["xep_0441"]
        assert (await prefs.get_preferences())[0] == "always"
        await prefs.set_preferences("always", never=[slixmpp.JID("walt@localhost/any")])
        default, always, never = await prefs.get_preferences()
        assert (default, set(always), set(never)) == ("always", set(),
                                                      {slixmpp.JID("walt@localhost")})
        await chat(walt, vera, "vera@localhost", "walt: not for vera's archive")
        await chat(xena, vera, "vera@localhost", "xena: kept")
        assert (await archived(vera, 1)).bodies == ["xena: kept"]
        assert (await archived(walt, 1)).bodies == ["walt: not for vera's archive"]

        await prefs.set_preferences("never", always=[slixmpp.JID("xena@localhost")])
        await chat(walt, vera, "vera@localhost", "walt again")
        await chat(vera, xena, "xena@localhost", "vera to xena")
        assert (await archived(vera, 2)).bodies == ["xena: kept", "vera to xena"]

        with pytest.raises(IqError) as e:
            await prefs.set_preferences("sometimes")
        assert e.value.iq["error"]["condition"] == "bad-request"
        for c in (vera, walt, xena):
            await c.close()
    run(scenario())


def test_messages_from_a_blocked_sender_are_not_archived(server):
    async def scenario():
        yuri = await client(server, "yuri")
        await yuri.plugin["xep_0191"].block(slixmpp.JID("zoe@localhost"))
        await yuri.close()
        zoe = await client(server, "zoe")
        bob = await client(server, "bob", "blocking")
        zoe.send_message(mto="yuri@localhost", mbody="refused while offline", mtype="chat")
        await asyncio.sleep(0.2)
        bob.send_message(mto="yuri@localhost", mbody="from bob", mtype="chat")
        yuri = await client(server, "yuri")
        assert (await yuri.message())["body"] == "from bob"      # offline, zoe's was dropped
        zoe.send_message(mto="yuri@localhost", mbody="refused while online", mtype="chat")
        await chat(bob, yuri, "yuri@localhost", "bob again")
        assert (await archived(yuri, 2)).bodies == ["from bob", "bob again"]
        assert (await archive(zoe)).bodies == []
        for c in (yuri, zoe, bob):
            await c.close()
    run(scenario())


def test_a_removed_account_loses_its_archive(server):
    async def scenario():
        dave = await client(server, "dave")
        erin = await client(server, "erin")
        await chat(dave, erin, "erin@localhost", "before removal")
        assert (await archived(dave, 1)).bodies == ["before removal"]
        await dave.close()
        server.ctl("deluser", "dave@localhost")
        server.ctl("adduser", "dave@localhost", "--password", "dave-pw")
        dave = await client(server, "dave")
        await asyncio.sleep(0.2)
        assert (await archive(dave)).bodies == []
        assert (await archive(erin)).bodies == ["before removal"]
        for c in (dave, erin):
            await c.close()
    run(scenario())


def test_redis_backend_keeps_the_newest_entries_up_to_the_limit(presenced_factory,
                                                                 redis_server):
    server = presenced_factory({
        "comet": {"enabled": False}, "webadmin": {"enabled": False}, "thrift": {"port": 0},
        "server": {"scram_iterations": 100},
        "store": {"backend": "redis", "redis": [redis_server.url]},
        "xmpp": {**XMPP, "archive_limit": 3}})
    server.ctl("import-users", "-", "--quiet",
               input="".join(f"{u}@localhost {u}-pw\n" for u in ("alice", "bob")))

    async def scenario():
        alice = await client(server, "alice")
        bob = await client(server, "bob")
        for i in range(5):
            await chat(alice, bob, "bob@localhost", f"r{i}")
        await chat(bob, alice, "alice@localhost/test", "r5")
        page = await archived(bob, 3, newest="r5", with_="alice@localhost")
        assert page.bodies == ["r3", "r4", "r5"]
        await archived(alice, 3, newest="r5")
        page = await archive(alice, max=2, before=True)
        assert (page.bodies, page.complete) == (["r4", "r5"], False)
        for c in (alice, bob):
            await c.close()
    run(scenario())


def test_archive_days_zero_turns_archiving_off(presenced_factory):
    server = presenced_factory({
        "comet": {"enabled": False}, "webadmin": {"enabled": False}, "thrift": {"enabled": False},
        "server": {"scram_iterations": 100}, "xmpp": {**XMPP, "archive_days": 0}})
    server.ctl("import-users", "-", "--quiet",
               input="".join(f"{u}@localhost {u}-pw\n" for u in ("alice", "bob")))

    async def scenario():
        alice = await client(server, "alice")
        bob = await client(server, "bob")
        await chat(alice, bob, "bob@localhost", "not archived")
        info = await alice.plugin["xep_0030"].get_info(jid="alice@localhost")
        assert "urn:xmpp:mam:2" not in info["disco_info"]["features"]
        with pytest.raises(IqError) as e:
            await archive(alice)
        assert e.value.iq["error"]["condition"] == "service-unavailable"
        for c in (alice, bob):
            await c.close()
    run(scenario())

"""Ad-hoc commands (XEP-0050) with service administration (XEP-0133) for ``[xmpp] admins``:
each command in memory (tests/xmpp_memory.py: the real c2s door, core and store), and one
run with slixmpp's ``xep_0050`` against a presenced process."""

from __future__ import annotations

from typing import Optional

import pytest
import pytest_twisted
from twisted.words.xish import domish

from presenced import config
from tests.helpers import Client, PresencedProcess, run

NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_ADMIN = "http://jabber.org/protocol/admin"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
ADMINS = {"xmpp": {"admins": ["root@localhost"]}}


def child(element: domish.Element, name: str) -> Optional[domish.Element]:
    return next((c for c in element.elements() if c.name == name), None)


def field_xml(var: str, values) -> str:
    values = values if isinstance(values, list) else [values]
    return f"<field var='{var}'>" + "".join(f"<value>{v}</value>" for v in values) + "</field>"


async def execute(client, command: str, **values) -> domish.Element:
    """Run ``#command``: execute, then (for a command with a form) complete it with
    ``values`` (underscores in names become dashes); the final ``<command/>``."""
    node = f"{NS_ADMIN}#{command}"
    first = await client.iq(f"<iq type='set' id='x1' to='localhost'><command "
                            f"xmlns='{NS_COMMANDS}' node='{node}' action='execute'/></iq>")
    assert first["type"] == "result", first.toXml()
    answer = first.firstChildElement()
    if answer["status"] == "completed":
        return answer
    assert answer["status"] == "executing" and child(answer, "x")["type"] == "form"
    fields = "".join(field_xml(k.replace("_", "-"), v) for k, v in values.items())
    done = await client.iq(
        f"<iq type='set' id='x2' to='localhost'><command xmlns='{NS_COMMANDS}' node='{node}' "
        f"sessionid='{answer['sessionid']}' action='complete'><x xmlns='jabber:x:data' "
        f"type='submit'>{field_xml('FORM_TYPE', NS_ADMIN)}{fields}</x></command></iq>")
    assert done["type"] == "result", done.toXml()
    result = done.firstChildElement()
    assert result["status"] == "completed" and result["sessionid"] == answer["sessionid"]
    return result


def note(answer: domish.Element) -> tuple[str, str]:
    found = child(answer, "note")
    return found["type"], str(found)


def result_values(answer: domish.Element) -> dict[str, list[str]]:
    form = child(answer, "x")
    return {f["var"]: [str(v) for v in f.elements() if v.name == "value"]
            for f in form.elements() if f.name == "field"}


async def admin_node(memory_xmpp):
    node = await memory_xmpp(ADMINS)
    await node.add_users("root", "alice", "bob")
    return node, await node.online("root")


@pytest_twisted.ensureDeferred
async def test_admins_see_the_commands_and_others_see_none(memory_xmpp):
    node, root = await admin_node(memory_xmpp)
    alice = await node.online("alice")
    query = (f"<iq type='get' id='c' to='localhost'><query xmlns='{NS_DISCO_ITEMS}' "
             f"node='{NS_COMMANDS}'/></iq>")
    listed = {item["node"] for item in (await root.iq(query)).firstChildElement().elements()}
    assert {f"{NS_ADMIN}#{name}" for name in (
        "add-user", "delete-user", "change-user-password", "get-online-users-list",
        "get-online-users-num", "get-registered-users-num", "announce", "end-user-session")
    } == listed
    assert list((await alice.iq(query)).firstChildElement().elements()) == []
    info_query = (f"<iq type='get' id='i' to='localhost'><query xmlns='{NS_DISCO_INFO}' "
                  f"node='{NS_ADMIN}#add-user'/></iq>")
    assert (await alice.iq(info_query))["type"] == "error"
    info = (await root.iq(info_query)).firstChildElement()
    assert [(i["category"], i["type"]) for i in info.elements(NS_DISCO_INFO, "identity")] == [
        ("automation", "command-node")]
    refused = await alice.iq(f"<iq type='set' id='r' to='localhost'><command "
                             f"xmlns='{NS_COMMANDS}' node='{NS_ADMIN}#add-user'/></iq>")
    assert refused["type"] == "error" and child(child(refused, "error"), "forbidden")
    assert not await node.core.accounts.exists("eve@localhost")


@pytest_twisted.ensureDeferred
async def test_add_user_then_log_in(memory_xmpp):
    node, root = await admin_node(memory_xmpp)
    answer = await execute(root, "add-user", accountjid="eve@localhost", password="s3cret",
                           password_verify="s3cret")
    assert note(answer) == ("info", "eve@localhost added")
    assert await node.core.accounts.check_password("eve@localhost", "s3cret")
    again = await execute(root, "add-user", accountjid="eve@localhost", password="x",
                          password_verify="x")
    assert note(again) == ("error", "eve@localhost exists already")
    differ = await execute(root, "add-user", accountjid="fay@localhost", password="a",
                           password_verify="b")
    assert note(differ)[0] == "error" and not await node.core.accounts.exists("fay@localhost")
    foreign = await execute(root, "add-user", accountjid="x@elsewhere.example", password="a",
                            password_verify="a")
    assert note(foreign)[0] == "error" and "not a domain this server serves" in note(foreign)[1]


@pytest_twisted.ensureDeferred
async def test_a_form_without_a_required_field_is_bad_payload(memory_xmpp):
    node, root = await admin_node(memory_xmpp)
    answer = await root.iq(
        f"<iq type='set' id='p' to='localhost'><command xmlns='{NS_COMMANDS}' "
        f"node='{NS_ADMIN}#add-user' action='complete'><x xmlns='jabber:x:data' type='submit'>"
        f"{field_xml('accountjid', 'eve@localhost')}</x></command></iq>")
    error = child(answer, "error")
    assert answer["type"] == "error" and child(error, "bad-request") and child(error,
                                                                              "bad-payload")
    assert "password" in str(child(error, "text"))
    assert not await node.core.accounts.exists("eve@localhost")


@pytest_twisted.ensureDeferred
async def test_delete_user_closes_its_sessions(memory_xmpp):
    node, root = await admin_node(memory_xmpp)
    alice = await node.online("alice")
    answer = await execute(root, "delete-user", accountjids=["alice@localhost", "nobody@localhost"])
    assert note(answer) == ("error", "deleted: alice@localhost; no such account: "
                                     "nobody@localhost")
    assert not await node.core.accounts.exists("alice@localhost")
    await alice.expect(lambda s: s.name == "error" or alice.ended)
    assert alice.ended


@pytest_twisted.ensureDeferred
async def test_change_password(memory_xmpp):
    node, root = await admin_node(memory_xmpp)
    answer = await execute(root, "change-user-password", accountjid="bob@localhost",
                           password="new-pw")
    assert note(answer)[0] == "info"
    assert await node.core.accounts.check_password("bob@localhost", "new-pw")
    assert not await node.core.accounts.check_password("bob@localhost", "pw")
    missing = await execute(root, "change-user-password", accountjid="zed@localhost",
                            password="x")
    assert note(missing) == ("error", "no such account: zed@localhost")


@pytest_twisted.ensureDeferred
async def test_online_users_and_counts(memory_xmpp):
    node, root = await admin_node(memory_xmpp)
    await node.online("alice")
    await node.online("alice", resource="phone")
    listed = await execute(root, "get-online-users-list")
    assert result_values(listed)["onlineuserjids"] == ["alice@localhost", "root@localhost"]
    count = await execute(root, "get-online-users-num")
    assert result_values(count)["onlineusersnum"] == ["2"]
    registered = await execute(root, "get-registered-users-num")
    assert result_values(registered)["registeredusersnum"] == ["3"]


@pytest_twisted.ensureDeferred
async def test_announce_reaches_every_online_user(memory_xmpp):
    node, root = await admin_node(memory_xmpp)
    alice = await node.online("alice")
    answer = await execute(root, "announce", subject="Maintenance",
                           announcement=["Down at noon", "for 5 minutes"])
    assert note(answer) == ("info", "sent to 2 online users")
    message = await alice.expect(lambda s: s.name == "message")
    assert message["from"] == "localhost" and message["type"] == "headline"
    assert str(child(message, "body")) == "Down at noon\nfor 5 minutes"
    assert str(child(message, "subject")) == "Maintenance"


@pytest_twisted.ensureDeferred
async def test_end_user_session(memory_xmpp):
    node, root = await admin_node(memory_xmpp)
    bob = await node.online("bob")
    phone = await node.online("bob", resource="phone")
    answer = await execute(root, "end-user-session", accountjids=["bob@localhost"])
    assert note(answer) == ("info", "2 sessions ended on this node")
    await bob.expect(lambda s: bob.ended)
    await phone.expect(lambda s: phone.ended)
    assert not node.core.router.is_online("bob@localhost")
    assert await node.core.accounts.exists("bob@localhost")


@pytest_twisted.ensureDeferred
async def test_cancel_and_unknown_commands(memory_xmpp):
    node, root = await admin_node(memory_xmpp)
    canceled = await root.iq(f"<iq type='set' id='c' to='localhost'><command "
                             f"xmlns='{NS_COMMANDS}' node='{NS_ADMIN}#add-user' "
                             f"sessionid='abc' action='cancel'/></iq>")
    assert canceled.firstChildElement()["status"] == "canceled"
    unknown = await root.iq(f"<iq type='set' id='u' to='localhost'><command "
                            f"xmlns='{NS_COMMANDS}' node='{NS_ADMIN}#shutdown'/></iq>")
    assert child(child(unknown, "error"), "item-not-found")
    prev = await root.iq(f"<iq type='set' id='v' to='localhost'><command "
                         f"xmlns='{NS_COMMANDS}' node='{NS_ADMIN}#add-user' action='prev'/></iq>")
    assert child(child(prev, "error"), "bad-action")


def test_slixmpp_runs_add_user_and_counts(tmp_path):
    process = PresencedProcess(tmp_path, {
        "webadmin": {"enabled": False}, "thrift": {"enabled": False},
        "comet": {"enabled": False}, "server": {"scram_iterations": 100},
        "xmpp": {"require_tls": False, "allow_plain": True, "auth_failure_delay": 0.0,
                 "admins": ["root@localhost"]}})
    process.start()
    try:
        process.ctl("import-users", "-", "--quiet", input="root@localhost root-pw\n")

        async def scenario():
            root = Client("root")
            root.register_plugin("xep_0050")
            await root.start(process.ports["xmpp"], presence=False)
            adhoc = root.plugin["xep_0050"]
            items = await adhoc.get_commands("localhost")
            assert f"{NS_ADMIN}#add-user" in [i[1] for i in items["disco_items"]["items"]]
            first = await adhoc.send_command("localhost", f"{NS_ADMIN}#add-user")
            offered = {field["var"] for field in first["command"]["form"]["fields"]}
            assert first["command"]["status"] == "executing"
            submit = root.plugin["xep_0004"].make_form(ftype="submit")
            submit.add_field("FORM_TYPE", value=NS_ADMIN, ftype="hidden")
            for var, value in (("accountjid", "eve@localhost"), ("password", "eve-pw"),
                               ("password-verify", "eve-pw")):
                assert var in offered
                submit.add_field(var, value=value)
            done = await adhoc.send_command("localhost", f"{NS_ADMIN}#add-user",
                                            sessionid=first["command"]["sessionid"],
                                            action="complete", payload=submit)
            assert done["command"]["status"] == "completed"
            assert done["command"]["notes"] == [("info", "eve@localhost added")]
            count = await adhoc.send_command("localhost", f"{NS_ADMIN}#get-registered-users-num")
            assert count["command"]["form"]["values"]["registeredusersnum"] == "2"
            await root.disconnect()
            eve = Client("eve")
            await eve.start(process.ports["xmpp"], presence=False)   # the new account logs in
            await eve.disconnect()
        run(scenario())
    finally:
        process.stop()


def test_admins_must_be_bare_jids_in_lower_case():
    for bad in (["root"], ["Root@localhost"], ["root@localhost/phone"]):
        with pytest.raises(config.ConfigError) as refused:
            config.load(None, {"xmpp": {"admins": bad}})
        assert refused.value.key == "[xmpp] admins"
    assert config.load(None, {"xmpp": {"admins": ["root@localhost"]}}).xmpp.admins == [
        "root@localhost"]

"""The pubsub service pubsub.<domain> (XEP-0060): topics as nodes with owners, rules and
items (presenced.topicnodes, presenced.xmpp.pubsub), in memory and with slixmpp."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
from xml.etree import ElementTree

import pytest
import pytest_twisted
from slixmpp.exceptions import IqError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from tests.helpers import PASSWORD, TIMEOUT, TuneClient, run

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_OWNER = NS_PUBSUB + "#owner"
NS_EVENT = NS_PUBSUB + "#event"
NS_ERRORS = NS_PUBSUB + "#errors"
NS_DATA = "jabber:x:data"
_ids = itertools.count()


def pubsub(kind: str, body: str, owner: bool = False) -> str:
    namespace = NS_OWNER if owner else NS_PUBSUB
    return (f"<iq type='{kind}' id='p{next(_ids)}' to='pubsub.localhost'>"
            f"<pubsub xmlns='{namespace}'>{body}</pubsub></iq>")


def form(namespace: str, form_type: str = "submit", **fields: str) -> str:
    values = "".join(f"<field var='pubsub#{name}'><value>{value}</value></field>"
                     for name, value in fields.items())
    return (f"<x xmlns='{NS_DATA}' type='{form_type}'><field var='FORM_TYPE' type='hidden'>"
            f"<value>{namespace}</value></field>{values}</x>")


def config_form(**fields: str) -> str:
    return form(NS_PUBSUB + "#node_config", **fields)


def authorization(subscriber: str, allow: str) -> str:
    """An owner's answer to a subscription request on vip/room (XEP-0060 §8.6)."""
    return ("<message id='a' to='pubsub.localhost'>" + form(
        NS_PUBSUB + "#subscribe_authorization", node="vip/room", subscriber_jid=subscriber,
        allow=allow) + "</message>")


def conditions(iq) -> tuple[str, str]:
    """(defined condition, pubsub#errors condition) of an error reply; ("", "") if none."""
    for error in (e for e in iq.elements() if e.name == "error"):
        names = {c.uri: c.name for c in error.elements() if c.name != "text"}
        return names.get("urn:ietf:params:xml:ns:xmpp-stanzas", ""), names.get(NS_ERRORS, "")
    return "", ""


def is_event(stanza) -> bool:
    return stanza.name == "message" and any(c.uri == NS_EVENT for c in stanza.elements())


def publish(node: str, item_id: str, payload: str = "<entry xmlns='urn:x'>hi</entry>") -> str:
    return pubsub("set", f"<publish node='{node}'><item id='{item_id}'>{payload}</item>"
                         "</publish>")


async def two_users(memory_xmpp, *others: str, sections=None):
    node = await memory_xmpp(sections)
    await node.add_users("alice", "bob", *others)
    clients = [await node.online(user) for user in ("alice", "bob") + others]
    return node, clients


@pytest_twisted.ensureDeferred
async def test_create_publish_items_retract_purge_delete(memory_xmpp):
    node, (alice, bob) = await two_users(memory_xmpp)
    created = await alice.iq(pubsub("set", "<create node='news/world'/>"))
    assert created["type"] == "result"
    again = await bob.iq(pubsub("set", "<create node='news/world'/>"))
    assert conditions(again) == ("conflict", "")
    answer = await bob.iq(pubsub("set", "<subscribe node='news/world' jid='bob@localhost'/>"))
    assert answer.pubsub.subscription["subscription"] == "subscribed"
    # The subscriber is a follower of the topic, as the site sees it.
    assert await node.core.store.get_subscribers("news/world") == ["bob@localhost"]

    for item_id in ("a", "b"):
        answer = await alice.iq(publish("news/world", item_id))
        assert answer.pubsub.publish.item["id"] == item_id
        note = await bob.expect(is_event)
        assert note["from"] == "pubsub.localhost"
        assert note.event.items["node"] == "news/world"
        assert note.event.items.item["id"] == item_id
        assert note.event.items.item.entry.uri == "urn:x"
    refused = await bob.iq(publish("news/world", "x"))
    assert conditions(refused) == ("forbidden", "")

    items = await bob.iq(pubsub("get", "<items node='news/world'/>"))
    assert [i["id"] for i in items.pubsub.items.elements()] == ["a", "b"]
    newest = await bob.iq(pubsub("get", "<items node='news/world' max_items='1'/>"))
    assert [i["id"] for i in newest.pubsub.items.elements()] == ["b"]
    by_id = await bob.iq(pubsub("get", "<items node='news/world'><item id='a'/></items>"))
    assert [i["id"] for i in by_id.pubsub.items.elements()] == ["a"]

    retracted = await alice.iq(pubsub("set", "<retract node='news/world' notify='true'>"
                                              "<item id='a'/></retract>"))
    assert retracted["type"] == "result"
    note = await bob.expect(is_event)
    assert note.event.items.retract["id"] == "a"
    await alice.iq(publish("news/world", "c"))
    await bob.expect(is_event)
    quiet = await alice.iq(pubsub("set", "<retract node='news/world' notify='false'>"
                                         "<item id='c'/></retract>"))
    assert quiet["type"] == "result"
    await bob.nothing(is_event)

    assert (await alice.iq(pubsub("set", "<purge node='news/world'/>", owner=True)))[
        "type"] == "result"
    note = await bob.expect(is_event)
    assert note.event.purge["node"] == "news/world"
    items = await bob.iq(pubsub("get", "<items node='news/world'/>"))
    assert list(items.pubsub.items.elements()) == []

    refused = await bob.iq(pubsub("set", "<delete node='news/world'/>", owner=True))
    assert conditions(refused) == ("forbidden", "")
    assert (await alice.iq(pubsub("set", "<delete node='news/world'/>", owner=True)))[
        "type"] == "result"
    note = await bob.expect(is_event)
    assert note.event.delete["node"] == "news/world"
    assert await node.core.store.get_subscribers("news/world") == []
    gone = await bob.iq(pubsub("get", "<items node='news/world'/>"))
    assert conditions(gone) == ("item-not-found", "")


@pytest_twisted.ensureDeferred
async def test_create_with_a_form_and_configure(memory_xmpp):
    node, (alice, bob) = await two_users(memory_xmpp)
    answer = await alice.iq(pubsub("set", "<create node='photo/1'/><configure>"
                                          + config_form(max_items="2", title="Holidays")
                                          + "</configure>"))
    assert answer["type"] == "result"
    got = await alice.iq(pubsub("get", "<configure node='photo/1'/>", owner=True))
    values = {f["var"]: str(f.value) for f in got.pubsub.configure.x.elements()
              if f.name == "field" and f.getAttribute("var") != "FORM_TYPE"}
    assert values["pubsub#max_items"] == "2"
    assert values["pubsub#title"] == "Holidays"
    assert values["pubsub#access_model"] == "open"
    for item_id in ("1", "2", "3"):
        await alice.iq(publish("photo/1", item_id))
    items = await alice.iq(pubsub("get", "<items node='photo/1'/>"))
    assert [i["id"] for i in items.pubsub.items.elements()] == ["2", "3"]

    changed = await alice.iq(pubsub("set", "<configure node='photo/1'>"
                                           + config_form(max_items="1", persist_items="0")
                                           + "</configure>", owner=True))
    assert changed["type"] == "result"
    items = await alice.iq(pubsub("get", "<items node='photo/1'/>"))
    assert list(items.pubsub.items.elements()) == []
    await alice.iq(publish("photo/1", "4"))
    items = await alice.iq(pubsub("get", "<items node='photo/1'/>"))
    assert list(items.pubsub.items.elements()) == []  # persist_items off keeps nothing

    bad = await alice.iq(pubsub("set", "<configure node='photo/1'>"
                                       + config_form(access_model="roster")
                                       + "</configure>", owner=True))
    assert conditions(bad) == ("not-acceptable", "")
    refused = await bob.iq(pubsub("get", "<configure node='photo/1'/>", owner=True))
    assert conditions(refused) == ("forbidden", "")
    info = await bob.iq("<iq type='get' id='di' to='pubsub.localhost'><query xmlns="
                        "'http://jabber.org/protocol/disco#info' node='photo/1'/></iq>")
    meta = {f["var"]: str(f.value) for f in info.query.x.elements() if f.name == "field"}
    assert meta["pubsub#owner"] == "alice@localhost"
    assert meta["FORM_TYPE"] == NS_PUBSUB + "#meta-data"
    listing = await bob.iq("<iq type='get' id='dl' to='pubsub.localhost'><query xmlns="
                           "'http://jabber.org/protocol/disco#items'/></iq>")
    assert [i["node"] for i in listing.query.elements()] == ["photo/1"]
    features = await bob.iq("<iq type='get' id='df' to='pubsub.localhost'><query xmlns="
                            "'http://jabber.org/protocol/disco#info'/></iq>")
    offered = {f["var"] for f in features.query.elements() if f.name == "feature"}
    assert {NS_PUBSUB + "#create-nodes", NS_PUBSUB + "#access-whitelist",
            NS_PUBSUB + "#purge-nodes"} <= offered


@pytest_twisted.ensureDeferred
async def test_whitelist_denies_non_members_and_affiliations_let_them_in(memory_xmpp):
    node, (alice, bob, carol) = await two_users(memory_xmpp, "carol")
    await alice.iq(pubsub("set", "<create node='club/a'/><configure>"
                                 + config_form(access_model="whitelist") + "</configure>"))
    await alice.iq(publish("club/a", "1"))
    denied = await bob.iq(pubsub("set", "<subscribe node='club/a' jid='bob@localhost'/>"))
    assert conditions(denied) == ("not-allowed", "closed-node")
    denied = await bob.iq(pubsub("get", "<items node='club/a'/>"))
    assert conditions(denied) == ("not-allowed", "closed-node")
    assert await node.core.store.get_subscribers("club/a") == []

    answer = await alice.iq(pubsub("set", "<affiliations node='club/a'>"
                                          "<affiliation jid='bob@localhost' affiliation='member'/>"
                                          "<affiliation jid='carol@localhost' "
                                          "affiliation='publisher'/></affiliations>", owner=True))
    assert answer["type"] == "result"
    listing = await alice.iq(pubsub("get", "<affiliations node='club/a'/>", owner=True))
    assert {(a["jid"], a["affiliation"]) for a in listing.pubsub.affiliations.elements()} == {
        ("alice@localhost", "owner"), ("bob@localhost", "member"),
        ("carol@localhost", "publisher")}
    joined = await bob.iq(pubsub("set", "<subscribe node='club/a' jid='bob@localhost'/>"))
    assert joined.pubsub.subscription["subscription"] == "subscribed"
    assert (await carol.iq(publish("club/a", "2")))["type"] == "result"
    assert (await bob.expect(is_event)).event.items.item["id"] == "2"
    own = await alice.iq(pubsub("get", "<affiliations/>"))
    assert [(a["node"], a["affiliation"]) for a in own.pubsub.affiliations.elements()] == [
        ("club/a", "owner")]

    await alice.iq(pubsub("set", "<affiliations node='club/a'><affiliation "
                                 "jid='bob@localhost' affiliation='outcast'/></affiliations>",
                          owner=True))
    assert await node.core.store.get_subscribers("club/a") == []
    banned = await bob.iq(pubsub("get", "<items node='club/a'/>"))
    assert conditions(banned) == ("forbidden", "")


@pytest_twisted.ensureDeferred
async def test_affiliations_partly_refused_make_the_valid_entries(memory_xmpp):
    """XEP-0060 §8.9.2.4: of several affiliations, the valid ones are made and the invalid
    ones (the owner's own, ``owner``, an unknown one) come back with the affiliation they
    keep; a malformed request changes nothing."""
    node, (alice, bob, carol) = await two_users(memory_xmpp, "carol")
    await alice.iq(pubsub("set", "<create node='club/b'/>"))

    def affiliations(*entries: tuple[str, str]) -> str:
        return pubsub("set", "<affiliations node='club/b'>" + "".join(
            f"<affiliation jid='{jid}' affiliation='{a}'/>" for jid, a in entries)
            + "</affiliations>", owner=True)

    await alice.iq(affiliations(("dave@localhost", "member")))
    partly = await alice.iq(affiliations(
        ("alice@localhost", "none"), ("bob@localhost", "publisher"),
        ("carol@localhost", "owner"), ("dave@localhost", "king"),
        ("erin@localhost", "outcast")))
    assert conditions(partly) == ("not-acceptable", "")
    returned = partly.pubsub.affiliations
    assert (returned.uri, returned["node"]) == (NS_OWNER, "club/b")
    assert [(a["jid"], a["affiliation"]) for a in returned.elements()] == [
        ("alice@localhost", "owner"), ("carol@localhost", "none"),
        ("dave@localhost", "member")]
    listing = await alice.iq(pubsub("get", "<affiliations node='club/b'/>", owner=True))
    assert [(a["jid"], a["affiliation"]) for a in listing.pubsub.affiliations.elements()] == [
        ("alice@localhost", "owner"), ("bob@localhost", "publisher"),
        ("dave@localhost", "member"), ("erin@localhost", "outcast")]
    assert (await bob.iq(publish("club/b", "1")))["type"] == "result"

    for malformed in ((("@@", "member"),),
                      (("carol@localhost", "member"), ("carol@localhost", "publisher"))):
        assert conditions(await alice.iq(affiliations(*malformed)))[0] == "bad-request"
    assert (await node.core.nodes.get("club/b")).affiliation("carol@localhost") == "none"


@pytest_twisted.ensureDeferred
async def test_authorize_asks_the_owner_and_approval_subscribes(memory_xmpp):
    node, (alice, bob, carol) = await two_users(memory_xmpp, "carol")
    await alice.iq(pubsub("set", "<create node='vip/room'/><configure>"
                                 + config_form(access_model="authorize") + "</configure>"))
    answer = await bob.iq(pubsub("set", "<subscribe node='vip/room' jid='bob@localhost'/>"))
    assert answer.pubsub.subscription["subscription"] == "pending"
    request = await alice.expect(lambda s: s.name == "message" and "subscribe_authorization"
                                 in s.toXml())
    fields = {f["var"]: str(f.value) for f in request.x.elements() if f.name == "field"}
    assert fields["pubsub#subscriber_jid"] == "bob@localhost"
    assert fields["pubsub#node"] == "vip/room"
    pending = await alice.iq(pubsub("get", "<subscriptions node='vip/room'/>", owner=True))
    assert [(s["jid"], s["subscription"]) for s in pending.pubsub.subscriptions.elements()] == [
        ("bob@localhost", "pending")]
    assert await node.core.store.get_subscribers("vip/room") == []

    alice.send(authorization("bob@localhost", "true"))
    note = await bob.expect(is_event)
    assert note.event.subscription["subscription"] == "subscribed"
    assert await node.core.store.get_subscribers("vip/room") == ["bob@localhost"]

    await carol.iq(pubsub("set", "<subscribe node='vip/room' jid='carol@localhost'/>"))
    await alice.expect(lambda s: s.name == "message" and "carol@localhost" in s.toXml())
    alice.send(authorization("carol@localhost", "false"))
    note = await carol.expect(is_event)
    assert note.event.subscription["subscription"] == "none"
    assert await node.core.store.get_subscribers("vip/room") == ["bob@localhost"]
    # Only the owner answers.
    carol.send(authorization("carol@localhost", "true"))
    error = await carol.expect(lambda s: s.name == "message" and s.getAttribute("type")
                               == "error")
    assert conditions(error)[0] == "forbidden"


def is_authorization_request(stanza) -> bool:
    return stanza.name == "message" and "subscribe_authorization" in stanza.toXml()


def asked_for(stanza) -> tuple[str, str]:
    """(node, subscriber) of an authorization request."""
    fields = {f["var"]: str(f.value) for f in stanza.x.elements() if f.name == "field"}
    return fields["pubsub#node"], fields["pubsub#subscriber_jid"]


@pytest_twisted.ensureDeferred
async def test_requests_made_while_the_owner_is_offline_are_asked_at_login(memory_xmpp):
    node, (alice, bob, carol) = await two_users(memory_xmpp, "carol")
    await alice.iq(pubsub("set", "<create node='vip/room'/><configure>"
                                 + config_form(access_model="authorize") + "</configure>"))
    alice.disconnect()
    await node.settle()
    for who in (bob, carol):
        user = who.jid.partition("/")[0]
        answer = await who.iq(pubsub("set", f"<subscribe node='vip/room' jid='{user}'/>"))
        assert answer.pubsub.subscription["subscription"] == "pending"

    alice = await node.online("alice")
    asked = [await alice.expect(is_authorization_request) for _ in range(2)]
    assert [asked_for(s) for s in asked] == [("vip/room", "bob@localhost"),
                                             ("vip/room", "carol@localhost")]
    alice.send(authorization("bob@localhost", "true"))
    await bob.expect(is_event)
    alice.send(authorization("carol@localhost", "false"))
    await carol.expect(is_event)
    alice.disconnect()
    await node.settle()
    # Answered, they are not asked again (and the owner's list of nodes to ask about is empty).
    alice = await node.online("alice")
    await alice.nothing(is_authorization_request)
    assert await node.core.nodes.awaiting("alice@localhost") == []


def set_subscriptions(**states: str) -> str:
    entries = "".join(f"<subscription jid='{user}@localhost' subscription='{state}'/>"
                      for user, state in states.items())
    return pubsub("set", f"<subscriptions node='vip/room'>{entries}</subscriptions>",
                  owner=True)


@pytest_twisted.ensureDeferred
async def test_the_owner_approves_and_removes_subscribers_by_setting_subscriptions(
        memory_xmpp):
    node, (alice, bob, carol, dave) = await two_users(memory_xmpp, "carol", "dave")
    await alice.iq(pubsub("set", "<create node='vip/room'/><configure>"
                                 + config_form(access_model="authorize") + "</configure>"))
    await node.core.add_subscriptions([("dave@localhost", "vip/room")])  # a web follower
    await bob.iq(pubsub("set", "<subscribe node='vip/room' jid='bob@localhost'/>"))
    await alice.expect(is_authorization_request)

    # Approve bob (pending), subscribe carol (never asked), remove dave: each is told.
    done = await alice.iq(set_subscriptions(bob="subscribed", carol="subscribed",
                                            dave="none"))
    assert done["type"] == "result"
    for who, state in ((bob, "subscribed"), (carol, "subscribed"), (dave, "none")):
        note = await who.expect(is_event)
        assert note.event.subscription["subscription"] == state
        assert note.event.subscription["node"] == "vip/room"
    assert sorted(await node.core.store.get_subscribers("vip/room")) == [
        "bob@localhost", "carol@localhost"]
    listing = await alice.iq(pubsub("get", "<subscriptions node='vip/room'/>", owner=True))
    assert [(s["jid"], s["subscription"]) for s in listing.pubsub.subscriptions.elements()] == [
        ("bob@localhost", "subscribed"), ("carol@localhost", "subscribed")]
    assert await node.core.nodes.awaiting("alice@localhost") == []

    # Only the owner sets them.
    assert conditions(await bob.iq(set_subscriptions(carol="none"))) == ("forbidden", "")
    await alice.iq(pubsub("set", "<affiliations node='vip/room'><affiliation "
                                 "jid='dave@localhost' affiliation='outcast'/></affiliations>",
                          owner=True))
    # XEP-0060 §8.8.2.4: the valid entries are made, the invalid ones come back in the
    # error with the subscription they keep.
    await node.core.add_subscriptions([("erin@localhost", "vip/room")])
    partly = await alice.iq(set_subscriptions(carol="none", bob="pending", dave="subscribed",
                                              erin="unconfigured"))
    assert conditions(partly) == ("not-acceptable", "")
    returned = partly.pubsub.subscriptions
    assert (returned.uri, returned["node"]) == (NS_OWNER, "vip/room")
    assert [(s["jid"], s["subscription"]) for s in returned.elements()] == [
        ("bob@localhost", "subscribed"), ("dave@localhost", "none"),
        ("erin@localhost", "subscribed")]
    assert (await carol.expect(is_event)).event.subscription["subscription"] == "none"
    assert sorted(await node.core.store.get_subscribers("vip/room")) == [
        "bob@localhost", "erin@localhost"]
    # A malformed request changes nothing.
    for malformed in ("<subscription jid='@@' subscription='none'/>",
                      "<subscription jid='bob@localhost' subscription='none'/>"
                      "<subscription jid='bob@localhost' subscription='subscribed'/>"):
        answer = await alice.iq(pubsub("set", "<subscriptions node='vip/room'>"
                                              f"{malformed}</subscriptions>", owner=True))
        assert conditions(answer)[0] == "bad-request"
    assert sorted(await node.core.store.get_subscribers("vip/room")) == [
        "bob@localhost", "erin@localhost"]


def publish_with_options(node: str, item_id: str, **fields: str) -> str:
    options = form(NS_PUBSUB + "#publish-options", **fields)
    return pubsub("set", f"<publish node='{node}'><item id='{item_id}'><entry xmlns='urn:x'/>"
                         f"</item></publish><publish-options>{options}</publish-options>")


@pytest_twisted.ensureDeferred
async def test_publish_options_configure_a_new_node_and_are_preconditions_after(memory_xmpp):
    node, (alice, bob) = await two_users(memory_xmpp)
    # The first publish creates the node with the options as its configuration.
    done = await alice.iq(publish_with_options("club/x", "1", access_model="whitelist",
                                               max_items="3"))
    assert done["type"] == "result"
    config = (await node.core.nodes.get("club/x")).config
    assert (config.access_model, config.max_items) == ("whitelist", 3)
    # Met: published; not met: conflict + precondition-not-met, and nothing kept.
    assert (await alice.iq(publish_with_options("club/x", "2", access_model="whitelist",
                                                persist_items="true")))["type"] == "result"
    for options in ({"access_model": "open"}, {"max_items": "max"}):
        refused = await alice.iq(publish_with_options("club/x", "3", **options))
        assert conditions(refused) == ("conflict", "precondition-not-met")
    assert [i.item_id for i in (await node.core.nodes.get("club/x")).items] == ["1", "2"]
    # A value no node may have is refused as a bad configuration.
    refused = await alice.iq(publish_with_options("club/x", "4", access_model="presence"))
    assert conditions(refused)[0] == "not-acceptable"
    features = await alice.iq("<iq type='get' id='d' to='pubsub.localhost'>"
                              "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>")
    assert NS_PUBSUB + "#publish-options" in {f["var"] for f in features.query.elements()
                                               if f.name == "feature"}


@pytest_twisted.ensureDeferred
async def test_the_default_configuration_is_what_a_new_node_gets(memory_xmpp):
    node, (alice, bob) = await two_users(
        memory_xmpp, sections={"server": {"pubsub_max_items": 4}})
    answer = await alice.iq(pubsub("get", "<default/>", owner=True))
    assert answer["type"] == "result"
    default = next(answer.pubsub.default.elements())
    fields = {f["var"]: str(f.value) for f in default.elements()
              if f.name == "field" and f.getAttribute("var") != "FORM_TYPE"}
    assert fields == {"pubsub#access_model": "open", "pubsub#max_items": "4",
                      "pubsub#persist_items": "true", "pubsub#title": ""}
    await alice.iq(pubsub("set", "<create node='club/new'/>"))
    created = await alice.iq(pubsub("get", "<configure node='club/new'/>", owner=True))
    assert "<value>4</value>" in created.toXml()  # the bound, not the default 10
    for n in range(6):
        await alice.iq(publish("club/new", str(n)))
    assert len((await node.core.nodes.get("club/new")).items) == 4
    # Collections are not offered.
    collection = await alice.iq(pubsub("get", "<default>" + config_form(
        node_type="collection") + "</default>", owner=True))
    assert conditions(collection)[0] == "feature-not-implemented"


@pytest_twisted.ensureDeferred
async def test_bounds_on_nodes_per_user_items_and_item_size(memory_xmpp):
    sections = {"server": {"pubsub_nodes_per_user": 1, "pubsub_max_items": 2,
                           "pubsub_item_bytes": 100}}
    node, (alice, bob) = await two_users(memory_xmpp, sections=sections)
    assert (await alice.iq(pubsub("set", "<create node='a/1'/>")))["type"] == "result"
    refused = await alice.iq(pubsub("set", "<create node='a/2'/>"))
    assert conditions(refused) == ("policy-violation", "")
    big = await alice.iq(publish("a/1", "x", "<p xmlns='urn:x'>" + "y" * 200 + "</p>"))
    assert conditions(big) == ("not-acceptable", "payload-too-big")
    await alice.iq(pubsub("set", "<configure node='a/1'>" + config_form(max_items="max")
                                 + "</configure>", owner=True))
    for item_id in "123":
        await alice.iq(publish("a/1", item_id))
    items = await alice.iq(pubsub("get", "<items node='a/1'/>"))
    assert [i["id"] for i in items.pubsub.items.elements()] == ["2", "3"]
    # The first publish to a topic without a node creates it, so it counts too.
    refused = await alice.iq(publish("a/3", "1"))
    assert conditions(refused) == ("policy-violation", "")


@pytest_twisted.ensureDeferred
async def test_admins_manage_every_node_and_site_followers_are_subscribers(memory_xmpp):
    node, (alice, bob) = await two_users(
        memory_xmpp, sections={"xmpp": {"admins": ["bob@localhost"]}})
    await alice.iq(pubsub("set", "<create node='news/x'/>"))
    await node.core.add_subscriptions([("alice@localhost", "news/x")])  # as the site does
    listing = await alice.iq(pubsub("get", "<subscriptions node='news/x'/>", owner=True))
    assert [s["jid"] for s in listing.pubsub.subscriptions.elements()] == ["alice@localhost"]
    # A site event posted to the topic reaches its XMPP subscriber as before.
    _, reached = await node.core.publish("news/x", "headline", {"t": 1})
    assert reached == 1
    assert (await alice.expect(is_event)).event.items["node"] == "news/x"
    answer = await bob.iq(pubsub("set", "<delete node='news/x'/>", owner=True))
    assert answer["type"] == "result"
    assert (await alice.expect(is_event)).event.delete["node"] == "news/x"
    assert await node.core.store.get_subscribers("news/x") == []


# --- slixmpp (xep_0060) against a running server, with an HTTP publish -----------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.helpers import PresencedProcess

    process = PresencedProcess(tmp_path_factory.mktemp("pubsub"), {
        "server": {"scram_iterations": 64},
        "xmpp": {"require_tls": False, "allow_plain": True},
        "comet": {"enabled": False}})
    process.start()
    process.ctl("import-users", "-", "--quiet", input="".join(
        f"{user}@localhost {PASSWORD}\n" for user in ("owner", "fan", "stranger")))
    yield process
    process.stop()


class PubsubClient(TuneClient):
    """slixmpp with xep_0060: pubsub notifications queue in ``tunes`` (TuneClient's), and
    subscription authorization requests (XEP-0060 §8.6) in ``requests``."""

    def __init__(self, user: str):
        super().__init__(user, notify=False)
        self.register_plugin("xep_0004")
        self.requests: asyncio.Queue = asyncio.Queue()
        self.register_handler(Callback("authorization", MatchXPath(
            f"{{jabber:client}}message/{{{NS_DATA}}}x"), self.requests.put_nowait))

    @property
    def pubsub(self):
        return self.plugin["xep_0060"]

    async def answer_request(self, allow: bool) -> None:
        request = await asyncio.wait_for(self.requests.get(), TIMEOUT)
        form = request["form"]
        values = form.get_values()
        reply = self.plugin["xep_0004"].make_form(ftype="submit")
        reply.add_field("FORM_TYPE", ftype="hidden", value=NS_PUBSUB + "#subscribe_authorization")
        reply.add_field("pubsub#node", value=values["pubsub#node"])
        reply.add_field("pubsub#subscriber_jid", value=str(values["pubsub#subscriber_jid"]))
        reply.add_field("pubsub#allow", ftype="boolean", value=allow)
        message = self.make_message(mto=request["from"])
        message.append(reply)
        message.send()


async def connected(server, user: str) -> PubsubClient:
    client = PubsubClient(user)
    client.connect("127.0.0.1", server.ports["xmpp"])
    await asyncio.wait_for(client.started, TIMEOUT)
    return client


def entry(text: str) -> ElementTree.Element:
    return ElementTree.fromstring(f"<entry xmlns='urn:example:news'><title>{text}</title></entry>")


def submitted_form(client: PubsubClient, form_type: str, **fields) -> object:
    """A submitted ``pubsub#<form_type>`` form with ``pubsub#<name>`` fields."""
    form = client.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field("FORM_TYPE", ftype="hidden", value=f"{NS_PUBSUB}#{form_type}")
    for name, value in fields.items():
        form.add_field(f"pubsub#{name}", value=value)
    return form


def node_config(client: PubsubClient, **fields) -> object:
    return submitted_form(client, "node_config", **fields)


def test_a_slixmpp_owner_and_subscriber_use_a_node_end_to_end(server):
    service = "pubsub.localhost"

    async def scenario() -> None:
        owner, fan = await connected(server, "owner"), await connected(server, "fan")
        try:
            await owner.pubsub.create_node(service, "band/news", config=node_config(
                owner, max_items="5", title="Band news"))
            config = await owner.pubsub.get_node_config(service, "band/news")
            values = config["pubsub_owner"]["configure"]["form"].get_values()
            assert values["pubsub#title"] == "Band news" and values["pubsub#max_items"] == "5"
            await owner.pubsub.set_node_config(service, "band/news", node_config(
                owner, max_items="3"))
            answer = await fan.pubsub.subscribe(service, "band/news")
            assert answer["pubsub"]["subscription"]["subscription"] == "subscribed"

            for n in range(4):
                await owner.pubsub.publish(service, "band/news", id=f"i{n}",
                                           payload=entry(f"tour {n}"))
                sender, xml = await fan.next_tune()
                assert sender == service and f"tour {n}" in xml
            items = await fan.pubsub.get_items(service, "band/news")
            assert [i["id"] for i in items["pubsub"]["items"]] == ["i1", "i2", "i3"]
            one = await fan.pubsub.get_items(service, "band/news", item_ids=["i2"])
            assert [i["id"] for i in one["pubsub"]["items"]] == ["i2"]

            await owner.pubsub.retract(service, "band/news", "i3", notify=True)
            assert "retract" in (await fan.next_tune())[1]
            # A site's HTTP publish reaches the XMPP subscriber: one subscription graph.
            token = server.ctl("api-token", "--scope", "publish").stdout.strip().splitlines()[-1]
            status, answer = await asyncio.to_thread(
                http_post, server, "/api/publish/band/news?type=news", b'{"title": "Live"}',
                token)
            assert status == 200 and answer["reached"] == 1
            sender, xml = await fan.next_tune()
            assert sender == service and "Live" in xml

            # The XMPP subscriber is a follower the site's channel info counts.
            status, info = await asyncio.to_thread(http_get_json, server,
                                                   "/api/subjects/band/news", token)
            assert (status, info["subscribers"], info["online_subscribers"]) == (200, 1, 1)
            await owner.pubsub.purge(service, "band/news")
            assert "purge" in (await fan.next_tune())[1]
            assert list((await fan.pubsub.get_items(service, "band/news"))["pubsub"]["items"]) == []
            await owner.pubsub.delete_node(service, "band/news")
            assert "delete" in (await fan.next_tune())[1]
            status, info = await asyncio.to_thread(http_get_json, server,
                                                   "/api/subjects/band/news", token)
            assert info["subscribers"] == 0
        finally:
            owner.disconnect()
            fan.disconnect()

    run(scenario())


def test_slixmpp_whitelist_denial_and_authorize_approval(server):
    service = "pubsub.localhost"

    async def scenario() -> None:
        owner, fan = await connected(server, "owner"), await connected(server, "fan")
        stranger = await connected(server, "stranger")
        try:
            await owner.pubsub.create_node(service, "club/inner", config=node_config(
                owner, access_model="whitelist"))
            with pytest.raises(IqError) as denied:
                await stranger.pubsub.subscribe(service, "club/inner")
            assert denied.value.iq["error"]["condition"] == "not-allowed"
            assert denied.value.iq.xml.find(f".//{{{NS_ERRORS}}}closed-node") is not None
            await owner.pubsub.modify_affiliations(service, "club/inner",
                                                   [("fan@localhost", "member")])
            await fan.pubsub.subscribe(service, "club/inner")

            await owner.pubsub.create_node(service, "club/door", config=node_config(
                owner, access_model="authorize"))
            answer = await stranger.pubsub.subscribe(service, "club/door")
            assert answer["pubsub"]["subscription"]["subscription"] == "pending"
            await owner.answer_request(allow=True)
            sender, xml = await stranger.next_tune()
            assert sender == service and "subscribed" in xml
            await owner.pubsub.publish(service, "club/door", id="w", payload=entry("welcome"))
            assert "welcome" in (await stranger.next_tune())[1]
            subscriptions = await owner.pubsub.get_node_subscriptions(service, "club/door")
            assert [s["jid"].bare for s in
                    subscriptions["pubsub_owner"]["subscriptions"]] == ["stranger@localhost"]
            # The site manages every node through the HTTP API (an admin token).
            token = server.ctl("api-token", "--scope", "admin").stdout.strip().splitlines()[-1]
            status, answer = await asyncio.to_thread(
                http_post, server, "/api/delete_node", b'{"topic": "club/door"}', token)
            assert (status, answer) == (200, {"result": None})
            assert "delete" in (await stranger.next_tune())[1]
            status, answer = await asyncio.to_thread(http_post, server, "/api/list_nodes",
                                                     b"{}", token)
            assert answer == {"result": {"club/inner": "owner@localhost"}}
        finally:
            for client in (owner, fan, stranger):
                client.disconnect()

    run(scenario())


def http_post(server, path: str, body: bytes, token: str) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", server.ports["webadmin"], timeout=20)
    try:
        connection.request("POST", path, body=body, headers={"Authorization": f"Bearer {token}"})
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        connection.close()


def http_get_json(server, path: str, token: str) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", server.ports["webadmin"], timeout=20)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        connection.close()


# --- the core's nodes on each store backend ---------------------------------------------------

@pytest.mark.parametrize("store", ["embedded", "redis"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_nodes_are_kept_in_the_store_on_every_backend(store, tmp_path):
    from presenced import config
    from presenced.core import Core
    from presenced.pep import PepError

    settings = config.load(overrides={"server": {"data_dir": str(tmp_path / "data")}})
    core = Core(settings, store)
    await core.nodes.create("ann@localhost", "label/warp", {"pubsub#access_model": "authorize",
                                                          "pubsub#max_items": "2"})
    for item_id in "abc":
        await core.nodes.publish("ann@localhost", "label/warp", item_id, "<p xmlns='urn:x'/>")
    assert await core.nodes.subscribe("ben@localhost", "label/warp") == "pending"
    await core.nodes.set_affiliations(None, "label/warp", {"cat@localhost": "publisher"})

    again = Core(settings, store)  # another node, or after a restart: all from the store
    node = await again.nodes.get("label/warp")
    assert (node.owner, node.config.access_model, node.config.max_items) == (
        "ann@localhost", "authorize", 2)
    assert [i.item_id for i in node.items] == ["b", "c"]
    assert node.pending == ("ben@localhost",)
    assert node.affiliation("cat@localhost") == "publisher"
    assert await again.nodes.owners() == {"label/warp": "ann@localhost"}
    assert await again.nodes.awaiting("ann@localhost") == [("label/warp", "ben@localhost")]
    await again.nodes.delete(None, "label/warp")
    assert await core.nodes.get("label/warp") is None and await core.nodes.owners() == {}
    assert await core.nodes.awaiting("ann@localhost") == []
    with pytest.raises(PepError) as refused:
        await core.nodes.purge(None, "label/warp")
    assert refused.value.condition == "item-not-found"


@pytest.mark.parametrize("store", ["embedded", "redis"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_two_servers_changing_one_node_at_once_lose_no_change(store, tmp_path,
                                                                    monkeypatch):
    """Two cores on one store (two cluster nodes) each take turns of their own: their
    writes of the node's record are compare-and-set, the overtaken change made again."""
    from twisted.internet import defer

    from presenced import config, turns
    from presenced.core import Core
    from presenced.pep import PepError

    settings = config.load(overrides={"server": {"data_dir": str(tmp_path / "data")}})
    one, two = Core(settings, store), Core(settings, store)
    await one.nodes.create("ann@localhost", "label/race", {"pubsub#max_items": "50"})
    changes = []
    for i in range(30):
        core = (one, two)[i % 2]
        changes.append(core.nodes.set_affiliations(None, "label/race",
                                                   {f"u{i}@localhost": "publisher"}))
        changes.append(core.nodes.publish("ann@localhost", "label/race", f"item{i}",
                                          "<p xmlns='urn:x'/>"))
    await defer.gatherResults([defer.ensureDeferred(c) for c in changes])
    node = await two.nodes.get("label/race")
    assert dict(node.affiliations) == {f"u{i}@localhost": "publisher" for i in range(30)}
    assert sorted(i.item_id for i in node.items) == sorted(f"item{i}" for i in range(30))

    # A change overtaken every time gives up with a clear error.
    tries = []
    monkeypatch.setattr(turns, "MAX_ATTEMPTS", 5)
    monkeypatch.setattr(store.open_map("pubsub"), "compare_and_set",
                        lambda *args: tries.append(args) or defer.succeed(False))
    with pytest.raises(PepError) as busy:
        await one.nodes.configure(None, "label/race", {"pubsub#title": "t"})
    assert busy.value.condition == "resource-constraint" and len(tries) == 5


@pytest_twisted.ensureDeferred
async def test_pipelined_publishes_are_all_kept_and_removed_owners_take_their_nodes(
        memory_xmpp):
    node, (alice, bob) = await two_users(memory_xmpp)
    await alice.iq(pubsub("set", "<create node='feed/x'/><configure>"
                                 + config_form(max_items="10") + "</configure>"))
    await bob.iq(pubsub("set", "<subscribe node='feed/x' jid='bob@localhost'/>"))
    # Sent at once, answered as the store writes: each change of the node waits its turn.
    sent = [publish("feed/x", str(n)) for n in range(6)]
    alice.send("".join(sent))
    for n in range(6):
        await alice.expect(lambda s, n=n: s.name == "iq" and s.getAttribute("type") == "result"
                           and f"id='{n}'" in s.toXml().replace('"', "'"))
    items = await alice.iq(pubsub("get", "<items node='feed/x'/>"))
    assert sorted(i["id"] for i in items.pubsub.items.elements()) == [str(n) for n in range(6)]

    await node.core.accounts.remove("alice@localhost")
    note = await bob.expect(lambda s: is_event(s) and "delete" in s.toXml())
    assert note.event.delete["node"] == "feed/x"
    assert await node.core.nodes.owners() == {}
    assert await node.core.store.get_subscribers("feed/x") == []


@pytest_twisted.ensureDeferred
async def test_users_create_nodes_only_in_the_configured_kinds(memory_xmpp):
    node, (alice, bob) = await two_users(
        memory_xmpp, sections={"server": {"pubsub_create_kinds": ["club"]}})
    assert (await alice.iq(pubsub("set", "<create node='club/chess'/>")))["type"] == "result"
    for request in (pubsub("set", "<create node='artist/radiohead'/>"),
                    publish("artist/radiohead", "1")):
        assert conditions(await alice.iq(request)) == ("forbidden", "")
    # The site creates any kind.
    await node.core.nodes.create("bob@localhost", "artist/radiohead", by_site=True)
    assert await node.core.nodes.owners() == {"club/chess": "alice@localhost",
                                              "artist/radiohead": "bob@localhost"}


@pytest_twisted.ensureDeferred
async def test_pending_approvals_are_bounded_per_node(memory_xmpp, monkeypatch):
    from presenced import topicnodes
    from presenced.pep import PepError

    monkeypatch.setattr(topicnodes, "MAX_PENDING", 2)
    node = await memory_xmpp()
    nodes = node.core.nodes
    await nodes.create("ann@localhost", "vip/x", {"pubsub#access_model": "authorize"})
    for user in ("a@localhost", "b@localhost", "a@localhost"):  # asking again adds nothing
        assert await nodes.subscribe(user, "vip/x") == "pending"
    with pytest.raises(PepError) as refused:
        await nodes.subscribe("c@localhost", "vip/x")
    assert refused.value.condition == "resource-constraint"
    assert (await nodes.get("vip/x")).pending == ("a@localhost", "b@localhost")
    # At login the owner is asked again about a bounded number of them.
    assert await nodes.awaiting("ann@localhost", limit=1) == [("vip/x", "a@localhost")]


def publish_options(client: PubsubClient, **fields) -> object:
    return submitted_form(client, "publish-options", **fields)


def test_slixmpp_default_config_offline_owner_set_subscriptions_publish_options(server):
    service = "pubsub.localhost"

    async def scenario() -> None:
        owner, stranger = await connected(server, "owner"), await connected(server, "stranger")
        try:
            default = await owner.pubsub.get_node_config(service)  # node None: the default
            fields = {f.get("var"): f.findtext(f"{{{NS_DATA}}}value") for f in
                      default.xml.iterfind(f".//{{{NS_DATA}}}field")}
            assert fields["pubsub#access_model"] == "open"
            assert fields["pubsub#max_items"] == "10"

            await owner.pubsub.create_node(service, "club/later", config=node_config(
                owner, access_model="authorize"))
            owner.disconnect()
            await asyncio.wait_for(owner.disconnected, TIMEOUT)
            answer = await stranger.pubsub.subscribe(service, "club/later")
            assert answer["pubsub"]["subscription"]["subscription"] == "pending"
            owner = await connected(server, "owner")  # asked at login
            request = await asyncio.wait_for(owner.requests.get(), TIMEOUT)
            values = request["form"].get_values()
            assert (values["pubsub#node"], str(values["pubsub#subscriber_jid"])) == (
                "club/later", "stranger@localhost")
            await owner.pubsub.modify_subscriptions(service, "club/later",
                                                    [("stranger@localhost", "subscribed")])
            sender, xml = await stranger.next_tune()
            assert sender == service and "subscribed" in xml

            await owner.pubsub.publish(service, "club/opts", id="1", payload=entry("one"),
                                       options=publish_options(owner, access_model="whitelist"))
            with pytest.raises(IqError) as refused:
                await owner.pubsub.publish(service, "club/opts", id="2", payload=entry("two"),
                                           options=publish_options(owner, access_model="open"))
            assert refused.value.iq["error"]["condition"] == "conflict"
            assert refused.value.iq.xml.find(f".//{{{NS_ERRORS}}}precondition-not-met") \
                is not None
        finally:
            owner.disconnect()
            stranger.disconnect()

    run(scenario())

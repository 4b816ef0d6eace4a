"""The rules behind the modern IM features, without a server: which messages carbons copy,
what a blocklist matches and hides, what CSI collapses, how PEP nodes keep items."""

from __future__ import annotations

import json

import pytest
from twisted.internet import defer

from presenced import events
from presenced.blocking import BLOCKLIST, Blocklists, matches
from presenced.events import Event
from presenced.pep import MAX_ITEMS, NodeConfig, PepError, PepItem, PepNode
from presenced.router import SubscriptionRouter
from presenced.xmpp.carbons import eligible
from presenced.xmpp.stanzas import forwardable as _as_forwarded
from presenced.xmpp.csi import _key


@pytest.mark.parametrize("data, kind, copied", [
    (b"<message type='chat'><body>hi</body></message>", "chat", True),
    (b"<message type='chat'><composing xmlns='http://jabber.org/protocol/chatstates'/>"
     b"</message>", "chat", True),
    (b"<message><body>hi</body></message>", "normal", True),
    (b"<message><subject>s</subject></message>", "normal", False),
    (b"<message type='headline'><body>news</body></message>", "headline", False),
    (b"<message type='groupchat'><body>x</body></message>", "groupchat", False),
    (b"<message type='chat'><body>x</body><private xmlns='urn:xmpp:carbons:2'/></message>",
     "chat", False),
    (b"<message type='chat'><body>x</body><no-copy xmlns='urn:xmpp:hints'/></message>",
     "chat", False),
    (b"<message type='chat'><received xmlns='urn:xmpp:carbons:2'/></message>", "chat", False),
])
def test_carbons_copy_only_eligible_messages(data, kind, copied):
    assert eligible(data, kind) is copied


def test_a_forwarded_message_gets_its_namespace_once():
    assert _as_forwarded(b"<message to='a'/>") == b"<message xmlns='jabber:client' to='a'/>"
    already = b"<message xmlns='jabber:client' to='a'/>"
    assert _as_forwarded(already) == already


def test_blocklist_items_match_bare_full_and_domain():
    blocked = frozenset({"mallory@evil.example", "spam.example", "eve@x/phone"})
    assert matches(blocked, "mallory@evil.example")
    assert matches(blocked, "mallory@evil.example/any")
    assert matches(blocked, "anyone@spam.example/r")
    assert matches(blocked, "eve@x/phone")
    assert not matches(blocked, "eve@x/laptop")
    assert not matches(blocked, "bob@evil.example")


class Session:
    protocol = "xmpp"

    def __init__(self, user: str):
        self.user = user
        self.got: list[Event] = []

    def deliver(self, event: Event) -> None:
        self.got.append(event)


class EmptyMaps:
    """A store whose capability maps are empty (the blocklists read one on login)."""

    def open_map(self, name: str) -> "EmptyMaps":
        return self

    def items(self, user: str):
        return defer.succeed({})


def test_the_router_drops_events_from_blocked_senders_and_hides_broadcasts():
    router = SubscriptionRouter(store=None)
    lists = Blocklists(store=EmptyMaps(), router=router, max_items=10)
    alice = Session("alice@x")
    router.login("alice@x", alice)
    lists.changed("alice@x", {"mallory@x"})
    router.deliver_local("alice@x", Event(events.MESSAGE, "mallory@x", {"to": "alice@x"}))
    router.deliver_local("alice@x", Event(events.ROSTER, "mallory@x", {"to": "alice@x"}))
    router.deliver_local("alice@x", Event(events.MESSAGE, "bob@x", {"to": "alice@x"}))
    assert [(e.type, e.sender) for e in alice.got] == [(events.ROSTER, "mallory@x"),
                                                       (events.MESSAGE, "bob@x")]
    assert lists.visible_recipients("alice@x", ["alice@x", "mallory@x", "bob@x"]) == [
        "alice@x", "bob@x"]
    assert lists.hides("mallory@x", "alice@x") and lists.hides("alice@x", "mallory@x/r")
    # A change made on another node arrives as a BLOCKLIST event and replaces this copy.
    router.deliver_local("alice@x", Event(BLOCKLIST, "alice@x", {
        "items": [], "block": [], "unblock": ["mallory@x"]}))
    assert not lists.hides("alice@x", "mallory@x")
    router.logout(alice)
    assert lists.lists == {}


def test_csi_collapses_presence_per_resource_and_pep_per_item():
    first = Event(events.PRESENCE, "bob@x", {"resource": "a", "available": True})
    second = Event(events.PRESENCE, "bob@x", {"resource": "a", "available": False})
    other = Event(events.PRESENCE, "bob@x", {"resource": "b", "available": True})
    assert _key(first) == _key(second) != _key(other)
    assert _key(Event(events.PEP, "bob@x", {"node": "n", "item_id": "1"})) != \
        _key(Event(events.PEP, "bob@x", {"node": "n", "item_id": "2"}))
    assert _key(Event(events.MESSAGE, "bob@x", {"to": "alice@x"})) is None


def test_node_configuration_from_publish_options():
    config = NodeConfig.from_fields({"pubsub#access_model": "whitelist",
                                     "pubsub#max_items": "max",
                                     "pubsub#send_last_published_item": "never"})
    assert (config.access_model, config.max_items) == ("whitelist", MAX_ITEMS)
    assert config.differs({"pubsub#access_model": "whitelist"}) is None
    assert config.differs({"pubsub#access_model": "presence"}) == "pubsub#access_model"
    with pytest.raises(PepError) as bad:
        NodeConfig.from_fields({"pubsub#access_model": "authorize"})
    assert bad.value.condition == "not-acceptable"
    assert NodeConfig.from_fields({"pubsub#max_items": "100000"}).max_items == MAX_ITEMS


def test_nodes_keep_items_in_order_and_read_what_releases_before_stored():
    node = PepNode(NodeConfig(max_items=2))
    for item_id in ("a", "b", "a", "c"):
        node = node.with_item(PepItem(item_id, f"<x>{item_id}</x>"))
    assert [i.item_id for i in node.items] == ["a", "c"]
    assert PepNode.decode(node.encode()) == node
    legacy = json.dumps(["current", "<tune/>"])
    assert PepNode.decode(legacy) == PepNode(NodeConfig(), (PepItem("current", "<tune/>"),))
    assert PepNode.decode(legacy).encode() == legacy  # defaults keep the old layout
    with pytest.raises(PepError):
        PepNode(NodeConfig(max_items=5)).with_item(PepItem("big", "x" * 300000))


def test_a_stanza_id_is_stamped_with_its_attributes_escaped():
    """The stamp is built from bytes, not an element: the owner's JID (kept escaped per
    owner) and an id that is not digits are escaped; a message without children opens."""
    from presenced.xmpp.stanzas import with_stanza_id

    chat = b"<message to='b@x' type='chat'><body>hi</body></message>"
    assert with_stanza_id(chat, "o'b@x", "17") == (
        b"<message to='b@x' type='chat'><body>hi</body>"
        b"<stanza-id xmlns='urn:xmpp:sid:0' by='o&apos;b@x' id='17'/></message>")
    assert with_stanza_id(b"<message to='b@x'/>", "b@x", "1<2&'") == (
        b"<message to='b@x'><stanza-id xmlns='urn:xmpp:sid:0' by='b@x' "
        b"id='1&lt;2&amp;&apos;'/></message>")
    assert with_stanza_id(chat, "b@x", None) is chat

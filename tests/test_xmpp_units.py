"""The c2s door's input checks in memory: the stanza parser's limits, addresses, and a stream
on a StringTransport logged in through a stand-in external auth (no process, no store)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.testing import StringTransport

from presenced import config
from presenced.core import Core
from presenced.xmpp.parser import PolicyViolation, StanzaParser
from presenced.xmpp.server import C2SFactory, C2SServer
from presenced.xmpp.service import FEATURES
from presenced.xmpp.stanzas import parse_address

HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
PLAIN = b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>" % (
    base64.b64encode(b"\0alice\0pw"))


class ExternalAuth:
    """Answers ``auth`` with whatever the test fires on ``pending``."""

    def __init__(self) -> None:
        self.pending: list[defer.Deferred] = []

    def request(self, *args: str) -> defer.Deferred:
        d = defer.Deferred()
        self.pending.append(d)
        return d


@pytest.fixture
def c2s(tmp_path: Path):
    cfg = config.load(None, {"server": {"data_dir": str(tmp_path)},
                             "xmpp": {"require_tls": False, "allow_plain": True}})
    auth = ExternalAuth()
    server = C2SServer(Core(cfg, store=None, external_auth=auth), None,  # type: ignore[arg-type]
                       FEATURES)
    return server, auth


def open_stream(server: C2SServer):
    stream = C2SFactory(server).buildProtocol(None)
    transport = StringTransport()
    stream.makeConnection(transport)
    stream.dataReceived(HEADER)
    return stream, transport


def bound_stream(server: C2SServer, auth: ExternalAuth):
    stream, transport = open_stream(server)
    stream.dataReceived(PLAIN)
    auth.pending.pop().callback(True)
    stream.dataReceived(HEADER + b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:"
                        b"xmpp-bind'><resource>r</resource></bind></iq>")
    assert b"<jid>alice@localhost/r</jid>" in transport.value()
    transport.clear()
    return stream, transport


# --- addresses ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "@localhost", "alice@localhost/", "/r",
                                  "a" * 3000 + "@localhost", "alice@localhost/" + "r" * 5000,
                                  "\u00e9" * 600 + "@localhost"],
                         ids=["empty", "no-local", "no-resource", "no-domain", "long-local",
                              "long-resource", "long-utf8-local"])
def test_addresses_with_empty_or_oversized_parts_are_refused(text):
    with pytest.raises(ValueError):
        parse_address(text)


def test_parts_up_to_1023_bytes_are_addresses():
    address = parse_address("a" * 1023 + "@localhost/" + "r" * 1023)
    assert len(address.resource) == 1023 and address.domain == "localhost"


def test_parsed_addresses_are_cached_within_a_bound_and_refusals_never():
    from presenced.xmpp import stanzas

    first = parse_address("Alice@LocalHost/r")
    assert parse_address("Alice@LocalHost/r") is first and first.bare == "alice@localhost"
    for i in range(stanzas.ADDRESS_CACHE_SIZE + 10):
        parse_address(f"u{i}@localhost")
    assert len(stanzas._addresses) <= stanzas.ADDRESS_CACHE_SIZE
    for _ in range(2):
        with pytest.raises(ValueError):
            parse_address("@localhost")
    assert "@localhost" not in stanzas._addresses


def test_bind_refuses_a_resource_over_1023_bytes(c2s):
    server, _ = c2s
    with pytest.raises(ValueError):
        server.choose_resource("alice@localhost", "r" * 5000)


# --- the parser --------------------------------------------------------------------------------

def stanza_parser(max_stanza_size: int = 65536) -> StanzaParser:
    parser = StanzaParser(max_stanza_size)
    parser.DocumentStartEvent = parser.ElementEvent = parser.DocumentEndEvent = \
        lambda *args: None
    parser.parse(HEADER)
    return parser


def test_namespace_declarations_count_as_attributes():
    parser = stanza_parser(10 * 1024 * 1024)
    declarations = " ".join(f"xmlns:p{n}='urn:x:{n}'" for n in range(10000))
    with pytest.raises(PolicyViolation, match="attributes"):
        parser.parse(f"<message {declarations}/>".encode())
    parser = stanza_parser()
    parser.parse(b"<message xmlns:a='urn:a' xmlns:b='urn:b' to='x'><a:x b:y='1'/></message>")


def test_whitespace_keepalives_between_stanzas_are_not_counted():
    parser = stanza_parser(max_stanza_size=1000)
    parser.parse(b"<presence/>")
    for _ in range(100):
        parser.parse(b" " * 100)
    parser.parse(b"<presence/>")
    with pytest.raises(PolicyViolation):
        parser.parse(b"<message>" + b"x" * 2000 + b"</message>")


# --- stanzas from a bound resource ---------------------------------------------------------------

@pytest.mark.parametrize("stanza, condition", [
    (b"<iq type='set' id='1'><query xmlns='jabber:iq:roster'><item/></query></iq>",
     b"jid-malformed"),
    (b"<iq type='set' id='1'><query xmlns='jabber:iq:roster'><item jid=''/></query></iq>",
     b"jid-malformed"),
    (b"<presence type='subscribe' to=''/>", b"jid-malformed"),
    (b"<message to='@localhost'><body>x</body></message>", b"jid-malformed"),
], ids=["roster-item", "roster-item-empty-jid", "subscribe-empty-to", "message-empty-local"])
def test_empty_addresses_are_jid_malformed_not_internal_errors(c2s, logged_errors, stanza,
                                                               condition):
    stream, transport = bound_stream(*c2s)
    stream.dataReceived(stanza)
    assert condition in transport.value()
    assert b"internal-server-error" not in transport.value()
    assert logged_errors == []


def test_a_sasl_answer_after_the_client_left_is_dropped_quietly(c2s, logged_errors):
    server, auth = c2s
    stream, transport = open_stream(server)
    stream.dataReceived(PLAIN)
    stream.connectionLost(None)
    transport.clear()
    auth.pending.pop().callback(True)
    assert transport.value() == b""
    assert logged_errors == []

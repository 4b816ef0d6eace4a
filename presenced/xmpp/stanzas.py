"""Namespaces and small stanza helpers shared by the c2s modules (errors, replies, bytes)."""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Container, Optional
from xml.sax.saxutils import quoteattr

from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.protocols.jabber.jid import InvalidFormat, JID
from twisted.words.xish import domish

if TYPE_CHECKING:
    from presenced.events import Event

NS_CLIENT = "jabber:client"
NS_STREAMS = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_ROSTER = "jabber:iq:roster"
NS_ROSTERVER = "urn:xmpp:features:rosterver"
NS_PREAPPROVAL = "urn:xmpp:features:pre-approval"
NS_REGISTER = "jabber:iq:register"
NS_REGISTER_FEATURE = "http://jabber.org/features/iq-register"


NS_XML = "http://www.w3.org/XML/1998/namespace"
NS_SID = "urn:xmpp:sid:0"

# Plain lowercase ASCII JIDs are already in stringprep's canonical form: skip it.
_PLAIN_JID = re.compile(r"(?:([a-z0-9._+-]+)@)?([a-z0-9.-]+)(?:/([\x21-\x7e]{1,1023}))?\Z")


class Address:
    """A parsed ``to`` address: ``bare`` is user@domain or None, ``domain``, ``resource``.
    Shared between callers (:func:`parse_address` caches them): never changed once made."""

    __slots__ = ("bare", "domain", "resource", "full")

    def __init__(self, bare: Optional[str], domain: str, resource: Optional[str]):
        self.bare = bare
        self.domain = domain
        self.resource = resource
        self.full = f"{bare or domain}/{resource}" if resource else (bare or domain)


# RFC 7622 3: each of local part, domain part and resource is 1 to 1023 bytes.
MAX_JID_PART_BYTES = 1023


# Addresses parsed lately: a chat client sends to the same few JIDs again and again, and
# every stanza's ``to`` is parsed. Emptied when full (a bound, not a working set to keep).
ADDRESS_CACHE_SIZE = 4096
_addresses: dict[str, Address] = {}


def parse_address(text: str) -> Address:
    """Parse and normalise a JID; raises ValueError when it is not one (also for what
    Twisted's JID lets through: an empty address, ``@domain``, ``user@domain/``, a part
    over 1023 bytes), so no caller meets a JID with an empty part."""
    address = _addresses.get(text)
    if address is None:
        address = _parse_address(text)
        if len(_addresses) >= ADDRESS_CACHE_SIZE:
            _addresses.clear()
        _addresses[text] = address
    return address


def _parse_address(text: str) -> Address:
    match = _PLAIN_JID.match(text)
    if match is not None:
        local, domain, resource = match.groups()
    else:
        bare, slash, resource = text.partition("/")
        local, at, _ = bare.partition("@")
        if not text or (at and not local) or (slash and not resource):
            raise ValueError(f"{text!r} has an empty part")
        try:
            jid = JID(text)
        except (InvalidFormat, UnicodeError, RuntimeError) as e:
            raise ValueError(str(e)) from None
        local, domain, resource = jid.user, jid.host, jid.resource
    for part in (local, domain, resource):
        if part and len(part.encode("utf-8")) > MAX_JID_PART_BYTES:
            raise ValueError(f"a JID part is longer than {MAX_JID_PART_BYTES} bytes")
    return Address(f"{local}@{domain}" if local else None, domain, resource)


def to_bytes(element: domish.Element) -> bytes:
    """Serialise a stanza for a jabber:client stream (no redundant xmlns on the top).

    Routed stanzas are serialised once each, on the hot path: plain elements (default
    namespaces only, the usual case) take a direct serialiser about three times faster than
    domish's; anything with prefixes falls back to domish.
    """
    out: list[str] = []
    if _serialize(element, NS_CLIENT, out):
        return "".join(out).encode("utf-8")
    return element.toXml(defaultUri=NS_CLIENT).encode("utf-8")


def children_bytes(element: domish.Element) -> bytes:
    """The serialised children of a stanza (presence payloads)."""
    out: list[str] = []
    for child in element.children:
        if isinstance(child, str):
            out.append(_text(child))
        elif not _serialize(child, NS_CLIENT, out):
            return "".join(c.toXml(defaultUri=NS_CLIENT) if isinstance(c, domish.Element)
                           else _text(c) for c in element.children).encode("utf-8")
    return "".join(out).encode("utf-8")


def _text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _attr(value: str) -> str:
    return _text(value).replace("'", "&apos;")


def _serialize(element: domish.Element, parent_uri: str, out: list[str]) -> bool:
    uri = element.uri
    if uri is None or element.localPrefixes:
        return False
    name = element.name
    out.append("<" + name)
    if uri != parent_uri:
        out.append(f" xmlns='{_attr(uri)}'")
    for key, value in element.attributes.items():
        if key.__class__ is not str:
            if key[0] != NS_XML:
                return False
            key = "xml:" + key[1]
        out.append(f" {key}='{_attr(value)}'")
    children = element.children
    if not children:
        out.append("/>")
        return True
    out.append(">")
    for child in children:
        if child.__class__ is str:
            out.append(_text(child))
        elif isinstance(child, domish.SerializedXML):
            out.append(child)  # raw XML a handler added with addRawXml (stored PEP items)
        elif not _serialize(child, uri, out):
            return False
    out.append(f"</{name}>")
    return True


def attr(value: str) -> str:
    """An XML attribute value, quoted and escaped."""
    return quoteattr(value)


def error_reply(stanza: domish.Element, condition: str, text: Optional[str] = None,
                own_jid: Optional[str] = None) -> domish.Element:
    """The error stanza answering ``stanza`` (RFC 6120 8.3): swapped addresses, same id,
    original children kept for messages/presence as clients expect."""
    reply = StanzaError(condition, text=text).toResponse(stanza)
    if own_jid is not None and not reply.hasAttribute("from"):
        reply["from"] = own_jid
    return reply


def result_reply(iq: domish.Element, child: Optional[domish.Element] = None) -> domish.Element:
    """An ``<iq type='result'/>`` for ``iq``, optionally carrying ``child``."""
    reply = domish.Element((NS_CLIENT, "iq"))
    reply["type"] = "result"
    if iq.getAttribute("id") is not None:
        reply["id"] = iq["id"]
    if iq.getAttribute("to"):
        reply["from"] = iq["to"]
    if child is not None:
        reply.addChild(child)
    return reply


def forwardable(data: bytes) -> bytes:
    """A serialised message fit to be the child of ``<forwarded/>`` (XEP-0297, carbons and
    archives): it needs its own ``jabber:client`` namespace there (on the stream it inherits
    the default)."""
    head_end = data.index(b">")
    if b"xmlns=" in data[:head_end]:
        return data
    return b"<message xmlns='jabber:client'" + data[len(b"<message"):]


def forged_stanza_id(child, served: Container[str]) -> bool:
    """Whether ``child`` is a ``<stanza-id/>`` given ``by`` a JID on one of the ``served``
    domains: only the server stamps those (XEP-0359 4), so one a client sent is forged."""
    return (child.__class__ is not str and child.name == "stanza-id" and child.uri == NS_SID
            and (child.getAttribute("by") or "").partition("/")[0].rpartition("@")[2]
            in served)


@functools.lru_cache(maxsize=4096)
def _stanza_id_head(by: str) -> bytes:
    """``<stanza-id xmlns=... by='...' id='``: the same few owners stamp a burst of messages
    (two stamps a message), so their escaped JIDs are kept (a few hundred KB at most)."""
    return b"<stanza-id xmlns='" + NS_SID.encode() + b"' by='" + _attr(by).encode("utf-8") \
        + b"' id='"


def with_stanza_id(data: bytes, by: str, id_: Optional[str]) -> bytes:
    """A serialised message with the XEP-0359 ``<stanza-id/>`` that ``by`` (a bare JID: the
    archive's owner) gave it; ``data`` itself when there is no id."""
    if id_ is None:
        return data
    tag = (_stanza_id_head(by), (id_ if id_.isdigit() else _attr(id_)).encode("utf-8"),
           b"'/>")  # archive ids are digits: nothing to escape
    if data.endswith(b"</message>"):
        return b"".join((data[:-len(b"</message>")], *tag, b"</message>"))
    return b"".join((data[:-2], b">", *tag, b"</message>"))  # <message .../>


def message_bytes(event: "Event") -> bytes:
    """The XMPP form of a MESSAGE event: the client's stanza as sent, or one built from the
    fields another door gave (with the ``<stanza-id/>`` of the recipient's archive, when it
    keeps the message: ``archive_id``, see ``message-archiving`` in :mod:`presenced.core`)."""
    payload = event.payload
    data = payload.get("stanza")
    if data is None:
        message = domish.Element((NS_CLIENT, "message"))
        message["from"] = event.sender
        message["to"] = payload["to"]
        message["type"] = payload.get("kind") or "normal"
        for name in ("subject", "body", "thread"):
            if payload.get(name):
                message.addElement(name, content=payload[name])
        data = with_stanza_id(to_bytes(message), payload["to"].partition("/")[0],
                              payload.get("archive_id"))
    return data

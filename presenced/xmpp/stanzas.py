"""Namespaces and small stanza helpers shared by the c2s modules (errors, replies, bytes)."""

from __future__ import annotations

from typing import Optional
from xml.sax.saxutils import quoteattr

from twisted.words.protocols.jabber.error import StanzaError
from twisted.words.xish import domish

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


def to_bytes(element: domish.Element) -> bytes:
    """Serialise a stanza for a jabber:client stream (no redundant xmlns on the top)."""
    return element.toXml(defaultUri=NS_CLIENT).encode("utf-8")


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

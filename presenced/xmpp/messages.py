"""Message routing (RFC 6121 8) and offline storage (XEP-0160).

A message from a client to a bare JID goes through ``core.send_message`` (one path for every
door: Thrift ``spoof_message`` uses it too) carrying the stanza serialised once; each XMPP
resource that takes bare-JID messages (available, priority >= 0) writes those bytes. A
message that reaches no such resource is stored offline and delivered, with a ``<delay/>``
stamp, on the next available presence. Past ``[server] offline_limit`` stored messages the
sender's client gets a ``resource-constraint`` error; an XMPP sender's stanza counts as
being handled until its message is written, so a flooder's reading stops while its writes
wait (:mod:`presenced.xmpp.shaping`). Messages from other doors are stored through the
core's ``message-sent`` hook.

Before a client's message is delivered the archive may stamp it (the
``xmpp-message-archiving`` hook answers the ids the parties' archives give it): the copy
delivered, stored offline and carbon-copied to the recipient's resources carries the
recipient's ``<stanza-id/>`` (XEP-0359), the sent carbon the sender's. A ``<stanza-id/>`` a
client put in with ``by`` on a domain served here is forged: it is removed first.
"""

from __future__ import annotations

import time
from typing import Optional
from xml.parsers import expat

from twisted.internet import defer
from twisted.words.xish import domish

from presenced import events
from presenced.events import Event, RenderCache
from presenced.logs import RepeatLimiter
from presenced.store import OFFLINE_STORE
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.session import message_targets
from presenced.xmpp.stanzas import (attr, forged_stanza_id, message_bytes, parse_address,
                                    to_bytes, with_stanza_id)

OFFLINE_KINDS = ("normal", "chat")
NS_OFFLINE = "msgoffline"


def delayed(stanza: bytes, domain: str, when: float) -> str:
    """The stanza with an XEP-0203 ``<delay/>`` saying when the server received it."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    delay = f"<delay xmlns='urn:xmpp:delay' from={attr(domain)} stamp='{stamp}'/>"
    text = stanza.decode("utf-8")
    head, _, _ = text.rpartition("</message>")
    if not head:  # <message .../>: open it
        head = text[:-2] + ">"
    return head + delay + "</message>"


class _Found(Exception):
    """Stops the parse of a stanza at its first start tag."""


def message_type(stanza: bytes) -> Optional[str]:
    """The ``type`` of a serialised ``<message/>`` ("normal" when absent); None for any
    other stanza or unparsable bytes."""
    found: list[tuple[str, str]] = []

    def start(name: str, attributes: dict) -> None:
        found.append((name, attributes.get("type", "normal")))
        raise _Found

    parser = expat.ParserCreate()
    parser.StartElementHandler = start
    try:
        parser.Parse(stanza, True)
    except _Found:
        pass
    except expat.ExpatError:
        return None
    return found[0][1] if found and found[0][0] == "message" else None


class MessageHandler(FeatureHandler):
    routes = {"message/bare": "on_bare", "message/self": "on_bare",
              "message/full": "on_full"}
    event_renderers = {events.MESSAGE: "render"}
    server_features = (NS_OFFLINE,)

    def attached(self) -> None:
        self.core.hooks.add("message-sent", self.message_sent)
        self.wire = RenderCache(message_bytes)
        self.core.hooks.add("xmpp-initial-backlog", self.take_offline)
        self.core.hooks.add("xmpp-unacknowledged", self.keep_unacknowledged)
        self.repeats = RepeatLimiter()

    # --- from the client ---------------------------------------------------------------------

    def on_bare(self, session, message: domish.Element):
        attributes = message.attributes
        kind = attributes.get("type") or "normal"
        if kind == "error":
            return None
        to = attributes.get("to") or session.user
        if kind == "groupchat":
            session.error(message, "service-unavailable", "no group chat here")
            return None
        if self.core.router.is_online_anywhere(to):
            return self._send(session, message, to, kind)
        return self._send_to_offline(session, message, to, kind)

    @defer.inlineCallbacks
    def _send_to_offline(self, session, message, to, kind):
        exists = yield self.core.accounts.exists(to)
        if not exists:
            session.error(message, "service-unavailable")
        else:
            yield self._send(session, message, to, kind)

    def _send(self, session, message: domish.Element, to: str,
              kind: str) -> Optional[defer.Deferred]:
        """Deliver; a message nobody took is stored, and the Deferred of that write is
        returned so the stanza counts as being handled until it is done."""
        texts = {"body": None, "subject": None, "thread": None}
        forged = False
        for child in message.children:
            if child.__class__ is str:
                continue
            name = child.name
            if name in texts:
                first = child.children[0] if child.children else ""
                texts[name] = first if first.__class__ is str else str(child)
            elif name == "stanza-id":
                forged = True
        if forged:
            self._strip_forged(message)
        sent, stanza = self._stamped(session.user, to, to_bytes(message), kind, True)
        self.core.hooks.fire("xmpp-message-out", session, sent, kind)
        self.core.send_message(session.user, to, texts["body"], texts["subject"],
                               texts["thread"], kind, stanza=stanza)
        if not self._goes_offline(to, kind):
            return None
        d = defer.ensureDeferred(self._store(to, session.user, stanza, time.time()))
        d.addCallback(self._bounce_if_full, session, message, to)
        d.addErrback(self._store_failed, session, message, to)
        return d

    def _bounce_if_full(self, kept: bool, session, message: domish.Element, to: str) -> None:
        if not kept:
            session.error(message, "resource-constraint",
                          f"{to} has too many offline messages")

    def on_full(self, session, message: domish.Element):
        recipient = self.server.find_session(parse_address(message["to"]))
        if recipient is not None:
            self._strip_forged(message)
            kind = message.getAttribute("type") or "normal"
            sent, data = self._stamped(session.user, recipient.user, to_bytes(message), kind,
                                       False)
            recipient.write(data)
            self.server.events_out += 1
            hooks = self.core.hooks
            hooks.fire("xmpp-message-out", session, sent, kind)
            hooks.fire("xmpp-message-in", recipient, data, kind)
            return None
        if message.getAttribute("type") in (None, "normal", "chat", "headline"):
            message["to"] = message["to"].partition("/")[0]
            return self.on_bare(session, message)
        if message.getAttribute("type") == "groupchat":
            session.error(message, "service-unavailable")
        return None

    def _strip_forged(self, message: domish.Element) -> None:
        """Remove the ``<stanza-id/>`` elements a client claims this server gave (XEP-0359
        5: only the server stamps ids ``by`` its own JIDs)."""
        for child in message.children:
            if child.__class__ is not str and child.name == "stanza-id":
                domains = self.core.domains
                message.children = [c for c in message.children
                                    if not forged_stanza_id(c, domains)]
                return

    def _stamped(self, sender: str, to: str, stanza: bytes, kind: str,
                 refused_if_blocked: bool) -> tuple[bytes, bytes]:
        """The message as the sender's other resources see it (sent carbons) and as it is
        delivered, each with the id its party's archive gives it, if any. ``to`` is a bare
        JID; ``refused_if_blocked``: the archive still has to check that the recipient does
        not block the sender (a full-JID message passed the server's stanza filter)."""
        ids: dict[str, str] = {}
        for found in self.core.hooks.collect("xmpp-message-archiving", sender, to, stanza,
                                             kind, refused_if_blocked):
            ids.update(found)
        if not ids:
            return stanza, stanza
        return (with_stanza_id(stanza, sender, ids.get(sender)),
                with_stanza_id(stanza, to, ids.get(to)))

    # --- to the client -------------------------------------------------------------------------

    def render(self, session, event: Event) -> None:
        """A MESSAGE router event (to the bare JID) for one resource: headlines go to every
        available resource with a non-negative priority, chat and normal messages to the
        highest-priority ones among them (RFC 6121 8.5.2.1)."""
        if not session.available or session.priority < 0:
            self.core.hooks.fire("xmpp-message-passed-over", session, event)
            return
        if (event.payload.get("kind") != "headline"
                and len(self.core.router.sessions(session.user)) > 1):
            siblings = message_targets(self.core, session.user)
            if len(siblings) > 1 and session.priority < max(s.priority for s in siblings):
                self.core.hooks.fire("xmpp-message-passed-over", session, event)
                return
        session.write(self.wire(event))
        self.server.events_out += 1

    # --- offline storage ---------------------------------------------------------------------

    def _store_failed(self, failure, session, message: domish.Element, to: str) -> None:
        self._log_failure(failure, to)
        session.error(message, "internal-server-error", "the message could not be stored")

    def message_sent(self, event: Event, reached: int) -> None:
        """core.send_message's hook: keep a message from another door (an XMPP client's is
        kept by :meth:`_send`) if no XMPP resource could take it."""
        to = event.payload["to"]
        if event.payload.get("stanza") is not None:
            return
        if not self._goes_offline(to, event.payload.get("kind") or "normal"):
            return
        d = defer.ensureDeferred(self._store(to, event.sender, message_bytes(event),
                                             event.time))
        d.addErrback(lambda f: self._log_failure(f, to))

    def _goes_offline(self, to: str, kind: str) -> bool:
        """No XMPP resource here or on another node takes this message to ``to``."""
        if kind not in OFFLINE_KINDS or not self.core.is_local(to):
            return False
        return not (message_targets(self.core, to)
                    or self.core.router.transport.remote_nodes(to))

    async def _store(self, to: str, sender: str, stanza: bytes, when: float) -> bool:
        """Keep ``stanza`` for ``to``; False when the store of ``to`` is full (the message
        is not kept). Nothing is stored for a user that is no account, nor from a JID the
        user blocks (XEP-0191; True: nothing to say)."""
        if not await self.core.accounts.exists(to):
            return True
        if await self.core.blocking.blocks(to, sender):
            return True
        return await self._push(to, delayed(stanza, to.partition("@")[2], when))

    async def _push(self, to: str, stored: str) -> bool:
        kept = await self.core.store.open_list(OFFLINE_STORE).push(
            to, stored, self.core.config.server.offline_limit)
        if not kept:
            repeats = self.repeats.allow(("full", to))
            if repeats is not None:
                self.log.info("offline store of {to} is full: messages refused "
                              "({repeats} more since the last such line)", to=to,
                              repeats=repeats)
        return bool(kept)

    def _log_failure(self, failure, to: str) -> None:
        repeats = self.repeats.allow(("failed", failure.type))
        if repeats is not None:
            self.log.failure("storing an offline message for {to} ({repeats} more failures "
                             "since the last such line)", failure, to=to, repeats=repeats)

    def keep_unacknowledged(self, session, stanzas: list[tuple[bytes, float]]) -> None:
        """Stream management's ``xmpp-unacknowledged`` hook: chat and normal messages a
        session never acknowledged go offline for the user's next login, rather than being
        lost (and not to another resource: the client may have shown them)."""
        domain = session.user.partition("@")[2]
        kept = [data.decode("utf-8") if b"urn:xmpp:delay" in data  # was offline already
                else delayed(data, domain, when)
                for data, when in stanzas if message_type(data) in OFFLINE_KINDS]
        if kept:
            d = defer.ensureDeferred(self._keep_all(session.user, kept))
            d.addErrback(lambda f: self.log.failure(
                "storing unacknowledged messages for {to}", f, to=session.user))

    async def _keep_all(self, to: str, stanzas: list[str]) -> None:
        for stanza in stanzas:  # in order
            await self._push(to, stanza)

    def take_offline(self, session) -> defer.Deferred:
        """XEP-0160: the stored messages (deleted from the store) for a resource coming
        online with a non-negative priority; none for others."""
        if session.priority < 0:
            return defer.succeed([])
        return self.core.store.open_list(OFFLINE_STORE).pop_all(session.user)

"""Multi-User Chat (XEP-0045) on the conference component, with occupant ids (XEP-0421),
self-ping (XEP-0410) and room archives (XEP-0313). Direct invitations (XEP-0249) need
nothing here: they travel client to client as ordinary messages.

The rooms are the core's (``core.rooms``, :mod:`presenced.muc.service`): this handler turns
stanzas addressed to ``conference.<domain>`` into its calls and its router events
(``muc-presence``, ``muc-message``, ``muc-invite``) into stanzas. Every answer about a room
comes from the service; nothing about rooms is kept here.
"""

from __future__ import annotations

import presenced.wokkel_compat  # noqa: F401  (before any wokkel import)

from typing import Container, Optional
from xml.sax.saxutils import escape

from twisted.internet import defer
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish
from wokkel import data_form, disco

from presenced.events import Event, RenderCache
from presenced.muc.room import RoomConfig, RoomError
from presenced.muc.service import ROOM_INVITE, ROOM_MESSAGE, ROOM_PRESENCE, HistoryRequest
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.mam import (NS_MAM, BadQuery, Query, fin_element, form_element,
                                parse_time, stamp)
from presenced.xmpp.stanzas import NS_SID, Address, attr, children_bytes, forged_stanza_id

NS_MUC = "http://jabber.org/protocol/muc"
NS_USER = f"{NS_MUC}#user"
NS_ADMIN = f"{NS_MUC}#admin"
NS_OWNER = f"{NS_MUC}#owner"
NS_CONFIG = f"{NS_MUC}#roomconfig"
NS_ROOMINFO = f"{NS_MUC}#roominfo"
NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"
NS_PING = "urn:xmpp:ping"
NS_DELAY = "urn:xmpp:delay"
_DROPPED = frozenset((NS_MUC, NS_USER, NS_OCCUPANT_ID))  # never relayed as a client sent them

# The owner's form: field -> (RoomConfig attribute, data form type, label).
CONFIG_FIELDS = {
    "muc#roomconfig_roomname": ("name", "text-single", "Name"),
    "muc#roomconfig_roomdesc": ("description", "text-single", "Description"),
    "muc#roomconfig_persistentroom": ("persistent", "boolean", "Persistent"),
    "muc#roomconfig_publicroom": ("public", "boolean", "Listed in the directory"),
    "muc#roomconfig_membersonly": ("members_only", "boolean", "Members only"),
    "muc#roomconfig_passwordprotectedroom": (None, "boolean", "Password protected"),
    "muc#roomconfig_roomsecret": ("password", "text-private", "Password"),
    "muc#roomconfig_moderatedroom": ("moderated", "boolean", "Moderated"),
    "muc#roomconfig_maxusers": ("max_occupants", "text-single", "Maximum occupants"),
    "muc#roomconfig_whois": ("whois", "list-single", "Who may see real JIDs"),
    "muc#roomconfig_historylength": ("history_length", "text-single", "History length"),
    "muc#roomconfig_changesubject": ("change_subject", "boolean",
                                      "Participants may change the subject"),
}


def _relayed(element: domish.Element, served: Container[str]) -> bytes:
    """The children of a client's stanza the room passes on: not the MUC protocol's own, nor
    a ``<stanza-id/>`` claiming to be ``by`` one of the ``served`` domains (forged: only the
    room stamps its messages, XEP-0359 4)."""
    kept = domish.Element((element.uri, element.name))
    for child in element.elements():
        if child.uri not in _DROPPED and not forged_stanza_id(child, served):
            kept.addChild(child)
    return children_bytes(kept)


def _child(element: domish.Element, uri: str, name: str) -> Optional[domish.Element]:
    for child in element.elements(uri, name):
        return child
    return None


class MucHandler(FeatureHandler):
    event_renderers = {ROOM_PRESENCE: "render_presence", ROOM_MESSAGE: "render_message",
                       ROOM_INVITE: "render_invite"}

    def service_domains(self) -> tuple[str, ...]:
        rooms = self.core.rooms
        return (rooms.domain,) if rooms.enabled else ()

    def attached(self) -> None:
        self.rooms = self.core.rooms
        self.messages = RenderCache(self._message_parts)
        self.served = frozenset(self.core.domains + (self.rooms.domain,))
        self.core.hooks.add("xmpp-session-ended", self._gone)
        self.core.hooks.add("xmpp-unavailable", lambda session, status: self._gone(session))

    def getDiscoItems(self, requestor, target, nodeIdentifier=""):
        if (nodeIdentifier or target.user or target.host not in self.server.domains
                or not self.rooms.enabled):
            return []
        return [disco.DiscoItem(JID(self.rooms.domain), name="Chatrooms")]

    def _gone(self, session) -> None:
        self.rooms.leave_everywhere(session.full)

    # --- stanzas in --------------------------------------------------------------------------

    def on_service_stanza(self, session, stanza: domish.Element,
                          address: Address) -> defer.Deferred:
        return defer.ensureDeferred(self._serve(session, stanza, address))

    async def _serve(self, session, stanza: domish.Element, address: Address) -> None:
        try:
            if stanza.name == "presence":
                await self._presence(session, stanza, address)
            elif stanza.name == "message":
                await self._message(session, stanza, address)
            else:
                await self._iq(session, stanza, address)
        except RoomError as e:
            session.error(stanza, e.condition, e.text)

    async def _presence(self, session, presence: domish.Element, address: Address) -> None:
        kind = presence.getAttribute("type")
        if kind not in (None, "unavailable"):
            return  # subscriptions and bounces: a room has no roster
        if address.bare is None:
            if kind is None:
                raise RoomError("item-not-found", "join a room as room@service/nick")
            return
        if kind == "unavailable":
            await self.rooms.leave(address.bare, session.full, _relayed(presence, self.served))
            return
        if address.resource is None:
            raise RoomError("jid-malformed", "join a room as room@service/nick")
        password, history = None, None
        join = _child(presence, NS_MUC, "x")
        if join is not None:
            secret = _child(join, NS_MUC, "password")
            password = str(secret) if secret is not None else None
            history = self._history(_child(join, NS_MUC, "history"))
        await self.rooms.join(address.bare, address.resource, session.full,
                              _relayed(presence, self.served), password, history)

    @staticmethod
    def _history(element: Optional[domish.Element]) -> Optional[HistoryRequest]:
        if element is None:
            return None
        try:
            stanzas = element.getAttribute("maxstanzas")
            seconds = element.getAttribute("seconds")
            since = element.getAttribute("since")
            return HistoryRequest(
                int(stanzas) if stanzas is not None else None,
                float(seconds) if seconds is not None else None,
                parse_time(since) if since else None)
        except ValueError:
            raise RoomError("bad-request", "history needs numbers and an XEP-0082 date")

    async def _message(self, session, message: domish.Element, address: Address) -> None:
        kind = message.getAttribute("type", "normal")
        if kind == "error" or address.bare is None:
            return
        body = _child(message, message.uri, "body")
        text = str(body) if body is not None else None
        if address.resource is not None:
            if kind == "groupchat":
                raise RoomError("bad-request", "groupchat goes to the room's bare JID")
            await self.rooms.whisper(address.bare, session.full, address.resource, text,
                                     _relayed(message, self.served),
                                     message.getAttribute("id"))
            return
        if kind == "groupchat":
            subject = _child(message, message.uri, "subject")
            await self.rooms.say(address.bare, session.full, text,
                                 _relayed(message, self.served),
                                 message.getAttribute("id"),
                                 str(subject) if subject is not None and body is None
                                 else None)
            return
        user = _child(message, NS_USER, "x")
        invites = list(user.elements(NS_USER, "invite")) if user is not None else []
        if not invites:
            raise RoomError("bad-request", "send groupchat messages or invitations")
        for invite in invites:
            reason = _child(invite, NS_USER, "reason")
            await self.rooms.invite(address.bare, session.full, invite.getAttribute("to", ""),
                                    str(reason) if reason is not None else "")

    async def _iq(self, session, iq: domish.Element, address: Address) -> None:
        kind = iq.getAttribute("type")
        child = iq.firstChildElement()
        if kind not in ("get", "set") or child is None:
            return  # results and errors for a room: nothing asked them
        query = (kind, child.uri, child.name)
        if query == ("get", NS_PING, "ping"):
            if address.resource is not None and \
                    not await self.rooms.is_occupant(address.bare, session.full):
                raise RoomError("not-acceptable", "you are not in this room")  # XEP-0410
            session.result(iq)
        elif query == ("get", disco.NS_DISCO_INFO, "query") and address.resource is None:
            session.result(iq, await self._disco_info(address, child.getAttribute("node")))
        elif query == ("get", disco.NS_DISCO_ITEMS, "query") and address.resource is None:
            session.result(iq, await self._disco_items(address))
        elif address.bare is not None and address.resource is None and child.uri == NS_ADMIN:
            await self._admin(session, iq, child, address.bare)
        elif address.bare is not None and address.resource is None and child.uri == NS_OWNER:
            await self._owner(session, iq, child, address.bare)
        elif query == ("set", NS_MAM, "query") and address.bare is not None and \
                address.resource is None:
            await self._archive(session, iq, child, address.bare)
        elif query == ("get", NS_MAM, "query") and address.bare is not None and \
                self.rooms.archive_seconds:
            session.result(iq, form_element())
        else:
            session.error(iq, "service-unavailable")

    # --- disco -------------------------------------------------------------------------------

    async def _disco_info(self, address: Address, node: Optional[str]) -> domish.Element:
        info = disco.DiscoInfo()
        if node:
            raise RoomError("item-not-found", "no such node")
        if address.bare is None:
            info.append(disco.DiscoIdentity("conference", "text", "Chatrooms"))
            for feature in (disco.NS_DISCO_INFO, disco.NS_DISCO_ITEMS, NS_MUC, NS_PING,
                            NS_OCCUPANT_ID):
                info.append(disco.DiscoFeature(feature))
            return info.toElement()
        room = await self.rooms.describe(address.bare)
        config = room["config"]
        info.append(disco.DiscoIdentity("conference", "text", config.name or address.bare))
        flags = (("muc_public", "muc_hidden", config.public),
                 ("muc_persistent", "muc_temporary", config.persistent),
                 ("muc_membersonly", "muc_open", config.members_only),
                 ("muc_moderated", "muc_unmoderated", config.moderated),
                 ("muc_passwordprotected", "muc_unsecured", bool(config.password)),
                 ("muc_nonanonymous", "muc_semianonymous", config.whois == "anyone"))
        archive = (NS_MAM, NS_SID) if self.rooms.archive_seconds else ()
        for feature in (disco.NS_DISCO_INFO, NS_MUC, NS_PING, NS_OCCUPANT_ID) + archive + tuple(
                yes if on else no for yes, no, on in flags):
            info.append(disco.DiscoFeature(feature))
        form = data_form.Form("result", formNamespace=NS_ROOMINFO)
        form.addField(data_form.Field(var="muc#roominfo_description",
                                      value=config.description))
        form.addField(data_form.Field(var="muc#roominfo_subject", value=room["subject"]))
        form.addField(data_form.Field(var="muc#roominfo_occupants",
                                      value=str(len(room["occupants"]))))
        info.append(form)
        return info.toElement()

    async def _disco_items(self, address: Address) -> domish.Element:
        items = disco.DiscoItems()
        if address.bare is None:
            for room in await self.rooms.list_rooms(public_only=True):
                items.append(disco.DiscoItem(JID(room["jid"]), name=room["name"] or None))
        else:
            await self.rooms.describe(address.bare)  # occupants stay private: an empty list
        return items.toElement()

    # --- XEP-0313: the room's archive ----------------------------------------------------------

    async def _archive(self, session, iq: domish.Element, query: domish.Element,
                       room: str) -> None:
        try:
            asked = Query.from_element(query)
        except BadQuery as e:
            raise RoomError("bad-request", str(e))
        if asked.with_ is not None:
            raise RoomError("bad-request", "a room archive is not filtered by 'with'")
        try:
            page, said = await self.rooms.archived(
                room, session.full, asked.after_id, asked.before_id, asked.start, asked.end,
                asked.limit, asked.last)
        except ValueError:
            raise RoomError("item-not-found", "no such archive id")
        queryid = query.getAttribute("queryid")
        head = b"<message from=%s to=%s><result xmlns='%s'%s" % (
            attr(room).encode(), attr(session.full).encode(), NS_MAM.encode(),
            b"" if queryid is None else b" queryid=" + attr(queryid).encode())
        for entry, message in zip(page.entries, said):
            sender = room + (f"/{message.nick}" if message.nick else "")
            session.write(head + b" id=%s><forwarded xmlns='urn:xmpp:forward:0'><delay "
                          b"xmlns='%s' stamp='%s'/><message xmlns='jabber:client' from=%s "
                          b"type='groupchat'>%s</message></forwarded></result></message>" % (
                              attr(entry.id).encode(), NS_DELAY.encode(),
                              stamp(entry.when).encode(), attr(sender).encode(),
                              self._children(message.stanza, None, message.body)))
        session.result(iq, fin_element(page))

    # --- muc#admin: roles and affiliations -------------------------------------------------

    async def _admin(self, session, iq: domish.Element, query: domish.Element,
                     room: str) -> None:
        items = list(query.elements(NS_ADMIN, "item"))
        if not items:
            raise RoomError("bad-request", "muc#admin needs an item")
        if iq["type"] == "get":
            affiliation = items[0].getAttribute("affiliation")
            if affiliation is None:
                raise RoomError("bad-request", "ask for one affiliation")
            answer = domish.Element((NS_ADMIN, "query"))
            for jid in await self.rooms.affiliated(room, session.full, affiliation):
                item = answer.addElement("item")
                item["affiliation"], item["jid"] = affiliation, jid
            session.result(iq, answer)
            return
        for item in items:
            reason_element = _child(item, NS_ADMIN, "reason")
            reason = str(reason_element) if reason_element is not None else ""
            if item.getAttribute("role") is not None:
                await self.rooms.set_role(room, session.full, item.getAttribute("nick", ""),
                                          item["role"], reason)
            elif item.getAttribute("affiliation") is not None and item.getAttribute("jid"):
                await self.rooms.set_affiliation(room, session.full, item["jid"],
                                                 item["affiliation"], reason)
            else:
                raise RoomError("bad-request", "an item needs a nick and role, or a jid and "
                                "affiliation")
        session.result(iq)

    # --- muc#owner: configuration and destruction --------------------------------------------

    async def _owner(self, session, iq: domish.Element, query: domish.Element,
                     jid: str) -> None:
        room = await self.rooms.describe(jid, session.full)
        if iq["type"] == "get":
            if room["affiliation"] != "owner":
                raise RoomError("forbidden", "only owners configure the room")
            answer = domish.Element((NS_OWNER, "query"))
            answer.addChild(self._config_form(jid, room["config"]).toElement())
            session.result(iq, answer)
            return
        destroy = _child(query, NS_OWNER, "destroy")
        if destroy is not None:
            reason = _child(destroy, NS_OWNER, "reason")
            await self.rooms.destroy(jid, session.full, str(reason) if reason is not None
                                     else "")
            session.result(iq)
            return
        x = _child(query, data_form.NS_X_DATA, "x")
        if x is None:
            raise RoomError("bad-request", "send a muc#roomconfig form or destroy")
        form = data_form.Form.fromElement(x)
        if form.formType == "cancel":
            session.result(iq)
            return
        await self.rooms.configure(jid, session.full, self._read_form(room["config"], form))
        session.result(iq)

    def _config_form(self, jid: str, config: RoomConfig) -> data_form.Form:
        form = data_form.Form("form", title=f"Configuration of {jid}",
                              formNamespace=NS_CONFIG)
        for var, (name, kind, label) in CONFIG_FIELDS.items():
            value = bool(config.password) if name is None else getattr(config, name)
            options = None
            if var.endswith("whois"):
                options = [data_form.Option("moderators", "Moderators"),
                           data_form.Option("anyone", "Anyone")]
            form.addField(data_form.Field(kind, var=var, label=label, options=options,
                                          value=str(value) if isinstance(value, int)
                                          and not isinstance(value, bool) else value))
        return form

    @staticmethod
    def _read_form(current: RoomConfig, form: data_form.Form) -> RoomConfig:
        """A submitted form over the current configuration (fields left out keep theirs)."""
        try:
            form.typeCheck({var: {"type": kind} for var, (_, kind, _) in CONFIG_FIELDS.items()},
                           filterUnknown=True)
        except (TypeError, ValueError) as e:
            raise RoomError("not-acceptable", str(e))
        values = dict(vars(current))
        for var, value in form.getValues().items():
            name = CONFIG_FIELDS[var][0]
            if name is None:
                continue
            target = type(values[name])
            try:
                values[name] = int(value) if target is int else value
            except (TypeError, ValueError):
                raise RoomError("not-acceptable", f"{var} must be a number")
        if form.getValues().get("muc#roomconfig_passwordprotectedroom") is False:
            values["password"] = ""
        return RoomConfig(**values)

    # --- events out ------------------------------------------------------------------------

    def render_presence(self, session, event: Event) -> None:
        payload = event.payload
        if session.full != payload["to"]:
            return
        item = b"<item affiliation=%s role=%s" % (attr(payload["affiliation"]).encode(),
                                                    attr(payload["role"]).encode())
        if payload["jid"]:
            item += b" jid=" + attr(payload["jid"]).encode()
        if payload["new_nick"]:
            item += b" nick=" + attr(payload["new_nick"]).encode()
        reason = payload["reason"]
        item += (b"><reason>%s</reason></item>" % _text(reason)) if reason else b"/>"
        x = (b"<destroy/>" if payload["destroyed"] else b"") + item + b"".join(
            b"<status code='%d'/>" % code for code in payload["codes"])
        session.write(b"<presence from=%s to=%s%s>%s<x xmlns='%s'>%s</x>"
                      b"<occupant-id xmlns='%s' id=%s/></presence>" % (
                          attr(f"{payload['room']}/{payload['nick']}").encode(),
                          attr(session.full).encode(),
                          b"" if payload["available"] else b" type='unavailable'",
                          payload["presence"], NS_USER.encode(), x, NS_OCCUPANT_ID.encode(),
                          attr(payload["occupant_id"]).encode()))
        self.server.events_out += 1

    def render_message(self, session, event: Event) -> None:
        recipients, tail = self.messages(event)
        if session.full in recipients:
            session.write(b"<message to=" + attr(session.full).encode() + tail)
            self.server.events_out += 1

    @staticmethod
    def _message_parts(event: Event) -> tuple[frozenset, bytes]:
        """Who takes a room message, and its stanza after ``to`` (one build per fan-out)."""
        payload = event.payload
        sender = payload["room"] + (f"/{payload['nick']}" if payload["nick"] else "")
        head = b" from=%s type='%s'" % (attr(sender).encode(), payload["kind"].encode())
        if payload["id"]:
            head += b" id=" + attr(payload["id"]).encode()
        children = MucHandler._children(payload["stanza"], payload["subject"], payload["body"])
        if payload["kind"] == "chat":
            children += b"<x xmlns='%s'/>" % NS_USER.encode()
        if payload["occupant_id"]:
            children += b"<occupant-id xmlns='%s' id=%s/>" % (
                NS_OCCUPANT_ID.encode(), attr(payload["occupant_id"]).encode())
        if payload.get("archive_id"):
            children += b"<stanza-id xmlns='%s' by=%s id=%s/>" % (
                NS_SID.encode(), attr(payload["room"]).encode(),
                attr(payload["archive_id"]).encode())
        if payload["delay"] is not None:
            children += b"<delay xmlns='%s' from=%s stamp='%s'/>" % (
                NS_DELAY.encode(), attr(payload["room"]).encode(),
                stamp(payload["delay"]).encode())
        return frozenset(payload["to"]), head + b">" + children + b"</message>"

    @staticmethod
    def _children(stanza: Optional[bytes], subject: Optional[str], body: Optional[str]
                  ) -> bytes:
        """A room message's children: the client's as sent, or built from another door's
        subject and body."""
        if stanza is not None:
            return stanza
        children = b""
        if subject is not None:
            children += b"<subject>%s</subject>" % _text(subject)
        if body is not None:
            children += b"<body>%s</body>" % _text(body)
        return children

    def render_invite(self, session, event: Event) -> None:
        payload = event.payload
        invite = b"<invite from=%s>" % attr(payload["from"]).encode()
        if payload["reason"]:
            invite += b"<reason>%s</reason>" % _text(payload["reason"])
        invite += b"</invite>"
        if payload["password"]:
            invite += b"<password>%s</password>" % _text(payload["password"])
        session.write(b"<message from=%s to=%s><x xmlns='%s'>%s</x></message>" % (
            attr(payload["room"]).encode(), attr(session.user).encode(), NS_USER.encode(),
            invite))
        self.server.events_out += 1


def _text(value: str) -> bytes:
    return escape(value).encode("utf-8")

"""The room service (``core.rooms``): rooms of ``conference.<domain>`` for every door.

Doors call it with real JIDs and nicks; it decides through :class:`~presenced.muc.room.Room`
and tells the occupants what happened as router events, which each door renders:

- :data:`ROOM_PRESENCE` to one occupant's real JID: ``to`` (full JID), ``room``, ``nick``,
  ``available``, ``presence`` (the door's form of the occupant's presence, bytes), ``role``,
  ``affiliation``, ``jid`` (real JID, "" when the recipient may not see it), ``codes``
  (XEP-0045 status codes), ``new_nick``, ``occupant_id``, ``reason``, ``destroyed``;
- :data:`ROOM_MESSAGE` to every occupant at once: ``to`` (tuple of full JIDs), ``room``,
  ``nick`` ("" for the room itself), ``kind`` ("groupchat" or "chat" for a private
  message), ``body``, ``subject``, ``stanza`` (the XMPP children as sent, or None),
  ``occupant_id``, ``id``, ``delay`` (the time a history entry was said, or None);
- :data:`ROOM_INVITE` to the invitee's bare JID: ``room``, ``from``, ``reason``, ``password``.

Persistent rooms (configuration, affiliations, subject) live in the capability map
``muc-rooms`` under the service domain, one key per room, and are loaded on first use, so
they survive a restart. Occupants and history are in memory: a restart empties the rooms.

In a cluster a room lives on one node, its *home* (:attr:`RoomService.homes`, an
:class:`IRoomHomes`: the cluster's claims it in Redis for the first node that needs it).
Every call marked :func:`homed` runs there: a door on another node calls the same method
and the call travels to the home and its answer or refusal back; the home's events reach
occupants on every node through the router. When the home dies, its rooms' occupants on
other nodes are told they left (status 332) and the next join makes the room anew on a
live node (persistent rooms with their configuration from the store).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from presenced.events import Event
from presenced.store import MUC_ARCHIVE_STORE, MUC_ROOMS_STORE, ArchivePage
from presenced.muc.room import (BANNED, CONFIG_CHANGED, CREATED, KICKED, NICK_CHANGED,
                                NON_ANONYMOUS, SELF, Occupant, Room, RoomConfig, RoomError,
                                Said, bare)

if TYPE_CHECKING:
    from presenced.core import Core

ROOM_PRESENCE = "muc-presence"
ROOM_MESSAGE = "muc-message"
ROOM_INVITE = "muc-invite"


SHUTDOWN = 332  # XEP-0045: removed from the room because its service went down


class HistoryRequest(NamedTuple):
    """What a joining client asked to see (``<history/>``); None: the room's default."""

    max_stanzas: Optional[int] = None
    seconds: Optional[float] = None
    since: Optional[float] = None


class IRoomHomes(Interface):
    """Which node a room lives on, and calls to it (one node: always this one)."""

    async def home(room: str) -> Optional[str]:
        """None when ``room`` lives here (claimed now if nobody holds it), else the id of
        the node it lives on."""

    def released(room: str) -> None:
        """``room`` is gone from this node (its last occupant left, or it was destroyed)."""

    async def call(node: str, room: str, method: str, args: list) -> Any:
        """Run ``method(room, *args)`` of the room service on ``node``; its answer, or the
        :class:`RoomError` it raised."""


@implementer(IRoomHomes)
class LocalHomes:
    """A single node holds every room."""

    async def home(self, room: str) -> Optional[str]:
        return None

    def released(self, room: str) -> None:
        """Nothing to give back."""

    async def call(self, node: str, room: str, method: str, args: list) -> Any:
        raise RoomError("internal-server-error", "no other node")


def homed(method: Callable) -> Callable:
    """A room call that runs on the room's home node: here, or forwarded there. The
    wrapped method (``.local``) takes the room JID normalised, and arguments and answers
    that travel between nodes: plain values, bytes, :class:`RoomConfig`."""

    @functools.wraps(method)
    async def run(self: "RoomService", jid: str, *args: Any) -> Any:
        jid = self.room_jid(jid)
        node = None if jid in self.rooms else await self.homes.home(jid)
        if node is None:
            return await method(self, jid, *args)
        return await self.remote_call(node, jid, method.__name__, list(args))

    run.local = method  # type: ignore[attr-defined]
    return run


class RoomService:
    """Every room of this node's conference domain."""

    log = Logger()

    def __init__(self, core: "Core"):
        settings = core.config.muc
        self.core = core
        self.enabled: bool = settings.enabled
        self.domain: str = settings.domain or f"conference.{core.config.default_domain}"
        self.max_rooms: int = settings.max_rooms
        self.max_occupants: int = settings.max_occupants
        self.default_history: int = settings.default_history
        self.max_history: int = settings.max_history
        self.rooms: dict[str, Room] = {}  # the rooms whose home is this node
        self.homes: IRoomHomes = LocalHomes()  # the cluster puts its own
        # Rooms elsewhere that resources of this node joined:
        # real JID -> room -> (home node, nick).
        self.remote: dict[str, dict[str, tuple[str, str]]] = {}
        self._loading: dict[str, defer.Deferred] = {}
        # Room archives (XEP-0313 on rooms) follow the message archive's [xmpp] keys.
        self.archive_seconds: float = core.config.xmpp.archive_days * 86400.0
        self.archive_limit: int = core.config.xmpp.archive_limit
        # Stores opened on first use (a core may have no store).
        self._records = None
        self._archives = None
        core.hooks.add("user-removed", self._user_removed)

    # --- rooms -----------------------------------------------------------------------------

    @property
    def _store(self):
        if self._records is None:
            self._records = self.core.store.open_map(MUC_ROOMS_STORE)
        return self._records

    @property
    def _archive(self):
        if self._archives is None:
            self._archives = self.core.store.open_archive(MUC_ARCHIVE_STORE)
        return self._archives

    def room_jid(self, text: str) -> str:
        """``text`` as a room JID of this service, or :class:`RoomError` ``item-not-found``."""
        local, at, domain = text.lower().partition("@")
        if not at or not local or domain != self.domain or "/" in domain:
            raise RoomError("item-not-found", f"rooms are name@{self.domain}")
        return f"{local}@{domain}"

    async def _find(self, jid: str) -> Optional[Room]:
        """The room, loaded from the store when persistent and not in memory; None."""
        room = self.rooms.get(jid)
        if room is not None:
            return room
        waiters = self._loading.get(jid)
        if waiters is None:
            waiters = self._loading[jid] = []
            self._store.get(self.domain, jid.partition("@")[0]).addBoth(self._loaded, jid)
        waiter: defer.Deferred = defer.Deferred()
        waiters.append(waiter)
        text = await waiter
        room = self.rooms.get(jid)
        if room is None and text is not None:
            room = self.rooms[jid] = Room.from_json(jid, text, self.max_history)
        return room

    def _loaded(self, result, jid: str) -> None:
        """Every join waiting for the same room's record gets it (one store read)."""
        for waiter in self._loading.pop(jid, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _get(self, jid: str) -> Room:
        """The room ``jid`` names (here: it is this node's), or ``item-not-found``."""
        room = await self._find(jid)
        if room is None:
            raise RoomError("item-not-found", f"no room {jid}")
        return room

    @homed
    async def create(self, jid: str, owner: Optional[str],
                     config: Optional[RoomConfig] = None) -> None:
        """A new room (an admin's): ``conflict`` if it exists, ``resource-constraint``
        past ``[muc] max_rooms``."""
        await self._create(jid, owner, config)

    async def _create(self, jid: str, owner: Optional[str],
                      config: Optional[RoomConfig] = None) -> Room:
        if await self._find(jid) is not None:
            raise RoomError("conflict", f"{jid} exists")
        if len(self.rooms) >= self.max_rooms:
            raise RoomError("resource-constraint",
                            f"this service holds at most {self.max_rooms} rooms")
        config = config or RoomConfig(history_length=self.default_history)
        room = self.rooms[jid] = Room(jid, config.checked(self.max_occupants, self.max_history),
                                      {bare(owner): "owner"} if owner else {},
                                      history_limit=self.max_history)
        await self._save(room)
        return room

    @homed
    async def destroy(self, jid: str, actor: Optional[str], reason: str = "") -> None:
        """Close the room: every occupant leaves with ``<destroy/>``; its record goes."""
        room = await self._get(jid)
        if actor is not None and room.affiliation(actor) != "owner":
            raise RoomError("forbidden", "only owners destroy rooms")
        for occupant in list(room.occupants.values()):
            room.remove(occupant)
            self._tell(room, occupant, occupant, available=False, codes=(SELF,),
                       reason=reason, destroyed=True)
        self._drop(room)
        if room.config.persistent:
            await self._store.delete(self.domain, jid.partition("@")[0])

    async def list_rooms(self, public_only: bool) -> list[dict[str, Any]]:
        """This node's rooms and every persistent one (in the store), sorted by JID:
        ``jid``, ``name``, ``public``, ``persistent``, ``occupants`` (-1: unknown here, it
        lives on another node)."""
        found: dict[str, dict[str, Any]] = {}
        for local, text in (await self._store.items(self.domain)).items():
            config = Room.from_json(f"{local}@{self.domain}", text, 0).config
            found[f"{local}@{self.domain}"] = _listing(f"{local}@{self.domain}", config, -1)
        for room in self.rooms.values():
            found[room.jid] = _listing(room.jid, room.config, len(room.occupants))
        return [found[j] for j in sorted(found)
                if found[j]["public"] or not public_only]

    @homed
    async def describe(self, jid: str, viewer: Optional[str] = None) -> dict[str, Any]:
        """What disco, the owner's form and the admin RPCs show of a room: ``jid``,
        ``config`` (a :class:`RoomConfig`), ``subject``, ``occupants`` (nick, jid, role,
        affiliation each) and ``affiliation`` (the viewer's)."""
        room = await self._get(jid)
        return {"jid": room.jid, "config": room.config, "subject": room.subject,
                "affiliation": room.affiliation(viewer) if viewer else "none",
                "occupants": [{"nick": o.nick, "jid": o.jid, "role": o.role,
                               "affiliation": o.affiliation}
                              for o in room.occupants.values()]}

    @homed
    async def configure(self, jid: str, actor: Optional[str], config: RoomConfig) -> None:
        room = await self._get(jid)
        if actor is not None and room.affiliation(actor) != "owner":
            raise RoomError("forbidden", "only owners configure the room")
        was_persistent = room.config.persistent
        room.config = config.checked(self.max_occupants, self.max_history)
        if was_persistent and not config.persistent:
            await self._store.delete(self.domain, jid.partition("@")[0])
        await self._save(room)
        self._announce(room, codes=(CONFIG_CHANGED,))
        if not room.occupants and not config.persistent:
            self._drop(room)

    # --- occupants ---------------------------------------------------------------------------

    @homed
    async def join(self, jid: str, nick: str, real: str, presence: bytes = b"",
                   password: Optional[str] = None,
                   history: Optional[HistoryRequest] = None) -> None:
        """Enter (creating an instant room on first join, XEP-0045 10.1.2), or change
        presence when already in under ``nick``, or change nick when in under another."""
        if not nick or len(nick.encode("utf-8")) > 1023:
            raise RoomError("jid-malformed", "a nickname is needed to join")
        room = await self._find(jid)
        created = room is None
        if created:
            room = await self._create(jid, real)
        current = room.occupant(real)
        if current is not None:
            current.presence = presence
            if current.nick != nick:
                await self._rename(room, current, nick)
            else:
                self._broadcast_presence(room, current)
            return
        occupant = room.admit(nick, real, password, self.occupant_id(jid, real), presence,
                              self.max_occupants)
        for other in room.occupants.values():
            if other is not occupant:
                self._tell(room, other, occupant)
        codes = [SELF]
        if room.config.whois == "anyone":
            codes.append(NON_ANONYMOUS)
        if created:
            codes.append(CREATED)
        for other in room.occupants.values():
            self._tell(room, occupant, other, codes=tuple(codes) if other is occupant else ())
        self._send_history(room, occupant, HistoryRequest(*history) if history else None)

    @homed
    async def leave(self, jid: str, real: str, presence: bytes = b"") -> None:
        room = self.rooms.get(jid)
        occupant = room.occupant(real) if room is not None else None
        if occupant is None:
            return
        occupant.presence = presence
        self._exit(room, occupant, ())

    def leave_everywhere(self, real: str) -> None:
        """``real`` is gone (its session ended): it leaves every room it was in, here
        and on other nodes."""
        for room in list(self.rooms.values()):
            occupant = room.occupant(real)
            if occupant is not None:
                occupant.presence = b""
                self._exit(room, occupant, ())
        for room, (node, _) in self.remote.pop(real, {}).items():
            defer.ensureDeferred(self.remote_call(node, room, "leave", [real])).addErrback(
                lambda f: self.log.warn("leaving {room} on {node}: {why}", room=room,
                                        node=node, why=f.getErrorMessage()))

    @homed
    async def is_occupant(self, jid: str, real: str) -> bool:
        """Whether ``real`` is in the room (XEP-0410 self-ping)."""
        room = self.rooms.get(jid)
        return room is not None and room.occupant(real) is not None

    async def _rename(self, room: Room, occupant: Occupant, nick: str) -> None:
        old = occupant.nick
        if nick in room.occupants:
            raise RoomError("conflict", "that nickname is already in use")
        for other in room.occupants.values():
            self._tell(room, other, occupant, available=False, nick=old, new_nick=nick,
                       codes=(NICK_CHANGED, SELF) if other is occupant else (NICK_CHANGED,))
        room.rename(occupant, nick)
        self._broadcast_presence(room, occupant)

    def _exit(self, room: Room, occupant: Occupant, codes: tuple[int, ...],
              reason: str = "") -> None:
        role = occupant.role
        occupant.role = "none"
        for other in list(room.occupants.values()):
            self._tell(room, other, occupant, available=False, reason=reason,
                       codes=codes + ((SELF,) if other is occupant else ()))
        occupant.role = role
        room.remove(occupant)
        if not room.occupants and not room.config.persistent:
            self._drop(room)

    def _drop(self, room: Room) -> None:
        if self.rooms.pop(room.jid, None) is not None:
            self.homes.released(room.jid)

    # --- speaking --------------------------------------------------------------------------

    @homed
    async def say(self, jid: str, real: Optional[str], body: Optional[str],
                  stanza: Optional[bytes] = None, message_id: Optional[str] = None,
                  subject: Optional[str] = None) -> None:
        """A groupchat message from occupant ``real`` (None: the room itself, an admin's)
        to every occupant, kept in the history; a ``subject`` changes the subject."""
        room = await self._get(jid)
        nick, occupant_id = "", ""
        if real is not None:
            occupant = room.occupant(real)
            if occupant is None:
                raise RoomError("not-acceptable", "join the room before speaking in it")
            if subject is not None:
                room.may_set_subject(occupant)
            else:
                room.may_speak(occupant)
            nick, occupant_id = occupant.nick, occupant.occupant_id
        if subject is not None:
            room.subject, room.subject_by = subject, nick
            await self._save(room)
        said = Said(nick, body, subject, stanza, occupant_id)
        if subject is None:
            room.remember(said)
            if self.archive_seconds and body is not None:
                said.archive_id = self._archive.new_id(said.when)
                self._archive.append(
                    room.jid, said_to_json(said), said.when, keep=self.archive_limit,
                    since=said.when - self.archive_seconds, id=said.archive_id).addErrback(
                        lambda f: self.log.failure("archiving in {room}", f, room=room.jid))
        self._send(room, said, tuple(o.jid for o in room.occupants.values()), "groupchat",
                   message_id)

    @homed
    async def whisper(self, jid: str, real: str, nick: str, body: Optional[str],
                      stanza: Optional[bytes], message_id: Optional[str]) -> None:
        """A private message from occupant ``real`` to the occupant ``nick``."""
        room = await self._get(jid)
        sender = room.occupant(real)
        if sender is None:
            raise RoomError("not-acceptable", "join the room before sending to occupants")
        target = room.occupants.get(nick)
        if target is None:
            raise RoomError("item-not-found", f"nobody is called {nick} here")
        self._send(room, Said(sender.nick, body, None, stanza, sender.occupant_id),
                   (target.jid,), "chat", message_id)

    @homed
    async def invite(self, jid: str, real: str, invitee: str, reason: str = "") -> None:
        """A mediated invitation (XEP-0045 7.8.2): members-only rooms make the invitee a
        member when an admin invites, and only admins may invite there."""
        room = await self._get(jid)
        if room.occupant(real) is None:
            raise RoomError("not-acceptable", "join the room before inviting")
        invitee = bare(invitee)
        if room.config.members_only:
            if room.affiliation(real) not in ("owner", "admin"):
                raise RoomError("forbidden", "only admins invite to a members-only room")
            if room.affiliation(invitee) == "none":
                room.set_affiliation(invitee, "member")
                await self._save(room)
        self.core.router.deliver(invitee, Event(ROOM_INVITE, room.jid, {
            "room": room.jid, "from": bare(real), "reason": reason,
            "password": room.config.password}))

    async def archived(self, jid: str, viewer: str, after_id: Optional[str] = None,
                       before_id: Optional[str] = None, start: Optional[float] = None,
                       end: Optional[float] = None, limit: int = 100,
                       last: bool = False) -> tuple[ArchivePage, list[Said]]:
        """A page of the room's archive (XEP-0313): anyone may read an open room's,
        members a members-only one's, outcasts none. ``ValueError`` for an unknown id."""
        if not self.archive_seconds:
            raise RoomError("service-unavailable", "message archives are off")
        room = await self.describe(jid, viewer)
        config = room["config"]
        if room["affiliation"] == "outcast" or (config.members_only and room["affiliation"]
                                                not in ("owner", "admin", "member")):
            raise RoomError("forbidden", "only members read this room's archive")
        expired = time.time() - self.archive_seconds
        page = await self._archive.query(
            room["jid"], after_id=after_id, before_id=before_id,
            start=expired if start is None else max(start, expired), end=end, limit=limit,
            last=last)
        return page, [said_from_json(entry.value, entry.when) for entry in page.entries]

    # --- moderation ------------------------------------------------------------------------

    @homed
    async def set_role(self, jid: str, actor: str, nick: str, role: str,
                       reason: str = "") -> None:
        """Kick (role ``none``), grant or revoke voice or moderator (XEP-0045 8.2-8.6)."""
        room = await self._get(jid)
        by = room.occupant(actor)
        target = room.occupants.get(nick)
        if by is None:
            raise RoomError("forbidden", "join the room first")
        if target is None:
            raise RoomError("item-not-found", f"nobody is called {nick} here")
        room.may_set_role(by, target, role)
        if role == "none":
            self._exit(room, target, (KICKED,), reason)
            return
        target.role = role
        self._broadcast_presence(room, target, reason)

    @homed
    async def set_affiliation(self, jid: str, actor: Optional[str], target: str,
                              affiliation: str, reason: str = "") -> None:
        """Owner, admin, member, none or outcast (a ban, XEP-0045 9.1) for a bare JID;
        ``actor`` None is the server's admin (Thrift)."""
        room = await self._get(jid)
        target = bare(target)
        room.may_set_affiliation("owner" if actor is None else room.affiliation(actor),
                                 target, affiliation)
        changed = room.set_affiliation(target, affiliation)
        await self._save(room)
        for occupant in changed:
            if affiliation == "outcast":
                self._exit(room, occupant, (BANNED,), reason)
            elif room.config.members_only and affiliation == "none":
                self._exit(room, occupant, (321,), reason)
            else:
                self._broadcast_presence(room, occupant, reason)

    @homed
    async def affiliated(self, jid: str, actor: Optional[str], affiliation: str
                         ) -> list[str]:
        """The bare JIDs with ``affiliation`` (admins and owners may ask)."""
        room = await self._get(jid)
        if actor is not None and room.affiliation(actor) not in ("owner", "admin"):
            raise RoomError("forbidden", "only admins and owners see affiliation lists")
        return sorted(j for j, a in room.affiliations.items() if a == affiliation)

    # --- events ------------------------------------------------------------------------------

    def occupant_id(self, room: str, real: str) -> str:
        """XEP-0421: stable per user and room, and no way back to the real JID."""
        digest = hmac.new(self.core.secret, f"{room}\0{bare(real)}".encode(),
                          hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:12]).decode()

    def _broadcast_presence(self, room: Room, occupant: Occupant, reason: str = "") -> None:
        for other in room.occupants.values():
            self._tell(room, other, occupant, reason=reason,
                       codes=(SELF,) if other is occupant else ())

    def _tell(self, room: Room, recipient: Occupant, about: Occupant, available: bool = True,
              codes: tuple[int, ...] = (), nick: Optional[str] = None,
              new_nick: str = "", reason: str = "", destroyed: bool = False) -> None:
        """``about``'s presence to ``recipient``."""
        visible = room.sees_real_jids(recipient) or recipient is about
        self.core.router.deliver(recipient.bare, Event(ROOM_PRESENCE, room.jid, {
            "to": recipient.jid, "room": room.jid, "nick": nick or about.nick,
            "available": available, "presence": about.presence, "role": about.role,
            "affiliation": about.affiliation, "jid": about.jid if visible else "",
            "codes": codes, "new_nick": new_nick, "occupant_id": about.occupant_id,
            "reason": reason, "destroyed": destroyed}))

    def _announce(self, room: Room, codes: tuple[int, ...]) -> None:
        """A status-only message from the room (configuration changed)."""
        self._send(room, Said("", None, None, b"<x xmlns='http://jabber.org/protocol/muc#user'>"
                              + b"".join(b"<status code='%d'/>" % c for c in codes) + b"</x>",
                              ""), tuple(o.jid for o in room.occupants.values()),
                   "groupchat", None)

    def _send(self, room: Room, said: Said, recipients: tuple[str, ...], kind: str,
              message_id: Optional[str], delay: Optional[float] = None) -> None:
        if not recipients:
            return
        event = Event(ROOM_MESSAGE, room.jid, {
            "to": recipients, "room": room.jid, "nick": said.nick, "kind": kind,
            "body": said.body, "subject": said.subject, "stanza": said.stanza,
            "occupant_id": said.occupant_id, "id": message_id, "delay": delay,
            "archive_id": said.archive_id})
        router = self.core.router
        router.transport.route(router, list(dict.fromkeys(bare(r) for r in recipients)), event)

    def _send_history(self, room: Room, occupant: Occupant,
                      history: Optional[HistoryRequest]) -> None:
        history = history or HistoryRequest()
        for said in room.recent(history.max_stanzas, history.seconds, history.since):
            self._send(room, said, (occupant.jid,), "groupchat", None, delay=said.when)
        # The subject comes last, empty when none was set (XEP-0045 7.2.15).
        self._send(room, Said(room.subject_by, None, room.subject, None, ""),
                   (occupant.jid,), "groupchat", None)

    async def _save(self, room: Room) -> None:
        if room.config.persistent:
            await self._store.set(self.domain, room.jid.partition("@")[0], room.to_json())

    # --- between nodes -----------------------------------------------------------------------

    async def remote_call(self, node: str, jid: str, method: str, args: list) -> Any:
        """A :func:`homed` call run on ``node``; a resource's joins and leaves are noted, so
        its end (or the home's death) makes it leave there."""
        result = await self.homes.call(node, jid, method, args)
        if method == "join":
            self.remote.setdefault(args[1], {})[jid] = (node, args[0])
        elif method == "leave" and args[0] in self.remote:
            self.remote[args[0]].pop(jid, None)
        return result

    async def run_here(self, jid: str, method: str, args: list) -> Any:
        """A call another node forwarded to this room's home (see :class:`IRoomHomes`)."""
        call = getattr(type(self), method, None)
        local = getattr(call, "local", None)
        if local is None:
            raise RoomError("bad-request", f"no room call {method}")
        return await local(self, self.room_jid(jid), *args)

    def home_lost(self, node: str) -> None:
        """``node`` died: this node's resources in rooms that lived there are out of them
        (status 332), and may join again (the room then lives on a live node)."""
        for real, rooms in list(self.remote.items()):
            for room in [r for r, (home, _) in rooms.items() if home == node]:
                _, nick = rooms.pop(room)
                self.core.router.deliver(bare(real), Event(ROOM_PRESENCE, room, {
                    "to": real, "room": room, "nick": nick, "available": False,
                    "presence": b"", "role": "none", "affiliation": "none", "jid": "",
                    "codes": (SHUTDOWN, SELF), "new_nick": "", "occupant_id": "",
                    "reason": f"node {node} is gone", "destroyed": False}))
            if not rooms:
                del self.remote[real]

    def occupants_gone(self, users: set[str]) -> None:
        """Users are online nowhere any more (their node died): out of this node's rooms."""
        for room in list(self.rooms.values()):
            for occupant in [o for o in room.occupants.values() if o.bare in users]:
                occupant.presence = b""
                self._exit(room, occupant, ())

    def _user_removed(self, user: str, contacts) -> None:
        """A deleted account keeps no affiliation (owners stay: the room needs one)."""
        for room in self.rooms.values():
            if room.affiliations.get(user) not in (None, "owner"):
                room.set_affiliation(user, "none")
                defer.ensureDeferred(self._save(room)).addErrback(
                    lambda f: self.log.failure("saving room {room}", f, room=room.jid))



def _listing(jid: str, config: RoomConfig, occupants: int) -> dict[str, Any]:
    return {"jid": jid, "name": config.name, "public": config.public,
            "persistent": config.persistent, "occupants": occupants}


def said_to_json(said: Said) -> str:
    return json.dumps({"nick": said.nick, "body": said.body, "occupant_id": said.occupant_id,
                       "stanza": said.stanza.decode("utf-8") if said.stanza else None},
                      separators=(",", ":"))


def said_from_json(text: str, when: float) -> Said:
    doc = json.loads(text)
    stanza = doc.get("stanza")
    return Said(doc["nick"], doc.get("body"), None,
                stanza.encode("utf-8") if stanza is not None else None,
                doc.get("occupant_id", ""), when)

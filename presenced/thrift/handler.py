"""What each admin method does, in terms of the core.

The handler translates Thrift arguments into core calls and core answers into Thrift structs;
it decides nothing itself. Methods return plain values or Deferreds and raise the IDL's
exceptions (:class:`admin.BadJid`, :class:`admin.UnknownUser`...); the dispatcher turns those
into replies, and into ``TApplicationException`` for the ``Ejabthrift`` methods, whose IDL
declares none.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from presenced.core import Core
from presenced.muc.room import RoomConfig, RoomError
from presenced.nowplaying import BadTune, Tune
from presenced.store import RosterItem
from presenced.pep import PepError
from presenced.subjects import DEFAULT_EVENT_TYPE, is_topic
from presenced.thrift import admin
from presenced.thrift.batch import FriendshipBatcher
from presenced.users import BadUser

DEFAULT_TOKEN_TTL = 86400


class AdminHandler:
    """The ``PresencedAdmin`` service (``Ejabthrift`` included) over one :class:`Core`."""

    def __init__(self, core: Core, clock: IReactorTime):
        self.core = core
        self.friendships = FriendshipBatcher(core.add_friends, core.remove_friends, clock)

    def user(self, who: Optional[Any], local: bool = False) -> str:
        """``JabberUser{name, server}`` -> ``name@server``; an empty server is the default
        domain; ``local``: only on a served domain (what becomes an account or a friend).
        Raises :class:`admin.BadJid`."""
        name = getattr(who, "name", None) or ""
        server = getattr(who, "server", None) or ""
        text = f"{name}@{server}" if server else name
        try:
            return self.core.local_user(text) if local else self.core.user(text)
        except BadUser as e:
            raise admin.BadJid(jid=text, reason=str(e)) from None

    def subject(self, who: Optional[Any]) -> str:
        """A user as :meth:`user`, or a topic (``JabberUser{name="artist/radiohead"}``, no
        server). Raises :class:`admin.BadJid`."""
        name = getattr(who, "name", None) or ""
        server = getattr(who, "server", None) or ""
        return self._subject(f"{name}@{server}" if server else name)

    def _subject(self, text: str) -> str:
        try:
            return self.core.subject(text)
        except BadUser as e:
            raise admin.BadJid(jid=text, reason=str(e)) from None

    def _pair(self, a: Any, b: Any, local: bool = False) -> tuple[str, str]:
        pair = self.user(a, local), self.user(b, local)
        if pair[0] == pair[1]:
            raise admin.InvalidArgument(message=f"{pair[0]} cannot be their own friend")
        return pair

    # --- Ejabthrift ------------------------------------------------------------------------

    def add_friend(self, luser: Any, ruser: Any) -> defer.Deferred:
        return self.friendships.add(self._pair(luser, ruser, local=True))

    def remove_friend(self, luser: Any, ruser: Any) -> defer.Deferred:
        return self.friendships.remove(self._pair(luser, ruser))

    def spoof_message(self, fromuser: Any, touser: Any, msg: Optional[str],
                      subject: Optional[str]) -> defer.Deferred:
        return defer.ensureDeferred(self._spoof(fromuser, touser, msg or "", kind="normal",
                                                subject=subject or None))

    def spoof_chat(self, fromuser: Any, touser: Any, msg: Optional[str],
                   thread: Optional[str]) -> defer.Deferred:
        return defer.ensureDeferred(self._spoof(fromuser, touser, msg or "", kind="chat",
                                                thread=thread or None))

    async def _spoof(self, fromuser: Any, touser: Any, body: str, **fields: Any) -> None:
        """A message from another door: refused when the recipient blocks the sender
        (XEP-0191 applies to every door)."""
        sender, to = self.user(fromuser), self.user(touser)
        if await self.core.blocking.blocks(to, sender):
            raise admin.InvalidArgument(message=f"{to} blocks messages from {sender}")
        self.core.send_message(sender, to, body, **fields)

    def publish_np(self, fromuser: Any, artist: Optional[str], album: Optional[str],
                   track: Optional[str], tracklength: Optional[int],
                   tracknum: Optional[int]) -> defer.Deferred:
        user = self.user(fromuser)
        try:
            tune = Tune(artist=artist, source=album, title=track,
                        length=tracklength or None,
                        track=str(tracknum) if tracknum else None)
        except BadTune as e:
            raise admin.InvalidArgument(message=f"bad tune: {e}") from None
        return self.core.publish_tune(user, tune).addCallback(_none)

    # --- accounts (core.accounts: the store, or the extauth program, as for XMPP) ---------

    def register_user(self, user: Any, password: Optional[str]) -> defer.Deferred:
        jid = self.user(user, local=True)
        return self.core.accounts.register(jid, _password(password))

    @defer.inlineCallbacks
    def set_password(self, user: Any, password: Optional[str]):
        jid = self.user(user)
        if not (yield self.core.accounts.set_password(jid, _password(password))):
            raise admin.UnknownUser(jid=jid)

    @defer.inlineCallbacks
    def remove_user(self, user: Any):
        jid = self.user(user)
        if not (yield self.core.accounts.remove(jid)):
            raise admin.UnknownUser(jid=jid)

    def user_exists(self, user: Any) -> defer.Deferred:
        return self.core.accounts.exists(self.user(user))

    # --- rosters and the subscription graph ------------------------------------------------

    @defer.inlineCallbacks
    def get_roster(self, user: Any):
        jid = self.user(user)
        if not (yield self.core.accounts.exists(jid)):
            raise admin.UnknownUser(jid=jid)
        items = yield self.core.store.get_roster(jid)
        return [_roster_item(item) for item in items]

    def get_subscribers(self, user: Any) -> defer.Deferred:
        return self.core.store.get_subscribers(self.subject(user)).addCallback(sorted)

    def add_subscriptions(self, pairs: Optional[list]) -> defer.Deferred:
        return self.core.add_subscriptions(self._edges(pairs))

    def remove_subscriptions(self, pairs: Optional[list]) -> defer.Deferred:
        return self.core.remove_subscriptions(self._edges(pairs))

    def _edges(self, pairs: Optional[list]) -> list[tuple[str, str]]:
        return [(self.user(p.subscriber), self.subject(p.subject)) for p in pairs or ()]

    # --- who is online, what they play -----------------------------------------------------

    @defer.inlineCallbacks
    def get_now_playing(self, user: Any):
        tune = yield self.core.now_playing(self.user(user))
        if tune is None:
            return admin.NowPlaying(artist="", album="", track="", tracklength=0, tracknum=0,
                                    playing=False)
        return admin.NowPlaying(artist=tune.artist or "", album=tune.source or "",
                                track=tune.title or "", tracklength=tune.length or 0,
                                tracknum=_int(tune.track), playing=True)

    @defer.inlineCallbacks
    def user_sessions(self, user: Any):
        """On every node of a cluster: any node's admin port answers for all of them."""
        found = yield self.core.router.sessions_anywhere(self.user(user))
        return [admin.UserSession(protocol=protocol, label=label) for protocol, label in found]

    def online_count(self) -> int:
        return self.core.router.online_users_anywhere()

    def stream_token(self, user: Any, ttl: Optional[int]) -> str:
        jid = self.user(user)
        if ttl is not None and ttl < 0:
            raise admin.InvalidArgument(message=f"ttl {ttl} is negative")
        return self.core.stream_token(jid, ttl or DEFAULT_TOKEN_TTL)

    def irc_say(self, target: Optional[str], text: Optional[str]) -> None:
        bot = self.core.irc
        if bot is None:
            raise admin.NotEnabled(feature="irc", message="IRC bot not enabled")
        if not text:
            raise admin.InvalidArgument(message="nothing to say")
        try:
            bot.say(target or None, text)
        except ValueError as e:  # the bot's refusal: bad target, queue full...
            raise admin.InvalidArgument(message=f"IRC bot refused: {e}") from None

    # --- group chat (core.rooms) --------------------------------------------------------------

    def create_room(self, room: Optional[str], owner: Any, persistent: Optional[bool]):
        owner_jid = self.user(owner) if getattr(owner, "name", None) else None
        config = RoomConfig(persistent=bool(persistent),
                            history_length=self.core.rooms.default_history)
        return self._rooms(self.core.rooms.create(room or "", owner_jid, config), _none)

    def destroy_room(self, room: Optional[str], reason: Optional[str]):
        return self._rooms(self.core.rooms.destroy(room or "", None, reason or ""))

    def list_rooms(self):
        return self._rooms(self.core.rooms.list_rooms(public_only=False), lambda rooms: [
            admin.Room(jid=r["jid"], name=r["name"], persistent=r["persistent"],
                       listed=r["public"], occupants=r["occupants"]) for r in rooms])

    def room_occupants(self, room: Optional[str]):
        return self._rooms(self.core.rooms.describe(room or ""), lambda r: [
            admin.Occupant(**occupant) for occupant in r["occupants"]])

    def set_room_affiliation(self, room: Optional[str], user: Any,
                             affiliation: Optional[str]):
        return self._rooms(self.core.rooms.set_affiliation(room or "", None, self.user(user),
                                                           affiliation or ""))

    def send_room_message(self, room: Optional[str], body: Optional[str]):
        if not body:
            raise admin.InvalidArgument(message="nothing to say")
        return self._rooms(self.core.rooms.say(room or "", None, body))

    def _rooms(self, work, answer=None) -> defer.Deferred:
        """A room service call: its refusals become ``InvalidArgument``; switched off,
        ``NotEnabled``."""
        if not self.core.rooms.enabled:
            work.close()
            raise admin.NotEnabled(feature="muc", message="group chat is not enabled")

        def refused(failure):
            failure.trap(RoomError)
            raise admin.InvalidArgument(message=f"{failure.value.condition}: "
                                        f"{failure.value.text or ''}".rstrip(": "))
        return defer.ensureDeferred(work).addCallbacks(answer or _none, refused)

    # --- pubsub nodes (core.nodes), as the site: every node -------------------------------------

    def create_node(self, topic: Optional[str], owner: Any, config: Optional[dict]):
        return self._nodes(self.core.nodes.create(self.user(owner), self._topic(topic),
                                                  config or {}, by_site=True))

    def configure_node(self, topic: Optional[str], config: Optional[dict]):
        return self._nodes(self.core.nodes.configure(None, self._topic(topic), config or {}))

    def list_nodes(self):
        return defer.ensureDeferred(self.core.nodes.owners())

    def delete_node(self, topic: Optional[str]):
        return self._nodes(self.core.nodes.delete(None, self._topic(topic)))

    def purge_node(self, topic: Optional[str]):
        return self._nodes(self.core.nodes.purge(None, self._topic(topic)))

    def set_node_affiliation(self, topic: Optional[str], user: Any,
                             affiliation: Optional[str]):
        return self._nodes(self._set_affiliation(self._topic(topic), self.user(user),
                                                 affiliation or ""))

    async def _set_affiliation(self, topic: str, user: str, affiliation: str) -> None:
        for refused in await self.core.nodes.set_affiliations(None, topic,
                                                              {user: affiliation}):
            raise PepError("not-acceptable", refused.reason)

    def _topic(self, text: Optional[str]) -> str:
        topic = self._subject(text or "")
        if not is_topic(topic):
            raise admin.BadJid(jid=topic, reason="a pubsub node is a topic (artist/radiohead)")
        return topic

    def _nodes(self, work) -> defer.Deferred:
        """A node call: the node's refusals become ``InvalidArgument``."""
        def refused(failure):
            failure.trap(PepError)
            raise admin.InvalidArgument(message=f"{failure.value.condition}: "
                                        f"{failure.value}")
        return defer.ensureDeferred(work).addCallbacks(_none, refused)

    @defer.inlineCallbacks
    def stats(self):
        """This node's figures (this worker's, with workers); ``cluster_online_users`` alone
        counts the whole cluster (docs/admin-thrift.md)."""
        router = self.core.router
        figures = {
            "users": (yield self.core.store.count_users()),
            "online_users": router.online_users(),
            "cluster_online_users": router.online_users_anywhere(),
            "sessions": router.session_count(),
            "events_sent": router.events_sent,
            "deliveries": router.deliveries,
            "delivery_errors": router.delivery_errors,
            "uptime_seconds": int(time.time() - self.core.started_at),
            "thrift_calls": int(self.core.metrics.value("presenced_thrift_calls_total")),
        }
        for session in router.all_sessions():
            key = f"sessions_{session.protocol}"
            figures[key] = figures.get(key, 0) + 1
        return figures

    # --- site events -----------------------------------------------------------------------

    def publish_event(self, subject: Optional[str], type: Optional[str],
                      json_data: Optional[str]) -> defer.Deferred:
        """``json_data`` must hold a JSON object; an empty one is ``{}``."""
        who = self._subject(subject or "")
        try:
            data = json.loads(json_data) if json_data else {}
            d = self.core.publish(who, type or DEFAULT_EVENT_TYPE, data)
        except ValueError as e:  # bad JSON, BadEvent
            raise admin.InvalidArgument(message=f"bad event: {e}") from None
        return d.addCallback(lambda sent: sent[1])


def _none(_: Any) -> None:
    return None


def _password(password: Optional[str]) -> str:
    if not password:
        raise admin.InvalidArgument(message="empty password")
    return password


def _int(text: Optional[str]) -> int:
    return int(text) if text and text.isdigit() and len(text) < 10 else 0


def _roster_item(item: RosterItem) -> Any:
    return admin.RosterItem(jid=item.jid, subscription=item.subscription, name=item.name or "",
                            groups=list(item.groups), ask=bool(item.ask))

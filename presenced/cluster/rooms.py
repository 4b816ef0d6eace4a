"""Where group chat rooms live in a cluster: ``core.rooms.homes`` (docs/muc.md#cluster).

A room lives on one node, its home. The claim is a Redis key, ``presenced:muc:home:<room>``
= node id, taken by a Lua script only when it is absent or names a node the directory no
longer sees alive, so two nodes never both win. Other nodes forward the room's calls
(:func:`presenced.muc.service.homed`) on the home's channel ``presenced:muc:<node>``, as
JSON, and get the answer on their own; a call not answered within :data:`CALL_TIMEOUT`
seconds is refused ``service-unavailable``. The home's events reach occupants on every
node through the router, as on one node.

When the directory declares a node dead, its rooms are gone: this node's resources that
were in them are told they left (status 332), and occupants of this node's rooms who were
online only there leave them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import TYPE_CHECKING, Any, Optional

from twisted.internet import defer, reactor
from twisted.logger import Logger
from zope.interface import implementer

from presenced.cluster.directory import SessionDirectory
from presenced.cluster.link import RedisLink
from presenced.muc.room import RoomConfig, RoomError
from presenced.muc.service import IRoomHomes

if TYPE_CHECKING:
    from presenced.core import Core

CALL_TIMEOUT = 5.0
_CLAIM = """
local owner = redis.call('GET', KEYS[1])
if owner == false or owner == ARGV[1] or owner == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
return owner
"""
_RELEASE = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
            "return redis.call('DEL', KEYS[1]) end return 0")
_CONFIG_TAG = "__room_config__"
_BYTES_TAG = "__bytes__"


def home_key(room: str) -> str:
    return f"presenced:muc:home:{room}"


def calls_channel(node: str) -> str:
    return f"presenced:muc:{node}"


def _text(value: Any) -> Optional[str]:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _encode(value: Any) -> Any:
    """Room call arguments and answers as JSON: plain values, bytes (stanzas), configs."""
    if isinstance(value, RoomConfig):
        return {_CONFIG_TAG: dataclasses.asdict(value)}
    if isinstance(value, bytes):
        return {_BYTES_TAG: value.decode("utf-8", "surrogateescape")}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if _CONFIG_TAG in value:
            return RoomConfig(**value[_CONFIG_TAG])
        if _BYTES_TAG in value:
            return value[_BYTES_TAG].encode("utf-8", "surrogateescape")
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


@implementer(IRoomHomes)
class ClusterRoomHomes:
    """Room claims in Redis and room calls over pub/sub, for one node."""

    log = Logger()

    def __init__(self, core: "Core", link: RedisLink, directory: SessionDirectory):
        self.core = core
        self.link = link
        self.directory = directory
        self.node_id = directory.node_id
        self.known: dict[str, str] = {}  # room -> its home, another node
        self.pending: dict[int, defer.Deferred] = {}
        self._ids = itertools.count(1)
        link.subscribe(calls_channel(self.node_id), self._received)
        directory.on_users_gone.append(self._users_gone)

    # --- where -------------------------------------------------------------------------------

    async def home(self, room: str) -> Optional[str]:
        live = self.directory.nodes()
        cached = self.known.get(room)
        if cached is not None and cached in live:
            return cached
        owner = _text(await self.link.commands.get(home_key(room)))
        if owner is not None and owner != self.node_id and owner not in live:
            owner = _text(await self.link.commands.eval(_CLAIM, [home_key(room)],
                                                        [self.node_id, owner]))
        elif owner is None:
            owner = _text(await self.link.commands.eval(_CLAIM, [home_key(room)],
                                                        [self.node_id, ""]))
        if owner == self.node_id:
            self.known.pop(room, None)
            return None
        self.known[room] = owner
        return owner

    def released(self, room: str) -> None:
        self.link.commands.eval(_RELEASE, [home_key(room)], [self.node_id]).addErrback(
            lambda f: self.log.warn("cluster: releasing room {room}: {why}", room=room,
                                    why=f.getErrorMessage()))

    # --- calls -------------------------------------------------------------------------------

    async def call(self, node: str, room: str, method: str, args: list) -> Any:
        reply = await self._ask(node, room, method, args)
        if reply.get("moved"):  # it stopped living there: ask again where it lives
            self.known.pop(room, None)
            node = await self.home(room)
            if node is None:
                return await self.core.rooms.run_here(room, method, args)
            reply = await self._ask(node, room, method, args)
        if "e" in reply:
            raise RoomError(*reply["e"])
        return _decode(reply.get("r"))

    async def _ask(self, node: str, room: str, method: str, args: list) -> dict:
        call_id = next(self._ids)
        answer: defer.Deferred = defer.Deferred()
        self.pending[call_id] = answer
        self.link.publish(calls_channel(node), json.dumps({
            "id": call_id, "from": self.node_id, "room": room, "m": method,
            "a": _encode(args)}, separators=(",", ":")))
        answer.addTimeout(CALL_TIMEOUT, reactor)
        try:
            return await answer
        except defer.TimeoutError:
            raise RoomError("service-unavailable",
                            f"the node of {room} did not answer") from None
        finally:
            self.pending.pop(call_id, None)

    def _received(self, message: str) -> None:
        doc = json.loads(message)
        if "m" in doc:
            defer.ensureDeferred(self._serve(doc))
            return
        answer = self.pending.get(doc.get("re"))
        if answer is not None and not answer.called:
            answer.callback(doc)

    async def _serve(self, doc: dict) -> None:
        reply: dict[str, Any] = {"re": doc["id"]}
        room = doc["room"]
        try:
            if room not in self.core.rooms.rooms and await self.home(room) is not None:
                reply["moved"] = True
            else:
                reply["r"] = _encode(await self.core.rooms.run_here(room, doc["m"],
                                                                    _decode(doc["a"])))
        except RoomError as e:
            reply["e"] = [e.condition, e.text]
        except Exception:
            self.log.failure("cluster: room call {m} on {room}", m=doc["m"], room=room)
            reply["e"] = ["internal-server-error", None]
        self.link.publish(calls_channel(doc["from"]), json.dumps(reply, separators=(",", ":")))

    # --- dead nodes -------------------------------------------------------------------------

    def _users_gone(self, node: str, users: set[str]) -> None:
        rooms = self.core.rooms
        if node not in self.directory.nodes():
            self.known = {r: n for r, n in self.known.items() if n != node}
            rooms.home_lost(node)
        router = self.core.router
        rooms.occupants_gone({u for u in users if not router.is_online_anywhere(u)})

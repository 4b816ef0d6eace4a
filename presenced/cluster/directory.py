"""The session directory: which node holds which user's sessions.

Every node keeps the whole directory in memory (a dict lookup per recipient on the hot path)
and Redis keeps the truth it is rebuilt from:

- ``presenced:nodes`` — the set of node ids;
- ``presenced:node:<id>:users`` — users with at least one session on that node;
- ``presenced:node:<id>:sessions`` — a hash: user -> JSON list of that user's sessions
  there as ``[protocol, label]`` (read only by the admin view ``user_sessions``);
- ``presenced:node:<id>:alive`` — a key that expires ``node_timeout`` seconds after the
  node's last heartbeat.

Changes travel on the ``presenced:directory`` channel as ``+ node user``, ``- node user``,
``hb node`` and ``bye node``. A node whose heartbeat is older than ``node_timeout`` is dead:
its users leave the directory and :attr:`on_users_gone` is told, so their friends on live
nodes see them go unavailable. After a lost subscription, or when a node announces ``sync``
(it started again, or reconnected), its entries are re-read from Redis; users it no longer
holds are gone too (their ``-`` was lost, or the node restarted before it was declared dead).

A node's writes and announcements go over one connection (:attr:`RedisLink.ordered`), so
Redis holds an entry before the others hear of it; changes heard while a node's entries are
being re-read are applied again on top of what was read.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterable, Optional

from twisted.internet import defer, reactor, task
from twisted.logger import Logger

from presenced.cluster.link import RedisLink
from presenced.router import ISession, SubscriptionRouter

CHANNEL = "presenced:directory"
STOP_TIMEOUT = 2.0
NODES = "presenced:nodes"


def users_key(node: str) -> str:
    return f"presenced:node:{node}:users"


def alive_key(node: str) -> str:
    return f"presenced:node:{node}:alive"


def sessions_key(node: str) -> str:
    return f"presenced:node:{node}:sessions"


def node_keys(node: str) -> list[str]:
    return [users_key(node), alive_key(node), sessions_key(node)]


GoneListener = Callable[[str, set[str]], Any]


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class SessionDirectory:
    """Which other nodes have sessions of a user; keeps this node's entries in Redis."""

    log = Logger()

    def __init__(self, link: RedisLink, node_id: str, router: SubscriptionRouter,
                 heartbeat_interval: float, node_timeout: float):
        self.link = link
        self.node_id = node_id
        self.router = router
        self.heartbeat_interval = heartbeat_interval
        self.node_timeout = node_timeout
        self.nodes_of: dict[str, set[str]] = {}
        self.users_of: dict[str, set[str]] = {}
        self.last_seen: dict[str, float] = {}
        self.on_users_gone: list[GoneListener] = []
        # node -> changes heard while its entries are being read from Redis
        self._loading: dict[str, list[tuple[str, str]]] = {}
        self._heartbeat: Optional[task.LoopingCall] = None
        link.subscribe(CHANNEL, self._message)
        link.on_reconnect.append(self.reload)

    # --- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        """Begin heartbeats and tracking local logins (the link's first subscription has
        already loaded the directory and registered this node)."""
        self.router.login_listeners.append(self._local_login)
        self.router.logout_listeners.append(self._local_logout)
        self._heartbeat = task.LoopingCall(self._tick)
        self._heartbeat.start(self.heartbeat_interval, now=False)

    @defer.inlineCallbacks
    def stop(self):
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self.router.login_listeners.remove(self._local_login)
        self.router.logout_listeners.remove(self._local_logout)
        goodbye = defer.ensureDeferred(self._deregister())
        goodbye.addTimeout(STOP_TIMEOUT, reactor)
        try:
            yield goodbye
        except Exception as e:
            # Redis away: the others will see our heartbeat stop instead.
            self.log.warn("cluster: could not deregister from Redis: {e}", e=e)

    async def _deregister(self) -> None:
        await self.link.ordered.delete(node_keys(self.node_id))
        await self.link.ordered.srem(NODES, self.node_id)
        await self.link.publish(CHANNEL, f"bye {self.node_id}", ordered=True)

    # --- queries -------------------------------------------------------------------------

    def nodes(self) -> list[str]:
        """Live nodes, this one included."""
        return sorted({self.node_id, *self.users_of, *self.last_seen})

    def remote_users(self) -> Iterable[str]:
        """Users with sessions on other nodes."""
        return self.nodes_of.keys()

    async def remote_sessions(self, user: str) -> list[tuple[str, str]]:
        """``(protocol, label)`` of ``user``'s sessions on other nodes, read from Redis."""
        found: list[tuple[str, str]] = []
        for node in sorted(self.nodes_of.get(user, ())):
            text = await self.link.commands.hget(sessions_key(node), user)
            found.extend((protocol, label) for protocol, label in json.loads(_text(text or "[]")))
        return found

    # --- local changes -------------------------------------------------------------------

    def _local_login(self, user: str, session: ISession) -> None:
        redis = self.link.ordered
        if len(self.router.sessions(user)) == 1:
            redis.sadd(users_key(self.node_id), user).addErrback(self._write_failed)
            self.link.publish(CHANNEL, f"+ {self.node_id} {user}", ordered=True)
        redis.hset(sessions_key(self.node_id), user,
                   self._sessions_text(user)).addErrback(self._write_failed)

    def _local_logout(self, user: str, session: ISession) -> None:
        redis = self.link.ordered
        if self.router.is_online(user):
            redis.hset(sessions_key(self.node_id), user,
                       self._sessions_text(user)).addErrback(self._write_failed)
            return
        redis.srem(users_key(self.node_id), user).addErrback(self._write_failed)
        redis.hdel(sessions_key(self.node_id), user).addErrback(self._write_failed)
        self.link.publish(CHANNEL, f"- {self.node_id} {user}", ordered=True)

    def _sessions_text(self, user: str) -> str:
        return json.dumps([[s.protocol, str(s.label)] for s in self.router.sessions(user)])

    def _write_failed(self, failure: Any) -> None:
        self.log.warn("cluster: directory update failed: {e}", e=failure.getErrorMessage())

    # --- remote changes ------------------------------------------------------------------

    def _message(self, text: str) -> None:
        kind, _, rest = text.partition(" ")
        node, _, user = rest.partition(" ")
        if node == self.node_id or not node:
            return
        if kind == "bye":
            # A stopping node leaves before its sessions have ended (a slow client's close
            # may take the whole grace period): those users are gone for their friends now.
            users = self._forget(node)
            if users:
                self._tell_gone(node, users)
            return
        self.last_seen[node] = time.monotonic()
        if kind == "sync":
            self._load_node(node).addErrback(self._write_failed)
        elif kind in ("+", "-"):
            loading = self._loading.get(node)
            if loading is not None:
                loading.append((kind, user))
            (self._add if kind == "+" else self._remove)(node, user)

    def _add(self, node: str, user: str) -> None:
        self.nodes_of.setdefault(user, set()).add(node)
        self.users_of.setdefault(node, set()).add(user)

    def _remove(self, node: str, user: str) -> None:
        nodes = self.nodes_of.get(user)
        if nodes is not None:
            nodes.discard(node)
            if not nodes:
                del self.nodes_of[user]
        users = self.users_of.get(node)
        if users is not None:
            users.discard(user)

    def _forget(self, node: str) -> set[str]:
        users = self.users_of.pop(node, set())
        self.last_seen.pop(node, None)
        for user in users:
            nodes = self.nodes_of.get(user)
            if nodes is not None:
                nodes.discard(node)
                if not nodes:
                    del self.nodes_of[user]
        return users

    @defer.inlineCallbacks
    def reload(self):
        """Rebuild the view of other nodes from Redis (start-up, after a lost subscription).

        This node first writes its own entries again (Redis may have restarted without them)
        and announces ``sync``, so the others re-read them. A node we knew is kept for one
        more ``node_timeout`` even if its alive key expired while Redis was away: only
        missed heartbeats make it dead.
        """
        yield self._register_self()
        nodes = yield self.link.commands.smembers(NODES)
        now = time.monotonic()
        for node in map(_text, nodes):
            if node == self.node_id:
                continue
            alive = yield self.link.commands.exists(alive_key(node))
            if alive or node in self.last_seen:
                self.last_seen[node] = now
                yield self._load_node(node)
            else:
                yield self._bury(node)
        self.log.info("cluster: directory loaded, {n} other node(s)", n=len(self.last_seen))

    @defer.inlineCallbacks
    def _register_self(self):
        """Make Redis hold exactly this node's users, never dropping a current one on the way
        (another node may be reading the set meanwhile), then tell the others to re-read it."""
        redis = self.link.ordered
        users = {session.user for session in self.router.all_sessions()}
        key, sessions = users_key(self.node_id), sessions_key(self.node_id)
        if users:
            yield redis.sadd(key, list(users))
            yield redis.hmset(sessions, {user: self._sessions_text(user) for user in users})
        stale = set(map(_text, (yield redis.smembers(key)))) - users
        if stale:
            yield redis.srem(key, list(stale))
        stale = set(map(_text, (yield redis.hkeys(sessions)))) - users
        if stale:
            yield redis.hdel(sessions, list(stale))
        yield self._beat()
        yield self.link.publish(CHANNEL, f"sync {self.node_id}", ordered=True)

    @defer.inlineCallbacks
    def _load_node(self, node: str):
        """Re-read ``node``'s users; those we knew that it no longer holds are gone."""
        self._loading[node] = changes = []
        try:
            members = set(map(_text, (yield self.link.commands.smembers(users_key(node)))))
        finally:
            del self._loading[node]
        for kind, user in changes:  # heard after Redis answered, or while it did
            (members.add if kind == "+" else members.discard)(user)
        gone = self.users_of.get(node, set()) - members
        for user in gone:
            self._remove(node, user)
        for user in members:
            self._add(node, user)
        self.users_of.setdefault(node, set())
        if gone:
            self._tell_gone(node, gone)

    # --- heartbeats -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _beat(self):
        """Refresh this node's alive key; fires True when the node had to be registered again
        (another node took it for dead, e.g. after a long Redis outage)."""
        commands = self.link.ordered
        yield commands.set(alive_key(self.node_id), "1", expire=max(1, int(self.node_timeout)))
        added = yield commands.sadd(NODES, self.node_id)
        yield self.link.publish(CHANNEL, f"hb {self.node_id}", ordered=True)
        return bool(added)

    @defer.inlineCallbacks
    def _tick(self):
        try:
            if (yield self._beat()):
                yield self._register_self()
        except Exception as e:
            # Without Redis we hear no heartbeats either: nobody is declared dead for that.
            self.log.warn("cluster: heartbeat failed (Redis unreachable?): {e}", e=e)
            return
        deadline = time.monotonic() - self.node_timeout
        for node, seen in list(self.last_seen.items()):
            if seen < deadline:
                self._declare_dead(node)
                try:
                    yield self._bury(node)
                except Exception as e:
                    self.log.warn("cluster: could not clean up node {node}: {e}", node=node, e=e)

    def _declare_dead(self, node: str) -> None:
        users = self._forget(node)
        self.log.warn("cluster: node {node} stopped answering; {n} user(s) now offline there",
                      node=node, n=len(users))
        self._tell_gone(node, users)

    def _tell_gone(self, node: str, users: set[str]) -> None:
        for listener in self.on_users_gone:
            listener(node, users)

    @defer.inlineCallbacks
    def _bury(self, node: str):
        yield self.link.commands.delete(node_keys(node))
        yield self.link.commands.srem(NODES, node)

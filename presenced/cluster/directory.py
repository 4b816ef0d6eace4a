"""The session directory: which node holds which user's sessions.

Every node keeps the whole directory in memory (a dict lookup per recipient on the hot path)
and Redis keeps the truth it is rebuilt from:

- ``presenced:nodes`` — the set of node ids;
- ``presenced:node:<id>:users`` — users with at least one session on that node;
- ``presenced:node:<id>:alive`` — a key that expires ``node_timeout`` seconds after the
  node's last heartbeat.

Changes travel on the ``presenced:directory`` channel as ``+ node user``, ``- node user``,
``hb node`` and ``bye node``. A node whose heartbeat is older than ``node_timeout`` is dead:
its users leave the directory and :attr:`on_node_dead` is told, so their friends on live nodes
see them go unavailable. After a lost subscription the directory is reloaded from Redis.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

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


DeadNodeListener = Callable[[str, set[str]], Any]


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
        self.on_node_dead: list[DeadNodeListener] = []
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
        await self.link.commands.delete([users_key(self.node_id), alive_key(self.node_id)])
        await self.link.commands.srem(NODES, self.node_id)
        await self.link.publish(CHANNEL, f"bye {self.node_id}")

    # --- queries -------------------------------------------------------------------------

    def nodes(self) -> list[str]:
        """Live nodes, this one included."""
        return sorted({self.node_id, *self.users_of, *self.last_seen})

    # --- local changes -------------------------------------------------------------------

    def _local_login(self, user: str, session: ISession) -> None:
        if len(self.router.sessions(user)) == 1:
            self.link.commands.sadd(users_key(self.node_id), user).addErrback(self._write_failed)
            self.link.publish(CHANNEL, f"+ {self.node_id} {user}")

    def _local_logout(self, user: str, session: ISession) -> None:
        if not self.router.is_online(user):
            self.link.commands.srem(users_key(self.node_id), user).addErrback(self._write_failed)
            self.link.publish(CHANNEL, f"- {self.node_id} {user}")

    def _write_failed(self, failure: Any) -> None:
        self.log.warn("cluster: directory update failed: {e}", e=failure.getErrorMessage())

    # --- remote changes ------------------------------------------------------------------

    def _message(self, text: str) -> None:
        kind, _, rest = text.partition(" ")
        node, _, user = rest.partition(" ")
        if node == self.node_id or not node:
            return
        if kind == "bye":
            self._forget(node)
            return
        self.last_seen[node] = time.monotonic()
        if kind == "sync":
            self._load_node(node).addErrback(self._write_failed)
        elif kind == "+":
            self._add(node, user)
        elif kind == "-":
            self._remove(node, user)

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
                yield self._load_node(node)
                self.last_seen[node] = now
            else:
                yield self._bury(node)
        self.log.info("cluster: directory loaded, {n} other node(s)", n=len(self.last_seen))

    @defer.inlineCallbacks
    def _register_self(self):
        """Make Redis hold exactly this node's users, never dropping a current one on the way
        (another node may be reading the set meanwhile), then tell the others to re-read it."""
        users = {session.user for session in self.router.all_sessions()}
        key = users_key(self.node_id)
        if users:
            yield self.link.commands.sadd(key, list(users))
        stale = set(map(_text, (yield self.link.commands.smembers(key)))) - users
        if stale:
            yield self.link.commands.srem(key, list(stale))
        yield self._beat()
        yield self.link.publish(CHANNEL, f"sync {self.node_id}")

    @defer.inlineCallbacks
    def _load_node(self, node: str):
        members = yield self.link.commands.smembers(users_key(node))
        self._forget(node)
        self.users_of[node] = set()
        for user in map(_text, members):
            self._add(node, user)

    # --- heartbeats -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _beat(self):
        """Refresh this node's alive key; fires True when the node had to be registered again
        (another node took it for dead, e.g. after a long Redis outage)."""
        commands = self.link.commands
        yield commands.set(alive_key(self.node_id), "1", expire=max(1, int(self.node_timeout)))
        added = yield commands.sadd(NODES, self.node_id)
        yield self.link.publish(CHANNEL, f"hb {self.node_id}")
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
        for listener in self.on_node_dead:
            listener(node, users)

    @defer.inlineCallbacks
    def _bury(self, node: str):
        yield self.link.commands.delete([users_key(node), alive_key(node)])
        yield self.link.commands.srem(NODES, node)

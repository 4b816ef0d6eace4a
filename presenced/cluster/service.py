"""Joins this node to the cluster: directory, pub/sub transport, dead-node presence, and
where group chat rooms live (:mod:`presenced.cluster.rooms`)."""

from __future__ import annotations

import os
import socket
from typing import Optional

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from presenced import events
from presenced.cluster.bans import SharedBans
from presenced.cluster.directory import SessionDirectory
from presenced.cluster.rooms import ClusterRoomHomes
from presenced.cluster.secret import make_link, shared_secret
from presenced.cluster.transport import PubSubTransport
from presenced.core import Core
from presenced.events import Event


def default_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ClusterService(service.Service):
    """Replaces the router's in-process transport with Redis pub/sub while running."""

    log = Logger()
    name = "cluster"

    def __init__(self, core: Core):
        cfg = core.config.cluster
        self.core = core
        self.node_id = cfg.node_id or default_node_id()
        self.link = make_link(core.config)
        self.directory = SessionDirectory(self.link, self.node_id, core.router,
                                          cfg.heartbeat_interval, cfg.node_timeout)
        self.transport = PubSubTransport(self.link, self.directory, core.router)
        self.bans = SharedBans(self.link, core.auth_guard, self.node_id)
        self.directory.on_users_gone.append(self._users_gone)
        self.room_homes = ClusterRoomHomes(core, self.link, self.directory)
        core.hooks.add("health-details", self.health_details)
        core.hooks.add("node-stopping", self.leave)
        self.leaving: Optional[defer.Deferred] = None
        core.metrics.describe("presenced_cluster_nodes", "gauge", "Live presenced nodes seen")
        core.metrics.gauge("presenced_cluster_nodes", lambda: len(self.directory.nodes()))
        core.metrics.describe("presenced_cluster_online_users", "gauge",
                              "Users online on any node of the cluster (the directory)")
        core.metrics.gauge("presenced_cluster_online_users",
                           core.router.online_users_anywhere)
        core.metrics.describe("presenced_cluster_messages_total", "counter",
                              "Events carried between nodes over Redis pub/sub")
        core.metrics.gauge("presenced_cluster_messages_total",
                           lambda: self.transport.published, direction="out")
        core.metrics.gauge("presenced_cluster_messages_total",
                           lambda: self.transport.received, direction="in")
        core.metrics.describe("presenced_redis_reconnects_total", "counter",
                              "Times the cluster's Redis subscription was restored")
        core.metrics.gauge("presenced_redis_reconnects_total", lambda: self.link.reconnects,
                           link="cluster")

    @defer.inlineCallbacks
    def join(self):
        """Start after the store and before the doors (they check tokens with the cluster's
        secret): fires once the node is registered."""
        yield self.link.start()
        self.core.secret = yield defer.ensureDeferred(
            shared_secret(self.link.commands, self.core.secret))
        self.directory.start()
        self.core.router.transport = self.transport
        self.core.rooms.homes = self.room_homes
        self.log.info("cluster: node {node} joined ({n} node(s) live)", node=self.node_id,
                      n=len(self.directory.nodes()))

    def health_details(self) -> dict[str, object]:
        """For ``/health`` and ``presencedctl status``: this node and the live ones."""
        return {"node": self.node_id, "cluster_nodes": self.directory.nodes()}

    def leave(self) -> defer.Deferred:
        """Leave the directory (once): the other nodes tell this node's users' friends
        that they went offline at once, not after the stop's grace period, during which a
        slow client's session may linger here."""
        if self.leaving is None:
            self.leaving = self.directory.stop()
        return self.leaving

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        yield self.leave()
        yield self.link.stop()

    def _users_gone(self, node: str, users: set[str]) -> None:
        """``users`` have no session on ``node`` any more (it died, or restarted before it
        was declared dead): tell their friends here, unless they are still online on
        another node (then this node cannot tell which of their resources went)."""
        router = self.core.router
        for user in users:
            if router.is_online_anywhere(user):
                continue
            event = Event(events.PRESENCE, user, {"available": False, "show": None,
                                                   "status": None, "resource": None,
                                                   "reason": f"node {node} is gone"})
            # Each live node tells its own sessions, from its own followers index.
            router.fan_out_local(user, event)

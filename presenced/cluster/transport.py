"""The router transport between nodes: Redis pub/sub, one publish per node per reactor turn.

Local recipients are delivered to directly. For the others the directory says which nodes
hold their sessions; each such node gets the event with its recipients there, so a fan-out
to a thousand friends on another node costs one entry, not a thousand. Entries for a node are
batched until the end of the current reactor turn and go out as one message on
``presenced:node:<id>``: under load many events share one PUBLISH, and no event waits for
a later one.
"""

from __future__ import annotations

from typing import Iterable

from twisted.internet import defer, reactor
from twisted.logger import Logger
from zope.interface import implementer

from presenced.cluster import wire
from presenced.cluster.directory import SessionDirectory
from presenced.cluster.link import RedisLink
from presenced.events import Event
from presenced.router import IRouterTransport, SubscriptionRouter


def node_channel(node: str) -> str:
    return f"presenced:node:{node}"


@implementer(IRouterTransport)
class PubSubTransport:
    log = Logger()

    def __init__(self, link: RedisLink, directory: SessionDirectory, router: SubscriptionRouter):
        self.link = link
        self.directory = directory
        self.router = router
        self.published = 0
        self.received = 0
        self._outbox: dict[str, list[str]] = {}
        link.subscribe(node_channel(directory.node_id), self._received)

    def route(self, router: SubscriptionRouter, recipients: Iterable[str], event: Event) -> int:
        reached = 0
        remote: dict[str, list[str]] = {}
        nodes_of = self.directory.nodes_of
        for user in recipients:
            reached += router.deliver_local(user, event)
            nodes = nodes_of.get(user)
            if nodes:
                for node in nodes:
                    remote.setdefault(node, []).append(user)
        if remote:
            outbox = self._outbox
            if not outbox:
                reactor.callLater(0, self._flush)
            for node, users in remote.items():
                outbox.setdefault(node, []).append(wire.encode(users, event))
        return reached

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        for node, encoded in outbox.items():
            self.published += len(encoded)
            self.link.publish(node_channel(node), wire.batch(encoded))

    def remote_nodes(self, user: str) -> Iterable[str]:
        return self.directory.nodes_of.get(user, ())

    def remote_users(self) -> Iterable[str]:
        return self.directory.remote_users()

    def remote_sessions(self, user: str) -> defer.Deferred:
        return defer.ensureDeferred(self.directory.remote_sessions(user))

    def _received(self, message: str) -> None:
        for users, event in wire.decode(message):
            self.received += 1
            for user in users:
                self.router.deliver_local(user, event)


@defer.inlineCallbacks
def send_local(router: SubscriptionRouter, subject: str, event: Event):
    """Deliver to the subject's subscribers on this node only (each node does its own)."""
    subscribers = yield router.store.get_subscribers(subject)
    reached = 0
    for user in subscribers:
        reached += router.deliver_local(user, event)
    return reached

"""The router transport between nodes: Redis pub/sub, one message per node per event.

Local recipients are delivered to directly. For the others the directory says which nodes
hold their sessions; each such node gets one message on ``presenced:node:<id>`` carrying the
event and its recipients there, so a fan-out to a thousand friends on another node costs one
publish, not a thousand.
"""

from __future__ import annotations

from typing import Iterable

from twisted.internet import defer
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
        for node, users in remote.items():
            self.published += 1
            self.link.publish(node_channel(node), wire.encode(users, event))
        return reached

    def remote_nodes(self, user: str) -> Iterable[str]:
        return self.directory.nodes_of.get(user, ())

    def _received(self, message: str) -> None:
        users, event = wire.decode(message)
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

"""The router transport between nodes: Redis pub/sub, one publish per channel per reactor turn.

Two kinds of traffic, each reaching only the nodes that need it:

- **A subject's events** (``router.send``: tunes, presence, PEP) go to the channel
  ``presenced:subject:<subject>``. A node subscribes to the channel of every subject its own
  sessions follow (its followers index says which: a subject gains its first follower here,
  the node joins; it loses its last one, the node leaves), and fans each event out from its
  own index, so no node reads the store to send and no node hears of subjects nobody there
  follows (Centrifugo's model). The sender delivers to its own sessions directly and ignores
  its own copy coming back.
- **Events for given users** (``router.deliver``: messages, roster pushes) go, for users the
  directory places on other nodes, to ``presenced:node:<id>`` of each such node with its
  recipients there: a fan-out to a thousand friends on another node costs one entry.

Entries are batched until the end of the current reactor turn and go out as one message per
channel: under load many events share one PUBLISH, and no event waits for a later one.

Graph changes made on a node (friends, subscriptions, removed accounts) go to every node on
``presenced:graph``; each applies those of its own online users to its index. A change and
the events sent after it leave over one connection, so every node hears them in that order:
a removed subscriber's node drops it before the next event arrives. A new follower's node
starts hearing the subject once its ``SUBSCRIBE`` is in (one Redis round trip after it heard
of the change, or of the login). Changes announced while a node's subscription was lost are
caught up when it is back: the node reads its online users' subscriptions again.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Iterable, Sequence

from twisted.internet import defer, reactor
from twisted.logger import Logger
from zope.interface import implementer

from presenced.cluster import wire
from presenced.cluster.directory import SessionDirectory
from presenced.cluster.link import RedisLink
from presenced.events import Event
from presenced.router import IRouterTransport, SubscriptionRouter
from presenced.store import Pair

SUBJECT_PREFIX = "presenced:subject:"
GRAPH_CHANNEL = "presenced:graph"


def node_channel(node: str) -> str:
    return f"presenced:node:{node}"


def subject_channel(subject: str) -> str:
    return SUBJECT_PREFIX + subject


@implementer(IRouterTransport)
class PubSubTransport:
    log = Logger()

    def __init__(self, link: RedisLink, directory: SessionDirectory, router: SubscriptionRouter):
        self.link = link
        self.directory = directory
        self.router = router
        self.node_id = directory.node_id
        self.published = 0
        self.received = 0
        # Events of this reactor turn, as wire docs, serialised per channel at its end.
        self._outbox: dict[str, list[wire.Record]] = {}  # node -> entries for its users
        self._subjects: dict[str, list[dict]] = {}   # subject -> its events
        link.subscribe(node_channel(self.node_id), self._received)
        link.subscribe(GRAPH_CHANNEL, self._graph_received)
        link.subscribe_family(SUBJECT_PREFIX, self._subject_received)
        followers = router.followers
        for subject in followers.subjects():
            link.join(subject)
        followers.on_interest.append(link.join)
        followers.on_no_interest.append(link.leave)
        link.on_reconnect.append(followers.refresh)  # graph changes may have been missed

    # --- out -------------------------------------------------------------------------------

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
            self._flush_soon()
            outbox = self._outbox
            for node, users in remote.items():
                outbox.setdefault(node, []).append(wire.record(users, event))
        return reached

    def broadcast(self, router: SubscriptionRouter, subject: str, event: Event,
                  hidden: frozenset[str]) -> None:
        self._flush_soon()
        self._subjects.setdefault(subject, []).append(wire.event_doc([], event, hidden))

    def subscriptions_changed(self, added: Sequence[Pair], removed: Sequence[Pair],
                              gone: Sequence[str]) -> None:
        # Events of this turn sent before the change go first, on the same connection.
        self._flush()
        self.link.publish(GRAPH_CHANNEL, wire.encode_graph(self.node_id, added, removed, gone),
                          ordered=True)

    def _flush_soon(self) -> None:
        if not self._outbox and not self._subjects:
            reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        outbox, self._outbox = self._outbox, {}
        subjects, self._subjects = self._subjects, {}
        publish = self.link.publish
        for node, docs in outbox.items():
            self.published += len(docs)
            # On the one ordered connection: over a pool, a turn's batch could overtake the
            # one before (a chat's messages out of order on the other node), and over another
            # connection than the directory's a probe's answer could overtake the "+" that
            # tells the other node where its asker is (the answer found nobody).
            publish(node_channel(node), self._serialised(wire.frame, docs), ordered=True)
        for subject, docs in subjects.items():
            self.published += len(docs)
            publish(subject_channel(subject),
                    self._serialised(partial(wire.subject_batch, self.node_id), docs),
                    ordered=True)

    def _serialised(self, serialise: Callable[[list], str], docs: list) -> str:
        try:
            return serialise(docs)
        except (TypeError, ValueError):
            kept = wire.encodable(docs)
            self.log.error("cluster: {n} event(s) with a payload JSON cannot carry were not "
                           "sent to other nodes", n=len(docs) - len(kept))
            return serialise(kept)

    # --- in --------------------------------------------------------------------------------

    def _received(self, message: str) -> None:
        for users, event in wire.decode(message):
            self.received += 1
            for user in users:
                self.router.deliver_local(user, event)

    def _subject_received(self, subject: str, message: str) -> None:
        origin, events = wire.decode_subject_batch(message)
        if origin == self.node_id:
            return
        fan_out = self.router.fan_out_local
        for event, hidden in events:
            self.received += 1
            fan_out(subject, event, hidden)

    def _graph_received(self, message: str) -> None:
        origin, added, removed, gone = wire.decode_graph(message)
        if origin != self.node_id:
            self.router.followers.apply(added, removed, gone)

    # --- the directory's answers -------------------------------------------------------------

    def remote_nodes(self, user: str) -> Iterable[str]:
        return self.directory.nodes_of.get(user, ())

    def remote_users(self) -> Iterable[str]:
        return self.directory.remote_users()

    def remote_sessions(self, user: str) -> defer.Deferred:
        return defer.ensureDeferred(self.directory.remote_sessions(user))

"""Authentication bans shared by the nodes of a cluster (``docs/security.md``).

Behind a load balancer a guesser's connections spread over every node; a ban decided on one
node (:class:`presenced.authguard.AuthGuard`) must hold on all. Each ban this node decides is
written to a sorted set in Redis (member ``kind name``, score: the time it ends) and announced
on a channel; the other nodes apply what they hear for the seconds it has left. A node that
joins, or gets its subscription back after losing it, reads the bans still running from the
set. Failures below the limits stay counted per node.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.logger import Logger

from presenced.authguard import MAX_TRACKED, AuthGuard
from presenced.cluster.link import RedisLink

BANS_CHANNEL = "presenced:auth-bans"
BANS_KEY = "presenced:auth-bans"  # sorted set: "kind name" -> the Unix time the ban ends


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class SharedBans:
    """Passes this node's bans on and applies the others' (and those running at start)."""

    log = Logger()

    def __init__(self, link: RedisLink, guard: AuthGuard, node_id: str):
        self.link = link
        self.guard = guard
        self.node_id = node_id
        link.subscribe(BANS_CHANNEL, self._heard)
        link.on_reconnect.append(self.load)  # the first subscription too
        guard.ban_listeners.append(self._decided)

    def _decided(self, kind: str, name: str, seconds: float) -> None:
        member = f"{kind} {name}"
        commands = self.link.commands
        d = commands.zadd(BANS_KEY, time.time() + seconds, member)
        # Bounded as the guard is: expired bans go, and past MAX_TRACKED the oldest.
        d.addCallback(lambda _: commands.zremrangebyscore(BANS_KEY, "-inf", time.time()))
        d.addCallback(lambda _: commands.zremrangebyrank(BANS_KEY, 0, -MAX_TRACKED - 1))
        d.addCallback(lambda _: self.link.publish(
            BANS_CHANNEL, f"{self.node_id} {seconds:.3f} {member}"))
        d.addErrback(self._failed)

    def _heard(self, message: str) -> None:
        node, seconds, kind, name = message.split(" ", 3)
        if node != self.node_id:
            self.guard.ban(kind, name, float(seconds))

    async def load(self) -> None:
        """Apply the bans still running in Redis."""
        now = time.time()
        try:
            running = await self.link.commands.zrangebyscore(BANS_KEY, now, "+inf",
                                                             withscores=True)
        except Exception as e:  # Redis away: bans heard later still apply
            self.log.warn("cluster: could not read the running auth bans: {e}", e=e)
            return
        for member, until in running:
            kind, _, name = _text(member).partition(" ")
            self.guard.ban(kind, name, float(until) - now)

    def _failed(self, failure: Any) -> None:
        self.log.warn("cluster: could not share an auth ban: {error}",
                      error=failure.getErrorMessage())

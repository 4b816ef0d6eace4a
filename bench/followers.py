#!/usr/bin/env python3
"""The router's followers index: its memory per online user, and a send with and without it.

    python3 bench/followers.py                 # n=10000 users, BA m=10, all online
    python3 bench/followers.py --n 50000 --online 0.5

Loads a Barabási–Albert friends graph (``bench/graph.py``) into an embedded store, logs every
online user into a real :class:`SubscriptionRouter` with a session that only counts, and
waits until the index holds them. Then prints JSON with

- the Python memory the router holds per online user (tracemalloc, sessions included) and
  per indexed edge;
- ``router.send`` from random subjects (the index: a lookup and a loop), in sends/s and
  deliveries/s of the router alone (the sessions do nothing);
- for comparison, what every send used to cost first: ``store.get_subscribers`` of the
  same subjects, read one after the other from the reactor (sends/s it allows at most).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from twisted.internet import defer, task  # noqa: E402

from bench.graph import barabasi_albert, user_name  # noqa: E402
from presenced.events import Event  # noqa: E402
from presenced.router import SubscriptionRouter  # noqa: E402
from presenced.store.embedded import EmbeddedRosterStore  # noqa: E402


class CountingSession:
    """A session that takes events and does nothing: what is measured is the router."""

    __slots__ = ("user", "taken")
    protocol = "bench"
    label = "s"

    def __init__(self, user: str):
        self.user = user
        self.taken = 0

    def deliver(self, event: Event) -> None:
        self.taken += 1

    def close(self, reason: str) -> None:
        pass


async def measure(reactor, args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="followers-bench-"))
    store = EmbeddedRosterStore(str(work / "store.sqlite3"))
    await store.start()
    pairs = [(user_name(a), user_name(b)) for a, b in barabasi_albert(args.n, args.m, args.seed)]
    for start in range(0, len(pairs), 20000):
        await store.add_friends(pairs[start:start + 20000])
    rng = random.Random(args.seed)
    users = [user_name(i) for i in range(args.n)]
    online = rng.sample(users, int(args.n * args.online))

    async def log_everyone_in(router: SubscriptionRouter) -> float:
        started = time.perf_counter()
        for user in online:
            router.login(user, CountingSession(user))
        await router.send(online[0], Event("tune", online[0], {}))  # waits for every read
        return time.perf_counter() - started

    router = SubscriptionRouter(store)
    index_seconds = await log_everyone_in(router)  # timed without tracemalloc
    for session in list(router.all_sessions()):
        router.logout(session)
    router = SubscriptionRouter(store)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    await log_everyone_in(router)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    edges = sum(len(s) for s in router.followers.follows.values())

    subjects = [rng.choice(users) for _ in range(args.sends)]
    event = Event("tune", "bench", {"title": "t"})
    deliveries = router.deliveries
    started = time.perf_counter()
    for subject in subjects:
        router.send(subject, event)
    send_seconds = time.perf_counter() - started
    delivered = router.deliveries - deliveries

    reads = subjects[:args.reads]
    started = time.perf_counter()
    for subject in reads:
        await store.get_subscribers(subject)
    read_seconds = time.perf_counter() - started
    await store.stop()
    return {
        "bench": "followers",
        "users": args.n, "m": args.m, "online": len(online), "indexed_edges": edges,
        "index_build_seconds": round(index_seconds, 3),
        "logins_indexed_per_second": round(len(online) / index_seconds),
        "router_bytes_per_online_user": round(held / len(online)),
        "router_bytes_per_indexed_edge": round(held / edges, 1),
        "sends": len(subjects), "deliveries": delivered,
        "sends_per_second": round(len(subjects) / send_seconds),
        "deliveries_per_second": round(delivered / send_seconds),
        "store_reads_per_second_one_at_a_time": round(len(reads) / read_seconds),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--m", type=int, default=10)
    parser.add_argument("--online", type=float, default=1.0, help="share of users online")
    parser.add_argument("--sends", type=int, default=100000)
    parser.add_argument("--reads", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    async def run(reactor) -> None:
        print(json.dumps(await measure(reactor, args), indent=2))

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()

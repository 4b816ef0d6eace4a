"""The store reads of a login, alone: what the embedded store costs the reactor per login.

After SASL a login asks the store for six things in one reactor turn (followed subjects,
blocklist, private data, pending subscription requests, offline messages, pubsub approvals);
in a login storm many logins ask in the same turn. This asks ``--logins`` logins' six reads
per turn, ``--rounds`` times, and prints JSON: logins/s and the reactor thread's CPU per login.
Run it once per checkout for a before/after (``PYTHONPATH`` picks the checkout)::

    PYTHONPATH=/path/to/checkout python3 bench/login_reads.py --logins 100 --rounds 50
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from twisted.internet import defer, reactor

from presenced.scram import make_credentials
from presenced.store.embedded import EmbeddedRosterStore


async def measure(logins: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="presenced-bench-reads-") as directory:
        store = EmbeddedRosterStore(os.path.join(directory, "store.sqlite3"))
        await store.start()
        users = [f"u{i}@localhost" for i in range(logins)]
        credentials = make_credentials("pw", 8)
        await defer.gatherResults([store.create_user(u, credentials) for u in users])
        blocking, private, pending, pubsub = (store.open_map(name) for name in
                                              ("blocking", "private", "pending", "pubsub"))
        offline = store.open_list("offline")
        cpu, wall = time.thread_time(), time.perf_counter()
        for _ in range(rounds):
            asked = []
            for u in users:
                asked += [store.get_subscriptions(u), blocking.items(u), private.get(u, "k"),
                          pending.items(u), offline.pop_all(u), pubsub.items(u)]
            await defer.gatherResults(asked)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        await store.stop()
    n = logins * rounds
    return {"logins_per_turn": logins, "logins": n, "logins_per_s": round(n / wall),
            "reactor_cpu_us_per_login": round(1e6 * cpu / n, 1),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=100, help="logins asking in one turn")
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()

    def run() -> None:
        d = defer.ensureDeferred(measure(args.logins, args.rounds))
        d.addCallback(lambda figures: print(json.dumps(figures)))
        d.addErrback(lambda failure: failure.printTraceback())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()


if __name__ == "__main__":
    main()

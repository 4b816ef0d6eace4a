"""``presencedctl copy-store`` benchmark: an embedded store of ``--n`` users (accounts, a
Barabási–Albert friends graph, a PEP item for every tenth user, an offline message for every
twentieth) copied into a private Redis Cluster (3 masters, 3 replicas) with
:class:`presenced.copystore.StoreCopy`, the code the command runs, then verified.

Prints one JSON document::

    python3 bench/copy_store.py --n 100000 --m 15
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task

from bench.graph import barabasi_albert, user_name
from bench.procs import PrivateRedisCluster
from presenced import bulk
from presenced.copystore import StoreCopy
from presenced.scram import make_credentials
from presenced.store.embedded import EmbeddedRosterStore
from presenced.store.redis import RedisRosterStore

DOMAIN = "bench.example"


async def fill(store: EmbeddedRosterStore, n: int, m: int) -> None:
    credentials = make_credentials("pw", iterations=4)  # one set: the copy does not care
    for start in range(0, n, 1000):
        await defer.gatherResults([store.create_user(f"{user_name(i)}@{DOMAIN}", credentials)
                                   for i in range(start, min(n, start + 1000))])
    pairs = ((f"{user_name(a)}@{DOMAIN}", f"{user_name(b)}@{DOMAIN}")
             for a, b in barabasi_albert(n, m, 1))
    await bulk.load_friends(store, pairs, bulk.Progress("friendships", None))
    pep, offline = store.open_map("pep"), store.open_list("offline")
    await defer.gatherResults(
        [pep.set(f"{user_name(i)}@{DOMAIN}", "tune", f"<tune>{i}</tune>")
         for i in range(0, n, 10)]
        + [offline.push(f"{user_name(i)}@{DOMAIN}", f"<message id='{i}'/>", 10)
           for i in range(0, n, 20)])


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="presenced-bench-") as tmp:
        work = Path(tmp)
        source = EmbeddedRosterStore(str(work / "source.sqlite3"))
        await source.start()
        started = time.perf_counter()
        await fill(source, args.n, args.m)
        result = {"n": args.n, "m": args.m, "cpus": os.cpu_count(),
                  "fill_seconds": round(time.perf_counter() - started, 2)}
        with PrivateRedisCluster(work / "cluster") as cluster:
            target = RedisRosterStore(cluster.seeds, timeout=60.0, cluster=True)
            await target.start()
            copier = StoreCopy(source, target, str(work / "progress"),
                               report=lambda line: print(line, file=sys.stderr))
            started, cpu = time.perf_counter(), time.process_time()
            counts = await copier.copy()
            seconds = time.perf_counter() - started
            result.update(copy_seconds=round(seconds, 2),
                          copy_cpu_seconds=round(time.process_time() - cpu, 2),
                          users_per_second=round(counts.users / seconds),
                          copied=counts.__dict__)
            started = time.perf_counter()
            agreed, differ = await copier.verify()
            result.update(verify_seconds=round(time.perf_counter() - started, 2),
                          verified=agreed.__dict__, differing_users=len(differ),
                          target_count_users=await target.count_users(),
                          redis_cpu_seconds=cluster.cpu_seconds())
            await target.stop()
        await source.stop()
    print(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="users (default 100000)")
    parser.add_argument("--m", type=int, default=15, help="friends per new user (default 15)")
    args = parser.parse_args()
    task.react(lambda _: defer.ensureDeferred(run(args)))


if __name__ == "__main__":
    main()

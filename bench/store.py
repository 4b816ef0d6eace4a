"""Roster store benchmark: bulk-load a Barabási–Albert friends graph, then time lookups.

For each backend it loads the graph with the code ``presencedctl load-friends`` runs
(:func:`presenced.bulk.parse_edges` over an edge-list file, :func:`presenced.bulk.load_friends`),
then times ``get_subscribers`` through the store API from the reactor, one request at a time,
for randomly chosen users. Redis is a private ``redis-server`` started here with persistence as a
deployment would have it (``appendonly yes``, ``appendfsync everysec``).

Prints one JSON document::

    python3 bench/store.py --n 100000 --m 15 --backends embedded,redis
    python3 bench/store.py --n 100000 --m 15 --backends redis,redis-cluster [--wait-replicas 1]

``redis-cluster`` starts a private Redis Cluster (``--cluster-masters`` masters, one replica
each, same persistence) and loads it through the same store calls.

Targets on a 2-core machine: >= 200 000 edges/s loaded, get_subscribers p99 <= 1 ms at
n = 1 000 000.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as a file: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, reactor, task

from bench.graph import barabasi_albert, user_name, write_edge_list
from bench.procs import PrivateRedisCluster, cpu_seconds, percentile, start_redis
from presenced import bulk
from presenced.store import IRosterStore

DOMAIN = "bench.example"


class PrivateRedis:
    """A persisting redis-server in ``directory`` on a free loopback port, for a ``with``."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.process: Optional[subprocess.Popen] = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> "PrivateRedis":
        self.process, self.port = start_redis(self.directory, persist=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(60)

    def cpu_seconds(self) -> float:
        """CPU the server used so far (user + system), from /proc."""
        return round(cpu_seconds(self.process.pid), 2)

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.directory.rglob("*") if f.is_file()
                   and f.name != "redis.log")


@defer.inlineCallbacks
def measure(store: IRosterStore, edges_path: Path, n: int, samples: int, seed: int):
    """Load the edge list, then sample get_subscribers; fires the figures as a dict."""
    yield store.start()
    try:
        bad: list[int] = []
        progress = bulk.Progress("friendships", sys.stderr, every=5.0)
        with open(edges_path) as f:
            pairs = bulk.parse_edges(f, DOMAIN, lambda number, line, reason: bad.append(number))
            started, cpu_started = time.perf_counter(), time.process_time()
            loaded = yield bulk.load_friends(store, pairs, progress)
            load_seconds = time.perf_counter() - started
            load_cpu = time.process_time() - cpu_started
        rng = random.Random(seed)
        users = [f"{user_name(rng.randrange(n))}@{DOMAIN}" for _ in range(samples)]
        for user in users[:100]:  # warm up connections and caches
            yield store.get_subscribers(user)
        latencies = []
        sizes = []
        for user in users:
            t0 = time.perf_counter()
            subscribers = yield store.get_subscribers(user)
            latencies.append(time.perf_counter() - t0)
            sizes.append(len(subscribers))
        latencies.sort()
        store_bytes = yield store.size_bytes()
    finally:
        yield store.stop()
    return {
        "edges": loaded,
        "bad_lines": len(bad),
        "load_seconds": round(load_seconds, 2),
        "edges_per_second": round(loaded / load_seconds),
        # CPU this process used for the load (parsing, the store's client side, SQLite):
        # the machine is shared, so wall-clock rates depend on what else runs.
        "load_cpu_seconds": round(load_cpu, 2),
        "get_subscribers_samples": samples,
        "get_subscribers_p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "get_subscribers_p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "get_subscribers_max_ms": round(latencies[-1] * 1000, 3),
        "subscribers_p50": sorted(sizes)[len(sizes) // 2],
        "subscribers_max": max(sizes),
        "store_bytes": store_bytes,
        # the machine is shared: the load around this backend's run, to judge its figures
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


@defer.inlineCallbacks
def run_backend(backend: str, args: argparse.Namespace, edges_path: Path, work: Path):
    """Fires the figures of one backend."""
    if backend == "embedded":
        from presenced.store.embedded import EmbeddedRosterStore

        path = work / "embedded" / "presenced.sqlite3"
        figures = yield measure(EmbeddedRosterStore(str(path)), edges_path, args.n,
                                args.samples, args.seed)
        figures["disk_bytes"] = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
        return figures
    if backend == "redis":
        from presenced.store.redis import RedisRosterStore

        with PrivateRedis(work / "redis") as redis:
            figures = yield measure(RedisRosterStore([redis.url], timeout=60.0), edges_path,
                                    args.n, args.samples, args.seed)
            figures["redis_used_memory_bytes"] = figures.pop("store_bytes")
            figures["redis_cpu_seconds"] = redis.cpu_seconds()
            yield task.deferLater(reactor, 1.5, lambda: None)  # appendfsync everysec
            figures["disk_bytes"] = redis.disk_bytes()
        return figures
    if backend == "redis-cluster":
        from presenced.store.redis import RedisRosterStore

        with PrivateRedisCluster(work / "redis-cluster", args.cluster_masters) as cluster:
            store = RedisRosterStore(cluster.seeds, timeout=60.0, cluster=True,
                                     wait_replicas=args.wait_replicas)
            figures = yield measure(store, edges_path, args.n, args.samples, args.seed)
            # used_memory summed over the masters (replicas hold as much again)
            figures["redis_used_memory_bytes"] = figures.pop("store_bytes")
            figures["redis_cpu_seconds"] = cluster.cpu_seconds()
            figures["masters"] = args.cluster_masters
            figures["wait_replicas"] = args.wait_replicas
            yield task.deferLater(reactor, 1.5, lambda: None)  # appendfsync everysec
            figures["disk_bytes"] = cluster.disk_bytes()
        return figures
    raise SystemExit(f"unknown backend {backend!r} (embedded, redis, redis-cluster)")


@defer.inlineCallbacks
def run(args: argparse.Namespace):
    result: dict[str, Any] = {"n": args.n, "m": args.m, "cpus": os.cpu_count(),
                              "python": sys.version.split()[0], "backends": {}}
    with tempfile.TemporaryDirectory(prefix="presenced-bench-") as tmp:
        work = Path(tmp)
        edges_path = work / "edges.txt"
        started = time.perf_counter()
        result["edges"] = write_edge_list(str(edges_path),
                                          barabasi_albert(args.n, args.m, args.seed))
        result["generate_seconds"] = round(time.perf_counter() - started, 2)
        for backend in args.backends.split(","):
            print(f"{backend}: loading {result['edges']:,} edges", file=sys.stderr)
            result["backends"][backend] = yield run_backend(backend.strip(), args, edges_path,
                                                            work)
    print(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="users (default 100000)")
    parser.add_argument("--m", type=int, default=15, help="friends per new user (default 15)")
    parser.add_argument("--backends", default="embedded,redis",
                        help="comma-separated: embedded, redis, redis-cluster")
    parser.add_argument("--cluster-masters", type=int, default=3,
                        help="redis-cluster: masters, each with one replica (default 3)")
    parser.add_argument("--wait-replicas", type=int, default=0,
                        help="redis-cluster: [store] redis_wait_replicas (default 0)")
    parser.add_argument("--samples", type=int, default=10_000,
                        help="get_subscribers calls timed per backend")
    parser.add_argument("--seed", type=int, default=1)
    task.react(lambda _: run(parser.parse_args()))


if __name__ == "__main__":
    main()

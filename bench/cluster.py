#!/usr/bin/env python3
"""Cluster benchmark: the same loads on one node and on two nodes of one machine.

Two nodes here are two worker processes (``--workers 2``): separate presenced nodes joined
through a private Redis exactly as separate machines are (session directory, pub/sub
transport), sharing the ports with SO_REUSEPORT. The kernel spreads client connections over
them, so about half of all deliveries cross from one node to the other.

It runs the door benchmarks that already exist, on the Redis store both times so only the
node count changes:

- ``bench/comet.py --store redis --workers 1|2``: deliveries/s and p99 publish-to-delivery
  latency of tunes fanned out over a Barabási–Albert friends graph;
- ``bench/xmpp.py --workers 1|2``: XMPP chat messages/s between online pairs (the one-worker
  run uses the embedded store: the XMPP bench's single node has no Redis).

Prints one JSON document with both runs and the ratios (targets: cross-node delivery ≥ 0.7×
the single-node rate; 2 workers ≥ 1.6× one worker's messages/s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def run(script: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                            text=True, env=dict(os.environ), timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"{script} {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout[result.stdout.index("{"):])


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=5000, help="comet streams")
    parser.add_argument("--seconds", type=float, default=15, help="comet publishing time")
    parser.add_argument("--users", type=int, default=4000, help="XMPP accounts")
    parser.add_argument("--iterations", type=int, default=256,
                        help="SCRAM iterations of the XMPP bench accounts (logins are not "
                             "what this bench measures)")
    args = parser.parse_args()
    comet = {workers: run("comet.py", "--streams", str(args.streams), "--seconds",
                          str(args.seconds), "--store", "redis", "--workers", str(workers))
             for workers in (1, 2)}
    xmpp = {workers: run("xmpp.py", "--users", str(args.users), "--iterations",
                         str(args.iterations), "--workers", str(workers))
            for workers in (1, 2)}
    one, two = comet[1], comet[2]
    print(json.dumps({
        "comet_one_node": {k: one.get(k) for k in ("deliveries_per_second", "latency_ms")},
        "comet_two_nodes": {k: two.get(k) for k in ("deliveries_per_second", "latency_ms")},
        "cross_node_delivery_ratio": ratio(two.get("deliveries_per_second"),
                                           one.get("deliveries_per_second")),
        "xmpp_messages_per_s": {"1_worker": xmpp[1].get("messages_per_s"),
                                "2_workers": xmpp[2].get("messages_per_s")},
        "xmpp_server_cpu_us_per_message": {
            "1_worker": xmpp[1].get("server_cpu_us_per_message"),
            "2_workers": xmpp[2].get("server_cpu_us_per_message")},
        "workers_speedup": ratio(xmpp[2].get("messages_per_s"), xmpp[1].get("messages_per_s")),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }, indent=2))


if __name__ == "__main__":
    main()

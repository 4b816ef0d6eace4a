"""The c2s message path in one process, without sockets; prints JSON.

A real Core and C2SServer with every feature (the in-memory harness of
``tests/xmpp_memory.py``, embedded store in a temporary directory) and pairs of clients on
``StringTransport``s: each client sends chat messages to its partner's bare JID in reads of
ten, as bench/xmpp.py's load client does, and the server's CPU time per delivered message is
measured with ``time.process_time`` around the loop (the path is synchronous from the
sender's read to the recipient's write). Then ``--logins`` clients log in, 25 at a time (SASL
PLAIN at 4 096 PBKDF2 iterations, bind, presence): CPU per login, every thread of the
process counted (the clients' parsing too: compare checkouts, not servers). No load client shares the process, so the figure
holds on a busy machine where the wall-clock rates of bench/xmpp.py do not; ``--checkouts``
measures several revisions one after the other (each in a process of its own).

    python3 bench/xmpp_path.py --checkouts /work/base,/work/wt-perf
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def measure(pairs: int, messages: int, rounds: int, logins: int) -> dict:
    """Runs on the reactor of this process (the checkout's code on sys.path)."""
    from twisted.internet import defer, reactor

    from tests.xmpp_memory import MemoryServer

    result: dict = {}

    async def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            node = await MemoryServer(Path(tmp)).start()
            users = [f"u{i}" for i in range(2 * pairs)]
            await node.add_users(*users)
            clients = [await node.online(u, roster=False) for u in users]
            for client in clients:
                client.transport.clear()
            batches = []
            for i, client in enumerate(clients):
                to = f"u{i ^ 1}@localhost"
                batch = b"".join(b"<message to='%s' type='chat'><body>message %d</body>"
                                 b"</message>" % (to.encode(), n) for n in range(10))
                batches.append((client, batch))
            best = None
            for _ in range(rounds):
                started = time.process_time()
                for _ in range(messages // 10):
                    for client, batch in batches:
                        client.stream.dataReceived(batch)
                    for client in clients:
                        client.transport.clear()
                elapsed = time.process_time() - started
                best = elapsed if best is None else min(best, elapsed)
                await node.settle()
            delivered = len(clients) * (messages // 10) * 10
            result.update({"clients": len(clients), "messages_per_round": delivered,
                           "rounds": rounds,
                           "server_cpu_us_per_message_best": round(1e6 * best / delivered, 2)})
            await node.stop()
        with tempfile.TemporaryDirectory() as tmp:
            node = await MemoryServer(Path(tmp), {"server": {"scram_iterations": 4096}}).start()
            users = [f"l{i}" for i in range(logins)]
            await node.add_users(*users)
            started, wall = time.process_time(), time.perf_counter()
            for wave in range(0, logins, 25):  # 25 in flight: the harness waits 5 s at most
                await defer.gatherResults([defer.ensureDeferred(node.online(u, roster=False))
                                           for u in users[wave:wave + 25]])
            elapsed, wall = time.process_time() - started, time.perf_counter() - wall
            result.update({"logins": logins, "scram_iterations": 4096,
                           "cpu_ms_per_login_plain": round(1000 * elapsed / logins, 3),
                           "logins_per_s_in_process": round(logins / wall, 1)})
            await node.stop()

    def main() -> None:
        d = defer.ensureDeferred(run())
        d.addErrback(lambda f: result.update(error=f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(main)
    reactor.run()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--messages", type=int, default=200, help="per client and round")
    parser.add_argument("--rounds", type=int, default=5, help="the best round is reported")
    parser.add_argument("--logins", type=int, default=500,
                        help="PLAIN logins (bind, presence) at 4096 iterations, 25 at a time")
    parser.add_argument("--checkouts", default="", help="comma-separated checkouts")
    parser.add_argument("--here", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.here:
        print(json.dumps(measure(args.pairs, args.messages, args.rounds, args.logins)))
        return
    results = []
    for checkout in [Path(c).resolve() for c in args.checkouts.split(",") if c] or [REPO]:
        out = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--here", "--pairs",
             str(args.pairs), "--messages", str(args.messages), "--rounds", str(args.rounds),
             "--logins", str(args.logins)],
            env=dict(os.environ, PYTHONPATH=str(checkout)), cwd=checkout, capture_output=True,
            text=True, check=True)
        commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        results.append({"checkout": str(checkout), "commit": commit,
                        **json.loads(out.stdout.strip().splitlines()[-1]),
                        "load_average_1min": round(os.getloadavg()[0], 2)})
    print(json.dumps(results if args.checkouts else results[0], indent=2))


if __name__ == "__main__":
    main()

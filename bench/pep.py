"""Now-playing fan-out benchmark: PEP tune publishes over a Barabási–Albert friends graph.

What it measures, end to end through a real server (``twistd -n presenced``, embedded store):

1. A BA graph of ``--n`` users (``bench/graph.py``) is loaded with ``presencedctl
   load-friends``; the ``--online`` share of users get accounts (``import-users``).
2. Client processes (``--procs``) log those users in over plain TCP (SASL PLAIN, no TLS: a
   minimal raw XMPP client, so the client is not the bottleneck), each announcing entity caps
   with ``tune+notify`` and answering the server's one disco#info query for that hash.
3. Online users publish tunes (``<publish node='http://jabber.org/protocol/tune'>``), each
   client process keeping ``--window`` publishes in flight, until ``--publishes`` are
   acknowledged. Every publish goes client -> c2s -> PEP -> ``core.publish_tune`` -> store
   write -> router fan-out -> each +notify resource of the publisher and its online friends.
4. Receivers timestamp each notification; the tune title carries the publish number, so the
   publish-to-delivery latency is exact (one machine, one monotonic clock).

Prints one JSON document: tune publishes/s (acknowledged), notifications delivered/s (received
by clients, from the first publish to the last notification), p50/p99 latency, and how many
notifications were expected from the graph versus received. The server uses
``scram_iterations`` = ``--scram-iterations`` (default 64) so logins do not dominate set-up;
that changes nothing measured after login.

    python3 bench/pep.py --n 5000 --m 10 --online 0.5 --publishes 4000

Target: >= 20 000 notifications delivered/s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.graph import barabasi_albert, user_name, write_edge_list  # noqa: E402
from bench.procs import cpu_seconds, free_port, percentile, server_pids, start_redis  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DOMAIN = "localhost"
TUNE_NS = "http://jabber.org/protocol/tune"
CAPS_NODE = "https://presenced.example/bench"
CLIENT_FEATURES = ("http://jabber.org/protocol/caps", "http://jabber.org/protocol/disco#info",
                   TUNE_NS, TUNE_NS + "+notify")
HEADER = (f"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
          f"xmlns:stream='http://etherx.jabber.org/streams' to='{DOMAIN}' "
          f"version='1.0'>").encode()
STANZA_START = re.compile(rb"<(message|iq|presence)\b")
TITLE = re.compile(rb"<title>p(\d+)</title>")
ATTR_ID = re.compile(rb"\bid=['\"]([^'\"]+)['\"]")


def caps_ver() -> str:
    from presenced.xmpp.caps import DiscoInfo, caps_hash

    return caps_hash(DiscoInfo((("client", "bot", "", "bench"),), frozenset(CLIENT_FEATURES)))


def disco_answer(iq_id: bytes, ver: str) -> bytes:
    features = "".join(f"<feature var='{f}'/>" for f in CLIENT_FEATURES)
    return (f"<iq type='result' to='{DOMAIN}' id='{iq_id.decode()}'><query "
            f"xmlns='http://jabber.org/protocol/disco#info' node='{CAPS_NODE}#{ver}'>"
            f"<identity category='client' type='bot' name='bench'/>{features}</query></iq>"
            ).encode()


class BenchClient:
    """One logged-in resource: reads stanzas with a cheap scanner, no XML tree."""

    def __init__(self, worker: "Worker", user: str):
        self.worker = worker
        self.user = user
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter
        self.buffer = b""
        self.seen: set[int] = set()

    async def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError(f"{self.user}: closed waiting for {marker!r}: "
                                      f"{self.buffer[-300:]!r}")
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(marker)
        return head + marker

    async def login(self, host: str, port: int, password: str) -> None:
        self.reader, self.writer = await asyncio.open_connection(host, port)
        self.writer.write(HEADER)
        await self._until(b"</stream:features>")
        token = base64.b64encode(f"\0{self.user.split('@')[0]}\0{password}".encode()).decode()
        self.writer.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                          f"{token}</auth>".encode())
        reply = await self._until(b">")
        if b"<success" not in reply:
            raise RuntimeError(f"{self.user}: login refused: {reply!r}")
        self.buffer = b""
        self.writer.write(HEADER)
        await self._until(b"</stream:features>")
        self.writer.write(b"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:"
                          b"xmpp-bind'><resource>bench</resource></bind></iq>")
        await self._until(b"</iq>")
        self.writer.write(f"<presence><c xmlns='http://jabber.org/protocol/caps' hash='sha-1' "
                          f"node='{CAPS_NODE}' ver='{self.worker.ver}'/></presence>".encode())

    async def read_forever(self) -> None:
        worker = self.worker
        while True:
            data = await self.reader.read(262144)
            if not data:
                return
            self.buffer += data
            self._scan()
            worker.last_data = time.monotonic()

    def _scan(self) -> None:
        buffer, pos, worker = self.buffer, 0, self.worker
        while True:
            match = STANZA_START.search(buffer, pos)
            if match is None:
                break
            name = match.group(1)
            start_end = buffer.find(b">", match.end())
            if start_end < 0:
                break
            if buffer[start_end - 1:start_end] == b"/":
                end = start_end + 1
            else:
                close = buffer.find(b"</" + name + b">", start_end)
                if close < 0:
                    break
                end = close + len(name) + 3
            stanza = buffer[match.start():end]
            pos = end
            if name == b"message":
                title = TITLE.search(stanza)
                if title is not None:
                    worker.received(self, int(title.group(1)))
            elif name == b"iq":
                head = stanza[:start_end - match.start() + 1]
                iq_id = ATTR_ID.search(head)
                if iq_id is None:
                    continue
                if b"type='get'" in head and b"disco#info" in stanza:
                    self.writer.write(disco_answer(iq_id.group(1), worker.ver))
                    worker.disco_queries += 1
                elif iq_id.group(1).startswith(b"p"):
                    worker.acked(iq_id.group(1), b"type='result'" in head)
        self.buffer = buffer[pos:]

    def publish(self, number: int) -> None:
        self.writer.write(
            f"<iq type='set' id='p{number}'><pubsub xmlns='http://jabber.org/protocol/pubsub'>"
            f"<publish node='{TUNE_NS}'><item><tune xmlns='{TUNE_NS}'><artist>Bench</artist>"
            f"<title>p{number}</title><source>Graph</source><length>240</length>"
            f"<track>{number % 20 + 1}</track></tune></item></publish></pubsub></iq>".encode())


class Worker:
    """One client process: its share of online users, its share of the publishes."""

    def __init__(self, users: list[str], publishers: list[int], port: int, password: str,
                 window: int, ver: str):
        self.users = users
        self.publishers = publishers  # indexes into users, one per publish, in order
        self.port = port
        self.password = password
        self.window = window
        self.ver = ver
        self.clients: list[BenchClient] = []
        self.sent_at: dict[int, float] = {}
        # (publish number, arrival time): latency is resolved at the end, since the publish
        # time may live in another client process.
        self.arrivals: list[tuple[int, float]] = []
        self.errors = 0
        self.duplicates = 0
        self.disco_queries = 0
        self.acks = 0
        self.last_data = time.monotonic()
        self.first_receive = self.last_receive = 0.0
        self.free = asyncio.Semaphore(window)

    def received(self, client: BenchClient, number: int) -> None:
        now = time.monotonic()
        if number in client.seen:
            self.duplicates += 1
        client.seen.add(number)
        if not self.first_receive:
            self.first_receive = now
        self.last_receive = now
        self.arrivals.append((number, now))

    def acked(self, iq_id: bytes, ok: bool) -> None:
        self.acks += 1
        self.errors += not ok
        self.free.release()

    async def run(self, ready: Any, go: Any, out: Any, base: int) -> None:
        for start in range(0, len(self.users), 50):
            batch = [BenchClient(self, u) for u in self.users[start:start + 50]]
            await asyncio.gather(*(c.login("127.0.0.1", self.port, self.password)
                                   for c in batch))
            self.clients.extend(batch)
        readers = [asyncio.ensure_future(c.read_forever()) for c in self.clients]
        # Settled: caps learnt (one disco#info for the hash) and presence exchanged.
        self.last_data = time.monotonic()
        while time.monotonic() - self.last_data < 1.0:
            await asyncio.sleep(0.1)
        ready.put(len(self.clients))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, go.wait)
        publish_start = time.monotonic()
        cpu_start = time.process_time()
        queries_before = self.disco_queries
        for i, index in enumerate(self.publishers):
            await self.free.acquire()
            number = base + i
            self.sent_at[number] = time.monotonic()
            self.clients[index].publish(number)
        while self.acks < len(self.publishers):
            await asyncio.sleep(0.01)
        publish_end = time.monotonic()
        while time.monotonic() - self.last_data < 1.5:  # notifications still arriving
            await asyncio.sleep(0.1)
        out.put({"sent_at": self.sent_at, "received": self.arrivals,
                 "acks": self.acks, "errors": self.errors, "duplicates": self.duplicates,
                 "disco_queries": self.disco_queries,
                 "late_disco_queries": self.disco_queries - queries_before,
                 "cpu_seconds": time.process_time() - cpu_start, "publish_start": publish_start,
                 "publish_end": publish_end, "first_receive": self.first_receive,
                 "last_receive": self.last_receive})
        for r in readers:
            r.cancel()
        for c in self.clients:
            c.writer.close()


def run_worker(users, publishers, port, password, window, ver, ready, go, out, base) -> None:
    worker = Worker(users, publishers, port, password, window, ver)
    asyncio.run(worker.run(ready, go, out, base))


def write_config(directory: Path, scram_iterations: int, workers: int,
                 redis_url: str) -> tuple[Path, dict[str, str]]:
    """A server config for the bench (XMPP only, plain SASL on loopback) and its env.

    With several workers the store is Redis and the workers form a cluster (as they must);
    they share a fixed port, the kernel spreading connections over them.
    """
    data = directory / "data"
    config = directory / "presenced.toml"
    text = (f"[server]\ndomains = [\"{DOMAIN}\"]\ndata_dir = \"{data}\"\n"
            f"scram_iterations = {scram_iterations}\nworkers = {workers}\n"
            f"[xmpp]\nport = {free_port() if workers > 1 else 0}\nbind = \"127.0.0.1\"\n"
            "require_tls = false\nallow_plain = true\n"
            # Every load client connects from 127.0.0.1: no per-address cap.
            "max_connections_per_ip = 1000000\n"
            "[comet]\nenabled = false\n[thrift]\nenabled = false\n[webadmin]\nenabled = false\n")
    if redis_url:
        text += f"[store]\nbackend = \"redis\"\nredis = [\"{redis_url}\"]\n"
    if workers > 1:
        text += "[cluster]\nenabled = true\n"
    config.write_text(text)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return config, env


def ctl(config: Path, env: dict, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "presenced.ctl", "--config", str(config), *args],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_until_idle(pid: int, timeout: float = 120.0) -> None:
    """Wait until the server uses under 4% of a core for half a second."""
    deadline = time.monotonic() + timeout
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - before < 0.02:
            return
        before = now


def main() -> None:
    # A SIGTERM (e.g. from `timeout`) unwinds through the finally below: no server left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="users in the graph")
    parser.add_argument("--m", type=int, default=10, help="friends each new user makes")
    parser.add_argument("--online", type=float, default=0.5, help="share of users online")
    parser.add_argument("--publishes", type=int, default=4000)
    parser.add_argument("--window", type=int, default=64, help="publishes in flight per proc")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--scram-iterations", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1,
                        help="server worker processes (more than 1: Redis store and cluster)")
    parser.add_argument("--store", choices=("embedded", "redis"), default="embedded")
    parser.add_argument("--profile", metavar="FILE",
                        help="record the server with py-spy (raw stacks) while publishing")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    directory = Path(tempfile.mkdtemp(prefix="presenced-bench-pep-"))
    server = redis = None
    try:
        edges = list(barabasi_albert(args.n, args.m, args.seed))
        write_edge_list(str(directory / "edges.txt"), edges)
        online = sorted(rng.sample(range(args.n), int(args.n * args.online)))
        password = "bench-password"
        (directory / "users.txt").write_text(
            "".join(f"{user_name(i)}@{DOMAIN} {password}\n" for i in online))
        redis_url = ""
        if args.workers > 1 or args.store == "redis":
            redis, redis_port = start_redis(directory / "redis", persist=True)
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
        config, env = write_config(directory, args.scram_iterations, args.workers, redis_url)
        ctl(config, env, "import-users", "-q", str(directory / "users.txt"))
        ctl(config, env, "load-friends", "-q", str(directory / "edges.txt"))

        server = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile", "", "--logfile", str(directory / "presenced.log"), "presenced",
             "--config", str(config)], cwd=directory, env=env)
        if args.workers > 1:
            deadline = time.monotonic() + 60
            while len(server_pids(server.pid)) < args.workers and time.monotonic() < deadline:
                time.sleep(0.2)
        ports_file = directory / "data" / "run" / "ports.json"
        deadline = time.monotonic() + 60
        ports: dict[str, int] = {}
        while "ready" not in ports:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("server did not start: see " + str(directory))
            time.sleep(0.1)
            try:
                ports = json.loads(ports_file.read_text())
            except (FileNotFoundError, ValueError):
                pass

        # Expected notifications: each publish reaches the publisher and its online friends.
        online_set = set(online)
        online_friends = {i: 0 for i in online}
        for a, b in edges:
            if a in online_set and b in online_set:
                online_friends[a] += 1
                online_friends[b] += 1
        shares = [online[p::args.procs] for p in range(args.procs)]
        per_proc = [args.publishes // args.procs + (p < args.publishes % args.procs)
                    for p in range(args.procs)]
        publishers = [[rng.randrange(len(shares[p])) for _ in range(per_proc[p])]
                      for p in range(args.procs)]
        expected = sum(1 + online_friends[shares[p][i]]
                       for p in range(args.procs) for i in publishers[p])

        ctx = multiprocessing.get_context("fork")
        ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        ver = caps_ver()
        procs = []
        base = 0
        for p in range(args.procs):
            users = [f"{user_name(i)}@{DOMAIN}" for i in shares[p]]
            procs.append(ctx.Process(target=run_worker, args=(
                users, publishers[p], ports["xmpp"], password, args.window, ver, ready, go,
                out, base)))
            base += per_proc[p]
        login_start = time.monotonic()
        for proc in procs:
            proc.start()
        connected = sum(ready.get(timeout=600) for _ in procs)
        login_seconds = time.monotonic() - login_start
        wait_until_idle(server.pid)  # last-item lookups of the login storm are done
        cpu_before = cpu_seconds(server.pid)
        redis_before = cpu_seconds(redis.pid) if redis is not None else 0.0
        spy = subprocess.Popen(["py-spy", "record", "-p", str(server.pid), "-f", "raw", "-o",
                                args.profile], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL) if args.profile else None
        go.set()
        results = [out.get(timeout=600) for _ in procs]
        server_cpu = cpu_seconds(server.pid) - cpu_before
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it recorded and exits
            spy.wait(60)
        redis_cpu = cpu_seconds(redis.pid) - redis_before if redis is not None else 0.0
        for proc in procs:
            proc.join(30)

        sent_at: dict[int, float] = {}
        for r in results:
            sent_at.update(r["sent_at"])
        latencies = [at - sent_at[number] for r in results for number, at in r["received"]]
        received = len(latencies)
        start = min(r["publish_start"] for r in results)
        publish_end = max(r["publish_end"] for r in results)
        last = max(r["last_receive"] for r in results)
        acks = sum(r["acks"] for r in results)
        print(json.dumps({
            "bench": "pep",
            "what": "tune publishes over XMPP, fan-out to +notify resources of online friends",
            "users": args.n, "m": args.m, "edges": len(edges), "online": connected,
            "server_workers": args.workers,
            "store": "redis" if redis_url else "embedded",
            "client_procs": args.procs, "window_per_proc": args.window,
            "scram_iterations": args.scram_iterations,
            "login_seconds": round(login_seconds, 2),
            "publishes": acks, "publish_errors": sum(r["errors"] for r in results),
            "publishes_per_s": round(acks / (publish_end - start), 1),
            "notifications_expected": expected, "notifications_received": received,
            "notifications_duplicated": sum(r["duplicates"] for r in results),
            "caps_queries": sum(r["disco_queries"] for r in results),
            "caps_queries_after_start": sum(r["late_disco_queries"] for r in results),
            "notifications_per_s": round(received / (last - start), 1) if received else 0,
            "mean_fanout": round(expected / max(1, args.publishes), 2),
            "latency_p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
            "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "latency_max_ms": round(max(latencies, default=float("nan")) * 1000, 2),
            "server_cpu_seconds": round(server_cpu, 2),
            "notifications_per_server_cpu_s": round(received / server_cpu, 1),
            "client_cpu_seconds": round(sum(r["cpu_seconds"] for r in results), 2),
            "redis_cpu_seconds": round(redis_cpu, 2),
            "load_average_1m": os.getloadavg()[0],
        }, indent=2))
    finally:
        if server is not None and server.poll() is None:
            workers = server_pids(server.pid)[1:]
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            for pid in workers:  # still there only if worker 0 could not stop them
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if redis is not None:
            redis.terminate()
            redis.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()

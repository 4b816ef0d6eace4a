#!/usr/bin/env python3
"""Comet benchmark: server RSS per idle stream, then deliveries/s and publish-to-delivery
latency on a Barabási–Albert friends graph. Prints one JSON document.

    python3 bench/comet.py                     # N=10000
    python3 bench/comet.py --streams 15000 --seconds 20
    python3 bench/comet.py --publish http -n 5000 --nchan      # events POSTed, vs Nchan
    python3 bench/comet.py --publish http -n 5000 --fanout     # one topic, N followers
    python3 bench/comet.py --publish http -n 5000 --batch 50   # 50 events per POST

``--publish http`` is described in ``bench/httppub.py``; without it:

What it does:

1. writes a Barabási–Albert graph over N users (``bench/graph.py``) and loads it with
   ``presencedctl load-friends``;
2. starts ``twistd -n presenced`` (comet with ``require_token = false``, the Thrift door for
   publishing; XMPP and the web admin off) and reads its RSS from ``/proc/<pid>/status``;
3. opens N NDJSON streams, one per user, from several client processes bound to 127.0.0.x
   source addresses (past one address's ephemeral ports and one process's open-files limit);
   measures the server's RSS again: (after - before) / N is the cost of an idle stream;
4. publishes tunes through Thrift ``publish_np`` from several processes for ``--seconds``,
   ``--pipeline`` calls sent together per connection (each tune's title carries the time it
   was encoded) and counts, at the clients, the events received per second and the latency
   from ``publish_np`` to arrival; the CPU each delivery cost the server, the clients and
   the publishers tells which of them was the limit.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLIENT_BATCH = 0.01
sys.path.insert(0, str(REPO))

from bench.graph import barabasi_albert, user_name  # noqa: E402
from bench.procs import cpu_split, percentile, rss_kb, server_pids, start_redis  # noqa: E402


# --- helpers -------------------------------------------------------------------------------

def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- stream clients ------------------------------------------------------------------------

def client_worker(index: int, users: list[int], port: int, control, results) -> None:
    """Hold one NDJSON stream per user; count events; sample latencies from tune titles."""
    raise_nofile()
    sel = selectors.DefaultSelector()
    socks = []
    welcomed = 0
    source = f"127.0.0.{2 + index % 200}"
    for n, user in enumerate(users):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET /stream/{user_name(user)} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
        if n % 500 == 499:
            welcomed += count_welcomes(sel, 0)
    deadline = time.monotonic() + 60
    while welcomed < len(users) and time.monotonic() < deadline:
        welcomed += count_welcomes(sel, 0.5)
    results.put(("connected", index, welcomed))
    control.get()  # go
    cpu_before = process_cpu()
    received = 0
    latencies: list[float] = []
    marker = b'"title":"'
    stop_at = None
    while True:
        # Let events gather in the socket buffers between reads: one recv takes several, so
        # the clients, which share this machine's cores with the server, cost it less. Adds
        # up to CLIENT_BATCH seconds to the measured latency (counted against us).
        time.sleep(CLIENT_BATCH)
        for key, _ in sel.select(0.2):
            try:
                data = key.fileobj.recv(262144)
            except ConnectionError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                continue
            now = time.time()
            start = 0
            while True:
                at = data.find(marker, start)
                if at < 0:
                    break
                received += 1
                end = data.find(b'"', at + len(marker))
                if end > 0 and (received & 7) == 0:
                    try:
                        latencies.append(now - float(data[at + len(marker):end]))
                    except ValueError:
                        pass
                start = at + len(marker)
        if stop_at is None and not control.empty():
            control.get()
            stop_at = time.monotonic() + 2.0  # drain in-flight events
        if stop_at is not None and time.monotonic() > stop_at:
            break
    results.put(("done", index, received, latencies, process_cpu() - cpu_before))
    for s in socks:
        s.close()


def process_cpu() -> float:
    """User + system CPU seconds this process has used so far."""
    times = os.times()
    return times.user + times.system


def count_welcomes(sel, timeout: float) -> int:
    welcomed = 0
    for key, _ in sel.select(timeout):
        try:
            welcomed += key.fileobj.recv(65536).count(b'"welcome"')
        except BlockingIOError:
            pass
    return welcomed


# --- publishers ----------------------------------------------------------------------------

def publisher(index: int, thrift_port: int, users: int, seconds: float, rate: float,
              pipeline: int, results) -> None:
    """Publish tunes over one Thrift connection, ``pipeline`` calls sent together (encoded
    with thriftpy2's Cython protocol, each title the time it was encoded) before their
    replies are read: a synchronous client spends its time waiting for round trips and
    measures them, not the server's fan-out."""
    from thriftpy2.protocol.cybin import TCyBinaryProtocol
    from thriftpy2.thrift import TMessageType
    from thriftpy2.transport.memory import TCyMemoryBuffer

    from bench.thrift import SERVICE, J, _Replies

    replies = _Replies("publish_np", pipeline)
    sock = socket.create_connection(("127.0.0.1", thrift_port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rng = random.Random(index)
    cpu_before = process_cpu()
    sent = 0
    started = time.monotonic()
    interval = pipeline / rate if rate else 0.0
    while time.monotonic() - started < seconds:
        buffer = TCyMemoryBuffer()
        proto = TCyBinaryProtocol(buffer)
        for seqid in range(pipeline):
            proto.write_message_begin("publish_np", TMessageType.CALL, seqid)
            proto.write_struct(SERVICE.publish_np_args(
                J(user_name(rng.randrange(users)), "localhost"), "bench", "album",
                f"{time.time():.6f}", 200, 1))
            proto.write_message_end()
        sock.sendall(buffer.getvalue())
        missing = replies.reply_size * pipeline
        received = []
        while missing > 0:
            data = sock.recv(65536)
            if not data:
                raise SystemExit(f"publisher {index}: the server closed the connection")
            received.append(data)
            missing -= len(data)
        replies.check(b"".join(received))
        sent += pipeline
        if interval:
            time.sleep(max(0.0, started + (sent // pipeline) * interval - time.monotonic()))
    sock.close()
    results.put(("published", index, sent, process_cpu() - cpu_before))


def per_delivery(seconds: float, deliveries: int) -> float | None:
    return round(seconds * 1e6 / deliveries, 2) if deliveries else None


# --- main ----------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", "-n", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--publishers", type=int, default=4, help="publisher processes")
    parser.add_argument("--rate", type=float, default=0, help="publishes/s per publisher (0: as fast as possible)")
    parser.add_argument("--pipeline", type=int, default=4,
                        help="Thrift calls each publisher sends before reading their replies")
    parser.add_argument("--m", type=int, default=10, help="BA edges per new node")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--store", choices=("embedded", "redis"), default="embedded",
                        help="redis: a private redis-server is started for the run")
    parser.add_argument("--workers", type=int, default=1,
                        help="server worker processes (needs --store redis)")
    parser.add_argument("--checkout", type=Path, metavar="DIR",
                        help="run the server from another checkout (before/after in one run)")
    parser.add_argument("--profile", metavar="FILE",
                        help="record the server with py-spy (raw stacks) while publishing")
    parser.add_argument("--publish", choices=("thrift", "http"), default="thrift",
                        help="http: events POSTed to /api/publish/<user> (bench/httppub.py)")
    parser.add_argument("--events", type=int, default=None,
                        help="http: events to POST (default 100000; 200 with --fanout)")
    parser.add_argument("--connections", type=int, default=16,
                        help="http: keep-alive publishing connections")
    parser.add_argument("--fanout", action="store_true",
                        help="http: every stream's user follows one topic; events go to it")
    parser.add_argument("--batch", type=int, default=1,
                        help="http: events per request to POST /api/publish (1: one per "
                             "request to /api/publish/<subject>; Nchan always gets one)")
    parser.add_argument("--nchan", action="store_true",
                        help="http: run the same load against nginx + Nchan and compare")
    args = parser.parse_args()
    if args.publish == "http":
        from bench.httppub import main as http_main

        http_main(args)
        return
    raise_nofile()

    work = Path(tempfile.mkdtemp(prefix="comet-bench-"))
    edges = list(barabasi_albert(args.streams, args.m, args.seed))
    (work / "friends.txt").write_text("".join(f"{user_name(a)} {user_name(b)}\n" for a, b in edges))
    config = work / "presenced.toml"
    redis = start_redis(work) if args.store == "redis" else None
    store = f"""
[store]
backend = "redis"
redis = ["redis://127.0.0.1:{redis[1]}/0"]
[cluster]
enabled = {"true" if args.workers > 1 else "false"}
""" if redis else ""
    config.write_text(f"""
[server]
data_dir = "{work / 'data'}"
workers = {args.workers}
{store}
[comet]
port = 0
bind = "127.0.0.1"
require_token = false
# Every stream comes from 127.0.0.1: the per-address cap would refuse them.
max_connections_per_ip = 1000000
[thrift]
port = 0
[xmpp]
enabled = false
[webadmin]
enabled = false
""")
    env = dict(os.environ, PYTHONPATH=str(args.checkout or REPO))
    subprocess.run([sys.executable, "-m", "presenced.ctl", "--config", str(config),
                    "load-friends", "-q", str(work / "friends.txt")], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    server = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
         "--pidfile", "", "--logfile", str(work / "presenced.log"), "presenced",
         "--config", str(config)], env=env, cwd=work)
    try:
        run(args, work, server, edges)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        if redis is not None:
            redis[0].terminate()
            redis[0].wait(10)


def run(args, work: Path, server: subprocess.Popen, edges) -> None:
    ports_file = work / "data" / "run" / "ports.json"
    deadline = time.monotonic() + 60
    while True:
        try:
            ports = json.loads(ports_file.read_text())
            if "ready" in ports:
                break
        except (FileNotFoundError, ValueError):
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit("presenced did not start; see " + str(work / "presenced.log"))
        time.sleep(0.1)
    pid = server.pid
    time.sleep(1.0)  # (``ready`` waits for every worker: no more time for them)
    rss_before = rss_kb(pid)

    ctx = mp.get_context("fork")
    results = ctx.Queue()
    controls = []
    workers = []
    users = list(range(args.streams))
    connect_started = time.monotonic()
    for i in range(args.clients):
        control = ctx.Queue()
        p = ctx.Process(target=client_worker,
                        args=(i, users[i::args.clients], ports["comet"], control, results))
        p.start()
        controls.append(control)
        workers.append(p)
    connected = 0
    for _ in workers:
        kind, _, count = results.get(timeout=180)
        connected += count
    connect_seconds = time.monotonic() - connect_started
    time.sleep(2.0)
    rss_after = rss_kb(pid)

    for control in controls:
        control.put("go")
    publishers = [ctx.Process(target=publisher,
                              args=(i, ports["thrift"], args.streams, args.seconds, args.rate,
                                    args.pipeline, results))
                  for i in range(args.publishers)]
    started = time.monotonic()
    server_cpu_before = cpu_split(pid)
    for p in publishers:
        p.start()
    spy = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", str(int(args.seconds)),
                            "-f", "raw", "-o", args.profile], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL) if args.profile else None
    published = 0
    publisher_cpu = 0.0
    for _ in publishers:
        kind, _, sent, cpu = results.get(timeout=args.seconds + 120)
        published += sent
        publisher_cpu += cpu
    publish_seconds = time.monotonic() - started
    for control in controls:
        control.put("stop")
    received = 0
    client_cpu = 0.0
    latencies: list[float] = []
    for _ in workers:
        kind, _, count, lat, cpu = results.get(timeout=120)
        received += count
        client_cpu += cpu
        latencies.extend(lat)
    # the clients' drain time included: what the server spent on every delivery it made
    server_user, server_system = (after - before for after, before
                                  in zip(cpu_split(pid), server_cpu_before))
    for p in workers + publishers:
        p.join(30)
    if spy is not None:
        spy.wait(60)
    latencies.sort()

    degree = [0] * args.streams
    for a, b in edges:
        degree[a] += 1
        degree[b] += 1

    def pct(q: float) -> float | None:
        return round(percentile(latencies, q) * 1000, 2) if latencies else None

    print(json.dumps({
        "streams": args.streams,
        "server_checkout": str(args.checkout or REPO),
        "streams_connected": connected,
        "connect_seconds": round(connect_seconds, 2),
        "client_processes": args.clients,
        "store": args.store,
        "server_processes": len(server_pids(pid)),
        "server_rss_before_kb": rss_before,
        "server_rss_after_kb": rss_after,
        "rss_per_idle_stream_bytes": round((rss_after - rss_before) * 1024 / max(connected, 1)),
        "graph": {"model": "barabasi-albert", "m": args.m, "edges": len(edges),
                  "mean_degree": round(2 * len(edges) / args.streams, 2),
                  "max_degree": max(degree), "generator": "bench/graph.py"},
        "publishers": args.publishers,
        "pipeline": args.pipeline,
        "published": published,
        "publishes_per_second": round(published / publish_seconds),
        "deliveries": received,
        "deliveries_per_second": round(received / publish_seconds),
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0),
                       "samples": len(latencies)},
        "cpu_us_per_delivery": {
            "server_user": per_delivery(server_user, received),
            "server_system": per_delivery(server_system, received),
            "clients": per_delivery(client_cpu, received),
            "publishers": per_delivery(publisher_cpu, received)},
        "server_cpu_percent_of_one_core": round(
            100 * (server_user + server_system) / (time.monotonic() - started)),
        "server_rss_end_kb": rss_kb(server.pid),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }, indent=2))


if __name__ == "__main__":
    main()

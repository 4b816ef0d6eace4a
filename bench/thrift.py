"""Thrift admin throughput: add_friend and publish_np calls/s, 1 and 16 connections.

Starts a private presenced (embedded store, only the Thrift door) and drives it with clients
that cannot be the bottleneck: every call is encoded in advance with thriftpy2's Cython
binary protocol, a thread per connection sends them back to back (pipelined, the server's flow
control paces it) while one thread per process reads the replies; 16 connections are spread
over 4 client processes. A run counts from the first byte sent to the last reply received,
over every connection, and checks that every reply is a normal REPLY, in order. The server's
CPU time during the run is reported too: a share well below 1.0 on a busy machine means the
server was waiting for a CPU, and ``calls_per_server_cpu_second`` is what it does with a core
of its own. Prints JSON.

    python3 bench/thrift.py [--calls 20000] [--connections 1,16] [--keep DIR]
    python3 bench/thrift.py --methods publish_np --connections 16 --profile /tmp/np.raw
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import selectors
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from thriftpy2.protocol.binary import TBinaryProtocol  # noqa: E402
from thriftpy2.protocol.cybin import TCyBinaryProtocol  # noqa: E402
from thriftpy2.thrift import TMessageType  # noqa: E402
from thriftpy2.transport.memory import TCyMemoryBuffer, TMemoryBuffer  # noqa: E402

from bench.procs import cpu_seconds, start_presenced  # noqa: E402
from presenced.thrift import admin  # noqa: E402

SERVICE = admin.PresencedAdmin
J = admin.JabberUser
CLIENT_PROCESSES = 4  # enough to keep the server busy on a small machine, few enough to
                      # leave it the CPU


def start_server(directory: Path) -> tuple[subprocess.Popen, int]:
    config = directory / "presenced.toml"
    config.write_text(
        f'[server]\ndata_dir = "{directory / "data"}"\n'
        '[xmpp]\nenabled = false\n[comet]\nenabled = false\n'
        '[webadmin]\nenabled = false\n[thrift]\nport = 0\n')
    process, ports = start_presenced(directory, config)
    return process, ports["thrift"]


def encode_calls(method: str, connection: int, count: int) -> bytes:
    buffer = TCyMemoryBuffer()
    proto = TCyBinaryProtocol(buffer)
    for seqid in range(count):
        user = J(f"c{connection}u{seqid}", "")
        if method == "add_friend":
            args = SERVICE.add_friend_args(user, J(f"c{connection}u{seqid + 1}", ""))
        else:
            # Every run publishes for the same 1000 users, whatever the connections.
            args = SERVICE.publish_np_args(J(f"listener{seqid % 1000}", ""),
                                           "Artist", "Album", f"Track {seqid}", 240,
                                           seqid % 20 + 1)
        proto.write_message_begin(method, TMessageType.CALL, seqid)
        proto.write_struct(args)
        proto.write_message_end()
    return buffer.getvalue()


class _Replies:
    """What ``count`` replies to ``method`` look like: their size, and a check of them."""

    def __init__(self, method: str, count: int):
        self.count = count
        self.method = method
        sample = TCyMemoryBuffer()
        proto = TCyBinaryProtocol(sample)
        proto.write_message_begin(method, TMessageType.REPLY, 0)
        proto.write_struct(getattr(SERVICE, method + "_result")())
        self.reply_size = len(sample.getvalue())

    def check(self, data: bytes) -> int:
        """Number of REPLY messages, in order; raises on anything else."""
        proto = TBinaryProtocol(TMemoryBuffer(data))
        for seqid in range(self.count):
            name, kind, got = proto.read_message_begin()
            if kind != TMessageType.REPLY or got != seqid:
                raise SystemExit(f"reply {seqid}: {name} type {kind} seq {got}")
            proto.read_struct(getattr(SERVICE, self.method + "_result")())
        return self.count


def run_client(port: int, method: str, names: list[str], count: int, start, results):
    """One process driving ``len(names)`` connections: a sender thread each, one reader."""
    calls = {name: encode_calls(method, name, count) for name in names}
    sockets, replies = {}, {}
    for name in names:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sockets[name] = sock
        replies[name] = _Replies(method, count)
    selector = selectors.DefaultSelector()
    received = {name: [] for name in names}
    missing = {name: replies[name].reply_size * count for name in names}
    for name, sock in sockets.items():
        selector.register(sock, selectors.EVENT_READ, name)
    start.wait()
    began = time.perf_counter()
    senders = [threading.Thread(target=sockets[name].sendall, args=(calls[name],), daemon=True)
               for name in names]
    for sender in senders:
        sender.start()
    while any(missing.values()):
        for key, _ in selector.select(10):
            chunk = key.fileobj.recv(1 << 20)
            if not chunk:
                raise SystemExit(f"connection {key.data} closed early")
            received[key.data].append(chunk)
            missing[key.data] -= len(chunk)
    ended = time.perf_counter()
    for sender in senders:
        sender.join()
    answered = sum(replies[name].check(b"".join(received[name])) for name in names)
    for sock in sockets.values():
        sock.close()
    results.put((began, ended, answered))


def measure(server: subprocess.Popen, port: int, method: str, connections: int,
            calls: int, profile: Optional[str] = None) -> dict:
    """One run; ``profile``: record the server with py-spy (raw stacks) meanwhile."""
    per_connection = calls // connections
    processes = min(connections, CLIENT_PROCESSES)
    names = [f"{method[0]}{connections}x{i}" for i in range(connections)]
    ctx = multiprocessing.get_context("fork")
    start, results = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=run_client,
                           args=(port, method, names[i::processes], per_connection, start,
                                 results))
               for i in range(processes)]
    for worker in workers:
        worker.start()
    time.sleep(0.5 + 0.05 * connections)  # every client encoded its calls and connected
    spy = subprocess.Popen(["py-spy", "record", "-p", str(server.pid), "-f", "raw", "-o",
                            profile], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL) if profile else None
    cpu_before = cpu_seconds(server.pid)
    start.set()
    outcomes = [results.get(timeout=300) for _ in workers]
    cpu = cpu_seconds(server.pid) - cpu_before
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it recorded and exits
        spy.wait(60)
    for worker in workers:
        worker.join()
    began = min(o[0] for o in outcomes)
    ended = max(o[1] for o in outcomes)
    answered = sum(o[2] for o in outcomes)
    return {"method": method, "connections": connections, "client_processes": processes,
            "calls": answered, "seconds": round(ended - began, 3),
            "calls_per_second": round(answered / (ended - began)),
            "server_cpu_seconds": round(cpu, 2),
            "server_cpu_share": round(cpu / (ended - began), 2),
            "calls_per_server_cpu_second": round(answered / cpu) if cpu else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000, help="calls per run")
    parser.add_argument("--connections", default="1,16")
    parser.add_argument("--keep", help="run in this directory and keep it")
    parser.add_argument("--methods", default="add_friend,publish_np")
    parser.add_argument("--profile", metavar="FILE", help="record the server with py-spy "
                        "(raw stacks) during the last run")
    args = parser.parse_args()
    directory = Path(args.keep or tempfile.mkdtemp(prefix="bench-thrift-"))
    directory.mkdir(parents=True, exist_ok=True)
    process, port = start_server(directory)
    try:
        plan = [(method, int(n)) for method in args.methods.split(",")
                for n in args.connections.split(",")]
        runs = [measure(process, port, method, n, args.calls,
                        args.profile if i == len(plan) - 1 else None)
                for i, (method, n) in enumerate(plan)]
    finally:
        process.terminate()
        process.wait(30)
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
    targets = {"1": 5000, "16": 10000}
    print(json.dumps({
        "benchmark": "thrift", "store": "embedded", "transport": "buffered",
        "protocol": "binary", "cpus": os.cpu_count(), "runs": runs,
        "targets_met": all(r["calls_per_second"] >= targets.get(str(r["connections"]), 0)
                           for r in runs)}, indent=2))


if __name__ == "__main__":
    main()

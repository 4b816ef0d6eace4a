"""``bench/comet.py --publish http``: events POSTed over HTTP to comet streams, Nchan's way.

N streams (one per user) are held by client processes; ``--connections`` keep-alive HTTP
connections POST ``--events`` events, one per request, to ``/api/publish/<user>`` on the
admin port (each event to one stream), or with ``--fanout`` to one topic that every stream's
user follows (each event to all N). With ``--batch K`` each request carries K events to
``POST /api/publish`` (Nchan, which has no batch, still gets one per request). The clients count what arrives and sample the latency
from the POST to arrival (each event carries its send time, ``{"t": <unix time>}``). The
server's CPU time over the publishing phase, divided by the events, is the cost per event.

With ``--nchan`` the same load runs against nginx with Debian's ``libnginx-mod-nchan``
(one worker process, as presenced is one process): ``/sub/<id>`` EventSource subscribers,
``/pub/<id>`` publisher, and the JSON has both sides and their ratio.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import cpu_split, free_port, percentile, runqueue_seconds, start_presenced

REPO = Path(__file__).resolve().parent.parent
TOPIC = "bench/fanout"
MARKER = b'"t":'
CLIENT_BATCH = 0.01
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"


def raise_nofile() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- subscribers -----------------------------------------------------------------------------

def subscriber(index: int, paths: list[str], port: int, ready: bytes, headers: str, control,
               results) -> None:
    """Hold one stream per path; count events (``MARKER``) and sample their latency."""
    raise_nofile()
    sel = selectors.DefaultSelector()
    socks = []
    source = f"127.0.0.{2 + index % 200}"
    connected = 0
    for n, path in enumerate(paths):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{headers}\r\n".encode())
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
        if n % 500 == 499:
            connected += _count(sel, 0, ready)
    deadline = time.monotonic() + 60
    while connected < len(paths) and time.monotonic() < deadline:
        connected += _count(sel, 0.5, ready)
    results.put(("connected", index, connected))
    control.get()  # go
    received = 0
    latencies: list[float] = []
    stop_at = None
    while True:
        time.sleep(CLIENT_BATCH)  # let events gather: one recv takes several
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
            while (at := data.find(MARKER, start)) >= 0:
                received += 1
                end = data.find(b"}", at)
                if end > 0 and (received & 7) == 0:
                    try:
                        latencies.append(now - float(data[at + len(MARKER):end]))
                    except ValueError:
                        pass
                start = at + len(MARKER)
        if stop_at is None and not control.empty():
            control.get()
            stop_at = time.monotonic() + 2.0  # drain what is in flight
        if stop_at is not None and time.monotonic() > stop_at:
            break
    results.put(("done", index, received, latencies))
    for s in socks:
        s.close()


def _count(sel, timeout: float, ready: bytes) -> int:
    seen = 0
    for key, _ in sel.select(timeout):
        try:
            seen += key.fileobj.recv(65536).count(ready)
        except BlockingIOError:
            pass
    return seen


# --- publishers ------------------------------------------------------------------------------

def publisher(index: int, port: int, connections: int, targets: list[str], events: int,
              headers: str, results, batch: int = 1) -> None:
    """``connections`` keep-alive connections, each sending one request at a time: one
    event to a target path, or (``batch`` > 1) ``batch`` events to ``/api/publish``, each to
    the subject of a target path."""
    rng = random.Random(index)
    sel = selectors.DefaultSelector()
    left = {}
    for n in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, bytearray())
        left[s] = events // connections + (n < events % connections)
    sent = errors = 0
    started = time.monotonic()
    subjects = [t.encode().rpartition(b"/api/publish/")[2] for t in targets]
    counts = {}     # events in the request in flight on each connection

    def send(s) -> None:
        count = min(batch, left[s])
        if batch == 1:
            path, body = rng.choice(targets).encode(), b'{"t":%.6f}' % time.time()
        else:
            now = time.time()
            path = b"/api/publish"
            body = b'{"events":[%s]}' % b",".join(
                b'{"subject":"%s","data":{"t":%.6f}}' % (rng.choice(subjects), now)
                for _ in range(count))
        s.sendall(b"POST %s HTTP/1.1\r\nHost: bench\r\n%sContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (path, headers.encode(), len(body), body))
        left[s] -= count
        counts[s] = count

    for s in list(left):
        send(s)
    busy = len(left)
    while busy:
        for key, _ in sel.select(5):
            s, buf = key.fileobj, key.data
            data = s.recv(65536)
            if not data:
                raise SystemExit("publisher: the server closed a keep-alive connection")
            buf += data
            while (end := buf.find(b"\r\n\r\n")) >= 0:
                head = bytes(buf[:end]).lower()
                length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                if len(buf) < end + 4 + length:
                    break
                if not head.startswith((b"http/1.1 200", b"http/1.1 201", b"http/1.1 202")):
                    errors += counts[s]
                del buf[:end + 4 + length]
                sent += counts[s]
                if left[s] > 0:
                    send(s)
                else:
                    busy -= 1
    results.put(("published", index, sent, errors, time.monotonic() - started))


# --- one run -------------------------------------------------------------------------------

def load(args, port_streams: int, stream_paths: list[str], ready: bytes, stream_headers: str,
         port_publish: int, targets: list[str], headers: str, server_pid: int,
         batch: int = 1) -> dict:
    """Connect the streams, publish, collect; the figures of one server."""
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    controls, clients = [], []
    for i in range(args.clients):
        control = ctx.Queue()
        p = ctx.Process(target=subscriber, args=(i, stream_paths[i::args.clients],
                                                 port_streams, ready, stream_headers,
                                                 control, results))
        p.start()
        controls.append(control)
        clients.append(p)
    connected = sum(results.get(timeout=180)[2] for _ in clients)
    time.sleep(1.0)
    for control in controls:
        control.put("go")
    processes = max(1, min(args.publishers, args.connections))
    publishers = [ctx.Process(target=publisher, args=(
        i, port_publish, args.connections // processes + (i < args.connections % processes),
        targets,
        args.events // processes + (i < args.events % processes), headers, results,
        batch))
        for i in range(processes)]
    spy = subprocess.Popen(["py-spy", "record", "-r", "500", "-p", str(server_pid), "-f", "raw", "-o",
                            args.profile], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                           ) if args.profile and stream_headers == "" else None
    cpu_before = cpu_split(server_pid)
    waited_before = runqueue_seconds(server_pid)
    started = time.monotonic()
    for p in publishers:
        p.start()
    published = errors = 0
    for _ in publishers:
        _, _, sent, failed, _ = results.get(timeout=args.seconds_limit)
        published += sent
        errors += failed
    publish_seconds = time.monotonic() - started
    user, system = (after - before for after, before in zip(cpu_split(server_pid), cpu_before))
    cpu_used = user + system
    waited = runqueue_seconds(server_pid) - waited_before
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    for control in controls:
        control.put("stop")
    received, latencies = 0, []
    for _ in clients:
        _, _, count, lat = results.get(timeout=120)
        received += count
        latencies.extend(lat)
    for p in clients + publishers:
        p.join(30)
    expected = published * (connected if args.fanout else 1)

    def pct(q: float):
        return round(percentile(latencies, q) * 1000, 2) if latencies else None

    return {
        "streams_connected": connected,
        "published": published,
        "publish_errors": errors,
        "publish_seconds": round(publish_seconds, 2),
        "events_per_second": round(published / publish_seconds),
        "requests_per_second": round(published / batch / publish_seconds),
        "delivered": received,
        "delivered_all": received == expected,
        "deliveries_per_second": round(received / publish_seconds),
        "server_cpu_seconds": round(cpu_used, 2),
        "server_cpu_us_per_event": round(cpu_used * 1e6 / max(published, 1), 1),
        "server_cpu_us_per_delivery": round(cpu_used * 1e6 / max(received, 1), 2),
        "server_cpu_system_share": round(system / cpu_used, 2) if cpu_used else None,
        "server_cpu_busy_share": round(cpu_used / publish_seconds, 2),
        "server_runqueue_seconds": round(waited, 2),
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0),
                       "samples": len(latencies)},
    }


def run_presenced(args, work: Path) -> dict:
    users = [f"u{i}" for i in range(args.streams)]
    config = work / "presenced.toml"
    config.write_text(f"""
[server]
data_dir = "{work / 'data'}"
[comet]
port = {free_port()}
bind = "127.0.0.1"
require_token = false
max_connections_per_ip = 1000000
[thrift]
port = {free_port()}
[webadmin]
port = {free_port()}
max_connections = 256
[xmpp]
enabled = false
""")
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def token(scope: str) -> str:
        done = subprocess.run([sys.executable, "-m", "presenced.ctl", "--config", str(config),
                               "api-token", "--scope", scope], env=env, check=True,
                              capture_output=True, text=True)
        return done.stdout.strip().splitlines()[-1]

    publish_token, admin_token = token("publish"), token("admin")
    server, ports = start_presenced(work, config)
    try:
        if args.fanout:
            body = json.dumps({"pairs": [{"subscriber": u, "subject": TOPIC} for u in users]})
            with socket.create_connection(("127.0.0.1", ports["webadmin"])) as s:
                s.sendall(f"POST /api/add_subscriptions HTTP/1.1\r\nHost: b\r\nConnection: "
                          f"close\r\nAuthorization: Bearer {admin_token}\r\nContent-Length: "
                          f"{len(body)}\r\n\r\n{body}".encode())
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
            if b"200 OK" not in answer.split(b"\r\n")[0]:
                raise SystemExit(f"add_subscriptions failed: {answer[:300]!r}")
        targets = [f"/api/publish/{TOPIC}"] if args.fanout else \
            [f"/api/publish/{u}" for u in users]
        figures = load(args, ports["comet"], [f"/stream/{u}" for u in users], b'"welcome"',
                       "", ports["webadmin"], targets, f"Authorization: Bearer {publish_token}\r\n",
                       server.pid, args.batch)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    return figures


def run_nchan(args, work: Path) -> dict:
    work.mkdir()
    (work / "logs").mkdir()
    port = free_port()
    (work / "nginx.conf").write_text(f"""
load_module {NCHAN_MODULE};
worker_processes 1;
worker_rlimit_nofile 200000;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 100000; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  client_body_temp_path {work}/body;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location ~ ^/pub/(.+)$ {{ nchan_publisher; nchan_channel_id $1; }}
    location ~ ^/sub/(.+)$ {{ nchan_subscriber eventsource; nchan_channel_id $1; }}
  }}
}}
""")
    nginx = subprocess.Popen(["nginx", "-p", str(work), "-c", str(work / "nginx.conf"),
                              "-g", "daemon off;"], stderr=open(work / "stderr.log", "ab"))
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or nginx.poll() is not None:
                raise SystemExit(f"nginx did not start: see {work}")
            time.sleep(0.05)
    try:
        channels = [f"u{i}" for i in range(args.streams)]
        streams = [f"/sub/fanout" if args.fanout else f"/sub/{c}" for c in channels]
        targets = ["/pub/fanout"] if args.fanout else [f"/pub/{c}" for c in channels]
        return load(args, port, streams, b"HTTP/1.1 200", "Accept: text/event-stream\r\n",
                    port, targets, "", nginx.pid)
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(30)


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


def main(args) -> None:
    """Entry point of ``bench/comet.py --publish http`` (its arguments)."""
    raise_nofile()
    if args.events is None:
        args.events = 200 if args.fanout else 100000
    args.seconds_limit = 600
    work = Path(tempfile.mkdtemp(prefix="http-publish-bench-"))
    result = {"mode": "fanout" if args.fanout else "one stream per event",
              "streams": args.streams, "events": args.events,
              "connections": args.connections, "client_processes": args.clients,
              "events_per_request": args.batch,
              "publisher_processes": max(1, min(args.publishers, args.connections)),
              "presenced": run_presenced(args, _directory(work / "presenced"))}
    if args.nchan:
        if not (shutil.which("nginx") and os.path.exists(NCHAN_MODULE)):
            result["nchan"] = "not installed (apt-get install nginx libnginx-mod-nchan)"
        else:
            nchan = result["nchan"] = run_nchan(args, work / "nchan")
            ours = result["presenced"]
            result["ratio_presenced_to_nchan"] = {
                "deliveries_per_second": round(ours["deliveries_per_second"]
                                               / max(nchan["deliveries_per_second"], 1), 2),
                "server_cpu_us_per_event": round(ours["server_cpu_us_per_event"]
                                                 / max(nchan["server_cpu_us_per_event"], 0.01),
                                                 2)}
    result["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))

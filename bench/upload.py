#!/usr/bin/env python3
"""HTTP File Upload benchmark: PUT and GET throughput on the comet door, and whether the
reactor stays responsive while bodies stream to disk.

Starts a private presenced (``twistd -n presenced``, embedded store), asks ``upload.localhost``
for ``--files`` slots with slixmpp, then PUTs them ``--parallel`` at a time (``http.client`` in
threads, ``--size`` MiB each) while a probe process GETs ``/health`` every 10 ms on the same
port, then GETs every file back. Prints one JSON document: MiB/s up and down, the ``/health``
latency idle and during the uploads (p50, p99, max: a blocked reactor shows here), whether
every file came back intact, and the server's RSS before and after the uploads (a body held
in memory would show here).

    python3 bench/upload.py --files 16 --size 32 --parallel 4
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import ssl
import subprocess
import sys
import tempfile
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a file: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import free_port, percentile, rss_kb, start_presenced  # noqa: E402

CHUNK = 1 << 20


def write_config(directory: Path, comet: int, size: int, files: int) -> Path:
    config = directory / "presenced.toml"
    config.write_text(f"""
[server]
data_dir = "{directory / 'data'}"
scram_iterations = 64
[upload]
url = "http://127.0.0.1:{comet}"
max_file_size = {size}
quota_bytes = {size * files}
put_timeout = 600.0
[xmpp]
port = 0
require_tls = false
allow_plain = true
[comet]
port = {comet}
bind = "127.0.0.1"
[thrift]
enabled = false
[webadmin]
enabled = false
""")
    return config


def slots(port: int, count: int, size: int) -> list[tuple[str, str]]:
    """``count`` (PUT, GET) URL pairs for ``bench@localhost``, asked with slixmpp."""
    import slixmpp

    async def ask() -> list[tuple[str, str]]:
        client = slixmpp.ClientXMPP("bench@localhost/bench", "bench-pw")
        client.ssl_context.check_hostname = False      # the generated certificate
        client.ssl_context.verify_mode = ssl.CERT_NONE
        client.register_plugin("xep_0363")
        started = asyncio.get_running_loop().create_future()
        client.add_event_handler("session_start", lambda _: started.set_result(True))
        client.connect("127.0.0.1", port)
        await asyncio.wait_for(started, 30)
        found = []
        for i in range(count):
            answer = await client.plugin["xep_0363"].request_slot(
                slixmpp.JID("upload.localhost"), f"file{i}.bin", size,
                "application/octet-stream")
            slot = answer["http_upload_slot"]
            found.append((slot["put"]["url"], slot["get"]["url"]))
        await client.disconnect()
        return found
    return asyncio.run(ask())


def content(size: int, seed: int) -> tuple[bytes, str]:
    """The block a file repeats, and the SHA-256 of the ``size`` bytes it makes."""
    block = hashlib.sha256(str(seed).encode()).digest() * (CHUNK // 32)
    digest = hashlib.sha256()
    for offset in range(0, size, CHUNK):
        digest.update(block[:size - offset])
    return block, digest.hexdigest()


def put(url: str, size: int, block: bytes) -> None:
    """Stream ``size`` bytes of ``block`` repeated."""
    parts = urlsplit(url)
    connection = HTTPConnection(parts.hostname, parts.port, timeout=600)
    connection.putrequest("PUT", f"{parts.path}?{parts.query}")
    connection.putheader("Content-Type", "application/octet-stream")
    connection.putheader("Content-Length", str(size))
    connection.endheaders()
    for offset in range(0, size, CHUNK):
        connection.send(block[:size - offset])
    response = connection.getresponse()
    response.read()
    connection.close()
    if response.status != 201:
        raise SystemExit(f"PUT answered {response.status}")


def get(url: str) -> str:
    parts = urlsplit(url)
    connection = HTTPConnection(parts.hostname, parts.port, timeout=600)
    connection.request("GET", parts.path)
    response = connection.getresponse()
    digest = hashlib.sha256()
    while True:
        piece = response.read(CHUNK)
        if not piece:
            break
        digest.update(piece)
    connection.close()
    return digest.hexdigest()


def probe(port: int, stop, latencies) -> None:
    """GET /health every 10 ms until ``stop`` (in a process of its own, so the uploading
    threads' GIL does not delay it); milliseconds per answer."""
    while not stop.is_set():
        began = time.perf_counter()
        connection = HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/health")
        connection.getresponse().read()
        connection.close()
        latencies.append((time.perf_counter() - began) * 1000)
        stop.wait(0.01)


def probed(port: int, seconds: float, work=None) -> list[float]:
    """``/health`` latencies while ``work()`` runs (or for ``seconds`` when there is none)."""
    with multiprocessing.Manager() as manager:
        latencies = manager.list()
        stop = manager.Event()
        prober = multiprocessing.Process(target=probe, args=(port, stop, latencies))
        prober.start()
        if work is None:
            time.sleep(seconds)
        else:
            work()
        stop.set()
        prober.join()
        return list(latencies)


def summary(latencies: list[float]) -> dict:
    return {"probes": len(latencies), "p50": round(percentile(latencies, 0.5), 2),
            "p99": round(percentile(latencies, 0.99), 2), "max": round(max(latencies), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--size", type=int, default=32, help="MiB per file")
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args()
    size = args.size * CHUNK
    with tempfile.TemporaryDirectory(prefix="presenced-upload-bench-") as tmp:
        directory = Path(tmp)
        comet = free_port()
        config = write_config(directory, comet, size, args.files)
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        subprocess.run([sys.executable, "-m", "presenced.ctl", "--config", str(config),
                        "adduser", "bench@localhost", "--password", "bench-pw"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        process, ports = start_presenced(directory, config)
        try:
            urls = slots(ports["xmpp"], args.files, size)
            files = [content(size, seed) for seed in range(args.files)]
            rss_before = rss_kb(process.pid)
            idle = probed(comet, 2.0)
            timing: dict[str, float] = {}

            def upload() -> None:
                began = time.perf_counter()
                with ThreadPoolExecutor(args.parallel) as pool:
                    list(pool.map(put, [u for u, _ in urls], [size] * args.files,
                                  [block for block, _ in files]))
                timing["up"] = time.perf_counter() - began
            busy = probed(comet, 0, upload)
            up = timing["up"]
            rss_after = rss_kb(process.pid)
            began = time.perf_counter()
            with ThreadPoolExecutor(args.parallel) as pool:
                back = list(pool.map(get, [g for _, g in urls]))
            down = time.perf_counter() - began
        finally:
            process.terminate()
            process.wait(30)
    total = args.files * args.size
    print(json.dumps({
        "files": args.files, "mib_per_file": args.size, "parallel": args.parallel,
        "put_mib_per_s": round(total / up, 1), "get_mib_per_s": round(total / down, 1),
        "intact": [digest for _, digest in files] == back,
        "health_idle_ms": summary(idle), "health_during_puts_ms": summary(busy),
        "server_rss_kb": {"before": rss_before, "after": rss_after},
    }, indent=2))


if __name__ == "__main__":
    main()

"""Process helpers shared by the benchmarks: free ports, a private redis-server, and the
RSS and CPU of a server together with its worker processes, read from ``/proc`` (Linux).

Usage from a bench::

    from bench.procs import cpu_seconds, free_port, percentile, rss_kb, server_pids, start_redis
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(directory: Path, persist: bool = False,
                extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, int]:
    """Start a private redis-server on a free loopback port, its files and ``redis.log`` in
    ``directory``; returns the process and the port once it accepts connections.

    ``persist``: append-only file, fsync every second (as a deployment would run it);
    otherwise nothing is written to disk. ``extra``: more redis-server arguments."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (scripts/install-test-deps.sh)")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    durability = ["--appendonly", "yes", "--appendfsync", "everysec"] if persist \
        else ["--appendonly", "no"]
    with open(directory / "redis.log", "ab") as log:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
             "--save", "", *durability, *extra], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    process.wait()
    raise SystemExit(f"redis-server did not start: see {directory / 'redis.log'}")


class PrivateRedisCluster:
    """A Redis Cluster of ``masters`` masters with one replica each in ``directory``, on free
    loopback ports (``redis-cli --cluster create``), for a ``with``."""

    def __init__(self, directory: Path, masters: int = 3, persist: bool = True):
        self.directory = directory
        self.masters = masters
        self.persist = persist
        self.nodes: list[tuple[subprocess.Popen, int]] = []

    @property
    def seeds(self) -> list[str]:
        return [f"redis://127.0.0.1:{port}" for _, port in self.nodes]

    def __enter__(self) -> "PrivateRedisCluster":
        for i in range(2 * self.masters):
            self.nodes.append(start_redis(self.directory / f"node{i}", self.persist, (
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(free_port()))))
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{port}" for _, port in self.nodes),
                        "--cluster-replicas", "1", "--cluster-yes"],
                       check=True, capture_output=True, timeout=120)
        deadline = time.monotonic() + 60
        while not all("cluster_state:ok" in subprocess.run(
                ["redis-cli", "-p", str(port), "CLUSTER", "INFO"], capture_output=True,
                text=True).stdout for _, port in self.nodes):
            if time.monotonic() > deadline:
                raise SystemExit(f"the Redis Cluster in {self.directory} did not come up")
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        for process, _ in self.nodes:
            process.terminate()
            process.wait(60)

    def cpu_seconds(self) -> float:
        """CPU every node used so far, masters and replicas."""
        return round(sum(cpu_seconds(process.pid) for process, _ in self.nodes), 2)

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.directory.rglob("*") if f.is_file()
                   and f.name not in ("redis.log", "nodes.conf"))


def server_pids(pid: int) -> list[int]:
    """``pid`` followed by its child processes (a server's workers)."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rpartition(")")[2].split()[1]) == pid:
                        pids.append(int(entry))
            except (OSError, ValueError):
                pass  # gone meanwhile
    return pids


def _read_each(pid: int, name: str) -> list[str]:
    """``/proc/<p>/<name>`` of ``pid`` and of each child still there."""
    texts = []
    for one in server_pids(pid):
        try:
            with open(f"/proc/{one}/{name}") as f:
                texts.append(f.read())
        except OSError:
            if one == pid:
                raise
    return texts


def rss_kb(pid: int) -> int:
    """Resident memory (kB) of ``pid`` and its children."""
    return sum(next((int(line.split()[1]) for line in text.splitlines()
                     if line.startswith("VmRSS:")), 0)
               for text in _read_each(pid, "status"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time (every thread) ``pid`` and its children have used so far."""
    return sum(cpu_split(pid))


def own_cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` alone (one worker of a server), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_split(pid: int) -> tuple[float, float]:
    """``(user, system)`` CPU seconds of ``pid`` and its children so far: how much of a
    server's time is its own code and how much the kernel's (system calls, loopback TCP)."""
    user = system = 0
    for text in _read_each(pid, "stat"):
        fields = text.rpartition(")")[2].split()
        user += int(fields[11])
        system += int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def runqueue_seconds(pid: int) -> float:
    """Seconds ``pid``'s main thread (and its children's) spent runnable but waiting for a
    CPU so far (``schedstat``): on a shared machine, how much of a run was the scheduler's."""
    return sum(int(text.split()[1]) for text in _read_each(pid, "schedstat")) / 1e9


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0 <= q <= 1) of ``values``, by rank; NaN when there are none."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def start_presenced(directory: Path, config: Path, timeout: float = 30.0,
                    checkout: Optional[Path] = None) -> tuple[subprocess.Popen, dict]:
    """Run ``twistd -n presenced --config config`` from this checkout (or ``checkout``, to
    measure another revision), logging to ``directory/presenced.log``; returns the process
    and the ports it recorded once ready."""
    import json
    import sys

    repo = checkout or Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo))
    process = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
         "--pidfile", "", "--logfile", str(directory / "presenced.log"), "presenced",
         "--config", str(config)], cwd=directory, env=env)
    ports_file = directory / "data" / "run" / "ports.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            ports = json.loads(ports_file.read_text())
            if "ready" in ports:  # with workers: every worker serves
                return process, ports
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"presenced did not start (exit status {process.poll()}): see "
                     f"{directory / 'presenced.log'}")

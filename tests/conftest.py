"""Fixtures shared by the suite: private real peers (Redis, presenced itself) on free ports.

Every test server is a real process (``twistd -n presenced``) with its own data directory and
ports chosen by the OS (port 0, read back from ``<data_dir>/run/ports.json``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def subprocess_env() -> dict[str, str]:
    """The environment for child processes: this checkout's code first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class RedisServer:
    """A private redis-server with persistence on (appendfsync always) in its own directory."""

    def __init__(self, directory: Path, port: Optional[int] = None):
        self.directory = directory
        self.port = port or free_port()
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run scripts/install-test-deps.sh")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.directory), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--protected-mode", "no", "--daemonize", "no"],
            stdout=open(self.directory / "redis.log", "ab"), stderr=subprocess.STDOUT)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


class PresencedProcess:
    """A presenced server run as ``twistd -n presenced`` in a private data directory."""

    def __init__(self, directory: Path, sections: dict[str, dict[str, Any]]):
        self.directory = directory
        self.data_dir = directory / "data"
        self.sections = sections
        self.process: Optional[subprocess.Popen] = None
        self.ports: dict[str, int] = {}
        self.log_path = directory / "presenced.log"

    @property
    def config_path(self) -> Path:
        return self.directory / "presenced.toml"

    def start(self, timeout: float = 30.0) -> None:
        sections = {k: dict(v) for k, v in self.sections.items()}
        sections.setdefault("server", {}).setdefault("data_dir", str(self.data_dir))
        for door in ("xmpp", "comet", "thrift", "webadmin"):
            sections.setdefault(door, {}).setdefault("port", 0)
        sections.setdefault("irc", {}).setdefault("cat_port", 0)
        write_config(self.config_path, sections)
        ports_file = self.data_dir / "run" / "ports.json"
        if ports_file.exists():
            ports_file.unlink()
        self.process = subprocess.Popen(
            TWISTD + ["-n", "--pidfile", "", "--logfile", str(self.log_path), "presenced",
                      "--config", str(self.config_path)],
            cwd=self.directory, env=subprocess_env(),
            stdout=subprocess.DEVNULL, stderr=open(self.directory / "stderr.log", "ab"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"presenced exited with {self.process.returncode}:\n"
                                   + self.log())
            try:
                ports = json.loads(ports_file.read_text())
            except (FileNotFoundError, ValueError):
                ports = {}
            if "ready" in ports:
                self.ports = ports
                return
            time.sleep(0.05)
        raise TimeoutError("presenced did not become ready:\n" + self.log())

    def log(self) -> str:
        text = self.log_path.read_text() if self.log_path.exists() else ""
        err = self.directory / "stderr.log"
        return text + (err.read_text() if err.exists() else "")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """``kill -9``: no chance to flush anything."""
        self.stop(signal.SIGKILL)

    def ctl(self, *args: str, input: Optional[str] = None,
            check: bool = True) -> subprocess.CompletedProcess:
        """Run ``presencedctl --config <this server's config> ARGS``."""
        return subprocess.run(
            [sys.executable, "-m", "presenced.ctl", "--config", str(self.config_path), *args],
            input=input, capture_output=True, text=True, env=subprocess_env(),
            cwd=self.directory, check=check, timeout=120)


@pytest.fixture
def presenced_factory(tmp_path: Path):
    """Call with config sections to get a started server; all are stopped after the test."""
    servers: list[PresencedProcess] = []

    def make(sections: Optional[dict[str, dict[str, Any]]] = None, name: str = "node",
             start: bool = True) -> PresencedProcess:
        directory = tmp_path / f"{name}{len(servers)}"
        directory.mkdir()
        server = PresencedProcess(directory, sections or {})
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.stop()

"""Worker processes: one presenced per core on one machine.

Python runs one core per process. With ``[server] workers = N`` (or ``--workers N``) the
process started by ``twistd`` is worker 0 and starts N-1 more copies of itself; every worker
binds the same ports with ``SO_REUSEPORT`` (the kernel spreads connections over them) and
joins the cluster through Redis exactly as separate machines do. The first process binds its
ports before it starts the others and hands them the ports it got (a port of 0 picks one), and
it is ready (``run/ports.json`` says ``ready``) once every worker said it is: serving, in the
cluster. A worker that dies is
restarted; stopping the first process stops them all, and a reload of the first
(SIGHUP, ``presencedctl reload``) is passed on to every worker, each of which reads the
config file again and applies it or refuses it as the first did.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional

from twisted.application import service
from twisted.internet import defer, protocol, reactor
from twisted.logger import Logger

from presenced.config import Config

RESTART_DELAY = 1.0
STOP_TIMEOUT = 10.0


WORKER_ENV = "PRESENCED_WORKER"
PORTS_ENV = "PRESENCED_WORKER_PORTS"  # JSON: door name -> the port the first process bound
READY_FD = 3  # a worker writes "ready" on it once it serves


def is_worker() -> bool:
    """True in a worker process started by a master (``--workers``)."""
    return bool(os.environ.get(WORKER_ENV))


def inherited_port(name: str, configured: int) -> int:
    """The port a worker binds for door ``name``: the one the first process bound."""
    return json.loads(os.environ.get(PORTS_ENV) or "{}").get(name, configured)


def report_ready() -> None:
    """In a worker: tell the first process that this one serves."""
    try:
        os.write(READY_FD, b"ready\n")
        os.close(READY_FD)
    except OSError as e:  # started by hand, without the pipe
        Logger().warn("could not report readiness to the first process: {e}", e=e)


class WorkerProcess(protocol.ProcessProtocol):
    """One worker: its output goes to our log, its end is reported to the supervisor."""

    log = Logger()

    def __init__(self, supervisor: "WorkerSupervisor", index: int):
        self.supervisor = supervisor
        self.index = index
        self.ended: defer.Deferred = defer.Deferred()
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()[-65536:]
        for line in lines:
            self.log.info("worker {i}: {line}", i=self.index,
                          line=line.decode("utf-8", "replace"))

    errReceived = outReceived

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == READY_FD:
            if b"ready" in data:
                self.supervisor.worker_ready(self)
            return
        super().childDataReceived(childFD, data)

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)
        self.supervisor.ended(self, reason)


class WorkerSupervisor(service.Service):
    """Starts the other workers after this one's doors listen, on the ports it bound
    (``ports``: door name -> port); restarts them when they die. :attr:`ready` fires once
    each has said it serves."""

    log = Logger()
    name = "workers"

    def __init__(self, config: Config, ports: dict[str, int]):
        self.config = config
        self.ports = ports
        self.processes: dict[int, WorkerProcess] = {}
        self.ready: defer.Deferred = defer.Deferred()
        self._starting = set(range(1, config.server.workers))

    def argv(self) -> list[str]:
        args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
                "--pidfile", "", "presenced",
                "--data-dir", self.config.server.data_dir,
                "--workers", str(self.config.server.workers)]
        if self.config.path:
            args += ["--config", self.config.path]
        return args

    def startService(self) -> None:
        super().startService()
        for index in range(1, self.config.server.workers):
            self.spawn(index)

    def spawn(self, index: int) -> None:
        env = dict(os.environ)
        env[WORKER_ENV] = str(index)
        env[PORTS_ENV] = json.dumps(self.ports)
        worker = WorkerProcess(self, index)
        reactor.spawnProcess(worker, sys.executable, self.argv(), env=env,
                             childFDs={0: "w", 1: "r", 2: "r", READY_FD: "r"})
        self.processes[index] = worker
        self.log.info("started worker {i} (pid {pid})", i=index, pid=worker.transport.pid)

    def worker_ready(self, worker: WorkerProcess) -> None:
        self.log.info("worker {i} ready", i=worker.index)
        self._starting.discard(worker.index)
        if not self._starting and not self.ready.called:
            self.ready.callback(None)

    def ended(self, worker: WorkerProcess, reason: Any) -> None:
        if self.processes.get(worker.index) is not worker:
            return
        del self.processes[worker.index]
        if self.running:
            self.log.warn("worker {i} ended ({why}); restarting", i=worker.index,
                          why=reason.getErrorMessage())
            reactor.callLater(RESTART_DELAY, self._respawn, worker.index)

    def forward_reload(self) -> int:
        """Send SIGHUP to every worker (each reloads its config); returns how many."""
        sent = 0
        for worker in list(self.processes.values()):
            try:
                worker.transport.signalProcess("HUP")
            except Exception as e:  # ended meanwhile: ``ended`` restarts it on the new file
                self.log.warn("worker {i}: reload not sent ({e})", i=worker.index, e=e)
                continue
            sent += 1
        if sent:
            self.log.info("reload sent to {n} worker(s)", n=sent)
        return sent

    def _respawn(self, index: int) -> None:
        if self.running and index not in self.processes:
            self.spawn(index)

    def stopService(self) -> Optional[defer.Deferred]:
        super().stopService()
        waits = []
        for worker in list(self.processes.values()):
            try:
                worker.transport.signalProcess("TERM")
            except Exception:
                continue
            timer = reactor.callLater(STOP_TIMEOUT, _kill, worker)
            worker.ended.addBoth(lambda _, t=timer: t.active() and t.cancel())
            waits.append(worker.ended)
        return defer.DeferredList(waits) if waits else None


def _kill(worker: WorkerProcess) -> None:
    try:
        worker.transport.signalProcess("KILL")
    except Exception:
        pass

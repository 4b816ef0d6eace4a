"""Worker processes: one presenced per core on one machine.

Python runs one core per process. With ``[server] workers = N`` (or ``--workers N``) the
process started by ``twistd`` is worker 0 and starts N-1 more copies of itself; every worker
binds the same ports with ``SO_REUSEPORT`` (the kernel spreads connections over them) and
joins the cluster through Redis exactly as separate machines do. A worker that dies is
restarted; stopping the first process stops them all, and a reload of the first
(SIGHUP, ``presencedctl reload``) is passed on to every worker, each of which reads the
config file again and applies it or refuses it as the first did.
"""

from __future__ import annotations

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


def is_worker() -> bool:
    """True in a worker process started by a master (``--workers``)."""
    return bool(os.environ.get(WORKER_ENV))


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

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)
        self.supervisor.ended(self, reason)


class WorkerSupervisor(service.Service):
    """Starts the other workers after this one is ready; restarts them when they die."""

    log = Logger()
    name = "workers"

    def __init__(self, config: Config):
        self.config = config
        self.processes: dict[int, WorkerProcess] = {}

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
        worker = WorkerProcess(self, index)
        reactor.spawnProcess(worker, sys.executable, self.argv(), env=env,
                             childFDs={0: "w", 1: "r", 2: "r"})
        self.processes[index] = worker
        self.log.info("started worker {i} (pid {pid})", i=index, pid=worker.transport.pid)

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

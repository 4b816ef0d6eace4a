"""The presenced service: one store, one router, and every enabled front door, in one reactor.

Each front door (:data:`presenced.doors.DOORS`) is a module with ``make_service(core) ->
IService``; the enabled ones run as child services, started once the store is open. A door
listens through :class:`ListeningService`, which applies the door's connection limits
(:mod:`presenced.listener`), logs its address and records the bound port in
``<data_dir>/run/ports.json`` (port 0 picks a free port: tests and benchmarks read the file).
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import signal
import socket
import sys
import threading
from typing import Any, Callable, Optional

from twisted.application import service
from twisted.internet import defer, reactor, task
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.logger import Logger

from presenced.config import Config, ConfigError
from presenced.core import Core
from presenced.doors import DOORS
from presenced.extauth import configured_pool
from presenced.listener import ConnectionLimits, GuardedFactory
from presenced.memory import pace_collector
from presenced.reload import ConfigReloader
from presenced.store import StoreError
from presenced.store.backends import make_store
from presenced.workers import inherited_port, is_worker, report_ready

log = Logger()


class ListeningService(service.Service):
    """Listens on one TCP port with ``factory`` while running, within the caps
    ``limits_of(config)`` reads from the door's keys: read again on every reload
    (``config-reloaded``), so a door's connection caps change without a restart.

    ``tls`` (an ``IOpenSSLServerConnectionCreator`` such as ``CertificateOptions``) makes it a
    direct-TLS port. With several workers (``[server] workers``) every worker binds the same
    port with ``SO_REUSEPORT`` and the kernel spreads new connections over them.
    """

    def __init__(self, core: Core, name: str, port: int, interface: str,
                 factory: IProtocolFactory, limits_of: Callable[[Config], ConnectionLimits],
                 tls: Any = None):
        self.core = core
        self.setName(name)
        self.port = port
        self.interface = interface
        self.factory = factory
        self.limits_of = limits_of
        self.tls = tls
        self.listening: Optional[IListeningPort] = None
        self.guard: Optional[GuardedFactory] = None

    def startService(self) -> None:
        super().startService()
        self.factory.noisy = False  # our own line below says where it listens
        tls = None
        if self.tls is not None:
            tls = TLSMemoryBIOFactory(self.tls, False, self.factory)
            tls.noisy = False
        factory = GuardedFactory(self.name, self.factory, self.limits_of(self.core.config),
                                 self.core.open_files, self.core.metrics, reactor, tls)
        self.guard = factory
        self.core.hooks.add("config-reloaded", self.config_reloaded)
        if self.core.config.server.workers > 1:
            port = inherited_port(self.name, self.port) if is_worker() else self.port
            self.listening = listen_reuse_port(port, self.interface, factory)
        else:
            self.listening = reactor.listenTCP(self.port, factory, backlog=1024,
                                               interface=self.interface)
        address = self.listening.getHost()
        log.info("{name} listening on {host}:{port}", name=self.name, host=address.host,
                 port=address.port)
        if not is_worker():
            record_port(self.core.config.server.data_dir, self.name, address.port)

    def config_reloaded(self, old: Config, new: Config) -> None:
        if self.guard is not None:
            self.guard.apply(self.limits_of(new))

    def stopService(self) -> Any:
        super().stopService()
        self.core.hooks.remove("config-reloaded", self.config_reloaded)
        if self.listening is not None:
            port, self.listening = self.listening, None
            return port.stopListening()
        return None


def listen_reuse_port(port: int, interface: str, factory: IProtocolFactory) -> IListeningPort:
    """Listen on a socket shared with the other workers (``SO_REUSEPORT``)."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
        sock.listen(1024)
        sock.setblocking(False)
        return reactor.adoptStreamPort(sock.fileno(), family, factory)
    finally:
        sock.close()  # the reactor holds its own duplicate of the descriptor


def bound_ports(parent: service.IServiceCollection) -> dict[str, int]:
    """The port each listening door under ``parent`` bound (the ones workers share)."""
    ports: dict[str, int] = {}
    for child in parent:
        if isinstance(child, ListeningService) and child.listening is not None:
            ports[child.name] = child.listening.getHost().port
        elif service.IServiceCollection.providedBy(child):
            ports.update(bound_ports(child))
    return ports


def record_port(data_dir: str, name: str, port: int) -> None:
    """Add ``name: port`` to ``<data_dir>/run/ports.json`` (rewritten atomically)."""
    run = os.path.join(data_dir, "run")
    os.makedirs(run, exist_ok=True)
    path = os.path.join(run, "ports.json")
    try:
        with open(path) as f:
            ports = json.load(f)
    except (FileNotFoundError, ValueError):
        ports = {}
    ports[name] = port
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(ports, f)
    os.replace(tmp, path)


def raise_open_files_limit() -> None:
    """Comet holds one file per stream: take the soft limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:
            log.warn("could not raise open files limit from {soft}: {e}", soft=soft, e=e)
            return
    log.info("open files limit: soft {new} (was {soft}), hard {hard}",
             new=max(soft, hard), soft=soft, hard=hard)


# Seconds a thread may hold the GIL while another waits for it (Python's default: 0.005).
GIL_SWITCH_INTERVAL = 0.0005


def share_gil_with_threads() -> None:
    """Let the store's thread (and the hashing pool) take the GIL back within 0.5 ms.

    The reactor thread runs Python almost without pause under load; a thread coming back
    from SQLite or hashlib waits for the GIL until the reactor drops it, which Python forces
    only every switch interval. A store request takes several such hand-backs, so at the
    default 5 ms a busy reactor made every tune's write, and the Thrift reply waiting for
    it, tens of milliseconds late. ``bench/comet.py``, whose publishers wait for their
    replies, on a loaded 2-core machine, alternating runs: 19 800 -> 33 300, 15 400 ->
    37 300 and 9 500 -> 11 400 deliveries/s (one pair the other way, 26 700 -> 13 100, as the
    load rose); the server's CPU per delivery does not grow."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)


class PresencedService(service.MultiService):
    """The whole server. Doors start after the store is open and stop before it closes; the
    core's accounts service (the extauth pool, when configured) runs for the whole life of
    the node, whichever doors are enabled."""

    def __init__(self, config: Config, overrides: Optional[dict[str, dict[str, Any]]] = None):
        """``overrides``: the command line's values (``--data-dir``), kept over reloads."""
        super().__init__()
        self.config = config
        self.overrides = overrides or {}
        self.core: Optional[Core] = None

    def startService(self) -> None:
        service.Service.startService(self)
        os.makedirs(os.path.join(self.config.server.data_dir, "run"), exist_ok=True)
        ports = os.path.join(self.config.server.data_dir, "run", "ports.json")
        if os.path.exists(ports) and not is_worker():
            os.remove(ports)
        raise_open_files_limit()
        share_gil_with_threads()
        self._handle_sighup()
        store = make_store(self.config)
        self.core = Core(self.config, store, external_auth=configured_pool(self.config))
        self.core.accounts.start()
        log.info("public doors hold up to {n} connections together (open files limit less "
                 "[server] reserved_files)", n=self.core.open_files.limit)
        log.info("store: {backend} ({where})", backend=store.name,
                 where=getattr(store, "path", None) or ", ".join(store.urls))
        d = defer.maybeDeferred(store.start)
        if self.config.cluster.enabled:
            d.addCallback(lambda _: self._join_cluster())
        d.addCallback(lambda _: self._start_doors())
        d.addErrback(self._failed)

    def _join_cluster(self) -> defer.Deferred:
        from presenced.cluster.service import ClusterService

        assert self.core is not None
        cluster = ClusterService(self.core)
        cluster.setServiceParent(self)
        return cluster.join()

    def _start_doors(self) -> None:
        assert self.core is not None
        doors = 0
        for entry in DOORS:
            if getattr(self.config, entry.section).enabled:
                module = importlib.import_module(entry.service_module)
                door = module.make_service(self.core)
                door.setServiceParent(self)
                doors += 1
        self.core.state = "ready"
        log.info("collector: {n} start-up objects frozen", n=pace_collector())
        log.info("presenced ready: {n} front door(s), domains {domains}",
                 n=doors, domains=", ".join(self.config.server.domains))
        if is_worker():
            report_ready()
        elif self.config.server.workers > 1:
            from presenced.workers import WorkerSupervisor

            workers = WorkerSupervisor(self.config, bound_ports(self))
            workers.setServiceParent(self)
            workers.ready.addCallback(lambda _: self._record_ready())
        else:
            self._record_ready()

    def _record_ready(self) -> None:
        """``ready`` in ``run/ports.json``: what scripts and tests wait for (with workers,
        once every worker serves)."""
        record_port(self.config.server.data_dir, "ready", os.getpid())

    def _handle_sighup(self) -> None:
        """SIGHUP (``systemctl reload``, ``presencedctl reload``, logrotate) reloads the
        config instead of ending the process; the handler only schedules the reload, which
        runs on the reactor thread. Signals can only be caught on the main thread."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP,
                          lambda signum, frame: reactor.callFromThread(self.reload))

    def reload(self) -> bool:
        """Reload the config file now (:mod:`presenced.reload`), then in every worker; only
        once every door has started, since a door not yet built would miss the change."""
        if self.core is None or self.core.state != "ready":
            log.warn("reload ignored: the server is {state}",
                     state=self.core.state if self.core else "starting")
            return False
        applied = ConfigReloader(self.core, self.config.path, self.overrides).reload()
        workers = self.namedServices.get("workers")
        if workers is not None:
            workers.forward_reload()  # each reads the file itself, refusing it as we did
        return applied

    @defer.inlineCallbacks
    def _sessions_gone(self, closing: set, grace: float):
        """Wait (at most ``grace`` seconds) until the sessions told to close have flushed
        their last bytes and logged out: the reactor drops what is still unsent when it
        stops. (Sessions that begin as others close, such as a comet replay buffer held for
        a closed stream, are not waited for.)"""
        assert self.core is not None
        deadline = reactor.seconds() + grace
        while reactor.seconds() < deadline:
            closing.intersection_update(self.core.router.all_sessions())
            if not closing:
                return
            yield task.deferLater(reactor, 0.05, lambda: None)
        log.warn("stopping with {n} session(s) still open after the grace period",
                 n=len(closing))

    def _failed(self, failure: Any) -> None:
        """Start-up failed (store unreachable, a door refused its config): stop cleanly,
        then exit with status 1 so supervisors and scripts see the failure."""
        log.critical("presenced could not start: {error}", error=failure.getErrorMessage())
        if not failure.check(ConfigError, StoreError):
            log.failure("start-up failure", failure)
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        if reactor.running:
            reactor.stop()
        else:
            reactor.callWhenRunning(reactor.stop)

    @defer.inlineCallbacks
    def stopService(self):
        if self.core is not None:
            self.core.state = "stopping"
            # A cluster node leaves the directory first ("node-stopping"), so friends on
            # other nodes see its users go at once, however long their sessions take.
            yield defer.gatherResults(self.core.hooks.collect("node-stopping"))
            closing = set(self.core.router.all_sessions())
            self.core.router.close_all("system-shutdown")
            yield self._sessions_gone(closing, self.config.server.stop_grace_period)
        yield defer.maybeDeferred(super().stopService)
        if self.core is not None:
            self.core.accounts.stop()
            yield self.core.store.stop()
            log.info("store closed")

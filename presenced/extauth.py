"""External authentication: programs speaking ejabberd's extauth protocol, unchanged.

The pool belongs to the core, not to a door: :class:`presenced.accounts.Accounts` sends it
every account question (exists, password right, register, change, remove) whichever door
asks, so XMPP, Thrift and the web admin agree on who exists. Its keys stay in ``[xmpp]``
(``extauth_program``, ``extauth_pool_size``, ``extauth_timeout``) where deployments have them.

Every message both ways is a 2-byte big-endian length and its bytes. Requests are
``auth:U:S:P``, ``isuser:U:S``, ``setpass:U:S:P``, ``tryregister:U:S:P``, ``removeuser:U:S``
(the password is last, so it may contain ``:``); the only valid replies are ``00 02 00 00``
(no) and ``00 02 00 01`` (yes). A pool of program instances answers one request each at a
time; a program that dies is restarted, one that does not answer within the timeout is
killed and restarted, and anything else it says is an error: in every such case the request
fails (the login is refused), the server carries on.
"""

from __future__ import annotations

import collections
import shlex
import struct
from typing import Optional

from twisted.internet import defer, protocol, reactor
from twisted.logger import Logger

from presenced.config import Config

YES = b"\x00\x02\x00\x01"
NO = b"\x00\x02\x00\x00"
RESTART_DELAY = 1.0


def configured_pool(config: Config) -> Optional["ExternalAuth"]:
    """The pool ``[xmpp] extauth_program`` asks for, not yet started; None without one."""
    settings = config.xmpp
    if not settings.extauth_program:
        return None
    return ExternalAuth(settings.extauth_program, settings.extauth_pool_size,
                        settings.extauth_timeout)


class ExtAuthError(Exception):
    """The program did not give a valid answer in time."""


class ExtAuthProcess(protocol.ProcessProtocol):
    """One running program; answers one request at a time."""

    log = Logger()

    def __init__(self, pool: "ExternalAuth"):
        self.pool = pool
        self.buffer = b""
        self.waiting: Optional[defer.Deferred] = None
        self.timeout = None
        self.running = False

    def connectionMade(self) -> None:
        self.running = True
        self.pool.ready(self)

    def ask(self, request: bytes) -> defer.Deferred:
        self.waiting = defer.Deferred()
        self.buffer = b""
        self.timeout = reactor.callLater(self.pool.timeout, self._timed_out)
        self.transport.write(struct.pack(">H", len(request)) + request)
        return self.waiting

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) < 4:
            return
        reply, self.buffer = self.buffer[:4], self.buffer[4:]
        if reply in (YES, NO) and not self.buffer:
            self._answer(reply == YES)
        else:
            self._fail(f"invalid reply {reply + self.buffer[:16]!r}")

    def errReceived(self, data: bytes) -> None:
        self.log.warn("extauth program: {text}", text=data.decode("utf-8", "replace")[:500])

    def _timed_out(self) -> None:
        self.timeout = None
        self._fail(f"no answer within {self.pool.timeout}s")

    def _answer(self, value) -> None:
        if self.timeout is not None and self.timeout.active():
            self.timeout.cancel()
        self.timeout = None
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            if isinstance(value, Exception):
                waiting.errback(value)
            else:
                waiting.callback(value)
                self.pool.ready(self)

    def _fail(self, why: str) -> None:
        """A broken program: fail its request and replace it."""
        self.log.warn("extauth program failed: {why}; restarting it", why=why)
        self._answer(ExtAuthError(why))
        self.running = False
        try:
            self.transport.signalProcess("KILL")
        except Exception:
            pass

    def processEnded(self, reason) -> None:
        was_running, self.running = self.running, False
        self._answer(ExtAuthError("the program exited"))
        self.pool.ended(self, was_running)


class ExternalAuth:
    """A pool of extauth programs and a queue of requests waiting for a free one."""

    log = Logger()

    def __init__(self, command: str, size: int, timeout: float):
        self.argv = shlex.split(command)
        self.size = size
        self.timeout = timeout
        self.idle: collections.deque[ExtAuthProcess] = collections.deque()
        self.queue: collections.deque = collections.deque()
        self.processes: set[ExtAuthProcess] = set()
        self.stopping = False

    def start(self) -> None:
        for _ in range(self.size):
            self._spawn()

    def stop(self) -> None:
        self.stopping = True
        for process in list(self.processes):
            if process.running:
                process.transport.signalProcess("TERM")

    def _spawn(self) -> None:
        if self.stopping:
            return
        process = ExtAuthProcess(self)
        self.processes.add(process)
        reactor.spawnProcess(process, self.argv[0], self.argv, env=None)

    def request(self, command: str, *fields: str) -> defer.Deferred:
        """Fires True/False; a broken or hung program counts as False (logged)."""
        data = ":".join((command,) + fields).encode("utf-8")
        d: defer.Deferred = defer.Deferred()
        if len(data) > 0xFFFF:
            d.callback(False)
            return d
        self.queue.append((data, d))
        self._next()
        d.addErrback(self._failed, command)
        return d

    def _failed(self, failure, command: str) -> bool:
        self.log.warn("extauth {command} failed: {why}", command=command,
                      why=failure.getErrorMessage())
        return False

    def ready(self, process: ExtAuthProcess) -> None:
        self.idle.append(process)
        self._next()

    def _next(self) -> None:
        while self.queue and self.idle:
            process = self.idle.popleft()
            if not process.running or process.waiting is not None:
                continue
            data, d = self.queue.popleft()
            process.ask(data).chainDeferred(d)

    def ended(self, process: ExtAuthProcess, unexpected: bool) -> None:
        self.processes.discard(process)
        if process in self.idle:
            self.idle.remove(process)
        if not self.stopping:
            if unexpected:
                self.log.warn("extauth program exited; restarting it")
            reactor.callLater(RESTART_DELAY if unexpected else 0, self._spawn)

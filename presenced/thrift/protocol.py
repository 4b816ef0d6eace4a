"""The Thrift admin port on the reactor: one :class:`AdminProtocol` per client connection.

A connection may send calls back to back without waiting (pipelining); they run at once and
their replies go out in the order the calls came. Memory per connection stays bounded:

- one message is at most ``max_message_bytes`` (declared lengths are checked before reading);
- at most ``max_pending_calls`` calls are in progress; past that the server stops reading
  from the connection until replies have gone out (TCP pushes back on the client);
- while the client does not read its replies the server stops reading its calls, and a client
  that leaves more than ``max_unread_bytes`` of replies unread is disconnected
  (:class:`presenced.flow.WriteBudget`);
- a message left half-sent, or replies left unread, for ``timeout`` seconds close the
  connection (an idle connection between calls stays open).

Bytes that are not a Thrift message close the connection (after a ``TApplicationException``
when the message header was readable); a call to an unknown method is answered with one and
the connection goes on. Other connections never notice.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Optional

from twisted.internet import protocol
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger
from thriftpy2.thrift import TApplicationException

from presenced.allowlist import Allowlist
from presenced.config import Config
from presenced.core import Core
from presenced.flow import WriteBudget
from presenced.thrift.codec import BadMessage, MessageDecoder, MessageEncoder
from presenced.thrift.dispatch import Dispatcher

DOOR = "thrift"


class ReplyBudget(WriteBudget):
    """A :class:`WriteBudget` that also tells the protocol when the peer stops reading."""

    __slots__ = ("owner",)

    def __init__(self, transport: Any, limit: int, owner: "AdminProtocol"):
        self.owner = owner
        # Straight to the socket while nothing is queued (flow.SocketWriter): one send() per
        # reply batch, where Twisted's queue cost two epoll_ctl calls around it.
        super().__init__(transport, limit, direct=True)

    def pauseProducing(self) -> None:
        super().pauseProducing()
        self.owner.writes_blocked(True)

    def resumeProducing(self) -> None:
        super().resumeProducing()
        self.owner.writes_blocked(False)


class AdminProtocol(protocol.Protocol):
    """Decodes calls, runs them through the dispatcher, writes replies in call order."""

    log = Logger()

    def __init__(self, factory: "AdminFactory", peer: str):
        self.factory = factory
        self.peer = peer
        self.decoder = factory.new_decoder()
        self.replies: deque[list] = deque()  # [encoded reply or None while in progress]
        self.budget: Optional[ReplyBudget] = None
        self.reading = True
        self.writing_blocked = False
        self.closing = False
        self.closed = False
        self._taking = False
        self._timer: Any = None

    def connectionMade(self) -> None:
        self.factory.connections += 1
        # Replies are written as their calls finish, each straight to the socket: without
        # TCP_NODELAY the kernel would hold a reply until the client acknowledged the last
        # (Nagle), and a client's delayed ACK stalled pipelined calls by tens of ms.
        self.transport.setTcpNoDelay(True)
        self.budget = ReplyBudget(self.transport, self.factory.max_unread_bytes, self)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        self.factory.connections -= 1
        self._cancel_timer()
        self.replies.clear()

    # --- calls in ----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.decoder.feed(data)
        self._take_calls()

    def _take_calls(self) -> None:
        if self._taking:
            return  # a reply that was ready at once: the loop below goes on by itself
        factory = self.factory
        taken = 0
        self._taking = True
        try:
            while len(self.replies) < factory.max_pending_calls and not self.writing_blocked:
                message = self.decoder.next_message()
                if message is None:
                    break
                taken += 1
                self._queue(factory.dispatcher.dispatch(message))
                if self.closed:
                    return
        except BadMessage as e:
            self._refuse(e)
            return
        finally:
            self._taking = False
            if taken:
                factory.metrics.inc("presenced_thrift_calls_total", taken)
        if taken:
            self._cancel_timer()  # progress: the timeout counts from here
        self._update_reading()
        self._update_timer()

    def _queue(self, reply: Any) -> None:
        if reply is None:  # oneway
            return
        if isinstance(reply, bytes):
            if not self.replies:
                self.budget.write(reply)
                return
            self.replies.append([reply])
            return
        slot: list = [None]
        self.replies.append(slot)
        reply.addCallback(self._ready, slot)

    def _ready(self, data: Optional[bytes], slot: list) -> None:
        slot[0] = data if data is not None else b""
        if self.closed:
            return
        self._flush()
        if not self.closing:
            self._take_calls()

    def _flush(self) -> None:
        replies = self.replies
        ready = []
        while replies and replies[0][0] is not None:
            ready.append(replies.popleft()[0])
        if ready and not self.budget.write(b"".join(ready)):
            return  # over budget: the connection is being aborted
        if self.closing and not replies:
            self.transport.loseConnection()

    def _refuse(self, error: BadMessage) -> None:
        """Stop reading; answer what can be answered, then close."""
        self.log.info("thrift: closing connection from {peer}: {reason}", peer=self.peer,
                      reason=error.reason)
        self.factory.metrics.inc("presenced_thrift_bad_messages_total")
        self.closing = True
        self._pause_reading()
        if error.seqid is not None:
            self.replies.append([self.factory.dispatcher.exception(
                error.name or "", error.seqid, TApplicationException.PROTOCOL_ERROR,
                error.reason)])
        self._flush()

    # --- flow control --------------------------------------------------------------------

    def writes_blocked(self, blocked: bool) -> None:
        self.writing_blocked = blocked
        if not self.closed:
            self._update_reading()
            self._update_timer()

    def _update_reading(self) -> None:
        """Read while calls can be taken; once paused for too many calls in progress, wait
        until half of them are done (each pause and resume is a system call)."""
        pending = len(self.replies)
        limit = self.factory.max_pending_calls
        if self.writing_blocked or self.closing or pending >= limit:
            self._pause_reading()
        elif not self.reading and pending <= limit // 2:
            self.reading = True
            self.transport.resumeProducing()

    def _pause_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.transport.pauseProducing()

    def _update_timer(self) -> None:
        """Run the timeout while a message is half-received or replies wait unread."""
        waiting = self.writing_blocked or (self.reading and self.decoder.pending_bytes > 0)
        if waiting and self._timer is None:
            self._timer = self.factory.clock.callLater(self.factory.timeout, self._timed_out)
        elif not waiting:
            self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        what = "replies unread" if self.writing_blocked else "a message incomplete"
        self.log.info("thrift: closing connection from {peer}: {what} for {seconds}s",
                      peer=self.peer, what=what, seconds=self.factory.timeout)
        self.factory.metrics.inc("presenced_thrift_timeouts_total")
        self.transport.abortConnection()


class AdminFactory(protocol.ServerFactory):
    """Builds admin connections for allowed client addresses; shares one dispatcher."""

    log = Logger()
    noisy = False  # the listening port is logged by ListeningService already

    def __init__(self, core: Core, service: Any, handler: object, clock: IReactorTime,
                 allow: Allowlist = Allowlist()):
        settings = core.config.thrift
        self.core = core
        self.metrics = core.metrics
        self.service = service
        self.protocol_name: str = settings.protocol
        self.framed = settings.transport == "framed"
        self.dispatcher = Dispatcher(service, handler,
                                     MessageEncoder(self.protocol_name, self.framed))
        self.clock = clock
        self.allow = allow
        self.apply_limits(settings)
        core.hooks.add("config-reloaded", self.config_reloaded)
        self.connections = 0
        self.metrics.gauge("presenced_connections", lambda: self.connections, door=DOOR)
        self.metrics.describe("presenced_thrift_calls_total", "counter",
                              "Thrift calls received, whatever their outcome")
        self.metrics.describe("presenced_thrift_bad_messages_total", "counter",
                              "Thrift connections closed for bytes that are not a message")
        self.metrics.describe("presenced_thrift_timeouts_total", "counter",
                              "Thrift connections closed for a stalled message or unread "
                              "replies")

    def apply_limits(self, settings: Any) -> None:
        """The per-connection bounds of ``[thrift]``, read by every connection as it works
        (a reload changes them for connections already open too)."""
        self.max_message_bytes: int = settings.max_message_bytes
        self.max_pending_calls: int = settings.max_pending_calls
        self.max_unread_bytes: int = settings.max_unread_bytes
        self.timeout: float = settings.timeout

    def config_reloaded(self, old: Config, new: Config) -> None:
        """New limits, and the new ``allow`` list for connections from now on (checked
        when the config was read, so it parses)."""
        self.apply_limits(new.thrift)
        self.allow = Allowlist(new.thrift.allow)

    def new_decoder(self) -> MessageDecoder:
        return MessageDecoder(self.service, self.protocol_name, self.framed,
                              self.max_message_bytes)

    def buildProtocol(self, addr: IAddress) -> Optional[AdminProtocol]:
        host = getattr(addr, "host", "")
        if not self.allow.admits(host):
            self.log.warn("thrift: refused connection from {host}: not in [thrift] allow",
                          host=host)
            self.metrics.inc("presenced_auth_failures_total", door=DOOR)
            return None
        self.metrics.inc("presenced_connections_total", door=DOOR)
        return AdminProtocol(self, f"{host}:{getattr(addr, 'port', '')}")


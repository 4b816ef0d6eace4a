"""Running the configured handler program for a ``?command``, bounded in time and output.

The program runs without a shell; it gets the nick, channel, command and each argument as
separate arguments, and irccat's environment variables, so handlers written for irccat work
unchanged. Its stdout lines are the answer. A handler that runs too long is killed, one that
prints more than the limit is stopped; both are reported, and the bot never waits on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from twisted.internet import defer, error, protocol, reactor
from twisted.internet.interfaces import IDelayedCall

# Variables of ours a handler may need (finding programs, its locale); nothing else leaks.
PASSED_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH")


@dataclass(frozen=True, slots=True)
class HandlerRequest:
    """One command as irccat describes it to handlers."""

    nick: str
    user: str
    host: str
    channel: str
    respond_to: str
    command: str
    args: str
    raw: str

    def argv(self, program: str) -> list[str]:
        return [program, self.nick, self.channel, self.command, *self.args.split()]

    def environment(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSED_ENVIRONMENT if k in os.environ}
        env.update(IRCCAT_COMMAND=self.command, IRCCAT_ARGS=self.args, IRCCAT_NICK=self.nick,
                   IRCCAT_USER=self.user, IRCCAT_HOST=self.host, IRCCAT_CHANNEL=self.channel,
                   IRCCAT_RESPOND_TO=self.respond_to, IRCCAT_RAW=self.raw)
        return env


@dataclass(frozen=True, slots=True)
class HandlerResult:
    """What the handler printed (decoded lines) and how it ended."""

    lines: list[str]
    exit_code: Optional[int]
    signal: Optional[int]
    timed_out: bool
    overflowed: bool

    def problem(self, timeout: float, max_bytes: int) -> Optional[str]:
        """A line for the channel when the handler did not end well, else None."""
        if self.timed_out:
            return f"handler timed out after {timeout:g}s and was killed"
        if self.overflowed:
            return f"handler printed more than {max_bytes} bytes and was stopped"
        if self.signal is not None:
            return f"handler killed by signal {self.signal}"
        if self.exit_code:
            return f"handler failed with exit status {self.exit_code}"
        return None


class HandlerProcess(protocol.ProcessProtocol):
    """One handler run: stdout kept up to ``max_bytes``, stderr dropped, killed at timeout."""

    def __init__(self, timeout: float, max_bytes: int):
        self.max_bytes = max_bytes
        self.output = bytearray()
        self.timed_out = False
        self.overflowed = False
        self.done: defer.Deferred = defer.Deferred()
        self.timer: IDelayedCall = reactor.callLater(timeout, self.expire)

    def connectionMade(self) -> None:
        self.transport.closeStdin()  # irccat handlers get everything in argv and env

    def outReceived(self, data: bytes) -> None:
        room = self.max_bytes - len(self.output)
        self.output += data[:room]
        if len(data) > room and not self.overflowed:
            self.overflowed = True
            self.stop()

    def errReceived(self, data: bytes) -> None:
        """Handlers' diagnostics are theirs; reading them keeps the pipe from filling."""

    def expire(self) -> None:
        self.timed_out = True
        self.stop()

    def stop(self) -> None:
        """Kill it and close our ends, so children holding its pipes cannot keep us waiting."""
        try:
            self.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass
        self.transport.loseConnection()

    def processEnded(self, reason: Any) -> None:
        if self.timer.active():
            self.timer.cancel()
        status = reason.value
        text = self.output.decode("utf-8", "replace")
        lines = [line.rstrip("\r") for line in text.split("\n")]
        self.done.callback(HandlerResult(
            lines=[line for line in lines if line.strip()],
            exit_code=getattr(status, "exitCode", None),
            signal=getattr(status, "signal", None),
            timed_out=self.timed_out, overflowed=self.overflowed))


def run_handler(program: str, request: HandlerRequest, timeout: float,
                max_bytes: int) -> defer.Deferred:
    """Start the handler; fires a :class:`HandlerResult` (or fails if it cannot start)."""
    process = HandlerProcess(timeout, max_bytes)
    try:
        reactor.spawnProcess(process, program, request.argv(program), env=request.environment(),
                             childFDs={0: "w", 1: "r", 2: "r"})
    except OSError as e:
        process.timer.cancel()
        return defer.fail(e)
    return process.done

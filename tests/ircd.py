"""A private ngircd on a free loopback port, and a raw line client that watches channels.

The IRC tests talk to a real IRC server: ``ngircd -n -f <config in tmp>``. The watcher is a
plain socket client (no IRC library), so what it sees is exactly what went over the wire.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from tests.helpers import free_port, wait_for_port

NGIRCD = "/usr/sbin/ngircd"


class NgIRCd:
    """ngircd in the foreground with a config of our own (no PAM, no ident, no DNS)."""

    def __init__(self, directory: Path, password: str = "",
                 tls: Optional[tuple[Path, Path]] = None):
        self.directory = directory
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.password = password
        self.tls = tls
        self.process: Optional[subprocess.Popen] = None

    def config(self) -> Path:
        lines = ["[Global]", "Name = irc.presenced.test", "Info = presenced test server",
                 "Listen = 127.0.0.1", f"Ports = {self.port}",
                 "MotdPhrase = presenced test",
                 f"Password = {self.password}",
                 "[Limits]", "MaxNickLength = 30", "MaxConnectionsIP = 0", "MaxJoins = 0",
                 "PingTimeout = 120",
                 "[Options]", "PAM = no", "Ident = no", "DNS = no"]
        if self.tls:
            cert, key = self.tls
            lines += ["[SSL]", f"CertFile = {cert}", f"KeyFile = {key}",
                      f"Ports = {self.tls_port}"]
        path = self.directory / "ngircd.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> None:
        if not shutil.which(NGIRCD):
            pytest.fail("ngircd is not installed: run scripts/install-test-deps.sh")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [NGIRCD, "-n", "-f", str(self.config())],
            stdout=open(self.directory / "ngircd.log", "ab"), stderr=subprocess.STDOUT)
        wait_for_port(self.port)
        if self.tls_port:
            wait_for_port(self.tls_port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


class Message:
    """One IRC line: ``:prefix COMMAND params... :trailing``."""

    def __init__(self, line: str):
        self.line = line
        self.prefix = ""
        if line.startswith(":"):
            self.prefix, _, line = line[1:].partition(" ")
        head, sep, trailing = line.partition(" :")
        parts = head.split()
        self.command = parts[0].upper() if parts else ""
        self.params = parts[1:] + ([trailing] if sep else [])

    @property
    def nick(self) -> str:
        return self.prefix.split("!", 1)[0]

    def __repr__(self) -> str:
        return f"<{self.line}>"


class IRCWatcher:
    """A raw IRC client: registers, joins, and waits for lines it is told to expect."""

    def __init__(self, port: int, nick: str = "watcher", password: str = ""):
        self.nick = nick
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""
        self.seen: list[Message] = []
        self.unmatched: list[Message] = []
        if password:
            self.send(f"PASS {password}")
        self.send(f"NICK {nick}")
        self.send(f"USER {nick} 0 * :test watcher")
        self.wait_for(lambda m: m.command == "001")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")

    def join(self, *channels: str) -> None:
        for channel in channels:
            self.send(f"JOIN {channel}")
            self.wait_for(lambda m: m.command == "366" and m.params[1].lower() == channel.lower())

    def read(self, timeout: float) -> Optional[Message]:
        while b"\n" not in self.buffer:
            self.sock.settimeout(max(timeout, 0.01))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not data:
                raise ConnectionError("IRC server closed the connection")
            self.buffer += data
        raw, self.buffer = self.buffer.split(b"\n", 1)
        message = Message(raw.rstrip(b"\r").decode("utf-8", "replace"))
        if message.command == "PING":
            self.send("PONG :" + (message.params[-1] if message.params else ""))
        self.seen.append(message)
        return message

    def wait_for(self, match: Callable[[Message], bool], timeout: float = 15.0) -> Message:
        """The first line not yet matched by an earlier wait that matches, waiting for it up
        to ``timeout`` (so expectations can be checked in any order)."""
        for message in self.unmatched:
            if match(message):
                self.unmatched.remove(message)
                return message
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching line in {timeout}s; last seen: "
                                     f"{self.seen[-15:]}")
            message = self.read(left)
            if message is None:
                continue
            if match(message):
                return message
            self.unmatched.append(message)
            del self.unmatched[:-1000]

    def privmsg(self, target: str, text_part: str = "", timeout: float = 15.0,
                sender: str = "presenced") -> Message:
        """Wait for a PRIVMSG from ``sender`` to ``target`` containing ``text_part``."""
        return self.wait_for(lambda m: m.command == "PRIVMSG" and m.nick == sender
                             and m.params[0].lower() == target.lower()
                             and text_part in m.params[-1], timeout)

    def collect(self, seconds: float) -> list[Message]:
        """Every line not yet matched, and every line that arrives in the next ``seconds``."""
        got, self.unmatched = self.unmatched, []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            message = self.read(left)
            if message is not None:
                got.append(message)
        return got

    def close(self) -> None:
        try:
            self.send("QUIT :done")
        except OSError:
            pass
        self.sock.close()


def cat(port: int, data: bytes, read_answer: float = 0.0) -> bytes:
    """Send bytes to the cat port as ``nc -q0`` does; optionally read what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        deadline = time.monotonic() + read_answer
        while read_answer and time.monotonic() < deadline:
            s.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
        return answer

"""IRC cat bot: end-to-end cat lines/s, flood-limit accuracy, memory under garbage.

Starts a private ngircd and presenced (embedded store, only the IRC door) and a raw IRC client
in the default channel, then measures:

- ``ingest``: in process, cat lines/s through the cat protocol (line framing, UTF-8 check,
  irccat syntax, target expansion, splitting, queueing): the bot's own cost per line;
- ``end_to_end``: N cat lines sent on one connection with our flood limit out of the way, from
  the first byte sent to the last PRIVMSG the watcher receives. ngircd paces every client
  itself (its "penalty" throttling, as real networks do), so this is the server's figure;
- ``flood_limit``: lines sent with ``flood_lines_per_second = R`` after the burst, and the rate
  the watcher sees them arrive at;
- ``garbage``: the server's resident memory before and after M megabytes of random non-UTF-8
  bytes and M over-long lines on the cat port, and whether the bot still relays a line
  afterwards.

Prints JSON.

    python3 bench/irc_cat.py [--ingest 200000] [--lines 100] [--rate 5] [--garbage-mb 20]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.procs import rss_kb  # noqa: E402
from tests.conftest import PresencedProcess  # noqa: E402
from tests.ircd import IRCWatcher, NgIRCd, cat  # noqa: E402

CHANNEL = "#bench"


def start(directory: Path, ircd: NgIRCd, **irc: object) -> PresencedProcess:
    directory.mkdir(parents=True, exist_ok=True)
    settings = {"enabled": True, "port": ircd.port, "channels": [CHANNEL], **irc}
    server = PresencedProcess(directory, {
        "irc": settings, "xmpp": {"enabled": False}, "comet": {"enabled": False},
        "thrift": {"enabled": False}, "webadmin": {"enabled": False}})
    server.start()
    return server


def joined(watcher: IRCWatcher) -> None:
    watcher.wait_for(lambda m: m.command == "JOIN" and m.nick == "presenced", 30)


def ingest(directory: Path, lines: int) -> dict:
    from twisted.internet import task
    from twisted.internet.testing import StringTransport

    from presenced import config
    from presenced.core import Core
    from presenced.irc.bot import IRCBot
    from presenced.irc.cat import CatFactory

    settings = config.load(None, {"server": {"data_dir": str(directory)},
                                  "irc": {"channels": [CHANNEL, "#ops"],
                                          "queue_lines": 4 * lines}})
    core = Core(settings, store=None)  # type: ignore[arg-type]
    bot = IRCBot(core, settings.irc, clock=task.Clock())
    connection = CatFactory(bot, [], 16384).buildProtocol(None)
    connection.makeConnection(StringTransport())
    forms = [b"plain line number %d from a deploy script\n", b"#ops,#bench build %d passed\n",
             b"#* notice %d to every channel\n", b"@alice private note %d\n"]
    payload = b"".join(forms[i % 4] % i for i in range(lines))
    chunks = [payload[i:i + 65536] for i in range(0, len(payload), 65536)]
    started = time.perf_counter()
    for chunk in chunks:
        connection.dataReceived(chunk)
    elapsed = time.perf_counter() - started
    return {"lines": lines, "irc_messages_queued": len(bot.queue.lines),
            "seconds": round(elapsed, 3),
            "lines_per_second": round(lines / elapsed)}


def end_to_end(directory: Path, ircd: NgIRCd, lines: int) -> dict:
    watcher = IRCWatcher(ircd.port, "bench1")
    watcher.join(CHANNEL)
    server = start(directory, ircd, flood_lines_per_second=1e6, flood_burst=1000000,
                   queue_lines=lines + 10)
    try:
        joined(watcher)
        payload = b"".join(b"line %d of the throughput run\n" % i for i in range(lines))
        started = time.monotonic()
        cat(server.ports["irc_cat"], payload)
        last = f"line {lines - 1} of"
        watcher.wait_for(lambda m: m.command == "PRIVMSG" and last in m.params[-1], 600)
        elapsed = time.monotonic() - started
        received = sum(1 for m in watcher.seen if m.command == "PRIVMSG")
        return {"lines": lines, "received": received, "seconds": round(elapsed, 3),
                "lines_per_second": round(lines / elapsed, 1)}
    finally:
        watcher.close()
        server.stop()


def flood_limit(directory: Path, ircd: NgIRCd, rate: float) -> dict:
    watcher = IRCWatcher(ircd.port, "bench2")
    watcher.join(CHANNEL)
    burst, count = 5, 5 + int(rate * 6)
    server = start(directory, ircd, flood_lines_per_second=rate, flood_burst=burst)
    try:
        joined(watcher)
        cat(server.ports["irc_cat"], b"".join(b"paced %d\n" % i for i in range(count)))
        arrivals = []
        while len(arrivals) < count:
            watcher.wait_for(lambda m: m.command == "PRIVMSG" and "paced" in m.params[-1], 60)
            arrivals.append(time.monotonic())
        after_burst = arrivals[burst:]
        measured = (len(after_burst) - 1) / (after_burst[-1] - after_burst[0])
        return {"configured_lines_per_second": rate, "burst": burst, "lines": count,
                "measured_lines_per_second": round(measured, 2)}
    finally:
        watcher.close()
        server.stop()


def garbage(directory: Path, ircd: NgIRCd, megabytes: int) -> dict:
    watcher = IRCWatcher(ircd.port, "bench3")
    watcher.join(CHANNEL)
    server = start(directory, ircd)
    try:
        joined(watcher)
        pid = server.process.pid
        before = rss_kb(pid)
        # Lines of random bytes, each with a 0xFF (never valid in UTF-8): every one is refused
        # (nothing queued for IRC to hold up the check below) and answered with an error
        # this client never reads, which the server must not buffer without bound.
        chunk = b"".join(os.urandom(62).replace(b"\n", b"") + b"\xff\n"
                         for _ in range((1 << 20) // 64))
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.ports["irc_cat"])) as s:
            try:
                for _ in range(megabytes):
                    s.sendall(chunk)
            except OSError:
                pass  # closed on us after an over-long line: as documented
        for _ in range(megabytes):
            cat(server.ports["irc_cat"], b"x" * 100000 + b"\n")
        elapsed = time.monotonic() - started
        after = rss_kb(pid)
        cat(server.ports["irc_cat"], b"alive after garbage\n")
        watcher.wait_for(lambda m: m.command == "PRIVMSG" and "alive after" in m.params[-1], 30)
        return {"garbage_mb": megabytes * 2, "seconds": round(elapsed, 2),
                "rss_kib_before": before, "rss_kib_after": after, "bot_still_relays": True}
    finally:
        watcher.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest", type=int, default=200000)
    parser.add_argument("--lines", type=int, default=100)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--garbage-mb", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-irc-") as tmp:
        root = Path(tmp)
        ircd = NgIRCd(root / "ircd")
        ircd.start()
        try:
            result = {
                "ingest": ingest(root / "i", args.ingest),
                "end_to_end": end_to_end(root / "t", ircd, args.lines),
                "flood_limit": flood_limit(root / "f", ircd, args.rate),
                "garbage": garbage(root / "g", ircd, args.garbage_mb),
            }
        finally:
            ircd.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

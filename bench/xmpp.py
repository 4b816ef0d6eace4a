"""Benchmark of the XMPP c2s door; prints JSON.

Starts a private presenced (``twistd -n presenced``, XMPP only, embedded store) and drives it
with a minimal raw XMPP load client written on asyncio streams (in ``--procs`` processes):

1. ``login_plain``: N accounts log in with SASL PLAIN over plain TCP (bench-only config
   ``require_tls = false, allow_plain = true``), bind and send presence; logins/s.
2. ``idle_rss``: server RSS growth per idle, bound session (the N from step 1, no TLS),
   measured after the sessions have been idle long enough to hibernate (``hibernate_after``
   is 1 s in the bench config, 60 s by default).
3. ``messages``: the N sessions form pairs; every client sends ``--messages`` chat messages to
   its partner's bare JID as fast as it can; delivered messages/s and p50/p99
   send-to-receive latency (which, in a burst, is mostly queueing), the server's CPU per
   message until the last delivery and, ``..._settled``, until the server is idle again
   (work it finishes after delivering, such as archive writes: ``--archive-days``). Then a
   paced phase at ``--paced-rate`` messages/s in total gives the latency at a steady load.
4. ``login_scram_tls``: the same accounts log in again with STARTTLS + SCRAM-SHA-1; logins/s.
   Each client knows its salted password, as a real client keeps it after its first login:
   before the clock starts every client asks for its salt (a SCRAM exchange over plain TCP,
   aborted) and derives it, so the timed logins cost the load client no PBKDF2.
   ``login_plain_repeat``: then the same PLAIN logins once more (TCP): a server that keeps
   passwords it verified lately (presenced's ``[server] verified_password_cache``) skips
   PBKDF2 for them, so this figure and ``login_plain`` (every account's first login since
   the server started) are both given.
5. ``room``: ``--room-occupants`` of the accounts join one group chat room (XEP-0045) and
   ``--room-senders`` of them send ``--room-messages`` groupchat messages each as fast as
   they can; every occupant (the senders too) receives every message: occupant
   deliveries/s, p50/p99 send-to-receive latency over all deliveries, and the server's CPU
   per delivery. Then a paced round at ``--room-paced-rate`` messages/s gives the latency
   at a steady load.

The JSON gives the load processes' CPU time per login too (``client_cpu_ms_per_login_*``):
on a machine of few cores what the client spends is taken from the server, so a login rate
is only the server's when the client's share is small (its TLS handshakes are not).

The load client shares this machine's cores with the server (and, on a shared machine, with
whatever else runs: the JSON gives the load average and the server's CPU time per login and
per message, which other load does not distort). PBKDF2 cost per login follows
``--iterations`` (the accounts' ``[server] scram_iterations``; 4096 is the default).

``--transport websocket``: the same phases over XMPP over WebSocket (RFC 7395, the HTTP
door's ``/xmpp-websocket``) instead of TCP, but the SCRAM+TLS logins (TLS is the HTTP door's,
not the stream's); ``--transport bosh``: BOSH logins (``/http-bind``, one POST per request)
and the idle memory of sessions that each keep one request held, no message phases. Run
the three for the figures side by side.

``--sm``: the PLAIN clients enable stream management (XEP-0198, with resumption) before their
presence and answer the server's ``<r/>`` with ``<a/>``, so the message figures include the
cost of counting, queueing and acknowledging every stanza.

    python3 bench/xmpp.py --users 5000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import multiprocessing
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.procs import (cpu_seconds, own_cpu_seconds, percentile, rss_kb,  # noqa: E402
                         server_pids, start_presenced, start_redis)
from bench.webclients import BoshClient, websocket_login_plain  # noqa: E402

HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
FEATURES_END = b"</stream:features>"
PASSWORD = "bench-pw"
PACED_MESSAGES = 5
CARBONS_ENABLE = b"<iq type='set' id='c'><enable xmlns='urn:xmpp:carbons:2'/></iq>"
SM_ENABLE = b"<enable xmlns='urn:xmpp:sm:3' resume='true'/>"
SM_REQUEST = b"<r xmlns='urn:xmpp:sm:3'/>"
STANZA = re.compile(rb"<(?:message|presence|iq)[\s/>]")
# SASL success, with data (SCRAM) or without (PLAIN: Prosody and ejabberd send <success/>).
SUCCESS = re.compile(rb"<success[^>]*/>|</success>")


# --- the load client ------------------------------------------------------------------------

async def read_until(reader: asyncio.StreamReader, buffer: bytearray,
                     token: bytes | re.Pattern) -> bytes:
    """The buffered bytes up to and including ``token`` (bytes, or a pattern: the end of
    its first match), read on until it arrives."""
    while True:
        if isinstance(token, bytes):
            index = buffer.find(token)
            end = index + len(token) if index >= 0 else -1
        else:
            match = token.search(buffer)
            end = match.end() if match else -1
        if end >= 0:
            out = bytes(buffer[:end])
            del buffer[:end]
            return out
        data = await reader.read(65536)
        if not data:
            raise ConnectionError(f"closed waiting for {token!r}: {bytes(buffer[-300:])!r}")
        buffer += data


async def login_plain(port: int, user: str, sm: bool = False, carbons: bool = False):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    buffer = bytearray()
    writer.write(HEADER)
    await read_until(reader, buffer, FEATURES_END)
    # The authcid is the local part, as clients send it (Prosody accepts nothing else).
    token = base64.b64encode(f"\0{user.partition('@')[0]}\0{PASSWORD}".encode())
    writer.write(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>"
                 % token)
    await read_until(reader, buffer, SUCCESS)
    await bind(reader, writer, buffer, sm, carbons)
    return reader, writer, buffer


async def bind(reader, writer, buffer, sm: bool = False, carbons: bool = False) -> None:
    """Bind (and, with ``sm``, enable stream management: every stanza after the bind
    result is then counted; with ``carbons``, enable message carbons), then initial
    presence."""
    writer.write(HEADER + b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:"
                 b"xmpp-bind'><resource>b</resource></bind></iq>"
                 + (SM_ENABLE if sm else b"") + (CARBONS_ENABLE if carbons else b"")
                 + b"<presence/>")
    await read_until(reader, buffer, b"</iq>")
    if carbons:
        await read_until(reader, buffer, b"id='c'")


# Salted passwords by (password, salt, iterations), as a real client keeps its own after the
# first login (RFC 5802 5.1 lets it): the timed SCRAM logins then measure the servers, not
# the load client's PBKDF2. Filled before the clock starts by :func:`learn_salts`.
SALTED: dict[tuple[str, str, str], bytes] = {}


def salted_password(password: str, salt: str, iterations: str) -> bytes:
    """The client's SaltedPassword (PBKDF2-SHA-1), from :data:`SALTED` when known."""
    key = (password, salt, iterations)
    salted = SALTED.get(key)
    if salted is None:
        salted = SALTED[key] = hashlib.pbkdf2_hmac("sha1", password.encode(),
                                                   base64.b64decode(salt), int(iterations))
    return salted


def scram_client(user: str, password: str):
    """Minimal SCRAM-SHA-1 client: returns (first message, final-message function)."""
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n={user},r={nonce}"

    def final(server_first: str) -> tuple[bytes, bytes]:
        fields = dict(part.split("=", 1) for part in server_first.split(","))
        salted = salted_password(password, fields["s"], fields["i"])
        client_key = hmac.new(salted, b"Client Key", "sha1").digest()
        stored = hashlib.sha1(client_key).digest()
        without_proof = f"c=biws,r={fields['r']}"
        auth = f"{first_bare},{server_first},{without_proof}".encode()
        signature = hmac.new(stored, auth, "sha1").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        server_key = hmac.new(salted, b"Server Key", "sha1").digest()
        expected = base64.b64encode(hmac.new(server_key, auth, "sha1").digest())
        return (f"{without_proof},p={base64.b64encode(proof).decode()}".encode(), expected)

    return f"n,,{first_bare}".encode(), final


async def scram_first(reader, writer, buffer: bytearray, user: str):
    """Send SCRAM-SHA-1's first message; returns the server's first and the final-message
    function."""
    first, final = scram_client(user.partition("@")[0], PASSWORD)
    writer.write(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-1'>%s"
                 b"</auth>" % base64.b64encode(first))
    challenge = await read_until(reader, buffer, b"</challenge>")
    server_first = base64.b64decode(re.search(rb">([^<]*)</challenge>", challenge).group(1))
    return server_first.decode(), final


async def learn_salt(port: int, user: str) -> None:
    """One SCRAM exchange up to the server's salt (plain TCP), then abort: the salted
    password is computed and kept (:data:`SALTED`), as a client that logged in before has
    it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    buffer = bytearray()
    writer.write(HEADER)
    await read_until(reader, buffer, FEATURES_END)
    server_first, _ = await scram_first(reader, writer, buffer, user)
    fields = dict(part.split("=", 1) for part in server_first.split(","))
    salted_password(PASSWORD, fields["s"], fields["i"])
    writer.write(b"<abort xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/></stream:stream>")
    writer.close()


async def learn_salts(port: int, users: list[str], concurrency: int) -> None:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(user: str) -> None:
        async with semaphore:
            await learn_salt(port, user)

    await asyncio.gather(*(one(u) for u in users))


async def login_scram_tls(port: int, user: str, context: ssl.SSLContext):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    buffer = bytearray()
    writer.write(HEADER)
    await read_until(reader, buffer, FEATURES_END)
    writer.write(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
    await read_until(reader, buffer, b"/>")
    await writer.start_tls(context, server_hostname="localhost")
    writer.write(HEADER)
    await read_until(reader, buffer, FEATURES_END)
    server_first, final = await scram_first(reader, writer, buffer, user)
    message, expected = final(server_first)
    writer.write(b"<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>%s</response>"
                 % base64.b64encode(message))
    success = await read_until(reader, buffer, b"</success>")
    if base64.b64encode(b"v=" + expected) not in success:
        raise PermissionError("bad server signature")
    await bind(reader, writer, buffer)
    return reader, writer, buffer


async def run_logins(port: int, users: list[str], concurrency: int, tls: bool,
                     sm: bool = False, transport: str = "tcp", carbons: bool = False):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    semaphore = asyncio.Semaphore(concurrency)
    connections = []

    async def one(user: str):
        async with semaphore:
            if transport == "websocket":
                connections.append(await websocket_login_plain(port, user, PASSWORD))
            elif transport == "bosh":
                client = BoshClient(port)
                await client.login_plain(user, PASSWORD)
                client.hold()
                connections.append(client)
            elif tls:
                connections.append(await login_scram_tls(port, user, context))
            else:
                connections.append(await login_plain(port, user, sm, carbons))

    started = time.perf_counter()
    await asyncio.gather(*(one(u) for u in users))
    return time.perf_counter() - started, connections


class Deliveries:
    """The latencies of timestamped messages (``<body>`` = the send time) as the load
    connections receive them, until ``expected`` have arrived."""

    STAMP = re.compile(rb"<body>(\d+\.\d+)</body>")

    def __init__(self, expected: int):
        self.expected = expected
        self.latencies: list[float] = []
        self.last = 0.0
        self.done = asyncio.get_running_loop().create_future()

    async def receive(self, reader, buffer: bytearray, on_chunk=None) -> None:
        """Read one connection; ``on_chunk(bytes)`` sees each run of whole messages."""
        while not self.done.done():
            data = await reader.read(262144)
            if not data:
                return
            buffer += data
            end = buffer.rfind(b"</message>")
            if end < 0:
                continue
            now = time.time()
            for match in self.STAMP.finditer(buffer, 0, end):
                self.latencies.append(now - float(match.group(1)))
            if on_chunk is not None:
                on_chunk(bytes(buffer[:end + 10]))
            del buffer[:end + 10]
            self.last = now
            if len(self.latencies) >= self.expected and not self.done.done():
                self.done.set_result(True)

    async def wait(self, receivers: list) -> None:
        """Until every expected message arrived (120 s at most), then stop reading."""
        try:
            await asyncio.wait_for(self.done, 120)
        except asyncio.TimeoutError:
            pass
        for task in receivers:
            task.cancel()


async def pump_messages(connections, users: list[str], count: int, barrier_at: float,
                        interval: float = 0.0, handled: dict | None = None):
    """Each connection i sends ``count`` messages to its partner (i ^ 1), in bursts of ten
    (``interval`` 0) or one every ``interval`` seconds; returns latencies of received
    messages and the time the last one arrived. With ``handled`` (stream management: the
    stanzas each writer's connection received so far) requests for acks are answered."""
    deliveries = Deliveries(count * len(connections))

    def acked(writer):
        """Count the stanzas of a chunk and answer the ack requests in it (SM)."""
        def on_chunk(chunk: bytes) -> None:
            handled[writer] += len(STANZA.findall(chunk))
            if SM_REQUEST in chunk:
                writer.write(b"<a xmlns='urn:xmpp:sm:3' h='%d'/>" % handled[writer])
        return on_chunk

    async def send(index: int, writer):
        partner = users[index ^ 1]
        await asyncio.sleep(max(0.0, barrier_at - time.time()))
        if interval:
            await asyncio.sleep(interval * index / len(connections))  # spread the senders
            for _ in range(count):
                writer.write(b"<message to='%s' type='chat'><body>%.6f</body></message>"
                             % (partner.encode(), time.time()))
                await asyncio.sleep(interval)
            return
        for batch in range(0, count, 10):
            parts = [b"<message to='%s' type='chat'><body>%.6f</body></message>"
                     % (partner.encode(), time.time()) for _ in range(min(10, count - batch))]
            writer.write(b"".join(parts))
            await writer.drain()
            await asyncio.sleep(0)

    receivers = [asyncio.ensure_future(deliveries.receive(
        r, b, None if handled is None else acked(w))) for r, w, b in connections]
    await asyncio.gather(*(send(i, w) for i, (_, w, _) in enumerate(connections)))
    await deliveries.wait(receivers)
    return deliveries.latencies, deliveries.last


def worker(port: int, users: list[str], concurrency: int, messages: int, interval: float,
           sm: bool, transport: str, carbons: bool, pipe) -> None:
    """One load process: PLAIN logins, wait, message burst, paced messages, close,
    SCRAM+TLS logins, PLAIN logins again (TCP only; BOSH: logins and idle sessions only)."""

    async def main():
        cpu = time.process_time()
        elapsed, connections = await run_logins(port, users, concurrency, tls=False, sm=sm,
                                                transport=transport, carbons=carbons)
        pipe.send(("plain", elapsed, time.process_time() - cpu))
        if transport == "bosh":
            for phase in ("messages", "paced"):
                pipe.recv()
                pipe.send((phase, [], 0.0))
            pipe.send(("ready",))
            pipe.recv()
            for client in connections:
                client.held.cancel()
            pipe.send(("scram", None, 0.0))
            return
        handled = {writer: 0 for _, writer, _ in connections} if sm else None
        barrier_at = pipe.recv()
        latencies, last = await pump_messages(connections, users, messages, barrier_at,
                                              handled=handled)
        pipe.send(("messages", latencies, last))
        barrier_at = pipe.recv()
        latencies, last = await pump_messages(connections, users, PACED_MESSAGES, barrier_at,
                                              interval, handled)
        pipe.send(("paced", latencies, last))
        for _, writer, _ in connections:
            writer.write(b"</stream:stream>")
            writer.close()
        if transport == "tcp":
            await learn_salts(port, users, concurrency)
        pipe.send(("ready",))
        pipe.recv()
        if transport != "tcp":
            pipe.send(("scram", None, 0.0))
            return
        cpu = time.process_time()
        elapsed, connections = await run_logins(port, users, concurrency, tls=True)
        pipe.send(("scram", elapsed, time.process_time() - cpu))
        for _, writer, _ in connections:
            writer.close()
        pipe.recv()
        cpu = time.process_time()
        elapsed, connections = await run_logins(port, users, concurrency, tls=False)
        pipe.send(("plain-repeat", elapsed, time.process_time() - cpu))
        for _, writer, _ in connections:
            writer.close()

    asyncio.run(main())


ROOM = b"bench@conference.localhost"


async def room_phase(port: int, users: list[str], senders: int, messages: int,
                     paced_rate: float) -> dict:
    """One room, ``users`` in it; returns the ``room_*`` figures (see the module doc)."""
    connections = []
    for index, user in enumerate(users):
        reader, writer, buffer = await login_plain(port, user)
        writer.write(b"<presence to='%s/o%d'><x xmlns='http://jabber.org/protocol/muc'>"
                     b"<history maxstanzas='0'/></x></presence>" % (ROOM, index))
        await read_until(reader, buffer, b"</subject>")  # joined: the subject comes last
        connections.append((reader, writer, buffer))
    for _, _, buffer in connections:
        del buffer[:]  # presence of later joiners
    burst, elapsed = await room_round(connections, senders, messages, 0.0)
    paced, _ = await room_round(connections, senders, PACED_MESSAGES, senders / paced_rate)
    for _, writer, _ in connections:
        writer.close()
    return {
        "room_occupants": len(connections),
        "room_messages_sent": senders * messages,
        "room_deliveries": len(burst),
        "room_deliveries_per_s": round(len(burst) / elapsed, 1) if elapsed > 0 else None,
        "room_latency_p50_ms": round(1000 * percentile(burst, 0.5), 2) if burst else None,
        "room_latency_p99_ms": round(1000 * percentile(burst, 0.99), 2) if burst else None,
        "room_paced_messages_per_s": paced_rate,
        "room_paced_deliveries": len(paced),
        "room_paced_latency_p50_ms": round(1000 * percentile(paced, 0.5), 2)
        if paced else None,
        "room_paced_latency_p99_ms": round(1000 * percentile(paced, 0.99), 2)
        if paced else None,
    }


async def room_round(connections, senders: int, messages: int, interval: float
                     ) -> tuple[list[float], float]:
    """The first ``senders`` send ``messages`` each, in bursts of ten (``interval`` 0) or
    one every ``interval`` seconds; every occupant's deliveries' latencies, sorted, and the
    time from the first send to the last delivery."""
    deliveries = Deliveries(senders * messages * len(connections))

    async def send(index: int, writer):
        message = b"<message to='%s' type='groupchat'><body>%.6f</body></message>"
        if interval:
            await asyncio.sleep(interval * index / senders)  # spread the senders
            for _ in range(messages):
                writer.write(message % (ROOM, time.time()))
                await asyncio.sleep(interval)
            return
        for batch in range(0, messages, 10):
            writer.write(b"".join(message % (ROOM, time.time())
                                  for _ in range(min(10, messages - batch))))
            await writer.drain()
            await asyncio.sleep(0)

    receivers = [asyncio.ensure_future(deliveries.receive(r, b)) for r, _, b in connections]
    started = time.time()
    await asyncio.gather(*(send(i, w) for i, (_, w, _) in enumerate(connections[:senders])))
    await deliveries.wait(receivers)
    deliveries.latencies.sort()
    return deliveries.latencies, deliveries.last - started


# --- the server -----------------------------------------------------------------------------

def settle(pid: int, timeout: float = 60.0) -> float:
    """Wait until the server is idle (under 5 % of a core for half a second, or
    ``timeout``); its CPU seconds then."""
    cpu, deadline = cpu_seconds(pid), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - cpu < 0.025:
            return now
        cpu = now
    return cpu


def start_server(directory: Path, iterations: int, workers: int = 1, redis_port: int = 0,
                 checkout: Path = REPO, transport: str = "tcp", archive_days: int = 0,
                 store: str = "embedded") -> tuple[subprocess.Popen, int, Path]:
    """A private presenced from ``checkout`` with the bench config (keys that checkout's
    ``config/presenced.toml`` does not document are left out: older revisions refuse them).
    Fires the process, the port the load clients use (XMPP, or the HTTP door for the web
    transports) and the config file."""
    known = (checkout / "config" / "presenced.toml").read_text()
    # Every load client connects from 127.0.0.1: the per-address cap would refuse them.
    per_ip = ("max_connections_per_ip = 1000000\n" if "max_connections_per_ip" in known
              else "")
    archive = f"archive_days = {archive_days}\n" if archive_days else ""
    config = directory / "presenced.toml"
    sections = ""
    if workers > 1:
        sections = f"""workers = {workers}
[cluster]
enabled = true
"""
    if workers > 1 or store == "redis":
        sections += f"""[store]
backend = "redis"
redis = ["redis://127.0.0.1:{redis_port}/0"]
"""
    config.write_text(f"""
[server]
data_dir = "{directory / 'data'}"
scram_iterations = {iterations}
{sections}[xmpp]
port = 0
require_tls = false
allow_plain = true
hibernate_after = 1.0
{archive}{per_ip}[comet]
enabled = {"false" if transport == "tcp" else "true"}
{per_ip}[thrift]
enabled = false
[webadmin]
enabled = false
[irc]
enabled = false
""")
    process, ports = start_presenced(directory, config, checkout=checkout)
    return process, ports["xmpp" if transport == "tcp" else "comet"], config


@dataclass(frozen=True)
class LoadPlan:
    """What the load processes do (bench/xmpp.py's options; bench/peers.py drives every
    server with the same plan)."""

    procs: int = 2
    concurrency: int = 200
    messages: int = 20
    paced_rate: float = 5000.0
    sm: bool = False
    transport: str = "tcp"
    carbons: bool = False
    profile: str = ""  # record each server process with py-spy during one phase:
    profile_phase: str = "messages"  # the message burst, "plain" or "scram" logins


@dataclass(frozen=True)
class RoomPlan:
    """The group chat phase: one room, ``occupants`` of the bench users, ``senders`` of them
    sending ``messages`` each, then a paced round (0 occupants: no room phase)."""

    occupants: int = 100
    senders: int = 10
    messages: int = 100
    paced_rate: float = 100.0


def start_spies(pid: int, plan: LoadPlan, phase: str) -> list[subprocess.Popen]:
    """py-spy recorders on every server process when ``phase`` is the one profiled."""
    if not plan.profile or plan.profile_phase != phase:
        return []
    return [subprocess.Popen(["py-spy", "record", "-r", "400", "-p", str(p), "-f", "raw", "-o",
                              f"{plan.profile}.{i}.raw"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
            for i, p in enumerate(server_pids(pid))]


def stop_spies(spies: list[subprocess.Popen]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it recorded and exits
        spy.wait(60)


def drive(pid: int, port: int, users: list[str], plan: LoadPlan, redis_pid: int = 0) -> dict:
    """Run the load processes against the server listening on ``port`` (process ``pid``,
    whose CPU and memory are measured with its children): PLAIN logins, the idle memory
    per session, a message burst, paced messages, STARTTLS + SCRAM logins (TCP only; BOSH:
    logins and idle sessions only). The accounts of ``users`` exist with password PASSWORD.
    ``redis_pid``: the workers' Redis, whose CPU in the burst is reported too. Returns the
    figures."""
    rss_before = rss_kb(pid)
    # Pairs stay within one process: split on even boundaries.
    per = (len(users) // plan.procs) & ~1
    shares = [users[i * per:(i + 1) * per] for i in range(plan.procs - 1)]
    shares.append(users[(plan.procs - 1) * per:])
    pipes, procs = [], []
    for share in shares:
        ours, theirs = multiprocessing.Pipe()
        proc = multiprocessing.Process(target=worker, args=(
            port, share, plan.concurrency, plan.messages, len(users) / plan.paced_rate,
            plan.sm, plan.transport, plan.carbons, theirs))
        proc.start()
        pipes.append(ours)
        procs.append(proc)
    try:
        spies = start_spies(pid, plan, "plain")
        started, cpu = time.perf_counter(), cpu_seconds(pid)
        client_cpu = {"plain": sum(pipe.recv()[2] for pipe in pipes)}
        plain_elapsed = time.perf_counter() - started
        stop_spies(spies)
        plain_cpu = cpu_seconds(pid) - cpu
        time.sleep(3.5)  # idle: past two hibernation sweeps
        rss_idle = rss_kb(pid)
        barrier = time.time() + 0.5
        spies = start_spies(pid, plan, "messages")
        cpu = cpu_seconds(pid)
        workers_cpu = [own_cpu_seconds(p) for p in server_pids(pid)]
        redis_cpu = cpu_seconds(redis_pid) if redis_pid else 0.0
        for pipe in pipes:
            pipe.send(barrier)
        latencies: list[float] = []
        last = 0.0
        for pipe in pipes:
            _, received, finished = pipe.recv()
            latencies.extend(received)
            last = max(last, finished)
        stop_spies(spies)
        message_elapsed = last - barrier
        message_cpu = cpu_seconds(pid) - cpu
        workers_cpu = [own_cpu_seconds(p) - before
                       for p, before in zip(server_pids(pid), workers_cpu)]
        redis_cpu = cpu_seconds(redis_pid) - redis_cpu if redis_pid else 0.0
        settled_cpu = settle(pid) - cpu
        time.sleep(1.0)
        barrier = time.time() + 0.5
        for pipe in pipes:
            pipe.send(barrier)
        paced: list[float] = []
        for pipe in pipes:
            paced.extend(pipe.recv()[1])
        paced.sort()
        for pipe in pipes:
            pipe.recv()  # the SCRAM clients know their salted passwords
        time.sleep(1.0)
        spies = start_spies(pid, plan, "scram")
        started, cpu = time.perf_counter(), cpu_seconds(pid)
        for pipe in pipes:
            pipe.send("go")
        scram_done = [pipe.recv()[1:] for pipe in pipes]
        stop_spies(spies)
        client_cpu["scram"] = sum(done[1] for done in scram_done if done[0])
        scram_done = [done[0] for done in scram_done]
        scram_elapsed = (time.perf_counter() - started) if None not in scram_done else None
        scram_cpu = cpu_seconds(pid) - cpu
        repeat_elapsed = repeat_cpu = None
        if scram_elapsed:  # TCP: the same PLAIN logins again
            time.sleep(1.0)
            started, cpu = time.perf_counter(), cpu_seconds(pid)
            for pipe in pipes:
                pipe.send("go")
            client_cpu["repeat"] = sum(pipe.recv()[2] for pipe in pipes)
            repeat_elapsed = time.perf_counter() - started
            repeat_cpu = cpu_seconds(pid) - cpu
    finally:
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.terminate()
    latencies.sort()
    return {
        "users": len(users),
        "transport": plan.transport,
        "stream_management": plan.sm,
        "carbons": plan.carbons,
        "load_processes": plan.procs,
        "login_plain_per_s": round(len(users) / plain_elapsed, 1),
        "login_starttls_scram_per_s": round(len(users) / scram_elapsed, 1)
        if scram_elapsed else None,
        "login_plain_repeat_per_s": round(len(users) / repeat_elapsed, 1)
        if repeat_elapsed else None,
        "server_cpu_ms_per_login_plain": round(1000 * plain_cpu / len(users), 3),
        # The load processes' CPU per login, to see that the client is not what limits.
        "client_cpu_ms_per_login_plain": round(1000 * client_cpu["plain"] / len(users), 3),
        "client_cpu_ms_per_login_starttls_scram": round(
            1000 * client_cpu["scram"] / len(users), 3) if scram_elapsed else None,
        "client_cpu_ms_per_login_plain_repeat": round(
            1000 * client_cpu["repeat"] / len(users), 3) if repeat_elapsed else None,
        "server_cpu_ms_per_login_plain_repeat": round(1000 * repeat_cpu / len(users), 3)
        if repeat_elapsed else None,
        "server_cpu_ms_per_login_starttls_scram": round(1000 * scram_cpu / len(users), 3)
        if scram_elapsed else None,
        "idle_rss_kb_per_session": round((rss_idle - rss_before) / len(users), 2),
        "server_rss_mb_with_sessions": round(rss_idle / 1024, 1),
        "messages_sent": 0 if plan.transport == "bosh" else len(users) * plan.messages,
        "messages_delivered": len(latencies),
        "messages_per_s": round(len(latencies) / message_elapsed, 1)
        if message_elapsed > 0 else None,
        "server_cpu_us_per_message": round(1e6 * message_cpu / max(1, len(latencies)), 1),
        # Each worker's part of that CPU (SO_REUSEPORT spreads the clients), and Redis's.
        "worker_cpu_share": [round(c / max(message_cpu, 1e-9), 2) for c in workers_cpu],
        "redis_cpu_us_per_message": round(1e6 * redis_cpu / max(1, len(latencies)), 1)
        if redis_pid else None,
        "server_cpu_us_per_message_settled": round(
            1e6 * settled_cpu / max(1, len(latencies)), 1),
        "latency_p50_ms": round(1000 * percentile(latencies, 0.5), 2) if latencies else None,
        "latency_p99_ms": round(1000 * percentile(latencies, 0.99), 2) if latencies else None,
        "paced_rate_per_s": plan.paced_rate,
        "paced_delivered": len(paced),
        "paced_latency_p50_ms": round(1000 * percentile(paced, 0.5), 2) if paced else None,
        "paced_latency_p99_ms": round(1000 * percentile(paced, 0.99), 2) if paced else None,
    }


def drive_room(pid: int, port: int, users: list[str], plan: RoomPlan) -> dict:
    """The group chat phase's figures (empty without occupants)."""
    if not plan.occupants:
        return {}
    time.sleep(1.0)
    cpu = cpu_seconds(pid)
    room = asyncio.run(room_phase(port, users[:plan.occupants],
                                  min(plan.senders, plan.occupants), plan.messages,
                                  plan.paced_rate))
    room["server_cpu_us_per_room_delivery"] = round(
        1e6 * (cpu_seconds(pid) - cpu)
        / max(1, room["room_deliveries"] + room["room_paced_deliveries"]), 2)
    return room


def import_users(config: Path, users: list[str], directory: Path,
                 checkout: Path = REPO) -> None:
    """Create the bench accounts with ``presencedctl import-users`` (of ``checkout``)."""
    lines = "".join(f"{u} {PASSWORD}\n" for u in users)
    subprocess.run([sys.executable, "-m", "presenced.ctl", "--config", str(config),
                    "import-users", "-", "--quiet"], input=lines.encode(), check=True,
                   env=dict(os.environ, PYTHONPATH=str(checkout)), cwd=directory,
                   stdout=subprocess.DEVNULL)


def run_checkout(checkout: Path, users: list[str], plan: LoadPlan, room: RoomPlan,
                 iterations: int, workers: int, archive_days: int = 0,
                 store: str = "embedded") -> dict:
    """The whole bench against a private server from ``checkout``."""
    with tempfile.TemporaryDirectory(prefix="presenced-bench-xmpp-") as tmp:
        directory = Path(tmp)
        redis, redis_port = (start_redis(directory) if workers > 1 or store == "redis"
                             else (None, 0))
        server, port, config = start_server(directory, iterations, workers, redis_port,
                                            checkout, plan.transport, archive_days, store)
        try:
            started = time.perf_counter()
            import_users(config, users, directory, checkout)
            imported = len(users) / (time.perf_counter() - started)
            commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short",
                                     "HEAD"], capture_output=True, text=True).stdout.strip()
            figures = drive(server.pid, port, users, plan, redis.pid if redis else 0)
            if plan.transport == "tcp":
                figures.update(drive_room(server.pid, port, users, room))
            return {"checkout": str(checkout), "commit": commit, "workers": workers,
                    "scram_iterations": iterations, "archive_days": archive_days,
                    "store": "redis" if workers > 1 else store,
                    "import_users_per_s": round(imported, 1), **figures,
                    "load_average_1min": round(os.getloadavg()[0], 2)}
        finally:
            server.terminate()
            server.wait(30)
            if redis is not None:
                redis.terminate()
                redis.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--iterations", type=int, default=4096,
                        help="[server] scram_iterations of the bench accounts")
    parser.add_argument("--messages", type=int, default=20, help="messages per client")
    parser.add_argument("--concurrency", type=int, default=200,
                        help="logins in flight per load process")
    parser.add_argument("--procs", type=int, default=2, help="load client processes")
    parser.add_argument("--paced-rate", type=float, default=5000.0,
                        help="messages/s of the paced phase (latency at a steady load)")
    parser.add_argument("--workers", type=int, default=1,
                        help="server worker processes (above 1: a cluster over a private Redis)")
    parser.add_argument("--store", choices=("embedded", "redis"), default="embedded",
                        help="the server's store (a private Redis; always with --workers "
                             "above 1)")
    parser.add_argument("--transport", choices=("tcp", "websocket", "bosh"), default="tcp",
                        help="how the load clients connect (module docstring)")
    parser.add_argument("--sm", action="store_true",
                        help="clients enable stream management (XEP-0198) and answer acks")
    parser.add_argument("--carbons", action="store_true",
                        help="TCP clients enable message carbons (XEP-0280)")
    parser.add_argument("--archive-days", type=int, default=0,
                        help="[xmpp] archive_days of the server: above 0 every chat is "
                             "archived for both parties (XEP-0313)")
    parser.add_argument("--room-occupants", type=int, default=100,
                        help="occupants of the group chat room phase (0: no room phase)")
    parser.add_argument("--room-senders", type=int, default=10)
    parser.add_argument("--room-messages", type=int, default=100,
                        help="groupchat messages per sender")
    parser.add_argument("--room-paced-rate", type=float, default=100.0,
                        help="groupchat messages/s of the room's paced round (latency at a "
                             "steady load: each is delivered to every occupant)")
    parser.add_argument("--checkouts", default="",
                        help="comma-separated presenced checkouts (git worktrees) to measure "
                             "one after the other with this load client: before/after in one "
                             "run; prints a list of results")
    parser.add_argument("--profile", metavar="PREFIX", default="",
                        help="record each server process with py-spy during one phase "
                             "(raw stacks in PREFIX.<n>.raw, n = 0 for the first)")
    parser.add_argument("--profile-phase", choices=("messages", "plain", "scram"),
                        default="messages",
                        help="the phase --profile records: the message burst, the first "
                             "PLAIN logins or the STARTTLS + SCRAM logins")
    args = parser.parse_args()
    users = [f"bench{i}@localhost" for i in range(args.users - args.users % 2)]
    plan = LoadPlan(args.procs, args.concurrency, args.messages, args.paced_rate, args.sm,
                    args.transport, args.carbons, args.profile, args.profile_phase)
    room = RoomPlan(args.room_occupants, args.room_senders, args.room_messages,
                    args.room_paced_rate)
    checkouts = [Path(c).resolve() for c in args.checkouts.split(",") if c] or [REPO]
    results = [run_checkout(c, users, plan, room, args.iterations, args.workers,
                            args.archive_days, args.store) for c in checkouts]
    print(json.dumps(results if args.checkouts else results[0], indent=2))

if __name__ == "__main__":
    main()

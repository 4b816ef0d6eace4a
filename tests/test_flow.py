"""Read pacing pieces in memory: the token bucket, the read gate, the write budget's hold."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, endpoints, task

from presenced.flow import ReadBatch, ReadGate, TokenBucket, TurnBatch, WriteBudget
from presenced import flow


class FakeTransport:
    def __init__(self):
        self.reading = True
        self.producer = None
        self.written = b""

    def pauseProducing(self):
        self.reading = False

    def resumeProducing(self):
        self.reading = True

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def write(self, data):
        self.written += data
        self.writes = getattr(self, "writes", 0) + 1

    def abortConnection(self):
        self.aborted = True


def test_bucket_allows_the_burst_then_the_rate():
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=100, clock=lambda: now[0])
    assert bucket.take(100) == 0
    assert bucket.take(20) == -20
    assert bucket.wait() == 2.0
    now[0] = 2.0
    assert bucket.take(0) == 0
    now[0] = 1000.0
    assert bucket.take(0) == 100  # never more than the burst


def test_gate_reads_again_only_when_every_hold_is_released():
    clock = task.Clock()
    transport = FakeTransport()
    gate = ReadGate(transport, clock)
    gate.hold("work")
    gate.hold_for("bytes", 1.5)
    assert not transport.reading
    clock.advance(2)
    assert not transport.reading  # still held for work
    gate.release("work")
    assert transport.reading
    gate.hold_for("bytes", 1.0)
    gate.close()
    clock.advance(2)
    assert not clock.getDelayedCalls()


def test_write_budget_holds_the_gate_while_the_peer_does_not_read():
    transport = FakeTransport()
    gate = ReadGate(transport, task.Clock())
    budget = WriteBudget(transport, 100, gate)
    budget.pauseProducing()  # the kernel buffer is full
    assert not transport.reading
    budget.resumeProducing()
    assert transport.reading


class FakeStream:
    def __init__(self):
        self.transport = FakeTransport()
        self.errors = []

    def stream_error(self, condition, text=None):
        self.errors.append(condition)


def _shaper(clock, burst=10, rate=1.0):
    from presenced.xmpp.shaping import FloodLimits, StreamShaper

    stream = FakeStream()
    limits = FloodLimits(read_rate=1e9, read_burst=10**9, stanza_rate=rate,
                         stanza_burst=burst, max_pending=100, stanza_timeout=10)
    return stream, StreamShaper(stream, limits, clock)


def test_shaper_passes_the_burst_then_holds_reading_then_closes_past_twice_the_burst():
    clock = task.Clock()
    stream, shaper = _shaper(clock)
    assert all(shaper.stanza() for _ in range(10))  # the burst, in one read
    assert stream.transport.reading
    assert shaper.stanza()  # one over: reading stops until the debt is paid
    assert not stream.transport.reading
    shaper.read(100, partial=False)  # settling in debt grants no allowance
    assert all(shaper.stanza() for _ in range(9))
    assert not shaper.stanza()  # 11 over the rate: closed
    assert stream.errors == ["policy-violation"]


def test_shaper_allowance_grows_with_time_between_reads():
    clock = task.Clock()
    stream, shaper = _shaper(clock)
    for _ in range(10):
        shaper.stanza()
    shaper.read(100, partial=False)
    clock.advance(5)  # 5 tokens back
    shaper.read(100, partial=False)
    assert all(shaper.stanza() for _ in range(5))
    assert stream.transport.reading
    shaper.stanza()
    assert not stream.transport.reading
    clock.advance(1)
    assert stream.transport.reading


@pytest_twisted.ensureDeferred
async def test_direct_writes_reach_a_real_socket_in_order_past_a_full_kernel_buffer():
    """A SocketWriter sends at once while nothing is queued and hands the rest (a kernel
    buffer filled by a write larger than it) to Twisted; bytes arrive whole and in order."""
    from twisted.internet import protocol, reactor

    budgets: list[WriteBudget] = []

    class Writer(protocol.Protocol):
        def connectionMade(self):
            budgets.append(WriteBudget(self.transport, 64 * 1024 * 1024, direct=True))

    received = bytearray()
    done: defer.Deferred = defer.Deferred()
    big = bytes(range(256)) * (16 * 1024)  # 4 MB: more than the kernel takes at once

    class Reader(protocol.Protocol):
        def dataReceived(self, data):
            received.extend(data)
            if len(received) >= len(big) + 5 and not done.called:
                done.callback(None)

    factory = protocol.Factory.forProtocol(Writer)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = await endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
        protocol.Factory.forProtocol(Reader))
    try:
        while not budgets:
            await task.deferLater(reactor, 0.01, lambda: None)
        budget = budgets[0]
        assert budget._write.tcp is not None  # plain TCP: the direct path is in use
        budget.write(b"hello")
        assert budget._write.tcp.dataBuffer == b"" and not budget._write.tcp._tempDataBuffer
        budget.write(big)      # the kernel takes part; Twisted queues the rest
        budget.write(b"world")  # queued behind it, not sent ahead of it
        await done
        assert bytes(received) == b"hello" + big + b"world"
    finally:
        client.transport.loseConnection()
        await port.stopListening()


def test_a_turns_fan_outs_reach_each_connection_in_one_write_in_order():
    clock = task.Clock()
    batch = TurnBatch(clock)
    transports = [FakeTransport() for _ in range(3)]
    budgets = [WriteBudget(t, 10**6) for t in transports]
    first, second = object(), object()
    for event, frame in ((first, b"1;"), (second, b"2;")):  # two events of one turn
        for budget in budgets:
            batch.write(budget, frame, event)
    # The first connection each event reaches is written at once, the others wait.
    assert [t.written for t in transports] == [b"1;2;", b"", b""]
    batch.write_now(budgets[2], b"heartbeat;")   # goes out after what waits for it
    assert transports[2].written == b"1;2;heartbeat;" and transports[2].writes == 1
    clock.advance(0)
    assert [t.written for t in transports] == [b"1;2;", b"1;2;", b"1;2;heartbeat;"]
    assert [t.writes for t in transports] == [2, 1, 1]
    clock.advance(0)
    assert [t.writes for t in transports] == [2, 1, 1]   # nothing left to write


def test_a_reads_writes_go_out_once_per_connection_in_order_even_past_a_failing_one(
        monkeypatch):
    """flow.ReadBatch: during a read, coalescing budgets queue; at its end each connection
    gets one write, in order, and one whose write fails leaves the others' bytes going out
    (and takes writes again afterwards)."""
    monkeypatch.setattr(flow, "READS", ReadBatch())
    failing, fine, direct = FakeTransport(), FakeTransport(), FakeTransport()
    broken = [True]

    def write(data):
        if broken[0]:
            raise RuntimeError("transport gone wrong")
        FakeTransport.write(failing, data)
    failing.write = write
    budgets = [WriteBudget(t, 1000, coalesce=c)
               for t, c in ((failing, True), (fine, True), (direct, False))]
    flow.READS.open()
    for n in range(3):
        for budget in budgets:
            budget.write(b"<m%d/>" % n)
    assert fine.written == b"" and direct.writes == 3  # not coalescing: at once
    flow.READS.close()
    assert fine.written == b"<m0/><m1/><m2/>" and fine.writes == 1
    broken[0] = False
    flow.READS.open()
    budgets[0].write(b"<later/>")
    flow.READS.close()
    assert failing.written == b"<later/>"


def test_a_connection_written_at_once_mid_turn_gets_what_follows_in_one_later_write():
    clock = task.Clock()
    batch = TurnBatch(clock)
    lead, other = FakeTransport(), FakeTransport()
    first, second = WriteBudget(lead, 10**6), WriteBudget(other, 10**6)
    one, two = object(), object()
    batch.write(first, b"1;", one)
    batch.write(second, b"1;", one)          # waits for the end of the turn
    batch.write_now(second, b"heartbeat;")   # takes what waited along, at once
    batch.write(first, b"2;", two)
    batch.write(second, b"2;", two)          # waits again (listed twice in the turn)
    batch.write(second, b"3;", two)          # appended to what waits
    clock.advance(0)
    assert other.written == b"1;heartbeat;2;3;" and other.writes == 2
    assert lead.written == b"1;2;" and lead.writes == 2


@pytest_twisted.ensureDeferred
async def test_tls_records_go_straight_to_the_socket_and_arrive_in_order(tmp_path):
    """After STARTTLS the TLS layer's records go to the socket at once (nothing queued with
    Twisted after a small write) and past a full kernel buffer the rest queues behind it:
    the peer decrypts every byte, in order."""
    from twisted.internet import protocol, reactor, ssl as tssl

    from presenced.flow import TLSRecordWriter, direct_tls_records
    from presenced.xmpp.tls import ServerTLSContext, _load, generate_self_signed

    generate_self_signed(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"), ["localhost"])
    context = ServerTLSContext(_load(str(tmp_path / "c.pem"), str(tmp_path / "k.pem")))
    servers: list[protocol.Protocol] = []

    class Server(protocol.Protocol):
        def connectionMade(self):
            self.transport.startTLS(context)
            direct_tls_records(self.transport)
            servers.append(self)

    received = bytearray()
    done: defer.Deferred = defer.Deferred()
    big = bytes(range(256)) * (16 * 1024)  # 4 MB: more than the kernel takes at once

    class Reader(protocol.Protocol):
        def connectionMade(self):
            self.transport.startTLS(tssl.CertificateOptions())

        def dataReceived(self, data):
            received.extend(data)
            if len(received) >= len(big) + 10 and not done.called:
                done.callback(None)

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Server), interface="127.0.0.1")
    client = await endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
        protocol.Factory.forProtocol(Reader))
    try:
        while not servers:
            await task.deferLater(reactor, 0.01, lambda: None)
        raw = servers[0].transport
        assert isinstance(raw.protocol.transport, TLSRecordWriter)
        servers[0].transport.write(b"hello")
        while not received:  # the handshake, then the first record
            await task.deferLater(reactor, 0.01, lambda: None)
        servers[0].transport.write(b"12345")
        raw.protocol._aggregator.flush()  # Twisted's TLS gathers a turn's small writes
        assert raw.dataBuffer == b"" and not raw._tempDataBuffer  # sent, not queued
        servers[0].transport.write(big)
        raw.protocol._aggregator.flush()
        await done
        assert bytes(received) == b"hello12345" + big
    finally:
        client.transport.loseConnection()
        await port.stopListening()

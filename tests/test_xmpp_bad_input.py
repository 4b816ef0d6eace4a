"""The c2s door against bad input, over raw sockets: malformed XML, DTDs and entities, huge
stanzas and attribute counts, idle connections, stanzas to nowhere, random and mutated
stanzas. After each, the server still serves a normal login."""

from __future__ import annotations

import base64
import random
import socket
import time

import pytest

from tests.helpers import (FUZZ_SCALE, HEADER, OTHER_DOORS_OFF, SERVER_ERRORS, PresencedProcess,
                           RawClient, fuzz_rng, mutate)

XMPP = {"require_tls": False, "allow_plain": True, "max_stanza_size": 20000,
        # Long enough for a login while the server still digests a flood from the test
        # before (a shorter one made still_serving() flaky under load).
        "auth_timeout": 5.0, "auth_failure_delay": 0.0, "hibernate_after": 0.3}
SETTINGS = {**OTHER_DOORS_OFF, "server": {"scram_iterations": 100},
            "router": {"session_queue_bytes": 65536}, "xmpp": XMPP}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process = PresencedProcess(tmp_path_factory.mktemp("xmpp-bad"), SETTINGS)
    process.start()
    process.ctl("adduser", "mallory@localhost", "--password", "pw")
    yield process
    process.stop()


def still_serving(server: PresencedProcess) -> None:
    client = RawClient(server.ports["xmpp"])
    assert b"mallory@localhost/check" in client.login("mallory", "pw", "check")
    client.close()
    assert server.process.poll() is None


def stream_error(server: PresencedProcess, payload: bytes, after_login: bool = False) -> bytes:
    client = RawClient(server.ports["xmpp"])
    if after_login:
        client.login("mallory", "pw", f"r{random.randrange(10**6)}")
    else:
        client.send(HEADER)
        client.read_until(b"</stream:features>")
    client.send(payload)
    error = client.read_until(b"</stream:error>")
    assert client.closed(), "the stream stays open after a stream error"
    return error


def test_malformed_xml_is_not_well_formed(server):
    assert b"<not-well-formed" in stream_error(server, b"<message><body>x</bod></message>")
    still_serving(server)


def test_billion_laughs_dtd_is_refused(server):
    bomb = (b"<!DOCTYPE lolz [<!ENTITY lol 'lol'>"
            + b"".join(b"<!ENTITY lol%d '%s'>" % (i, (b"&lol%d;" % (i - 1) if i else b"&lol;") * 10)
                       for i in range(1, 10))
            + b"]>")
    client = RawClient(server.ports["xmpp"])
    client.send(b"<?xml version='1.0'?>" + bomb + HEADER[21:] + b"<message>&lol9;</message>")
    error = client.read_until(b"</stream:error>")
    assert b"<restricted-xml" in error or b"<not-well-formed" in error
    assert client.closed()
    # Inside an open stream too.
    error = stream_error(server, b"<!DOCTYPE x [<!ENTITY a 'b'>]>", after_login=True)
    assert b"<restricted-xml" in error or b"<not-well-formed" in error
    still_serving(server)


def test_entity_reference_and_comment_are_restricted(server):
    error = stream_error(server, b"<!-- hi --><presence/>", after_login=True)
    assert b"<restricted-xml" in error
    still_serving(server)


def test_oversized_stanza_is_policy_violation(server):
    error = stream_error(server, b"<message to='mallory@localhost'><body>"
                         + b"A" * 50000 + b"</body></message>", after_login=True)
    assert b"<policy-violation" in error
    still_serving(server)


def test_huge_attribute_count_is_refused(server):
    attrs = b" ".join(b"a%d='x'" % i for i in range(2000))
    error = stream_error(server, b"<message " + attrs + b"/>", after_login=True)
    assert b"<policy-violation" in error
    still_serving(server)


def test_deep_nesting_is_refused(server):
    error = stream_error(server, b"<message>" + b"<a>" * 500, after_login=True)
    assert b"<policy-violation" in error
    still_serving(server)


def test_unknown_host_and_bad_namespace(server):
    client = RawClient(server.ports["xmpp"])
    client.send(HEADER.replace(b"to='localhost'", b"to='elsewhere.example'"))
    assert b"<host-unknown" in client.read_until(b"</stream:error>")
    assert client.closed()
    client = RawClient(server.ports["xmpp"])
    client.send(HEADER.replace(b"jabber:client", b"jabber:server"))
    assert b"<invalid-namespace" in client.read_until(b"</stream:error>")


def test_idle_unauthenticated_connection_times_out(server):
    client = RawClient(server.ports["xmpp"])
    silent = RawClient(server.ports["xmpp"])  # sends nothing at all; waits alongside
    client.send(HEADER)
    started = time.monotonic()
    assert b"<connection-timeout" in client.read_until(b"</stream:error>", timeout=20)
    assert 4.5 < time.monotonic() - started < 15
    assert client.closed()
    assert b"<connection-timeout" in silent.read_until(b"</stream:error>", timeout=20)


def test_stanzas_before_auth_are_refused(server):
    assert b"<not-authorized" in stream_error(server, b"<message to='mallory@localhost'/>")


def test_wrong_password_fails_and_three_failures_close(server):
    client = RawClient(server.ports["xmpp"])
    client.send(HEADER)
    client.read_until(b"</stream:features>")
    bad = base64.b64encode(b"\0mallory\0wrong")
    for attempt in range(3):
        client.send(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s"
                    b"</auth>" % bad)
        assert b"<not-authorized/>" in client.read_until(b"</failure>")
    assert b"<policy-violation" in client.read_until(b"</stream:error>")
    client = RawClient(server.ports["xmpp"])
    client.send(HEADER)
    client.read_until(b"</stream:features>")
    client.send(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='X-NOPE'/>")
    assert b"<invalid-mechanism/>" in client.read_until(b"</failure>")
    client.send(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>!!!</auth>")
    assert b"<incorrect-encoding/>" in client.read_until(b"</failure>")


def test_stanzas_to_nowhere_get_errors(server):
    client = RawClient(server.ports["xmpp"])
    client.login("mallory", "pw", "nowhere")
    client.send(b"<message to='nobody@localhost' id='m1' type='chat'><body>x</body></message>")
    assert b"service-unavailable" in client.read_until(b"</message>")
    client.send(b"<message to='someone@remote.example' id='m2'><body>x</body></message>")
    assert b"remote-server-not-found" in client.read_until(b"</message>")
    client.send(b"<iq to='localhost' type='get' id='q1'><nope xmlns='urn:x:nope'/></iq>")
    assert b"service-unavailable" in client.read_until(b"</iq>")
    client.send(b"<iq to='mallory@localhost/gone' type='get' id='q2'>"
                b"<query xmlns='jabber:iq:version'/></iq>")
    assert b"service-unavailable" in client.read_until(b"</iq>")
    client.send(b"<message to='@@bad' id='m3'><body>x</body></message>")
    assert b"jid-malformed" in client.read_until(b"</message>")
    client.send(b"<nonsense/>")
    assert b"<unsupported-stanza-type" in client.read_until(b"</stream:error>")


def test_flood_of_stanzas_is_served_and_bounded(server):
    """5 000 pipelined pings: the burst (``stanza_burst``, 1 000) is answered, then the
    flooder is past the stanza rate's hard bound and gets policy-violation
    (docs/security.md)."""
    client = RawClient(server.ports["xmpp"])
    client.login("mallory", "pw", "flood")
    client.send(b"<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>" * 5000)
    got = client.read_until(b"</stream:error>", timeout=30)
    assert got.count(b"id='p'") >= 1000
    assert b"<policy-violation" in got and b"too many stanzas" in got
    assert client.closed()
    still_serving(server)


@pytest.mark.fuzz
def test_fuzzed_stanzas_leave_the_server_up(server):
    rng = fuzz_rng(1234)
    seeds = [b"<message to='mallory@localhost' type='chat'><body>hi</body></message>",
             b"<presence><show>away</show><priority>5</priority></presence>",
             b"<iq type='get' id='r'><query xmlns='jabber:iq:roster'/></iq>",
             b"<iq type='set' id='s'><query xmlns='jabber:iq:roster'><item jid='x@localhost'"
             b"/></query></iq>",
             b"<presence to='x@localhost' type='subscribe'/>"]
    for round_number in range(40 * FUZZ_SCALE):
        client = RawClient(server.ports["xmpp"])
        client.login("mallory", "pw", f"fuzz{round_number}")
        for _ in range(10):
            data = mutate(rng, rng.choice(seeds))
            if rng.random() < 0.2:
                data = rng.randbytes(rng.randrange(1, 200))
            try:
                client.send(data)
            except OSError:
                break
        client.close()
    still_serving(server)
    # Bad input is answered, never an error of the server's (a critical line, a traceback).
    assert not SERVER_ERRORS.search(server.log()), server.log()[-4000:]


def test_hibernated_streams_wake_up(server):
    client = RawClient(server.ports["xmpp"])
    client.login("mallory", "pw", "sleepy")
    for _ in range(4):  # whitespace keepalives neither keep it awake nor wake it up
        client.send(b" \n")
        time.sleep(0.25)
    client.send(b"<iq type='get' id='h1'><ping xmlns='urn:xmpp:ping'/></iq>")
    assert b"id='h1'" in client.read_until(b"<iq [^>]*/>|</iq>")
    # A stanza cut in the middle is never hibernated away.
    client.send(b"<iq type='get' id='h2'>")
    time.sleep(1.0)
    client.send(b"<ping xmlns='urn:xmpp:ping'/></iq>")
    assert b"id='h2'" in client.read_until(b"<iq [^>]*/>|</iq>")


def test_a_client_that_stops_reading_is_cut_off(presenced_factory):
    # Its own server with read shaping out of the way: the 8 MB below would take two
    # minutes at the default 64 KB/s, and the bound tested here is the recipient's queue.
    server = presenced_factory({**SETTINGS, "xmpp": {
        **XMPP, "read_bytes_per_second": 1e9, "read_burst_bytes": 10**9,
        "stanzas_per_second": 1e6, "stanza_burst": 10**6}})
    server.ctl("adduser", "mallory@localhost", "--password", "pw")
    server.ctl("adduser", "sloth@localhost", "--password", "pw")
    sloth = RawClient(server.ports["xmpp"])
    sloth.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sloth.login("sloth", "pw", "slow")
    sloth.send(b"<presence/>")
    sender = RawClient(server.ports["xmpp"])
    sender.login("mallory", "pw", "sender")
    body = b"x" * 1000
    for _ in range(40):
        sender.send(b"<message to='sloth@localhost' type='chat'><body>%s</body></message>"
                    % body * 200)
        sender.send(b"<iq type='get' id='alive'><ping xmlns='urn:xmpp:ping'/></iq>")
        sender.read_until(b"id='alive'")
    # The server gave up on the reader instead of buffering 8 MB for it.
    assert sloth.closed(timeout=10)
    assert len(sloth.buffer) < 8_000_000
    still_serving(server)

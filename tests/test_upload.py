"""HTTP File Upload (XEP-0363): slots from ``upload.localhost`` in memory (the real c2s door
and core, tests/xmpp_memory.py), the PUT/GET resource of the HTTP door on a real port in this
process, and slixmpp's ``xep_0363`` plugin against a presenced process."""

from __future__ import annotations

import asyncio
import hashlib
from http.client import HTTPConnection
import io
import json
import os
import socket
import time
from urllib.parse import parse_qsl, urlsplit

import pytest
import pytest_twisted
import slixmpp
from twisted.internet import error, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.words.xish import domish

from presenced.comet.door import CometDoor
from presenced.uploads import FileShare, clean_name
from tests.helpers import Client, PresencedProcess, free_port, run

NS_UPLOAD = "urn:xmpp:http:upload:0"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"


def request(name: str, size: int, kind: str = "text/plain", iq_id: str = "u1") -> str:
    return (f"<iq type='get' id='{iq_id}' to='upload.localhost'><request xmlns='{NS_UPLOAD}' "
            f"filename='{name}' size='{size}' content-type='{kind}'/></iq>")


def child(element: domish.Element, name: str) -> domish.Element:
    """The first child element called ``name``, whatever its namespace."""
    return next(c for c in element.elements() if c.name == name)


def slot_urls(answer: domish.Element) -> tuple[str, str]:
    assert answer["type"] == "result", answer.toXml()
    slot = answer.firstChildElement()
    put = next(slot.elements(NS_UPLOAD, "put"))
    get = next(slot.elements(NS_UPLOAD, "get"))
    return put["url"], get["url"]


def condition(answer: domish.Element) -> str:
    assert answer["type"] == "error", answer.toXml()
    error = child(answer, "error")
    return next(c.name for c in error.elements() if c.name != "text"
                and c.uri == "urn:ietf:params:xml:ns:xmpp-stanzas")


# --- slots, in memory ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_service_is_listed_and_describes_itself(memory_xmpp):
    node = await memory_xmpp({"upload": {"max_file_size": 12345}})
    await node.add_users("alice")
    alice = await node.online("alice")
    items = await alice.iq(f"<iq type='get' id='i' to='localhost'>"
                           f"<query xmlns='{NS_DISCO_ITEMS}'/></iq>")
    assert "upload.localhost" in [i["jid"] for i in items.firstChildElement().elements()]
    info = await alice.iq(f"<iq type='get' id='d' to='upload.localhost'>"
                          f"<query xmlns='{NS_DISCO_INFO}'/></iq>")
    query = info.firstChildElement()
    identities = [(i["category"], i["type"]) for i in query.elements(NS_DISCO_INFO, "identity")]
    features = [f["var"] for f in query.elements(NS_DISCO_INFO, "feature")]
    assert identities == [("store", "file")]
    assert NS_UPLOAD in features and "urn:xmpp:carbons:2" not in features
    fields = {f["var"]: str(child(f, "value"))
              for form in query.elements("jabber:x:data", "x") for f in form.elements()
              if f.name == "field"}
    assert fields == {"FORM_TYPE": NS_UPLOAD, "max-file-size": "12345"}
    # The server's own disco#info does not take the service's identity.
    server = await alice.iq(f"<iq type='get' id='s' to='localhost'>"
                            f"<query xmlns='{NS_DISCO_INFO}'/></iq>")
    assert [i["category"] for i in server.firstChildElement().elements(
        NS_DISCO_INFO, "identity")] == ["server"]


@pytest_twisted.ensureDeferred
async def test_a_slot_is_signed_for_its_owner_size_and_type(memory_xmpp):
    node = await memory_xmpp({"upload": {"url": "https://files.example"}})
    await node.add_users("alice")
    alice = await node.online("alice")
    put, get = slot_urls(await alice.iq(request("../../etc/pass wd.txt", 10)))
    assert get.startswith("https://files.example/upload/") and get.endswith("/pass%20wd.txt")
    assert put.partition("?")[0] == get
    args = dict(parse_qsl(urlsplit(put).query))
    assert (args["from"], args["size"], args["type"]) == ("alice@localhost", "10", "text/plain")
    file_id, name = urlsplit(get).path.split("/")[2:]
    uploads = node.core.uploads
    slot = uploads.check_put(file_id, "pass wd.txt", args, "text/plain", 10)
    assert slot.owner == "alice@localhost" and len(slot.id) == 32


@pytest_twisted.ensureDeferred
async def test_too_large_and_over_quota_are_refused(memory_xmpp):
    node = await memory_xmpp({"upload": {"max_file_size": 1000, "quota_bytes": 1500}})
    await node.add_users("alice", "bob")
    alice = await node.online("alice")
    big = await alice.iq(request("big.bin", 1001))
    assert condition(big) == "not-acceptable"
    limit = child(child(big, "error"), "file-too-large")
    assert limit.uri == NS_UPLOAD and str(child(limit, "max-file-size")) == "1000"
    slot_urls(await alice.iq(request("a.txt", 1000, iq_id="a")))
    over = await alice.iq(request("b.txt", 600, iq_id="b"))
    assert condition(over) == "resource-constraint"
    assert "1000 of 1500 bytes used" in str(child(child(over, "error"), "text"))
    slot_urls(await alice.iq(request("c.txt", 500, iq_id="c")))   # what still fits
    bob = await node.online("bob")
    slot_urls(await bob.iq(request("d.txt", 1000, iq_id="d")))    # a quota is per account
    metrics = node.core.metrics
    assert [metrics.value("presenced_upload_slots_total", result=result)
            for result in ("granted", "too-large", "quota")] == [3, 1, 1]


@pytest_twisted.ensureDeferred
async def test_two_requests_at_once_cannot_share_the_room_left(memory_xmpp):
    node = await memory_xmpp({"upload": {"quota_bytes": 1000}})
    await node.add_users("alice")
    alice = await node.online("alice")
    alice.send(request("a.txt", 600, iq_id="a") + request("b.txt", 600, iq_id="b"))
    answers = [await alice.expect(lambda s, i=i: s.name == "iq" and s["id"] == i)
               for i in ("a", "b")]
    assert sorted(answer["type"] for answer in answers) == ["error", "result"]
    assert not node.core.uploads._granting     # nothing left behind


@pytest_twisted.ensureDeferred
async def test_the_number_of_files_is_bounded_too(memory_xmpp):
    node = await memory_xmpp({"upload": {"max_files": 2}})
    await node.add_users("alice")
    alice = await node.online("alice")
    slot_urls(await alice.iq(request("a.txt", 1, iq_id="a")))
    slot_urls(await alice.iq(request("b.txt", 1, iq_id="b")))
    third = await alice.iq(request("c.txt", 1, iq_id="c"))
    assert condition(third) == "resource-constraint"
    assert "at most 2 files" in str(child(child(third, "error"), "text"))


@pytest_twisted.ensureDeferred
async def test_bad_slot_requests_get_bad_request(memory_xmpp):
    node = await memory_xmpp()
    await node.add_users("alice")
    alice = await node.online("alice")
    for i, (name, size, kind) in enumerate((("", 5, "text/plain"), ("a", 0, "text/plain"),
                                            ("a", "-3", "text/plain"), ("a", 5, "notatype"))):
        answer = await alice.iq(request(name, size, kind, iq_id=f"b{i}"))
        assert condition(answer) == "bad-request", (name, size, kind)


@pytest_twisted.ensureDeferred
async def test_an_unused_slot_stops_counting_after_its_deadlines(memory_xmpp):
    node = await memory_xmpp({"upload": {"quota_bytes": 100, "slot_timeout": 10,
                                         "put_timeout": 5.0}})
    await node.add_users("alice")
    now = [1000.0]
    node.core.uploads.clock = lambda: now[0]
    alice = await node.online("alice")
    slot_urls(await alice.iq(request("a.txt", 100, iq_id="a")))
    assert condition(await alice.iq(request("b.txt", 1, iq_id="b"))) == "resource-constraint"
    now[0] += 16
    slot_urls(await alice.iq(request("c.txt", 100, iq_id="c")))


def http_connection(core, clock: task.Clock | None = None):
    """A connection of the comet door's twisted.web site on a StringTransport."""
    channel = CometDoor(core).site.buildProtocol(None)
    if clock is not None:
        channel.callLater = clock.callLater
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def put_head(url: str, length: int, kind: str) -> bytes:
    parts = urlsplit(url)
    return (f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode("ascii")


@pytest_twisted.ensureDeferred
async def test_a_file_name_beyond_ascii_survives_the_url(memory_xmpp):
    node = await memory_xmpp()
    uploads: FileShare = node.core.uploads
    slot = await uploads.grant("alice@localhost", "résumé €.txt", 5, "text/plain")
    channel, transport = http_connection(node.core)
    channel.dataReceived(put_head(uploads.put_url(slot), 5, "text/plain"))
    finished = channel.requests[-1].notifyFinish()
    channel.dataReceived(b"hello")
    await finished
    assert transport.value().startswith(b"HTTP/1.1 201 "), transport.value()
    assert node.core.metrics.value("presenced_upload_puts_total", status="201") == 1
    assert node.core.metrics.value("presenced_upload_bytes_total") == 5
    with open(uploads.file_path(slot.id), "rb") as f:
        assert f.read() == b"hello"
    with open(uploads.file_path(slot.id) + ".meta", "rb") as f:
        assert json.loads(f.read()) == {"type": "text/plain", "name": "résumé €.txt"}


@pytest_twisted.ensureDeferred
async def test_only_upload_bodies_pass_the_sites_body_limit(memory_xmpp):
    node = await memory_xmpp({"comet": {"max_body_bytes": 1000}})
    uploads: FileShare = node.core.uploads
    slot = await uploads.grant("alice@localhost", "big.bin", 5000, "application/octet-stream")
    channel, transport = http_connection(node.core)
    channel.dataReceived(put_head(uploads.put_url(slot), 5000, "application/octet-stream"))
    finished = channel.requests[-1].notifyFinish()
    channel.dataReceived(b"x" * 5000)
    await finished
    assert transport.value().startswith(b"HTTP/1.1 201 "), transport.value()
    for head in (b"POST /http-bind HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
                 b"PUT /elsewhere HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"):
        channel, transport = http_connection(node.core)
        channel.dataReceived(head + b"x" * 5000)
        assert transport.value().startswith(b"HTTP/1.1 413 "), (head, transport.value())


@pytest_twisted.ensureDeferred
async def test_an_accepted_put_has_its_own_deadline(memory_xmpp):
    node = await memory_xmpp({"upload": {"put_timeout": 60.0}, "comet": {"request_timeout": 30.0}})
    uploads: FileShare = node.core.uploads
    slot = await uploads.grant("alice@localhost", "slow.bin", 1000, "application/octet-stream")
    clock = task.Clock()
    channel, transport = http_connection(node.core, clock)
    channel.dataReceived(put_head(uploads.put_url(slot), 1000, "application/octet-stream")
                         + b"x" * 10)
    assert os.path.exists(uploads.partial_path(slot.id))
    clock.advance(45)           # past [comet] request_timeout: an upload may take longer
    assert transport.value() == b"" and not transport.disconnecting
    clock.advance(16)
    assert transport.value().startswith(b"HTTP/1.1 408 ") and transport.disconnecting
    channel.connectionLost(Failure(error.ConnectionDone()))
    assert not os.path.exists(uploads.partial_path(slot.id))


def test_file_names_keep_their_last_part_and_printable_characters():
    assert clean_name("C:\\Users\\x\\photo.jpg") == "photo.jpg"
    assert clean_name("a/b/\u202eevil\x00.txt") == "evil.txt"
    assert clean_name("../..") == "file"
    assert len(clean_name("x" * 1000)) == 200


# --- PUT and GET on the HTTP door, slixmpp's xep_0363 against a process -----------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    comet = free_port()
    process = PresencedProcess(tmp_path_factory.mktemp("upload"), {
        "webadmin": {"enabled": False}, "thrift": {"enabled": False},
        "server": {"scram_iterations": 100},
        "comet": {"port": comet, "bind": "127.0.0.1", "cors_origins": ["https://web.example"]},
        "upload": {"url": f"http://127.0.0.1:{comet}", "max_file_size": 6_000_000,
                   "quota_bytes": 8_000_000},
        "xmpp": {"require_tls": False, "allow_plain": True, "auth_failure_delay": 0.0}})
    process.start()
    process.ctl("import-users", "-", "--quiet",
                input="".join(f"{user}@localhost {user}-pw\n" for user in ("alice", "bob",
                                                                         "carol")))
    yield process
    process.stop()


async def uploader(server, user: str) -> Client:
    c = Client(user)
    c.register_plugin("xep_0363")
    return await c.start(server.ports["xmpp"], presence=False)


async def slot(client: Client, name: str, size: int, kind: str) -> tuple[str, str]:
    service = slixmpp.JID("upload.localhost")
    answer = await client.plugin["xep_0363"].request_slot(service, name, size, kind)
    found = answer["http_upload_slot"]
    return found["put"]["url"], found["get"]["url"]


def http(method: str, url: str, body: bytes = b"", headers: dict | None = None,
         length: int | None = None) -> tuple[int, dict, bytes]:
    """One request over a fresh connection: status, lower-cased headers, body."""
    parts = urlsplit(url)
    connection = HTTPConnection(parts.hostname, parts.port, timeout=20)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    connection.putrequest(method, target, skip_accept_encoding=True)
    for name, value in (headers or {}).items():
        connection.putheader(name, value)
    if method == "PUT":
        connection.putheader("Content-Length", str(len(body) if length is None else length))
    connection.endheaders()
    try:
        if body:
            connection.send(body)
    except (BrokenPipeError, ConnectionResetError):
        pass    # refused on its head, before the body
    response = connection.getresponse()
    answer = (response.status, {k.lower(): v for k, v in response.getheaders()},
              response.read())
    connection.close()
    return answer


def test_a_5_mb_file_goes_up_and_comes_back_with_slixmpp(server):
    data = os.urandom(5 * 1024 * 1024)

    async def scenario():
        alice = await uploader(server, "alice")
        url = await alice.plugin["xep_0363"].upload_file(
            "holiday.jpg", size=len(data), content_type="image/jpeg",
            input_file=io.BytesIO(data), timeout=30)
        await alice.disconnect()
        return url
    url = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert url.startswith(f"http://127.0.0.1:{server.ports['comet']}/upload/")
    status, headers, body = http("GET", url, headers={"Origin": "https://web.example"})
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    assert headers["access-control-allow-origin"] == "https://web.example"
    assert headers["x-content-type-options"] == "nosniff"
    files = os.listdir(server.data_dir / "uploads")
    assert url.split("/")[4] in files     # under the data directory, by the server's id


def test_the_quota_refuses_a_slot_with_slixmpp(server):
    async def scenario():
        bob = await uploader(server, "bob")
        await slot(bob, "a.bin", 5_000_000, "application/octet-stream")
        with pytest.raises(slixmpp.exceptions.IqError) as refused:
            await slot(bob, "b.bin", 5_000_000, "application/octet-stream")
        assert refused.value.condition == "resource-constraint"
        assert "quota" in refused.value.text
        with pytest.raises(slixmpp.exceptions.IqError) as big:
            await slot(bob, "c.bin", 6_000_001, "application/octet-stream")
        assert big.value.condition == "not-acceptable"
        await bob.disconnect()
    run(scenario())


def slot_for(server, name: str, size: int, kind: str = "text/plain") -> tuple[str, str]:
    async def scenario():
        carol = await uploader(server, "carol")
        urls = await slot(carol, name, size, kind)
        await carol.disconnect()
        return urls
    return asyncio.run(asyncio.wait_for(scenario(), 30))


def test_bad_signatures_sizes_and_types_are_refused_before_the_body(server):
    put, get = slot_for(server, "note.txt", 5)
    forged = put.replace("size=5", "size=6")
    assert http("PUT", forged, b"hello!", {"Content-Type": "text/plain"})[0] == 403
    other = put[:put.index("/upload/") + 8] + "0" * 32 + put[put.index("/note.txt"):]
    assert http("PUT", other, b"hello", {"Content-Type": "text/plain"})[0] == 403
    status, _, body = http("PUT", put, b"hello, world", {"Content-Type": "text/plain"})
    assert status == 413 and b"5 bytes" in body
    assert http("PUT", put, b"hel", {"Content-Type": "text/plain"})[0] == 400
    assert http("PUT", put, b"hello", {"Content-Type": "text/html"})[0] == 415
    assert http("GET", get)[0] == 404     # nothing was stored
    assert http("PUT", put, b"hello", {"Content-Type": "text/plain"})[0] == 201
    assert http("PUT", put, b"hello", {"Content-Type": "text/plain"})[0] == 409
    status, headers, body = http("GET", get)
    assert (status, headers["content-type"], body) == (200, "text/plain", b"hello")
    assert "sandbox" in headers["content-security-policy"]


def wait_until(condition, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_body_goes_to_disk_as_it_arrives_and_a_cut_one_leaves_nothing(server):
    put, get = slot_for(server, "cut.bin", 100_000, "application/octet-stream")
    parts = urlsplit(put)
    partial = server.data_dir / "uploads" / ".partial" / parts.path.split("/")[2]
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: x\r\n"
                     f"Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n"
                     f"\r\n".encode() + b"x" * 50_000)
        assert wait_until(lambda: partial.exists() and partial.stat().st_size == 50_000)
    assert wait_until(lambda: not partial.exists())
    assert http("GET", get)[0] == 404


def test_cors_preflight_for_web_clients(server):
    _, get = slot_for(server, "p.txt", 1)
    status, headers, _ = http("OPTIONS", get, headers={
        "Origin": "https://web.example", "Access-Control-Request-Method": "PUT"})
    assert status == 204
    assert headers["access-control-allow-origin"] == "https://web.example"
    assert "PUT" in headers["access-control-allow-methods"]
    assert "Content-Type" in headers["access-control-allow-headers"]
    status, headers, _ = http("OPTIONS", get, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in headers


@pytest_twisted.ensureDeferred
async def test_expired_files_and_abandoned_bodies_are_swept(memory_xmpp):
    node = await memory_xmpp({"upload": {"expire_after": 100.0, "put_timeout": 10.0}})
    uploads: FileShare = node.core.uploads
    os.makedirs(os.path.dirname(uploads.partial_path("x")))
    now = 10_000.0
    uploads.clock = lambda: now
    paths = {name: path for name, path in (
        ("old", uploads.file_path("a" * 32)), ("old-meta", uploads.file_path("a" * 32) + ".meta"),
        ("new", uploads.file_path("b" * 32)), ("abandoned", uploads.partial_path("c" * 32)),
        ("receiving", uploads.partial_path("d" * 32)))}
    ages = {"old": 101, "old-meta": 101, "new": 99, "abandoned": 21, "receiving": 19}
    for name, path in paths.items():
        with open(path, "wb") as f:
            f.write(b"x")
        os.utime(path, (now - ages[name], now - ages[name]))
    assert uploads.expire() == 2
    assert {name for name, path in paths.items() if os.path.exists(path)} == {"new", "receiving"}


@pytest_twisted.ensureDeferred
async def test_deleting_an_account_deletes_its_files(memory_xmpp):
    node = await memory_xmpp()
    await node.add_users("alice@localhost", "bob@localhost")
    uploads: FileShare = node.core.uploads
    os.makedirs(os.path.dirname(uploads.partial_path("x")))
    paths = {}
    for user in ("alice@localhost", "bob@localhost"):
        slot = await uploads.grant(user, "photo.jpg", 1, "image/jpeg")
        await uploads.stored(slot)
        paths[user] = [uploads.file_path(slot.id), uploads.file_path(slot.id) + ".meta"]
        for path in paths[user]:
            with open(path, "wb") as f:
                f.write(b"x")
    receiving = await uploads.grant("alice@localhost", "half.jpg", 1, "image/jpeg")
    with open(uploads.partial_path(receiving.id), "wb") as f:
        f.write(b"x")
    paths["alice@localhost"].append(uploads.partial_path(receiving.id))

    assert await node.core.accounts.remove("alice@localhost")
    assert not any(os.path.exists(path) for path in paths["alice@localhost"])
    assert all(os.path.exists(path) for path in paths["bob@localhost"])
    assert await uploads.files.items("alice@localhost") == {}

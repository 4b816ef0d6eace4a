"""``/upload/<id>/<name>`` on the comet port: the PUT and GET of HTTP File Upload (XEP-0363).

Slots come from the XMPP door (:mod:`presenced.xmpp.upload`); :mod:`presenced.uploads`
checks them. A PUT is judged on its head, before its body is read: a bad signature, a length
or type that is not the slot's, or no length at all is answered at once and the connection
closed, so a refused body is never received. An accepted body is written as it arrives,
chunk by chunk (each at most one socket read), into ``<data_dir>/uploads/.partial/<id>``
(the id is the server's: no path comes from the client); once whole, a thread moves it into
place beside its type. The PUT must arrive within ``[upload] put_timeout``. Files are served
back by ``twisted.web.static`` (64 KiB reads, ranges), with CORS for the ``[comet]
cors_origins`` and headers that keep a browser from running what it fetched.
"""

from __future__ import annotations

import io
import json
import os
from typing import TYPE_CHECKING, Optional
from urllib.parse import parse_qsl, unquote_to_bytes

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.web import resource, server, static

from presenced.httphead import error_body, json_response
from presenced.comet.web import CometRequest
from presenced.uploads import BadPut, FileShare, Slot, is_file_id

if TYPE_CHECKING:
    from presenced.comet.door import CometDoor

PREFIX = b"/upload/"
# What a browser may do with a fetched file: show it, never run it against this origin.
SAFE_HEADERS = ((b"X-Content-Type-Options", b"nosniff"),
                (b"Content-Security-Policy", b"default-src 'none'; sandbox"))


class UploadRequest(CometRequest):
    """A request of the comet port's twisted.web site whose body, for a PUT to
    ``/upload/``, goes to the slot's file instead of twisted.web's buffer."""

    slot: Optional[Slot] = None
    refused = False     # answered on its head; the connection is closing
    log = Logger()

    def gotLength(self, length: Optional[int]) -> None:
        # The request line is parsed but not yet handed to the request (twisted.web does
        # that once the body is in): read it where the channel keeps it.
        command = getattr(self.channel, "_command", b"")
        uri = getattr(self.channel, "_path", b"")
        if command != b"PUT" or not uri.startswith(PREFIX):
            super().gotLength(length)
            return
        self.files: UploadedFiles = self.channel.site.upload_files
        uploads = self.files.uploads
        try:
            self.slot = self._check(uploads, uri, length)
            self.content = open(uploads.partial_path(self.slot.id), "xb+", buffering=0)
        except BadPut as refused:
            self._refuse(refused.status, refused.message)
        except FileExistsError:
            self._refuse(409, "this slot is being uploaded already")
        except OSError as e:
            self.log.error("upload: cannot create {path}: {error}",
                           path=uploads.partial_path(self.slot.id), error=e)
            self._refuse(500, "this server cannot store the file now")
        else:
            self.channel.setTimeout(uploads.put_timeout)   # the PUT's own deadline

    def _check(self, uploads: FileShare, uri: bytes, length: Optional[int]) -> Slot:
        path, _, query = uri.partition(b"?")
        parts = path[len(PREFIX):].split(b"/")
        if len(parts) != 2:
            raise BadPut(404, "no such upload")
        name = unquote_to_bytes(parts[1]).decode("utf-8", "replace")
        kind = self.requestHeaders.getRawHeaders(b"content-type", [b""])[0]
        slot = uploads.check_put(parts[0].decode("latin-1"), name,
                                 dict(parse_qsl(query.decode("latin-1"))),
                                 kind.decode("latin-1"), length)
        if os.path.exists(uploads.file_path(slot.id)):
            raise BadPut(409, "this slot was filled already")
        return slot

    def _refuse(self, status: int, message: str) -> None:
        """Answer now and close: the body, if any, is never read."""
        self.slot = None
        self.refused = True
        self.files.uploads.count_put(status)
        self.content = io.BytesIO()     # what one socket read may still bring
        origin = self.requestHeaders.getRawHeaders(b"origin", [b""])[0].decode("latin-1")
        cors = self.files.door.cors_headers(origin)
        self.channel.transport.write(json_response(status, error_body(message), cors))
        self.channel.loseConnection()

    def connectionLost(self, reason) -> None:
        """A body cut short leaves nothing behind."""
        if self.slot is not None and not self.finished:
            self.content.close()
            _remove(self.files.uploads.partial_path(self.slot.id))
            self.slot = None
        super().connectionLost(reason)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class UploadedFiles(resource.Resource):
    """``/upload/``: one :class:`UploadedFile` per id (a malformed one is a JSON 404)."""

    def __init__(self, door: "CometDoor"):
        super().__init__()
        self.door = door
        self.uploads: FileShare = door.core.uploads

    def getChild(self, name: bytes, request: server.Request) -> resource.Resource:
        file_id = name.decode("latin-1")
        if not is_file_id(file_id) or len(request.postpath) != 1:
            file_id = None
        return UploadedFile(self.door, file_id)


class UploadedFile(resource.Resource):
    """``/upload/<id>/<name>``: PUT fills a slot, GET and HEAD read the file back."""

    isLeaf = True
    log = Logger()

    def __init__(self, door: "CometDoor", file_id: Optional[str]):
        super().__init__()
        self.door = door
        self.uploads: FileShare = door.core.uploads
        self.file_id = file_id

    def _cors(self, request: server.Request) -> None:
        origin = request.getHeader(b"origin") or b""
        for name, value in self.door.cors_headers(origin.decode("latin-1")):
            request.setHeader(name, value)

    def render(self, request: server.Request):
        if self.file_id is None:
            self._cors(request)
            _reply(request, 404, "no such upload")
            return server.NOT_DONE_YET
        return super().render(request)

    def render_OPTIONS(self, request: server.Request) -> bytes:
        self._cors(request)
        request.setResponseCode(204)
        request.setHeader(b"Access-Control-Allow-Methods", b"GET, HEAD, PUT, OPTIONS")
        request.setHeader(b"Access-Control-Allow-Headers", b"Content-Type")
        request.setHeader(b"Access-Control-Max-Age", b"600")
        return b""

    def render_PUT(self, request: UploadRequest):
        if getattr(request, "refused", False):
            return server.NOT_DONE_YET
        slot = getattr(request, "slot", None)
        self._cors(request)
        if slot is None:    # the body did not go through UploadRequest.gotLength
            _reply(request, 500, "this server cannot take uploads now")
            return server.NOT_DONE_YET
        written = os.fstat(request.content.fileno()).st_size
        request.content.close()
        request.slot = None
        if written != slot.size:    # the connection ended the body early
            _remove(self.uploads.partial_path(slot.id))
            _reply(request, 400, f"{written} bytes arrived, the slot is for {slot.size}")
            return server.NOT_DONE_YET
        lost = _lost(request)
        d = defer.ensureDeferred(self._store(request, slot, lost))
        d.addErrback(self._failed, request, lost)
        return server.NOT_DONE_YET

    async def _store(self, request: server.Request, slot: Slot, lost: list) -> None:
        placed = await threads.deferToThread(_place, self.uploads, slot)
        if placed:
            await self.uploads.stored(slot)
        if lost:
            return
        if not placed:
            _reply(request, 409, "this slot was filled already")
            return
        self.uploads.count_put(201)
        request.setResponseCode(201)
        request.setHeader(b"content-length", b"0")
        request.finish()

    def _failed(self, failure, request: server.Request, lost: list) -> None:
        self.log.failure("serving an upload", failure)
        if not request.finished and not lost:
            _reply(request, 500, "the file could not be stored or read")

    def render_GET(self, request: server.Request):
        lost = _lost(request)
        d = threads.deferToThread(_read_meta, self.uploads.file_path(self.file_id))
        d.addCallback(self._serve, request, lost)
        d.addErrback(self._failed, request, lost)
        return server.NOT_DONE_YET

    render_HEAD = render_GET

    def _serve(self, meta: Optional[dict], request: server.Request, lost: list) -> None:
        if lost:
            return
        self._cors(request)
        if meta is None:
            _reply(request, 404, "no such upload (or it expired)")
            return
        for name, value in SAFE_HEADERS:
            request.setHeader(name, value)
        served = static.File(self.uploads.file_path(self.file_id), defaultType=meta["type"])
        served.type, served.encoding = meta["type"], None
        result = served.render(request)
        if result is not server.NOT_DONE_YET:
            request.write(result)
            request.finish()


def _place(uploads: FileShare, slot: Slot) -> bool:
    """Move a received body into place with its type beside it (in a thread); False when
    another PUT of the same slot got there first."""
    partial, final = uploads.partial_path(slot.id), uploads.file_path(slot.id)
    with open(final + ".meta", "wb") as f:
        f.write(uploads.meta(slot))
    try:
        os.link(partial, final)     # never replaces a file that is there
    except FileExistsError:
        return False
    finally:
        _remove(partial)
    return True


def _read_meta(path: str) -> Optional[dict]:
    """The stored type and name of a file (in a thread), None when there is none."""
    if not os.path.exists(path):
        return None
    try:
        with open(path + ".meta", "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def _lost(request: server.Request) -> list:
    """A list that gets an item if the client goes away before the answer is done."""
    lost: list = []
    request.notifyFinish().addErrback(lambda _: lost.append(True))
    return lost


def _reply(request: server.Request, status: int, message: str) -> None:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.write(error_body(message))
    request.finish()


def mount(site: server.Site, door: "CometDoor") -> None:
    """Serve ``/upload/`` on the comet door's site (its requests read PUT bodies to disk)."""
    files = UploadedFiles(door)
    if not files.uploads.enabled:
        return
    os.makedirs(os.path.dirname(files.uploads.partial_path("x")), exist_ok=True)
    site.requestFactory = UploadRequest
    site.upload_files = files       # what UploadRequest checks a PUT's head against
    site.large_bodies[(b"PUT", PREFIX)] = files.uploads.max_file_size
    site.resource.putChild(b"upload", files)

"""HTTP File Upload (XEP-0363), the part both doors share: slots, their signatures, quotas
and where files live.

The XMPP door asks :meth:`FileShare.grant` for a slot; the HTTP door checks the PUT against
:meth:`FileShare.check_put` and serves the file back. A slot is a capability URL: a random id
(the file's only name on disk: no path ever comes from a client) and, for the PUT, a stream
token (:mod:`presenced.tokens`, the server's secret: cluster-wide in a cluster) over the
owner, id, name, size, type and expiry, so any node checks a PUT without a lookup.

What a user holds is the ``uploads`` map of the capability store: file id -> ``[size, granted
at, stored]``. A slot counts against the quota from its grant; one never used stops counting
when its PUT deadline passes, a stored file when it expires. Files live in ``<data_dir>/uploads``;
:meth:`FileShare.expire` (run in a thread) deletes what is older than ``[upload] expire_after``.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import unicodedata
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import quote, urlencode

from twisted.internet import defer, threads
from twisted.logger import Logger

from presenced.config import Config
from presenced.metrics import Metrics
from presenced.store import IRosterStore
from presenced.tokens import check_token, make_token

UPLOADS_STORE = "uploads"
MAX_NAME = 200           # characters of a file name kept in its URL
MAX_TYPE = 255           # characters of a content type
PARTIAL = ".partial"     # bodies being received, under the upload directory


class SlotRefused(Exception):
    """A slot request that cannot be granted; ``condition`` is the XMPP error condition,
    ``max_size`` set when the file is too large."""

    def __init__(self, condition: str, text: str, max_size: Optional[int] = None):
        super().__init__(text)
        self.condition = condition
        self.text = text
        self.max_size = max_size


class BadPut(Exception):
    """A PUT the HTTP door refuses: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Slot:
    """One file an account may upload: ``id`` names it on disk and in its URLs."""

    owner: str
    id: str
    name: str
    size: int
    content_type: str
    token: str           # "<PUT deadline>.<HMAC>", see presenced.tokens

    @property
    def path(self) -> str:
        """The URL path of the file (the PUT adds the query of :meth:`FileShare.put_url`)."""
        return f"/upload/{self.id}/{quote(self.name, safe='')}"


def signed_text(owner: str, file_id: str, name: str, size: int, content_type: str) -> str:
    """What a PUT token signs (never a valid user name, so never a stream token)."""
    return f"upload\n{owner}\n{file_id}\n{name}\n{size}\n{content_type}"


def clean_name(name: str) -> str:
    """The client's file name as it may appear in a URL: its last path part, printable
    characters only, at most :data:`MAX_NAME`; ``file`` when nothing is left."""
    name = name.replace("\\", "/").rpartition("/")[2]
    name = "".join(c for c in name if unicodedata.category(c)[0] not in "CZ" or c == " ")
    name = name.strip(" .")[:MAX_NAME]
    return name or "file"


def valid_content_type(text: str) -> bool:
    """``type/subtype`` (parameters allowed), printable ASCII without quotes or spaces around."""
    if not text or len(text) > MAX_TYPE or not text.isascii() or not text.isprintable():
        return False
    kind, slash, sub = text.partition(";")[0].strip().partition("/")
    return bool(slash and kind and sub and " " not in kind + sub)


class FileShare:
    """Slots, quotas and the upload directory of one node (``core.uploads``)."""

    log = Logger()

    def __init__(self, config: Config, store: IRosterStore, secret: Callable[[], bytes],
                 metrics: Metrics, clock: Callable[[], float] = time.time):
        """``secret`` is read at each use: joining a cluster replaces the node's."""
        settings = config.upload
        self.enabled = settings.enabled
        self.max_file_size = settings.max_file_size
        self.quota = settings.quota_bytes
        self.max_files = settings.max_files
        self.expire_after = settings.expire_after
        self.slot_timeout = settings.slot_timeout
        self.put_timeout = settings.put_timeout
        self.base_url = (settings.url or
                         f"http://{config.default_domain}:{config.comet.port}").rstrip("/")
        self.directory = os.path.join(config.server.data_dir, "uploads")
        self.store = store
        self.secret = secret
        self.clock = clock
        self.metrics = metrics
        self._granting: dict[str, defer.DeferredLock] = {}   # users with a request under way
        metrics.describe("presenced_upload_slots_total", "counter",
                         "HTTP upload slot requests, by result (granted, too-large, quota)")
        metrics.describe("presenced_upload_puts_total", "counter",
                         "HTTP upload PUTs, by status (201 stored, 4xx refused)")
        metrics.describe("presenced_upload_bytes_total", "counter", "Bytes of files stored")

    @property
    def files(self):
        """The ``uploads`` capability store (opened on first use: a core may have no store)."""
        return self.store.open_map(UPLOADS_STORE)

    # --- slots (XMPP door) --------------------------------------------------------------

    async def grant(self, user: str, filename: str, size: int, content_type: str) -> Slot:
        """A slot for ``user``'s file, charged to the quota; :class:`SlotRefused` when the
        file is too large, the quota or the file count would be exceeded. One account's
        requests are granted one after the other on a node, so two cannot share the room
        left in its quota."""
        lock = self._granting.setdefault(user, defer.DeferredLock())
        await lock.acquire()
        try:
            return await self._grant(user, filename, size, content_type)
        finally:
            lock.release()
            if not lock.locked:     # nobody waits: the next request starts a new lock
                del self._granting[user]

    async def _grant(self, user: str, filename: str, size: int, content_type: str) -> Slot:
        if size > self.max_file_size:
            self.metrics.inc("presenced_upload_slots_total", result="too-large")
            raise SlotRefused("not-acceptable", f"the file is {size} bytes; at most "
                              f"{self.max_file_size} are accepted", self.max_file_size)
        now = self.clock()
        used, count = await self._holdings(user, now)
        refusal = None
        if count >= self.max_files:
            refusal = f"quota: at most {self.max_files} files per account"
        elif used + size > self.quota:
            refusal = f"quota: {used} of {self.quota} bytes used, {size} more do not fit"
        if refusal:
            self.metrics.inc("presenced_upload_slots_total", result="quota")
            raise SlotRefused("resource-constraint", refusal)
        file_id = secrets.token_hex(16)
        name = clean_name(filename)
        token = make_token(self.secret(), signed_text(user, file_id, name, size, content_type),
                           self.slot_timeout, now)
        await self.files.set(user, file_id, json.dumps([size, now, False]))
        self.metrics.inc("presenced_upload_slots_total", result="granted")
        return Slot(user, file_id, name, size, content_type, token)

    async def _holdings(self, user: str, now: float) -> tuple[int, int]:
        """Bytes and files the user holds now; entries that stopped counting are deleted."""
        used = count = 0
        for file_id, text in (await self.files.items(user)).items():
            size, granted, stored = json.loads(text)
            if self._counts(granted, stored, now):
                used += size
                count += 1
            else:
                await self.files.delete(user, file_id)
        return used, count

    def _counts(self, granted: float, stored: bool, now: float) -> bool:
        if not stored:
            return now < granted + self.slot_timeout + self.put_timeout
        return not self.expire_after or now < granted + self.expire_after

    def put_url(self, slot: Slot) -> str:
        query = urlencode({"from": slot.owner, "size": slot.size, "type": slot.content_type,
                           "token": slot.token})
        return f"{self.base_url}{slot.path}?{query}"

    def get_url(self, slot: Slot) -> str:
        return f"{self.base_url}{slot.path}"

    # --- PUT and GET (HTTP door) --------------------------------------------------------

    def check_put(self, file_id: str, name: str, args: dict[str, str],
                  content_type: Optional[str], length: Optional[int]) -> Slot:
        """The slot a PUT of ``length`` bytes of ``content_type`` fills, or :class:`BadPut`
        (403 bad or expired signature, 411 no length, 413 too large, 400/415 mismatches)."""
        try:
            owner, size, kind, token = (args["from"], int(args["size"]), args["type"],
                                        args["token"])
        except (KeyError, ValueError):
            raise BadPut(403, "not an upload URL this server handed out") from None
        if not is_file_id(file_id) or not check_token(
                self.secret(), signed_text(owner, file_id, name, size, kind), token,
                self.clock()):
            raise BadPut(403, "the upload URL's signature is not valid, or it has expired")
        if length is None:
            raise BadPut(411, "a Content-Length is required")
        if length != size:
            raise BadPut(413 if length > size else 400,
                         f"the slot is for {size} bytes, the request has {length}")
        if (content_type or "").lower() != kind.lower():
            raise BadPut(415, f"the slot is for Content-Type {kind}")
        return Slot(owner, file_id, name, size, kind, token)

    def count_put(self, status: int) -> None:
        """The HTTP door answered a PUT with ``status``."""
        self.metrics.inc("presenced_upload_puts_total", status=str(status))

    async def stored(self, slot: Slot) -> None:
        """The file of ``slot`` is on disk: it counts until it expires."""
        self.metrics.inc("presenced_upload_bytes_total", slot.size)
        await self.files.set(slot.owner, slot.id, json.dumps([slot.size, self.clock(), True]))

    def file_path(self, file_id: str) -> str:
        return os.path.join(self.directory, file_id)

    def partial_path(self, file_id: str) -> str:
        return os.path.join(self.directory, PARTIAL, file_id)

    @staticmethod
    def meta(slot: Slot) -> bytes:
        """What is kept beside a file for its GET: the type and the name it was sent as."""
        return json.dumps({"type": slot.content_type, "name": slot.name}).encode("utf-8")

    # --- deletion and expiry (disk work in threads) ------------------------------------

    def forget_user(self, user: str) -> defer.Deferred:
        """The account is being deleted: its files on this node go with it (the ``uploads``
        map goes with the account in the store)."""
        async def forget() -> None:
            if not self.enabled:
                return
            file_ids = list(await self.files.items(user))
            if file_ids:
                await threads.deferToThread(self._unlink, file_ids)
        return defer.ensureDeferred(forget())

    def _unlink(self, file_ids: list[str]) -> None:
        for file_id in file_ids:
            for path in (self.file_path(file_id), self.file_path(file_id) + ".meta",
                         self.partial_path(file_id)):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as e:    # the account still goes; the sweep retries
                    self.log.warn("upload {path} not deleted: {error}", path=path, error=e)


    def expire(self) -> int:
        """Delete files older than ``expire_after`` and bodies abandoned for longer than a
        PUT may last; returns how many files went. Blocking: run it in a thread."""
        now = self.clock()
        gone = 0
        for folder, limit in ((self.directory, self.expire_after),
                              (os.path.join(self.directory, PARTIAL), 2 * self.put_timeout)):
            if not limit:
                continue
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    if entry.is_file() and entry.stat().st_mtime < now - limit:
                        os.unlink(entry.path)
                        gone += not entry.name.endswith(".meta")
                except OSError:     # gone meanwhile, or not ours to delete: the next one
                    continue
        return gone


def is_file_id(text: str) -> bool:
    """32 lower-case hex digits: what :meth:`FileShare.grant` makes."""
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)

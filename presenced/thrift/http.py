"""The admin service over HTTP/JSON, and the HTTP publisher, under ``/api`` on the admin port.

The Thrift door offers this resource to the web admin (``core.web_resources[b"api"]``), so
it is served on ``[webadmin] bind:port`` (127.0.0.1:8001) while both doors run:

- ``POST /api/<method>`` with a JSON object of named arguments, for every method of the
  ``PresencedAdmin`` IDL (``Ejabthrift``'s included): the arguments are read by the IDL's
  types (:mod:`presenced.thrift.jsonspec`) and handed to the same
  :class:`~presenced.thrift.handler.AdminHandler` the Thrift port calls, so both wire formats
  run the same code. Answer ``{"result": ...}``; errors ``{"error": "<Exception>",
  "message": ...}`` with a status that fits (:data:`STATUS`).
- ``POST /api/publish/<subject>[?type=T]``: the body (a JSON object, else ``{"text": body}``)
  published as a site event (``Core.publish``); answer ``{"id": ..., "reached": n}``.
- ``POST /api/publish`` with ``{"events": [{"subject": ..., "type": ..., "data": {...}}, ...]}``:
  up to :data:`MAX_BATCH_EVENTS` events in one request, all checked before any is sent
  (``Core.publish_many``); answer ``{"results": [{"id": ..., "reached": n}, ...]}`` in order.
- ``GET /api/subjects/<subject>``: subscriber and online counts (Nchan's channel info).
- ``GET /api/openapi.json``: the OpenAPI 3 document of all of the above, built from the IDL.

Every request but the OpenAPI document needs ``Authorization: Bearer <API token>``
(:mod:`presenced.apitokens`): ``publish`` tokens may publish and read subjects, ``admin``
tokens everything. Bad tokens count in the auth guard per address, as stream tokens do.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional
from urllib.parse import unquote

import orjson
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource
from thriftpy2.thrift import TException
from zope.interface import implementer

from presenced.apitokens import UNKNOWN, ApiToken
from presenced.core import Core, ILeanResource
from presenced.events import Event
from presenced.httphead import RequestHead
from presenced.store import StoreError
from presenced.subjects import DEFAULT_EVENT_TYPE, BadEvent
from presenced.thrift import jsonspec
from presenced.thrift.dispatch import describe
from presenced.users import BadUser

DOOR = "api"
# Events in one POST /api/publish (~25 ms of work when each reaches one stream; a batch
# reaching many sessions is spread over reactor turns: core.BatchSend).
MAX_BATCH_EVENTS = 1000
BATCH_FIELDS = frozenset(("subject", "type", "data"))
# IDL exceptions -> HTTP status; an exception not listed is a 400.
STATUS = {"BadJid": 400, "InvalidArgument": 400, "UnknownUser": 404, "NotEnabled": 503}
ERRORS = {400: "bad request", 401: "no valid API token", 403: "the token's scope does not "
          "allow this", 404: "no such method, subject or user", 405: "method not allowed",
          409: "conflict", 413: "body too large (or, for a batch, too many events)", 429: "too many bad tokens from this "
          "address", 503: "the store or the feature is unavailable"}


# An answer as both fronts send it: status, body, extra headers.
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
UNAUTHORIZED = [(b"www-authenticate", b'Bearer realm="presenced"')]


class ApiError(Exception):
    """An answer other than 200: ``{"error": name, "message": message}``."""

    def __init__(self, status: int, name: str, message: str):
        super().__init__(message)
        self.status = status
        self.name = name
        self.message = message


class AdminMethod:
    """One IDL method as the HTTP API calls it, computed once from the IDL."""

    def __init__(self, service: Any, handler: object, name: str):
        self.name = name
        self.function = getattr(handler, name)
        self.args = jsonspec.fields(getattr(service, name + "_args"))
        result = getattr(service, name + "_result").thrift_spec
        self.result: Optional[jsonspec.ThriftType] = (jsonspec.field_type(result[0])
                                                      if 0 in result else None)
        self.errors = sorted({STATUS.get(spec[2].__name__, 400)
                              for fid, spec in result.items() if fid != 0} | {400})

    async def call(self, body: dict[str, Any]) -> Any:
        known = dict(self.args)
        unknown = set(body) - set(known)
        if unknown:
            raise ApiError(400, "BadArgument", f"{self.name} takes no argument "
                           f"{sorted(unknown)[0]!r} (arguments: {', '.join(known) or 'none'})")
        try:
            values = [jsonspec.from_json(kind, body.get(name), name) for name, kind in self.args]
        except jsonspec.BadArgument as e:
            raise ApiError(400, "BadArgument", str(e)) from None
        try:
            value = self.function(*values)
            if isinstance(value, defer.Deferred):
                value = await value
        except TException as e:
            name = type(e).__name__
            raise ApiError(STATUS.get(name, 400), name, describe(e)) from None
        return jsonspec.to_json(self.result, value) if self.result is not None else None


class ApiRequest:
    """One ``/api`` request as either front end read it: twisted.web (:class:`AdminAPI` as a
    resource) or the web admin port's lean channel (:meth:`AdminAPI.answer_lean`)."""

    __slots__ = ("method", "path", "query", "authorization", "host", "body")

    def __init__(self, method: str, path: str, query: dict[str, str], authorization: str,
                 host: str, body: bytes):
        self.method = method
        self.path = path            # percent-decoded, from /api on
        self.query = query
        self.authorization = authorization
        self.host = host
        self.body = body


@implementer(ILeanResource)
class AdminAPI(Resource):
    """``/api``: see the module docstring."""

    isLeaf = True
    log = Logger()

    def __init__(self, core: Core, service: Any, handler: object):
        super().__init__()
        self.core = core
        self.methods = {name: AdminMethod(service, handler, name)
                        for name in service.thrift_services}
        self.openapi = json.dumps(openapi_document(self.methods)).encode("utf-8")

    def render(self, request: server.Request) -> Any:
        query = {k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace")
                 for k, v in request.args.items() if v}
        call = ApiRequest(request.method.decode("ascii", "replace"),
                          unquote(request.path.decode("utf-8", "replace")), query,
                          (request.getHeader("authorization") or ""),
                          request.getClientAddress().host, request.content.read())
        answer = self.answer(call)
        if isinstance(answer, defer.Deferred):
            answer.addCallback(self._send, request)
        else:
            self._send(answer, request)
        return server.NOT_DONE_YET

    def answer_lean(self, head: RequestHead, body: bytes, host: str) -> "Answer | defer.Deferred":
        """See :class:`presenced.core.ILeanResource`."""
        call = ApiRequest(head.method, head.path, head.query, head.header(b"authorization"),
                          host, body)
        return self.answer(call)

    def answer(self, call: ApiRequest) -> "Answer | defer.Deferred":
        """``(status, body bytes, extra headers)``, or a Deferred of it."""
        if call.method == "POST" and call.path.startswith("/api/publish/"):
            published = self._publish_at_once(call)
            if published is not None:
                return published
        d = defer.ensureDeferred(self._answer(call))
        d.addErrback(self._failed, call)
        return d.addCallback(_encode)

    def _publish_at_once(self, call: ApiRequest) -> Optional[Answer]:
        """A publish with a valid cached token, a good subject and a good event, answered
        within this call (no coroutine, no Deferred); None for anything else (a token to read
        from the registry, an event held for logins, every error), which :meth:`_answer`
        then handles in full. This is the HTTP publisher's hot path (``bench/comet.py
        --publish http``)."""
        header = call.authorization
        if header[:7].lower() != "bearer " or self.core.auth_guard.refusal(call.host):
            return None
        token = self.core.api_tokens.check_cached(header[7:].strip())
        if token is UNKNOWN or token is None or not token.allows("publish"):
            return None
        try:
            subject = self.core.subject(call.path[13:])
            data = _event_data(call.body)
            sent = self.core.publish_now(subject, call.query.get("type") or DEFAULT_EVENT_TYPE,
                                         data)
        except (BadUser, ApiError, BadEvent):
            return None
        return None if sent is None else _published(sent)

    async def _answer(self, call: ApiRequest) -> tuple[int, Any]:
        path = call.path.split("/", 2)
        rest = path[2] if len(path) > 2 else ""
        kind, _, tail = rest.partition("/")
        method = call.method
        if kind == "openapi.json" and not tail:
            _allow(method, "GET")
            return 200, self.openapi
        if kind in ("publish", "subjects") and tail:
            _allow(method, "POST" if kind == "publish" else "GET")
            await self._authorize(call, "publish")
            subject = self._subject(tail)
            if kind == "publish":
                return 200, await self._publish(call, subject)
            return 200, await self._subject_info(subject)
        if kind == "publish":
            _allow(method, "POST")
            await self._authorize(call, "publish")
            return 200, await self._publish_batch(call)
        found = self.methods.get(kind) if not tail else None
        if found is None:
            raise ApiError(404, "NotFound", f"no such API path /api/{rest} (see "
                                            "/api/openapi.json)")
        _allow(method, "POST")
        await self._authorize(call, "admin")
        return 200, {"result": await found.call(_json_object(call.body))}

    async def _authorize(self, call: ApiRequest, scope: str) -> ApiToken:
        header = call.authorization.strip()
        if not header.lower().startswith("bearer "):
            self.core.metrics.inc("presenced_auth_failures_total", door=DOOR)
            raise ApiError(401, "Unauthorized", "an API token is required: Authorization: "
                                                "Bearer <token from presencedctl api-token>")
        host = call.host
        guard = self.core.auth_guard
        wait = guard.refusal(host)
        if wait:
            raise ApiError(429, "TooManyFailures", "too many bad tokens from this address: "
                                                   f"try again in {math.ceil(wait)} seconds")
        token = await self.core.api_tokens.check(header[7:].strip())
        if token is None:
            self.core.metrics.inc("presenced_auth_failures_total", door=DOOR)
            guard.failed(DOOR, host)
            raise ApiError(401, "Unauthorized", "the token is not valid (unknown, expired or "
                                                "revoked)")
        if not token.allows(scope):
            raise ApiError(403, "Forbidden", f"a {token.scope} token may not call admin "
                                             "methods: use an admin token")
        return token

    def _subject(self, text: str) -> str:
        try:
            return self.core.subject(text)
        except BadUser as e:
            raise ApiError(400, "BadJid", str(e)) from None

    async def _publish(self, call: ApiRequest, subject: str) -> bytes:
        data = _event_data(call.body)
        kind = call.query.get("type") or DEFAULT_EVENT_TYPE
        try:
            answer = await self.core.publish(subject, kind, data)
        except BadEvent as e:
            raise ApiError(400, "InvalidArgument", str(e)) from None
        return _published(answer)[1]

    async def _publish_batch(self, call: ApiRequest) -> bytes:
        items = [self._batch_item(n, item)
                 for n, item in enumerate(_batch_events(_json_object(call.body)))]
        try:
            sent = await self.core.publish_many(items)
        except BadEvent as e:
            raise ApiError(400, "InvalidArgument", str(e)) from None
        return b'{"results": [%s]}' % b", ".join(
            b'{"id": %d, "reached": %d}' % (event.id, reached) for event, reached in sent)

    def _batch_item(self, n: int, item: Any) -> tuple[str, str, dict]:
        """One event of a batch as ``(subject, type, data)``; ApiError naming ``events[n]``."""
        if not isinstance(item, dict) or not isinstance(item.get("subject"), str):
            raise ApiError(400, "BadArgument", f"events[{n}] must be an object with a "
                           '"subject" string (and "type", "data")')
        unknown = set(item) - BATCH_FIELDS
        if unknown:
            raise ApiError(400, "BadArgument", f"events[{n}] has no field "
                           f"{sorted(unknown)[0]!r} (fields: subject, type, data)")
        kind = item.get("type", DEFAULT_EVENT_TYPE)
        data = item.get("data", {})
        if not isinstance(kind, str) or not isinstance(data, dict):
            raise ApiError(400, "BadArgument", f"events[{n}]: type must be a string and data "
                                               "a JSON object")
        try:
            subject = self.core.subject(item["subject"])
        except BadUser as e:
            raise ApiError(400, "BadJid", f"events[{n}]: {e}") from None
        return subject, kind, data

    async def _subject_info(self, subject: str) -> dict[str, Any]:
        router = self.core.router
        subscribers = await self.core.store.get_subscribers(subject)
        online = [u for u in subscribers if router.is_online_anywhere(u)]
        return {"subject": subject, "subscribers": len(subscribers),
                "online_subscribers": len(online),
                "sessions": sum(len(router.sessions(u)) for u in [subject, *subscribers])}

    def _failed(self, failure, call: ApiRequest) -> tuple[int, Any]:
        error = failure.value
        if isinstance(error, ApiError):
            return error.status, {"error": error.name, "message": error.message}
        if isinstance(error, StoreError):
            return 503, {"error": "StoreUnavailable", "message": f"store unavailable: {error}"}
        self.log.failure("HTTP API {path} failed", failure, path=call.path)
        return 500, {"error": "InternalError", "message": "internal error; the server log "
                                                          "has details"}

    def _send(self, answer: Answer, request: server.Request) -> None:
        if request._disconnected:
            return
        status, body, extra = answer
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        for name, value in extra:
            request.setHeader(name, value)
        request.setHeader(b"content-length", b"%d" % len(body))  # not chunked: one write
        request.write(body)
        request.finish()


def _encode(answer: tuple[int, Any]) -> Answer:
    """``(status, body, extra headers)`` on the wire: a JSON body as UTF-8, a 401's
    challenge."""
    status, body = answer
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    return status, data, UNAUTHORIZED if status == 401 else []


def _published(answer: tuple[Event, int]) -> Answer:
    event, reached = answer
    return 200, b'{"id": %d, "reached": %d}' % (event.id, reached), []


def _event_data(raw: bytes) -> dict[str, Any]:
    """A publish body as the event's data: a JSON object as it is, other UTF-8 text as
    ``{"text": body}``."""
    try:
        data = _decode_json(raw) if raw.strip() else {}
    except ValueError:
        data = None
    if isinstance(data, dict):
        return data
    try:
        return {"text": raw.decode("utf-8")}
    except UnicodeDecodeError:
        raise ApiError(400, "InvalidArgument", "a body that is not a JSON object "
                                               "must be UTF-8 text") from None


def _decode_json(raw: bytes) -> Any:
    """orjson's decoding of ``raw`` (a tenth of json.loads's time, a publish's hot path);
    what it refuses is read by json.loads, so every body reads as before (json also takes
    integers past 64 bits, NaN, UTF-16, lone surrogates)."""
    try:
        return orjson.loads(raw)
    except ValueError:
        return json.loads(raw)


def _batch_events(body: dict[str, Any]) -> list[Any]:
    """The ``events`` list of a batch body, one event or more and at most
    :data:`MAX_BATCH_EVENTS`."""
    events = body.get("events")
    if set(body) != {"events"} or not isinstance(events, list) or not events:
        raise ApiError(400, "BadArgument", 'a batch is {"events": [{"subject": ..., "type": '
                                           '..., "data": {...}}, ...]} with one event or more')
    if len(events) > MAX_BATCH_EVENTS:
        raise ApiError(413, "TooManyEvents", f"{len(events)} events in one request; at most "
                                             f"{MAX_BATCH_EVENTS}")
    return events


def _allow(method: str, allowed: str) -> None:
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise ApiError(405, "MethodNotAllowed", f"use {allowed} here, not {method}")


def _json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = _decode_json(raw)
    except ValueError as e:
        raise ApiError(400, "BadRequest", f"the body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest", "the body must be a JSON object of named arguments")
    return body


def openapi_document(methods: dict[str, AdminMethod]) -> dict[str, Any]:
    """The OpenAPI 3 description of ``/api``, from the same method table the API serves."""
    components: dict[str, Any] = {}
    error = {"description": "an error", "content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/Error"}}}}

    def errors(codes: list[int]) -> dict[str, Any]:
        return {str(c): {**error, "description": ERRORS[c]} for c in sorted(set(codes))}

    paths: dict[str, Any] = {}
    for name, method in sorted(methods.items()):
        arguments = {arg: jsonspec.schema(kind, components) for arg, kind in method.args}
        result = (jsonspec.schema(method.result, components) if method.result is not None
                  else {"nullable": True, "description": "null (a void method)"})
        paths[f"/api/{name}"] = {"post": {
            "operationId": name, "summary": f"PresencedAdmin.{name} (Thrift IDL)",
            "security": [{"apiToken": ["admin"]}],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {
                "type": "object", "properties": arguments, "additionalProperties": False}}}},
            "responses": {"200": {"description": "done", "content": {"application/json": {
                "schema": {"type": "object", "properties": {"result": result},
                           "required": ["result"]}}}},
                          **errors(method.errors + [401, 403, 503])}}}
    subject = {"name": "subject", "in": "path", "required": True,
               "schema": {"type": "string"},
               "description": "a user (alice@example.com, or alice: the first domain) or a "
                              "topic (artist/radiohead)"}
    published = {"type": "object", "required": ["id", "reached"], "properties": {
        "id": {"type": "integer"}, "reached": {"type": "integer"}}}
    paths["/api/publish/{subject}"] = {"post": {
        "operationId": "publish", "summary": "publish a site event to the subject's followers",
        "security": [{"apiToken": ["publish"]}],
        "parameters": [subject, {"name": "type", "in": "query", "required": False,
                                 "schema": {"type": "string", "default": DEFAULT_EVENT_TYPE}}],
        "requestBody": {"required": False, "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/plain": {"schema": {"type": "string"}}}},
        "responses": {"200": {"description": "sent", "content": {"application/json": {
            "schema": published}}},
                      **errors([400, 401, 403, 413, 503])}}}
    event = {"type": "object", "required": ["subject"], "additionalProperties": False,
             "properties": {"subject": {"type": "string"},
                            "type": {"type": "string", "default": DEFAULT_EVENT_TYPE},
                            "data": {"type": "object"}}}
    paths["/api/publish"] = {"post": {
        "operationId": "publish_batch",
        "summary": f"publish up to {MAX_BATCH_EVENTS} site events, all checked before any "
                   "is sent",
        "security": [{"apiToken": ["publish"]}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["events"], "additionalProperties": False,
            "properties": {"events": {"type": "array", "minItems": 1,
                                      "maxItems": MAX_BATCH_EVENTS, "items": event}}}}}},
        "responses": {"200": {"description": "sent, results in order", "content": {
            "application/json": {"schema": {"type": "object", "required": ["results"],
                                            "properties": {"results": {
                                                "type": "array", "items": published}}}}}},
                      **errors([400, 401, 403, 413, 503])}}}
    paths["/api/subjects/{subject}"] = {"get": {
        "operationId": "subject_info", "summary": "subscribers and online sessions",
        "security": [{"apiToken": ["publish"]}], "parameters": [subject],
        "responses": {"200": {"description": "counts", "content": {"application/json": {
            "schema": {"type": "object", "required": ["subject", "subscribers"],
                       "properties": {"subject": {"type": "string"},
                                      "subscribers": {"type": "integer"},
                                      "online_subscribers": {"type": "integer"},
                                      "sessions": {"type": "integer"}}}}}},
                      **errors([400, 401, 403, 503])}}}
    components["Error"] = {"type": "object", "required": ["error", "message"], "properties": {
        "error": {"type": "string"}, "message": {"type": "string"}}}
    return {"openapi": "3.0.3",
            "info": {"title": "presenced HTTP API", "version": "1",
                     "description": "The PresencedAdmin Thrift service as JSON, and the HTTP "
                                    "publisher (docs/http-api.md)."},
            "paths": paths,
            "components": {"schemas": components, "securitySchemes": {
                "apiToken": {"type": "http", "scheme": "bearer",
                             "description": "presencedctl api-token [--scope publish|admin]"}}}}

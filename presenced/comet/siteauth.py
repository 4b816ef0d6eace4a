"""Stream authorization by the site (``[comet] authorize_url``), as Nchan's
``nchan_authorize_request``: a stream, poll or WebSocket request without a token is allowed
when the site, asked with the browser's cookies, names the user.

presenced sends ``GET <authorize_url>`` with the request's ``Cookie``, ``Origin`` and
``User-Agent``, ``X-Forwarded-For`` (the browser's address) and ``X-Original-URI`` (the
stream path). The site answers ``200 {"user": "alice@example.com"}`` to allow (a bare local
part means the first domain), 401 or 403 to refuse; anything else, no answer within
``authorize_timeout``, or a site that cannot be reached is a 503 for the browser, never an
open stream. Answers, refusals included, are kept ``authorize_cache_seconds`` per cookie and
path (at most ``authorize_cache_size`` of them), so a reconnecting crowd asks the site once.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Optional, Union

from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IReactorTime
from twisted.web.client import Agent, ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers

from presenced.httphead import HTTPError

MAX_ANSWER_BYTES = 4096
Verdict = Union[str, HTTPError]


class _Body(protocol.Protocol):
    """Collects a response body of at most MAX_ANSWER_BYTES."""

    def __init__(self, done: defer.Deferred):
        self.done = done
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > MAX_ANSWER_BYTES:
            self.transport.stopProducing()

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        if reason.check(ResponseDone) and len(self.data) <= MAX_ANSWER_BYTES:
            self.done.callback(self.data)
        else:
            self.done.errback(ValueError("the answer was cut or too large"))


class SiteAuthorizer:
    """Asks the site who a stream request is for; see the module docstring."""

    def __init__(self, reactor: IReactorTime, url: str, timeout: float, cache_seconds: float,
                 cache_size: int, read_user):
        self.reactor = reactor
        self.url = url.encode("utf-8")
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.cache_size = cache_size
        self.read_user = read_user  # Core.user: the site's answer as a bare JID
        self.agent = Agent(reactor, connectTimeout=timeout)
        self.cache: OrderedDict[tuple[bytes, str], tuple[Verdict, float]] = OrderedDict()
        self.asked = 0  # requests sent to the site (metrics, tests)

    async def user_for(self, headers: dict[bytes, bytes], path: str, host: str) -> str:
        """The user the site allows this request for; raises :class:`HTTPError` 403/503."""
        key = (headers.get(b"cookie", b""), path)
        now = self.reactor.seconds()
        cached = self.cache.get(key)
        if cached is not None and cached[1] > now:
            verdict = cached[0]
        else:
            verdict = await self._ask(headers, path, host)
            if self.cache_seconds > 0:
                self.cache[key] = (verdict, now + self.cache_seconds)
                self.cache.move_to_end(key)
                while len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
        if isinstance(verdict, HTTPError):
            raise verdict
        return verdict

    async def _ask(self, headers: dict[bytes, bytes], path: str, host: str) -> Verdict:
        sent = Headers({b"x-forwarded-for": [host.encode("latin-1")],
                        b"x-original-uri": [path.encode("utf-8")]})
        for name in (b"cookie", b"origin", b"user-agent"):
            if name in headers:
                sent.setRawHeaders(name, [headers[name]])
        self.asked += 1
        try:
            d = self.agent.request(b"GET", self.url, sent)
            d.addTimeout(self.timeout, self.reactor)
            response = await d
            if response.code in (401, 403):
                response.deliverBody(_Discard())
                return HTTPError(403, "the site does not allow this stream")
            if response.code != 200:
                response.deliverBody(_Discard())
                return HTTPError(503, f"the site's authorization answered {response.code}")
            done: defer.Deferred = defer.Deferred()
            response.deliverBody(_Body(done))
            done.addTimeout(self.timeout, self.reactor)
            answer = json.loads(await done)
            return self.read_user(answer["user"])
        except (defer.TimeoutError, error.ConnectError, error.DNSLookupError, ResponseFailed,
                OSError, ValueError, KeyError, TypeError) as e:
            return HTTPError(503, f"the site's authorization failed: {type(e).__name__}")


class _Discard(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        pass


def make_authorizer(reactor: IReactorTime, settings, read_user) -> Optional[SiteAuthorizer]:
    """The door's authorizer, or None when ``[comet] authorize_url`` is empty."""
    if not settings.authorize_url:
        return None
    return SiteAuthorizer(reactor, settings.authorize_url, settings.authorize_timeout,
                          settings.authorize_cache_seconds, settings.authorize_cache_size,
                          read_user)

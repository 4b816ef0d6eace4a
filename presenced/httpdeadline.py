"""A deadline and a body size limit for every request on the twisted.web parts of the HTTP
doors.

twisted.web's timeout is an idle timeout, reset by every byte received: a body sent a byte at a
time is held as long as the client likes. :class:`DeadlineChannel` makes it a deadline. The
Site's ``timeout`` starts when the channel waits for a request (connection made, previous
response done), twisted.web pauses it while a request is processed, and bytes arriving do not
move it. A request still incomplete at the deadline gets 408; a connection that sent nothing
of a next request is simply closed, as an idle keep-alive connection is anywhere.

twisted.web also takes any body, spooling a large one to a temporary file. The channel asks
its site's ``body_limit(method, path)`` (bytes; absent: no limit) once the head is in: a
declared ``Content-Length`` above it gets 413 before a byte of the body is read, and a
chunked body is counted as it arrives and gets 413 the moment it passes the limit. The
connection is closed either way, and nothing more of it is read.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.web import http

_BODY = b'{"error":"request not received in time"}'
TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BODY), _BODY))
_TOO_LARGE = b'{"error":"RequestTooLarge","message":"request body too large for this server"}'
TOO_LARGE_RESPONSE = (b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                      % (len(_TOO_LARGE), _TOO_LARGE))


class DeadlineChannel(http.HTTPChannel):
    """An HTTP/1.1 channel whose timeout bounds the whole request, head and body."""

    request_started = False
    body_refused = False
    body_left: Optional[int] = None  # bytes the body of the request under way may still take

    def resetTimeout(self) -> None:
        """Bytes arriving do not move the deadline (the point of this class)."""

    def dataReceived(self, data: bytes) -> None:
        self.request_started = True
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self.request_started = False
        self.body_left = None
        super().allContentReceived()

    def allHeadersReceived(self) -> None:
        """Refuse a body larger than the site's limit for this request before reading it;
        count a chunked one as it comes."""
        body_limit = getattr(self.site, "body_limit", None)
        limit = body_limit(self._command, self._path) if body_limit is not None else None
        if limit is not None:
            if self.length is not None and self.length > limit:
                self.refuse_body()
                return
            self.body_left = limit
            decoder = self._transferDecoder
            if decoder is not None:
                decoder.dataCallback = self._counted(decoder.dataCallback)
        super().allHeadersReceived()

    def _counted(self, deliver: Callable[[bytes], None]) -> Callable[[bytes], None]:
        def count(data: bytes) -> None:
            if self.body_left is not None:
                self.body_left -= len(data)
                if self.body_left < 0:
                    self.refuse_body()
                    return
            deliver(data)
        return count

    def refuse_body(self) -> None:
        """413 and close; the rest of the body is never read."""
        self.body_refused = True
        self.transport.write(TOO_LARGE_RESPONSE)
        self.loseConnection()

    def rawDataReceived(self, data: bytes) -> None:
        if not self.body_refused:
            super().rawDataReceived(data)

    def timeoutConnection(self) -> None:
        """Answer 408 if a request was under way, and close (no log line per client: a
        flood of slow clients must not become a flood of log lines)."""
        if self.request_started:
            self.transport.write(TIMEOUT_RESPONSE)
        self.loseConnection()

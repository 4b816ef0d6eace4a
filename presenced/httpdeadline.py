"""A deadline for every request on the twisted.web parts of the HTTP doors.

twisted.web's timeout is an idle timeout, reset by every byte received: a body sent a byte at a
time is held as long as the client likes. :class:`DeadlineChannel` makes it a deadline. The
Site's ``timeout`` starts when the channel waits for a request (connection made, previous
response done), twisted.web pauses it while a request is processed, and bytes arriving do not
move it. A request still incomplete at the deadline gets 408; a connection that sent nothing
of a next request is simply closed, as an idle keep-alive connection is anywhere.

A site with a ``max_body_bytes`` attribute also bounds request bodies: a larger
``Content-Length``, or more body bytes than that arriving (chunked), is answered 413 and the
connection closed, before twisted.web buffers the body.
"""

from __future__ import annotations

from twisted.web import http

from typing import Optional

_BODY = b'{"error":"request not received in time"}'
TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BODY), _BODY))
_LARGE = b'{"error":"RequestTooLarge","message":"the request body is larger than this server takes"}'
TOO_LARGE_RESPONSE = (b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                      % (len(_LARGE), _LARGE))


class DeadlineChannel(http.HTTPChannel):
    """An HTTP/1.1 channel whose timeout bounds the whole request, head and body."""

    request_started = False
    body_left: Optional[int] = None  # body bytes the current request may still send
    refused = False  # answered 413: what else arrives is dropped until the close

    def resetTimeout(self) -> None:
        """Bytes arriving do not move the deadline (the point of this class)."""

    def dataReceived(self, data: bytes) -> None:
        self.request_started = True
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        limit: Optional[int] = getattr(self.site, "max_body_bytes", None)
        self.body_left = limit
        if limit is not None and self.length is not None and self.length > limit:
            self._too_large()
            return
        super().allHeadersReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        if self.body_left is not None:
            self.body_left -= len(data)
            if self.body_left < 0:
                self._too_large()
                return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        self.request_started = False
        self.body_left = None
        super().allContentReceived()

    def _too_large(self) -> None:
        self.refused = True
        self.transport.write(TOO_LARGE_RESPONSE)
        self.loseConnection()

    def timeoutConnection(self) -> None:
        """Answer 408 if a request was under way, and close (no log line per client: a
        flood of slow clients must not become a flood of log lines)."""
        if self.request_started:
            self.transport.write(TIMEOUT_RESPONSE)
        self.loseConnection()

"""A deadline for every request on the twisted.web parts of the HTTP doors.

twisted.web's timeout is an idle timeout, reset by every byte received: a body sent a byte at a
time is held as long as the client likes. :class:`DeadlineChannel` makes it a deadline. The
Site's ``timeout`` starts when the channel waits for a request (connection made, previous
response done), twisted.web pauses it while a request is processed, and bytes arriving do not
move it. A request still incomplete at the deadline gets 408; a connection that sent nothing
of a next request is simply closed, as an idle keep-alive connection is anywhere.
"""

from __future__ import annotations

from twisted.web import http

_BODY = b'{"error":"request not received in time"}'
TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BODY), _BODY))


class DeadlineChannel(http.HTTPChannel):
    """An HTTP/1.1 channel whose timeout bounds the whole request, head and body."""

    request_started = False

    def resetTimeout(self) -> None:
        """Bytes arriving do not move the deadline (the point of this class)."""

    def dataReceived(self, data: bytes) -> None:
        self.request_started = True
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self.request_started = False
        super().allContentReceived()

    def timeoutConnection(self) -> None:
        """Answer 408 if a request was under way, and close (no log line per client: a
        flood of slow clients must not become a flood of log lines)."""
        if self.request_started:
            self.transport.write(TIMEOUT_RESPONSE)
        self.loseConnection()

"""Load clients of the XMPP web transports for bench/xmpp.py (``--transport websocket`` or
``bosh``), on asyncio, with the same reader/writer shape as the TCP client's streams.

- :func:`open_websocket`: RFC 7395 over wsproto; each write is sent as one text message per
  stanza; reads return the received messages' text, stream framing translated back into
  what the TCP client reads (``<open/>`` is dropped, ``<stream:features`` kept).
- :class:`BoshClient`: XEP-0206 sessions, one POST per request on a connection of its own
  (the HTTP door closes after each); a session's reads are answers to held requests.
"""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Optional

from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, CloseConnection, Message, Ping, Request,
                            TextMessage)

OPEN = b"<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>"
STANZA_START = re.compile(rb"(?=<(?:message|presence|iq|enable|a|r)[\s/>])")


class WebSocketStream:
    """Reader and writer of one XMPP WebSocket (the TCP bench client's two objects in one)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.inbox = bytearray()
        self.text: list[str] = []

    async def handshake(self, port: int) -> None:
        self.writer.write(self.ws.send(Request(host=f"127.0.0.1:{port}",
                                               target="/xmpp-websocket",
                                               subprotocols=["xmpp"])))
        while True:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("closed during the WebSocket handshake")
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    return

    async def read(self, size: int) -> bytes:
        while not self.inbox:
            data = await self.reader.read(size)
            if not data:
                return b""
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    self.text.append(event.data)
                    if event.message_finished:
                        self.inbox += "".join(self.text).encode("utf-8")
                        self.text.clear()
                elif isinstance(event, Ping):
                    self.writer.write(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    return b""
        out = bytes(self.inbox)
        self.inbox.clear()
        return out

    def write(self, data: bytes) -> None:
        """Each stanza (or framing element) as one message, as RFC 7395 has it."""
        for part in STANZA_START.split(data):
            if part:
                self.writer.write(self.ws.send(Message(data=part.decode("utf-8"))))

    async def drain(self) -> None:
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


async def open_websocket(port: int) -> WebSocketStream:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    stream = WebSocketStream(reader, writer)
    await stream.handshake(port)
    return stream


async def websocket_login_plain(port: int, user: str, password: str):
    """Open, SASL PLAIN, restart, bind, presence; returns (reader, writer, buffer) as the
    TCP client's login does (the stream is both reader and writer)."""
    ws = await open_websocket(port)
    buffer = bytearray()
    ws.write(OPEN)
    await until(ws, buffer, b"</stream:features>")
    token = base64.b64encode(f"\0{user}\0{password}".encode())
    ws.write(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>"
             % token)
    await until(ws, buffer, b"<success")
    ws.write(OPEN)
    await until(ws, buffer, b"</stream:features>")
    ws.write(b"<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:"
             b"xml:ns:xmpp-bind'><resource>b</resource></bind></iq>")
    ws.write(b"<presence xmlns='jabber:client'/>")
    await until(ws, buffer, b"</iq>")
    return ws, ws, buffer


async def until(stream, buffer: bytearray, token: bytes) -> None:
    while True:
        index = buffer.find(token)
        if index >= 0:
            del buffer[:index + len(token)]
            return
        data = await stream.read(65536)
        if not data:
            raise ConnectionError(f"closed waiting for {token!r}: {bytes(buffer[-300:])!r}")
        buffer += data


class BoshClient:
    """One BOSH session."""

    def __init__(self, port: int, rid: int = 1000):
        self.port = port
        self.rid = rid
        self.sid: Optional[str] = None
        self.held: Optional[asyncio.Task] = None

    async def request(self, inner: bytes = b"", attrs: bytes = b"") -> bytes:
        self.rid += 1
        sid = b" sid='%s'" % self.sid.encode() if self.sid else b""
        body = (b"<body xmlns='http://jabber.org/protocol/httpbind' xmlns:xmpp='urn:xmpp:xbosh'"
                b" rid='%d'%s%s>%s</body>" % (self.rid, sid, attrs, inner))
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"POST /http-bind HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml"
                     b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        data = await reader.read()
        writer.close()
        head, _, answer = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"BOSH answered {head[:40]!r}: {answer[:200]!r}")
        return answer

    async def login_plain(self, user: str, password: str) -> None:
        created = await self.request(attrs=b" to='localhost' wait='60' hold='1' "
                                           b"xmpp:version='1.0'")
        self.sid = re.search(rb"sid='([^']+)'", created).group(1).decode()
        token = base64.b64encode(f"\0{user}\0{password}".encode())
        answer = await self.request(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' "
                                    b"mechanism='PLAIN'>%s</auth>" % token)
        if b"<success" not in answer:
            raise PermissionError(answer[:200])
        await self.request(attrs=b" xmpp:restart='true' to='localhost'")
        await self.request(b"<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:"
                           b"ietf:params:xml:ns:xmpp-bind'><resource>b</resource></bind></iq>"
                           b"<presence xmlns='jabber:client'/>")

    def hold(self) -> None:
        """Keep one request held, as an idle client does (a new one when it is answered)."""
        async def again() -> None:
            while True:
                await self.request()

        self.held = asyncio.ensure_future(again())

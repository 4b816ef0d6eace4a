"""XMPP streams in memory: the c2s door's real :class:`~presenced.xmpp.server.C2SServer` with
every handler of ``FEATURES``, over a real :class:`~presenced.core.Core` and an embedded store
in a temporary directory, with clients on ``StringTransport``s instead of sockets.

Nothing is faked between the bytes a client sends and the bytes it gets back: a client
opens the stream, authenticates with SASL PLAIN and binds a resource exactly as over TCP
(``C2SStream.dataReceived``); only twistd, TCP and TLS are missing. Use it for server logic
(rosters, presence, subscriptions, routing, offline storage, PEP, disco...); keep real
clients and processes for TLS, SCRAM, sockets, config and the process itself.

The store answers from its worker thread through the reactor, so tests run on the reactor
(``@pytest_twisted.ensureDeferred async def``) and wait for stanzas with :meth:`expect`.
"""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

from twisted.internet import reactor, task
from twisted.internet.testing import StringTransport
from twisted.words.xish import domish

from presenced import config
from presenced.core import Core
from presenced.store.backends import make_store
from presenced.xmpp.caps import caps_hash, parse_disco_info
from presenced.xmpp.server import C2SServer
from presenced.xmpp.service import FEATURES
from presenced.xmpp.stanzas import to_bytes

HEADER = (b"<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_CAPS = "http://jabber.org/protocol/caps"
TIMEOUT = 5.0
QUIET = 0.3  # how long "nothing arrives" is watched for: every hop is in this process
Stanza = domish.Element
Match = Union[str, Callable[[Stanza], bool]]


def sleep(seconds: float):
    return task.deferLater(reactor, seconds, lambda: None)


class MemoryServer:
    """A node's XMPP door without a process: call :meth:`start` (a Deferred-returning
    coroutine) first and :meth:`stop` last. ``sections`` override the config."""

    def __init__(self, directory: Path, sections: Optional[dict[str, dict[str, Any]]] = None):
        overrides: dict[str, dict[str, Any]] = {
            "server": {"data_dir": str(directory), "scram_iterations": 64},
            "xmpp": {"require_tls": False, "allow_plain": True, "auth_failure_delay": 0.0}}
        for section, values in (sections or {}).items():
            overrides.setdefault(section, {}).update(values)
        self.config = config.load(None, overrides)
        self.store = make_store(self.config)
        self.core = Core(self.config, self.store)
        self.server: Optional[C2SServer] = None
        self.clients: list[MemoryClient] = []

    async def start(self) -> "MemoryServer":
        await self.store.start()
        self.server = C2SServer(self.core, None, FEATURES)
        return self

    async def stop(self) -> None:
        for client in self.clients:
            client.disconnect()
        await self.store.stop()

    async def add_users(self, *users: str, password: str = "pw") -> None:
        """``presencedctl adduser`` for each of ``users`` (local parts or bare JIDs)."""
        for user in users:
            await self.core.accounts.register(self.core.user(user), password)

    async def add_friends(self, *pairs: tuple[str, str]) -> None:
        """``presencedctl add-friend`` (``Core.add_friends``: online resources are told)."""
        await self.core.add_friends([(self.core.user(a), self.core.user(b)) for a, b in pairs])

    async def settle(self, rounds: int = 6) -> None:
        """Let work the server started finish (what a process test sleeps for): the store
        answers in order from one thread, so after ``rounds`` round trips every chain of
        up to that many lookups begun before (last PEP items on login...) is done."""
        for _ in range(rounds):
            await self.store.user_exists("settle@localhost")
            await sleep(0)

    def open(self) -> "MemoryClient":
        """A connected client that has sent nothing yet."""
        client = MemoryClient(self)
        self.clients.append(client)
        return client

    async def online(self, user: str, resource: str = "test", password: str = "pw",
                     presence: Optional[bytes] = b"<presence/>",
                     features: Optional[list[str]] = None,
                     roster: bool = True) -> "MemoryClient":
        """A client logged in and bound as ``user/resource`` that fetched its roster (as
        clients do: roster pushes go to resources that did) and sent ``presence``
        (None: stays unavailable). With ``features`` it answers the server's disco#info
        like a client with those features and sends them as entity caps."""
        client = self.open()
        client.features = features
        await client.login(user, password, resource)
        if roster:
            await client.iq("<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
        if presence is not None:
            client.send(client.with_caps(presence))
            await self.settle()
        return client


class MemoryClient:
    """One client stream over a ``StringTransport``: bytes in, parsed stanzas out."""

    def __init__(self, node: MemoryServer):
        assert node.server is not None, "start() the MemoryServer first"
        self.node = node
        self.transport = StringTransport()
        self.stream = node.server.build_stream(direct_tls=False)
        self.stream.makeConnection(self.transport)
        self.received: list[Stanza] = []    # stanzas not yet taken by expect()
        self.log: list[Stanza] = []         # every element received, for failure messages
        self.raw = b""                      # every byte received
        self.features: Optional[list[str]] = None
        self.jid: Optional[str] = None
        self.header: Optional[Stanza] = None
        self.stream_features: Optional[Stanza] = None
        self.ended = False
        self.lost = False
        self.outbox: list[bytes] = []  # answers to the server, sent once parsing is done
        self._reset_parser()

    # --- bytes ------------------------------------------------------------------------------

    def _reset_parser(self) -> None:
        """A fresh parser for the server's next stream header (after SASL success)."""
        self.parser = domish.elementStream()
        self.parser.DocumentStartEvent = self._header
        self.parser.ElementEvent = self._element
        self.parser.DocumentEndEvent = self._end

    def _header(self, root: Stanza) -> None:
        self.header = root

    def _end(self) -> None:
        self.ended = True

    def _element(self, element: Stanza) -> None:
        self.log.append(element)
        if element.name == "features":
            self.stream_features = element
        if self._answer_disco(element):
            return
        self.received.append(element)

    def pump(self) -> None:
        """Parse what the server wrote since the last call; a connection the server closed
        is lost here, as TCP would report it."""
        data = self.transport.value()
        if data:
            self.transport.clear()
            self.raw += data
            # Only stream headers start with an XML declaration (text in stanzas is escaped):
            # each starts a new document (the stream restarts after SASL).
            first, *headers = data.split(b"<?xml")
            if first:
                self.parser.parse(first)
            for rest in headers:
                self._reset_parser()
                self.parser.parse(b"<?xml" + rest)
        if self.transport.disconnecting and not self.lost:
            self.lost = True
            self.stream.connectionLost(None)
        while self.outbox and not self.lost:
            self.send(self.outbox.pop(0))

    def send(self, data: Union[bytes, str, Stanza]) -> None:
        if isinstance(data, domish.Element):
            data = to_bytes(data)
        elif isinstance(data, str):
            data = data.encode("utf-8")
        self.stream.dataReceived(data)
        self.pump()

    @property
    def closed(self) -> bool:
        """The server closed the connection."""
        self.pump()
        return self.lost

    def disconnect(self) -> None:
        """The TCP connection goes away (as when a client quits without a clean close)."""
        if not self.lost:
            self.lost = True
            self.transport.loseConnection()
            self.stream.connectionLost(None)

    # --- waiting ------------------------------------------------------------------------------

    def _take(self, match: Match) -> Optional[Stanza]:
        self.pump()
        test = match if callable(match) else (lambda e: match in e.toXml())
        for element in self.received:
            if test(element):
                self.received.remove(element)
                return element
        return None

    async def expect(self, match: Match, timeout: float = TIMEOUT) -> Stanza:
        """The first received stanza that ``match`` accepts (a predicate, or text its XML
        contains), waiting for it; stanzas before it stay for later expectations."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._take(match)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                got = "\n".join(e.toXml() for e in self.received)
                raise AssertionError(f"{self.jid} got no {match!r}; unclaimed:\n{got}")
            await sleep(0.005)

    async def nothing(self, match: Match = lambda e: True, quiet: float = QUIET) -> None:
        """Nothing ``match`` accepts arrives within ``quiet`` seconds."""
        await sleep(quiet)
        found = self._take(match)
        assert found is None, f"{self.jid} got unexpected {found.toXml()}"

    async def iq(self, xml: Union[str, bytes]) -> Stanza:
        """Send an IQ (which must carry an ``id``) and wait for its result or error."""
        text = xml.decode() if isinstance(xml, bytes) else xml
        iq_id = re.search(r"""\bid=['"]([^'"]*)['"]""", text).group(1)
        self.send(text)
        return await self.expect(lambda e: e.name == "iq" and e.getAttribute("id") == iq_id
                                 and e.getAttribute("type") in ("result", "error"))

    # --- negotiation --------------------------------------------------------------------------

    async def login(self, user: str, password: str = "pw", resource: str = "test") -> Stanza:
        """Stream header, SASL PLAIN, restart, bind; returns the bind result (a refused
        login raises PermissionError with the server's answer)."""
        self.send(HEADER)
        await self.expect(lambda e: e.name == "features")
        token = base64.b64encode(f"\0{user}\0{password}".encode())
        self.send(b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>"
                  % token)
        answer = await self.expect(lambda e: e.name in ("success", "failure"))
        if answer.name == "failure":
            raise PermissionError(answer.toXml())
        self.send(HEADER)
        await self.expect(lambda e: e.name == "features")
        bound = await self.iq("<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:"
                              f"xmpp-bind'><resource>{resource}</resource></bind></iq>")
        if bound["type"] != "result":
            raise PermissionError(bound.toXml())
        self.jid = str(next(bound.elements()).firstChildElement())
        return bound

    # --- entity caps --------------------------------------------------------------------------

    def disco_info(self) -> Stanza:
        query = domish.Element((NS_DISCO_INFO, "query"))
        identity = query.addElement("identity")
        identity["category"], identity["type"], identity["name"] = "client", "pc", "memory"
        for var in sorted(set(self.features or ()) | {NS_DISCO_INFO, NS_CAPS}):
            query.addElement("feature")["var"] = var
        return query

    def with_caps(self, presence: bytes) -> bytes:
        """``presence`` with this client's entity caps (XEP-0115) when it has features."""
        if self.features is None or not presence.startswith(b"<presence") or \
                b" type=" in presence.split(b">", 1)[0]:
            return presence
        ver = caps_hash(parse_disco_info(self.disco_info()))
        caps = (b"<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' "
                b"node='urn:presenced:memory' ver='%s'/>" % ver.encode())
        if presence.endswith(b"/>"):
            return presence[:-2] + b">" + caps + b"</presence>"
        return presence[:-len(b"</presence>")] + caps + b"</presence>"

    def _answer_disco(self, element: Stanza) -> bool:
        """Answer the server's disco#info query (it asks to learn our caps) at once, as
        soon as the bytes at hand are parsed: caps are known when ``online()`` returns."""
        if self.features is None or element.name != "iq" or element.getAttribute("type") != "get":
            return False
        query = element.firstChildElement()
        if query is None or (query.uri, query.name) != (NS_DISCO_INFO, "query"):
            return False
        reply = domish.Element((None, "iq"))
        reply["type"], reply["id"] = "result", element["id"]
        reply["to"] = element.getAttribute("from", "localhost")
        info = self.disco_info()
        if query.getAttribute("node"):
            info["node"] = query["node"]
        reply.addChild(info)
        self.outbox.append(to_bytes(reply))
        return True

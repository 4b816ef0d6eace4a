"""How the Thrift door puts replies on the wire, in-process on a real loopback socket."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import defer, reactor

from presenced import config
from presenced.allowlist import Allowlist
from presenced.core import Core
from presenced.thrift import admin
from presenced.thrift.handler import AdminHandler
from presenced.thrift.protocol import AdminFactory


@pytest_twisted.ensureDeferred
async def test_replies_go_out_without_waiting_for_the_clients_acknowledgement(tmp_path):
    """Each reply is sent as its call finishes: with Nagle on, a reply behind an
    unacknowledged one waited for the client's delayed ACK (pipelined publishers stalled)."""
    cfg = config.load(None, {"server": {"data_dir": str(tmp_path)}})
    core = Core(cfg, store=None)  # type: ignore[arg-type]  # no call is made
    factory = AdminFactory(core, admin.PresencedAdmin, AdminHandler(core, reactor), reactor,
                           Allowlist())
    made: defer.Deferred = defer.Deferred()
    build = factory.buildProtocol

    def capture(addr):
        protocol = build(addr)
        reactor.callLater(0, made.callback, protocol)
        return protocol

    factory.buildProtocol = capture
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        protocol = await made
        handle = protocol.transport.getHandle()
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert protocol.budget._write.tcp is not None   # straight to the socket
    finally:
        client.close()
        await port.stopListening()

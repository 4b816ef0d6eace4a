"""XMPP Ping (XEP-0199): the server answers pings addressed to it or to the account."""

from __future__ import annotations

from presenced.xmpp.features import FeatureHandler

NS_PING = "urn:xmpp:ping"


class PingHandler(FeatureHandler):
    routes = {f"iq-get/host/{NS_PING}:ping": "on_ping",
              f"iq-get/self/{NS_PING}:ping": "on_ping"}
    server_features = (NS_PING,)

    def on_ping(self, session, iq) -> None:
        session.result(iq)

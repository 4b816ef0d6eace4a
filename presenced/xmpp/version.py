"""Software Version (XEP-0092) of the server."""

from __future__ import annotations

import platform

from twisted.words.xish import domish

from presenced import __version__
from presenced.xmpp.features import FeatureHandler

NS_VERSION = "jabber:iq:version"


class VersionHandler(FeatureHandler):
    routes = {f"iq-get/host/{NS_VERSION}:query": "on_version"}
    server_features = (NS_VERSION,)

    def on_version(self, session, iq) -> None:
        query = domish.Element((NS_VERSION, "query"))
        query.addElement("name", content="presenced")
        query.addElement("version", content=__version__)
        query.addElement("os", content=platform.system())
        session.result(iq, query)

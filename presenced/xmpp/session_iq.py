"""The legacy session IQ (RFC 3921 3, kept by RFC 6121 as optional): answered after bind.

Old clients (mcabber, early libstrophe) send ``<session/>`` once a resource is bound and wait
for the result before anything else; the stream features mark it ``<optional/>`` so modern
clients skip it. The stream answers it before bind too (some clients send it early)."""

from __future__ import annotations

from twisted.words.xish import domish

from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.stanzas import NS_SESSION


class LegacySessionHandler(FeatureHandler):
    routes = {f"iq-set/host/{NS_SESSION}:session": "on_session",
              f"iq-set/self/{NS_SESSION}:session": "on_session"}

    def on_session(self, session, iq: domish.Element) -> None:
        session.result(iq)

"""Last Activity (XEP-0012, ``jabber:iq:last``): the server's uptime, and for a contact the
seconds since its last resource logged out, with the status it left.

Only those who may see the contact's presence (subscribed to it) get an answer; others get
``forbidden``, as Prosody and ejabberd answer. An online contact is 0 seconds idle (this
server does not track client idle time). The last logout is kept in the account's ``last``
map when its last available XMPP resource on this node goes unavailable.
"""

from __future__ import annotations

import time

from twisted.internet import defer
from twisted.words.xish import domish

from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.session import available_sessions

NS_LAST = "jabber:iq:last"
LAST_STORE = "last"  # map: "logout" -> "<POSIX seconds> <status text>"


class LastActivityHandler(FeatureHandler):
    routes = {f"iq-get/host/{NS_LAST}:query": "on_server",
              f"iq-get/bare/{NS_LAST}:query": "on_contact",
              f"iq-get/self/{NS_LAST}:query": "on_contact"}
    server_features = (NS_LAST,)
    account_features = (NS_LAST,)

    def attached(self) -> None:
        self.core.hooks.add("xmpp-unavailable", self.went_unavailable)

    def went_unavailable(self, session, status: str) -> None:
        """The account's last available resource here went: keep when, and what it said."""
        if available_sessions(self.core, session.user):
            return
        d = self.core.store.open_map(LAST_STORE).set(session.user, "logout",
                                                     f"{int(time.time())} {status}")
        d.addErrback(lambda f: self.log.failure("keeping the last logout of {user}", f,
                                                user=session.user))

    def on_server(self, session, iq: domish.Element) -> None:
        self._answer(session, iq, time.time() - self.core.started_at, "")

    @defer.inlineCallbacks
    def on_contact(self, session, iq: domish.Element):
        contact = iq.getAttribute("to") or session.user
        if contact != session.user:
            following = yield self.core.store.get_subscriptions(session.user)
            if contact not in following or self.core.blocking.hides(session.user, contact):
                session.error(iq, "forbidden", "you may not see this contact's presence")
                return
        if self.core.router.is_online_anywhere(contact):
            self._answer(session, iq, 0, "")
            return
        last = yield self.core.store.open_map(LAST_STORE).get(contact, "logout")
        if last is None:
            session.error(iq, "service-unavailable", "no recorded activity")
            return
        when, _, status = last.partition(" ")
        self._answer(session, iq, time.time() - float(when), status)

    def _answer(self, session, iq: domish.Element, seconds: float, status: str) -> None:
        query = domish.Element((NS_LAST, "query"))
        query["seconds"] = str(max(0, int(seconds)))
        if status:
            query.addContent(status)
        session.result(iq, query)

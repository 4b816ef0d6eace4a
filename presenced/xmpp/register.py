"""In-Band Registration (XEP-0077): account creation before login (off unless
``[xmpp] allow_registration``), password change and account removal after login.

Every change goes through ``core.accounts``: with external auth the program owns the
accounts and gets them (``tryregister``, ``setpass``, ``removeuser``), as from every door.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.words.xish import domish

from presenced.users import BadUser
from presenced.xmpp.features import FeatureHandler
from presenced.xmpp.stanzas import NS_REGISTER, error_reply, result_reply

QUERY = f"{NS_REGISTER}:query"


def _field(query: domish.Element, name: str):
    child = getattr(query, name)
    return str(child) if child is not None else None


class RegisterHandler(FeatureHandler):
    routes = {f"iq-get/self/{QUERY}": "on_get", f"iq-set/self/{QUERY}": "on_set",
              f"iq-get/host/{QUERY}": "on_get", f"iq-set/host/{QUERY}": "on_set"}
    server_features = (NS_REGISTER,)

    def __init__(self, server) -> None:
        super().__init__(server)
        if self.core.config.xmpp.allow_registration:
            self.pre_auth_routes = {NS_REGISTER: "pre_auth"}
        else:
            self.pre_auth_routes = {}
            self.server_features = ()

    def _form(self, username: str = "") -> domish.Element:
        query = domish.Element((NS_REGISTER, "query"))
        query.addElement("instructions", content="Choose a user name and password.")
        if username:
            query.addElement("registered")
        query.addElement("username", content=username)
        query.addElement("password")
        return query

    # --- before authentication -------------------------------------------------------------

    def pre_auth(self, stream, iq: domish.Element) -> None:
        if self.server.must_start_tls(stream):
            stream.send(error_reply(iq, "not-authorized", "STARTTLS first"))
        elif iq.getAttribute("type") == "get":
            stream.send(result_reply(iq, self._form()))
        elif iq.getAttribute("type") == "set":
            d = defer.ensureDeferred(self._register(stream, iq))
            d.addErrback(lambda f: (self.log.failure("registration", f),
                                    stream.send(error_reply(iq, "internal-server-error"))))
        else:
            stream.send(error_reply(iq, "bad-request"))

    async def _register(self, stream, iq: domish.Element) -> None:
        query = iq.firstChildElement()
        username, password = _field(query, "username"), _field(query, "password")
        if not username or not password:
            stream.send(error_reply(iq, "not-acceptable", "username and password required"))
            return
        try:
            user = self.core.user(f"{username}@{stream.domain}")
        except BadUser as e:
            stream.send(error_reply(iq, "jid-malformed", str(e)))
            return
        created = await self.core.accounts.register(user, password)
        stream.send(result_reply(iq) if created else error_reply(iq, "conflict"))

    # --- after authentication ----------------------------------------------------------------

    def on_get(self, session, iq) -> None:
        session.result(iq, self._form(session.user.partition("@")[0]))

    @defer.inlineCallbacks
    def on_set(self, session, iq):
        query = iq.firstChildElement()
        if query.remove is not None:
            # The result goes first: removing the account closes this very stream.
            session.result(iq)
            if not (yield self.core.accounts.remove(session.user)):
                self.log.warn("{user} asked to remove their account; it was not removed",
                              user=session.user)
            return
        password = _field(query, "password")
        if not password:
            session.error(iq, "bad-request", "password required")
            return
        if (yield self.core.accounts.set_password(session.user, password)):
            session.result(iq)
        else:
            session.error(iq, "not-acceptable")

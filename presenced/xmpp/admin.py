"""Service administration (XEP-0133) as ad-hoc commands for the JIDs of ``[xmpp] admins``.

Every command is a core operation (``core.accounts``, the router, ``core.send_message``):
what the Thrift admin, the web console and ``presencedctl`` do, offered to an operator's
Jabber client. Users that are not admins see none of them in disco and get ``forbidden``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from presenced.users import BadUser
from presenced.xmpp.adhoc import AdHocHandler, Command, CommandRefused, Outcome

if TYPE_CHECKING:
    from presenced.xmpp.session import C2SSession

NS_ADMIN = "http://jabber.org/protocol/admin"
ONLINE_LIST_LIMIT = 1000     # JIDs in one get-online-users-list answer
ACCOUNTS = {"type": "jid-multi", "label": "The accounts", "required": True}


class AdminCommand(Command):
    form_type = NS_ADMIN

    def accounts(self, values: dict[str, Any], var: str = "accountjids") -> list[str]:
        """The local bare JIDs of a JID field (:class:`CommandRefused` for a foreign one)."""
        found = values.get(var) or []
        try:
            return [self.core.local_user(jid.userhost()) for jid in
                    (found if isinstance(found, list) else [found])]
        except BadUser as e:
            raise CommandRefused(str(e)) from None


class AddUser(AdminCommand):
    node = f"{NS_ADMIN}#add-user"
    name = "Add a user"
    fields = {"accountjid": {"type": "jid-single", "label": "The Jabber ID", "required": True},
              "password": {"type": "text-private", "label": "The password", "required": True},
              "password-verify": {"type": "text-private", "label": "The password again",
                                  "required": True}}

    async def run(self, session: "C2SSession", values: dict[str, Any]) -> Outcome:
        user = self.accounts(values, "accountjid")[0]
        if values["password"] != values["password-verify"]:
            return Outcome("the two passwords differ", failed=True)
        if not await self.core.accounts.register(user, values["password"]):
            return Outcome(f"{user} exists already", failed=True)
        return Outcome(f"{user} added")


class DeleteUser(AdminCommand):
    node = f"{NS_ADMIN}#delete-user"
    name = "Delete users"
    fields = {"accountjids": ACCOUNTS}

    async def run(self, session: "C2SSession", values: dict[str, Any]) -> Outcome:
        removed, unknown = [], []
        for user in self.accounts(values):
            (removed if await self.core.accounts.remove(user) else unknown).append(user)
        note = f"deleted: {', '.join(removed) or 'none'}"
        return Outcome(note + (f"; no such account: {', '.join(unknown)}" if unknown else ""),
                       failed=bool(unknown))


class ChangePassword(AdminCommand):
    node = f"{NS_ADMIN}#change-user-password"
    name = "Change a user's password"
    fields = {"accountjid": {"type": "jid-single", "label": "The Jabber ID", "required": True},
              "password": {"type": "text-private", "label": "The new password",
                           "required": True}}

    async def run(self, session: "C2SSession", values: dict[str, Any]) -> Outcome:
        user = self.accounts(values, "accountjid")[0]
        if not await self.core.accounts.set_password(user, values["password"]):
            return Outcome(f"no such account: {user}", failed=True)
        return Outcome(f"password of {user} changed (sessions logged in stay)")


class OnlineUsersCount(AdminCommand):
    node = f"{NS_ADMIN}#get-online-users-num"
    name = "Number of online users"

    async def run(self, session: "C2SSession", values: dict[str, Any]) -> Outcome:
        count = self.core.router.online_users_anywhere()
        return Outcome(f"{count} online", fields={"onlineusersnum": ("text-single", str(count))})


class RegisteredUsersCount(AdminCommand):
    node = f"{NS_ADMIN}#get-registered-users-num"
    name = "Number of registered users"

    async def run(self, session: "C2SSession", values: dict[str, Any]) -> Outcome:
        count = await self.core.store.count_users()
        return Outcome(f"{count} registered",
                       fields={"registeredusersnum": ("text-single", str(count))})


class OnlineUsersList(AdminCommand):
    node = f"{NS_ADMIN}#get-online-users-list"
    name = "List of online users"

    async def run(self, session: "C2SSession", values: dict[str, Any]) -> Outcome:
        users = sorted(online_users(self.core))
        note = f"{len(users)} online"
        if len(users) > ONLINE_LIST_LIMIT:
            note += f", the first {ONLINE_LIST_LIMIT} listed"
        return Outcome(note, fields={
            "onlineuserjids": ("jid-multi", users[:ONLINE_LIST_LIMIT])})


class Announce(AdminCommand):
    node = f"{NS_ADMIN}#announce"
    name = "Send an announcement to online users"
    fields = {"subject": {"type": "text-single", "label": "Subject"},
              "announcement": {"type": "text-multi", "label": "The announcement",
                               "required": True}}

    async def run(self, session: "C2SSession", values: dict[str, Any]) -> Outcome:
        body = values["announcement"]
        body = "\n".join(body) if isinstance(body, list) else body
        users = online_users(self.core)
        for user in users:
            self.core.send_message(session.jid.host, user, body, values.get("subject") or None,
                                   kind="headline")
        return Outcome(f"sent to {len(users)} online users")


class EndUserSession(AdminCommand):
    node = f"{NS_ADMIN}#end-user-session"
    name = "End user sessions"
    fields = {"accountjids": ACCOUNTS}

    async def run(self, session: "C2SSession", values: dict[str, Any]) -> Outcome:
        users = self.accounts(values)
        ended = sum(self.core.router.end_sessions(user, "ended by an administrator")
                    for user in users)
        elsewhere = len(set().union(*(self.core.router.transport.remote_nodes(user)
                                      for user in users)))
        return Outcome(f"{ended} sessions ended on this node" +
                       (f", more on {elsewhere} other nodes" if elsewhere else ""))


def online_users(core) -> set[str]:
    """Users with a session on this node or, in a cluster, on another one."""
    local = {session.user for session in core.router.all_sessions()}
    return local | set(core.router.transport.remote_users())


class AdminCommandsHandler(AdHocHandler):
    """XEP-0133's commands on the server's JID."""

    commands = (AddUser, DeleteUser, ChangePassword, EndUserSession, OnlineUsersCount,
                OnlineUsersList, RegisteredUsersCount, Announce)

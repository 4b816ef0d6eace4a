"""Account existence and authentication: one core service that every door asks.

Accounts live in the store as salted SCRAM keys (never passwords), unless an external
program owns them (``[xmpp] extauth_program``, ejabberd's extauth protocol, see
:mod:`presenced.extauth`). Either way the doors ask ``core.accounts`` -- XMPP (SASL,
registration, disco, messages, subscriptions), Thrift and the web admin -- so no two of them
can disagree about who exists or which password is right.

Deriving keys from a password (PBKDF2, thousands of rounds per hash) costs milliseconds of
CPU, so it runs on the auth guard's check threads, for checks as for new passwords: a login or a
bulk import never stalls the other doors.

Hooks fired here: ``user-removed(user)`` after an account was deleted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from twisted.internet import defer, threads

from presenced.scram import make_credentials, verify_password
from presenced.users import BadUser
from presenced.verified import VerifiedPasswords

if TYPE_CHECKING:
    from presenced.extauth import ExternalAuth
    from presenced.hooks import Hooks
    from presenced.router import SubscriptionRouter
    from presenced.store import IRosterStore


class Accounts:
    """Who exists and with which password: the store's keys, or the external program's say.

    Every method fires a Deferred; none blocks the reactor. User names are normalized bare
    JIDs (``core.user(text)``)."""

    def __init__(self, store: "IRosterStore", router: "SubscriptionRouter", hooks: "Hooks",
                 iterations: int, external: Optional["ExternalAuth"] = None,
                 run_check: Callable[..., defer.Deferred] = threads.deferToThread,
                 domains: tuple[str, ...] = (), verified_cache: int = 0):
        self.store = store
        self.domains = domains  # served domains (empty: any, for tools on a bare store)
        # Where password checks run: the core's auth guard (its bounded check threads).
        self.run_check = run_check
        self.router = router
        self.hooks = hooks
        self.iterations = iterations
        self.external = external
        # Repeat logins with a password just verified skip PBKDF2 (presenced.verified).
        self.verified = VerifiedPasswords(verified_cache)

    @property
    def external_passwords(self) -> bool:
        """True when the external program owns the passwords: the server holds no salted
        keys, so SASL SCRAM cannot be offered, only PLAIN (the password goes to the
        program)."""
        return self.external is not None

    def start(self) -> None:
        """Start the external program pool, if there is one (store accounts need nothing)."""
        if self.external is not None:
            self.external.start()

    def stop(self) -> None:
        if self.external is not None:
            self.external.stop()

    def exists(self, user: str) -> defer.Deferred:
        """Fires True when ``user`` is an account (the program's ``isuser``)."""
        if self.external is not None:
            return self._ask("isuser", user)
        return self.store.user_exists(user)

    def check_password(self, user: str, password: str) -> defer.Deferred:
        """Fires True when ``password`` is ``user``'s (the program's ``auth``); False for
        an unknown user, as for a wrong password."""
        if self.external is not None:
            return self._ask("auth", user, password)
        return defer.ensureDeferred(self._check_stored(user, password))

    async def _check_stored(self, user: str, password: str) -> bool:
        credentials = await self.store.get_credentials(user)
        if credentials is None:
            return False
        if self.verified.known(user, credentials, password):
            return True
        ok = await self.run_check(verify_password, credentials, password)
        if ok:
            self.verified.remember(user, credentials, password)
        return ok

    def credentials(self, user: str) -> defer.Deferred:
        """Fires ``user``'s stored SCRAM keys, or None (unknown user, or passwords are
        external and the server has no keys)."""
        if self.external is not None:
            return defer.succeed(None)
        return self.store.get_credentials(user)

    def register(self, user: str, password: str) -> defer.Deferred:
        """Create an account (the program's ``tryregister``); fires False when it exists
        already or the program refused. Only on a served domain (raises
        :class:`presenced.users.BadUser`): no door makes a foreign account."""
        domain = user.rpartition("@")[2]
        if self.domains and domain not in self.domains:
            raise BadUser(f"{user}: {domain} is not a domain this server serves")
        if self.external is not None:
            return self._ask("tryregister", user, password)
        return self._derive(password).addCallback(
            lambda credentials: self.store.create_user(user, credentials))

    def set_password(self, user: str, password: str) -> defer.Deferred:
        """Replace ``user``'s password (the program's ``setpass``); fires False for an
        unknown user. Sessions already logged in stay."""
        if self.external is not None:
            return self._ask("setpass", user, password)
        return self._derive(password).addCallback(
            lambda credentials: self.store.set_credentials(user, credentials))

    def remove(self, user: str) -> defer.Deferred:
        """Delete the account and everything the store keeps of it; its online sessions on
        every door are closed. Fires False when there was no account (with the program:
        when it answered no to ``removeuser``, and then nothing is touched)."""
        return defer.ensureDeferred(self._remove(user))

    async def _remove(self, user: str) -> bool:
        # Read first: the store forgets the contacts with the account, and their sessions
        # must drop the user from their rosters (the core's ``user-removed`` listener).
        contacts = [item.jid for item in await self.store.get_roster(user)]
        if self.external is not None and not await self._ask("removeuser", user):
            return False
        # Features holding what the store does not (files on disk) let go of it first,
        # while the store still knows what is the user's.
        await defer.gatherResults([work for work in self.hooks.collect("user-removing", user)
                                   if isinstance(work, defer.Deferred)])
        existed = await self.store.remove_user(user)
        if self.external is not None:
            existed = True
        self.router.end_sessions(user, "account removed")
        self.hooks.fire("user-removed", user, contacts)
        return existed

    def _derive(self, password: str) -> defer.Deferred:
        """Fresh salted keys for ``password``, derived where checks run (the auth guard's
        bounded check threads): a bulk import queues behind their bound, as logins do, instead
        of filling Twisted's general thread pool, which the embedded store's callers share."""
        return self.run_check(make_credentials, password, self.iterations)

    def _ask(self, command: str, user: str, *password: str) -> defer.Deferred:
        assert self.external is not None
        local, _, domain = user.partition("@")
        return self.external.request(command, local, domain, *password)

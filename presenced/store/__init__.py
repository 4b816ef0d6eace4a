"""The roster store: the one source of truth every front door reads and writes.

Users are bare JIDs as strings (``alice@example.com``). Every method returns a Deferred; no
backend blocks the reactor. Two backends implement :class:`IRosterStore` and pass one test
suite: ``embedded`` (SQLite in the data directory) and ``redis`` (txredisapi, sharded by
consistent hashing over several URLs).

The subscription graph is kept apart from rosters: ``(subscriber, subject)`` means *subscriber
receives subject's events*. XMPP keeps it in step with roster subscription states (a contact
with ``from``/``both`` is a subscriber); web-only users may exist in the graph alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Optional

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from presenced.config import Config

SUBSCRIPTIONS = ("none", "to", "from", "both")

Pair = tuple[str, str]


class StoreError(Exception):
    """The store could not complete a request (backend unreachable, timed out)."""


@dataclass(slots=True)
class RosterItem:
    """One contact on a user's roster, as RFC 6121 describes it.

    ``ask`` is True while our outbound subscription request is pending; ``approved`` is a
    pre-approval of the contact's future request.
    """

    jid: str
    subscription: str = "none"
    name: Optional[str] = None
    groups: tuple[str, ...] = ()
    ask: bool = False
    approved: bool = False

    def __post_init__(self) -> None:
        if self.subscription not in SUBSCRIPTIONS:
            raise ValueError(f"bad subscription state {self.subscription!r}")
        self.groups = tuple(self.groups)


@dataclass(slots=True)
class ScramCredential:
    """Salted SCRAM keys for one hash function (RFC 5802): never the password itself."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


@dataclass(slots=True)
class Credentials:
    """An account's credentials: one :class:`ScramCredential` per hash name."""

    scram: dict[str, ScramCredential] = field(default_factory=dict)


@dataclass(slots=True)
class PepItem:
    """The last item published on one PEP node; ``payload`` is the item's XML."""

    item_id: str
    payload: str


class IRosterStore(Interface):
    """Accounts, rosters, the subscription graph, PEP items, offline messages."""

    name = Attribute("Backend name for logs and benchmarks: 'embedded' or 'redis'.")

    def start():
        """Open the store; the Deferred fires when it can serve requests."""

    def stop():
        """Flush and close; the Deferred fires when every acknowledged write is durable."""

    # accounts
    def create_user(user: str, credentials: Credentials):
        """Create an account; fires True, or False when it already exists."""

    def set_credentials(user: str, credentials: Credentials):
        """Replace an existing account's credentials; fires False for an unknown user."""

    def get_credentials(user: str):
        """Fires the user's :class:`Credentials`, or None for an unknown user."""

    def user_exists(user: str):
        """Fires True when the account exists."""

    def remove_user(user: str):
        """Delete the account and everything it owns (roster, its graph edges both ways,
        PEP, offline messages, pending requests, private data); fires False if unknown."""

    def search_users(pattern: str, limit: int):
        """Fires up to ``limit`` account names containing ``pattern``, sorted."""

    def count_users():
        """Fires the number of accounts."""

    # rosters
    def get_roster(user: str):
        """Fires the user's roster as a list of :class:`RosterItem`."""

    def get_roster_item(user: str, contact: str):
        """Fires one :class:`RosterItem` or None."""

    def set_roster_item(user: str, item: RosterItem):
        """Add or replace a roster item; fires the roster's new version (an int)."""

    def remove_roster_item(user: str, contact: str):
        """Remove a roster item; fires the new version, or None when it was not there."""

    def get_roster_version(user: str):
        """Fires the roster's version, an int that grows with every change (0 when empty)."""

    def add_friends(pairs: Iterable[Pair]):
        """Make each pair mutual friends: roster items with subscription ``both`` on both
        sides and graph edges both ways. Fires the number of pairs written. This is
        ``add_friend`` and ``load-friends``: one write path, batched."""

    def remove_friends(pairs: Iterable[Pair]):
        """Undo :meth:`add_friends` for each pair: roster items and edges both ways."""

    # subscription graph
    def add_subscriptions(pairs: Iterable[Pair]):
        """Add ``(subscriber, subject)`` edges; fires the number of pairs."""

    def remove_subscriptions(pairs: Iterable[Pair]):
        """Remove ``(subscriber, subject)`` edges; fires the number of pairs."""

    def get_subscribers(subject: str):
        """Fires the list of users that receive ``subject``'s events."""

    def get_subscriptions(subscriber: str):
        """Fires the list of users whose events ``subscriber`` receives."""

    # PEP
    def set_pep_item(user: str, node: str, item: PepItem):
        """Keep ``item`` as the node's last (and only) item."""

    def get_pep_item(user: str, node: str):
        """Fires the node's last :class:`PepItem` or None."""

    def get_pep_nodes(user: str):
        """Fires ``{node: PepItem}`` for every node of the user."""

    def delete_pep_node(user: str, node: str):
        """Delete the node and its item; fires True if it existed."""

    # offline messages
    def push_offline(user: str, stanza: str, limit: int):
        """Append a stanza for later delivery; fires False (and keeps nothing) when the user
        already has ``limit`` stored."""

    def pop_offline(user: str):
        """Fires and deletes every stored stanza, oldest first."""

    def peek_offline(user: str):
        """Fires the stored stanzas without deleting them."""

    # pending inbound subscription requests
    def set_pending(user: str, contact: str, stanza: str):
        """Keep ``contact``'s subscription request to ``user`` until answered."""

    def remove_pending(user: str, contact: str):
        """Forget a pending request; fires True if there was one."""

    def get_pending(user: str):
        """Fires ``{contact: stanza}`` of pending requests."""

    # small per-user documents (vCard, private XML)
    def set_private(user: str, key: str, value: str):
        """Store a small document."""

    def get_private(user: str, key: str):
        """Fires the document or None."""


def make_store(config: "Config") -> IRosterStore:
    """The backend the config names; it still needs ``start()``."""
    if config.store.backend == "redis":
        from presenced.store.redis import RedisRosterStore

        return RedisRosterStore(config.store.redis, timeout=config.store.redis_timeout,
                                retries=config.store.redis_retries)
    from presenced.store.embedded import EmbeddedRosterStore
    import os

    return EmbeddedRosterStore(os.path.join(config.server.data_dir, "presenced.sqlite3"))

"""The roster store: the one source of truth every front door reads and writes.

Users are bare JIDs as strings (``alice@example.com``). Every method returns a Deferred; no
backend blocks the reactor. Two backends implement :class:`IRosterStore` and pass one test
suite: ``embedded`` (SQLite in the data directory) and ``redis`` (txredisapi, sharded by
consistent hashing over several URLs).

The store has three parts: accounts (:class:`IAccountStore`), the graph (:class:`IGraphStore`,
the hot path, with encodings of its own) and capability stores (:class:`ICapabilityStores`):
generic per-user maps, bounded lists and archives that a feature opens by name, so a new
feature needs no store code.

The subscription graph is kept apart from rosters: ``(subscriber, subject)`` means *subscriber
receives subject's events*. XMPP keeps it in step with roster subscription states (a contact
with ``from``/``both`` is a subscriber); web-only users may exist in the graph alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import re
from typing import Any, Callable, Iterable, Optional, Sequence

from zope.interface import Attribute, Interface

SUBSCRIPTIONS = ("none", "to", "from", "both")

Pair = tuple[str, str]
ArchiveRow = tuple[str, str, str, float, Optional[str]]  # user, id, value, when, with_


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


# Capability stores of the built-in features. The names are part of the data layout (Redis
# keys, SQLite rows): keep them.
PEP_STORE = "pep"            # map: PEP node -> last item (presenced.pep)
OFFLINE_STORE = "offline"    # list: stanzas kept for an offline user (XEP-0160)
PENDING_STORE = "pending"    # map: contact -> its unanswered subscription request
PRIVATE_STORE = "private"    # map: key -> small document (vCard)
MAM_STORE = "mam"            # archive: one-to-one messages, peer = the other party (XEP-0313)
MAM_PREFS_STORE = "mam-prefs"  # map: "prefs" -> the account's archiving preferences (JSON)
PUBSUB_STORE = "pubsub"      # map: under a topic, "node" -> its record; under "pubsub", topic
                             # -> its owner; under an owner's JID, topic -> the count of
                             # subscribers waiting for approval (presenced.topicnodes)
MUC_ROOMS_STORE = "muc-rooms"  # map, under the conference domain: room name -> its record
MUC_ARCHIVE_STORE = "muc-archive"  # archive, per room JID: its groupchat messages (MAM)

# Names a capability store may take: short, and never one of the records the backends keep
# for accounts and the graph.
_STORE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")
RESERVED_NAMES = frozenset({"acct", "roster", "friends", "ver", "subs", "subd", "stores"})


@dataclass(frozen=True, slots=True)
class ArchiveEntry:
    """One archived value: ``id`` orders the archive, ``when`` is POSIX seconds, ``with_``
    the peer a query may filter on (XEP-0313's ``with``)."""

    id: str
    when: float
    value: str
    with_: Optional[str] = None


@dataclass(frozen=True, slots=True)
class ArchivePage:
    """A page of an archive query, always oldest first. ``complete`` is False when more
    entries match beyond the page in the direction of paging (XEP-0313's ``complete``)."""

    entries: tuple[ArchiveEntry, ...]
    complete: bool


class IMapStore(Interface):
    """A per-user keyed map of strings (PEP nodes, pending requests, private documents)."""

    name = Attribute("The name the store was opened by.")

    def get(user: str, key: str):
        """Fires the value, or None."""

    def set(user: str, key: str, value: str):
        """Keep ``value`` under ``key``, replacing what was there; fires None."""

    def delete(user: str, key: str):
        """Fires True when the key existed."""

    def items(user: str):
        """Fires ``{key: value}`` of the user's map."""

    def compare_and_set(user: str, key: str, expected: Optional[str],
                        value: Optional[str]):
        """Put ``value`` under ``key`` (None: delete the key) if the key holds ``expected``
        now (None: the key is absent), in one atomic step; fires whether it did. A record
        that several servers read, change and write back is written so: a False means
        another server wrote it in between, and the change is made again on what it wrote
        (:class:`presenced.turns.Conflict`). Not retried by the store (a lost reply would
        make the repeat see its own write as another's)."""


class IListStore(Interface):
    """A per-user bounded list of strings, oldest first (offline messages)."""

    name = Attribute("The name the store was opened by.")

    def push(user: str, value: str, limit: int):
        """Append ``value``; fires False, keeping nothing, when ``limit`` values are there."""

    def pop_all(user: str):
        """Fires and deletes every value, oldest first."""

    def peek(user: str):
        """Fires every value, oldest first, without deleting them."""


class IArchiveStore(Interface):
    """A per-user append-only archive, paged by id and time (message archives, XEP-0313).

    Ids are decimal strings that grow with every append and are never reused, even after
    :meth:`delete_all`; callers append in time order (``when`` is now). The node assigns
    them itself (:class:`ArchiveIds`), so a caller knows an entry's id before the store has
    it: a live message carries the id it has in the archive (XEP-0359).
    """

    name = Attribute("The name the store was opened by.")

    def new_id(when: float) -> str:
        """The id of an entry to be appended at ``when``: greater than every id this node
        gave before. Pass it to :meth:`append`; an id never appended is simply absent."""

    def append(user: str, value: str, when: float, with_: Optional[str] = None,
               keep: Optional[int] = None, since: Optional[float] = None,
               id: Optional[str] = None):
        """Add an entry under ``id`` (from :meth:`new_id`; a new one when None); fires the
        id. With ``keep`` the user's oldest entries beyond the newest ``keep`` are dropped,
        with ``since`` those older than ``since``: bounds a feature enforces in the same
        request as the write (retention, per-user size)."""

    def append_entries(entries: Sequence[ArchiveRow], keep: Optional[int] = None,
                       since: Optional[float] = None):
        """Add entries ``(user, id, value, when, with_)`` (ids from :meth:`new_id`), each
        user's archive bounded as :meth:`append` does. For a feature appending at message
        rate: the entries of one reactor turn are written in one request, and every call of
        that turn gets the same Deferred, so a message costs no Deferred of its own (add a
        callback once per distinct Deferred). It fires None when the turn's entries are
        written, or fails for all of them."""

    def query(user: str, after_id: Optional[str] = None, before_id: Optional[str] = None,
              start: Optional[float] = None, end: Optional[float] = None,
              with_: Optional[str] = None, limit: Optional[int] = None, last: bool = False):
        """Fires an :class:`ArchivePage` of entries with ``after_id < id < before_id``,
        ``start <= when <= end`` and peer ``with_`` (each bound optional). The page holds the
        oldest ``limit`` matches, or the newest when ``before_id`` is given or ``last`` is set
        (RSM's ``<before/>``: the page next to the end); either way oldest first."""

    def delete_all(user: str):
        """Delete the user's entries; fires how many there were."""


class IAccountStore(Interface):
    """Accounts and their credentials."""

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
        its data in every capability store); fires False if unknown."""

    def search_users(pattern: str, limit: int):
        """Fires up to ``limit`` account names containing ``pattern``, sorted."""

    def count_users():
        """Fires the number of accounts."""


class IGraphStore(Interface):
    """Rosters and the subscription graph: the hot path, with encodings of its own."""

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

    def begin_friends_load():
        """An :class:`IFriendsLoad`: many :meth:`add_friends` batches written the way the
        backend writes bulk data fastest (``load-friends``), done when its ``finish`` fires."""

    def add_subscriptions(pairs: Iterable[Pair]):
        """Add ``(subscriber, subject)`` edges; fires the number of pairs."""

    def remove_subscriptions(pairs: Iterable[Pair]):
        """Remove ``(subscriber, subject)`` edges; fires the number of pairs."""

    def get_subscribers(subject: str):
        """Fires the list of users that receive ``subject``'s events."""

    def get_subscriptions(subscriber: str):
        """Fires the list of users whose events ``subscriber`` receives."""


class ICapabilityStores(Interface):
    """Generic per-user stores a feature opens by name, so a feature needs no store code
    (Prosody's ``module:open_store(name, "map"|"archive")``). Opening is cheap and gives
    the same object every time; a name belongs to one kind."""

    def open_map(name: str):
        """The :class:`IMapStore` called ``name``."""

    def open_list(name: str):
        """The :class:`IListStore` called ``name``."""

    def open_archive(name: str):
        """The :class:`IArchiveStore` called ``name``."""


class IStoreDump(Interface):
    """What copying a whole store needs (``presencedctl copy-store``): every user, and the
    capability stores that hold data of one."""

    def dump_users(after: str, limit: int):
        """Fires up to ``limit`` users that have any data (account, roster, graph, capability
        stores), sorted, each greater than ``after`` ('' for the first)."""

    def user_store_names(user: str):
        """Fires ``{name: "map"|"list"|"archive"}``: the capability stores with data of
        ``user``."""


class IFriendsLoad(Interface):
    """One bulk load of friendships. Batches are staged and written together at ``finish``
    (embedded: one sorted pass over the table instead of random writes per batch; Redis: one
    ``SADD`` per user with all of its friends instead of one per user and batch). Each fires as :meth:`IGraphStore.add_friends` does; the load
    is complete only when ``finish`` fires, and an interrupted load is resumed by loading the
    same pairs again (the writes are idempotent)."""

    batch = Attribute("Pairs per ``add`` call the backend writes best (the loader's batches).")

    def add(pairs: Iterable[Pair]):
        """Take one batch of pairs; fires the number of pairs taken."""

    def finish(report: Optional[Callable[[int], None]] = None):
        """Write what was staged; ``report(pairs)`` is called as parts of it are written."""


class IRosterStore(IAccountStore, IGraphStore, ICapabilityStores, IStoreDump):
    """Everything a presenced node keeps: accounts, the graph, capability stores."""

    name = Attribute("Backend name for logs and benchmarks: 'embedded' or 'redis'.")

    def start():
        """Open the store; the Deferred fires when it can serve requests."""

    def stop():
        """Flush and close; the Deferred fires when every acknowledged write is durable."""


class ArchiveIds:
    """Archive ids a node assigns itself: the microsecond of the append since the epoch, or
    one more than the last id when appends come faster (a burst runs a little ahead of the
    clock, never back). One sequence serves every archive of a backend.

    Ids stay below 2**53 until the year 2255, so a Redis score (a double) holds them
    exactly. They follow time, not a counter in the store, so two nodes appending to one
    account's archive in the same microsecond could give one id twice (Redis keeps both
    entries; paging from that id skips the second): a clash needs two messages of one
    account within a microsecond on two nodes. The embedded store starts the sequence
    above its highest id, so a clock set back loses nothing there.
    """

    def __init__(self) -> None:
        self._last = 0

    def new_id(self, when: float) -> str:
        last = self._last + 1
        now = int(when * 1e6)  # the floor: ``when`` is after the epoch
        self._last = last = now if now > last else last
        return str(last)

    def seen(self, highest: Optional[int]) -> None:
        """Continue above ``highest`` (None: an empty store)."""
        if highest is not None:
            self._last = max(self._last, highest)


class CapabilityRegistry:
    """The capability stores a backend has opened: one object per name, one kind per name."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self._opened: dict[str, Any] = {}

    def open(self, name: str, kind: Callable[[Any, str], Any]) -> Any:
        """The store ``name`` of class ``kind`` (built as ``kind(backend, name)``); raises
        ValueError for a bad or reserved name, or one already opened as another kind."""
        opened = self._opened.get(name)
        if opened is None:
            if not _STORE_NAME.match(name) or name in RESERVED_NAMES:
                raise ValueError(f"bad capability store name {name!r}")
            opened = self._opened[name] = kind(self._backend, name)
        elif not isinstance(opened, kind):
            raise ValueError(f"store {name!r} is already open as {type(opened).__name__}")
        return opened

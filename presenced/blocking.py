"""Blocking (XEP-0191) as a core service: who a user refuses to hear from and be seen by.

Every door's traffic passes the router, so the router applies the lists: an event from a
blocked JID is not delivered to the user's sessions (:meth:`Blocklists.refuses_event`), and
the user's own broadcasts (presence, tunes, PEP) skip the JIDs they block
(:meth:`Blocklists.visible_recipients`). Lists are kept in memory for users with a session on
this node (read on their first login, dropped on their last logout) and read from the store
otherwise. A change is a router event (:data:`BLOCKLIST`) to the user's sessions on every
node; each node's copy is replaced from its payload, so the lists agree across a cluster.

A blocked item is a bare JID, a full JID or a domain (XEP-0191 3.1); a sender matches when
its bare JID or its domain is on the list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Optional, Sequence

from presenced import events
from presenced.events import Event

if TYPE_CHECKING:
    from presenced.router import ISession, SubscriptionRouter
    from presenced.store import IRosterStore

BLOCKING_STORE = "blocking"   # map: blocked JID -> "" (the capability store's name)
BLOCKLIST = "blocklist"       # router event; payload: items (the whole new list), block,
                              # unblock (the JIDs this change added / removed; [] = all)


def matches(blocked: frozenset[str], jid: str) -> bool:
    """Whether ``jid`` (bare or full) is covered by a blocklist."""
    bare = jid.partition("/")[0]
    return bare in blocked or jid in blocked or bare.rpartition("@")[2] in blocked


class Blocklists:
    """The blocklists of the node's users; the router asks them on every delivery."""

    def __init__(self, store: "IRosterStore", router: "SubscriptionRouter", max_items: int):
        self._store = store
        self._map = None
        self.router = router
        self.max_items = max_items
        self.lists: dict[str, frozenset[str]] = {}  # users online here whose list is not empty
        self._loaded: set[str] = set()  # users online here whose list has been read
        router.login_listeners.append(self._logged_in)
        router.logout_listeners.append(self._logged_out)
        router.delivery_filter = self.refuses_event
        router.recipient_filter = self.visible_recipients
        router.broadcast_hidden = self.hidden_from

    # --- reading -----------------------------------------------------------------------------

    @property
    def store(self):
        """The capability map, opened on first use (a core without a store still starts)."""
        if self._map is None:
            self._map = self._store.open_map(BLOCKING_STORE)
        return self._map

    async def items(self, user: str) -> frozenset[str]:
        if user in self._loaded:
            return self.lists.get(user, frozenset())
        return frozenset(await self.store.items(user))

    def known_blocks(self, user: str, other: str) -> Optional[bool]:
        """Whether ``user`` blocks ``other``, from the lists held here; None when this node
        does not hold ``user``'s list (ask :meth:`blocks`)."""
        if user not in self._loaded:
            return None
        blocked = self.lists.get(user)
        return blocked is not None and matches(blocked, other)  # most users block nobody

    async def blocks(self, user: str, other: str) -> bool:
        """Whether ``user`` blocks ``other`` (any door may ask before sending)."""
        return matches(await self.items(user), other)

    # --- changing ----------------------------------------------------------------------------

    async def block(self, user: str, jids: Iterable[str]) -> frozenset[str]:
        """Add ``jids``; fires the new list. Raises ValueError past ``max_items``."""
        current = await self.items(user)
        added = [j for j in dict.fromkeys(jids) if j not in current]
        if len(current) + len(added) > self.max_items:
            raise ValueError(f"a blocklist holds at most {self.max_items} items")
        for jid in added:
            await self.store.set(user, jid, "")
        new = current | frozenset(added)
        self._announce(user, new, block=added)
        return new

    async def unblock(self, user: str, jids: Optional[Iterable[str]] = None) -> frozenset[str]:
        """Remove ``jids`` (None: every item); fires the new list."""
        current = await self.items(user)
        removed = list(current) if jids is None else [j for j in jids if j in current]
        for jid in removed:
            await self.store.delete(user, jid)
        new = current - frozenset(removed)
        self._announce(user, new, unblock=[] if jids is None else removed)
        return new

    def _announce(self, user: str, items: frozenset[str], block: Iterable[str] = (),
                  unblock: Iterable[str] = ()) -> None:
        self.changed(user, items)
        self.router.deliver(user, Event(BLOCKLIST, user, {
            "items": sorted(items), "block": list(block), "unblock": list(unblock)}))

    def changed(self, user: str, items: Iterable[str]) -> None:
        """This node's copy of ``user``'s list (from a change here or a BLOCKLIST event)."""
        if not self.router.is_online(user):
            return
        items = frozenset(items)
        self._loaded.add(user)
        if items:
            self.lists[user] = items
        else:
            self.lists.pop(user, None)

    # --- the router's questions ---------------------------------------------------------------

    def refuses_event(self, user: str, event: Event) -> bool:
        """True: ``event`` is from a JID ``user`` blocks and is not delivered."""
        if event.type == BLOCKLIST:  # this node's copy follows every change, wherever made
            self.changed(user, event.payload["items"])
            return False
        blocked = self.lists.get(user)
        if blocked is None or event.type == events.ROSTER:  # roster changes always arrive
            return False
        return matches(blocked, event.sender)

    def hides(self, user: str, other: str) -> bool:
        """Whether either of two users blocks the other, from the lists held here (users
        online on this node): what a door that writes to a session directly asks."""
        if not self.lists:  # nobody online here blocks anyone: every stanza asks
            return False
        a, b = self.lists.get(user), self.lists.get(other.partition("/")[0])
        return (a is not None and matches(a, other)) or (b is not None and matches(b, user))

    def hidden_from(self, subject: str) -> frozenset[str]:
        """What ``subject``'s broadcasts skip, as this node knows it: the router sends it
        along to other nodes, where the subject's list may not be held."""
        return self.lists.get(subject, frozenset())

    def visible_recipients(self, subject: str, recipients: Sequence[str],
                           blocked: Optional[frozenset[str]] = None) -> Sequence[str]:
        """The recipients of ``subject``'s broadcast, without those ``subject`` blocks
        (``blocked``: the list as the subject's node sent it, when not held here)."""
        if not blocked:
            blocked = self.lists.get(subject)
        if blocked is None:
            return recipients
        return [r for r in recipients if not matches(blocked, r)]

    # --- the cache -----------------------------------------------------------------------------

    def _logged_in(self, user: str, session: "ISession") -> None:
        if user in self._loaded or len(self.router.sessions(user)) > 1:
            return
        if self._store is None:  # a core without a store (in-memory door tests): no lists
            self._loaded.add(user)
            return
        d = self.store.items(user)
        d.addCallback(lambda items: user in self._loaded or self.changed(user, items))

    def _logged_out(self, user: str, session: "ISession") -> None:
        if not self.router.is_online(user):
            self._loaded.discard(user)
            self.lists.pop(user, None)

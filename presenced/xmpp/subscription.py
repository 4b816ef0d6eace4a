"""The presence subscription state machine (RFC 6121 3), between two local accounts.

Both rosters and the subscription graph move together: when ``user`` gets ``to`` on
``contact`` (so ``contact`` has ``from``), ``user`` becomes a subscriber of ``contact`` in the
store's graph, which is what makes the router send it ``contact``'s events on every door.
Requests not yet answered are kept in the store and shown on the contact's next login.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from twisted.words.xish import domish

from presenced.store import PENDING_STORE, RosterItem
from presenced.xmpp.session import available_sessions, presence_bytes
from presenced.xmpp.stanzas import attr

if TYPE_CHECKING:
    from presenced.xmpp.server import C2SServer

GAIN_TO = {"none": "to", "from": "both"}
GAIN_FROM = {"none": "from", "to": "both"}
LOSE_TO = {"to": "none", "both": "from"}
LOSE_FROM = {"from": "none", "both": "to"}


def presence_stanza(sender: str, to: str, kind: str,
                    original: Optional[domish.Element] = None) -> bytes:
    """``<presence from to type>`` with the children the client sent (status, nick)."""
    children = "".join(child.toXml() for child in original.elements()) if original else ""
    return (f"<presence from={attr(sender)} to={attr(to)} type={attr(kind)}>{children}"
            f"</presence>").encode("utf-8")


class Subscriptions:
    """Subscription changes between ``user`` (who subscribes) and ``contact``."""

    def __init__(self, server: "C2SServer"):
        self.server = server
        self.core = server.core
        self.store = server.core.store

    def _to_sessions(self, user: str, data: bytes) -> None:
        for session in available_sessions(self.core, user):
            session.write(data)

    async def _save(self, owner: str, item: RosterItem) -> None:
        version = await self.store.set_roster_item(owner, item)
        self.core.roster_changed(owner, item.jid, item, version, presence_exchanged=True)

    def _show_presence(self, contact: str, user: str, available: bool) -> None:
        """``contact``'s resources' presence (or unavailable) to ``user``'s resources."""
        for recipient in available_sessions(self.core, user):
            for other in available_sessions(self.core, contact):
                recipient.write(presence_bytes(other, recipient.full, available))

    async def subscribe(self, user: str, contact: str, stanza: domish.Element) -> None:
        if not await self.core.accounts.exists(contact):
            self._to_sessions(user, presence_stanza(contact, user, "unsubscribed"))
            return
        mine = await self.store.get_roster_item(user, contact) or RosterItem(contact)
        theirs = await self.store.get_roster_item(contact, user)
        if theirs is not None and theirs.subscription in ("from", "both"):
            # Already approved: answer on the contact's behalf (RFC 6121 3.1.3).
            if mine.subscription not in ("to", "both"):
                await self.approve(contact, user)
            else:
                self._to_sessions(user, presence_stanza(contact, user, "subscribed"))
            return
        if theirs is not None and theirs.approved:
            await self.approve(contact, user)
            return
        if not mine.ask:
            mine.ask = True
            await self._save(user, mine)
        data = presence_stanza(user, contact, "subscribe", stanza)
        await self.store.open_map(PENDING_STORE).set(contact, user, data.decode("utf-8"))
        self._to_sessions(contact, data)

    async def subscribed(self, contact: str, user: str) -> None:
        """``contact`` approves ``user``'s request, or pre-approves a future one."""
        theirs = await self.store.get_roster_item(contact, user)
        if theirs is not None and theirs.subscription in ("from", "both"):
            return
        pending = await self.store.open_map(PENDING_STORE).items(contact)
        mine = await self.store.get_roster_item(user, contact)
        if user in pending or (mine is not None and mine.ask):
            await self.approve(contact, user)
        else:
            item = theirs or RosterItem(user)
            item.approved = True
            await self._save(contact, item)

    async def approve(self, contact: str, user: str) -> None:
        """``user`` now has ``to`` on ``contact``; ``contact`` has ``from`` on ``user``."""
        theirs = await self.store.get_roster_item(contact, user) or RosterItem(user)
        theirs.subscription = GAIN_FROM.get(theirs.subscription, theirs.subscription)
        theirs.approved = False
        await self._save(contact, theirs)
        await self.store.open_map(PENDING_STORE).delete(contact, user)
        mine = await self.store.get_roster_item(user, contact) or RosterItem(contact)
        mine.subscription = GAIN_TO.get(mine.subscription, mine.subscription)
        mine.ask = False
        await self._save(user, mine)
        await self.core.add_subscriptions([(user, contact)])
        self._to_sessions(user, presence_stanza(contact, user, "subscribed"))
        self._show_presence(contact, user, True)

    async def unsubscribe(self, user: str, contact: str) -> None:
        """``user`` stops receiving ``contact``'s presence."""
        await self._drop_to(user, contact)
        await self._drop_from(contact, user)
        self._to_sessions(contact, presence_stanza(user, contact, "unsubscribe"))
        self._show_presence(contact, user, False)

    async def unsubscribed(self, contact: str, user: str) -> None:
        """``contact`` cancels (or refuses) ``user``'s subscription to it."""
        await self._drop_from(contact, user)
        await self._drop_to(user, contact)
        self._to_sessions(user, presence_stanza(contact, user, "unsubscribed"))
        self._show_presence(contact, user, False)

    async def _drop_to(self, user: str, contact: str) -> None:
        """``user``'s side: no longer subscribed to ``contact``, nothing asked."""
        mine = await self.store.get_roster_item(user, contact)
        if mine is not None and (mine.subscription in LOSE_TO or mine.ask):
            mine.subscription = LOSE_TO.get(mine.subscription, mine.subscription)
            mine.ask = False
            await self._save(user, mine)

    async def _drop_from(self, contact: str, user: str) -> None:
        theirs = await self.store.get_roster_item(contact, user)
        if theirs is not None and (theirs.subscription in LOSE_FROM or theirs.approved):
            theirs.subscription = LOSE_FROM.get(theirs.subscription, theirs.subscription)
            theirs.approved = False
            await self._save(contact, theirs)
        await self.store.open_map(PENDING_STORE).delete(contact, user)
        await self.core.remove_subscriptions([(user, contact)])

    async def cancel_both(self, user: str, contact: str, item: RosterItem) -> None:
        """Before ``user`` removes ``contact`` from the roster (RFC 6121 2.5.2)."""
        if item.subscription in ("to", "both") or item.ask:
            await self.unsubscribe(user, contact)
        if item.subscription in ("from", "both") or item.approved:
            await self.unsubscribed(user, contact)
        await self.store.open_map(PENDING_STORE).delete(user, contact)

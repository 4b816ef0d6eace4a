"""``presencedctl copy-store``: everything one store holds, copied into another of any backend
(embedded -> Redis, a hash ring -> Redis Cluster, ...), resumable, verified at the end.

What is copied, user by user in name order (``IStoreDump.dump_users``): the account's
credentials, the roster, the subscription graph (each user's subscribers: every edge once,
from its subject), and every capability store with data of the user (PEP, offline messages,
pending requests, private documents, archives, blocklists...). A roster item that is a plain
``both`` on both sides with edges both ways is written as a friendship (``add_friends``, the
compact form bulk loads use); any other item as itself, with its edges.

Every step can run twice without harm: credentials, roster items, map entries and edges are
written as they are, and a user's lists and archives in the target are emptied before they
are filled. So after an interruption the copy resumes after the last batch the progress file
records (``<target data_dir>/copy-store.progress``, JSON: the last user, the counts so far)
and redoes at most one batch. Archive entries get new ids in the target (ids are the
target's own counters); their order, times, peers and values are kept.

Verification reads every user from both stores again and compares accounts, rosters,
subscribers and capability stores; the counts and the first differences are reported.
Copy from a store no server writes to (stop the servers, or copy a backup).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Optional

from twisted.internet import defer, threads

from presenced.store import IRosterStore, RosterItem

BATCH = 200  # users read and written together
_REMEMBERED = 1_000_000  # friendships kept in memory until their second user is copied


def _friend_form(data: "_UserData") -> set[str]:
    """Contacts a user lists as a plain ``both`` with edges both ways."""
    return {item.jid for item in data.roster if item == RosterItem(item.jid, "both")
            and item.jid in data.subscribers and item.jid in data.subscriptions}


@dataclass
class CopyCounts:
    """What a copy moved (or, for verification, what both stores agree on)."""

    users: int = 0
    accounts: int = 0
    roster_items: int = 0
    subscriptions: int = 0
    map_entries: int = 0
    list_entries: int = 0
    archive_entries: int = 0

    def add(self, other: "CopyCounts") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def describe(self) -> str:
        return ", ".join(f"{getattr(self, f.name)} {f.name.replace('_', ' ')}"
                         for f in fields(self))


@dataclass(frozen=True)
class _UserData:
    """One user as a store holds it: what is copied, and what verification compares."""

    credentials: Any
    roster: tuple
    subscribers: frozenset
    subscriptions: frozenset
    stores: tuple  # (name, kind, content) sorted by name

    def counts(self) -> CopyCounts:
        counts = CopyCounts(users=1, accounts=int(self.credentials is not None),
                            roster_items=len(self.roster), subscriptions=len(self.subscribers))
        for _, kind, content in self.stores:
            setattr(counts, f"{kind}_entries",
                    getattr(counts, f"{kind}_entries") + len(content))
        return counts


async def read_user(store: IRosterStore, user: str) -> _UserData:
    credentials, roster, subscribers, subscriptions, names = await _all([
        store.get_credentials(user), store.get_roster(user), store.get_subscribers(user),
        store.get_subscriptions(user), store.user_store_names(user)])
    stores = []
    for name, kind in sorted(names.items()):
        if kind == "map":
            content: Any = tuple(sorted((await store.open_map(name).items(user)).items()))
        elif kind == "list":
            content = tuple(await store.open_list(name).peek(user))
        else:
            page = await store.open_archive(name).query(user)
            content = tuple((e.when, e.value, e.with_) for e in page.entries)
        if content:
            stores.append((name, kind, content))
    return _UserData(credentials, tuple(roster), frozenset(subscribers),
                     frozenset(subscriptions), tuple(stores))


def _all(deferreds: list[defer.Deferred]) -> defer.Deferred:
    d = defer.gatherResults(deferreds, consumeErrors=True)
    return d.addErrback(lambda f: f.value.subFailure if f.check(defer.FirstError) else f)


class StoreCopy:
    """Copies ``source`` into ``target``; ``progress`` is the file that makes it resumable,
    ``report`` gets a line per batch."""

    def __init__(self, source: IRosterStore, target: IRosterStore, progress: str,
                 report: Callable[[str], None] = print, batch: int = BATCH):
        self.source = source
        self.target = target
        self.progress = progress
        self.report = report
        self.batch = batch
        self._written: set[tuple[str, str]] = set()
        self._forgot = False
        self._started_after = ""

    async def copy(self, restart: bool = False) -> CopyCounts:
        """Copy every user after the recorded progress; fires the counts of the whole copy."""
        after, counts = ("", CopyCounts()) if restart else await self._load_progress()
        if after:
            self.report(f"resuming after {after} ({counts.users} users copied before)")
        self._started_after = after
        reading = await self._read_after(after, self.source)
        while reading is not None:
            users, (datas,) = await reading
            reading = await self._read_after(users[-1], self.source)  # next while writing
            await self._write(dict(zip(users, datas)))
            for data in datas:
                counts.add(data.counts())
            after = users[-1]
            await threads.deferToThread(self._save_progress, after, counts)
            self.report(f"copied {counts.users} users (last {after})")
        return counts

    async def _read_after(self, after: str, *stores: IRosterStore) -> Optional[defer.Deferred]:
        """The next batch of the source's users being read from ``stores`` (fires
        ``(users, [datas of each store])``), or None after the last."""
        users = await self.source.dump_users(after, self.batch)
        if not users:
            return None
        d = _all([_all([defer.ensureDeferred(read_user(store, u)) for u in users])
                  for store in stores])
        return d.addCallback(lambda datas: (users, datas))

    async def _write(self, batch: dict[str, _UserData]) -> None:
        """One batch. A pair of users linked both ways whose smaller name lists the other as
        a plain ``both`` is written by the smaller as a friendship (``add_friends``, both
        sides); the larger then writes its own item only if it differs (which turns its side
        into explicit records) or removes the item ``add_friends`` gave it if it had none."""
        writes, pairs, own_items, missing = [], [], [], []
        settled: set[tuple[str, str]] = set()  # (user, subscriber) edges add_friends writes
        checks = []
        forms = {user: _friend_form(data) for user, data in batch.items()}
        for user, data in batch.items():
            if data.credentials is not None:
                writes.append(self._account(user, data.credentials))
            writes.extend(self._stores(user, data.stores))
            friendly = forms[user]
            items = {item.jid: item for item in data.roster}
            for contact in data.subscribers & data.subscriptions:
                if contact > user and contact in friendly:
                    pairs.append((user, contact))
                    settled.add((user, contact))
                elif contact < user:
                    checks.append((user, contact, items.get(contact), contact in friendly))
            own_items.extend((user, item) for item in data.roster
                             if not (item.jid > user and item.jid in friendly))
        befriended = await _all([self._befriended(forms, user, smaller)
                                 for user, smaller, _, _ in checks])
        skip = set()
        for (user, smaller, item, friendly), yes in zip(checks, befriended):
            if not yes:
                continue
            settled.add((user, smaller))
            if item is None:
                missing.append((user, smaller))
            elif friendly:
                skip.add((user, smaller))  # add_friends wrote it as it is
        if pairs:
            await self.target.add_friends(pairs)
            self._remember(pairs)
        await _all(writes + [self.target.set_roster_item(user, item) for user, item in own_items
                             if (user, item.jid) not in skip]
                   + [self.target.remove_roster_item(user, smaller) for user, smaller in missing])
        edges = [(subscriber, user) for user, data in batch.items()
                 for subscriber in data.subscribers
                 if (user, subscriber) not in settled and (subscriber, user) not in settled]
        if edges:
            await self.target.add_subscriptions(edges)

    def _remember(self, pairs: list[tuple[str, str]]) -> None:
        """Keep the friendships written, for their larger side's batch (bounded: past the
        bound, the larger side reads the smaller's item from the source)."""
        room = _REMEMBERED - len(self._written)
        if len(pairs) > room:
            self._forgot = True
        self._written.update(pairs[:max(0, room)])

    def _befriended(self, forms: dict[str, set[str]], user: str,
                    smaller: str) -> defer.Deferred:
        """Did ``smaller`` write its link with ``user`` as a friendship? (``forms``: the
        friend-form contacts of the batch's users.)"""
        if smaller in forms:
            return defer.succeed(user in forms[smaller])
        if (smaller, user) in self._written:
            self._written.discard((smaller, user))
            return defer.succeed(True)
        if smaller > self._started_after and not self._forgot:
            return defer.succeed(False)
        d = self.source.get_roster_item(smaller, user)  # written before this run, or forgotten
        return d.addCallback(lambda item: item == RosterItem(user, "both"))

    def _account(self, user: str, credentials: Any) -> defer.Deferred:
        d = self.target.create_user(user, credentials)
        return d.addCallback(lambda created: created or self.target.set_credentials(
            user, credentials))

    def _stores(self, user: str, stores: tuple) -> list[defer.Deferred]:
        return [defer.ensureDeferred(self._store(user, name, kind, content))
                for name, kind, content in stores]

    async def _store(self, user: str, name: str, kind: str, content: tuple) -> None:
        if kind == "map":
            target = self.target.open_map(name)
            await _all([target.set(user, key, value) for key, value in content])
        elif kind == "list":
            target = self.target.open_list(name)
            await target.pop_all(user)
            for value in content:
                await target.push(user, value, len(content))
        else:
            target = self.target.open_archive(name)
            await target.delete_all(user)
            for when, value, peer in content:
                await target.append(user, value, when, peer)

    async def verify(self) -> tuple[CopyCounts, list[str]]:
        """Read every user from both stores: the counts that agree, and the users that
        differ (the first 20)."""
        agreed, differ = CopyCounts(), []
        reading = await self._read_after("", self.source, self.target)
        while reading is not None:
            users, (mine, theirs) = await reading
            reading = await self._read_after(users[-1], self.source, self.target)
            for user, ours, copied in zip(users, mine, theirs):
                if ours == copied:
                    agreed.add(ours.counts())
                elif len(differ) < 20:
                    differ.append(user)
        return agreed, differ

    async def _load_progress(self) -> tuple[str, CopyCounts]:
        text = await threads.deferToThread(_read_text, self.progress)
        if text is None:
            return "", CopyCounts()
        saved = json.loads(text)
        return saved["after"], CopyCounts(**saved["counts"])

    def _save_progress(self, after: str, counts: CopyCounts) -> None:
        partial = self.progress + ".partial"
        os.makedirs(os.path.dirname(os.path.abspath(partial)), exist_ok=True)
        with open(partial, "w") as f:
            json.dump({"after": after, "counts": asdict(counts)}, f)
        os.replace(partial, self.progress)


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None

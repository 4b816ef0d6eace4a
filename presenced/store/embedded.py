"""The embedded default store: one SQLite file in the data directory.

Every request runs on one worker thread that owns the connection, so the reactor never waits
on the disk. Requests queued together share one transaction (group commit): each runs in its
own savepoint, so one failing request does not undo the others, and no Deferred fires before
the COMMIT that made its writes durable. With WAL and ``synchronous=NORMAL`` a committed
transaction survives ``kill -9`` of the server (only an OS crash may lose the last commits).

Users are interned as integer ids, which keeps the graph tables small and their indexes fast.
A friendship (``add_friends``: a ``both`` roster item and graph edges both ways) is one row per
side in ``friends`` rather than a roster row and two graph rows: bulk loads write a third of
the rows. A friend is a ``both`` item whatever ``roster`` holds for the contact; changing one
side of a friendship (a roster item, one subscription) turns it into explicit rows.
"""

from __future__ import annotations

import json
import math
import os
import queue
import sqlite3
import threading
from collections import defaultdict
from typing import Any, Callable, Iterable, Optional, Sequence

from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from presenced.store import (ArchiveEntry, ArchiveIds, ArchivePage, ArchiveRow,
                             CapabilityRegistry, Credentials, IArchiveStore, IFriendsLoad,
                             IListStore, IMapStore, IRosterStore, Pair, RosterItem,
                             StoreError)
from presenced.store.codec import (BOTH, credentials_from_json, credentials_to_json,
                                   roster_item_from_text, roster_item_to_text)

# PRAGMA user_version of the layout below. 0 is a file of a release before capability stores
# (tables pep, offline, pending, private), which _upgrade_0 turns into this layout; 1 had a
# table archive_sizes (archive sizes are now counted once per run, in memory) and an index
# archives_by_time, both dropped (an append wrote three B-trees; now two).
SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS ids (id INTEGER PRIMARY KEY, jid TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS accounts (uid INTEGER PRIMARY KEY, credentials TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roster (
    owner INTEGER NOT NULL, contact INTEGER NOT NULL, item TEXT NOT NULL,
    PRIMARY KEY (owner, contact)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS roster_by_contact ON roster (contact);
CREATE TABLE IF NOT EXISTS roster_version (owner INTEGER PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS subs (
    subject INTEGER NOT NULL, subscriber INTEGER NOT NULL,
    PRIMARY KEY (subject, subscriber)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS subs_by_subscriber ON subs (subscriber, subject);
CREATE TABLE IF NOT EXISTS friends (
    owner INTEGER NOT NULL, friend INTEGER NOT NULL,
    PRIMARY KEY (owner, friend)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS maps (
    owner INTEGER NOT NULL, store TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (owner, store, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lists (
    id INTEGER PRIMARY KEY AUTOINCREMENT, owner INTEGER NOT NULL, store TEXT NOT NULL,
    value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS lists_by_owner ON lists (owner, store, id);
CREATE TABLE IF NOT EXISTS archives (
    id INTEGER PRIMARY KEY AUTOINCREMENT, owner INTEGER NOT NULL, store TEXT NOT NULL,
    at REAL NOT NULL, peer TEXT, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS archives_by_owner ON archives (owner, store, id);
"""

# Version 0 -> 1: the per-feature tables become rows of the capability stores, PEP items in
# the encoding of presenced.pep.PepItem (JSON [item id, payload]).
_UPGRADE_0 = (
    ("PEP items", "pep",
     "INSERT INTO maps (owner, store, key, value) "
     "SELECT owner, 'pep', node, json_array(item_id, payload) FROM pep"),
    ("offline messages", "offline",
     "INSERT INTO lists (owner, store, value) SELECT owner, 'offline', stanza FROM offline "
     "ORDER BY id"),
    ("pending subscription requests", "pending",
     "INSERT INTO maps (owner, store, key, value) "
     "SELECT owner, 'pending', contact, stanza FROM pending"),
    ("private documents", "private",
     "INSERT INTO maps (owner, store, key, value) "
     "SELECT owner, 'private', key, value FROM private"),
)

_Chunk = tuple[Sequence[ArchiveRow], Optional[int], Optional[float]]  # entries, keep, since
_MAX_BATCH = 512  # requests committed together, about: a reactor turn's are never split
MAX_APPEND_BATCH = 256  # archive appends in one worker request (one reactor turn's)
_IN_CHUNK = 500  # SQLite's default limit on bound parameters is far above this
_LOW = (1 << 32) - 1
_ID_CACHE = 1_000_000  # user ids kept for bulk writes: ~130 MB at most
# A bulk load stages (and merges) friendships per range of 2 ** PARTITION_BITS owners: at a
# million users the first range, where the oldest and best connected users are, holds 1/8
# of all rows (about 4 million: a few seconds of the write lock), most others far fewer.
PARTITION_BITS = 14


class _Connection(sqlite3.Connection):
    """The worker's connection, remembering user ids for bulk writes: a user's id never
    changes once committed, so the cache is only dropped when a transaction rolls back."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ids: dict[str, int] = {}
        # uid -> store -> [entries, oldest ``at``] of archives appended to in this run: the
        # bounds of an append need no statement until one applies.
        self.archive_sizes: dict[int, dict[str, list]] = {}

    def forget(self) -> None:
        """A transaction rolled back: what the caches say may not be true any more."""
        self.ids.clear()
        self.archive_sizes.clear()


class _Worker(threading.Thread):
    """The thread that owns the SQLite connection and commits queued requests together.

    Requests made in one reactor turn are handed to the thread together, at the end of the
    turn: a login asks for its blocklist, offline messages, pending requests, private data
    and followed subjects in one turn, and a hundred logins in flight ask in the same turns,
    so the thread is woken, and the reactor called back, once for all of them instead of once
    per read (each hand-off costs the reactor a queue put, a thread switch and the GIL)."""

    def __init__(self, path: str):
        super().__init__(name="presenced-sqlite", daemon=True)
        self.path = path
        self.requests: queue.SimpleQueue = queue.SimpleQueue()  # lists of requests, or None
        self.turn: list = []  # this reactor turn's requests, not handed over yet
        self.opened: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()

    def submit(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Queue ``fn(conn, *args)``; called on the reactor thread. The requests of one
        reactor turn reach the thread together at its end: one queue hand-off (a wake-up of
        the thread, a GIL switch) per turn, not one per request (4-5 % of the reactor
        thread in the publish benchmarks)."""
        d: defer.Deferred = defer.Deferred()
        if not self.turn:
            reactor.callLater(0, self.hand_over)
        self.turn.append((d, fn, args))
        return d

    def hand_over(self) -> None:
        """Give this turn's requests to the thread, as one queue item."""
        if self.turn:
            self.requests.put(self.turn)
            self.turn = []

    def stop(self) -> None:
        """The thread answers what was asked, then closes the connection."""
        self.hand_over()
        self.requests.put(None)

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   factory=_Connection)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-262144")  # up to 256 MB, as the file grows
            notes = _open_schema(conn)
        except (sqlite3.Error, StoreError) as e:
            reactor.callFromThread(self.opened.errback,
                                   StoreError(f"cannot open {self.path}: {e}"))
            return
        reactor.callFromThread(self.opened.callback, notes)
        while True:
            first = self.requests.get()
            if first is None:
                break
            batch = list(first)
            stop = False
            while len(batch) < _MAX_BATCH:
                try:
                    nxt = self.requests.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.extend(nxt)
            reactor.callFromThread(_fire, self._run_batch(conn, batch))
            if stop:
                break
        conn.close()
        reactor.callFromThread(self.closed.callback, None)

    @staticmethod
    def _run_batch(conn: sqlite3.Connection, batch: list) -> list:
        results = []
        try:
            # Reads alone (most batches of a login storm) take no write lock: BEGIN DEFERRED
            # still reads one snapshot, and other processes' writers need not wait for it.
            only_reads = all(fn in _READS for _, fn, _ in batch)
            conn.execute("BEGIN" if only_reads else "BEGIN IMMEDIATE")
            for d, fn, args in batch:
                if fn in _READS:  # nothing to roll back: no savepoint (two statements less)
                    try:
                        results.append((d, True, fn(conn, *args)))
                    except Exception as e:
                        results.append((d, False, e))
                    continue
                conn.execute("SAVEPOINT op")
                try:
                    value = fn(conn, *args)
                except Exception as e:
                    conn.execute("ROLLBACK TO op")
                    conn.forget()
                    results.append((d, False, e))
                else:
                    results.append((d, True, value))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.forget()
            error = StoreError(f"sqlite: {e}")
            return [(d, False, error) for d, _, _ in batch]
        return results


def _fire(results: list) -> None:
    for d, ok, value in results:
        if ok:
            d.callback(value)
        else:
            d.errback(Failure(value))


# --- functions that run on the worker thread -------------------------------------------

def _open_schema(conn: sqlite3.Connection) -> list[str]:
    """Create or upgrade the tables, in one transaction; fires what an upgrade did."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"schema version {version} is newer than this release knows "
                             f"({SCHEMA_VERSION})")
        legacy = version == 0 and conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'accounts'").fetchone() is not None
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        notes = _upgrade_0(conn) if legacy else []
        conn.execute("DROP TABLE IF EXISTS archive_sizes")  # version 1
        conn.execute("DROP INDEX IF EXISTS archives_by_time")
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return notes


def _upgrade_0(conn: sqlite3.Connection) -> list[str]:
    """Move a version-0 file's per-feature tables into the capability stores."""
    notes = []
    for what, table, copy in _UPGRADE_0:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (table,)).fetchone() is None:
            continue
        moved = conn.execute(copy).rowcount
        conn.execute(f"DROP TABLE {table}")
        notes.append(f"{moved} {what} from table {table}")
    return notes


def _uid(conn: sqlite3.Connection, jid: str) -> Optional[int]:
    row = conn.execute("SELECT id FROM ids WHERE jid = ?", (jid,)).fetchone()
    return row[0] if row else None


def _intern(conn: sqlite3.Connection, jid: str) -> int:
    uid = _uid(conn, jid)
    if uid is None:
        uid = conn.execute("INSERT INTO ids (jid) VALUES (?)", (jid,)).lastrowid
    return uid


def _intern_many(conn: _Connection, jids: set[str]) -> dict[str, int]:
    """Ids of many users: from the cache, else looked up together, the unknown ones numbered
    after the highest id (the transaction holds the write lock: nobody takes the same ids)."""
    cache = conn.ids
    found: dict[str, int] = {}
    missing: list[str] = []
    for jid in jids:
        uid = cache.get(jid)
        if uid is None:
            missing.append(jid)
        else:
            found[jid] = uid
    if not missing:
        return found
    looked_up: dict[str, int] = {}
    marks = ",".join("?" * _IN_CHUNK)
    for i in range(0, len(missing), _IN_CHUNK):
        chunk = missing[i:i + _IN_CHUNK]
        query = (f"SELECT jid, id FROM ids WHERE jid IN ({marks})" if len(chunk) == _IN_CHUNK
                 else f"SELECT jid, id FROM ids WHERE jid IN ({','.join('?' * len(chunk))})")
        looked_up.update(conn.execute(query, chunk))
    if len(looked_up) < len(missing):
        first = (conn.execute("SELECT max(id) FROM ids").fetchone()[0] or 0) + 1
        new = {jid: uid for uid, jid in enumerate(
            (j for j in missing if j not in looked_up), first)}
        conn.executemany("INSERT INTO ids (id, jid) VALUES (?, ?)",
                         ((uid, jid) for jid, uid in new.items()))
        looked_up.update(new)
    if len(cache) + len(looked_up) > _ID_CACHE:
        cache.clear()
    cache.update(looked_up)
    found.update(looked_up)
    return found


def _bump_versions(conn: sqlite3.Connection, owners: Iterable[int]) -> None:
    conn.execute(
        "INSERT INTO roster_version (owner, version) SELECT value, 1 FROM json_each(?) WHERE 1 "
        "ON CONFLICT (owner) DO UPDATE SET version = version + 1", (json.dumps(sorted(owners)),))


def _version(conn: sqlite3.Connection, owner: int) -> int:
    row = conn.execute("SELECT version FROM roster_version WHERE owner = ?", (owner,)).fetchone()
    return row[0] if row else 0


def _create_user(conn, user, creds_json):
    uid = _intern(conn, user)
    cur = conn.execute("INSERT OR IGNORE INTO accounts (uid, credentials) VALUES (?, ?)",
                       (uid, creds_json))
    return cur.rowcount == 1


def _set_credentials(conn, user, creds_json):
    uid = _uid(conn, user)
    if uid is None:
        return False
    cur = conn.execute("UPDATE accounts SET credentials = ? WHERE uid = ?", (creds_json, uid))
    return cur.rowcount == 1


def _get_credentials(conn, user):
    row = conn.execute("SELECT a.credentials FROM accounts a JOIN ids i ON i.id = a.uid "
                       "WHERE i.jid = ?", (user,)).fetchone()
    return credentials_from_json(row[0]) if row else None


def _user_exists(conn, user):
    return conn.execute("SELECT 1 FROM accounts a JOIN ids i ON i.id = a.uid WHERE i.jid = ?",
                        (user,)).fetchone() is not None


def _remove_user(conn, user):
    uid = _uid(conn, user)
    if uid is None:
        return False
    existed = conn.execute("DELETE FROM accounts WHERE uid = ?", (uid,)).rowcount == 1
    contacts = {r[0] for r in conn.execute(
        "SELECT owner FROM roster WHERE contact = ?", (uid,))}
    conn.execute("DELETE FROM roster WHERE owner = ? OR contact = ?", (uid, uid))
    # Who may list the user as a friend: its own friends, and the contacts a one-sided change
    # turned into explicit rows (its roster is gone by now, its graph edges are not yet).
    related = {r[0] for r in conn.execute(
        "SELECT friend FROM friends WHERE owner = ? UNION "
        "SELECT subscriber FROM subs WHERE subject = ? UNION "
        "SELECT subject FROM subs WHERE subscriber = ?", (uid, uid, uid))}
    conn.execute("DELETE FROM friends WHERE owner = ?", (uid,))
    for other in related:
        if conn.execute("DELETE FROM friends WHERE owner = ? AND friend = ?",
                        (other, uid)).rowcount:
            contacts.add(other)
    _bump_versions(conn, contacts)
    for table in ("roster_version", "maps", "lists", "archives"):
        conn.execute(f"DELETE FROM {table} WHERE owner = ?", (uid,))
    conn.archive_sizes.pop(uid, None)
    conn.execute("DELETE FROM subs WHERE subject = ? OR subscriber = ?", (uid, uid))
    return existed


def _search_users(conn, pattern, limit):
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return [r[0] for r in conn.execute(
        "SELECT i.jid FROM accounts a JOIN ids i ON i.id = a.uid "
        "WHERE i.jid LIKE ? ESCAPE '\\' ORDER BY i.jid LIMIT ?", (f"%{escaped}%", limit))]


def _count_users(conn):
    return conn.execute("SELECT count(*) FROM accounts").fetchone()[0]


def _get_roster(conn, user):
    owner = _uid(conn, user)
    if owner is None:
        return []
    return [roster_item_from_text(jid, item) for jid, item in conn.execute(
        "SELECT c.jid, r.item FROM roster r JOIN ids c ON c.id = r.contact WHERE r.owner = ? "
        "AND NOT EXISTS (SELECT 1 FROM friends f WHERE f.owner = ? AND f.friend = r.contact) "
        "UNION ALL SELECT c.jid, ? FROM friends f JOIN ids c ON c.id = f.friend "
        "WHERE f.owner = ? ORDER BY 1", (owner, owner, BOTH, owner))]


def _get_roster_item(conn, user, contact):
    owner, other = _uid(conn, user), _uid(conn, contact)
    if owner is None or other is None:
        return None
    if conn.execute("SELECT 1 FROM friends WHERE owner = ? AND friend = ?",
                    (owner, other)).fetchone():
        return roster_item_from_text(contact, BOTH)
    row = conn.execute("SELECT item FROM roster WHERE owner = ? AND contact = ?",
                       (owner, other)).fetchone()
    return roster_item_from_text(contact, row[0]) if row else None


def _unfriend_one_side(conn, owner, contact) -> bool:
    """Turn ``owner``'s side of a friendship into explicit graph rows; True if there was one."""
    if conn.execute("DELETE FROM friends WHERE owner = ? AND friend = ?",
                    (owner, contact)).rowcount == 0:
        return False
    conn.executemany("INSERT OR IGNORE INTO subs (subject, subscriber) VALUES (?, ?)",
                     ((owner, contact), (contact, owner)))
    return True


def _set_roster_item(conn, user, jid, text):
    owner, contact = _intern(conn, user), _intern(conn, jid)
    _unfriend_one_side(conn, owner, contact)
    conn.execute("INSERT OR REPLACE INTO roster (owner, contact, item) VALUES (?, ?, ?)",
                 (owner, contact, text))
    _bump_versions(conn, (owner,))
    return _version(conn, owner)


def _remove_roster_item(conn, user, jid):
    owner, contact = _uid(conn, user), _uid(conn, jid)
    if owner is None or contact is None:
        return None
    removed = conn.execute("DELETE FROM roster WHERE owner = ? AND contact = ?",
                           (owner, contact)).rowcount
    if not _unfriend_one_side(conn, owner, contact) and not removed:
        return None
    _bump_versions(conn, (owner,))
    return _version(conn, owner)


def _get_roster_version(conn, user):
    uid = _uid(conn, user)
    return 0 if uid is None else _version(conn, uid)


def _friend_rows(conn, pairs) -> tuple[dict[str, int], list[int]]:
    """The ids of the pairs' users, and both rows of each pair as one int (owner << 32 |
    friend): handed to SQLite as one JSON array, no Python tuple per row."""
    ids = _intern_many(conn, {j for pair in pairs for j in pair})
    get = ids.__getitem__
    rows = [get(a) << 32 | get(b) for a, b in pairs]
    rows += [(row & _LOW) << 32 | row >> 32 for row in rows]
    return ids, rows


def _add_friends(conn, pairs):
    ids, rows = _friend_rows(conn, pairs)
    rows.sort()  # into B-tree order
    conn.execute("INSERT OR IGNORE INTO friends (owner, friend) "
                 "SELECT value >> 32, value & ? FROM json_each(?)", (_LOW, json.dumps(rows)))
    _bump_versions(conn, ids.values())
    return len(pairs)


def _stage_friends(conn, table, pairs):
    """Append the pairs' rows to a bulk load's staging tables, one per range of
    2 ** PARTITION_BITS owners: no index, so a batch only adds pages at the end of a temporary
    file, whatever users it touches. Fires ``{partition: rows}``."""
    _, rows = _friend_rows(conn, pairs)
    partitions: defaultdict[int, list[int]] = defaultdict(list)
    shift = 32 + PARTITION_BITS
    for row in rows:  # a third of the time of sorting them
        partitions[row >> shift].append(row)
    for partition, part in partitions.items():
        conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table}_{partition} (v INTEGER NOT NULL)")
        conn.execute(f"INSERT INTO {table}_{partition} (v) SELECT value FROM json_each(?)",
                     (json.dumps(part),))
    return {partition: len(part) for partition, part in partitions.items()}


def _merge_stage(conn, table):
    """Write one staging table into ``friends`` in B-tree order (sorted in memory: a range
    of owners is a few million rows at most), each page written once; then drop it."""
    conn.execute(f"INSERT OR IGNORE INTO friends (owner, friend) "
                 f"SELECT v >> 32, v & {_LOW} FROM {table} ORDER BY v")
    conn.execute(f"INSERT INTO roster_version (owner, version) SELECT DISTINCT v >> 32, 1 "
                 f"FROM {table} WHERE 1 ON CONFLICT (owner) DO UPDATE SET version = version + 1")
    conn.execute(f"DROP TABLE temp.{table}")


def _drop_stage(conn, tables):
    for table in tables:
        conn.execute(f"DROP TABLE IF EXISTS temp.{table}")


def _remove_friends(conn, pairs):
    ids = _intern_many(conn, {j for pair in pairs for j in pair})
    both = [(ids[a], ids[b]) for a, b in pairs] + [(ids[b], ids[a]) for a, b in pairs]
    conn.executemany("DELETE FROM friends WHERE owner = ? AND friend = ?", both)
    conn.executemany("DELETE FROM roster WHERE owner = ? AND contact = ?", both)
    conn.executemany("DELETE FROM subs WHERE subject = ? AND subscriber = ?", both)
    _bump_versions(conn, {o for o, _ in both})
    return len(pairs)


def _add_subscriptions(conn, pairs):
    ids = _intern_many(conn, {j for pair in pairs for j in pair})
    conn.executemany("INSERT OR IGNORE INTO subs (subject, subscriber) VALUES (?, ?)",
                     [(ids[subject], ids[subscriber]) for subscriber, subject in pairs])
    return len(pairs)


def _remove_subscriptions(conn, pairs):
    ids = _intern_many(conn, {j for pair in pairs for j in pair})
    for subscriber, subject in pairs:
        s, t = ids[subscriber], ids[subject]
        conn.execute("DELETE FROM subs WHERE subject = ? AND subscriber = ?", (t, s))
        # What is left of a friendship: both roster items, and t still receives s's events.
        for owner, contact in ((t, s), (s, t)):
            if conn.execute("DELETE FROM friends WHERE owner = ? AND friend = ?",
                            (owner, contact)).rowcount:
                conn.execute("INSERT OR REPLACE INTO roster (owner, contact, item) "
                             "VALUES (?, ?, ?)", (owner, contact, BOTH))
                conn.execute("INSERT OR IGNORE INTO subs (subject, subscriber) VALUES (?, ?)",
                             (s, t))
    return len(pairs)


def _get_subscribers(conn, subject):
    return [r[0] for r in conn.execute(
        "WITH me AS (SELECT id FROM ids WHERE jid = ?) "
        "SELECT i.jid FROM ids i WHERE i.id IN ("
        "SELECT subscriber FROM subs WHERE subject = (SELECT id FROM me) UNION "
        "SELECT friend FROM friends WHERE owner = (SELECT id FROM me))", (subject,))]


def _get_subscriptions(conn, subscriber):
    return [r[0] for r in conn.execute(
        "WITH me AS (SELECT id FROM ids WHERE jid = ?) "
        "SELECT i.jid FROM ids i WHERE i.id IN ("
        "SELECT subject FROM subs WHERE subscriber = (SELECT id FROM me) UNION "
        "SELECT friend FROM friends WHERE owner = (SELECT id FROM me))", (subscriber,))]


def _map_get(conn, store, user, key):
    row = conn.execute("SELECT m.value FROM maps m JOIN ids i ON i.id = m.owner "
                       "WHERE i.jid = ? AND m.store = ? AND m.key = ?",
                       (user, store, key)).fetchone()
    return row[0] if row else None


def _map_set(conn, store, user, key, value):
    conn.execute("INSERT OR REPLACE INTO maps (owner, store, key, value) VALUES (?, ?, ?, ?)",
                 (_intern(conn, user), store, key, value))


def _map_compare_and_set(conn, store, user, key, expected, value):
    """One request on the store's one thread: nothing runs between the read and the
    write."""
    if _map_get(conn, store, user, key) != expected:
        return False
    if value is None:
        _map_delete(conn, store, user, key)
    else:
        _map_set(conn, store, user, key, value)
    return True


def _map_delete(conn, store, user, key):
    uid = _uid(conn, user)
    return uid is not None and conn.execute(
        "DELETE FROM maps WHERE owner = ? AND store = ? AND key = ?",
        (uid, store, key)).rowcount == 1


def _map_items(conn, store, user):
    return dict(conn.execute("SELECT m.key, m.value FROM maps m JOIN ids i ON i.id = m.owner "
                             "WHERE i.jid = ? AND m.store = ?", (user, store)))


def _list_push(conn, store, user, value, limit):
    uid = _intern(conn, user)
    count = conn.execute("SELECT count(*) FROM lists WHERE owner = ? AND store = ?",
                         (uid, store)).fetchone()[0]
    if count >= limit:
        return False
    conn.execute("INSERT INTO lists (owner, store, value) VALUES (?, ?, ?)", (uid, store, value))
    return True


def _list_peek(conn, store, user):
    return [r[0] for r in conn.execute(
        "SELECT l.value FROM lists l JOIN ids i ON i.id = l.owner WHERE i.jid = ? "
        "AND l.store = ? ORDER BY l.id", (user, store))]


def _list_pop_all(conn, store, user):
    values = _list_peek(conn, store, user)
    if values:
        conn.execute("DELETE FROM lists WHERE owner = ? AND store = ?", (_uid(conn, user), store))
    return values


def _archive_highest_id(conn):
    return conn.execute("SELECT MAX(id) FROM archives").fetchone()[0]


def _archive_append_batch(conn, store, chunks):
    """Append the entries of ``chunks`` (entries, keep, since), each entry (user, id, value,
    when, peer), in order, in one executemany; the users' ids from the connection's cache.
    Each owner's bounds are applied once for the batch, after its inserts, from the size
    and oldest entry the connection remembers: a batch within its bounds (nearly all) costs
    no statement beyond the inserts, a burst pays a bound once per owner, and the bound
    costs index seeks, not a walk over ``keep`` entries (822 us an append at 10 000)."""
    uids = _intern_many(conn, {entry[0] for entries, _, _ in chunks for entry in entries})
    conn.executemany(
        "INSERT INTO archives (id, owner, store, at, peer, value) VALUES (?, ?, ?, ?, ?, ?)",
        [(int(id_), uids[user], store, when, peer, value)
         for entries, _, _ in chunks for user, id_, value, when, peer in entries])
    bounds: dict[int, list] = {}  # uid -> [appended, keep, since]
    for entries, keep, since in chunks:
        for entry in entries:
            uid = uids[entry[0]]
            bound = bounds.get(uid)
            if bound is None:
                bounds[uid] = [1, keep, since]
                continue
            bound[0] += 1
            if keep is not None:
                bound[1] = keep if bound[1] is None else min(bound[1], keep)
            if since is not None:
                bound[2] = since if bound[2] is None else max(bound[2], since)
    for uid, (appended, keep, since) in bounds.items():
        _archive_bound(conn, store, uid, appended, keep, since)


def _archive_bound(conn, store, uid, appended, keep, since):
    """Ids grow with time, so the entries to drop are the lowest ids: the expired ones
    walked 100 at a time, then those beyond ``keep``."""
    sizes = conn.archive_sizes.get(uid)
    if sizes is None:
        if len(conn.archive_sizes) >= _ID_CACHE:
            conn.archive_sizes.clear()
        sizes = conn.archive_sizes[uid] = {}
    size = sizes.get(store)  # [entries, ``at`` of the lowest id]
    if size is None:  # the first append of this run: count once (the inserts included)
        size = sizes[store] = [conn.execute(
            "SELECT COUNT(*) FROM archives WHERE owner = ? AND store = ?",
            (uid, store)).fetchone()[0], _archive_first_at(conn, store, uid)]
    else:
        size[0] += appended
        if size[1] is None:  # the bounds had emptied it
            size[1] = _archive_first_at(conn, store, uid)
    if since is not None and size[1] < since:
        while True:
            dropped = conn.execute(
                "DELETE FROM archives WHERE id IN (SELECT id FROM archives WHERE owner = ? "
                "AND store = ? ORDER BY id LIMIT 100) AND at < ?", (uid, store, since)).rowcount
            size[0] -= dropped
            if dropped < 100:
                break
        size[1] = _archive_first_at(conn, store, uid)
    if keep is not None and size[0] > keep:
        size[0] -= conn.execute(
            "DELETE FROM archives WHERE id IN (SELECT id FROM archives WHERE owner = ? AND "
            "store = ? ORDER BY id LIMIT ?)", (uid, store, size[0] - keep)).rowcount
        size[1] = _archive_first_at(conn, store, uid)


def _archive_first_at(conn, store, uid):
    """``at`` of the user's lowest id (None: an empty archive)."""
    row = conn.execute("SELECT at FROM archives WHERE owner = ? AND store = ? ORDER BY id "
                       "LIMIT 1", (uid, store)).fetchone()
    return None if row is None else row[0]


def _archive_query(conn, store, user, after, before, start, end, peer, limit, newest):
    """Ids are never below their entry's microsecond (:class:`ArchiveIds`), so ``start``
    bounds the walk of the id index too (there is no index by time)."""
    uid = _uid(conn, user)
    if uid is None:
        return ArchivePage((), True)
    where, args = ["owner = ?", "store = ?"], [uid, store]
    first_id = None if start is None else math.floor(start * 1e6) - 1  # - 1: rounding
    for clause, value in (("id > ?", after), ("id < ?", before), ("id >= ?", first_id),
                          ("at >= ?", start), ("at <= ?", end), ("peer = ?", peer)):
        if value is not None:
            where.append(clause)
            args.append(value)
    order = "DESC" if newest else "ASC"
    args.append(-1 if limit is None else limit + 1)
    rows = conn.execute(f"SELECT id, at, value, peer FROM archives WHERE {' AND '.join(where)} "
                        f"ORDER BY id {order} LIMIT ?", args).fetchall()
    complete = limit is None or len(rows) <= limit
    rows = rows[:limit] if limit is not None else rows
    if newest:
        rows.reverse()
    return ArchivePage(tuple(ArchiveEntry(str(i), at, value, peer) for i, at, value, peer in rows),
                       complete)


def _archive_delete_all(conn, store, user):
    uid = _uid(conn, user)
    if uid is None:
        return 0
    conn.archive_sizes.get(uid, {}).pop(store, None)
    return conn.execute("DELETE FROM archives WHERE owner = ? AND store = ?",
                        (uid, store)).rowcount


def _dump_users(conn, after, limit):
    return [jid for (jid,) in conn.execute(
        "SELECT jid FROM ids WHERE jid > ? ORDER BY jid LIMIT ?", (after, limit))]


def _user_store_names(conn, user):
    uid = _uid(conn, user)
    names = {}
    if uid is not None:
        for table, kind in (("maps", "map"), ("lists", "list"), ("archives", "archive")):
            names.update((name, kind) for (name,) in conn.execute(
                f"SELECT DISTINCT store FROM {table} WHERE owner = ?", (uid,)))
    return names


def _size(conn):
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    return pages * conn.execute("PRAGMA page_size").fetchone()[0]


@implementer(IRosterStore)
class EmbeddedRosterStore:
    """:class:`IRosterStore` in one SQLite file, served by one worker thread."""

    name = "embedded"
    log = Logger()

    def __init__(self, path: str):
        self.path = path
        self._worker: Optional[_Worker] = None
        self._stores = CapabilityRegistry(self)
        self.archive_ids = ArchiveIds()  # one sequence: the archives share one table

    def start(self) -> defer.Deferred:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._worker = _Worker(self.path)
        self._worker.start()
        d = self._worker.opened.addCallback(self._opened)
        return d.addCallback(lambda _: self._run(_archive_highest_id)).addCallback(
            self.archive_ids.seen)

    def _opened(self, notes: list[str]) -> None:
        if notes:
            self.log.info("upgraded {path} to schema version {version}: moved {notes}",
                          path=self.path, version=SCHEMA_VERSION, notes="; ".join(notes))

    def stop(self) -> defer.Deferred:
        worker, self._worker = self._worker, None
        if worker is None or not worker.is_alive():
            return defer.succeed(None)
        worker.stop()
        return worker.closed

    def _run(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        if self._worker is None:
            return defer.fail(StoreError("the store is not started"))
        return self._worker.submit(fn, *args)

    def size_bytes(self) -> defer.Deferred:
        """Bytes the database takes on disk (for benchmarks and the admin console)."""
        return self._run(_size)

    def dump_users(self, after: str, limit: int) -> defer.Deferred:
        return self._run(_dump_users, after, limit)

    def user_store_names(self, user: str) -> defer.Deferred:
        return self._run(_user_store_names, user)

    def create_user(self, user: str, credentials: Credentials) -> defer.Deferred:
        return self._run(_create_user, user, credentials_to_json(credentials))

    def set_credentials(self, user: str, credentials: Credentials) -> defer.Deferred:
        return self._run(_set_credentials, user, credentials_to_json(credentials))

    def get_credentials(self, user: str) -> defer.Deferred:
        return self._run(_get_credentials, user)

    def user_exists(self, user: str) -> defer.Deferred:
        return self._run(_user_exists, user)

    def remove_user(self, user: str) -> defer.Deferred:
        return self._run(_remove_user, user)

    def search_users(self, pattern: str, limit: int = 50) -> defer.Deferred:
        return self._run(_search_users, pattern, limit)

    def count_users(self) -> defer.Deferred:
        return self._run(_count_users)

    def get_roster(self, user: str) -> defer.Deferred:
        return self._run(_get_roster, user)

    def get_roster_item(self, user: str, contact: str) -> defer.Deferred:
        return self._run(_get_roster_item, user, contact)

    def set_roster_item(self, user: str, item: RosterItem) -> defer.Deferred:
        return self._run(_set_roster_item, user, item.jid, roster_item_to_text(item))

    def remove_roster_item(self, user: str, contact: str) -> defer.Deferred:
        return self._run(_remove_roster_item, user, contact)

    def get_roster_version(self, user: str) -> defer.Deferred:
        return self._run(_get_roster_version, user)

    def add_friends(self, pairs: Iterable[Pair]) -> defer.Deferred:
        return self._run(_add_friends, list(pairs))

    def remove_friends(self, pairs: Iterable[Pair]) -> defer.Deferred:
        return self._run(_remove_friends, list(pairs))

    def begin_friends_load(self) -> "EmbeddedFriendsLoad":
        return EmbeddedFriendsLoad(self._run)

    def add_subscriptions(self, pairs: Iterable[Pair]) -> defer.Deferred:
        return self._run(_add_subscriptions, list(pairs))

    def remove_subscriptions(self, pairs: Iterable[Pair]) -> defer.Deferred:
        return self._run(_remove_subscriptions, list(pairs))

    def get_subscribers(self, subject: str) -> defer.Deferred:
        return self._run(_get_subscribers, subject)

    def get_subscriptions(self, subscriber: str) -> defer.Deferred:
        return self._run(_get_subscriptions, subscriber)

    def open_map(self, name: str) -> "EmbeddedMap":
        return self._stores.open(name, EmbeddedMap)

    def open_list(self, name: str) -> "EmbeddedList":
        return self._stores.open(name, EmbeddedList)

    def open_archive(self, name: str) -> "EmbeddedArchive":
        return self._stores.open(name, EmbeddedArchive)


@implementer(IFriendsLoad)
class EmbeddedFriendsLoad:
    """A bulk load staged in temporary tables and merged into ``friends`` at ``finish``.

    Batches of random friendships written one transaction each dirty nearly every page of a
    large ``friends`` table, and each commit writes all of them again (at a million users the
    rate fell to half). Staged per range of owners, each range is sorted in memory and merged
    in one transaction, so other writers wait for one range at most. Nothing is visible
    before the merge; an interrupted load (the temporary tables die with the connection) is
    resumed by loading the same file again."""

    _loads = 0
    batch = 250_000  # one transaction each, well under a second of the write lock

    def __init__(self, run: Callable[..., defer.Deferred]):
        EmbeddedFriendsLoad._loads += 1
        self._table = f"friends_load_{EmbeddedFriendsLoad._loads}"
        self._run = run
        self._staged: dict[int, int] = {}  # partition -> rows

    def add(self, pairs: Iterable[Pair]) -> defer.Deferred:
        pairs = list(pairs)

        def staged(rows: dict[int, int]) -> int:
            for partition, count in rows.items():
                self._staged[partition] = self._staged.get(partition, 0) + count
            return len(pairs)
        return self._run(_stage_friends, self._table, pairs).addCallback(staged)

    @defer.inlineCallbacks
    def finish(self, report: Optional[Callable[[int], None]] = None):
        tables = [f"{self._table}_{partition}" for partition in sorted(self._staged)]
        try:
            merged = reported = 0
            for table, rows in zip(tables, (self._staged[p] for p in sorted(self._staged))):
                yield self._run(_merge_stage, table)
                merged += rows
                if report is not None and merged // 2 > reported:
                    report(merged // 2 - reported)
                    reported = merged // 2
        finally:
            yield self._run(_drop_stage, tables)


class _Capability:
    """A capability store of the embedded backend: rows of its table tagged with ``name``."""

    def __init__(self, backend: EmbeddedRosterStore, name: str):
        self._backend = backend
        self.name = name

    def _run(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred:
        return self._backend._run(fn, self.name, *args)


@implementer(IMapStore)
class EmbeddedMap(_Capability):
    def get(self, user: str, key: str) -> defer.Deferred:
        return self._run(_map_get, user, key)

    def set(self, user: str, key: str, value: str) -> defer.Deferred:
        return self._run(_map_set, user, key, value)

    def delete(self, user: str, key: str) -> defer.Deferred:
        return self._run(_map_delete, user, key)

    def items(self, user: str) -> defer.Deferred:
        return self._run(_map_items, user)

    def compare_and_set(self, user: str, key: str, expected: Optional[str],
                        value: Optional[str]) -> defer.Deferred:
        return self._run(_map_compare_and_set, user, key, expected, value)


@implementer(IListStore)
class EmbeddedList(_Capability):
    def push(self, user: str, value: str, limit: int) -> defer.Deferred:
        return self._run(_list_push, user, value, limit)

    def pop_all(self, user: str) -> defer.Deferred:
        return self._run(_list_pop_all, user)

    def peek(self, user: str) -> defer.Deferred:
        return self._run(_list_peek, user)


@implementer(IArchiveStore)
class EmbeddedArchive(_Capability):
    """Appends made in one reactor turn go to the worker together, at most
    :data:`MAX_APPEND_BATCH` a request: one hand-over and one savepoint for a burst instead
    of one per message. A failing batch fails each of its appends (nothing of it is kept)."""

    def __init__(self, backend: EmbeddedRosterStore, name: str):
        super().__init__(backend, name)
        self._chunks: list[_Chunk] = []  # (entries, keep, since), in order
        self._rows = 0  # entries in the chunks
        self._waiting: list[tuple[defer.Deferred, str]] = []  # append()'s, with their ids
        self._batch: Optional[defer.Deferred] = None  # append_entries()'s, one per batch

    def new_id(self, when: float) -> str:
        return self._backend.archive_ids.new_id(when)

    def append(self, user: str, value: str, when: float, with_: Optional[str] = None,
               keep: Optional[int] = None, since: Optional[float] = None,
               id: Optional[str] = None) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._start_batch()
        if id is None:
            id = self.new_id(when)
        self._waiting.append((d, id))
        self._add((((user, id, value, when, with_),), keep, since))
        return d

    def append_entries(self, entries: Sequence[ArchiveRow], keep: Optional[int] = None,
                       since: Optional[float] = None) -> defer.Deferred:
        batch = self._start_batch()
        self._add((entries, keep, since))
        return batch

    def _add(self, chunk: "_Chunk") -> None:
        self._chunks.append(chunk)
        self._rows += len(chunk[0])
        if self._rows >= MAX_APPEND_BATCH:
            self._flush()

    def _start_batch(self) -> defer.Deferred:
        """The Deferred of the batch being filled: a new batch is flushed at the turn's end."""
        if self._batch is None:
            self._batch = defer.Deferred()
            reactor.callLater(0, self._flush)
        return self._batch

    def _flush(self) -> None:
        chunks, waiting, batch = self._chunks, self._waiting, self._batch
        if batch is None:  # flushed early by a full batch
            return
        self._chunks, self._rows, self._waiting, self._batch = [], 0, [], None
        self._run(_archive_append_batch, chunks).addCallbacks(
            self._written, self._failed, (waiting, batch), None, (waiting, batch))

    @staticmethod
    def _written(_: Any, waiting: list[tuple[defer.Deferred, str]],
                 batch: defer.Deferred) -> None:
        for d, id_ in waiting:
            d.callback(id_)
        batch.callback(None)

    @staticmethod
    def _failed(failure: Failure, waiting: list[tuple[defer.Deferred, str]],
                batch: defer.Deferred) -> None:
        for d, _ in waiting:
            d.errback(failure)
        batch.errback(failure)

    def query(self, user: str, after_id: Optional[str] = None, before_id: Optional[str] = None,
              start: Optional[float] = None, end: Optional[float] = None,
              with_: Optional[str] = None, limit: Optional[int] = None,
              last: bool = False) -> defer.Deferred:
        try:
            after = None if after_id is None else int(after_id)
            before = None if before_id is None else int(before_id)
        except ValueError:
            return defer.fail(ValueError(f"not an archive id: {after_id or before_id!r}"))
        return self._run(_archive_query, user, after, before, start, end, with_, limit,
                         last or before is not None)

    def delete_all(self, user: str) -> defer.Deferred:
        return self._run(_archive_delete_all, user)


# Requests that only read, run without a savepoint of their own (the login path's reads).
_READS = frozenset((_get_credentials, _user_exists, _get_roster, _get_roster_item,
                    _get_roster_version, _get_subscribers, _get_subscriptions, _map_get,
                    _map_items, _list_peek))

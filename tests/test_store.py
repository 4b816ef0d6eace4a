"""One suite for every roster store backend: each test runs on embedded and on Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from presenced.scram import make_credentials, verify_password
from presenced.store import RosterItem


@pytest_twisted.ensureDeferred
async def test_accounts_keep_salted_keys_not_passwords(store):
    creds = make_credentials("s3cret", iterations=64)
    assert await store.create_user("alice@example.com", creds) is True
    assert await store.create_user("alice@example.com", creds) is False
    assert await store.user_exists("alice@example.com")
    assert not await store.user_exists("bob@example.com")
    got = await store.get_credentials("alice@example.com")
    assert verify_password(got, "s3cret")
    assert not verify_password(got, "wrong")
    for mech in ("SCRAM-SHA-1", "SCRAM-SHA-256"):
        assert b"s3cret" not in got.scram[mech].stored_key + got.scram[mech].server_key
    assert await store.get_credentials("bob@example.com") is None
    assert await store.set_credentials("bob@example.com", creds) is False
    assert await store.set_credentials("alice@example.com", make_credentials("new", 64))
    assert verify_password(await store.get_credentials("alice@example.com"), "new")
    assert await store.count_users() == 1


@pytest_twisted.ensureDeferred
async def test_search_users_escapes_like_wildcards(store):
    creds = make_credentials("x", iterations=8)
    for user in ("alice@a.org", "al_ice@a.org", "bob@a.org", "malcolm@b.org"):
        await store.create_user(user, creds)
    assert await store.search_users("al", 10) == ["al_ice@a.org", "alice@a.org", "malcolm@b.org"]
    assert await store.search_users("_", 10) == ["al_ice@a.org"]
    assert await store.search_users("%", 10) == []
    assert len(await store.search_users("a", 2)) == 2


@pytest_twisted.ensureDeferred
async def test_roster_items_round_trip_with_versions(store):
    assert await store.get_roster_version("a@x") == 0
    item = RosterItem("b@x", "to", name='Bob "|" B', groups=("Friends", "Work|Team"),
                      ask=True, approved=False)
    v1 = await store.set_roster_item("a@x", item)
    assert await store.get_roster_item("a@x", "b@x") == item
    v2 = await store.set_roster_item("a@x", RosterItem("c@x", approved=True))
    assert v2 > v1
    roster = await store.get_roster("a@x")
    assert [i.jid for i in roster] == ["b@x", "c@x"]
    assert roster[1] == RosterItem("c@x", "none", approved=True)
    v3 = await store.remove_roster_item("a@x", "b@x")
    assert v3 > v2
    assert await store.remove_roster_item("a@x", "b@x") is None
    assert await store.get_roster_item("a@x", "b@x") is None
    assert await store.get_roster_version("a@x") == v3


@pytest_twisted.ensureDeferred
async def test_add_friends_is_mutual_both_and_subscribed(store):
    assert await store.add_friends([("a@x", "b@x"), ("a@x", "c@x")]) == 2
    assert (await store.get_roster_item("a@x", "b@x")).subscription == "both"
    assert (await store.get_roster_item("b@x", "a@x")).subscription == "both"
    assert sorted(await store.get_subscribers("a@x")) == ["b@x", "c@x"]
    assert await store.get_subscribers("b@x") == ["a@x"]
    assert sorted(await store.get_subscriptions("a@x")) == ["b@x", "c@x"]
    await store.remove_friends([("b@x", "a@x")])
    assert await store.get_roster_item("a@x", "b@x") is None
    assert await store.get_roster_item("b@x", "a@x") is None
    assert await store.get_subscribers("a@x") == ["c@x"]
    assert await store.get_subscribers("b@x") == []


@pytest_twisted.ensureDeferred
async def test_subscription_graph_is_directed(store):
    assert await store.add_subscriptions([("fan@x", "star@x"), ("fan2@x", "star@x")]) == 2
    await store.add_subscriptions([("fan@x", "star@x")])
    assert sorted(await store.get_subscribers("star@x")) == ["fan2@x", "fan@x"]
    assert await store.get_subscribers("fan@x") == []
    assert await store.get_subscriptions("fan@x") == ["star@x"]
    await store.remove_subscriptions([("fan@x", "star@x")])
    assert await store.get_subscribers("star@x") == ["fan2@x"]
    assert await store.get_roster("star@x") == []


@pytest_twisted.ensureDeferred
async def test_map_keeps_one_value_per_key_and_user(store):
    pep = store.open_map("pep")
    assert store.open_map("pep") is pep
    await pep.set("a@x", "tune", "1")
    await pep.set("a@x", "tune", "2")
    await pep.set("a@x", "mood", "m")
    await pep.set("b@x", "tune", "other")
    assert await pep.get("a@x", "tune") == "2"
    assert await pep.items("a@x") == {"tune": "2", "mood": "m"}
    assert await pep.delete("a@x", "tune") is True
    assert await pep.delete("a@x", "tune") is False
    assert await pep.get("a@x", "tune") is None
    assert await pep.get("nobody@x", "tune") is None
    assert await store.open_map("private").items("a@x") == {}
    with pytest.raises(ValueError):
        store.open_list("pep")
    for bad in ("roster", "Bad", "a:b", ""):
        with pytest.raises(ValueError):
            store.open_map(bad)


@pytest_twisted.ensureDeferred
async def test_map_compare_and_set_writes_only_over_the_value_expected(store):
    nodes = store.open_map("pubsub")
    assert await nodes.compare_and_set("t/1", "node", None, "v1") is True  # created
    assert await nodes.compare_and_set("t/1", "node", None, "again") is False
    assert await nodes.compare_and_set("t/1", "node", "stale", "v2") is False
    assert await nodes.get("t/1", "node") == "v1"
    assert await nodes.compare_and_set("t/1", "node", "v1", "v2 é") is True
    assert await nodes.compare_and_set("t/1", "node", "v2 é", "") is True
    assert await nodes.get("t/1", "node") == ""
    assert await nodes.compare_and_set("t/1", "node", "v1", None) is False
    assert await nodes.compare_and_set("t/1", "node", "", None) is True  # deleted
    assert await nodes.get("t/1", "node") is None
    assert await nodes.compare_and_set("t/1", "node", "", None) is False


@pytest_twisted.ensureDeferred
async def test_list_is_bounded_and_popped_in_order(store):
    offline = store.open_list("offline")
    for i in range(3):
        assert await offline.push("a@x", f"<message id='{i}'/>", 3)
    assert await offline.push("a@x", "<message id='overflow'/>", 3) is False
    assert await offline.peek("a@x") == [f"<message id='{i}'/>" for i in range(3)]
    assert await offline.pop_all("a@x") == [f"<message id='{i}'/>" for i in range(3)]
    assert await offline.pop_all("a@x") == []


@pytest_twisted.ensureDeferred
async def test_archive_pages_by_id_and_time(store):
    archive = store.open_archive("archive")
    ids = [await archive.append("a@x", f"m{i}", 1000.0 + i, "b@x" if i % 2 else "c@x")
           for i in range(10)]
    assert ids == sorted(ids, key=int) and len(set(ids)) == 10
    page = await archive.query("a@x", limit=3)
    assert [e.value for e in page.entries] == ["m0", "m1", "m2"] and not page.complete
    page = await archive.query("a@x", after_id=page.entries[-1].id, limit=3)
    assert [e.value for e in page.entries] == ["m3", "m4", "m5"]
    page = await archive.query("a@x", limit=3, last=True)
    assert [e.value for e in page.entries] == ["m7", "m8", "m9"] and not page.complete
    page = await archive.query("a@x", before_id=page.entries[0].id, limit=10)
    assert [e.value for e in page.entries] == [f"m{i}" for i in range(7)] and page.complete
    page = await archive.query("a@x", start=1002.0, end=1005.0)
    assert [e.value for e in page.entries] == ["m2", "m3", "m4", "m5"] and page.complete
    assert page.entries[0].when == 1002.0 and page.entries[0].with_ == "c@x"
    page = await archive.query("a@x", with_="b@x", start=1004.0, limit=2)
    assert [e.value for e in page.entries] == ["m5", "m7"] and not page.complete
    assert (await archive.query("nobody@x")).entries == ()
    assert await archive.delete_all("a@x") == 10
    assert (await archive.query("a@x")).entries == ()
    assert int(await archive.append("a@x", "again", 2000.0)) > int(ids[-1])


@pytest_twisted.ensureDeferred
async def test_a_burst_of_appends_keeps_order_ids_and_bounds(store):
    """Appends made in one reactor turn, not awaited one by one, each get their own
    increasing id, in the order made, on every backend: the node assigns ids (on Redis
    Cluster the store's counter once gave them out of that order). The embedded store sends
    them to its worker together, 256 a request."""
    from twisted.internet import defer

    archive = store.open_archive("archive")
    made = [archive.append("a@x" if i % 3 else "b@x", f"m{i}", 1000.0 + i, "c@x", keep=500)
            for i in range(600)]
    ids = await defer.gatherResults(made)
    for owner, mine in (("a@x", [i for i in range(600) if i % 3]),
                        ("b@x", [i for i in range(600) if not i % 3])):
        owned = [int(ids[i]) for i in mine]
        assert owned == sorted(set(owned))
        page = await archive.query(owner, limit=1000)
        assert [e.value for e in page.entries] == [f"m{i}" for i in mine][-500:]
        assert [e.id for e in page.entries] == [ids[i] for i in mine][-500:]


@pytest_twisted.ensureDeferred
async def test_entries_appended_in_one_turn_share_one_deferred_and_keep_their_bounds(store):
    """append_entries, the message-rate path: every call of a reactor turn gets the turn's
    Deferred, which fires once all of them are written (more than one request's worth, for
    users on any node), each user's archive in id order and within ``keep``."""
    archive = store.open_archive("archive")
    calls = []
    for i in range(300):
        ids = [archive.new_id(1000.0 + i) for _ in range(2)]
        calls.append(archive.append_entries(
            [(f"u{i % 7}@x", ids[0], f"m{i}", 1000.0 + i, "peer@x"),
             ("all@x", ids[1], f"m{i}", 1000.0 + i, f"u{i % 7}@x")], keep=250))
    assert len({id(d) for d in calls}) <= 3  # one a turn (a request of 256 on embedded)
    await calls[-1]
    assert all(d.called for d in calls)
    page = await archive.query("all@x", limit=1000)
    assert [e.value for e in page.entries] == [f"m{i}" for i in range(50, 300)]
    assert page.entries[0].with_ == f"u{50 % 7}@x" and page.entries[0].when == 1050.0
    page = await archive.query("u3@x", limit=1000)
    assert [e.value for e in page.entries] == [f"m{i}" for i in range(300) if i % 7 == 3]
    assert await store.user_store_names("u3@x") == {"archive": "archive"}  # copy-store's list
    later = archive.append_entries([("all@x", archive.new_id(2000.0), "late", 2000.0, None)])
    assert later is not calls[0]
    await later
    assert (await archive.query("all@x", last=True, limit=1)).entries[0].value == "late"


@pytest_twisted.ensureDeferred
async def test_an_embedded_archive_is_counted_again_after_a_restart_from_a_version_1_file(
        tmp_path):
    """The embedded store keeps archive sizes in memory, counted on a run's first append
    (version 1 kept them in a table, and an index by time: both dropped on upgrade):
    ``keep`` and ``since`` hold across restarts."""
    import sqlite3

    from presenced.store.embedded import SCHEMA_VERSION, EmbeddedRosterStore

    path = tmp_path / "presenced.sqlite3"
    store = EmbeddedRosterStore(str(path))
    await store.start()
    for i in range(5):
        await store.open_archive("mam").append("a@x", f"m{i}", 1000.0 + i, "b@x")
    await store.stop()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE archive_sizes (owner INTEGER NOT NULL, store TEXT NOT NULL, "
                 "entries INTEGER NOT NULL, PRIMARY KEY (owner, store)) WITHOUT ROWID")
    conn.execute("CREATE INDEX archives_by_time ON archives (owner, store, at)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = EmbeddedRosterStore(str(path))
    await store.start()
    try:
        archive = store.open_archive("mam")
        await archive.append("a@x", "m5", 1005.0, "b@x", keep=4)
        assert [e.value for e in (await archive.query("a@x")).entries] == ["m2", "m3", "m4",
                                                                          "m5"]
        await archive.append("a@x", "m6", 1006.0, "b@x", keep=4, since=1004.0)
        assert [e.value for e in (await archive.query("a@x")).entries] == ["m4", "m5", "m6"]
    finally:
        await store.stop()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name IN "
                        "('archive_sizes', 'archives_by_time')").fetchone()[0] == 0
    conn.close()


@pytest_twisted.ensureDeferred
async def test_archive_append_drops_entries_beyond_keep_and_older_than_since(store):
    archive = store.open_archive("archive")
    for i in range(6):
        await archive.append("a@x", f"m{i}", 1000.0 + i, "b@x", keep=4)
    await archive.append("b@x", "other user", 1000.0, "a@x")
    page = await archive.query("a@x")
    assert [e.value for e in page.entries] == ["m2", "m3", "m4", "m5"]
    await archive.append("a@x", "m6", 1006.0, "b@x", since=1004.0)
    assert [e.value for e in (await archive.query("a@x")).entries] == ["m4", "m5", "m6"]
    for i in range(250):  # more than one batch of expired entries
        await archive.append("c@x", f"n{i}", 1.0 + i)
    await archive.append("c@x", "fresh", 500.0, since=240.5)
    values = [e.value for e in (await archive.query("c@x")).entries]
    assert values == [f"n{i}" for i in range(240, 250)] + ["fresh"]
    assert [e.value for e in (await archive.query("b@x")).entries] == ["other user"]
    # The count behind ``keep`` follows every change: expiry above, then appends with and
    # without a bound, then deleting everything.
    await archive.append("a@x", "m7", 1007.0, "b@x", keep=3)
    assert [e.value for e in (await archive.query("a@x")).entries] == ["m5", "m6", "m7"]
    await archive.append("a@x", "m8", 1008.0, "b@x")
    await archive.append("a@x", "m9", 1009.0, "b@x", keep=3)
    assert [e.value for e in (await archive.query("a@x")).entries] == ["m7", "m8", "m9"]
    assert await archive.delete_all("a@x") == 3
    for i in range(3):
        await archive.append("a@x", f"k{i}", 2000.0 + i, "b@x", keep=2)
    assert [e.value for e in (await archive.query("a@x")).entries] == ["k1", "k2"]
    await archive.append("a@x", "gone", 3000.0, "b@x", since=3001.0)  # empties the archive
    await archive.append("a@x", "kept", 3002.0, "b@x", since=3001.0)
    assert [e.value for e in (await archive.query("a@x")).entries] == ["kept"]


@pytest_twisted.ensureDeferred
async def test_remove_user_deletes_everything_it_owns(store):
    await store.create_user("a@x", make_credentials("p", iterations=8))
    await store.add_friends([("a@x", "b@x")])
    await store.add_subscriptions([("a@x", "star@x")])
    await store.open_map("pep").set("a@x", "tune", "<tune/>")
    await store.open_list("offline").push("a@x", "<message/>", 10)
    await store.open_archive("archive").append("a@x", "<message/>", 1.0)
    await store.open_map("pep").set("b@x", "tune", "<tune/>")
    assert await store.remove_user("a@x") is True
    assert not await store.user_exists("a@x")
    assert await store.get_roster("a@x") == []
    assert await store.get_roster("b@x") == []
    assert await store.get_subscribers("b@x") == []
    assert await store.get_subscribers("star@x") == []
    assert await store.open_map("pep").items("a@x") == {}
    assert await store.open_list("offline").peek("a@x") == []
    assert (await store.open_archive("archive").query("a@x")).entries == ()
    assert await store.open_map("pep").items("b@x") == {"tune": "<tune/>"}
    assert await store.remove_user("a@x") is False


@pytest_twisted.ensureDeferred
async def test_bulk_friends_in_one_call(store):
    pairs = [(f"u{i}@x", f"u{j}@x") for i in range(60) for j in range(i + 1, 60, 7)]
    assert await store.add_friends(pairs) == len(pairs)
    expected = sorted({b for a, b in pairs if a == "u0@x"} | {a for a, b in pairs if b == "u0@x"})
    assert sorted(await store.get_subscribers("u0@x")) == expected
    assert len(await store.get_roster("u0@x")) == len(expected)


# The tables of release 6495b55 (schema version 0) that the upgrade moves.
OLD_TABLES = """
CREATE TABLE pep (owner INTEGER NOT NULL, node TEXT NOT NULL, item_id TEXT NOT NULL,
    payload TEXT NOT NULL, PRIMARY KEY (owner, node)) WITHOUT ROWID;
CREATE TABLE offline (id INTEGER PRIMARY KEY AUTOINCREMENT, owner INTEGER NOT NULL,
    stanza TEXT NOT NULL);
CREATE TABLE pending (owner INTEGER NOT NULL, contact TEXT NOT NULL, stanza TEXT NOT NULL,
    PRIMARY KEY (owner, contact)) WITHOUT ROWID;
CREATE TABLE private (owner INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (owner, key)) WITHOUT ROWID;
"""


@pytest_twisted.ensureDeferred
async def test_embedded_upgrades_a_version_0_file(tmp_path: Path):
    import sqlite3

    from presenced.pep import PepItem
    from presenced.store.codec import credentials_to_json
    from presenced.store.embedded import SCHEMA, SCHEMA_VERSION, EmbeddedRosterStore

    path = tmp_path / "presenced.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA.split("CREATE TABLE IF NOT EXISTS maps")[0] + OLD_TABLES)
    conn.executemany("INSERT INTO ids (id, jid) VALUES (?, ?)", [(1, "a@x"), (2, "b@x")])
    creds = credentials_to_json(make_credentials("p", iterations=8))
    conn.executemany("INSERT INTO accounts VALUES (?, ?)", [(1, creds), (2, creds)])
    conn.execute("INSERT INTO friends VALUES (1, 2), (2, 1)")
    conn.execute("INSERT INTO pep VALUES (1, 'http://jabber.org/protocol/tune', 'current', "
                 "'<tune><title>T</title></tune>')")
    conn.executemany("INSERT INTO offline (owner, stanza) VALUES (?, ?)",
                     [(1, "<message id='1'/>"), (1, "<message id='2'/>")])
    conn.execute("INSERT INTO pending VALUES (2, 'c@x', '<presence/>')")
    conn.execute("INSERT INTO private VALUES (1, 'vcard-temp', '<vCard/>')")
    conn.commit()
    conn.close()
    store = EmbeddedRosterStore(str(path))
    await store.start()
    try:
        assert await store.user_exists("a@x") and await store.user_exists("b@x")
        assert [i.jid for i in await store.get_roster("a@x")] == ["b@x"]
        tune = await store.open_map("pep").get("a@x", "http://jabber.org/protocol/tune")
        assert PepItem.decode(tune) == PepItem("current", "<tune><title>T</title></tune>")
        assert await store.open_list("offline").peek("a@x") == ["<message id='1'/>",
                                                                 "<message id='2'/>"]
        assert await store.open_map("pending").items("b@x") == {"c@x": "<presence/>"}
        assert await store.open_map("private").get("a@x", "vcard-temp") == "<vCard/>"
    finally:
        await store.stop()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name IN "
                        "('pep', 'offline', 'pending', 'private')").fetchone()[0] == 0
    conn.close()


@pytest_twisted.ensureDeferred
async def test_dump_lists_every_user_with_data_and_their_stores(store):
    await store.create_user("acct@x", make_credentials("p", iterations=8))
    await store.add_subscriptions([("fan@x", "star@x")])
    await store.open_map("pep").set("mapper@x", "tune", "<tune/>")
    await store.open_list("offline").push("lister@x", "<message/>", 10)
    await store.open_archive("mam").append("archiver@x", "<message/>", 1.0)
    everyone = ["acct@x", "archiver@x", "fan@x", "lister@x", "mapper@x", "star@x"]
    assert await store.dump_users("", 100) == everyone
    assert await store.dump_users("", 2) == everyone[:2]
    assert await store.dump_users("fan@x", 2) == everyone[3:5]
    assert await store.dump_users("star@x", 10) == []
    assert await store.user_store_names("mapper@x") == {"pep": "map"}
    assert await store.user_store_names("lister@x") == {"offline": "list"}
    assert await store.user_store_names("archiver@x") == {"mam": "archive"}
    assert await store.user_store_names("acct@x") == {}



@pytest_twisted.ensureDeferred
async def test_embedded_hands_one_turns_requests_to_its_thread_at_once(tmp_path: Path,
                                                                     monkeypatch):
    """The embedded store's thread gets a turn's requests as one hand-off (a login asks
    several capability stores in one turn) and the reactor hears all their answers in one
    call; each is answered as if asked alone, in order, a write before a read included."""
    from twisted.internet import defer

    from presenced.store import embedded

    answered: list[int] = []  # requests answered per call into the reactor
    fire = embedded._fire
    monkeypatch.setattr(embedded, "_fire", lambda results: (answered.append(len(results)),
                                                             fire(results)))
    store = embedded.EmbeddedRosterStore(str(tmp_path / "turns.sqlite3"))
    await store.start()
    try:
        await store.create_user("a@x", make_credentials("pw", iterations=8))
        prefs, inbox = store.open_map("t-prefs"), store.open_list("t-inbox")
        asked = [prefs.set("a@x", "k", "v1"), prefs.get("a@x", "k"),
                 inbox.push("a@x", "m1", 10), inbox.push("a@x", "m2", 10),
                 inbox.pop_all("a@x"), prefs.set("a@x", "k", "v2"), prefs.items("a@x"),
                 store.get_credentials("a@x"), store.user_exists("b@x"),
                 store.get_subscriptions("a@x")]
        assert not any(d.called for d in asked)  # nothing runs on the reactor thread
        assert store._worker.requests.qsize() == 0  # handed over when the turn ends
        answered.clear()
        answers = await defer.gatherResults(asked)
        assert answered == [len(asked)]  # answered together
        assert answers[1] == "v1" and answers[4] == ["m1", "m2"] and answers[6] == {"k": "v2"}
        assert verify_password(answers[7], "pw") and answers[8] is False and answers[9] == []
    finally:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_embedded_archive_ids_continue_above_the_highest_after_a_restart(tmp_path):
    """Ids follow the clock; one set back (or entries appended ahead of it) must not give an
    id that is in the file already."""
    from presenced.store.embedded import EmbeddedRosterStore

    path = str(tmp_path / "store.sqlite3")
    first = EmbeddedRosterStore(path)
    await first.start()
    ahead = await first.open_archive("archive").append("a@x", "ahead", 4_000_000_000.0)
    await first.stop()
    again = EmbeddedRosterStore(path)
    await again.start()
    archive = again.open_archive("archive")
    later = await archive.append("a@x", "now", 1000.0)
    assert int(later) > int(ahead)
    assert [e.value for e in (await archive.query("a@x")).entries] == ["ahead", "now"]
    await again.stop()

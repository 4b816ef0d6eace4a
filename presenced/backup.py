"""Backup and restore of the embedded store (``presencedctl backup`` / ``restore``).

A backup is SQLite's online backup of the store file, done by its own connection: the copy
is one read transaction, a snapshot of everything committed when it began (the store
acknowledges no write before its COMMIT), and with WAL the server goes on writing while it
runs. The copy carries a ``presenced_backup`` table (format version, store schema, time) so
``restore`` can refuse a file it does not understand. Restoring replaces the store file of a
server that is not running. A Redis store is backed up into this same format by copying it
into an embedded store first (``presencedctl``, :mod:`presenced.copystore`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

from presenced.store.embedded import SCHEMA_VERSION

FORMAT = 1
META = "presenced_backup"


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why."""


def store_path(data_dir: str) -> str:
    return os.path.join(data_dir, "presenced.sqlite3")


def server_pid(data_dir: str) -> int | None:
    """The pid of the server running over ``data_dir``, or None: ``run/ports.json`` records
    it once the server is ready, and a stale file (the process is gone) is ignored."""
    try:
        with open(os.path.join(data_dir, "run", "ports.json")) as f:
            pid = json.load(f).get("ready")
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it exists, under another user
    return pid


def backup(data_dir: str, target: str) -> dict[str, object]:
    """Write a consistent copy of the store to ``target`` (blocking: run it in a thread);
    returns the metadata written into it."""
    source_path = store_path(data_dir)
    if not os.path.exists(source_path):
        raise BackupError(f"no store at {source_path}")
    partial = target + ".partial"
    if os.path.exists(partial):
        os.remove(partial)
    source = sqlite3.connect(source_path, timeout=30)
    copy = sqlite3.connect(partial)
    try:
        source.backup(copy)  # all pages in one step: one snapshot
        schema = copy.execute("PRAGMA user_version").fetchone()[0]
        meta = {"format": FORMAT, "schema": schema, "created": time.time(),
                "source": os.path.abspath(source_path)}
        copy.execute(f"CREATE TABLE {META} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        copy.executemany(f"INSERT INTO {META} VALUES (?, ?)",
                         [(k, json.dumps(v)) for k, v in meta.items()])
        copy.commit()
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        copy.close()
        source.close()
    os.replace(partial, target)
    return meta


def read_meta(path: str) -> dict[str, object]:
    """The metadata of a backup file; raises :class:`BackupError` if it is not one."""
    if not os.path.isfile(path):
        raise BackupError(f"no file {path}")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute(f"SELECT key, value FROM {META}").fetchall()
        finally:
            db.close()
    except sqlite3.Error as e:
        raise BackupError(f"{path} is not a presenced backup: {e}") from None
    meta = {k: json.loads(v) for k, v in rows}
    if meta.get("format") != FORMAT:
        raise BackupError(f"{path}: backup format {meta.get('format')!r}, this version reads "
                          f"{FORMAT}")
    if not isinstance(meta.get("schema"), int) or meta["schema"] > SCHEMA_VERSION:
        raise BackupError(f"{path}: store schema {meta.get('schema')!r} is newer than this "
                          f"version's ({SCHEMA_VERSION})")
    return meta


def restore(source: str, data_dir: str, force: bool = False) -> dict[str, object]:
    """Make the backup ``source`` the store of ``data_dir``, whose server must be stopped;
    an existing store is only replaced with ``force``."""
    meta = read_meta(source)
    pid = server_pid(data_dir)
    if pid is not None:
        raise BackupError(f"the server over {data_dir} is running (pid {pid}): stop it first")
    target = store_path(data_dir)
    if os.path.exists(target) and not force:
        raise BackupError(f"{target} exists: pass --force to replace it")
    os.makedirs(data_dir, exist_ok=True)
    partial = target + ".restoring"
    if os.path.exists(partial):
        os.remove(partial)
    db, copy = sqlite3.connect(f"file:{source}?mode=ro", uri=True), sqlite3.connect(partial)
    try:
        db.backup(copy)
        copy.execute(f"DROP TABLE {META}")
        copy.commit()
    finally:
        copy.close()
        db.close()
    for leftover in (target + "-wal", target + "-shm"):
        if os.path.exists(leftover):
            os.remove(leftover)
    os.replace(partial, target)
    return meta

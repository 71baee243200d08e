# -*- test-case-name: tests.test_state_sqlite -*-
"""
The blocking half of the SQLite store: one connection, used by one thread
(L{llmproxy.state.sqlite.SQLiteState}'s), never the reactor's.

The file is in WAL mode (readers never wait for the writer).  A change of
the file's identity (deleted, replaced, moved away and back) is noticed at
the next operation, which reopens it, so every process follows the file
at the path rather than a ghost of it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import replace
from typing import Any, Iterable

from llmproxy.state.base import Bounds, Change, Fact, SessionState

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, created REAL NOT NULL,
                                      body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created);
CREATE TABLE IF NOT EXISTS sessions (key TEXT PRIMARY KEY, last_seen REAL NOT NULL,
                                     body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_seen ON sessions (last_seen);
CREATE TABLE IF NOT EXISTS facts (kind TEXT, backend TEXT, subject TEXT,
                                  until REAL NOT NULL, body TEXT NOT NULL,
                                  PRIMARY KEY (kind, backend, subject));
CREATE TABLE IF NOT EXISTS fact_log (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                                     at REAL NOT NULL, origin TEXT NOT NULL,
                                     body TEXT NOT NULL);
"""

#: How long the log of facts keeps an entry (seconds): a process that
#: stops hearing for longer re-reads the current facts instead.
LOG_KEPT = 300.0


class Database:
    """
    The state file, opened on first use and reopened when it changes or
    after an error.  Each method raises L{sqlite3.Error} on failure.
    """

    def __init__(self, path: str, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._connection: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None

    def connection(self) -> sqlite3.Connection:
        """
        The open connection, (re)opened when the file at the path is not
        the one it has open.
        """
        path = self.path  # one name throughout, whatever changes it meanwhile
        try:
            st = os.stat(path)
            identity: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            identity = None
        if self._connection is not None and identity == self._identity:
            return self._connection
        self.close()
        connection = sqlite3.connect(path, timeout=self.busy_timeout,
                                     isolation_level=None, check_same_thread=False)
        try:
            self._prepare(connection)
            st = os.stat(path)
        except OSError as e:  # the file went away meanwhile
            connection.close()
            raise sqlite3.OperationalError(f"cannot open: {e.strerror}") from None
        except BaseException:
            connection.close()
            raise
        self._connection, self._identity = connection, (st.st_dev, st.st_ino)
        return connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        """
        WAL mode and the tables, writing only when they are missing.
        Processes starting together race for the new file's first write
        lock, which SQLite may refuse at once rather than wait: tried again
        (on this thread) until the busy timeout.
        """
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                connection.execute("PRAGMA journal_mode=WAL").fetchall()
                connection.execute("PRAGMA synchronous=NORMAL")
                (tables,) = connection.execute(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN "
                    "('responses', 'sessions', 'facts', 'fact_log')").fetchone()
                if tables < 4:
                    connection.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
                return
            except sqlite3.OperationalError as e:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _run(self, sql: str, *args: Any) -> list[Any]:
        try:
            return self.connection().execute(sql, args).fetchall()
        except sqlite3.Error:
            self.close()
            raise

    def _transaction(self, work: Any, *args: Any) -> Any:
        """
        C{work(connection, *args)} inside C{BEGIN IMMEDIATE} .. C{COMMIT}
        (no other process writes in between).
        """
        try:
            db = self.connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db, *args)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result
        except sqlite3.Error:
            self.close()
            raise

    # responses

    def get_response(self, response_id: str, now: float, max_age: float) -> str | None:
        rows = self._run("SELECT body FROM responses WHERE id = ? AND created >= ?",
                         response_id, now - max_age)
        return rows[0][0] if rows else None

    def put_response(self, response_id: str, created: float, body: str,
                     max_items: int) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?)",
                       (response_id, created, body))
            _trim(db, "responses", "id", "created", max_items)

        if max_items > 0:
            self._transaction(work)

    # conversations

    def get_session(self, key: str, now: float, max_age: float) -> SessionState:
        rows = self._run("SELECT body FROM sessions WHERE key = ? AND last_seen >= ?",
                         key, now - max_age)
        return SessionState.from_json(rows[0][0]) if rows else SessionState()

    def update_session(self, key: str, change: Change, now: float,
                       bounds: Bounds) -> SessionState:
        def work(db: sqlite3.Connection) -> SessionState:
            rows = db.execute("SELECT body FROM sessions WHERE key = ? AND last_seen >= ?",
                              (key, now - bounds.max_age)).fetchall()
            old = SessionState.from_json(rows[0][0]) if rows else SessionState()
            new = replace(change(old), last_seen=now)
            db.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?)",
                       (key, now, new.to_json()))
            _trim(db, "sessions", "key", "last_seen", bounds.max_items)
            return new

        result: SessionState = self._transaction(work)
        return result

    def expire(self, now: float, responses: Bounds, sessions: Bounds) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM responses WHERE created < ?", (now - responses.max_age,))
            db.execute("DELETE FROM sessions WHERE last_seen < ?", (now - sessions.max_age,))
            _trim(db, "responses", "id", "created", responses.max_items)
            _trim(db, "sessions", "key", "last_seen", sessions.max_items)
            db.execute("DELETE FROM facts WHERE until <= ?", (now,))
            db.execute("DELETE FROM fact_log WHERE at < ?", (now - LOG_KEPT,))

        self._transaction(work)

    # facts

    def write_fact(self, fact: Fact, now: float) -> None:
        body = fact.to_json()

        def work(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO facts VALUES (?, ?, ?, ?, ?)",
                       (*fact.identity, fact.until, body))
            db.execute("INSERT INTO fact_log (at, origin, body) VALUES (?, ?, ?)",
                       (now, fact.origin, body))

        self._transaction(work)

    def current_facts(self, now: float) -> list[Fact]:
        rows = self._run("SELECT body FROM facts WHERE until > ?", now)
        return _facts(body for (body,) in rows)

    def last_seq(self) -> int:
        rows = self._run("SELECT COALESCE(MAX(seq), 0) FROM fact_log")
        return int(rows[0][0])

    def facts_after(self, seq: int, origin: str) -> tuple[int, list[Fact]]:
        """
        The facts others logged after C{seq}, in order, and the last seq.
        """
        rows = self._run("SELECT seq, origin, body FROM fact_log WHERE seq > ? ORDER BY seq",
                         seq)
        last = rows[-1][0] if rows else seq
        return last, _facts(body for _, who, body in rows if who != origin)


def _facts(bodies: Iterable[str]) -> list[Fact]:
    """
    The facts written as C{bodies}, leaving out any this version cannot
    read (a newer one wrote it).
    """
    facts = []
    for body in bodies:
        try:
            facts.append(Fact.from_json(body))
        except (ValueError, KeyError, TypeError):
            continue
    return facts


def _trim(db: sqlite3.Connection, table: str, key: str, order: str, max_items: int) -> None:
    """
    Keep the C{max_items} newest rows of C{table} (by C{order}, then by
    when written).
    """
    (count,) = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    if count > max_items:
        db.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} "
                   f"ORDER BY {order}, rowid LIMIT ?)", (count - max_items,))


__all__ = ["Database", "LOG_KEPT", "SCHEMA"]

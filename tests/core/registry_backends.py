"""The registry backends behaviour tests run against: one TestCase per backend.

pytest cannot parametrize a trial ``TestCase`` (its fixtures do not reach unittest
classes), so a backend is a mixin that gives a test class its registry, and each
backend-independent test class is declared once per backend::

    class QueueTests(RegistryContract): ...              # the tests, no backend
    class SqliteQueueTest(SqliteBackend, QueueTests, unittest.TestCase): ...
    class MemoryQueueTest(MemoryBackend, QueueTests, unittest.TestCase): ...
    class PostgresQueueTest(PostgresBackend, QueueTests, unittest.TestCase): ...

All run on the reactor trial spins: SqliteRegistry on a real file, MemoryRegistry
on a MemoryStore that commits on the reactor's next turn (so that, as with SQLite,
nothing is committed synchronously), PostgresRegistry on a schema of its own on the
session's throw-away cluster. What a test reads "from the database" it reads through
:meth:`RegistryContract.stored`: a SELECT on its own connection, or the store's rows.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from twisted.internet import reactor
from twisted.trial import unittest

from m2mgw.core.postgres.registry import PostgresRegistry
from m2mgw.core.registry import tables
from m2mgw.core.registry.cached import CachedRegistry
from m2mgw.core.registry.memory import MemoryRegistry, MemoryStore
from m2mgw.core.registry.sqlite import SqliteRegistry
from tests.pgcluster import PgCluster

# The mixins are TestCases to the type checker only: each test class adds one itself.
_TestCase = unittest.TestCase if TYPE_CHECKING else object


class RegistryContract(_TestCase):
    """What a backend gives its test class; the tests use only this."""

    #: Which backend, in messages.
    backend = ""

    def registry_clock(self) -> Any:
        """The clock (or reactor) the registry stamps writes with and runs timers on."""
        return reactor

    def new_registry(self, **kw: Any) -> CachedRegistry:
        """A registry on the test's database, not open yet."""
        raise NotImplementedError

    def stored(self, table: str, *columns: str, order: str | None = None) -> list[tuple[Any, ...]]:
        """``columns`` of every committed row of ``table`` (by ``order``, else by key)."""
        raise NotImplementedError

    def count(self, table: str) -> int:
        """How many committed rows ``table`` has."""
        raise NotImplementedError

    def hold_writer(self) -> Any:
        """Make the writer wait until the returned object's ``release()``."""
        raise NotImplementedError

    async def open(self, **kw: Any) -> Any:
        registry = self.new_registry(**kw)
        await registry.open()
        self.addCleanup(registry.close)
        return registry

    async def reopen(self, registry: Any) -> Any:
        """Close ``registry`` and open another on the same database, as a restart."""
        await registry.close()
        return await self.open()


def db_rows(path: str, sql: str) -> list[tuple[Any, ...]]:
    """Read the file with an independent connection, as another process would."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


class WriterLock:
    """Another connection's open write transaction: the registry's writer must wait."""

    def __init__(self, path: str) -> None:
        self._conn: sqlite3.Connection | None = sqlite3.connect(path, isolation_level=None)
        self._conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self._conn is not None:
            self._conn.execute("COMMIT")
            self._conn.close()
            self._conn = None


class SqliteBackend(RegistryContract):
    """SqliteRegistry on a real file in the test's temporary directory."""

    backend = "sqlite"

    def setUp(self) -> None:
        super().setUp()
        self.path = str(Path(self.mktemp()).resolve())
        os.makedirs(os.path.dirname(self.path), exist_ok=True)

    def new_registry(self, **kw: Any) -> SqliteRegistry:
        return SqliteRegistry(self.path, self.registry_clock(), **kw)

    def stored(self, table: str, *columns: str, order: str | None = None) -> list[tuple[Any, ...]]:
        names = ", ".join(columns)
        return db_rows(self.path, f"SELECT {names} FROM {table}"
                                  + (f" ORDER BY {order}" if order else ""))

    def count(self, table: str) -> int:
        return int(db_rows(self.path, f"SELECT count(*) FROM {table}")[0][0])

    def hold_writer(self) -> WriterLock:
        lock = WriterLock(self.path)
        self.addCleanup(lock.release)
        return lock


class _StoreHold:
    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        store.hold()

    def release(self) -> None:
        self._store.release()


class MemoryBackend(RegistryContract):
    """MemoryRegistry on one MemoryStore per test, committing on the reactor's next
    turn; registries opened again in the test find the same store."""

    backend = "memory"

    def setUp(self) -> None:
        super().setUp()
        self.store = MemoryStore(reactor)

    def new_registry(self, **kw: Any) -> MemoryRegistry:
        return MemoryRegistry(self.registry_clock(), self.store, **kw)

    def stored(self, table: str, *columns: str, order: str | None = None) -> list[tuple[Any, ...]]:
        rows = self.store.rows(table)
        if order is not None:
            rows.sort(key=lambda row: row[order])
        return [tuple(row[c] for c in columns) for row in rows]

    def count(self, table: str) -> int:
        return len(self.store.rows(table))

    def hold_writer(self) -> _StoreHold:
        hold = _StoreHold(self.store)
        self.addCleanup(hold.release)
        return hold


_schemas = itertools.count(1)
#: Each table's key, the order ``stored`` reads it in when not told (SQLite's rowid).
_KEYS = {
    table.name: table.key or ("id",)
    for table in vars(tables).values() if isinstance(table, tables.Table)
}


class _TablesLock:
    """Another connection's open transaction holding every table of the schema: the
    registry's writer must wait (its id blocks do not: sequences are not locked)."""

    def __init__(self, url: str) -> None:
        self._conn: psycopg.Connection[Any] | None = psycopg.connect(url)
        names = self._conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
        self._conn.execute(
            f"LOCK TABLE {', '.join(n for n, in names)} IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        if self._conn is not None:
            self._conn.commit()
            self._conn.close()
            self._conn = None


class PostgresBackend(RegistryContract):
    """PostgresRegistry on a schema of its own in the session's throw-away cluster,
    the master key in the test's temporary directory."""

    backend = "postgresql"
    url: str

    @pytest.fixture(autouse=True)
    def _postgres_schema(self, postgres_cluster: PgCluster) -> None:
        self.url = postgres_cluster.create_schema(f"registry_{next(_schemas)}")

    def setUp(self) -> None:
        super().setUp()
        self.key_path = str(Path(self.mktemp()).resolve())

    def new_registry(self, **kw: Any) -> PostgresRegistry:
        return PostgresRegistry(self.url, self.registry_clock(), node="test",
                                master_key_file=self.key_path, **kw)

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        """One statement on a connection of its own, as another process would."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(query)
            return cursor.fetchall() if cursor.description else []

    def stored(self, table: str, *columns: str, order: str | None = None) -> list[tuple[Any, ...]]:
        by = order or ", ".join(_KEYS[table])
        return self.sql(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {by}")

    def count(self, table: str) -> int:
        return int(self.sql(f"SELECT count(*) FROM {table}")[0][0])

    def hold_writer(self) -> _TablesLock:
        lock = _TablesLock(self.url)
        self.addCleanup(lock.release)
        return lock

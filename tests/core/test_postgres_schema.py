"""PostgreSQL schema migrations: applied once, refused when newer, and the same schema
as SQLite's (tables, columns, keys, indexes) besides what only several nodes need."""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from twisted.internet.defer import gatherResults

from m2mgw.core.postgres.connection import PostgresError
from m2mgw.core.postgres.migrations import migrate
from m2mgw.core.registry.migrations import Migration, load_migrations
from m2mgw.core.registry.tables import SEALED_TABLES
from tests.core.postgres_support import PostgresTestCase

#: What the PostgreSQL schema has beyond SQLite's: the nodes' tables and claims (002).
PG_ONLY_TABLES = {"nodes", "terminal_owners", "schema_version"}
PG_ONLY_COLUMNS = {("app_notifications", "claimed_by"), ("app_notifications", "claimed_until")}
PG_ONLY_INDEXES = {"app_notifications_claimed", "terminal_owners_node"}
TYPES = {"INTEGER": "bigint", "REAL": "double precision", "TEXT": "text", "BLOB": "bytea"}
#: Sealed secrets are bytes: SQLite holds them in its TEXT columns, PostgreSQL in BYTEA
#: (003).
SEALED_COLUMNS = {(t.name, column) for t in SEALED_TABLES for column in t.sealed_columns}
MIGRATIONS = ["001_registry.sql", "002_nodes.sql", "003_registry_store.sql"]

Schema = dict[str, Any]


def sqlite_schema() -> Schema:
    """The SQLite registry's schema after all its migrations."""
    conn = sqlite3.connect(":memory:")
    for migration in load_migrations():
        conn.executescript(migration.sql)
    tables = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    columns, keys, unique, foreign = {}, {}, set(), set()
    for table in tables:
        info = conn.execute(f"PRAGMA table_info({table})").fetchall()
        columns[table] = [
            (name, "bytea" if (table, name) in SEALED_COLUMNS else TYPES[kind],
             bool(notnull or pk))
            for _, name, kind, notnull, _, pk in info
        ]
        keys[table] = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]]
        for _, index, is_unique, origin, _ in conn.execute(f"PRAGMA index_list({table})"):
            if is_unique and origin == "u":
                cols = [r[2] for r in conn.execute(f"PRAGMA index_info({index})")]
                unique.add((table, tuple(cols)))
        for row in conn.execute(f"PRAGMA foreign_key_list({table})"):
            foreign.add((table, row[3], row[2], row[4], row[6]))
    indexes = {}
    for name, table in conn.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"):
        cols = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({name})"))
        partial = " WHERE " in conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
        indexes[name] = (table, cols, partial)
    return {"columns": columns, "keys": keys, "unique": unique, "foreign": foreign,
            "indexes": indexes}


class SchemaTests(PostgresTestCase):
    maxDiff = None

    def pg_schema(self) -> Schema:
        columns: dict[str, list[tuple[str, str, bool]]] = {}
        for table, name, kind, nullable in self.sql(
                "SELECT table_name, column_name, data_type, is_nullable "
                "FROM information_schema.columns WHERE table_schema = current_schema() "
                "ORDER BY table_name, ordinal_position"):
            if table not in PG_ONLY_TABLES and (table, name) not in PG_ONLY_COLUMNS:
                columns.setdefault(table, []).append((name, kind, nullable == "NO"))
        constraints = self.sql(
            "SELECT c.conrelid::regclass::text, c.contype, "
            "  ARRAY(SELECT attname FROM unnest(c.conkey) WITH ORDINALITY k(n, i) "
            "        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n "
            "        ORDER BY k.i), "
            "  c.confrelid::regclass::text, "
            "  ARRAY(SELECT attname FROM unnest(c.confkey) k(n) "
            "        JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n), "
            "  c.confdeltype "
            "FROM pg_constraint c JOIN pg_namespace s ON s.oid = c.connamespace "
            "WHERE s.nspname = current_schema()")
        keys, unique, foreign = {}, set(), set()
        deletes = {"c": "CASCADE", "a": "NO ACTION"}
        for table, kind, cols, ref, ref_cols, on_delete in constraints:
            if table in PG_ONLY_TABLES:
                continue
            if kind == "p":
                keys[table] = list(cols)
            elif kind == "u":
                unique.add((table, tuple(cols)))
            elif kind == "f":
                foreign.add((table, cols[0], ref, ref_cols[0], deletes[on_delete]))
        indexes = {}
        for name, table, definition in self.sql(
                "SELECT indexname, tablename, indexdef FROM pg_indexes "
                "WHERE schemaname = current_schema() AND indexname NOT LIKE '%_pkey' "
                "AND indexname NOT LIKE '%_key'"):
            if name in PG_ONLY_INDEXES:
                continue
            cols = re.search(r"\((.*?)\)", definition).group(1)  # type: ignore[union-attr]
            indexes[name] = (table, tuple(c.strip().strip('"') for c in cols.split(",")),
                             " WHERE " in definition)
        for table in columns:
            keys.setdefault(table, [])
        return {"columns": columns, "keys": keys, "unique": unique, "foreign": foreign,
                "indexes": indexes}

    async def test_migrations_apply_once_and_record_their_versions(self) -> None:
        db = self.database()
        await db.open()
        self.assertEqual(await migrate(db), MIGRATIONS)
        self.assertEqual(await migrate(db), [])
        self.assertEqual(self.sql("SELECT version, name FROM schema_version ORDER BY version"),
                         list(enumerate(MIGRATIONS, 1)))
        [(instance_id,)] = self.sql("SELECT value FROM registry_meta WHERE name = 'instance_id'")
        self.assertRegex(instance_id, r"^[0-9a-f]{32}$")

    async def test_the_schema_is_sqlite_s_translated(self) -> None:
        db = self.database()
        await db.open()
        await migrate(db)
        expected, found = sqlite_schema(), self.pg_schema()
        for part in ("columns", "keys", "unique", "foreign", "indexes"):
            self.assertEqual(found[part], expected[part], part)

    async def test_nodes_opening_at_once_apply_each_migration_once(self) -> None:
        dbs = [self.database(), self.database(), self.database()]
        for db in dbs:
            await db.open()
        applied = await gatherResults([migrate(db) for db in dbs])
        self.assertEqual(sorted(name for names in applied for name in names), MIGRATIONS)
        self.assertEqual(self.sql("SELECT count(*) FROM registry_meta"), [(1,)])

    async def test_a_newer_database_is_refused(self) -> None:
        db = self.database()
        await db.open()
        await migrate(db)
        future = len(MIGRATIONS) + 1
        self.sql("INSERT INTO schema_version (version, name) VALUES (%s, 'future.sql')",
                 (future,))
        with self.assertRaises(PostgresError) as caught:
            await migrate(db)
        self.assertIn(f"database schema version {future} is newer than this m2mgw supports "
                      f"({len(MIGRATIONS)})", str(caught.exception))

    async def test_a_failing_migration_leaves_nothing_behind(self) -> None:
        db = self.database()
        await db.open()
        migrations = [
            Migration(1, "001_a.sql", "CREATE TABLE a (x INTEGER)"),
            Migration(2, "002_b.sql", "CREATE TABLE b (x INTEGER);\nSELECT no_such_column FROM a"),
        ]
        with self.assertRaises(PostgresError) as caught:
            await migrate(db, migrations)
        message = str(caught.exception)
        self.assertIn("schema migration 002_b.sql failed: column \"no_such_column\"", message)
        self.assertNotIn("\n", message)
        self.assertEqual(self.sql("SELECT version FROM schema_version"), [(1,)])
        self.assertEqual(self.sql("SELECT to_regclass('a') IS NOT NULL, to_regclass('b')"),
                         [(True, None)])

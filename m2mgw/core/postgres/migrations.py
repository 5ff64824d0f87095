"""Schema migrations of the PostgreSQL registry, applied at open (D-361).

The files of :mod:`m2mgw.core.postgres.schema` are loaded and checked like the SQLite
ones. Each runs in its own transaction with its row in ``schema_version`` (the
counterpart of SQLite's ``PRAGMA user_version``: one row per applied migration, the
version is the highest). PostgreSQL's DDL is transactional, so a migration that fails
leaves nothing behind. Nodes that open the database at once take turns on an advisory
lock and each re-reads the version under it, so every migration runs exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from m2mgw.core.postgres.connection import (
    Cursor,
    Database,
    PostgresError,
    is_unavailable,
    one_line,
)
from m2mgw.core.registry.migrations import Migration, load_migrations

_log = Logger()

PACKAGE = "m2mgw.core.postgres.schema"
#: m2mgw's advisory locks, in their two-key form: the migrations' one lock ('m2m' in
#: ASCII, 0), and a class whose second key is an application's hashtext(app_id).
MIGRATION_LOCK = (0x6D326D, 0)
APP_OUTBOX_LOCK_CLASS = 0x6D326E

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)"""


def schema_version(cursor: Cursor) -> int:
    """The highest migration applied (0 for an empty database)."""
    cursor.execute("SELECT to_regclass('schema_version') IS NOT NULL")
    if not cursor.fetchone()[0]:
        return 0
    cursor.execute("SELECT COALESCE(max(version), 0) FROM schema_version")
    version: int = cursor.fetchone()[0]
    return version


def migrate(db: Database, migrations: Sequence[Migration] | None = None) -> Deferred[list[str]]:
    """Bring the schema of the open ``db`` to the newest version; fires with the names
    of the migrations this call applied. A database newer than ``migrations`` fails."""
    ordered = load_migrations(PACKAGE) if migrations is None else list(migrations)
    return ensureDeferred(_migrate(db, ordered))


async def _migrate(db: Database, migrations: list[Migration]) -> list[str]:
    applied = []
    for migration in migrations:
        name = await db.transaction(_apply, migration, len(migrations), db.url)
        if name is not None:
            _log.info("registry {url}: applied schema migration {name}", url=db.url, name=name)
            applied.append(name)
    return applied


def _apply(cursor: Cursor, migration: Migration, latest: int, url: str) -> str | None:
    """Apply ``migration`` unless the database has it already (in a pool thread)."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", MIGRATION_LOCK)
    cursor.execute(_VERSION_TABLE)
    current = schema_version(cursor)
    if current > latest:
        raise PostgresError(
            f"registry {url}: database schema version {current} is newer than this m2mgw "
            f"supports ({latest}); upgrade m2mgw or use another database"
        )
    if current >= migration.version:
        return None
    try:
        cursor.execute(migration.sql)
    except psycopg.Error as e:
        if is_unavailable(e):
            raise
        raise PostgresError(
            f"registry {url}: schema migration {migration.name} failed: {one_line(e)}"
        ) from None
    cursor.execute("INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                   (migration.version, migration.name))
    return migration.name

"""SQLite schema migrations (the ``schema/NNN_name.sql`` files) and sealing secrets.

Each migration runs once, in its own transaction, and is recorded in ``PRAGMA
user_version``. Migration 008 seals the secrets of a database from before in the same
transaction and records the master key's check value; a sealed database whose key
file is missing or different is refused (D-280..D-284). Everything here runs in the
registry's pool thread, on its one connection.
"""

from __future__ import annotations

import importlib.resources
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from m2mgw.core.registry.interfaces import RegistryError
from m2mgw.core.registry.tables import SEALED_TABLES, SECRET_CONFIG_TAGS, Row, config_context
from m2mgw.core.vault import MasterKey, Vault, VaultError, create_key, is_sealed, read_key


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


_MIGRATION_RE = re.compile(r"(\d+)_\w+\.sql")
#: The migration that seals the secrets (D-281). A migration list without it is the
#: schema from before, whose secret columns hold plaintext.
SEALING_MIGRATION = "008_sealed_secrets.sql"
#: The ``registry_meta`` names of the master key's check value and creation time.
KEY_CHECK = "master_key_check"
KEY_CREATED = "master_key_created"
_SECRET_CONFIG_SQL = (
    f"tag BETWEEN {SECRET_CONFIG_TAGS.start} AND {SECRET_CONFIG_TAGS.stop - 1}"
)


def load_migrations(package: str = "m2mgw.core.registry.schema") -> list[Migration]:
    """The ``NNN_name.sql`` files of ``package``, checked to be numbered 1..N."""
    found = []
    for entry in importlib.resources.files(package).iterdir():
        match = _MIGRATION_RE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    return checked(found)


def checked(migrations: Iterable[Migration]) -> list[Migration]:
    """Migrations sorted, and numbered 1..N without gaps (``user_version`` indexes them)."""
    ordered = sorted(migrations)
    versions = [m.version for m in ordered]
    if versions != list(range(1, len(ordered) + 1)):
        raise RegistryError(f"schema migrations must be numbered 1..N, found {versions}")
    return ordered


def execute(conn: Any, sql: str, params: Sequence[Any] = ()) -> list[Row]:
    """Every row of one statement on ``conn``, its cursor closed at once.

    An open cursor keeps its statement active, and COMMIT then fails ("SQL statements
    in progress") wherever cursors are not freed as soon as they are dropped, as under
    PyPy (issue #16): every statement on a connection goes through here or
    :func:`execute_many`.
    """
    cursor = conn.execute(sql, params)
    try:
        return cursor.fetchall()
    finally:
        cursor.close()


def execute_many(conn: Any, sql: str, params: Iterable[Sequence[Any]]) -> None:
    """``executemany``, its cursor closed at once (see :func:`execute`)."""
    conn.executemany(sql, params).close()


class Unlocked(NamedTuple):
    """The master key of an open registry; ``created`` if this open made its file."""

    key: MasterKey
    vault: Vault
    created: bool


class Prepared(NamedTuple):
    applied: list[str]
    unlocked: Unlocked | None


def prepare(
    conn: Any, migrations: Sequence[Migration], path: str, key_path: str, read_only: bool
) -> Prepared:
    """Check or migrate the schema and unlock the secrets (in the pool thread)."""
    current = _schema_version(conn, len(migrations), path)
    if read_only:
        _check_schema(current, migrations, path)
    sealing = next((m.version for m in migrations if m.name == SEALING_MIGRATION), None)
    unlocked = None
    if sealing is not None:
        unlocked = _unlock(conn, path, key_path, sealed=current >= sealing)
    applied = [] if read_only else _migrate(conn, migrations, path, current, unlocked)
    return Prepared(applied, unlocked)


def _schema_version(conn: Any, latest: int, path: str) -> int:
    """The database's schema version, refused when newer than the code knows."""
    current: int = execute(conn, "PRAGMA user_version")[0][0]
    if current > latest:
        raise RegistryError(
            f"{path}: database schema version {current} is newer than this m2mgw "
            f"supports ({latest}); upgrade m2mgw or use another database"
        )
    return current


def _migrate(
    conn: Any, migrations: Sequence[Migration], path: str, current: int,
    unlocked: Unlocked | None,
) -> list[str]:
    """Bring the schema from ``current`` to the newest version; each migration in its
    own transaction, the sealing one with its Python step (D-281)."""
    applied = []
    for migration in migrations[current:]:
        sealing = migration.name == SEALING_MIGRATION
        if sealing and current:
            _rewrite(conn)
        # executescript() commits any open transaction first, so the BEGIN lives inside
        # the script; user_version is transactional too.
        script = (
            f"BEGIN IMMEDIATE;\n{migration.sql}\n;\n"
            f"PRAGMA user_version = {migration.version};"
        )
        try:
            conn.executescript(script).close()
            if sealing and unlocked is not None:
                _seal_stored(conn, unlocked)
            execute(conn, "COMMIT")
        except sqlite3.Error as e:
            conn.rollback()
            raise RegistryError(f"{path}: schema migration {migration.name} failed: {e}") from e
        if sealing:
            execute(conn, "PRAGMA wal_checkpoint(TRUNCATE)")
        applied.append(migration.name)
    return applied


def _check_schema(current: int, migrations: Sequence[Migration], path: str) -> None:
    """Read-only open: nothing may be migrated, so the schema must be the newest."""
    if current < len(migrations):
        raise RegistryError(
            f"{path}: database schema version {current} is older than this m2mgw's "
            f"({len(migrations)}); it cannot be read without migrating it"
        )


# --- secrets at rest -------------------------------------------------------------------


def _unlock(conn: Any, path: str, key_path: str, *, sealed: bool) -> Unlocked:
    """The master key of the database on ``conn`` (see :func:`unlock`)."""
    recorded: dict[str, str] | None = None
    if sealed:
        recorded = dict(execute(
            conn,
            f"SELECT name, value FROM registry_meta WHERE name IN ('{KEY_CHECK}', '{KEY_CREATED}')",
        ))
    return unlock(path, key_path, recorded)


def unlock(path: str, key_path: str, recorded: Mapping[str, str] | None) -> Unlocked:
    """The key of a sealed database, checked against the ``recorded`` key records of its
    ``registry_meta``; for one not sealed yet (``recorded`` None), the key file's key,
    created if missing. Never a new key over a sealed database: its secrets would be
    lost (D-283)."""
    key = read_key(key_path)
    if recorded is None:
        created = key is None
        key = create_key(key_path) if key is None else key
        return Unlocked(key, Vault(key.key), created)
    check = recorded.get(KEY_CHECK)
    if check is None:
        raise VaultError(f"registry {path} is encrypted, but records no master key check value")
    known = f"the registry's key has check value {check}, created {recorded.get(KEY_CREATED)}"
    if key is None:
        raise VaultError(
            f"registry {path} is encrypted, but the master key file {key_path} is missing "
            f"({known})"
        )
    vault = Vault(key.key)
    if vault.check_value != check:
        raise VaultError(
            f"registry {path} is encrypted, but the master key file {key_path} does not "
            f"match (its check value is {vault.check_value}; {known})"
        )
    return Unlocked(key, vault, False)


def key_records(unlocked: Unlocked) -> list[tuple[str, str]]:
    """The ``registry_meta`` rows recording which key seals a database's secrets."""
    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unlocked.key.created))
    return [(KEY_CHECK, unlocked.vault.check_value), (KEY_CREATED, created)]


def _rewrite(conn: Any) -> None:
    """Before sealing an existing file: rebuild it from its live rows and empty the WAL,
    so that no plaintext secret stays in a freed page (a retired credential set) or an
    old WAL frame (D-284). Sealing then zeroes what it frees (``secure_delete``)."""
    for sql in ("PRAGMA wal_checkpoint(TRUNCATE)", "VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"):
        execute(conn, sql)


def _seal_stored(conn: Any, unlocked: Unlocked) -> None:
    """Migration 008's step, in its transaction: seal every secret stored in plaintext
    and record which key sealed them."""
    vault = unlocked.vault
    execute(conn, "PRAGMA secure_delete = ON")
    try:
        for table in SEALED_TABLES:
            key, names = table.key[0], ", ".join(f'"{c}"' for c in table.sealed_columns)
            where, params = "", []
            if table.sealed_if is not None:
                where = f' WHERE "{table.sealed_if[0]}" = ?'
                params.append(int(table.sealed_if[1]))
            stored = execute(conn, f'SELECT "{key}", {names} FROM {table.name}{where}', params)
            for column, sealed, row_key in table.seal_stored(stored, vault):
                execute(conn, f'UPDATE {table.name} SET "{column}" = ? WHERE "{key}" = ?',
                     (sealed, row_key))
        config = execute(
            conn, f"SELECT terminal_id, tag, value FROM terminal_config WHERE {_SECRET_CONFIG_SQL}"
        )
        execute_many(
            conn,
            "UPDATE terminal_config SET value = ? WHERE terminal_id = ? AND tag = ?",
            [(vault.seal(value, config_context(terminal_id, tag)), terminal_id, tag)
             for terminal_id, tag, value in config if not is_sealed(value)],
        )
        execute_many(
            conn, "INSERT OR REPLACE INTO registry_meta (name, value) VALUES (?, ?)",
            key_records(unlocked),
        )
    finally:
        execute(conn, "PRAGMA secure_delete = OFF")

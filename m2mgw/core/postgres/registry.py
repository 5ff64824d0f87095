"""The terminal registry on PostgreSQL: :class:`PostgresRegistry` (issue #13).

The same registry as the SQLite one (:class:`~m2mgw.core.registry.cached.CachedRegistry`:
the cache answers every synchronous read, the ordered writer commits every change in
submission order) over a :class:`~.store.PostgresStore`. What differs is opening (the
schema migrated under an advisory lock, the master key checked against the one the
database records), and ids: they come in blocks from the database's sequences, so that
several nodes can share the tables (D-380); each block is numbered in memory, so
taking an id stays synchronous.

Connections: the store's one (every write and read, in order) and one for taking
blocks of ids, which must not wait behind a long queue of writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.config import ROW_WATERMARKS, WRITE_WATERMARKS, default_node
from m2mgw.core.postgres.connection import Cursor, Database, PostgresError, one_line, redact
from m2mgw.core.postgres.ids import IdBlocks, give_back, take_blocks
from m2mgw.core.postgres.migrations import migrate
from m2mgw.core.postgres.store import PostgresStore
from m2mgw.core.registry.cached import CachedRegistry
from m2mgw.core.registry.interfaces import RegistryError, RegistryIdentity
from m2mgw.core.registry.migrations import (
    KEY_CHECK,
    KEY_CREATED,
    Migration,
    Unlocked,
    key_records,
    unlock,
)
from m2mgw.core.registry.store import Snapshot
from m2mgw.core.registry.tables import NUMBERED_TABLES, Table

if TYPE_CHECKING:
    from m2mgw.core.registry.interfaces import Registry

_log = Logger()


def _unlock(cursor: Cursor, url: str, key_path: str) -> Unlocked:
    """The master key, checked against the database's records; a database without any
    records this node's key (created if missing) as the one its secrets are sealed
    under. Two nodes starting on a new database at once: one records its key first,
    and the other's is checked against it."""
    names = [KEY_CHECK, KEY_CREATED]
    cursor.execute("SELECT name, value FROM registry_meta WHERE name = ANY(%s)", (names,))
    recorded = dict(cursor.fetchall())
    if recorded:
        return unlock(url, key_path, recorded)
    unlocked = unlock(url, key_path, None)
    cursor.executemany(
        "INSERT INTO registry_meta (name, value) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        key_records(unlocked),
    )
    cursor.execute("SELECT name, value FROM registry_meta WHERE name = ANY(%s)", (names,))
    unlock(url, key_path, dict(cursor.fetchall()))
    return unlocked


class PostgresRegistry(CachedRegistry):
    """Terminal registry on a PostgreSQL database; see :mod:`.interfaces`.

    ``url`` is a libpq URL (its password never appears in messages); ``node`` names
    this gateway among those sharing the database (default: the host name), in
    ``application_name`` and for the cluster's ownership. ``master_key_file`` holds the
    key secrets are sealed under: every node needs the same one (a node whose key
    differs from the one the database records is refused at open). ``reactor``
    provides time, threads and shutdown triggers.
    """

    def __init__(
        self,
        url: str,
        reactor: Any,
        *,
        master_key_file: str,
        node: str | None = None,
        migrations: list[Migration] | None = None,
        watermarks: tuple[int, int] = WRITE_WATERMARKS,
        row_watermarks: tuple[int, int] = ROW_WATERMARKS,
    ) -> None:
        super().__init__(redact(url), reactor, watermarks=watermarks,
                         row_watermarks=row_watermarks)
        self._url = url
        self._reactor = reactor
        self.node = node or default_node()
        self._key_path = master_key_file
        self._migrations = migrations
        self._db: Database | None = None
        self._ids_db: Database | None = None
        self._store: PostgresStore | None = None
        self._ids: IdBlocks | None = None
        self._shutdown_trigger: Any = None

    @property
    def store(self) -> PostgresStore:
        """The open registry's store: :meth:`PostgresStore.transaction` runs SQL in
        order with the registry's writes."""
        if self._store is None or not self.is_open:
            raise RegistryError(f"{self._name}: registry is not open")
        return self._store

    # --- lifecycle ----------------------------------------------------------------

    def open(self) -> Deferred[None]:
        if self._db is not None:
            raise RegistryError(f"{self._name}: registry already open")
        name = f"m2mgw {self.node}"
        db = self._db = Database(self._reactor, self._url, connections=1,
                                 application_name=name)
        self._ids_db = Database(self._reactor, self._url, connections=1,
                                application_name=f"{name} ids")
        store = self._store = PostgresStore(db)
        d: Deferred[Any] = db.open()
        d.addCallback(lambda _: migrate(db, self._migrations))  # it logs what it applies
        d.addCallback(lambda _: db.transaction(_unlock, self._name, self._key_path))
        d.addCallback(self._unlocked)
        d.addCallback(lambda _: self._take_first_blocks())
        d.addCallback(lambda _: self._loaded(store, self._reactor.seconds()))
        d.addCallback(self._install_store, store)
        d.addErrback(self._open_failed)
        return d

    def _unlocked(self, unlocked: Unlocked) -> None:
        self._vault = unlocked.vault
        if unlocked.created:
            _log.info(
                "registry {url}: created the master key file {key} (check value {check}); "
                "every node sharing the database needs a copy of it, and back it up apart "
                "from the database: without it the registry's secrets are lost",
                url=self._name, key=self._key_path, check=unlocked.vault.check_value,
            )
        if unlocked.key.exposed:
            _log.warn("master key file {key} is readable by other users (mode {mode:o}): "
                      "chmod 600 it", key=self._key_path, mode=unlocked.key.mode)

    def _take_first_blocks(self) -> Deferred[None]:
        ids_db = self._ids_db
        assert ids_db is not None

        def taken(blocks: dict[str, list[range]]) -> None:
            self._ids = IdBlocks(self._reactor, ids_db, self._url, self._name, blocks)

        wanted = {table.name: 1 for table in NUMBERED_TABLES}
        d: Deferred[dict[str, list[range]]] = ids_db.open().addCallback(
            lambda _: ids_db.transaction(take_blocks, wanted))
        return d.addCallback(taken)

    def _install_store(self, snapshot: Snapshot, store: PostgresStore) -> None:
        # No sequences: ids come from the blocks (_id_for), not from the cache's count.
        self._start(store, snapshot, RegistryIdentity("postgresql", self._name,
                                                      snapshot.instance_id))
        self._shutdown_trigger = self._reactor.addSystemEventTrigger(
            "before", "shutdown", self.close)
        _log.info("registry {url} open as node {node}: {terminals} terminals, {active} "
                  "active requests", url=self._name, node=self.node,
                  terminals=len(self._terminals), active=len(self._active))

    def _open_failed(self, failure: Failure) -> Failure:
        self._vault = None
        self._close_databases()
        if isinstance(failure.value, psycopg.Error):  # SQL refused (a privilege...)
            raise PostgresError(f"registry {self._name}: cannot open: {one_line(failure.value)}")
        return failure

    def _close_databases(self) -> None:
        if self._ids is not None:
            self._ids.close()
            self._ids = None
        for db in (self._db, self._ids_db):
            if db is not None:
                db.close()
        self._db = self._ids_db = self._store = None

    def close(self) -> Deferred[None]:
        db, ids_db = self._db, self._ids_db
        if db is None or ids_db is None:
            return succeed(None)
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        if not self.is_open:  # still opening: wait for its transactions
            done = PostgresStore(db).barrier()
        else:
            done = self._stop()
            done.addCallback(lambda _: self._give_back(ids_db))

        def closed(result: Any) -> Any:
            self._close_databases()
            return result

        return done.addBoth(closed)

    # --- ids --------------------------------------------------------------------------

    @property
    def ids(self) -> IdBlocks:
        """The open registry's blocks of ids."""
        if self._ids is None:
            raise RegistryError(f"{self._name}: registry is not open")
        return self._ids

    def _id_for(self, table: Table) -> int:
        return self.ids.peek(table.name)

    def _id_used(self, table: Table) -> None:
        self.ids.used(table.name)

    def _give_back(self, ids_db: Database) -> Deferred[None]:
        """Return the ids this node took and did not use, where nobody took a block
        after them, so that a node restarting goes on where it stopped."""
        unused = self.ids.unused()
        self.ids.close()

        def failed(failure: Failure) -> None:
            _log.warn("registry {url}: unused ids not given back: {why}", url=self._name,
                      why=failure.getErrorMessage())

        d = ids_db.transaction(give_back, unused)
        return d.addCallbacks(lambda _: None, failed)


if TYPE_CHECKING:
    _conforms: type[Registry] = PostgresRegistry  # mypy checks the whole contract

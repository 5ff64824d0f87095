"""The registry on one SQLite file: :class:`SqliteRegistry` and its :class:`SqliteStore`.

Durability model. The database runs in WAL mode with ``synchronous=NORMAL``: a commit
is written to the WAL file before its Deferred fires, so committed data (a queued
request) survives the process being killed, even by SIGKILL. Only an operating-system
crash or power loss can lose the last few transactions, which ``synchronous=FULL``
would prevent at the cost of an fsync per commit.

Ordering. All SQL runs on exactly ONE connection in one pool thread (more connections
give "database is locked"). adbapi queues interactions FIFO on that thread, so writes
are committed in submission order, and a read sees every write submitted before it:
the order :mod:`.store` asks for. Rows reach the pool thread already encoded.

Group commit. Write batches that arrive while earlier ones are still in the pool share
one transaction, each batch inside its own SAVEPOINT: a batch that fails is rolled
back alone and fails alone, as if it had been its own transaction, and every batch's
Deferred fires only after the shared COMMIT. An idle store commits a batch at once;
a busy one commits what gathered meanwhile in one go, one thread hop and one commit
for many (D-400).

Retention. ``prune`` deletes history (the message log, finished requests...) in small
batches, each its own transaction on the one writer, so writes submitted meanwhile
commit between two batches instead of waiting behind one large DELETE (D-202).

Ownership. An open registry holds an exclusive ``flock`` on ``<database>.lock`` (the
pid of its process written inside), so any other process can tell reliably that a
gateway runs on the file, and a second gateway on the same file fails at open. The
lock is on a sidecar file because SQLite's own POSIX locks on the database are
separate and released by any ``close()`` of the file in the process. A read-only
registry takes no lock: WAL lets readers run beside the one writer.

Secrets at rest. Passwords, keys and the bodies that carry them are sealed
(:mod:`m2mgw.core.vault`) under the master key file when written and opened when
loaded: the caches hold plaintext, so no message costs a decryption. Migration 008
seals a database from before in one transaction and records the key's check value;
a sealed database whose key file is missing or different is refused at open (D-280).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.enterprise.adbapi import ConnectionPool
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.config import ROW_WATERMARKS, WRITE_WATERMARKS, default_key_path
from m2mgw.core.registry.cached import CachedRegistry
from m2mgw.core.registry.interfaces import RegistryError, RegistryIdentity
from m2mgw.core.registry.migrations import (
    Migration,
    Prepared,
    checked,
    execute,
    load_migrations,
    prepare,
)
from m2mgw.core.registry.store import Batch, Op, Query, Snapshot
from m2mgw.core.registry.tables import (
    ACTIVE_REQUEST_STATES,
    APP_MESSAGES,
    APPLICATIONS,
    FILES,
    NOTIFICATIONS,
    PRUNE_SQL,
    REQUESTS,
    SMS_OUTBOX,
    TERMINALS,
    Row,
    statements,
    states_sql,
)
from m2mgw.core.vault import create_private

if TYPE_CHECKING:
    from m2mgw.core.registry.interfaces import Registry

_log = Logger()


def _configure(conn: sqlite3.Connection) -> None:
    """Per-connection settings (cp_openfun): WAL, foreign keys, lock wait."""
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON",
                   "busy_timeout=5000"):
        execute(conn, f"PRAGMA {pragma}")


def _configure_read_only(conn: sqlite3.Connection) -> None:
    """A reader beside a running gateway: no journal change, no write, lock wait."""
    for pragma in ("query_only=ON", "busy_timeout=5000"):
        execute(conn, f"PRAGMA {pragma}")


# --- the store: interactions in the pool thread ---------------------------------------


def _apply(txn: Any, batches: list[Batch]) -> list[Failure | None]:
    """Run write batches in one transaction (adbapi commits after it), each batch
    atomic on its own: the failure of each, or None."""
    txn.execute("BEGIN IMMEDIATE")
    if len(batches) == 1:
        _write(txn, batches[0])  # a failure rolls back the transaction: the batch's own
        return [None]
    outcomes: list[Failure | None] = []
    for batch in batches:
        txn.execute("SAVEPOINT batch")
        try:
            _write(txn, batch)
        except Exception:
            failure = Failure()
            failure.cleanFailure()
            outcomes.append(failure)
            txn.execute("ROLLBACK TO batch")
        else:
            outcomes.append(None)
        txn.execute("RELEASE batch")
    return outcomes


def _write(txn: Any, batch: Batch) -> None:
    for op, table, rows in batch:
        sql = statements(table)
        if op is Op.INSERT:
            txn.executemany(sql.insert, rows)
        elif op is Op.UPDATE:
            txn.executemany(sql.update, map(sql.update_params, rows))
        elif op is Op.UPSERT:
            txn.executemany(sql.upsert, rows)
        else:
            txn.executemany(sql.delete, rows)


def _barrier(txn: Any) -> None:
    """A no-op interaction: when it completes, every earlier one has."""


def _prune(txn: Any, sql: str, before: float, limit: int) -> list[Any]:
    """One pruning batch as a single transaction: the keys of the rows it deleted."""
    txn.execute("BEGIN IMMEDIATE")
    txn.execute(sql, (before, limit))
    return [row[0] for row in txn.fetchall()]


def _select(query: Query) -> tuple[str, list[Any]]:
    """The SELECT of ``query`` and its parameters."""
    terms: list[str] = []
    params: list[Any] = []
    for name, value in query.filters.items():
        if isinstance(value, list):
            terms.append(f"\"{name}\" IN ({', '.join('?' * len(value))})")
            params += value
        else:
            terms.append(f'"{name}" = ?')
            params.append(value)
    if query.before is not None:
        terms.append("id < ?")
        params.append(query.before)
    sql = statements(query.table)
    where = f" WHERE {' AND '.join(terms)}" if terms else ""
    select = sql.select_with_id if query.with_id else sql.select
    return (f"{select}{where} ORDER BY {query.order} DESC LIMIT ? OFFSET ?",
            [*params, query.limit, query.offset])


_ACTIVE = states_sql("state", ACTIVE_REQUEST_STATES, negate=False)
_FINISHED = states_sql("state", ACTIVE_REQUEST_STATES, negate=True)


def _load_all(txn: Any, now: float, finished: int, app_messages: int) -> Snapshot:
    """Everything the cache holds, read in one interaction at open."""

    def rows(sql: str, *params: Any) -> list[Row]:
        txn.execute(sql, params)
        return txn.fetchall()

    def pairs(sql: str) -> dict[Any, Any]:
        return dict(rows(sql))

    def select(table: Any, where: str = "", *params: Any) -> list[Row]:
        return rows(f"{statements(table).select}{where}", *params)

    pending = states_sql("state", ("pending",), negate=False)
    return Snapshot(
        instance_id=pairs("SELECT name, value FROM registry_meta")["instance_id"],
        terminals=select(TERMINALS),
        config=rows("SELECT terminal_id, tag, value FROM terminal_config"),
        active=select(REQUESTS, f" WHERE {_ACTIVE} ORDER BY id"),
        finished=select(REQUESTS, f" WHERE {_FINISHED} ORDER BY id DESC LIMIT ?", finished),
        files=select(FILES, " WHERE expires_at > ?", now),
        counters=pairs("SELECT name, value FROM counters"),
        sequences=pairs("SELECT name, seq FROM sqlite_sequence"),
        sms_pending=select(SMS_OUTBOX, f" WHERE {pending} ORDER BY id"),
        sms_references=pairs("SELECT msisdn, reference FROM sms_references"),
        applications=select(APPLICATIONS),
        notifications=select(NOTIFICATIONS, " ORDER BY id"),
        app_messages=select(APP_MESSAGES, " ORDER BY id DESC LIMIT ?", app_messages),
    )


#: Write transactions in the pool at once; batches arriving meanwhile wait to share
#: the next one. Two keep the pool thread busy while the reactor fires the last.
APPLYING = 2


class SqliteStore:
    """A :class:`~.store.Store` on an adbapi pool of one connection to one file.

    Writes are group-committed (module docstring): ``_waiting`` holds the batches
    that arrived while ``APPLYING`` write transactions were in the pool. Every other
    call submits them first, so that the pool still runs everything in call order.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._waiting: list[tuple[Batch, Deferred[None]]] = []
        self._applying = 0

    def load(self, now: float, finished: int, app_messages: int) -> Deferred[Snapshot]:
        self._submit_waiting()
        return self._pool.runInteraction(_load_all, now, finished, app_messages)

    def apply(self, batch: Batch) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append((batch, d))
        if self._applying < APPLYING:
            self._submit_waiting()
        return d

    def _submit_waiting(self) -> None:
        """One write transaction for the batches waiting, if any."""
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        self._applying += 1
        d = self._pool.runInteraction(_apply, [batch for batch, _ in waiting])
        d.addBoth(self._applied, [done for _, done in waiting])

    def _applied(self, outcome: list[Failure | None] | Failure,
                 waiters: list[Deferred[None]]) -> None:
        self._applying -= 1
        if self._waiting and self._applying < APPLYING:
            self._submit_waiting()
        for i, waiter in enumerate(waiters):
            failure = outcome if isinstance(outcome, Failure) else outcome[i]
            if failure is None:
                waiter.callback(None)
            else:
                waiter.errback(failure)

    def prune(self, table: str, before: float, limit: int) -> Deferred[list[Any]]:
        self._submit_waiting()
        return self._pool.runInteraction(_prune, PRUNE_SQL[table], before, limit)

    def read(self, query: Query) -> Deferred[list[Row]]:
        self._submit_waiting()
        sql, params = _select(query)
        return self._pool.runQuery(sql, params)

    def barrier(self) -> Deferred[None]:
        self._submit_waiting()
        return self._pool.runInteraction(_barrier)


# --- ownership and identity ------------------------------------------------------------


def lock_path(database: str) -> str:
    """The sidecar file a running registry holds its exclusive ``flock`` on."""
    return database + ".lock"


def _read_pid(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"


def _acquire_lock(database: str) -> int:
    """Take the registry's lock and write our pid into it; its fd, kept while open."""
    path = lock_path(database)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise RegistryError(f"{database}: cannot open database: {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise RegistryError(
            f"registry {database} is in use by another m2mgw process (pid {pid})"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise RegistryError(f"{database}: cannot lock {path}: {exc.strerror}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def _release_lock(fd: int) -> None:
    """Unlock and close; the file stays (removing it would race with the next owner)."""
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def lock_holder(database: str) -> str | None:
    """The pid of the process whose registry is open on ``database``, None if none is.

    Probes with a shared lock that is released at once, so it never blocks an owner.
    """
    path = lock_path(database)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryError(f"{database}: cannot check {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_only_uri(database: str) -> str:
    return f"{Path(database).resolve().as_uri()}?mode=ro"


def stored_instance_id(database: str) -> str | None:
    """The instance id stored in the SQLite file, read without writing; None if none."""
    if not os.path.exists(database):
        return None
    try:
        conn = sqlite3.connect(_read_only_uri(database), uri=True)
    except sqlite3.Error:
        return None
    try:
        rows = execute(conn, "SELECT value FROM registry_meta WHERE name = 'instance_id'")
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return str(rows[0][0]) if rows else None


# --- the registry ----------------------------------------------------------------------


class SqliteRegistry(CachedRegistry):
    """Terminal registry on one SQLite file; see :mod:`.interfaces`.

    One process owns a database: ids and counters are allocated in memory, and the
    lock taken at open keeps a second owner out. ``read_only`` opens a snapshot for
    reading beside the owner: no lock, no migration, and every write refused.
    ``master_key_file`` (default: ``m2mgw.key`` beside the database) holds the key the
    secrets are sealed under; it is created when the database is new or not sealed yet.
    ``reactor`` provides time, threads (the pool) and shutdown triggers.
    """

    def __init__(
        self,
        path: str,
        reactor: Any,
        migrations: Sequence[Migration] | None = None,
        *,
        watermarks: tuple[int, int] = WRITE_WATERMARKS,
        row_watermarks: tuple[int, int] = ROW_WATERMARKS,
        read_only: bool = False,
        master_key_file: str | None = None,
    ) -> None:
        self._migrations = load_migrations() if migrations is None else checked(migrations)
        super().__init__(path, reactor, watermarks=watermarks, row_watermarks=row_watermarks)
        self._path = path
        self._reactor = reactor
        self._read_only = read_only
        self._key_path = master_key_file or default_key_path(path)
        self._pool: ConnectionPool | None = None
        self._lock_fd: int | None = None
        self._shutdown_trigger: Any = None

    def open(self) -> Deferred[None]:
        if self._pool is not None:
            raise RegistryError(f"{self._path}: registry already open")
        if self._read_only:
            target, options = _read_only_uri(self._path), {"uri": True}
            configure = _configure_read_only
        else:
            try:
                self._lock_fd = _acquire_lock(self._path)
                self._create_private()
            except RegistryError as exc:
                self._unlock()
                return fail(exc)
            target, options = self._path, {}
            configure = _configure
        pool = self._pool = ConnectionPool(
            "sqlite3",
            target,
            cp_min=1,
            cp_max=1,
            cp_reactor=self._reactor,
            cp_openfun=configure,
            check_same_thread=False,
            isolation_level=None,
            **options,
        )
        store = SqliteStore(pool)
        d: Deferred[Any] = pool.runWithConnection(
            prepare, self._migrations, self._path, self._key_path, self._read_only
        )
        d.addCallback(self._migrated)
        d.addCallback(lambda _: self._loaded(store, self._reactor.seconds()))
        d.addCallback(self._install_store, store)
        d.addErrback(self._open_failed)
        return d

    def _create_private(self) -> None:
        """A new database file is created mode 0600 before SQLite opens it (D-286)."""
        try:
            create_private(self._path)
        except OSError as exc:
            raise RegistryError(f"{self._path}: cannot open database: {exc.strerror}") from None

    def _migrated(self, prepared: Prepared) -> None:
        unlocked = prepared.unlocked
        if unlocked is not None:
            self._vault = unlocked.vault
            if unlocked.created:
                _log.info(
                    "registry {path}: created the master key file {key} (check value "
                    "{check}); back it up apart from the database: without it the "
                    "registry's secrets are lost",
                    path=self._path, key=self._key_path, check=unlocked.vault.check_value,
                )
            if unlocked.key.exposed:
                _log.warn("master key file {key} is readable by other users (mode {mode:o}): "
                          "chmod 600 it", key=self._key_path, mode=unlocked.key.mode)
        for name in prepared.applied:
            _log.info("registry {path}: applied schema migration {name}",
                      path=self._path, name=name)

    def _open_failed(self, failure: Failure) -> Failure:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._vault = None
        self._unlock()
        if failure.check(sqlite3.Error):
            raise RegistryError(f"{self._path}: cannot open database: {failure.value}")
        return failure

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            _release_lock(self._lock_fd)
            self._lock_fd = None

    def _install_store(self, snapshot: Snapshot, store: SqliteStore) -> None:
        identity = RegistryIdentity("sqlite", os.path.abspath(self._path), snapshot.instance_id)
        self._start(store, snapshot, identity, read_only=self._read_only)
        # A reactor stopped without close() would drop batched writes; "before"
        # triggers may return a Deferred, which shutdown waits for.
        self._shutdown_trigger = self._reactor.addSystemEventTrigger(
            "before", "shutdown", self.close
        )
        _log.info(
            "registry {path} open: {terminals} terminals, {active} active requests",
            path=self._path, terminals=len(self._terminals), active=len(self._active),
        )

    def close(self) -> Deferred[None]:
        pool = self._pool
        if pool is None:
            return succeed(None)
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        self._pool = None
        # Still opening: no writer yet, only the open's own interactions to wait for.
        done = self._stop() if self.is_open else SqliteStore(pool).barrier()

        def closed(result: Any) -> Any:
            pool.close()
            self._unlock()
            return result

        return done.addBoth(closed)


if TYPE_CHECKING:
    _conforms: type[Registry] = SqliteRegistry  # mypy checks the whole contract

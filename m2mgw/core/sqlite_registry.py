"""SQLite implementation of :class:`~m2mgw.core.registry.ITerminalRegistry`.

Durability model. The database runs in WAL mode with ``synchronous=NORMAL``: a commit
is written to the WAL file before its Deferred fires, so committed data (a queued
request) survives the process being killed, even by SIGKILL. Only an operating-system
crash or power loss can lose the last few transactions, which ``synchronous=FULL``
would prevent at the cost of an fsync per commit.

Ordering. All SQL runs on exactly ONE connection in one pool thread (more connections
give "database is locked"). adbapi queues interactions FIFO on that thread, so writes
are committed in submission order, and a read sees every write submitted before it.
Row values are snapshotted in the reactor thread when a write is submitted, so later
mutations of the cached objects cannot race with the pool thread.

Backpressure. Hot-path writes are fire-and-forget, so when terminals send faster than
SQLite commits, submitted interactions would pile up without limit. The registry counts
writes (transactions) and their rows submitted and not yet committed, and tells its
pressure observers when either count reaches its high watermark and again when both
are back at their low watermarks; the gateway then stops reading from terminals. No
write is ever refused or dropped: bounding comes from not reading more input.

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

import dataclasses
import fcntl
import importlib.resources
import json
import operator
import os
import re
import sqlite3
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from twisted.enterprise.adbapi import ConnectionPool
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from m2mgw.config import ROW_WATERMARKS, WRITE_WATERMARKS
from m2mgw.core.model import (
    U32_MAX,
    Alarm,
    Application,
    AppMessage,
    AppNotification,
    CredentialSet,
    FileState,
    FileTransaction,
    LogEntry,
    NotificationState,
    Request,
    RequestState,
    Terminal,
    TerminalState,
    advance_counter,
    normalize_msisdn,
)
from m2mgw.core.registry import ITerminalRegistry, OutgoingSms, RegistryError, SmsState
from m2mgw.core.stats import Histogram
from m2mgw.core.vault import (
    MasterKey,
    Vault,
    VaultError,
    create_key,
    create_private,
    default_key_path,
    is_sealed,
    read_key,
)
from m2mgw.protocol.constants import Command

_log = Logger()

#: Seconds between flushes of coalesced ``touch`` updates and batched log entries.
FLUSH_INTERVAL = 1.0
#: A log buffer this long is flushed at once instead of waiting for the next tick.
LOG_FLUSH_SIZE = 1000
#: Seconds ``log_committed`` entries wait to share a transaction while the writer is
#: busy (group commit); with an idle writer they are committed at once.
GROUP_COMMIT_DELAY = 0.005
#: Finished requests kept in memory for ``request(id)``.
FINISHED_CACHE_SIZE = 10_000
SERIAL_DIGITS_MAX = 99_999_999

Row = tuple[Any, ...]
Batch = list[tuple[str, list[Row]]]
Codec = tuple[Callable[[Any], Any], Callable[[Any], Any]]
#: Called with True when the registry's writer falls behind, False when it caught up.
PressureObserver = Callable[[bool], None]


# --- migrations ------------------------------------------------------------------------


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


_MIGRATION_RE = re.compile(r"(\d+)_\w+\.sql")


def load_migrations(package: str = "m2mgw.core.schema") -> list[Migration]:
    """The ``NNN_name.sql`` files of ``package``, checked to be numbered 1..N."""
    found = []
    for entry in importlib.resources.files(package).iterdir():
        match = _MIGRATION_RE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    return _checked(found)


def _checked(migrations: Iterable[Migration]) -> list[Migration]:
    """Migrations sorted, and numbered 1..N without gaps (``user_version`` indexes them)."""
    ordered = sorted(migrations)
    versions = [m.version for m in ordered]
    if versions != list(range(1, len(ordered) + 1)):
        raise RegistryError(f"schema migrations must be numbered 1..N, found {versions}")
    return ordered


def _rows(conn: Any, sql: str, params: Sequence[Any] = ()) -> list[Row]:
    """Every row of one statement on ``conn``, its cursor closed at once.

    An open cursor keeps its statement active, and COMMIT then fails ("SQL statements
    in progress") wherever cursors are not freed as soon as they are dropped, as under
    PyPy: every statement on a connection goes through here or :func:`_run_many`.
    """
    cursor = conn.execute(sql, params)
    try:
        return cursor.fetchall()
    finally:
        cursor.close()


def _run_many(conn: Any, sql: str, rows: Iterable[Sequence[Any]]) -> None:
    """``executemany``, its cursor closed at once (see :func:`_rows`)."""
    conn.executemany(sql, rows).close()


def _schema_version(conn: Any, latest: int, path: str) -> int:
    """The database's schema version, refused when newer than the code knows."""
    current: int = _rows(conn, "PRAGMA user_version")[0][0]
    if current > latest:
        raise RegistryError(
            f"{path}: database schema version {current} is newer than this m2mgw "
            f"supports ({latest}); upgrade m2mgw or use another database"
        )
    return current


def _migrate(
    conn: Any, migrations: Sequence[Migration], path: str, current: int,
    unlocked: _Unlocked | None,
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
            _rows(conn, "COMMIT")
        except sqlite3.Error as e:
            conn.rollback()
            raise RegistryError(f"{path}: schema migration {migration.name} failed: {e}") from e
        if sealing:
            _rows(conn, "PRAGMA wal_checkpoint(TRUNCATE)")
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

#: The migration that seals the secrets (D-281). A migration list without it is the
#: schema from before, whose secret columns hold plaintext.
SEALING_MIGRATION = "008_sealed_secrets.sql"
_KEY_CHECK = "master_key_check"
_KEY_CREATED = "master_key_created"


class _Unlocked(NamedTuple):
    """The master key of an open registry; ``created`` if this open made its file."""

    key: MasterKey
    vault: Vault
    created: bool


class _Prepared(NamedTuple):
    applied: list[str]
    unlocked: _Unlocked | None


def _prepare(
    conn: Any, migrations: Sequence[Migration], path: str, key_path: str, read_only: bool
) -> _Prepared:
    """Check or migrate the schema and unlock the secrets (in the pool thread)."""
    current = _schema_version(conn, len(migrations), path)
    if read_only:
        _check_schema(current, migrations, path)
    sealing = next((m.version for m in migrations if m.name == SEALING_MIGRATION), None)
    unlocked = None
    if sealing is not None:
        unlocked = _unlock(conn, path, key_path, sealed=current >= sealing)
    applied = [] if read_only else _migrate(conn, migrations, path, current, unlocked)
    return _Prepared(applied, unlocked)


def _unlock(conn: Any, path: str, key_path: str, *, sealed: bool) -> _Unlocked:
    """The key of a sealed database, checked against the one it records; for one not
    sealed yet, the key file's key, created if missing. Never a new key over a sealed
    database: its secrets would be lost (D-283)."""
    key = read_key(key_path)
    if not sealed:
        created = key is None
        key = create_key(key_path) if key is None else key
        return _Unlocked(key, Vault(key.key), created)
    recorded = dict(_rows(
        conn,
        f"SELECT name, value FROM registry_meta WHERE name IN ('{_KEY_CHECK}', '{_KEY_CREATED}')",
    ))
    check = recorded.get(_KEY_CHECK)
    if check is None:
        raise VaultError(f"registry {path} is encrypted, but records no master key check value")
    known = f"the registry's key has check value {check}, created {recorded.get(_KEY_CREATED)}"
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
    return _Unlocked(key, vault, False)


def _rewrite(conn: Any) -> None:
    """Before sealing an existing file: rebuild it from its live rows and empty the WAL,
    so that no plaintext secret stays in a freed page (a retired credential set) or an
    old WAL frame (D-284). Sealing then zeroes what it frees (``secure_delete``)."""
    for sql in ("PRAGMA wal_checkpoint(TRUNCATE)", "VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"):
        _rows(conn, sql)


def _seal_stored(conn: Any, unlocked: _Unlocked) -> None:
    """Migration 008's step, in its transaction: seal every secret stored in plaintext
    and record which key sealed them."""
    vault = unlocked.vault
    _rows(conn, "PRAGMA secure_delete = ON")
    try:
        for table in _SEALED_TABLES:
            table.seal_stored(conn, vault)
        rows = _rows(
            conn, f"SELECT terminal_id, tag, value FROM terminal_config WHERE {_SECRET_CONFIG_SQL}"
        )
        _run_many(
            conn,
            "UPDATE terminal_config SET value = ? WHERE terminal_id = ? AND tag = ?",
            [(vault.seal(value, _config_context(terminal_id, tag)), terminal_id, tag)
             for terminal_id, tag, value in rows if not is_sealed(value)],
        )
        created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unlocked.key.created))
        _run_many(
            conn,
            "INSERT OR REPLACE INTO registry_meta (name, value) VALUES (?, ?)",
            [(_KEY_CHECK, vault.check_value), (_KEY_CREATED, created)],
        )
    finally:
        _rows(conn, "PRAGMA secure_delete = OFF")


#: Security tags (spec 3.7: passwords, keys, SIM PINs...): their configuration values
#: are sealed (a SECURITY_CONFIG op 4 report stores them).
_SECRET_CONFIG_TAGS = range(0xE000, 0xE100)
_SECRET_CONFIG_SQL = (
    f"tag BETWEEN {_SECRET_CONFIG_TAGS.start} AND {_SECRET_CONFIG_TAGS.stop - 1}"
)


def _config_secret(
    transform: Callable[[bytes, str], bytes] | None, terminal_id: int, tag: int, value: bytes
) -> bytes:
    """A configuration value through ``transform`` (a vault's seal or open) if its tag
    is a security tag; else, or without a vault, unchanged."""
    if transform is None or tag not in _SECRET_CONFIG_TAGS:
        return value
    return transform(value, _config_context(terminal_id, tag))


def _config_context(terminal_id: int, tag: int) -> str:
    return f"terminal_config/{terminal_id}:{tag}/value"


def _watermarks(pair: tuple[int, int], what: str) -> tuple[int, int]:
    """``(high, low)`` checked: hysteresis needs high > low >= 0."""
    high, low = pair
    if not 0 <= low < high:
        raise RegistryError(f"{what} watermarks need high > low >= 0, got {pair}")
    return high, low


def _configure(conn: sqlite3.Connection) -> None:
    """Per-connection settings (cp_openfun): WAL, foreign keys, lock wait."""
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON",
                   "busy_timeout=5000"):
        _rows(conn, f"PRAGMA {pragma}")


def _configure_read_only(conn: sqlite3.Connection) -> None:
    """A reader beside a running gateway: no journal change, no write, lock wait."""
    for pragma in ("query_only=ON", "busy_timeout=5000"):
        _rows(conn, f"PRAGMA {pragma}")


def _apply(txn: Any, batch: Batch) -> None:
    """Run one write batch as a single transaction (adbapi commits after it)."""
    txn.execute("BEGIN IMMEDIATE")
    for sql, rows in batch:
        txn.executemany(sql, rows)


def _barrier(txn: Any) -> None:
    """A no-op interaction: when it completes, every earlier one has."""


def _prune(txn: Any, sql: str, before: float, limit: int) -> list[Any]:
    """One pruning batch as a single transaction: the keys of the rows it deleted."""
    txn.execute("BEGIN IMMEDIATE")
    txn.execute(sql, (before, limit))
    return [row[0] for row in txn.fetchall()]


# --- ownership and identity ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RegistryIdentity:
    """Which database a registry is: what the admin API reports and the CLI compares.

    ``location`` is where it lives (the absolute path of a SQLite file); the
    ``instance_id`` is created once in the database, so it tells a copy from the
    original only together with the location (D-171).
    """

    backend: str
    location: str
    instance_id: str

    def describe(self) -> dict[str, str]:
        """The ``GET /registry`` answer."""
        return {"backend": self.backend, "path": self.location, "instance_id": self.instance_id}


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
        rows = _rows(conn, "SELECT value FROM registry_meta WHERE name = 'instance_id'")
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return str(rows[0][0]) if rows else None


# --- row mapping -----------------------------------------------------------------------


def _optional(encode: Callable[[Any], Any], decode: Callable[[Any], Any]) -> Codec:
    return (
        lambda v: None if v is None else encode(v),
        lambda v: None if v is None else decode(v),
    )


_BOOL: Codec = (int, bool)
_STR_SET: Codec = (lambda v: json.dumps(sorted(v)), lambda v: set(json.loads(v)))
_JSON_LIST = _optional(json.dumps, json.loads)
_CREDENTIALS = _optional(
    lambda c: json.dumps(dataclasses.asdict(c)), lambda v: CredentialSet(**json.loads(v))
)


def _enum(cls: type) -> Codec:
    """Stores the value; validates on the way in so a typo fails in the caller."""
    return (lambda v: cls(v).value, cls)


class _Table:
    """Maps a dataclass to a table: columns are the dataclass fields, in order."""

    def __init__(
        self, name: str, cls: type, key: str | None = None,
        codecs: Mapping[str, Codec] | None = None, *,
        sealed: Mapping[str, type] | None = None, sealed_if: tuple[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.cls = cls
        self.key = key
        self.columns = tuple(f.name for f in dataclasses.fields(cls))
        self.codecs = codecs or {}
        #: Secret columns (D-281): (index, name, str or bytes), sealed when written and
        #: opened when loaded, in the rows where column ``sealed_if[0]`` is
        #: ``sealed_if[1]`` (all rows without it). Sealing binds a value to its row key.
        self._sealed = tuple((self.columns.index(c), c, t) for c, t in (sealed or {}).items())
        self._sealed_if = (
            None if sealed_if is None else (self.columns.index(sealed_if[0]), sealed_if[1])
        )
        self._key_index = -1 if key is None else self.columns.index(key)
        # attrgetter builds the row tuple in C: ``row`` runs for every logged message.
        getter = operator.attrgetter(*self.columns)
        self._values = getter if len(self.columns) > 1 else lambda obj: (getter(obj),)
        self._encoders = tuple(
            (i, self.codecs[c][0]) for i, c in enumerate(self.columns) if c in self.codecs
        )
        names = ", ".join(f'"{c}"' for c in self.columns)
        values = ", ".join("?" * len(self.columns))
        self.insert = f"INSERT INTO {name} ({names}) VALUES ({values})"
        self.replace = f"INSERT OR REPLACE INTO {name} ({names}) VALUES ({values})"
        self.select = f"SELECT {names} FROM {name}"
        if key is not None:
            sets = ", ".join(f'"{c}" = ?' for c in self.columns if c != key)
            self.update = f'UPDATE {name} SET {sets} WHERE "{key}" = ?'

    def row(self, obj: Any, vault: Vault | None = None) -> Row:
        """``obj``'s column values, encoded; its secrets sealed by ``vault`` (None: the
        schema from before sealing, which holds them in plaintext)."""
        values: Row = self._values(obj)
        if not self._encoders and not self._sealed:
            return values
        row = list(values)
        for i, encode in self._encoders:
            row[i] = encode(row[i])
        if self._sealed and vault is not None and self._holds_secrets(row):
            key = row[self._key_index]
            for i, column, _ in self._sealed:
                if row[i] is not None:
                    row[i] = vault.seal(_data(row[i]), self.context(key, column))
        return tuple(row)

    def update_row(self, obj: Any, vault: Vault | None = None) -> Row:
        """Parameters of ``update``: the non-key columns, then the key."""
        row = self.row(obj, vault)
        index = self._key_index
        return row[:index] + row[index + 1 :] + (row[index],)

    def load(self, row: Row, vault: Vault | None = None) -> Any:
        if self._sealed and vault is not None and self._holds_secrets(row):
            row = self._opened(row, vault)
        return self.cls(
            **{
                c: self.codecs[c][1](v) if c in self.codecs else v
                for c, v in zip(self.columns, row, strict=True)
            }
        )

    def context(self, key: Any, column: str) -> str:
        """What a sealed value is bound to: table, row key and column (D-282)."""
        return f"{self.name}/{key}/{column}"

    def _holds_secrets(self, row: Row | list[Any]) -> bool:
        return self._sealed_if is None or row[self._sealed_if[0]] == self._sealed_if[1]

    def _opened(self, row: Row, vault: Vault) -> Row:
        values = list(row)
        key = values[self._key_index]
        for i, column, kind in self._sealed:
            if values[i] is not None:
                data = vault.open(values[i], self.context(key, column))
                values[i] = data.decode() if kind is str else data
        return tuple(values)

    def seal_stored(self, conn: Any, vault: Vault) -> None:
        """Seal the secrets the table holds in plaintext (migration 008)."""
        names = ", ".join(f'"{column}"' for _, column, _ in self._sealed)
        where, params = "", []
        if self._sealed_if is not None:
            where = f' WHERE "{self.columns[self._sealed_if[0]]}" = ?'
            params.append(int(self._sealed_if[1]))
        rows = _rows(conn, f'SELECT "{self.key}", {names} FROM {self.name}{where}', params)
        for key, *values in rows:
            for (_, column, _), value in zip(self._sealed, values, strict=True):
                if value is not None and not is_sealed(value):
                    sealed = vault.seal(_data(value), self.context(key, column))
                    _rows(
                        conn,
                        f'UPDATE {self.name} SET "{column}" = ? WHERE "{self.key}" = ?',
                        (sealed, key),
                    )


def _data(value: str | bytes) -> bytes:
    """The bytes a secret is sealed as: text columns in UTF-8."""
    return value.encode() if isinstance(value, str) else bytes(value)


_TERMINALS = _Table(
    "terminals",
    Terminal,
    key="id",
    codecs={
        "state": _enum(TerminalState),
        "enabled": _BOOL,
        "require_encryption": _BOOL,
        "sms_wakeup": _BOOL,
        "allowed_imsis": _optional(*_STR_SET),
        "current": _CREDENTIALS,
        "pending": _CREDENTIALS,
        "sync_tags": _JSON_LIST,
        "apps": _STR_SET,
        "config_unverified": _BOOL,
    },
    sealed={"current": str, "pending": str, "session_key": str},
)
#: SECURITY_CONFIG bodies carry fresh passwords and the Base Key (op 0), its answers
#: the values read (op 1); other bodies hold no secret of the platform (D-281).
_REQUESTS = _Table(
    "requests", Request, key="id", codecs={"state": _enum(RequestState)},
    sealed={"body": bytes, "answer_body": bytes},
    sealed_if=("command", Command.SECURITY_CONFIG),
)
_FILES = _Table("file_transactions", FileTransaction, key="trans_id",
                codecs={"state": _enum(FileState)})
_MESSAGES = _Table("messages", LogEntry)
_ALARM_HISTORY = _Table("alarm_history", Alarm)
_ALARM_STATE = _Table("alarm_state", Alarm)
#: Every message: an SMS does not record its command, and op 0 travels by SMS in
#: plaintext (PD-21); a modem sends a few a second, so sealing costs nothing (D-281).
_SMS_OUTBOX = _Table("sms_outbox", OutgoingSms, key="id", codecs={"state": _enum(SmsState)},
                     sealed={"message": bytes})
_APPLICATIONS = _Table(
    "applications",
    Application,
    key="app_id",
    codecs={
        "terminals": _STR_SET,
        "permissions": _STR_SET,
        "require_session": _BOOL,
        "enabled": _BOOL,
    },
    sealed={"password": str, "base_key": str, "next_base_key": str},
)
_SEALED_TABLES = (_TERMINALS, _APPLICATIONS, _REQUESTS, _SMS_OUTBOX)
_NOTIFICATIONS = _Table("app_notifications", AppNotification, key="id",
                        codecs={"state": _enum(NotificationState)})
_APP_MESSAGES = _Table("app_messages", AppMessage, key="id", codecs={"need_ack": _BOOL})
#: Application messages (msgId) kept in memory for status queries and bizSeq (AD-14).
APP_MESSAGE_CACHE_SIZE = 100_000


class _Outbox:
    """One application's undelivered notifications, in notifyId (= creation) order.

    ``ready`` holds those in state ``pending``, the only ones the outbox pump offers,
    so that its next entry is found in O(1) whatever else waits (D-255). An entry
    that comes back to it (a kept one, after a new session) is usually older than its
    tail: the queue is then sorted once, at its next read, not at each change.
    """

    __slots__ = ("entries", "ready", "unsorted")

    def __init__(self) -> None:
        self.entries: dict[int, AppNotification] = {}
        self.ready: dict[int, AppNotification] = {}
        self.unsorted = False

    def file(self, entry: AppNotification) -> None:
        """Put ``entry`` into the ready queue or take it out, by its state."""
        notify_id = entry.id or 0
        if entry.state != NotificationState.PENDING:
            self.ready.pop(notify_id, None)
        elif notify_id not in self.ready:
            if self.ready and next(reversed(self.ready)) > notify_id:
                self.unsorted = True
            self.ready[notify_id] = entry

    def head(self) -> Iterator[AppNotification]:
        if self.unsorted:
            self.ready = dict(sorted(self.ready.items()))
            self.unsorted = False
        return iter(self.ready.values())

_TOUCH = 'UPDATE terminals SET last_seen = ?, bearer = ?, address = ? WHERE id = ?'
_SET_COUNTER = "INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)"
_SET_SMS_REFERENCE = "INSERT OR REPLACE INTO sms_references (msisdn, reference) VALUES (?, ?)"
_STORE_CONFIG = (
    "INSERT OR REPLACE INTO terminal_config (terminal_id, tag, value, source, updated_at) "
    "VALUES (?, ?, ?, ?, ?)"
)
_CONFIG_SOURCES = ("reported", "set")
_ACTIVE_STATES_SQL = "('queued', 'sent')"


class _History(NamedTuple):
    """A history table (D-201): its key, the column its age counts from, and the SQL
    term that tells finished rows (empty: every row is history)."""

    key: str
    age: str
    finished: str = ""


_HISTORY = {
    "messages": _History("id", "time"),
    "statistics": _History("id", "time"),
    "alarm_history": _History("id", "time"),
    "requests": _History("id", "updated_at", f"state NOT IN {_ACTIVE_STATES_SQL}"),
    "app_messages": _History("id", "updated_at", "state NOT IN ('QUEUED', 'SENT')"),
    "file_transactions": _History("trans_id", "expires_at"),
    "sms_outbox": _History("id", "updated_at", "state <> 'pending'"),
}


def _prune_sql(table: str, history: _History) -> str:
    """Delete the oldest ``LIMIT`` history rows, found through migration 006's indexes
    (the ``finished`` term matches the partial indexes' WHERE, so they apply)."""
    finished = f"{history.finished} AND " if history.finished else ""
    key, age = history.key, history.age
    return (
        f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} "
        f"WHERE {finished}{age} < ? ORDER BY {age} LIMIT ?) RETURNING {key}"
    )


_PRUNE_SQL = {table: _prune_sql(table, history) for table, history in _HISTORY.items()}


def _filters(**columns: Any) -> tuple[str, list[Any]]:
    """A WHERE clause matching every column given (not None); a list value is IN."""
    terms: list[str] = []
    params: list[Any] = []
    for name, value in columns.items():
        if value is None:
            continue
        if isinstance(value, list):
            terms.append(f"{name} IN ({', '.join('?' * len(value))})")
            params += value
        else:
            terms.append(f"{name} = ?")
            params.append(value)
    return (f" WHERE {' AND '.join(terms)}" if terms else ""), params


def _load_all(txn: Any, now: float) -> dict[str, list[Row]]:
    """Everything the cache holds, read in one interaction at open."""

    def rows(sql: str, *params: Any) -> list[Row]:
        txn.execute(sql, params)
        return txn.fetchall()

    return {
        "terminals": rows(_TERMINALS.select),
        "config": rows("SELECT terminal_id, tag, value FROM terminal_config"),
        "active": rows(f"{_REQUESTS.select} WHERE state IN {_ACTIVE_STATES_SQL} ORDER BY id"),
        "finished": rows(
            f"{_REQUESTS.select} WHERE state NOT IN {_ACTIVE_STATES_SQL} "
            "ORDER BY id DESC LIMIT ?",
            FINISHED_CACHE_SIZE,
        ),
        "files": rows(f"{_FILES.select} WHERE expires_at > ?", now),
        "meta": rows("SELECT name, value FROM registry_meta"),
        "counters": rows("SELECT name, value FROM counters"),
        "sequences": rows("SELECT name, seq FROM sqlite_sequence"),
        "sms_pending": rows(f"{_SMS_OUTBOX.select} WHERE state = 'pending' ORDER BY id"),
        "sms_references": rows("SELECT msisdn, reference FROM sms_references"),
        "applications": rows(_APPLICATIONS.select),
        "notifications": rows(f"{_NOTIFICATIONS.select} ORDER BY id"),
        "app_messages": rows(
            f"{_APP_MESSAGES.select} ORDER BY id DESC LIMIT ?", APP_MESSAGE_CACHE_SIZE
        ),
    }


# --- the registry ----------------------------------------------------------------------


@implementer(ITerminalRegistry)
class SqliteRegistry:
    """Terminal registry on one SQLite file; see :class:`ITerminalRegistry`.

    One process owns a database: ids and counters are allocated in memory, and the
    lock taken at open keeps a second owner out. ``read_only`` opens a snapshot for
    reading beside the owner: no lock, no migration, and every write refused.
    ``master_key_file`` (default: ``m2mgw.key`` beside the database) holds the key the
    secrets are sealed under; it is created when the database is new or not sealed yet.
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
        self._path = path
        self._reactor = reactor
        self._migrations = load_migrations() if migrations is None else _checked(migrations)
        self._read_only = read_only
        self._key_path = master_key_file or default_key_path(path)
        #: Seals and opens the secrets while open; None for a schema from before sealing.
        self._vault: Vault | None = None
        self._pool: ConnectionPool | None = None
        self._lock_fd: int | None = None
        self._identity: RegistryIdentity | None = None
        self._flusher = LoopingCall(self._flush_tick)
        self._flusher.clock = reactor
        self._shutdown_trigger: Any = None
        self._watermarks = _watermarks(watermarks, "write")
        self._row_watermarks = _watermarks(row_watermarks, "row")
        self._pending_writes = 0
        self._pending_rows = 0
        self._saturated = False
        self._pressure_observers: list[PressureObserver] = []
        #: Called with each request enqueued or updated (the admin API's /events).
        self.request_observers: list[Callable[[Request], None]] = []
        #: Seconds from a write's submission to its commit (the writer's backlog included).
        self.commit_latency = Histogram()
        #: Requests that left the queue, by (Command_ID, final state), since start-up.
        self.request_outcomes: Counter[tuple[int, str]] = Counter()
        self._reset()

    def _reset(self) -> None:
        """Empty caches, so that a registry can be opened again after ``close``."""
        self._terminals: dict[int, Terminal] = {}
        self._index: dict[str, dict[str, Terminal]] = {"serial": {}, "imei": {}, "msisdn": {}}
        self._indexed: dict[int, dict[str, str]] = {}
        self._config: dict[int, dict[int, bytes]] = {}
        self._active: dict[int, Request] = {}
        self._queues: dict[str, dict[int, Request]] = {}
        self._finished: OrderedDict[int, Request] = OrderedDict()
        self._files_by_token: dict[str, FileTransaction] = {}
        self._files_by_trans_id: dict[int, FileTransaction] = {}
        self._counters: dict[str, int] = {}
        self._next_id: dict[str, int] = {}
        self._touched: set[int] = set()
        self._log_rows: list[Row] = []
        self._commit_waiters: list[Deferred[None]] = []
        self._group_call: Any = None
        self._sms_pending: dict[int, OutgoingSms] = {}
        self._sms_references: dict[str, int] = {}
        self._apps: dict[str, Application] = {}
        self._apps_by_ec: dict[str, Application] = {}
        self._outboxes: dict[str, _Outbox] = {}
        self._notifications: dict[int, AppNotification] = {}
        self._app_messages: OrderedDict[int, AppMessage] = OrderedDict()
        self._biz_seqs: dict[tuple[str, str], AppMessage] = {}

    # --- lifecycle ----------------------------------------------------------------

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
        d = pool.runWithConnection(
            _prepare, self._migrations, self._path, self._key_path, self._read_only
        )
        d.addCallback(self._migrated)
        d.addCallback(lambda _: pool.runInteraction(_load_all, self._reactor.seconds()))
        d.addCallback(self._install)
        d.addErrback(self._open_failed)
        return d

    def _create_private(self) -> None:
        """A new database file is created mode 0600 before SQLite opens it (D-286)."""
        try:
            create_private(self._path)
        except OSError as exc:
            raise RegistryError(f"{self._path}: cannot open database: {exc.strerror}") from None

    def _migrated(self, prepared: _Prepared) -> None:
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

    def _install(self, loaded: dict[str, list[Row]]) -> None:
        self._reset()
        self._identity = RegistryIdentity(
            "sqlite", os.path.abspath(self._path), dict(loaded["meta"])["instance_id"]
        )
        vault = self._vault
        for row in loaded["terminals"]:
            terminal = _TERMINALS.load(row, vault)
            self._terminals[terminal.id] = terminal
            self._reindex(terminal, self._keys(terminal))
        for terminal_id, tag, value in loaded["config"]:
            opened = _config_secret(vault and vault.open, terminal_id, tag, value)
            self._config.setdefault(terminal_id, {})[tag] = opened
        for row in loaded["active"]:
            self._track(_REQUESTS.load(row, vault))
        for row in reversed(loaded["finished"]):
            self._track(_REQUESTS.load(row, vault))
        for row in loaded["files"]:
            self._index_file(_FILES.load(row))
        self._counters = dict(loaded["counters"])
        sequences = dict(loaded["sequences"])
        self._next_id = {
            table: sequences.get(table, 0) + 1
            for table in ("terminals", "requests", "sms_outbox", "app_notifications",
                          "app_messages")
        }
        for row in loaded["sms_pending"]:
            sms = _SMS_OUTBOX.load(row, vault)
            self._sms_pending[sms.id] = sms
        self._sms_references = dict(loaded["sms_references"])
        self._install_applications(loaded)
        self._flusher.start(FLUSH_INTERVAL, now=False)
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
        if self._flusher.running:
            self._flusher.stop()
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        if self._group_call is not None:
            self._group_call.cancel()
            self._group_commit()
        self._flush_tick()
        self._pool = None
        self._identity = None
        self._vault = None
        done: Deferred[None] = pool.runInteraction(_barrier)

        def closed(result: Any) -> Any:
            pool.close()
            self._unlock()
            return result

        return done.addBoth(closed)

    def identity(self) -> RegistryIdentity:
        """This registry's backend, location and stored instance id (``GET /registry``)."""
        if self._identity is None:
            raise RegistryError(f"{self._path}: registry is not open")
        return self._identity

    def _write(self, batch: Batch) -> Deferred[None]:
        rows = sum(len(batch_rows) for _, batch_rows in batch)
        return self._submit(rows, _apply, batch)

    def _submit(self, rows: int, interaction: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Queue a write transaction on the writer, counted for backpressure."""
        if self._pool is None:
            raise RegistryError(f"{self._path}: registry is not open")
        if self._read_only:
            raise RegistryError(f"{self._path}: registry is open read-only")
        d: Deferred[Any] = self._pool.runInteraction(interaction, *args)
        self._pending_writes += 1
        self._pending_rows += rows
        if not self._saturated and (
            self._pending_writes >= self._watermarks[0]
            or self._pending_rows >= self._row_watermarks[0]
        ):
            self._set_saturated(True)
        d.addBoth(self._committed, rows, self._reactor.seconds())
        return d.addErrback(self._write_failed)

    def _write_failed(self, failure: Failure) -> Failure:
        """Log here too: hot-path callers often do not wait for the Deferred."""
        _log.failure("registry {path}: write failed; memory and database may disagree",
                     failure, path=self._path)
        return failure

    def _query(self, sql: str, *params: Any) -> Deferred[list[Row]]:
        if self._pool is None:
            raise RegistryError(f"{self._path}: registry is not open")
        return self._pool.runQuery(sql, params)

    @staticmethod
    def _background(d: Deferred[Any]) -> None:
        """A fire-and-forget write: its failure was logged by ``_write_failed``."""
        d.addErrback(lambda _: None)

    # --- backpressure ---------------------------------------------------------------

    @property
    def pending_writes(self) -> int:
        """Write transactions submitted and not yet committed."""
        return self._pending_writes

    @property
    def pending_rows(self) -> int:
        """Rows of those transactions."""
        return self._pending_rows

    @property
    def saturated(self) -> bool:
        """True from a high watermark until both counts are back at their low ones."""
        return self._saturated

    def add_pressure_observer(self, observer: PressureObserver) -> None:
        """Call ``observer(saturated)`` on each crossing, in the reactor thread."""
        self._pressure_observers.append(observer)

    def remove_pressure_observer(self, observer: PressureObserver) -> None:
        self._pressure_observers.remove(observer)

    def _committed(self, result: Any, rows: int, submitted: float) -> Any:
        """A write left the queue (committed or failed): maybe release the pressure."""
        self._pending_writes -= 1
        self._pending_rows -= rows
        if not isinstance(result, Failure):
            self.commit_latency.observe(self._reactor.seconds() - submitted)
        if self._saturated and (
            self._pending_writes <= self._watermarks[1]
            and self._pending_rows <= self._row_watermarks[1]
        ):
            self._set_saturated(False)
        return result

    def _set_saturated(self, saturated: bool) -> None:
        self._saturated = saturated
        _log.info(
            "registry {path}: {state}, {writes} writes ({rows} rows) not yet committed",
            path=self._path, state="writer saturated" if saturated else "writer caught up",
            writes=self._pending_writes, rows=self._pending_rows,
        )
        for observer in list(self._pressure_observers):
            try:
                observer(saturated)
            except Exception:
                # It runs inside a write's callback chain: raising would fail the write.
                _log.failure("registry {path}: pressure observer {observer} failed",
                             path=self._path, observer=observer)

    # --- retention ------------------------------------------------------------------

    def prune(self, table: str, before: float, limit: int) -> Deferred[int]:
        sql = _PRUNE_SQL.get(table)
        if sql is None:
            raise RegistryError(f"{table!r} is not a history table ({', '.join(_PRUNE_SQL)})")
        if limit < 1:
            raise RegistryError(f"a pruning batch needs a limit of at least 1, got {limit}")
        # No rows held in memory: it counts as one write for backpressure, not as rows.
        d: Deferred[list[Any]] = self._submit(0, _prune, sql, before, limit)
        return d.addCallback(self._forget, table)

    def _forget(self, keys: list[Any], table: str) -> int:
        """Drop the cached copies of pruned rows; the number of rows pruned."""
        if table == "requests":
            for key in keys:
                self._finished.pop(key, None)
        elif table == "app_messages":
            for key in keys:
                message = self._app_messages.pop(key, None)
                if message is not None:
                    self._forget_biz_seq(message)
        elif table == "file_transactions":
            for key in keys:
                tx = self._files_by_trans_id.pop(key, None)
                if tx is not None and self._files_by_token.get(tx.token) is tx:
                    del self._files_by_token[tx.token]
        return len(keys)

    # --- terminals ----------------------------------------------------------------

    def get(self, serial: str) -> Terminal | None:
        return self._index["serial"].get(serial)

    def by_imei(self, imei: str) -> Terminal | None:
        return self._index["imei"].get(imei)

    def by_msisdn(self, msisdn: str) -> Terminal | None:
        return self._index["msisdn"].get(normalize_msisdn(msisdn))

    def terminals(self) -> list[Terminal]:
        return list(self._terminals.values())

    def add(self, terminal: Terminal) -> Deferred[Terminal]:
        if terminal.id is not None:
            raise RegistryError(f"terminal IMEI {terminal.imei} already has id {terminal.id}")
        keys = self._keys(terminal)
        self._check_unique(terminal, keys)
        now = self._reactor.seconds()
        terminal.created_at = terminal.created_at or now
        terminal.updated_at = now
        row = self._new_row(terminal, _TERMINALS)
        self._terminals[terminal.id] = terminal
        self._reindex(terminal, keys)
        return self._write([(_TERMINALS.insert, [row])]).addCallback(lambda _: terminal)

    def save(self, terminal: Terminal) -> Deferred[None]:
        if terminal.id not in self._terminals:
            raise RegistryError(f"terminal IMEI {terminal.imei} is not in the registry")
        keys = self._keys(terminal)
        self._check_unique(terminal, keys)
        terminal.updated_at = self._reactor.seconds()
        row = _TERMINALS.update_row(terminal, self._vault)
        self._terminals[terminal.id] = terminal
        self._reindex(terminal, keys)
        self._touched.discard(terminal.id)
        return self._write([(_TERMINALS.update, [row])])

    def touch(self, serial: str, now: float, bearer: str | None, address: str | None) -> None:
        terminal = self._index["serial"].get(serial)
        if terminal is None:
            return
        terminal.last_seen, terminal.bearer, terminal.address = now, bearer, address
        self._touched.add(terminal.id)

    def allocate_serial(self, prefix: str) -> str:
        if len(prefix) != 8:
            raise RegistryError(f"serial prefix must be 8 characters, got {prefix!r}")
        value = self._counters.get("serial", 0)
        while True:
            value += 1
            if value > SERIAL_DIGITS_MAX:
                raise RegistryError("serial numbers exhausted (8 decimal digits)")
            serial = f"{prefix}{value:08d}"
            if serial not in self._index["serial"]:
                break
        self._set_counter("serial", value)
        return serial

    def remove(self, serial_or_imei: str) -> Deferred[None]:
        terminal = self.get(serial_or_imei) or self.by_imei(serial_or_imei)
        if terminal is None:
            raise RegistryError(f"no terminal with serial or IMEI {serial_or_imei!r}")
        terminal_id = terminal.id
        del self._terminals[terminal_id]
        self._reindex(terminal, {})
        del self._indexed[terminal_id]
        self._config.pop(terminal_id, None)
        self._touched.discard(terminal_id)
        cancelled = self.queued(terminal.serial) if terminal.serial else []
        for request in cancelled:
            request.state = RequestState.CANCELLED
            request.outcome = "terminal removed"
        _log.info("registry: removed terminal {serial} (IMEI {imei})",
                  serial=terminal.serial, imei=terminal.imei)
        delete = ("DELETE FROM terminals WHERE id = ?", [(terminal_id,)])
        return self._write([delete, *self._request_updates(cancelled)])

    def _keys(self, terminal: Terminal) -> dict[str, str]:
        """The unique index keys of a terminal (MSISDN normalised, PD-30)."""
        keys = {"serial": terminal.serial, "imei": terminal.imei,
                "msisdn": normalize_msisdn(terminal.msisdn) if terminal.msisdn else None}
        return {name: key for name, key in keys.items() if key}

    def _check_unique(self, terminal: Terminal, keys: dict[str, str]) -> None:
        for name, key in keys.items():
            other = self._index[name].get(key)
            if other is not None and other.id != terminal.id:
                raise RegistryError(f"{name} {key} is already used by terminal id {other.id}")

    def _reindex(self, terminal: Terminal, keys: dict[str, str]) -> None:
        for name, key in self._indexed.get(terminal.id, {}).items():
            holder = self._index[name].get(key)
            if holder is not None and holder.id == terminal.id:
                del self._index[name][key]
        for name, key in keys.items():
            self._index[name][key] = terminal
        self._indexed[terminal.id] = keys

    def _new_row(
        self, obj: Terminal | Request | OutgoingSms | AppNotification | AppMessage, table: _Table
    ) -> Row:
        """Give ``obj`` the table's next id and encode it; no change if encoding fails."""
        obj.id = self._next_id[table.name]
        try:
            row = table.row(obj, self._vault)
        except ValueError:
            obj.id = None
            raise
        self._next_id[table.name] += 1
        return row

    def _set_counter(self, name: str, value: int) -> None:
        self._counters[name] = value
        self._background(self._write([(_SET_COUNTER, [(name, value)])]))

    def _require(self, serial: str) -> Terminal:
        terminal = self.get(serial)
        if terminal is None:
            raise RegistryError(f"no terminal with serial {serial!r}")
        return terminal

    # --- configuration --------------------------------------------------------------

    def config_values(self, serial: str) -> dict[int, bytes]:
        terminal = self.get(serial)
        return dict(self._config.get(terminal.id, {})) if terminal else {}

    def store_config(self, serial: str, values: dict[int, bytes], source: str) -> Deferred[None]:
        if source not in _CONFIG_SOURCES:
            raise RegistryError(f"config source must be one of {_CONFIG_SOURCES}, got {source!r}")
        terminal_id = self._require(serial).id
        now = self._reactor.seconds()
        seal = self._vault and self._vault.seal
        rows = [
            (terminal_id, tag, _config_secret(seal, terminal_id, tag, bytes(value)), source, now)
            for tag, value in values.items()
        ]
        self._config.setdefault(terminal_id, {}).update(
            (tag, bytes(value)) for tag, value in values.items()
        )
        return self._write([(_STORE_CONFIG, rows)])

    # --- alarms and statistics ------------------------------------------------------

    def record_alarm(self, alarm: Alarm) -> Deferred[None]:
        row = _ALARM_HISTORY.row(alarm)
        batch: Batch = [(_ALARM_HISTORY.insert, [row])]
        if alarm.serial is not None:
            batch.append((_ALARM_STATE.replace, [row]))
        return self._write(batch)

    def alarms(
        self, serial: str | None = None, active_only: bool = False, limit: int = 100
    ) -> Deferred[list[Alarm]]:
        table = _ALARM_STATE if active_only else _ALARM_HISTORY
        where = ["status = 1"] if active_only else []
        params: list[Any] = []
        if serial is not None:
            where.append("serial = ?")
            params.append(serial)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        order = "time DESC" if active_only else "id DESC"
        sql = f"{table.select}{clause} ORDER BY {order} LIMIT ?"
        return self._query(sql, *params, limit).addCallback(
            lambda rows: [table.load(row) for row in rows]
        )

    def alarm_page(
        self,
        serial: str | None = None,
        *,
        active_only: bool = False,
        code: int | None = None,
        status: int | None = None,
        before: int | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> Deferred[list[tuple[int | None, Alarm]]]:
        if active_only:  # alarm_state has no ids: newest first, paged by offset
            where, params = _filters(serial=serial, code=code, status=1)
            sql = f"{_ALARM_STATE.select}{where} ORDER BY time DESC LIMIT ? OFFSET ?"
            return self._query(sql, *params, limit, offset).addCallback(
                lambda rows: [(None, _ALARM_STATE.load(row)) for row in rows]
            )
        where, params = _filters(serial=serial, code=code, status=status)
        return self._history_page(_ALARM_HISTORY, where, params, before, offset, limit)

    def _history_page(
        self, table: _Table, where: str, params: list[Any], before: int | None,
        offset: int, limit: int,
    ) -> Deferred[list[tuple[int, Any]]]:
        """Rows of a history table with their ids, newest first, before id ``before``."""
        if before is not None:
            where = f"{where} AND id < ?" if where else " WHERE id < ?"
            params = [*params, before]
        names = ", ".join(f'"{c}"' for c in table.columns)
        sql = f"SELECT id, {names} FROM {table.name}{where} ORDER BY id DESC LIMIT ? OFFSET ?"
        return self._query(sql, *params, limit, offset).addCallback(
            lambda rows: [(row[0], table.load(row[1:], self._vault)) for row in rows]
        )

    def record_statistics(
        self, serial: str, values: dict[int, bytes], now: float
    ) -> Deferred[None]:
        rows = [(serial, now, tag, bytes(value)) for tag, value in values.items()]
        sql = "INSERT INTO statistics (serial, time, tag, value) VALUES (?, ?, ?, ?)"
        return self._write([(sql, rows)])

    def statistics(self, serial: str, limit: int = 100) -> Deferred[list[tuple[float, int, bytes]]]:
        sql = "SELECT time, tag, value FROM statistics WHERE serial = ? ORDER BY id DESC LIMIT ?"
        return self._query(sql, serial, limit).addCallback(
            lambda rows: [tuple(row) for row in rows]
        )

    # --- message log ----------------------------------------------------------------

    def log(self, entry: LogEntry) -> None:
        self._log_rows.append(_MESSAGES.row(entry))
        if len(self._log_rows) >= LOG_FLUSH_SIZE:
            self._flush_tick()

    def log_committed(self, entry: LogEntry) -> Deferred[None]:
        """Append a log entry and fire once it is committed.

        Entries arriving in the same reactor turn share one transaction (group commit),
        so durable log entries cost little more than batched ones.
        """
        d: Deferred[None] = Deferred()
        self._log_rows.append(_MESSAGES.row(entry))
        self._commit_waiters.append(d)
        if self._group_call is None:
            # An idle writer commits at once; a busy one gathers a group meanwhile.
            delay = GROUP_COMMIT_DELAY if self._pending_writes else 0
            self._group_call = self._reactor.callLater(delay, self._group_commit)
        return d

    def _group_commit(self) -> None:
        self._group_call = None
        waiters, self._commit_waiters = self._commit_waiters, []
        if not waiters:
            return
        if self._pool is None:
            error = RegistryError(f"{self._path}: registry closed before the commit")
            for waiter in waiters:
                waiter.errback(error)
            return
        # One transaction for the waiting rows and whatever else is buffered; when the
        # buffer was already flushed, a no-op interaction ends after that flush (the
        # single writer runs interactions in order).
        done = self._flush() or self._pool.runInteraction(_barrier)

        def fire(_: Any) -> None:
            for waiter in waiters:
                waiter.callback(None)

        def fail(failure: Failure) -> None:  # already logged by _write_failed
            for waiter in waiters:
                waiter.errback(failure)

        done.addCallbacks(fire, fail)

    def messages(self, serial: str, limit: int = 100) -> Deferred[list[LogEntry]]:
        self._flush_tick()
        sql = f"{_MESSAGES.select} WHERE serial = ? ORDER BY id DESC LIMIT ?"
        return self._query(sql, serial, limit).addCallback(
            lambda rows: [_MESSAGES.load(row) for row in rows]
        )

    def message_page(
        self,
        serial: str | None = None,
        *,
        direction: str | None = None,
        event: str | None = None,
        before: int | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> Deferred[list[tuple[int, LogEntry]]]:
        self._flush_tick()
        where, params = _filters(serial=serial, direction=direction, event=event)
        return self._history_page(_MESSAGES, where, params, before, offset, limit)

    def _flush_tick(self) -> None:
        """Persist coalesced touches and buffered log entries, fire-and-forget."""
        d = self._flush()
        if d is not None:
            self._background(d)

    def _flush(self) -> Deferred[None] | None:
        """Coalesced touches and buffered log entries in one transaction, if any."""
        if self._pool is None:
            return None
        batch: Batch = []
        if self._touched:
            touched = [self._terminals[i] for i in sorted(self._touched)]
            batch.append((_TOUCH, [(t.last_seen, t.bearer, t.address, t.id) for t in touched]))
            self._touched.clear()
        if self._log_rows:
            batch.append((_MESSAGES.insert, self._log_rows))
            self._log_rows = []
        if not batch:
            return None
        return self._write(batch)

    # --- request queue --------------------------------------------------------------

    def enqueue(self, request: Request) -> Deferred[Request]:
        if request.id is not None:
            raise RegistryError(f"request {request.id} is already enqueued")
        request.updated_at = self._reactor.seconds()
        row = self._new_row(request, _REQUESTS)
        self._track(request)
        self._tell(request)
        return self._write([(_REQUESTS.insert, [row])]).addCallback(lambda _: request)

    def update_request(self, request: Request) -> Deferred[None]:
        if request.id is None:
            raise RegistryError("update of a request that was never enqueued")
        return self._write(self._request_updates([request]))

    def queued(self, serial: str) -> list[Request]:
        return sorted(self._queues.get(serial, {}).values(), key=lambda r: r.id or 0)

    def active_requests(self) -> list[Request]:
        return sorted(self._active.values(), key=lambda r: r.id or 0)

    def queue_stats(self) -> tuple[int, float | None]:
        # Active requests are filed by increasing id (enqueue, and load ORDER BY id), and
        # a re-filed one keeps its place: the first is the oldest.
        oldest = next(iter(self._active.values()), None)
        return len(self._active), None if oldest is None else oldest.created_at

    def request(self, id: int) -> Request | None:
        return self._active.get(id) or self._finished.get(id)

    def requests(
        self,
        serial: str | None = None,
        states: Iterable[str] | None = None,
        limit: int = 100,
        *,
        before: int | None = None,
        offset: int = 0,
    ) -> Deferred[list[Request]]:
        values = None if states is None else [RequestState(s).value for s in states]
        where, params = _filters(serial=serial, state=values)

        def load(rows: list[tuple[int, Request]]) -> list[Request]:
            return [self.request(r.id) or r for _, r in rows]

        return self._history_page(_REQUESTS, where, params, before, offset, limit).addCallback(
            load
        )

    def expire_requests(self, now: float) -> Deferred[list[Request]]:
        expired = [
            r for r in self._active.values()
            if r.state == RequestState.QUEUED and r.expires_at <= now
        ]
        if not expired:
            return succeed([])
        for request in expired:
            request.state = RequestState.EXPIRED
            request.outcome = "TTL expired while queued"
        return self._write(self._request_updates(expired)).addCallback(lambda _: expired)

    def _request_updates(self, requests: list[Request]) -> Batch:
        """Stamp, re-file in the cache and build the UPDATE batch for ``requests``."""
        now = self._reactor.seconds()
        rows = []
        for request in requests:
            request.updated_at = now
            rows.append(_REQUESTS.update_row(request, self._vault))
            self._track(request)
            self._tell(request)
        return [(_REQUESTS.update, rows)] if rows else []

    def _tell(self, request: Request) -> None:
        for observer in self.request_observers:
            try:
                observer(request)
            except Exception:  # an observer's bug must not fail the write
                _log.failure("registry {path}: request observer {observer} failed",
                             path=self._path, observer=observer)

    def _track(self, request: Request) -> None:
        """File a request in the active queue or the finished cache by its state."""
        request_id = request.id
        queue = self._queues.setdefault(request.serial, {})
        if request.active:
            self._finished.pop(request_id, None)
            self._active[request_id] = queue[request_id] = request
            return
        if self._active.pop(request_id, None) is not None:
            # Counted once, on leaving the queue: a later outcome (0x4010) is not a second.
            self.request_outcomes[(request.command, request.state)] += 1
        queue.pop(request_id, None)
        if not queue:
            del self._queues[request.serial]
        self._finished[request_id] = request
        self._finished.move_to_end(request_id)
        if len(self._finished) > FINISHED_CACHE_SIZE:
            self._finished.popitem(last=False)

    # --- file transactions ----------------------------------------------------------

    def add_file(self, tx: FileTransaction) -> Deferred[None]:
        if tx.trans_id in self._files_by_trans_id or tx.token in self._files_by_token:
            raise RegistryError(f"file transaction {tx.trans_id:08X} or its token is taken")
        row = _FILES.row(tx)
        self._index_file(tx)
        return self._write([(_FILES.insert, [row])])

    def file_by_token(self, token: str) -> FileTransaction | None:
        return self._files_by_token.get(token)

    def file_by_trans_id(self, trans_id: int) -> FileTransaction | None:
        return self._files_by_trans_id.get(trans_id)

    def update_file(self, tx: FileTransaction) -> Deferred[None]:
        known = self._files_by_trans_id.get(tx.trans_id)
        if known is None or known.token != tx.token:
            raise RegistryError(f"unknown file transaction {tx.trans_id:08X}")
        row = _FILES.update_row(tx)
        self._index_file(tx)
        return self._write([(_FILES.update, [row])])

    def allocate_trans_id(self) -> int:
        value = self._counters.get("trans_id", 0)
        while True:
            value = advance_counter(value, U32_MAX)
            if value not in self._files_by_trans_id:
                break
        self._set_counter("trans_id", value)
        return value

    def _index_file(self, tx: FileTransaction) -> None:
        self._files_by_token[tx.token] = tx
        self._files_by_trans_id[tx.trans_id] = tx

    # --- SMS outbox -----------------------------------------------------------------

    def enqueue_sms(self, sms: OutgoingSms) -> Deferred[OutgoingSms]:
        if sms.id is not None:
            raise RegistryError(f"outgoing SMS {sms.id} is already enqueued")
        sms.updated_at = self._reactor.seconds()
        row = self._new_row(sms, _SMS_OUTBOX)
        self._sms_pending[sms.id] = sms
        batch: Batch = [(_SMS_OUTBOX.insert, [row])]
        if sms.reference is not None:
            # In the row's transaction: the counter is on disk whenever its message is.
            self._sms_references[sms.msisdn] = sms.reference
            batch.append((_SET_SMS_REFERENCE, [(sms.msisdn, sms.reference)]))
        return self._write(batch).addCallback(lambda _: sms)

    def update_sms(self, sms: OutgoingSms) -> Deferred[None]:
        if sms.id is None:
            raise RegistryError("update of an outgoing SMS that was never enqueued")
        sms.updated_at = self._reactor.seconds()
        row = _SMS_OUTBOX.update_row(sms, self._vault)
        if sms.state == SmsState.PENDING:
            self._sms_pending[sms.id] = sms
        else:
            self._sms_pending.pop(sms.id, None)
        return self._write([(_SMS_OUTBOX.update, [row])])

    def pending_sms(self) -> list[OutgoingSms]:
        return sorted(self._sms_pending.values(), key=lambda sms: sms.id or 0)

    def sms_references(self) -> dict[str, int]:
        return dict(self._sms_references)

    def sms_page(
        self,
        *,
        states: Iterable[str] | None = None,
        msisdn: str | None = None,
        before: int | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> Deferred[list[OutgoingSms]]:
        values = None if states is None else [SmsState(s).value for s in states]
        number = None if msisdn is None else normalize_msisdn(msisdn)
        where, params = _filters(state=values, msisdn=number)
        d = self._history_page(_SMS_OUTBOX, where, params, before, offset, limit)
        return d.addCallback(lambda rows: [self._sms_pending.get(s.id, s) for _, s in rows])

    # --- applications ---------------------------------------------------------------

    def _install_applications(self, loaded: dict[str, list[Row]]) -> None:
        for row in loaded["applications"]:
            self._index_application(_APPLICATIONS.load(row, self._vault))
        for row in loaded["notifications"]:
            self._add_notification(_NOTIFICATIONS.load(row))
        for row in reversed(loaded["app_messages"]):
            self._cache_app_message(_APP_MESSAGES.load(row))

    def applications(self) -> list[Application]:
        return list(self._apps.values())

    def application(self, app_id: str) -> Application | None:
        return self._apps.get(app_id)

    def application_by_ec(self, ec_code: str) -> Application | None:
        return self._apps_by_ec.get(ec_code)

    def add_application(self, app: Application) -> Deferred[Application]:
        for taken, key, what in ((self._apps, app.app_id, "app id"),
                                 (self._apps_by_ec, app.ec_code, "EC code")):
            if key in taken:
                raise RegistryError(f"{what} {key} is already used by application "
                                    f"{taken[key].app_id}")
        now = self._reactor.seconds()
        app.created_at = app.created_at or now
        app.updated_at = now
        row = _APPLICATIONS.row(app, self._vault)
        self._index_application(app)
        return self._write([(_APPLICATIONS.insert, [row])]).addCallback(lambda _: app)

    def save_application(self, app: Application) -> Deferred[None]:
        known = self._apps.get(app.app_id)
        if known is None:
            raise RegistryError(f"application {app.app_id} is not in the registry")
        other = self._apps_by_ec.get(app.ec_code)
        if other is not None and other.app_id != app.app_id:
            raise RegistryError(f"EC code {app.ec_code} is already used by {other.app_id}")
        app.updated_at = self._reactor.seconds()
        self._apps_by_ec.pop(known.ec_code, None)
        self._index_application(app)
        row = _APPLICATIONS.update_row(app, self._vault)
        return self._write([(_APPLICATIONS.update, [row])])

    def _index_application(self, app: Application) -> None:
        self._apps[app.app_id] = app
        self._apps_by_ec[app.ec_code] = app

    def enqueue_notification(self, notification: AppNotification) -> Deferred[AppNotification]:
        if notification.id is not None:
            raise RegistryError(f"notification {notification.id} is already enqueued")
        notification.updated_at = self._reactor.seconds()
        row = self._new_row(notification, _NOTIFICATIONS)

        def stored(_: None) -> AppNotification:
            # Into the outbox only once committed: a notifyId offered before its row is
            # durable would be handed out again after a crash, for another notification
            # that applications then discard as a duplicate (D-277).
            self._add_notification(notification)
            return notification

        return self._write([(_NOTIFICATIONS.insert, [row])]).addCallback(stored)

    def _add_notification(self, notification: AppNotification) -> None:
        """Ids only grow, so appending keeps each outbox in notifyId order."""
        outbox = self._outboxes.get(notification.app_id)
        if outbox is None:
            outbox = self._outboxes[notification.app_id] = _Outbox()
        outbox.entries[notification.id or 0] = notification
        outbox.file(notification)
        self._notifications[notification.id or 0] = notification

    def update_notification(self, notification: AppNotification) -> Deferred[None]:
        if notification.id is None:
            raise RegistryError("update of a notification that was never enqueued")
        notification.updated_at = self._reactor.seconds()
        if self._notifications.get(notification.id) is notification:  # not deleted since
            self._outboxes[notification.app_id].file(notification)
        row = _NOTIFICATIONS.update_row(notification)
        return self._write([(_NOTIFICATIONS.update, [row])])

    def delete_notifications(self, ids: Iterable[int]) -> Deferred[None]:
        gone = []
        for notify_id in ids:
            notification = self._notifications.pop(notify_id, None)
            if notification is not None:
                outbox = self._outboxes[notification.app_id]
                del outbox.entries[notify_id]
                outbox.ready.pop(notify_id, None)
                gone.append((notify_id,))
        if not gone:
            return succeed(None)
        return self._write([("DELETE FROM app_notifications WHERE id = ?", gone)])

    def notifications(self, app_id: str) -> list[AppNotification]:
        outbox = self._outboxes.get(app_id)
        return [] if outbox is None else list(outbox.entries.values())

    def notification(self, notify_id: int) -> AppNotification | None:
        return self._notifications.get(notify_id)

    def ready_notifications(self, app_id: str) -> Iterator[AppNotification]:
        outbox = self._outboxes.get(app_id)
        return iter(()) if outbox is None else outbox.head()

    def add_app_message(self, message: AppMessage) -> Deferred[AppMessage]:
        if message.id is not None:
            raise RegistryError(f"application message {message.id} is already stored")
        message.updated_at = self._reactor.seconds()
        row = self._new_row(message, _APP_MESSAGES)
        self._cache_app_message(message)
        return self._write([(_APP_MESSAGES.insert, [row])]).addCallback(lambda _: message)

    def update_app_message(self, message: AppMessage) -> Deferred[None]:
        if message.id is None:
            raise RegistryError("update of an application message that was never stored")
        message.updated_at = self._reactor.seconds()
        return self._write([(_APP_MESSAGES.update, [_APP_MESSAGES.update_row(message)])])

    def app_message(self, msg_id: int) -> Deferred[AppMessage | None]:
        cached = self._app_messages.get(msg_id)
        if cached is not None:
            return succeed(cached)
        d = self._query(f"{_APP_MESSAGES.select} WHERE id = ?", msg_id)
        return d.addCallback(lambda rows: _APP_MESSAGES.load(rows[0]) if rows else None)

    def app_message_by_biz_seq(self, app_id: str, biz_seq: str) -> AppMessage | None:
        return self._biz_seqs.get((app_id, biz_seq))

    def _cache_app_message(self, message: AppMessage) -> None:
        self._app_messages[message.id] = message
        if message.biz_seq is not None:
            self._biz_seqs[(message.app_id, message.biz_seq)] = message
        if len(self._app_messages) > APP_MESSAGE_CACHE_SIZE:
            _, old = self._app_messages.popitem(last=False)
            self._forget_biz_seq(old)

    def _forget_biz_seq(self, message: AppMessage) -> None:
        """Unindex the bizSeq of a message leaving the cache, unless a newer one holds it."""
        key = (message.app_id, message.biz_seq or "")
        if self._biz_seqs.get(key) is message:
            del self._biz_seqs[key]

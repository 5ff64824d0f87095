"""The registry's tables: row <-> model mapping, secrets sealed in rows, and SQL.

A :class:`Table` maps a dataclass (or a plain tuple) to a table: columns are the
dataclass fields in order, values are encoded by per-column codecs (JSON for sets and
credentials, integers for booleans) and secret columns are sealed by the vault
(D-281). The mapping is the same for every store; the SQL text at the end of this
module (:class:`SqliteStatements`, :data:`PRUNE_SQL`) is SQLite's dialect; the
PostgreSQL store renders its own from the same definitions
(:mod:`m2mgw.core.postgres.store`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from m2mgw.core.model import (
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
)
from m2mgw.core.registry.interfaces import OutgoingSms, SmsState
from m2mgw.core.vault import Vault, is_sealed
from m2mgw.protocol.constants import Command

Row = tuple[Any, ...]
Codec = tuple[Callable[[Any], Any], Callable[[Any], Any]]


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


class Table:
    """Maps a dataclass (``cls``) or plain tuples (``columns``) to a table.

    ``key`` names the primary key columns; a table without one is numbered by its store
    in an ``id`` column of its own (the message log, alarm history, statistics).
    ``references`` is (owner table, the column here holding the owner's key): deleting
    an owner row deletes the rows that reference it (``ON DELETE CASCADE``).
    """

    def __init__(
        self, name: str, cls: type | None = None, key: str | tuple[str, ...] = (),
        codecs: Mapping[str, Codec] | None = None, *,
        columns: tuple[str, ...] | None = None,
        sealed: Mapping[str, type] | None = None, sealed_if: tuple[str, Any] | None = None,
        references: tuple[str, str] | None = None,
    ) -> None:
        self.name = name
        self.cls = cls
        self.key = (key,) if isinstance(key, str) else key
        if columns is None:
            if cls is None:
                raise TypeError(f"table {name} needs a dataclass or its columns")
            columns = tuple(f.name for f in dataclasses.fields(cls))
        self.columns = columns
        self.codecs = codecs or {}
        self.references = references
        #: Secret columns (D-281): (index, name, str or bytes), sealed when written and
        #: opened when loaded, in the rows where column ``sealed_if[0]`` is
        #: ``sealed_if[1]`` (all rows without it). Sealing binds a value to its row key.
        self._sealed = tuple((self.columns.index(c), c, t) for c, t in (sealed or {}).items())
        self.sealed_if = sealed_if
        self._sealed_if = (
            None if sealed_if is None else (self.columns.index(sealed_if[0]), sealed_if[1])
        )
        self.key_indexes = tuple(self.columns.index(k) for k in self.key)
        # attrgetter builds the row tuple in C: ``row`` runs for every logged message.
        getter = operator.attrgetter(*self.columns)
        self._values = getter if len(self.columns) > 1 else lambda obj: (getter(obj),)
        self._encoders = tuple(
            (i, self.codecs[c][0]) for i, c in enumerate(self.columns) if c in self.codecs
        )

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
            key = row[self.key_indexes[0]]
            for i, column, _ in self._sealed:
                if row[i] is not None:
                    row[i] = vault.seal(_data(row[i]), self.context(key, column))
        return tuple(row)

    def load(self, row: Row, vault: Vault | None = None) -> Any:
        """The object a stored row describes (the row itself for a plain table)."""
        if self.cls is None:
            return row
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

    @property
    def sealed_columns(self) -> tuple[str, ...]:
        return tuple(column for _, column, _ in self._sealed)

    def _holds_secrets(self, row: Row | list[Any]) -> bool:
        return self._sealed_if is None or row[self._sealed_if[0]] == self._sealed_if[1]

    def _opened(self, row: Row, vault: Vault) -> Row:
        values = list(row)
        key = values[self.key_indexes[0]]
        for i, column, kind in self._sealed:
            if values[i] is not None:
                data = vault.open(values[i], self.context(key, column))
                values[i] = data.decode() if kind is str else data
        return tuple(values)

    def seal_stored(self, rows: list[Row], vault: Vault) -> list[tuple[str, bytes, Any]]:
        """What sealing the plaintext secrets of stored rows changes (migration 008):
        for each ``(key, *sealed_columns)`` row, the (column, sealed value, key) to
        update."""
        changes = []
        for key, *values in rows:
            for column, value in zip(self.sealed_columns, values, strict=True):
                if value is not None and not is_sealed(value):
                    changes.append((column, vault.seal(_data(value), self.context(key, column)),
                                    key))
        return changes


def _data(value: str | bytes) -> bytes:
    """The bytes a secret is sealed as: text columns in UTF-8."""
    return value.encode() if isinstance(value, str) else bytes(value)


# --- the tables ------------------------------------------------------------------------

TERMINALS = Table(
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
#: The columns ``touch`` changes, written coalesced.
TOUCHES = Table("terminals", key="id", columns=("id", "last_seen", "bearer", "address"))
#: The counters a platform request advances, written alone at every send (D-405).
TERMINAL_COUNTERS = Table("terminals", key="id",
                          columns=("id", "seq_counter", "trans_counter", "updated_at"))
#: The columns a LOGIN changes, written coalesced like the touches (D-392): the
#: session, its key (sealed, under the same context as in TERMINALS), the state and
#: the traffic; no credential set, so no JSON.
SESSIONS = Table(
    "terminals",
    key="id",
    columns=("id", "state", "session_timestamp", "last_session_timestamp", "session_key",
             "session_key_expiry", "protocol_version", "software_version", "last_seen",
             "bearer", "address", "updated_at"),
    codecs={"state": _enum(TerminalState)},
    sealed={"session_key": str},
)
TERMINAL_CONFIG = Table(
    "terminal_config", key=("terminal_id", "tag"),
    columns=("terminal_id", "tag", "value", "source", "updated_at"),
    references=("terminals", "terminal_id"),
)
#: SECURITY_CONFIG bodies carry fresh passwords and the Base Key (op 0), its answers
#: the values read (op 1); other bodies hold no secret of the platform (D-281).
REQUESTS = Table(
    "requests", Request, key="id", codecs={"state": _enum(RequestState)},
    sealed={"body": bytes, "answer_body": bytes},
    sealed_if=("command", Command.SECURITY_CONFIG),
)
FILES = Table("file_transactions", FileTransaction, key="trans_id",
              codecs={"state": _enum(FileState)})
MESSAGES = Table("messages", LogEntry)
ALARM_HISTORY = Table("alarm_history", Alarm)
ALARM_STATE = Table("alarm_state", Alarm, key=("serial", "code"))
STATISTICS = Table("statistics", columns=("serial", "time", "tag", "value"))
COUNTERS = Table("counters", key="name", columns=("name", "value"))
#: Every message: an SMS does not record its command, and op 0 travels by SMS in
#: plaintext (PD-21); a modem sends a few a second, so sealing costs nothing (D-281).
SMS_OUTBOX = Table("sms_outbox", OutgoingSms, key="id", codecs={"state": _enum(SmsState)},
                   sealed={"message": bytes})
SMS_REFERENCES = Table("sms_references", key="msisdn", columns=("msisdn", "reference"))
APPLICATIONS = Table(
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
NOTIFICATIONS = Table("app_notifications", AppNotification, key="id",
                      codecs={"state": _enum(NotificationState)})
APP_MESSAGES = Table("app_messages", AppMessage, key="id", codecs={"need_ack": _BOOL})
SEALED_TABLES = (TERMINALS, APPLICATIONS, REQUESTS, SMS_OUTBOX)
#: The tables whose ids the registry allocates (their rows carry them).
NUMBERED_TABLES = (TERMINALS, REQUESTS, SMS_OUTBOX, NOTIFICATIONS, APP_MESSAGES)

#: Security tags (spec 3.7: passwords, keys, SIM PINs...): their configuration values
#: are sealed (a SECURITY_CONFIG op 4 report stores them).
SECRET_CONFIG_TAGS = range(0xE000, 0xE100)


def config_secret(
    transform: Callable[[bytes, str], bytes] | None, terminal_id: int, tag: int, value: bytes
) -> bytes:
    """A configuration value through ``transform`` (a vault's seal or open) if its tag
    is a security tag; else, or without a vault, unchanged."""
    if transform is None or tag not in SECRET_CONFIG_TAGS:
        return value
    return transform(value, config_context(terminal_id, tag))


def config_context(terminal_id: int, tag: int) -> str:
    return f"terminal_config/{terminal_id}:{tag}/value"


class History(NamedTuple):
    """A history table (D-201): its key, the column its age counts from, and the
    values of ``state`` that mark a row still live (none: every row is history)."""

    table: Table
    key: str
    age: str
    live: tuple[str, ...] = ()


#: A request is live while queued or sent.
ACTIVE_REQUEST_STATES = (RequestState.QUEUED.value, RequestState.SENT.value)

HISTORY = {
    "messages": History(MESSAGES, "id", "time"),
    "statistics": History(STATISTICS, "id", "time"),
    "alarm_history": History(ALARM_HISTORY, "id", "time"),
    "requests": History(REQUESTS, "id", "updated_at", ACTIVE_REQUEST_STATES),
    "app_messages": History(APP_MESSAGES, "id", "updated_at", ("QUEUED", "SENT")),
    "file_transactions": History(FILES, "trans_id", "expires_at"),
    "sms_outbox": History(SMS_OUTBOX, "id", "updated_at", (SmsState.PENDING.value,)),
}


# --- SQLite's SQL ----------------------------------------------------------------------


def _names(columns: tuple[str, ...]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


def _matches(columns: tuple[str, ...]) -> str:
    return " AND ".join(f'"{c}" = ?' for c in columns)


class SqliteStatements:
    """One table's statements in SQLite's dialect (``?`` parameters)."""

    def __init__(self, table: Table) -> None:
        names, values = _names(table.columns), ", ".join("?" * len(table.columns))
        self.insert = f"INSERT INTO {table.name} ({names}) VALUES ({values})"
        self.upsert = f"INSERT OR REPLACE INTO {table.name} ({names}) VALUES ({values})"
        self.select = f"SELECT {names} FROM {table.name}"
        self.select_with_id = f"SELECT id, {names} FROM {table.name}"
        if table.key:
            rest = tuple(c for c in table.columns if c not in table.key)
            sets = ", ".join(f'"{c}" = ?' for c in rest)
            self.update = f"UPDATE {table.name} SET {sets} WHERE {_matches(table.key)}"
            self.delete = f"DELETE FROM {table.name} WHERE {_matches(table.key)}"
            order = [table.columns.index(c) for c in rest] + list(table.key_indexes)
            #: An UPDATE's parameters from a row: the other columns, then the key.
            self.update_params: Callable[[Row], Row] = (
                operator.itemgetter(*order) if len(order) > 1 else lambda row: (row[order[0]],)
            )


@functools.cache
def statements(table: Table) -> SqliteStatements:
    """``table``'s statements, built once."""
    return SqliteStatements(table)


def states_sql(column: str, values: tuple[str, ...], *, negate: bool) -> str:
    """``column`` in (or not in) ``values``, written as the partial indexes of migrations
    001 and 006 are, so that the planner uses them."""
    if len(values) == 1:
        return f"{column} {'<>' if negate else '='} '{values[0]}'"
    listed = ", ".join(f"'{v}'" for v in values)
    return f"{column} {'NOT IN' if negate else 'IN'} ({listed})"


def prune_sql(history: History, parameter: str = "?") -> str:
    """Delete the oldest ``LIMIT`` history rows, found through migration 006's indexes
    (the ``live`` term matches the partial indexes' WHERE, so they apply); ``parameter``
    is the dialect's placeholder (PostgreSQL's is ``%s``)."""
    finished = f"{states_sql('state', history.live, negate=True)} AND " if history.live else ""
    table, key, age = history.table.name, history.key, history.age
    return (
        f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} "
        f"WHERE {finished}{age} < {parameter} ORDER BY {age} LIMIT {parameter}) "
        f"RETURNING {key}"
    )


#: The pruning statement of each history table.
PRUNE_SQL = {name: prune_sql(history) for name, history in HISTORY.items()}

"""The registry's rows on PostgreSQL: a :class:`~m2mgw.core.registry.store.Store` (D-381).

The tables, their columns and codecs are the shared ones of
:mod:`m2mgw.core.registry.tables`; only the statements are PostgreSQL's, rendered here
from the same definitions (``%s`` placeholders, ``ON CONFLICT ... DO UPDATE`` for an
upsert, the pruning statements from the same :data:`~.tables.HISTORY` specs).

Order: every call runs on one :class:`~.connection.Database` of one connection, whose
one thread takes transactions in submission order, so a write commits after every
write submitted before it and a read (on the same connection) sees them all, as on the
SQLite registry's one connection.

The ids of new rows come from blocks of the tables' sequences (:mod:`.ids`).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from twisted.internet.defer import Deferred

from m2mgw.core.postgres.connection import Cursor, Database
from m2mgw.core.registry.interfaces import SmsState
from m2mgw.core.registry.store import Batch, Op, Query, Snapshot
from m2mgw.core.registry.tables import (
    ACTIVE_REQUEST_STATES,
    APP_MESSAGES,
    APPLICATIONS,
    FILES,
    HISTORY,
    NOTIFICATIONS,
    REQUESTS,
    SMS_OUTBOX,
    TERMINALS,
    Row,
    Table,
    prune_sql,
    states_sql,
)

P = ParamSpec("P")
T = TypeVar("T")

def _names(columns: Sequence[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


def _matches(columns: Sequence[str]) -> str:
    return " AND ".join(f'"{c}" = %s' for c in columns)


class PostgresStatements:
    """One table's statements in PostgreSQL's dialect."""

    def __init__(self, table: Table) -> None:
        names = _names(table.columns)
        self.insert = (f"INSERT INTO {table.name} ({names}) "
                       f"VALUES ({', '.join(['%s'] * len(table.columns))})")
        self.select = f"SELECT {names} FROM {table.name}"
        self.select_with_id = f"SELECT id, {names} FROM {table.name}"
        if not table.key:
            return
        rest = [c for c in table.columns if c not in table.key]
        replaced = ", ".join(f'"{c}" = EXCLUDED."{c}"' for c in rest)
        self.upsert = (f"{self.insert} ON CONFLICT ({_names(table.key)}) "
                       + (f"DO UPDATE SET {replaced}" if rest else "DO NOTHING"))
        sets = ", ".join(f'"{c}" = %s' for c in rest)
        self.update = f"UPDATE {table.name} SET {sets} WHERE {_matches(table.key)}"
        self.delete = f"DELETE FROM {table.name} WHERE {_matches(table.key)}"
        order = [table.columns.index(c) for c in rest] + list(table.key_indexes)
        #: An UPDATE's parameters from a row: the other columns, then the key.
        self.update_params: Callable[[Row], Row] = (
            operator.itemgetter(*order) if len(order) > 1 else lambda row: (row[order[0]],)
        )


@functools.cache
def statements(table: Table) -> PostgresStatements:
    """``table``'s statements, built once."""
    return PostgresStatements(table)


#: The pruning statement of each history table.
PRUNE_SQL = {name: prune_sql(history, "%s") for name, history in HISTORY.items()}
_ACTIVE = states_sql("state", ACTIVE_REQUEST_STATES, negate=False)
_FINISHED = states_sql("state", ACTIVE_REQUEST_STATES, negate=True)
_PENDING = states_sql("state", (SmsState.PENDING.value,), negate=False)


# --- in the connection's thread ----------------------------------------------------------


#: What a NUL in text becomes: PostgreSQL's text cannot hold one (SQLite's can), and a
#: value it refuses would fail its whole batch (D-381).
NUL_REPLACEMENT = "\ufffd"


def _storable(rows: list[Row]) -> list[Row]:
    """``rows`` with every NUL in their text replaced (in the rare rows that have one)."""
    return [
        tuple(v.replace("\x00", NUL_REPLACEMENT) if type(v) is str else v for v in row)
        if any(type(v) is str and "\x00" in v for v in row) else row
        for row in rows
    ]


def _apply(cursor: Cursor, batch: Batch) -> None:
    for op, table, rows in batch:
        sql = statements(table)
        rows = _storable(rows)
        if op is Op.INSERT:
            cursor.executemany(sql.insert, rows)
        elif op is Op.UPDATE:
            cursor.executemany(sql.update, [sql.update_params(row) for row in rows])
        elif op is Op.UPSERT:
            cursor.executemany(sql.upsert, rows)
        else:
            cursor.executemany(sql.delete, rows)


def _prune(cursor: Cursor, table: str, before: float, limit: int) -> list[Any]:
    cursor.execute(PRUNE_SQL[table], (before, limit))
    return [row[0] for row in cursor.fetchall()]


def _select(cursor: Cursor, query: Query) -> list[Row]:
    terms: list[str] = []
    params: list[Any] = []
    for name, value in query.filters.items():
        # ANY of an array: one statement whatever the length, and an empty list matches
        # nothing (SQL has no empty IN list).
        terms.append(f'"{name}" = ANY(%s)' if isinstance(value, list) else f'"{name}" = %s')
        params.append(value)
    if query.before is not None:
        terms.append("id < %s")
        params.append(query.before)
    sql = statements(query.table)
    where = f" WHERE {' AND '.join(terms)}" if terms else ""
    select = sql.select_with_id if query.with_id else sql.select
    cursor.execute(f'{select}{where} ORDER BY "{query.order}" DESC LIMIT %s OFFSET %s',
                   (*params, query.limit, query.offset))
    return [tuple(row) for row in cursor.fetchall()]


def _load(cursor: Cursor, now: float, finished: int, app_messages: int) -> Snapshot:
    """Everything the cache holds, in one transaction that sees one snapshot of the
    database (other nodes may be writing meanwhile)."""
    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def rows(sql: str, *params: Any) -> list[Row]:
        cursor.execute(sql, params)
        return [tuple(row) for row in cursor.fetchall()]

    def pairs(sql: str) -> dict[Any, Any]:
        return dict(rows(sql))

    def select(table: Table, rest: str = "", *params: Any) -> list[Row]:
        return rows(f"{statements(table).select}{rest}", *params)

    return Snapshot(
        instance_id=pairs("SELECT name, value FROM registry_meta")["instance_id"],
        terminals=select(TERMINALS, " ORDER BY id"),
        config=rows("SELECT terminal_id, tag, value FROM terminal_config"),
        active=select(REQUESTS, f" WHERE {_ACTIVE} ORDER BY id"),
        finished=select(REQUESTS, f" WHERE {_FINISHED} ORDER BY id DESC LIMIT %s", finished),
        files=select(FILES, " WHERE expires_at > %s", now),
        counters=pairs("SELECT name, value FROM counters"),
        # The registry fills in the blocks of ids it took (PostgresRegistry).
        sequences={},
        sms_pending=select(SMS_OUTBOX, f" WHERE {_PENDING} ORDER BY id"),
        sms_references=pairs("SELECT msisdn, reference FROM sms_references"),
        applications=select(APPLICATIONS, " ORDER BY created_at, app_id"),
        notifications=select(NOTIFICATIONS, " ORDER BY id"),
        app_messages=select(APP_MESSAGES, " ORDER BY id DESC LIMIT %s", app_messages),
    )


def _nothing(cursor: Cursor) -> None:
    """A transaction that does nothing: once it is done, every earlier one is."""


# --- the store -------------------------------------------------------------------------


class PostgresStore:
    """A :class:`~m2mgw.core.registry.store.Store` on ``db``, a :class:`Database` of one
    connection (``connections=1``): its transactions run in submission order."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def load(self, now: float, finished: int, app_messages: int) -> Deferred[Snapshot]:
        return self.db.transaction(_load, now, finished, app_messages)

    def apply(self, batch: Batch) -> Deferred[None]:
        return self.db.transaction(_apply, batch)

    def prune(self, table: str, before: float, limit: int) -> Deferred[list[Any]]:
        return self.db.transaction(_prune, table, before, limit)

    def read(self, query: Query) -> Deferred[list[Row]]:
        return self.db.transaction(_select, query)

    def barrier(self) -> Deferred[None]:
        return self.db.transaction(_nothing)

    def transaction(
        self, fn: Callable[Concatenate[Cursor, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> Deferred[T]:
        """``fn(cursor, ...)`` in a transaction of its own, in order with the writes:
        after every one submitted before, before every one submitted after."""
        return self.db.transaction(fn, *args, **kwargs)

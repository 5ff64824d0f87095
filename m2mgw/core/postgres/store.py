"""The registry's rows on PostgreSQL: a :class:`~m2mgw.core.registry.store.Store` (D-381).

The tables, their columns and codecs are the shared ones of
:mod:`m2mgw.core.registry.tables`; only the statements are PostgreSQL's, rendered here
from the same definitions (``%s`` placeholders, ``ON CONFLICT ... DO UPDATE`` for an
upsert, the pruning statements from the same :data:`~.tables.HISTORY` specs).

Order: every call runs on one :class:`~.connection.Database` of one connection, whose
one thread takes transactions in submission order, so a write commits after every
write submitted before it and a read (on the same connection) sees them all, as on the
SQLite registry's one connection.

Ids (D-380): the registry numbers new rows of the :data:`~.tables.NUMBERED_TABLES` in
memory, from blocks of ids that :func:`allocate_blocks` takes from the tables' identity
sequences (``INCREMENT BY 1000``, migration 003); :func:`give_back` returns a block's
unused tail at close when no other node took a block since.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
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

#: The advisory lock (two-key form, after the migrations' and the outboxes') that
#: taking a block of ids and giving one back take turns on.
ID_BLOCK_LOCK = (0x6D326F, 0)


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


def _apply(cursor: Cursor, batch: Batch) -> None:
    for op, table, rows in batch:
        sql = statements(table)
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


# --- ids ---------------------------------------------------------------------------------


def _sequence(table: str) -> str:
    return f"pg_get_serial_sequence('{table}', 'id')"


def allocate_blocks(cursor: Cursor, tables: Sequence[str]) -> dict[str, range]:
    """A new block of ids for each of ``tables``: nextval of its identity sequence and
    the sequence's increment after it."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", ID_BLOCK_LOCK)
    blocks = {}
    for table in tables:
        cursor.execute(
            f"SELECT nextval({_sequence(table)}), seqincrement FROM pg_sequence "
            f"WHERE seqrelid = {_sequence(table)}::regclass"
        )
        start, increment = cursor.fetchone()
        blocks[table] = range(start, start + increment)
    return blocks


def give_back(cursor: Cursor, unused: Mapping[str, tuple[int, int]]) -> list[str]:
    """Return unused ids: for each table, ``(first, newest)`` says that every id from
    ``first`` to the end of the block that starts at ``newest`` is this node's and
    unused. Its sequence restarts at ``first`` if ``newest`` is still the last block
    it handed out (nobody took one since); the tables whose ids were given back.

    Inserts into the tables wait meanwhile (an insert leaving the id to its default
    takes a block too), and block allocations take turns on the same lock."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", ID_BLOCK_LOCK)
    returned = []
    for table, (first, newest) in sorted(unused.items()):
        cursor.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        cursor.execute(f"SELECT {_sequence(table)}")
        cursor.execute(f"SELECT last_value, is_called FROM {cursor.fetchone()[0]}")
        last, called = cursor.fetchone()
        if called and last == newest:
            cursor.execute(f"SELECT setval({_sequence(table)}, %s, false)", (first,))
            returned.append(table)
    return returned


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

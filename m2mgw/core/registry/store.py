"""The seam between a registry and where its rows live.

A :class:`~m2mgw.core.registry.cached.CachedRegistry` keeps its cache in memory and
hands every change to its ordered writer (:mod:`.writer`) as a :data:`Batch` of
logical writes on the tables of :mod:`.tables`, already encoded and sealed; a
:class:`Store` carries them out. Only the store knows its dialect, its connection and
its migrations: SQLite is one (:mod:`.sqlite`), plain dictionaries another
(:mod:`.memory`), and PostgreSQL a third (:mod:`m2mgw.core.postgres.store`), reusing the
cache, the writer and the table mapping unchanged.

What every store promises:

- **Order.** Calls take effect one at a time in the order they were made: a write
  commits after every write submitted before it, and a read sees all of them.
- **Atomicity.** One :meth:`Store.apply` or :meth:`Store.prune` is one transaction.
- **Snapshots.** Rows are encoded in the reactor thread when a write is submitted, so
  the cached objects may change while a write waits; a store never reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple, Protocol

from twisted.internet.defer import Deferred

from m2mgw.core.registry.tables import Row, Table


class Op(Enum):
    """What a write does with its rows (each a full row of its table's columns)."""

    #: New rows; a table without a key numbers them itself.
    INSERT = "insert"
    #: Rows replacing the columns of the stored row with the same key.
    UPDATE = "update"
    #: Rows inserted, or replacing the stored row with the same key.
    UPSERT = "upsert"
    #: Rows of key values only: those rows deleted, with the rows that reference them.
    DELETE = "delete"


class Write(NamedTuple):
    op: Op
    table: Table
    rows: list[Row]


#: The writes of one transaction, applied in order.
Batch = list[Write]


class Query(NamedTuple):
    """A page of one table, newest first by ``order``: the rows matching every filter
    (a list value matches any of its items), with an id below ``before`` if given,
    after skipping ``offset``. ``with_id`` puts each row's id before its columns."""

    table: Table
    filters: Mapping[str, Any]
    limit: int
    offset: int = 0
    before: int | None = None
    order: str = "id"
    with_id: bool = False


def filters(**columns: Any) -> dict[str, Any]:
    """Query filters from keyword arguments: those given as None filter nothing."""
    return {name: value for name, value in columns.items() if value is not None}


@dataclass(slots=True)
class Snapshot:
    """Everything the cache holds, read at open in one go."""

    #: What the store calls its database: created once, kept by copies (D-171).
    instance_id: str
    terminals: list[Row]
    #: Stored configuration values, rows starting (terminal_id, tag, value).
    config: list[Row]
    #: Active (queued or sent) requests by id; the newest finished ones, newest first.
    active: list[Row]
    finished: list[Row]
    #: File transactions not expired yet.
    files: list[Row]
    counters: dict[str, int]
    #: The highest id each numbered table has handed out, by table name.
    sequences: dict[str, int]
    #: Pending outgoing SMS by id, and each MSISDN's newest concatenation reference.
    sms_pending: list[Row]
    sms_references: dict[str, int]
    applications: list[Row]
    #: Undelivered notifications by id; the newest application messages, newest first.
    notifications: list[Row]
    app_messages: list[Row]


class Store(Protocol):
    """Where an open registry's rows live; see the module docstring for its promises."""

    def load(self, now: float, finished: int, app_messages: int) -> Deferred[Snapshot]:
        """What the cache starts from: at most ``finished`` finished requests and
        ``app_messages`` application messages, the newest; files not expired at
        ``now``."""

    def apply(self, batch: Batch) -> Deferred[None]:
        """Commit ``batch`` as one transaction."""

    def prune(self, table: str, before: float, limit: int) -> Deferred[list[Any]]:
        """In one transaction, delete at most ``limit`` of the oldest history rows of
        ``table`` (a name in :data:`~.tables.HISTORY`) aged before ``before``; fires
        with their keys."""

    def read(self, query: Query) -> Deferred[list[Row]]:
        """The rows ``query`` selects, as stored (encoded and sealed)."""

    def barrier(self) -> Deferred[None]:
        """Fires once every call made before it has completed."""

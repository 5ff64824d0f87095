"""The registry in memory, for unit tests: :class:`MemoryRegistry` on a :class:`MemoryStore`.

It is the same registry as the gateway's (:class:`~.cached.CachedRegistry`: the same
cache, the same writer and its ordering, batching and backpressure) over a store that
keeps rows in dictionaries instead of a SQLite file. So the engine, the router and
the application services can be tested on a ``task.Clock`` with no reactor, no file,
no thread and no polling.

The store commits synchronously by default: a write's Deferred has fired when the
call returns. Given a clock, it commits on the clock's next turn instead
(``clock.advance(0)``), and :meth:`MemoryStore.hold` stops it committing, as a busy
database would, until :meth:`MemoryStore.release`; either way in submission order.
The writer's own timers (the flush every second, group commit) run on the registry's
clock: advance it for batched log entries and ``log_committed``.

Rows are stored encoded as a database would hold them, in plaintext (there is no
vault), and the store outlives its registries: a second :class:`MemoryRegistry` opened
on the same store finds what the first committed, as a process restarted on a file.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from m2mgw.config import ROW_WATERMARKS, WRITE_WATERMARKS
from m2mgw.core.registry.cached import CachedRegistry
from m2mgw.core.registry.interfaces import RegistryError, RegistryIdentity
from m2mgw.core.registry.store import Batch, Op, Query, Snapshot
from m2mgw.core.registry.tables import (
    ACTIVE_REQUEST_STATES,
    APP_MESSAGES,
    APPLICATIONS,
    COUNTERS,
    FILES,
    HISTORY,
    NOTIFICATIONS,
    NUMBERED_TABLES,
    REQUESTS,
    SMS_OUTBOX,
    SMS_REFERENCES,
    TERMINAL_CONFIG,
    TERMINALS,
    Row,
    Table,
)

if TYPE_CHECKING:
    from m2mgw.core.registry.interfaces import Registry

#: A stored row: its columns by name.
_Stored = dict[str, Any]
_Undo = list[Callable[[], None]]


class MemoryStore:
    """A :class:`~.store.Store` keeping each table's rows in a dictionary by key.

    Tables without a key number their rows in an ``id`` column of their own, as
    SQLite's ``INTEGER PRIMARY KEY`` does. A batch is atomic: a failing write undoes the
    batch's earlier ones. Reads wait in the same queue as writes, so a read sees every
    write submitted before it.
    """

    def __init__(self, clock: IReactorTime | None = None) -> None:
        self._clock = clock
        self.instance_id = uuid.uuid4().hex
        self._tables: dict[str, dict[Any, _Stored]] = {}
        self._known: dict[str, list[Table]] = {}
        self._sequences: dict[str, int] = {}
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = deque()
        self._held = False
        self._draining = False
        self._turn: IDelayedCall | None = None

    # --- committing in order ----------------------------------------------------------

    def hold(self) -> None:
        """Stop committing (calls queue up) until :meth:`release`."""
        self._held = True

    def release(self) -> None:
        """Commit what queued meanwhile, in order (on the next turn, with a clock)."""
        self._held = False
        self._kick()

    @property
    def waiting(self) -> int:
        """Calls submitted and not carried out yet."""
        return len(self._queue)

    def _call(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._queue.append((function, args, d))
        self._kick()
        return d

    def _kick(self) -> None:
        if self._held:
            return
        if self._clock is None:
            self._drain()
        elif self._turn is None:
            self._turn = self._clock.callLater(0, self._next_turn)

    def _next_turn(self) -> None:
        self._turn = None
        self._drain()

    def _drain(self) -> None:
        """Carry out queued calls in order; calls made meanwhile (from the callbacks of
        earlier ones) join the queue behind them."""
        if self._draining:
            return
        self._draining = True
        try:
            while self._queue and not self._held:
                function, args, d = self._queue.popleft()
                try:
                    result = function(*args)
                except Exception as exc:
                    d.errback(exc)
                else:
                    d.callback(result)
        finally:
            self._draining = False

    # --- the Store ------------------------------------------------------------------

    def load(self, now: float, finished: int, app_messages: int) -> Deferred[Snapshot]:
        return self._call(self._load, now, finished, app_messages)

    def apply(self, batch: Batch) -> Deferred[None]:
        return self._call(self._apply, batch)

    def prune(self, table: str, before: float, limit: int) -> Deferred[list[Any]]:
        return self._call(self._prune, table, before, limit)

    def read(self, query: Query) -> Deferred[list[Row]]:
        return self._call(self._read, query)

    def barrier(self) -> Deferred[None]:
        return self._call(lambda: None)

    def rows(self, table: str) -> list[dict[str, Any]]:
        """The stored rows of ``table`` (copies, by key), as a test reads a database
        file: what has been committed, whatever the cache holds."""
        stored = self._tables.get(table, {})
        return [dict(stored[key]) for key in sorted(stored)]

    # --- carrying out calls -----------------------------------------------------------

    def _rows(self, table: Table) -> dict[Any, _Stored]:
        known = self._known.setdefault(table.name, [])
        if table not in known:
            known.append(table)
        return self._tables.setdefault(table.name, {})

    def _key(self, table: Table, row: Row) -> Any:
        if len(table.key_indexes) == 1:
            return row[table.key_indexes[0]]
        return tuple(row[i] for i in table.key_indexes)

    def _apply(self, batch: Batch) -> None:
        undo: _Undo = []
        try:
            for op, table, rows in batch:
                for row in rows:
                    self._write(op, table, row, undo)
        except Exception:
            for step in reversed(undo):
                step()
            raise

    def _write(self, op: Op, table: Table, row: Row, undo: _Undo) -> None:
        stored = self._rows(table)
        if op is Op.DELETE:
            self._delete(table, row[0] if len(row) == 1 else row, undo)
            return
        values = dict(zip(table.columns, row, strict=True))
        if not table.key:
            key = values["id"] = self._sequences.get(table.name, 0) + 1
        else:
            key = self._key(table, row)
        old = stored.get(key)
        if op is Op.INSERT and old is not None:
            raise RegistryError(f"{table.name}: a row with key {key!r} exists")
        if op is Op.UPDATE:
            if old is None:
                return  # as UPDATE ... WHERE matches nothing
            values = {**old, **values}
        stored[key] = values
        undo.append(lambda: self._restore(stored, key, old))
        if not table.key or table.key == ("id",):
            self._sequences[table.name] = max(self._sequences.get(table.name, 0), key)

    def _delete(self, table: Table, key: Any, undo: _Undo) -> None:
        stored = self._rows(table)
        old = stored.pop(key, None)
        if old is None:
            return
        undo.append(lambda: self._restore(stored, key, old))
        for name, tables in list(self._known.items()):
            for child in tables:
                if child.references is not None and child.references[0] == table.name:
                    column = child.references[1]
                    owned = [k for k, r in self._tables[name].items() if r[column] == key]
                    for child_key in owned:
                        self._delete(child, child_key, undo)

    @staticmethod
    def _restore(stored: dict[Any, _Stored], key: Any, old: _Stored | None) -> None:
        if old is None:
            stored.pop(key, None)
        else:
            stored[key] = old

    def _select(self, table: Table, keep: Callable[[_Stored], bool] = lambda _: True,
                *, newest_first: bool = False, limit: int | None = None) -> list[Row]:
        """``table``'s rows that ``keep`` accepts, by key, as stored tuples."""
        stored = self._tables.get(table.name, {})
        keys = sorted((k for k, r in stored.items() if keep(r)), reverse=newest_first)
        return [tuple(stored[k][c] for c in table.columns) for k in keys[:limit]]

    def _load(self, now: float, finished: int, app_messages: int) -> Snapshot:
        def active(row: _Stored) -> bool:
            return row["state"] in ACTIVE_REQUEST_STATES

        def pairs(table: Table) -> dict[Any, Any]:
            return dict(self._select(table))

        return Snapshot(
            instance_id=self.instance_id,
            terminals=self._select(TERMINALS),
            config=self._select(TERMINAL_CONFIG),
            active=self._select(REQUESTS, active),
            finished=self._select(REQUESTS, lambda r: not active(r), newest_first=True,
                                  limit=finished),
            files=self._select(FILES, lambda r: r["expires_at"] > now),
            counters=pairs(COUNTERS),
            sequences={t.name: self._sequences[t.name] for t in NUMBERED_TABLES
                       if t.name in self._sequences},
            sms_pending=self._select(SMS_OUTBOX, lambda r: r["state"] == "pending"),
            sms_references=pairs(SMS_REFERENCES),
            applications=self._select(APPLICATIONS),
            notifications=self._select(NOTIFICATIONS),
            app_messages=self._select(APP_MESSAGES, newest_first=True, limit=app_messages),
        )

    def _prune(self, name: str, before: float, limit: int) -> list[Any]:
        history = HISTORY[name]
        stored = self._tables.get(history.table.name, {})
        old = sorted(
            (row[history.age], key) for key, row in stored.items()
            if row[history.age] < before
            and not (history.live and row["state"] in history.live)
        )[:limit]
        for _, key in old:
            del stored[key]
        return [key for _, key in old]

    def _read(self, query: Query) -> list[Row]:
        table = query.table
        stored = self._tables.get(table.name, {})

        def matches(key: Any, row: _Stored) -> bool:
            if query.before is not None and not key < query.before:
                return False
            return all(
                row[column] in value if isinstance(value, list) else row[column] == value
                for column, value in query.filters.items()
            )

        found = [(key, row) for key, row in stored.items() if matches(key, row)]
        if query.order == "id":
            found.sort(key=lambda item: item[0], reverse=True)
        else:
            found.sort(key=lambda item: item[1][query.order], reverse=True)
        page = found[query.offset:query.offset + query.limit]
        prefix: Callable[[Any], Row] = (lambda key: (key,)) if query.with_id else lambda _: ()
        return [prefix(key) + tuple(row[c] for c in table.columns) for key, row in page]


class MemoryRegistry(CachedRegistry):
    """A registry on a :class:`MemoryStore` (a new one unless ``store`` is given).

    ``clock`` (a ``task.Clock`` in tests) stamps what is written and runs the writer's
    timers; ``name`` says which registry in messages and in its identity.
    """

    def __init__(
        self,
        clock: IReactorTime,
        store: MemoryStore | None = None,
        *,
        name: str = "memory",
        watermarks: tuple[int, int] = WRITE_WATERMARKS,
        row_watermarks: tuple[int, int] = ROW_WATERMARKS,
    ) -> None:
        super().__init__(name, clock, watermarks=watermarks, row_watermarks=row_watermarks)
        self.store = store if store is not None else MemoryStore()
        self._opening = False

    def open(self) -> Deferred[None]:
        if self._opening or self.is_open:
            raise RegistryError(f"{self._name}: registry already open")
        self._opening = True

        def loaded(snapshot: Snapshot) -> None:
            self._opening = False
            identity = RegistryIdentity("memory", self._name, snapshot.instance_id)
            self._start(self.store, snapshot, identity)

        return self._loaded(self.store, self._clock.seconds()).addCallback(loaded)

    def close(self) -> Deferred[None]:
        if not self.is_open:
            return succeed(None)
        return self._stop()


if TYPE_CHECKING:
    _conforms: type[Registry] = MemoryRegistry  # mypy checks the whole contract

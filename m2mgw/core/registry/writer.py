"""The ordered writer: every change of a registry, to its store, in submission order.

Batching. Hot-path writes are cheap to submit: log entries are buffered, ``touch``
updates are coalesced by the registry, and both are flushed in one transaction every
``FLUSH_INTERVAL`` (and when the buffer is long, and at close). Entries that must be
durable before their Deferred fires (``log_committed``) share a transaction too
(group commit): with an idle writer at once, with a busy one after
``GROUP_COMMIT_DELAY``.

Backpressure. Hot-path writes are fire-and-forget, so when terminals send faster than
the store commits, submitted writes would pile up without limit. The writer counts
writes (transactions) and their rows submitted and not yet committed, and tells its
pressure observers when either count reaches its high watermark and again when both
are back at their low watermarks; the gateway then stops reading from terminals. No
write is ever refused or dropped: bounding comes from not reading more input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.config import ROW_WATERMARKS, WRITE_WATERMARKS
from m2mgw.core.registry.interfaces import PressureObserver, RegistryError
from m2mgw.core.registry.store import Batch, Op, Query, Store, Write
from m2mgw.core.registry.tables import MESSAGES, Row
from m2mgw.core.stats import Histogram

_log = Logger()

#: Seconds between flushes of coalesced ``touch`` updates and batched log entries.
FLUSH_INTERVAL = 1.0
#: A log buffer this long is flushed at once instead of waiting for the next tick.
LOG_FLUSH_SIZE = 1000
#: Seconds ``log_committed`` entries wait to share a transaction while the writer is
#: busy (group commit); with an idle writer they are committed at once.
GROUP_COMMIT_DELAY = 0.005


def _watermarks(pair: tuple[int, int], what: str) -> tuple[int, int]:
    """``(high, low)`` checked: hysteresis needs high > low >= 0."""
    high, low = pair
    if not 0 <= low < high:
        raise RegistryError(f"{what} watermarks need high > low >= 0, got {pair}")
    return high, low


class OrderedWriter:
    """Submits a registry's writes to its store, batched and counted for backpressure.

    ``name`` says which registry in messages; ``coalesced`` returns (and forgets) the
    writes the registry holds back until a flush: the ``touch`` updates. The writer
    outlives its store: ``start`` attaches one at open and ``close`` lets it go.
    """

    def __init__(
        self,
        clock: IReactorTime,
        name: str,
        coalesced: Callable[[], Batch],
        *,
        watermarks: tuple[int, int] = WRITE_WATERMARKS,
        row_watermarks: tuple[int, int] = ROW_WATERMARKS,
    ) -> None:
        self._clock = clock
        self._name = name
        self._coalesced = coalesced
        self._watermarks = _watermarks(watermarks, "write")
        self._row_watermarks = _watermarks(row_watermarks, "row")
        self._store: Store | None = None
        self._read_only = False
        self._flusher = LoopingCall(self.flush)
        self._flusher.clock = clock
        self._pending_writes = 0
        self._pending_rows = 0
        self._saturated = False
        self._observers: list[PressureObserver] = []
        self._log_rows: list[Row] = []
        self._commit_waiters: list[Deferred[None]] = []
        self._group_call: IDelayedCall | None = None
        #: Seconds from a write's submission to its commit (the writer's backlog included).
        self.commit_latency = Histogram()

    def start(self, store: Store, *, read_only: bool = False) -> None:
        """Write to ``store`` from now on (any write refused if ``read_only``)."""
        self._store, self._read_only = store, read_only
        self._log_rows, self._commit_waiters = [], []
        self._flusher.start(FLUSH_INTERVAL, now=False)

    def close(self) -> Deferred[None]:
        """Commit everything batched, let the store go, and fire once every write
        submitted before has completed."""
        store = self._store
        if store is None:
            raise RegistryError(f"{self._name}: registry is not open")
        if self._flusher.running:
            self._flusher.stop()
        if self._group_call is not None:
            self._group_call.cancel()
            self._group_commit()
        self.flush()
        self._store = None
        return store.barrier()

    # --- writes ---------------------------------------------------------------------

    def write(self, batch: Batch) -> Deferred[None]:
        """Commit ``batch`` as one transaction after every write submitted before."""
        store = self._open_for_writing()
        rows = sum(len(write.rows) for write in batch)
        return self._submitted(rows, store.apply(batch))

    def prune(self, table: str, before: float, limit: int) -> Deferred[list[Any]]:
        """One pruning transaction, in order with the writes; it holds no rows in
        memory, so it counts as one write for backpressure and no rows."""
        store = self._open_for_writing()
        return self._submitted(0, store.prune(table, before, limit))

    def background(self, d: Deferred[Any]) -> None:
        """A fire-and-forget write: its failure was logged by ``_write_failed``."""
        d.addErrback(lambda _: None)

    def read(self, query: Query) -> Deferred[list[Row]]:
        """The rows ``query`` selects, seeing every write submitted before."""
        if self._store is None:
            raise RegistryError(f"{self._name}: registry is not open")
        return self._store.read(query)

    def _open_for_writing(self) -> Store:
        if self._store is None:
            raise RegistryError(f"{self._name}: registry is not open")
        if self._read_only:
            raise RegistryError(f"{self._name}: registry is open read-only")
        return self._store

    def _submitted(self, rows: int, d: Deferred[Any]) -> Deferred[Any]:
        """Count a write submitted to the store until it leaves it."""
        self._pending_writes += 1
        self._pending_rows += rows
        if not self._saturated and (
            self._pending_writes >= self._watermarks[0]
            or self._pending_rows >= self._row_watermarks[0]
        ):
            self._set_saturated(True)
        d.addBoth(self._committed, rows, self._clock.seconds())
        return d.addErrback(self._write_failed)

    def _write_failed(self, failure: Failure) -> Failure:
        """Log here too: hot-path callers often do not wait for the Deferred."""
        _log.failure("registry {path}: write failed; memory and database may disagree",
                     failure, path=self._name)
        return failure

    # --- the message log: batched, and group commit ----------------------------------

    def log(self, row: Row) -> None:
        """Buffer a log row until the next flush."""
        self._log_rows.append(row)
        if len(self._log_rows) >= LOG_FLUSH_SIZE:
            self.flush()

    def log_committed(self, row: Row) -> Deferred[None]:
        """Buffer a log row and fire once it is committed; rows arriving in the same
        reactor turn share one transaction (group commit)."""
        d: Deferred[None] = Deferred()
        self._log_rows.append(row)
        self._commit_waiters.append(d)
        if self._group_call is None:
            # An idle writer commits at once; a busy one gathers a group meanwhile.
            delay = GROUP_COMMIT_DELAY if self._pending_writes else 0
            self._group_call = self._clock.callLater(delay, self._group_commit)
        return d

    def _group_commit(self) -> None:
        self._group_call = None
        waiters, self._commit_waiters = self._commit_waiters, []
        if not waiters:
            return
        if self._store is None:
            error = RegistryError(f"{self._name}: registry closed before the commit")
            for waiter in waiters:
                waiter.errback(error)
            return
        # One transaction for the waiting rows and whatever else is buffered; when the
        # buffer was already flushed, a barrier fires after that flush (the store runs
        # calls in order).
        done = self._flush() or self._store.barrier()

        def fire(_: Any) -> None:
            for waiter in waiters:
                waiter.callback(None)

        def fail(failure: Failure) -> None:  # already logged by _write_failed
            for waiter in waiters:
                waiter.errback(failure)

        done.addCallbacks(fire, fail)

    def flush(self) -> None:
        """Persist coalesced touches and buffered log entries, fire-and-forget."""
        d = self._flush()
        if d is not None:
            self.background(d)

    def _flush(self) -> Deferred[None] | None:
        """Coalesced touches and buffered log entries in one transaction, if any."""
        if self._store is None:
            return None
        batch = self._coalesced()
        if self._log_rows:
            batch.append(Write(Op.INSERT, MESSAGES, self._log_rows))
            self._log_rows = []
        if not batch:
            return None
        return self.write(batch)

    # --- backpressure ---------------------------------------------------------------

    @property
    def pending_writes(self) -> int:
        return self._pending_writes

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    @property
    def saturated(self) -> bool:
        return self._saturated

    def add_pressure_observer(self, observer: PressureObserver) -> None:
        self._observers.append(observer)

    def remove_pressure_observer(self, observer: PressureObserver) -> None:
        self._observers.remove(observer)

    def _committed(self, result: Any, rows: int, submitted: float) -> Any:
        """A write left the queue (committed or failed): maybe release the pressure."""
        self._pending_writes -= 1
        self._pending_rows -= rows
        if not isinstance(result, Failure):
            self.commit_latency.observe(self._clock.seconds() - submitted)
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
            path=self._name, state="writer saturated" if saturated else "writer caught up",
            writes=self._pending_writes, rows=self._pending_rows,
        )
        for observer in list(self._observers):
            try:
                observer(saturated)
            except Exception:
                # It runs inside a write's callback chain: raising would fail the write.
                _log.failure("registry {path}: pressure observer {observer} failed",
                             path=self._name, observer=observer)

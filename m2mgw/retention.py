"""Retention: the registry's history deleted by age, a little at a time (D-200..D-209).

Every ``[registry] retention_interval`` a round prunes each history table in batches of
:data:`PRUNE_BATCH` rows, oldest first, until a batch comes back short. A batch is one
transaction on the registry's single writer, submitted only once the previous one has
committed and the reactor has had a turn, so terminal writes queue between batches and
wait behind one batch at most. Behind a saturated writer the next batch waits for every
write queued before it: pruning slows down with the writer instead of competing with it,
and never stops (D-203). A round ends after its current batch when the service stops.
"""

from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from m2mgw.app.policy import BIZ_SEQ_WINDOW
from m2mgw.config import RegistryConfig
from m2mgw.core.registry import Retention

log = Logger()

#: Rows one pruning transaction deletes at most: a few milliseconds of the writer (D-203).
PRUNE_BATCH = 500

#: The ``[registry] retention_KIND`` key that governs each history table (D-201).
KIND_OF: dict[str, str] = {
    "messages": "messages",
    "statistics": "statistics",
    "alarm_history": "alarms",
    "requests": "requests",
    "app_messages": "requests",
    "file_transactions": "requests",
    "sms_outbox": "sms",
}

#: Ages a table is kept at least, whatever its retention: an application message's
#: bizSeq detects duplicates for a day (AD-14, D-204).
MIN_AGE: dict[str, float] = {"app_messages": BIZ_SEQ_WINDOW}


def retention_ages(config: RegistryConfig) -> dict[str, float]:
    """Seconds each history table is kept; tables kept forever (``never``) are left out."""
    ages = {}
    for table, kind in KIND_OF.items():
        age = config.retention_of(kind)
        if age is not None:
            ages[table] = max(age, MIN_AGE.get(table, 0.0))
    return ages


class RetentionService(TimerService):
    """Runs a pruning round every ``retention_interval`` on the injected clock."""

    def __init__(
        self,
        registry: Retention,
        config: RegistryConfig,
        clock: IReactorTime,
        batch: int = PRUNE_BATCH,
    ) -> None:
        super().__init__(config.retention_interval, self.run)
        self.clock = clock
        self.registry = registry
        self.ages = retention_ages(config)
        self.batch = batch
        self._stopping = False

    def startService(self) -> None:
        self._stopping = False
        super().startService()

    def stopService(self) -> Deferred[None]:
        """Stop the timer; a round in progress ends after its current batch."""
        self._stopping = True
        return super().stopService()  # type: ignore[no-any-return]

    @inlineCallbacks
    def run(self):  # type: ignore[no-untyped-def]
        """One round: every table pruned of the history older than its retention.

        A failure is logged and ends the round; the next round starts over.
        """
        started = self.clock.seconds()
        deleted: dict[str, int] = {}
        try:
            for table, age in self.ages.items():
                yield self._prune(table, started - age, deleted)
        except Exception:
            log.failure("registry retention: pruning failed; the next round retries")
        deleted = {table: count for table, count in deleted.items() if count}
        if deleted:
            log.info(
                "registry retention: deleted {total} old rows ({summary}) in {seconds:.3f}s",
                total=sum(deleted.values()),
                summary=", ".join(f"{table} {count}" for table, count in deleted.items()),
                deleted=deleted,
                seconds=self.clock.seconds() - started,
            )

    @inlineCallbacks
    def _prune(self, table: str, before: float, deleted: dict[str, int]):  # type: ignore[no-untyped-def]
        """Batches of ``table`` until one comes back short, counted into ``deleted``."""
        while not self._stopping:
            count = yield self.registry.prune(table, before, self.batch)
            deleted[table] = deleted.get(table, 0) + count
            if count < self.batch:
                return
            yield deferLater(self.clock, 0)  # a reactor turn between batches

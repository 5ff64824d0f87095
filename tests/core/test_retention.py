"""Retention (D-200..D-209): history pruned by age in small batches, on both backends.

The registry runs on the real reactor (SQLite's pool thread needs one; the memory
store commits on its next turn) but tells the time of a ``task.Clock``, so rows are
stamped at chosen ages; the retention service runs on that same ``task.Clock``.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial import unittest

from m2mgw.config import RegistryConfig, parse_config
from m2mgw.core.model import (
    Alarm,
    AppMessage,
    AppNotification,
    FileState,
    FileTransaction,
    LogEntry,
    Request,
    RequestState,
    Terminal,
    TerminalState,
)
from m2mgw.core.registry import HISTORY_TABLES, OutgoingSms, RegistryError, SmsState
from m2mgw.core.registry.cached import CachedRegistry
from m2mgw.core.registry.tables import PRUNE_SQL
from m2mgw.retention import KIND_OF, MIN_AGE, PRUNE_BATCH, RetentionService, retention_ages
from tests.core.registry_backends import (
    MemoryBackend,
    PostgresBackend,
    RegistryContract,
    SqliteBackend,
)

SERIAL = "A972030000000001"
NOW = 1_000_000_000.0
RETENTION = 600.0
OLD = NOW - RETENTION - 1
YOUNG = NOW - RETENTION + 1


class ClockedReactor:
    """The real reactor for threads, timers and triggers, with a task.Clock's time."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock

    def seconds(self) -> float:
        return self.clock.seconds()

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)


def registry_config(text: str = "") -> RegistryConfig:
    return parse_config(f"[registry]\nretention = {RETENTION:g}s\n{text}").registry


def log_entry(at: float, event: str = "message") -> LogEntry:
    return LogEntry(time=at, serial=SERIAL, direction="in", event=event)


class RetentionTests(RegistryContract):
    def setUp(self) -> None:
        super().setUp()
        self.clock = task.Clock()
        self.clock.advance(NOW)

    def registry_clock(self) -> ClockedReactor:
        return ClockedReactor(self.clock)

    def retention(self, registry: CachedRegistry, text: str = "", **kw: Any) -> RetentionService:
        return RetentionService(registry, registry_config(text), self.clock, **kw)

    async def settle(self, d: Deferred[Any]) -> Any:
        """Run the pool thread (real reactor) and zero-delay calls (task.Clock) until
        ``d`` fires."""
        results: list[Any] = []
        d.addBoth(results.append)
        await self.until(lambda: bool(results))
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    async def until(self, done: Any, timeout: float = 10.0) -> None:
        """Run both until ``done()`` is true."""
        deadline = time.monotonic() + timeout
        while not done():
            self.assertLess(time.monotonic(), deadline, "timed out")
            self.clock.advance(0)
            await task.deferLater(reactor, 0.002)

    def at(self, when: float) -> None:
        """Set the shared clock; the registry stamps what it writes with it."""
        self.clock.advance(when - self.clock.seconds())

    async def log_rows(self, registry: CachedRegistry, at: float, count: int) -> None:
        for _ in range(count):
            registry.log(log_entry(at))
        await registry.log_committed(log_entry(at))


class WhatIsPrunedTests(RetentionTests):
    async def test_old_history_goes_young_history_and_live_state_stay(self) -> None:
        registry = await self.open()
        await registry.add(Terminal(imei="860000000000001", serial=SERIAL))
        registry.allocate_serial("A9720300")

        self.at(OLD - 2 * 86_400)
        ancient_message = await registry.add_app_message(AppMessage(
            app_id="APP1", operation="SetConfig", serial=SERIAL, biz_seq="b-old",
            state="APPLIED", created_at=self.clock.seconds()))
        self.at(OLD)
        await registry.log_committed(log_entry(OLD, "old"))
        await registry.record_statistics(SERIAL, {0x3001: b"\x01"}, OLD)
        await registry.record_alarm(Alarm(serial=SERIAL, code=1, type=1, status=1, time=OLD))
        old_done = await registry.enqueue(self.request())
        old_done.state = RequestState.SUCCEEDED
        await registry.update_request(old_done)
        old_queued = await registry.enqueue(self.request())
        old_sent = await registry.enqueue(self.request())
        old_sent.state = RequestState.SENT
        await registry.update_request(old_sent)
        day_message = await registry.add_app_message(AppMessage(
            app_id="APP1", operation="SetConfig", serial=SERIAL, biz_seq="b-day",
            state="FAILED", created_at=OLD))
        waiting_message = await registry.add_app_message(AppMessage(
            app_id="APP1", operation="SetConfig", serial=SERIAL, state="QUEUED",
            created_at=OLD - 2 * 86_400))
        await registry.add_file(self.file(1, expires_at=OLD, state=FileState.COMPLETED))
        await registry.add_file(self.file(2, expires_at=NOW + 3600, state=FileState.COMPLETED))
        sent = await registry.enqueue_sms(self.sms())
        sent.state = SmsState.SENT
        await registry.update_sms(sent)
        failed = await registry.enqueue_sms(self.sms())
        failed.state = SmsState.FAILED
        await registry.update_sms(failed)
        pending_sms = await registry.enqueue_sms(self.sms())
        notification = await registry.enqueue_notification(AppNotification(
            app_id="APP1", kind="DeliverData", body=b"<x/>", created_at=OLD))

        self.at(YOUNG)
        await registry.log_committed(log_entry(YOUNG, "young"))
        await registry.record_statistics(SERIAL, {0x3001: b"\x02"}, YOUNG)
        await registry.record_alarm(Alarm(serial=SERIAL, code=2, type=1, status=1, time=YOUNG))
        young_done = await registry.enqueue(self.request())
        young_done.state = RequestState.FAILED
        await registry.update_request(young_done)
        young_sms = await registry.enqueue_sms(self.sms())
        young_sms.state = SmsState.SENT
        await registry.update_sms(young_sms)

        self.at(NOW)
        with capturedLogs() as events:
            await self.settle(self.retention(registry).run())

        self.assertEqual(self.stored("messages", "event"), [("young",)])
        self.assertEqual(self.stored("statistics", "time"), [(YOUNG,)])
        self.assertEqual(self.stored("alarm_history", "code"), [(2,)])
        # The current state of each alarm is live state, however old.
        self.assertEqual(self.stored("alarm_state", "code", order="code"), [(1,), (2,)])
        self.assertEqual(self.stored("requests", "id", order="id"),
                         [(old_queued.id,), (old_sent.id,), (young_done.id,)])
        # Finished a day ago but less than a day: kept for its bizSeq (AD-14).
        self.assertEqual(self.stored("app_messages", "id", order="id"),
                         [(day_message.id,), (waiting_message.id,)])
        self.assertEqual(self.stored("file_transactions", "trans_id"), [(2,)])
        self.assertEqual(self.stored("sms_outbox", "id", order="id"),
                         [(pending_sms.id,), (young_sms.id,)])
        self.assertEqual(self.stored("app_notifications", "id"),
                         [(notification.id,)])
        self.assertEqual(self.count("terminals"), 1)
        self.assertEqual(self.stored("counters", "name"), [("serial",)])

        # The caches agree with the file.
        self.assertIsNone(registry.request(old_done.id or 0))
        self.assertIs(registry.request(young_done.id or 0), young_done)
        self.assertEqual(registry.queued(SERIAL), [old_queued, old_sent])
        self.assertIsNone(registry.file_by_trans_id(1))
        self.assertIsNone(registry.file_by_token("token-1-0123456789"))
        self.assertIsNotNone(registry.file_by_trans_id(2))
        self.assertIsNone(await registry.app_message(ancient_message.id or 0))
        self.assertIsNone(registry.app_message_by_biz_seq("APP1", "b-old"))
        self.assertIs(registry.app_message_by_biz_seq("APP1", "b-day"), day_message)
        self.assertEqual(registry.pending_sms(), [pending_sms])

        lines = [formatEvent(e) for e in events if e["log_namespace"] == "m2mgw.retention"]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("deleted 8 old rows", lines[0])
        self.assertEqual(
            next(e for e in events if "deleted" in e)["deleted"],
            {"messages": 1, "statistics": 1, "alarm_history": 1, "requests": 1,
             "app_messages": 1, "file_transactions": 1, "sms_outbox": 2},
        )

        # Nothing left to delete: a round logs nothing.
        with capturedLogs() as events:
            await self.settle(self.retention(registry).run())
        self.assertEqual([e for e in events if e["log_namespace"] == "m2mgw.retention"], [])

    async def test_per_kind_keys_override_and_never_keeps(self) -> None:
        registry = await self.open()
        await registry.log_committed(log_entry(OLD))
        await registry.record_statistics(SERIAL, {0x3001: b"\x01"}, OLD)
        await registry.record_alarm(Alarm(serial=SERIAL, code=1, type=1, status=1, time=OLD))
        await registry.record_alarm(Alarm(serial=SERIAL, code=1, type=1, status=0,
                                          time=NOW - 100))
        retention = self.retention(registry, "retention_messages = never\n"
                                             "retention_alarms = 60s\n")
        await self.settle(retention.run())
        self.assertEqual(self.count("messages"), 1)
        self.assertEqual(self.count("statistics"), 0)
        self.assertEqual(self.stored("alarm_history", "status"), [])

    async def test_only_history_tables_and_positive_limits(self) -> None:
        registry = await self.open()
        for table in ("terminals", "alarm_state", "app_notifications", "counters"):
            self.assertRaises(RegistryError, registry.prune, table, NOW, 10)
        self.assertRaises(RegistryError, registry.prune, "messages", NOW, 0)

    def request(self) -> Request:
        now = self.clock.seconds()
        return Request(serial=SERIAL, command=0x0006, body=b"\x00", created_at=now,
                       expires_at=now + 86_400, origin="admin")

    def sms(self) -> OutgoingSms:
        return OutgoingSms(msisdn="8613800138000", port=16001, message=b"\x01",
                           created_at=self.clock.seconds())

    @staticmethod
    def file(trans_id: int, expires_at: float, state: str) -> FileTransaction:
        return FileTransaction(
            trans_id=trans_id, serial=SERIAL, token=f"token-{trans_id}-0123456789",
            path="/files/fw.bin", name="fw.bin", version="1.0", size=1, crc16=0, crc32=0,
            created_at=expires_at - 3600, expires_at=expires_at, state=state)


class BatchesTests(RetentionTests):
    async def test_a_backlog_goes_in_bounded_batches_with_writes_committed_between(
        self,
    ) -> None:
        registry = await self.open()
        terminal = await registry.add(Terminal(imei="860000000000001", serial=SERIAL))
        await self.log_rows(registry, OLD, 4 * PRUNE_BATCH + 99)  # 2100 with the committed one
        await self.log_rows(registry, YOUNG, 9)
        order: list[object] = []
        prune = registry.prune

        def recording_prune(table: str, before: float, limit: int) -> Deferred[int]:
            d = prune(table, before, limit)
            if table == "messages":
                d.addCallback(lambda count: order.append(count) or count)
            return d

        registry.prune = recording_prune  # type: ignore[method-assign]
        with capturedLogs() as events:
            round_done = self.retention(registry).run()
            # A terminal write submitted while the round runs commits after the batch
            # in progress, not after the backlog.
            terminal.state = TerminalState.LOGGED_IN
            registry.save(terminal).addCallback(lambda _: order.append("write"))
            await self.settle(round_done)

        self.assertEqual(order, [PRUNE_BATCH, "write", PRUNE_BATCH, PRUNE_BATCH, PRUNE_BATCH,
                                 100])
        self.assertEqual(self.count("messages"), 10)
        self.assertEqual(self.stored("terminals", "state"), [("LOGGED_IN",)])
        summaries = [e for e in events if "deleted" in e]
        self.assertEqual(len(summaries), 1)
        self.assertEqual(summaries[0]["deleted"], {"messages": 4 * PRUNE_BATCH + 100})

    async def test_each_round_waits_for_the_timer_and_stop_ends_it_after_a_batch(
        self,
    ) -> None:
        registry = await self.open()
        await self.log_rows(registry, OLD, 3 * PRUNE_BATCH)
        retention = self.retention(registry, "retention_interval = 60s\n")
        retention.startService()  # the first round starts at once
        stopped = retention.stopService()
        await self.settle(stopped)
        # The first batch ran; the round ended before the second.
        self.assertEqual(self.count("messages"), 2 * PRUNE_BATCH + 1)

        retention.startService()
        await self.until(lambda: self.count("messages") == 0)
        await self.log_rows(registry, NOW - RETENTION - 1, 5)
        self.clock.advance(59)
        await self.settle(task.deferLater(reactor, 0.1))
        self.assertEqual(self.count("messages"), 6)  # the next round is not due yet
        self.clock.advance(1)
        await self.until(lambda: self.count("messages") == 0)
        await self.settle(retention.stopService())

    async def test_behind_a_saturated_writer_each_batch_waits_its_turn(self) -> None:
        """No pause and no queue jumping: a batch runs after the writes queued before
        it, and writes queued meanwhile run before the next batch."""
        registry = await self.open(watermarks=(3, 0))
        await self.log_rows(registry, OLD, 2 * PRUNE_BATCH - 1)
        order: list[object] = []

        def writes(name: str) -> list[Deferred[None]]:
            return [registry.record_statistics(SERIAL, {0x3001: b"\x01"}, NOW).addCallback(
                lambda _: order.append(name)) for _ in range(20)]

        queued = writes("before")
        self.assertTrue(registry.saturated)
        prune = registry.prune

        def recording_prune(table: str, before: float, limit: int) -> Deferred[int]:
            d = prune(table, before, limit)
            if table == "messages":
                d.addCallback(lambda count: order.append(count) or count)
            return d

        registry.prune = recording_prune  # type: ignore[method-assign]
        round_done = self.retention(registry).run()
        queued += writes("meanwhile")
        await self.settle(round_done)
        for d in queued:
            await d
        self.assertEqual(order, ["before"] * 20 + [PRUNE_BATCH] + ["meanwhile"] * 20
                         + [PRUNE_BATCH, 0])
        self.assertEqual(self.count("messages"), 0)


class SqliteWhatIsPrunedTest(SqliteBackend, WhatIsPrunedTests, unittest.TestCase):
    pass


class MemoryWhatIsPrunedTest(MemoryBackend, WhatIsPrunedTests, unittest.TestCase):
    pass


class PostgresWhatIsPrunedTest(PostgresBackend, WhatIsPrunedTests, unittest.TestCase):
    pass


class SqliteBatchesTest(SqliteBackend, BatchesTests, unittest.TestCase):
    pass


class MemoryBatchesTest(MemoryBackend, BatchesTests, unittest.TestCase):
    pass


class PostgresBatchesTest(PostgresBackend, BatchesTests, unittest.TestCase):
    pass


class PruneStatementsTest(SqliteBackend, RetentionTests, unittest.TestCase):
    """The kinds of history, and SQLite's pruning statements."""

    def test_kinds_and_ages(self) -> None:
        self.assertEqual(set(KIND_OF), set(HISTORY_TABLES))
        self.assertEqual(set(PRUNE_SQL), set(HISTORY_TABLES))
        ages = retention_ages(registry_config(
            "retention_messages = never\nretention_alarms = 7d\nretention_requests = 5m\n"))
        self.assertEqual(ages, {
            "statistics": RETENTION, "alarm_history": 7 * 86_400.0, "requests": 300.0,
            "app_messages": MIN_AGE["app_messages"], "file_transactions": 300.0,
            "sms_outbox": RETENTION,
        })
        self.assertEqual(retention_ages(parse_config("[registry]\nretention = never\n").registry),
                         {})

    async def test_pruning_uses_the_time_indexes(self) -> None:
        """Each batch finds its rows by index: its cost is its rows, not the table."""
        await self.open()
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        for table, sql in PRUNE_SQL.items():
            plan = " / ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}",
                                                             (NOW, PRUNE_BATCH)))
            self.assertIn(f"SEARCH {table} USING", plan.split(" / ")[-1], plan)
            self.assertNotIn("SCAN", plan, plan)
            self.assertNotIn("TEMP B-TREE", plan, plan)

"""Backpressure: the registry's write watermarks, and the gateway holding terminal input.

The writer is made slow for real: on SQLite another connection holds the write lock
(as the CLI or a backup would), so the registry's writer waits in ``BEGIN IMMEDIATE``
(its busy timeout is 5 s; every hold here is well under a second); in memory the store
holds its commits.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from m2mgw.config import ROW_WATERMARKS
from m2mgw.core.registry import RegistryError
from m2mgw.protocol import terminal as role
from m2mgw.protocol.constants import Command
from tests.core.registry_backends import (
    MemoryBackend,
    PostgresBackend,
    RegistryContract,
    SqliteBackend,
    WriterLock,
)
from tests.core.test_registry import SERIAL, make_terminal
from tests.e2e.test_gateway_ip import GatewayTestCase, sleep


class WatermarkTests(RegistryContract):
    async def test_crossings_notify_once_each_way_and_every_write_commits(self) -> None:
        registry = await self.open(watermarks=(10, 3))
        await registry.add(make_terminal(serial=SERIAL))
        seen: list[tuple[bool, int]] = []
        registry.add_pressure_observer(lambda s: seen.append((s, registry.pending_writes)))
        lock = self.hold_writer()
        writes = [registry.record_statistics(SERIAL, {i: b"x"}, float(i)) for i in range(30)]
        self.assertEqual(seen, [(True, 10)])
        self.assertEqual((registry.pending_writes, registry.pending_rows), (30, 30))
        await sleep(0.2)
        self.assertEqual(registry.pending_writes, 30)  # the writer is really stuck
        self.assertTrue(registry.saturated)
        lock.release()
        await defer.gatherResults(writes)
        self.assertEqual(seen, [(True, 10), (False, 3)])
        self.assertFalse(registry.saturated)
        self.assertEqual((registry.pending_writes, registry.pending_rows), (0, 0))
        self.assertEqual(self.stored("statistics", "tag", order="id"),
                         [(i,) for i in range(30)])

    async def test_rows_have_their_own_watermarks(self) -> None:
        registry = await self.open(row_watermarks=(100, 20))
        await registry.add(make_terminal(serial=SERIAL))
        seen: list[bool] = []
        registry.add_pressure_observer(seen.append)
        big = registry.record_statistics(SERIAL, {i: b"x" for i in range(150)}, 1.0)
        self.assertEqual((seen, registry.pending_writes, registry.pending_rows), ([True], 1, 150))
        await big
        self.assertEqual(seen, [True, False])
        self.assertEqual(len(self.stored("statistics", "tag")), 150)

    async def test_a_failing_observer_fails_no_write(self) -> None:
        registry = await self.open(watermarks=(1, 0))
        seen: list[bool] = []

        def failing(saturated: bool) -> None:
            raise ZeroDivisionError

        for observer in (failing, seen.append):
            registry.add_pressure_observer(observer)
        terminal = await registry.add(make_terminal(serial=SERIAL))
        self.assertEqual(terminal.id, 1)
        self.assertEqual(seen, [True, False])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)
        for observer in (failing, seen.append):
            registry.remove_pressure_observer(observer)
        await registry.save(terminal)
        self.assertEqual(seen, [True, False])
        self.assertEqual(len(self.stored("terminals", "id")), 1)

    def test_watermarks_need_hysteresis(self) -> None:
        for pair in ((5, 5), (5, 6), (5, -1)):
            self.assertRaises(RegistryError, self.new_registry, watermarks=pair)
            self.assertRaises(RegistryError, self.new_registry, row_watermarks=pair)


class SqliteWatermarkTest(SqliteBackend, WatermarkTests, unittest.TestCase):
    pass


class MemoryWatermarkTest(MemoryBackend, WatermarkTests, unittest.TestCase):
    pass


class PostgresWatermarkTest(PostgresBackend, WatermarkTests, unittest.TestCase):
    pass


class InputHeldTest(GatewayTestCase):
    """A real gateway stops reading TCP and UDP terminals while its writer is behind."""

    def waiting_answers(self, term: Any) -> list[Any]:
        return [e for e in term.events if isinstance(e, role.Answer)]

    @defer.inlineCallbacks
    def until(self, condition: Any, timeout: float = 2.0):  # type: ignore[no-untyped-def]
        waited = 0.0
        while not condition():
            self.assertLess(waited, timeout, "condition not met in time")
            yield sleep(0.02)
            waited += 0.02

    @defer.inlineCallbacks
    def test_reading_pauses_and_resumes_and_nothing_is_lost(self):  # type: ignore[no-untyped-def]
        records = []
        for index in range(3):
            records.append((yield self.add_terminal(index)))
        tcp_term = yield self.open_terminal(records[0], "tcp")
        udp_term = yield self.open_terminal(records[1], "udp")
        for term in (tcp_term, udp_term):
            yield self.log_in(term)
        seen: list[bool] = []
        self.registry.add_pressure_observer(seen.append)
        factory = self.gateway.tcp_factory
        (connection,) = factory.connections
        udp_port = self.gateway.udp_protocol.transport

        lock = WriterLock(self.db)
        self.addCleanup(lock.release)
        # One write of high-watermark rows, stuck behind the lock: saturated at once.
        burst = self.registry.record_statistics(
            records[0].serial, {tag: b"\x00" for tag in range(ROW_WATERMARKS[0])}, 0.0
        )
        self.assertEqual(seen, [True])
        tcp_data = [bytes([i]) * 4 for i in range(20)]
        udp_data = [bytes([0x80 + i]) * 4 for i in range(5)]
        for term, payloads in ((tcp_term, tcp_data), (udp_term, udp_data)):
            for payload in payloads:
                term.send(term.client.transparent_data(payload, "EC0001"))
        late_term = yield self.open_terminal(records[2], "tcp")
        yield self.until(lambda: len(factory.connections) == 2)
        late_term.send(late_term.client.login())
        yield sleep(0.3)

        readers = reactor.getReaders()
        self.assertNotIn(udp_port, readers)
        for held in factory.connections:
            self.assertNotIn(held.transport, readers)
        self.assertEqual(self.waiting_answers(tcp_term) + self.waiting_answers(udp_term), [])
        self.assertEqual(late_term.events, [])

        lock.release()
        yield burst
        self.assertEqual(seen, [True, False])
        for term, payloads in ((tcp_term, tcp_data), (udp_term, udp_data)):
            acks = yield defer.gatherResults(
                [term.answer_to(Command.TRANSPARENT_DATA) for _ in payloads]
            )
            self.assertEqual([ack.message.result for ack in acks], [1] * len(payloads))
        logged_in = yield late_term.wait_type(role.LoggedIn)
        self.assertIn(logged_in.result, (0, 1))
        readers = reactor.getReaders()
        self.assertIn(connection.transport, readers)
        self.assertIn(udp_port, readers)

        # Every accepted message's effect was committed: read back from the file.
        for record, payloads in ((records[0], tcp_data), (records[1], udp_data)):
            entries = yield self.registry.messages(record.serial, limit=500)
            stored = sorted(e.detail for e in entries if e.event == "uplink-data")
            self.assertEqual(stored, sorted(f"to=EC0001 data={p.hex()}" for p in payloads))

"""What a platform request's send writes (D-405), and each terminal's queue order."""

from __future__ import annotations

from twisted.trial import unittest

from m2mgw.core.model import RequestState, Terminal
from m2mgw.core.registry import RegistryError
from tests.core.registry_backends import MemoryBackend, RegistryContract, SqliteBackend
from tests.core.test_registry import SERIAL, make_request, make_terminal


class CounterTests(RegistryContract):
    async def test_save_counters_writes_the_counters_only(self) -> None:
        registry = await self.open()
        terminal = await registry.add(make_terminal(serial=SERIAL))
        self.assertEqual([terminal.next_sequence() for _ in range(3)], [1, 2, 3])
        terminal.next_trans()
        terminal.software_version = "not saved"  # save_counters leaves it to save()
        before = terminal.updated_at
        await registry.save_counters(terminal)
        self.assertGreaterEqual(terminal.updated_at, before)
        reopened = (await self.reopen(registry)).get(SERIAL)
        self.assertEqual((reopened.seq_counter, reopened.trans_counter), (4, 2))
        self.assertEqual(reopened.updated_at, terminal.updated_at)
        self.assertIsNone(reopened.software_version)

    async def test_save_counters_of_an_unknown_terminal_raises(self) -> None:
        registry = await self.open()
        await registry.add(make_terminal(serial=SERIAL))
        self.assertRaises(RegistryError, registry.save_counters, Terminal(imei="1"))
        stranger = Terminal(id=registry.get(SERIAL).id, imei="2")  # not the cached record
        self.assertRaises(RegistryError, registry.save_counters, stranger)

    async def test_a_request_filed_again_keeps_its_place_by_id(self) -> None:
        registry = await self.open()
        await registry.add(make_terminal(serial=SERIAL))
        first, second, third = [await registry.enqueue(make_request(body=bytes([i])))
                                for i in range(3)]
        first.state = RequestState.FAILED
        await registry.update_request(first)
        self.assertEqual(registry.queued(SERIAL), [second, third])
        first.state = RequestState.QUEUED  # back in the queue, behind its successors
        await registry.update_request(first)
        self.assertEqual(registry.queued(SERIAL), [first, second, third])
        self.assertEqual(registry.queued(SERIAL), [first, second, third])
        fourth = await registry.enqueue(make_request(body=b"4"))
        self.assertEqual(registry.queued(SERIAL), [first, second, third, fourth])
        self.assertEqual(registry.queued("A972031000009999"), [])


class SqliteCounterTest(SqliteBackend, CounterTests, unittest.TestCase):
    pass


class MemoryCounterTest(MemoryBackend, CounterTests, unittest.TestCase):
    pass

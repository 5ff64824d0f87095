"""The SQLite store's group commit (D-400): batches that wait share one transaction.

A real file and a real pool thread; the writer is made busy by another connection
holding the write lock, as the CLI or a backup would.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from twisted.enterprise.adbapi import ConnectionPool
from twisted.internet import defer, reactor
from twisted.trial import unittest

from m2mgw.core.registry.sqlite import SqliteStore, _configure
from m2mgw.core.registry.store import Op, Query, Write
from m2mgw.core.registry.tables import COUNTERS
from tests.core.registry_backends import WriterLock, db_rows


class CountingPool(ConnectionPool):
    """An adbapi pool that counts the interactions (transactions) it is given."""

    interactions = 0

    def runInteraction(self, *args: Any, **kw: Any) -> Any:
        self.interactions += 1
        return super().runInteraction(*args, **kw)


def insert(name: str, value: int) -> list[Write]:
    return [Write(Op.INSERT, COUNTERS, [(name, value)])]


class GroupCommitTest(unittest.TestCase):
    def setUp(self) -> None:
        self.path = str(Path(self.mktemp()).resolve())
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        conn.commit()
        conn.close()
        self.pool = CountingPool("sqlite3", self.path, cp_min=1, cp_max=1, cp_reactor=reactor,
                                 cp_openfun=_configure, check_same_thread=False,
                                 isolation_level=None)
        self.addCleanup(self.pool.close)
        self.store = SqliteStore(self.pool)

    def rows(self) -> list[tuple[Any, ...]]:
        return db_rows(self.path, "SELECT name, value FROM counters ORDER BY name")

    async def test_an_idle_store_commits_each_batch_at_once(self) -> None:
        await self.store.apply(insert("a", 1))
        await self.store.apply(insert("b", 2))
        self.assertEqual(self.pool.interactions, 2)
        self.assertEqual(self.rows(), [("a", 1), ("b", 2)])

    async def test_waiting_batches_share_one_transaction_and_fail_alone(self) -> None:
        lock = WriterLock(self.path)
        self.addCleanup(lock.release)
        first = [self.store.apply(insert("a", 1)), self.store.apply(insert("b", 2))]
        # Two transactions in the pool: the rest waits, for one transaction.
        waiting = [self.store.apply(insert("c", 3)), self.store.apply(insert("a", 9)),
                   self.store.apply(insert("d", 4))]
        self.assertEqual(self.pool.interactions, 2)
        lock.release()
        await defer.gatherResults(first)
        outcomes = await defer.DeferredList(waiting, consumeErrors=True)
        self.assertEqual(self.pool.interactions, 3)
        self.assertEqual([ok for ok, _ in outcomes], [True, False, True])
        self.assertTrue(outcomes[1][1].check(sqlite3.IntegrityError))
        # The duplicate was rolled back alone; its neighbours committed.
        self.assertEqual(self.rows(), [("a", 1), ("b", 2), ("c", 3), ("d", 4)])

    async def test_a_read_sees_every_batch_submitted_before_it(self) -> None:
        lock = WriterLock(self.path)
        self.addCleanup(lock.release)
        writes = [self.store.apply(insert(name, i)) for i, name in enumerate("abcd")]
        read = self.store.read(Query(COUNTERS, {}, 10, order="name"))
        later = self.store.apply(insert("e", 5))
        barrier = self.store.barrier()
        lock.release()
        self.assertEqual(await read, [("d", 3), ("c", 2), ("b", 1), ("a", 0)])
        await defer.gatherResults([*writes, later, barrier])
        self.assertEqual(len(self.rows()), 5)

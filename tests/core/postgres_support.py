"""Shared pieces for the PostgreSQL tests: a fresh database per test on the session's
throw-away cluster, and waiting for a condition in the running reactor."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from twisted.internet import reactor, task
from twisted.trial import unittest

from m2mgw.core.postgres.connection import Database
from m2mgw.core.postgres.migrations import migrate
from tests.pgcluster import PgCluster

_names = itertools.count(1)


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait, letting the reactor run, until ``predicate()``; fail after ``timeout``."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"condition not met within {timeout}s")


class PostgresTestCase(unittest.TestCase):
    """Each test gets its own empty schema, the only one on the search path of
    ``self.url``: as good as an empty database for unqualified SQL."""

    cluster: PgCluster
    url: str

    @pytest.fixture(autouse=True)
    def _database(self, postgres_cluster: PgCluster) -> None:
        self.cluster = postgres_cluster
        self.url = postgres_cluster.create_schema(f"test_{next(_names)}")

    def database(self, **options: Any) -> Database:
        """A Database on ``self.url``, closed after the test (not opened yet)."""
        db = Database(reactor, self.url, **options)
        self.addCleanup(db.close)
        return db

    async def migrated(self, **options: Any) -> Database:
        """An open Database with the schema."""
        db = self.database(**options)
        await db.open()
        await migrate(db)
        return db

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement on a connection of its own, as another process would."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

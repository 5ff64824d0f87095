"""Database: transactions in pool threads against a real throw-away PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.trial import unittest

from m2mgw.core.postgres.connection import (
    Cursor,
    Database,
    PostgresError,
    PostgresUnavailable,
    connection_options,
    redact,
)
from tests.core.postgres_support import PostgresTestCase
from tests.pgcluster import free_port


def _insert(cursor: Cursor, value: int) -> int:
    cursor.execute("INSERT INTO t (v) VALUES (%s) RETURNING id", (value,))
    row_id: int = cursor.fetchone()[0]
    return row_id


class UrlTests(unittest.TestCase):
    def test_redact_hides_passwords_in_the_authority_and_the_query(self) -> None:
        self.assertEqual(redact("postgresql://gw:s3cret@db.example:5433/m2mgw"),
                         "postgresql://gw:***@db.example:5433/m2mgw")
        self.assertEqual(redact("postgresql://db/m2mgw?password=s3cret&sslmode=require"),
                         "postgresql://db/m2mgw?password=***&sslmode=require")
        self.assertEqual(redact("postgresql://gw@db/m2mgw"), "postgresql://gw@db/m2mgw")

    def test_a_bad_url_is_one_line_without_the_password(self) -> None:
        for url, why in [
            ("mysql://gw:s3cret@db/m2mgw", "expected postgresql://"),
            ("postgresql://gw:s3cret@db:port/m2mgw", "port 'port' is not a number"),
            ("postgresql://gw:s3cret@db/m2mgw?nosuchoption=1", "invalid"),
        ]:
            with self.assertRaises(PostgresError) as caught:
                Database(reactor, url)
            message = str(caught.exception)
            self.assertIn(why, message)
            self.assertNotIn("s3cret", message)
            self.assertNotIn("\n", message)

    def test_the_url_wins_over_the_defaults(self) -> None:
        options = connection_options("postgresql://gw@db/m2mgw?connect_timeout=3")
        self.assertIn("connect_timeout=3", options)
        self.assertIn("keepalives_idle=10", options)
        self.assertIn("application_name=m2mgw", options)


class RefusedTests(unittest.TestCase):
    async def test_a_refused_connection_fails_open_in_one_line(self) -> None:
        db = Database(reactor, f"postgresql://gw:s3cret@127.0.0.1:{free_port()}/m2mgw")
        self.addCleanup(db.close)
        with self.assertRaises(PostgresUnavailable) as caught:
            await db.open()
        message = str(caught.exception)
        self.assertTrue(message.startswith("registry postgresql://gw:***@127.0.0.1:"), message)
        self.assertIn("Connection refused", message)
        self.assertNotIn("\n", message)

    async def test_a_transaction_before_open_fails(self) -> None:
        db = Database(reactor, "postgresql://gw@127.0.0.1/m2mgw")
        with self.assertRaises(PostgresError):
            await db.transaction(_insert, 1)


class TransactionTests(PostgresTestCase):
    async def with_table(self) -> Database:
        """An open Database and a table t."""
        db = self.database()
        await db.open()
        self.sql("CREATE TABLE t (id SERIAL PRIMARY KEY, v INTEGER NOT NULL)")
        return db

    async def test_a_transaction_commits_its_result(self) -> None:
        db = await self.with_table()
        row_id = await db.transaction(_insert, 7)
        self.assertEqual(self.sql("SELECT id, v FROM t"), [(row_id, 7)])

    async def test_a_raising_transaction_rolls_back_everything(self) -> None:
        db = await self.with_table()

        def half(cursor: Cursor) -> None:
            _insert(cursor, 1)
            raise ValueError("changed my mind")

        with self.assertRaises(ValueError):
            await db.transaction(half)
        self.assertEqual(self.sql("SELECT count(*) FROM t"), [(0,)])

    async def test_sql_errors_pass_through_as_psycopg_errors(self) -> None:
        db = await self.with_table()

        def bad(cursor: Cursor) -> None:
            cursor.execute("SELECT no_such_column FROM t")

        with self.assertRaises(psycopg.errors.UndefinedColumn):
            await db.transaction(bad)
        self.assertEqual(await db.transaction(_insert, 2), 1)  # the connection still works

    async def test_one_connection_commits_in_submission_order(self) -> None:
        db = self.database(connections=1)
        await db.open()
        self.sql("CREATE TABLE t (id SERIAL PRIMARY KEY, v INTEGER NOT NULL)")
        ids = await gatherResults([db.transaction(_insert, v) for v in range(50)])
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(self.sql("SELECT v FROM t ORDER BY id"), [(v,) for v in range(50)])

    async def test_several_connections_run_transactions_at_once(self) -> None:
        db = self.database(connections=2)
        await db.open()
        both = threading.Barrier(2, timeout=5)

        def meet(cursor: Cursor) -> int:
            both.wait()  # only returns when the other transaction runs too
            cursor.execute("SELECT pg_backend_pid()")
            pid: int = cursor.fetchone()[0]
            return pid

        pids = await gatherResults([db.transaction(meet), db.transaction(meet)])
        self.assertEqual(len(set(pids)), 2)

    async def test_a_lost_connection_fails_its_transaction_and_the_next_reconnects(self) -> None:
        db = self.database(connections=1, application_name="victim")
        await db.open()

        def pid(cursor: Cursor) -> int:
            cursor.execute("SELECT pg_backend_pid()")
            value: int = cursor.fetchone()[0]
            return value

        first = await db.transaction(pid)
        self.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE application_name = 'victim'")
        with self.assertRaises(PostgresUnavailable) as caught:
            await db.transaction(pid)
        self.assertNotIn("\n", str(caught.exception))
        second = await db.transaction(pid)
        self.assertNotEqual(first, second)


_STOP_WITHOUT_CLOSE = textwrap.dedent("""
    import sys
    from twisted.internet import reactor
    from m2mgw.core.postgres.connection import Database

    db = Database(reactor, sys.argv[1])
    reactor.callWhenRunning(lambda: db.open().addBoth(lambda _: reactor.stop()))
    reactor.run()
    print("stopped")
""")


class ShutdownTests(PostgresTestCase):
    def test_a_reactor_stopped_without_close_still_ends_the_process(self) -> None:
        """The pool's threads are not daemons: the shutdown trigger stops them."""
        done = subprocess.run([sys.executable, "-c", _STOP_WITHOUT_CLOSE, self.url],
                              capture_output=True, text=True, timeout=30, check=False)
        self.assertEqual((done.returncode, done.stdout), (0, "stopped\n"), done.stderr)

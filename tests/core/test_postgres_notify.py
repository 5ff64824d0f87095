"""LISTEN/NOTIFY between nodes: seen only after commit, per channel, across reconnects."""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet import reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from m2mgw.core.postgres.connection import Cursor
from m2mgw.core.postgres.notify import (
    BROADCAST,
    MAX_PAYLOAD,
    Listener,
    event,
    node_channel,
    notify,
    parse_event,
)
from tests.core.postgres_support import PostgresTestCase, eventually
from tests.pgcluster import free_port


class PayloadTests(unittest.TestCase):
    def test_events_are_compact_sorted_json_with_a_kind(self) -> None:
        payload = event("request", serial="A972030000000001", id=17)
        self.assertEqual(payload, '{"id":17,"kind":"request","serial":"A972030000000001"}')
        self.assertEqual(parse_event(payload),
                         {"kind": "request", "serial": "A972030000000001", "id": 17})
        for bad in ("[1]", '{"serial": "x"}', '{"kind": 3}'):
            with self.assertRaises(ValueError):
                parse_event(bad)
        with self.assertRaises(ValueError):
            parse_event("not json")

    def test_channels(self) -> None:
        self.assertEqual((BROADCAST, node_channel("node-a")), ("m2mgw", "m2mgw.node-a"))


class ListenerTests(PostgresTestCase):
    async def listening(self, channels: list[str], **options: Any) -> tuple[Listener, list]:
        received: list[tuple[str, str]] = []
        listener = Listener(reactor, self.url, channels,
                            lambda c, p: received.append((c, p)), **options)
        self.addCleanup(listener.stop)
        await listener.start()
        return listener, received

    async def test_a_notification_arrives_only_once_its_transaction_commits(self) -> None:
        _, received = await self.listening(["ch"])
        db = self.database()
        await db.open()
        gate = threading.Event()

        def announce_then_wait(cursor: Cursor) -> None:
            notify(cursor, "ch", "committed")
            gate.wait(5)

        done = db.transaction(announce_then_wait)
        await task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(received, [])  # sent, but the transaction is still open
        gate.set()
        await done
        await eventually(lambda: received == [("ch", "committed")])

    async def test_a_rolled_back_notification_never_arrives(self) -> None:
        _, received = await self.listening(["ch"])
        db = self.database()
        await db.open()

        def announce_then_fail(cursor: Cursor) -> None:
            notify(cursor, "ch", "rolled back")
            raise ValueError("abort")

        with self.assertRaises(ValueError):
            await db.transaction(announce_then_fail)
        await db.transaction(notify, "ch", "after")
        await eventually(lambda: bool(received))
        self.assertEqual(received, [("ch", "after")])

    async def test_each_node_hears_its_own_channel_and_the_broadcast_in_order(self) -> None:
        _, to_a = await self.listening([BROADCAST, node_channel("a")])
        _, to_b = await self.listening([BROADCAST, node_channel("b")])
        db = self.database()
        await db.open()

        def announce(cursor: Cursor) -> None:
            for i in range(3):
                notify(cursor, node_channel("a"), event("request", id=i))
            notify(cursor, BROADCAST, event("outbox", app="app1"))
            notify(cursor, node_channel("b"), event("takeover", serial="S1"))

        await db.transaction(announce)
        await eventually(lambda: len(to_a) == 4 and len(to_b) == 2)
        self.assertEqual([parse_event(p) for _, p in to_a],
                         [{"kind": "request", "id": 0}, {"kind": "request", "id": 1},
                          {"kind": "request", "id": 2}, {"kind": "outbox", "app": "app1"}])
        self.assertEqual([c for c, _ in to_b], [BROADCAST, node_channel("b")])

    async def test_a_payload_too_long_for_notify_is_refused_before_sending(self) -> None:
        db = self.database()
        await db.open()
        with self.assertRaises(ValueError):
            await db.transaction(notify, "ch", "x" * (MAX_PAYLOAD + 1))
        await db.transaction(notify, "ch", "x" * MAX_PAYLOAD)  # the server takes this one

    async def test_a_lost_connection_reconnects_listens_again_and_says_so(self) -> None:
        connected: list[int] = []
        listener, received = await self.listening(
            ["ch"], backoff=(0.05, 0.2), connected=lambda: connected.append(1))
        self.assertEqual((listener.connections, len(connected)), (1, 1))
        killed = self.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND query LIKE 'LISTEN %'")
        self.assertEqual(killed, [(True,)])
        await eventually(lambda: listener.connections == 2)
        self.assertEqual(len(connected), 2)  # the node re-reads what it may have missed
        db = self.database()
        await db.open()
        await db.transaction(notify, "ch", "after the reconnection")
        await eventually(lambda: received == [("ch", "after the reconnection")])

    async def test_an_unreachable_database_is_retried_until_stopped(self) -> None:
        warnings: list[str] = []

        def observe(e: dict) -> None:
            if e.get("log_format", "").startswith("cannot listen"):
                warnings.append(e["why"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        listener = Listener(reactor, f"postgresql://m2mgw@127.0.0.1:{free_port()}/m2mgw",
                            ["ch"], lambda c, p: None, backoff=(0.02, 0.05))
        started = listener.start()
        await eventually(lambda: len(warnings) >= 3)
        listener.stop()  # cancels the pending retry: trial fails on a leftover callLater
        self.assertFalse(started.called)
        self.assertFalse(listener.listening)
        self.assertIn("Connection refused", warnings[0])

    async def test_a_failing_receiver_is_logged_and_the_next_one_still_arrives(self) -> None:
        received: list[str] = []

        def receive(channel: str, payload: str) -> None:
            if payload == "bad":
                raise RuntimeError("receiver bug")
            received.append(payload)

        listener = Listener(reactor, self.url, ["ch"], receive)
        self.addCleanup(listener.stop)
        await listener.start()
        db = self.database()
        await db.open()
        await db.transaction(notify, "ch", "bad")
        await db.transaction(notify, "ch", "good")
        await eventually(lambda: received == ["good"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

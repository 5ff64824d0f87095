"""A delivery costs the same however long the outbox is (issue #15 item 5, D-255).

Counted, not timed: how many outbox entries the pump looks at per notification
delivered over a real long connection, with a small and a large backlog, and a head
of entries it must skip (set aside) in front of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest

from m2mgw.app import client as app_client
from m2mgw.app import longconn as lc
from m2mgw.app import operations as ops
from m2mgw.app.outbox import encode_notification
from m2mgw.core.model import AppNotification, NotificationState
from tests.core.registry_backends import (
    MemoryBackend,
    PostgresBackend,
    RegistryContract,
    SqliteBackend,
)

from .gateway_support import BASE_KEY, PASSWORD, AppGatewayTestCase

#: Deliveries measured, after the first few (the login's own work).
WARM_UP, MEASURED = 20, 200


class _Counting:
    """Wraps the registry's outbox reads: entries visited, full listings made."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self.ready = registry.ready_notifications
        self.listing = registry.notifications
        self.visits = self.listings = 0
        registry.ready_notifications = self._ready
        registry.notifications = self._listing

    def _ready(self, app_id: str) -> Iterator[AppNotification]:
        for entry in self.ready(app_id):
            self.visits += 1
            yield entry

    def _listing(self, app_id: str) -> list[AppNotification]:
        self.listings += 1
        return self.listing(app_id)

    def restore(self) -> None:
        del self.registry.ready_notifications, self.registry.notifications


class DeliveryCostTest(AppGatewayTestCase):
    @defer.inlineCallbacks
    def fill(self, backlog: int, aside: int):  # type: ignore[no-untyped-def]
        """``aside`` set-aside entries, then ``backlog`` pending ones, all durable."""
        registry = self.registry
        body = encode_notification(ops.NotifyTerminalState(
            notify_id=0, terminal_id=self.record.serial, event="OFFLINE", time=1))
        stored = []
        for i in range(aside + backlog):
            entry = AppNotification(app_id="EC0001", kind="NotifyTerminalState",
                                    body=body, created_at=float(i))
            stored.append(registry.enqueue_notification(entry))
        entries = yield defer.gatherResults(stored)
        for entry in entries[:aside]:
            entry.state = NotificationState.UNENCODABLE
            registry.update_notification(entry)

    @defer.inlineCallbacks
    def visits_per_delivery(self, backlog: int, aside: int):  # type: ignore[no-untyped-def]
        yield self.fill(backlog, aside)
        counting = _Counting(self.registry)
        self.addCleanup(counting.restore)
        marks: dict[int, tuple[int, int]] = {}
        done: defer.Deferred[None] = defer.Deferred()
        received = 0

        def on_notification(payload: Any) -> None:
            nonlocal received
            received += 1
            if received in (WARM_UP, WARM_UP + MEASURED):
                marks[received] = (counting.visits, counting.listings)
            if received == WARM_UP + MEASURED:
                done.callback(None)

        client = yield app_client.connect(
            reactor, "127.0.0.1", self.app_port, lc.AppCredentials("EC0001", PASSWORD, BASE_KEY),
            on_notification=on_notification)
        self.addCleanup(self._close_client, client)
        yield done.addTimeout(20, reactor)
        (v0, l0), (v1, l1) = marks[WARM_UP], marks[WARM_UP + MEASURED]
        self.assertEqual(l1 - l0, 0, "no full listing of the outbox while delivering")
        return (v1 - v0) / MEASURED

    @defer.inlineCallbacks
    def test_small_outbox(self):  # type: ignore[no-untyped-def]
        cost = yield self.visits_per_delivery(backlog=300, aside=100)
        self.assertLessEqual(cost, 2 * lc.WINDOW)

    @defer.inlineCallbacks
    def test_large_outbox(self):  # type: ignore[no-untyped-def]
        """Ten times the backlog and the skipped head: the same bound per delivery."""
        cost = yield self.visits_per_delivery(backlog=3000, aside=1000)
        self.assertLessEqual(cost, 2 * lc.WINDOW)


class ReadyQueueTests(RegistryContract):
    """The registry's ready queue keeps notifyId order through every change of state."""

    async def test_order_and_membership(self) -> None:
        registry = await self.open()
        entries = await defer.gatherResults([
            registry.enqueue_notification(AppNotification(
                app_id="EC0001", kind="DeliverData", body=b"<x/>", created_at=float(i)))
            for i in range(6)])
        ids = [e.id for e in entries]

        def ready() -> list[int]:
            return [e.id for e in registry.ready_notifications("EC0001")]

        self.assertEqual(ready(), ids)
        for entry, state in zip(entries[:3], (NotificationState.KEPT,
                                              NotificationState.UNENCODABLE,
                                              NotificationState.KEPT), strict=True):
            entry.state = state
            await registry.update_notification(entry)
        self.assertEqual(ready(), ids[3:])
        # Kept ones come back (a new session): in notifyId order, before the rest.
        for entry in (entries[2], entries[0]):
            entry.state = NotificationState.PENDING
            await registry.update_notification(entry)
        self.assertEqual(ready(), [ids[0], ids[2], *ids[3:]])
        await registry.delete_notifications([ids[0], ids[4]])
        self.assertEqual(ready(), [ids[2], ids[3], ids[5]])
        self.assertIsNone(registry.notification(ids[0]))
        self.assertIs(registry.notification(ids[1]), entries[1])
        self.assertEqual([e.id for e in registry.notifications("EC0001")],
                         [ids[1], ids[2], ids[3], ids[5]])
        # An update of a deleted entry does not bring it back.
        entries[4].attempts = 1
        await registry.update_notification(entries[4])
        self.assertEqual(ready(), [ids[2], ids[3], ids[5]])
        self.assertEqual(list(registry.ready_notifications("nobody")), [])


class SqliteReadyQueueTest(SqliteBackend, ReadyQueueTests, unittest.TestCase):
    pass


class MemoryReadyQueueTest(MemoryBackend, ReadyQueueTests, unittest.TestCase):
    pass


class PostgresReadyQueueTest(PostgresBackend, ReadyQueueTests, unittest.TestCase):
    pass

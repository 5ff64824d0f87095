"""A notification is offered only once it is committed (D-277).

The crash-accounting fault test (tests/faults) found ACKed uplinks lost: a notification
offered before its row was committed kept its notifyId only in memory, a SIGKILL then
let the next start hand that notifyId to another notification, and the application,
de-duplicating on notifyId as it must (application spec 4.7), discarded it. Here a
second SQLite connection holds the write lock, so the gateway's insert waits for
certain: nothing may reach the application until the lock is released.
"""

from __future__ import annotations

import sqlite3

from twisted.internet import defer

from m2mgw.app import operations as ops
from m2mgw.core.model import AppNotification
from m2mgw.protocol.constants import Command

from .gateway_support import AppGatewayTestCase, sleep


class OfferAfterCommitTest(AppGatewayTestCase):
    def hold_write_lock(self) -> sqlite3.Connection:
        """Another writer on the database file: the gateway's writes wait (busy_timeout)."""
        blocker = sqlite3.connect(self.db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        self.addCleanup(blocker.close)
        return blocker

    @defer.inlineCallbacks
    def test_deliver_data_waits_for_its_commit(self):  # type: ignore[no-untyped-def]
        term = yield self.online_terminal()
        _, inbox = yield self.connect_app()
        blocker = self.hold_write_lock()
        term.send(term.client.transparent_data(b"\x42", "EC0001"))
        yield sleep(0.5)
        self.assertEqual(inbox.of("DeliverData"), [], "offered before it was stored")
        self.assertEqual(self.registry.notifications("EC0001"), [])
        blocker.execute("ROLLBACK")
        data = yield inbox.wait(lambda n: isinstance(n, ops.DeliverData))
        ack = yield term.answer_to(Command.TRANSPARENT_DATA)
        self.assertEqual((data.data, ack.message.result), (b"\x42", 0))

    @defer.inlineCallbacks
    def test_outbox_holds_committed_notifications_only(self):  # type: ignore[no-untyped-def]
        blocker = self.hold_write_lock()
        stored = self.registry.enqueue_notification(AppNotification(
            app_id="EC0001", kind="DeliverData", body=b"<x/>", next_attempt=0, created_at=0))
        yield sleep(0.2)
        self.assertEqual(self.registry.notifications("EC0001"), [])
        blocker.execute("ROLLBACK")
        entry = yield stored
        self.assertEqual(self.registry.notifications("EC0001"), [entry])

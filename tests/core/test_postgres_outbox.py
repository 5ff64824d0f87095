"""Claiming an application's notifications on a real PostgreSQL: oldest first, never
the same notifyId to two nodes, one node at a time per application."""

from __future__ import annotations

import psycopg
from twisted.internet import reactor, task
from twisted.internet.defer import gatherResults

from m2mgw.core.model import AppNotification, NotificationState
from m2mgw.core.postgres.connection import Database
from m2mgw.core.postgres.leases import expire_nodes, register_node
from m2mgw.core.postgres.notify import BROADCAST, Listener, parse_event
from m2mgw.core.postgres.outbox import (
    ack_notifications,
    claim_due,
    claim_notifications,
    expire_notifications,
    finish_notifications,
    lease_notifications,
    release_notifications,
    reset_notifications,
    retry_notification,
)
from tests.core.postgres_support import PostgresTestCase, eventually

NOW = 1_700_000_000.0


class OutboxTests(PostgresTestCase):
    def store(self, count: int, app_id: str = "app1", **columns: object) -> list[int]:
        """``count`` pending notifications, as a node's registry would have committed."""
        values = {"kind": "DeliverData", "state": "pending", "attempts": 0,
                  "next_attempt": NOW, "leased_until": None, "created_at": NOW,
                  "updated_at": NOW, **columns}
        names = ", ".join(["app_id", "body", *values])
        marks = ", ".join(["%s"] * (len(values) + 2))
        ids = []
        for i in range(count):
            rows = self.sql(f"INSERT INTO app_notifications ({names}) VALUES ({marks}) "
                            "RETURNING id", (app_id, f"<n{i}/>".encode(), *values.values()))
            ids.append(rows[0][0])
        return ids

    async def two_nodes(self) -> tuple[Database, Database]:
        a = await self.migrated()
        b = self.database()
        await b.open()
        await a.transaction(register_node, "a")
        await a.transaction(register_node, "b")
        return a, b

    async def test_claims_come_oldest_first_and_are_not_given_twice(self) -> None:
        a, _ = await self.two_nodes()
        ids = self.store(5)
        first = await a.transaction(claim_notifications, "app1", "a", NOW, 2)
        self.assertEqual([n.id for n in first], ids[:2])
        self.assertIsInstance(first[0], AppNotification)
        self.assertEqual((first[0].app_id, first[0].kind, first[0].body, first[0].state),
                         ("app1", "DeliverData", b"<n0/>", NotificationState.PENDING))
        second = await a.transaction(claim_notifications, "app1", "a", NOW, 10)
        self.assertEqual([n.id for n in second], ids[2:])  # the first two are in flight

    async def test_another_node_waits_until_the_claims_are_done(self) -> None:
        a, b = await self.two_nodes()
        ids = self.store(4)
        claimed = await a.transaction(claim_notifications, "app1", "a", NOW, 2)
        self.assertEqual(await b.transaction(claim_notifications, "app1", "b", NOW, 10), [])
        self.assertEqual(await b.transaction(finish_notifications, "b", ids[:2]), [])
        self.assertEqual(await a.transaction(finish_notifications, "a", [n.id for n in claimed]),
                         ids[:2])
        rest = await b.transaction(claim_notifications, "app1", "b", NOW, 10)
        self.assertEqual([n.id for n in rest], ids[2:])
        self.assertEqual(self.sql("SELECT id FROM app_notifications ORDER BY id"),
                         [(i,) for i in ids[2:]])

    async def test_released_claims_wake_the_nodes_and_go_to_the_next_claimer(self) -> None:
        a, b = await self.two_nodes()
        heard: list[str] = []
        listener = Listener(reactor, self.url, [BROADCAST], lambda c, p: heard.append(p))
        self.addCleanup(listener.stop)
        await listener.start()
        ids = self.store(2)
        await a.transaction(claim_notifications, "app1", "a", NOW, 10)
        self.assertEqual(await b.transaction(release_notifications, "b", ids), [])
        self.assertEqual(await a.transaction(release_notifications, "a", ids), ids)
        again = await b.transaction(claim_notifications, "app1", "b", NOW, 10)
        self.assertEqual([n.id for n in again], ids)
        await eventually(lambda: bool(heard))
        self.assertEqual([parse_event(p) for p in heard], [{"kind": "outbox", "app": "app1"}])

    async def test_only_due_pending_unleased_ones_are_claimed_in_line(self) -> None:
        a, _ = await self.two_nodes()
        due = self.store(1)
        self.store(1, state="kept")
        self.store(1, state="unencodable")
        self.store(1, leased_until=NOW + 60)  # fetched by FetchMessages
        later = self.store(1)
        waiting = self.store(1, next_attempt=NOW + 10)  # a retry not due yet...
        behind = self.store(1)  # ...holds back what came after it
        claimed = await a.transaction(claim_notifications, "app1", "a", NOW, 10)
        self.assertEqual([n.id for n in claimed], due + later)
        claimed = await a.transaction(claim_notifications, "app1", "a", NOW + 10, 10)
        self.assertEqual([n.id for n in claimed], waiting + behind)

    async def test_an_expired_claim_goes_to_another_node(self) -> None:
        a, b = await self.two_nodes()
        ids = self.store(2)
        await a.transaction(claim_notifications, "app1", "a", NOW, 10, lease=0.2)
        await task.deferLater(reactor, 0.3, lambda: None)
        taken = await b.transaction(claim_notifications, "app1", "b", NOW, 10)
        self.assertEqual([n.id for n in taken], ids)
        self.assertEqual(await a.transaction(finish_notifications, "a", ids), [])  # too late

    async def test_a_restarted_node_gives_back_what_it_had_claimed(self) -> None:
        a, b = await self.two_nodes()
        ids = self.store(2)
        await a.transaction(claim_notifications, "app1", "a", NOW, 10)
        await a.transaction(register_node, "a")
        taken = await b.transaction(claim_notifications, "app1", "b", NOW, 10)
        self.assertEqual([n.id for n in taken], ids)

    async def test_a_row_locked_elsewhere_is_skipped_not_waited_for(self) -> None:
        a, _ = await self.two_nodes()
        ids = self.store(3)
        with psycopg.connect(self.url) as other:  # holds a row lock until the block ends
            other.execute("SELECT 1 FROM app_notifications WHERE id = %s FOR UPDATE",
                          (ids[1],))
            claimed = await a.transaction(claim_notifications, "app1", "a", NOW, 10)
        self.assertEqual([n.id for n in claimed], [ids[0], ids[2]])

    async def test_applications_are_claimed_independently(self) -> None:
        a, b = await self.two_nodes()
        self.store(1, "app1")
        second = self.store(1, "app2")
        await a.transaction(claim_notifications, "app1", "a", NOW, 10)
        other = await b.transaction(claim_notifications, "app2", "b", NOW, 10)
        self.assertEqual([n.id for n in other], second)
        self.assertEqual(await b.transaction(claim_notifications, "app1", "b", NOW, 10), [])

    async def test_two_nodes_contending_deliver_each_notification_once_in_order(self) -> None:
        a, b = await self.two_nodes()
        ids = self.store(60)
        delivered: list[int] = []
        while len(delivered) < len(ids):
            batches = await gatherResults([
                a.transaction(claim_notifications, "app1", "a", NOW, 5),
                b.transaction(claim_notifications, "app1", "b", NOW, 5),
                b.transaction(claim_notifications, "app1", "b", NOW, 5),
                a.transaction(claim_notifications, "app1", "a", NOW, 5),
            ])
            nodes = {node for node, batch in zip("abba", batches, strict=True) if batch}
            self.assertEqual(len(nodes), 1, batches)  # one node at a time per application
            claimed = sorted(n.id for batch in batches for n in batch if n.id is not None)
            self.assertEqual(claimed, ids[len(delivered):len(delivered) + len(claimed)])
            db = a if nodes == {"a"} else b
            self.assertEqual(await db.transaction(finish_notifications, nodes.pop(), claimed),
                             claimed)
            delivered += claimed
        self.assertEqual(delivered, ids)
        self.assertEqual(self.sql("SELECT count(*) FROM app_notifications"), [(0,)])

    async def test_a_dead_node_reaped_gives_back_its_claims(self) -> None:
        a = await self.migrated()
        await a.transaction(register_node, "dead", 0.2)
        await a.transaction(register_node, "b")
        ids = self.store(2)
        await a.transaction(claim_notifications, "app1", "dead", NOW, 10)
        await task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(await a.transaction(expire_nodes), ["dead"])
        taken = await a.transaction(claim_notifications, "app1", "b", NOW, 10)
        self.assertEqual([n.id for n in taken], ids)

    async def test_the_outbox_of_several_nodes_in_sql(self) -> None:
        """What SharedOutbox does besides claiming: retries, fetches, acks, expiry."""
        a, _ = await self.two_nodes()
        first, second, third = self.store(3)
        claimed, due = await a.transaction(claim_due, "app1", "a", NOW, 1)
        self.assertEqual(([n.id for n in claimed], due), ([first], None))
        entry = claimed[0]
        entry.attempts, entry.next_attempt, entry.updated_at = 1, NOW + 10, NOW
        self.assertTrue(await a.transaction(retry_notification, "a", entry))
        self.assertFalse(await a.transaction(retry_notification, "a", entry))  # not claimed
        # The retry holds back those after it (D-255), and says when it is due.
        self.assertEqual(await a.transaction(claim_due, "app1", "a", NOW, 5), ([], NOW + 10))
        leased, free = await a.transaction(lease_notifications, "app1", NOW, 2, NOW + 60)
        self.assertEqual(([n.id for n in leased], free), ([first, second], 1))
        self.assertEqual(await a.transaction(ack_notifications, "app1", [first, 999]), [first])
        self.assertEqual(await a.transaction(ack_notifications, "app2", [second]), [])
        self.assertEqual(await a.transaction(reset_notifications, "app1", NOW), 0)
        self.sql("UPDATE app_notifications SET state = 'kept' WHERE id = %s", (third,))
        self.assertEqual(await a.transaction(reset_notifications, "app1", NOW), 1)
        self.assertEqual(await a.transaction(expire_notifications, NOW + 1), {"app1": 2})
        self.assertEqual(self.sql("SELECT count(*) FROM app_notifications"), [(0,)])

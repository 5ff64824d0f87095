"""Node leases and terminal ownership on a real PostgreSQL: claims, takeovers between
two nodes, renewal, a dead node's terminals released after its timeout."""

from __future__ import annotations

import itertools

from twisted.internet import reactor, task
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock

from m2mgw.core.postgres.connection import Cursor, Database
from m2mgw.core.postgres.leases import (
    Claim,
    LeaseLost,
    NodeLease,
    check_node,
    claim_terminal,
    expire_nodes,
    held_by,
    lapse_node,
    leave_node,
    owner,
    register_node,
    release_terminal,
    renew_node,
    resume_terminals,
)
from m2mgw.core.postgres.notify import Listener, node_channel, parse_event
from tests.core.postgres_support import PostgresTestCase, eventually

S1, S2 = "A972030000000001", "A972030000000002"


def sleep(seconds: float) -> task.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


def claim_many(cursor: Cursor, serials: list[str], node: str) -> None:
    for serial in serials:
        claim_terminal(cursor, serial, node)


class LeaseTests(PostgresTestCase):
    async def nodes(self, *names: str, timeout: float = 30.0) -> Database:
        db = await self.migrated()
        for name in names:
            await db.transaction(register_node, name, timeout)
        return db

    def test_node_names_must_fit_a_channel_name(self) -> None:
        self.assertEqual(check_node("gw-1.example_a"), "gw-1.example_a")
        for bad in ("", "a b", "ä", "x" * 49, "a;drop"):
            with self.assertRaises(ValueError):
                check_node(bad)

    async def test_a_claim_makes_the_node_the_owner(self) -> None:
        db = await self.nodes("a")
        first = await db.transaction(claim_terminal, S1, "a")
        self.assertEqual((first.serial, first.node, first.taken_from), (S1, "a", None))
        self.assertEqual(await db.transaction(owner, S1), "a")
        self.assertIsNone(await db.transaction(owner, S2))
        again = await db.transaction(claim_terminal, S1, "a")  # a new login on the same node
        self.assertEqual(again.taken_from, None)
        self.assertGreater(again.epoch, first.epoch)

    async def test_a_login_elsewhere_takes_the_terminal_over_and_tells_the_old_node(self) -> None:
        db = await self.nodes("a", "b")
        heard: list[str] = []
        listener = Listener(reactor, self.url, [node_channel("a")],
                            lambda channel, payload: heard.append(payload))
        self.addCleanup(listener.stop)
        await listener.start()
        await db.transaction(claim_terminal, S1, "a")
        taken = await db.transaction(claim_terminal, S1, "b")
        self.assertEqual(taken.taken_from, "a")
        self.assertEqual(await db.transaction(owner, S1), "b")
        await eventually(lambda: bool(heard))
        self.assertEqual([parse_event(p) for p in heard],
                         [{"kind": "takeover", "serial": S1, "node": "b", "epoch": taken.epoch}])

    async def test_one_renewal_keeps_every_terminal_of_the_node(self) -> None:
        db = await self.nodes("a", timeout=0.5)
        serials = [f"A9720300{i:08d}" for i in range(200)]
        await db.transaction(claim_many, serials, "a")
        self.assertTrue(await db.transaction(renew_node, "a", 30.0))
        await sleep(0.6)  # past the first timeout
        owned = self.sql("SELECT count(*) FROM terminal_owners o JOIN nodes n USING (node) "
                         "WHERE n.expires_at >= now()")
        self.assertEqual(owned, [(200,)])
        self.assertEqual(await db.transaction(owner, serials[-1]), "a")

    async def test_a_dead_node_loses_its_terminals_after_its_timeout(self) -> None:
        db = await self.nodes("b")
        await db.transaction(register_node, "a", 0.3)
        await db.transaction(claim_terminal, S1, "a")
        self.assertEqual(await db.transaction(owner, S1), "a")
        await sleep(0.4)
        self.assertIsNone(await db.transaction(owner, S1))  # before anyone reaps it
        self.assertFalse(await db.transaction(renew_node, "a"))  # lapsed stays lapsed
        with self.assertRaises(LeaseLost):
            await db.transaction(claim_terminal, S2, "a")
        self.assertEqual(await db.transaction(expire_nodes), ["a"])
        self.assertEqual(self.sql("SELECT serial FROM terminal_owners"), [])
        self.assertEqual(self.sql("SELECT node FROM nodes"), [("b",)])
        claim = await db.transaction(claim_terminal, S1, "b")  # its next login, anywhere
        self.assertEqual(claim.taken_from, None)

    async def test_a_restarted_node_holds_nothing_of_its_last_run(self) -> None:
        db = await self.nodes("a")
        await db.transaction(claim_many, [S1, S2], "a")
        self.assertEqual(await db.transaction(register_node, "a"), 2)
        self.assertIsNone(await db.transaction(owner, S1))

    async def test_only_the_owner_releases_a_terminal(self) -> None:
        db = await self.nodes("a", "b")
        await db.transaction(claim_terminal, S1, "a")
        await db.transaction(claim_terminal, S1, "b")
        self.assertFalse(await db.transaction(release_terminal, S1, "a"))  # too late
        self.assertEqual(await db.transaction(owner, S1), "b")
        self.assertTrue(await db.transaction(release_terminal, S1, "b"))
        self.assertIsNone(await db.transaction(owner, S1))

    async def test_a_node_that_leaves_releases_its_terminals_at_once(self) -> None:
        db = await self.nodes("a", "b")
        await db.transaction(claim_many, [S1, S2], "a")
        await db.transaction(claim_terminal, S2, "b")
        await db.transaction(leave_node, "a")
        self.assertEqual(self.sql("SELECT serial, node FROM terminal_owners"), [(S2, "b")])

    async def test_a_node_that_lapses_resumes_what_nobody_took_since(self) -> None:
        db = await self.nodes("a", "b")
        await db.transaction(claim_many, [S1, S2], "a")
        await db.transaction(lapse_node, "a")
        self.assertIsNone(await db.transaction(owner, S1))  # nobody's at once
        self.assertEqual(await db.transaction(held_by, "a"), [S1, S2])
        await db.transaction(claim_terminal, S2, "b")  # its next login, on b
        held = await db.transaction(held_by, "a")
        await db.transaction(register_node, "a")  # the restart
        resumed = await db.transaction(resume_terminals, "a", held)
        self.assertEqual(list(resumed), [S1])
        self.assertEqual(await db.transaction(owner, S1), "a")
        self.assertEqual(await db.transaction(owner, S2), "b")

    async def test_two_nodes_contending_for_one_terminal_see_every_takeover(self) -> None:
        node_a = await self.nodes("a", "b")
        node_b = self.database()
        await node_b.open()
        claims: list[Claim] = await gatherResults([
            (node_a if i % 2 else node_b).transaction(claim_terminal, S1, "a" if i % 2 else "b")
            for i in range(40)
        ])
        ordered = sorted(claims, key=lambda c: c.epoch)
        self.assertEqual(len({c.epoch for c in claims}), 40)
        for before, after in itertools.pairwise(ordered):
            expected = before.node if before.node != after.node else None
            self.assertEqual(after.taken_from, expected, (before, after))
        self.assertEqual(await node_a.transaction(owner, S1), ordered[-1].node)


class NodeLeaseTests(PostgresTestCase):
    async def test_it_registers_renews_reaps_the_dead_and_leaves(self) -> None:
        db = await self.migrated()
        await db.transaction(register_node, "dead", 0.2)
        await db.transaction(claim_terminal, S1, "dead")
        lost: list[bool] = []
        lease = NodeLease(db, "a", Clock(), lambda: lost.append(True))
        await lease.start()
        self.assertTrue(lease.live)
        await db.transaction(claim_terminal, S2, "a")
        await sleep(0.3)
        await lease.renew()
        self.assertEqual(self.sql("SELECT node FROM nodes"), [("a",)])
        self.assertEqual(self.sql("SELECT serial, node FROM terminal_owners"), [(S2, "a")])
        await lease.stop()
        self.assertEqual((self.sql("SELECT * FROM nodes"), lost), ([], []))

    async def test_a_lapsed_lease_is_lost_for_good(self) -> None:
        db = await self.migrated()
        lost: list[bool] = []
        lease = NodeLease(db, "a", Clock(), lambda: lost.append(True), timeout=0.2)
        await lease.start()
        await sleep(0.3)
        await lease.renew()
        self.assertEqual((lost, lease.live), ([True], False))

    async def test_without_the_database_it_gives_up_after_the_timeout(self) -> None:
        db = await self.migrated()
        clock = Clock()
        lost: list[bool] = []
        lease = NodeLease(db, "a", clock, lambda: lost.append(True), timeout=30, interval=10)
        await lease.start()
        db.close()  # every renewal fails from now on
        clock.advance(10)
        clock.advance(10)
        self.assertEqual((lost, lease.live), ([], True))  # 20 s: the lease still runs
        clock.advance(10)
        self.assertEqual((lost, lease.live), ([True], False))
        clock.advance(10)
        self.assertEqual(lost, [True])  # once

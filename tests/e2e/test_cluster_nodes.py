"""Two gateway nodes in this process on one throw-away PostgreSQL, for what the
process tests (tests/test_cluster.py) cannot steer: a node that loses its lease, and a
LOGIN whose terminal changed while its node heard nothing."""

from __future__ import annotations

import itertools
from typing import Any

import psycopg
import pytest
from twisted.trial import unittest

from m2mgw.core.model import CredentialSet
from m2mgw.protocol import terminal as role
from m2mgw.service import GatewayService
from tests.core.postgres_support import eventually
from tests.pgcluster import PgCluster

from .support import TestTerminal, client_for, connect_udp, provisioned, start_gateway

pytestmark = pytest.mark.cluster
_schemas = itertools.count(1)


class TwoNodes(unittest.TestCase):
    @pytest.fixture(autouse=True)
    def _database(self, postgres_cluster: PgCluster) -> None:
        self.url = postgres_cluster.create_schema(f"nodes_{next(_schemas)}")

    async def node(self, name: str) -> GatewayService:
        extra = (f"[registry]\nurl = {self.url}\nnode = {name}\nnode_lease = 3s\n"
                 f"master_key_file = {self.key}\n[protocol]\nsync_trap_wait = 1s\n")
        gateway: GatewayService = await start_gateway(self.mktemp() + ".db", extra)
        self.addCleanup(gateway.stopService)
        return gateway

    async def setUp(self) -> None:  # type: ignore[override]
        self.key = self.mktemp() + ".key"
        self.a = await self.node("a")
        self.b = await self.node("b")
        self.record = provisioned(0)
        await self.a.registry.add(self.record)
        await eventually(lambda: self.b.registry.get(self.record.serial or "") is not None)

    def terminal(self, gateway: GatewayService, **kwargs: Any) -> TestTerminal:
        terminal = TestTerminal(client_for(self.record, "udp", **kwargs))
        _, port = connect_udp(terminal, gateway.udp_port or 0)
        self.addCleanup(port.stopListening)
        return terminal

    async def test_a_node_that_lost_its_lease_drops_its_sessions_and_joins_again(self) -> None:
        serial = self.record.serial or ""
        terminal = self.terminal(self.a)
        terminal.send(terminal.client.login())
        await terminal.wait_type(role.LoggedIn)
        cluster = self.a.cluster
        assert cluster is not None
        await eventually(lambda: serial in cluster._epochs)  # claimed
        # The database thinks A dead (a long pause, say): its next renewal finds out.
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("UPDATE nodes SET expires_at = now() - interval '1 second' "
                         "WHERE node = 'a'")
        await cluster.lease.renew()
        self.assertNotIn(serial, self.a.engine.sessions)
        self.assertIn("cluster: node a holds no lease", self.a.problems())
        await eventually(lambda: cluster.lease.live, timeout=5)
        self.assertEqual(self.a.problems(), [])
        # The terminal logs in again and its session is A's once more.
        terminal.send(terminal.client.login())
        await terminal.wait_type(role.LoggedIn)
        await eventually(lambda: serial in cluster._epochs)

    async def test_a_login_reads_the_terminal_record_first(self) -> None:
        """B heard nothing of new credentials set on A (its listener was down): the
        LOGIN made with them succeeds on B all the same, since B reads the record first."""
        cluster = self.b.cluster
        assert cluster is not None
        cluster.listener.stop()
        record = self.a.registry.get(self.record.serial or "")
        assert record is not None and record.current is not None
        record.current = CredentialSet(uplink_password="N3wUpLnk", downlink_password="N3wDnLnk",
                                       base_key=record.current.base_key)
        await self.a.registry.save(record)
        stale = self.b.registry.get(self.record.serial or "")
        assert stale is not None and stale.current is not None
        self.assertNotEqual(stale.current.uplink_password, "N3wUpLnk")
        self.record = record
        terminal = self.terminal(self.b)
        terminal.send(terminal.client.login())
        event = await terminal.wait_for(lambda e: isinstance(e, role.LoggedIn | role.LoginFailed))
        self.assertIsInstance(event, role.LoggedIn)
        self.assertEqual(stale.current.uplink_password, "N3wUpLnk")


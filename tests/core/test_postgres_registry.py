"""What only the PostgreSQL registry does: ids in blocks shared by nodes, the master
key recorded in the database, secrets sealed at rest, one-line errors. The behaviour it
shares with the other registries is tested on it in the shared suites
(``tests/core/registry_backends.py``)."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial import unittest

from m2mgw.core.model import CredentialSet, LogEntry, Request
from m2mgw.core.postgres.connection import PostgresError, PostgresUnavailable, redact
from m2mgw.core.postgres.registry import PostgresRegistry
from m2mgw.core.registry import RegistryError
from m2mgw.core.vault import PREFIX, VaultError, create_key
from tests.core.postgres_support import eventually
from tests.core.registry_backends import PostgresBackend
from tests.core.test_registry import SERIAL, make_request, make_terminal
from tests.pgcluster import free_port

NUMBERED = ("terminals", "requests", "sms_outbox", "app_notifications", "app_messages")


class PostgresRegistryTest(PostgresBackend, unittest.TestCase):
    def node(self, name: str, **kw: object) -> PostgresRegistry:
        registry = PostgresRegistry(self.url, reactor, node=name,
                                    master_key_file=self.key_path, **kw)  # type: ignore[arg-type]
        self.addCleanup(registry.close)
        return registry

    async def block_size(self, size: int) -> None:
        """Migrate the schema, then make the id blocks ``size`` long (instead of 1000)."""
        registry = self.node("migrator")
        await registry.open()
        await registry.close()  # gives its blocks back: the sequences restart at 1
        for table in NUMBERED:
            self.sql(f"ALTER TABLE {table} ALTER COLUMN id SET INCREMENT BY {size}")

    def last_block(self, table: str) -> int:
        [(last,)] = self.sql(f"SELECT last_value FROM {table}_id_seq")
        return int(last)

    async def enqueue(self, registry: PostgresRegistry, count: int) -> list[Request]:
        return [await registry.enqueue(make_request()) for _ in range(count)]

    async def test_nodes_number_rows_from_blocks_that_never_overlap(self) -> None:
        a, b = self.node("a"), self.node("b")
        await a.open()
        await b.open()
        await a.add(make_terminal(serial=SERIAL))
        from_a = await self.enqueue(a, 3)
        from_b = await self.enqueue(b, 3)
        self.assertEqual([r.id for r in from_a], [1, 2, 3])
        self.assertEqual([r.id for r in from_b], [1001, 1002, 1003])
        self.assertEqual(self.stored("requests", "id"), [(1,), (2,), (3,), (1001,), (1002,),
                                                           (1003,)])
        # A closes while B holds the block after its own: A's unused ids stay unused.
        await a.close()
        again = self.node("a")
        await again.open()
        self.assertEqual((await again.enqueue(make_request())).id, 2001)

    async def test_a_node_takes_the_next_block_once_half_of_one_is_used(self) -> None:
        await self.block_size(10)
        registry = self.node("a")
        await registry.open()
        self.assertEqual(self.last_block("requests"), 1)
        self.assertEqual([r.id for r in await self.enqueue(registry, 4)], list(range(1, 5)))
        self.assertEqual(self.last_block("requests"), 1)
        self.assertEqual((await registry.enqueue(make_request())).id, 5)  # half used
        await eventually(lambda: self.last_block("requests") == 11)
        self.assertEqual([r.id for r in await self.enqueue(registry, 6)], list(range(6, 12)))
        self.assertEqual(self.last_block("requests"), 11)
        self.assertEqual(registry.ids.synchronous_takes, 0)

    async def test_ids_that_run_out_are_taken_at_once_and_twice_as_many(self) -> None:
        await self.block_size(4)
        registry = self.node("a")
        await registry.open()
        # Seven in one reactor turn: the block taken when two were left cannot have come.
        taken = [registry.enqueue(make_request()) for _ in range(7)]
        self.assertEqual(registry.ids.synchronous_takes, 1)
        ids = [(await d).id or 0 for d in taken]
        # Two blocks came at once (5-12, or 9-16 if the slower take got 5 first: what
        # it brings is then not used, so that ids only grow).
        self.assertEqual(ids[:4], [1, 2, 3, 4])
        self.assertIn(ids[4:], ([5, 6, 7], [9, 10, 11]))
        self.assertEqual(self.stored("requests", "id"), [(i,) for i in ids])
        later = [r.id or 0 for r in await self.enqueue(registry, 8)]
        self.assertEqual(later, sorted(set(later)))
        self.assertGreater(later[0], ids[-1])

    async def test_a_failing_take_refuses_new_rows_for_a_while(self) -> None:
        await self.block_size(2)
        registry = self.node("a")
        await registry.open()
        self.sql("REVOKE USAGE, UPDATE ON SEQUENCE requests_id_seq FROM m2mgw")
        taken = [registry.enqueue(make_request()) for _ in range(2)]
        with self.assertRaises(RegistryError) as caught:
            registry.enqueue(make_request())
        self.assertIn("no requests id at hand: permission denied for sequence",
                      str(caught.exception))
        self.sql("GRANT USAGE, UPDATE ON SEQUENCE requests_id_seq TO m2mgw")
        with self.assertRaises(RegistryError) as caught:  # not tried again at once
            registry.enqueue(make_request())
        self.assertIn("did not answer a moment ago", str(caught.exception))
        self.assertEqual([(await d).id for d in taken], [1, 2])
        self.assertEqual(self.stored("requests", "id"), [(1,), (2,)])

    async def test_a_nul_in_text_is_stored_replaced_not_refused(self) -> None:
        registry = self.node("a")
        await registry.open()
        terminal = await registry.add(make_terminal(serial=SERIAL))
        terminal.software_version = "V1\x002"
        await registry.save(terminal)  # PostgreSQL's text cannot hold it
        await registry.log_committed(LogEntry(time=1.0, serial=SERIAL, direction="in",
                                              event="x", detail="a\x00b"))
        reopened = await self.reopen(registry)
        self.assertEqual(reopened.get(SERIAL).software_version, "V1\ufffd2")
        self.assertEqual([e.detail for e in await reopened.messages(SERIAL)], ["a\ufffdb"])

    async def test_identity_and_shared_data(self) -> None:
        a = self.node("a")
        await a.open()
        identity = a.identity()
        self.assertEqual((identity.backend, identity.location), ("postgresql", redact(self.url)))
        self.assertRegex(identity.instance_id, r"^[0-9a-f]{32}$")
        await a.add(make_terminal(serial=SERIAL))
        b = self.node("b")
        await b.open()  # another node loads what the first committed
        self.assertEqual(b.identity().instance_id, identity.instance_id)
        self.assertEqual(b.get(SERIAL), a.get(SERIAL))
        self.assertEqual(a.node, "a")

    async def test_secrets_are_sealed_at_rest_under_the_recorded_key(self) -> None:
        registry = self.node("a")
        await registry.open()
        terminal = make_terminal(serial=SERIAL, session_key="S" * 16, current=CredentialSet(
            uplink_password="Up123456", downlink_password="Dn123456", base_key="K" * 24))
        await registry.add(terminal)
        [(current, session_key)] = self.stored("terminals", '"current"', "session_key")
        self.assertTrue(bytes(current).startswith(PREFIX))
        self.assertTrue(bytes(session_key).startswith(PREFIX))
        self.assertNotIn(b"Up123456", bytes(current))
        [(check,)] = self.sql("SELECT value FROM registry_meta WHERE name = 'master_key_check'")
        self.assertEqual(check, registry._vault.check_value)  # type: ignore[union-attr]
        await registry.close()

        another = self.mktemp()
        create_key(another)
        for key_file, refusal in ((self.mktemp(), "is missing"), (another, "does not match")):
            other = PostgresRegistry(self.url, reactor, node="b", master_key_file=key_file)
            with self.assertRaises(VaultError) as caught:
                await other.open()
            self.assertIn(refusal, str(caught.exception))
            self.assertIn(check, str(caught.exception))
            self.assertFalse(other.is_open)

    async def test_errors_are_one_line_registry_errors_without_the_password(self) -> None:
        url = f"postgresql://m2mgw:secret@127.0.0.1:{free_port()}/m2mgw"
        registry = PostgresRegistry(url, reactor, node="a", master_key_file=self.key_path)
        with self.assertRaises(PostgresUnavailable) as caught:
            await registry.open()
        message = str(caught.exception)
        self.assertIsInstance(caught.exception, RegistryError)
        self.assertNotIn("secret", message)
        self.assertNotIn("\n", message)
        self.assertFalse(registry.is_open)
        await registry.close()
        self.assertTrue(issubclass(PostgresError, RegistryError))

    async def test_sql_failing_at_open_is_a_one_line_postgres_error(self) -> None:
        await self.block_size(1000)
        self.sql("DROP TABLE counters")
        registry = self.node("a")
        with self.assertRaises(PostgresError) as caught:
            await registry.open()
        message = str(caught.exception)
        self.assertIn("cannot open", message)
        self.assertIn('relation "counters" does not exist', message)
        self.assertNotIn("\n", message)
        self.assertFalse(registry.is_open)

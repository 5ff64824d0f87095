"""The registry's identity, and the lock that tells other processes a gateway owns it."""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from twisted.internet import reactor
from twisted.trial import unittest

from m2mgw.core.registry import RegistryError
from m2mgw.core.registry.sqlite import SqliteRegistry, lock_holder, stored_instance_id
from tests.core.registry_backends import db_rows
from tests.core.test_registry import REPO, SERIAL, make_terminal


class OwnershipTests(unittest.TestCase):
    """The registry's identity and the lock that tells other processes it is open."""

    def setUp(self) -> None:
        self.path = str(Path(self.mktemp()).resolve())
        os.makedirs(os.path.dirname(self.path), exist_ok=True)

    async def open(self) -> SqliteRegistry:
        registry = SqliteRegistry(self.path, reactor)
        await registry.open()
        self.addCleanup(registry.close)
        return registry

    async def reopen(self, registry: SqliteRegistry) -> SqliteRegistry:
        await registry.close()
        return await self.open()

    async def test_instance_id_is_created_once_and_reported_with_the_path(self) -> None:
        registry = await self.open()
        identity = registry.identity()
        self.assertEqual((identity.backend, identity.location), ("sqlite", self.path))
        self.assertRegex(identity.instance_id, r"^[0-9a-f]{32}$")
        self.assertEqual(stored_instance_id(self.path), identity.instance_id)
        reopened = await self.reopen(registry)
        self.assertEqual(reopened.identity(), identity)
        self.assertEqual(identity.describe(), {
            "backend": "sqlite", "path": self.path, "instance_id": identity.instance_id,
        })
        other = Path(self.mktemp()).resolve()
        other.parent.mkdir(parents=True, exist_ok=True)
        second = SqliteRegistry(str(other), reactor)
        await second.open()
        self.addCleanup(second.close)
        self.assertNotEqual(second.identity().instance_id, identity.instance_id)
        self.assertIsNone(stored_instance_id(str(other) + ".absent"))

    async def test_second_open_is_refused_until_the_first_closes(self) -> None:
        first = await self.open()
        self.assertEqual(lock_holder(self.path), str(os.getpid()))
        with self.assertRaisesRegex(
            RegistryError, rf"^registry {self.path} is in use by another m2mgw process "
            rf"\(pid {os.getpid()}\)$"
        ):
            await SqliteRegistry(self.path, reactor).open()
        await first.close()
        self.assertIsNone(lock_holder(self.path))
        await self.open()

    async def test_failed_open_releases_the_lock(self) -> None:
        conn = sqlite3.connect(self.path)
        conn.execute("PRAGMA user_version = 99")
        conn.close()
        with self.assertRaisesRegex(RegistryError, "newer"):
            await SqliteRegistry(self.path, reactor).open()
        self.assertIsNone(lock_holder(self.path))

    async def test_missing_directory_is_one_registry_error(self) -> None:
        missing = os.path.join(self.path, "absent", "m2mgw.db")
        with self.assertRaisesRegex(RegistryError, r"cannot open database: .*No such file"):
            await SqliteRegistry(missing, reactor).open()

    async def test_a_killed_owner_leaves_no_lock_behind(self) -> None:
        script = textwrap.dedent(
            f"""
            import sys
            from twisted.internet import defer, task
            from m2mgw.core.registry.sqlite import SqliteRegistry

            async def main(reactor):
                await SqliteRegistry({self.path!r}, reactor).open()
                print("ok", flush=True)
                await defer.Deferred()

            task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
            """
        )
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(proc.wait)
        self.addCleanup(proc.kill)
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        self.assertEqual(proc.stdout.readline() if ready else b"", b"ok\n")
        self.assertEqual(lock_holder(self.path), str(proc.pid))
        with self.assertRaisesRegex(RegistryError, rf"\(pid {proc.pid}\)"):
            await SqliteRegistry(self.path, reactor).open()
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=20)
        self.assertIsNone(lock_holder(self.path))
        await self.open()

    async def test_read_only_registry_reads_beside_the_owner(self) -> None:
        owner = await self.open()
        await owner.add(make_terminal(serial=SERIAL))
        reader = SqliteRegistry(self.path, reactor, read_only=True)
        await reader.open()
        self.addCleanup(reader.close)
        self.assertEqual([t.serial for t in reader.terminals()], [SERIAL])
        self.assertEqual(reader.identity(), owner.identity())
        self.assertEqual(lock_holder(self.path), str(os.getpid()))
        self.assertRaisesRegex(RegistryError, "read-only", reader.add,
                               make_terminal("860000000000002"))
        await owner.add(make_terminal("860000000000003"))  # the owner still writes
        self.assertEqual(len(db_rows(self.path, "SELECT id FROM terminals")), 2)

    async def test_read_only_refuses_a_schema_it_would_have_to_migrate(self) -> None:
        sqlite3.connect(self.path).close()
        with self.assertRaisesRegex(RegistryError, "version 0 is older"):
            await SqliteRegistry(self.path, reactor, read_only=True).open()
        self.assertEqual(db_rows(self.path, "PRAGMA user_version"), [(0,)])
        with self.assertRaisesRegex(RegistryError, "cannot open database"):
            await SqliteRegistry(self.path + ".absent", reactor, read_only=True).open()
        self.assertFalse(os.path.exists(self.path + ".absent"))

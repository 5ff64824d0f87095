"""Secrets at rest on real SQLite files (D-280..D-287): nothing secret in the database
or its WAL in plaintext, values right after a restart, migration of a plaintext file,
refusal without the right key, values moved between rows detected, private files."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from twisted.internet import reactor
from twisted.trial import unittest

from m2mgw.config import default_key_path
from m2mgw.core.model import Application, CredentialSet, Request, Terminal
from m2mgw.core.registry import OutgoingSms, RegistryError
from m2mgw.core.registry.migrations import SEALING_MIGRATION, Migration, load_migrations
from m2mgw.core.registry.sqlite import SqliteRegistry
from m2mgw.core.vault import PREFIX, Vault
from m2mgw.protocol import messages as m
from m2mgw.protocol.constants import Command, SecurityOp
from m2mgw.protocol.tlv import Tlv
from tests.core.registry_backends import db_rows

SERIAL = "A972030000000001"
OTHER_SERIAL = "A972030000000002"
UPLINK, DOWNLINK, BASE_KEY = "Up1ink0A", "Dnl1nk0B", "BaseKey0123456789ABCDEF0"
NEXT_UPLINK = "NewUp1nk"
SESSION_KEY = "Sess1onKey012345"
APP_PASSWORD, APP_BASE_KEY, APP_NEXT_KEY = "AppPassw0rd", "AppBaseKey012345", "NextBaseKey01234"
PIN = "PIN98765"
#: What a TRANSPARENT_DATA request to a terminal carries: not a platform secret.
USER_DATA = b"plain user data 0123"
SECRETS = [UPLINK, DOWNLINK, BASE_KEY, NEXT_UPLINK, SESSION_KEY, APP_PASSWORD, APP_BASE_KEY,
           APP_NEXT_KEY, PIN]
SHIPPED = load_migrations()
#: The schema from before sealing: what an earlier m2mgw wrote, in plaintext.
BEFORE = [mig for mig in SHIPPED if mig.version < next(
    mig.version for mig in SHIPPED if mig.name == SEALING_MIGRATION)]
#: Today's schema without the sealing migration, numbered 1..N: no key, so plaintext.
UNSEALED = [Migration(n, mig.name, mig.sql) for n, mig in enumerate(
    (mig for mig in SHIPPED if mig.name != SEALING_MIGRATION), start=1)]


def copy_to_schema(source: str, target: str, migrations: list[Migration]) -> None:
    """``source``'s rows in a new file ``target`` at the schema of ``migrations``, in the
    columns both have: what an older m2mgw wrote, since later migrations only add
    tables and columns, which today's code (writing ``source``) needs."""
    conn = sqlite3.connect(target, isolation_level=None)
    try:
        for mig in migrations:
            conn.executescript(mig.sql)
        conn.execute(f"PRAGMA user_version = {len(migrations)}")
        conn.execute("ATTACH DATABASE ? AS newer", (source,))
        conn.execute("BEGIN")
        tables = conn.execute("SELECT name FROM main.sqlite_master "
                              "WHERE type = 'table' AND name <> 'sqlite_sequence'").fetchall()
        for (table,) in tables:
            newer = {row[1] for row in conn.execute(f"PRAGMA newer.table_info({table})")}
            columns = ", ".join(f'"{row[1]}"' for row in conn.execute(
                f"PRAGMA main.table_info({table})") if row[1] in newer)
            conn.execute(f"INSERT OR REPLACE INTO main.{table} ({columns}) "
                         f"SELECT {columns} FROM newer.{table}")
        conn.execute("COMMIT")
    finally:
        conn.close()


def credentials(uplink: str = UPLINK) -> CredentialSet:
    return CredentialSet(uplink_password=uplink, downlink_password=DOWNLINK, base_key=BASE_KEY)


def security_config() -> Request:
    """A queued SECURITY_CONFIG op 0: fresh passwords and a Base Key in its body."""
    tlvs = [Tlv.of(0xE025, NEXT_UPLINK), Tlv.of(0xE028, DOWNLINK), Tlv.of(0xE036, BASE_KEY)]
    body = m.SecurityConfig(SecurityOp.SET, tlvs=tlvs).encode_body()
    return Request(serial=SERIAL, command=Command.SECURITY_CONFIG, body=body,
                   created_at=1.0, expires_at=2e9, origin="registration")


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class SealedRegistryTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = str(Path(self.mktemp()).resolve())
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.key_path = default_key_path(self.path)

    async def open(self, **kw: object) -> SqliteRegistry:
        registry = SqliteRegistry(self.path, reactor, **kw)  # type: ignore[arg-type]
        await registry.open()
        self.addCleanup(registry.close)
        return registry

    async def fill(self, registry: SqliteRegistry) -> None:
        """A terminal with every kind of secret, an application, a queued op 0, an SMS
        and a SIM PIN reported by SECURITY_CONFIG op 4."""
        terminal = Terminal(imei="860000000000001", serial=SERIAL, current=credentials(),
                            pending=credentials(NEXT_UPLINK), session_key=SESSION_KEY)
        await registry.add(terminal)
        await registry.add(Terminal(imei="860000000000002", serial=OTHER_SERIAL,
                                    current=credentials("Other0up")))
        await registry.add_application(Application(
            app_id="EC0001", password=APP_PASSWORD, ec_code="EC0001", base_key=APP_BASE_KEY,
            next_base_key=APP_NEXT_KEY, next_base_key_from=2_000_000_000))
        request = await registry.enqueue(security_config())
        request.answer_body = b"\x00" + Tlv.of(0xE001, PIN).encode()
        await registry.update_request(request)
        await registry.enqueue(Request(serial=SERIAL, command=Command.TRANSPARENT_DATA,
                                       body=USER_DATA, created_at=1.0, expires_at=2e9,
                                       origin="admin"))
        await registry.enqueue_sms(OutgoingSms(msisdn="8613800138000", port=2862,
                                               message=b"header" + request.body, created_at=1.0))
        await registry.store_config(SERIAL, {0xE001: PIN.encode(), 0x0011: b"\x00\x3c"},
                                    "reported")

    def raw(self) -> bytes:
        """The database file and its WAL as bytes on disk."""
        data = Path(self.path).read_bytes()
        wal = Path(self.path + "-wal")
        return data + (wal.read_bytes() if wal.exists() else b"")

    def assert_no_plaintext(self) -> None:
        raw = self.raw()
        self.assertGreater(len(raw), 0)
        found = [secret for secret in SECRETS if secret.encode() in raw]
        self.assertEqual(found, [], "secrets in the file in plaintext")

    def assert_values(self, registry: SqliteRegistry) -> None:
        """The decrypted values are the ones written."""
        terminal = registry.get(SERIAL)
        assert terminal is not None
        self.assertEqual(terminal.current, credentials())
        self.assertEqual(terminal.pending, credentials(NEXT_UPLINK))
        self.assertEqual(terminal.session_key, SESSION_KEY)
        app = registry.application("EC0001")
        assert app is not None
        self.assertEqual((app.password, app.base_key, app.next_base_key),
                         (APP_PASSWORD, APP_BASE_KEY, APP_NEXT_KEY))
        op0, data = registry.queued(SERIAL)
        self.assertEqual(op0.body, security_config().body)
        self.assertEqual(op0.answer_body, b"\x00" + Tlv.of(0xE001, PIN).encode())
        self.assertEqual(data.body, USER_DATA)
        [sms] = registry.pending_sms()
        self.assertEqual(sms.message, b"header" + security_config().body)
        self.assertEqual(registry.config_values(SERIAL),
                         {0xE001: PIN.encode(), 0x0011: b"\x00\x3c"})

    # --- sealed when written, opened when loaded -------------------------------------

    async def test_no_secret_is_in_the_file_and_the_values_survive_a_restart(self) -> None:
        registry = await self.open()
        await self.fill(registry)
        self.assertTrue(os.path.exists(self.path + "-wal"))
        self.assert_no_plaintext()
        self.assertIn(USER_DATA, self.raw(), "only secrets are sealed (D-281)")
        self.assert_values(registry)  # the cache holds plaintext
        await registry.close()
        self.assert_no_plaintext()
        reopened = await self.open()
        self.assert_values(reopened)
        self.assertEqual(
            db_rows(self.path, "SELECT value FROM registry_meta WHERE name = 'master_key_check'"),
            [(Vault(Path(self.key_path).read_bytes()).check_value,)],
        )
        [(stored,)] = db_rows(self.path, f"SELECT current FROM terminals WHERE serial = '{SERIAL}'")
        self.assertTrue(stored.startswith(PREFIX))

    async def test_history_read_back_from_the_file_is_opened(self) -> None:
        registry = await self.open()
        await self.fill(registry)
        [op0, _] = registry.queued(SERIAL)
        op0.state = "succeeded"
        await registry.update_request(op0)
        await registry.close()
        reopened = await self.open()
        reopened._finished.clear()  # read the row, not the cache
        [read] = await reopened.requests(SERIAL, states=["succeeded"])
        self.assertEqual(read.body, security_config().body)

    async def test_files_are_private(self) -> None:
        registry = await self.open()
        await self.fill(registry)
        for path in (self.path, self.path + "-wal", self.path + "-shm", self.key_path):
            self.assertEqual(mode(path), 0o600, path)
        self.assertEqual(len(Path(self.key_path).read_bytes()), 32)

    async def test_an_unchanged_secret_is_not_sealed_again(self) -> None:
        """A terminal is saved at every request sent to it (D-285)."""
        registry = await self.open()
        await self.fill(registry)
        sql = f"SELECT current, session_key FROM terminals WHERE serial = '{SERIAL}'"
        before = db_rows(self.path, sql)
        terminal = registry.get(SERIAL)
        assert terminal is not None
        terminal.next_sequence()
        await registry.save(terminal)
        self.assertEqual(db_rows(self.path, sql), before)
        terminal.session_key = "OtherSessionKey0"
        await registry.save(terminal)
        after = db_rows(self.path, sql)
        self.assertEqual(after[0][0], before[0][0])
        self.assertNotEqual(after[0][1], before[0][1])

    # --- migration ---------------------------------------------------------------------

    async def test_a_plaintext_registry_is_sealed_at_open(self) -> None:
        staging = self.path + ".today"
        old = SqliteRegistry(staging, reactor, migrations=UNSEALED)
        await old.open()
        await self.fill(old)
        for n in range(100):
            await old.add(Terminal(imei=f"86000000001{n:04d}", serial=f"A97203000001{n:04d}",
                                   current=credentials("Retired0")))
        await old.close()
        copy_to_schema(staging, self.path, BEFORE)
        # Removed where SQLite does not zero freed space (its default in many builds):
        # the old rows stay in free pages, which sealing does not rewrite.
        conn = sqlite3.connect(self.path)
        conn.execute("PRAGMA secure_delete = OFF")
        conn.execute("DELETE FROM terminals WHERE serial LIKE 'A97203000001%'")
        conn.commit()
        conn.close()
        raw = self.raw()
        self.assertEqual([s for s in [*SECRETS, "Retired0"] if s.encode() not in raw], [],
                         "the test needs a database with plaintext secrets")
        self.assertFalse(os.path.exists(self.key_path))

        sealed = await self.open()
        self.assertEqual(mode(self.key_path), 0o600)
        self.assert_values(sealed)
        self.assertEqual(db_rows(self.path, "PRAGMA user_version"), [(len(SHIPPED),)])
        self.assert_no_plaintext()
        self.assertNotIn(b"Retired0", self.raw(), "freed copies are gone too (D-284)")
        self.assertIn(USER_DATA, self.raw())
        await sealed.close()
        self.assert_values(await self.open())

    # --- the key -----------------------------------------------------------------------

    async def test_a_missing_key_is_refused_and_not_replaced(self) -> None:
        await (await self.open()).close()
        os.unlink(self.key_path)
        check = db_rows(self.path, "SELECT value FROM registry_meta "
                        "WHERE name = 'master_key_check'")[0][0]
        for read_only in (False, True):
            with self.assertRaisesRegex(
                RegistryError,
                f"^registry {self.path} is encrypted, but the master key file {self.key_path} "
                f"is missing \\(the registry's key has check value {check}, created "
                r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)$",
            ):
                await SqliteRegistry(self.path, reactor, read_only=read_only).open()
        self.assertFalse(os.path.exists(self.key_path))

    async def test_a_different_key_is_refused(self) -> None:
        await (await self.open()).close()
        other = os.urandom(32)
        Path(self.key_path).write_bytes(other)
        with self.assertRaisesRegex(
            RegistryError,
            f"^registry {self.path} is encrypted, but the master key file {self.key_path} does "
            f"not match \\(its check value is {Vault(other).check_value}; the registry's key ",
        ):
            await SqliteRegistry(self.path, reactor).open()
        self.assertEqual(Path(self.key_path).read_bytes(), other)

    async def test_the_key_file_can_be_named(self) -> None:
        named = os.path.join(os.path.dirname(self.path), "keys", "gw.key")
        os.makedirs(os.path.dirname(named))
        registry = await self.open(master_key_file=named)
        await self.fill(registry)
        await registry.close()
        self.assertFalse(os.path.exists(self.key_path))
        owner = await self.open(master_key_file=named)
        self.assert_values(owner)
        reader = await self.open(master_key_file=named, read_only=True)
        self.assert_values(reader)
        await owner.close()
        with self.assertRaisesRegex(RegistryError, "is missing"):
            await SqliteRegistry(self.path, reactor).open()

    async def test_a_new_database_reuses_the_key_file_beside_it(self) -> None:
        Path(self.key_path).write_bytes(bytes(32))
        registry = await self.open()
        await self.fill(registry)
        self.assertEqual(Path(self.key_path).read_bytes(), bytes(32))
        self.assert_no_plaintext()
        self.assertEqual(db_rows(self.path, "SELECT value FROM registry_meta WHERE name = "
                                 "'master_key_check'"), [(Vault(bytes(32)).check_value,)])

    # --- values moved between rows -----------------------------------------------------

    async def swapped(self, table: str, key: str, first: object, second: object,
                      column: str, other_column: str | None = None) -> str:
        """Swap two sealed values (between rows, or columns), then open: the error."""
        registry = await self.open()
        await self.fill(registry)
        await registry.close()
        other_column = other_column or column
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            [(a,)] = conn.execute(f"SELECT {column} FROM {table} WHERE {key} = ?", (first,))
            [(b,)] = conn.execute(f"SELECT {other_column} FROM {table} WHERE {key} = ?",
                                  (second,))
            conn.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", (b, first))
            conn.execute(f"UPDATE {table} SET {other_column} = ? WHERE {key} = ?", (a, second))
        finally:
            conn.close()
        with self.assertRaises(RegistryError) as raised:
            await SqliteRegistry(self.path, reactor).open()
        return str(raised.exception)

    async def test_credentials_swapped_between_terminals_are_detected(self) -> None:
        error = await self.swapped("terminals", "id", 1, 2, "current")
        self.assertEqual(error, "terminals/1/current does not decrypt under the master key: "
                         "it was altered, or moved from another row or column")

    async def test_a_password_moved_to_the_base_key_column_is_detected(self) -> None:
        error = await self.swapped("applications", "app_id", "EC0001", "EC0001",
                                   "password", "base_key")
        self.assertIn("applications/EC0001/password does not decrypt", error)

    async def test_a_plaintext_value_written_into_a_sealed_registry_is_refused(self) -> None:
        """Without the key, nobody can plant a password the gateway would accept."""
        registry = await self.open()
        await self.fill(registry)
        await registry.close()
        conn = sqlite3.connect(self.path)
        conn.execute("UPDATE applications SET password = 'chosen' WHERE app_id = 'EC0001'")
        conn.commit()
        conn.close()
        with self.assertRaisesRegex(RegistryError, "^applications/EC0001/password is stored in "
                                    "plaintext where a sealed value belongs$"):
            await SqliteRegistry(self.path, reactor).open()

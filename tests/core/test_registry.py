"""The registry: cache, persistence, ordering, on both backends; durability and the
schema on real SQLite files."""

from __future__ import annotations

import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from twisted.internet import reactor, task
from twisted.trial import unittest

from m2mgw.core.model import (
    Alarm,
    CredentialSet,
    FileState,
    FileTransaction,
    LogEntry,
    Request,
    RequestState,
    Terminal,
    TerminalState,
)
from m2mgw.core.registry import Registry, RegistryError
from m2mgw.core.registry.migrations import Migration, load_migrations, prepare
from m2mgw.core.registry.sqlite import SqliteRegistry, _configure
from m2mgw.core.vault import is_sealed
from tests.core.registry_backends import (
    MemoryBackend,
    PostgresBackend,
    RegistryContract,
    SqliteBackend,
    db_rows,
)

REPO = Path(__file__).resolve().parents[2]
SERIAL = "A972030000000001"
IMEI = "860000000000001"


def make_terminal(imei: str = IMEI, **kw: object) -> Terminal:
    return Terminal(imei=imei, **kw)  # type: ignore[arg-type]


def make_request(serial: str = SERIAL, body: bytes = b"\x00\x01", **kw: object) -> Request:
    values: dict[object, object] = {
        "serial": serial, "command": 0x0006, "body": body, "created_at": 1000.0,
        "expires_at": 1000.0 + 86400, "origin": "admin",
    }
    values.update(kw)
    return Request(**values)  # type: ignore[arg-type]


class CursorKeeper:
    """A connection that keeps every cursor it hands out alive, as PyPy's collector may:
    a cursor left open keeps its statement active, and COMMIT then fails (issue #16)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.cursors: list[sqlite3.Cursor] = []

    def _kept(self, cursor: sqlite3.Cursor) -> sqlite3.Cursor:
        self.cursors.append(cursor)
        return cursor

    def execute(self, *args: object) -> sqlite3.Cursor:
        return self._kept(self.conn.execute(*args))  # type: ignore[arg-type]

    def executemany(self, *args: object) -> sqlite3.Cursor:
        return self._kept(self.conn.executemany(*args))  # type: ignore[arg-type]

    def executescript(self, script: str) -> sqlite3.Cursor:
        return self._kept(self.conn.executescript(script))

    def rollback(self) -> None:
        self.conn.rollback()


class RegistryTests(RegistryContract):
    """Behaviour every registry backend shares: cache, ordering, what is stored."""

    # --- terminals ----------------------------------------------------------------

    async def test_provides_interface(self) -> None:
        registry = await self.open()
        self.assertIsInstance(registry, Registry)

    async def test_add_and_lookups(self) -> None:
        registry = await self.open()
        terminal = make_terminal(serial=SERIAL, msisdn="8613800138000")
        added = await registry.add(terminal)
        self.assertIs(added, terminal)
        self.assertEqual(terminal.id, 1)
        self.assertGreater(terminal.created_at, 0)
        self.assertIs(registry.get(SERIAL), terminal)
        self.assertIs(registry.by_imei(IMEI), terminal)
        self.assertIs(registry.by_msisdn("13800138000"), terminal)  # national form, PD-30
        self.assertIs(registry.by_msisdn("+86 138 0013 8000"), terminal)
        self.assertEqual(registry.terminals(), [terminal])
        self.assertIsNone(registry.get("A972030000000002"))
        self.assertIsNone(registry.by_imei("860000000000002"))

    async def test_duplicates_are_refused_synchronously(self) -> None:
        registry = await self.open()
        await registry.add(make_terminal(serial=SERIAL, msisdn="8613800138000"))
        self.assertRaises(RegistryError, registry.add, make_terminal())
        self.assertRaises(RegistryError, registry.add,
                          make_terminal("860000000000002", serial=SERIAL))
        self.assertRaises(RegistryError, registry.add,
                          make_terminal("860000000000002", msisdn="+8613800138000"))
        other = await registry.add(make_terminal("860000000000002"))
        other.serial = SERIAL
        self.assertRaises(RegistryError, registry.save, other)
        self.assertEqual(len(registry.terminals()), 2)

    async def test_save_persists_every_field_across_reopen(self) -> None:
        registry = await self.open()
        terminal = await registry.add(make_terminal())
        credentials = CredentialSet(
            uplink_password="Up123456", uplink_expiry=0xFFFFFFFF,
            downlink_password="Dn123456", downlink_expiry=1_900_000_000,
            base_key="K" * 24, base_key_expiry=0xFFFFFFFF, delivered_at=1234.5,
        )
        terminal.serial = SERIAL
        terminal.imsi = "460001234567890"
        terminal.msisdn = "8613800138000"
        terminal.state = TerminalState.LOGGED_IN
        terminal.enabled = False
        terminal.cipher = "aes"
        terminal.require_encryption = True
        terminal.sms_terminal_port = 0
        terminal.sms_wakeup = False
        terminal.allowed_imsis = {"460001234567890", "460009999999999"}
        terminal.current = credentials
        terminal.pending = CredentialSet(uplink_password="a" * 8, downlink_password="b" * 8,
                                         base_key="c" * 16)
        terminal.session_timestamp = 1_700_000_001
        terminal.last_session_timestamp = 1_700_000_000
        terminal.session_key = "S" * 16
        terminal.session_key_expiry = 1_700_086_401
        terminal.protocol_version = 0x0301
        terminal.bearer, terminal.address = "udp", "127.0.0.1:40000"
        terminal.last_seen = 1_700_000_002.5
        terminal.connect_mode, terminal.heartbeat_interval = 1, 60
        terminal.sync_tags = [2, 7, 0x11]
        terminal.software_version = "V1.2"
        self.assertEqual([terminal.next_sequence() for _ in range(3)], [1, 2, 3])
        terminal.next_trans()
        terminal.default_app, terminal.apps = "EC0001", {"EC0001", "EC0002"}
        terminal.config_unverified, terminal.auth_failures = True, 2
        await registry.save(terminal)

        reopened = (await self.reopen(registry)).get(SERIAL)
        self.assertIsNot(reopened, terminal)
        self.assertEqual(reopened, terminal)
        self.assertEqual(reopened.seq_counter, 4)
        self.assertIs(reopened.state, TerminalState.LOGGED_IN)
        self.assertNotIn("Up123456", repr(reopened))  # secrets never reach logs

    async def test_save_reindexes_changed_keys(self) -> None:
        registry = await self.open()
        terminal = await registry.add(make_terminal(serial=SERIAL, msisdn="8613800138000"))
        terminal.serial, terminal.msisdn = "A972030000000009", "8613900139000"
        await registry.save(terminal)
        self.assertIsNone(registry.get(SERIAL))
        self.assertIsNone(registry.by_msisdn("8613800138000"))
        self.assertIs(registry.get("A972030000000009"), terminal)
        self.assertIs(registry.by_msisdn("13900139000"), terminal)
        # the freed keys can be used by another terminal
        await registry.add(make_terminal("860000000000002", serial=SERIAL))
        self.assertRaises(RegistryError, registry.save, make_terminal("860000000000003"))

    async def test_remove_cascades(self) -> None:
        registry = await self.open()
        await registry.add(make_terminal(serial=SERIAL))
        await registry.store_config(SERIAL, {0x0011: b"\x00\x5a"}, "reported")
        request = await registry.enqueue(make_request())
        await registry.remove(IMEI)
        self.assertIsNone(registry.get(SERIAL))
        self.assertEqual(registry.queued(SERIAL), [])
        self.assertEqual(request.state, RequestState.CANCELLED)
        self.assertRaises(RegistryError, registry.remove, IMEI)
        self.assertEqual(self.stored("terminal_config", "tag"), [])
        reopened = await self.reopen(registry)
        self.assertEqual(reopened.terminals(), [])
        self.assertEqual(reopened.request(request.id).state, RequestState.CANCELLED)

    async def test_allocate_serial_unique_and_persisted(self) -> None:
        registry = await self.open()
        await registry.add(make_terminal(serial="A972030000000002"))  # preset serial
        serials = [registry.allocate_serial("A9720300") for _ in range(3)]
        self.assertEqual(serials, ["A972030000000001", "A972030000000003", "A972030000000004"])
        self.assertRaises(RegistryError, registry.allocate_serial, "A972")
        reopened = await self.reopen(registry)
        self.assertEqual(reopened.allocate_serial("A9720300"), "A972030000000005")

    async def test_touch_is_coalesced_and_flushed(self) -> None:
        registry = await self.open()
        terminal = await registry.add(make_terminal(serial=SERIAL))
        for i in range(5):
            registry.touch(SERIAL, 100.0 + i, "tcp", f"127.0.0.1:{40000 + i}")
        registry.touch("UNKNOWN000000000", 1.0, "tcp", "x")  # ignored
        self.assertEqual((terminal.last_seen, terminal.address), (104.0, "127.0.0.1:40004"))
        self.assertEqual(self.stored("terminals", "last_seen"), [(None,)])
        await task.deferLater(reactor, 1.3, lambda: None)  # one flush tick
        self.assertEqual(self.stored("terminals", "last_seen", "address"),
                         [(104.0, "127.0.0.1:40004")])
        registry.touch(SERIAL, 200.0, "udp", "127.0.0.1:50000")
        reopened = await self.reopen(registry)  # close flushes
        self.assertEqual(
            (reopened.get(SERIAL).last_seen, reopened.get(SERIAL).bearer), (200.0, "udp")
        )

    async def test_a_session_save_is_coalesced_and_commits_with_a_durable_write(self) -> None:
        """D-392: what a LOGIN changes waits for the next flush, written narrowly, and a
        committed log entry (a stored uplink) carries it in its transaction."""
        registry = await self.open()
        old = CredentialSet(uplink_password="11111111", downlink_password="22222222",
                            base_key="1" * 24)
        terminal = await registry.add(make_terminal(serial=SERIAL, imsi="460000000000001",
                                                    current=old))
        [(stored_credentials,)] = self.stored("terminals", "current")
        terminal.state = TerminalState.LOGGED_IN
        terminal.session_timestamp, terminal.last_session_timestamp = 5000, 4000
        terminal.session_key, terminal.session_key_expiry = "0123456789ABCDEF", 9000
        terminal.protocol_version, terminal.software_version = 0x0300, "1.01"
        registry.touch(SERIAL, 123.0, "tcp", "127.0.0.1:40000")
        # Not a session column: only a whole save writes the credential sets.
        terminal.current = CredentialSet(uplink_password="33333333",
                                         downlink_password="44444444", base_key="3" * 24)
        registry.save_session(terminal)
        self.assertRaises(RegistryError, registry.save_session, make_terminal("860000000000009"))
        self.assertEqual(self.stored("terminals", "state", "session_timestamp"),
                         [("UNREGISTERED", None)])
        await registry.log_committed(LogEntry(time=1.0, serial=SERIAL, direction="in",
                                              event="uplink-data"))
        self.assertEqual(
            self.stored("terminals", "state", "session_timestamp", "last_session_timestamp",
                        "session_key_expiry", "protocol_version", "software_version",
                        "last_seen", "address"),
            [("LOGGED_IN", 5000, 4000, 9000, 0x0300, "1.01", 123.0, "127.0.0.1:40000")],
        )
        self.assertEqual(self.stored("terminals", "current"), [(stored_credentials,)])
        [(narrow,)] = self.stored("terminals", "session_key")
        terminal.current = old
        await registry.save(terminal)
        [(whole,)] = self.stored("terminals", "session_key")
        self.assertEqual(is_sealed(narrow), is_sealed(whole), "sealed as a whole save seals it")
        reopened = (await self.reopen(registry)).get(SERIAL)
        self.assertEqual((reopened.state, reopened.session_key, reopened.session_timestamp),
                         (TerminalState.LOGGED_IN, "0123456789ABCDEF", 5000))

    async def test_a_whole_save_or_a_removal_takes_a_waiting_session_save(self) -> None:
        registry = await self.open()
        terminal = await registry.add(make_terminal(serial=SERIAL))
        other = await registry.add(make_terminal("860000000000002", serial="A972030000000002"))
        terminal.state = TerminalState.LOGGED_IN
        registry.save_session(terminal)
        terminal.msisdn = "8613800138000"
        await registry.save(terminal)  # everything, the session columns too
        other.state = TerminalState.LOGGED_IN
        registry.save_session(other)
        await registry.remove(other.serial)
        terminal.state = TerminalState.OFFLINE  # in memory only: nothing waits to be written
        reopened = await self.reopen(registry)  # close flushes
        self.assertEqual((reopened.get(SERIAL).state, reopened.get(SERIAL).msisdn),
                         (TerminalState.LOGGED_IN, "8613800138000"))
        self.assertEqual(reopened.get("A972030000000002"), None)

    # --- configuration, alarms, statistics, log -------------------------------------

    async def test_config_values(self) -> None:
        registry = await self.open()
        await registry.add(make_terminal(serial=SERIAL))
        await registry.store_config(SERIAL, {0x0011: b"\x00\x5a", 0x0002: b"cmnet"}, "reported")
        await registry.store_config(SERIAL, {0x0011: b"\x00\x3c"}, "set")
        expected = {0x0011: b"\x00\x3c", 0x0002: b"cmnet"}
        self.assertEqual(registry.config_values(SERIAL), expected)
        self.assertEqual(registry.config_values("UNKNOWN000000000"), {})
        self.assertRaises(RegistryError, registry.store_config, SERIAL, {}, "guess")
        self.assertRaises(RegistryError, registry.store_config, "UNKNOWN000000000", {}, "set")
        self.assertEqual((await self.reopen(registry)).config_values(SERIAL), expected)

    async def test_alarm_state_and_history(self) -> None:
        registry = await self.open()
        await registry.record_alarm(Alarm(serial=SERIAL, code=0x1C, type=3, status=1, time=1.0))
        await registry.record_alarm(Alarm(serial=SERIAL, code=0x20, type=1, status=1, time=2.0))
        await registry.record_alarm(
            Alarm(serial=SERIAL, code=0x1C, type=3, status=0, cleared_code="001C", time=3.0)
        )
        await registry.record_alarm(
            Alarm(serial=None, msisdn="8613800138000", code=0x1C, type=3, status=1, time=4.0)
        )
        history = await registry.alarms(SERIAL)
        self.assertEqual([(a.code, a.status) for a in history], [(0x1C, 0), (0x20, 1), (0x1C, 1)])
        self.assertEqual(history[0].cleared_code, "001C")
        active = await registry.alarms(active_only=True)
        self.assertEqual([(a.serial, a.code) for a in active], [(SERIAL, 0x20)])
        self.assertEqual(len(await registry.alarms()), 4)

    async def test_statistics(self) -> None:
        registry = await self.open()
        await registry.record_statistics(SERIAL, {0x2005: b"\x00\x00\x01\x00"}, 10.0)
        await registry.record_statistics(SERIAL, {0x2005: b"\x00\x00\x02\x00"}, 20.0)
        self.assertEqual(await registry.statistics(SERIAL),
                         [(20.0, 0x2005, b"\x00\x00\x02\x00"), (10.0, 0x2005, b"\x00\x00\x01\x00")])

    async def test_log_is_batched_and_readable(self) -> None:
        registry = await self.open()
        for i in range(3):
            registry.log(LogEntry(time=float(i), serial=SERIAL, direction="in", bearer="tcp",
                                  command_id=0x0003, sequence_id=i, event="heartbeat"))
        registry.log(LogEntry(time=9.0, serial="OTHER00000000000", direction="out", event="x"))
        entries = await registry.messages(SERIAL, limit=2)  # includes unflushed entries
        self.assertEqual([e.sequence_id for e in entries], [2, 1])
        self.assertEqual(entries[0].event, "heartbeat")
        reopened = await self.reopen(registry)
        self.assertEqual(len(await reopened.messages(SERIAL)), 3)

    async def test_committed_log_entries_fire_after_one_shared_commit(self) -> None:
        registry = await self.open()
        entries = [LogEntry(time=float(i), serial=SERIAL, direction="in", event="uplink-data",
                            detail=f"n={i}") for i in range(5)]
        done = [registry.log_committed(e) for e in entries]
        self.assertFalse(any(d.called for d in done), "nothing is committed synchronously")
        for d in done:
            await d
        # Committed: visible to another connection on the file, before any flush tick.
        rows = self.stored("messages", "detail", order="id")
        self.assertEqual([r[0] for r in rows], [f"n={i}" for i in range(5)])
        await registry.close()

    async def test_close_commits_waiting_log_entries(self) -> None:
        registry = await self.open()
        d = registry.log_committed(LogEntry(time=1.0, serial=SERIAL, direction="in",
                                            event="uplink-data", detail="last"))
        await registry.close()
        await d
        self.assertEqual(self.stored("messages", "detail"), [("last",)])

    # --- request queue --------------------------------------------------------------

    async def test_queue_fifo_update_and_expire(self) -> None:
        registry = await self.open()
        await registry.add(make_terminal(serial=SERIAL))
        first = await registry.enqueue(make_request(body=b"1"))
        second = await registry.enqueue(make_request(body=b"2", expires_at=1500.0))
        third = await registry.enqueue(make_request(body=b"3", msg_id="app-7"))
        self.assertEqual([r.id for r in (first, second, third)], [1, 2, 3])
        self.assertEqual(registry.queued(SERIAL), [first, second, third])
        self.assertRaises(RegistryError, registry.enqueue, first)

        first.state, first.sequence_id, first.attempts = RequestState.SENT, 41, 1
        await registry.update_request(first)
        self.assertEqual(registry.queued(SERIAL), [first, second, third])
        first.state, first.result, first.answer_body = RequestState.SUCCEEDED, 0, b"\x00"
        await registry.update_request(first)
        self.assertEqual(registry.queued(SERIAL), [second, third])
        self.assertIs(registry.request(first.id), first)

        expired = await registry.expire_requests(now=1600.0)
        self.assertEqual(expired, [second])
        self.assertEqual(second.state, RequestState.EXPIRED)
        self.assertEqual(registry.queued(SERIAL), [third])
        self.assertEqual(await registry.expire_requests(now=1600.0), [])

        reopened = await self.reopen(registry)
        self.assertEqual(reopened.queued(SERIAL), [third])
        done = reopened.request(first.id)
        self.assertEqual((done.state, done.sequence_id, done.answer_body),
                         (RequestState.SUCCEEDED, 41, b"\x00"))
        history = await reopened.requests(SERIAL)
        self.assertEqual([r.id for r in history], [3, 2, 1])
        only_expired = await reopened.requests(states=["expired"])
        self.assertEqual([r.body for r in only_expired], [b"2"])
        self.assertIs(history[0], reopened.queued(SERIAL)[0])  # live cached instance
        # ids are never reused
        self.assertEqual((await reopened.enqueue(make_request())).id, 4)

    # --- files ------------------------------------------------------------------------

    async def test_file_transactions(self) -> None:
        registry = await self.open()
        ids = [registry.allocate_trans_id() for _ in range(2)]
        self.assertEqual(ids, [1, 2])
        tx = FileTransaction(
            trans_id=ids[0], serial=SERIAL, token="3F9A0C27D1E4B856", path="/tmp/fw.bin",
            name="fw-2.0.bin", version="2.0", size=65536, crc16=0x1D0F, crc32=0x0A1B2C3D,
            created_at=reactor.seconds(), expires_at=reactor.seconds() + 3600,
        )
        await registry.add_file(tx)
        self.assertRaises(RegistryError, registry.add_file, tx)
        self.assertIs(registry.file_by_token("3F9A0C27D1E4B856"), tx)
        self.assertIs(registry.file_by_trans_id(ids[0]), tx)
        self.assertIsNone(registry.file_by_token("0000000000000000"))
        tx.state = FileState.DOWNLOADED
        await registry.update_file(tx)
        reopened = await self.reopen(registry)
        self.assertEqual(reopened.file_by_trans_id(ids[0]), tx)
        self.assertEqual(reopened.allocate_trans_id(), 3)


class SqliteRegistryTest(SqliteBackend, RegistryTests, unittest.TestCase):
    """The shared behaviour on SqliteRegistry, on a real file."""


class MemoryRegistryTest(MemoryBackend, RegistryTests, unittest.TestCase):
    """The shared behaviour on MemoryRegistry."""


class PostgresRegistryTest(PostgresBackend, RegistryTests, unittest.TestCase):
    """The shared behaviour on PostgresRegistry, on a real server."""


class SqliteFileTest(SqliteBackend, unittest.TestCase):
    """What only a file gives: durability across processes, the schema, migrations."""

    def run_child(self, body: str, *, kill: bool) -> None:
        """Run ``body`` (inside ``async def main(reactor, registry)``) in a child process.

        The child prints "ok" when ``body`` is done; then it is SIGKILLed (``kill``) or
        returns, which stops its reactor without an explicit ``close()``.
        """
        script = textwrap.dedent(
            """
            from twisted.internet import defer, task
            from m2mgw.core.model import LogEntry, Request, Terminal
            from m2mgw.core.registry.sqlite import SqliteRegistry

            async def main(reactor):
                registry = SqliteRegistry({path!r}, reactor)
                await registry.open()
            {body}
                print("ok", flush=True)
                if {kill}:
                    await defer.Deferred()  # until killed

            task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
            """
        ).format(path=self.path, body=textwrap.indent(textwrap.dedent(body), " " * 4),
                 kill=kill)
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        line = proc.stdout.readline() if ready else b""
        if kill:
            proc.send_signal(signal.SIGKILL)
        _, errors = proc.communicate(timeout=20)
        self.assertEqual(line, b"ok\n", errors.decode(errors="replace"))
        self.assertEqual(proc.returncode, -signal.SIGKILL if kill else 0)

    async def test_queued_requests_survive_sigkill(self) -> None:
        count = 20
        self.run_child(
            f"""
            await registry.add(Terminal(imei={IMEI!r}, serial={SERIAL!r}))
            await defer.gatherResults([
                registry.enqueue(Request(serial={SERIAL!r}, command=6, body=b"%d" % i,
                                         created_at=1.0, expires_at=1e12, origin="admin"))
                for i in range({count})
            ])
            """,
            kill=True,
        )
        registry = await self.open()
        queued = registry.queued(SERIAL)
        self.assertEqual([r.body for r in queued], [b"%d" % i for i in range(count)])
        self.assertTrue(all(r.state == RequestState.QUEUED for r in queued))

    async def test_reactor_shutdown_flushes_batched_writes(self) -> None:
        self.run_child(
            f"""
            await registry.add(Terminal(imei={IMEI!r}, serial={SERIAL!r}))
            registry.touch({SERIAL!r}, 123.0, "udp", "127.0.0.1:40000")
            registry.log(LogEntry(time=1.0, serial={SERIAL!r}, direction="in", event="login"))
            """,
            kill=False,
        )
        registry = await self.open()
        self.assertEqual(registry.get(SERIAL).last_seen, 123.0)
        self.assertEqual([e.event for e in await registry.messages(SERIAL)], ["login"])

    # --- schema -----------------------------------------------------------------------

    async def test_schema_version_and_wal(self) -> None:
        await self.open()
        version = len(load_migrations())
        self.assertEqual(db_rows(self.path, "PRAGMA user_version"), [(version,)])
        self.assertEqual(db_rows(self.path, "PRAGMA journal_mode"), [("wal",)])

    async def test_newer_database_is_refused(self) -> None:
        conn = sqlite3.connect(self.path)
        conn.execute("PRAGMA user_version = 99")
        conn.close()
        registry = SqliteRegistry(self.path, reactor=reactor)
        with self.assertRaisesRegex(RegistryError, "schema version 99 is newer"):
            await registry.open()

    async def test_not_a_database(self) -> None:
        Path(self.path).write_bytes(b"this is not a database at all" * 100)
        with self.assertRaisesRegex(RegistryError, "cannot open database"):
            await SqliteRegistry(self.path, reactor=reactor).open()

    async def test_added_migration_is_applied_once(self) -> None:
        registry = await self.open()
        await registry.add(make_terminal(serial=SERIAL))
        await registry.close()
        shipped = load_migrations()
        n = len(shipped) + 1
        extra = Migration(n, f"{n:03d}_extra.sql", "CREATE TABLE extra (id INTEGER PRIMARY KEY);")
        upgraded = await self.open(migrations=[*shipped, extra])
        self.assertIsNotNone(upgraded.get(SERIAL))
        self.assertEqual(db_rows(self.path, "PRAGMA user_version"), [(n,)])
        await upgraded.close()
        await self.open(migrations=[*load_migrations(), extra])  # no re-application error

    async def test_failed_migration_rolls_back(self) -> None:
        await (await self.open()).close()
        shipped = load_migrations()
        n = len(shipped) + 1
        broken = Migration(n, f"{n:03d}_broken.sql", "CREATE TABLE a (x);\nNOT SQL;")
        with self.assertRaisesRegex(RegistryError, f"{n:03d}_broken.sql failed"):
            await SqliteRegistry(self.path, reactor=reactor,
                                 migrations=[*shipped, broken]).open()
        self.assertEqual(db_rows(self.path, "PRAGMA user_version"), [(n - 1,)])
        self.assertEqual(db_rows(self.path, "SELECT name FROM sqlite_master WHERE name='a'"), [])

    def test_migrating_a_new_database_closes_every_cursor(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(conn.close)
        keeper = CursorKeeper(conn)
        _configure(keeper)  # type: ignore[arg-type]
        prepared = prepare(keeper, load_migrations(), self.path, self.path + ".key",
                            read_only=False)
        self.assertEqual(prepared.applied, [m.name for m in load_migrations()])
        self.assertGreater(len(keeper.cursors), 10)
        for cursor in keeper.cursors:
            self.assertRaises(sqlite3.ProgrammingError, cursor.fetchone)  # closed

    def test_migration_numbering_is_checked(self) -> None:
        n = len(load_migrations()) + 2
        gap = Migration(n, f"{n:03d}_x.sql", "")
        self.assertRaises(RegistryError, SqliteRegistry, self.path, reactor,
                          [*load_migrations(), gap])

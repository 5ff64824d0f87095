"""A REGISTER_ACK with a new serial leaves only once the serial is committed (D-340).

The crash-accounting fault test found it: the answer went out while the terminal's
record and the serial counter still waited for the writer, so a crash there let the
next start hand the same serial to another terminal. Here a second SQLite connection
holds the database's write lock, so the gateway's writes wait for certain: no
REGISTER_ACK may be sent until the lock is released, and when it is sent, a reader of
the file finds the serial in the terminal's row and in the counter.

The point is the SQLite file and its write lock, so these tests run on a real
:class:`~m2mgw.core.registry.sqlite.SqliteRegistry`, whose pool threads need the real
reactor; the engine's other tests use the in-memory registry
(tests/core/engine_support.py).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from m2mgw.core.model import Terminal
from m2mgw.core.registry.sqlite import SqliteRegistry
from m2mgw.protocol import messages as m
from m2mgw.protocol.codec import decode_frame, encode_message, parse_frame
from m2mgw.protocol.constants import RegisterResult
from tests.e2e.support import until
from tests.spec_examples import IMEI, IMSI

from .engine_support import EngineFixture, FakeBearer

MSISDN = "8613900000001"


@dataclass(eq=False)
class StoredOnSend(FakeBearer):
    """Reads the database file at the moment each frame is sent."""

    db: str = ""
    seen: list[tuple[str | None, int | None]] = field(default_factory=list)

    def send(self, data: bytes) -> None:
        with sqlite3.connect(self.db) as reader:
            [(serial,)] = reader.execute("SELECT serial FROM terminals WHERE imei = ?", (IMEI,))
            counter = reader.execute("SELECT value FROM counters WHERE name = 'serial'").fetchone()
        reader.close()
        self.seen.append((serial, counter[0] if counter else None))
        super().send(data)


def sleep(seconds: float):  # type: ignore[no-untyped-def]
    return task.deferLater(reactor, seconds, lambda: None)


class RegisterAckAfterCommitTest(unittest.TestCase):
    @inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.db = self.mktemp() + ".db"
        self.fx = EngineFixture(registry=SqliteRegistry(self.db, reactor))
        yield self.fx.start(provision=False)
        self.addCleanup(self.fx.stop)
        yield self.fx.registry.add(Terminal(imei=IMEI, msisdn=MSISDN))

    def hold_write_lock(self) -> sqlite3.Connection:
        """Another writer on the file: the registry's writes wait (busy_timeout)."""
        blocker = sqlite3.connect(self.db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        self.addCleanup(blocker.close)
        return blocker

    def register(self, bearer: FakeBearer, seq: int) -> None:
        raw = encode_message(
            m.Register(0, IMEI, IMSI), sequence_id=seq, serial="A972030000000000", flag=0x80
        )
        self.fx.engine.receive(raw, bearer)

    @inlineCallbacks
    def test_no_register_ack_before_the_serial_is_committed(self):  # type: ignore[no-untyped-def]
        bearer = StoredOnSend(kind="sms", address=MSISDN, db=self.db)
        blocker = self.hold_write_lock()
        self.register(bearer, 1)
        yield sleep(0.3)
        self.register(bearer, 1)  # the terminal retransmits meanwhile: ignored (8.2)
        yield sleep(0.3)
        self.assertEqual(bearer.sent, [], "REGISTER_ACK sent before its record was stored")
        serial = self.fx.registry.by_imei(IMEI).serial
        self.assertIsNotNone(serial)  # allocated in memory already
        blocker.execute("ROLLBACK")
        yield until(lambda: bearer.sent, "the REGISTER_ACK")
        [frame] = bearer.sent
        ack = decode_frame(parse_frame(frame))
        self.assertEqual(ack, m.RegisterAck(RegisterResult.OK_SMS, serial))
        # Both the terminal's row and the counter were on disk when the answer left.
        self.assertEqual(bearer.seen, [(serial, int(serial[8:]))])
        yield sleep(0.1)
        self.assertEqual(len(bearer.sent), 1, "the retransmission was answered twice")

    @inlineCallbacks
    def test_a_failed_write_answers_nothing_and_forgets_the_request(self):  # type: ignore[no-untyped-def]
        """Past ``busy_timeout`` the write fails: no answer, and a retransmission is new."""
        self.fx.registry._pool.runWithConnection(  # type: ignore[union-attr]
            lambda conn: conn.execute("PRAGMA busy_timeout = 100")
        )
        bearer = FakeBearer(kind="sms", address=MSISDN)
        blocker = self.hold_write_lock()
        self.register(bearer, 1)
        yield sleep(0.5)
        self.assertEqual(bearer.sent, [])
        blocker.execute("ROLLBACK")
        self.register(bearer, 1)
        yield until(lambda: bearer.sent, "the REGISTER_ACK")
        [ack] = bearer.take()
        self.assertEqual(ack.result, RegisterResult.OK_SMS)
        self.flushLoggedErrors(sqlite3.OperationalError)

"""SMS state that survives a restart (issue #11, D-341, D-342): a real gateway stopped
and started again on the same SQLite file, the modem emulator on a real pty.

* The concatenation reference counter per MSISDN continues after a restart, so a new
  message never takes the reference of one the terminal may still be reassembling.
* A message leaves only once its outbox row (and so its reference) is committed.
* The time of the last wake-up is on the terminal's record: a restart does not send
  another wake-up within ``wakeup_min_interval``.
* Migration 009 numbers the messages a database from before queued without one.
"""

from __future__ import annotations

import dataclasses
import sqlite3

from twisted.internet import defer, reactor
from twisted.trial import unittest

from m2mgw.core.registry import OutgoingSms, SmsState
from m2mgw.core.registry.migrations import load_migrations
from m2mgw.core.registry.sqlite import SqliteRegistry
from m2mgw.protocol import messages as m
from m2mgw.protocol.codec import decode_frame, parse_frame
from m2mgw.protocol.constants import Command
from m2mgw.protocol.tlv import Tlv
from m2mgw.sms.bearer import wmmp_submit_pdus
from m2mgw.sms.service import SmsBearer
from tests.core.test_sealed_registry import copy_to_schema
from tests.e2e.support import provisioned, until

from .test_gateway_sms import E164, MSISDN, WAKEUP, GatewaySmsTestCase, sleep

OTHER = "8613900000002"


class ReferenceRestartTest(GatewaySmsTestCase):
    @defer.inlineCallbacks
    def test_counter_continues_after_a_restart(self):  # type: ignore[no-untyped-def]
        assert self.gateway.sms is not None
        yield self.gateway.sms.submit(MSISDN, WAKEUP)
        yield self.gateway.sms.submit(MSISDN, WAKEUP[:-1] + b"\x05")
        yield self.gateway.sms.submit(OTHER, WAKEUP)
        yield until(lambda: len(self.emulator.sent) == 3, "three SMS")
        yield self.gateway.stopService()
        self.gateway = yield self.start_gateway()

        assert self.gateway.sms is not None
        yield self.gateway.sms.submit(MSISDN, WAKEUP)
        yield self.gateway.sms.submit(OTHER, WAKEUP)
        yield until(lambda: len(self.emulator.sent) == 5, "two more SMS")
        self.assertEqual(
            self.submits()[3:],
            wmmp_submit_pdus(WAKEUP, MSISDN, 3) + wmmp_submit_pdus(WAKEUP, OTHER, 2),
        )
        self.assertEqual(self.registry.sms_references(), {E164: 3, OTHER: 2})

    @defer.inlineCallbacks
    def test_a_message_in_flight_keeps_its_reference_alone(self):  # type: ignore[no-untyped-def]
        """The second segment of message 1 waits across the restart; message 2, queued
        after it, must not be given reference 1 (the terminal is reassembling it)."""
        assert self.gateway.sms is not None
        self.gateway.sms.tuning = dataclasses.replace(self.gateway.sms.tuning, max_refusals=10**6)
        emulator = self.emulator

        class RefuseAfterFirst(list):  # type: ignore[type-arg]
            def append(self, item: object) -> None:
                super().append(item)
                if len(self) == 1:
                    emulator.set_fault("cms", 500)

        emulator.modem.sent = RefuseAfterFirst()
        first = WAKEUP * 5  # two segments
        SmsBearer(self.gateway.sms, MSISDN).send(first)
        yield until(lambda: self.registry.pending_sms(), "the message to be queued")
        [sms] = self.registry.pending_sms()
        yield until(lambda: sms.attempts >= 1, "the refused second segment")
        self.assertEqual(sms.parts_sent, 1)
        yield self.gateway.stopService()

        emulator.set_fault("none")
        self.gateway = yield self.start_gateway(wait_for_modem=False)
        assert self.gateway.sms is not None
        second = WAKEUP[:-1] + b"\x05"
        SmsBearer(self.gateway.sms, MSISDN).send(second)
        yield until(lambda: len(emulator.sent) == 3, "the rest and the next message")
        one, two = wmmp_submit_pdus(first, MSISDN, 1)
        self.assertEqual(self.submits(), [one, two, *wmmp_submit_pdus(second, MSISDN, 2)])
        yield until(lambda: len(self.network.received) == 2, "both to be reassembled")
        self.assertEqual(self.network.received, [(E164, first), (E164, second)])


class SentOnceCommittedTest(GatewaySmsTestCase):
    @defer.inlineCallbacks
    def test_no_segment_leaves_before_its_row_is_committed(self):  # type: ignore[no-untyped-def]
        """A crash between a send and its commit would give its reference again."""
        assert self.gateway.sms is not None
        blocker = sqlite3.connect(self.db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the gateway's writes wait (busy_timeout)
        self.addCleanup(blocker.close)
        SmsBearer(self.gateway.sms, MSISDN).send(WAKEUP)
        self.assertEqual(len(self.registry.pending_sms()), 1)  # listed at once
        yield sleep(0.4)
        self.assertEqual(self.emulator.sent, [], "sent before its row was committed")
        blocker.execute("ROLLBACK")
        yield until(lambda: self.emulator.sent, "the SMS after the commit")
        self.assertEqual(self.submits(), wmmp_submit_pdus(WAKEUP, MSISDN, 1))


class WakeupRestartTest(GatewaySmsTestCase):
    @defer.inlineCallbacks
    def test_restart_sends_no_second_wakeup_within_the_interval(self):  # type: ignore[no-untyped-def]
        record = provisioned(0, msisdn=E164)
        yield self.registry.add(record)
        body = m.ConfigGet(tlvs=[Tlv.query(0x0002)]).encode_body()
        yield self.gateway.router.submit(record.serial, Command.CONFIG_GET, body)
        yield until(lambda: len(self.emulator.sent) == 1, "the wake-up SMS")
        sent_at = record.wakeup_at
        self.assertIsNotNone(sent_at)
        yield self.gateway.stopService()
        rows = sqlite3.connect(self.db).execute(
            "SELECT wakeup_at FROM terminals WHERE serial = ?", (record.serial,)
        ).fetchall()
        self.assertEqual(rows, [(sent_at,)])

        # Started again: the request still waits and the start-up kicks its terminal,
        # but the last wake-up is younger than wakeup_min_interval (600 s).
        self.gateway = yield self.start_gateway()
        record = self.registry.get(record.serial)
        self.assertEqual(record.wakeup_at, sent_at)
        yield sleep(0.5)
        self.assertEqual(len(self.emulator.sent), 1, "a second wake-up after the restart")

        # Once the interval has passed, the next start wakes the terminal again.
        record.wakeup_at = reactor.seconds() - 601
        yield self.registry.save(record)
        yield self.gateway.stopService()
        self.gateway = yield self.start_gateway()
        yield until(lambda: len(self.network.received) == 2, "the wake-up after the interval")
        again = self.submits()[1]
        self.assertEqual(again, wmmp_submit_pdus(self.network.received[1][1], E164, 2)[0])
        wakeup = decode_frame(parse_frame(self.network.received[1][1]))
        self.assertEqual((type(wakeup), wakeup.code), (m.RemoteCtrl, 3))


class LegacyOutboxMigrationTest(unittest.TestCase):
    """Schema 8 gave a reference at the first segment: 009 numbers those not begun."""

    @defer.inlineCallbacks
    def test_pending_messages_are_numbered_after_the_newest_reference(self):  # type: ignore[no-untyped-def]
        staging, path = self.mktemp() + ".today", self.mktemp() + ".db"
        key = path + ".key"  # one key for both files: the copy keeps the sealed rows
        today = SqliteRegistry(staging, reactor, master_key_file=key)
        yield today.open()

        def queued(msisdn: str, reference: int | None, state: str = SmsState.PENDING):  # type: ignore[no-untyped-def]
            sms = OutgoingSms(msisdn=msisdn, port=16, message=WAKEUP, created_at=1.0)
            today.enqueue_sms(sms)  # no reference: no counter row, as before 009
            sms.reference, sms.state = reference, state
            return today.update_sms(sms)

        yield queued(E164, 254, SmsState.SENT)
        yield queued(E164, 255)  # in flight: its first segment was sent
        yield queued(E164, None)
        yield queued(E164, None)
        yield queued(OTHER, None, SmsState.FAILED)  # expired before its first segment
        yield queued(OTHER, None)
        yield today.close()
        copy_to_schema(staging, path, [mig for mig in load_migrations() if mig.version < 9])

        registry = SqliteRegistry(path, reactor, master_key_file=key)
        yield registry.open()
        self.addCleanup(registry.close)
        self.assertEqual(
            [(s.msisdn, s.reference) for s in registry.pending_sms()],
            [(E164, 255), (E164, 0), (E164, 1), (OTHER, 1)],
        )
        self.assertEqual(registry.sms_references(), {E164: 1, OTHER: 1})

"""The modem driver and SerialService against the emulator over a real pty.

trial TestCases (run by pytest) with the real reactor: each test opens a fresh
emulator and service and closes both, so the reactor is left clean.
"""

from __future__ import annotations

import os
import tempfile

from twisted.application.internet import backoffPolicy
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from m2mgw.sms.bearer import SmsReassembler, WmmpSms, wmmp_submit_pdus
from m2mgw.sms.modem import (
    CommandFailed,
    CommandTimeout,
    ModemError,
    ModemProtocol,
    ModemUnavailable,
    SerialService,
)
from m2mgw.sms.pdu import SmsDeliver
from m2mgw.tools.modem_emulator import ModemEmulator
from tests.e2e.support import until
from tests.spec_examples import VECTORS

WAKEUP = VECTORS["11.8 REMOTE_CTRL"]  # spec 11.8: the wake-up message


class ModemTestCase(unittest.TestCase):
    timeout = 10

    def setUp(self) -> Deferred[None]:
        directory = tempfile.mkdtemp(prefix="m2mgw-modem-")
        self.addCleanup(os.rmdir, directory)
        self.link = os.path.join(directory, "modem")
        self.emulator = ModemEmulator(reactor, self.link)
        self.emulator.start()
        self.addCleanup(self.emulator.stop)
        self.received: list[SmsDeliver] = []
        self._sms_waiters: list[Deferred[None]] = []
        return self.start_service()

    def protocol_factory(self) -> ModemProtocol:
        return ModemProtocol(
            reactor,
            self.on_sms,
            command_timeout=0.3,
            send_timeout=0.4,
            max_timeouts=2,
            retry_init_after=0.2,
            settle_time=0.05,
        )

    @inlineCallbacks
    def start_service(self):  # type: ignore[no-untyped-def]
        self.service = SerialService(
            reactor,
            self.link,
            self.protocol_factory,
            retry_policy=backoffPolicy(initialDelay=0.05, maxDelay=0.2, jitter=lambda: 0),
        )
        self.service.startService()
        self.addCleanup(self.service.stopService)
        protocol = yield self.service.when_connected()
        yield protocol.when_ready()

    def on_sms(self, sms: SmsDeliver) -> None:
        self.received.append(sms)
        waiters, self._sms_waiters = self._sms_waiters, []
        for d in waiters:
            d.callback(None)

    @inlineCallbacks
    def wait_for_sms(self, count: int):  # type: ignore[no-untyped-def]
        while len(self.received) < count:
            d: Deferred[None] = Deferred()
            self._sms_waiters.append(d)
            yield d

    @inlineCallbacks
    def test_send_returns_reference_and_modem_gets_pdu(self):  # type: ignore[no-untyped-def]
        [tpdu] = wmmp_submit_pdus(WAKEUP, "13900000001", reference=1)
        first = yield self.service.send_pdu(tpdu)
        second = yield self.service.send_pdu(tpdu)
        self.assertEqual((first, second), (1, 2))
        self.assertEqual([sms.tpdu for sms in self.emulator.sent], [tpdu, tpdu])
        self.assertEqual(self.emulator.sent[0].pdu[:1], b"\x00")  # default SMSC
        self.assertIn("AT+CNMI=2,1,0,0,0", self.emulator.commands)

    @inlineCallbacks
    def test_received_sms_is_read_deleted_and_reassembled(self):  # type: ignore[no-untyped-def]
        message = bytes(range(256)) + b"tail"  # 3 segments
        self.emulator.deliver_wmmp("+8613900000001", message)
        yield self.wait_for_sms(3)
        yield until(lambda: not self.emulator.modem.store, "deletion")
        reassembler = SmsReassembler()
        events = [reassembler.feed(sms, 0.0) for sms in self.received]
        self.assertEqual(events[:2], [None, None])
        self.assertEqual(events[2], WmmpSms(message, "8613900000001", 2862, 49154, 1, 3))

    @inlineCallbacks
    def test_messages_stored_before_start_are_swept(self):  # type: ignore[no-untyped-def]
        yield self.service.stopService()
        self.emulator.modem.cnmi[1] = 0  # a fresh modem indicates nothing
        self.emulator.deliver_text("13900000002", "stored while down")
        self.emulator.deliver_pdu(b"\xff\x00")  # garbage: logged and deleted
        self.assertEqual(len(self.emulator.modem.store), 2)
        yield self.start_service()
        yield self.wait_for_sms(1)
        self.assertEqual(self.received[0].user_data, "stored while down")
        yield until(lambda: not self.emulator.modem.store, "deletion")

    @inlineCallbacks
    def test_cms_error_fails_the_send(self):  # type: ignore[no-untyped-def]
        self.emulator.set_fault("cms", 500)
        [tpdu] = wmmp_submit_pdus(WAKEUP, "13900000001", reference=1)
        error = yield self.assertFailure(self.service.send_pdu(tpdu), CommandFailed)
        self.assertEqual((error.error_kind, error.error_code), ("CMS", 500))
        self.assertFalse(error.maybe_sent)
        self.assertEqual(self.emulator.sent, [])

    @inlineCallbacks
    def test_silent_modem_times_out_then_reinitialises(self):  # type: ignore[no-untyped-def]
        protocol = self.service.protocol
        assert protocol is not None
        self.emulator.set_fault("silent")
        [tpdu] = wmmp_submit_pdus(WAKEUP, "13900000001", reference=1)
        for _ in range(2):  # max_timeouts = 2
            error = yield self.assertFailure(self.service.send_pdu(tpdu), CommandTimeout)
            self.assertFalse(error.maybe_sent)  # no prompt, so the PDU was never written
        self.assertFalse(protocol.ready)
        inits_before = self.emulator.commands.count("ATE0")
        self.emulator.set_fault("none")
        yield protocol.when_ready()
        self.assertGreater(self.emulator.commands.count("ATE0"), inits_before)
        reference = yield self.service.send_pdu(tpdu)
        self.assertEqual(reference, 1)

    @inlineCallbacks
    def test_unplug_fails_send_and_service_reopens(self):  # type: ignore[no-untyped-def]
        old = self.service.protocol
        self.emulator.set_fault("silent")
        [tpdu] = wmmp_submit_pdus(WAKEUP, "13900000001", reference=1)
        sending = self.service.send_pdu(tpdu)
        reactor.callLater(0.05, self.emulator.set_fault, "unplug")
        yield self.assertFailure(sending, ModemUnavailable)
        yield self.assertFailure(self.service.send_pdu(tpdu), ModemUnavailable)
        yield deferLater(reactor, 0.15, lambda: None)  # a few failed reopen attempts
        self.emulator.set_fault("none")
        protocol = yield self.service.when_connected()
        self.assertIsNot(protocol, old)
        yield protocol.when_ready()
        reference = yield self.service.send_pdu(tpdu)
        self.assertEqual(reference, 1)


class ScriptedModemTestCase(unittest.SynchronousTestCase):
    """The adapter with a fake clock and transport, for paths the emulator never takes."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.transport = StringTransport()
        self.protocol = ModemProtocol(self.clock, lambda sms: None, settle_time=0.5)
        self.protocol.makeConnection(self.transport)

    def answer(self, data: bytes) -> bytes:
        """Feed the modem's answer; return what the driver wrote next."""
        self.transport.clear()
        self.protocol.dataReceived(data)
        return self.transport.value()

    def test_settles_then_initialises_then_sweeps(self) -> None:
        self.assertEqual(self.transport.value(), b"\x1b")  # leave any open prompt
        self.transport.clear()
        self.assertEqual(self.answer(b"stale\r\nOK\r\n"), b"")  # dropped while settling
        self.clock.advance(0.5)
        written = [self.transport.value()]
        ready = self.protocol.when_ready()
        while not self.protocol.ready:
            written.append(self.answer(b"\r\nOK\r\n"))
        self.successResultOf(ready)
        self.assertEqual(written[0], b"AT\r")
        self.assertEqual(written[-1], b"AT+CMGL=4\r")
        self.assertEqual(len(written), 7)

    def test_ok_without_reference_counts_as_maybe_sent(self) -> None:
        self.clock.advance(0.5)
        while not self.protocol.ready:
            self.answer(b"\r\nOK\r\n")
        self.answer(b"\r\nOK\r\n")  # the CMGL sweep: nothing stored
        sending = self.protocol.send_pdu(b"\x01\x00")
        self.assertEqual(self.answer(b"\r\n> "), b"000100\x1a")
        self.answer(b"\r\nOK\r\n")
        self.assertTrue(self.failureResultOf(sending, ModemError).value.maybe_sent)

    def test_port_lost_before_ready_fails_waiters(self) -> None:
        ready = self.protocol.when_ready()
        self.protocol.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(ready, ModemUnavailable)
        self.failureResultOf(self.protocol.send_pdu(b"\x01"), ModemUnavailable)
        self.successResultOf(self.protocol.when_lost())
        self.assertEqual(self.clock.getDelayedCalls(), [])

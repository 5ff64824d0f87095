"""The SMS bearer end to end (issue #5): a real gateway, the modem emulator on a real pty.

Terminals talk to the gateway through the emulator the way a mobile network would:
their messages are injected as SMS-DELIVERs, and the SMS-SUBMITs the gateway hands to
the modem are picked up by destination MSISDN and reassembled (:class:`SmsNetwork`).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from m2mgw.core.model import RequestState, Terminal, TerminalState, normalize_msisdn
from m2mgw.core.registry import SmsState
from m2mgw.protocol import messages as m
from m2mgw.protocol import terminal as role
from m2mgw.protocol.codec import decode_frame, parse_frame
from m2mgw.protocol.constants import Command
from m2mgw.protocol.tlv import Tlv
from m2mgw.service import GatewayService
from m2mgw.sms.bearer import wmmp_delivers, wmmp_submit_pdus
from m2mgw.sms.service import ModemTuning, SmsBearer
from m2mgw.tools import terminal as simulator
from m2mgw.tools.modem_emulator import ModemEmulator
from m2mgw.tools.terminal import SubmittedSms
from tests.e2e.support import (
    TestTerminal,
    client_for,
    connect_udp,
    gateway_config,
    provisioned,
    until,
)
from tests.spec_examples import IMEI, IMSI, SYNC_VALUES, VECTORS

MSISDN = "13900000001"
E164 = normalize_msisdn(MSISDN)  # as provisioning stores it (PD-30)
STRANGER = "13900000999"
WAKEUP = VECTORS["11.8 REMOTE_CTRL"]  # a payload of known bytes
FAST = ModemTuning(
    send_timeout=0.4,
    settle_time=0.05,
    max_timeouts=2,
    retry_init_after=0.2,
    reopen_policy=backoffPolicy(initialDelay=0.05, maxDelay=0.2, jitter=lambda: 0),
    retry_policy=lambda attempt: 0.1,
)
SMS_CONFIG = """
[sms]
device = {link}
send_rate = 100
command_timeout = 0.3
[protocol]
sync_trap_wait = 1s
"""


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


class SmsNetwork:
    """Terminals on the emulator: MO with ``deliver_wmmp``, MT by watching ``sent``."""

    def __init__(self, emulator: ModemEmulator) -> None:
        self.emulator = emulator
        self.terminals: dict[str, TestTerminal] = {}
        #: Every complete WMMP message the gateway sent, as (MSISDN, message).
        self.received: list[tuple[str, bytes]] = []
        self._inbox = SubmittedSms()
        self._seen = 0
        self._poll = task.LoopingCall(self._check)
        self._poll.start(0.02, now=False)

    def attach(self, msisdn: str, terminal: TestTerminal) -> None:
        key = normalize_msisdn(msisdn)
        self.terminals[key] = terminal
        terminal.transmit = lambda frame: self.emulator.deliver_wmmp(key, frame)

    def stop(self) -> None:
        self._poll.stop()

    def _check(self) -> None:
        sent = self.emulator.sent
        for sms in sent[self._seen :]:
            complete = self._inbox.feed(sms.tpdu, reactor.seconds())
            if complete is None:
                continue
            self.received.append(complete)
            terminal = self.terminals.get(complete[0])
            if terminal is not None:
                terminal.received(complete[1])
        self._seen = len(sent)


class GatewaySmsTestCase(unittest.TestCase):
    timeout = 15
    #: Sections other than [sms] and [protocol] for a subclass's gateway.
    extra_config = ""

    @defer.inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        directory = tempfile.mkdtemp(prefix="m2mgw-sms-")
        self.addCleanup(shutil.rmtree, directory)
        self.db = os.path.join(directory, "registry.db")
        self.link = os.path.join(directory, "modem")
        self.emulator = ModemEmulator(reactor, self.link)
        self.emulator.start()
        self.addCleanup(self.emulator.stop)
        self.network = SmsNetwork(self.emulator)
        self.addCleanup(self.network.stop)
        self.gateway = yield self.start_gateway()

    @defer.inlineCallbacks
    def start_gateway(self, wait_for_modem: bool = True):  # type: ignore[no-untyped-def]
        gateway = GatewayService(
            gateway_config(self.db, SMS_CONFIG.format(link=self.link) + self.extra_config), reactor
        )
        assert gateway.sms is not None
        gateway.sms.tuning = FAST
        gateway.startService()
        self.addCleanup(gateway.stopService)
        yield gateway.ready
        if wait_for_modem:
            protocol = yield gateway.sms.serial.when_connected()
            yield protocol.when_ready()
        return gateway

    @property
    def registry(self) -> Any:
        return self.gateway.registry

    def sms_terminal(self, record: Terminal, msisdn: str = MSISDN) -> TestTerminal:
        term = TestTerminal(client_for(record, "sms"))
        self.network.attach(msisdn, term)
        return term

    def submits(self) -> list[bytes]:
        return [sms.tpdu for sms in self.emulator.sent]


class RegistrationTest(GatewaySmsTestCase):
    @defer.inlineCallbacks
    def test_register_credentials_login_alarm(self):  # type: ignore[no-untyped-def]
        """4.3 by SMS from a number the registry does not know yet, then 6.3.4, 4.4, 4.9."""
        yield self.registry.add(Terminal(imei=IMEI))  # provisioned by IMEI only
        identity = role.TerminalIdentity(
            serial="A972030000000000", imei=IMEI, imsi=IMSI, config=dict(SYNC_VALUES)
        )
        term = TestTerminal(role.TerminalClient(identity, "sms", clock=reactor.seconds))
        self.network.attach(MSISDN, term)

        term.send(term.client.register(0))
        registered = yield term.wait_type(role.Registered)
        self.assertEqual(registered.result, 0)
        record = self.registry.by_imei(IMEI)
        self.assertEqual((record.serial, record.msisdn), (registered.serial, "86" + MSISDN))

        changed = yield term.wait_type(role.CredentialsChanged)
        self.assertEqual(changed.credentials.uplink_password, record.pending.uplink_password)
        yield until(lambda: record.pending.delivered_at is not None, "SECURITY_CONFIG_ACK")

        term.send(term.client.login())
        logged_in = yield term.wait_type(role.LoggedIn)
        self.assertEqual(logged_in.result, 1)  # no sync values stored yet
        self.assertEqual(record.state, TerminalState.LOGGED_IN)
        self.assertIsNone(record.pending)  # committed by the LOGIN
        yield term.answer_to(Command.CONFIG_TRAP)  # the client's sync trap

        term.send(term.client.alarm(1, 2, 0x0020))
        ack = yield term.answer_to(Command.CONFIG_TRAP)
        self.assertEqual(ack.message.ret, 0)
        alarms = yield self.registry.alarms(record.serial)
        self.assertEqual([(a.code, a.status) for a in alarms], [(0x0020, 1)])
        # Every answer went by SMS, none twice: REGISTER_ACK, SECURITY_CONFIG, LOGIN_ACK, 2 traps.
        names = [decode_frame(parse_frame(msg)).COMMAND for _, msg in self.network.received]
        self.assertEqual(
            names,
            [
                Command.REGISTER | 0x8000,
                Command.SECURITY_CONFIG,
                Command.LOGIN | 0x8000,
                Command.CONFIG_TRAP | 0x8000,
                Command.CONFIG_TRAP | 0x8000,
            ],
        )
        self.assertEqual(self.registry.pending_sms(), [])

    @defer.inlineCallbacks
    def test_alarm_without_login(self):  # type: ignore[no-untyped-def]
        """10.4.6: accepted from the bound MSISDN; unattributed (still ACKed) from another."""
        record = provisioned(0, msisdn=E164)
        yield self.registry.add(record)
        term = self.sms_terminal(record)
        term.send(term.client.alarm(1, 2, 0x0020))
        ack = yield term.answer_to(Command.CONFIG_TRAP)
        self.assertEqual(ack.message.ret, 0)

        stranger = self.sms_terminal(record, STRANGER)
        stranger.send(stranger.client.alarm(1, 2, 0x001C))
        ack = yield stranger.answer_to(Command.CONFIG_TRAP)
        self.assertEqual(ack.message.ret, 0)
        alarms = yield self.registry.alarms()
        self.assertEqual(
            [(a.serial, a.msisdn, a.code, a.header_serial) for a in reversed(alarms)],
            [
                (record.serial, "86" + MSISDN, 0x0020, record.serial),
                # Unattributed: the MSISDN and the serial the message carried (10.4.6).
                (None, "86" + STRANGER, 0x001C, record.serial),
            ],
        )
        self.assertEqual(record.state, TerminalState.REGISTERED)  # no session was started

    @defer.inlineCallbacks
    def test_text_sms_and_login_from_unbound_number_are_refused(self):  # type: ignore[no-untyped-def]
        record = provisioned(0, msisdn=E164)
        yield self.registry.add(record)
        self.emulator.deliver_text(MSISDN, "hello")
        stranger = self.sms_terminal(record, STRANGER)
        stranger.send(stranger.client.login())
        yield until(lambda: not self.emulator.modem.store, "the SMS to be read")
        yield sleep(0.1)
        self.assertEqual(self.emulator.sent, [])
        self.assertEqual(record.state, TerminalState.REGISTERED)


class MixedModeTest(GatewaySmsTestCase):
    @defer.inlineCallbacks
    def test_login_over_udp_wake_up_by_sms(self):  # type: ignore[no-untyped-def]
        """9.6: a request for a logged-out terminal triggers REMOTE_CTRL 3 by SMS."""
        record = provisioned(0, msisdn=E164)
        yield self.registry.add(record)
        yield self.registry.store_config(record.serial, SYNC_VALUES, "reported")
        term = TestTerminal(client_for(record, "udp"))
        _link, port = connect_udp(term, self.gateway.udp_port)
        self.addCleanup(port.stopListening)
        yield self.log_in(term)
        term.send(term.client.logout(0))
        yield term.wait_type(role.LoggedOut)

        body = m.ConfigGet(tlvs=[Tlv.query(0x0002)]).encode_body()
        request = yield self.gateway.router.submit(record.serial, Command.CONFIG_GET, body)
        yield self.gateway.router.submit(record.serial, Command.CONFIG_GET, body)
        yield until(lambda: self.network.received, "the wake-up SMS")
        [(msisdn, frame)] = self.network.received
        wakeup = decode_frame(parse_frame(frame))
        self.assertEqual((msisdn, type(wakeup), wakeup.code), ("86" + MSISDN, m.RemoteCtrl, 3))
        self.assertEqual(parse_frame(frame).header.flag, 0)  # no digest on SMS (11.8)

        # The terminal's SMS side answers (a copy from another number is not matched)...
        sms_side = client_for(record, "sms")
        [event] = sms_side.receive(frame, reactor.seconds())
        self.assertIsInstance(event, role.PlatformRequest)
        ack = sms_side.data_to_send()[0]  # then LOGIN, sent over UDP below
        traffic = self.gateway.router._traffic_of(record.serial)
        self.emulator.deliver_wmmp(STRANGER, ack)
        yield sleep(0.2)
        self.assertIsNotNone(traffic.wakeup_sequence)
        self.emulator.deliver_wmmp(MSISDN, ack)
        yield until(lambda: traffic.wakeup_sequence is None, "the wake-up ACK")

        # ...then logs in over UDP and gets the queued request there.
        yield self.log_in(term)
        got = yield term.wait_type(role.PlatformRequest)
        self.assertIsInstance(got.message, m.ConfigGet)
        yield until(lambda: request.state == RequestState.SUCCEEDED, "the CONFIG_GET")
        self.assertEqual(len(self.emulator.sent), 1)  # one wake-up within wakeup_min_interval

    @defer.inlineCallbacks
    def log_in(self, term: TestTerminal):  # type: ignore[no-untyped-def]
        term.send(term.client.login())
        yield term.wait_type(role.LoggedIn)
        term.send(term.client.trap([]))
        yield term.answer_to(Command.CONFIG_TRAP)


class ModemFaultTest(GatewaySmsTestCase):
    """Each fault: the message waits in the outbox and leaves exactly once afterwards."""

    @defer.inlineCallbacks
    def send_through(self, fault: str, *, code: int = 500):  # type: ignore[no-untyped-def]
        assert self.gateway.sms is not None
        expected = wmmp_submit_pdus(WAKEUP, MSISDN, reference=1)
        self.emulator.set_fault("silent" if fault == "unplug" else fault, code)
        if fault == "unplug":
            reactor.callLater(0.1, self.emulator.set_fault, "unplug")
        SmsBearer(self.gateway.sms, MSISDN).send(WAKEUP)
        [sms] = self.registry.pending_sms()
        yield until(lambda: sms.attempts >= 1, f"a failed send ({fault})")
        self.assertEqual(sms.uncertain, 0)  # each fault here is known not to have sent it
        self.emulator.set_fault("none")
        yield until(lambda: sms.state == SmsState.SENT, "the send after recovery")
        self.assertEqual(self.submits(), expected)
        self.assertEqual(self.registry.pending_sms(), [])

    def test_timeout(self):  # type: ignore[no-untyped-def]
        return self.send_through("silent")

    def test_cms_error(self):  # type: ignore[no-untyped-def]
        return self.send_through("cms")

    def test_port_lost_during_send(self):  # type: ignore[no-untyped-def]
        return self.send_through("unplug")

    @defer.inlineCallbacks
    def test_failed_second_segment_is_resent_alone(self):  # type: ignore[no-untyped-def]
        """10.4.3: the segments already sent are not repeated; the reference is kept."""
        assert self.gateway.sms is not None
        emulator = self.emulator

        class RefuseAfterFirst(list):  # type: ignore[type-arg]
            def append(self, item: object) -> None:
                super().append(item)
                if len(self) == 1:
                    emulator.set_fault("cms", 500)

        emulator.modem.sent = RefuseAfterFirst()
        message = WAKEUP * 5  # 165 bytes: two segments
        SmsBearer(self.gateway.sms, MSISDN).send(message)
        [sms] = self.registry.pending_sms()
        yield until(lambda: sms.attempts >= 1, "the refused second segment")
        self.assertEqual(sms.parts_sent, 1)
        emulator.set_fault("none")
        yield until(lambda: sms.state == SmsState.SENT, "the second segment")
        self.assertEqual(self.submits(), wmmp_submit_pdus(message, MSISDN, reference=1))
        yield until(lambda: self.network.received, "the network to reassemble it")
        self.assertEqual(self.network.received, [(E164, message)])

    @defer.inlineCallbacks
    def test_persistent_refusal_fails_the_message(self):  # type: ignore[no-untyped-def]
        assert self.gateway.sms is not None
        self.emulator.set_fault("cms", 38)
        bearer = SmsBearer(self.gateway.sms, MSISDN)
        bearer.send(WAKEUP)
        [sms] = self.registry.pending_sms()
        yield until(lambda: sms.state == SmsState.FAILED, "the refused message to fail")
        self.assertEqual(sms.attempts, FAST.max_refusals)
        self.emulator.set_fault("none")
        bearer.send(WAKEUP[:-1] + b"\x04")  # the outbox is not blocked by it
        yield until(lambda: len(self.emulator.sent) == 1, "the next message")


class RestartTest(GatewaySmsTestCase):
    @defer.inlineCallbacks
    def test_outbox_survives_a_restart(self):  # type: ignore[no-untyped-def]
        assert self.gateway.sms is not None
        self.emulator.set_fault("unplug")
        long_message = WAKEUP + bytes(200)  # two segments
        queued = [
            self.gateway.sms.submit(MSISDN, WAKEUP),
            self.gateway.sms.submit("+8613900000002", long_message),
        ]
        yield defer.gatherResults(queued)
        yield self.gateway.stopService()
        self.assertEqual(self.emulator.sent, [])

        self.emulator.set_fault("none")
        self.gateway = yield self.start_gateway(wait_for_modem=False)
        self.assertEqual(len(self.registry.pending_sms()), 2)
        yield until(lambda: len(self.emulator.sent) == 3, "the stored SMS")
        yield until(lambda: not self.registry.pending_sms(), "the outbox to empty")
        expected = wmmp_submit_pdus(WAKEUP, MSISDN, 1) + wmmp_submit_pdus(
            long_message, "8613900000002", 1
        )
        self.assertEqual(self.submits(), expected)
        stored = yield self.registry.sms_page()  # read back from the database, newest first
        self.assertEqual([(sms.state, sms.parts_sent) for sms in reversed(stored)],
                         [("sent", 1), ("sent", 2)])


class SimulatorTest(GatewaySmsTestCase):
    @defer.inlineCallbacks
    def test_m2mgw_terminal_over_sms(self):  # type: ignore[no-untyped-def]
        """``m2mgw-terminal --mode sms`` registers, logs in, reports an alarm, logs out."""
        yield self.registry.add(Terminal(imei=IMEI))
        control = self.emulator.listen_control(reactor)
        self.addCleanup(control.stopListening)
        stdout = io.StringIO()
        argv = [
            "--mode", "sms", "--modem-control", f"127.0.0.1:{control.getHost().port}",
            "--msisdn", MSISDN, "--sms-poll", "0.05", "--register-op", "0",
            "--serial", "A972030000000000", "--imei", IMEI, "--imsi", IMSI,
            "--uplink-password", "00000000", "--downlink-password", "00000000",
            "--trap", "0x300B=1", "--trap", "0x300C=2", "--trap", "0x300D=0x20",
            "--duration", "2", "--json-events",
        ]  # fmt: skip
        code = yield simulator.run(reactor, argv, stdout)
        events = [json.loads(line) for line in stdout.getvalue().splitlines()]
        self.assertEqual(code, 0, events)
        names = [e["event"] for e in events]
        for name in ("registered", "credentials_changed", "logged_in", "trap_ack", "logged_out"):
            self.assertIn(name, names)
        record = self.registry.by_imei(IMEI)
        self.assertEqual(record.msisdn, E164)
        self.assertEqual(record.state, TerminalState.LOGGED_OUT)
        alarms = yield self.registry.alarms(record.serial)
        self.assertEqual([a.code for a in alarms], [0x20])


class DuplicatePresentationTest(GatewaySmsTestCase):
    @defer.inlineCallbacks
    def test_same_sms_read_twice_is_handled_once(self):  # type: ignore[no-untyped-def]
        """The modem hands an SMS over before deleting it, so it may come twice."""
        assert self.gateway.sms is not None
        record = provisioned(0, msisdn=E164)
        yield self.registry.add(record)
        alarm = client_for(record, "sms").alarm(1, 2, 0x20)
        scts = datetime.now(UTC).replace(microsecond=0)
        [deliver] = wmmp_delivers(MSISDN, alarm, 1, scts)
        self.gateway.sms._on_sms(deliver)
        self.gateway.sms._on_sms(deliver)
        yield until(lambda: len(self.emulator.sent) == 1, "the CONFIG_TRAP_ACK")
        yield sleep(0.1)
        alarms = yield self.registry.alarms(record.serial)
        self.assertEqual((len(self.emulator.sent), len(alarms)), (1, 1))

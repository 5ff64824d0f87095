"""The platform engine against the spec's example terminal: fake bearers, a Clock,
and the in-memory registry (no reactor runs here)."""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from m2mgw.core.model import RequestState, TerminalState
from m2mgw.protocol import messages as m
from m2mgw.protocol.codec import parse_frame
from m2mgw.protocol.constants import Command
from m2mgw.protocol.security import DigestKey, verify
from m2mgw.protocol.tlv import Tlv
from tests.spec_examples import (
    BASE_KEY,
    DOWNLINK,
    DOWNLINK_PASSWORD,
    IMEI,
    IMSI,
    SERIAL,
    TS_11_3,
    UPLINK,
    UPLINK_PASSWORD,
    VECTORS,
)

from .engine_support import (
    EngineFixture,
    FakeBearer,
    example_credentials,
    login_bytes,
    terminal_message,
)


class EngineTest(unittest.TestCase):
    @inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.fx = EngineFixture()
        yield self.fx.start()
        self.addCleanup(self.fx.stop)

    def login(self, bearer: FakeBearer | None = None) -> FakeBearer:
        bearer = bearer or FakeBearer()
        self.fx.engine.receive(login_bytes(), bearer)
        return bearer

    def test_login_answer_is_the_spec_example(self) -> None:
        """11.2 in, 11.3 out, byte for byte; the terminal is logged in."""
        bearer = FakeBearer()
        self.fx.engine.receive(VECTORS["11.2 LOGIN"], bearer)
        self.assertEqual(bearer.sent, [VECTORS["11.3 LOGIN_ACK"]])
        self.assertEqual(self.fx.terminal.state, TerminalState.LOGGED_IN)
        self.assertEqual(self.fx.terminal.session_timestamp, TS_11_3)

    def test_wrong_digest_is_result_2_without_state_change(self) -> None:
        bearer = FakeBearer()
        wrong = DigestKey.make(IMEI, IMSI, "00000000")
        self.fx.engine.receive(login_bytes(key=wrong), bearer)
        [raw] = bearer.sent
        self.assertIsNone(parse_frame(raw).digest, "no digest on an unverified LOGIN's answer")
        [ack] = bearer.take()
        self.assertIsInstance(ack, m.LoginAck)
        self.assertEqual((ack.result, ack.timestamp), (2, 0))
        self.assertEqual(self.fx.terminal.state, TerminalState.REGISTERED)
        self.assertEqual(self.fx.terminal.auth_failures, 1)

    def test_unknown_serial_is_result_3(self) -> None:
        bearer = FakeBearer()
        raw = m.Login("1.01", 0).encode_body()
        from m2mgw.protocol.codec import build_frame

        self.fx.engine.receive(
            build_frame(Command.LOGIN, 9, "A972039999999999", raw, flag=0x80, key=UPLINK), bearer
        )
        [ack] = bearer.take()
        self.assertEqual(ack.result, 3)

    def test_bad_version_login_is_result_5(self) -> None:
        bearer = FakeBearer()
        raw = bytearray(VECTORS["11.2 LOGIN"])
        raw[8:10] = b"\x04\x00"
        self.fx.engine.receive(bytes(raw), bearer)
        [answer] = bearer.sent
        # PD-02: the answer carries the request's version; result 5, timestamp 0.
        frame = parse_frame(answer, accepted_versions=(0x0400,))
        self.assertEqual(frame.header.command_id, Command.LOGIN | 0x8000)
        self.assertEqual(m.LoginAck.decode_body(frame.body), m.LoginAck(5, 0))
        self.assertEqual(self.fx.terminal.state, TerminalState.REGISTERED)

    def test_message_before_login_is_discarded(self) -> None:
        bearer = FakeBearer()
        data = terminal_message(m.TransparentData.build(b"\x01"), 3, timestamp=TS_11_3)
        self.fx.engine.receive(data, bearer)
        self.fx.engine.receive(VECTORS["11.4 HEART_BEAT"], bearer)
        self.assertEqual(bearer.sent, [])

    def test_heartbeat_answered_and_checked_against_the_bearer(self) -> None:
        bearer = self.login()
        bearer.sent.clear()
        self.fx.engine.receive(VECTORS["11.4 HEART_BEAT"], bearer)
        self.assertEqual(bearer.sent[0][2:4], b"\x80\x03")
        stranger = FakeBearer(address="127.0.0.2:40000")
        self.fx.engine.receive(VECTORS["11.4 HEART_BEAT"], stranger)
        self.assertEqual(stranger.sent, [], "PD-25: heartbeat from another address")

    @inlineCallbacks
    def test_transparent_data_to_application_is_stored(self):  # type: ignore[no-untyped-def]
        bearer = self.login()
        bearer.sent.clear()
        msg = m.TransparentData.build(b"\x01\x02\x03\x04", Tlv.of(0x4014, "EC0001"))
        self.fx.engine.receive(terminal_message(msg, 3, timestamp=TS_11_3), bearer)
        self.assertEqual(bearer.sent, [], "answered only once the data is committed")
        self.fx.commit()
        [ack] = bearer.take()
        self.assertEqual(ack.result, 1)  # queued for the application
        entries = yield self.fx.registry.messages(SERIAL)
        [stored] = [e.detail for e in entries if e.event == "uplink-data"]
        self.assertIn("data=01020304", stored)
        # D-391: the uplink row is the exchange's only one, with its bearer and sequence;
        # the LOGIN_ACK's row shows plain values, its result by name.
        [row] = [e for e in entries if e.sequence_id == 3]
        self.assertEqual((row.event, row.bearer, row.command_id),
                         ("uplink-data", "udp", Command.TRANSPARENT_DATA))
        [login] = [e for e in entries if e.command_id == Command.LOGIN | 0x8000]
        self.assertEqual(login.detail, f"result=OK, timestamp={TS_11_3}")
        bad = m.TransparentData(0x1234, tlvs=[Tlv(0x4007, b"\x01")])
        self.fx.engine.receive(terminal_message(bad, 4, timestamp=TS_11_3), bearer)
        self.assertEqual(bearer.take()[0].result, 4)
        other = m.TransparentData.build(b"\x01", Tlv.of(0x4014, "EC9999"))
        self.fx.engine.receive(terminal_message(other, 5, timestamp=TS_11_3), bearer)
        self.assertEqual(bearer.take()[0].result, 2)

    def test_answer_to_the_spec_transparent_data(self) -> None:
        """11.5: the platform's answer is byte-exact."""
        bearer = self.login()
        bearer.sent.clear()
        request = bytes.fromhex(
            "004400040000000303002000413937323033303030303030313233342BA14014"
            "00064543303030314007000401020304E021001080C9620667CA0C9E7CEE1C256969AFC6"
        )
        # The stored uplink answers "queued" (1) where the spec's platform answered 0:
        # the header and the digest rule are the same.
        self.fx.engine.receive(request, bearer)
        self.assertEqual(bearer.sent, [], "answered only once the data is committed")
        self.fx.commit()
        [raw] = bearer.sent
        self.assertEqual(raw[:28], bytes.fromhex("003180040000000303002000") + SERIAL.encode())
        self.assertTrue(verify(raw, TS_11_3, DOWNLINK))

    def test_duplicate_udp_request_is_answered_from_the_cache_once(self) -> None:
        bearer = self.login()
        bearer.sent.clear()
        trap = terminal_message(m.ConfigTrap(tlvs=[Tlv.of(0x3007, 20)]), 7, timestamp=TS_11_3)
        self.fx.engine.receive(trap, bearer)
        self.fx.engine.receive(trap, bearer)
        self.assertEqual(len(bearer.sent), 2)
        self.assertEqual(bearer.sent[0], bearer.sent[1])
        self.assertEqual(self.fx.registry.config_values(SERIAL)[0x3007], b"\x14")

    def test_invalid_trap_is_rejected_whole(self) -> None:
        bearer = self.login()
        bearer.sent.clear()
        trap = m.ConfigTrap(tlvs=[Tlv.of(0x3007, 21), Tlv(0x3006, b"\x01")])
        self.fx.engine.receive(terminal_message(trap, 8, timestamp=TS_11_3), bearer)
        [ack] = bearer.take()
        self.assertEqual((ack.ret, ack.bad_tag), (1, 0x3006))
        self.assertNotIn(0x3007, self.fx.registry.config_values(SERIAL))

    def test_logout_from_the_terminal(self) -> None:
        bearer = self.login()
        bearer.sent.clear()
        self.fx.engine.receive(terminal_message(m.Logout(0), 9, timestamp=TS_11_3), bearer)
        [ack] = bearer.take()
        self.assertIsInstance(ack, m.LogoutAck)
        self.assertEqual(self.fx.terminal.state, TerminalState.LOGGED_OUT)
        # Idempotent: the same logout again, after the session ended, is answered.
        self.fx.engine.receive(terminal_message(m.Logout(0), 10, timestamp=TS_11_3), bearer)
        self.assertEqual(len(bearer.sent), 1)
        self.assertEqual(self.fx.terminal.state, TerminalState.LOGGED_OUT)

    def test_heartbeat_loss_sends_logout_2_then_offline(self) -> None:
        bearer = self.login()
        bearer.sent.clear()
        self.fx.clock.advance(3 * 90 + 1)
        self.fx.tick()
        [logout] = bearer.take()
        self.assertEqual((logout.COMMAND, logout.reason), (Command.LOGOUT, 2))
        self.assertEqual(self.fx.terminal.state, TerminalState.LOGGED_IN)
        self.fx.clock.advance(16)
        self.fx.tick()
        self.assertEqual(self.fx.terminal.state, TerminalState.OFFLINE)

    def test_the_offline_check_fires_at_its_tick_and_looks_only_when_due(self) -> None:
        """Deadlines are kept in a heap (issue #16): a tick once a second still sends the
        LOGOUT at the first tick past 3 intervals of silence, and looks at the session
        only when one of its deadlines comes up, not on every tick."""
        checks: list[float] = []
        engine = self.fx.engine
        check = engine._check

        def counting(record, now):  # type: ignore[no-untyped-def]
            checks.append(now - TS_11_3)
            check(record, now)

        engine._check = counting  # type: ignore[method-assign]
        bearer = self.login()
        bearer.sent.clear()
        self.assertEqual(engine.next_deadline(), TS_11_3)  # the credential check at login
        fired = None
        for second in range(1, 301):
            self.fx.clock.advance(1)
            self.fx.tick()
            if fired is None and bearer.sent:
                fired = second
        self.assertEqual(fired, 3 * 90 + 1)
        [logout] = bearer.take()
        self.assertEqual((logout.COMMAND, logout.reason), (Command.LOGOUT, 2))
        # The sync wait (30 s), the offline time (270 s, acted on strictly after it), the
        # LOGOUT's release 15 s later: nothing in between.
        self.assertEqual(checks, [30, 270, 271, 286])
        self.assertEqual(self.fx.terminal.state, TerminalState.OFFLINE)
        self.assertNotIn(SERIAL, engine.sessions)

    @inlineCallbacks
    def test_request_for_offline_terminal_waits_for_login(self):  # type: ignore[no-untyped-def]
        body = m.ConfigGet(tlvs=[Tlv.query(0x0011)]).encode_body()
        request = yield self.fx.router.submit(SERIAL, Command.CONFIG_GET, body)
        self.assertEqual(request.state, RequestState.QUEUED)
        bearer = self.login()
        bearer.sent.clear()
        # Queued requests wait for the first trap after login (spec 4.4).
        self.fx.engine.receive(terminal_message(m.ConfigTrap(), 2, timestamp=TS_11_3), bearer)
        _trap_ack, get = bearer.sent
        frame = parse_frame(get)
        self.assertEqual(frame.header.command_id, Command.CONFIG_GET)
        self.assertTrue(verify(get, TS_11_3, DOWNLINK))
        self.assertEqual(request.state, RequestState.SENT)
        answer = m.ConfigGetAck(0, tlvs=[Tlv.of(0x0011, 60)])
        self.fx.engine.receive(
            terminal_message(answer, frame.header.sequence_id, timestamp=TS_11_3), bearer
        )
        self.assertEqual(request.state, RequestState.SUCCEEDED)
        self.assertEqual(self.fx.registry.config_values(SERIAL)[0x0011], (60).to_bytes(4, "big"))

    @inlineCallbacks
    def test_udp_request_is_retransmitted_then_fails(self):  # type: ignore[no-untyped-def]
        bearer = self.login()
        self.fx.engine.receive(terminal_message(m.ConfigTrap(), 2, timestamp=TS_11_3), bearer)
        bearer.sent.clear()
        body = m.RemoteCtrl.build(4).encode_body()
        request = yield self.fx.router.submit(SERIAL, Command.REMOTE_CTRL, body)
        self.assertEqual(len(bearer.sent), 1)
        self.fx.clock.advance(15)
        self.fx.clock.advance(15)
        self.assertEqual(len(bearer.sent), 3)
        self.assertEqual(len(set(bearer.sent)), 1, "retransmissions repeat the same bytes")
        self.fx.clock.advance(15)
        self.assertEqual(request.state, RequestState.FAILED)
        self.assertIn("timeout", request.outcome)


    @inlineCallbacks
    def test_a_refused_request_names_its_result_code(self):  # type: ignore[no-untyped-def]
        bearer = self.login()
        self.fx.engine.receive(terminal_message(m.ConfigTrap(), 2, timestamp=TS_11_3), bearer)
        bearer.sent.clear()
        body = m.ConfigSet(tlvs=[Tlv.of(0x0011, 60)]).encode_body()
        request = yield self.fx.router.submit(SERIAL, Command.CONFIG_SET, body)
        [sent] = bearer.sent
        seq = parse_frame(sent).header.sequence_id
        self.fx.engine.receive(terminal_message(m.ConfigSetAck(1), seq, timestamp=TS_11_3), bearer)
        self.assertEqual(request.state, RequestState.FAILED)
        self.assertEqual(request.outcome, "result 1 (ERROR)")


class AsyncOutcomeTest(unittest.TestCase):
    """Outcomes that arrive after the ACK, and the timers around them."""

    @inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.fx = EngineFixture()
        yield self.fx.start()
        self.addCleanup(self.fx.stop)
        self.bearer = FakeBearer()
        self.fx.engine.receive(login_bytes(), self.bearer)
        self.fx.engine.receive(terminal_message(m.ConfigTrap(), 2, timestamp=TS_11_3), self.bearer)
        self.bearer.sent.clear()

    @inlineCallbacks
    def config_set(self):  # type: ignore[no-untyped-def]
        body = m.ConfigSet(tlvs=[Tlv.of(0x0011, 60)]).encode_body()
        request = yield self.fx.router.submit(SERIAL, Command.CONFIG_SET, body)
        [sent] = self.bearer.sent
        seq = parse_frame(sent).header.sequence_id
        ack = terminal_message(m.ConfigSetAck(0), seq, timestamp=TS_11_3)
        self.fx.engine.receive(ack, self.bearer)
        self.assertEqual((request.state, request.outcome), (RequestState.SUCCEEDED, "acknowledged"))
        return request, seq

    @inlineCallbacks
    def test_execution_report_marks_applied(self):  # type: ignore[no-untyped-def]
        request, seq = yield self.config_set()
        report = m.ConfigTrap(tlvs=[Tlv.of(0x4010, (0, seq))])
        self.fx.engine.receive(terminal_message(report, 9, timestamp=TS_11_3), self.bearer)
        self.assertEqual(request.outcome, "applied")

    @inlineCallbacks
    def test_no_report_is_unconfirmed(self):  # type: ignore[no-untyped-def]
        request, _ = yield self.config_set()
        self.fx.clock.advance(300)
        self.assertEqual(request.outcome, "unconfirmed")

    @inlineCallbacks
    def test_logout_7_then_login_is_applied(self):  # type: ignore[no-untyped-def]
        request, _ = yield self.config_set()
        self.fx.engine.receive(terminal_message(m.Logout(7), 10, timestamp=TS_11_3), self.bearer)
        self.fx.clock.advance(5)
        self.fx.engine.receive(login_bytes(seq=11), self.bearer)
        self.assertEqual(request.outcome, "applied")


class BindingTest(unittest.TestCase):
    @inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.fx = EngineFixture()
        yield self.fx.start()
        self.addCleanup(self.fx.stop)

    def test_other_serial_on_a_bound_connection_is_discarded(self) -> None:
        """10.2: only REGISTER and LOGIN may rebind a bound TCP connection."""
        connection = FakeBearer(kind="tcp")
        self.fx.engine.receive(login_bytes(), connection)
        self.assertEqual(self.fx.sessions.bound_serial(connection), SERIAL)
        connection.sent.clear()
        other = bytearray(VECTORS["11.4 HEART_BEAT"])
        other[12:28] = b"A972039999999999"
        self.fx.engine.receive(bytes(other), connection)
        self.assertEqual(connection.sent, [])
        self.fx.engine.receive(VECTORS["11.4 HEART_BEAT"], connection)
        self.assertEqual(len(connection.sent), 1)

    def test_expired_session_key_gets_logout_8(self) -> None:
        """6.4.2: 300 s after the session key expired, the platform logs out (reason 8)."""
        bearer = FakeBearer()
        self.fx.engine.receive(VECTORS["11.9 LOGIN"], bearer)
        terminal = self.fx.terminal
        self.assertIsNotNone(terminal.session_key)
        expiry = terminal.session_key_expiry
        session = self.fx.engine.sessions[SERIAL]
        session.interval = 10**6  # keep the heartbeat watchdog out of the way
        bearer.sent.clear()
        self.fx.clock.advance(expiry + 300 - self.fx.clock.seconds())
        self.fx.tick()
        self.assertEqual(bearer.sent, [])
        self.fx.clock.advance(1)
        self.fx.tick()
        [logout] = bearer.sent
        frame = parse_frame(logout)
        self.assertEqual(frame.header.command_id, Command.LOGOUT)


class RegistrationTest(unittest.TestCase):
    """REGISTER operations 0-4 (spec 4.3, 9.2)."""

    @inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.fx = EngineFixture()
        yield self.fx.start(provision=False)
        self.addCleanup(self.fx.stop)
        self.bearer = FakeBearer()

    def register(self, op, serial="A972030000000000", *, tlvs=(), key=None, seq=1):  # type: ignore[no-untyped-def]
        from m2mgw.protocol.codec import encode_message

        msg = m.Register(op, IMEI, IMSI, tlvs=list(tlvs))
        raw = encode_message(msg, sequence_id=seq, serial=serial, flag=0x80, key=key)
        self.fx.engine.receive(raw, self.bearer)
        [ack] = self.bearer.take()
        return ack

    def register_stored(self, op, **kwargs):  # type: ignore[no-untyped-def]
        """A REGISTER answered 0: its REGISTER_ACK waits for the record's commit (D-340),
        held back here until the store is released."""
        from m2mgw.protocol.codec import encode_message

        msg = m.Register(op, IMEI, IMSI)
        raw = encode_message(msg, serial="A972030000000000", flag=0x80, **kwargs)
        store = self.fx.store
        store.hold()
        self.fx.engine.receive(raw, self.bearer)
        self.assertEqual(self.bearer.sent, [], "answered before the commit")
        store.release()
        [ack] = self.bearer.take()
        return ack

    def test_unprovisioned_device_is_refused(self) -> None:
        self.assertEqual(self.register(0), m.RegisterAck(3, None))

    @inlineCallbacks
    def test_op0_allocates_a_serial_and_queues_credentials_by_sms(self):  # type: ignore[no-untyped-def]
        from m2mgw.core.model import Terminal

        yield self.fx.registry.add(Terminal(imei=IMEI, msisdn="8613900000001"))
        ack = self.register_stored(0, sequence_id=1)
        self.assertEqual(ack.result, 0)
        self.assertTrue(ack.serial.startswith("A9720300"))
        terminal = self.fx.registry.by_imei(IMEI)
        self.assertEqual((terminal.serial, terminal.imsi), (ack.serial, IMSI))
        self.assertEqual(terminal.state, TerminalState.REGISTERED)
        self.assertIsNotNone(terminal.pending)
        self.assertEqual(len(terminal.pending.uplink_password), 8)
        [delivery] = self.fx.registry.queued(ack.serial)
        self.assertEqual(delivery.command, Command.SECURITY_CONFIG)
        self.assertEqual(delivery.body[0], 0)  # op 0, waiting for an SMS bearer (PD-21)
        # A repeated REGISTER re-sends the same pending set (4.3 step 4).
        pending = terminal.pending
        again = self.register_stored(0, sequence_id=2)
        self.assertEqual(again.result, 0)
        self.assertIs(self.fx.registry.by_imei(IMEI).pending, pending)
        self.assertEqual(len(self.fx.registry.queued(ack.serial)), 1, "no second delivery")

    @inlineCallbacks
    def test_op0_over_ip_without_msisdn_asks_for_sms(self):  # type: ignore[no-untyped-def]
        from m2mgw.core.model import Terminal

        yield self.fx.registry.add(Terminal(imei=IMEI))
        self.assertEqual(self.register(0), m.RegisterAck(2, None))

    @inlineCallbacks
    def test_op3_proofs_bind_and_answer_1_then_6(self):  # type: ignore[no-untyped-def]
        from m2mgw.core.model import Terminal
        from m2mgw.protocol.security import base_key_proof, downlink_proof, uplink_proof

        yield self.fx.registry.add(
            Terminal(
                imei=IMEI,
                serial=SERIAL,
                current=example_credentials(),
            )
        )
        proofs = [
            Tlv(0xE026, uplink_proof(UPLINK_PASSWORD, 0xFFFFFFFF)),
            Tlv(0xE029, downlink_proof(DOWNLINK_PASSWORD, 0xFFFFFFFF)),
            Tlv(0xE03A, base_key_proof(BASE_KEY, None)),
        ]
        ack = self.register(3, SERIAL, tlvs=proofs, key=UPLINK)
        self.assertEqual(ack, m.RegisterAck(1, SERIAL))
        self.assertEqual(self.fx.terminal.imsi, IMSI)
        again = self.register(3, SERIAL, tlvs=proofs, key=UPLINK, seq=2)
        self.assertEqual(again, m.RegisterAck(6, SERIAL))
        # Without a digest (PD-06 switch off) op 3 is discarded: no answer.
        from m2mgw.protocol.codec import encode_message

        raw = encode_message(
            m.Register(3, IMEI, IMSI, tlvs=proofs), sequence_id=3, serial=SERIAL, flag=0x80
        )
        self.fx.engine.receive(raw, self.bearer)
        self.assertEqual(self.bearer.sent, [])

    @inlineCallbacks
    def test_op2_rebinds_a_new_imsi(self):  # type: ignore[no-untyped-def]
        from m2mgw.core.model import Terminal

        yield self.fx.registry.add(
            Terminal(
                imei=IMEI,
                imsi="460000000000999",
                serial=SERIAL,
                state=TerminalState.REGISTERED,
                current=example_credentials(),
            )
        )
        # The digest uses the stored binding's IMSI (PD-37).
        old_key = DigestKey.make(IMEI, "460000000000999", UPLINK_PASSWORD)
        ack = self.register(2, SERIAL, key=old_key)
        self.assertEqual(ack, m.RegisterAck(1, SERIAL))
        self.assertEqual(self.fx.terminal.imsi, IMSI)


class HeartbeatTlvTest(unittest.TestCase):
    @inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.fx = EngineFixture()
        yield self.fx.start()
        self.addCleanup(self.fx.stop)

    def test_heartbeat_status_tlvs_are_stored_when_they_change(self) -> None:
        """4.6: status and vendor TLVs on a heartbeat are stored; repeats cost no write."""
        bearer = FakeBearer()
        self.fx.engine.receive(login_bytes(), bearer)
        writes: list[dict[int, bytes]] = []
        store = self.fx.registry.store_config

        def counting(serial, values, source):  # type: ignore[no-untyped-def]
            writes.append(dict(values))
            return store(serial, values, source)

        self.fx.registry.store_config = counting  # type: ignore[method-assign]
        beat = m.HeartBeat(tlvs=[Tlv.of(0x3007, 21), Tlv(0x8100, b"\x1f")])
        for seq in (20, 21, 22):
            self.fx.engine.receive(terminal_message(beat, seq, key=None), bearer)
        self.assertEqual(writes, [{0x3007: b"\x15", 0x8100: b"\x1f"}])
        self.assertEqual(self.fx.registry.config_values(SERIAL)[0x8100], b"\x1f")


class ConfidentialQueueTest(unittest.TestCase):
    @inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.fx = EngineFixture()
        yield self.fx.start()
        self.addCleanup(self.fx.stop)

    @inlineCallbacks
    def test_credentials_waiting_for_a_safe_bearer_do_not_block_the_queue(self):  # type: ignore[no-untyped-def]
        """PD-21 holds op 0 back on a plaintext session; other requests go past it."""
        bearer = FakeBearer()
        self.fx.engine.receive(login_bytes(), bearer)
        self.fx.engine.receive(terminal_message(m.ConfigTrap(), 2, timestamp=TS_11_3), bearer)
        bearer.sent.clear()
        creds = self.fx.engine.new_credentials("legacy", self.fx.clock.seconds())
        self.fx.router.deliver_credentials(self.fx.terminal, creds)
        body = m.ConfigGet(tlvs=[Tlv.query(0x0011)]).encode_body()
        get = yield self.fx.router.submit(SERIAL, Command.CONFIG_GET, body)
        [sent] = bearer.sent
        self.assertEqual(parse_frame(sent).header.command_id, Command.CONFIG_GET)
        self.assertEqual(get.state, RequestState.SENT)
        [waiting] = [r for r in self.fx.registry.queued(SERIAL) if r.state == RequestState.QUEUED]
        self.assertEqual(waiting.command, Command.SECURITY_CONFIG)

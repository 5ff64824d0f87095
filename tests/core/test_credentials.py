"""Credential renewal, re-delivery and expiry (spec 6.3.5, 4.3, 4.13, PD-21, PD-26):
the engine on a Clock with fake bearers and the in-memory registry."""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from m2mgw.core.model import CredentialSet, Terminal
from m2mgw.core.session import Session
from m2mgw.protocol import messages as m
from m2mgw.protocol.codec import TAG_ENCRYPTED, Frame, encode_message, parse_frame, verify_frame
from m2mgw.protocol.constants import ACK_BIT, Command
from m2mgw.protocol.security import DigestKey, decrypt_body, make_cipher
from m2mgw.protocol.tlv import Tlv
from tests.spec_examples import DOWNLINK, IMEI, IMSI, SERIAL, UPLINK_PASSWORD, VECTORS

from .engine_support import EngineFixture, FakeBearer, login_bytes, terminal_message

MARGIN = 7 * 86_400  # credential_renew_margin default
INTERVAL = 3_600.0  # credential_redeliver_interval for these tests
MSISDN = "8613900000001"


def credential_tlvs(creds: CredentialSet) -> list[tuple[int, bytes]]:
    """The six TLVs of a SECURITY_CONFIG op 0 carrying ``creds`` (6.3.4 order)."""
    values = (
        (0xE025, creds.uplink_password),
        (0xE027, creds.uplink_expiry),
        (0xE028, creds.downlink_password),
        (0xE02A, creds.downlink_expiry),
        (0xE036, creds.base_key),
        (0xE038, creds.base_key_expiry),
    )
    return [(tag, Tlv.of(tag, value).raw) for tag, value in values]


class CredentialTest(unittest.TestCase):
    def setUp(self):  # type: ignore[no-untyped-def]
        self.bearer = FakeBearer()
        self.sms = FakeBearer(kind="sms", address=MSISDN)
        self.seen: set[int] = set()
        return self.start(modem=True)

    # ------------------------------------------------------------------ helpers

    @inlineCallbacks
    def start(self, *, modem: bool):  # type: ignore[no-untyped-def]
        """The fixture, with a modem or without one ([sms] device unset)."""
        self.fx = EngineFixture(
            sms_bearer=self.by_sms if modem else None,
            credential_redeliver_interval=INTERVAL,
        )
        yield self.fx.start()
        self.addCleanup(self.fx.stop)

    def by_sms(self, terminal: Terminal) -> FakeBearer | None:
        """The modem's bearer, for a terminal with an MSISDN (as the SMS service's)."""
        return self.sms if terminal.msisdn else None

    def expire_current_in(self, seconds: float) -> None:
        """Make the current uplink password expire ``seconds`` from now."""
        terminal = self.fx.terminal
        assert terminal.current is not None
        terminal.current.uplink_expiry = int(self.fx.clock.seconds() + seconds)
        self.fx.registry.save(terminal)

    def login(self, raw: bytes | None = None) -> Session:
        """LOGIN (11.9 asks for a session key); the heartbeat watchdog is kept away."""
        self.fx.engine.receive(raw or login_bytes(), self.bearer)
        [ack] = self.bearer.take()
        self.assertEqual(ack.result, 0)
        session = self.fx.engine.sessions[SERIAL]
        session.interval = 10**7
        return session

    def advance(self, seconds: float) -> None:
        self.fx.clock.advance(seconds)
        self.fx.tick()

    def deliveries(self, bearer: FakeBearer) -> list[Frame]:
        """SECURITY_CONFIG requests sent on ``bearer`` since the last call, without
        retransmissions (a Sequence_ID seen before); clears ``bearer``."""
        frames: list[Frame] = []
        for raw in bearer.sent:
            frame = parse_frame(raw)
            sequence_id = frame.header.sequence_id
            if frame.header.command_id == Command.SECURITY_CONFIG and sequence_id not in self.seen:
                self.seen.add(sequence_id)
                frames.append(frame)
        bearer.sent.clear()
        return frames

    def decrypted(self, frame: Frame) -> m.SecurityConfig:
        """An encrypted op 0 (6.4.3), opened with the session key."""
        self.assertEqual(frame.header.flag, 0xF0)
        self.assertEqual(frame.container_tag, TAG_ENCRYPTED)
        key = self.fx.terminal.session_key
        assert key is not None
        body = decrypt_body(make_cipher("legacy", key), frame.container_value())
        msg = m.decode_message(Command.SECURITY_CONFIG, body, padded=True)
        assert isinstance(msg, m.SecurityConfig)
        return msg

    def answer(self, frame: Frame, ret: int, session: Session) -> None:
        """The terminal's SECURITY_CONFIG_ACK, digested under its old credentials."""
        ack = terminal_message(
            m.SecurityConfigAck(ret), frame.header.sequence_id, timestamp=session.timestamp
        )
        self.fx.engine.receive(ack, self.bearer)

    def assert_carries(self, msg: m.SecurityConfig, creds: CredentialSet) -> None:
        self.assertEqual(msg.op, 0)
        self.assertEqual([(t.tag, t.raw) for t in msg.tlvs], credential_tlvs(creds))

    # ------------------------------------------------------------------ renewal

    def test_renewal_at_the_margin_goes_encrypted_and_commits_at_login(self) -> None:
        """6.3.5: within the margin a new set is pending, sent in E042, committed by LOGIN."""
        self.expire_current_in(MARGIN + 100)
        session = self.login(VECTORS["11.9 LOGIN"])
        terminal = self.fx.terminal
        self.assertIsNotNone(terminal.session_key)
        self.advance(30)  # sync_trap_wait passes: the queue is open
        self.advance(69)
        self.assertIsNone(terminal.pending, "not yet within the margin")
        self.advance(1)
        pending = terminal.pending
        assert pending is not None
        self.assertNotEqual(pending.uplink_password, UPLINK_PASSWORD)
        [frame] = self.deliveries(self.bearer)
        self.assertTrue(verify_frame(frame, session.timestamp, DOWNLINK))
        self.assert_carries(self.decrypted(frame), pending)

        self.answer(frame, 0, session)
        self.assertEqual(terminal.pending, pending)
        self.assertEqual(pending.delivered_at, self.fx.clock.seconds())
        # LOGOUT 9 under the old set, then LOGIN under the new one commits it.
        logout = terminal_message(m.Logout(9), 20, timestamp=session.timestamp)
        self.fx.engine.receive(logout, self.bearer)
        self.bearer.sent.clear()
        self.login(login_bytes(21, key=DigestKey.make(IMEI, IMSI, pending.uplink_password)))
        self.assertIs(terminal.current, pending)
        self.assertIsNone(terminal.pending)
        # The committed set never expires (credential_ttl "never"): no further renewal.
        self.advance(INTERVAL)
        self.assertIsNone(terminal.pending)

    @inlineCallbacks
    def test_no_renewal_without_a_session_key_or_a_modem(self):  # type: ignore[no-untyped-def]
        """PD-21: with neither a session key nor a modem, no set is made."""
        yield self.start(modem=False)
        terminal = self.fx.terminal
        terminal.msisdn = MSISDN
        self.expire_current_in(MARGIN - 1)
        self.login()
        self.advance(1)
        self.assertIsNone(terminal.pending)
        self.assertEqual(self.fx.registry.queued(SERIAL), [], "nothing blocks the queue")
        self.advance(INTERVAL)
        self.assertIsNone(terminal.pending)

    def test_renewal_without_a_session_key_goes_by_sms(self) -> None:
        """PD-21: without a session key the set goes by SMS, to a terminal with an
        MSISDN; without one, none is made."""
        terminal = self.fx.terminal
        self.expire_current_in(MARGIN - 1)
        self.login()
        self.advance(1)
        self.assertIsNone(terminal.pending)
        self.assertEqual(self.fx.registry.queued(SERIAL), [], "nothing blocks the queue")

        terminal.msisdn = MSISDN
        self.advance(INTERVAL)
        pending = terminal.pending
        assert pending is not None
        self.assertEqual(self.bearer.sent, [], "never in plaintext over IP")
        [frame] = self.deliveries(self.sms)
        self.assertEqual((frame.header.flag, frame.digest), (0x80, None))
        msg = m.decode_message(Command.SECURITY_CONFIG, frame.body)
        assert isinstance(msg, m.SecurityConfig)
        self.assert_carries(msg, pending)

    def test_one_pending_set_redelivered_once_per_interval(self) -> None:
        """No second set while one is pending; re-delivery with the same values."""
        self.expire_current_in(MARGIN - 1)
        session = self.login(VECTORS["11.9 LOGIN"])
        terminal = self.fx.terminal
        self.advance(30)
        pending = terminal.pending
        assert pending is not None
        [first] = self.deliveries(self.bearer)
        # The terminal asks for renewal (op 6) meanwhile: the same set, no second delivery.
        renew = m.SecurityConfig(6, tlvs=[Tlv.query(0xE025)])
        request = terminal_message(renew, 30, timestamp=session.timestamp)
        self.fx.engine.receive(request, self.bearer)
        self.assertIs(terminal.pending, pending)
        self.assertEqual(len(self.fx.registry.queued(SERIAL)), 1)
        self.answer(first, 0, session)
        delivered = pending.delivered_at
        assert delivered is not None

        self.advance(INTERVAL - 1)
        self.assertIs(terminal.pending, pending)
        self.assertEqual(self.deliveries(self.bearer), [])
        self.advance(1)
        [again] = self.deliveries(self.bearer)
        self.assertIs(terminal.pending, pending)
        self.assert_carries(self.decrypted(again), pending)

        # Unanswered this time (UDP retries, then the request fails): still at most
        # once per interval, counted from the re-delivery.
        for _ in range(int(INTERVAL) - 1):
            self.advance(1)
        self.assertEqual(self.deliveries(self.bearer), [])
        self.advance(1)
        [third] = self.deliveries(self.bearer)
        self.assert_carries(self.decrypted(third), pending)
        self.assertEqual(pending.delivered_at, delivered)

    def test_rejected_set_is_discarded(self) -> None:
        """4.13: SECURITY_CONFIG_ACK ret 2 discards the pending set; the old set stays."""
        self.expire_current_in(MARGIN - 1)
        session = self.login(VECTORS["11.9 LOGIN"])
        terminal = self.fx.terminal
        current = terminal.current
        self.advance(30)
        rejected = terminal.pending
        assert rejected is not None
        [frame] = self.deliveries(self.bearer)
        self.answer(frame, 2, session)
        self.assertIsNone(terminal.pending)
        self.assertIs(terminal.current, current)
        self.assertIsNone(self.fx.registry.get(SERIAL).pending)
        # The renewal is tried again one interval later, with a new set.
        self.advance(INTERVAL)
        retry = terminal.pending
        assert retry is not None
        self.assertNotEqual(retry.uplink_password, rejected.uplink_password)
        [frame] = self.deliveries(self.bearer)
        self.assert_carries(self.decrypted(frame), retry)

    def test_a_tick_looks_only_at_due_terminals(self) -> None:
        """The upkeep is a time-ordered heap: a logged-in terminal is checked at login
        and then once per interval (or at its margin), not on every tick."""
        checks: list[str] = []
        credentials = self.fx.engine.credentials
        check = credentials.check

        def counting(terminal, session, record, now):  # type: ignore[no-untyped-def]
            checks.append(session.serial)
            return check(terminal, session, record, now)

        credentials.check = counting  # type: ignore[method-assign]
        self.login()
        for _ in range(100):
            self.advance(1)
        self.assertEqual(checks, [SERIAL])
        self.advance(INTERVAL - 100)
        self.assertEqual(checks, [SERIAL], "the next check is one interval after the first")
        self.advance(1)
        self.assertEqual(checks, [SERIAL, SERIAL])

    # ------------------------------------------------------------------ expiry at login

    def register_by_sms(self, sms: FakeBearer) -> m.Message:
        """REGISTER op 1 by SMS: its REGISTER_ACK follows the record's commit (D-340)."""
        raw = encode_message(m.Register(1, IMEI, IMSI), sequence_id=2, serial=SERIAL, flag=0xC0)
        store = self.fx.store
        store.hold()
        self.fx.engine.receive(raw, sms)
        self.assertEqual(sms.sent, [], "answered before the commit")
        store.release()
        answer = Command.REGISTER | ACK_BIT
        [ack] = [f for f in sms.sent if parse_frame(f).header.command_id == answer]
        sms.sent.remove(ack)
        return m.decode_message(answer, parse_frame(ack).body)

    def test_expired_set_gives_7_then_register_op1_delivers_a_fresh_set(self) -> None:
        """6.3.5 and 4.3: LOGIN_ACK 7, then REGISTER op 1 gets a new set by SMS."""
        terminal = self.fx.terminal
        terminal.msisdn = MSISDN
        self.expire_current_in(-1)
        self.fx.engine.receive(login_bytes(), self.bearer)
        [ack] = self.bearer.take()
        self.assertEqual((ack.result, ack.timestamp), (7, 0))
        self.assertNotIn(SERIAL, self.fx.engine.sessions)

        self.assertEqual(self.register_by_sms(self.sms), m.RegisterAck(0, SERIAL))
        fresh = terminal.pending
        assert fresh is not None
        self.assertNotEqual(fresh.uplink_password, UPLINK_PASSWORD)
        [frame] = self.deliveries(self.sms)
        msg = m.decode_message(Command.SECURITY_CONFIG, frame.body)
        assert isinstance(msg, m.SecurityConfig)
        self.assert_carries(msg, fresh)

    def test_register_op1_with_a_valid_set_redelivers_it(self) -> None:
        """4.3 selection: an unexpired current set is re-sent; no new set is made."""
        terminal = self.fx.terminal
        terminal.msisdn = MSISDN
        current = terminal.current
        assert current is not None
        self.assertEqual(self.register_by_sms(self.sms), m.RegisterAck(0, SERIAL))
        self.assertIsNone(terminal.pending)
        [frame] = self.deliveries(self.sms)
        msg = m.decode_message(Command.SECURITY_CONFIG, frame.body)
        assert isinstance(msg, m.SecurityConfig)
        self.assert_carries(msg, current)

"""Each accommodation of the compatibility profiles in the engine and router (issue #10):
the CMCC Java ME client's bytes of spec 1.6 against ``cmcc-javame`` and ``strict``, on
fake bearers, a Clock and the in-memory registry."""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from m2mgw.core.model import TerminalState
from m2mgw.core.refusals import Reason
from m2mgw.protocol import messages as m
from m2mgw.protocol.checksum import crc16_cmcc
from m2mgw.protocol.codec import build_frame, parse_frame
from m2mgw.protocol.compat import ProfileRefused
from m2mgw.protocol.constants import ACK_BIT, Command
from m2mgw.protocol.security import base_key_proof, downlink_proof, uplink_proof, verify
from m2mgw.protocol.tlv import Tlv
from tests import cmcc
from tests.spec_examples import TS_11_3

from .engine_support import EngineFixture, FakeBearer, login_bytes, terminal_message

TRAP_3007 = m.ConfigTrap(tlvs=[Tlv.of(0x3007, 23)])


def sent_by_cmcc(
    message: m.Message, seq: int, *, sign: str = "none", timestamp: int = 0, flag: int = 0
) -> bytes:
    """A message as the CMCC client builds it: ``sign`` is none (C3), unflagged (C1),
    header (C4) or flagged (what the profile asks for)."""
    body = message.encode_body()
    if sign == "none":
        return build_frame(message.COMMAND, seq, cmcc.SERIAL, body, flag=flag)
    return build_frame(
        message.COMMAND, seq, cmcc.SERIAL, body, flag=flag, key=cmcc.UPLINK,
        timestamp=timestamp, flag_digest=sign == "flagged", header_only=sign == "header",
    )  # fmt: skip


def refusals_of(events: list[dict[str, Any]]) -> list[str]:
    return [formatEvent(e) for e in events if e.get("event") == "refusal"]


class ProfileTestCase(unittest.TestCase):
    """The example terminal (strict) and the CMCC terminal, provisioned with ``compat``."""

    compat: str | None = "cmcc-javame"

    @inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.fx = EngineFixture()
        yield self.fx.start()
        self.addCleanup(self.fx.stop)
        yield self.fx.registry.add(cmcc.record(compat=self.compat))
        self.engine = self.fx.engine

    @property
    def terminal(self):  # type: ignore[no-untyped-def]
        return self.fx.registry.get(cmcc.SERIAL)

    def counts(self) -> dict[Reason, int]:
        return self.engine.refusals.counts(cmcc.SERIAL)

    def receive(self, data: bytes, bearer: FakeBearer) -> list[str]:
        """Hand ``data`` in; the refusal lines it caused."""
        with capturedLogs() as events:
            self.engine.receive(data, bearer)
        return refusals_of(events)

    def cmcc_login(self) -> FakeBearer:
        bearer = FakeBearer(kind="tcp", address="127.0.0.1:41000")
        self.receive(cmcc.LOGIN_1_6, bearer)
        [ack] = bearer.take()
        self.assertEqual(ack.result, 0)
        self.ts = self.terminal.session_timestamp
        return bearer


class CmccProfileTest(ProfileTestCase):
    def test_the_login_of_1_6_is_answered_0_and_signed(self) -> None:
        """C1 (digest with flag 0x00) and C2 (CRC32 0: no sync values stored at all)."""
        bearer = FakeBearer(kind="tcp")
        self.assertEqual(self.receive(cmcc.LOGIN_1_6, bearer), [])
        [raw] = bearer.sent
        ack = m.LoginAck.decode_body(parse_frame(raw).body)
        self.assertEqual(ack.result, 0)
        self.assertTrue(verify(raw, ack.timestamp, cmcc.DOWNLINK), "signed: the LOGIN verified")
        self.assertEqual(self.terminal.state, TerminalState.LOGGED_IN)
        self.assertEqual(self.counts(), {})

    def test_c2_is_only_for_a_crc_of_0(self) -> None:
        login = sent_by_cmcc(m.Login(cmcc.SOFTWARE_VERSION, 0x1234), 1, sign="unflagged")
        bearer = FakeBearer(kind="tcp")
        self.receive(login, bearer)
        self.assertEqual(bearer.take()[0].result, 1)  # a real CRC is checked as ever

    @inlineCallbacks
    def test_c3_unsigned_on_the_session_connection(self):  # type: ignore[no-untyped-def]
        """C3 and C5: unsigned TRANSPARENT_DATA with the CRC variant, CONFIG_REQ, LOGOUT."""
        bearer = self.cmcc_login()
        data = m.TransparentData(int.from_bytes(crc16_cmcc(b"\x01\x02"), "big"),
                                 tlvs=[Tlv.of(0x4014, "EC0001"), Tlv(0x4007, b"\x01\x02")])
        self.assertEqual(self.receive(sent_by_cmcc(data, 2), bearer), [])
        self.fx.commit()
        [raw] = bearer.sent
        self.assertIsNone(parse_frame(raw).digest, "an unsigned request is answered unsigned")
        self.assertEqual(bearer.take()[0].result, 1)  # stored for its application
        entries = yield self.fx.registry.messages(cmcc.SERIAL)
        self.assertIn("data=0102", next(e.detail for e in entries if e.event == "uplink-data"))

        self.receive(sent_by_cmcc(m.ConfigReq(tlvs=[Tlv.query(0x0011)]), 3), bearer)
        self.assertEqual(bearer.take(), [m.ConfigReqAck(1, tlvs=[Tlv.query(0x0011)])])
        self.receive(sent_by_cmcc(m.Logout(0), 4), bearer)
        self.assertEqual(bearer.take(), [m.LogoutAck()])
        self.assertEqual(self.terminal.state, TerminalState.LOGGED_OUT)
        self.assertEqual(self.counts(), {})

    def test_c3_never_over_udp_or_another_connection(self) -> None:
        self.cmcc_login()
        data = m.TransparentData.build(b"\x01", Tlv.of(0x4014, "EC0001"))
        for bearer in (FakeBearer(kind="udp"), FakeBearer(kind="tcp", address="127.0.0.1:9")):
            [line] = self.receive(sent_by_cmcc(data, 2), bearer)
            self.assertIn("accepted only on the TCP connection of the logged-in session", line)
            self.assertEqual(bearer.sent, [])
        self.assertEqual(self.counts(), {Reason.MISSING_DIGEST: 2})

    def test_c4_a_header_signed_trap_is_refused_and_counted(self) -> None:
        bearer = self.cmcc_login()
        empty = sent_by_cmcc(m.ConfigTrap(), 2, sign="header", timestamp=self.ts)
        self.receive(empty, bearer)  # its post-login trap: the header is all it has
        [raw] = bearer.sent
        self.assertEqual(m.ConfigTrapAck.decode_body(parse_frame(raw).body).ret, 0)
        bearer.sent.clear()
        [line] = self.receive(sent_by_cmcc(TRAP_3007, 3, sign="header", timestamp=self.ts),
                              bearer)  # fmt: skip
        self.assertEqual(bearer.sent, [])
        self.assertIn("header-only-digest", line)
        self.assertIn("no profile accepts it (C4)", line)
        self.assertEqual(self.counts(), {Reason.HEADER_ONLY_DIGEST: 1})
        self.assertNotIn(0x3007, self.fx.registry.config_values(cmcc.SERIAL))

    def test_c6_little_endian_integers_are_stored_as_the_numbers_they_mean(self) -> None:
        bearer = self.cmcc_login()
        trap = m.ConfigTrap(tlvs=[Tlv(0x0011, bytes.fromhex("5A000000"))])
        self.receive(sent_by_cmcc(trap, 2, sign="unflagged", timestamp=self.ts), bearer)
        self.assertEqual(bearer.take(), [m.ConfigTrapAck(0)])
        self.assertEqual(self.fx.registry.config_values(cmcc.SERIAL)[0x0011], b"\x00\x00\x00\x5a")
        self.assertEqual(self.terminal.heartbeat_interval, 90)
        self.assertEqual(self.engine.sessions[cmcc.SERIAL].interval, 90.0)

    def test_ranges_apply_whatever_the_profile(self) -> None:
        """A value read little-endian is still checked: 0 s is no heartbeat interval."""
        bearer = self.cmcc_login()
        trap = m.ConfigTrap(tlvs=[Tlv.of(0x3007, 9), Tlv(0x0011, bytes(4))])
        [line] = self.receive(sent_by_cmcc(trap, 2, sign="unflagged", timestamp=self.ts), bearer)
        self.assertEqual(bearer.take(), [m.ConfigTrapAck(1, 0x0011)])
        self.assertIn("0x0011 (PERIOD_CFG) = 0 is outside 1-86,400: not stored", line)
        self.assertNotIn(0x3007, self.fx.registry.config_values(cmcc.SERIAL))
        self.assertEqual(self.counts(), {Reason.OUT_OF_RANGE: 1})

    def test_c7_c9_requests_fail_at_once(self) -> None:
        router = self.fx.router
        get = m.ConfigGet(tlvs=[Tlv.query(0x0011)]).encode_body()
        for command, body in ((Command.CONFIG_GET, get),
                              (Command.DOWNLOAD_INFO, b""),
                              (Command.TRANSPARENT_DATA,
                               m.TransparentData.build(b"\x01").encode_body())):  # fmt: skip
            with self.assertRaises(ProfileRefused) as caught:
                router.submit(cmcc.SERIAL, command, body)
            self.assertIn("(C9)", caught.exception.reason)
            self.assertFalse(caught.exception.too_large)
        big = m.ConfigSet(tlvs=[Tlv.of(0x0003, "x" * 220)]).encode_body()
        with self.assertRaises(ProfileRefused) as caught:
            router.submit(cmcc.SERIAL, Command.CONFIG_SET, big)
        self.assertTrue(caught.exception.too_large)
        self.assertIn("272 bytes", caught.exception.reason)
        self.assertEqual(self.fx.registry.queued(cmcc.SERIAL), [])
        self.assertEqual(self.counts(), {Reason.PROFILE: 4})

    @inlineCallbacks
    def test_c6_c7_what_it_is_sent(self):  # type: ignore[no-untyped-def]
        """A CONFIG_SET goes out with its integers little-endian; an answer too large
        to read is the command's error answer."""
        bearer = self.cmcc_login()
        body = m.ConfigSet(tlvs=[Tlv.of(0x0011, 120)]).encode_body()
        yield self.fx.router.submit(cmcc.SERIAL, Command.CONFIG_SET, body)
        self.receive(sent_by_cmcc(m.ConfigTrap(), 2, sign="header", timestamp=self.ts), bearer)
        self.assertEqual(len(bearer.sent), 2, "the trap's answer, then the queued CONFIG_SET")
        request = parse_frame(bearer.sent[1])
        self.assertEqual(request.body, bytes.fromhex("0011 0004 78000000"))
        self.assertLess(len(bearer.sent[1]), 256)
        bearer.sent.clear()
        # The values it asks for come little-endian as well (stored: 120 s, big-endian).
        yield self.fx.registry.store_config(cmcc.SERIAL, {0x0011: (120).to_bytes(4, "big")},
                                            "set")  # fmt: skip
        self.receive(sent_by_cmcc(m.ConfigReq(tlvs=[Tlv.query(0x0011)]), 3), bearer)
        [raw] = bearer.sent
        self.assertEqual(parse_frame(raw).body, bytes.fromhex("00 0011 0004 78000000"))
        bearer.sent.clear()
        yield self.fx.registry.store_config(cmcc.SERIAL, {0x0003: b"u" * 240}, "set")
        [line] = self.receive(sent_by_cmcc(m.ConfigReq(tlvs=[Tlv.query(0x0003)]), 4), bearer)
        self.assertIn("(C7)", line)
        self.assertEqual(bearer.take(), [m.ConfigReqAck(1)])

    def test_relayed_data_to_it_is_rejected(self) -> None:
        """A terminal's TRANSPARENT_DATA to a CMCC terminal would be a platform
        TRANSPARENT_DATA, which it never answers (C9): result 3."""
        udp = FakeBearer()
        self.engine.receive(login_bytes(), udp)
        udp.sent.clear()
        msg = m.TransparentData.build(b"\x05", Tlv.of(0x4012, cmcc.SERIAL))
        self.engine.receive(terminal_message(msg, 2, timestamp=TS_11_3), udp)
        self.assertEqual(udp.take()[0].result, 3)
        self.assertEqual(self.counts(), {Reason.PROFILE: 1})


class StrictProfileTest(ProfileTestCase):
    """The same bytes from a terminal provisioned ``strict``: refused as before issue
    #10, now counted and with the line that names the profile."""

    compat = "strict"

    def test_the_login_of_1_6_gets_login_ack_2_unsigned(self) -> None:
        bearer = FakeBearer(kind="tcp")
        [line] = self.receive(cmcc.LOGIN_1_6, bearer)
        [raw] = bearer.sent
        self.assertIsNone(parse_frame(raw).digest)
        self.assertEqual(m.LoginAck.decode_body(parse_frame(raw).body), m.LoginAck(2, 0))
        self.assertIn("missing-digest (LOGIN lacks its digest (flag 0x20 clear))", line)
        self.assertIn("the cmcc-javame profile accepts it (C1)", line)
        self.assertEqual(self.counts(), {Reason.MISSING_DIGEST: 1})
        self.assertEqual(self.terminal.state, TerminalState.REGISTERED)

    def test_default_compat_serves_terminals_provisioned_without_one(self) -> None:
        self.terminal.compat = None
        frames = self.fx.frames
        frames.config = dataclasses.replace(frames.config, default_compat="cmcc-javame")
        bearer = FakeBearer(kind="tcp")
        self.receive(cmcc.LOGIN_1_6, bearer)
        self.assertEqual(bearer.take()[0].result, 0)

    def login_signed(self) -> FakeBearer:
        """A strict login: flag 0xA0 and a sync CRC (result 1: no values stored)."""
        bearer = FakeBearer(kind="tcp")
        login = sent_by_cmcc(m.Login(cmcc.SOFTWARE_VERSION, 0), 1, sign="flagged", flag=0x80)
        self.receive(login, bearer)
        [ack] = bearer.take()
        self.assertEqual(ack.result, 1)
        self.ts = self.terminal.session_timestamp
        return bearer

    def test_unsigned_data_is_refused_with_the_c3_line(self) -> None:
        bearer = self.login_signed()
        data = m.TransparentData.build(b"\x01", Tlv.of(0x4014, "EC0001"))
        [line] = self.receive(sent_by_cmcc(data, 2), bearer)
        self.assertEqual(bearer.sent, [])
        self.assertTrue(line.endswith(
            "this terminal sends unsigned TRANSPARENT_DATA; the cmcc-javame profile accepts it "
            "(C3) on the TCP connection of the logged-in session"), line)  # fmt: skip
        [line] = self.receive(sent_by_cmcc(m.Logout(0), 3), bearer)
        self.assertIn("unsigned LOGOUT", line)
        self.assertEqual(self.terminal.state, TerminalState.LOGGED_IN)
        self.assertEqual(self.counts(), {Reason.MISSING_DIGEST: 2})

    def test_the_header_signed_trap_is_refused(self) -> None:
        bearer = self.login_signed()
        self.receive(sent_by_cmcc(TRAP_3007, 2, sign="header", timestamp=self.ts), bearer)
        self.assertEqual(bearer.sent, [])
        self.assertEqual(self.counts(), {Reason.HEADER_ONLY_DIGEST: 1})

    def test_the_crc_variant_is_result_4_with_the_c5_line(self) -> None:
        bearer = self.login_signed()
        variant = int.from_bytes(crc16_cmcc(b"\x01\x02"), "big")
        data = m.TransparentData(variant, tlvs=[Tlv(0x4007, b"\x01\x02")])
        [line] = self.receive(sent_by_cmcc(data, 2, sign="flagged", timestamp=self.ts), bearer)
        self.assertEqual(bearer.take()[0].result, 4)
        self.assertIn("crc-mismatch", line)
        self.assertIn("the cmcc-javame profile accepts it (C5)", line)
        wrong = m.TransparentData(0x1111, tlvs=[Tlv(0x4007, b"\x01\x02")])
        [line] = self.receive(sent_by_cmcc(wrong, 3, sign="flagged", timestamp=self.ts), bearer)
        self.assertNotIn("profile", line)
        self.assertEqual(self.counts(), {Reason.CRC_MISMATCH: 2})

    def test_a_little_endian_heartbeat_is_refused_not_stored(self) -> None:
        """The issue's 1.5 billion seconds: ret 1 naming 0x0011, and the C6 line."""
        bearer = self.login_signed()
        trap = m.ConfigTrap(tlvs=[Tlv(0x0011, bytes.fromhex("5A000000"))])
        [line] = self.receive(sent_by_cmcc(trap, 2, sign="flagged", timestamp=self.ts), bearer)
        self.assertEqual(bearer.take(), [m.ConfigTrapAck(1, 0x0011)])
        self.assertIn("= 1,509,949,440 is outside 1-86,400: not stored", line)
        self.assertIn("(read so: 90); the cmcc-javame profile accepts it (C6)", line)
        self.assertNotIn(0x0011, self.fx.registry.config_values(cmcc.SERIAL))
        self.assertIsNone(self.terminal.heartbeat_interval)

    def test_heartbeat_tlvs_out_of_range_are_not_stored(self) -> None:
        bearer = self.login_signed()
        tlvs = [Tlv.of(0x3007, 17), Tlv.of(0x4002, 9)]
        beat = build_frame(Command.HEART_BEAT, 2, cmcc.SERIAL, m.HeartBeat(tlvs=tlvs).encode_body())
        [line] = self.receive(beat, bearer)
        self.assertEqual(bearer.sent[0][2:4], (Command.HEART_BEAT | ACK_BIT).to_bytes(2, "big"))
        self.assertIn("0x4002 (CONNECTMODE) = 9 is outside 0-4", line)
        stored = self.fx.registry.config_values(cmcc.SERIAL)
        self.assertEqual((stored.get(0x3007), stored.get(0x4002)), (b"\x11", None))


class SimcomProfileTest(ProfileTestCase):
    """PD-06 on the terminal's profile: REGISTER op 3 without a digest."""

    compat = "simcom"

    def register_op3(self) -> bytes:
        creds = self.terminal.current
        proofs = [
            Tlv(0xE026, uplink_proof(creds.uplink_password, creds.uplink_expiry)),
            Tlv(0xE029, downlink_proof(creds.downlink_password, creds.downlink_expiry)),
            Tlv(0xE03A, base_key_proof(creds.base_key, creds.base_key_expiry)),
        ]
        register = m.Register(3, cmcc.IMEI, cmcc.IMSI, tlvs=proofs)
        return sent_by_cmcc(register, 1, flag=0x80)

    def test_register_op3_on_its_proofs_alone(self) -> None:
        bearer = FakeBearer()
        self.assertEqual(self.receive(self.register_op3(), bearer), [])
        [ack] = bearer.take()
        self.assertEqual((ack.result, ack.serial), (6, cmcc.SERIAL))

    def test_strict_discards_it_with_the_pd06_line(self) -> None:
        self.terminal.compat = "strict"
        bearer = FakeBearer()
        [line] = self.receive(self.register_op3(), bearer)
        self.assertEqual(bearer.sent, [])
        self.assertIn("REGISTER op 3 lacks its digest", line)
        self.assertIn("the simcom profile accepts it (PD-06)", line)
        self.assertEqual(self.counts(), {Reason.MISSING_DIGEST: 1})


class DeprecatedSwitchTest(unittest.TestCase):
    def test_the_old_switch_is_logged_as_deprecated(self) -> None:
        """D-238: the gateway says what the key now means, once, at start."""
        with capturedLogs() as events:
            EngineFixture(register_op3_digest_optional=True)
        [line] = [formatEvent(e) for e in events if "deprecated" in formatEvent(e)]
        self.assertIn("default_compat = simcom", line)

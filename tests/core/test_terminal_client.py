"""Tests for the terminal state machine (spec 4-10) against the worked examples of 11."""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial import unittest

from m2mgw.core.terminal import (
    Answer,
    Credentials,
    CredentialsChanged,
    Discarded,
    DownloadOffered,
    FileDownloaded,
    LoggedIn,
    LoggedOut,
    LoginFailed,
    PlatformRequest,
    Registered,
    RequestTimedOut,
    TerminalClient,
    TerminalIdentity,
    sync_crc,
)
from m2mgw.protocol import messages as m
from m2mgw.protocol.checksum import crc16
from m2mgw.protocol.codec import (
    FRAGMENT_FLAG,
    build_frame,
    decode_frame,
    encode_message,
    parse_frame,
)
from m2mgw.protocol.constants import ACK_BIT, Command
from m2mgw.protocol.fragment import FragmentOp, FragmentPart, FragmentSender
from m2mgw.protocol.framing import StreamFramer
from m2mgw.protocol.security import AesCipher, DigestKey, LegacyCipher, encode_session_key, verify
from m2mgw.protocol.tlv import Tlv, decode_tlvs, tlv_dict
from m2mgw.tools.terminal import build_identities, derive, parse_trap, parser, run

SERIAL = "A972030000001234"
IMEI = "860000000000001"
IMSI = "460000000000001"
CREDENTIALS = Credentials("12345678", "87654321", base_key="112233445566778899001234",
                          base_key_expiry=0xAAAAAAAA)  # fmt: skip
SYNC_VALUES = {
    0x0002: b"CMNET",
    0x0007: b"1065840436",
    0x0009: bytes.fromhex("C000020A"),
    0x000A: bytes.fromhex("14731474"),
    0x0011: bytes.fromhex("0000005A"),
}
UP = DigestKey.make(IMEI, IMSI, "12345678")
DOWN = DigestKey.make(IMEI, IMSI, "87654321")
TS = 0x67000000
TS_KEY = 0x67000100


def dump(text: str) -> bytes:
    """Bytes of a spec hex dump (lines prefixed with a 4-digit offset)."""
    out = []
    for line in text.strip().splitlines():
        tokens = line.split()
        out.extend(tokens[1:] if len(tokens[0]) == 4 else tokens)
    return bytes.fromhex("".join(out))


LOGIN_11_2 = dump("""
0000  00 3C 00 01 00 00 00 01 03 00 A0 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 31 2E 30 31
0020  00 00 00 00 AB FE D4 CF E0 21 00 10 D3 83 59 45
0030  2D A7 F6 D5 39 65 EE CA 90 F8 A2 C4
""")
LOGIN_ACK_11_3 = dump("""
0000  00 35 80 01 00 00 00 01 03 00 A0 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 00 67 00 00
0020  00 E0 21 00 10 1E E7 CB C8 C7 58 7F 15 31 93 3D
0030  97 92 7C 15 A5
""")
HEART_BEAT_11_4 = dump("""
0000  00 1C 00 03 00 00 00 02 03 00 00 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34
""")
HEART_BEAT_ACK_11_4 = dump("""
0000  00 1C 80 03 00 00 00 02 03 00 00 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34
""")
DATA_11_5 = dump("""
0000  00 44 00 04 00 00 00 03 03 00 20 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 2B A1 40 14
0020  00 06 45 43 30 30 30 31 40 07 00 04 01 02 03 04
0030  E0 21 00 10 80 C9 62 06 67 CA 0C 9E 7C EE 1C 25
0040  69 69 AF C6
""")
DATA_ACK_11_5 = dump("""
0000  00 31 80 04 00 00 00 03 03 00 20 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 00 E0 21 00
0020  10 40 16 E3 39 BB 00 3A DB A7 95 BB 25 A4 E4 C3
0030  6E
""")
ASK_PART2_11_6 = dump("""
0000  00 3B 80 07 00 00 00 04 03 00 30 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 40 08 00 07
0020  00 01 00 02 00 02 01 E0 21 00 10 FF 80 5A 2E C7
0030  77 53 8C 3A CA 3B 9A 8F 7D 8F CE
""")
PART2_11_6 = dump("""
0000  00 54 00 07 00 00 00 04 03 00 30 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 40 08 00 20
0020  00 01 00 02 00 02 00 F8 66 FF F1 F0 00 00 08 C1
0030  00 00 10 15 66 FF F8 F8 00 00 08 D2 00 00 10 32
0040  E0 21 00 10 F3 AA 4F 30 49 8B 41 00 48 45 14 A6
0050  FD 4A 09 5D
""")
TRAP_ACK_11_6 = dump("""
0000  00 31 80 07 00 00 00 04 03 00 20 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 00 E0 21 00
0020  10 B0 6D CB 1A A9 3B 44 2A 04 AC 20 78 18 33 A3
0030  9C
""")
LOGIN_11_9 = dump("""
0000  00 50 00 01 00 00 00 05 03 00 E0 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 31 2E 30 31
0020  00 00 00 00 AB FE D4 CF E0 3A 00 10 CB C0 98 D8
0030  C6 D3 43 AC 5F 41 23 A9 E9 63 C7 A7 E0 21 00 10
0040  62 3B 56 FF AA 0A 54 78 14 88 71 AB 54 53 69 36
""")
LOGIN_ACK_11_9 = dump("""
0000  00 59 80 01 00 00 00 05 03 00 E0 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 00 67 00 01
0020  00 E0 40 00 20 00 8E 39 C6 2F 3E ED 61 46 23 46
0030  AC 46 3D FD A5 08 0F B1 8B 37 87 1E AB 98 61 F4
0040  D2 C2 47 9B 85 E0 21 00 10 2E BE 6B 05 14 6C 80
0050  85 D8 9B 04 36 BC 2B 93 6C
""")
ENCRYPTED_DATA_11_10 = dump("""
0000  00 4C 00 04 00 00 00 06 03 00 F0 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 E0 42 00 18
0020  BA 8C C7 D0 27 55 A6 A9 B7 1C 64 FD 91 67 C7 29
0030  AB 38 F7 4C EC 0A D1 22 E0 21 00 10 AE C0 37 A3
0040  A6 D5 FE 1D 76 53 DC 2D 58 00 DA 38
""")


def statistics_trap_11_6() -> list[Tlv]:
    """The 925-byte CONFIG_TRAP body of 11.6 as TLVs."""
    records = b"".join(
        struct.pack(">III", 0x66FDF0A8 + 1800 * i, 1000 + 17 * i, 2000 + 29 * i) for i in range(75)
    )
    return [Tlv.of(0x2004, 1), Tlv.of(0x2006, 0x66FDF0A8), Tlv.of(0x2007, 0x67000000),
            Tlv(0x2017, records)]  # fmt: skip


def make_client(bearer: str = "tcp", clock: Clock | None = None, **kw: object) -> TerminalClient:
    identity = TerminalIdentity(SERIAL, IMEI, IMSI, CREDENTIALS, cipher="legacy",
                                config=dict(SYNC_VALUES))  # fmt: skip
    return TerminalClient(identity, bearer, clock=(clock or Clock()).seconds, **kw)  # type: ignore[arg-type]


def platform(message: m.Message, seq: int, ts: int = TS, **kw: object) -> bytes:
    """A P→T message signed like the platform signs it (downlink password)."""
    return encode_message(message, sequence_id=seq, serial=SERIAL, key=DOWN, timestamp=ts, **kw)  # type: ignore[arg-type]


def sent(frame: bytes, ts: int = TS, cipher: LegacyCipher | None = None) -> m.Message:
    """Check a T→P message's uplink digest and decode it."""
    parsed = parse_frame(frame)
    assert verify(frame, ts, UP), "uplink digest"
    return decode_frame(parsed, cipher)


def logged_in(client: TerminalClient) -> TerminalClient:
    assert client.login() == LOGIN_11_2
    assert isinstance(client.receive(LOGIN_ACK_11_3, 0.0)[0], LoggedIn)
    return client


# --- the worked examples --------------------------------------------------------------


def test_sync_crc_of_example_identity() -> None:
    assert sync_crc((0x0002, 0x0007, 0x0009, 0x000A, 0x0011), SYNC_VALUES) == 0xABFED4CF


def test_examples_11_2_to_11_10_byte_for_byte() -> None:
    client = make_client(encrypt_bodies=True)
    assert client.login() == LOGIN_11_2
    assert client.receive(LOGIN_ACK_11_3, 1.0) == [LoggedIn(0, TS, None)]
    assert client.logged_in and client.data_to_send() == []

    assert client.heartbeat() == HEART_BEAT_11_4
    [answer] = client.receive(HEART_BEAT_ACK_11_4, 2.0)
    assert isinstance(answer, Answer) and answer.command == Command.HEART_BEAT | ACK_BIT

    assert client.transparent_data(bytes.fromhex("01020304"), "EC0001") == DATA_11_5
    [answer] = client.receive(DATA_ACK_11_5, 3.0)
    assert answer == Answer(0x8004, 3, m.TransparentDataAck(0))

    part1 = client.trap(statistics_trap_11_6())
    assert len(part1) == 959 and part1[:39].hex() == (
        "03bf00070000000403003000413937323033303030303030313233344008038b00010002000100"
    )
    assert part1[-16:] == bytes.fromhex("2277091140A6A1160014CC3AC4A40F28")
    assert client.receive(ASK_PART2_11_6, 4.0) == []
    assert client.data_to_send() == [PART2_11_6]
    assert client.receive(TRAP_ACK_11_6, 5.0) == [Answer(0x8007, 4, m.ConfigTrapAck(0))]

    assert client.login(request_session_key=True) == LOGIN_11_9
    assert client.receive(LOGIN_ACK_11_9, 6.0) == [
        LoggedIn(0, TS_KEY, "Q7m2Xc9TzR4vL8pw", TS_KEY + 86400)
    ]
    assert client.session_key == "Q7m2Xc9TzR4vL8pw"
    assert client.transparent_data(bytes.fromhex("01020304"), "EC0001") == ENCRYPTED_DATA_11_10
    assert client.pending_requests == 1


def test_bad_digest_on_answer_is_discarded() -> None:
    client = make_client()
    client.login()
    forged = bytearray(LOGIN_ACK_11_3)
    forged[-1] ^= 0x01
    [event] = client.receive(bytes(forged), 0.0)
    assert isinstance(event, Discarded) and "digest" in event.reason
    assert not client.logged_in and client.pending_requests == 1
    client.receive(LOGIN_ACK_11_3, 0.0)
    client.heartbeat()
    assert client.transparent_data(b"\x01\x02\x03\x04", "EC0001") == DATA_11_5
    bad_ack = platform(m.TransparentDataAck(0), 3, ts=TS + 1)
    assert isinstance(client.receive(bad_ack, 0.0)[0], Discarded)
    assert client.receive(DATA_ACK_11_5, 0.0) == [Answer(0x8004, 3, m.TransparentDataAck(0))]


def test_unsigned_answers() -> None:
    client = make_client()
    client.login()
    unsigned_ok = build_frame(0x8001, 1, SERIAL, m.LoginAck(0, TS).encode_body(), flag=0x80)
    assert isinstance(client.receive(unsigned_ok, 0.0)[0], Discarded)
    refused = build_frame(0x8001, 1, SERIAL, m.LoginAck(2, 0).encode_body(), flag=0x80)
    assert client.receive(refused, 0.0) == [LoginFailed(2, False)]
    assert not client.logged_in and client.pending_requests == 0


def test_answer_to_nothing_and_foreign_serial_are_discarded() -> None:
    client = make_client()
    assert isinstance(client.receive(DATA_ACK_11_5, 0.0)[0], Discarded)
    other = LOGIN_ACK_11_3[:12] + b"B972030000001234" + LOGIN_ACK_11_3[28:]
    client.login()
    assert client.receive(other, 0.0)[0].reason == "serial mismatch"  # type: ignore[union-attr]
    assert client.receive(b"\x00\x05garbage", 0.0)[0].reason  # type: ignore[union-attr]


def test_login_result_1_sends_the_sync_trap() -> None:
    client = make_client()
    client.login()
    client.receive(platform(m.LoginAck(1, TS), 1, ts=TS, flag=0x80), 0.0)
    [trap] = client.data_to_send()
    values = tlv_dict(sent(trap).tlvs)
    assert values[0x0025] == bytes.fromhex("000200070009000A0011")
    assert all(values[t] == v for t, v in SYNC_VALUES.items())


# --- timers ---------------------------------------------------------------------------


def test_udp_retransmits_identical_bytes_then_times_out() -> None:
    clock = Clock()
    client = make_client("udp", clock)
    logged_in(client)
    clock.advance(100)
    frame = client.heartbeat()
    assert client.next_deadline() == 115.0
    assert client.timeouts(114.9) == []
    assert client.timeouts(115.0) == [frame]
    assert client.timeouts(130.0) == [frame]
    assert client.pop_events() == []
    assert client.timeouts(145.0) == []
    assert client.pop_events() == [RequestTimedOut(Command.HEART_BEAT, 2)]
    assert client.next_deadline() is None


def test_tcp_sends_once() -> None:
    clock = Clock()
    client = make_client("tcp", clock)
    client.login()
    assert client.timeouts(15.0) == []
    assert client.pop_events() == [RequestTimedOut(Command.LOGIN, 1)]


def test_logout_and_its_answer() -> None:
    client = logged_in(make_client())
    logout = client.logout(0)
    assert sent(logout) == m.Logout(0)
    ack = platform(m.LogoutAck(), 2)
    assert client.receive(ack, 0.0) == [LoggedOut(0, False)]
    assert not client.logged_in
    # After the session, LOGOUT is still signed with the last session timestamp (4.5).
    assert sent(client.logout(1)) == m.Logout(1)


# --- registration ---------------------------------------------------------------------


def test_register_op3_proofs_and_new_serial() -> None:
    client = make_client()
    frame = client.register(3)
    assert frame[10] == 0xA0 and verify(frame, 0, UP)
    request = sent(frame, ts=0)
    assert isinstance(request, m.Register) and request.op == 3
    assert tlv_dict(request.tlvs)[0xE026].hex().upper() == "3345B2CF15B4EA0F51B3C32E204DFC42"
    ack = build_frame(0x8008, 1, SERIAL, m.RegisterAck(6, "A972030099999999").encode_body(),
                      flag=0x80, key=DOWN)  # fmt: skip
    assert client.receive(ack, 0.0) == [Registered(6, "A972030099999999", True)]
    assert client.serial == "A972030099999999"


def test_register_op0_unsigned() -> None:
    client = make_client()
    frame = client.register(0)
    assert frame[10] == 0x80 and len(frame) == 28 + 32
    ack = build_frame(0x8008, 1, SERIAL, m.RegisterAck(2).encode_body(), flag=0x80)
    assert client.receive(ack, 0.0) == [Registered(2, None, False)]


# --- platform requests ----------------------------------------------------------------


def test_config_get() -> None:
    client = logged_in(make_client())
    client.receive(platform(m.ConfigGet(tlvs=[Tlv.query(0x0002), Tlv.query(0x0011)]), 7), 0.0)
    [answer] = client.data_to_send()
    assert answer[4:8] == (7).to_bytes(4, "big")
    assert sent(answer) == m.ConfigGetAck(
        0, tlvs=[Tlv(0x0002, b"CMNET"), Tlv(0x0011, SYNC_VALUES[0x0011])]
    )
    client.receive(platform(m.ConfigGet(tlvs=[Tlv.query(0x0002), Tlv.query(0x1234)]), 8), 0.0)
    [answer] = client.data_to_send()
    assert sent(answer) == m.ConfigGetAck(1, tlvs=[Tlv.query(0x1234)])


def test_config_set_applies_then_traps_report_and_crc() -> None:
    client = logged_in(make_client())
    values = [Tlv.of(0x0011, 60), Tlv.of(0x0002, "CMIOT")]
    events = client.receive(platform(m.ConfigSet(tlvs=values), 9), 0.0)
    assert events == [PlatformRequest(m.ConfigSet(tlvs=values), 9, 0)]
    ack, trap = client.data_to_send()
    assert sent(ack) == m.ConfigSetAck(0)
    report = tlv_dict(sent(trap).tlvs)
    assert report[0x4010] == b"\x00\x00\x00\x00\x09"
    expected = zlib.crc32(Tlv.of(0x0002, "CMIOT").encode() + Tlv.of(0x0011, 60).encode())
    assert report[0x4017] == expected.to_bytes(4, "big")
    assert client.heartbeat_interval == 60 and client.config[0x0002] == b"CMIOT"

    client.receive(platform(m.ConfigSet(tlvs=[Tlv.of(0x3003, "x"), Tlv(0x0009, b"\x01")]), 10), 0)
    [nak] = client.data_to_send()
    assert sent(nak) == m.ConfigSetAck(1, tlvs=[Tlv.query(0x3003)])


@pytest.mark.parametrize(("code", "tag"), [(4, 0x200B), (0x0B, 0x0025)])
def test_remote_ctrl_reports(code: int, tag: int) -> None:
    client = logged_in(make_client())
    client.receive(platform(m.RemoteCtrl.build(code), 11), 0.0)
    ack, trap = client.data_to_send()
    assert sent(ack) == m.RemoteCtrlAck(0)
    values = tlv_dict(sent(trap).tlvs)
    assert tag in values and values[0x4010] == b"\x00\x00\x00\x00\x0b"


def test_remote_ctrl_wakeup_logs_in_when_logged_out() -> None:
    client = make_client("sms")
    wakeup = build_frame(0x000B, 17, SERIAL, m.RemoteCtrl.build(3).encode_body())
    assert client.receive(wakeup, 0.0) == [PlatformRequest(m.RemoteCtrl.build(3), 17, 0)]
    ack, login = client.data_to_send()
    assert ack == build_frame(0x800B, 17, SERIAL, b"\x00")
    assert parse_frame(login).header.command_id == Command.LOGIN


def test_platform_logout_is_answered_under_the_session() -> None:
    client = logged_in(make_client())
    events = client.receive(platform(m.Logout(4), 12), 0.0)
    assert events[1] == LoggedOut(4, True)
    [ack] = client.data_to_send()
    assert sent(ack) == m.LogoutAck() and not client.logged_in


def test_transparent_data_from_platform_and_duplicate() -> None:
    client = logged_in(make_client())
    data = m.TransparentData.build(b"hello", Tlv.of(0x4015, "EC0001"))
    request = platform(data, 13)
    [event] = client.receive(request, 0.0)
    assert event == PlatformRequest(data, 13, 0) and client.received[-1].user_data == b"hello"
    [ack] = client.data_to_send()
    assert sent(ack) == m.TransparentDataAck(0)
    assert client.receive(request, 1.0) == [] and client.data_to_send() == [ack]
    bad = m.TransparentData(0x1234, tlvs=[Tlv(0x4007, b"x")])
    client.receive(platform(bad, 14), 0.0)
    assert sent(client.data_to_send()[0]) == m.TransparentDataAck(4)
    command = m.TransparentCmd(tlvs=[Tlv(0x4016, b"F"), Tlv(0x4007, b"C")])
    assert client.receive(platform(command, 15), 0.0)[0].result == 0  # type: ignore[union-attr]


def test_unparseable_request_gets_the_generic_error() -> None:
    client = logged_in(make_client())
    frame = build_frame(0x0004, 16, SERIAL, b"\x00", key=DOWN, timestamp=TS)
    assert isinstance(client.receive(frame, 0.0)[0], Discarded)
    assert sent(client.data_to_send()[0]) == m.TransparentDataAck(3)
    unsigned = build_frame(0x0004, 17, SERIAL, m.TransparentData.build(b"").encode_body())
    assert client.receive(unsigned, 0.0)[0].reason == "digest missing"  # type: ignore[union-attr]


def test_security_config_op0_relogs_in_with_new_credentials() -> None:
    client = logged_in(make_client())
    new = [Tlv(0xE025, b"AAAAaaaa"), Tlv.of(0xE027, 0xFFFFFFFF), Tlv(0xE028, b"BBBBbbbb"),
           Tlv.of(0xE02A, 0xFFFFFFFF)]  # fmt: skip
    client.receive(platform(m.SecurityConfig(0, tlvs=new), 20, flag=0x80), 0.0)
    ack, logout = client.data_to_send()
    assert ack[10] == 0xA0 and sent(ack) == m.SecurityConfigAck(0)
    assert sent(logout) == m.Logout(9)
    events = client.receive(platform(m.LogoutAck(), 2), 0.0)
    assert events == [LoggedOut(9, False), CredentialsChanged(client.identity.credentials)]  # type: ignore[arg-type]
    [login] = client.data_to_send()
    assert verify(login, 0, DigestKey.make(IMEI, IMSI, "AAAAaaaa"))
    new_down = DigestKey.make(IMEI, IMSI, "BBBBbbbb")
    ack = encode_message(m.LoginAck(0, TS + 5), sequence_id=3, serial=SERIAL, key=new_down,
                         timestamp=TS + 5)  # fmt: skip
    assert client.receive(ack, 0.0) == [LoggedIn(0, TS + 5, None)]


def test_encrypted_request_and_answer() -> None:
    client = make_client(encrypt_bodies=True, first_sequence=5)
    assert client.login(request_session_key=True) == LOGIN_11_9
    client.receive(LOGIN_ACK_11_9, 0.0)
    session = LegacyCipher("Q7m2Xc9TzR4vL8pw")
    data = m.TransparentData.build(b"secret", Tlv.of(0x4015, "EC0001"))
    request = platform(data, 21, ts=TS_KEY, cipher=session)
    assert request[10] == 0xF0
    [event] = client.receive(request, 0.0)
    assert event.message == data  # type: ignore[union-attr]
    [ack] = client.data_to_send()
    assert ack[10] == 0xF0 and sent(ack, TS_KEY, session) == m.TransparentDataAck(0)


def test_download_by_file_req() -> None:
    client = logged_in(make_client(download="file"))
    content = bytes(range(256)) * 8  # 2048 bytes: 887 + 887 + 274
    url = (f"http://192.0.2.10:8080/wmmp/files/3F9A0C27D1E4B856/fw.bin?TRANS_ID=0000002A"
           f"&FILE_SIZE={len(content)}&CRC16={crc16(content):04X}"
           f"&CRC32={zlib.crc32(content):08X}&VER_DSC=2.0")  # fmt: skip
    events = client.receive(platform(m.DownloadInfo(tlvs=[Tlv.of(0x1001, url)]), 30), 0.0)
    assert isinstance(events[1], DownloadOffered) and events[1].offer.version == "2.0"
    ack, request = client.data_to_send()
    assert sent(ack) == m.DownloadInfoAck(1)
    while True:
        req = sent(request)
        assert isinstance(req, m.FileReq) and req.trans_id == 0x2A
        seq = parse_frame(request).header.sequence_id
        if req.status != 0:
            break
        block = content[req.offset : req.offset + req.size]
        answer = m.FileReqAck(0x2A, 0, crc16(block), req.offset, block)
        events = client.receive(platform(answer, seq), 0.0)
        [request] = client.data_to_send()
    assert req.status == 2 and events[-1] == FileDownloaded(0x2A, True, content)
    bad = platform(m.DownloadInfo(tlvs=[Tlv.of(0x1001, "ftp://x/y")]), 31)
    client.receive(bad, 0.0)
    assert sent(client.data_to_send()[0]) == m.DownloadInfoAck(4)


def test_fragmented_platform_request_is_reassembled() -> None:
    client = logged_in(make_client())
    values = [Tlv(0x8100 + i, bytes(60)) for i in range(16)]  # 1024-byte body
    body = m.ConfigSet(tlvs=values).encode_body()
    sender = FragmentSender(body, trans_id=7)
    first = build_frame(0x0006, 40, SERIAL, sender.first().encode_tlv(), flag=FRAGMENT_FLAG,
                        key=DOWN, timestamp=TS)  # fmt: skip
    assert client.receive(first, 0.0) == []
    [ask] = client.data_to_send()
    header = parse_frame(ask).header
    assert (header.command_id, header.sequence_id, ask[10]) == (0x8006, 40, 0x30)
    part = FragmentPart.decode(decode_tlvs(parse_frame(ask).body)[0].raw)
    assert (part.part, part.op) == (2, FragmentOp.NEXT)
    second = build_frame(0x0006, 40, SERIAL, sender.on_answer(part).encode_tlv(),
                         flag=FRAGMENT_FLAG, key=DOWN, timestamp=TS)  # fmt: skip
    [event] = client.receive(second, 0.0)
    assert event == PlatformRequest(m.ConfigSet(tlvs=values), 40, 0)
    ack, trap = client.data_to_send()
    assert sent(ack) == m.ConfigSetAck(0) and client.config[0x810F] == bytes(60)
    assert tlv_dict(sent(trap).tlvs)[0x4010] == b"\x00\x00\x00\x00\x28"


def test_fragmented_answer_is_reassembled() -> None:
    client = logged_in(make_client())
    request = client.config_req([0x8100 + i for i in range(16)])
    seq = parse_frame(request).header.sequence_id
    values = [Tlv(0x8100 + i, bytes([i]) * 60) for i in range(16)]
    sender = FragmentSender(m.ConfigReqAck(0, tlvs=values).encode_body(), trans_id=3)

    def part(number: int) -> bytes:
        chunk = sender.first() if number == 1 else sender.on_answer(ask)
        return build_frame(0x800A, seq, SERIAL, chunk.encode_tlv(), flag=FRAGMENT_FLAG,
                           key=DOWN, timestamp=TS)  # fmt: skip

    assert client.receive(part(1), 0.0) == []
    [op1] = client.data_to_send()
    header = parse_frame(op1).header
    assert (header.command_id, header.sequence_id) == (Command.CONFIG_REQ, seq)
    ask = FragmentPart.decode(decode_tlvs(parse_frame(op1).body)[0].raw)
    assert (ask.part, ask.op) == (2, FragmentOp.NEXT) and verify(op1, TS, UP)
    [answer] = client.receive(part(2), 0.0)
    assert answer == Answer(0x800A, seq, m.ConfigReqAck(0, tlvs=values))
    [trap] = client.data_to_send()
    assert tlv_dict(sent(trap).tlvs)[0x4010] == b"\x00" + seq.to_bytes(4, "big")
    assert client.config[0x810F] == b"\x0f" * 60 and client.pending_requests == 1


def test_security_config_read_digest_form() -> None:
    client = logged_in(make_client())
    query = m.SecurityConfig(2, tlvs=[Tlv.query(0xE025), Tlv.query(0xE036), Tlv.query(0xE038)])
    client.receive(platform(query, 50, flag=0x80), 0.0)
    [ack] = client.data_to_send()
    values = tlv_dict(sent(ack).tlvs)
    assert values[0xE026].hex().upper() == "3345B2CF15B4EA0F51B3C32E204DFC42"
    assert values[0xE03A].hex().upper() == "CBC098D8C6D343AC5F4123A9E963C7A7"
    assert values[0xE038] == b"\xaa\xaa\xaa\xaa" and 0xE025 not in values
    client.receive(platform(m.SecurityConfig(1, tlvs=[Tlv.query(0xE025)]), 51, flag=0x80), 0.0)
    assert sent(client.data_to_send()[0]).ret == 2  # type: ignore[attr-defined]


def test_aes_session_key_and_body() -> None:
    credentials = replace(CREDENTIALS, base_key="0123456789abcdef")
    identity = TerminalIdentity(SERIAL, IMEI, IMSI, credentials, cipher="aes",
                                config=dict(SYNC_VALUES))  # fmt: skip
    client = TerminalClient(identity, clock=Clock().seconds, encrypt_bodies=True,
                            random=lambda n: bytes(range(n)))  # fmt: skip
    login = client.login(request_session_key=True)
    assert login[10] == 0xE0
    box = encode_session_key(AesCipher("0123456789abcdef"), "Q7m2Xc9TzR4vL8pw", TS_KEY + 86400)
    ack = platform(m.LoginAck(0, TS_KEY, tlvs=[Tlv(0xE040, box)]), 1, ts=TS_KEY, flag=0xC0)
    assert client.receive(ack, 0.0) == [LoggedIn(0, TS_KEY, "Q7m2Xc9TzR4vL8pw", TS_KEY + 86400)]
    frame = client.transparent_data(bytes.fromhex("01020304"), "EC0001")
    value = decode_tlvs(parse_frame(frame).body)[0].raw
    assert value.hex().upper() == (
        "000102030405060708090A0B0C0D0E0F3A69EB57C46C4ED5E832641615D009940C39642A3D6D5CB5F9CE105E05AF5838"
    )  # the aes vector of 11.10


COMMANDS = sorted(int(c) | ack for c in Command for ack in (0, ACK_BIT))


@settings(max_examples=300, deadline=None)
@given(
    command=st.sampled_from(COMMANDS),
    seq=st.sampled_from([1, 2, 3, 99]),
    flag=st.sampled_from([0x00, 0x10, 0x80, 0xC0, 0xF0]),
    body=st.binary(max_size=80) | st.lists(
        st.tuples(st.sampled_from([0x0002, 0x0025, 0x1001, 0x4001, 0x4008, 0xE025, 0xE040,
                                   0xE042, 0x4007, 0x100B]), st.binary(max_size=12)),
        max_size=4,
    ).map(lambda tlvs: bytes([tlvs[0][1][0] if tlvs and tlvs[0][1] else 0]) +
          b"".join(Tlv(t, v).encode() for t, v in tlvs)),
)  # fmt: skip
def test_signed_garbage_only_yields_events(command: int, seq: int, flag: int, body: bytes) -> None:
    """Whatever a correctly signed message holds, receive() returns events, never raises."""
    client = logged_in(make_client(download="file"))
    client.heartbeat()
    client.trap([Tlv(0x8100, bytes(1000))])
    frame = build_frame(command, seq, SERIAL, body, flag=flag, key=DOWN, timestamp=TS)
    assert isinstance(client.receive(frame, 1.0), list)
    assert isinstance(client.receive(frame[:-1] + b"\x00", 1.0), list)
    client.data_to_send()


# --- the Twisted driver against a minimal fake platform -------------------------------


def test_tool_identities_and_traps(tmp_path: Path) -> None:
    assert derive(SERIAL, 7) == "A972030000001241" and derive(IMEI, 10) == "860000000000011"
    with pytest.raises(ValueError):
        derive("ABC", 1)
    assert parse_trap("0x3007=20") == Tlv(0x3007, b"\x14")
    assert parse_trap("M2MAPN=CMNET") == Tlv(0x0002, b"CMNET")
    assert parse_trap("0x8100=hex:0A0B") == Tlv(0x8100, b"\x0a\x0b")
    lines = tmp_path / "creds.jsonl"
    lines.write_text('{"serial": "A972030000005555", "uplink_password": "UUUUuuuu", '
                     '"downlink_password": "DDDDdddd", "base_key": "0123456789abcdef", '
                     '"cipher": "aes"}\n\n{"uplink_password": "11111111", '
                     '"downlink_password": "22222222"}\n')  # fmt: skip
    args = parser().parse_args(["--count", "2", "--credentials-file", str(lines)])
    first, second = build_identities(args)
    assert (first.serial, first.cipher, first.imei) == ("A972030000005555", "aes", IMEI)
    assert first.credentials == Credentials("UUUUuuuu", "DDDDdddd", base_key="0123456789abcdef")
    assert (second.serial, second.imsi, second.cipher) == (derive(SERIAL, 1), derive(IMSI, 1), None)
    with pytest.raises(ValueError):
        build_identities(parser().parse_args(["--count", "3", "--credentials-file", str(lines)]))


class FakePlatform(Protocol):
    """Answers LOGIN, HEART_BEAT, LOGOUT, TRANSPARENT_DATA and CONFIG_TRAP, signed."""

    def __init__(self, lost: list[Deferred[None]] | None = None) -> None:
        self.framer = StreamFramer()
        self.lost: Deferred[None] = Deferred()
        if lost is not None:
            lost.append(self.lost)

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        for frame in self.framer.feed(data):
            self.transport.write(fake_answer(frame))

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


class FakeUdpPlatform(DatagramProtocol):
    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.write(fake_answer(datagram), addr)


FLEET_KEYS = {derive(SERIAL, i): DigestKey.make(derive(IMEI, i), derive(IMSI, i), "87654321")
              for i in range(3)}  # fmt: skip


def fake_answer(raw: bytes) -> bytes:
    header = parse_frame(raw).header
    key = FLEET_KEYS.get(header.serial)
    bodies = {
        Command.LOGIN: m.LoginAck(0, TS) if key else m.LoginAck(3, 0),
        Command.LOGOUT: m.LogoutAck(),
        Command.TRANSPARENT_DATA: m.TransparentDataAck(0),
        Command.CONFIG_TRAP: m.ConfigTrapAck(0),
        Command.HEART_BEAT: m.HeartBeatAck(),
    }
    sign = key if header.command_id != Command.HEART_BEAT else None
    return build_frame(header.command_id | ACK_BIT, header.sequence_id, header.serial,
                       bodies[header.command_id].encode_body(), key=sign, timestamp=TS)  # fmt: skip


BASE_ARGS = ["--uplink-password", "12345678", "--downlink-password", "87654321", "--json-events",
             "--stagger", "0.01"]  # fmt: skip


class TerminalToolTest(unittest.TestCase):
    """The simulator over real sockets on 127.0.0.1, with the real reactor."""

    @inlineCallbacks
    def run_tool(self, argv: list[str]) -> Generator[Deferred[Any], Any, tuple[int, list[dict]]]:
        out = io.StringIO()
        code = yield run(reactor, BASE_ARGS + argv, out)
        return code, [json.loads(line) for line in out.getvalue().splitlines()]

    def listen_tcp(self) -> tuple[str, list[Deferred[None]]]:
        lost: list[Deferred[None]] = []
        factory = Factory.forProtocol(lambda: FakePlatform(lost))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return str(port.getHost().port), lost

    @inlineCallbacks
    def test_tcp_long_fleet(self) -> Generator[Deferred[Any], Any, None]:
        port, lost = self.listen_tcp()
        argv = ["--tcp-port", port, "--count", "3", "--heartbeat", "0.1", "--duration", "0.4",
                "--send-data", "0102", "--dest-ec", "EC0001", "--trap", "0x3007=20"]  # fmt: skip
        code, records = yield self.run_tool(argv)
        yield DeferredList(lost)
        kinds = [(r["serial"], r["event"]) for r in records]
        self.assertEqual(code, 0, records)
        for serial in FLEET_KEYS:
            for kind in ("logged_in", "data_ack", "trap_ack", "heartbeat_ack", "logged_out"):
                self.assertIn((serial, kind), kinds)
        self.assertEqual(records[-1], {"serial": "*", "event": "summary", "terminals": 3,
                                       "failed": 0})  # fmt: skip

    @inlineCallbacks
    def test_tcp_short_and_refused_login(self) -> Generator[Deferred[Any], Any, None]:
        port, lost = self.listen_tcp()
        code, records = yield self.run_tool(["--tcp-port", port, "--mode", "tcp-short",
                                             "--send-data", "0102"])  # fmt: skip
        yield DeferredList(lost)
        self.assertEqual(code, 0)
        self.assertEqual([r["event"] for r in records],
                         ["logged_in", "data_ack", "logged_out", "summary"])  # fmt: skip
        code, records = yield self.run_tool(["--tcp-port", port, "--serial", "A972030000009999"])
        yield DeferredList(lost)
        self.assertEqual(code, 1)
        self.assertEqual(records[0]["event"], "login_failed")

    @inlineCallbacks
    def test_udp_fleet(self) -> Generator[Deferred[Any], Any, None]:
        port = reactor.listenUDP(0, FakeUdpPlatform(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        argv = ["--mode", "udp", "--udp-port", str(port.getHost().port), "--count", "2",
                "--heartbeat", "0.1", "--duration", "0.3"]  # fmt: skip
        code, records = yield self.run_tool(argv)
        self.assertEqual(code, 0, records)
        events = {(r["serial"], r["event"]) for r in records}
        for serial in list(FLEET_KEYS)[:2]:
            self.assertIn((serial, "heartbeat_ack"), events)
            self.assertIn((serial, "logged_out"), events)

"""Tests for the terminal role (spec 4-10) against the worked examples of 11."""

from __future__ import annotations

import zlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

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
from m2mgw.protocol.security import AesCipher, DigestKey, LegacyCipher, encode_session_key, verify
from m2mgw.protocol.terminal import (
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
from m2mgw.protocol.tlv import Tlv, decode_tlvs, tlv_dict
from tests.spec_examples import (
    BASE_KEY,
    BASE_KEY_EXPIRY,
    DOWNLINK,
    DOWNLINK_PASSWORD,
    IMEI,
    IMSI,
    SERIAL,
    SESSION_KEY,
    SYNC_CRC,
    SYNC_LIST,
    SYNC_VALUES,
    TRAP_RECORDS_11_6,
    TS_11_3,
    TS_11_9,
    UPLINK,
    UPLINK_PASSWORD,
    VECTORS,
)

CREDENTIALS = Credentials(UPLINK_PASSWORD, DOWNLINK_PASSWORD, base_key=BASE_KEY,
                          base_key_expiry=BASE_KEY_EXPIRY)  # fmt: skip


def statistics_trap_11_6() -> list[Tlv]:
    """The 925-byte CONFIG_TRAP body of 11.6 as TLVs."""
    return [Tlv.of(0x2004, 1), Tlv.of(0x2006, 0x66FDF0A8), Tlv.of(0x2007, 0x67000000),
            Tlv(0x2017, TRAP_RECORDS_11_6)]  # fmt: skip


def make_client(bearer: str = "tcp", clock: Clock | None = None, **kw: object) -> TerminalClient:
    identity = TerminalIdentity(SERIAL, IMEI, IMSI, CREDENTIALS, cipher="legacy",
                                config=dict(SYNC_VALUES))  # fmt: skip
    return TerminalClient(identity, bearer, clock=(clock or Clock()).seconds, **kw)  # type: ignore[arg-type]


def platform(message: m.Message, seq: int, ts: int = TS_11_3, **kw: object) -> bytes:
    """A P→T message signed like the platform signs it (downlink password)."""
    return encode_message(message, sequence_id=seq, serial=SERIAL, key=DOWNLINK, timestamp=ts, **kw)  # type: ignore[arg-type]


def sent(frame: bytes, ts: int = TS_11_3, cipher: LegacyCipher | None = None) -> m.Message:
    """Check a T→P message's uplink digest and decode it."""
    parsed = parse_frame(frame)
    assert verify(frame, ts, UPLINK), "uplink digest"
    return decode_frame(parsed, cipher)


def logged_in(client: TerminalClient) -> TerminalClient:
    assert client.login() == VECTORS["11.2 LOGIN"]
    assert isinstance(client.receive(VECTORS["11.3 LOGIN_ACK"], 0.0)[0], LoggedIn)
    return client


# --- the worked examples --------------------------------------------------------------


def test_sync_crc_of_example_identity() -> None:
    assert sync_crc(SYNC_LIST, SYNC_VALUES) == SYNC_CRC


def test_examples_11_2_to_11_10_byte_for_byte() -> None:
    client = make_client(encrypt_bodies=True)
    assert client.login() == VECTORS["11.2 LOGIN"]
    assert client.receive(VECTORS["11.3 LOGIN_ACK"], 1.0) == [LoggedIn(0, TS_11_3, None)]
    assert client.logged_in and client.data_to_send() == []

    assert client.heartbeat() == VECTORS["11.4 HEART_BEAT"]
    [answer] = client.receive(VECTORS["11.4 HEART_BEAT_ACK"], 2.0)
    assert isinstance(answer, Answer) and answer.command == Command.HEART_BEAT | ACK_BIT

    assert (
        client.transparent_data(bytes.fromhex("01020304"), "EC0001")
        == VECTORS["11.5 TRANSPARENT_DATA"]
    )
    [answer] = client.receive(VECTORS["11.5 TRANSPARENT_DATA_ACK"], 3.0)
    assert answer == Answer(0x8004, 3, m.TransparentDataAck(0))

    assert client.trap(statistics_trap_11_6()) == VECTORS["11.6 CONFIG_TRAP part 1"]
    assert client.receive(VECTORS["11.6 CONFIG_TRAP_ACK next part"], 4.0) == []
    assert client.data_to_send() == [VECTORS["11.6 CONFIG_TRAP part 2"]]
    assert client.receive(VECTORS["11.6 CONFIG_TRAP_ACK"], 5.0) == [
        Answer(0x8007, 4, m.ConfigTrapAck(0))
    ]

    assert client.login(request_session_key=True) == VECTORS["11.9 LOGIN"]
    assert client.receive(VECTORS["11.9 LOGIN_ACK"], 6.0) == [
        LoggedIn(0, TS_11_9, SESSION_KEY, TS_11_9 + 86400)
    ]
    assert client.session_key == SESSION_KEY
    assert (
        client.transparent_data(bytes.fromhex("01020304"), "EC0001")
        == VECTORS["11.10 TRANSPARENT_DATA legacy"]
    )
    assert client.pending_requests == 1


def test_bad_digest_on_answer_is_discarded() -> None:
    client = make_client()
    client.login()
    forged = bytearray(VECTORS["11.3 LOGIN_ACK"])
    forged[-1] ^= 0x01
    [event] = client.receive(bytes(forged), 0.0)
    assert isinstance(event, Discarded) and "digest" in event.reason
    assert not client.logged_in and client.pending_requests == 1
    client.receive(VECTORS["11.3 LOGIN_ACK"], 0.0)
    client.heartbeat()
    assert (
        client.transparent_data(b"\x01\x02\x03\x04", "EC0001") == VECTORS["11.5 TRANSPARENT_DATA"]
    )
    bad_ack = platform(m.TransparentDataAck(0), 3, ts=TS_11_3 + 1)
    assert isinstance(client.receive(bad_ack, 0.0)[0], Discarded)
    assert client.receive(VECTORS["11.5 TRANSPARENT_DATA_ACK"], 0.0) == [
        Answer(0x8004, 3, m.TransparentDataAck(0))
    ]


def test_unsigned_answers() -> None:
    client = make_client()
    client.login()
    unsigned_ok = build_frame(0x8001, 1, SERIAL, m.LoginAck(0, TS_11_3).encode_body(), flag=0x80)
    assert isinstance(client.receive(unsigned_ok, 0.0)[0], Discarded)
    refused = build_frame(0x8001, 1, SERIAL, m.LoginAck(2, 0).encode_body(), flag=0x80)
    assert client.receive(refused, 0.0) == [LoginFailed(2, False)]
    assert not client.logged_in and client.pending_requests == 0


def test_answer_to_nothing_and_foreign_serial_are_discarded() -> None:
    client = make_client()
    assert isinstance(client.receive(VECTORS["11.5 TRANSPARENT_DATA_ACK"], 0.0)[0], Discarded)
    other = VECTORS["11.3 LOGIN_ACK"][:12] + b"B972030000001234" + VECTORS["11.3 LOGIN_ACK"][28:]
    client.login()
    assert client.receive(other, 0.0)[0].reason == "serial mismatch"  # type: ignore[union-attr]
    assert client.receive(b"\x00\x05garbage", 0.0)[0].reason  # type: ignore[union-attr]


def test_login_result_1_sends_the_sync_trap() -> None:
    client = make_client()
    client.login()
    client.receive(platform(m.LoginAck(1, TS_11_3), 1, ts=TS_11_3, flag=0x80), 0.0)
    [trap] = client.data_to_send()
    values = tlv_dict(sent(trap).tlvs)
    assert values[0x0025] == bytes.fromhex("000200070009000A0011")
    assert all(values[t] == v for t, v in SYNC_VALUES.items())


def test_post_login_trap_follows_login_ack_0() -> None:
    """4.4: after result 0 a terminal sends an empty CONFIG_TRAP; result 1 the sync trap."""
    client = make_client(post_login_trap=True)
    client.login()
    client.receive(VECTORS["11.3 LOGIN_ACK"], 0.0)
    [trap] = client.data_to_send()
    message = sent(trap)
    assert isinstance(message, m.ConfigTrap) and message.tlvs == []
    assert client.receive(platform(m.ConfigTrapAck(0), 2), 0.0) == [
        Answer(0x8007, 2, m.ConfigTrapAck(0))
    ]
    client.login()
    client.receive(platform(m.LoginAck(1, TS_11_3 + 1), 3, ts=TS_11_3 + 1, flag=0x80), 0.0)
    [sync] = client.data_to_send()
    assert 0x0025 in tlv_dict(sent(sync, ts=TS_11_3 + 1).tlvs)
    refused = build_frame(0x8001, 5, SERIAL, m.LoginAck(2, 0).encode_body(), flag=0x80)
    client.login()
    assert client.receive(refused, 0.0) == [LoginFailed(2, False)]
    assert client.data_to_send() == []


# --- timers ---------------------------------------------------------------------------


def test_udp_retransmits_identical_bytes_then_times_out() -> None:
    clock = Clock()
    client = make_client("udp", clock)
    logged_in(client)
    clock.advance(100)
    frame = client.heartbeat()
    assert client.next_deadline() == 115.0
    assert (client.tick(114.9), client.data_to_send()) == ([], [])
    assert (client.tick(115.0), client.data_to_send()) == ([], [frame])
    assert (client.tick(130.0), client.data_to_send()) == ([], [frame])
    assert client.tick(145.0) == [RequestTimedOut(Command.HEART_BEAT, 2)]
    assert client.data_to_send() == []
    assert client.next_deadline() is None


def test_tcp_sends_once() -> None:
    clock = Clock()
    client = make_client("tcp", clock)
    client.login()
    assert client.tick(15.0) == [RequestTimedOut(Command.LOGIN, 1)]
    assert client.data_to_send() == []


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
    assert frame[10] == 0xA0 and verify(frame, 0, UPLINK)
    request = sent(frame, ts=0)
    assert isinstance(request, m.Register) and request.op == 3
    assert tlv_dict(request.tlvs)[0xE026].hex().upper() == "3345B2CF15B4EA0F51B3C32E204DFC42"
    ack = build_frame(0x8008, 1, SERIAL, m.RegisterAck(6, "A972030099999999").encode_body(),
                      flag=0x80, key=DOWNLINK)  # fmt: skip
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
    frame = build_frame(0x0004, 16, SERIAL, b"\x00", key=DOWNLINK, timestamp=TS_11_3)
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
    ack = encode_message(m.LoginAck(0, TS_11_3 + 5), sequence_id=3, serial=SERIAL, key=new_down,
                         timestamp=TS_11_3 + 5)  # fmt: skip
    assert client.receive(ack, 0.0) == [LoggedIn(0, TS_11_3 + 5, None)]


def test_encrypted_request_and_answer() -> None:
    client = make_client(encrypt_bodies=True, first_sequence=5)
    assert client.login(request_session_key=True) == VECTORS["11.9 LOGIN"]
    client.receive(VECTORS["11.9 LOGIN_ACK"], 0.0)
    session = LegacyCipher(SESSION_KEY)
    data = m.TransparentData.build(b"secret", Tlv.of(0x4015, "EC0001"))
    request = platform(data, 21, ts=TS_11_9, cipher=session)
    assert request[10] == 0xF0
    [event] = client.receive(request, 0.0)
    assert event.message == data  # type: ignore[union-attr]
    [ack] = client.data_to_send()
    assert ack[10] == 0xF0 and sent(ack, TS_11_9, session) == m.TransparentDataAck(0)


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
                        key=DOWNLINK, timestamp=TS_11_3)  # fmt: skip
    assert client.receive(first, 0.0) == []
    [ask] = client.data_to_send()
    header = parse_frame(ask).header
    assert (header.command_id, header.sequence_id, ask[10]) == (0x8006, 40, 0x30)
    part = FragmentPart.decode(decode_tlvs(parse_frame(ask).body)[0].raw)
    assert (part.part, part.op) == (2, FragmentOp.NEXT)
    second = build_frame(0x0006, 40, SERIAL, sender.on_answer(part).encode_tlv(),
                         flag=FRAGMENT_FLAG, key=DOWNLINK, timestamp=TS_11_3)  # fmt: skip
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
                           key=DOWNLINK, timestamp=TS_11_3)  # fmt: skip

    assert client.receive(part(1), 0.0) == []
    [op1] = client.data_to_send()
    header = parse_frame(op1).header
    assert (header.command_id, header.sequence_id) == (Command.CONFIG_REQ, seq)
    ask = FragmentPart.decode(decode_tlvs(parse_frame(op1).body)[0].raw)
    assert (ask.part, ask.op) == (2, FragmentOp.NEXT) and verify(op1, TS_11_3, UPLINK)
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
    box = encode_session_key(AesCipher("0123456789abcdef"), SESSION_KEY, TS_11_9 + 86400)
    ack = platform(m.LoginAck(0, TS_11_9, tlvs=[Tlv(0xE040, box)]), 1, ts=TS_11_9, flag=0xC0)
    assert client.receive(ack, 0.0) == [LoggedIn(0, TS_11_9, SESSION_KEY, TS_11_9 + 86400)]
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
    frame = build_frame(command, seq, SERIAL, body, flag=flag, key=DOWNLINK, timestamp=TS_11_3)
    assert isinstance(client.receive(frame, 1.0), list)
    assert isinstance(client.receive(frame[:-1] + b"\x00", 1.0), list)
    client.data_to_send()

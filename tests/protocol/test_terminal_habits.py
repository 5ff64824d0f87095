"""The simulated CMCC Java ME client sends what spec 1.6 says it sends, byte for byte."""

from __future__ import annotations

from m2mgw.protocol import messages as m
from m2mgw.protocol.checksum import crc16_cmcc
from m2mgw.protocol.codec import build_frame, header_only_digest, parse_frame, unflagged_digest
from m2mgw.protocol.constants import ACK_BIT, Command
from m2mgw.protocol.security import compute_digest, verify
from m2mgw.protocol.terminal import (
    HABITS,
    Discarded,
    LoggedIn,
    LoggedOut,
    PlatformRequest,
    TerminalClient,
)
from m2mgw.protocol.tlv import Tlv, decode_tlvs
from tests import cmcc

TS = 0x5F5E1000


def clock() -> float:
    return 1000.0


def logged_in(client: TerminalClient) -> TerminalClient:
    client.login()
    ack = build_frame(Command.LOGIN | ACK_BIT, 1, cmcc.SERIAL, m.LoginAck(0, TS).encode_body(),
                      flag=0x80, key=cmcc.DOWNLINK, timestamp=TS)  # fmt: skip
    [event] = client.receive(ack, 0.0)
    assert event == LoggedIn(0, TS, None)
    return client


def test_login_is_the_vector_of_1_6() -> None:
    """C1 and C2: flag 0x00, an E021 that verifies over the bytes as sent, CRC32 0."""
    frame = cmcc.client(clock).login()
    assert frame == cmcc.LOGIN_1_6
    assert frame.hex().upper().startswith("003C00010000000103000000")
    assert parse_frame(frame).digest is None  # flag 0x20 clear: no digest as far as 2.2 goes
    assert compute_digest(frame[:-20], 0, cmcc.UPLINK) == frame[-16:]  # over the bytes as sent
    flagged = frame[:10] + b"\x20" + frame[11:]
    assert not verify(flagged, 0, cmcc.UPLINK)


def test_logout_transparent_data_and_config_req_go_unsigned() -> None:
    """C3 (flag 0x00, no E021) and C5 (the CRC16 variant, low byte first)."""
    client = logged_in(cmcc.client(clock))
    data = client.transparent_data(b"123456789", "EC0001")
    assert data[10] == 0x00 and len(data) == 28 + 2 + 4 + 6 + 4 + 9
    assert data[28:30] == bytes.fromhex("AECC") == crc16_cmcc(b"123456789")
    assert data[30:] == Tlv.of(0x4014, "EC0001").encode() + Tlv(0x4007, b"123456789").encode()
    request = client.config_req([0x0011])
    assert request[10] == 0x00 and request[28:] == bytes.fromhex("0011 0000")
    logout = client.logout(0)
    assert logout == bytes.fromhex("001D 0002 00000004 0300 00 00") + cmcc.SERIAL.encode() + b"\0"


def test_trap_is_header_signed_with_little_endian_integers() -> None:
    """C1, C4 and C6: flag 0x00, the digest over the header alone, heartbeat 5A 00 00 00."""
    client = logged_in(cmcc.client(clock))
    trap = client.trap([Tlv.of(0x0011, 90), Tlv.of(0x0002, "CMNET")])
    assert trap[10] == 0x00
    assert trap[28:-20] == bytes.fromhex("0011 0004 5A000000") + Tlv(2, b"CMNET").encode()
    frame = unflagged_digest(parse_frame(trap))
    assert frame is not None and header_only_digest(frame, TS, cmcc.UPLINK)
    # Its empty post-login trap: over an empty body the header is all there is.
    empty = client.trap([])
    assert empty[10] == 0x00 and compute_digest(empty[:-20], TS, cmcc.UPLINK) == empty[-16:]


def test_answers_unsigned_in_its_own_version_and_integers_read_little_endian() -> None:
    """C3 answers, C8 version 0x0301, and C6 on receipt: a CONFIG_SET of 120 s."""
    client = logged_in(cmcc.client(clock))
    body = m.ConfigSet(tlvs=[Tlv(0x0011, bytes.fromhex("78000000"))]).encode_body()
    request = build_frame(Command.CONFIG_SET, 9, cmcc.SERIAL, body, key=cmcc.DOWNLINK,
                          timestamp=TS)  # fmt: skip
    [event, *_] = client.receive(request, 0.0)
    assert isinstance(event, PlatformRequest) and event.result == 0
    answer, report = client.data_to_send()
    assert answer == build_frame(Command.CONFIG_SET | ACK_BIT, 9, cmcc.SERIAL, b"\x00",
                                 version=0x0301)  # fmt: skip
    assert client.heartbeat_interval == 120
    # The execution report that follows is itself a CMCC trap (header-signed).
    assert parse_frame(report).header.command_id == Command.CONFIG_TRAP
    assert decode_tlvs(report[28:-20])[0].tag == 0x4010


def test_large_frames_break_it_and_some_requests_are_never_answered() -> None:
    """C7: a frame of 256 bytes or more; C9: CONFIG_GET, TRANSPARENT_DATA, DOWNLOAD_INFO."""
    client = logged_in(cmcc.client(clock))
    big = m.ConfigSet(tlvs=[Tlv.of(0x0003, "x" * 230)]).encode_body()
    frame = build_frame(Command.CONFIG_SET, 10, cmcc.SERIAL, big, key=cmcc.DOWNLINK,
                        timestamp=TS)  # fmt: skip
    assert len(frame) >= 256
    [event] = client.receive(frame, 0.0)
    assert isinstance(event, Discarded) and "(C7)" in event.reason
    for command, message in (
        (Command.CONFIG_GET, m.ConfigGet(tlvs=[Tlv.query(0x0011)])),
        (Command.TRANSPARENT_DATA, m.TransparentData.build(b"\x01", Tlv.of(0x4015, "EC0001"))),
    ):
        request = build_frame(command, 11, cmcc.SERIAL, message.encode_body(),
                              key=cmcc.DOWNLINK, timestamp=TS)  # fmt: skip
        [event] = client.receive(request, 0.0)
        assert isinstance(event, Discarded) and "(C9)" in event.reason
    assert client.data_to_send() == []


def test_an_unsigned_answer_to_an_unsigned_request_is_taken() -> None:
    client = logged_in(cmcc.client(clock))
    client.logout(0)
    ack = build_frame(Command.LOGOUT | ACK_BIT, 2, cmcc.SERIAL, b"")
    assert client.receive(ack, 0.0) == [LoggedOut(0, False)]


def test_simcom_sends_register_op3_without_a_digest() -> None:
    """PD-06: flag 0x80, the proofs alone."""
    client = TerminalClient(cmcc.identity(), clock=clock, habits=HABITS["simcom"])
    frame = client.register(3)
    assert frame[10] == 0x80 and parse_frame(frame).digest is None
    request = m.Register.decode_body(frame[28:])
    assert request.op == 3 and {t.tag for t in request.tlvs} == {0xE026, 0xE029, 0xE03A}

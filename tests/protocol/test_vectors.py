"""Every worked example of spec section 11, byte for byte, decoded and re-encoded.

The hex dumps are those of ``tests.spec_examples``. Each message is decoded (header,
typed body, TLVs, digest under the example identity) and then built again from its typed
form with the codec, which must give back exactly the dump.
"""

from __future__ import annotations

import pytest

from m2mgw.protocol import codec
from m2mgw.protocol.checksum import crc16, crc32
from m2mgw.protocol.constants import Command
from m2mgw.protocol.fragment import (
    Complete,
    FragmentOp,
    FragmentPart,
    FragmentSender,
    NeedPart,
    Reassembler,
)
from m2mgw.protocol.header import Header
from m2mgw.protocol.messages import (
    ConfigTrap,
    ConfigTrapAck,
    HeartBeat,
    HeartBeatAck,
    Login,
    LoginAck,
    Message,
    RemoteCtrl,
    SecurityConfig,
    TransparentData,
    TransparentDataAck,
    decode_message,
)
from m2mgw.protocol.security import (
    AesCipher,
    DigestKey,
    LegacyCipher,
    base_key_proof,
    decode_session_key,
    encode_session_key,
    verify,
)
from m2mgw.protocol.tlv import Tlv, decode_tlvs
from tests.spec_examples import (
    AES_IV_11_10,
    BASE_KEY,
    BASE_KEY_EXPIRY,
    DOWNLINK,
    E040_CIPHER_11_9,
    E040_PLAIN_11_9,
    E042_AES_11_10,
    E042_LEGACY_11_10,
    PLAIN_BODY_11_10,
    SERIAL,
    SERIAL_11_7,
    SESSION_KEY,
    SYNC_CRC,
    SYNC_STREAM,
    TRAP_BODY_11_6,
    TS_11_3,
    TS_11_9,
    UPLINK,
    VECTORS,
)


def user_data_message_11_5() -> TransparentData:
    """The typed TRANSPARENT_DATA of 11.5 (and, encrypted, of 11.10)."""
    return TransparentData.build(b"\x01\x02\x03\x04", Tlv.of(0x4014, "EC0001"))


# (name, typed message, Sequence_ID, flag given to the encoder, signing key, timestamp,
#  serial): everything the codec needs to rebuild each plaintext vector.
PLAINTEXT_CASES: list[tuple[str, Message, int, int, DigestKey | None, int, str]] = [
    ("11.2 LOGIN", Login("1.01", SYNC_CRC), 1, 0xA0, UPLINK, 0, SERIAL),
    ("11.3 LOGIN_ACK", LoginAck(0, TS_11_3), 1, 0xA0, DOWNLINK, TS_11_3, SERIAL),
    ("11.4 HEART_BEAT", HeartBeat(), 2, 0x00, None, 0, SERIAL),
    ("11.4 HEART_BEAT_ACK", HeartBeatAck(), 2, 0x00, None, 0, SERIAL),
    ("11.5 TRANSPARENT_DATA", user_data_message_11_5(), 3, 0x20, UPLINK, TS_11_3, SERIAL),
    ("11.5 TRANSPARENT_DATA_ACK", TransparentDataAck(0), 3, 0x20, DOWNLINK, TS_11_3, SERIAL),
    ("11.6 CONFIG_TRAP_ACK", ConfigTrapAck(0), 4, 0x20, DOWNLINK, TS_11_3, SERIAL),
    (
        "11.7 SECURITY_CONFIG",
        SecurityConfig(
            0,
            tlvs=[
                Tlv.of(0xE025, "12345678"),
                Tlv.of(0xE027, 0xAAAAAAAA),
                Tlv.of(0xE028, "87654321"),
                Tlv.of(0xE02A, 0xAAAAAAAA),
                Tlv.of(0xE036, BASE_KEY),
                Tlv.of(0xE038, 0xAAAAAAAA),
            ],
        ),
        1,
        0x80,
        None,
        0,
        SERIAL_11_7,
    ),
    ("11.8 REMOTE_CTRL", RemoteCtrl.build(3), 17, 0x00, None, 0, SERIAL),
    (
        "11.9 LOGIN",
        Login("1.01", SYNC_CRC, tlvs=[Tlv(0xE03A, base_key_proof(BASE_KEY, BASE_KEY_EXPIRY))]),
        5,
        0xE0,
        UPLINK,
        0,
        SERIAL,
    ),
    (
        "11.9 LOGIN_ACK",
        LoginAck(
            0,
            TS_11_9,
            tlvs=[
                Tlv(
                    0xE040, encode_session_key(LegacyCipher(BASE_KEY), SESSION_KEY, TS_11_9 + 86400)
                )
            ],
        ),
        5,
        0xE0,
        DOWNLINK,
        TS_11_9,
        SERIAL,
    ),
]
CASE_IDS = [case[0] for case in PLAINTEXT_CASES]


# --- both ways for every plaintext vector -----------------------------------------------


@pytest.mark.parametrize(
    ("name", "message", "sequence_id", "flag", "key", "timestamp", "serial"),
    PLAINTEXT_CASES,
    ids=CASE_IDS,
)
def test_decode_vector(
    name: str,
    message: Message,
    sequence_id: int,
    flag: int,
    key: DigestKey | None,
    timestamp: int,
    serial: str,
) -> None:
    raw = VECTORS[name]
    frame = codec.parse_frame(raw)
    assert frame.header == Header(len(raw), message.COMMAND, sequence_id, 0x0300, flag, serial)
    assert frame.header.has_digest == (key is not None)
    if key is None:
        assert frame.digest is None
    else:
        assert frame.digest == raw[-16:]
        assert verify(raw, timestamp, key)
        wrong = DOWNLINK if key is UPLINK else UPLINK
        assert not verify(raw, timestamp, wrong)
    assert codec.decode_frame(frame) == message


@pytest.mark.parametrize(
    ("name", "message", "sequence_id", "flag", "key", "timestamp", "serial"),
    PLAINTEXT_CASES,
    ids=CASE_IDS,
)
def test_encode_vector(
    name: str,
    message: Message,
    sequence_id: int,
    flag: int,
    key: DigestKey | None,
    timestamp: int,
    serial: str,
) -> None:
    raw = codec.encode_message(
        message, sequence_id=sequence_id, serial=serial, flag=flag, key=key, timestamp=timestamp
    )
    assert raw == VECTORS[name]


# --- section-specific detail ------------------------------------------------------------


def test_11_2_login_fields() -> None:
    frame = codec.parse_frame(VECTORS["11.2 LOGIN"])
    login = codec.decode_frame(frame)
    assert isinstance(login, Login)
    assert (login.software_version, login.sync_crc, login.tlvs) == ("1.01", SYNC_CRC, [])
    assert len(frame.raw) == 60  # 4.4: a LOGIN with no optional TLVs is 60 bytes
    assert frame.body == bytes.fromhex("31 2E 30 31 00 00 00 00 AB FE D4 CF")


def test_11_1_sync_crc_is_login_field() -> None:
    """11.1: the LOGIN CRC32 covers the sync TLVs built from the example values."""
    sync = [
        Tlv.of(0x0002, "CMNET"),
        Tlv.of(0x0007, "1065840436"),
        Tlv.of(0x0009, 0xC000020A),
        Tlv.of(0x000A, 0x14731474),
        Tlv.of(0x0011, 90),
    ]
    stream = b"".join(t.encode() for t in sync)
    assert len(stream) == 47
    assert stream == SYNC_STREAM
    assert crc32(stream) == SYNC_CRC


def test_11_3_login_ack_fields() -> None:
    ack = codec.decode_frame(codec.parse_frame(VECTORS["11.3 LOGIN_ACK"]))
    assert isinstance(ack, LoginAck)
    assert (ack.result, ack.timestamp, ack.session_key_box) == (0, TS_11_3, None)


def test_11_4_heartbeat_echoes_sequence() -> None:
    request = codec.parse_frame(VECTORS["11.4 HEART_BEAT"]).header
    answer = codec.parse_frame(VECTORS["11.4 HEART_BEAT_ACK"]).header
    assert answer.command_id == request.command_id | 0x8000
    assert (answer.sequence_id, answer.serial, answer.version) == (
        request.sequence_id,
        request.serial,
        request.version,
    )
    assert (request.length, request.flag, answer.is_answer) == (28, 0, True)


def test_11_5_transparent_data_fields() -> None:
    data = codec.decode_frame(codec.parse_frame(VECTORS["11.5 TRANSPARENT_DATA"]))
    assert isinstance(data, TransparentData)
    assert data.crc16 == 0x2BA1 == crc16(b"\x01\x02\x03\x04")
    assert data.crc_ok
    assert data.destination == ("application", "EC0001")
    assert data.user_data == b"\x01\x02\x03\x04"
    assert [(t.tag, t.name, t.value) for t in data.tlvs] == [
        (0x4014, "DESECCODE", "EC0001"),
        (0x4007, "USERDATAID", b"\x01\x02\x03\x04"),
    ]


def test_11_6_body_definition_matches_the_dumps() -> None:
    body = TRAP_BODY_11_6
    assert len(body) == 925
    assert body[21:25] == bytes.fromhex("20 17 03 84")
    assert body[25:37] == bytes.fromhex("66 FD F0 A8 00 00 03 E8 00 00 07 D0")
    assert body[-12:] == bytes.fromhex("66 FF F8 F8 00 00 08 D2 00 00 10 32")
    part1 = codec.parse_frame(VECTORS["11.6 CONFIG_TRAP part 1"])
    part2 = codec.parse_frame(VECTORS["11.6 CONFIG_TRAP part 2"])
    for frame in (part1, part2):
        assert frame.container_tag == codec.TAG_FRAGMENT
    one = FragmentPart.decode(part1.container_value())
    two = FragmentPart.decode(part2.container_value())
    assert (one.trans_id, one.total, one.part, one.op, len(one.chunk)) == (1, 2, 1, 0, 900)
    assert (two.trans_id, two.total, two.part, two.op, len(two.chunk)) == (1, 2, 2, 0, 25)
    assert one.chunk + two.chunk == body


def test_11_6_reassembled_body_is_a_config_trap() -> None:
    trap = decode_message(Command.CONFIG_TRAP, TRAP_BODY_11_6)
    assert isinstance(trap, ConfigTrap)
    assert [t.tag for t in trap.tlvs] == [0x2004, 0x2006, 0x2007, 0x2017]
    values = {t.tag: t.value for t in trap.tlvs}
    assert values[0x2004] == 1
    assert values[0x2006] == 0x66FDF0A8
    assert values[0x2007] == 0x67000000
    records = values[0x2017]
    assert len(records) == 75
    assert records == [(0x66FDF0A8 + 1800 * i, 1000 + 17 * i, 2000 + 29 * i) for i in range(75)]
    assert trap.encode_body() == TRAP_BODY_11_6


def test_11_6_parts_are_built_from_fragment_values() -> None:
    """The three part messages, built from their 4008 values, equal the dumps."""
    sender = FragmentSender(TRAP_BODY_11_6, trans_id=1)
    first = sender.first()
    ask = FragmentPart(1, 2, 2, FragmentOp.NEXT)
    second = sender.on_answer(ask)
    built = [
        ("11.6 CONFIG_TRAP part 1", Command.CONFIG_TRAP, first, UPLINK),
        ("11.6 CONFIG_TRAP_ACK next part", Command.CONFIG_TRAP | 0x8000, ask, DOWNLINK),
        ("11.6 CONFIG_TRAP part 2", Command.CONFIG_TRAP, second, UPLINK),
    ]
    for name, command_id, part, key in built:
        raw = codec.build_frame(
            command_id,
            4,
            SERIAL,
            part.encode_tlv(),
            flag=codec.FRAGMENT_FLAG,
            key=key,
            timestamp=TS_11_3,
        )
        assert raw == VECTORS[name], name
        assert verify(raw, TS_11_3, key)
        frame = codec.parse_frame(raw)
        assert frame.header.flag == 0x30
        with pytest.raises(codec.BodyError):
            codec.decode_frame(frame)  # a part is not a complete body


def test_11_6_reassembly_of_the_dumps() -> None:
    receiver = Reassembler()
    parts = [
        FragmentPart.decode(codec.parse_frame(VECTORS[name]).container_value())
        for name in ("11.6 CONFIG_TRAP part 1", "11.6 CONFIG_TRAP part 2")
    ]
    assert receiver.feed(parts[0], 0.0) == NeedPart(1, 2, 2)
    assert (
        NeedPart(1, 2, 2).reply.encode_tlv()
        == codec.parse_frame(VECTORS["11.6 CONFIG_TRAP_ACK next part"]).body
    )
    assert receiver.feed(parts[1], 1.0) == Complete(TRAP_BODY_11_6)


def test_11_7_security_config_fields() -> None:
    frame = codec.parse_frame(VECTORS["11.7 SECURITY_CONFIG"])
    assert frame.header.serial == SERIAL_11_7
    assert frame.header.flag == 0x80 and not frame.header.has_digest
    config = codec.decode_frame(frame)
    assert isinstance(config, SecurityConfig)
    assert config.op == 0
    assert [(t.name, t.value) for t in config.tlvs] == [
        ("UPLINKPASSWORD", "12345678"),
        ("UPLINKPASSWORDEXPDATE", 0xAAAAAAAA),
        ("DOWNLINKPASSWORD", "87654321"),
        ("DOWNLINKPASSWORDEXPDATE", 0xAAAAAAAA),
        ("PUBLICKEY", BASE_KEY),
        ("PUBLICKEYEXPDATE", 0xAAAAAAAA),
    ]


def test_11_8_remote_ctrl_fields() -> None:
    ctrl = codec.decode_frame(codec.parse_frame(VECTORS["11.8 REMOTE_CTRL"]))
    assert isinstance(ctrl, RemoteCtrl)
    assert ctrl.code == 3
    assert ctrl.tlvs == [Tlv(0x4001, b"\x03")]


def test_11_9_login_carries_base_key_proof() -> None:
    frame = codec.parse_frame(VECTORS["11.9 LOGIN"])
    assert frame.header.flag & 0x40
    login = codec.decode_frame(frame)
    assert isinstance(login, Login)
    assert login.tlvs == [Tlv(0xE03A, bytes.fromhex("CBC098D8C6D343AC5F4123A9E963C7A7"))]
    assert login.tlvs[0].raw == base_key_proof(BASE_KEY, BASE_KEY_EXPIRY)


def test_11_9_login_ack_session_key() -> None:
    ack = codec.decode_frame(codec.parse_frame(VECTORS["11.9 LOGIN_ACK"]))
    assert isinstance(ack, LoginAck)
    assert (ack.result, ack.timestamp) == (0, TS_11_9)
    assert ack.session_key_box == E040_CIPHER_11_9
    base = LegacyCipher(BASE_KEY)
    assert base.decrypt(E040_CIPHER_11_9) == E040_PLAIN_11_9 + bytes(4)
    assert decode_session_key(base, E040_CIPHER_11_9) == (SESSION_KEY, TS_11_9 + 86400)
    assert decode_tlvs(base.decrypt(E040_CIPHER_11_9), padded=True) == [
        Tlv(0xE03B, SESSION_KEY.encode()),
        Tlv(0xE03D, (0x67015280).to_bytes(4, "big")),
    ]


def test_11_10_legacy_decode() -> None:
    raw = VECTORS["11.10 TRANSPARENT_DATA legacy"]
    frame = codec.parse_frame(raw)
    assert frame.header.flag == 0xF0
    assert verify(raw, TS_11_9, UPLINK)
    assert frame.container_tag == codec.TAG_ENCRYPTED
    assert frame.container_value() == E042_LEGACY_11_10
    cipher = LegacyCipher(SESSION_KEY)
    body, padded = codec.open_body(frame, cipher)
    assert padded
    assert body == PLAIN_BODY_11_10 + bytes(4)  # zero padding to 24 bytes (6.4.1)
    assert codec.decode_frame(frame, cipher) == user_data_message_11_5()
    with pytest.raises(codec.BodyError):
        codec.decode_frame(frame)  # no session key
    # Read as unpadded, the four 0x00 bytes would be a bogus zero-length TLV 0x0000.
    unpadded = decode_message(Command.TRANSPARENT_DATA, body)
    assert unpadded.tlvs[-1] == Tlv(0x0000, b"")


def test_11_10_legacy_encode() -> None:
    raw = codec.encode_message(
        user_data_message_11_5(),
        sequence_id=6,
        serial=SERIAL,
        key=UPLINK,
        timestamp=TS_11_9,
        cipher=LegacyCipher(SESSION_KEY),
    )
    assert raw == VECTORS["11.10 TRANSPARENT_DATA legacy"]


def test_11_10_aes_both_ways() -> None:
    """11.10 gives only the E042 value for aes: check it inside a whole message."""
    cipher = AesCipher(SESSION_KEY, random=lambda n: AES_IV_11_10[:n])
    assert user_data_message_11_5().encode_body() == PLAIN_BODY_11_10
    raw = codec.encode_message(
        user_data_message_11_5(),
        sequence_id=6,
        serial=SERIAL,
        key=UPLINK,
        timestamp=TS_11_9,
        cipher=cipher,
    )
    frame = codec.parse_frame(raw)
    assert frame.header.flag == 0xF0
    assert frame.body == bytes.fromhex("E0 42 00 30") + E042_AES_11_10
    assert verify(raw, TS_11_9, UPLINK)
    body, padded = codec.open_body(frame, cipher)
    assert (body, padded) == (PLAIN_BODY_11_10, False)
    assert codec.decode_frame(frame, cipher) == user_data_message_11_5()

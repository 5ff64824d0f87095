"""Every worked example of spec section 11, byte for byte, decoded and re-encoded.

The hex dumps are copied from the spec. Each message is decoded (header, typed body,
TLVs, digest under the example identity) and then built again from its typed form
with the codec, which must give back exactly the dump. Other test modules import
``VECTORS`` and the identity from here.
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


def dump(text: str) -> bytes:
    """Bytes of a spec hex dump: lines of "OFFS  XX XX ..." (offset column dropped)."""
    return bytes.fromhex(" ".join(line.split(None, 1)[1] for line in text.strip().splitlines()))


# --- spec 11, example identity ------------------------------------------------------------

SERIAL = "A972030000001234"
IMEI = "860000000000001"
IMSI = "460000000000001"
UPLINK_PASSWORD = "12345678"
DOWNLINK_PASSWORD = "87654321"
BASE_KEY = "112233445566778899001234"
BASE_KEY_EXPIRY = 0xAAAAAAAA
SESSION_KEY = "Q7m2Xc9TzR4vL8pw"  # 11.9
TS_11_3 = 0x67000000
TS_11_9 = 0x67000100
SYNC_CRC = 0xABFED4CF  # 11.1
UPLINK = DigestKey.make(IMEI, IMSI, UPLINK_PASSWORD)
DOWNLINK = DigestKey.make(IMEI, IMSI, DOWNLINK_PASSWORD)

# --- spec 11 hex dumps --------------------------------------------------------------------

VECTORS: dict[str, bytes] = {
    # 11.2 LOGIN with digest
    "11.2 LOGIN": dump(
        """
0000  00 3C 00 01 00 00 00 01 03 00 A0 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 31 2E 30 31
0020  00 00 00 00 AB FE D4 CF E0 21 00 10 D3 83 59 45
0030  2D A7 F6 D5 39 65 EE CA 90 F8 A2 C4
"""
    ),
    # 11.3 LOGIN_ACK
    "11.3 LOGIN_ACK": dump(
        """
0000  00 35 80 01 00 00 00 01 03 00 A0 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 00 67 00 00
0020  00 E0 21 00 10 1E E7 CB C8 C7 58 7F 15 31 93 3D
0030  97 92 7C 15 A5
"""
    ),
    # 11.4 HEART_BEAT
    "11.4 HEART_BEAT": dump(
        """
0000  00 1C 00 03 00 00 00 02 03 00 00 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34
"""
    ),
    # 11.4 HEART_BEAT_ACK
    "11.4 HEART_BEAT_ACK": dump(
        """
0000  00 1C 80 03 00 00 00 02 03 00 00 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34
"""
    ),
    # 11.5 TRANSPARENT_DATA to application EC0001
    "11.5 TRANSPARENT_DATA": dump(
        """
0000  00 44 00 04 00 00 00 03 03 00 20 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 2B A1 40 14
0020  00 06 45 43 30 30 30 31 40 07 00 04 01 02 03 04
0030  E0 21 00 10 80 C9 62 06 67 CA 0C 9E 7C EE 1C 25
0040  69 69 AF C6
"""
    ),
    # 11.5 TRANSPARENT_DATA_ACK
    "11.5 TRANSPARENT_DATA_ACK": dump(
        """
0000  00 31 80 04 00 00 00 03 03 00 20 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 00 E0 21 00
0020  10 40 16 E3 39 BB 00 3A DB A7 95 BB 25 A4 E4 C3
0030  6E
"""
    ),
    # 11.6 part 1 of the two-part CONFIG_TRAP
    "11.6 CONFIG_TRAP part 1": dump(
        """
0000  03 BF 00 07 00 00 00 04 03 00 30 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 40 08 03 8B
0020  00 01 00 02 00 01 00 20 04 00 01 01 20 06 00 04
0030  66 FD F0 A8 20 07 00 04 67 00 00 00 20 17 03 84
0040  66 FD F0 A8 00 00 03 E8 00 00 07 D0 66 FD F7 B0
0050  00 00 03 F9 00 00 07 ED 66 FD FE B8 00 00 04 0A
0060  00 00 08 0A 66 FE 05 C0 00 00 04 1B 00 00 08 27
0070  66 FE 0C C8 00 00 04 2C 00 00 08 44 66 FE 13 D0
0080  00 00 04 3D 00 00 08 61 66 FE 1A D8 00 00 04 4E
0090  00 00 08 7E 66 FE 21 E0 00 00 04 5F 00 00 08 9B
00A0  66 FE 28 E8 00 00 04 70 00 00 08 B8 66 FE 2F F0
00B0  00 00 04 81 00 00 08 D5 66 FE 36 F8 00 00 04 92
00C0  00 00 08 F2 66 FE 3E 00 00 00 04 A3 00 00 09 0F
00D0  66 FE 45 08 00 00 04 B4 00 00 09 2C 66 FE 4C 10
00E0  00 00 04 C5 00 00 09 49 66 FE 53 18 00 00 04 D6
00F0  00 00 09 66 66 FE 5A 20 00 00 04 E7 00 00 09 83
0100  66 FE 61 28 00 00 04 F8 00 00 09 A0 66 FE 68 30
0110  00 00 05 09 00 00 09 BD 66 FE 6F 38 00 00 05 1A
0120  00 00 09 DA 66 FE 76 40 00 00 05 2B 00 00 09 F7
0130  66 FE 7D 48 00 00 05 3C 00 00 0A 14 66 FE 84 50
0140  00 00 05 4D 00 00 0A 31 66 FE 8B 58 00 00 05 5E
0150  00 00 0A 4E 66 FE 92 60 00 00 05 6F 00 00 0A 6B
0160  66 FE 99 68 00 00 05 80 00 00 0A 88 66 FE A0 70
0170  00 00 05 91 00 00 0A A5 66 FE A7 78 00 00 05 A2
0180  00 00 0A C2 66 FE AE 80 00 00 05 B3 00 00 0A DF
0190  66 FE B5 88 00 00 05 C4 00 00 0A FC 66 FE BC 90
01A0  00 00 05 D5 00 00 0B 19 66 FE C3 98 00 00 05 E6
01B0  00 00 0B 36 66 FE CA A0 00 00 05 F7 00 00 0B 53
01C0  66 FE D1 A8 00 00 06 08 00 00 0B 70 66 FE D8 B0
01D0  00 00 06 19 00 00 0B 8D 66 FE DF B8 00 00 06 2A
01E0  00 00 0B AA 66 FE E6 C0 00 00 06 3B 00 00 0B C7
01F0  66 FE ED C8 00 00 06 4C 00 00 0B E4 66 FE F4 D0
0200  00 00 06 5D 00 00 0C 01 66 FE FB D8 00 00 06 6E
0210  00 00 0C 1E 66 FF 02 E0 00 00 06 7F 00 00 0C 3B
0220  66 FF 09 E8 00 00 06 90 00 00 0C 58 66 FF 10 F0
0230  00 00 06 A1 00 00 0C 75 66 FF 17 F8 00 00 06 B2
0240  00 00 0C 92 66 FF 1F 00 00 00 06 C3 00 00 0C AF
0250  66 FF 26 08 00 00 06 D4 00 00 0C CC 66 FF 2D 10
0260  00 00 06 E5 00 00 0C E9 66 FF 34 18 00 00 06 F6
0270  00 00 0D 06 66 FF 3B 20 00 00 07 07 00 00 0D 23
0280  66 FF 42 28 00 00 07 18 00 00 0D 40 66 FF 49 30
0290  00 00 07 29 00 00 0D 5D 66 FF 50 38 00 00 07 3A
02A0  00 00 0D 7A 66 FF 57 40 00 00 07 4B 00 00 0D 97
02B0  66 FF 5E 48 00 00 07 5C 00 00 0D B4 66 FF 65 50
02C0  00 00 07 6D 00 00 0D D1 66 FF 6C 58 00 00 07 7E
02D0  00 00 0D EE 66 FF 73 60 00 00 07 8F 00 00 0E 0B
02E0  66 FF 7A 68 00 00 07 A0 00 00 0E 28 66 FF 81 70
02F0  00 00 07 B1 00 00 0E 45 66 FF 88 78 00 00 07 C2
0300  00 00 0E 62 66 FF 8F 80 00 00 07 D3 00 00 0E 7F
0310  66 FF 96 88 00 00 07 E4 00 00 0E 9C 66 FF 9D 90
0320  00 00 07 F5 00 00 0E B9 66 FF A4 98 00 00 08 06
0330  00 00 0E D6 66 FF AB A0 00 00 08 17 00 00 0E F3
0340  66 FF B2 A8 00 00 08 28 00 00 0F 10 66 FF B9 B0
0350  00 00 08 39 00 00 0F 2D 66 FF C0 B8 00 00 08 4A
0360  00 00 0F 4A 66 FF C7 C0 00 00 08 5B 00 00 0F 67
0370  66 FF CE C8 00 00 08 6C 00 00 0F 84 66 FF D5 D0
0380  00 00 08 7D 00 00 0F A1 66 FF DC D8 00 00 08 8E
0390  00 00 0F BE 66 FF E3 E0 00 00 08 9F 00 00 0F DB
03A0  66 FF EA E8 00 00 08 B0 00 00 0F E0 21 00 10 22
03B0  77 09 11 40 A6 A1 16 00 14 CC 3A C4 A4 0F 28
"""
    ),
    # 11.6 CONFIG_TRAP_ACK asking for part 2 (4008 op 1)
    "11.6 CONFIG_TRAP_ACK next part": dump(
        """
0000  00 3B 80 07 00 00 00 04 03 00 30 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 40 08 00 07
0020  00 01 00 02 00 02 01 E0 21 00 10 FF 80 5A 2E C7
0030  77 53 8C 3A CA 3B 9A 8F 7D 8F CE
"""
    ),
    # 11.6 part 2
    "11.6 CONFIG_TRAP part 2": dump(
        """
0000  00 54 00 07 00 00 00 04 03 00 30 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 40 08 00 20
0020  00 01 00 02 00 02 00 F8 66 FF F1 F0 00 00 08 C1
0030  00 00 10 15 66 FF F8 F8 00 00 08 D2 00 00 10 32
0040  E0 21 00 10 F3 AA 4F 30 49 8B 41 00 48 45 14 A6
0050  FD 4A 09 5D
"""
    ),
    # 11.6 final CONFIG_TRAP_ACK after reassembly
    "11.6 CONFIG_TRAP_ACK": dump(
        """
0000  00 31 80 07 00 00 00 04 03 00 20 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 00 E0 21 00
0020  10 B0 6D CB 1A A9 3B 44 2A 04 AC 20 78 18 33 A3
0030  9C
"""
    ),
    # 11.7 captured registration SECURITY_CONFIG (the WMMP message of the SMS)
    "11.7 SECURITY_CONFIG": dump(
        """
0000  00 69 00 0E 00 00 00 01 03 00 80 00 41 53 4D 37
0010  30 30 30 37 32 32 32 32 32 32 32 32 00 E0 25 00
0020  08 31 32 33 34 35 36 37 38 E0 27 00 04 AA AA AA
0030  AA E0 28 00 08 38 37 36 35 34 33 32 31 E0 2A 00
0040  04 AA AA AA AA E0 36 00 18 31 31 32 32 33 33 34
0050  34 35 35 36 36 37 37 38 38 39 39 30 30 31 32 33
0060  34 E0 38 00 04 AA AA AA AA
"""
    ),
    # 11.8 SMS wake-up, REMOTE_CTRL code 3 (the WMMP message of the SMS)
    "11.8 REMOTE_CTRL": dump(
        """
0000  00 21 00 0B 00 00 00 11 03 00 00 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 40 01 00 01
0020  03
"""
    ),
    # 11.9 LOGIN requesting a session key (E03A)
    "11.9 LOGIN": dump(
        """
0000  00 50 00 01 00 00 00 05 03 00 E0 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 31 2E 30 31
0020  00 00 00 00 AB FE D4 CF E0 3A 00 10 CB C0 98 D8
0030  C6 D3 43 AC 5F 41 23 A9 E9 63 C7 A7 E0 21 00 10
0040  62 3B 56 FF AA 0A 54 78 14 88 71 AB 54 53 69 36
"""
    ),
    # 11.9 LOGIN_ACK with E040 (legacy)
    "11.9 LOGIN_ACK": dump(
        """
0000  00 59 80 01 00 00 00 05 03 00 E0 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 00 67 00 01
0020  00 E0 40 00 20 00 8E 39 C6 2F 3E ED 61 46 23 46
0030  AC 46 3D FD A5 08 0F B1 8B 37 87 1E AB 98 61 F4
0040  D2 C2 47 9B 85 E0 21 00 10 2E BE 6B 05 14 6C 80
0050  85 D8 9B 04 36 BC 2B 93 6C
"""
    ),
    # 11.10 TRANSPARENT_DATA of 11.5 in a legacy E042 container
    "11.10 TRANSPARENT_DATA legacy": dump(
        """
0000  00 4C 00 04 00 00 00 06 03 00 F0 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 E0 42 00 18
0020  BA 8C C7 D0 27 55 A6 A9 B7 1C 64 FD 91 67 C7 29
0030  AB 38 F7 4C EC 0A D1 22 E0 21 00 10 AE C0 37 A3
0040  A6 D5 FE 1D 76 53 DC 2D 58 00 DA 38
"""
    ),
}

# 11.9: E040 plaintext and ciphertext; 11.10: the E042 values under both ciphers.
E040_PLAIN_11_9 = bytes.fromhex(
    "E0 3B 00 10 51 37 6D 32 58 63 39 54 7A 52 34 76 4C 38 70 77 E0 3D 00 04 67 01 52 80"
)
E040_CIPHER_11_9 = bytes.fromhex(
    "00 8E 39 C6 2F 3E ED 61 46 23 46 AC 46 3D FD A5"
    " 08 0F B1 8B 37 87 1E AB 98 61 F4 D2 C2 47 9B 85"
)
PLAIN_BODY_11_10 = bytes.fromhex("2B A1 40 14 00 06 45 43 30 30 30 31 40 07 00 04 01 02 03 04")
E042_LEGACY_11_10 = bytes.fromhex(
    "BA 8C C7 D0 27 55 A6 A9 B7 1C 64 FD 91 67 C7 29 AB 38 F7 4C EC 0A D1 22"
)
E042_AES_11_10 = bytes.fromhex(
    "00 01 02 03 04 05 06 07 08 09 0A 0B 0C 0D 0E 0F 3A 69 EB 57 C4 6C 4E D5 E8 32 64 16"
    " 15 D0 09 94 0C 39 64 2A 3D 6D 5C B5 F9 CE 10 5E 05 AF 58 38"
)
AES_IV_11_10 = bytes(range(16))


def trap_body_11_6() -> bytes:
    """The 925-byte CONFIG_TRAP body exactly as 11.6 defines it."""
    records = b"".join(
        (0x66FDF0A8 + 1800 * i).to_bytes(4, "big")
        + (1000 + 17 * i).to_bytes(4, "big")
        + (2000 + 29 * i).to_bytes(4, "big")
        for i in range(75)
    )
    return (
        bytes.fromhex("20 04 00 01 01 20 06 00 04 66 FD F0 A8 20 07 00 04 67 00 00 00 20 17 03 84")
        + records
    )


def user_data_message_11_5() -> TransparentData:
    """The typed TRANSPARENT_DATA of 11.5 (and, encrypted, of 11.10)."""
    return TransparentData.build(b"\x01\x02\x03\x04", Tlv.of(0x4014, "EC0001"))


# (name, typed message, Sequence_ID, flag given to the encoder, signing key, timestamp,
#  serial): everything the codec needs to rebuild each plaintext vector.
SERIAL_11_7 = "ASM7000722222222"
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
    body = trap_body_11_6()
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
    trap = decode_message(Command.CONFIG_TRAP, trap_body_11_6())
    assert isinstance(trap, ConfigTrap)
    assert [t.tag for t in trap.tlvs] == [0x2004, 0x2006, 0x2007, 0x2017]
    values = {t.tag: t.value for t in trap.tlvs}
    assert values[0x2004] == 1
    assert values[0x2006] == 0x66FDF0A8
    assert values[0x2007] == 0x67000000
    records = values[0x2017]
    assert len(records) == 75
    assert records == [(0x66FDF0A8 + 1800 * i, 1000 + 17 * i, 2000 + 29 * i) for i in range(75)]
    assert trap.encode_body() == trap_body_11_6()


def test_11_6_parts_are_built_from_fragment_values() -> None:
    """The three part messages, built from their 4008 values, equal the dumps."""
    sender = FragmentSender(trap_body_11_6(), trans_id=1)
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
    assert receiver.feed(parts[1], 1.0) == Complete(trap_body_11_6())


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

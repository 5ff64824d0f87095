"""Digest, proofs, ciphers, containers and secrets against spec 6 and the vectors of 11."""

from __future__ import annotations

import hashlib
import random
import string
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from m2mgw.protocol.errors import CryptoError, ProtocolError
from m2mgw.protocol.security import (
    AesCipher,
    DigestKey,
    LegacyCipher,
    base_key_proof,
    compute_digest,
    decode_session_key,
    decrypt_body,
    downlink_proof,
    encode_session_key,
    encrypt_body,
    generate_base_key,
    generate_password,
    generate_secret,
    generate_session_key,
    imei_field,
    make_cipher,
    password_proof,
    proofs_equal,
    sign,
    uplink_proof,
    verify,
)


def _dump(text: str) -> bytes:
    """Bytes of a spec hex dump ("OFFS  XX XX ..." lines)."""
    return bytes.fromhex(" ".join(line[6:] for line in text.strip().splitlines()))


def _hex(text: str) -> bytes:
    return bytes.fromhex(text)


# spec 11, example identity
IMEI = "860000000000001"
IMSI = "460000000000001"
UPLINK_PASSWORD = "12345678"
DOWNLINK_PASSWORD = "87654321"
BASE_KEY = "112233445566778899001234"
SESSION_KEY = "Q7m2Xc9TzR4vL8pw"  # spec 11.9
UPLINK = DigestKey.make(IMEI, IMSI, UPLINK_PASSWORD)
DOWNLINK = DigestKey.make(IMEI, IMSI, DOWNLINK_PASSWORD)
TS_11_3 = 0x67000000
TS_11_9 = 0x67000100

# spec 11.2 LOGIN
LOGIN_11_2 = _dump(
    """
0000  00 3C 00 01 00 00 00 01 03 00 A0 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 31 2E 30 31
0020  00 00 00 00 AB FE D4 CF E0 21 00 10 D3 83 59 45
0030  2D A7 F6 D5 39 65 EE CA 90 F8 A2 C4
"""
)

# spec 11.3 LOGIN_ACK
LOGIN_ACK_11_3 = _dump(
    """
0000  00 35 80 01 00 00 00 01 03 00 A0 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 00 67 00 00
0020  00 E0 21 00 10 1E E7 CB C8 C7 58 7F 15 31 93 3D
0030  97 92 7C 15 A5
"""
)

# spec 11.5 TRANSPARENT_DATA
TRANSPARENT_DATA_11_5 = _dump(
    """
0000  00 44 00 04 00 00 00 03 03 00 20 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 2B A1 40 14
0020  00 06 45 43 30 30 30 31 40 07 00 04 01 02 03 04
0030  E0 21 00 10 80 C9 62 06 67 CA 0C 9E 7C EE 1C 25
0040  69 69 AF C6
"""
)

# spec 11.5 TRANSPARENT_DATA_ACK
TRANSPARENT_DATA_ACK_11_5 = _dump(
    """
0000  00 31 80 04 00 00 00 03 03 00 20 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 00 E0 21 00
0020  10 40 16 E3 39 BB 00 3A DB A7 95 BB 25 A4 E4 C3
0030  6E
"""
)

# spec 11.6 CONFIG_TRAP part 1
TRAP_PART1_11_6 = _dump(
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
)

# spec 11.6 CONFIG_TRAP_ACK asking for part 2
TRAP_ACK_NEXT_11_6 = _dump(
    """
0000  00 3B 80 07 00 00 00 04 03 00 30 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 40 08 00 07
0020  00 01 00 02 00 02 01 E0 21 00 10 FF 80 5A 2E C7
0030  77 53 8C 3A CA 3B 9A 8F 7D 8F CE
"""
)

# spec 11.6 CONFIG_TRAP part 2
TRAP_PART2_11_6 = _dump(
    """
0000  00 54 00 07 00 00 00 04 03 00 30 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 40 08 00 20
0020  00 01 00 02 00 02 00 F8 66 FF F1 F0 00 00 08 C1
0030  00 00 10 15 66 FF F8 F8 00 00 08 D2 00 00 10 32
0040  E0 21 00 10 F3 AA 4F 30 49 8B 41 00 48 45 14 A6
0050  FD 4A 09 5D
"""
)

# spec 11.6 CONFIG_TRAP_ACK after reassembly
TRAP_ACK_11_6 = _dump(
    """
0000  00 31 80 07 00 00 00 04 03 00 20 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 00 E0 21 00
0020  10 B0 6D CB 1A A9 3B 44 2A 04 AC 20 78 18 33 A3
0030  9C
"""
)

# spec 11.9 LOGIN with E03A
LOGIN_11_9 = _dump(
    """
0000  00 50 00 01 00 00 00 05 03 00 E0 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 31 2E 30 31
0020  00 00 00 00 AB FE D4 CF E0 3A 00 10 CB C0 98 D8
0030  C6 D3 43 AC 5F 41 23 A9 E9 63 C7 A7 E0 21 00 10
0040  62 3B 56 FF AA 0A 54 78 14 88 71 AB 54 53 69 36
"""
)

# spec 11.9 LOGIN_ACK with E040
LOGIN_ACK_11_9 = _dump(
    """
0000  00 59 80 01 00 00 00 05 03 00 E0 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 00 67 00 01
0020  00 E0 40 00 20 00 8E 39 C6 2F 3E ED 61 46 23 46
0030  AC 46 3D FD A5 08 0F B1 8B 37 87 1E AB 98 61 F4
0040  D2 C2 47 9B 85 E0 21 00 10 2E BE 6B 05 14 6C 80
0050  85 D8 9B 04 36 BC 2B 93 6C
"""
)

# spec 11.10 TRANSPARENT_DATA with legacy E042
ENCRYPTED_11_10 = _dump(
    """
0000  00 4C 00 04 00 00 00 06 03 00 F0 00 41 39 37 32
0010  30 33 30 30 30 30 30 30 31 32 33 34 E0 42 00 18
0020  BA 8C C7 D0 27 55 A6 A9 B7 1C 64 FD 91 67 C7 29
0030  AB 38 F7 4C EC 0A D1 22 E0 21 00 10 AE C0 37 A3
0040  A6 D5 FE 1D 76 53 DC 2D 58 00 DA 38
"""
)

# (name, message, timestamp, key): every digested message of spec 11 with its inputs (6.2).
SIGNED = [
    ("11.2 LOGIN", LOGIN_11_2, 0, UPLINK),
    ("11.3 LOGIN_ACK", LOGIN_ACK_11_3, TS_11_3, DOWNLINK),
    ("11.5 TRANSPARENT_DATA", TRANSPARENT_DATA_11_5, TS_11_3, UPLINK),
    ("11.5 TRANSPARENT_DATA_ACK", TRANSPARENT_DATA_ACK_11_5, TS_11_3, DOWNLINK),
    ("11.6 part 1", TRAP_PART1_11_6, TS_11_3, UPLINK),
    ("11.6 ACK next part", TRAP_ACK_NEXT_11_6, TS_11_3, DOWNLINK),
    ("11.6 part 2", TRAP_PART2_11_6, TS_11_3, UPLINK),
    ("11.6 final ACK", TRAP_ACK_11_6, TS_11_3, DOWNLINK),
    ("11.9 LOGIN", LOGIN_11_9, 0, UPLINK),
    ("11.9 LOGIN_ACK", LOGIN_ACK_11_9, TS_11_9, DOWNLINK),
    ("11.10 encrypted TRANSPARENT_DATA", ENCRYPTED_11_10, TS_11_9, UPLINK),
]
SIGNED_IDS = [case[0] for case in SIGNED]
SIGNED_CASES = [case[1:] for case in SIGNED]


# --- IMEI field and DigestKey ----------------------------------------------------------


def test_imei_field_from_str_and_field_form() -> None:
    field = imei_field(IMEI)
    assert field == b"860000000000001\x00"
    assert imei_field(field) == field


@pytest.mark.parametrize(
    "bad",
    [
        "86000000000000",  # 14 digits
        "8600000000000012",  # 16 digits
        "86000000000000A",
        "٨٦٠٠٠٠٠٠٠٠٠٠٠٠١",  # non-ASCII digits
        b"860000000000001",  # 15 bytes without the NUL
        b"8600000000000011",  # 16 bytes, no NUL
        b"86000000000000A\x00",
        860000000000001,
    ],
)
def test_imei_field_rejects(bad: object) -> None:
    with pytest.raises(ProtocolError):
        imei_field(bad)  # type: ignore[arg-type]


def test_digest_key_fields_and_suffix() -> None:
    assert UPLINK.imei == b"860000000000001\x00"
    assert UPLINK.imsi == b"460000000000001"
    assert UPLINK.password == b"12345678"
    assert UPLINK.suffix == UPLINK.imei + UPLINK.imsi + UPLINK.password
    assert len(UPLINK.suffix) == 39
    assert DigestKey.make(UPLINK.imei, b"460000000000001", b"12345678") == UPLINK
    assert "12345678" not in repr(UPLINK)


@pytest.mark.parametrize(
    ("imei", "imsi", "password"),
    [
        (IMEI, "46000000000000", UPLINK_PASSWORD),
        (IMEI, IMSI, "1234567"),
        (IMEI, IMSI, "123456789"),
        (IMEI, IMSI, "1234567é"),
        ("1", IMSI, UPLINK_PASSWORD),
    ],
)
def test_digest_key_make_rejects_bad_sizes(imei: str, imsi: str, password: str) -> None:
    with pytest.raises(ProtocolError):
        DigestKey.make(imei, imsi, password)


def test_digest_key_direct_construction_is_validated() -> None:
    with pytest.raises(ProtocolError):
        DigestKey(b"860000000000001", b"460000000000001", b"12345678")


# --- digest (6.2) ----------------------------------------------------------------------


def test_compute_digest_matches_11_2_input() -> None:
    # spec 11.2: the explicit 83-byte digest input
    digest_input = _hex(
        "00 3C 00 01 00 00 00 01 03 00 A0 00 41 39 37 32 30 33 30 30 30 30 30 30 31 32 33 34 "
        "31 2E 30 31 00 00 00 00 AB FE D4 CF"
        "00000000"
        "38 36 30 30 30 30 30 30 30 30 30 30 30 30 31 00"
        "34 36 30 30 30 30 30 30 30 30 30 30 30 30 31"
        "31 32 33 34 35 36 37 38"
    )
    assert len(digest_input) == 83
    expected = _hex("D38359452DA7F6D53965EECA90F8A2C4")
    assert hashlib.md5(digest_input).digest() == expected
    assert compute_digest(LOGIN_11_2[:40], 0, UPLINK) == expected


def test_compute_digest_11_3() -> None:
    # spec 11.3
    assert compute_digest(LOGIN_ACK_11_3[:33], TS_11_3, DOWNLINK) == _hex(
        "1EE7CBC8C7587F1531933D97927C15A5"
    )


@pytest.mark.parametrize(("message", "timestamp", "key"), SIGNED_CASES, ids=SIGNED_IDS)
def test_sign_reproduces_spec_message(message: bytes, timestamp: int, key: DigestKey) -> None:
    assert int.from_bytes(message[:2], "big") == len(message)
    assert sign(message[:-20], timestamp, key) == message


@pytest.mark.parametrize(("message", "timestamp", "key"), SIGNED_CASES, ids=SIGNED_IDS)
def test_sign_sets_length_and_flag(message: bytes, timestamp: int, key: DigestKey) -> None:
    unsigned = bytearray(message[:-20])
    unsigned[0:2] = len(unsigned).to_bytes(2, "big")
    unsigned[10] &= ~0x20 & 0xFF
    assert sign(bytes(unsigned), timestamp, key) == message


@pytest.mark.parametrize(("message", "timestamp", "key"), SIGNED_CASES, ids=SIGNED_IDS)
def test_verify_spec_message(message: bytes, timestamp: int, key: DigestKey) -> None:
    assert verify(message, timestamp, key)
    assert verify(bytearray(message), timestamp, key)
    assert verify(memoryview(message), timestamp, key)


@pytest.mark.parametrize(("message", "timestamp", "key"), SIGNED_CASES, ids=SIGNED_IDS)
def test_verify_fails_after_any_flipped_byte(
    message: bytes, timestamp: int, key: DigestKey
) -> None:
    size = len(message)
    positions = {0, 1, 2, 10, 11, 12, 27, 28, size // 2, size - 21, size - 20, size - 17}
    positions |= {size - 16, size - 1}
    for position in sorted(positions):
        for mask in (0x01, 0x80, 0xFF):
            tampered = bytearray(message)
            tampered[position] ^= mask
            assert not verify(bytes(tampered), timestamp, key), (position, mask)


def test_verify_fails_with_wrong_inputs() -> None:
    assert not verify(LOGIN_11_2, 1, UPLINK)
    assert not verify(LOGIN_11_2, 0, DOWNLINK)
    assert not verify(LOGIN_11_2[:-1], 0, UPLINK)
    assert not verify(LOGIN_11_2 + b"\x00", 0, UPLINK)
    assert not verify(LOGIN_11_2[:47], 0, UPLINK)
    assert not verify(LOGIN_11_2, -1, UPLINK)
    assert not verify(LOGIN_11_2, 1 << 32, UPLINK)
    assert not verify(None, 0, UPLINK)  # type: ignore[arg-type]
    assert not verify("x" * 60, 0, UPLINK)  # type: ignore[arg-type]


def test_sign_rejects_bad_frames() -> None:
    with pytest.raises(ProtocolError):
        sign(LOGIN_11_2[:27], 0, UPLINK)
    with pytest.raises(ProtocolError):
        sign(bytes(65535 - 19), 0, UPLINK)
    with pytest.raises(ProtocolError):
        sign(LOGIN_11_2[:40], 1 << 32, UPLINK)
    assert len(sign(bytes(65535 - 20), 0, UPLINK)) == 65535


@given(st.binary(max_size=120), st.integers(min_value=-1, max_value=1 << 33))
def test_verify_never_raises_on_random_bytes(data: bytes, timestamp: int) -> None:
    assert verify(data, timestamp, UPLINK) in (True, False)
    if len(data) >= 48:
        # also reach the digest comparison: flag 0x20 and a well-formed digest head
        shaped = bytearray(data)
        shaped[10] |= 0x20
        shaped[-20:-16] = b"\xe0\x21\x00\x10"
        assert verify(bytes(shaped), timestamp, UPLINK) is False


# --- proofs (6.3.3) --------------------------------------------------------------------


def test_proof_vectors_11_1() -> None:
    # spec 11.1
    assert uplink_proof(UPLINK_PASSWORD, 0xFFFFFFFF) == _hex("3345B2CF15B4EA0F51B3C32E204DFC42")
    assert downlink_proof(DOWNLINK_PASSWORD, 0xFFFFFFFF) == _hex("FA610E36678B146694D35265061880D4")
    assert base_key_proof(BASE_KEY, 0xFFFFFFFF) == _hex("82D061D5E1A0A2DB894A0DA68789FDCB")
    assert base_key_proof(BASE_KEY, None) == _hex("82D061D5E1A0A2DB894A0DA68789FDCB")
    assert base_key_proof(BASE_KEY.encode(), 0xAAAAAAAA) == _hex("CBC098D8C6D343AC5F4123A9E963C7A7")
    # the E03A carried in the LOGIN of 11.9
    assert LOGIN_11_9[44:60] == base_key_proof(BASE_KEY, 0xAAAAAAAA)


def test_password_proof_is_generic() -> None:
    assert password_proof(0xE025, b"12345678", 0xE027, 0xFFFFFFFF) == uplink_proof(
        UPLINK_PASSWORD, 0xFFFFFFFF
    )


@pytest.mark.parametrize("expiry", [-1, 1 << 32])
def test_proof_rejects_bad_expiry(expiry: int) -> None:
    with pytest.raises(ProtocolError):
        uplink_proof(UPLINK_PASSWORD, expiry)


def test_proofs_equal() -> None:
    proof = uplink_proof(UPLINK_PASSWORD, 0xFFFFFFFF)
    assert proofs_equal(proof, bytes(proof))
    assert not proofs_equal(proof, downlink_proof(DOWNLINK_PASSWORD, 0xFFFFFFFF))
    assert not proofs_equal(proof, proof[:15])


# --- ciphers (6.4.1) -------------------------------------------------------------------

# spec 11.9: the E040 plaintext and ciphertext (legacy, three-key)
E040_PLAIN = _hex(
    "E0 3B 00 10 51 37 6D 32 58 63 39 54 7A 52 34 76 4C 38 70 77 E0 3D 00 04 67 01 52 80"
)
E040_VALUE = _hex(
    "00 8E 39 C6 2F 3E ED 61 46 23 46 AC 46 3D FD A5 08 0F B1 8B 37 87 1E AB 98 61 F4 D2 C2 47 "
    "9B 85"
)
# spec 11.10: the TRANSPARENT_DATA body of 11.5 and its two E042 values
BODY_11_10 = _hex("2B A1 40 14 00 06 45 43 30 30 30 31 40 07 00 04 01 02 03 04")
E042_LEGACY = _hex("BA 8C C7 D0 27 55 A6 A9 B7 1C 64 FD 91 67 C7 29 AB 38 F7 4C EC 0A D1 22")
E042_AES = _hex(
    "00 01 02 03 04 05 06 07 08 09 0A 0B 0C 0D 0E 0F 3A 69 EB 57 C4 6C 4E D5 E8 32 64 16 15 D0 "
    "09 94 0C 39 64 2A 3D 6D 5C B5 F9 CE 10 5E 05 AF 58 38"
)
FIXED_IV = bytes(range(16))


def _fixed_iv(size: int) -> bytes:
    assert size == 16
    return FIXED_IV


def test_e040_encode_11_9() -> None:
    cipher = LegacyCipher(BASE_KEY)
    assert encode_session_key(cipher, SESSION_KEY, TS_11_9 + 86400) == E040_VALUE
    assert LOGIN_ACK_11_9[37:69] == E040_VALUE
    assert cipher.decrypt(E040_VALUE) == E040_PLAIN + bytes(4)


def test_e040_decode_11_9() -> None:
    assert decode_session_key(LegacyCipher(BASE_KEY), E040_VALUE) == (SESSION_KEY, 0x67015280)


def test_e040_roundtrip_aes() -> None:
    cipher = AesCipher("0123456789abcdef")
    value = encode_session_key(cipher, SESSION_KEY, 0xFFFFFFFF)
    assert decode_session_key(cipher, value) == (SESSION_KEY, 0xFFFFFFFF)


def test_e040_decode_accepts_narrow_expiry() -> None:
    # PD-22: integer TLVs of width 1, 2 or 4 are read leniently
    cipher = LegacyCipher(BASE_KEY)
    plain = E040_PLAIN[:20] + _hex("E0 3D 00 02 12 34")
    assert decode_session_key(cipher, cipher.encrypt(plain)) == (SESSION_KEY, 0x1234)


@pytest.mark.parametrize(
    "value",
    [
        E040_VALUE[:-8],  # truncated: E03D missing
        E040_VALUE[:7],  # not a multiple of 8
        b"",
        bytes(32),  # garbage plaintext
    ],
)
def test_e040_decode_garbage(value: bytes) -> None:
    with pytest.raises(CryptoError):
        decode_session_key(LegacyCipher(BASE_KEY), value)


def test_e040_decode_wrong_key() -> None:
    with pytest.raises(CryptoError):
        decode_session_key(LegacyCipher("999999999999999999999999"), E040_VALUE)


def test_e040_encode_rejects_bad_input() -> None:
    cipher = LegacyCipher(BASE_KEY)
    with pytest.raises(ProtocolError):
        encode_session_key(cipher, "", 0)
    with pytest.raises(ProtocolError):
        encode_session_key(cipher, SESSION_KEY, 1 << 32)


def test_e042_legacy_11_10() -> None:
    cipher = make_cipher("legacy", SESSION_KEY)
    assert encrypt_body(cipher, BODY_11_10) == E042_LEGACY
    assert ENCRYPTED_11_10[32:56] == E042_LEGACY
    assert decrypt_body(cipher, E042_LEGACY) == BODY_11_10 + bytes(4)


def test_e042_aes_11_10() -> None:
    assert encrypt_body(AesCipher(SESSION_KEY, random=_fixed_iv), BODY_11_10) == E042_AES
    assert decrypt_body(make_cipher("aes", SESSION_KEY), E042_AES) == BODY_11_10


def test_legacy_two_key_is_k1_k2_k1() -> None:
    two_key = LegacyCipher(SESSION_KEY)
    three_key = LegacyCipher(SESSION_KEY + SESSION_KEY[:8])
    assert two_key.encrypt(BODY_11_10) == three_key.encrypt(BODY_11_10) == E042_LEGACY


def test_legacy_aligned_plaintext_gets_no_padding() -> None:
    cipher = LegacyCipher(BASE_KEY)
    assert len(cipher.encrypt(bytes(16))) == 16
    assert cipher.decrypt(cipher.encrypt(b"x" * 16)) == b"x" * 16


def test_legacy_rejects_empty_plaintext() -> None:
    with pytest.raises(ProtocolError):
        LegacyCipher(BASE_KEY).encrypt(b"")


def test_aes_uses_fresh_iv() -> None:
    cipher = AesCipher(SESSION_KEY)
    first, second = cipher.encrypt(BODY_11_10), cipher.encrypt(BODY_11_10)
    assert first[:16] != second[:16]
    assert len(first) == 48
    assert cipher.decrypt(first) == cipher.decrypt(second) == BODY_11_10


def test_aes_bad_padding() -> None:
    # flipping the last byte of the penultimate block flips the last padding byte
    tampered = bytearray(E042_AES)
    tampered[31] ^= 0x01
    with pytest.raises(CryptoError):
        AesCipher(SESSION_KEY).decrypt(bytes(tampered))


def test_aes_bad_iv_source() -> None:
    with pytest.raises(ProtocolError):
        AesCipher(SESSION_KEY, random=lambda size: bytes(8)).encrypt(b"x")


@pytest.mark.parametrize("size", [0, 1, 7, 9, 23])
def test_legacy_wrong_ciphertext_length(size: int) -> None:
    with pytest.raises(CryptoError):
        LegacyCipher(BASE_KEY).decrypt(bytes(size))


@pytest.mark.parametrize("size", [0, 15, 16, 31, 33, 40])
def test_aes_wrong_ciphertext_length(size: int) -> None:
    with pytest.raises(CryptoError):
        AesCipher(SESSION_KEY).decrypt(bytes(size))


@pytest.mark.parametrize(
    ("profile", "key"),
    [
        ("legacy", "12345678"),
        ("legacy", "1" * 23),
        ("legacy", "1" * 32),
        ("legacy", "é" * 16),
        ("aes", BASE_KEY),
        ("aes", b"short"),
        ("none", SESSION_KEY),
        ("des", SESSION_KEY),
    ],
)
def test_make_cipher_rejects(profile: str, key: str | bytes) -> None:
    with pytest.raises(ProtocolError):
        make_cipher(profile, key)


def test_make_cipher_profiles() -> None:
    assert make_cipher("legacy", BASE_KEY).name == "legacy"
    assert make_cipher("aes", SESSION_KEY.encode()).name == "aes"


def test_legacy_cipher_emits_no_deprecation_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LegacyCipher(BASE_KEY).decrypt(LegacyCipher(BASE_KEY).encrypt(b"x"))


def test_encrypt_body_too_long_for_tlv() -> None:
    with pytest.raises(ProtocolError):
        encrypt_body(AesCipher(SESSION_KEY), bytes(65535 - 16))


_key_chars = st.sampled_from(string.ascii_letters + string.digits)


@given(
    st.text(_key_chars, min_size=16, max_size=16) | st.text(_key_chars, min_size=24, max_size=24),
    st.binary(min_size=1, max_size=300),
)
def test_legacy_roundtrip(key: str, body: bytes) -> None:
    cipher = LegacyCipher(key)
    value = encrypt_body(cipher, body)
    assert len(value) % 8 == 0 and len(value) - len(body) < 8
    plain = decrypt_body(cipher, value)
    assert plain[: len(body)] == body
    assert not any(plain[len(body) :])


@given(st.text(_key_chars, min_size=16, max_size=16), st.binary(max_size=300))
def test_aes_roundtrip(key: str, body: bytes) -> None:
    cipher = AesCipher(key)
    value = encrypt_body(cipher, body)
    assert len(value) % 16 == 0 and 16 < len(value) - len(body) <= 32
    assert decrypt_body(cipher, value) == body


@given(st.binary(max_size=80))
def test_decrypt_raises_only_crypto_error(data: bytes) -> None:
    for cipher in (LegacyCipher(BASE_KEY), AesCipher(SESSION_KEY)):
        try:
            decrypt_body(cipher, data)
            decode_session_key(cipher, data)
        except CryptoError:
            pass


# --- secrets (6.3.2, PD-39) ------------------------------------------------------------

_ALPHABET = set(string.digits + string.ascii_letters)


def test_generated_lengths_and_alphabet() -> None:
    for secret, size in [
        (generate_password(), 8),
        (generate_base_key("legacy"), 24),
        (generate_base_key("aes"), 16),
        (generate_session_key(), 16),
        (generate_secret(100), 100),
    ]:
        assert len(secret) == size
        assert set(secret) <= _ALPHABET


def test_generated_secrets_usable_as_keys() -> None:
    make_cipher("legacy", generate_base_key("legacy"))
    make_cipher("aes", generate_base_key("aes"))
    make_cipher("legacy", generate_session_key())
    make_cipher("aes", generate_session_key())
    DigestKey.make(IMEI, IMSI, generate_password())


def test_generate_secret_injectable_source() -> None:
    assert generate_secret(12, random.Random(7)) == generate_secret(12, random.Random(7))
    assert generate_password(random.Random(1)) != generate_password(random.Random(2))


def test_generate_rejects() -> None:
    with pytest.raises(ProtocolError):
        generate_secret(0)
    with pytest.raises(ProtocolError):
        generate_base_key("none")

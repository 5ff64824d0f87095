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
from tests.spec_examples import (
    AES_IV_11_10,
    BASE_KEY,
    DOWNLINK,
    DOWNLINK_PASSWORD,
    E040_CIPHER_11_9,
    E040_PLAIN_11_9,
    E042_AES_11_10,
    E042_LEGACY_11_10,
    IMEI,
    IMSI,
    PLAIN_BODY_11_10,
    SESSION_KEY,
    TS_11_3,
    TS_11_9,
    UPLINK,
    UPLINK_PASSWORD,
    VECTORS,
)


def _hex(text: str) -> bytes:
    return bytes.fromhex(text)


# (name, message, timestamp, key): every digested message of spec 11 with its inputs (6.2).
SIGNED = [
    ("11.2 LOGIN", VECTORS["11.2 LOGIN"], 0, UPLINK),
    ("11.3 LOGIN_ACK", VECTORS["11.3 LOGIN_ACK"], TS_11_3, DOWNLINK),
    ("11.5 TRANSPARENT_DATA", VECTORS["11.5 TRANSPARENT_DATA"], TS_11_3, UPLINK),
    ("11.5 TRANSPARENT_DATA_ACK", VECTORS["11.5 TRANSPARENT_DATA_ACK"], TS_11_3, DOWNLINK),
    ("11.6 part 1", VECTORS["11.6 CONFIG_TRAP part 1"], TS_11_3, UPLINK),
    ("11.6 ACK next part", VECTORS["11.6 CONFIG_TRAP_ACK next part"], TS_11_3, DOWNLINK),
    ("11.6 part 2", VECTORS["11.6 CONFIG_TRAP part 2"], TS_11_3, UPLINK),
    ("11.6 final ACK", VECTORS["11.6 CONFIG_TRAP_ACK"], TS_11_3, DOWNLINK),
    ("11.9 LOGIN", VECTORS["11.9 LOGIN"], 0, UPLINK),
    ("11.9 LOGIN_ACK", VECTORS["11.9 LOGIN_ACK"], TS_11_9, DOWNLINK),
    ("11.10 encrypted TRANSPARENT_DATA", VECTORS["11.10 TRANSPARENT_DATA legacy"], TS_11_9, UPLINK),
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
    assert compute_digest(VECTORS["11.2 LOGIN"][:40], 0, UPLINK) == expected


def test_compute_digest_11_3() -> None:
    # spec 11.3
    assert compute_digest(VECTORS["11.3 LOGIN_ACK"][:33], TS_11_3, DOWNLINK) == _hex(
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
    login = VECTORS["11.2 LOGIN"]
    assert not verify(login, 1, UPLINK)
    assert not verify(login, 0, DOWNLINK)
    assert not verify(login[:-1], 0, UPLINK)
    assert not verify(login + b"\x00", 0, UPLINK)
    assert not verify(login[:47], 0, UPLINK)
    assert not verify(login, -1, UPLINK)
    assert not verify(login, 1 << 32, UPLINK)
    assert not verify(None, 0, UPLINK)  # type: ignore[arg-type]
    assert not verify("x" * 60, 0, UPLINK)  # type: ignore[arg-type]


def test_sign_rejects_bad_frames() -> None:
    login = VECTORS["11.2 LOGIN"]
    with pytest.raises(ProtocolError):
        sign(login[:27], 0, UPLINK)
    with pytest.raises(ProtocolError):
        sign(bytes(65535 - 19), 0, UPLINK)
    with pytest.raises(ProtocolError):
        sign(login[:40], 1 << 32, UPLINK)
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
    assert VECTORS["11.9 LOGIN"][44:60] == base_key_proof(BASE_KEY, 0xAAAAAAAA)


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


def _fixed_iv(size: int) -> bytes:
    assert size == 16
    return AES_IV_11_10


def test_e040_encode_11_9() -> None:
    cipher = LegacyCipher(BASE_KEY)
    assert encode_session_key(cipher, SESSION_KEY, TS_11_9 + 86400) == E040_CIPHER_11_9
    assert VECTORS["11.9 LOGIN_ACK"][37:69] == E040_CIPHER_11_9
    assert cipher.decrypt(E040_CIPHER_11_9) == E040_PLAIN_11_9 + bytes(4)


def test_e040_decode_11_9() -> None:
    assert decode_session_key(LegacyCipher(BASE_KEY), E040_CIPHER_11_9) == (SESSION_KEY, 0x67015280)


def test_e040_roundtrip_aes() -> None:
    cipher = AesCipher("0123456789abcdef")
    value = encode_session_key(cipher, SESSION_KEY, 0xFFFFFFFF)
    assert decode_session_key(cipher, value) == (SESSION_KEY, 0xFFFFFFFF)


def test_e040_decode_accepts_narrow_expiry() -> None:
    # PD-22: integer TLVs of width 1, 2 or 4 are read leniently
    cipher = LegacyCipher(BASE_KEY)
    plain = E040_PLAIN_11_9[:20] + _hex("E0 3D 00 02 12 34")
    assert decode_session_key(cipher, cipher.encrypt(plain)) == (SESSION_KEY, 0x1234)


@pytest.mark.parametrize(
    "value",
    [
        E040_CIPHER_11_9[:-8],  # truncated: E03D missing
        E040_CIPHER_11_9[:7],  # not a multiple of 8
        b"",
        bytes(32),  # garbage plaintext
    ],
)
def test_e040_decode_garbage(value: bytes) -> None:
    with pytest.raises(CryptoError):
        decode_session_key(LegacyCipher(BASE_KEY), value)


def test_e040_decode_wrong_key() -> None:
    with pytest.raises(CryptoError):
        decode_session_key(LegacyCipher("999999999999999999999999"), E040_CIPHER_11_9)


def test_e040_encode_rejects_bad_input() -> None:
    cipher = LegacyCipher(BASE_KEY)
    with pytest.raises(ProtocolError):
        encode_session_key(cipher, "", 0)
    with pytest.raises(ProtocolError):
        encode_session_key(cipher, SESSION_KEY, 1 << 32)


def test_e042_legacy_11_10() -> None:
    cipher = make_cipher("legacy", SESSION_KEY)
    assert encrypt_body(cipher, PLAIN_BODY_11_10) == E042_LEGACY_11_10
    assert VECTORS["11.10 TRANSPARENT_DATA legacy"][32:56] == E042_LEGACY_11_10
    assert decrypt_body(cipher, E042_LEGACY_11_10) == PLAIN_BODY_11_10 + bytes(4)


def test_e042_aes_11_10() -> None:
    assert (
        encrypt_body(AesCipher(SESSION_KEY, random=_fixed_iv), PLAIN_BODY_11_10) == E042_AES_11_10
    )
    assert decrypt_body(make_cipher("aes", SESSION_KEY), E042_AES_11_10) == PLAIN_BODY_11_10


def test_legacy_two_key_is_k1_k2_k1() -> None:
    two_key = LegacyCipher(SESSION_KEY)
    three_key = LegacyCipher(SESSION_KEY + SESSION_KEY[:8])
    assert (
        two_key.encrypt(PLAIN_BODY_11_10)
        == three_key.encrypt(PLAIN_BODY_11_10)
        == E042_LEGACY_11_10
    )


def test_legacy_aligned_plaintext_gets_no_padding() -> None:
    cipher = LegacyCipher(BASE_KEY)
    assert len(cipher.encrypt(bytes(16))) == 16
    assert cipher.decrypt(cipher.encrypt(b"x" * 16)) == b"x" * 16


def test_legacy_rejects_empty_plaintext() -> None:
    with pytest.raises(ProtocolError):
        LegacyCipher(BASE_KEY).encrypt(b"")


def test_aes_uses_fresh_iv() -> None:
    cipher = AesCipher(SESSION_KEY)
    first, second = cipher.encrypt(PLAIN_BODY_11_10), cipher.encrypt(PLAIN_BODY_11_10)
    assert first[:16] != second[:16]
    assert len(first) == 48
    assert cipher.decrypt(first) == cipher.decrypt(second) == PLAIN_BODY_11_10


def test_aes_bad_padding() -> None:
    # flipping the last byte of the penultimate block flips the last padding byte
    tampered = bytearray(E042_AES_11_10)
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

"""CRC16/CRC32 against spec 6.5 and the vectors of 11.1."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from m2mgw.protocol.checksum import crc16, crc16_cmcc, crc32
from tests.spec_examples import SYNC_CRC, SYNC_STREAM


def _crc16_bitwise(data: bytes) -> int:
    """The bit-by-bit algorithm exactly as spec 6.5 words it, as an independent oracle."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def test_crc16_check_value() -> None:
    # spec 11.1
    assert crc16(b"123456789") == 0x4B37


def test_crc16_user_data_of_11_5() -> None:
    # spec 11.1 / 11.5: sent big-endian as 2B A1
    value = crc16(bytes.fromhex("01 02 03 04"))
    assert value == 0x2BA1
    assert value.to_bytes(2, "big") == b"\x2b\xa1"


def test_crc16_empty_is_initial_register() -> None:
    assert crc16(b"") == 0xFFFF


def test_crc32_check_value() -> None:
    # spec 11.1
    assert crc32(b"123456789") == 0xCBF43926


def test_crc32_sync_stream() -> None:
    # spec 11.1
    assert len(SYNC_STREAM) == 47
    assert crc32(SYNC_STREAM) == SYNC_CRC


def test_bytes_like_inputs() -> None:
    data = bytes(range(256)) * 3
    assert crc16(bytearray(data)) == crc16(memoryview(data)) == crc16(data)
    assert crc32(bytearray(data)) == crc32(memoryview(data)) == crc32(data)


@given(st.binary(max_size=512))
def test_crc16_table_matches_bitwise_definition(data: bytes) -> None:
    assert crc16(data) == _crc16_bitwise(data)


@given(st.binary(max_size=256), st.binary(max_size=256))
def test_chaining_equals_whole(a: bytes, b: bytes) -> None:
    assert crc16(b, crc16(a)) == crc16(a + b)
    assert crc32(b, crc32(a)) == crc32(a + b)


def test_crc16_cmcc_variant_vectors() -> None:
    """PD-08 as corrected, 1.6 C5: the CMCC Java ME client's CRC16, as its wire bytes."""
    assert crc16_cmcc(b"123456789") == bytes.fromhex("AE CC")
    assert crc16_cmcc(bytes.fromhex("01 02 03 04")) == bytes.fromhex("14 85")
    # A variant, not CRC-16/MODBUS in another byte order.
    assert crc16_cmcc(b"123456789") not in (b"\x4b\x37", b"\x37\x4b")

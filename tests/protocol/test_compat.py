"""Compatibility profiles and the codec pieces they rest on (spec 1.6, issue #10)."""

from __future__ import annotations

import hashlib

import pytest

from m2mgw.protocol import compat, tags
from m2mgw.protocol.codec import (
    build_frame,
    header_only_digest,
    parse_frame,
    unflagged_digest,
    verify_frame,
)
from m2mgw.protocol.constants import Command
from m2mgw.protocol.security import DigestKey
from m2mgw.protocol.tlv import Tlv

KEY = DigestKey.make("354494040518570", "460020084678120", "vkwF2SJa")
SERIAL = "A00MS8011390002S"


def test_registry_of_profiles() -> None:
    assert compat.NAMES == ("strict", "cmcc-javame", "simcom")
    assert compat.profile("cmcc-javame") is compat.CMCC_JAVAME
    with pytest.raises(ValueError, match="one of strict, cmcc-javame, simcom"):
        compat.profile("lenient")
    strict = compat.STRICT
    assert not (strict.digest_without_flag or strict.sync_crc_zero_untracked
                or strict.crc16_cmcc or strict.little_endian_integers
                or strict.register_op3_digest_optional)  # fmt: skip
    assert strict.max_frame is None and not strict.refused_requests
    assert not strict.accepts_unsigned(Command.TRANSPARENT_DATA)


def test_cmcc_accepts_c3_only_for_its_commands() -> None:
    cmcc = compat.CMCC_JAVAME
    for command in (Command.LOGOUT, Command.TRANSPARENT_DATA, Command.CONFIG_REQ):
        assert cmcc.accepts_unsigned(command)
    assert cmcc.accepts_unsigned(Command.REMOTE_CTRL | 0x8000)  # its answers
    assert not cmcc.accepts_unsigned(Command.CONFIG_TRAP)
    assert not cmcc.accepts_unsigned(Command.TRANSPARENT_CMD)
    assert cmcc.refused_requests == {Command.CONFIG_GET, Command.DOWNLOAD_INFO,
                                     Command.TRANSPARENT_DATA}  # fmt: skip
    assert cmcc.max_frame == 255
    assert compat.SIMCOM.register_op3_digest_optional
    assert not compat.SIMCOM.digest_without_flag


def test_the_line_names_the_accommodation() -> None:
    assert compat.unsigned_hint(Command.TRANSPARENT_DATA, "TRANSPARENT_DATA") == (
        "this terminal sends unsigned TRANSPARENT_DATA; the cmcc-javame profile accepts it "
        "(C3) on the TCP connection of the logged-in session"
    )
    assert compat.unsigned_hint(Command.CONFIG_TRAP, "CONFIG_TRAP") is None
    assert compat.would_accept("PD-06", "sends REGISTER op 3 without a digest") == (
        "this terminal sends REGISTER op 3 without a digest; the simcom profile accepts it "
        "(PD-06)"
    )
    assert compat.would_accept("C4", "signs CONFIG_TRAP over its header alone").endswith(
        "no profile accepts it (C4)"
    )


def test_value_ranges_of_the_timer_tags() -> None:
    """D-240: a heartbeat interval of 1.5 billion seconds is refused, 90 s is not."""
    assert tags.value_error(0x0011, (90).to_bytes(4, "big")) is None
    assert tags.value_error(0x0011, bytes.fromhex("5A000000")) == (
        "0x0011 (PERIOD_CFG) = 1,509,949,440 is outside 1-86,400"
    )
    assert tags.value_error(0x0011, b"\x00\x00\x00\x00") is not None
    assert tags.value_error(0x0011, (86_400).to_bytes(4, "big")) is None
    assert tags.value_error(0x4004, b"\x00\x00") is not None  # PERIOD_CTRL 0
    assert tags.value_error(0x0026, b"\x00\x00") is not None  # "0 is invalid" (3.2)
    assert tags.value_error(0x4002, b"\x05") is not None  # connection modes 0-4 (3.6.2)
    assert tags.value_error(0x4002, b"\x03") is None
    # Tags without bounds, and lengths that length_fits already refuses, pass.
    assert tags.value_error(0x3007, b"\xff") is None
    assert tags.value_error(0x0011, b"\x00\x00\x5a") is None
    assert tags.value_error(0x8100, b"\x00") is None


def test_little_endian_integers_are_swapped_and_nothing_else() -> None:
    """C6: heartbeat 90 s sent as 5A 00 00 00 means 90."""
    assert tags.swap_integer(0x0011, bytes.fromhex("5A000000")) == (90).to_bytes(4, "big")
    assert tags.swap_integer(0x4004, bytes.fromhex("5A00")) == bytes.fromhex("005A")
    assert tags.swap_integer(0x3007, b"\x17") == b"\x17"  # one byte has no order
    assert tags.swap_integer(0x0002, b"CMNET") == b"CMNET"  # a string
    assert tags.swap_integer(0x4010, bytes.fromhex("0000000007")) == bytes.fromhex("0000000007")
    assert tags.swap_integer(0x8100, b"\x01\x02") == b"\x01\x02"  # vendor: never interpreted
    tlvs = [Tlv(0x0011, bytes.fromhex("5A000000")), Tlv(0x0002, b"CMNET")]
    swapped = compat.integers_swapped(tlvs)
    assert [t.value for t in swapped] == [90, "CMNET"]
    assert compat.integers_swapped(swapped) == tlvs


def test_unflagged_digest_verifies_over_the_bytes_as_sent() -> None:
    """C1: the LOGIN of 1.6, flag 0x00 with an E021 that verifies."""
    raw = build_frame(Command.LOGIN, 1, SERIAL, b"12345678\0\0\0\0", key=KEY,
                      flag_digest=False)  # fmt: skip
    head = bytes.fromhex("003C 0001 00000001 0300 00 00") + SERIAL.encode()
    body = bytes.fromhex("3132333435363738 00000000")
    suffix = b"354494040518570\0" + b"460020084678120" + b"vkwF2SJa"
    expected = head + body + bytes.fromhex("E0210010")
    assert raw == expected + hashlib.md5(head + body + bytes(4) + suffix).digest()
    frame = parse_frame(raw)
    assert frame.digest is None and frame.body.endswith(raw[-20:])
    split = unflagged_digest(frame)
    assert split is not None and split.body == body and split.digest == raw[-16:]
    assert verify_frame(split, 0, KEY)
    assert unflagged_digest(parse_frame(build_frame(Command.LOGIN, 1, SERIAL, body))) is None
    signed = build_frame(Command.LOGIN, 1, SERIAL, body, key=KEY)
    assert unflagged_digest(parse_frame(signed)) is None  # the digest is there already


def test_header_only_digest_is_recognised_not_verified() -> None:
    """C4: MD5 over the 28-byte header alone authenticates no body byte."""
    body = Tlv.of(0x3007, 23).encode()
    raw = build_frame(Command.CONFIG_TRAP, 2, SERIAL, body, key=KEY, timestamp=7,
                      flag_digest=False, header_only=True)  # fmt: skip
    split = unflagged_digest(parse_frame(raw))
    assert split is not None
    assert not verify_frame(split, 7, KEY)
    assert header_only_digest(split, 7, KEY)
    assert not header_only_digest(split, 8, KEY)
    # Over an empty body the header is the whole message: the digest is a true one.
    empty = build_frame(Command.CONFIG_TRAP, 3, SERIAL, b"", key=KEY, timestamp=7,
                        flag_digest=False, header_only=True)  # fmt: skip
    split = unflagged_digest(parse_frame(empty))
    assert split is not None and verify_frame(split, 7, KEY)

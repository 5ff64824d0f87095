"""Property tests of the typed messages, the full codec, the TLV registry and the header.

Every class in ``MESSAGE_TYPES`` gets a strategy derived from its fields, and must
survive ``decode_body(encode_body(m))`` and the whole codec (signed or not, plain or
inside either cipher's ``E042`` container).
"""

from __future__ import annotations

import re
import struct
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2mgw.protocol import codec, tags
from m2mgw.protocol.constants import HEADER_SIZE, KNOWN_COMMAND_IDS, Command
from m2mgw.protocol.errors import BodyError, HeaderError, ProtocolError
from m2mgw.protocol.header import Header, VersionError, check_header
from m2mgw.protocol.messages import (
    MESSAGE_TYPES,
    ConfigGet,
    ConfigReq,
    ConfigTrap,
    ConfigTrapAck,
    FileReqAck,
    Login,
    Logout,
    Message,
    RegisterAck,
    SecurityConfig,
    decode_message,
)
from m2mgw.protocol.security import AesCipher, Cipher, DigestKey, LegacyCipher, verify
from m2mgw.protocol.tags import TAGS, Kind, decode_value, encode_value, length_fits, tag_name
from m2mgw.protocol.tlv import Tlv, decode_tlvs, encode_tlvs
from tests.spec_examples import SERIAL, SESSION_KEY, UPLINK, VECTORS

# --- strategies ---------------------------------------------------------------------------

_FORMAT = re.compile(r"(\d*)([BHIs])")
_INT_BITS = {"B": 8, "H": 16, "I": 32}


def _struct_items(layout: struct.Struct) -> list[tuple[str, int]]:
    """(code, count) per field of a big-endian struct format such as ``>B16s15s``."""
    return [(code, int(count or 1)) for count, code in _FORMAT.findall(layout.format)]


def _uint(code: str) -> st.SearchStrategy[int]:
    return st.integers(0, (1 << _INT_BITS[code]) - 1)


def _text(size: int) -> st.SearchStrategy[str]:
    """Single-byte text that survives NUL padding (decoders strip trailing NUL/space)."""
    chars = st.characters(min_codepoint=0, max_codepoint=255)
    return st.text(chars, max_size=size).map(lambda s: s.rstrip("\x00 "))


def tag_values(tag: int) -> st.SearchStrategy[bytes]:
    """Raw values for any tag, zero-length ones included."""
    return st.binary(max_size=24)


any_tag = st.one_of(
    st.sampled_from(sorted(TAGS)),
    st.integers(0x8000, 0xDFFF),  # vendor range (3.8)
    st.integers(0x0000, 0xFFFF),  # anything, unknown tags included
)
tlv_lists = st.lists(st.builds(Tlv, any_tag, st.binary(max_size=24)), max_size=6)


def _generic(cls: type[Message]) -> st.SearchStrategy[Message]:
    """A message whose init fields are exactly ``FIXED_FIELDS`` laid out by ``FIXED``."""
    kwargs: dict[str, st.SearchStrategy[Any]] = {}
    items = _struct_items(cls.FIXED)
    for name, (code, count) in zip(cls.FIXED_FIELDS, items, strict=True):
        kwargs[name] = _text(cls.TEXT_FIELDS[name]) if code == "s" else _uint(code)
        assert code != "s" or count == cls.TEXT_FIELDS[name]
    kwargs["tlvs"] = tlv_lists if cls.HAS_TLVS else st.just([])
    return st.builds(cls, **kwargs)


SPECIAL: dict[type[Message], st.SearchStrategy[Message]] = {
    RegisterAck: st.builds(
        RegisterAck,
        _uint("B"),
        st.none() | st.text(st.characters(max_codepoint=255), min_size=16, max_size=16),
    ),
    ConfigTrapAck: st.one_of(
        st.builds(ConfigTrapAck, _uint("B").filter(lambda ret: ret != 1)),
        st.builds(ConfigTrapAck, st.just(1), _uint("H")),
    ),
    FileReqAck: st.builds(
        FileReqAck, _uint("I"), _uint("B"), _uint("H"), _uint("I"), st.binary(max_size=64)
    ),
}


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    return SPECIAL[cls] if cls in SPECIAL else _generic(cls)


all_messages = st.sampled_from(list(MESSAGE_TYPES.values())).flatmap(message_strategy)


def test_every_message_type_has_a_strategy() -> None:
    """The generic strategy must cover each class's init fields (else it needs SPECIAL)."""
    for cls in MESSAGE_TYPES.values():
        init = [f.name for f in fields(cls) if f.init and f.name != "tlvs"]
        assert cls in SPECIAL or init == list(cls.FIXED_FIELDS), cls.__name__


# --- body round trips -------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(MESSAGE_TYPES.values()), ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_body_round_trip(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(message_strategy(cls))
    body = message.encode_body()
    assert cls.decode_body(body) == message
    assert decode_message(cls.COMMAND, body) == message
    assert MESSAGE_TYPES[message.COMMAND] is cls


def _legacy_safe(message: Message) -> bool:
    """Legacy zero padding (6.4.1) cannot be told from a trailing all-zero element."""
    if isinstance(message, RegisterAck) and message.serial is not None:
        return any(message.serial.encode("latin-1"))
    return all(t.tag != 0 for t in message.tlvs)


CIPHERS: dict[str, Cipher | None] = {
    "plain": None,
    "legacy": LegacyCipher(SESSION_KEY),
    "aes": AesCipher(SESSION_KEY),
}


@pytest.mark.parametrize("cipher_name", list(CIPHERS))
@settings(max_examples=120, deadline=None)
@given(
    message=all_messages,
    sequence_id=_uint("I"),
    version=st.sampled_from([0x0300, 0x0301]),
    flag=st.sampled_from([0x00, 0x80, 0x40, 0xC0]),
    reserved_bits=st.integers(0, 0x0F),
    signed=st.booleans(),
    timestamp=_uint("I"),
)
def test_codec_round_trip(
    cipher_name: str,
    message: Message,
    sequence_id: int,
    version: int,
    flag: int,
    reserved_bits: int,
    signed: bool,
    timestamp: int,
) -> None:
    cipher = CIPHERS[cipher_name]
    body = message.encode_body()
    if cipher is not None and not body:
        return  # empty bodies are never encrypted (6.4.3)
    if cipher_name == "legacy" and not _legacy_safe(message):
        return
    key = UPLINK if signed else None
    raw = codec.encode_message(
        message,
        sequence_id=sequence_id,
        serial=SERIAL,
        version=version,
        flag=flag | reserved_bits,
        key=key,
        timestamp=timestamp,
        cipher=cipher,
    )
    frame = codec.parse_frame(raw)
    header = frame.header
    assert (header.length, header.command_id, header.sequence_id) == (
        len(raw),
        message.COMMAND,
        sequence_id,
    )
    assert (header.version, header.serial) == (version, SERIAL)
    assert header.has_digest == signed
    if cipher is None:
        assert header.flag == flag | reserved_bits | (0x20 if signed else 0)
        assert frame.body == body
    else:
        assert header.flag == (0xF0 if signed else 0xD0)
        assert frame.container_tag == codec.TAG_ENCRYPTED
    if signed:
        assert verify(raw, timestamp, UPLINK)
        assert not verify(raw, timestamp ^ 1, UPLINK)
    assert codec.decode_frame(frame, cipher) == message


def test_encrypting_an_empty_body_is_refused_by_legacy() -> None:
    with pytest.raises(ProtocolError):
        codec.encode_message(ConfigTrap(), sequence_id=1, serial=SERIAL, cipher=CIPHERS["legacy"])


# --- encoder input checks ---------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        Login("1.01.0001x", 0),  # 9 > 8 bytes
        Login("€", 0),  # not single-byte text
        Login("1.01", -1),
        Login("1.01", 1 << 32),
        Logout(3, tlvs=[Tlv(0x4011, b"")]),  # LOGOUT has no TLVs
        RegisterAck(256),
        RegisterAck(0, "short"),
        RegisterAck(0, "€" * 16),
        ConfigTrapAck(0, 0x0002),  # a bad tag only follows ret 1
        ConfigTrapAck(1, 0x10000),
        ConfigTrapAck(1),  # ret 1 names the bad tag (4.9)
        ConfigTrapAck(-1),
        FileReqAck(1, 0, 0, 0, bytes(0x10000)),
        SecurityConfig(300),
    ],
    ids=repr,
)
def test_encode_rejects_bad_fields(message: Message) -> None:
    with pytest.raises(BodyError):
        message.encode_body()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"serial": "SHORT"}, HeaderError),
        ({"serial": "A97203000000123\u00e9"}, HeaderError),
        ({"sequence_id": 1 << 32}, HeaderError),
        ({"sequence_id": -1}, HeaderError),
        ({"version": 0x10000}, HeaderError),
        ({"flag": 0x120}, HeaderError),
    ],
)
def test_build_frame_rejects_bad_header_fields(kwargs: dict[str, Any], error: type) -> None:
    args: dict[str, Any] = {"sequence_id": 1, "serial": SERIAL} | kwargs
    with pytest.raises(error):
        codec.encode_message(ConfigTrap(), **args)


def test_build_frame_refuses_digest_flag_without_key_and_oversize() -> None:
    with pytest.raises(HeaderError):
        codec.build_frame(7, 1, SERIAL, b"", flag=0x20)
    with pytest.raises(BodyError):
        codec.build_frame(7, 1, SERIAL, bytes(65535 - HEADER_SIZE + 1))
    assert len(codec.build_frame(7, 1, SERIAL, bytes(65535 - HEADER_SIZE))) == 65535


def test_body_decode_errors() -> None:
    for cls in MESSAGE_TYPES.values():
        if cls.FIXED.size:
            with pytest.raises(BodyError):
                cls.decode_body(bytes(cls.FIXED.size - 1))
    with pytest.raises(BodyError):
        Logout.decode_body(b"\x00\x01")  # no TLVs after a LOGOUT reason
    with pytest.raises(BodyError):
        ConfigTrap.decode_body(b"\x20\x04\x00\x02\x01")  # TLV overruns the body
    with pytest.raises(BodyError):
        ConfigTrap.decode_body(b"\x20\x04\x00")  # truncated TLV header
    with pytest.raises(BodyError):
        FileReqAck.decode_body(bytes(11) + b"\x00\x05" + b"abc")  # n overruns
    with pytest.raises(BodyError):
        decode_message(0x0009, b"")  # unassigned Command_ID


# --- TLV registry -----------------------------------------------------------------------


def typed_value(tag: int) -> st.SearchStrategy[Any]:
    """A valid typed value for a registry tag, as ``decode_value`` returns it."""
    spec = TAGS[tag]
    kind = spec.kind
    if kind in tags.INTEGER_KINDS:
        return _uint({Kind.U8: "B", Kind.U16: "H", Kind.U32: "I"}[kind])
    if kind is Kind.STR:
        return st.text(st.characters(max_codepoint=255), max_size=spec.size or 40)
    if kind is Kind.BYTES:
        return st.binary(min_size=spec.size, max_size=spec.size or 40)
    if kind is Kind.U16_LIST:
        return st.lists(_uint("H"), max_size=8)
    if kind is Kind.FLAG:
        return st.none()
    if kind is Kind.FRAGMENT:
        return st.binary(min_size=7, max_size=40)
    record = st.tuples(*(_uint(code) for code, _ in _struct_items(tags.STRUCT_LAYOUTS[tag])))
    return record if kind is Kind.STRUCT else st.lists(record, max_size=5)


@settings(max_examples=400, deadline=None)
@given(data=st.data(), tag=st.sampled_from(sorted(TAGS)))
def test_registry_value_round_trip(data: st.DataObject, tag: int) -> None:
    value = data.draw(typed_value(tag))
    raw = encode_value(tag, value)
    assert length_fits(tag, len(raw))
    assert decode_value(tag, raw) == value
    assert Tlv.of(tag, value) == Tlv(tag, raw)
    assert Tlv(tag, raw).value == value


def test_every_registry_tag_has_a_value_strategy() -> None:
    for tag in TAGS:
        assert typed_value(tag) is not None
        assert tag_name(tag) == TAGS[tag].name


def test_integers_are_lenient_on_receipt_and_exact_when_sent() -> None:
    """PD-22: 1, 2 or 4 bytes accepted for any integer tag; sent at the spec width."""
    for tag, spec in TAGS.items():
        if spec.kind not in tags.INTEGER_KINDS:
            continue
        for length in (1, 2, 4):
            assert length_fits(tag, length)
            assert decode_value(tag, (7).to_bytes(length, "big")) == 7
        for length in (0, 3, 5, 8):
            assert not length_fits(tag, length)
            with pytest.raises(BodyError):
                decode_value(tag, bytes(length))
    assert encode_value(0x0011, 90) == b"\x00\x00\x00\x5a"  # u32
    assert encode_value(0x4004, 90) == b"\x00\x5a"  # u16
    assert encode_value(0x4001, 3) == b"\x03"  # u8


@pytest.mark.parametrize(
    ("tag", "fits", "misfits"),
    [
        (0x3006, [4], [0, 2, 3, 5, 8]),  # struct(4): exact
        (0x4010, [5], [0, 4, 6, 10]),  # struct(5)
        (0x2011, [12], [0, 11, 24]),  # struct(12)
        (0x2017, [0, 12, 24, 900], [1, 11, 13, 906]),  # n × struct(12): multiples
        (0x2013, [0, 8, 16], [4, 12]),  # n × struct(8)
        (0xE021, [16], [0, 15, 17]),  # bytes(16): exact
        (0x0025, [0, 2, 10], [1, 3]),  # u16[]
        (0x4011, [0], [1, 2]),  # flag: zero length only
        (0x4008, [7, 8, 907], [0, 6]),  # fragment: at least the 7-byte head
        (0x0002, [0, 5, 19, 300], []),  # str(n): any length on receipt
        (0x4007, [0, 1, 1000], []),  # bytes
        (0x8100, [0, 1, 3, 77], []),  # vendor: anything
        (0x0F00, [0, 1, 3, 77], []),  # unknown: anything
    ],
)
def test_length_fits_rules(tag: int, fits: list[int], misfits: list[int]) -> None:
    for length in fits:
        assert length_fits(tag, length), length
    for length in misfits:
        assert not length_fits(tag, length), length
        with pytest.raises(BodyError):
            decode_value(tag, bytes(length))


def test_decode_value_views() -> None:
    assert decode_value(0x0025, bytes.fromhex("00020007")) == [2, 7]
    assert decode_value(0x3006, bytes.fromhex("12345678")) == (0x1234, 0x5678)
    assert decode_value(0x4010, bytes.fromhex("0000000011")) == (0, 17)
    assert decode_value(0x0002, b"CMNET") == "CMNET"
    assert decode_value(0x4011, b"") is None
    assert decode_value(0x8100, b"\x1f") == b"\x1f"  # vendor: raw bytes
    assert decode_value(0x0F00, b"\x01") == b"\x01"  # unknown: raw bytes


@pytest.mark.parametrize(
    ("tag", "value"),
    [
        (0x4001, 256),
        (0x4001, -1),
        (0x0011, 1 << 32),
        (0x0011, "ninety"),
        (0x0002, "€"),
        (0x3006, (1, 2, 3)),
        (0x2017, [(1, 2)]),
        (0x0025, [0x10000]),
        (0x4011, 1),
        (0x0F00, 5),  # unknown tag: raw bytes only
    ],
    ids=repr,
)
def test_encode_value_rejects(tag: int, value: Any) -> None:
    with pytest.raises(BodyError):
        encode_value(tag, value)


def test_tag_names() -> None:
    assert tag_name(0xE021) == "INITPARA"
    assert tag_name(0x8100) == "VENDOR_8100"
    assert tag_name(0xDFFF) == "VENDOR_DFFF"
    assert tag_name(0x5001) == "UNKNOWN_5001"
    assert tag_name(0xE043) == "UNKNOWN_E043"  # "treated as unknown" (3.7)
    assert Tlv(0x8100, b"").name == "VENDOR_8100"


_TLV_BODIES = [c for c in MESSAGE_TYPES.values() if c.HAS_TLVS and c not in SPECIAL]


@settings(max_examples=150, deadline=None)
@given(
    cls=st.sampled_from(_TLV_BODIES),
    tlvs=st.lists(
        st.builds(
            Tlv,
            st.one_of(st.integers(0x8000, 0xDFFF), st.integers(0, 0xFFFF)),
            st.binary(max_size=30),
        ),
        max_size=8,
    ),
)
def test_unknown_and_vendor_tags_preserved_byte_exact(cls: type[Message], tlvs: list[Tlv]) -> None:
    """Whatever TLVs a body carries, decode → encode gives back the same bytes (3.1, 3.8)."""
    body = bytes(cls.FIXED.size) + encode_tlvs(tlvs)
    message = decode_message(cls.COMMAND, body)
    assert message.tlvs == tlvs
    assert message.encode_body() == body


def test_zero_length_query_tlvs() -> None:
    """CONFIG_GET/CONFIG_REQ name tags with Length 0 (3.1, 4.8, 4.11)."""
    wanted = [0x0002, 0x0011, 0x3006, 0x8100, 0x0F00]
    for cls in (ConfigGet, ConfigReq):
        message = cls(tlvs=[Tlv.query(t) for t in wanted])
        body = message.encode_body()
        assert body == b"".join(t.to_bytes(2, "big") + b"\x00\x00" for t in wanted)
        decoded = decode_message(cls.COMMAND, body)
        assert decoded == message
        assert all(t.raw == b"" for t in decoded.tlvs)
    assert not length_fits(0x0011, 0)  # a query is not a value: the caller decides
    assert decode_tlvs(bytes.fromhex("40110000")) == [Tlv(0x4011, b"")]


# --- header -----------------------------------------------------------------------------


def _header_bytes(**changes: int | bytes) -> bytearray:
    raw = bytearray(VECTORS["11.4 HEART_BEAT"])
    for name, value in changes.items():
        offset, size = {
            "length": (0, 2),
            "command": (2, 2),
            "version": (8, 2),
            "flag": (10, 1),
            "reserved": (11, 1),
        }.get(name, (12, 16))
        raw[offset : offset + size] = (
            value if isinstance(value, bytes) else value.to_bytes(size, "big")
        )
    return raw


@settings(max_examples=200, deadline=None)
@given(
    length=st.integers(HEADER_SIZE, 0xFFFF),
    command_id=_uint("H"),
    sequence_id=_uint("I"),
    version=_uint("H"),
    flag=_uint("B"),
    reserved=_uint("B"),
    serial=st.text(st.characters(max_codepoint=127), min_size=16, max_size=16),
)
def test_header_pack_unpack(
    length: int,
    command_id: int,
    sequence_id: int,
    version: int,
    flag: int,
    reserved: int,
    serial: str,
) -> None:
    header = Header(length, command_id, sequence_id, version, flag, serial, reserved)
    raw = header.pack()
    assert len(raw) == HEADER_SIZE
    assert Header.unpack(raw) == header
    assert Header.unpack(raw + b"tail") == header


@pytest.mark.parametrize("length", [0, 1, 27])
def test_length_below_28(length: int) -> None:
    with pytest.raises(HeaderError):
        Header.unpack(bytes(_header_bytes(length=length)))


def test_length_bounds_and_frame_length() -> None:
    versions = (0x0300,)
    for length in (28, 48, 0xFFFF):
        header = Header(length, 0x0007, 1, 0x0300, 0, SERIAL)
        check_header(header, length, versions)
        with pytest.raises(HeaderError):
            check_header(header, length - 1, versions)
    with pytest.raises(HeaderError):
        Header.unpack(bytes(20))  # shorter than a header
    with pytest.raises(HeaderError):
        codec.parse_frame(VECTORS["11.2 LOGIN"][:-1])  # Total_Length != frame length


def test_version_list() -> None:
    raw = bytes(_header_bytes(version=0x0302))
    with pytest.raises(VersionError) as caught:
        codec.parse_frame(raw)
    assert caught.value.header.version == 0x0302
    assert caught.value.header.command_id == Command.HEART_BEAT
    assert codec.parse_frame(raw, accepted_versions=(0x0302,)).header.version == 0x0302
    assert codec.parse_frame(bytes(_header_bytes(version=0x0301))).header.version == 0x0301
    with pytest.raises(VersionError):
        codec.parse_frame(VECTORS["11.4 HEART_BEAT"], accepted_versions=(0x0301,))
    assert issubclass(VersionError, HeaderError)


@pytest.mark.parametrize("command_id", [0x0000, 0x0009, 0x8009, 0x0010, 0x8888, 0xFFFF])
def test_unknown_command_id(command_id: int) -> None:
    assert command_id not in KNOWN_COMMAND_IDS
    with pytest.raises(HeaderError) as caught:
        codec.parse_frame(bytes(_header_bytes(command=command_id)))
    assert not isinstance(caught.value, VersionError)


def test_every_command_id_passes() -> None:
    for command_id in MESSAGE_TYPES:
        assert (
            codec.parse_frame(bytes(_header_bytes(command=command_id))).header.command_id
            == command_id
        )


def test_digest_flag_needs_48_bytes() -> None:
    with pytest.raises(HeaderError):
        codec.parse_frame(bytes(_header_bytes(flag=0x20)))
    short = _header_bytes(flag=0x20, length=47) + bytes(19)
    with pytest.raises(HeaderError):
        codec.parse_frame(bytes(short))
    # 48 bytes but the last 20 are not TLV E021
    with pytest.raises(ProtocolError):
        codec.parse_frame(bytes(_header_bytes(flag=0x20, length=48) + bytes(20)))
    ok = _header_bytes(flag=0x20, length=48) + bytes.fromhex("E0210010") + bytes(16)
    frame = codec.parse_frame(bytes(ok))
    assert (frame.body, frame.digest) == (b"", bytes(16))


@pytest.mark.parametrize(("flag", "reserved"), [(0x0F, 0x00), (0x05, 0xFF), (0xCA, 0x7E)])
def test_reserved_bits_ignored(flag: int, reserved: int) -> None:
    frame = codec.parse_frame(bytes(_header_bytes(flag=flag, reserved=reserved)))
    assert frame.header.flag == flag and frame.header.reserved == reserved
    assert not frame.header.has_digest and not frame.header.is_container
    assert codec.decode_frame(frame) == decode_message(Command.HEART_BEAT, b"")


@pytest.mark.parametrize("serial", [b"A97203000000123\xe9", b"\xff" * 16, b"\x80" + b"0" * 15])
def test_non_ascii_serial(serial: bytes) -> None:
    with pytest.raises(HeaderError):
        codec.parse_frame(bytes(_header_bytes(serial=serial)))


def test_header_properties() -> None:
    header = codec.parse_frame(VECTORS["11.3 LOGIN_ACK"]).header
    assert header.command_name == "LOGIN_ACK"
    assert header.is_answer and header.has_digest and not header.is_container
    assert header.replace(sequence_id=9).sequence_id == 9
    assert header.replace(sequence_id=9).pack()[4:8] == b"\x00\x00\x00\x09"


def test_header_pack_rejects() -> None:
    for header in (
        Header(28, 1, 1 << 32, 0x0300, 0, SERIAL),
        Header(0x10000, 1, 1, 0x0300, 0, SERIAL),
        Header(28, 1, 1, 0x0300, 0, "too short"),
    ):
        with pytest.raises(HeaderError):
            header.pack()


def test_digest_key_signs_what_verify_accepts() -> None:
    other = DigestKey.make("860000000000002", "460000000000001", "12345678")
    raw = codec.encode_message(Logout(0), sequence_id=1, serial=SERIAL, key=UPLINK, timestamp=1)
    assert verify(raw, 1, UPLINK) and not verify(raw, 1, other)

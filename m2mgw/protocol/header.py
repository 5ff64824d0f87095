"""The 28-byte message header (spec 2)."""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from m2mgw.protocol.constants import (
    ACK_BIT,
    DIGEST_TLV_SIZE,
    HEADER_SIZE,
    KNOWN_COMMAND_IDS,
    MAX_LENGTH,
    SERIAL_SIZE,
    Flag,
    command_name,
)
from m2mgw.protocol.errors import HeaderError

HEADER = struct.Struct(">HHIHBB16s")
assert HEADER.size == HEADER_SIZE

# Plain ints: testing bits against the IntFlag members costs a microsecond per test.
_DIGEST = int(Flag.DIGEST)
_CONTAINER = int(Flag.CONTAINER)
_MIN_SIGNED = HEADER_SIZE + DIGEST_TLV_SIZE
_unpack_from = HEADER.unpack_from
_new_tuple = tuple.__new__


class Header(NamedTuple):
    """Decoded header; ``serial`` is the 16-character terminal serial number.

    A named tuple rather than a dataclass: it is built once per message received,
    and a tuple is immutable and several times cheaper to construct.
    """

    length: int
    command_id: int
    sequence_id: int
    version: int
    flag: int
    serial: str
    reserved: int = 0

    @property
    def command_name(self) -> str:
        return command_name(self.command_id)

    @property
    def is_answer(self) -> bool:
        return bool(self.command_id & ACK_BIT)

    @property
    def has_digest(self) -> bool:
        return bool(self.flag & _DIGEST)

    @property
    def is_container(self) -> bool:
        return bool(self.flag & _CONTAINER)

    def pack(self) -> bytes:
        return pack_header(
            self.length,
            self.command_id,
            self.sequence_id,
            self.version,
            self.flag,
            self.serial,
            self.reserved,
        )

    def replace(self, **changes: Any) -> Header:
        return self._replace(**changes)

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        """Decode the first 28 bytes; checks only what the bytes alone can tell."""
        if len(data) < HEADER_SIZE:
            raise HeaderError(f"{len(data)} bytes is shorter than a header")
        length, command_id, sequence_id, version, flag, reserved, serial = _unpack_from(data)
        if length < HEADER_SIZE:
            raise HeaderError(f"Total_Length {length} is below {HEADER_SIZE}")
        if not serial.isascii():
            raise HeaderError("serial number is not ASCII")
        return _new_tuple(
            cls, (length, command_id, sequence_id, version, flag, serial.decode("ascii"), reserved)
        )


def serial_field(serial: str) -> bytes:
    """The 16-byte serial field; serials are exactly 16 ASCII characters (spec 2.3)."""
    try:
        raw = serial.encode("ascii")
    except (UnicodeEncodeError, AttributeError):
        raise HeaderError(f"serial {serial!r} is not ASCII text") from None
    if len(raw) != SERIAL_SIZE:
        raise HeaderError(f"serial {serial!r} is not 16 ASCII characters")
    return raw


def pack_header(
    length: int,
    command_id: int,
    sequence_id: int,
    version: int,
    flag: int,
    serial: str,
    reserved: int = 0,
) -> bytes:
    """The 28 header bytes; a field that does not fit its width is a HeaderError."""
    field = serial_field(serial)
    try:
        return HEADER.pack(length, command_id, sequence_id, version, flag, reserved, field)
    except struct.error as exc:
        raise HeaderError(f"header field out of range: {exc}") from None


def check_header(
    header: Header, frame_length: int, accepted_versions: frozenset[int] | tuple[int, ...]
) -> None:
    """Receiver checks 1-3 of spec 2.2 (length, version, Command_ID), in that order.

    A version outside the list raises :class:`VersionError`, which the caller turns
    into LOGIN_ACK result 5 for a LOGIN and a silent discard otherwise (PD-02).
    """
    length = header.length
    if length != frame_length:
        raise HeaderError(f"Total_Length {length} != frame length {frame_length}")
    if length < _MIN_SIGNED and header.flag & _DIGEST:
        raise HeaderError(f"digest flag set but Total_Length is {length}")
    if length > MAX_LENGTH:
        raise HeaderError(f"Total_Length {length} above {MAX_LENGTH}")
    if header.version not in accepted_versions:
        raise VersionError(header)
    if header.command_id not in KNOWN_COMMAND_IDS:
        raise HeaderError(f"unknown Command_ID 0x{header.command_id:04X}")


class VersionError(HeaderError):
    """Protocol_Version outside ``accepted_versions`` (PD-02); carries the header."""

    def __init__(self, header: Header) -> None:
        super().__init__(f"protocol version 0x{header.version:04X} not accepted")
        self.header = header

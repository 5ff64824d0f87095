"""Value codecs of the application binding (6.4): one field value ⇄ a TLV's value bytes.

Integers are big-endian and, on receipt, accepted in any width that holds them ([T]
PD-22); strings are ASCII; enumerations of the operation set travel as u8 codes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from m2mgw.app import operations as ops
from m2mgw.app.longconn._wire import BodyError


class Codec:
    """Packs one field value into TLV value bytes and back."""

    def pack(self, value: Any) -> bytes:
        raise NotImplementedError

    def unpack(self, data: bytes) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Int(Codec):
    width: int

    def pack(self, value: Any) -> bytes:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BodyError(f"integer expected, got {value!r}")
        try:
            return value.to_bytes(self.width, "big")
        except OverflowError:
            raise BodyError(f"{value} does not fit u{8 * self.width}") from None

    def unpack(self, data: bytes) -> int:
        # Receipt is lenient about width ([T] PD-22) but not about range.
        if not 1 <= len(data) <= 4:
            raise BodyError(f"integer of {len(data)} bytes")
        value = int.from_bytes(data, "big")
        if value >> (8 * self.width):
            raise BodyError(f"{value} does not fit u{8 * self.width}")
        return value


class _Bool(Codec):
    def pack(self, value: Any) -> bytes:
        return b"\x01" if value else b"\x00"

    def unpack(self, data: bytes) -> bool:
        return bool(U8.unpack(data))


class _Str(Codec):
    def pack(self, value: Any) -> bytes:
        try:
            return value.encode("ascii")
        except (UnicodeEncodeError, AttributeError):
            raise BodyError(f"ASCII string expected, got {value!r}") from None

    def unpack(self, data: bytes) -> str:
        if not data.isascii():
            raise BodyError("string is not ASCII")
        return data.decode("ascii")


class _Bytes(Codec):
    def pack(self, value: Any) -> bytes:
        if not isinstance(value, bytes | bytearray):
            raise BodyError(f"bytes expected, got {type(value).__name__}")
        return bytes(value)

    def unpack(self, data: bytes) -> bytes:
        return data


class _Md5(Codec):
    """``fileMd5``: 32 hex digits in the operation, 16 bytes on the wire."""

    def pack(self, value: Any) -> bytes:
        try:
            raw = bytes.fromhex(value)
        except (ValueError, TypeError):
            raise BodyError(f"fileMd5 is not hex: {value!r}") from None
        if len(raw) != 16:
            raise BodyError("fileMd5 must be 16 bytes")
        return raw

    def unpack(self, data: bytes) -> str:
        if len(data) != 16:
            raise BodyError("fileMd5 must be 16 bytes")
        return data.hex()


class _U16List(Codec):
    def pack(self, value: Any) -> bytes:
        return b"".join(_U16_STRUCT.pack(v) for v in value)

    def unpack(self, data: bytes) -> list[int]:
        if len(data) % 2:
            raise BodyError("u16[] of odd length")
        return [v for (v,) in struct.iter_unpack(">H", data)]


@dataclass(frozen=True)
class _Enum(Codec):
    """A string of the operation set carried as a u8 code."""

    codes: dict[str, int]

    def pack(self, value: Any) -> bytes:
        try:
            return bytes([self.codes[value]])
        except (KeyError, TypeError):
            raise BodyError(f"no code for {value!r}") from None

    def unpack(self, data: bytes) -> str:
        code = U8.unpack(data)
        for name, value in self.codes.items():
            if value == code:
                return name
        raise BodyError(f"unknown code {code}")


@dataclass(frozen=True)
class Struct(Codec):
    """A fixed struct TLV carrying several fields as a tuple (``0x501C``, ``0x5012``)."""

    layout: struct.Struct

    def pack(self, value: Any) -> bytes:
        try:
            return self.layout.pack(*value)
        except (struct.error, TypeError):
            raise BodyError(f"cannot pack {value!r}") from None

    def unpack(self, data: bytes) -> tuple[int, ...]:
        if len(data) != self.layout.size:
            raise BodyError(f"struct TLV of {len(data)} bytes, expected {self.layout.size}")
        return self.layout.unpack(data)


U8, U16, U32 = Int(1), Int(2), Int(4)
_U16_STRUCT = struct.Struct(">H")
_STATUS_HEAD = struct.Struct(">16sBIIBB")
_STATE_CODES = {name: i for i, name in enumerate(ops.TERMINAL_STATES)}
_BEARER_CODES = {name: i for i, name in enumerate(ops.BEARERS)}


def _serial_bytes(terminal_id: str) -> bytes:
    raw = STR.pack(terminal_id)
    if len(raw) > 16:
        raise BodyError(f"terminal serial too long: {terminal_id!r}")
    return raw.ljust(16, b"\x00")


class _StatusRecord(Codec):
    """``0x500F``: serial ‖ state ‖ lastLogin ‖ lastActive ‖ bearer ‖ connectMode ‖ address."""

    def pack(self, value: Any) -> bytes:
        status: ops.TerminalStatus = value
        try:
            head = _STATUS_HEAD.pack(
                _serial_bytes(status.terminal_id),
                _STATE_CODES[status.state],
                status.last_login or 0,
                status.last_active or 0,
                _BEARER_CODES[status.bearer],
                0xFF if status.connect_mode is None else status.connect_mode,
            )
        except (KeyError, struct.error, TypeError):
            raise BodyError(f"cannot encode status record {status!r}") from None
        return head + STR.pack(status.address or "")

    def unpack(self, data: bytes) -> ops.TerminalStatus:
        if len(data) < _STATUS_HEAD.size:
            raise BodyError("status record too short")
        serial, state, last_login, last_active, bearer, mode = _STATUS_HEAD.unpack_from(data)
        if state >= len(ops.TERMINAL_STATES) or bearer >= len(ops.BEARERS):
            raise BodyError("status record has an unknown state or bearer")
        address = STR.unpack(data[_STATUS_HEAD.size :])
        return ops.TerminalStatus(
            terminal_id=STR.unpack(serial.rstrip(b"\x00")),
            state=ops.TERMINAL_STATES[state],
            last_login=last_login or None,
            last_active=last_active or None,
            bearer=ops.BEARERS[bearer],
            address=address or None,
            connect_mode=None if mode == 0xFF else mode,
        )


class _InfoRecord(Codec):
    """``0x500F`` in APP_QUERY_INFO_ACK: (terminalId, state, connectMode) of TerminalInfo."""

    def pack(self, value: Any) -> bytes:
        terminal_id, state, mode = value
        return STATUS_RECORD.pack(
            ops.TerminalStatus(terminal_id=terminal_id, state=state, bearer="NONE",
                               connect_mode=mode)
        )

    def unpack(self, data: bytes) -> tuple[str, str, int | None]:
        status = STATUS_RECORD.unpack(data)
        return status.terminal_id, status.state, status.connect_mode


def _codes(names: Iterable[str], start: int = 0) -> _Enum:
    return _Enum({name: i for i, name in enumerate(names, start)})


STR, BYTES, BOOL, MD5, U16_LIST = _Str(), _Bytes(), _Bool(), _Md5(), _U16List()
MODE = _Enum({"async": 0, "sync": 1})
BEARER = _codes(ops.BEARERS)
MSG_STATE = _codes(ops.MSG_STATES)
OPERATION = _codes(ops.DOWNLINK_OPERATIONS, 1)
EVENT = _codes(ops.EVENTS, 1)
STATUS_RECORD, INFO_RECORD = _StatusRecord(), _InfoRecord()

"""Long-connection binding of the application interface (spec 6).

Layers, bottom up, all pure (bytes and time in, events and bytes out, like h11):

* :class:`Header` / :func:`parse_frame`: the 28-byte header (AD-05) and one message;
* TLV helpers and the tag table of 6.4;
* body layouts (6.5): one :class:`Layout` per Command_ID maps a body onto the
  dataclasses of :mod:`m2mgw.app.operations`, so both bindings feed one handler;
* :func:`encode_message` / :func:`decode_body`: signed (5.2), optionally encrypted
  (7.4) messages;
* :class:`Framer`: a TCP byte stream into frames (6.1);
* :class:`PlatformSession` and :class:`ClientSession`: the session rules of 6.6,
  fragmentation (6.7, with :mod:`m2mgw.protocol.fragment`) and the key update of 7.5
  for each side of the connection.

Every failure caused by input raises :class:`LongConnError` (a :class:`ProtocolError`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any

from twisted.logger import Logger

from m2mgw.app import keys
from m2mgw.app import operations as ops
from m2mgw.app.digest import DIGEST_TLV_SIZE, lc_sign, lc_verify
from m2mgw.protocol import errors
from m2mgw.protocol.errors import ProtocolError
from m2mgw.protocol.fragment import (
    Abort,
    Complete,
    Ended,
    FragmentAbort,
    FragmentLimits,
    FragmentOp,
    FragmentPart,
    FragmentSender,
    ReassemblyEvent,
    ReassemblyTable,
    TransIdCounter,
    reply_to,
)
from m2mgw.protocol.security import Cipher
from m2mgw.protocol.tlv import decode_tlvs

__all__ = [
    "ANSWER_TIMEOUT",
    "FRAGMENT_THRESHOLD",
    "HEADER_SIZE",
    "PROTOCOL_VERSION",
    "REASSEMBLY_LIMITS",
    "WINDOW",
    "AnswerReceived",
    "AppCredentials",
    "BaseKeyAnnounced",
    "BodyError",
    "ClientSession",
    "Closed",
    "Command",
    "Frame",
    "FrameError",
    "Framer",
    "Header",
    "HeaderError",
    "KeyUpdated",
    "LoggedIn",
    "LoginConfirmed",
    "LoginRejected",
    "LoginRequested",
    "LogoutReceived",
    "LongConnError",
    "PlatformSession",
    "RequestFailed",
    "RequestReceived",
    "SessionError",
    "Tag",
    "command_for",
    "decode_body",
    "embeddable",
    "encode_body",
    "encode_message",
    "iter_tlvs",
    "parse_frame",
    "seal_body",
    "sign_frame",
    "tlv",
]

_log = Logger()

PROTOCOL_VERSION = 0x0100
HEADER_SIZE = 28
MAX_LENGTH = 0xFFFF
ACK_BIT = 0x8000
FLAG_NONE = 0x00
FLAG_DIGEST = 0x20
FLAG_CONTAINER = 0x10
MAX_BODY = MAX_LENGTH - HEADER_SIZE - DIGEST_TLV_SIZE

ANSWER_TIMEOUT = 15.0
WINDOW = 16
LOGIN_TIMEOUT = 60.0
HEARTBEAT_DEFAULT, HEARTBEAT_MIN, HEARTBEAT_MAX = 60, 10, 600
DUPLICATE_WINDOW = 300.0
SESSION_TTL = 86_400
#: The platform replaces a Session Key (APP_KEY_UPDATE type 1) at this fraction of its
#: life, ``session_ttl``, and the new key lives ``session_ttl`` again (D-343).
KEY_REFRESH_AT = 0.9
#: Seconds until a refresh that could not be sent yet (the window full, another key
#: update or a part exchange open, the login not confirmed) is tried again.
KEY_REFRESH_RETRY = 1.0
MAX_TIMEOUTS_IN_A_ROW = 3
#: 6.7: bodies longer than this (after encryption) travel in ``4008`` parts ...
FRAGMENT_THRESHOLD = 60_000
#: ... and a reassembly holds at most 4,200,000 bytes in 128 parts, 60 s idle.
REASSEMBLY_LIMITS = FragmentLimits(max_bytes=4_200_000, max_parts=128, idle_timeout=60.0)


# --- exceptions -------------------------------------------------------------------------


class LongConnError(ProtocolError):
    """Base of this module's exception family."""


class FrameError(LongConnError, errors.FramingError):
    """The byte stream cannot be framed; the connection must close."""


class HeaderError(LongConnError, errors.HeaderError):
    """A header or digest-TLV check of one frame failed; the frame is discarded."""


class BodyError(LongConnError, errors.BodyError):
    """A body or TLV cannot be parsed or built; answered with result 8 where possible."""


class SessionError(LongConnError):
    """The session cannot do what was asked in its current state (window full, …)."""


# --- tables (6.3, 6.4) ------------------------------------------------------------------


class Command(IntEnum):
    """Request Command_IDs; an ACK is ``0x8000 | cmd`` (AD-05)."""

    APP_LOGIN = 0x0101
    APP_LOGOUT = 0x0102
    APP_HEARTBEAT = 0x0103
    APP_SEND_DATA = 0x0104
    APP_DELIVER_DATA = 0x0105
    APP_SEND_CMD = 0x0106
    APP_CONFIG_GET = 0x0107
    APP_CONFIG_SET = 0x0108
    APP_REMOTE_CTRL = 0x0109
    APP_UPGRADE = 0x010A
    APP_QUERY_STATUS = 0x010B
    APP_QUERY_INFO = 0x010C
    APP_MSG_STATUS = 0x010D
    APP_RESULT_NOTIFY = 0x010E
    APP_ALARM_NOTIFY = 0x010F
    APP_STATE_NOTIFY = 0x0110
    APP_CONFIG_TRAP_NOTIFY = 0x0111
    APP_KEY_UPDATE = 0x0112
    APP_LIST_TERMINALS = 0x0113


def command_name(command_id: int) -> str:
    """``APP_LOGIN_ACK``-style name for logs; hex for unknown IDs."""
    try:
        name = Command(command_id & ~ACK_BIT).name
    except ValueError:
        return f"0x{command_id:04X}"
    return name + ("_ACK" if command_id & ACK_BIT else "")


class Tag(IntEnum):
    """TLV tags used by the application binding (6.4)."""

    HEARTBEAT_INTERVAL = 0x0011
    URL = 0x1001
    TERMINAL_SERIAL = 0x3002
    IMSI = 0x3003
    SOFTWARE_VERSION = 0x3004
    RESTORE_CODE = 0x300E
    REMOTE_CONTROL = 0x4001
    CONNECT_MODE = 0x4002
    USER_DATA = 0x4007
    FRAGMENT = 0x4008
    DESTINATION = 0x4012
    SOURCE = 0x4013
    FIXED_PART = 0x4016
    HEARTBEAT = 0x5001
    SESSION_KEY = 0x5002
    SESSION_TTL = 0x5003
    NEED_TERMINAL_ACK = 0x5004
    TTL = 0x5005
    BIZ_SEQ = 0x5006
    MSG_ID = 0x5007
    TIME = 0x5008
    TAGS = 0x5009
    MODE = 0x500A
    FAILED_TAGS = 0x500B
    VERSION = 0x500C
    FILE_MD5 = 0x500D
    FILE_SIZE = 0x500E
    STATUS_RECORD = 0x500F
    MSG_STATE = 0x5010
    TERMINAL_RESULT = 0x5011
    ALARM = 0x5012
    EVENT = 0x5013
    KEY_BLOB = 0x5014
    KEY_TYPE = 0x5015
    EFFECTIVE_TIME = 0x5016
    REASON = 0x5017
    NOTIFY_ID = 0x5018
    IMEI = 0x5019
    MSISDN = 0x501A
    MODEL = 0x501B
    PAGE = 0x501C
    TOTAL = 0x501D
    FILE_DATA = 0x501E
    ENCRYPT_NOTIFICATIONS = 0x501F
    OPERATION = 0x5020
    OP_RESULT = 0x5021
    SOURCE_URL = 0x5022
    FORCE = 0x5023
    BEARER = 0x5024
    DIGEST = 0xE021
    ENCRYPTED = 0xE042


def _is_app_tag(tag: int) -> bool:
    """The application family and its reserved range never count as embedded TLVs."""
    return 0x5000 <= tag <= 0x50FF


# --- header and frame (6.2) -------------------------------------------------------------

_HEADER = struct.Struct(">HHIHBx16s")
_TLV_HEAD = struct.Struct(">HH")


def app_id_field(app_id: str) -> bytes:
    """The 16-byte AppID field: ASCII, NUL-padded (AD-05)."""
    if not ops.is_valid_app_id(app_id):
        raise LongConnError(f"invalid AppID {app_id!r}")
    return app_id.encode("ascii").ljust(16, b"\x00")


@dataclass(frozen=True, slots=True)
class Header:
    """The 28-byte header as received or to be sent."""

    total_length: int
    command_id: int
    sequence_id: int
    version: int
    flags: int
    app_id: str

    @property
    def is_ack(self) -> bool:
        return bool(self.command_id & ACK_BIT)

    def pack(self) -> bytes:
        return _HEADER.pack(
            self.total_length, self.command_id, self.sequence_id, self.version,
            self.flags, app_id_field(self.app_id),
        )

    @classmethod
    def unpack(cls, data: bytes) -> Header:
        if len(data) < HEADER_SIZE:
            raise HeaderError(f"header needs {HEADER_SIZE} bytes, got {len(data)}")
        length, command_id, seq, version, flags, raw_id = _HEADER.unpack_from(data)
        text = raw_id.rstrip(b"\x00")
        if b"\x00" in text or not text.isascii():
            raise HeaderError("AppID field is not NUL-padded ASCII")
        return cls(length, command_id, seq, version, flags, text.decode("ascii"))


@dataclass(frozen=True, slots=True)
class Frame:
    """One received message: header, body (digest TLV excluded) and the raw bytes."""

    header: Header
    body: bytes
    raw: bytes

    @property
    def signed(self) -> bool:
        return bool(self.header.flags & FLAG_DIGEST)

    @property
    def container(self) -> int | None:
        """``0xE042`` or ``0x4008`` when flag ``0x10`` marks a container body."""
        if not self.header.flags & FLAG_CONTAINER or len(self.body) < 4:
            return None
        return _TLV_HEAD.unpack_from(self.body)[0]


def parse_frame(raw: bytes) -> Frame:
    """Split and check one complete frame (the receiver checks of [T] 2.2 steps 1 and 4)."""
    raw = bytes(raw)
    header = Header.unpack(raw)
    if header.total_length != len(raw):
        raise HeaderError(f"Total_Length {header.total_length} != frame size {len(raw)}")
    end = len(raw)
    if header.flags & FLAG_DIGEST:
        end -= DIGEST_TLV_SIZE
        if end < HEADER_SIZE or raw[end : end + 4] != b"\xe0\x21\x00\x10":
            raise HeaderError("flag 0x20 set but no trailing digest TLV")
    return Frame(header, raw[HEADER_SIZE:end], raw)


def build_unsigned(
    command_id: int, sequence_id: int, app_id: str, body: bytes, flags: int,
    version: int = PROTOCOL_VERSION,
) -> bytes:
    """Header ‖ body with Total_Length set for the frame as it will be sent."""
    total = HEADER_SIZE + len(body) + (DIGEST_TLV_SIZE if flags & FLAG_DIGEST else 0)
    if total > MAX_LENGTH:
        raise BodyError(f"message of {total} bytes exceeds 65,535")
    if not 0 <= sequence_id <= 0xFFFFFFFF:
        raise LongConnError(f"Sequence_ID out of range: {sequence_id}")
    return Header(total, command_id, sequence_id, version, flags, app_id).pack() + body


# --- TLVs (6.4) ---------------------------------------------------------------------------


def tlv(tag: int, value: bytes) -> bytes:
    """One TLV; values over 65,535 bytes must be split by the caller (:func:`split_tlv`)."""
    if len(value) > 0xFFFF:
        raise BodyError(f"TLV 0x{tag:04X} value too long ({len(value)} bytes)")
    return _TLV_HEAD.pack(tag, len(value)) + value


def split_tlv(tag: int, value: bytes) -> bytes:
    """A long value as consecutive TLVs of one tag (6.4 "Long values")."""
    if not value:
        return tlv(tag, b"")
    return b"".join(tlv(tag, value[i : i + 0xFFFF]) for i in range(0, len(value), 0xFFFF))


def iter_tlvs(data: bytes, *, padded: bool = False) -> list[tuple[int, bytes]]:
    """Parse a TLV stream; ``padded`` accepts up to 7 trailing 0x00 (``legacy`` 6.4.1).

    The terminal protocol's parser, with its errors raised as this binding's.
    """
    try:
        return decode_tlvs(data, padded=padded)  # type: ignore[return-value]
    except errors.BodyError as exc:
        raise BodyError(exc.reason) from None


# --- value codecs -------------------------------------------------------------------------


class _Codec:
    """Packs one field value into TLV value bytes and back."""

    def pack(self, value: Any) -> bytes:
        raise NotImplementedError

    def unpack(self, data: bytes) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class _Int(_Codec):
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


class _Bool(_Codec):
    def pack(self, value: Any) -> bytes:
        return b"\x01" if value else b"\x00"

    def unpack(self, data: bytes) -> bool:
        return bool(_U8.unpack(data))


class _Str(_Codec):
    def pack(self, value: Any) -> bytes:
        try:
            return value.encode("ascii")
        except (UnicodeEncodeError, AttributeError):
            raise BodyError(f"ASCII string expected, got {value!r}") from None

    def unpack(self, data: bytes) -> str:
        if not data.isascii():
            raise BodyError("string is not ASCII")
        return data.decode("ascii")


class _Bytes(_Codec):
    def pack(self, value: Any) -> bytes:
        if not isinstance(value, bytes | bytearray):
            raise BodyError(f"bytes expected, got {type(value).__name__}")
        return bytes(value)

    def unpack(self, data: bytes) -> bytes:
        return data


class _Md5(_Codec):
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


class _U16List(_Codec):
    def pack(self, value: Any) -> bytes:
        return b"".join(_U16.pack(v) for v in value)

    def unpack(self, data: bytes) -> list[int]:
        if len(data) % 2:
            raise BodyError("u16[] of odd length")
        return [v for (v,) in struct.iter_unpack(">H", data)]


@dataclass(frozen=True)
class _Enum(_Codec):
    """A string of the operation set carried as a u8 code."""

    codes: dict[str, int]

    def pack(self, value: Any) -> bytes:
        try:
            return bytes([self.codes[value]])
        except (KeyError, TypeError):
            raise BodyError(f"no code for {value!r}") from None

    def unpack(self, data: bytes) -> str:
        code = _U8.unpack(data)
        for name, value in self.codes.items():
            if value == code:
                return name
        raise BodyError(f"unknown code {code}")


@dataclass(frozen=True)
class _Struct(_Codec):
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


_U8, _U16_CODEC, _U32 = _Int(1), _Int(2), _Int(4)
_U16 = struct.Struct(">H")
_STATUS_HEAD = struct.Struct(">16sBIIBB")
_STATE_CODES = {name: i for i, name in enumerate(ops.TERMINAL_STATES)}
_BEARER_CODES = {name: i for i, name in enumerate(ops.BEARERS)}


def _serial_bytes(terminal_id: str) -> bytes:
    raw = _Str().pack(terminal_id)
    if len(raw) > 16:
        raise BodyError(f"terminal serial too long: {terminal_id!r}")
    return raw.ljust(16, b"\x00")


class _StatusRecord(_Codec):
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
        return head + _Str().pack(status.address or "")

    def unpack(self, data: bytes) -> ops.TerminalStatus:
        if len(data) < _STATUS_HEAD.size:
            raise BodyError("status record too short")
        serial, state, last_login, last_active, bearer, mode = _STATUS_HEAD.unpack_from(data)
        if state >= len(ops.TERMINAL_STATES) or bearer >= len(ops.BEARERS):
            raise BodyError("status record has an unknown state or bearer")
        address = _Str().unpack(data[_STATUS_HEAD.size :])
        return ops.TerminalStatus(
            terminal_id=_Str().unpack(serial.rstrip(b"\x00")),
            state=ops.TERMINAL_STATES[state],
            last_login=last_login or None,
            last_active=last_active or None,
            bearer=ops.BEARERS[bearer],
            address=address or None,
            connect_mode=None if mode == 0xFF else mode,
        )


class _InfoRecord(_Codec):
    """``0x500F`` in APP_QUERY_INFO_ACK: (terminalId, state, connectMode) of TerminalInfo."""

    def pack(self, value: Any) -> bytes:
        terminal_id, state, mode = value
        return _StatusRecord().pack(
            ops.TerminalStatus(terminal_id=terminal_id, state=state, bearer="NONE",
                               connect_mode=mode)
        )

    def unpack(self, data: bytes) -> tuple[str, str, int | None]:
        status = _StatusRecord().unpack(data)
        return status.terminal_id, status.state, status.connect_mode


def _codes(names: Iterable[str], start: int = 0) -> _Enum:
    return _Enum({name: i for i, name in enumerate(names, start)})


_STR, _BYTES, _BOOL = _Str(), _Bytes(), _Bool()
_MODE = _Enum({"async": 0, "sync": 1})
_BEARER = _codes(ops.BEARERS)
_MSG_STATE = _codes(ops.MSG_STATES)
_OPERATION = _codes(ops.DOWNLINK_OPERATIONS, 1)
_EVENT = _codes(ops.EVENTS, 1)


# --- body layouts (6.5) -------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One TLV of a layout and the field(s) it carries (dotted paths into nested types)."""

    tag: int
    attr: str | tuple[str, ...]
    codec: _Codec
    required: bool = False
    repeated: bool = False  # one TLV per list element
    long: bool = False  # value may span several TLVs of the tag


def _req(tag: int, attr: str | tuple[str, ...], codec: _Codec, **kw: bool) -> Rule:
    return Rule(tag, attr, codec, required=True, **kw)


def _opt(tag: int, attr: str | tuple[str, ...], codec: _Codec, **kw: bool) -> Rule:
    return Rule(tag, attr, codec, **kw)


@dataclass(frozen=True)
class Layout:
    """Fixed fields, then TLVs in any order, then embedded terminal TLVs (6.5)."""

    cls: type
    fixed: tuple[tuple[str, _Int], ...] = ()
    rules: tuple[Rule, ...] = ()
    items: str | None = None

    @property
    def claimed(self) -> frozenset[int]:
        return frozenset(rule.tag for rule in self.rules)


_RESULT = (("result_code", _U8),)


def _ack(cls: type, *rules: Rule, items: str | None = None) -> Layout:
    return Layout(cls, _RESULT, rules, items)


_TERMINAL = _req(Tag.DESTINATION, "terminal_id", _STR)
_SOURCE = _req(Tag.SOURCE, "terminal_id", _STR)
_NOTIFY_ID = _req(Tag.NOTIFY_ID, "notify_id", _U32)
_MSG_ID = _opt(Tag.MSG_ID, "msg_id", _U32)
_FAILED = _opt(Tag.FAILED_TAGS, "failed_tags", _U16List())
_TTL = _opt(Tag.TTL, "ttl_seconds", _U32)
_BIZ = _opt(Tag.BIZ_SEQ, "biz_seq", _STR)
_NEED_ACK = _opt(Tag.NEED_TERMINAL_ACK, "need_terminal_ack", _BOOL)

LAYOUTS: dict[int, Layout] = {
    Command.APP_LOGIN: Layout(
        ops.Login, (("login_type", _U8),),
        (_opt(Tag.HEARTBEAT, "heartbeat_interval", _U16_CODEC),
         _opt(Tag.ENCRYPT_NOTIFICATIONS, "encrypt_notifications", _BOOL)),
    ),
    Command.APP_LOGIN | ACK_BIT: Layout(
        ops.LoginResponse, (("result_code", _U8), ("server_time", _U32)),
        (_opt(Tag.SESSION_KEY, "session_key", _BYTES),
         _opt(Tag.HEARTBEAT, "heartbeat_interval", _U16_CODEC),
         _opt(Tag.SESSION_TTL, "session_ttl", _U32)),
    ),
    Command.APP_LOGOUT: Layout(ops.Logout, (("reason", _U8),)),
    Command.APP_LOGOUT | ACK_BIT: _ack(ops.LogoutResponse),
    Command.APP_HEARTBEAT: Layout(ops.Heartbeat),
    Command.APP_HEARTBEAT | ACK_BIT: _ack(ops.HeartbeatResponse),
    Command.APP_SEND_DATA: Layout(
        ops.SendData, (),
        (_TERMINAL, _req(Tag.USER_DATA, "data", _BYTES), _NEED_ACK, _TTL, _BIZ),
    ),
    Command.APP_SEND_DATA | ACK_BIT: _ack(ops.SendDataResponse, _MSG_ID),
    Command.APP_DELIVER_DATA: Layout(
        ops.DeliverData, (),
        (_NOTIFY_ID, _SOURCE, _req(Tag.USER_DATA, "data", _BYTES),
         _opt(Tag.FIXED_PART, "fixed_part", _BYTES), _req(Tag.BEARER, "bearer", _BEARER),
         _req(Tag.TIME, "receive_time", _U32)),
    ),
    Command.APP_DELIVER_DATA | ACK_BIT: _ack(ops.DeliverDataResponse),
    Command.APP_SEND_CMD: Layout(
        ops.SendCommand, (),
        (_TERMINAL, _req(Tag.FIXED_PART, "fixed_part", _BYTES),
         _req(Tag.USER_DATA, "command", _BYTES), _NEED_ACK, _TTL, _BIZ),
    ),
    Command.APP_SEND_CMD | ACK_BIT: _ack(ops.SendCommandResponse, _MSG_ID),
    Command.APP_CONFIG_GET: Layout(
        ops.GetConfig, (),
        (_TERMINAL, _req(Tag.TAGS, "tags", _U16List()), _opt(Tag.MODE, "mode", _MODE)),
    ),
    Command.APP_CONFIG_GET | ACK_BIT: _ack(ops.GetConfigResponse, _MSG_ID, _FAILED,
                                           items="items"),
    Command.APP_CONFIG_SET: Layout(ops.SetConfig, (), (_TERMINAL, _TTL, _BIZ), "items"),
    Command.APP_CONFIG_SET | ACK_BIT: _ack(ops.SetConfigResponse, _MSG_ID, _FAILED),
    Command.APP_REMOTE_CTRL: Layout(
        ops.RemoteControl, (),
        (_TERMINAL, _req(Tag.REMOTE_CONTROL, "code", _U8), _TTL, _BIZ), "items",
    ),
    Command.APP_REMOTE_CTRL | ACK_BIT: _ack(ops.RemoteControlResponse, _MSG_ID, _FAILED),
    Command.APP_UPGRADE: Layout(
        ops.Upgrade, (),
        (_TERMINAL, _req(Tag.VERSION, "version", _STR),
         _opt(Tag.FILE_DATA, "file_data", _BYTES, long=True),
         _opt(Tag.SOURCE_URL, "source_url", _STR),
         _req(Tag.FILE_MD5, "file_md5", _Md5()), _req(Tag.FILE_SIZE, "file_size", _U32),
         _opt(Tag.FORCE, "force", _BOOL), _TTL, _BIZ),
    ),
    Command.APP_UPGRADE | ACK_BIT: _ack(ops.UpgradeResponse, _MSG_ID),
    Command.APP_QUERY_STATUS: Layout(
        ops.QueryTerminalStatus, (),
        (_req(Tag.DESTINATION, "terminal_ids", _STR, repeated=True),),
    ),
    Command.APP_QUERY_STATUS | ACK_BIT: _ack(
        ops.QueryTerminalStatusResponse,
        _opt(Tag.STATUS_RECORD, "statuses", _StatusRecord(), repeated=True),
    ),
    Command.APP_QUERY_INFO: Layout(ops.QueryTerminalInfo, (), (_TERMINAL,)),
    Command.APP_QUERY_INFO | ACK_BIT: _ack(
        ops.QueryTerminalInfoResponse,
        _opt(Tag.STATUS_RECORD, ("info.terminal_id", "info.state", "info.connect_mode"),
             _InfoRecord()),
        _opt(Tag.IMEI, "info.imei", _STR),
        _opt(Tag.IMSI, "info.imsi", _STR),
        _opt(Tag.MSISDN, "info.msisdn", _STR),
        _opt(Tag.MODEL, "info.model", _STR),
        _opt(Tag.SOFTWARE_VERSION, "info.software_version", _STR),
        _opt(Tag.CONNECT_MODE, "info.connect_mode", _U8),
        _opt(Tag.HEARTBEAT_INTERVAL, "info.heartbeat_interval", _U32),
        items="info.items",
    ),
    Command.APP_MSG_STATUS: Layout(
        ops.QueryMessageStatus, (), (_req(Tag.MSG_ID, "msg_id", _U32),)
    ),
    Command.APP_MSG_STATUS | ACK_BIT: _ack(
        ops.QueryMessageStatusResponse,
        _opt(Tag.MSG_STATE, "state", _MSG_STATE),
        _opt(Tag.OP_RESULT, "op_result", _U16_CODEC),
        _opt(Tag.TERMINAL_RESULT, "terminal_result", _U8),
        _opt(Tag.TIME, "update_time", _U32),
    ),
    Command.APP_LIST_TERMINALS: Layout(
        ops.ListTerminals, (),
        (_req(Tag.PAGE, ("page_no", "page_size"), _Struct(struct.Struct(">HH"))),
         _opt(Tag.TIME, "modified_since", _U32)),
    ),
    Command.APP_LIST_TERMINALS | ACK_BIT: _ack(
        ops.ListTerminalsResponse,
        _opt(Tag.TOTAL, "total", _U32),
        _opt(Tag.TERMINAL_SERIAL, "terminal_ids", _STR, repeated=True),
    ),
    Command.APP_RESULT_NOTIFY: Layout(
        ops.NotifyResult, (),
        (_NOTIFY_ID, _req(Tag.MSG_ID, "msg_id", _U32), _BIZ,
         _req(Tag.OPERATION, "operation", _OPERATION), _SOURCE,
         _req(Tag.MSG_STATE, "state", _MSG_STATE), _req(Tag.OP_RESULT, "op_result", _U16_CODEC),
         _opt(Tag.TERMINAL_RESULT, "terminal_result", _U8), _FAILED,
         _req(Tag.TIME, "time", _U32)),
        "items",
    ),
    Command.APP_RESULT_NOTIFY | ACK_BIT: _ack(ops.NotifyResultResponse),
    Command.APP_ALARM_NOTIFY: Layout(
        ops.NotifyAlarm, (),
        (_NOTIFY_ID, _SOURCE,
         _req(Tag.ALARM, ("alarm.status", "alarm.type", "alarm.code"),
              _Struct(struct.Struct(">BBH"))),
         _req(Tag.TIME, "alarm.time", _U32), _req(Tag.BEARER, "bearer", _BEARER),
         _opt(Tag.RESTORE_CODE, "alarm.restore_code", _STR)),
        "items",
    ),
    Command.APP_ALARM_NOTIFY | ACK_BIT: _ack(ops.NotifyAlarmResponse),
    Command.APP_STATE_NOTIFY: Layout(
        ops.NotifyTerminalState, (),
        (_NOTIFY_ID, _SOURCE, _req(Tag.EVENT, "event", _EVENT), _req(Tag.TIME, "time", _U32),
         _opt(Tag.REASON, "reason", _U8)),
    ),
    Command.APP_STATE_NOTIFY | ACK_BIT: _ack(ops.NotifyTerminalStateResponse),
    Command.APP_CONFIG_TRAP_NOTIFY: Layout(
        ops.NotifyConfigTrap, (), (_NOTIFY_ID, _SOURCE, _req(Tag.TIME, "time", _U32)), "items"
    ),
    Command.APP_CONFIG_TRAP_NOTIFY | ACK_BIT: _ack(ops.NotifyConfigTrapResponse),
    Command.APP_KEY_UPDATE: Layout(
        ops.KeyUpdate, (),
        (_req(Tag.KEY_TYPE, "key_type", _U8), _req(Tag.KEY_BLOB, "key_blob", _BYTES),
         _opt(Tag.EFFECTIVE_TIME, "effective_time", _U32)),
    ),
    Command.APP_KEY_UPDATE | ACK_BIT: _ack(ops.KeyUpdateResponse),
}

_COMMAND_BY_CLASS: dict[type, int] = {layout.cls: cid for cid, layout in LAYOUTS.items()}


def command_for(payload: object) -> int:
    """The Command_ID that carries an operation dataclass (ACK bit for responses)."""
    try:
        return _COMMAND_BY_CLASS[type(payload)]
    except KeyError:
        raise LongConnError(f"{type(payload).__name__} has no long-connection command") from None


def embeddable(cls: type, tag: int) -> bool:
    """Whether the body of ``cls`` can carry a terminal TLV of ``tag`` among its items.

    Not the application family (6.4: a decoder reads those as the body's own fields or
    ignores them) and not a tag the layout itself uses, such as the source terminal
    ``0x4013`` of a notification: the last occurrence would win ([T] 3.1).
    """
    layout = LAYOUTS[_COMMAND_BY_CLASS[cls]]
    return layout.items is not None and not _is_app_tag(tag) and tag not in layout.claimed


def _get(obj: object, path: str) -> Any:
    for part in path.split("."):
        if obj is None:
            return None
        obj = getattr(obj, part)
    return obj


def _default(cls: type, path: str) -> Any:
    """The dataclass default of a top-level field; optional TLVs equal to it are omitted."""
    if "." in path:
        return None
    for f in dataclasses.fields(cls):
        if f.name == path and f.default is not dataclasses.MISSING:
            return f.default
    return None


def _rule_value(layout: Layout, rule: Rule, payload: object) -> Any:
    if isinstance(rule.attr, tuple):
        values = tuple(_get(payload, path) for path in rule.attr)
        return None if all(v is None for v in values) else values
    value = _get(payload, rule.attr)
    if not rule.required and (value == [] or value == _default(layout.cls, rule.attr)):
        return None
    return value


def encode_body(command_id: int, payload: object) -> bytes:
    """The plaintext body of ``payload`` under the layout of ``command_id`` (6.5)."""
    layout = LAYOUTS.get(command_id)
    if layout is None or not isinstance(payload, layout.cls):
        raise BodyError(f"{type(payload).__name__} does not fit {command_name(command_id)}")
    out = bytearray()
    for name, codec in layout.fixed:
        value = getattr(payload, name)
        out += codec.pack(0 if value is None else value)
    for rule in layout.rules:
        value = _rule_value(layout, rule, payload)
        if value is None:
            if rule.required:
                raise BodyError(f"{command_name(command_id)}: {rule.attr} is required")
            continue
        if rule.repeated:
            out += b"".join(tlv(rule.tag, rule.codec.pack(v)) for v in value)
        elif rule.long:
            out += split_tlv(rule.tag, rule.codec.pack(value))
        else:
            out += tlv(rule.tag, rule.codec.pack(value))
    if layout.items is not None:
        for item in _get(payload, layout.items) or ():
            if not embeddable(layout.cls, item.tag):
                raise BodyError(f"tag 0x{item.tag:04X} cannot be an embedded TLV here")
            out += tlv(item.tag, _BYTES.pack(item.value))
    return bytes(out)


def _put(kwargs: dict[str, Any], path: str, value: Any) -> None:
    *parents, name = path.split(".")
    for part in parents:
        kwargs = kwargs.setdefault(part, {})
    kwargs[name] = value


def _build(cls: type, kwargs: dict[str, Any]) -> Any:
    infos = {info.name: info for info in ops.fields_of(cls)}
    for name, value in list(kwargs.items()):
        if isinstance(value, dict):
            kwargs[name] = _build(infos[name].xs, value)  # type: ignore[arg-type]
    return cls(**kwargs)


def decode_body(command_id: int, body: bytes, *, padded: bool = False) -> Any:
    """The operation dataclass carried by a plaintext body (6.5).

    ``padded`` tolerates the zero padding a ``legacy`` decryption leaves behind.
    Unknown application tags are ignored; other unclaimed tags are embedded TLVs.
    """
    layout = LAYOUTS.get(command_id)
    if layout is None:
        raise BodyError(f"unknown Command_ID 0x{command_id:04X}", ops.ResultCode.UNSUPPORTED)
    kwargs: dict[str, Any] = {}
    pos = 0
    for name, codec in layout.fixed:
        if pos + codec.width > len(body):
            raise BodyError(f"{command_name(command_id)}: truncated fixed part")
        kwargs[name] = codec.unpack(body[pos : pos + codec.width])
        pos += codec.width
    found: dict[int, list[bytes]] = {}
    items: list[ops.TlvItem] = []
    for tag, value in iter_tlvs(body[pos:], padded=padded):
        if tag in layout.claimed:
            found.setdefault(tag, []).append(value)
        elif layout.items is not None and not _is_app_tag(tag):
            items.append(ops.TlvItem(tag=tag, value=value))
    for rule in layout.rules:
        values = found.get(rule.tag)
        if not values:
            if rule.required:
                raise BodyError(f"{command_name(command_id)}: TLV 0x{rule.tag:04X} missing")
            continue
        if rule.repeated:
            value = [rule.codec.unpack(v) for v in values]
        elif rule.long:
            value = rule.codec.unpack(b"".join(values))
        else:
            value = rule.codec.unpack(values[-1])  # the last occurrence wins ([T] 3.1)
        if isinstance(rule.attr, tuple):
            for path, part in zip(rule.attr, value, strict=True):
                _put(kwargs, path, part)
        else:
            _put(kwargs, rule.attr, value)
    if items:
        _put(kwargs, layout.items or "items", items)
    try:
        return _build(layout.cls, kwargs)
    except TypeError as exc:
        raise BodyError(f"{command_name(command_id)}: incomplete body ({exc})") from None


def seal_body(command_id: int, payload: object, cipher: Cipher | None) -> tuple[bytes, int]:
    """The body as sent and its container flag: plaintext, or ``E042`` with ``cipher`` (7.4)."""
    body = encode_body(command_id, payload)
    if cipher is None:
        return body, FLAG_NONE
    return keys.encrypt_lc_body(cipher, body), FLAG_CONTAINER


def sign_frame(
    command_id: int, sequence_id: int, app_id: str, body: bytes, flags: int, *,
    timestamp: int, password: str, version: int = PROTOCOL_VERSION,
) -> bytes:
    """Header ‖ body ‖ digest TLV (5.2): one complete message, a part (6.7) or not."""
    unsigned = build_unsigned(command_id, sequence_id, app_id, body, flags | FLAG_DIGEST, version)
    return lc_sign(unsigned, timestamp, app_id, password)


def encode_message(
    command_id: int, sequence_id: int, app_id: str, payload: object, *,
    timestamp: int, password: str, cipher: Cipher | None = None,
    version: int = PROTOCOL_VERSION,
) -> bytes:
    """A complete signed message; the body goes into an ``E042`` container with ``cipher``."""
    body, flags = seal_body(command_id, payload, cipher)
    return sign_frame(command_id, sequence_id, app_id, body, flags, timestamp=timestamp,
                      password=password, version=version)


def open_body(frame: Frame, cipher: Cipher | None) -> tuple[bytes, bool]:
    """The plaintext body of a frame and whether it was encrypted (7.4)."""
    container = frame.container
    if container is None:
        return frame.body, False
    if container != Tag.ENCRYPTED:
        raise BodyError(f"unsupported container 0x{container:04X}")
    if cipher is None:
        raise BodyError("encrypted body without a session key", ops.ResultCode.SESSION_INVALID)
    try:
        return keys.decrypt_lc_body(cipher, frame.body), True
    except ProtocolError as exc:
        raise BodyError(f"encrypted body: {exc.reason}") from None


def fragment_of(frame: Frame) -> FragmentPart:
    """The ``4008`` value of a part message (6.7, [T] 7.2)."""
    (length,) = _U16.unpack_from(frame.body, 2)  # the tag is 0x4008 (Frame.container)
    if length != len(frame.body) - 4:
        raise BodyError("a part's body must be exactly one 4008 TLV")
    try:
        return FragmentPart.decode(frame.body[4:])
    except ProtocolError as exc:
        raise BodyError(exc.reason) from None


def reassembled(frame: Frame, body: bytes) -> Frame:
    """The completed body as if it had arrived in ``frame`` unfragmented ([T] 7.4).

    It is an ``E042`` container exactly when it starts with that tag: no plaintext body
    can (fixed fields are small result, type and reason codes; ``0xE042`` is no
    application TLV).
    """
    encrypted = body[:2] == Tag.ENCRYPTED.to_bytes(2, "big")
    flags = FLAG_DIGEST | (FLAG_CONTAINER if encrypted else FLAG_NONE)
    return Frame(dataclasses.replace(frame.header, flags=flags), body, frame.raw)


# --- stream framing (6.1, [T] 10.2) -------------------------------------------------------


class Framer:
    """Cuts a TCP byte stream into frames by Total_Length.

    Keeps at most one partial frame (≤ 65,535 bytes). After a framing error the
    stream cannot be resynchronised, so every later call raises again.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._broken = False

    def feed(self, data: bytes) -> list[bytes]:
        if self._broken:
            raise FrameError("stream already failed framing")
        self._buffer += data
        frames: list[bytes] = []
        while len(self._buffer) >= 2:
            (length,) = _U16.unpack_from(self._buffer)
            if length < HEADER_SIZE:
                self._broken = True
                self._buffer.clear()
                raise FrameError(f"Total_Length {length} below {HEADER_SIZE}")
            if len(self._buffer) < length:
                break
            frames.append(bytes(self._buffer[:length]))
            del self._buffer[:length]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buffer)


# --- session events -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppCredentials:
    """What the platform knows of an application, and what the application knows itself."""

    app_id: str
    password: str = field(repr=False)
    base_key: str = field(repr=False)
    profile: str = "legacy"


@dataclass(frozen=True, slots=True)
class LoginRequested:
    """Platform: a digest-verified APP_LOGIN awaits :meth:`PlatformSession.accept_login`."""

    sequence_id: int
    app_id: str
    request: ops.Login


@dataclass(frozen=True, slots=True)
class LoggedIn:
    """The session is open (client: ACK received; platform: ACK sent)."""

    response: ops.LoginResponse


@dataclass(frozen=True, slots=True)
class LoginConfirmed:
    """Platform: the first message after the ACK verified under the session timestamp.

    APP_LOGIN itself proves nothing (its digest has TS 0, 5.2, so its bytes can be
    replayed); a message signed with the fresh session timestamp does (D-256).
    """


@dataclass(frozen=True, slots=True)
class LoginRejected:
    """Client: APP_LOGIN_ACK with a failure result (``trusted``: it carried a valid digest)."""

    result: int
    trusted: bool


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A peer request for the application layer; answer with ``session.answer``."""

    sequence_id: int
    command_id: int
    payload: Any
    encrypted: bool


@dataclass(frozen=True, slots=True)
class AnswerReceived:
    sequence_id: int
    command_id: int
    request: Any
    response: Any


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """An own request got no answer (``timeout``) or the session ended first (``closed``)."""

    sequence_id: int
    command_id: int
    request: Any
    reason: str


@dataclass(frozen=True, slots=True)
class KeyUpdated:
    """The Session Key changed (type 1), on both sides."""

    key_type: int


@dataclass(frozen=True, slots=True)
class BaseKeyAnnounced:
    """Client: APP_KEY_UPDATE type 2; the new Base Key applies from ``effective_time``."""

    base_key: str = field(repr=False)
    effective_time: int | None = None


@dataclass(frozen=True, slots=True)
class LogoutReceived:
    """The peer sent APP_LOGOUT (answered already); it will close the connection."""

    reason: int


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over; write :meth:`data_to_send` then close the transport."""

    reason: str


Event = (
    LoginRequested | LoggedIn | LoginConfirmed | LoginRejected | RequestReceived
    | AnswerReceived | RequestFailed | KeyUpdated | BaseKeyAnnounced | LogoutReceived | Closed
)


class State(Enum):
    AWAIT_LOGIN = "await-login"
    LOGIN_SENT = "login-sent"  # client
    LOGIN_PENDING = "login-pending"  # platform, waiting for accept/reject
    ACTIVE = "active"
    ENDED = "ended"  # logout exchanged, waiting for the close
    CLOSED = "closed"


@dataclass(slots=True)
class _Outstanding:
    command_id: int
    payload: Any
    deadline: float
    sender: FragmentSender | None = None  # a fragmented request (6.7)


@dataclass(slots=True)
class _AnswerParts:
    """An own fragmented answer: the peer asks for each next part ([T] 7.3)."""

    sender: FragmentSender
    last_activity: float


@dataclass(slots=True)
class _Incoming:
    command_id: int
    encrypted: bool
    digest: bytes


_NEVER_ENCRYPTED = frozenset({Command.APP_LOGIN, Command.APP_HEARTBEAT})


def clamp_heartbeat(requested: int | None) -> int:
    """The granted heartbeat C: requested ``0x5001`` clamped to 10–600 s, default 60 (6.6)."""
    if not requested:
        return HEARTBEAT_DEFAULT
    return max(HEARTBEAT_MIN, min(HEARTBEAT_MAX, requested))


# --- session core ------------------------------------------------------------------------


class _Session:
    """What both ends share: framing, digests, encryption, window, timeouts, duplicates."""

    role = "?"
    _own_requests: frozenset[int] = frozenset()
    _peer_requests: frozenset[int] = frozenset()

    def __init__(self, now: float) -> None:
        self.state = State.AWAIT_LOGIN
        self.app_id: str | None = None
        self.credentials: AppCredentials | None = None
        self.timestamp = 0
        self.heartbeat = HEARTBEAT_DEFAULT
        self.cipher: Cipher | None = None
        self.encrypt_requests = False
        #: Seconds an own request waits for its answer (AD-10); an application may wait
        #: longer, e.g. for a GetConfig sync that the platform answers after sync_wait.
        self.answer_timeout = ANSWER_TIMEOUT
        self._framer = Framer()
        self._out = bytearray()
        self._events: list[Event] = []
        self._next_seq = 1
        self._outstanding: dict[int, _Outstanding] = {}
        self._incoming: dict[int, _Incoming] = {}
        self._answers: dict[tuple[int, int], tuple[float, bytes, bytes]] = {}
        self._timeouts_in_a_row = 0
        self.last_sent = self.last_received = self.connected_at = now
        # 6.7: one table for the peer's fragmented requests and answers, so that all
        # of them together hold at most one reassembly's worth of bytes.
        self._trans_ids = TransIdCounter()
        self._reassembly = ReassemblyTable(REASSEMBLY_LIMITS, max_entries=2 * WINDOW,
                                           max_total_bytes=REASSEMBLY_LIMITS.max_bytes)
        self._last_part_at: float | None = None
        self._answer_parts: dict[tuple[int, int], _AnswerParts] = {}

    # public API ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport, in order; each byte is returned once."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes from the transport; returns the events they caused."""
        if self.closed:
            return []
        try:
            frames = self._framer.feed(data)
        except FrameError as exc:
            self._log_discard(None, str(exc))
            self._close("framing error")
            return self._take_events()
        for raw in frames:
            if self.closed:
                break
            self.last_received = now
            try:
                self._on_frame(parse_frame(raw), now)
            except LongConnError as exc:
                self._log_discard(raw, exc.reason)
        return self._take_events()

    def send_request(self, payload: object, now: float) -> int:
        """Queue a request to the peer; returns its Sequence_ID (answer or failure follows)."""
        command_id = command_for(payload)
        if command_id not in self._own_requests:
            raise SessionError(f"{self.role} cannot send {command_name(command_id)}")
        self._check_can_send(command_id)
        return self._send_request(command_id, payload, now)

    def answer(self, sequence_id: int, response: object, now: float) -> None:
        """Answer a :class:`RequestReceived`; encrypted if the request was (7.4)."""
        pending = self._incoming.pop(sequence_id, None)
        if pending is None:
            raise SessionError(f"no unanswered request with Sequence_ID {sequence_id}")
        command_id = command_for(response)
        if command_id != pending.command_id | ACK_BIT:
            self._incoming[sequence_id] = pending
            raise SessionError(f"{type(response).__name__} does not answer "
                               f"{command_name(pending.command_id)}")
        if self.closed:
            return
        raw, sender = self._encode(command_id, sequence_id, response,
                                   encrypt=pending.encrypted and self.cipher is not None)
        if sender is not None:
            self._answer_parts[(pending.command_id, sequence_id)] = _AnswerParts(sender, now)
        self._answers[(pending.command_id, sequence_id)] = (now, pending.digest, raw)
        self._write(raw, now)

    def logout(self, now: float, reason: int = 0) -> int:
        """Send APP_LOGOUT; the session closes when its ACK arrives (6.5.2)."""
        if self.state is not State.ACTIVE:
            raise SessionError("no session to log out of")
        return self._send_request(Command.APP_LOGOUT, ops.Logout(reason=reason), now)

    def connection_lost(self, now: float) -> list[Event]:
        """The transport closed: fail every outstanding request and discard the key."""
        self._close("connection lost")
        return self._take_events()

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work to do (for the adapter's ``callLater``)."""
        if self.closed:
            return None
        times = [p.deadline for p in self._outstanding.values()]
        times.extend(self._timer_deadlines())
        idle = REASSEMBLY_LIMITS.idle_timeout
        times.extend(x.last_activity + idle for x in self._answer_parts.values())
        if len(self._reassembly) and self._last_part_at is not None:
            times.append(self._last_part_at + idle)  # every reassembly is idle by then
        return min(times) if times else None

    def tick(self, now: float) -> list[Event]:
        """Run the timers due at ``now``."""
        if not self.closed:
            for seq, pending in sorted(self._outstanding.items()):
                if pending.deadline <= now and seq in self._outstanding:
                    del self._outstanding[seq]
                    self._timeouts_in_a_row += 1
                    self._on_timeout(seq, pending, now)
            if not self.closed:
                self._on_timers(now)
            self._expire_answers(now)
            self._expire_fragments(now)
        return self._take_events()

    # role hooks ---------------------------------------------------------------------------

    def _timer_deadlines(self) -> list[float]:
        raise NotImplementedError

    def _on_timers(self, now: float) -> None:
        raise NotImplementedError

    def _on_before_login(self, frame: Frame, now: float) -> None:
        raise NotImplementedError

    def _on_verified(self, frame: Frame) -> None:
        """A frame of the session passed its digest check."""

    def _on_answer(self, seq: int, pending: _Outstanding, response: Any, now: float) -> None:
        self._events.append(AnswerReceived(seq, pending.command_id, pending.payload, response))

    def _on_request(self, frame: Frame, payload: Any, encrypted: bool, now: float) -> None:
        self._incoming[frame.header.sequence_id] = _Incoming(
            frame.header.command_id, encrypted, hashlib.sha256(frame.raw).digest()
        )
        self._events.append(
            RequestReceived(frame.header.sequence_id, frame.header.command_id, payload, encrypted)
        )

    def _on_timeout(self, seq: int, pending: _Outstanding, now: float) -> None:
        self._events.append(RequestFailed(seq, pending.command_id, pending.payload, "timeout"))

    def _check_can_send(self, command_id: int) -> None:
        if self.state is not State.ACTIVE:
            raise SessionError(f"cannot send in state {self.state.value}")
        if len(self._outstanding) >= WINDOW:
            raise SessionError("window of outstanding requests is full")

    # internals ----------------------------------------------------------------------------

    def _take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _log_discard(self, raw: bytes | None, reason: str) -> None:
        seq = struct.unpack_from(">I", raw, 4)[0] if raw and len(raw) >= 8 else None
        _log.warn(
            "long connection ({role}) discarded {size} bytes (seq={seq}): {reason}",
            role=self.role, app_id=self.app_id, seq=seq, size=len(raw or b""), reason=reason,
        )

    def _write(self, raw: bytes, now: float) -> None:
        self._out += raw
        self.last_sent = now

    def _digest_ts(self, command_id: int, payload: object) -> int:
        if command_id == Command.APP_LOGIN:
            return 0
        if command_id == Command.APP_LOGIN | ACK_BIT:
            return getattr(payload, "server_time", None) or 0
        return self.timestamp

    def _signer(self) -> tuple[str, AppCredentials]:
        creds = self.credentials
        if creds is None or self.app_id is None:
            raise SessionError("no credentials to sign with")
        return self.app_id, creds

    def _encode(
        self, command_id: int, seq: int, payload: object, *, encrypt: bool
    ) -> tuple[bytes, FragmentSender | None]:
        """The message, or its first part and the sender of the rest (6.7, [T] 6.4.4)."""
        app_id, creds = self._signer()
        body, flags = seal_body(command_id, payload, self.cipher if encrypt else None)
        if len(body) <= FRAGMENT_THRESHOLD:
            raw = sign_frame(command_id, seq, app_id, body, flags, password=creds.password,
                             timestamp=self._digest_ts(command_id, payload))
            return raw, None
        if len(body) > REASSEMBLY_LIMITS.max_bytes:
            raise BodyError(f"{command_name(command_id)} body of {len(body)} bytes exceeds "
                            f"the reassembly bound", ops.ResultCode.TOO_LARGE)
        sender = FragmentSender(body, self._trans_ids.next(), FRAGMENT_THRESHOLD)
        return self._part_frame(command_id, seq, sender.first()), sender

    def _part_frame(self, command_id: int, seq: int, part: FragmentPart) -> bytes:
        """One ``4008`` message: flag ``0x30``, its own digest (6.2, 6.7)."""
        app_id, creds = self._signer()
        return sign_frame(command_id, seq, app_id, part.encode_tlv(), FLAG_CONTAINER,
                          timestamp=self.timestamp, password=creds.password)

    def _send_request(self, command_id: int, payload: object, now: float) -> int:
        seq = self._next_seq
        encrypt = (
            self.encrypt_requests and self.cipher is not None
            and command_id not in _NEVER_ENCRYPTED
        )
        raw, sender = self._encode(command_id, seq, payload, encrypt=encrypt)
        self._next_seq = ops.next_id(seq)
        self._outstanding[seq] = _Outstanding(
            command_id, payload, now + self.answer_timeout, sender
        )
        self._write(raw, now)
        return seq

    def _answer_result(self, frame: Frame, result: int, now: float, *,
                       signed: bool = True) -> None:
        """Answer a request we do not process with a bare result (3, 8, 9, 11, 12)."""
        command_id = frame.header.command_id | ACK_BIT
        layout = LAYOUTS.get(command_id)
        payload = layout.cls(result_code=result) if layout else ops.Response(result_code=result)
        body = encode_body(command_id, payload) if layout else bytes([result])
        flags = FLAG_DIGEST if signed else FLAG_NONE
        raw = build_unsigned(command_id, frame.header.sequence_id, frame.header.app_id, body,
                             flags)
        if signed and self.credentials is not None:
            raw = lc_sign(raw, self._digest_ts(command_id, payload), self.credentials.app_id,
                          self.credentials.password)
        self._write(raw, now)

    def _verified(self, frame: Frame) -> bool:
        creds = self.credentials
        if creds is None or not frame.signed:
            return False
        ts = self.timestamp
        if frame.header.command_id == Command.APP_LOGIN:
            ts = 0
        elif frame.header.command_id == Command.APP_LOGIN | ACK_BIT:
            ts = _U32.unpack(frame.body[1:5]) if len(frame.body) >= 5 else 0
        return lc_verify(frame.raw, ts, creds.app_id, creds.password)

    def _on_frame(self, frame: Frame, now: float) -> None:
        header = frame.header
        if self.state in (State.AWAIT_LOGIN, State.LOGIN_SENT, State.LOGIN_PENDING):
            self._on_before_login(frame, now)
            return
        if header.app_id != self.app_id:
            raise HeaderError(f"AppID {header.app_id!r} on the session of {self.app_id!r}")
        if not self._verified(frame):
            raise HeaderError(f"{command_name(header.command_id)}: digest does not verify")
        self._on_verified(frame)
        if header.is_ack:
            self._on_ack_frame(frame, now)
        else:
            self._on_request_frame(frame, now)

    def _on_ack_frame(self, frame: Frame, now: float) -> None:
        seq = frame.header.sequence_id
        pending = self._outstanding.get(seq)
        if pending is None or frame.header.command_id != pending.command_id | ACK_BIT:
            raise HeaderError(f"answer seq={seq} matches no outstanding request")
        if frame.container == Tag.FRAGMENT:
            self._on_ack_part(frame, pending, now)
        else:
            self._finish_request(frame, pending, now)

    def _finish_request(self, frame: Frame, pending: _Outstanding, now: float) -> None:
        """The (possibly reassembled) answer to an own request."""
        seq = frame.header.sequence_id
        body, encrypted = open_body(frame, self.cipher)
        response = decode_body(frame.header.command_id, body,
                               padded=encrypted and self._legacy)
        del self._outstanding[seq]
        self._timeouts_in_a_row = 0
        self._on_answer(seq, pending, response, now)

    @property
    def _legacy(self) -> bool:
        return self.credentials is not None and self.credentials.profile == "legacy"

    def _replay(self, frame: Frame, now: float) -> bool:
        """Handle a duplicate request (6.6): replay its cached answer, or wait for it."""
        header = frame.header
        fingerprint = hashlib.sha256(frame.raw).digest()
        cached = self._answers.get((header.command_id, header.sequence_id))
        if cached is not None and cached[1] == fingerprint and now - cached[0] <= DUPLICATE_WINDOW:
            self._write(cached[2], now)
            return True
        pending = self._incoming.get(header.sequence_id)
        # A duplicate of a request still being processed is ignored: its answer follows.
        return pending is not None and pending.digest == fingerprint

    def _on_request_frame(self, frame: Frame, now: float) -> None:
        header = frame.header
        if self._replay(frame, now):
            return
        if header.version != PROTOCOL_VERSION:
            self._answer_result(frame, ops.ResultCode.UNSUPPORTED, now)
            return
        if header.command_id not in self._peer_requests:
            self._answer_result(frame, ops.ResultCode.UNSUPPORTED, now)
            return
        if frame.container == Tag.FRAGMENT:
            self._on_request_part(frame, now)
        else:
            self._process_request(frame, now)

    def _process_request(self, frame: Frame, now: float) -> None:
        """A whole (possibly reassembled) peer request: window, decryption, decoding."""
        header = frame.header
        if len(self._incoming) >= WINDOW:
            self._answer_result(frame, ops.ResultCode.RATE_LIMITED, now)
            return
        try:
            body, encrypted = open_body(frame, self.cipher)
            payload = decode_body(header.command_id, body, padded=encrypted and self._legacy)
        except LongConnError as exc:
            self._log_discard(frame.raw, exc.reason)
            self._answer_result(frame, exc.result or ops.ResultCode.BAD_PARAMETER, now)
            return
        self._dispatch(frame, payload, encrypted, now)

    def _dispatch(self, frame: Frame, payload: Any, encrypted: bool, now: float) -> None:
        """Session-level requests are handled here; the rest become events."""
        command_id = frame.header.command_id
        if command_id == Command.APP_HEARTBEAT:
            self._on_request(frame, payload, encrypted, now)
            self._events.pop()
            self.answer(frame.header.sequence_id, ops.HeartbeatResponse(), now)
        elif command_id == Command.APP_LOGOUT:
            self._on_request(frame, payload, encrypted, now)
            self._events.pop()
            self.answer(frame.header.sequence_id, ops.LogoutResponse(), now)
            self._events.append(LogoutReceived(payload.reason))
            self._end_session(now)
        else:
            self._on_request(frame, payload, encrypted, now)

    # fragmentation (6.7, [T] section 7) ----------------------------------------------------

    def _on_ack_part(self, frame: Frame, pending: _Outstanding, now: float) -> None:
        """A ``4008`` answer: the next part wanted of our request, or a part of the answer."""
        seq = frame.header.sequence_id
        part = fragment_of(frame)
        self._timeouts_in_a_row = 0
        pending.deadline = now + self.answer_timeout
        if pending.sender is not None and not pending.sender.done:
            try:
                self._write(self._part_frame(pending.command_id, seq,
                                             pending.sender.on_answer(part)), now)
            except FragmentAbort as exc:
                if exc.reply is not None:
                    self._write(self._part_frame(pending.command_id, seq, exc.reply), now)
                self._fail_request(seq, exc.reason)
            return
        # A fragmented answer: we ask for each part in the request Command_ID, s' = s.
        outcome = self._feed("answer", pending.command_id, seq, part, now)
        if isinstance(outcome, Complete):
            self._finish_request(reassembled(frame, outcome.body), pending, now)
            return
        reply = reply_to(outcome)
        if reply is not None:
            self._write(self._part_frame(pending.command_id, seq, reply), now)
        if isinstance(outcome, Abort | Ended):
            self._fail_request(seq, "the answer's part exchange ended")

    def _on_request_part(self, frame: Frame, now: float) -> None:
        """A ``4008`` request: a part of the peer's request, or a wish for our answer's next."""
        header = frame.header
        ack = header.command_id | ACK_BIT
        try:
            part = fragment_of(frame)
        except BodyError as exc:
            self._log_discard(frame.raw, exc.reason)
            self._answer_result(frame, ops.ResultCode.BAD_PARAMETER, now)
            return
        if part.op in (FragmentOp.NEXT, FragmentOp.RECEIVER_ABORT):
            self._next_answer_part(header.command_id, header.sequence_id, part, now)
            return
        outcome = self._feed("request", header.command_id, header.sequence_id, part, now)
        if isinstance(outcome, Complete):
            self._process_request(reassembled(frame, outcome.body), now)
            return
        reply = reply_to(outcome)
        if reply is not None:
            self._write(self._part_frame(ack, header.sequence_id, reply), now)

    def _next_answer_part(self, command_id: int, seq: int, part: FragmentPart,
                          now: float) -> None:
        key = (command_id, seq)
        exchange = self._answer_parts.get(key)
        if exchange is None:
            raise HeaderError(f"{command_name(command_id)} seq={seq}: no fragmented answer")
        try:
            reply: FragmentPart | None = exchange.sender.on_answer(part)
        except FragmentAbort as exc:
            reply = exc.reply
            del self._answer_parts[key]
        else:
            exchange.last_activity = now
            if exchange.sender.done:
                del self._answer_parts[key]
        if reply is not None:
            self._write(self._part_frame(command_id | ACK_BIT, seq, reply), now)

    def _feed(self, direction: str, command_id: int, seq: int, part: FragmentPart,
              now: float) -> ReassemblyEvent:
        """Reassembly keyed by (AppID, Command_ID, direction and Sequence_ID)."""
        self._reassembly.expire(now)
        self._last_part_at = now
        table = self._reassembly
        outcome = table.feed((self.app_id or "", command_id, (direction, seq)), part, now)
        if isinstance(outcome, Abort):
            _log.debug("application {app_id}: aborted the reassembly {trans_id} of the {what} "
                       "{command} seq={seq}", app_id=self.app_id, trans_id=part.trans_id,
                       what=direction, command=command_name(command_id), seq=seq)
        for _, dropped_command, exchange in table.dropped:
            _log.info("application {app_id}: reassembly bound reached, dropped the one of "
                      "{command} {exchange}", app_id=self.app_id,
                      command=command_name(dropped_command), exchange=exchange)
        return outcome

    def _expire_fragments(self, now: float) -> None:
        self._reassembly.expire(now)
        idle = REASSEMBLY_LIMITS.idle_timeout
        for key in [k for k, x in self._answer_parts.items() if now - x.last_activity >= idle]:
            del self._answer_parts[key]

    @property
    def fragmenting(self) -> bool:
        """A part exchange is open in either direction (no Session Key switch now, 7.5)."""
        return bool(
            self._reassembly.held_bytes or self._answer_parts  # completed ones hold none
            or any(p.sender is not None and not p.sender.done
                   for p in self._outstanding.values())
        )

    def _fail_request(self, seq: int, reason: str) -> None:
        pending = self._outstanding.pop(seq)
        self._events.append(RequestFailed(seq, pending.command_id, pending.payload, reason))

    def _end_session(self, now: float) -> None:
        """Logout exchanged: discard the key, fail what is outstanding, await the close."""
        self.state = State.ENDED
        self.cipher = None
        self._fail_outstanding("closed")

    def _fail_outstanding(self, reason: str) -> None:
        for seq, pending in sorted(self._outstanding.items()):
            self._events.append(RequestFailed(seq, pending.command_id, pending.payload, reason))
        self._outstanding.clear()

    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self._fail_outstanding("closed")
        self.state = State.CLOSED
        self.cipher = None
        self._incoming.clear()
        self._answer_parts.clear()
        self._events.append(Closed(reason))

    def _expire_answers(self, now: float) -> None:
        for key in [k for k, v in self._answers.items() if now - v[0] > DUPLICATE_WINDOW]:
            del self._answers[key]


# --- platform side -------------------------------------------------------------------------

_PLATFORM_REQUESTS = frozenset({
    Command.APP_LOGOUT, Command.APP_DELIVER_DATA, Command.APP_RESULT_NOTIFY,
    Command.APP_ALARM_NOTIFY, Command.APP_STATE_NOTIFY, Command.APP_CONFIG_TRAP_NOTIFY,
    Command.APP_KEY_UPDATE,
})
_APP_REQUESTS = frozenset(Command) - {
    Command.APP_DELIVER_DATA, Command.APP_RESULT_NOTIFY, Command.APP_ALARM_NOTIFY,
    Command.APP_STATE_NOTIFY, Command.APP_CONFIG_TRAP_NOTIFY, Command.APP_KEY_UPDATE,
}


class PlatformSession(_Session):
    """The platform end of one application connection (6.6, 7.5).

    ``lookup`` maps an AppID to its credentials (``None`` if unknown); it must not
    block. Policy (disabled apps, session limits, the session timestamp) stays with
    the caller: answer :class:`LoginRequested` with :meth:`accept_login` or
    :meth:`reject_login`.
    """

    role = "platform"
    _own_requests = _PLATFORM_REQUESTS
    _peer_requests = _APP_REQUESTS

    def __init__(
        self, lookup: Callable[[str], AppCredentials | None], now: float,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        super().__init__(now)
        self._lookup = lookup
        self._random = random
        self._login: LoginRequested | None = None
        self._login_frame: Frame | None = None
        self._ttl_end: float | None = None
        self._session_ttl = SESSION_TTL
        self._refresh_at: float | None = None
        self._key_update: tuple[int, bytes | None] | None = None  # (seq, new session key)
        #: Whether the application proved, after the ACK, that it holds the password
        #: (:class:`LoginConfirmed`); until then nothing but APP_LOGOUT is sent (D-256).
        self.confirmed = False
        self._confirm_by: float | None = None

    @property
    def encrypt_notifications(self) -> bool:
        return self.encrypt_requests

    # login --------------------------------------------------------------------------------

    def _on_before_login(self, frame: Frame, now: float) -> None:
        header = frame.header
        if self.state is State.LOGIN_PENDING or header.is_ack:
            raise HeaderError(f"{command_name(header.command_id)} while not logged in")
        if not ops.is_valid_app_id(header.app_id):
            self._log_discard(frame.raw, f"invalid AppID {header.app_id!r}")
            self._close("invalid AppID")
            return
        creds = self._lookup(header.app_id)
        if header.command_id != Command.APP_LOGIN:
            # 6.6: answer 3 (signed with TS 0 when the AppID is known), then close.
            self.credentials, self.app_id = creds, header.app_id
            self._answer_result(frame, ops.ResultCode.SESSION_INVALID, now,
                                signed=creds is not None)
            self._close("request before login")
            return
        self.app_id = header.app_id
        if header.version != PROTOCOL_VERSION:
            failure: int | None = ops.ResultCode.UNSUPPORTED
        elif creds is None:
            failure = ops.ResultCode.APP_UNKNOWN
        else:
            self.credentials = creds
            failure = None if self._verified(frame) else ops.ResultCode.AUTH_FAILED
        if failure is not None:
            self._answer_result(frame, failure, now, signed=False)
            self._close("login failed")
            return
        try:
            request = decode_body(Command.APP_LOGIN, frame.body)
        except LongConnError:
            self._answer_result(frame, ops.ResultCode.BAD_PARAMETER, now)
            self._close("login failed")
            return
        self.state = State.LOGIN_PENDING
        self._login_frame = frame
        self._login = LoginRequested(header.sequence_id, header.app_id, request)
        self._events.append(self._login)

    def accept_login(
        self, now: float, *, timestamp: int, session_ttl: int = SESSION_TTL,
        session_key: bytes | None = None, base_key: str | None = None,
    ) -> ops.LoginResponse:
        """Open the session: send APP_LOGIN_ACK 0 with a fresh wrapped Session Key.

        ``timestamp`` must exceed the application's previous session timestamp (6.5.1);
        ``base_key`` overrides the looked-up one (e.g. after a scheduled rotation), for
        the key blobs of later updates too. The Session Key is replaced before
        ``session_ttl`` is up (:data:`KEY_REFRESH_AT`).
        """
        login, creds = self._pending_login()
        if base_key is not None:
            # The key the application logged in under: 7.5 wraps updates in it too.
            creds = self.credentials = dataclasses.replace(creds, base_key=base_key)
        key = session_key if session_key is not None else keys.generate_session_key(self._random)
        response = ops.LoginResponse(
            result_code=ops.ResultCode.OK,
            server_time=timestamp,
            session_key=keys.wrap_session_key(creds.profile, creds.base_key, key, self._random),
            heartbeat_interval=clamp_heartbeat(login.request.heartbeat_interval),
            session_ttl=session_ttl,
        )
        self.timestamp = timestamp
        self.heartbeat = response.heartbeat_interval or HEARTBEAT_DEFAULT
        self.encrypt_requests = login.request.encrypt_notifications
        raw, _ = self._encode(Command.APP_LOGIN | ACK_BIT, login.sequence_id, response,
                              encrypt=False)  # a few dozen bytes: never fragmented
        assert self._login_frame is not None
        self._answers[(Command.APP_LOGIN, login.sequence_id)] = (
            now, hashlib.sha256(self._login_frame.raw).digest(), raw
        )
        self._write(raw, now)
        self.cipher = keys.session_cipher(creds.profile, key, self._random)
        self.state = State.ACTIVE
        self._session_ttl = session_ttl
        self._key_issued(now)
        # A conforming application speaks within one heartbeat interval (6.6).
        self._confirm_by = now + self.heartbeat + ANSWER_TIMEOUT
        self.last_received = now
        _log.info("application {app_id} logged in (timestamp {timestamp})",
                  app_id=self.app_id, timestamp=timestamp)
        return response

    def reject_login(self, result: int, now: float) -> None:
        """Answer the pending APP_LOGIN with a failure (signed, TS 0) and close."""
        if result == ops.ResultCode.OK:
            raise SessionError("use accept_login to accept")
        self._pending_login()
        assert self._login_frame is not None
        self._answer_result(self._login_frame, result, now)
        self._close("login rejected")

    def _pending_login(self) -> tuple[LoginRequested, AppCredentials]:
        if self.state is not State.LOGIN_PENDING or self._login is None:
            raise SessionError("no APP_LOGIN is waiting for a decision")
        assert self.credentials is not None
        return self._login, self.credentials

    # requests -----------------------------------------------------------------------------

    def _on_request_frame(self, frame: Frame, now: float) -> None:
        if frame.header.command_id == Command.APP_LOGIN:
            # A retransmitted APP_LOGIN gets its cached ACK; a new one on a live session
            # is refused with 11 and the session stays (profile decision).
            if not self._replay(frame, now):
                self._answer_result(frame, ops.ResultCode.DUPLICATE, now)
            return
        super()._on_request_frame(frame, now)

    def _on_verified(self, frame: Frame) -> None:
        # A retransmitted APP_LOGIN verifies with TS 0 too: it proves nothing.
        if not self.confirmed and frame.header.command_id != Command.APP_LOGIN:
            self.confirmed = True
            self._confirm_by = None
            self._events.append(LoginConfirmed())

    def _check_can_send(self, command_id: int) -> None:
        super()._check_can_send(command_id)
        if not self.confirmed and command_id != Command.APP_LOGOUT:
            raise SessionError("the login is not confirmed yet")
        if self._key_update is not None:
            raise SessionError("a key update is outstanding (AD-12)")

    @property
    def key_update_outstanding(self) -> bool:
        """APP_KEY_UPDATE awaits its ACK: no other request may be sent (AD-12)."""
        return self._key_update is not None

    def _key_issued(self, now: float) -> None:
        """A Session Key came into use: it lives ``session_ttl`` (7.3), and is replaced
        before that (7.3 step 4) if the session is to go on."""
        self._ttl_end = now + self._session_ttl
        self._refresh_at = now + KEY_REFRESH_AT * self._session_ttl

    def update_session_key(self, now: float, session_key: bytes | None = None) -> int:
        """APP_KEY_UPDATE type 1: the new key takes effect at its ACK (7.5), for a new
        ``session_ttl``.

        Refused while a part exchange is open: its parts were (or are being) encrypted
        under the old key, and would be decrypted under the new one.
        """
        creds = self._require_active()
        if self.fragmenting:
            raise SessionError("a part exchange is open; update the key later")
        key = session_key if session_key is not None else keys.generate_session_key(self._random)
        blob = keys.wrap_session_key(creds.profile, creds.base_key, key, self._random)
        return self._send_key_update(ops.KeyUpdate(key_type=1, key_blob=blob), key, now)

    def announce_base_key(self, now: float, new_base_key: str, effective_time: int) -> int:
        """APP_KEY_UPDATE type 2: the next Base Key, under the current one (7.2)."""
        creds = self._require_active()
        blob = keys.wrap_base_key(creds.profile, creds.base_key, new_base_key, self._random)
        update = ops.KeyUpdate(key_type=2, key_blob=blob, effective_time=effective_time)
        return self._send_key_update(update, None, now)

    def _require_active(self) -> AppCredentials:
        if self.state is not State.ACTIVE or self.credentials is None:
            raise SessionError("no active session")
        return self.credentials

    def _send_key_update(self, update: ops.KeyUpdate, key: bytes | None, now: float) -> int:
        self._check_can_send(Command.APP_KEY_UPDATE)
        seq = self._send_request(Command.APP_KEY_UPDATE, update, now)
        self._key_update = (seq, key)
        return seq

    def _on_answer(self, seq: int, pending: _Outstanding, response: Any, now: float) -> None:
        if pending.command_id == Command.APP_LOGOUT:
            self._close("logout")
            return
        if self._key_update is not None and self._key_update[0] == seq:
            key = self._key_update[1]
            self._key_update = None
            if response.result_code != ops.ResultCode.OK:
                self._logout_and_close(6, "key update refused", now)
                return
            if key is not None and self.credentials is not None:
                self.cipher = keys.session_cipher(self.credentials.profile, key, self._random)
                self._key_issued(now)
            self._events.append(KeyUpdated(pending.payload.key_type))
            return
        super()._on_answer(seq, pending, response, now)

    def _on_timeout(self, seq: int, pending: _Outstanding, now: float) -> None:
        if pending.command_id == Command.APP_LOGOUT:
            self._close("logout not answered")
        elif self._key_update is not None and self._key_update[0] == seq:
            self._key_update = None
            self._logout_and_close(6, "key update not answered", now)
        else:
            super()._on_timeout(seq, pending, now)

    def _logout_and_close(self, reason: int, why: str, now: float) -> None:
        """Send APP_LOGOUT once (no answer awaited) and close (6.6, 7.5)."""
        seq = self._next_seq
        self._next_seq = ops.next_id(seq)
        encrypt = self.encrypt_requests and self.cipher is not None
        raw, _ = self._encode(Command.APP_LOGOUT, seq, ops.Logout(reason=reason),
                              encrypt=encrypt)  # one byte of body: never fragmented
        self._write(raw, now)
        self._close(why)

    # timers -------------------------------------------------------------------------------

    def _timer_deadlines(self) -> list[float]:
        if self.state in (State.AWAIT_LOGIN, State.LOGIN_PENDING):
            return [self.connected_at + LOGIN_TIMEOUT]
        times = [self.last_received + 3 * self.heartbeat]
        if self._ttl_end is not None and self.state is State.ACTIVE:
            times.append(self._ttl_end)
        if self._refresh_at is not None and self.state is State.ACTIVE:
            times.append(self._refresh_at)
        if self._confirm_by is not None:
            times.append(self._confirm_by)
        return times

    def _on_timers(self, now: float) -> None:
        if self.state in (State.AWAIT_LOGIN, State.LOGIN_PENDING):
            if now >= self.connected_at + LOGIN_TIMEOUT:
                self._close("no login")
        elif self._confirm_by is not None and now >= self._confirm_by:
            _log.warn("application {app_id}: nothing signed followed its APP_LOGIN; closed "
                      "(a replayed login?)", app_id=self.app_id)
            self._close("login not confirmed")
        elif now >= self.last_received + 3 * self.heartbeat:
            if self.state is State.ACTIVE:
                self._logout_and_close(2, "heartbeat lost", now)
            else:
                self._close("heartbeat lost")
        elif self._ttl_end is not None and now >= self._ttl_end and self.state is State.ACTIVE:
            self._ttl_end = None
            self._key_update = None
            self._send_request(Command.APP_LOGOUT, ops.Logout(reason=5), now)
            self.state = State.ENDED  # the ACK (or its timeout) closes the connection
        elif (self._refresh_at is not None and now >= self._refresh_at
              and self.state is State.ACTIVE):
            self._refresh_key(now)

    def _refresh_key(self, now: float) -> None:
        """Replace the Session Key before its ``session_ttl`` is up (7.3 step 4, D-343);
        a session that cannot send the update yet tries again shortly, and one that
        never could still ends at its TTL with APP_LOGOUT reason 5."""
        try:
            self.update_session_key(now)
        except SessionError as exc:
            self._refresh_at = now + KEY_REFRESH_RETRY
            _log.debug("application {app_id}: Session Key refresh waits: {why}",
                       app_id=self.app_id, why=exc.reason)
            return
        self._refresh_at = None
        _log.info("application {app_id}: Session Key refresh sent", app_id=self.app_id)


# --- application side ----------------------------------------------------------------------


class ClientSession(_Session):
    """The application end: logs in, keeps the link alive, follows key updates."""

    role = "application"
    _own_requests = _APP_REQUESTS
    _peer_requests = _PLATFORM_REQUESTS

    def __init__(
        self, credentials: AppCredentials, now: float, *, encrypt_requests: bool = False
    ) -> None:
        super().__init__(now)
        self.credentials = credentials
        self.app_id = credentials.app_id
        self.encrypt_requests = encrypt_requests
        self._login_seq: int | None = None
        self.session_key: bytes | None = None

    def login(
        self, now: float, *, login_type: int = 0, heartbeat_interval: int | None = 60,
        encrypt_notifications: bool = False,
    ) -> int:
        """Send APP_LOGIN (TS 0, 5.2); :class:`LoggedIn` or :class:`LoginRejected` follows."""
        if self.state is not State.AWAIT_LOGIN:
            raise SessionError("login is only possible on a fresh connection")
        request = ops.Login(login_type=login_type, heartbeat_interval=heartbeat_interval,
                            encrypt_notifications=encrypt_notifications)
        seq = self._send_request(Command.APP_LOGIN, request, now)
        self._login_seq = seq
        self.state = State.LOGIN_SENT
        return seq

    def _on_before_login(self, frame: Frame, now: float) -> None:
        header = frame.header
        if (self.state is not State.LOGIN_SENT or header.sequence_id != self._login_seq
                or header.command_id != Command.APP_LOGIN | ACK_BIT):
            raise HeaderError(f"{command_name(header.command_id)} before the login answer")
        response = decode_body(header.command_id, frame.body)
        trusted = self._verified(frame)
        del self._outstanding[header.sequence_id]
        if response.result_code != ops.ResultCode.OK or not trusted:
            self._events.append(LoginRejected(response.result_code, trusted))
            self._close("login rejected")
            return
        creds = self.credentials
        assert creds is not None
        try:
            key = keys.unwrap_session_key(creds.profile, creds.base_key,
                                          response.session_key or b"")
        except ProtocolError:
            self._events.append(LoginRejected(ops.ResultCode.AUTH_FAILED, True))
            self._close("session key does not decrypt")
            return
        self.session_key = key
        self.cipher = keys.session_cipher(creds.profile, key)
        self.timestamp = response.server_time or 0
        self.heartbeat = clamp_heartbeat(response.heartbeat_interval)
        self.state = State.ACTIVE
        # Signed with the new session timestamp, it confirms the login at once (D-258).
        self._send_request(Command.APP_HEARTBEAT, ops.Heartbeat(), now)
        self._events.append(LoggedIn(response))

    def _dispatch(self, frame: Frame, payload: Any, encrypted: bool, now: float) -> None:
        if frame.header.command_id == Command.APP_KEY_UPDATE:
            self._on_request(frame, payload, encrypted, now)
            self._events.pop()
            self._key_update(frame.header.sequence_id, payload, now)
        else:
            super()._dispatch(frame, payload, encrypted, now)

    def _key_update(self, seq: int, update: ops.KeyUpdate, now: float) -> None:
        """7.5: answer under the old key, then switch (type 1) or report (type 2)."""
        creds = self.credentials
        assert creds is not None
        try:
            if update.key_type == 1:
                new_key = keys.unwrap_session_key(creds.profile, creds.base_key, update.key_blob)
                event: Event = KeyUpdated(1)
            elif update.key_type == 2:
                base = keys.unwrap_base_key(creds.profile, creds.base_key, update.key_blob)
                event = BaseKeyAnnounced(base, update.effective_time)
            else:
                raise BodyError(f"unknown key type {update.key_type}")
        except ProtocolError as exc:
            self._log_discard(None, f"key update refused: {exc.reason}")
            self.answer(seq, ops.KeyUpdateResponse(result_code=ops.ResultCode.BAD_PARAMETER), now)
            return
        self.answer(seq, ops.KeyUpdateResponse(), now)
        if update.key_type == 1:
            self.session_key = new_key
            self.cipher = keys.session_cipher(creds.profile, new_key)
        self._events.append(event)

    def _on_answer(self, seq: int, pending: _Outstanding, response: Any, now: float) -> None:
        if pending.command_id == Command.APP_LOGOUT:
            self._close("logout")
        elif pending.command_id != Command.APP_HEARTBEAT:
            super()._on_answer(seq, pending, response, now)

    def _on_timeout(self, seq: int, pending: _Outstanding, now: float) -> None:
        if pending.command_id == Command.APP_LOGIN:
            self._events.append(LoginRejected(ops.ResultCode.TERMINAL_TIMEOUT, False))
            self._close("login not answered")
        elif pending.command_id == Command.APP_LOGOUT:
            self._close("logout not answered")
        elif pending.command_id != Command.APP_HEARTBEAT:
            super()._on_timeout(seq, pending, now)

    def _timer_deadlines(self) -> list[float]:
        if self.state is State.ACTIVE:
            return [self.last_sent + self.heartbeat]
        return []

    def _on_timers(self, now: float) -> None:
        if self._timeouts_in_a_row >= MAX_TIMEOUTS_IN_A_ROW:
            self._close("three answer timeouts")
        elif (self.state is State.ACTIVE and now >= self.last_sent + self.heartbeat
              and len(self._outstanding) < WINDOW):
            self._send_request(Command.APP_HEARTBEAT, ops.Heartbeat(), now)

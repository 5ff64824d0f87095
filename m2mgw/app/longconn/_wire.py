"""The wire of the application binding: tables, header and frame, TLVs (6.2-6.4).

The header is the terminal protocol's 28 bytes with an AppID for the serial (AD-05),
so its sizes and flag bits come from :mod:`m2mgw.protocol.constants`, a stream is cut
into frames by :class:`m2mgw.protocol.framing.StreamFramer`, and the TLV parser and
the containers (``E042``, ``4008``; 7.4, 6.7) are the terminal protocol's too.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from enum import IntEnum

from m2mgw.app import keys
from m2mgw.app import operations as ops
from m2mgw.app.digest import DIGEST_TAG, DIGEST_TLV_HEAD, lc_sign
from m2mgw.protocol import errors, tags
from m2mgw.protocol.codec import TAG_ENCRYPTED
from m2mgw.protocol.constants import ACK_BIT, DIGEST_TLV_SIZE, HEADER_SIZE, MAX_LENGTH, Flag
from m2mgw.protocol.errors import ProtocolError
from m2mgw.protocol.fragment import FRAGMENT_TAG, FragmentPart
from m2mgw.protocol.security import Cipher
from m2mgw.protocol.tlv import Tlv, decode_tlvs

#: The application protocol's Version field (AD-05).
PROTOCOL_VERSION = 0x0100
#: Flag bits as plain ints: IntFlag arithmetic costs ~1 µs per operation.
DIGEST_FLAG = int(Flag.DIGEST)
CONTAINER_FLAG = int(Flag.CONTAINER)

_U16 = struct.Struct(">H")


# --- exceptions -------------------------------------------------------------------------


class LongConnError(ProtocolError):
    """Base of the long connection's exception family."""


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
    """TLV tags used by the application binding (6.4): the terminal tags it carries
    (by their names in :mod:`m2mgw.protocol.tags` where the code there has them) and
    its own ``0x50xx`` family."""

    HEARTBEAT_INTERVAL = tags.HEARTBEAT
    URL = 0x1001
    TERMINAL_SERIAL = tags.TERMINAL_SERIAL
    IMSI = tags.IMSI
    SOFTWARE_VERSION = tags.FIRMWARE_VERSION
    RESTORE_CODE = tags.ALARM_RESTORE
    REMOTE_CONTROL = 0x4001
    CONNECT_MODE = tags.CONNECT_MODE
    USER_DATA = 0x4007
    FRAGMENT = FRAGMENT_TAG
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
    DIGEST = DIGEST_TAG
    ENCRYPTED = TAG_ENCRYPTED


def is_app_tag(tag: int) -> bool:
    """The application family and its reserved range never count as embedded TLVs."""
    return tag in tags.APP_RESERVED_RANGE


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
        return bool(self.header.flags & DIGEST_FLAG)

    @property
    def container(self) -> int | None:
        """``0xE042`` or ``0x4008`` when flag ``0x10`` marks a container body."""
        if not self.header.flags & CONTAINER_FLAG or len(self.body) < 4:
            return None
        return _TLV_HEAD.unpack_from(self.body)[0]


def parse_frame(raw: bytes) -> Frame:
    """Split and check one complete frame (the receiver checks of [T] 2.2 steps 1 and 4)."""
    raw = bytes(raw)
    header = Header.unpack(raw)
    if header.total_length != len(raw):
        raise HeaderError(f"Total_Length {header.total_length} != frame size {len(raw)}")
    end = len(raw)
    if header.flags & DIGEST_FLAG:
        end -= DIGEST_TLV_SIZE
        if end < HEADER_SIZE or raw[end : end + 4] != DIGEST_TLV_HEAD:
            raise HeaderError("flag 0x20 set but no trailing digest TLV")
    return Frame(header, raw[HEADER_SIZE:end], raw)


def build_unsigned(
    command_id: int, sequence_id: int, app_id: str, body: bytes, flags: int,
    version: int = PROTOCOL_VERSION,
) -> bytes:
    """Header ‖ body with Total_Length set for the frame as it will be sent."""
    total = HEADER_SIZE + len(body) + (DIGEST_TLV_SIZE if flags & DIGEST_FLAG else 0)
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


def iter_tlvs(data: bytes, *, padded: bool = False) -> list[Tlv]:
    """Parse a TLV stream; ``padded`` accepts up to 7 trailing 0x00 (``legacy`` 6.4.1).

    The terminal protocol's parser, with its errors raised as this binding's.
    """
    try:
        return decode_tlvs(data, padded=padded)
    except errors.BodyError as exc:
        raise BodyError(exc.reason) from None


# --- signed messages and containers (5.2, 7.4, 6.7) ----------------------------------------


def sign_frame(
    command_id: int, sequence_id: int, app_id: str, body: bytes, flags: int, *,
    timestamp: int, password: str, version: int = PROTOCOL_VERSION,
) -> bytes:
    """Header ‖ body ‖ digest TLV (5.2): one complete message, a part (6.7) or not."""
    unsigned = build_unsigned(command_id, sequence_id, app_id, body, flags | DIGEST_FLAG, version)
    return lc_sign(unsigned, timestamp, app_id, password)


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
    flags = DIGEST_FLAG | (CONTAINER_FLAG if encrypted else 0)
    return Frame(dataclasses.replace(frame.header, flags=flags), body, frame.raw)

"""Typed messages: every command and answer of spec section 4, both directions.

Each class knows its body layout (the fixed part, then TLVs); headers, digests,
encryption and fragments are the codec's business (:mod:`m2mgw.protocol.codec`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

from m2mgw.protocol.checksum import crc16
from m2mgw.protocol.constants import ACK_BIT, Command
from m2mgw.protocol.errors import BodyError
from m2mgw.protocol.tlv import Tlv, decode_tlvs, encode_tlvs, find

_EMPTY = struct.Struct(">")
# Per message class, the dataclass field names but ``tlvs`` (``dataclasses.fields`` is slow).
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}

# TLV tags the message helpers read.
TAG_USER_DATA = 0x4007
TAG_DEST_SERIAL = 0x4012
TAG_SRC_SERIAL = 0x4013
TAG_DEST_EC = 0x4014
TAG_SRC_EC = 0x4015
TAG_CMD_FIXED = 0x4016
TAG_REMOTE_CODE = 0x4001
TAG_URL = 0x1001
TAG_SESSION_KEY_BOX = 0xE040


def _only_padding(data: bytes, pos: int) -> bool:
    """Trailing bytes after the last element that a ``legacy`` decryption left (6.4.1)."""
    return len(data) - pos < 8 and not any(data[pos:])


@dataclass(slots=True)
class Message:
    """Base: a fixed part described by ``FIXED``/``FIXED_FIELDS``, then TLVs.

    ``TEXT_FIELDS`` maps fixed ``s`` fields carried as NUL-padded text to their width.
    """

    COMMAND: ClassVar[int]
    FIXED: ClassVar[struct.Struct] = _EMPTY
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ()
    TEXT_FIELDS: ClassVar[dict[str, int]] = {}
    HAS_TLVS: ClassVar[bool] = True
    # Derived from TEXT_FIELDS once per class: positions of the text fields in FIXED.
    _TEXT_AT: ClassVar[tuple[int, ...]] = ()

    tlvs: list[Tlv] = field(default_factory=list, kw_only=True)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super(Message, cls).__init_subclass__(**kwargs)  # no zero-arg super: slots dataclass
        cls._TEXT_AT = tuple(i for i, n in enumerate(cls.FIXED_FIELDS) if n in cls.TEXT_FIELDS)

    @property
    def name(self) -> str:
        return MESSAGE_NAMES[self.COMMAND]

    def encode_body(self) -> bytes:
        values = [getattr(self, name) for name in self.FIXED_FIELDS]
        for i in self._TEXT_AT:
            name = self.FIXED_FIELDS[i]
            values[i] = _text_field(name, values[i], self.TEXT_FIELDS[name])
        try:
            fixed = self.FIXED.pack(*values)
        except struct.error as exc:
            raise BodyError(f"{self.name}: bad fixed field: {exc}") from None
        if not self.tlvs:
            return fixed
        if not self.HAS_TLVS:
            raise BodyError(f"{self.name} carries no TLVs")
        return fixed + encode_tlvs(self.tlvs)

    @classmethod
    def decode_body(cls, body: bytes, *, padded: bool = False) -> Self:
        fixed = cls.FIXED
        size = fixed.size
        end = len(body)
        if not end and not size:  # HEART_BEAT, LOGOUT_ACK...: the hot empty case
            return cls()
        if end < size:
            raise BodyError(f"{MESSAGE_NAMES[cls.COMMAND]}: body of {end} bytes, need {size}")
        values: Any = fixed.unpack_from(body) if size else ()
        if cls._TEXT_AT:
            values = list(values)
            for i in cls._TEXT_AT:
                values[i] = values[i].rstrip(b"\x00 ").decode("latin-1")
        if end == size:
            tlvs: list[Tlv] = []
        elif cls.HAS_TLVS:
            tlvs = decode_tlvs(body, size, padded=padded)
        elif padded and _only_padding(body, size):
            tlvs = []
        else:
            raise BodyError(f"{MESSAGE_NAMES[cls.COMMAND]}: {end - size} extra bytes")
        return cls(*values, tlvs=tlvs)

    def fields_dict(self) -> dict[str, Any]:
        """The fixed fields by name (for tools and logs: the engine logs every message)."""
        names = _FIELD_NAMES.get(type(self))
        if names is None:
            names = tuple(f.name for f in fields(self) if f.name != "tlvs")
            _FIELD_NAMES[type(self)] = names
        return {name: getattr(self, name) for name in names}


def _latin1(name: str, value: str) -> bytes:
    """Text fields are single-byte on the wire; other characters are a caller error."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise BodyError(f"{name}: {value!r} is not single-byte text") from None


def _u8(name: str, value: int) -> bytes:
    if not isinstance(value, int) or not 0 <= value <= 0xFF:
        raise BodyError(f"{name}: {value!r} is not a u8")
    return bytes((value,))


def _text_field(name: str, value: str | bytes, size: int) -> bytes:
    raw = _latin1(name, value) if isinstance(value, str) else bytes(value)
    if len(raw) > size:
        raise BodyError(f"{name}: {len(raw)} bytes do not fit {size}")
    return raw


@dataclass(slots=True)
class Register(Message):
    """REGISTER (4.3): op ‖ IMEI (15 digits + NUL) ‖ IMSI (15 digits) ‖ TLVs."""

    COMMAND: ClassVar[int] = Command.REGISTER
    FIXED: ClassVar[struct.Struct] = struct.Struct(">B16s15s")
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ("op", "imei", "imsi")
    TEXT_FIELDS: ClassVar[dict[str, int]] = {"imei": 16, "imsi": 15}

    op: int
    imei: str
    imsi: str


@dataclass(slots=True)
class RegisterAck(Message):
    """REGISTER_ACK (4.3): result ‖ serial, the serial only for results 0, 1 and 6."""

    COMMAND: ClassVar[int] = Command.REGISTER | ACK_BIT
    SERIAL_RESULTS: ClassVar[frozenset[int]] = frozenset({0, 1, 6})

    result: int
    serial: str | None = None

    def encode_body(self) -> bytes:
        result = _u8("REGISTER_ACK result", self.result)
        if self.serial is None:
            return result
        raw = _latin1("REGISTER_ACK serial", self.serial)
        if len(raw) != 16:
            raise BodyError(f"REGISTER_ACK serial {self.serial!r} is not 16 characters")
        return result + raw

    @classmethod
    def decode_body(cls, body: bytes, *, padded: bool = False) -> Self:
        if not body:
            raise BodyError("REGISTER_ACK: empty body")
        if len(body) >= 17 and not (padded and not any(body[1:])):
            serial = body[1:17].decode("latin-1")
            rest = 17
        else:
            serial, rest = None, 1
        if len(body) > rest and not (padded and _only_padding(body, rest)):
            raise BodyError(f"REGISTER_ACK: {len(body) - rest} extra bytes")
        return cls(body[0], serial)


@dataclass(slots=True)
class Login(Message):
    """LOGIN (4.4): software version (8, NUL padded) ‖ sync CRC32 ‖ TLVs."""

    COMMAND: ClassVar[int] = Command.LOGIN
    FIXED: ClassVar[struct.Struct] = struct.Struct(">8sI")
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ("software_version", "sync_crc")
    TEXT_FIELDS: ClassVar[dict[str, int]] = {"software_version": 8}

    software_version: str
    sync_crc: int


@dataclass(slots=True)
class LoginAck(Message):
    """LOGIN_ACK (4.4): result ‖ timestamp ‖ optional E040."""

    COMMAND: ClassVar[int] = Command.LOGIN | ACK_BIT
    FIXED: ClassVar[struct.Struct] = struct.Struct(">BI")
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ("result", "timestamp")

    result: int
    timestamp: int

    @property
    def session_key_box(self) -> bytes | None:
        return find(self.tlvs, TAG_SESSION_KEY_BOX)


@dataclass(slots=True)
class Logout(Message):
    """LOGOUT (4.5), either direction: reason."""

    COMMAND: ClassVar[int] = Command.LOGOUT
    FIXED: ClassVar[struct.Struct] = struct.Struct(">B")
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ("reason",)
    HAS_TLVS: ClassVar[bool] = False

    reason: int


@dataclass(slots=True)
class LogoutAck(Message):
    """LOGOUT_ACK (4.5): empty."""

    COMMAND: ClassVar[int] = Command.LOGOUT | ACK_BIT


@dataclass(slots=True)
class HeartBeat(Message):
    """HEART_BEAT (4.6): empty, or status and vendor TLVs."""

    COMMAND: ClassVar[int] = Command.HEART_BEAT


@dataclass(slots=True)
class HeartBeatAck(Message):
    COMMAND: ClassVar[int] = Command.HEART_BEAT | ACK_BIT


class _Transparent:
    """Accessors shared by TRANSPARENT_DATA and TRANSPARENT_CMD (4.7, 4.16)."""

    tlvs: list[Tlv]

    @property
    def user_data(self) -> bytes:
        return find(self.tlvs, TAG_USER_DATA) or b""

    @property
    def destination(self) -> tuple[str, str] | None:
        """('terminal', serial) or ('application', ec_code), or None (default app)."""
        return _address(self.tlvs, TAG_DEST_SERIAL, TAG_DEST_EC)

    @property
    def source(self) -> tuple[str, str] | None:
        return _address(self.tlvs, TAG_SRC_SERIAL, TAG_SRC_EC)


def _address(tlvs: list[Tlv], serial_tag: int, ec_tag: int) -> tuple[str, str] | None:
    for t in reversed(tlvs):
        if t.tag == serial_tag:
            return ("terminal", t.raw.decode("latin-1"))
        if t.tag == ec_tag:
            return ("application", t.raw.decode("latin-1"))
    return None


@dataclass(slots=True)
class TransparentData(_Transparent, Message):
    """TRANSPARENT_DATA (4.7): CRC16 of the user data ‖ address TLV ‖ 0x4007."""

    COMMAND: ClassVar[int] = Command.TRANSPARENT_DATA
    FIXED: ClassVar[struct.Struct] = struct.Struct(">H")
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ("crc16",)

    crc16: int

    @classmethod
    def build(cls, user_data: bytes, address: Tlv | None = None) -> TransparentData:
        tlvs = [address] if address is not None else []
        tlvs.append(Tlv(TAG_USER_DATA, user_data))
        return cls(crc16(user_data), tlvs=tlvs)

    @property
    def crc_ok(self) -> bool:
        return crc16(self.user_data) == self.crc16


@dataclass(slots=True)
class TransparentDataAck(Message):
    COMMAND: ClassVar[int] = Command.TRANSPARENT_DATA | ACK_BIT
    FIXED: ClassVar[struct.Struct] = struct.Struct(">B")
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ("result",)

    result: int


@dataclass(slots=True)
class TransparentCmd(_Transparent, Message):
    """TRANSPARENT_CMD (4.16, PD-16): address TLV ‖ 0x4016 ‖ 0x4007."""

    COMMAND: ClassVar[int] = Command.TRANSPARENT_CMD

    @property
    def fixed_part(self) -> bytes:
        return find(self.tlvs, TAG_CMD_FIXED) or b""


@dataclass(slots=True)
class TransparentCmdAck(Message):
    COMMAND: ClassVar[int] = Command.TRANSPARENT_CMD | ACK_BIT
    FIXED: ClassVar[struct.Struct] = struct.Struct(">B")
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ("result",)

    result: int


@dataclass(slots=True)
class ConfigGet(Message):
    """CONFIG_GET (4.8): zero-length TLVs naming the tags to read."""

    COMMAND: ClassVar[int] = Command.CONFIG_GET


@dataclass(slots=True)
class ConfigGetAck(Message):
    COMMAND: ClassVar[int] = Command.CONFIG_GET | ACK_BIT
    FIXED: ClassVar[struct.Struct] = struct.Struct(">B")
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ("ret",)

    ret: int


@dataclass(slots=True)
class ConfigSet(Message):
    """CONFIG_SET (4.10): TLVs with values."""

    COMMAND: ClassVar[int] = Command.CONFIG_SET


@dataclass(slots=True)
class ConfigSetAck(Message):
    COMMAND: ClassVar[int] = Command.CONFIG_SET | ACK_BIT
    FIXED: ClassVar[struct.Struct] = struct.Struct(">B")
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ("ret",)

    ret: int


@dataclass(slots=True)
class ConfigTrap(Message):
    """CONFIG_TRAP (4.9): zero or more TLVs; an empty trap is valid."""

    COMMAND: ClassVar[int] = Command.CONFIG_TRAP


@dataclass(slots=True)
class ConfigTrapAck(Message):
    """CONFIG_TRAP_ACK (4.9): ret ‖ the first invalid tag (bare u16) when ret = 1."""

    COMMAND: ClassVar[int] = Command.CONFIG_TRAP | ACK_BIT

    ret: int
    bad_tag: int | None = None

    def encode_body(self) -> bytes:
        if self.bad_tag is None:
            if self.ret == 1:
                # Padding (3DES/AES) would be read back as the tag: ret 1 always names one.
                raise BodyError("CONFIG_TRAP_ACK: ret 1 needs the bad tag")
            return _u8("CONFIG_TRAP_ACK ret", self.ret)
        if self.ret != 1 or not 0 <= self.bad_tag <= 0xFFFF:
            # A receiver reads the tag only after ret 1, so anything else would not parse.
            raise BodyError(f"CONFIG_TRAP_ACK: bad_tag {self.bad_tag!r} needs ret 1 and a u16")
        return struct.pack(">BH", self.ret, self.bad_tag)

    @classmethod
    def decode_body(cls, body: bytes, *, padded: bool = False) -> Self:
        if not body:
            raise BodyError("CONFIG_TRAP_ACK: empty body")
        if body[0] == 1 and len(body) >= 3:
            bad_tag, rest = (body[1] << 8) | body[2], 3
        else:
            bad_tag, rest = None, 1
        if len(body) > rest and not (padded and _only_padding(body, rest)):
            raise BodyError(f"CONFIG_TRAP_ACK: {len(body) - rest} extra bytes")
        return cls(body[0], bad_tag)


@dataclass(slots=True)
class ConfigReq(Message):
    """CONFIG_REQ (4.11): zero-length TLVs naming the wanted tags."""

    COMMAND: ClassVar[int] = Command.CONFIG_REQ


@dataclass(slots=True)
class ConfigReqAck(Message):
    COMMAND: ClassVar[int] = Command.CONFIG_REQ | ACK_BIT
    FIXED: ClassVar[struct.Struct] = struct.Struct(">B")
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ("ret",)

    ret: int


@dataclass(slots=True)
class RemoteCtrl(Message):
    """REMOTE_CTRL (4.12): TLV 0x4001 (code), optional parameter TLVs."""

    COMMAND: ClassVar[int] = Command.REMOTE_CTRL

    @classmethod
    def build(cls, code: int, *params: Tlv) -> RemoteCtrl:
        return cls(tlvs=[Tlv.of(TAG_REMOTE_CODE, code), *params])

    @property
    def code(self) -> int | None:
        raw = find(self.tlvs, TAG_REMOTE_CODE)
        return raw[0] if raw and len(raw) == 1 else None


@dataclass(slots=True)
class RemoteCtrlAck(Message):
    COMMAND: ClassVar[int] = Command.REMOTE_CTRL | ACK_BIT
    FIXED: ClassVar[struct.Struct] = struct.Struct(">B")
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ("ret",)

    ret: int


@dataclass(slots=True)
class DownloadInfo(Message):
    """DOWNLOAD_INFO (4.14): TLV 0x1001 (URL), optional 0x100B."""

    COMMAND: ClassVar[int] = Command.DOWNLOAD_INFO

    @property
    def url(self) -> str | None:
        raw = find(self.tlvs, TAG_URL)
        return None if raw is None else raw.decode("latin-1")


@dataclass(slots=True)
class DownloadInfoAck(Message):
    COMMAND: ClassVar[int] = Command.DOWNLOAD_INFO | ACK_BIT
    FIXED: ClassVar[struct.Struct] = struct.Struct(">B")
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ("result",)

    result: int


@dataclass(slots=True)
class FileReq(Message):
    """FILE_REQ (4.15): TransID ‖ status ‖ offset ‖ wanted block size."""

    COMMAND: ClassVar[int] = Command.FILE_REQ
    FIXED: ClassVar[struct.Struct] = struct.Struct(">IBIH")
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ("trans_id", "status", "offset", "size")
    HAS_TLVS: ClassVar[bool] = False

    trans_id: int
    status: int
    offset: int
    size: int


@dataclass(slots=True)
class FileReqAck(Message):
    """FILE_REQ_ACK (4.15): TransID ‖ status ‖ CRC16 ‖ offset ‖ n ‖ n data bytes."""

    COMMAND: ClassVar[int] = Command.FILE_REQ | ACK_BIT
    FIXED: ClassVar[struct.Struct] = struct.Struct(">IBHIH")

    trans_id: int
    status: int
    crc16: int
    offset: int
    data: bytes = b""

    def encode_body(self) -> bytes:
        if len(self.data) > 0xFFFF:
            raise BodyError("FILE_REQ_ACK: block longer than 65535 bytes")
        try:
            fixed = self.FIXED.pack(
                self.trans_id, self.status, self.crc16, self.offset, len(self.data)
            )
        except struct.error as exc:
            raise BodyError(f"FILE_REQ_ACK: {exc}") from None
        return fixed + self.data

    @classmethod
    def decode_body(cls, body: bytes, *, padded: bool = False) -> Self:
        size = cls.FIXED.size
        if len(body) < size:
            raise BodyError(f"FILE_REQ_ACK: body of {len(body)} bytes, need {size}")
        trans_id, status, crc, offset, n = cls.FIXED.unpack_from(body)
        end = size + n
        if end > len(body):
            raise BodyError(f"FILE_REQ_ACK: length {n} overruns the body")
        if len(body) > end and not (padded and _only_padding(body, end)):
            raise BodyError(f"FILE_REQ_ACK: {len(body) - end} extra bytes")
        return cls(trans_id, status, crc, offset, bytes(body[size:end]))


@dataclass(slots=True)
class SecurityConfig(Message):
    """SECURITY_CONFIG (4.13): op ‖ TLVs."""

    COMMAND: ClassVar[int] = Command.SECURITY_CONFIG
    FIXED: ClassVar[struct.Struct] = struct.Struct(">B")
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ("op",)

    op: int


@dataclass(slots=True)
class SecurityConfigAck(Message):
    COMMAND: ClassVar[int] = Command.SECURITY_CONFIG | ACK_BIT
    FIXED: ClassVar[struct.Struct] = struct.Struct(">B")
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ("ret",)

    ret: int


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.COMMAND: cls
    for cls in (
        Register,
        RegisterAck,
        Login,
        LoginAck,
        Logout,
        LogoutAck,
        HeartBeat,
        HeartBeatAck,
        TransparentData,
        TransparentDataAck,
        TransparentCmd,
        TransparentCmdAck,
        ConfigGet,
        ConfigGetAck,
        ConfigSet,
        ConfigSetAck,
        ConfigTrap,
        ConfigTrapAck,
        ConfigReq,
        ConfigReqAck,
        RemoteCtrl,
        RemoteCtrlAck,
        DownloadInfo,
        DownloadInfoAck,
        FileReq,
        FileReqAck,
        SecurityConfig,
        SecurityConfigAck,
    )
}

MESSAGE_NAMES: dict[int, str] = {
    int(c) | ack: c.name + ("_ACK" if ack else "") for c in Command for ack in (0, ACK_BIT)
}


#: Each type's ``decode_body``, bound once: a classmethod is bound anew on every access.
_DECODERS: dict[int, Callable[..., Message]] = {
    command: cls.decode_body for command, cls in MESSAGE_TYPES.items()
}


def decode_message(command_id: int, body: bytes, *, padded: bool = False) -> Message:
    """Typed message of a plaintext body (containers already opened)."""
    decode = _DECODERS.get(command_id)
    if decode is None:
        raise BodyError(f"no message type for Command_ID 0x{command_id:04X}")
    return decode(body, padded=True) if padded else decode(body)

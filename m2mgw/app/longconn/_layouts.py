"""Body layouts (6.5): one :class:`Layout` per Command_ID maps a body onto the
dataclasses of :mod:`m2mgw.app.operations`, so both bindings feed one handler.

A body is fixed fields, then TLVs in any order, then (for some commands) embedded
terminal TLVs; :func:`encode_message` makes a complete signed message of one.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

from m2mgw.app import keys
from m2mgw.app import operations as ops
from m2mgw.app.longconn._values import (
    BEARER,
    BOOL,
    BYTES,
    EVENT,
    INFO_RECORD,
    MD5,
    MODE,
    MSG_STATE,
    OPERATION,
    STATUS_RECORD,
    STR,
    U8,
    U16,
    U16_LIST,
    U32,
    Codec,
    Int,
    Struct,
)
from m2mgw.app.longconn._wire import (
    CONTAINER_FLAG,
    PROTOCOL_VERSION,
    BodyError,
    Command,
    LongConnError,
    Tag,
    command_name,
    is_app_tag,
    iter_tlvs,
    sign_frame,
    split_tlv,
    tlv,
)
from m2mgw.protocol.constants import ACK_BIT
from m2mgw.protocol.security import Cipher


@dataclass(frozen=True)
class Rule:
    """One TLV of a layout and the field(s) it carries (dotted paths into nested types)."""

    tag: int
    attr: str | tuple[str, ...]
    codec: Codec
    required: bool = False
    repeated: bool = False  # one TLV per list element
    long: bool = False  # value may span several TLVs of the tag


def _req(tag: int, attr: str | tuple[str, ...], codec: Codec, **kw: bool) -> Rule:
    return Rule(tag, attr, codec, required=True, **kw)


def _opt(tag: int, attr: str | tuple[str, ...], codec: Codec, **kw: bool) -> Rule:
    return Rule(tag, attr, codec, **kw)


@dataclass(frozen=True)
class Layout:
    """Fixed fields, then TLVs in any order, then embedded terminal TLVs (6.5)."""

    cls: type
    fixed: tuple[tuple[str, Int], ...] = ()
    rules: tuple[Rule, ...] = ()
    items: str | None = None

    @cached_property
    def claimed(self) -> frozenset[int]:
        return frozenset(rule.tag for rule in self.rules)


_RESULT = (("result_code", U8),)


def _ack(cls: type, *rules: Rule, items: str | None = None) -> Layout:
    return Layout(cls, _RESULT, rules, items)


_TERMINAL = _req(Tag.DESTINATION, "terminal_id", STR)
_SOURCE = _req(Tag.SOURCE, "terminal_id", STR)
_NOTIFY_ID = _req(Tag.NOTIFY_ID, "notify_id", U32)
_MSG_ID = _opt(Tag.MSG_ID, "msg_id", U32)
_FAILED = _opt(Tag.FAILED_TAGS, "failed_tags", U16_LIST)
_TTL = _opt(Tag.TTL, "ttl_seconds", U32)
_BIZ = _opt(Tag.BIZ_SEQ, "biz_seq", STR)
_NEED_ACK = _opt(Tag.NEED_TERMINAL_ACK, "need_terminal_ack", BOOL)

LAYOUTS: dict[int, Layout] = {
    Command.APP_LOGIN: Layout(
        ops.Login, (("login_type", U8),),
        (_opt(Tag.HEARTBEAT, "heartbeat_interval", U16),
         _opt(Tag.ENCRYPT_NOTIFICATIONS, "encrypt_notifications", BOOL)),
    ),
    Command.APP_LOGIN | ACK_BIT: Layout(
        ops.LoginResponse, (("result_code", U8), ("server_time", U32)),
        (_opt(Tag.SESSION_KEY, "session_key", BYTES),
         _opt(Tag.HEARTBEAT, "heartbeat_interval", U16),
         _opt(Tag.SESSION_TTL, "session_ttl", U32)),
    ),
    Command.APP_LOGOUT: Layout(ops.Logout, (("reason", U8),)),
    Command.APP_LOGOUT | ACK_BIT: _ack(ops.LogoutResponse),
    Command.APP_HEARTBEAT: Layout(ops.Heartbeat),
    Command.APP_HEARTBEAT | ACK_BIT: _ack(ops.HeartbeatResponse),
    Command.APP_SEND_DATA: Layout(
        ops.SendData, (),
        (_TERMINAL, _req(Tag.USER_DATA, "data", BYTES), _NEED_ACK, _TTL, _BIZ),
    ),
    Command.APP_SEND_DATA | ACK_BIT: _ack(ops.SendDataResponse, _MSG_ID),
    Command.APP_DELIVER_DATA: Layout(
        ops.DeliverData, (),
        (_NOTIFY_ID, _SOURCE, _req(Tag.USER_DATA, "data", BYTES),
         _opt(Tag.FIXED_PART, "fixed_part", BYTES), _req(Tag.BEARER, "bearer", BEARER),
         _req(Tag.TIME, "receive_time", U32)),
    ),
    Command.APP_DELIVER_DATA | ACK_BIT: _ack(ops.DeliverDataResponse),
    Command.APP_SEND_CMD: Layout(
        ops.SendCommand, (),
        (_TERMINAL, _req(Tag.FIXED_PART, "fixed_part", BYTES),
         _req(Tag.USER_DATA, "command", BYTES), _NEED_ACK, _TTL, _BIZ),
    ),
    Command.APP_SEND_CMD | ACK_BIT: _ack(ops.SendCommandResponse, _MSG_ID),
    Command.APP_CONFIG_GET: Layout(
        ops.GetConfig, (),
        (_TERMINAL, _req(Tag.TAGS, "tags", U16_LIST), _opt(Tag.MODE, "mode", MODE)),
    ),
    Command.APP_CONFIG_GET | ACK_BIT: _ack(ops.GetConfigResponse, _MSG_ID, _FAILED,
                                           items="items"),
    Command.APP_CONFIG_SET: Layout(ops.SetConfig, (), (_TERMINAL, _TTL, _BIZ), "items"),
    Command.APP_CONFIG_SET | ACK_BIT: _ack(ops.SetConfigResponse, _MSG_ID, _FAILED),
    Command.APP_REMOTE_CTRL: Layout(
        ops.RemoteControl, (),
        (_TERMINAL, _req(Tag.REMOTE_CONTROL, "code", U8), _TTL, _BIZ), "items",
    ),
    Command.APP_REMOTE_CTRL | ACK_BIT: _ack(ops.RemoteControlResponse, _MSG_ID, _FAILED),
    Command.APP_UPGRADE: Layout(
        ops.Upgrade, (),
        (_TERMINAL, _req(Tag.VERSION, "version", STR),
         _opt(Tag.FILE_DATA, "file_data", BYTES, long=True),
         _opt(Tag.SOURCE_URL, "source_url", STR),
         _req(Tag.FILE_MD5, "file_md5", MD5), _req(Tag.FILE_SIZE, "file_size", U32),
         _opt(Tag.FORCE, "force", BOOL), _TTL, _BIZ),
    ),
    Command.APP_UPGRADE | ACK_BIT: _ack(ops.UpgradeResponse, _MSG_ID),
    Command.APP_QUERY_STATUS: Layout(
        ops.QueryTerminalStatus, (),
        (_req(Tag.DESTINATION, "terminal_ids", STR, repeated=True),),
    ),
    Command.APP_QUERY_STATUS | ACK_BIT: _ack(
        ops.QueryTerminalStatusResponse,
        _opt(Tag.STATUS_RECORD, "statuses", STATUS_RECORD, repeated=True),
    ),
    Command.APP_QUERY_INFO: Layout(ops.QueryTerminalInfo, (), (_TERMINAL,)),
    Command.APP_QUERY_INFO | ACK_BIT: _ack(
        ops.QueryTerminalInfoResponse,
        _opt(Tag.STATUS_RECORD, ("info.terminal_id", "info.state", "info.connect_mode"),
             INFO_RECORD),
        _opt(Tag.IMEI, "info.imei", STR),
        _opt(Tag.IMSI, "info.imsi", STR),
        _opt(Tag.MSISDN, "info.msisdn", STR),
        _opt(Tag.MODEL, "info.model", STR),
        _opt(Tag.SOFTWARE_VERSION, "info.software_version", STR),
        _opt(Tag.CONNECT_MODE, "info.connect_mode", U8),
        _opt(Tag.HEARTBEAT_INTERVAL, "info.heartbeat_interval", U32),
        items="info.items",
    ),
    Command.APP_MSG_STATUS: Layout(
        ops.QueryMessageStatus, (), (_req(Tag.MSG_ID, "msg_id", U32),)
    ),
    Command.APP_MSG_STATUS | ACK_BIT: _ack(
        ops.QueryMessageStatusResponse,
        _opt(Tag.MSG_STATE, "state", MSG_STATE),
        _opt(Tag.OP_RESULT, "op_result", U16),
        _opt(Tag.TERMINAL_RESULT, "terminal_result", U8),
        _opt(Tag.TIME, "update_time", U32),
    ),
    Command.APP_LIST_TERMINALS: Layout(
        ops.ListTerminals, (),
        (_req(Tag.PAGE, ("page_no", "page_size"), Struct(struct.Struct(">HH"))),
         _opt(Tag.TIME, "modified_since", U32)),
    ),
    Command.APP_LIST_TERMINALS | ACK_BIT: _ack(
        ops.ListTerminalsResponse,
        _opt(Tag.TOTAL, "total", U32),
        _opt(Tag.TERMINAL_SERIAL, "terminal_ids", STR, repeated=True),
    ),
    Command.APP_RESULT_NOTIFY: Layout(
        ops.NotifyResult, (),
        (_NOTIFY_ID, _req(Tag.MSG_ID, "msg_id", U32), _BIZ,
         _req(Tag.OPERATION, "operation", OPERATION), _SOURCE,
         _req(Tag.MSG_STATE, "state", MSG_STATE), _req(Tag.OP_RESULT, "op_result", U16),
         _opt(Tag.TERMINAL_RESULT, "terminal_result", U8), _FAILED,
         _req(Tag.TIME, "time", U32)),
        "items",
    ),
    Command.APP_RESULT_NOTIFY | ACK_BIT: _ack(ops.NotifyResultResponse),
    Command.APP_ALARM_NOTIFY: Layout(
        ops.NotifyAlarm, (),
        (_NOTIFY_ID, _SOURCE,
         _req(Tag.ALARM, ("alarm.status", "alarm.type", "alarm.code"),
              Struct(struct.Struct(">BBH"))),
         _req(Tag.TIME, "alarm.time", U32), _req(Tag.BEARER, "bearer", BEARER),
         _opt(Tag.RESTORE_CODE, "alarm.restore_code", STR)),
        "items",
    ),
    Command.APP_ALARM_NOTIFY | ACK_BIT: _ack(ops.NotifyAlarmResponse),
    Command.APP_STATE_NOTIFY: Layout(
        ops.NotifyTerminalState, (),
        (_NOTIFY_ID, _SOURCE, _req(Tag.EVENT, "event", EVENT), _req(Tag.TIME, "time", U32),
         _opt(Tag.REASON, "reason", U8)),
    ),
    Command.APP_STATE_NOTIFY | ACK_BIT: _ack(ops.NotifyTerminalStateResponse),
    Command.APP_CONFIG_TRAP_NOTIFY: Layout(
        ops.NotifyConfigTrap, (), (_NOTIFY_ID, _SOURCE, _req(Tag.TIME, "time", U32)), "items"
    ),
    Command.APP_CONFIG_TRAP_NOTIFY | ACK_BIT: _ack(ops.NotifyConfigTrapResponse),
    Command.APP_KEY_UPDATE: Layout(
        ops.KeyUpdate, (),
        (_req(Tag.KEY_TYPE, "key_type", U8), _req(Tag.KEY_BLOB, "key_blob", BYTES),
         _opt(Tag.EFFECTIVE_TIME, "effective_time", U32)),
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
    return layout.items is not None and not is_app_tag(tag) and tag not in layout.claimed


def _get(obj: object, path: str) -> Any:
    for part in path.split("."):
        if obj is None:
            return None
        obj = getattr(obj, part)
    return obj


@cache  # a few (class, field) pairs, asked for every optional TLV encoded
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
            out += tlv(item.tag, BYTES.pack(item.value))
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
        elif layout.items is not None and not is_app_tag(tag):
            items.append(ops.TlvItem(tag=tag, value=value))
    for rule in layout.rules:
        values = found.get(rule.tag)
        if not values:
            if rule.required:
                raise BodyError(f"{command_name(command_id)}: TLV 0x{rule.tag:04X} missing")
            continue
        decoded: Any
        if rule.repeated:
            decoded = [rule.codec.unpack(v) for v in values]
        elif rule.long:
            decoded = rule.codec.unpack(b"".join(values))
        else:
            decoded = rule.codec.unpack(values[-1])  # the last occurrence wins ([T] 3.1)
        if isinstance(rule.attr, tuple):
            for path, part in zip(rule.attr, decoded, strict=True):
                _put(kwargs, path, part)
        else:
            _put(kwargs, rule.attr, decoded)
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
        return body, 0
    return keys.encrypt_lc_body(cipher, body), CONTAINER_FLAG


def encode_message(
    command_id: int, sequence_id: int, app_id: str, payload: object, *,
    timestamp: int, password: str, cipher: Cipher | None = None,
    version: int = PROTOCOL_VERSION,
) -> bytes:
    """A complete signed message; the body goes into an ``E042`` container with ``cipher``."""
    body, flags = seal_body(command_id, payload, cipher)
    return sign_frame(command_id, sequence_id, app_id, body, flags, timestamp=timestamp,
                      password=password, version=version)

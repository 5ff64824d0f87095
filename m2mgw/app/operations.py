"""The operation set of the application interface, shared by both bindings (spec 3).

Each SOAP operation ``X`` is a request dataclass named ``X`` and a response dataclass
named ``XResponse``: the class names are the body element names (AD-21), and field
names are the parameter names in snake_case (``terminal_id`` ↔ ``terminalId``). The
field metadata records the XSD type so that the SOAP codec, the digest's canonical
body string (5.1) and the long-connection codec all read one description, and the
gateway implements one handler per operation whatever the binding.

Times are int UNIX seconds everywhere (u32 on the long connection, ``xs:dateTime``
in SOAP bodies, 2.3). A field without a default is required; ``None`` means "absent"
for optional fields; fields with a spec default carry it and are always sent in SOAP.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from enum import IntEnum
from functools import cache, lru_cache
from typing import Any, TypeVar, dataclass_transform

from m2mgw.protocol.errors import ProtocolError

__all__ = [
    "BEARERS",
    "DEFAULT_TTL",
    "EVENTS",
    "MAX_FILE_SIZE",
    "MAX_USER_DATA",
    "MSG_STATES",
    "NAMESPACE",
    "NOTIFICATION_OPERATIONS",
    "OPERATIONS",
    "PLATFORM_OPERATIONS",
    "TERMINAL_STATES",
    "AckMessages",
    "AlarmInfo",
    "FieldInfo",
    "MsgState",
    "NotificationItem",
    "OperationSpec",
    "Response",
    "ResultCode",
    "TerminalInfo",
    "TerminalStatus",
    "TlvItem",
    "Unencodable",
    "element_class",
    "fields_of",
    "format_datetime",
    "format_soap_timestamp",
    "is_valid_app_id",
    "is_valid_biz_seq",
    "is_valid_session_id",
    "is_valid_terminal_id",
    "make_response",
    "next_id",
    "parse_datetime",
    "parse_soap_timestamp",
    "terminal_text",
]

NAMESPACE = "urn:gbz41383:m2m:app:1"
DEFAULT_TTL = 86_400
MAX_USER_DATA = 60_000
MAX_FILE_SIZE = 4_194_304
U32_MAX = 0xFFFFFFFF


class ResultCode(IntEnum):
    """The one result table of both bindings (2.5, AD-07)."""

    OK = 0
    AUTH_FAILED = 1
    APP_UNKNOWN = 2
    SESSION_INVALID = 3
    TERMINAL_UNKNOWN = 4
    TERMINAL_OFFLINE = 5
    TERMINAL_TIMEOUT = 6
    TERMINAL_ERROR = 7
    BAD_PARAMETER = 8
    RATE_LIMITED = 9
    TOO_LARGE = 10
    DUPLICATE = 11
    UNSUPPORTED = 12
    INTERNAL_ERROR = 99


class MsgState(IntEnum):
    """Downlink message states and their long-connection values (2.7)."""

    QUEUED = 0
    SENT = 1
    ACKED = 2
    APPLIED = 3
    FAILED = 4
    EXPIRED = 5


MSG_STATES: tuple[str, ...] = tuple(s.name for s in MsgState)
TERMINAL_STATES = ("UNKNOWN", "UNREGISTERED", "REGISTERED", "ONLINE", "LOGGED_OUT", "OFFLINE")
BEARERS = ("NONE", "TCP", "UDP", "SMS")
EVENTS = ("REGISTERED", "LOGGED_IN", "LOGGED_OUT", "OFFLINE")
DOWNLINK_OPERATIONS = (
    "SendData", "SendCommand", "GetConfig", "SetConfig", "RemoteControl", "Upgrade"
)


# --- identifiers (2.1) -------------------------------------------------------------------

_APP_ID = re.compile(r"[A-Za-z0-9_-]{1,16}")
_TERMINAL_ID = re.compile(r"[\x20-\x7e]{16}")
_BIZ_SEQ = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,31}")
_SESSION_ID = re.compile(r"[A-Za-z0-9-]{1,64}")


def is_valid_app_id(value: str) -> bool:
    return isinstance(value, str) and _APP_ID.fullmatch(value) is not None


def is_valid_terminal_id(value: str) -> bool:
    return isinstance(value, str) and _TERMINAL_ID.fullmatch(value) is not None


def is_valid_biz_seq(value: str) -> bool:
    """1–32 printable ASCII characters, not starting with a space (XSD ``BizSeq``)."""
    return isinstance(value, str) and _BIZ_SEQ.fullmatch(value) is not None


def is_valid_session_id(value: str) -> bool:
    return isinstance(value, str) and _SESSION_ID.fullmatch(value) is not None


_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def terminal_text(value: str) -> str:
    """A terminal's ``str`` value ([T] 3.1) as applications receive it, in both bindings.

    Printable ASCII is unchanged; any other character becomes ``\\xHH`` (the byte as
    the terminal codec decoded it, latin-1) or ``\\uHHHH``. XML 1.0 cannot carry most
    control characters at all, not even as character references, and the long
    connection carries ASCII only: escaped, a broken terminal's value still arrives,
    recognisably, and cannot break the message that carries it (D-252).
    """
    return _UNPRINTABLE.sub(_escape, value)


class Unencodable(ProtocolError):
    """A binding cannot carry this notification at all: it is set aside, not retried."""


def next_id(current: int) -> int:
    """The next u32 counter value after ``current``, wrapping to 1 (never 0; 2.1, 2.2)."""
    return 1 if current >= U32_MAX or current < 1 else current + 1


# --- times (2.3) -------------------------------------------------------------------------

_CST = timezone(timedelta(hours=8))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# The time conversions below run for every message, mostly on the current second:
# their cached forms answer those at once.


def format_soap_timestamp(unix: float) -> str:
    """``MsgHeader/timestamp``: ``yyyyMMddHHmmss`` in UTC+8."""
    return _soap_timestamp(int(unix))


@lru_cache(maxsize=64)
def _soap_timestamp(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, _CST).strftime("%Y%m%d%H%M%S")


def parse_soap_timestamp(text: str) -> int:
    if not isinstance(text, str) or len(text) != 14 or not text.isdigit():
        raise ProtocolError(f"bad MsgHeader timestamp {text!r}", ResultCode.BAD_PARAMETER)
    return _soap_seconds(text)


@lru_cache(maxsize=64)
def _soap_seconds(text: str) -> int:
    try:
        moment = datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=_CST)
    except ValueError:
        raise ProtocolError(f"bad MsgHeader timestamp {text!r}", ResultCode.BAD_PARAMETER) from None
    return int((moment - _EPOCH).total_seconds())


def format_datetime(unix: int) -> str:
    """Body times: ``xs:dateTime`` in UTC with ``Z``."""
    return _datetime(int(unix))


@lru_cache(maxsize=64)
def _datetime(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_datetime(text: str) -> int:
    """Any ``xs:dateTime`` (offset, ``Z`` or none = UTC; fractions dropped) → UNIX seconds."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError, TypeError):
        raise ProtocolError(f"bad dateTime {text!r}", ResultCode.BAD_PARAMETER) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int((moment - _EPOCH).total_seconds() // 1)


# --- field descriptions ------------------------------------------------------------------


def _f(xs: str | type, default: Any = dataclasses.MISSING, *, many: bool = False) -> Any:
    """A dataclass field with its XSD type; lists default to empty."""
    meta = {"xs": xs, "many": many}
    if many:
        return field(default_factory=list, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class FieldInfo:
    """One parameter as both codecs and the digest see it."""

    name: str
    element: str
    xs: str | type
    many: bool
    required: bool


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


@cache
def fields_of(cls: type) -> tuple[FieldInfo, ...]:
    """The parameters of a message or shared type, in schema order."""
    return tuple(
        FieldInfo(
            f.name,
            _camel(f.name),
            resolve_type(f.metadata["xs"]),
            f.metadata["many"],
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)
    )


# --- shared types (3.4) ------------------------------------------------------------------

_T = TypeVar("_T")


@dataclass_transform(kw_only_default=True, field_specifiers=(dataclasses.field,))
def _model(cls: type[_T]) -> type[_T]:
    """A keyword-only dataclass, declared so that type checkers see its fields."""
    return dataclass(kw_only=True)(cls)


@_model
class TlvItem:
    """A terminal parameter: tag and the raw value part of the terminal TLV (2.4)."""

    tag: int = _f("unsignedShort")
    value: bytes = _f("base64Binary")


@_model
class TerminalStatus:
    terminal_id: str = _f("string")
    state: str = _f("string")
    last_login: int | None = _f("dateTime", None)
    last_active: int | None = _f("dateTime", None)
    bearer: str = _f("string")
    address: str | None = _f("string", None)
    connect_mode: int | None = _f("int", None)


@_model
class TerminalInfo:
    terminal_id: str = _f("string")
    imei: str = _f("string")
    imsi: str = _f("string")
    msisdn: str | None = _f("string", None)
    model: str | None = _f("string", None)
    software_version: str | None = _f("string", None)
    state: str = _f("string")
    connect_mode: int | None = _f("int", None)
    heartbeat_interval: int | None = _f("int", None)
    items: list[TlvItem] = _f(TlvItem, many=True)


@_model
class AlarmInfo:
    status: int = _f("unsignedByte")
    type: int = _f("unsignedByte")
    code: int = _f("unsignedShort")
    restore_code: str | None = _f("string", None)
    time: int = _f("dateTime")


@_model
class Response:
    """Every response starts with ``resultCode`` and ``resultDesc`` (3.1)."""

    result_code: int = _f("int", 0)
    result_desc: str = _f("string", "")

    @property
    def ok(self) -> bool:
        return self.result_code == ResultCode.OK


# --- application → platform (3.2) -------------------------------------------------------


@_model
class Login:
    login_type: int = _f("int", 0)
    heartbeat_interval: int | None = _f("int", None)
    encrypt_notifications: bool = _f("boolean", False)


@_model
class LoginResponse(Response):
    session_id: str | None = _f("string", None)
    server_time: int | None = _f("unsignedInt", None)
    session_key: bytes | None = _f("base64Binary", None)
    heartbeat_interval: int | None = _f("int", None)
    session_ttl: int | None = _f("int", None)


@_model
class Logout:
    reason: int = _f("int", 0)


@_model
class LogoutResponse(Response):
    pass


@_model
class Heartbeat:
    pass


@_model
class HeartbeatResponse(Response):
    pass


@_model
class SendData:
    terminal_id: str = _f("string")
    data: bytes = _f("base64Binary")
    need_terminal_ack: bool = _f("boolean", True)
    ttl_seconds: int = _f("int", DEFAULT_TTL)
    biz_seq: str | None = _f("string", None)


@_model
class SendDataResponse(Response):
    msg_id: int | None = _f("unsignedInt", None)


@_model
class SendCommand:
    terminal_id: str = _f("string")
    fixed_part: bytes = _f("base64Binary")
    command: bytes = _f("base64Binary")
    need_terminal_ack: bool = _f("boolean", True)
    ttl_seconds: int = _f("int", DEFAULT_TTL)
    biz_seq: str | None = _f("string", None)


@_model
class SendCommandResponse(Response):
    msg_id: int | None = _f("unsignedInt", None)


@_model
class GetConfig:
    terminal_id: str = _f("string")
    tags: list[int] = _f("unsignedShort", many=True)
    mode: str = _f("string", "async")


@_model
class GetConfigResponse(Response):
    msg_id: int | None = _f("unsignedInt", None)
    items: list[TlvItem] = _f(TlvItem, many=True)
    failed_tags: list[int] = _f("unsignedShort", many=True)


@_model
class SetConfig:
    terminal_id: str = _f("string")
    items: list[TlvItem] = _f(TlvItem, many=True)
    ttl_seconds: int = _f("int", DEFAULT_TTL)
    biz_seq: str | None = _f("string", None)


@_model
class SetConfigResponse(Response):
    msg_id: int | None = _f("unsignedInt", None)
    failed_tags: list[int] = _f("unsignedShort", many=True)


@_model
class RemoteControl:
    terminal_id: str = _f("string")
    code: int = _f("unsignedByte")
    items: list[TlvItem] = _f(TlvItem, many=True)
    ttl_seconds: int = _f("int", DEFAULT_TTL)
    biz_seq: str | None = _f("string", None)


@_model
class RemoteControlResponse(Response):
    msg_id: int | None = _f("unsignedInt", None)
    failed_tags: list[int] = _f("unsignedShort", many=True)


@_model
class Upgrade:
    terminal_id: str = _f("string")
    version: str = _f("string")
    file_data: bytes | None = _f("base64Binary", None)
    source_url: str | None = _f("string", None)
    file_md5: str = _f("string")
    file_size: int = _f("unsignedInt")
    force: bool = _f("boolean", False)
    ttl_seconds: int = _f("int", DEFAULT_TTL)
    biz_seq: str | None = _f("string", None)


@_model
class UpgradeResponse(Response):
    msg_id: int | None = _f("unsignedInt", None)


@_model
class QueryTerminalStatus:
    terminal_ids: list[str] = _f("string", many=True)


@_model
class QueryTerminalStatusResponse(Response):
    statuses: list[TerminalStatus] = _f(TerminalStatus, many=True)


@_model
class QueryTerminalInfo:
    terminal_id: str = _f("string")


@_model
class QueryTerminalInfoResponse(Response):
    info: TerminalInfo | None = _f(TerminalInfo, None)


@_model
class ListTerminals:
    modified_since: int | None = _f("dateTime", None)
    page_no: int = _f("int", 1)
    page_size: int = _f("int", 100)


@_model
class ListTerminalsResponse(Response):
    total: int | None = _f("int", None)
    terminal_ids: list[str] = _f("string", many=True)


@_model
class QueryMessageStatus:
    msg_id: int = _f("unsignedInt")


@_model
class QueryMessageStatusResponse(Response):
    state: str | None = _f("string", None)
    op_result: int | None = _f("int", None)
    terminal_result: int | None = _f("int", None)
    update_time: int | None = _f("dateTime", None)


@_model
class FetchMessages:
    max_count: int = _f("int", 50)


@_model
class FetchMessagesResponse(Response):
    messages: list[NotificationItem] = _f("NotificationItem", many=True)
    remaining: int | None = _f("int", None)


@_model
class AckMessages:
    notify_ids: list[int] = _f("unsignedInt", many=True)


@_model
class AckMessagesResponse(Response):
    pass


# --- platform → application (3.3) -------------------------------------------------------


@_model
class DeliverData:
    notify_id: int = _f("unsignedInt")
    terminal_id: str = _f("string")
    data: bytes = _f("base64Binary")
    fixed_part: bytes | None = _f("base64Binary", None)
    bearer: str = _f("string")
    receive_time: int = _f("dateTime")


@_model
class DeliverDataResponse(Response):
    pass


@_model
class NotifyResult:
    notify_id: int = _f("unsignedInt")
    msg_id: int = _f("unsignedInt")
    biz_seq: str | None = _f("string", None)
    operation: str = _f("string")
    terminal_id: str = _f("string")
    state: str = _f("string")
    op_result: int = _f("int")
    terminal_result: int | None = _f("int", None)
    items: list[TlvItem] = _f(TlvItem, many=True)
    failed_tags: list[int] = _f("unsignedShort", many=True)
    time: int = _f("dateTime")


@_model
class NotifyResultResponse(Response):
    pass


@_model
class NotifyAlarm:
    notify_id: int = _f("unsignedInt")
    terminal_id: str = _f("string")
    alarm: AlarmInfo = _f(AlarmInfo)
    items: list[TlvItem] = _f(TlvItem, many=True)
    bearer: str = _f("string")


@_model
class NotifyAlarmResponse(Response):
    pass


@_model
class NotifyConfigTrap:
    notify_id: int = _f("unsignedInt")
    terminal_id: str = _f("string")
    items: list[TlvItem] = _f(TlvItem, many=True)
    time: int = _f("dateTime")


@_model
class NotifyConfigTrapResponse(Response):
    pass


@_model
class NotifyTerminalState:
    notify_id: int = _f("unsignedInt")
    terminal_id: str = _f("string")
    event: str = _f("string")
    reason: int | None = _f("int", None)
    time: int = _f("dateTime")


@_model
class NotifyTerminalStateResponse(Response):
    pass


Notification = DeliverData | NotifyResult | NotifyAlarm | NotifyConfigTrap | NotifyTerminalState


@_model
class NotificationItem:
    """A kept notification for ``FetchMessages``: its creation time and exactly one body."""

    create_time: int = _f("dateTime")
    notification: Notification = _f("choice")


# --- long connection only (6.5.19) ------------------------------------------------------


@_model
class KeyUpdate:
    """APP_KEY_UPDATE (7.5); no SOAP equivalent."""

    key_type: int = _f("unsignedByte")
    key_blob: bytes = _f("base64Binary")
    effective_time: int | None = _f("dateTime", None)


@_model
class KeyUpdateResponse(Response):
    pass


# --- registry -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OperationSpec:
    """One operation: its request/response classes and the service that hosts it."""

    name: str
    request: type
    response: type
    service: str  # "platform", "notify" or "longconn"

    @property
    def response_name(self) -> str:
        return self.name + "Response"


PLATFORM_OPERATIONS = (
    Login, Logout, Heartbeat, SendData, SendCommand, GetConfig, SetConfig, RemoteControl,
    Upgrade, QueryTerminalStatus, QueryTerminalInfo, ListTerminals, QueryMessageStatus,
    FetchMessages, AckMessages,
)
NOTIFICATION_OPERATIONS = (
    DeliverData, NotifyResult, NotifyAlarm, NotifyConfigTrap, NotifyTerminalState
)


def _spec(request: type, service: str) -> OperationSpec:
    name = request.__name__
    return OperationSpec(name, request, globals()[name + "Response"], service)


OPERATIONS: dict[str, OperationSpec] = {
    spec.name: spec
    for spec in [_spec(cls, "platform") for cls in PLATFORM_OPERATIONS]
    + [_spec(cls, "notify") for cls in NOTIFICATION_OPERATIONS]
    + [_spec(KeyUpdate, "longconn")]
}

_ELEMENTS: dict[str, type] = {}
for _op in OPERATIONS.values():
    _ELEMENTS[_op.name] = _op.request
    _ELEMENTS[_op.response_name] = _op.response
for _shared in (TlvItem, TerminalStatus, TerminalInfo, AlarmInfo, NotificationItem):
    _ELEMENTS[_shared.__name__] = _shared


def make_response(cls: type, code: int, desc: str = "", **values: Any) -> Any:
    """A response of ``cls`` with ``code``; values of fields ``cls`` lacks are dropped.

    Lets one handler answer e.g. ``msg_id`` whatever the operation's response has.
    """
    names = {info.name for info in fields_of(cls)}
    return cls(result_code=int(code), result_desc=desc or ("OK" if code == 0 else ""),
               **{name: value for name, value in values.items() if name in names})


def element_class(name: str) -> type | None:
    """The dataclass for a body element or shared type name (``SendData``, ``TlvItem``)."""
    return _ELEMENTS.get(name)


def resolve_type(xs: str | type) -> str | type:
    """Field types given by name (forward references) resolved to their class."""
    if isinstance(xs, str) and xs in _ELEMENTS:
        return _ELEMENTS[xs]
    return xs


"""Records kept by the terminal registry (spec 9.1): plain dataclasses, no I/O.

Secrets (passwords, keys) are excluded from ``repr`` so that logging a record can never
leak them (spec 6.3.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

U16_MAX = 0xFFFF
U32_MAX = 0xFFFFFFFF
DEFAULT_SMS_PORT = 2862


class TerminalState(StrEnum):
    """A terminal's state as the platform sees it (spec 9.8)."""

    UNREGISTERED = "UNREGISTERED"
    REGISTERED = "REGISTERED"
    LOGGED_IN = "LOGGED_IN"
    LOGGED_OUT = "LOGGED_OUT"
    OFFLINE = "OFFLINE"


class RequestState(StrEnum):
    """Life of a platform-initiated request in the durable queue."""

    QUEUED = "queued"
    SENT = "sent"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


#: Requests still waiting for the terminal (kept in the registry's memory).
ACTIVE_REQUEST_STATES = frozenset({RequestState.QUEUED, RequestState.SENT})


class FileState(StrEnum):
    """Life of a DOWNLOAD_INFO file transaction (spec 4.14, 4.15)."""

    OFFERED = "offered"
    DOWNLOADED = "downloaded"
    ABORTED = "aborted"
    COMPLETED = "completed"
    FAILED = "failed"


def advance_counter(value: int, maximum: int) -> int:
    """The counter value after ``value``: +1, wrapping from ``maximum`` to 1 (never 0)."""
    return 1 if value >= maximum else value + 1


def normalize_msisdn(number: str) -> str:
    """Normalised E.164 digits (PD-30): digits only, no ``+``/``00``, 86 before 11 digits."""
    digits = "".join(ch for ch in number if "0" <= ch <= "9")
    if number.lstrip().startswith("+"):
        return digits
    if digits.startswith("00"):
        return digits[2:]
    if len(digits) == 11:
        return "86" + digits
    return digits


@dataclass(slots=True, kw_only=True)
class CredentialSet:
    """Uplink/downlink passwords and base key with their u32 expiries (spec 6.3.1)."""

    uplink_password: str = field(repr=False)
    uplink_expiry: int = U32_MAX
    downlink_password: str = field(repr=False)
    downlink_expiry: int = U32_MAX
    base_key: str = field(repr=False)
    base_key_expiry: int = U32_MAX
    #: When the set was last sent to the terminal (SECURITY_CONFIG op 0), if ever.
    delivered_at: float | None = None


@dataclass(slots=True, kw_only=True)
class Terminal:
    """The platform's record of one terminal (spec 9.1).

    The registry hands out its live cached instance: mutate it, then call
    ``registry.save(terminal)`` to persist.
    """

    id: int | None = None
    imei: str
    imsi: str | None = None
    msisdn: str | None = None
    serial: str | None = None
    state: TerminalState = TerminalState.UNREGISTERED
    enabled: bool = True
    cipher: str = "none"
    require_encryption: bool = False
    sms_terminal_port: int = DEFAULT_SMS_PORT
    sms_wakeup: bool = True
    allowed_imsis: set[str] | None = None
    current: CredentialSet | None = None
    pending: CredentialSet | None = None
    session_timestamp: int | None = None
    last_session_timestamp: int = 0
    session_key: str | None = field(default=None, repr=False)
    session_key_expiry: int | None = None
    protocol_version: int | None = None
    bearer: str | None = None
    address: str | None = None
    last_seen: float | None = None
    #: When the last SMS wake-up was sent (9.6): kept, so a restart does not send the
    #: next one before ``wakeup_min_interval`` (D-95).
    wakeup_at: float | None = None
    connect_mode: int | None = None
    heartbeat_interval: int | None = None
    sync_tags: list[int] | None = None
    software_version: str | None = None
    seq_counter: int = 1
    trans_counter: int = 1
    default_app: str | None = None
    apps: set[str] = field(default_factory=set)
    config_unverified: bool = False
    auth_failures: int = 0
    #: Compatibility profile (spec 1.6, m2mgw.protocol.compat); None follows
    #: ``[protocol] default_compat``.
    compat: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    def next_sequence(self) -> int:
        """The Sequence_ID for a new platform request (spec 8.1: from 1, wraps to 1)."""
        value = self.seq_counter
        self.seq_counter = advance_counter(value, U32_MAX)
        return value

    def next_trans(self) -> int:
        """The TransID for a new platform part exchange (PD-28: u16 from 1, skips 0)."""
        value = self.trans_counter
        self.trans_counter = advance_counter(value, U16_MAX)
        return value


@dataclass(slots=True, kw_only=True)
class Request:
    """A platform-initiated request in the durable per-terminal queue (PD-34, 9.6)."""

    id: int | None = None
    serial: str
    command: int
    #: Plaintext body to send (fixed part + TLVs), built by the originator.
    body: bytes
    state: str = RequestState.QUEUED
    created_at: float
    expires_at: float
    #: Who asked, e.g. ``admin`` or ``app:<id>``; results are reported there.
    origin: str
    msg_id: str | None = None
    sequence_id: int | None = None
    attempts: int = 0
    result: int | None = None
    outcome: str | None = None
    answer_body: bytes | None = None
    updated_at: float = 0.0

    @property
    def active(self) -> bool:
        """Still waiting for the terminal (queued, or sent and unanswered)."""
        return self.state in ACTIVE_REQUEST_STATES


@dataclass(slots=True, kw_only=True)
class FileTransaction:
    """A file offered by DOWNLOAD_INFO and served by HTTP and FILE_REQ (spec 4.14)."""

    trans_id: int
    serial: str
    #: Random URL path component (at least 16 hex digits).
    token: str
    path: str
    name: str
    version: str
    size: int
    crc16: int
    crc32: int
    created_at: float
    expires_at: float
    state: str = FileState.OFFERED


@dataclass(slots=True, kw_only=True)
class LogEntry:
    """One line of the per-terminal message log (GB/Z 5.3.3 requires logging events)."""

    time: float
    serial: str | None
    direction: str
    bearer: str | None = None
    command_id: int | None = None
    sequence_id: int | None = None
    event: str
    detail: str = ""


@dataclass(slots=True, kw_only=True)
class Alarm:
    """An alarm report (TLVs 0x300B-0x300E, spec 9.7); status 1 raised, 0 cleared."""

    serial: str | None
    msisdn: str | None = None
    code: int
    type: int
    status: int
    #: TLV 0x300E as received (the code of the alarm being cleared).
    cleared_code: str | None = None
    time: float
    #: The serial in the message header (10.4.6: kept for unattributed alarms).
    header_serial: str | None = None


#: Application permissions of spec 2.6.
APP_PERMISSIONS = frozenset({"connectivity", "remote_control_all"})


@dataclass(slots=True, kw_only=True)
class Application:
    """An M2M application system (application spec 7.1, 7.2, 2.6).

    ``app_id`` is the user name; ``ec_code`` the EC code terminals address it by
    (TLV 0x4014), the app id unless provisioned otherwise. The Base Key rotates to
    ``next_base_key`` for logins from ``next_base_key_from`` (7.2).
    """

    app_id: str
    password: str = field(repr=False)
    ec_code: str
    cipher: str = "legacy"
    base_key: str = field(repr=False)
    base_key_expiry: int | None = None
    next_base_key: str | None = field(default=None, repr=False)
    next_base_key_from: int | None = None
    next_base_key_expiry: int | None = None
    callback_url: str | None = None
    terminals: set[str] = field(default_factory=set)
    permissions: set[str] = field(default_factory=set)
    require_session: bool = False
    enabled: bool = True
    #: Session timestamps only grow (application spec 6.5.1).
    last_session_timestamp: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0


class NotificationState(StrEnum):
    """An undelivered notification: being offered, or kept for ``FetchMessages`` (4.7).

    ``unencodable``: the long connection cannot carry it; it is never offered again
    (not even after a new APP_LOGIN) and waits for ``FetchMessages`` like a kept one.
    """

    PENDING = "pending"
    KEPT = "kept"
    UNENCODABLE = "unencodable"


@dataclass(slots=True, kw_only=True)
class AppNotification:
    """One entry of an application's durable outbox; ``id`` is its ``notifyId`` (AD-24).

    ``body`` is the notification element (``DeliverData``...) as XML: the one
    representation both bindings decode. A delivered notification is deleted.
    """

    id: int | None = None
    app_id: str
    kind: str
    body: bytes
    state: str = NotificationState.PENDING
    attempts: int = 0
    next_attempt: float = 0.0
    leased_until: float | None = None
    created_at: float
    updated_at: float = 0.0


@dataclass(slots=True, kw_only=True)
class AppMessage:
    """An application request that reaches a terminal; ``id`` is its ``msgId`` (2.1, 2.7).

    ``state`` is a message state name of 2.7 (``QUEUED``...); the terminal request
    carries ``msg_id = str(id)`` and origin ``app:<app_id>``.
    """

    id: int | None = None
    app_id: str
    operation: str
    serial: str
    request_id: int | None = None
    biz_seq: str | None = None
    need_ack: bool = True
    state: str = "QUEUED"
    op_result: int | None = None
    terminal_result: int | None = None
    created_at: float
    updated_at: float = 0.0

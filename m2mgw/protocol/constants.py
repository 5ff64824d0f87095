"""Command IDs, security flags, result and reason codes (spec sections 4.1, 5, 6.1)."""

from __future__ import annotations

from enum import IntEnum, IntFlag

HEADER_SIZE = 28
MAX_LENGTH = 65535
DIGEST_TLV_SIZE = 20
SERIAL_SIZE = 16
ACK_BIT = 0x8000

DEFAULT_ACCEPTED_VERSIONS: tuple[int, ...] = (0x0300, 0x0301)


class Command(IntEnum):
    """Request Command_IDs; an answer is ``command | ACK_BIT`` (spec 4.1)."""

    LOGIN = 0x0001
    LOGOUT = 0x0002
    HEART_BEAT = 0x0003
    TRANSPARENT_DATA = 0x0004
    CONFIG_GET = 0x0005
    CONFIG_SET = 0x0006
    CONFIG_TRAP = 0x0007
    REGISTER = 0x0008
    CONFIG_REQ = 0x000A
    REMOTE_CTRL = 0x000B
    DOWNLOAD_INFO = 0x000C
    FILE_REQ = 0x000D
    SECURITY_CONFIG = 0x000E
    TRANSPARENT_CMD = 0x000F


KNOWN_COMMAND_IDS: frozenset[int] = frozenset(
    [int(c) for c in Command] + [int(c) | ACK_BIT for c in Command]
)


def command_name(command_id: int) -> str:
    """Human name of a Command_ID, e.g. ``LOGIN_ACK``; ``0x....`` when unknown."""
    try:
        base = Command(command_id & ~ACK_BIT)
    except ValueError:
        return f"0x{command_id:04X}"
    return base.name + ("_ACK" if command_id & ACK_BIT else "")


def is_answer(command_id: int) -> bool:
    return bool(command_id & ACK_BIT)


class Flag(IntFlag):
    """Security flag bits at header offset 10 (spec 6.1, PD-03)."""

    NONE = 0x00
    AUTH = 0x80
    KEY_REQUEST = 0x40
    DIGEST = 0x20
    CONTAINER = 0x10


RESERVED_FLAG_BITS = 0x0F


class LoginResult(IntEnum):
    """LOGIN_ACK result (spec 5.2, PD-12)."""

    OK = 0
    OK_SYNC = 1
    AUTH_FAILED = 2
    UNKNOWN_SERIAL = 3
    DISABLED = 4
    BAD_VERSION = 5
    BINDING_MISMATCH = 6
    EXPIRED = 7


class RegisterResult(IntEnum):
    """REGISTER_ACK result (spec 5.1, PD-13)."""

    OK_SMS = 0
    OK = 1
    RETRY_BY_SMS = 2
    NOT_PROVISIONED = 3
    ALREADY_REGISTERED = 6


class RegisterOp(IntEnum):
    """REGISTER operations (spec 4.3)."""

    NEW = 0
    PRESET_SERIAL = 1
    REBIND = 2
    PRESET_CREDENTIALS = 3
    CLEARED = 4


class LogoutReason(IntEnum):
    """LOGOUT reasons (spec 5.3, PD-15)."""

    NORMAL = 0
    POWER_OFF = 1
    COMM_FAILURE = 2
    LOCAL_CONFIG = 3
    FORCED = 4
    RECONFIGURED = 7
    EXPIRED = 8
    CREDENTIALS_CHANGED = 9
    SIM_CHANGED = 0x0A


class TransparentResult(IntEnum):
    """TRANSPARENT_DATA_ACK / TRANSPARENT_CMD_ACK result (spec 5.4, PD-14)."""

    ACCEPTED = 0
    QUEUED = 1
    UNKNOWN_DESTINATION = 2
    REJECTED = 3
    CRC_MISMATCH = 4
    ACCEPTED_LEGACY = 5


class FileStatus(IntEnum):
    """FILE_REQ_ACK status (spec 5.7, PD-36)."""

    OK = 0
    UNKNOWN_TRANSACTION = 1
    OFFSET_BEYOND_END = 2
    ERROR = 3


class FileReqStatus(IntEnum):
    """FILE_REQ status (spec 4.15, PD-36)."""

    BLOCK = 0
    COMPLETE = 2
    ABORT = 3


class ConfigResult(IntEnum):
    """CONFIG_GET/SET/REQ/TRAP_ACK and REMOTE_CTRL_ACK ret (spec 5.5)."""

    OK = 0
    ERROR = 1


class DownloadResult(IntEnum):
    """DOWNLOAD_INFO_ACK result (spec 5.6); 1 is the success."""

    ACCEPTED = 1
    UNUSABLE_URL = 4
    DOWNLOAD_FAILED = 5


class SecurityResult(IntEnum):
    """SECURITY_CONFIG_ACK ret (spec 5.8)."""

    OK = 0
    ERROR = 2


class SecurityOp(IntEnum):
    """SECURITY_CONFIG operations (spec 4.13)."""

    SET = 0
    READ = 1
    READ_DIGEST = 2
    REPORT = 4
    RENEW = 6


class RemoteControl(IntEnum):
    """REMOTE_CTRL codes (spec 3.6.1)."""

    SUSPEND = 0x00
    RESUME = 0x01
    REBOOT = 0x02
    REQUEST_LOGIN = 0x03
    REPORT_STATISTICS = 0x04
    RESET_STATISTICS = 0x05
    REPORT_MONITORING = 0x06
    UPLOAD_DATA = 0x07
    REPORT_COMM_SETTINGS = 0x08
    PLATFORM_APN = 0x09
    FACTORY_RESET = 0x0A
    REPORT_SYNC_TAGS = 0x0B
    APPLICATION_APN = 0x0C
    RELOGIN_ENCRYPTED = 0x0D


class ConnectMode(IntEnum):
    """TLV 0x4002 connection modes (spec 3.6.2)."""

    UDP_SHORT = 0
    UDP_LONG = 1
    TCP_SHORT = 2
    TCP_LONG = 3
    SMS = 4


# Generic error result per request command for unparseable bodies (spec 4.2 rule 4).
GENERIC_ERROR_RESULT: dict[int, int] = {
    Command.CONFIG_TRAP: 1,
    Command.CONFIG_REQ: 1,
    Command.SECURITY_CONFIG: 2,
    Command.TRANSPARENT_DATA: 3,
    Command.TRANSPARENT_CMD: 3,
    Command.FILE_REQ: 3,
}


# The result table of each request's answer (spec 5), for people reading results.
RESULT_CODES: dict[int, type[IntEnum]] = {
    Command.REGISTER: RegisterResult,
    Command.LOGIN: LoginResult,
    Command.TRANSPARENT_DATA: TransparentResult,
    Command.TRANSPARENT_CMD: TransparentResult,
    Command.CONFIG_GET: ConfigResult,
    Command.CONFIG_SET: ConfigResult,
    Command.CONFIG_REQ: ConfigResult,
    Command.CONFIG_TRAP: ConfigResult,
    Command.REMOTE_CTRL: ConfigResult,
    Command.DOWNLOAD_INFO: DownloadResult,
    Command.FILE_REQ: FileStatus,
    Command.SECURITY_CONFIG: SecurityResult,
}


def code_name(codes: type[IntEnum], code: int) -> str:
    """The name of ``code`` in ``codes``; ``reserved`` for a code the table leaves open."""
    try:
        return codes(code).name
    except ValueError:
        return "reserved"


def code_label(codes: type[IntEnum], code: int) -> str:
    """``2 (AUTH_FAILED)``: a code with its name, the one way tools print codes."""
    return f"{code} ({code_name(codes, code)})"


def result_label(command_id: int, code: int) -> str:
    """The result of the answer to ``command_id`` (request or ACK ID) with its name."""
    codes = RESULT_CODES.get(command_id & ~ACK_BIT)
    return str(code) if codes is None else code_label(codes, code)

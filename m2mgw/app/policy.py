"""What applications may do and see (spec 2.5-2.7, 3.2): pure rules, no I/O.

Which tags an application reads and writes, which remote-control codes it sends,
the bounds of its requests, which terminals it sees, and how a terminal request's
state reads as an operation's outcome. Both bindings and the outbox apply the same
rules, so they live here once.
"""

from __future__ import annotations

from collections.abc import Iterable

from m2mgw.app import operations as ops
from m2mgw.app.longconn import embeddable
from m2mgw.core.model import Application, Request, RequestState, Terminal, TerminalState
from m2mgw.protocol import messages as m
from m2mgw.protocol import tags
from m2mgw.protocol.constants import ACK_BIT, Command
from m2mgw.protocol.errors import ProtocolError

R = ops.ResultCode
#: The origin of an application's terminal requests is this prefix and its app id.
ORIGIN_PREFIX = "app:"
MIN_TTL, MAX_TTL = 60, 604_800
#: Seconds a bizSeq detects a duplicate downlink (AD-14); the registry keeps the
#: application messages at least this long (D-204).
BIZ_SEQ_WINDOW = 86_400.0
MAX_CONFIG_TAGS = 64
MAX_STATUS_IDS = 100
MAX_FETCH = 500

#: Tags that change how the terminal reaches the platform: SetConfig needs the
#: ``connectivity`` permission (2.6).
CONNECTIVITY_TAGS = frozenset({
    tags.APN, tags.SMS_SPECIAL_NUMBER, tags.PLATFORM_URL, tags.PLATFORM_IP,
    tags.PLATFORM_PORT, tags.SYNC_LIST, tags.CONNECT_MODE,
})
_STAT_CONTROLS = frozenset({0x2001, 0x2002, 0x2003, 0x2005, 0x2011, 0x2012, 0x2015, 0x2016,
                            0x2019, 0x201A})
#: Remote-control codes every application may send, and those that need the
#: ``remote_control_all`` permission (2.6).
REMOTE_CODES = frozenset(range(0, 9)) | {0x0B}
REMOTE_CODES_ALL = frozenset({0x09, 0x0A, 0x0C, 0x0D})

#: A terminal's state as QueryTerminalStatus tells it (3.2.9).
STATES = {
    TerminalState.UNREGISTERED: "UNREGISTERED",
    TerminalState.REGISTERED: "REGISTERED",
    TerminalState.LOGGED_IN: "ONLINE",
    TerminalState.LOGGED_OUT: "LOGGED_OUT",
    TerminalState.OFFLINE: "OFFLINE",
}
#: The state changes NotifyTerminalState reports (3.3.5).
EVENTS = {
    TerminalState.REGISTERED: "REGISTERED",
    TerminalState.LOGGED_IN: "LOGGED_IN",
    TerminalState.LOGGED_OUT: "LOGGED_OUT",
    TerminalState.OFFLINE: "OFFLINE",
}


def refused_read(tag: int) -> bool:
    """Security and reserved tags are never read by applications (2.6, AD-17)."""
    return 0xE000 <= tag <= 0xE0FF or tag in tags.APP_RESERVED_RANGE


def refused_write(tag: int, permissions: set[str]) -> bool:
    """The SetConfig table of 2.6."""
    if tag in CONNECTIVITY_TAGS:
        return "connectivity" not in permissions
    return not (
        0x0001 <= tag <= 0x01FF or tag in _STAT_CONTROLS or 0x4003 <= tag <= 0x4006
        or tags.is_vendor(tag)
    )


def remote_codes(permissions: set[str]) -> frozenset[int]:
    """The remote-control codes an application with ``permissions`` may send (2.6)."""
    return REMOTE_CODES | (REMOTE_CODES_ALL if "remote_control_all" in permissions
                           else frozenset())


def visible(app: Application, terminal: Terminal) -> bool:
    """Whether ``terminal`` is bound to ``app`` (2.6): listed, by EC code, or by default."""
    return (terminal.serial in app.terminals or app.ec_code in terminal.apps
            or terminal.default_app == app.ec_code)


def bearer_name(kind: str | None) -> str:
    """A bearer kind as the application interface names it; TCP when unknown."""
    name = (kind or "").upper()
    return name if name in ("TCP", "UDP", "SMS") else "TCP"


def message_outcome(request: Request) -> tuple[str, int, int | None]:
    """A terminal request's state as (message state, opResult, terminalResult) (2.5, 2.7)."""
    if request.state == RequestState.EXPIRED:
        return "EXPIRED", R.TERMINAL_OFFLINE, None
    if request.state == RequestState.CANCELLED:
        return "FAILED", R.TERMINAL_UNKNOWN, None
    if request.state == RequestState.SUCCEEDED:
        return ("APPLIED" if request.outcome == "applied" else "ACKED"), R.OK, request.result
    if request.state == RequestState.FAILED:
        if request.result is None:
            return "FAILED", R.TERMINAL_TIMEOUT, None
        return "FAILED", R.TERMINAL_ERROR, request.result
    return ("SENT" if request.state == RequestState.SENT else "QUEUED"), R.OK, None


def carried_items(
    cls: type, tlvs: Iterable[tuple[int, bytes]]
) -> tuple[list[ops.TlvItem], list[int]]:
    """Terminal TLVs as the items of a ``cls`` body, and the tags left out.

    Left out are the tags the long connection cannot embed there (the application
    family, the body's own tags such as ``0x4013``): for both bindings alike, so that a
    notification is the same whichever way it travels (D-251).
    """
    items: list[ops.TlvItem] = []
    left_out: list[int] = []
    for tag, value in tlvs:
        if embeddable(cls, tag):
            items.append(ops.TlvItem(tag=tag, value=value))
        else:
            left_out.append(tag)
    return items, left_out


def answer_items(request: Request) -> tuple[list[ops.TlvItem], list[int]]:
    """Values (ret 0) or failed tags (any other ret) of a CONFIG_GET/SET or REMOTE_CTRL answer."""
    if request.answer_body is None or request.command not in (
        Command.CONFIG_GET, Command.CONFIG_SET, Command.REMOTE_CTRL
    ):
        return [], []
    ack_type = m.MESSAGE_TYPES[request.command | ACK_BIT]
    try:
        ack = ack_type.decode_body(request.answer_body)
    except ProtocolError:
        return [], []
    if getattr(ack, "ret", 0) == 0 and request.command == Command.CONFIG_GET:
        return carried_items(ops.NotifyResult, ((t.tag, t.raw) for t in ack.tlvs))[0], []
    if getattr(ack, "ret", 0) != 0:
        return [], [t.tag for t in ack.tlvs]
    return [], []

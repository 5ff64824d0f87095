"""One received message being handled, and the small pure helpers every phase uses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import cast

from m2mgw.core.model import Terminal
from m2mgw.core.refusals import TerminalKeys
from m2mgw.core.session import Bearer, Session
from m2mgw.protocol import messages as m
from m2mgw.protocol.codec import Frame
from m2mgw.protocol.constants import ACK_BIT, GENERIC_ERROR_RESULT
from m2mgw.protocol.dupcache import CacheKey
from m2mgw.protocol.errors import BodyError
from m2mgw.protocol.header import Header
from m2mgw.protocol.security import DigestKey
from m2mgw.protocol.tlv import decode_tlvs


@dataclass(slots=True)
class Exchange:
    """One received request being answered."""

    frame: Frame
    bearer: Bearer
    now: float
    terminal: Terminal | None = None
    session: Session | None = None
    #: Key and timestamp to sign the answer with; None: unsigned (PD-05).
    key: DigestKey | None = None
    timestamp: int = 0
    cache_key: CacheKey | None = None
    #: The decoded request, logged in one row together with its answer.
    request: m.Message | None = None
    #: The request passed its digest, MSISDN or bound-connection check; and whether
    #: it was refused. A refused request that was not authenticated writes no
    #: message-log row: its refusal is counted instead (D-303).
    authenticated: bool = False
    refused: bool = False
    #: The uplink sink wrote the exchange's message-log row (its ``uplink`` row, with
    #: the data): the answer writes none of its own (D-391).
    logged: bool = False

    @property
    def header(self) -> Header:
        return self.frame.header

    @property
    def sms(self) -> bool:
        return self.bearer.kind == "sms"

    @property
    def log_keys(self) -> TerminalKeys:
        """The terminal keys of a log event about this exchange (issue #8)."""
        return terminal_keys(self.header, self.bearer)


def terminal_keys(header: Header, bearer: Bearer) -> TerminalKeys:
    """The keys every log event about a terminal's message carries (issue #8)."""
    return {
        "serial": header.serial,
        "command": header.command_name,
        "sequence_id": header.sequence_id,
        "bearer": bearer.kind,
        "peer": bearer.address,
    }


def error_answer(command: int) -> m.Message | None:
    """The generic error answer of spec 4.2 rule 4; None for commands without one."""
    result = GENERIC_ERROR_RESULT.get(command)
    if result is None:
        return None
    cls = m.MESSAGE_TYPES[command | ACK_BIT]
    if cls is m.FileReqAck:
        return m.FileReqAck(0, result, 0, 0)
    # The other answers with a generic error result have it as their one field.
    return cast(Callable[[int], m.Message], cls)(result)


def single_tlv(body: bytes, tag: int) -> bytes:
    tlvs = decode_tlvs(body)
    if len(tlvs) != 1 or tlvs[0].tag != tag:
        raise BodyError(f"body is not a single 0x{tag:04X} container")
    return tlvs[0].raw


def summary(message: m.Message) -> str:
    """A message as its message-log row shows it: the fixed fields as plain values (a
    result by its name, a block of bytes by its size), then the names of its first
    TLVs (D-391)."""
    fields = ", ".join([f"{k}={_plain(v)}" for k, v in message.fields_dict().items()])
    tlvs = message.tlvs
    if not tlvs:
        return fields
    return f"{fields}; {', '.join([t.name for t in tlvs[:8]])}"


def _plain(value: object) -> object:
    """A field's value for the log: an enum's repr costs a microsecond and says less."""
    if type(value) is int or value is None:
        return value
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    return value

"""What the engine tells the rest of the platform, and the one thing it asks of it.

The engine publishes an event where something happened that the router (or any
other subscriber) acts on; it never calls the router. Only terminal-to-terminal
data needs an answer back, a result for the terminal's ACK: that is the
:class:`PlatformRequests` protocol the router implements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred

from m2mgw.core.model import CredentialSet, Terminal
from m2mgw.core.session import Bearer
from m2mgw.protocol import messages as m
from m2mgw.protocol.fragment import FragmentPart
from m2mgw.protocol.header import Header
from m2mgw.protocol.tlv import Tlv


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """A LOGIN began a session (4.4): queued requests may follow."""

    terminal: Terminal


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """A session ended or was replaced: the request in flight fails (9.5)."""

    terminal: Terminal
    why: str


@dataclass(frozen=True, slots=True)
class Reconfiguring:
    """The terminal logged out with reason 7 to apply a new configuration (4.10)."""

    terminal: Terminal


@dataclass(frozen=True, slots=True)
class ReadyForRequests:
    """The session can carry platform requests now: synced, or its path is back."""

    terminal: Terminal


@dataclass(frozen=True, slots=True)
class SyncTrapMissing:
    """No CONFIG_TRAP within ``sync_trap_wait`` after LOGIN_ACK result 1 (PD-29)."""

    terminal: Terminal


@dataclass(frozen=True, slots=True)
class VersionReported:
    """A trap's 0x100C: the software version the terminal runs (4.14)."""

    terminal: Terminal
    version: str


@dataclass(frozen=True, slots=True)
class ExecutionReported:
    """A trap's 0x4010: the outcome of an asynchronous request (4.9)."""

    terminal: Terminal
    sequence_id: int
    result: int


@dataclass(frozen=True, slots=True)
class ConfigReported:
    """The values a CONFIG_REQ_ACK gave the terminal, for the 0x4017 check (6.5)."""

    terminal: Terminal
    sequence_id: int
    tlvs: list[Tlv]


@dataclass(frozen=True, slots=True)
class CredentialsDue:
    """A credential set is to be delivered with SECURITY_CONFIG op 0 (4.3, 6.3.5)."""

    terminal: Terminal
    credentials: CredentialSet


@dataclass(frozen=True, slots=True)
class LogoutDue:
    """The platform logs the terminal out on ``bearer`` (4.5, 9.4)."""

    terminal: Terminal
    reason: int
    bearer: Bearer


@dataclass(frozen=True, slots=True)
class AnswerReceived:
    """An authenticated answer to a platform request; ``message`` None if unparseable."""

    terminal: Terminal
    header: Header
    message: m.Message | None
    bearer: Bearer


@dataclass(frozen=True, slots=True)
class PartRequested:
    """The terminal asks for a part of a fragmented platform request (7.3)."""

    terminal: Terminal
    header: Header
    part: FragmentPart
    bearer: Bearer


@dataclass(frozen=True, slots=True)
class BearerLost:
    """A logged-in terminal's TCP connection closed (10.2, 8.3)."""

    terminal: Terminal
    bearer: Bearer


Event = (
    SessionStarted
    | SessionEnded
    | Reconfiguring
    | ReadyForRequests
    | SyncTrapMissing
    | VersionReported
    | ExecutionReported
    | ConfigReported
    | CredentialsDue
    | LogoutDue
    | AnswerReceived
    | PartRequested
    | BearerLost
)


class EngineEvents:
    """Subscribers are called in order, synchronously, with each event."""

    def __init__(self) -> None:
        self._subscribers: list[Callable[[Event], None]] = []

    def subscribe(self, subscriber: Callable[[Event], None]) -> None:
        self._subscribers.append(subscriber)

    def publish(self, event: Event) -> None:
        for subscriber in self._subscribers:
            subscriber(event)


class PlatformRequests(Protocol):
    """What the engine asks of the router: data for another terminal, and whether an
    SMS path exists (the router's ``sms_bearer``, None without a modem)."""

    sms_bearer: Callable[[Terminal], Bearer | None] | None

    def relay(
        self, source: Terminal, target: Terminal, msg: m.TransparentData | m.TransparentCmd
    ) -> int | Deferred[int]: ...

"""The events the terminal role reports: answers, platform requests, session changes."""

from __future__ import annotations

from dataclasses import dataclass

from m2mgw.protocol import messages as m
from m2mgw.protocol.constants import command_name
from m2mgw.protocol.terminal._downloads import DownloadInfoOffer
from m2mgw.protocol.terminal._identity import Credentials


@dataclass(frozen=True, slots=True)
class Registered:
    """REGISTER_ACK; ``serial`` is set for results 0, 1 and 6 (9 is read as 1, PD-13)."""

    result: int
    serial: str | None
    verified: bool


@dataclass(frozen=True, slots=True)
class LoggedIn:
    """A successful LOGIN_ACK (result 0 or 1; 8 is read as 0, PD-12)."""

    result: int
    timestamp: int
    session_key: str | None
    session_key_expiry: int | None = None


@dataclass(frozen=True, slots=True)
class LoginFailed:
    result: int
    verified: bool


@dataclass(frozen=True, slots=True)
class LoggedOut:
    """The session ended; ``by_platform`` when the platform sent the LOGOUT."""

    reason: int
    by_platform: bool


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to one of the terminal's other requests."""

    command: int
    sequence_id: int
    message: m.Message

    @property
    def name(self) -> str:
        return command_name(self.command)


@dataclass(frozen=True, slots=True)
class PlatformRequest:
    """A platform request that was answered with ``result`` (already queued)."""

    message: m.Message
    sequence_id: int
    result: int

    @property
    def name(self) -> str:
        return command_name(self.message.COMMAND)


@dataclass(frozen=True, slots=True)
class CredentialsChanged:
    """A SECURITY_CONFIG op 0 was applied: later digests use the new set."""

    credentials: Credentials


@dataclass(frozen=True, slots=True)
class DownloadOffered:
    """DOWNLOAD_INFO accepted; the driver fetches by HTTP unless FILE_REQ is in use."""

    offer: DownloadInfoOffer


@dataclass(frozen=True, slots=True)
class FileDownloaded:
    """A FILE_REQ transfer ended; ``ok`` when the whole file's CRCs matched."""

    trans_id: int
    ok: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class RequestTimedOut:
    command: int
    sequence_id: int


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """A request ended without its normal answer (e.g. a part exchange aborted)."""

    command: int
    sequence_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Discarded:
    """A received message was dropped (header, digest or matching failure)."""

    reason: str
    command: int | None = None
    sequence_id: int | None = None


@dataclass(frozen=True, slots=True)
class ProtocolErrorEvent:
    """A message was accepted but part of it could not be used (e.g. a bad ``E040``)."""

    reason: str


Event = (
    Registered | LoggedIn | LoginFailed | LoggedOut | Answer | PlatformRequest
    | CredentialsChanged | DownloadOffered | FileDownloaded | RequestTimedOut
    | RequestFailed | Discarded | ProtocolErrorEvent
)  # fmt: skip

"""The terminal role of the protocol: what a WMMP terminal does on the wire (spec 4-10).

A sans-I/O machine, :class:`TerminalClient`, used by the ``m2mgw-terminal`` simulator,
the tests (a reference terminal against the gateway) and the benchmarks. Its modules,
by job: ``_identity`` (what the terminal knows and its local configuration, the sync
CRCs), ``_habits`` (deployed stacks' departures, 1.6), ``_credentials`` (digest keys,
ciphers, SECURITY_CONFIG's sets), ``_downloads`` (DOWNLOAD_INFO and FILE_REQ),
``_writer`` (numbering, sealing, fragmenting and signing), ``_events`` and ``_role``
(the machine). Import from this package, not from those modules.
"""

from m2mgw.protocol.terminal._credentials import TerminalStateError
from m2mgw.protocol.terminal._downloads import (
    DownloadInfoOffer,
    parse_download_url,
    verify_download,
)
from m2mgw.protocol.terminal._events import (
    Answer,
    CredentialsChanged,
    Discarded,
    DownloadOffered,
    Event,
    FileDownloaded,
    LoggedIn,
    LoggedOut,
    LoginFailed,
    PlatformRequest,
    ProtocolErrorEvent,
    Registered,
    RequestFailed,
    RequestTimedOut,
)
from m2mgw.protocol.terminal._habits import HABITS, StackHabits
from m2mgw.protocol.terminal._identity import Credentials, TerminalIdentity, sync_crc
from m2mgw.protocol.terminal._role import TerminalClient

__all__ = [
    "HABITS",
    "Answer",
    "Credentials",
    "CredentialsChanged",
    "Discarded",
    "DownloadInfoOffer",
    "DownloadOffered",
    "Event",
    "FileDownloaded",
    "LoggedIn",
    "LoggedOut",
    "LoginFailed",
    "PlatformRequest",
    "ProtocolErrorEvent",
    "Registered",
    "RequestFailed",
    "RequestTimedOut",
    "StackHabits",
    "TerminalClient",
    "TerminalIdentity",
    "TerminalStateError",
    "parse_download_url",
    "sync_crc",
    "verify_download",
]

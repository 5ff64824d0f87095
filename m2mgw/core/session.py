"""Bearers and the runtime state of a logical connection (spec 9.1, 9.6, 10).

A :class:`Bearer` is where a message came from and where its answer goes: a TCP
connection, a UDP source address or an MSISDN. Transports implement it; the
engine never touches sockets. A TCP connection may also have ``on_bound()``: the
session table calls it when it first binds a session to the connection (D-290).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from m2mgw.core.model import CredentialSet, Terminal
from m2mgw.protocol.replay import ReplayWindow
from m2mgw.protocol.security import Cipher, DigestKey, make_cipher


class Bearer(Protocol):
    """One path to a terminal; ``kind`` is ``tcp``, ``udp`` or ``sms``."""

    kind: str
    #: ``host:port`` for IP bearers, the normalised MSISDN for SMS.
    address: str
    #: Source IP (PD-25); the MSISDN for SMS.
    host: str

    @property
    def is_open(self) -> bool: ...

    def send(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def same_path(self, other: Bearer) -> bool:
        """Whether ``other`` reaches the same peer (same connection or address)."""
        ...


def digest_keys(
    terminal: Terminal, credentials: CredentialSet | None = None
) -> tuple[DigestKey, DigestKey]:
    """(uplink, downlink) digest keys of the terminal's binding and a credential set."""
    creds = credentials or terminal.current
    if creds is None or terminal.imsi is None:
        raise LookupError(f"terminal {terminal.serial} has no credentials or binding")
    up = DigestKey.make(terminal.imei, terminal.imsi, creds.uplink_password)
    down = DigestKey.make(terminal.imei, terminal.imsi, creds.downlink_password)
    return up, down


@dataclass(slots=True, eq=False)
class Session:
    """A logical connection: from an accepted LOGIN to LOGOUT or offline (9.1)."""

    serial: str
    timestamp: int
    up: DigestKey
    down: DigestKey
    version: int
    interval: float
    last_valid: float
    cipher: Cipher | None = None
    #: The bearer of the last authenticated message: where platform requests go.
    bearer: Bearer | None = None
    #: The TCP connection bound to the session (10.2), if any.
    tcp: Bearer | None = None
    #: Source IP of the last authenticated IP message (PD-25).
    auth_host: str | None = None
    #: Set once the first CONFIG_TRAP after login was answered, or sync_trap_wait passed.
    synced: bool = False
    sync_deadline: float | None = None
    #: The LOGIN_ACK result that opened the session: 1 asks for the sync trap (PD-29).
    login_result: int = 0
    #: A platform LOGOUT is under way: release at this time at the latest.
    release_at: float | None = None
    release_reason: int | None = None
    #: The signed requests and answers accepted in this session (D-292, D-295).
    requests: ReplayWindow = field(default_factory=ReplayWindow)
    answers: ReplayWindow = field(default_factory=ReplayWindow)

    @classmethod
    def start(
        cls, terminal: Terminal, timestamp: int, version: int, interval: float, now: float
    ) -> Session:
        up, down = digest_keys(terminal)
        cipher = None
        if terminal.session_key and terminal.cipher != "none":
            cipher = make_cipher(terminal.cipher, terminal.session_key)
        return cls(
            serial=terminal.serial or "",
            timestamp=timestamp,
            up=up,
            down=down,
            version=version,
            interval=interval,
            last_valid=now,
            cipher=cipher,
        )

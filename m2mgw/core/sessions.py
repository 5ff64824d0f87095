"""The runtime record of each terminal, and the table that owns them (spec 9, 10.2).

Everything the platform remembers about a terminal between two messages and that
need not survive a restart lives in one :class:`Runtime` record: the logical
connection, a LOGIN waiting for proof, fragmented answers being handed out, the
credential re-delivery clock, the outstanding platform request and its timers, and
the router's correlation memory. The :class:`SessionTable` keeps one record per
serial, drops it once nothing is left in it, and owns the operations on it: bind a
bearer, reach the terminal, begin and end its session, restore it after a restart,
and the deadlines of the offline and credential checks.

What is persisted lives on the registry's :class:`~m2mgw.core.model.Terminal`:
``Terminal.session_timestamp`` is the copy of :attr:`Session.timestamp` that a
restart restores sessions from, written only when a session begins or ends.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar, overload

from twisted.internet.interfaces import IDelayedCall

from m2mgw.core.model import CredentialSet, Request, Terminal
from m2mgw.core.session import Bearer, Session
from m2mgw.protocol.checksum import crc32
from m2mgw.protocol.fragment import FragmentSender
from m2mgw.protocol.tlv import Tlv, encode_tlvs

_T = TypeVar("_T")


@dataclass(slots=True)
class Traffic:
    """The router's memory of a terminal's requests, across its sessions."""

    #: Sequence_ID of requests whose outcome comes in a later 0x4010 (PD-35).
    awaiting_report: dict[int, int] = field(default_factory=dict)
    #: The TLVs last applied by CONFIG_SET / CONFIG_REQ_ACK, for the 0x4017 check.
    applied: dict[int, bytes] = field(default_factory=dict)
    #: DOWNLOAD_INFO requests accepted by the terminal, by offered version (4.14).
    awaiting_version: dict[str, int] = field(default_factory=dict)
    #: A LOGOUT reason 7 was received; the next LOGIN confirms pending CONFIG_SETs.
    reconfigured: bool = False
    #: Sequence_ID of a platform LOGOUT in flight.
    logout_sequence: int | None = None
    #: Sequence_ID of the last SMS wake-up (9.6); when it was sent is on the record.
    wakeup_sequence: int | None = None

    def config_crc_matches(self, crc: int) -> bool:
        """The 0x4017 check (6.5): CRC32 over the TLVs last applied, if any."""
        if not self.applied:
            return True
        stream = encode_tlvs(Tlv(tag, raw) for tag, raw in sorted(self.applied.items()))
        return crc32(stream) == crc

    def idle(self) -> bool:
        return not (
            self.awaiting_report
            or self.applied
            or self.awaiting_version
            or self.reconfigured
            or self.logout_sequence is not None
            or self.wakeup_sequence is not None
        )


@dataclass(slots=True, eq=False)
class Outstanding:
    """The one platform request in flight to a terminal (window 1, 8.3)."""

    request: Request
    frames: list[bytes]
    bearer: Bearer
    sends: int = 1
    timer: IDelayedCall | None = None
    sender: FragmentSender | None = None


@dataclass(slots=True)
class AnswerParts:
    """A fragmented answer being handed out part by part (7.3)."""

    sender: FragmentSender
    command_id: int
    version: int
    flag: int


@dataclass(slots=True)
class Opening:
    """An accepted LOGIN's session, and what it gives the terminal's record once begun;
    for a LOGIN seen before, kept with its digest and answer until a message signed
    under its timestamp begins it (D-299)."""

    session: Session
    software_version: str
    at: float
    session_key: str | None = None
    session_key_expiry: int | None = None
    digest: bytes | None = None
    answer: bytes = b""
    #: The LOGIN made the pending credential set current: the record is saved whole.
    credentials_committed: bool = False


@dataclass(slots=True, eq=False)
class Runtime:
    """Everything about one terminal that lives only while the gateway runs."""

    serial: str
    session: Session | None = None
    #: A LOGIN seen before, waiting for a signed message to begin its session (D-299).
    opening: Opening | None = None
    #: Fragmented answers in progress, by the request's Command_ID (7.3).
    answer_parts: dict[int, AnswerParts] = field(default_factory=dict)
    #: The pending set the platform last queued and when: the re-delivery clock of a
    #: set the terminal has not acknowledged (``delivered_at`` is on the ACK, 6.3.5).
    credentials_sent: tuple[CredentialSet, float] | None = None
    #: The live due times of the two deadline heaps (entries that disagree are stale).
    credential_due: float | None = None
    check_due: float | None = None
    outstanding: Outstanding | None = None
    #: CONFIG_SETs acknowledged and waiting for their 0x4010, by Sequence_ID (4.10).
    confirm_timers: dict[int, IDelayedCall] = field(default_factory=dict)
    traffic: Traffic = field(default_factory=Traffic)

    def idle(self) -> bool:
        """Nothing left to remember: the record can go."""
        return (
            self.session is None
            and self.opening is None
            and not self.answer_parts
            and self.credentials_sent is None
            and self.credential_due is None
            and self.check_due is None
            and self.outstanding is None
            and not self.confirm_timers
            and self.traffic.idle()
        )


class SessionTable(Mapping[str, Session]):
    """One :class:`Runtime` per terminal; as a mapping, the live sessions by serial.

    Deadlines are kept in two heaps of (due time, serial): the session checks
    (offline, release, key expiry, sync wait, a waiting LOGIN) and credential upkeep.
    A record's live due time says which entry counts, so that moving a deadline
    later costs nothing until the old entry comes up, and only due terminals are
    looked at (issue #16).
    """

    def __init__(self) -> None:
        self._records: dict[str, Runtime] = {}
        self._live = 0
        #: TCP connection -> the serial whose session it is bound to (10.2). With
        #: ``Session.tcp`` the two directions of one binding, written only here.
        self._bound: dict[Bearer, str] = {}
        self._checks: list[tuple[float, str]] = []
        self._credential_checks: list[tuple[float, str]] = []

    # ------------------------------------------------------------------ the mapping

    def __getitem__(self, serial: str) -> Session:
        session = self.get(serial)
        if session is None:
            raise KeyError(serial)
        return session

    @overload
    def get(self, serial: str, /) -> Session | None: ...
    @overload
    def get(self, serial: str, default: _T, /) -> Session | _T: ...

    def get(self, serial: str, default: _T | None = None, /) -> Session | _T | None:
        record = self._records.get(serial)
        if record is None or record.session is None:
            return default
        return record.session

    def __contains__(self, serial: object) -> bool:
        record = self._records.get(serial) if isinstance(serial, str) else None
        return record is not None and record.session is not None

    def __iter__(self) -> Iterator[str]:
        return (serial for serial, record in self._records.items() if record.session)

    def __len__(self) -> int:
        return self._live

    # ------------------------------------------------------------------ records

    def record(self, serial: str) -> Runtime:
        """The terminal's record, made if it has none."""
        record = self._records.get(serial)
        if record is None:
            record = self._records[serial] = Runtime(serial)
        return record

    def find(self, serial: str) -> Runtime | None:
        return self._records.get(serial)

    def records(self) -> list[Runtime]:
        return list(self._records.values())

    def prune(self, serial: str) -> None:
        """Drop the record once nothing is left in it (issue #12: nothing grows)."""
        record = self._records.get(serial)
        if record is not None and record.idle():
            del self._records[serial]

    # ------------------------------------------------------------------ sessions

    def detach(self, serial: str) -> Session | None:
        """Take the terminal's session and any waiting LOGIN out, nothing else: a new
        LOGIN replaces them (4.4 step 8). The session taken, if any."""
        record = self.record(serial)
        record.opening = None
        old = record.session
        if old is not None:
            record.session = None
            self._live -= 1
        return old

    def begin(self, session: Session) -> None:
        """Make ``session`` the terminal's session."""
        record = self.record(session.serial)
        if record.session is None:
            self._live += 1
        record.session = session

    def end(self, serial: str) -> Session | None:
        """Release the session (9.4, 9.5): its connection is unbound, its fragmented
        answers are dropped; the session ended, if there was one."""
        record = self._records.get(serial)
        if record is None:
            return None
        session = record.session
        if session is not None:
            record.session = None
            self._live -= 1
            if session.tcp is not None:
                self._bound.pop(session.tcp, None)
        record.answer_parts.clear()
        self.prune(serial)
        return session

    def bind(self, session: Session, bearer: Bearer) -> None:
        """Make ``bearer`` the session's current bearer (9.6, 10.2); a TCP connection
        bound for the first time is authenticated (D-290)."""
        session.bearer = bearer
        kind = bearer.kind
        if kind == "tcp":
            previous = session.tcp
            if previous is not None and not previous.same_path(bearer):
                self._bound.pop(previous, None)
            session.tcp = bearer
            if self._bound.get(bearer) != session.serial:
                self._bound[bearer] = session.serial
                on_bound = getattr(bearer, "on_bound", None)
                if on_bound is not None:
                    on_bound()
        if kind != "sms":
            session.auth_host = bearer.host

    def bound_serial(self, bearer: Bearer) -> str | None:
        """The serial whose session a TCP connection is bound to (10.2)."""
        return self._bound.get(bearer) if bearer.kind == "tcp" else None

    def lose(self, bearer: Bearer) -> str | None:
        """A TCP connection closed: the session survives it (10.2); the serial it was
        bound to, if its session is live."""
        serial = self._bound.pop(bearer, None)
        session = self.get(serial) if serial else None
        if session is None:
            return None
        if session.tcp is bearer:
            session.tcp = None
        if session.bearer is bearer:
            session.bearer = None
        return serial

    def reachable(self, terminal: Terminal) -> Bearer | None:
        """The bearer for a platform request, in the order of spec 9.6."""
        session = self.get(terminal.serial or "")
        if session is None:
            return None
        if session.tcp is not None and session.tcp.is_open:
            return session.tcp
        bearer = session.bearer
        if bearer is not None and bearer.kind in ("udp", "sms"):
            return bearer
        return None

    # ------------------------------------------------------------------ deadlines

    def check_at(self, serial: str, at: float) -> None:
        """Look at ``serial``'s session at ``at``, unless a look is due sooner."""
        record = self.record(serial)
        if record.check_due is not None and record.check_due <= at:
            return
        record.check_due = at
        self._checks = _pushed(self._checks, at, serial, self._records, "check_due")

    def due_checks(self, now: float) -> list[Runtime]:
        """The records whose session check is due, each once; their due time cleared."""
        return _popped(self._checks, now, self._records, "check_due")

    def credentials_at(self, serial: str, at: float) -> None:
        """Look at ``serial``'s credentials at ``at``, unless a check is due sooner."""
        record = self.record(serial)
        if record.credential_due is not None and record.credential_due <= at:
            return
        record.credential_due = at
        self._credential_checks = _pushed(
            self._credential_checks, at, serial, self._records, "credential_due"
        )

    def due_credentials(self, now: float) -> list[Runtime]:
        return _popped(self._credential_checks, now, self._records, "credential_due")

    def next_deadline(self) -> float | None:
        """The earliest due time in either heap (possibly a stale one: never later)."""
        times = [heap[0][0] for heap in (self._checks, self._credential_checks) if heap]
        return min(times) if times else None


def _pushed(
    heap: list[tuple[float, str]], at: float, serial: str, records: dict[str, Runtime], slot: str
) -> list[tuple[float, str]]:
    heapq.heappush(heap, (at, serial))
    if len(heap) > 2 * len(records) + 64:
        # Rescheduling leaves stale entries behind: rebuild from the live ones.
        heap = [(due, s) for s, r in records.items() if (due := getattr(r, slot)) is not None]
        heapq.heapify(heap)
    return heap


def _popped(
    heap: list[tuple[float, str]], now: float, records: dict[str, Runtime], slot: str
) -> list[Runtime]:
    due: list[Runtime] = []
    while heap and heap[0][0] <= now:
        at, serial = heapq.heappop(heap)
        record = records.get(serial)
        if record is None or getattr(record, slot) != at:
            continue
        setattr(record, slot, None)
        due.append(record)
    return due

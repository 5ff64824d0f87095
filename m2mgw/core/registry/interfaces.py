"""The terminal registry contract: what the gateway may assume about persistence.

The design follows from the hot path. Every message needs the terminal record, so
**reads are synchronous** from an in-memory cache loaded by ``open`` (10k-100k
terminals fit in memory). **Writes update the cache at once** and are persisted in
submission order; each write returns a Deferred that fires once the change is
committed. Callers that must not lose data (a queued request, a new registration) wait
for it; hot-path writes (``touch``, ``log``) are fire-and-forget and batched.

Objects returned by reads are the live cached instances: mutate them, then ``save`` /
``update_request`` / ``update_file`` to persist. A registry belongs to one process.

The contract is split by concern into :class:`typing.Protocol` classes, so that a
component can name the part it uses; :class:`Registry` is all of them, what the
gateway builds and passes around.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from twisted.internet.defer import Deferred

from m2mgw.core.model import (
    Alarm,
    Application,
    AppMessage,
    AppNotification,
    FileTransaction,
    LogEntry,
    Request,
    Terminal,
)
from m2mgw.core.stats import Histogram


class RegistryError(Exception):
    """A registry operation is invalid (duplicate, unknown terminal, schema too new...)."""


#: The tables :meth:`Retention.prune` deletes history from (D-201).
HISTORY_TABLES = (
    "messages", "statistics", "alarm_history", "requests", "app_messages",
    "file_transactions", "sms_outbox",
)

#: Called with True when the registry's writer falls behind, False when it caught up.
PressureObserver = Callable[[bool], None]


class SmsState(StrEnum):
    """Life of an outgoing SMS message: pending until every segment left, or failed."""

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"


@dataclass(slots=True, kw_only=True)
class OutgoingSms:
    """A WMMP message waiting in the durable SMS outbox (spec 10.4).

    It is kept whole: the sender splits it (10.4.3) and records the reference and the
    segments the modem confirmed, so a retry resends only the rest under that reference.
    """

    id: int | None = None
    #: Destination MSISDN, normalised (PD-30).
    msisdn: str
    #: Destination application port: the terminal's ``sms_terminal_port``.
    port: int
    message: bytes
    state: str = SmsState.PENDING
    reference: int | None = None
    parts_sent: int = 0
    attempts: int = 0
    #: Attempts after which the modem could not say whether the PDU went out.
    uncertain: int = 0
    error: str | None = None
    created_at: float
    updated_at: float = 0.0


@dataclass(frozen=True)
class RegistryIdentity:
    """Which database a registry is: what the admin API reports and the CLI compares.

    ``location`` is where it lives (the absolute path of a SQLite file); the
    ``instance_id`` is created once in the database, so it tells a copy from the
    original only together with the location (D-171).
    """

    backend: str
    location: str
    instance_id: str

    def describe(self) -> dict[str, str]:
        """The ``GET /registry`` answer."""
        return {"backend": self.backend, "path": self.location, "instance_id": self.instance_id}


class Lifecycle(Protocol):
    """Opening, closing, and which database this is."""

    def open(self) -> Deferred[None]:
        """Apply pending schema migrations and load the cache; fails with RegistryError
        when the database is newer than the code."""

    def close(self) -> Deferred[None]:
        """Flush batched writes, wait for every submitted write, then close."""

    def identity(self) -> RegistryIdentity:
        """This registry's backend, location and stored instance id (``GET /registry``);
        RegistryError when it is not open."""


class Backpressure(Protocol):
    """The writer's backlog, and telling the gateway when to stop reading input."""

    @property
    def commit_latency(self) -> Histogram:
        """Seconds from a write's submission to its commit (the writer's backlog
        included)."""

    @property
    def pending_writes(self) -> int:
        """Write transactions submitted and not yet committed."""

    @property
    def pending_rows(self) -> int:
        """Rows of those transactions."""

    @property
    def saturated(self) -> bool:
        """True from a high watermark until both counts are back at their low ones."""

    def add_pressure_observer(self, observer: PressureObserver) -> None:
        """Call ``observer(True)`` when uncommitted writes pass the high watermark and
        ``observer(False)`` once they are back under the low one, so the gateway can
        stop reading terminal input instead of letting queued writes grow; called in
        the reactor thread."""

    def remove_pressure_observer(self, observer: PressureObserver) -> None:
        """Stop calling ``observer``."""


class Retention(Protocol):
    """Deleting old history (D-200..D-209)."""

    def prune(self, table: str, before: float, limit: int) -> Deferred[int]:
        """Delete at most ``limit`` of the oldest history rows of ``table`` older than
        ``before`` (a time in seconds), in one transaction in order with the other writes.

        History (D-201): every row of ``messages``, ``statistics`` and
        ``alarm_history`` (aged by ``time``); ``requests`` and ``app_messages`` once
        finished and ``sms_outbox`` rows once sent or failed (aged by their last
        update); ``file_transactions`` (aged by their expiry). Live state (active
        requests, pending SMS, notifications, alarm state, terminals, counters) is never
        deleted. Cached copies of deleted rows are dropped. Raises RegistryError
        synchronously for any other table. Fires with the rows deleted; fewer than
        ``limit`` means no older history was left when the transaction ran.
        """


class Terminals(Protocol):
    """Terminal records and their stored configuration."""

    def get(self, serial: str) -> Terminal | None:
        """The terminal with this 16-character serial, or None."""

    def by_imei(self, imei: str) -> Terminal | None:
        """The terminal with this IMEI, or None."""

    def by_msisdn(self, msisdn: str) -> Terminal | None:
        """The terminal with this MSISDN (compared normalised, PD-30), or None."""

    def terminals(self) -> list[Terminal]:
        """All terminals, as a new list."""

    def add(self, terminal: Terminal) -> Deferred[Terminal]:
        """Store a new terminal and assign its ``id``; fires once committed.

        Raises RegistryError synchronously when the IMEI, serial or MSISDN is taken.
        """

    def save(self, terminal: Terminal) -> Deferred[None]:
        """Persist every field of ``terminal`` and re-index serial/IMEI/MSISDN changes.

        Raises RegistryError synchronously on an unknown terminal or a taken key.
        """

    def save_counters(self, terminal: Terminal) -> Deferred[None]:
        """Persist ``terminal``'s Sequence_ID and TransID counters (and ``updated_at``)
        only: what sending a platform request changes (D-405).

        Raises RegistryError synchronously on an unknown terminal.
        """

    def save_session(self, terminal: Terminal) -> None:
        """Persist the session columns of ``terminal`` (state, session timestamps and
        key, protocol and software version, last_seen/bearer/address) with the next
        flush, coalesced as ``touch`` is: what a LOGIN changes (D-392).

        A ``save`` meanwhile writes them too; a durable write (``log_committed``, the
        group commit of stored uplinks) commits them in its transaction, so nothing
        acknowledged durably can be on disk without the session it came in.
        Raises RegistryError synchronously on an unknown terminal.
        """

    def touch(self, serial: str, now: float, bearer: str | None, address: str | None) -> None:
        """Record traffic: set last_seen/bearer/address in the cache at once.

        Persisted coalesced, at most once per second per terminal, and on close.
        Unknown serials are ignored (hot path).
        """

    def allocate_serial(self, prefix: str) -> str:
        """A new unused serial: ``prefix`` (8 characters) + 8 decimal digits.

        The counter behind it is monotonic and persisted; it is committed before any
        later write, so a terminal saved with the serial never outlives its counter.
        """

    def remove(self, serial_or_imei: str) -> Deferred[None]:
        """Delete a terminal and its stored configuration; cancel its queued requests.

        Raises RegistryError synchronously when no such terminal exists.
        """

    def config_values(self, serial: str) -> dict[int, bytes]:
        """Last known TLV values of the terminal, ``{tag: value bytes}`` (a copy)."""

    def store_config(self, serial: str, values: dict[int, bytes], source: str) -> Deferred[None]:
        """Merge ``{tag: value}`` into the stored configuration.

        ``source`` is ``'reported'`` (from the terminal) or ``'set'`` (by the platform).
        """


class Reports(Protocol):
    """Alarms and statistics the terminals report."""

    def record_alarm(self, alarm: Alarm) -> Deferred[None]:
        """Append an Alarm to the history and update the state per (serial, code).

        Status 1 raises ``code``, status 0 clears it. Alarms without a serial (unknown
        MSISDN) go to the history only.
        """

    def alarms(
        self, serial: str | None = None, active_only: bool = False, limit: int = 100
    ) -> Deferred[list[Alarm]]:
        """Alarm history, newest first; with ``active_only`` the raised alarms instead."""

    def alarm_page(
        self,
        serial: str | None = None,
        *,
        active_only: bool = False,
        code: int | None = None,
        status: int | None = None,
        before: int | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> Deferred[list[tuple[int | None, Alarm]]]:
        """A page of ``alarms`` as (history row id, alarm), each filter applied when not
        None; history rows with an id below ``before`` (a cursor), after skipping
        ``offset``. Raised alarms (``active_only``) have no id and page by ``offset``
        only."""

    def record_statistics(
        self, serial: str, values: dict[int, bytes], now: float
    ) -> Deferred[None]:
        """Append statistics TLVs ``{tag: value}`` reported at ``now``."""

    def statistics(
        self, serial: str, limit: int = 100
    ) -> Deferred[list[tuple[float, int, bytes]]]:
        """Recorded statistics of a terminal as (time, tag, value), newest first."""


class MessageLog(Protocol):
    """The log of messages and events, per terminal."""

    def log(self, entry: LogEntry) -> None:
        """Append a LogEntry; fire-and-forget, batched."""

    def log_committed(self, entry: LogEntry) -> Deferred[None]:
        """Append a LogEntry that must not be lost (e.g. stored uplink data); fires once
        the entry is committed. Entries of one reactor turn share a transaction."""

    def messages(self, serial: str, limit: int = 100) -> Deferred[list[LogEntry]]:
        """The terminal's most recent log entries (including unflushed ones), newest
        first."""

    def message_page(
        self,
        serial: str | None = None,
        *,
        direction: str | None = None,
        event: str | None = None,
        before: int | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> Deferred[list[tuple[int, LogEntry]]]:
        """A page of the whole log (including unflushed entries) as (row id, entry),
        newest first, each filter applied when not None, ids below ``before``, after
        ``offset`` rows."""


class RequestQueue(Protocol):
    """Downlink requests: the durable queue and its history."""

    #: Called with each Request enqueued or updated, at once (the admin API's /events).
    request_observers: list[Callable[[Request], None]]
    #: Requests that left the queue, by (Command_ID, final state), since start-up.
    request_outcomes: Counter[tuple[int, str]]

    def enqueue(self, request: Request) -> Deferred[Request]:
        """Store a new Request and assign its ``id``; fires only once it is durable."""

    def update_request(self, request: Request) -> Deferred[None]:
        """Persist a changed Request (state, sequence_id, attempts, result...)."""

    def queued(self, serial: str) -> list[Request]:
        """The terminal's active requests (queued or sent), FIFO by id, from memory."""

    def request(self, id: int) -> Request | None:
        """A Request by id from memory: every active one, and recently finished ones
        (older history: ``requests``). None when not in memory."""

    def requests(
        self,
        serial: str | None = None,
        states: Iterable[str] | None = None,
        limit: int = 100,
        *,
        before: int | None = None,
        offset: int = 0,
    ) -> Deferred[list[Request]]:
        """Request history, newest first, optionally filtered by serial and states;
        ids below ``before`` (a cursor), after skipping ``offset`` rows."""

    def active_requests(self) -> list[Request]:
        """Every active (queued or sent) request, FIFO by id, from memory."""

    def queue_stats(self) -> tuple[int, float | None]:
        """(number of active requests, ``created_at`` of the oldest or None), in O(1)."""

    def expire_requests(self, now: float) -> Deferred[list[Request]]:
        """Mark queued requests whose ``expires_at`` <= ``now`` as 'expired'; fires
        with them once committed."""


class FileTransactions(Protocol):
    """Files offered to terminals for download (FILE_REQ, update TransIDs)."""

    def add_file(self, tx: FileTransaction) -> Deferred[None]:
        """Store a new FileTransaction; RegistryError if its trans_id/token is taken."""

    def file_by_token(self, token: str) -> FileTransaction | None:
        """The FileTransaction with this URL token, or None."""

    def file_by_trans_id(self, trans_id: int) -> FileTransaction | None:
        """The FileTransaction with this TransID, or None."""

    def update_file(self, tx: FileTransaction) -> Deferred[None]:
        """Persist a changed FileTransaction (its state)."""

    def allocate_trans_id(self) -> int:
        """A new unused u32 update TransID (persisted counter, from 1, skips 0)."""


class SmsOutbox(Protocol):
    """Outgoing WMMP messages waiting for the SMS modem (spec 10.4)."""

    def enqueue_sms(self, sms: OutgoingSms) -> Deferred[OutgoingSms]:
        """Store a new OutgoingSms (pending) and assign its ``id``; fires once durable.

        It is listed by ``pending_sms`` at once; the row is committed in order with
        the writes submitted before it. Its concatenation ``reference``, if set, is
        recorded as its MSISDN's newest in the same transaction (``sms_references``).
        """

    def update_sms(self, sms: OutgoingSms) -> Deferred[None]:
        """Persist a changed OutgoingSms; one no longer pending leaves ``pending_sms``."""

    def pending_sms(self) -> list[OutgoingSms]:
        """The pending outgoing SMS messages, FIFO by id, from memory."""

    def sms_references(self) -> dict[str, int]:
        """The concatenation reference of the newest message enqueued to each MSISDN,
        as a new dict: where each 8-bit counter continues after a restart (D-341)."""

    def sms_page(
        self,
        *,
        states: Iterable[str] | None = None,
        msisdn: str | None = None,
        before: int | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> Deferred[list[OutgoingSms]]:
        """A page of the whole outbox (pending, sent, failed), newest first, by states
        and destination (normalised, PD-30); ids below ``before``, after ``offset``."""


class Applications(Protocol):
    """Applications (application spec 2.6, 7.1) and the messages they sent."""

    def applications(self) -> list[Application]:
        """All Applications, as a new list, from memory."""

    def application(self, app_id: str) -> Application | None:
        """The Application with this app id, or None."""

    def application_by_ec(self, ec_code: str) -> Application | None:
        """The Application terminals address by this EC code, or None."""

    def add_application(self, app: Application) -> Deferred[Application]:
        """Store a new Application, firing once committed; RegistryError when its app
        id or EC code is taken."""

    def save_application(self, app: Application) -> Deferred[None]:
        """Persist every field of a known Application (RegistryError if unknown)."""

    def add_app_message(self, message: AppMessage) -> Deferred[AppMessage]:
        """Store a new AppMessage and assign its ``id`` (the msgId); fires once
        committed."""

    def update_app_message(self, message: AppMessage) -> Deferred[None]:
        """Persist a changed AppMessage."""

    def app_message(self, msg_id: int) -> Deferred[AppMessage | None]:
        """The AppMessage with this msgId: from memory if recent, else from the
        database."""

    def app_message_by_biz_seq(self, app_id: str, biz_seq: str) -> AppMessage | None:
        """The most recent in-memory AppMessage of ``app_id`` with this bizSeq, or None."""


class Notifications(Protocol):
    """The outbox of notifications to applications (application spec 4.7)."""

    def enqueue_notification(self, notification: AppNotification) -> Deferred[AppNotification]:
        """Store a new AppNotification and assign its ``id`` (the notifyId); fires once
        it is durable."""

    def update_notification(self, notification: AppNotification) -> Deferred[None]:
        """Persist a changed AppNotification (state, attempts, lease...)."""

    def delete_notifications(self, ids: Iterable[int]) -> Deferred[None]:
        """Delete delivered or acknowledged notifications; unknown ids are ignored."""

    def notifications(self, app_id: str) -> list[AppNotification]:
        """The application's undelivered notifications, FIFO by id, from memory.

        A copy, O(n): for listings; delivery uses :meth:`ready_notifications` and
        :meth:`notification`.
        """

    def notification(self, notify_id: int) -> AppNotification | None:
        """The undelivered AppNotification with this notifyId, or None; O(1)."""

    def ready_notifications(self, app_id: str) -> Iterator[AppNotification]:
        """The application's ``pending`` notifications, FIFO by id, as a lazy iterator.

        Reaching the next one costs O(1) however many others wait (D-255). The iterator
        is invalid once the outbox changes: collect what is needed before acting on it.
        """


@runtime_checkable
class Registry(
    Lifecycle,
    Backpressure,
    Retention,
    Terminals,
    Reports,
    MessageLog,
    RequestQueue,
    FileTransactions,
    SmsOutbox,
    Applications,
    Notifications,
    Protocol,
):
    """Persistent store of terminals, their queues, configuration, alarms and log:
    every concern above, as the gateway builds it and hands it to its parts."""

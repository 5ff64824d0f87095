"""The terminal registry contract: what the gateway may assume about persistence.

The design follows from the hot path. Every message needs the terminal record, so
**reads are synchronous** from an in-memory cache loaded by :meth:`open` (10k-100k
terminals fit in memory). **Writes update the cache at once** and are persisted in
submission order; each write returns a Deferred that fires once the change is
committed. Callers that must not lose data (a queued request, a new registration) wait
for it; hot-path writes (``touch``, ``log``) are fire-and-forget and batched.

Objects returned by reads are the live cached instances: mutate them, then ``save`` /
``update_request`` / ``update_file`` to persist. A registry belongs to one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from zope.interface import Attribute, Interface


class RegistryError(Exception):
    """A registry operation is invalid (duplicate, unknown terminal, schema too new...)."""


#: The tables :meth:`ITerminalRegistry.prune` deletes history from (D-201).
HISTORY_TABLES = (
    "messages", "statistics", "alarm_history", "requests", "app_messages",
    "file_transactions", "sms_outbox",
)


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


class ITerminalRegistry(Interface):
    """Persistent store of terminals, their queues, configuration, alarms and log."""

    # --- lifecycle ----------------------------------------------------------------

    def open():
        """Apply pending schema migrations and load the cache.

        :return: Deferred[None]; fails with RegistryError when the database is newer
            than the code.
        """

    def close():
        """Flush batched writes, wait for every submitted write, then close.

        :return: Deferred[None]
        """

    pending_writes = Attribute("Write transactions submitted and not yet committed.")
    pending_rows = Attribute("Rows of those transactions.")
    commit_latency = Attribute(
        "m2mgw.core.stats.Histogram of the seconds from a write's submission to its commit."
    )
    request_outcomes = Attribute(
        "collections.Counter of the requests that left the queue, by (Command_ID, state)."
    )
    request_observers = Attribute(
        "A list of callables, each called with every Request enqueued or updated, at once."
    )

    def add_pressure_observer(observer):
        """Call ``observer(True)`` when uncommitted writes pass the high watermark and
        ``observer(False)`` once they are back under the low one, so the gateway can
        stop reading terminal input instead of letting queued writes grow (backpressure).
        """

    # --- retention ------------------------------------------------------------------

    def prune(table, before, limit):
        """Delete at most ``limit`` of the oldest history rows of ``table`` older than
        ``before`` (a time in seconds), in one transaction in order with the other writes.

        History (D-201): every row of ``messages``, ``statistics`` and
        ``alarm_history`` (aged by ``time``); ``requests`` and ``app_messages`` once
        finished and ``sms_outbox`` rows once sent or failed (aged by their last
        update); ``file_transactions`` (aged by their expiry). Live state (active
        requests, pending SMS, notifications, alarm state, terminals, counters) is never
        deleted. Cached copies of deleted rows are dropped. Raises RegistryError
        synchronously for any other table.

        :return: Deferred[int]: the rows deleted; fewer than ``limit`` means no older
            history was left when the transaction ran.
        """

    # --- terminals ----------------------------------------------------------------

    def get(serial):
        """The terminal with this 16-character serial, or None."""

    def by_imei(imei):
        """The terminal with this IMEI, or None."""

    def by_msisdn(msisdn):
        """The terminal with this MSISDN (compared normalised, PD-30), or None."""

    def terminals():
        """All terminals, as a new list."""

    def add(terminal):
        """Store a new terminal and assign its ``id``.

        Raises RegistryError synchronously when the IMEI, serial or MSISDN is taken.

        :return: Deferred[Terminal] firing once committed.
        """

    def save(terminal):
        """Persist every field of ``terminal`` and re-index serial/IMEI/MSISDN changes.

        Raises RegistryError synchronously on an unknown terminal or a taken key.

        :return: Deferred[None]
        """

    def touch(serial, now, bearer, address):
        """Record traffic: set last_seen/bearer/address in the cache at once.

        Persisted coalesced, at most once per second per terminal, and on close.
        Unknown serials are ignored (hot path).
        """

    def allocate_serial(prefix):
        """A new unused serial: ``prefix`` (8 characters) + 8 decimal digits.

        The counter behind it is monotonic and persisted; it is committed before any
        later write, so a terminal saved with the serial never outlives its counter.
        """

    def remove(serial_or_imei):
        """Delete a terminal and its stored configuration; cancel its queued requests.

        Raises RegistryError synchronously when no such terminal exists.

        :return: Deferred[None]
        """

    # --- configuration --------------------------------------------------------------

    def config_values(serial):
        """Last known TLV values of the terminal, ``{tag: value bytes}`` (a copy)."""

    def store_config(serial, values, source):
        """Merge ``{tag: value}`` into the stored configuration.

        ``source`` is ``'reported'`` (from the terminal) or ``'set'`` (by the platform).

        :return: Deferred[None]
        """

    # --- alarms and statistics ------------------------------------------------------

    def record_alarm(alarm):
        """Append an Alarm to the history and update the state per (serial, code).

        Status 1 raises ``code``, status 0 clears it. Alarms without a serial (unknown
        MSISDN) go to the history only.

        :return: Deferred[None]
        """

    def alarms(serial=None, active_only=False, limit=100):
        """Alarm history, newest first; with ``active_only`` the raised alarms instead.

        :return: Deferred[list[Alarm]]
        """

    def alarm_page(serial=None, *, active_only=False, code=None, status=None, before=None,
                   offset=0, limit=100):
        """A page of ``alarms``, each filter applied when not None; history rows with an
        id below ``before`` (a cursor), after skipping ``offset``. Raised alarms
        (``active_only``) have no id and page by ``offset`` only.

        :return: Deferred[list[tuple[int | None, Alarm]]] of (history row id, alarm).
        """

    def record_statistics(serial, values, now):
        """Append statistics TLVs ``{tag: value}`` reported at ``now``.

        :return: Deferred[None]
        """

    def statistics(serial, limit=100):
        """Recorded statistics of a terminal, newest first.

        :return: Deferred[list[tuple[float, int, bytes]]] of (time, tag, value).
        """

    # --- message log ----------------------------------------------------------------

    def log(entry):
        """Append a LogEntry; fire-and-forget, batched."""

    def log_committed(entry):
        """Append a LogEntry that must not be lost (e.g. stored uplink data).

        :return: Deferred[None] firing once the entry is committed; entries of one
            reactor turn share a transaction.
        """

    def messages(serial, limit=100):
        """The terminal's most recent log entries (including unflushed ones), newest
        first.

        :return: Deferred[list[LogEntry]]
        """

    def message_page(serial=None, *, direction=None, event=None, before=None, offset=0,
                     limit=100):
        """A page of the whole log (including unflushed entries), newest first, each
        filter applied when not None, ids below ``before``, after ``offset`` rows.

        :return: Deferred[list[tuple[int, LogEntry]]] of (row id, entry).
        """

    # --- request queue --------------------------------------------------------------

    def enqueue(request):
        """Store a new Request and assign its ``id``.

        :return: Deferred[Request] firing only once the request is durable.
        """

    def update_request(request):
        """Persist a changed Request (state, sequence_id, attempts, result...).

        :return: Deferred[None]
        """

    def queued(serial):
        """The terminal's active requests (queued or sent), FIFO by id, from memory."""

    def request(id):
        """A Request by id from memory: every active one, and recently finished ones
        (older history: ``requests``). None when not in memory.
        """

    def requests(serial=None, states=None, limit=100, *, before=None, offset=0):
        """Request history, newest first, optionally filtered by serial and states;
        ids below ``before`` (a cursor), after skipping ``offset`` rows.

        :return: Deferred[list[Request]]
        """

    def active_requests():
        """Every active (queued or sent) request, FIFO by id, from memory."""

    def queue_stats():
        """(number of active requests, ``created_at`` of the oldest or None), in O(1)."""

    def expire_requests(now):
        """Mark queued requests whose ``expires_at`` <= ``now`` as 'expired'.

        :return: Deferred[list[Request]] of the expired requests, once committed.
        """

    # --- file transactions ----------------------------------------------------------

    def add_file(tx):
        """Store a new FileTransaction; RegistryError if its trans_id/token is taken.

        :return: Deferred[None]
        """

    def file_by_token(token):
        """The FileTransaction with this URL token, or None."""

    def file_by_trans_id(trans_id):
        """The FileTransaction with this TransID, or None."""

    def update_file(tx):
        """Persist a changed FileTransaction (its state).

        :return: Deferred[None]
        """

    def allocate_trans_id():
        """A new unused u32 update TransID (persisted counter, from 1, skips 0)."""

    # --- SMS outbox -----------------------------------------------------------------

    def enqueue_sms(sms):
        """Store a new OutgoingSms (pending) and assign its ``id``.

        It is listed by ``pending_sms`` at once; the row is committed in order with
        the writes submitted before it. Its concatenation ``reference``, if set, is
        recorded as its MSISDN's newest in the same transaction (``sms_references``).

        :return: Deferred[OutgoingSms] firing once it is durable.
        """

    def update_sms(sms):
        """Persist a changed OutgoingSms; one no longer pending leaves ``pending_sms``.

        :return: Deferred[None]
        """

    def pending_sms():
        """The pending outgoing SMS messages, FIFO by id, from memory."""

    def sms_references():
        """The concatenation reference of the newest message enqueued to each MSISDN,
        as a new dict: where each 8-bit counter continues after a restart (D-341)."""

    def sms_page(*, states=None, msisdn=None, before=None, offset=0, limit=100):
        """A page of the whole outbox (pending, sent, failed), newest first, by states
        and destination (normalised, PD-30); ids below ``before``, after ``offset``.

        :return: Deferred[list[OutgoingSms]]
        """

    # --- applications (application spec 2.6, 4.7, 7.1) -------------------------------

    def applications():
        """All Applications, as a new list, from memory."""

    def application(app_id):
        """The Application with this app id, or None."""

    def application_by_ec(ec_code):
        """The Application terminals address by this EC code, or None."""

    def add_application(app):
        """Store a new Application; RegistryError when its app id or EC code is taken.

        :return: Deferred[Application] firing once committed.
        """

    def save_application(app):
        """Persist every field of a known Application (RegistryError if unknown).

        :return: Deferred[None]
        """

    def enqueue_notification(notification):
        """Store a new AppNotification and assign its ``id`` (the notifyId).

        :return: Deferred[AppNotification] firing once it is durable.
        """

    def update_notification(notification):
        """Persist a changed AppNotification (state, attempts, lease...).

        :return: Deferred[None]
        """

    def delete_notifications(ids):
        """Delete delivered or acknowledged notifications; unknown ids are ignored.

        :return: Deferred[None]
        """

    def notifications(app_id):
        """The application's undelivered notifications, FIFO by id, from memory.

        A copy, O(n): for listings; delivery uses :meth:`ready_notifications` and
        :meth:`notification`.
        """

    def notification(notify_id):
        """The undelivered AppNotification with this notifyId, or None; O(1)."""

    def ready_notifications(app_id):
        """The application's ``pending`` notifications, FIFO by id, as a lazy iterator.

        Reaching the next one costs O(1) however many others wait (D-255). The iterator
        is invalid once the outbox changes: collect what is needed before acting on it.
        """

    def add_app_message(message):
        """Store a new AppMessage and assign its ``id`` (the msgId).

        :return: Deferred[AppMessage] firing once committed.
        """

    def update_app_message(message):
        """Persist a changed AppMessage.

        :return: Deferred[None]
        """

    def app_message(msg_id):
        """The AppMessage with this msgId: from memory if recent, else from the database.

        :return: Deferred[AppMessage | None]
        """

    def app_message_by_biz_seq(app_id, biz_seq):
        """The most recent in-memory AppMessage of ``app_id`` with this bizSeq, or None."""

"""A registry over the cache, the ordered writer and a store: whatever the store.

Every write updates the cache at once (:mod:`.cache`), encodes its rows (sealing
secrets when the registry has a vault) and hands them to the writer (:mod:`.writer`),
which commits them through the store in submission order. Queries of history the
cache does not hold go to the store, behind every write submitted before them. A
backend subclasses :class:`CachedRegistry` with what opening and closing its store
takes; see :mod:`.store` for what the store must do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from m2mgw.config import ROW_WATERMARKS, WRITE_WATERMARKS
from m2mgw.core.model import (
    U32_MAX,
    Alarm,
    Application,
    AppMessage,
    AppNotification,
    FileTransaction,
    LogEntry,
    Request,
    RequestState,
    Terminal,
    advance_counter,
    normalize_msisdn,
)
from m2mgw.core.registry.cache import (
    APP_MESSAGE_CACHE_SIZE,
    FINISHED_CACHE_SIZE,
    RegistryCache,
    terminal_keys,
)
from m2mgw.core.registry.interfaces import (
    OutgoingSms,
    PressureObserver,
    RegistryError,
    RegistryIdentity,
    SmsState,
)
from m2mgw.core.registry.store import Batch, Op, Query, Snapshot, Store, Write, filters
from m2mgw.core.registry.tables import (
    ALARM_HISTORY,
    ALARM_STATE,
    APP_MESSAGES,
    APPLICATIONS,
    COUNTERS,
    FILES,
    HISTORY,
    MESSAGES,
    NOTIFICATIONS,
    REQUESTS,
    SESSIONS,
    SMS_OUTBOX,
    SMS_REFERENCES,
    STATISTICS,
    TERMINAL_CONFIG,
    TERMINAL_COUNTERS,
    TERMINALS,
    TOUCHES,
    Row,
    Table,
    config_secret,
)
from m2mgw.core.registry.writer import OrderedWriter
from m2mgw.core.stats import Histogram
from m2mgw.core.vault import Vault

_log = Logger()

SERIAL_DIGITS_MAX = 99_999_999
_CONFIG_SOURCES = ("reported", "set")


class CachedRegistry(RegistryCache):
    """The registry's operations, on the cache and a store; a subclass opens the store.

    ``name`` says which registry in messages and logs (a SQLite file's path);
    ``clock`` stamps what is written and runs the writer's timers.
    """

    def __init__(
        self,
        name: str,
        clock: IReactorTime,
        *,
        watermarks: tuple[int, int] = WRITE_WATERMARKS,
        row_watermarks: tuple[int, int] = ROW_WATERMARKS,
    ) -> None:
        super().__init__()
        self._name = name
        self._clock = clock
        self._writer = OrderedWriter(clock, name, self._touches, watermarks=watermarks,
                                     row_watermarks=row_watermarks)
        #: Seals and opens the secrets while open; None for plaintext rows.
        self._vault: Vault | None = None
        self._identity: RegistryIdentity | None = None
        #: Called with each request enqueued or updated (the admin API's /events).
        self.request_observers: list[Callable[[Request], None]] = []

    # --- lifecycle ----------------------------------------------------------------

    def _loaded(self, store: Store, now: float) -> Deferred[Snapshot]:
        """What ``store`` holds for the cache."""
        return store.load(now, FINISHED_CACHE_SIZE, APP_MESSAGE_CACHE_SIZE)

    def _start(
        self, store: Store, snapshot: Snapshot, identity: RegistryIdentity, *,
        read_only: bool = False,
    ) -> None:
        """Fill the cache from ``snapshot`` and start writing to ``store``."""
        self._install(snapshot, self._vault)
        self._identity = identity
        self._writer.start(store, read_only=read_only)

    def _stop(self) -> Deferred[None]:
        """Commit what is batched; fires once every submitted write completed."""
        self._identity = None
        done = self._writer.close()
        self._vault = None
        return done

    @property
    def is_open(self) -> bool:
        return self._identity is not None

    def identity(self) -> RegistryIdentity:
        if self._identity is None:
            raise RegistryError(f"{self._name}: registry is not open")
        return self._identity

    # --- backpressure ---------------------------------------------------------------

    @property
    def pending_writes(self) -> int:
        return self._writer.pending_writes

    @property
    def pending_rows(self) -> int:
        return self._writer.pending_rows

    @property
    def saturated(self) -> bool:
        return self._writer.saturated

    @property
    def commit_latency(self) -> Histogram:
        return self._writer.commit_latency

    def add_pressure_observer(self, observer: PressureObserver) -> None:
        self._writer.add_pressure_observer(observer)

    def remove_pressure_observer(self, observer: PressureObserver) -> None:
        self._writer.remove_pressure_observer(observer)

    # --- retention ------------------------------------------------------------------

    def prune(self, table: str, before: float, limit: int) -> Deferred[int]:
        if table not in HISTORY:
            raise RegistryError(f"{table!r} is not a history table ({', '.join(HISTORY)})")
        if limit < 1:
            raise RegistryError(f"a pruning batch needs a limit of at least 1, got {limit}")
        return self._writer.prune(table, before, limit).addCallback(self._forget, table)

    # --- terminals ----------------------------------------------------------------

    def add(self, terminal: Terminal) -> Deferred[Terminal]:
        if terminal.id is not None:
            raise RegistryError(f"terminal IMEI {terminal.imei} already has id {terminal.id}")
        keys = terminal_keys(terminal)
        self._check_unique(terminal, keys)
        now = self._clock.seconds()
        terminal.created_at = terminal.created_at or now
        terminal.updated_at = now
        row = self._new_row(terminal, TERMINALS)
        self._terminals[terminal.id or 0] = terminal
        self._reindex(terminal, keys)
        return self._write([Write(Op.INSERT, TERMINALS, [row])]).addCallback(lambda _: terminal)

    def save(self, terminal: Terminal) -> Deferred[None]:
        terminal_id = terminal.id
        if terminal_id is None or terminal_id not in self._terminals:
            raise RegistryError(f"terminal IMEI {terminal.imei} is not in the registry")
        keys = terminal_keys(terminal)
        self._check_unique(terminal, keys)
        terminal.updated_at = self._clock.seconds()
        row = TERMINALS.row(terminal, self._vault)
        self._terminals[terminal_id] = terminal
        self._reindex(terminal, keys)
        self._touched.discard(terminal_id)
        self._sessions_saved.discard(terminal_id)
        return self._write([Write(Op.UPDATE, TERMINALS, [row])])

    def save_counters(self, terminal: Terminal) -> Deferred[None]:
        if terminal.id is None or self._terminals.get(terminal.id) is not terminal:
            raise RegistryError(f"terminal IMEI {terminal.imei} is not in the registry")
        terminal.updated_at = self._clock.seconds()
        return self._write([Write(Op.UPDATE, TERMINAL_COUNTERS,
                                  [TERMINAL_COUNTERS.row(terminal)])])

    def save_session(self, terminal: Terminal) -> None:
        terminal_id = terminal.id
        if terminal_id is None or self._terminals.get(terminal_id) is not terminal:
            raise RegistryError(f"terminal IMEI {terminal.imei} is not in the registry")
        terminal.updated_at = self._clock.seconds()
        self._sessions_saved.add(terminal_id)

    def touch(self, serial: str, now: float, bearer: str | None, address: str | None) -> None:
        terminal = self._index["serial"].get(serial)
        if terminal is None:
            return
        terminal.last_seen, terminal.bearer, terminal.address = now, bearer, address
        self._touched.add(terminal.id or 0)

    def _touches(self) -> Batch:
        """The coalesced ``save_session`` and ``touch`` updates, taken for the writer's
        next flush (a session's row has the touched columns too)."""
        batch: Batch = []
        if self._sessions_saved:
            saved = sorted(self._sessions_saved)
            self._sessions_saved.clear()
            self._touched.difference_update(saved)
            vault = self._vault
            rows = [SESSIONS.row(self._terminals[i], vault) for i in saved]
            batch.append(Write(Op.UPDATE, SESSIONS, rows))
        if self._touched:
            touched = [self._terminals[i] for i in sorted(self._touched)]
            self._touched.clear()
            rows = [(t.id, t.last_seen, t.bearer, t.address) for t in touched]
            batch.append(Write(Op.UPDATE, TOUCHES, rows))
        return batch

    def allocate_serial(self, prefix: str) -> str:
        if len(prefix) != 8:
            raise RegistryError(f"serial prefix must be 8 characters, got {prefix!r}")
        value = self._counters.get("serial", 0)
        while True:
            value += 1
            if value > SERIAL_DIGITS_MAX:
                raise RegistryError("serial numbers exhausted (8 decimal digits)")
            serial = f"{prefix}{value:08d}"
            if serial not in self._index["serial"]:
                break
        self._set_counter("serial", value)
        return serial

    def remove(self, serial_or_imei: str) -> Deferred[None]:
        terminal = self.get(serial_or_imei) or self.by_imei(serial_or_imei)
        if terminal is None:
            raise RegistryError(f"no terminal with serial or IMEI {serial_or_imei!r}")
        terminal_id = terminal.id or 0
        del self._terminals[terminal_id]
        self._reindex(terminal, {})
        del self._indexed[terminal_id]
        self._config.pop(terminal_id, None)
        self._touched.discard(terminal_id)
        self._sessions_saved.discard(terminal_id)
        cancelled = self.queued(terminal.serial) if terminal.serial else []
        for request in cancelled:
            request.state = RequestState.CANCELLED
            request.outcome = "terminal removed"
        _log.info("registry: removed terminal {serial} (IMEI {imei})",
                  serial=terminal.serial, imei=terminal.imei)
        delete = Write(Op.DELETE, TERMINALS, [(terminal_id,)])
        return self._write([delete, *self._request_updates(cancelled)])

    def _new_row(
        self, obj: Terminal | Request | OutgoingSms | AppNotification | AppMessage, table: Table
    ) -> Row:
        """Give ``obj`` the table's next id and encode it; no change if encoding fails."""
        obj.id = self._id_for(table)
        try:
            row = table.row(obj, self._vault)
        except ValueError:
            obj.id = None
            raise
        self._id_used(table)
        return row

    def _id_for(self, table: Table) -> int:
        """The id the next new row of ``table`` gets (a backend whose ids come from
        elsewhere refuses when it has none at hand)."""
        return self._next_id[table.name]

    def _id_used(self, table: Table) -> None:
        """The id :meth:`_id_for` gave is taken."""
        self._next_id[table.name] += 1

    def _set_counter(self, name: str, value: int) -> None:
        self._counters[name] = value
        self._writer.background(self._write([Write(Op.UPSERT, COUNTERS, [(name, value)])]))

    def _require(self, serial: str) -> Terminal:
        terminal = self.get(serial)
        if terminal is None:
            raise RegistryError(f"no terminal with serial {serial!r}")
        return terminal

    def _write(self, batch: Batch) -> Deferred[None]:
        return self._writer.write(batch)

    def _query(self, query: Query) -> Deferred[list[Row]]:
        return self._writer.read(query)

    # --- configuration --------------------------------------------------------------

    def store_config(self, serial: str, values: dict[int, bytes], source: str) -> Deferred[None]:
        if source not in _CONFIG_SOURCES:
            raise RegistryError(f"config source must be one of {_CONFIG_SOURCES}, got {source!r}")
        terminal_id = self._require(serial).id or 0
        now = self._clock.seconds()
        seal = self._vault.seal if self._vault is not None else None
        rows = [
            (terminal_id, tag, config_secret(seal, terminal_id, tag, bytes(value)), source, now)
            for tag, value in values.items()
        ]
        self._config.setdefault(terminal_id, {}).update(
            (tag, bytes(value)) for tag, value in values.items()
        )
        return self._write([Write(Op.UPSERT, TERMINAL_CONFIG, rows)])

    # --- alarms and statistics ------------------------------------------------------

    def record_alarm(self, alarm: Alarm) -> Deferred[None]:
        row = ALARM_HISTORY.row(alarm)
        batch = [Write(Op.INSERT, ALARM_HISTORY, [row])]
        if alarm.serial is not None:
            batch.append(Write(Op.UPSERT, ALARM_STATE, [row]))
        return self._write(batch)

    def alarms(
        self, serial: str | None = None, active_only: bool = False, limit: int = 100
    ) -> Deferred[list[Alarm]]:
        if active_only:
            query = Query(ALARM_STATE, filters(status=1, serial=serial), limit, order="time")
        else:
            query = Query(ALARM_HISTORY, filters(serial=serial), limit)
        return self._query(query).addCallback(
            lambda rows: [query.table.load(row) for row in rows]
        )

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
        if active_only:  # alarm_state has no ids: newest first, paged by offset
            query = Query(ALARM_STATE, filters(serial=serial, code=code, status=1), limit,
                          offset, order="time")
            return self._query(query).addCallback(
                lambda rows: [(None, ALARM_STATE.load(row)) for row in rows]
            )
        page = filters(serial=serial, code=code, status=status)
        return self._history_page(ALARM_HISTORY, page, before, offset, limit)

    def _history_page(
        self, table: Table, page: dict[str, Any], before: int | None, offset: int, limit: int,
    ) -> Deferred[Any]:
        """Rows of a history table with their ids, newest first, before id ``before``."""
        query = Query(table, page, limit, offset, before, with_id=True)
        return self._query(query).addCallback(
            lambda rows: [(row[0], table.load(row[1:], self._vault)) for row in rows]
        )

    def record_statistics(
        self, serial: str, values: dict[int, bytes], now: float
    ) -> Deferred[None]:
        rows = [(serial, now, tag, bytes(value)) for tag, value in values.items()]
        return self._write([Write(Op.INSERT, STATISTICS, rows)])

    def statistics(self, serial: str, limit: int = 100) -> Deferred[list[tuple[float, int, bytes]]]:
        query = Query(STATISTICS, {"serial": serial}, limit)
        return self._query(query).addCallback(
            lambda rows: [(time, tag, value) for _, time, tag, value in rows]
        )

    # --- message log ----------------------------------------------------------------

    def log(self, entry: LogEntry) -> None:
        self._writer.log(MESSAGES.row(entry))

    def log_committed(self, entry: LogEntry) -> Deferred[None]:
        return self._writer.log_committed(MESSAGES.row(entry))

    def messages(self, serial: str, limit: int = 100) -> Deferred[list[LogEntry]]:
        self._writer.flush()
        return self._query(Query(MESSAGES, {"serial": serial}, limit)).addCallback(
            lambda rows: [MESSAGES.load(row) for row in rows]
        )

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
        self._writer.flush()
        page = filters(serial=serial, direction=direction, event=event)
        return self._history_page(MESSAGES, page, before, offset, limit)

    # --- request queue --------------------------------------------------------------

    def enqueue(self, request: Request) -> Deferred[Request]:
        if request.id is not None:
            raise RegistryError(f"request {request.id} is already enqueued")
        request.updated_at = self._clock.seconds()
        row = self._new_row(request, REQUESTS)
        self._track(request)
        self._tell(request)
        return self._write([Write(Op.INSERT, REQUESTS, [row])]).addCallback(lambda _: request)

    def update_request(self, request: Request) -> Deferred[None]:
        if request.id is None:
            raise RegistryError("update of a request that was never enqueued")
        return self._write(self._request_updates([request]))

    def requests(
        self,
        serial: str | None = None,
        states: Iterable[str] | None = None,
        limit: int = 100,
        *,
        before: int | None = None,
        offset: int = 0,
    ) -> Deferred[list[Request]]:
        values = None if states is None else [RequestState(s).value for s in states]

        def load(rows: list[tuple[int, Request]]) -> list[Request]:
            return [self.request(r.id or 0) or r for _, r in rows]

        page = filters(serial=serial, state=values)
        return self._history_page(REQUESTS, page, before, offset, limit).addCallback(load)

    def expire_requests(self, now: float) -> Deferred[list[Request]]:
        expired = [
            r for r in self._active.values()
            if r.state == RequestState.QUEUED and r.expires_at <= now
        ]
        if not expired:
            return succeed([])
        for request in expired:
            request.state = RequestState.EXPIRED
            request.outcome = "TTL expired while queued"
        return self._write(self._request_updates(expired)).addCallback(lambda _: expired)

    def _request_updates(self, requests: list[Request]) -> Batch:
        """Stamp, re-file in the cache and build the UPDATE batch for ``requests``."""
        now = self._clock.seconds()
        rows = []
        for request in requests:
            request.updated_at = now
            rows.append(REQUESTS.row(request, self._vault))
            self._track(request)
            self._tell(request)
        return [Write(Op.UPDATE, REQUESTS, rows)] if rows else []

    def _tell(self, request: Request) -> None:
        for observer in self.request_observers:
            try:
                observer(request)
            except Exception:  # an observer's bug must not fail the write
                _log.failure("registry {path}: request observer {observer} failed",
                             path=self._name, observer=observer)

    # --- file transactions ----------------------------------------------------------

    def add_file(self, tx: FileTransaction) -> Deferred[None]:
        if tx.trans_id in self._files_by_trans_id or tx.token in self._files_by_token:
            raise RegistryError(f"file transaction {tx.trans_id:08X} or its token is taken")
        row = FILES.row(tx)
        self._index_file(tx)
        return self._write([Write(Op.INSERT, FILES, [row])])

    def update_file(self, tx: FileTransaction) -> Deferred[None]:
        known = self._files_by_trans_id.get(tx.trans_id)
        if known is None or known.token != tx.token:
            raise RegistryError(f"unknown file transaction {tx.trans_id:08X}")
        row = FILES.row(tx)
        self._index_file(tx)
        return self._write([Write(Op.UPDATE, FILES, [row])])

    def allocate_trans_id(self) -> int:
        value = self._counters.get("trans_id", 0)
        while True:
            value = advance_counter(value, U32_MAX)
            if value not in self._files_by_trans_id:
                break
        self._set_counter("trans_id", value)
        return value

    # --- SMS outbox -----------------------------------------------------------------

    def enqueue_sms(self, sms: OutgoingSms) -> Deferred[OutgoingSms]:
        if sms.id is not None:
            raise RegistryError(f"outgoing SMS {sms.id} is already enqueued")
        sms.updated_at = self._clock.seconds()
        row = self._new_row(sms, SMS_OUTBOX)
        self._sms_pending[sms.id or 0] = sms
        batch = [Write(Op.INSERT, SMS_OUTBOX, [row])]
        if sms.reference is not None:
            # In the row's transaction: the counter is on disk whenever its message is.
            self._sms_references[sms.msisdn] = sms.reference
            batch.append(Write(Op.UPSERT, SMS_REFERENCES, [(sms.msisdn, sms.reference)]))
        return self._write(batch).addCallback(lambda _: sms)

    def update_sms(self, sms: OutgoingSms) -> Deferred[None]:
        if sms.id is None:
            raise RegistryError("update of an outgoing SMS that was never enqueued")
        sms.updated_at = self._clock.seconds()
        row = SMS_OUTBOX.row(sms, self._vault)
        if sms.state == SmsState.PENDING:
            self._sms_pending[sms.id] = sms
        else:
            self._sms_pending.pop(sms.id, None)
        return self._write([Write(Op.UPDATE, SMS_OUTBOX, [row])])

    def sms_page(
        self,
        *,
        states: Iterable[str] | None = None,
        msisdn: str | None = None,
        before: int | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> Deferred[list[OutgoingSms]]:
        values = None if states is None else [SmsState(s).value for s in states]
        number = None if msisdn is None else normalize_msisdn(msisdn)
        page = filters(state=values, msisdn=number)
        d = self._history_page(SMS_OUTBOX, page, before, offset, limit)
        return d.addCallback(
            lambda rows: [self._sms_pending.get(s.id, s) for _, s in rows]
        )

    # --- applications ---------------------------------------------------------------

    def add_application(self, app: Application) -> Deferred[Application]:
        for taken, key, what in ((self._apps, app.app_id, "app id"),
                                 (self._apps_by_ec, app.ec_code, "EC code")):
            if key in taken:
                raise RegistryError(f"{what} {key} is already used by application "
                                    f"{taken[key].app_id}")
        now = self._clock.seconds()
        app.created_at = app.created_at or now
        app.updated_at = now
        row = APPLICATIONS.row(app, self._vault)
        self._index_application(app)
        return self._write([Write(Op.INSERT, APPLICATIONS, [row])]).addCallback(lambda _: app)

    def save_application(self, app: Application) -> Deferred[None]:
        known = self._apps.get(app.app_id)
        if known is None:
            raise RegistryError(f"application {app.app_id} is not in the registry")
        other = self._apps_by_ec.get(app.ec_code)
        if other is not None and other.app_id != app.app_id:
            raise RegistryError(f"EC code {app.ec_code} is already used by {other.app_id}")
        app.updated_at = self._clock.seconds()
        self._apps_by_ec.pop(known.ec_code, None)
        self._index_application(app)
        row = APPLICATIONS.row(app, self._vault)
        return self._write([Write(Op.UPDATE, APPLICATIONS, [row])])

    def enqueue_notification(self, notification: AppNotification) -> Deferred[AppNotification]:
        if notification.id is not None:
            raise RegistryError(f"notification {notification.id} is already enqueued")
        notification.updated_at = self._clock.seconds()
        row = self._new_row(notification, NOTIFICATIONS)

        def stored(_: None) -> AppNotification:
            # Into the outbox only once committed: a notifyId offered before its row is
            # durable would be handed out again after a crash, for another notification
            # that applications then discard as a duplicate (D-277).
            self._add_notification(notification)
            return notification

        return self._write([Write(Op.INSERT, NOTIFICATIONS, [row])]).addCallback(stored)

    def update_notification(self, notification: AppNotification) -> Deferred[None]:
        if notification.id is None:
            raise RegistryError("update of a notification that was never enqueued")
        notification.updated_at = self._clock.seconds()
        self._refile_notification(notification)
        row = NOTIFICATIONS.row(notification)
        return self._write([Write(Op.UPDATE, NOTIFICATIONS, [row])])

    def delete_notifications(self, ids: Iterable[int]) -> Deferred[None]:
        gone = [(notify_id,) for notify_id in ids if self._remove_notification(notify_id)]
        if not gone:
            return succeed(None)
        return self._write([Write(Op.DELETE, NOTIFICATIONS, gone)])

    def add_app_message(self, message: AppMessage) -> Deferred[AppMessage]:
        if message.id is not None:
            raise RegistryError(f"application message {message.id} is already stored")
        message.updated_at = self._clock.seconds()
        row = self._new_row(message, APP_MESSAGES)
        self._cache_app_message(message)
        d = self._write([Write(Op.INSERT, APP_MESSAGES, [row])])
        return d.addCallback(lambda _: message)

    def update_app_message(self, message: AppMessage) -> Deferred[None]:
        if message.id is None:
            raise RegistryError("update of an application message that was never stored")
        message.updated_at = self._clock.seconds()
        return self._write([Write(Op.UPDATE, APP_MESSAGES, [APP_MESSAGES.row(message)])])

    def app_message(self, msg_id: int) -> Deferred[AppMessage | None]:
        cached = self._app_messages.get(msg_id)
        if cached is not None:
            return succeed(cached)
        d = self._query(Query(APP_MESSAGES, {"id": msg_id}, 1))
        return d.addCallback(lambda rows: APP_MESSAGES.load(rows[0]) if rows else None)

"""The registry's in-memory cache and its indexes (D-02): every synchronous read.

Every message needs its terminal, so the registry answers reads from memory: the
terminals by serial, IMEI and MSISDN, their configuration, the active request queue
and recently finished requests, file transactions, pending SMS, applications, the
notification outboxes and recent application messages. The cache is loaded from a
:class:`~.store.Snapshot` at open and kept current by the registry's writes
(:mod:`.cached`); it does no I/O.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterator
from typing import Any

from m2mgw.core.model import (
    Application,
    AppMessage,
    AppNotification,
    FileTransaction,
    NotificationState,
    Request,
    Terminal,
    normalize_msisdn,
)
from m2mgw.core.registry.interfaces import OutgoingSms, RegistryError
from m2mgw.core.registry.store import Snapshot
from m2mgw.core.registry.tables import (
    APP_MESSAGES,
    APPLICATIONS,
    FILES,
    NOTIFICATIONS,
    NUMBERED_TABLES,
    REQUESTS,
    SMS_OUTBOX,
    TERMINALS,
    config_secret,
)
from m2mgw.core.vault import Vault

#: Finished requests kept in memory for ``request(id)``.
FINISHED_CACHE_SIZE = 10_000
#: Application messages (msgId) kept in memory for status queries and bizSeq (AD-14).
APP_MESSAGE_CACHE_SIZE = 100_000


class _Outbox:
    """One application's undelivered notifications, in notifyId (= creation) order.

    ``ready`` holds those in state ``pending``, the only ones the outbox pump offers,
    so that its next entry is found in O(1) whatever else waits (D-255). An entry
    that comes back to it (a kept one, after a new session) is usually older than its
    tail: the queue is then sorted once, at its next read, not at each change.
    """

    __slots__ = ("entries", "ready", "unsorted")

    def __init__(self) -> None:
        self.entries: dict[int, AppNotification] = {}
        self.ready: dict[int, AppNotification] = {}
        self.unsorted = False

    def file(self, entry: AppNotification) -> None:
        """Put ``entry`` into the ready queue or take it out, by its state."""
        notify_id = entry.id or 0
        if entry.state != NotificationState.PENDING:
            self.ready.pop(notify_id, None)
        elif notify_id not in self.ready:
            if self.ready and next(reversed(self.ready)) > notify_id:
                self.unsorted = True
            self.ready[notify_id] = entry

    def head(self) -> Iterator[AppNotification]:
        if self.unsorted:
            self.ready = dict(sorted(self.ready.items()))
            self.unsorted = False
        return iter(self.ready.values())


def terminal_keys(terminal: Terminal) -> dict[str, str]:
    """The unique index keys of a terminal (MSISDN normalised, PD-30)."""
    keys = {"serial": terminal.serial, "imei": terminal.imei,
            "msisdn": normalize_msisdn(terminal.msisdn) if terminal.msisdn else None}
    return {name: key for name, key in keys.items() if key}


class RegistryCache:
    """The cached objects and their indexes, with the registry's synchronous reads.

    The objects are the live instances callers get and mutate. Ids of cached rows are
    set (they were loaded or assigned before being filed), hence the ``or 0``s that
    only satisfy the type of ``id``.
    """

    def __init__(self) -> None:
        #: Requests that left the queue, by (Command_ID, final state), since start-up.
        self.request_outcomes: Counter[tuple[int, str]] = Counter()
        self._clear()

    def _clear(self) -> None:
        """Empty every cache, so that a registry can be opened again after ``close``."""
        self._terminals: dict[int, Terminal] = {}
        self._index: dict[str, dict[str, Terminal]] = {"serial": {}, "imei": {}, "msisdn": {}}
        self._indexed: dict[int, dict[str, str]] = {}
        self._config: dict[int, dict[int, bytes]] = {}
        self._active: dict[int, Request] = {}
        self._queues: dict[str, dict[int, Request]] = {}
        #: Serials whose queue got an entry older than its last: sorted at next read.
        self._unsorted_queues: set[str] = set()
        self._finished: OrderedDict[int, Request] = OrderedDict()
        self._files_by_token: dict[str, FileTransaction] = {}
        self._files_by_trans_id: dict[int, FileTransaction] = {}
        self._counters: dict[str, int] = {}
        self._next_id: dict[str, int] = {}
        self._touched: set[int] = set()
        #: Terminals whose session columns wait for the next flush (``save_session``).
        self._sessions_saved: set[int] = set()
        self._sms_pending: dict[int, OutgoingSms] = {}
        self._sms_references: dict[str, int] = {}
        self._apps: dict[str, Application] = {}
        self._apps_by_ec: dict[str, Application] = {}
        self._outboxes: dict[str, _Outbox] = {}
        self._notifications: dict[int, AppNotification] = {}
        self._app_messages: OrderedDict[int, AppMessage] = OrderedDict()
        self._biz_seqs: dict[tuple[str, str], AppMessage] = {}

    def _install(self, snapshot: Snapshot, vault: Vault | None) -> None:
        """Fill the emptied cache from what the store loaded (secrets opened)."""
        self._clear()
        for row in snapshot.terminals:
            terminal = TERMINALS.load(row, vault)
            self._terminals[terminal.id] = terminal
            self._reindex(terminal, terminal_keys(terminal))
        opened = vault.open if vault is not None else None
        for terminal_id, tag, value, *_ in snapshot.config:
            value = config_secret(opened, terminal_id, tag, value)
            self._config.setdefault(terminal_id, {})[tag] = value
        for row in snapshot.active:
            self._track(REQUESTS.load(row, vault))
        for row in reversed(snapshot.finished):
            self._track(REQUESTS.load(row, vault))
        for row in snapshot.files:
            self._index_file(FILES.load(row))
        self._counters = dict(snapshot.counters)
        self._next_id = {
            table.name: snapshot.sequences.get(table.name, 0) + 1 for table in NUMBERED_TABLES
        }
        for row in snapshot.sms_pending:
            sms = SMS_OUTBOX.load(row, vault)
            self._sms_pending[sms.id] = sms
        self._sms_references = dict(snapshot.sms_references)
        for row in snapshot.applications:
            self._index_application(APPLICATIONS.load(row, vault))
        for row in snapshot.notifications:
            self._add_notification(NOTIFICATIONS.load(row))
        for row in reversed(snapshot.app_messages):
            self._cache_app_message(APP_MESSAGES.load(row))

    # --- terminals ----------------------------------------------------------------

    def get(self, serial: str) -> Terminal | None:
        return self._index["serial"].get(serial)

    def by_imei(self, imei: str) -> Terminal | None:
        return self._index["imei"].get(imei)

    def by_msisdn(self, msisdn: str) -> Terminal | None:
        return self._index["msisdn"].get(normalize_msisdn(msisdn))

    def terminals(self) -> list[Terminal]:
        return list(self._terminals.values())

    def config_values(self, serial: str) -> dict[int, bytes]:
        terminal = self.get(serial)
        return dict(self._config.get(terminal.id or 0, {})) if terminal else {}

    def _check_unique(self, terminal: Terminal, keys: dict[str, str]) -> None:
        for name, key in keys.items():
            other = self._index[name].get(key)
            if other is not None and other.id != terminal.id:
                raise RegistryError(f"{name} {key} is already used by terminal id {other.id}")

    def _reindex(self, terminal: Terminal, keys: dict[str, str]) -> None:
        terminal_id = terminal.id or 0
        for name, key in self._indexed.get(terminal_id, {}).items():
            holder = self._index[name].get(key)
            if holder is not None and holder.id == terminal_id:
                del self._index[name][key]
        for name, key in keys.items():
            self._index[name][key] = terminal
        self._indexed[terminal_id] = keys

    # --- requests -------------------------------------------------------------------

    def queued(self, serial: str) -> list[Request]:
        """The terminal's active requests by id: requests enter its queue in id order
        (enqueue, load), so only one filed again out of order costs a sort, once."""
        queue = self._queues.get(serial)
        if queue is None:
            return []
        if serial in self._unsorted_queues:
            self._unsorted_queues.discard(serial)
            queue = self._queues[serial] = dict(sorted(queue.items()))
        return list(queue.values())

    def active_requests(self) -> list[Request]:
        return sorted(self._active.values(), key=lambda r: r.id or 0)

    def queue_stats(self) -> tuple[int, float | None]:
        # Active requests are filed by increasing id (enqueue, and load ORDER BY id), and
        # a re-filed one keeps its place: the first is the oldest.
        oldest = next(iter(self._active.values()), None)
        return len(self._active), None if oldest is None else oldest.created_at

    def request(self, id: int) -> Request | None:
        return self._active.get(id) or self._finished.get(id)

    def _track(self, request: Request) -> None:
        """File a request in the active queue or the finished cache by its state."""
        request_id = request.id or 0
        queue = self._queues.setdefault(request.serial, {})
        if request.active:
            self._finished.pop(request_id, None)
            if request_id not in queue and queue and next(reversed(queue)) > request_id:
                self._unsorted_queues.add(request.serial)
            self._active[request_id] = queue[request_id] = request
            return
        if self._active.pop(request_id, None) is not None:
            # Counted once, on leaving the queue: a later outcome (0x4010) is not a second.
            self.request_outcomes[(request.command, request.state)] += 1
        queue.pop(request_id, None)
        if not queue:
            del self._queues[request.serial]
            self._unsorted_queues.discard(request.serial)
        self._finished[request_id] = request
        self._finished.move_to_end(request_id)
        if len(self._finished) > FINISHED_CACHE_SIZE:
            self._finished.popitem(last=False)

    # --- files and SMS --------------------------------------------------------------

    def file_by_token(self, token: str) -> FileTransaction | None:
        return self._files_by_token.get(token)

    def file_by_trans_id(self, trans_id: int) -> FileTransaction | None:
        return self._files_by_trans_id.get(trans_id)

    def _index_file(self, tx: FileTransaction) -> None:
        self._files_by_token[tx.token] = tx
        self._files_by_trans_id[tx.trans_id] = tx

    def pending_sms(self) -> list[OutgoingSms]:
        return sorted(self._sms_pending.values(), key=lambda sms: sms.id or 0)

    def sms_references(self) -> dict[str, int]:
        return dict(self._sms_references)

    # --- applications, notifications, application messages --------------------------

    def applications(self) -> list[Application]:
        return list(self._apps.values())

    def application(self, app_id: str) -> Application | None:
        return self._apps.get(app_id)

    def application_by_ec(self, ec_code: str) -> Application | None:
        return self._apps_by_ec.get(ec_code)

    def _index_application(self, app: Application) -> None:
        self._apps[app.app_id] = app
        self._apps_by_ec[app.ec_code] = app

    def notifications(self, app_id: str) -> list[AppNotification]:
        outbox = self._outboxes.get(app_id)
        return [] if outbox is None else list(outbox.entries.values())

    def notification(self, notify_id: int) -> AppNotification | None:
        return self._notifications.get(notify_id)

    def ready_notifications(self, app_id: str) -> Iterator[AppNotification]:
        outbox = self._outboxes.get(app_id)
        return iter(()) if outbox is None else outbox.head()

    def _add_notification(self, notification: AppNotification) -> None:
        """Ids only grow, so appending keeps each outbox in notifyId order."""
        outbox = self._outboxes.get(notification.app_id)
        if outbox is None:
            outbox = self._outboxes[notification.app_id] = _Outbox()
        outbox.entries[notification.id or 0] = notification
        outbox.file(notification)
        self._notifications[notification.id or 0] = notification

    def _refile_notification(self, notification: AppNotification) -> None:
        if self._notifications.get(notification.id or 0) is notification:  # not deleted
            self._outboxes[notification.app_id].file(notification)

    def _remove_notification(self, notify_id: int) -> bool:
        notification = self._notifications.pop(notify_id, None)
        if notification is None:
            return False
        outbox = self._outboxes[notification.app_id]
        del outbox.entries[notify_id]
        outbox.ready.pop(notify_id, None)
        return True

    def app_message_by_biz_seq(self, app_id: str, biz_seq: str) -> AppMessage | None:
        return self._biz_seqs.get((app_id, biz_seq))

    def _cache_app_message(self, message: AppMessage) -> None:
        self._app_messages[message.id or 0] = message
        if message.biz_seq is not None:
            self._biz_seqs[(message.app_id, message.biz_seq)] = message
        if len(self._app_messages) > APP_MESSAGE_CACHE_SIZE:
            _, old = self._app_messages.popitem(last=False)
            self._forget_biz_seq(old)

    def _forget_biz_seq(self, message: AppMessage) -> None:
        """Unindex the bizSeq of a message leaving the cache, unless a newer one holds it."""
        key = (message.app_id, message.biz_seq or "")
        if self._biz_seqs.get(key) is message:
            del self._biz_seqs[key]

    # --- retention ------------------------------------------------------------------

    def _forget(self, keys: list[Any], table: str) -> int:
        """Drop the cached copies of pruned rows; the number of rows pruned."""
        if table == "requests":
            for key in keys:
                self._finished.pop(key, None)
        elif table == "app_messages":
            for key in keys:
                message = self._app_messages.pop(key, None)
                if message is not None:
                    self._forget_biz_seq(message)
        elif table == "file_transactions":
            for key in keys:
                tx = self._files_by_trans_id.pop(key, None)
                if tx is not None and self._files_by_token.get(tx.token) is tx:
                    del self._files_by_token[tx.token]
        return len(keys)

"""The registry of one gateway node among several on one database (issue #13, D-386).

Every node keeps the cache of D-02, so that each message is still served from memory;
what another node may change under it is re-read from the store:

- **Terminal and application records** stay cached on every node. Once a change of one
  commits, :attr:`SharedRegistry.change_observers` hear of it (the cluster tells the
  other nodes, which call :meth:`~SharedRegistry.reload_terminals` or
  :meth:`~SharedRegistry.reload_application`). The node holding a terminal's session is
  the authority on its session's columns (:data:`SESSION_FIELDS`): re-reading a change
  made elsewhere, it keeps its own values of those.
- **The request queue** of a terminal is cached only by the node holding its session:
  a node drops every queue when it opens (it holds no session yet), reads a terminal's
  queue when its session begins (:meth:`~SharedRegistry.reload_queue`) or when told of
  a new request, and forgets it when the session goes elsewhere
  (:meth:`~SharedRegistry.forget_queue`). A request enqueued here for a terminal held
  elsewhere is announced to :attr:`~SharedRegistry.queued_observers` once committed.
- **Notifications** are not cached at all: the outbox of several nodes is the
  database's table, claimed row by row (D-365, :mod:`m2mgw.app.shared_outbox`).
- **Application messages** (msgIds) are read from the store, since their outcome is
  written by the node that delivered their request.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from typing import Any, NamedTuple

from twisted.internet.defer import Deferred

from m2mgw.core.model import Application, AppMessage, AppNotification, Request, Terminal
from m2mgw.core.registry.cache import terminal_keys
from m2mgw.core.registry.cached import CachedRegistry
from m2mgw.core.registry.store import Query, Snapshot
from m2mgw.core.registry.tables import (
    ACTIVE_REQUEST_STATES,
    APP_MESSAGES,
    APPLICATIONS,
    COUNTERS,
    REQUESTS,
    TERMINAL_CONFIG,
    TERMINALS,
    Row,
    config_secret,
)
from m2mgw.core.vault import Vault

#: The columns of a terminal's record that its session writes: the node holding the
#: session keeps its values of these when it re-reads a change made on another node.
SESSION_FIELDS = frozenset({
    "state", "session_timestamp", "last_session_timestamp", "session_key",
    "session_key_expiry", "protocol_version", "bearer", "address", "last_seen",
    "wakeup_at", "connect_mode", "heartbeat_interval", "software_version", "seq_counter",
    "trans_counter", "config_unverified", "auth_failures",
})
#: Rows a reload asks for at most: far beyond one terminal's queue or configuration.
_MANY = 1_000_000
_TERMINAL_FIELDS = tuple(TERMINALS.columns)
_ACTIVE = list(ACTIVE_REQUEST_STATES)


class Change(NamedTuple):
    """A committed change of a record other nodes cache: ``kind`` is ``terminal`` (key:
    the serial) or ``application`` (key: the app id)."""

    kind: str
    key: str


class SharedRegistry(CachedRegistry):
    """A :class:`CachedRegistry` whose store other nodes write too (see the module
    docstring); a backend mixes it in before its own class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Called with each committed :class:`Change` of a terminal or an application.
        self.change_observers: list[Callable[[Change], None]] = []
        #: Called with each request once its INSERT committed.
        self.queued_observers: list[Callable[[Request], None]] = []

    def _install(self, snapshot: Snapshot, vault: Vault | None) -> None:
        """The cache as the module docstring says: no queue, no notification."""
        super()._install(snapshot, vault)
        self._active.clear()
        self._queues.clear()
        self._outboxes.clear()
        self._notifications.clear()

    # --- changes told once committed ---------------------------------------------------

    def _told(self, d: Deferred[Any], kind: str, key: str | None) -> Deferred[Any]:
        def tell(result: Any) -> Any:
            if key:
                for observer in self.change_observers:
                    observer(Change(kind, key))
            return result

        return d.addCallback(tell)

    def add(self, terminal: Terminal) -> Deferred[Terminal]:
        return self._told(super().add(terminal), "terminal", terminal.serial)

    def save(self, terminal: Terminal) -> Deferred[None]:
        return self._told(super().save(terminal), "terminal", terminal.serial)

    def remove(self, serial_or_imei: str) -> Deferred[None]:
        terminal = self.get(serial_or_imei) or self.by_imei(serial_or_imei)
        serial = terminal.serial if terminal is not None else None
        return self._told(super().remove(serial_or_imei), "terminal", serial)

    def store_config(self, serial: str, values: dict[int, bytes], source: str) -> Deferred[None]:
        return self._told(super().store_config(serial, values, source), "terminal", serial)

    def add_application(self, app: Application) -> Deferred[Application]:
        return self._told(super().add_application(app), "application", app.app_id)

    def save_application(self, app: Application) -> Deferred[None]:
        return self._told(super().save_application(app), "application", app.app_id)

    def enqueue(self, request: Request) -> Deferred[Request]:
        def committed(request: Request) -> Request:
            for observer in self.queued_observers:
                observer(request)
            return request

        return super().enqueue(request).addCallback(committed)

    def enqueue_notification(self, notification: AppNotification) -> Deferred[AppNotification]:
        """Stored, and not kept: the database's table is the outbox."""

        def stored(notification: AppNotification) -> AppNotification:
            self._remove_notification(notification.id or 0)
            return notification

        return super().enqueue_notification(notification).addCallback(stored)

    def app_message(self, msg_id: int) -> Deferred[AppMessage | None]:
        """Read from the store: the node that delivered its request wrote its outcome.
        A cached copy (bizSeq duplicates are looked up there) is brought up to date."""

        def loaded(rows: list[Row]) -> AppMessage | None:
            if not rows:
                return None
            message: AppMessage = APP_MESSAGES.load(rows[0])
            cached = self._app_messages.get(msg_id)
            if cached is None:
                return message
            _copy(message, cached, APP_MESSAGES.columns)
            return cached

        return self._query(Query(APP_MESSAGES, {"id": msg_id}, 1)).addCallback(loaded)

    # --- re-reading what other nodes changed ----------------------------------------------

    def committed(self) -> Deferred[None]:
        """Fires once every write submitted before has committed (a read waits for
        them): what another node reads after that sees them."""
        return self._query(Query(COUNTERS, {"name": ""}, 1)).addCallback(lambda _: None)

    def reload_terminals(self, serials: Iterable[str] | None = None,
                         held: Container[str] = ()) -> Deferred[None]:
        """Re-read the records and configuration of ``serials`` (None: every terminal);
        a record gone from the store leaves the cache, with its queue. Of the terminals
        in ``held``, whose sessions this node holds, the cached values of
        :data:`SESSION_FIELDS` stay as they are."""
        wanted = None if serials is None else sorted(set(serials))
        if wanted == []:
            return self.committed()
        by_serial = {} if wanted is None else {"serial": wanted}
        d = self._query(Query(TERMINALS, by_serial, _MANY))

        def terminals(rows: list[Row]) -> Deferred[None]:
            loaded = [TERMINALS.load(row, self._vault) for row in rows]
            by_id = {} if wanted is None else {"terminal_id": [t.id for t in loaded]}
            config = self._query(Query(TERMINAL_CONFIG, by_id, _MANY, order="tag"))
            return config.addCallback(self._install_terminals, wanted, loaded, held)

        return d.addCallback(terminals)

    def _install_terminals(self, config: list[Row], wanted: list[str] | None,
                           loaded: list[Terminal], held: Container[str]) -> None:
        found = {t.serial: t for t in loaded}
        if wanted is None:
            wanted = sorted({*found, *self._index["serial"]})  # type: ignore[arg-type]
            self._config.clear()
        for serial in wanted:
            terminal = found.get(serial)
            if terminal is None:
                self._evict(self._index["serial"].get(serial))
                continue
            cached = self._terminals.get(terminal.id or 0)
            if cached is None:
                self._adopt(terminal)
                continue
            kept = SESSION_FIELDS if serial in held else ()
            _copy(terminal, cached, [f for f in _TERMINAL_FIELDS if f not in kept])
            self._reindex(cached, terminal_keys(cached))
        opened = self._vault.open if self._vault is not None else None
        for terminal in loaded:
            self._config[terminal.id or 0] = {}
        for terminal_id, tag, value, *_ in config:
            if terminal_id in self._config:
                self._config[terminal_id][tag] = config_secret(opened, terminal_id, tag, value)

    def _adopt(self, terminal: Terminal) -> None:
        """A record new to this node; cached records it displaced (a terminal removed
        and provisioned again, with a new id) leave the cache."""
        keys = terminal_keys(terminal)
        for name, key in keys.items():
            other = self._index[name].get(key)
            if other is not None and other.id != terminal.id:
                self._evict(other)
        self._terminals[terminal.id or 0] = terminal
        self._reindex(terminal, keys)

    def _evict(self, terminal: Terminal | None) -> None:
        """Forget a record the store no longer holds (nothing is written)."""
        if terminal is None:
            return
        terminal_id = terminal.id or 0
        self._terminals.pop(terminal_id, None)
        self._reindex(terminal, {})
        self._indexed.pop(terminal_id, None)
        self._config.pop(terminal_id, None)
        self._touched.discard(terminal_id)
        if terminal.serial:
            self.forget_queue(terminal.serial)

    def reload_applications(self, app_ids: Iterable[str] | None = None) -> Deferred[None]:
        """Re-read the records of ``app_ids`` (None: every application); one gone from
        the store is gone from the cache."""
        wanted = None if app_ids is None else sorted(set(app_ids))
        if wanted == []:
            return self.committed()
        by_id = {} if wanted is None else {"app_id": wanted}

        def loaded(rows: list[Row]) -> None:
            found = {app.app_id: app for app in
                     (APPLICATIONS.load(row, self._vault) for row in rows)}
            for app_id in wanted if wanted is not None else sorted({*found, *self._apps}):
                app, cached = found.get(app_id), self._apps.get(app_id)
                if cached is not None:
                    del self._apps[app_id]
                    if self._apps_by_ec.get(cached.ec_code) is cached:
                        del self._apps_by_ec[cached.ec_code]
                if app is None:
                    continue
                if cached is not None:
                    _copy(app, cached, APPLICATIONS.columns)
                    app = cached
                self._index_application(app)

        query = Query(APPLICATIONS, by_id, _MANY, order="app_id")
        return self._query(query).addCallback(loaded)

    # --- the queues of the terminals whose sessions this node holds --------------------------

    def reload_queue(self, serial: str) -> Deferred[list[Request]]:
        """Read ``serial``'s queued and sent requests into the cache, and the state of
        those cached that left the queue on another node; the queue, in order."""
        cached = list(self._queues.get(serial, {}))
        d = self._query(Query(REQUESTS, {"serial": serial, "state": _ACTIVE}, _MANY))

        def active(rows: list[Row]) -> Deferred[list[Request]] | list[Request]:
            loaded = self.adopt_requests(rows, track=True)
            gone = sorted(set(cached) - {r.id for r in loaded})
            if not gone:
                return self.queued(serial)
            left = self._query(Query(REQUESTS, {"id": gone}, len(gone)))
            return left.addCallback(lambda rows: self.adopt_requests(rows, track=True)).addCallback(
                lambda _: self.queued(serial))

        return d.addCallback(active)

    def forget_queue(self, serial: str) -> None:
        """Drop ``serial``'s active requests from the cache: its session is elsewhere
        (nothing is written, and no outcome is counted)."""
        for request_id in self._queues.pop(serial, {}):
            self._active.pop(request_id, None)

    def adopt_requests(self, rows: Iterable[Row], *, track: bool = False) -> list[Request]:
        """Requests from rows of the store: cached ones brought up to date (with
        ``track``, uncached ones cached too); the cached instances where there are."""
        requests = []
        for row in rows:
            loaded: Request = REQUESTS.load(row, self._vault)
            cached = self.request(loaded.id or 0)
            if cached is not None:
                _copy(loaded, cached, REQUESTS.columns)
                loaded = cached
            if cached is not None or track:
                self._track(loaded)
            requests.append(loaded)
        return requests


def _copy(source: object, target: object, fields: Iterable[str]) -> None:
    for name in fields:
        setattr(target, name, getattr(source, name))

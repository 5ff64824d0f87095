"""The durable per-application outbox of notifications (spec 4.7, 6.6).

An entry is written first, then offered on the application's most recent long
connection, else to its callback URL, one application at a time in creation order.
A failed offer is retried on ``notify_retry_schedule``; after the last retry (or with
no channel at all) it is kept for ``FetchMessages`` or the next long-connection login.
Entries older than ``notify_retention`` are discarded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from lxml import etree
from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.app import operations as ops
from m2mgw.app import soap
from m2mgw.app.callbacks import CallbackChannel
from m2mgw.config import AppConfig
from m2mgw.core.model import Application, AppNotification, NotificationState
from m2mgw.core.registry import Registry

log = Logger()

EXPIRY_INTERVAL = 60.0
#: Payloads of notifications stored by this process and not offered yet, kept at most
#: this many, so that a first offer need not parse the stored body again (D-401).
FRESH_PAYLOADS = 10_000


class Channel(Protocol):
    """A way to offer one notification to an application: a live session or its callback."""

    def capacity(self, app_id: str) -> int:
        """How many more of the app's notifications may be outstanding here now (-1: none)."""
        ...

    def offer(self, app: Application, notification: object) -> Deferred[bool]:
        """Deliver; fires True when the application accepted it (result 0 or 11)."""
        ...


def encode_notification(payload: object) -> bytes:
    """The outbox form of a notification: its element, notifyId left for the store to set."""
    if getattr(payload, "notify_id", 0):
        payload = replace(payload, notify_id=0)  # type: ignore[type-var]
    return etree.tostring(soap.to_element(payload))


def decode_notification(entry: AppNotification) -> Any:
    cls = ops.element_class(entry.kind)
    payload = soap.from_element(etree.fromstring(entry.body), cls)  # type: ignore[arg-type]
    payload.notify_id = entry.id
    return payload


@dataclass(slots=True)
class _AppState:
    """Per-application memory that need not survive a restart."""

    connections: list[Any] = field(default_factory=list)
    inflight: set[int] = field(default_factory=set)
    timer: IDelayedCall | None = None


class Outbox(service.Service):
    """Stores, offers, retries and expires the notifications of every application."""

    name = "outbox"

    def __init__(self, registry: Registry, callbacks: CallbackChannel,
                 clock: IReactorTime, config: AppConfig) -> None:
        self.registry = registry
        self.callbacks = callbacks
        self.clock = clock
        self.config = config
        self._apps: dict[str, _AppState] = {}
        #: Payloads not offered yet by notifyId (D-401): what decoding the entry gives.
        self._fresh: dict[int, Any] = {}
        self._expiry: IDelayedCall | None = None
        #: Since start-up, for the metrics: notifications the application accepted and
        #: offers that failed, by (app id, channel), and those discarded unsent by app id.
        self.delivered: Counter[tuple[str, str]] = Counter()
        self.delivery_failures: Counter[tuple[str, str]] = Counter()
        self.discarded: Counter[str] = Counter()
        #: Notifications set aside, by app id, because a binding cannot carry them (D-253,
        #: D-254).
        self.unencodable: Counter[str] = Counter()

    # --- lifecycle -----------------------------------------------------------------

    def startService(self) -> None:
        """Resume delivery of what the outbox kept across a restart."""
        super().startService()
        for app in self.registry.applications():
            self.pump(app.app_id)
        self._schedule_expiry()

    def stopService(self) -> Deferred[None]:
        """Close long connections and idle callback connections; the outbox stays."""
        super().stopService()
        for state in self._apps.values():
            if state.timer is not None and state.timer.active():
                state.timer.cancel()
            for connection in list(state.connections):
                connection.transport.loseConnection()
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        return self.callbacks.close()

    def _schedule_expiry(self) -> None:
        self._expiry = self.clock.callLater(EXPIRY_INTERVAL, self._expire)

    def _expire(self) -> None:
        """Discard notifications older than ``notify_retention`` (4.7)."""
        limit = self.clock.seconds() - self.config.notify_retention
        for app in self.registry.applications():
            old = [n.id for n in self.registry.notifications(app.app_id)
                   if n.id is not None and n.created_at < limit
                   and n.id not in self._state(app.app_id).inflight]
            if old:
                log.warn("Discarded {count} undelivered notifications of {app_id}",
                         count=len(old), app_id=app.app_id)
                self.discarded[app.app_id] += len(old)
                self.registry.delete_notifications(old)
        # Entries acknowledged or expired before their first offer.
        for notify_id in [i for i in self._fresh if self.registry.notification(i) is None]:
            del self._fresh[notify_id]
        self._schedule_expiry()

    def _state(self, app_id: str) -> _AppState:
        state = self._apps.get(app_id)
        if state is None:
            state = self._apps[app_id] = _AppState()
        return state

    # --- storing and offering ---------------------------------------------------------

    def notify(self, app: Application, payload: object) -> Deferred[AppNotification | None]:
        """Store a notification durably, then offer it; fires once it is committed.

        Never raises: it runs after a terminal's ACK was built, and an exception here
        would abort that terminal's connection. A payload that cannot be stored at all
        is logged, counted and fires None (D-253).
        """
        now = self.clock.seconds()
        kind = type(payload).__name__
        try:
            body = encode_notification(payload)
        except (ValueError, TypeError) as exc:  # e.g. text that XML 1.0 cannot carry
            self.unencodable[app.app_id] += 1
            log.error("{kind} for {app_id} cannot be stored: {why}", kind=kind,
                      app_id=app.app_id, why=str(exc))
            return succeed(None)
        entry = AppNotification(app_id=app.app_id, kind=kind, body=body, next_attempt=now,
                                created_at=now)
        # Offered once committed, never before: its notifyId is then never reused (D-277).
        d = self.registry.enqueue_notification(entry)
        return d.addCallback(self._stored, payload if self.reachable(app) else None)

    def _stored(self, entry: AppNotification, payload: object | None) -> AppNotification:
        if payload is not None and len(self._fresh) < FRESH_PAYLOADS:
            # A copy: one payload may be stored for several applications.
            self._fresh[entry.id or 0] = replace(payload, notify_id=entry.id)  # type: ignore[type-var]
        self.pump(entry.app_id)
        return entry

    def reachable(self, app: Application) -> bool:
        """Whether a notification to ``app`` has a channel now: a live long connection
        or a callback URL."""
        return bool(self._live(app.app_id) or app.callback_url)

    def _live(self, app_id: str) -> Any:
        """The most recently logged-in live long connection of the app (6.6), or None."""
        for connection in reversed(self._state(app_id).connections):
            if connection.capacity(app_id) >= 0:
                return connection
        return None

    def pump(self, app_id: str) -> None:
        """Offer the app's due notifications, oldest first, on its best channel.

        It reads the head of the app's ready queue only (D-255): what is in flight or
        leased there, then as many entries as the channel has room for.
        """
        app = self.registry.application(app_id)
        channel = self._channel(app)
        if app is None or channel is None:
            return
        state = self._state(app_id)
        now = self.clock.seconds()
        room = channel.capacity(app_id)
        batch: list[AppNotification] = []
        for entry in self.registry.ready_notifications(app_id):
            if len(batch) >= room:
                break
            if entry.id in state.inflight:
                continue
            if entry.leased_until is not None and entry.leased_until > now:
                continue
            if entry.next_attempt > now:
                self._wake(app_id, entry.next_attempt - now)
                break  # keep creation order behind a retry
            batch.append(entry)
        # All taken before the first offer, which may finish at once and pump again.
        state.inflight.update(entry.id or 0 for entry in batch)
        for done, entry in enumerate(batch):
            if channel.capacity(app_id) <= 0:
                state.inflight.difference_update(e.id or 0 for e in batch[done:])
                return
            self._offer(app, entry, channel)

    def _channel(self, app: Application | None) -> Channel | None:
        """Where ``app``'s notifications go now: its live long connection, else its
        callback URL; None while there is neither, or it is disabled or we stop."""
        if app is None or not app.enabled or not self.running:
            return None
        channel: Channel | None = self._live(app.app_id)
        if channel is None and app.callback_url:
            channel = self.callbacks
        return channel

    def _wake(self, app_id: str, delay: float) -> None:
        state = self._state(app_id)
        if state.timer is not None and state.timer.active():
            if state.timer.getTime() <= self.clock.seconds() + delay:
                return
            state.timer.cancel()
        state.timer = self.clock.callLater(delay, self.pump, app_id)

    def _offer(self, app: Application, entry: AppNotification, channel: Channel) -> None:
        state = self._state(app.app_id)
        assert entry.id is not None
        payload = self._fresh.pop(entry.id, None)
        if payload is None:
            payload = decode_notification(entry)
        d = maybeDeferred(channel.offer, app, payload)
        counted = (app.app_id, "callback" if channel is self.callbacks else "long_connection")

        def done(ok: bool | Failure) -> None:
            state.inflight.discard(entry.id or 0)
            if not self.running:
                return  # stopping: the stored entry is offered again after the restart
            if isinstance(ok, Failure) and isinstance(ok.value, ops.Unencodable):
                self._set_aside(entry, ok.value.reason)
                self.pump(app.app_id)
                return
            if isinstance(ok, Failure):
                log.failure("Notification {id} to {app_id} failed", ok, id=entry.id,
                            app_id=app.app_id)
                ok = False
            (self.delivered if ok else self.delivery_failures)[counted] += 1
            self._settle(entry, bool(ok))
            self.pump(app.app_id)

        d.addBoth(done)

    def _settle(self, entry: AppNotification, delivered: bool) -> None:
        """An offer's outcome: delivered, the entry goes; else it waits for its retry.
        An entry acknowledged meanwhile (AckMessages) is simply gone."""
        if self.registry.notification(entry.id or 0) is not entry:
            return
        if delivered:
            self.registry.delete_notifications([entry.id or 0])
        else:
            self._retry_later(entry)
            self.registry.update_notification(entry)

    def _set_aside(self, entry: AppNotification, reason: str) -> None:
        """Out of the line for good, never retried (D-254): FetchMessages still has it."""
        if self.registry.notification(entry.id or 0) is not entry:
            return  # acknowledged meanwhile
        self._unencodable(entry, reason)
        self.registry.update_notification(entry)

    def _unencodable(self, entry: AppNotification, reason: str) -> None:
        entry.state = NotificationState.UNENCODABLE
        self.unencodable[entry.app_id] += 1
        log.warn("Notification {id} ({kind}) to {app_id} cannot be sent on the long "
                 "connection: {reason}; set aside for FetchMessages", id=entry.id,
                 kind=entry.kind, app_id=entry.app_id, reason=reason)

    def _retry_later(self, entry: AppNotification) -> None:
        """AD-09: retry on the schedule, each delay capped; then keep it."""
        schedule = self.config.notify_retry_schedule
        entry.attempts += 1
        if entry.attempts > len(schedule):
            entry.state = NotificationState.KEPT
            log.info("Notification {id} to {app_id} kept after {attempts} attempts",
                     id=entry.id, app_id=entry.app_id, attempts=entry.attempts)
        else:
            delay = min(schedule[entry.attempts - 1], self.config.callback_retry_max)
            entry.next_attempt = self.clock.seconds() + delay
        entry.updated_at = self.clock.seconds()

    def lease(self, app_id: str, count: int) -> Deferred[tuple[list[AppNotification], int]]:
        """``FetchMessages`` (3.2.14): up to ``count`` kept and unsent entries, oldest
        first, leased for ``fetch_lease``; and how many more are free."""
        now = self.clock.seconds()
        inflight = self._state(app_id).inflight
        free = [n for n in self.registry.notifications(app_id)
                if n.id not in inflight and (n.leased_until is None or n.leased_until <= now)]
        batch = free[:count]
        for entry in batch:
            entry.leased_until = now + self.config.fetch_lease
            self.registry.update_notification(entry)
        return succeed((batch, len(free) - len(batch)))

    def ack(self, app_id: str, notify_ids: Iterable[int]) -> Deferred[None]:
        """``AckMessages`` (3.2.15): ``app_id``'s notifications among ``notify_ids`` go."""
        entries = (self.registry.notification(i) for i in set(notify_ids))
        mine = [n.id or 0 for n in entries if n is not None and n.app_id == app_id]
        return self.registry.delete_notifications(mine)

    # --- long connections -----------------------------------------------------------

    def connection_opened(self, app_id: str, connection: Any) -> None:
        """A new, confirmed long-connection session (D-256): kept notifications are
        offered on it (6.6)."""
        self._state(app_id).connections.append(connection)
        now = self.clock.seconds()
        for entry in self.registry.notifications(app_id):
            if entry.state == NotificationState.KEPT or entry.next_attempt > now:
                entry.state, entry.attempts, entry.next_attempt = (
                    NotificationState.PENDING, 0, now)
                self.registry.update_notification(entry)
        self.pump(app_id)

    def connection_closed(self, app_id: str, connection: Any) -> None:
        state = self._state(app_id)
        if connection in state.connections:
            state.connections.remove(connection)

    def connections(self, app_id: str) -> list[Any]:
        return list(self._state(app_id).connections)

    def base_key_scheduled(self, app_id: str) -> None:
        """A Base Key rotation was set: the application's live sessions announce it now."""
        for connection in self.connections(app_id):
            connection.base_key_scheduled()

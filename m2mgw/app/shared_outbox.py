"""The applications' outbox when several gateway nodes share one database (D-365, D-387).

A notification is stored by the node its terminal's message arrived on, and offered by
whichever node has a channel to its application: the application's long connection
(on one node), or its callback URL (on every node). So the outbox is the database's
table, not a cache: :class:`SharedOutbox` is the single-node :class:`Outbox` whose
entries come from claims (``SELECT ... FOR UPDATE SKIP LOCKED``, one node at a time
per application, oldest first: :func:`~m2mgw.core.postgres.outbox.claim_notifications`)
and whose outcomes, retries, fetches, acknowledgements and expiry are SQL on that
table. Each notifyId is offered by one node at a time; a node that stores one, or
gives a claim back, wakes every node (``outbox``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.app.callbacks import CallbackChannel
from m2mgw.app.outbox import Outbox
from m2mgw.config import AppConfig
from m2mgw.core.model import AppNotification
from m2mgw.core.postgres import outbox as sql
from m2mgw.core.postgres.connection import Cursor, Database
from m2mgw.core.registry import Registry

log = Logger()


class SharedOutbox(Outbox):
    """:class:`Outbox` on the database's table, for ``node`` among several, through
    ``db`` (a :class:`Database` of one connection: its transactions keep their order)."""

    def __init__(self, registry: Registry, callbacks: CallbackChannel, clock: IReactorTime,
                 config: AppConfig, *, db: Database, node: str) -> None:
        super().__init__(registry, callbacks, clock, config)
        self.db = db
        self.node = node
        #: Applications with a claim in flight: True when it is to be claimed again.
        self._claiming: dict[str, bool] = {}
        #: Applications whose new notifications every node hears of at the turn's end.
        self._stored_for: set[str] = set()
        self._turn: IDelayedCall | None = None

    def stopService(self) -> Deferred[None]:
        """As a single gateway, and this node's claims are given back: another node
        with a channel to the application offers them now."""
        released: Deferred[Any] = self.db.transaction(sql.release_claims, [self.node])
        released.addErrback(self._logged, "give back this node's claims")
        waits: list[Deferred[Any]] = [super().stopService(), released]
        return gatherResults(waits).addCallback(lambda _: None)

    def _stored(self, entry: AppNotification, payload: object | None) -> AppNotification:
        self._stored_for.add(entry.app_id)
        if self._turn is None:
            self._turn = self.clock.callLater(0, self._wake_nodes)
        # No fresh payload kept (D-401): another node may be the one to offer it, and
        # then nothing here would ever take it out again.
        return super()._stored(entry, None)

    def _wake_nodes(self) -> None:
        """Every node hears, in one transaction, which applications have new ones."""
        self._turn = None
        apps, self._stored_for = sorted(self._stored_for), set()
        self.db.transaction(_wake_all, apps).addErrback(self._logged, "wake the other nodes")

    def pump(self, app_id: str) -> None:
        """Claim as many of the application's due notifications as its channel here
        takes, and offer them."""
        channel = self._channel(self.registry.application(app_id))
        if channel is None:
            return
        if app_id in self._claiming:
            self._claiming[app_id] = True
            return
        room = channel.capacity(app_id)
        if room <= 0:
            return
        self._claiming[app_id] = False
        d = self.db.transaction(sql.claim_due, app_id, self.node, self.clock.seconds(), room)
        d.addCallbacks(self._claimed, self._claim_failed, (app_id,), errbackArgs=(app_id,))

    def _claimed(self, result: tuple[list[AppNotification], float | None], app_id: str) -> None:
        entries, next_due = result
        again = self._claiming.pop(app_id, False)
        app = self.registry.application(app_id)
        channel = self._channel(app)
        state = self._state(app_id)
        state.inflight.update(entry.id or 0 for entry in entries)
        for done, entry in enumerate(entries):
            if app is None or channel is None or channel.capacity(app_id) <= 0:
                rest = [e.id or 0 for e in entries[done:]]
                state.inflight.difference_update(rest)
                self._give_back(rest)
                break
            self._offer(app, entry, channel)
        if next_due is not None:
            self._wake(app_id, max(0.0, next_due - self.clock.seconds()))
        if again:
            self.pump(app_id)

    def _claim_failed(self, failure: Failure, app_id: str) -> None:
        self._claiming.pop(app_id, None)
        log.warn("Cannot claim notifications of {app_id}: {why}", app_id=app_id,
                 why=failure.getErrorMessage())
        self._wake(app_id, self.config.callback_retry_max)

    def _give_back(self, ids: list[int]) -> None:
        self.db.transaction(sql.release_notifications, self.node, ids).addErrback(
            self._logged, "give back notifications")

    def _settle(self, entry: AppNotification, delivered: bool) -> None:
        if delivered:
            d: Deferred[Any] = self.db.transaction(sql.finish_notifications, self.node,
                                                   [entry.id or 0])
        else:
            self._retry_later(entry)
            d = self.db.transaction(sql.retry_notification, self.node, entry)
        d.addErrback(self._logged, f"settle notification {entry.id}")

    def _set_aside(self, entry: AppNotification, reason: str) -> None:
        self._unencodable(entry, reason)
        self.db.transaction(sql.set_aside_notification, self.node, entry.id or 0,
                            self.clock.seconds()).addErrback(
            self._logged, f"set notification {entry.id} aside")

    def lease(self, app_id: str, count: int) -> Deferred[tuple[list[AppNotification], int]]:
        now = self.clock.seconds()
        return self.db.transaction(sql.lease_notifications, app_id, now, count,
                                   now + self.config.fetch_lease)

    def ack(self, app_id: str, notify_ids: Iterable[int]) -> Deferred[None]:
        d = self.db.transaction(sql.ack_notifications, app_id, sorted(set(notify_ids)))
        return d.addCallback(lambda _: None)

    def connection_opened(self, app_id: str, connection: Any) -> None:
        """A new long-connection session (6.6): kept notifications are offered again."""
        self._state(app_id).connections.append(connection)
        d = self.db.transaction(sql.reset_notifications, app_id, self.clock.seconds())
        d.addErrback(self._logged, f"offer the kept notifications of {app_id} again")
        d.addBoth(lambda _: self.pump(app_id))

    def _expire(self) -> None:
        """Discard notifications older than ``notify_retention`` (4.7), whichever node
        stored them."""

        def expired(counts: dict[str, int]) -> None:
            for app_id, count in sorted(counts.items()):
                log.warn("Discarded {count} undelivered notifications of {app_id}",
                         count=count, app_id=app_id)
                self.discarded[app_id] += count

        before = self.clock.seconds() - self.config.notify_retention
        d = self.db.transaction(sql.expire_notifications, before)
        d.addCallbacks(expired, self._logged, errbackArgs=("expire notifications",))
        self._schedule_expiry()

    def _logged(self, failure: Failure, what: str) -> None:
        log.warn("Outbox: cannot {what}: {why}", what=what, why=failure.getErrorMessage())


def _wake_all(cursor: Cursor, app_ids: list[str]) -> None:
    for app_id in app_ids:
        sql.wake_outbox(cursor, app_id)

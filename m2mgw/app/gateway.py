"""The application side of the gateway: one service behind both bindings (spec 2, 3, 4.7, 6.6).

:class:`ApplicationService` is the gateway's :class:`~m2mgw.core.uplink.UplinkSink`
and the one implementation of every operation: the SOAP endpoint
(:mod:`m2mgw.app.web`) and the long-connection listener (:mod:`m2mgw.app.server`)
only decode, authenticate and hand it dataclasses of :mod:`m2mgw.app.operations`.

Notifications go through a durable per-application outbox in the registry: an entry
is written first, then offered on the most recent long connection, else to the
callback URL, one application at a time in creation order. A failed offer is retried
on ``notify_retry_schedule``; after the last retry (or with no channel at all) it is
kept for ``FetchMessages`` or the next long-connection login.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from lxml import etree
from twisted.application import service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from m2mgw.app import fetch, keys, server, soap, web
from m2mgw.app import operations as ops
from m2mgw.app.longconn import embeddable
from m2mgw.core import requests as build
from m2mgw.core.model import (
    Application,
    AppMessage,
    AppNotification,
    NotificationState,
    Request,
    RequestState,
    Terminal,
    TerminalState,
)
from m2mgw.protocol import messages as m
from m2mgw.protocol.compat import ProfileRefused
from m2mgw.protocol.constants import Command, TransparentResult
from m2mgw.protocol.errors import ProtocolError

if TYPE_CHECKING:
    from m2mgw.service import GatewayService

log = Logger()

R = ops.ResultCode
respond = ops.make_response
ORIGIN_PREFIX = "app:"
MIN_TTL, MAX_TTL = 60, 604_800
BIZ_SEQ_WINDOW = 86_400.0
MAX_CONFIG_TAGS = 64
MAX_STATUS_IDS = 100
MAX_FETCH = 500
EXPIRY_INTERVAL = 60.0
#: Alarm report tags (terminal spec 3.5): they form ``AlarmInfo``.
ALARM_TAGS = (0x300B, 0x300C, 0x300D, 0x300E)
_STATES = {
    TerminalState.UNREGISTERED: "UNREGISTERED",
    TerminalState.REGISTERED: "REGISTERED",
    TerminalState.LOGGED_IN: "ONLINE",
    TerminalState.LOGGED_OUT: "LOGGED_OUT",
    TerminalState.OFFLINE: "OFFLINE",
}
_EVENTS = {
    TerminalState.REGISTERED: "REGISTERED",
    TerminalState.LOGGED_IN: "LOGGED_IN",
    TerminalState.LOGGED_OUT: "LOGGED_OUT",
    TerminalState.OFFLINE: "OFFLINE",
}


class Channel(Protocol):
    """A way to offer one notification to an application: a live session or its callback."""

    def capacity(self, app_id: str) -> int:
        """How many more of the app's notifications may be outstanding here now (-1: none)."""
        ...

    def offer(self, app: Application, notification: object) -> Deferred[bool]:
        """Deliver; fires True when the application accepted it (result 0 or 11)."""
        ...


# --- pure helpers ----------------------------------------------------------------------


def refused_read(tag: int) -> bool:
    """Security and reserved tags are never read by applications (2.6, AD-17)."""
    return 0xE000 <= tag <= 0xE0FF or 0x5000 <= tag <= 0x50FF


CONNECTIVITY_TAGS = frozenset({0x0002, 0x0007, 0x0008, 0x0009, 0x000A, 0x0025, 0x4002})
_STAT_CONTROLS = frozenset({0x2001, 0x2002, 0x2003, 0x2005, 0x2011, 0x2012, 0x2015, 0x2016,
                            0x2019, 0x201A})
REMOTE_CODES = frozenset(range(0, 9)) | {0x0B}
REMOTE_CODES_ALL = frozenset({0x09, 0x0A, 0x0C, 0x0D})


def refused_write(tag: int, permissions: set[str]) -> bool:
    """The SetConfig table of 2.6."""
    if tag in CONNECTIVITY_TAGS:
        return "connectivity" not in permissions
    return not (
        0x0001 <= tag <= 0x01FF or tag in _STAT_CONTROLS or 0x4003 <= tag <= 0x4006
        or 0x8000 <= tag <= 0xDFFF
    )


def message_outcome(request: Request) -> tuple[str, int, int | None]:
    """A terminal request's state as (message state, opResult, terminalResult) (2.5, 2.7)."""
    if request.state == RequestState.EXPIRED:
        return "EXPIRED", R.TERMINAL_OFFLINE, None
    if request.state == RequestState.CANCELLED:
        return "FAILED", R.TERMINAL_UNKNOWN, None
    if request.state == RequestState.SUCCEEDED:
        return ("APPLIED" if request.outcome == "applied" else "ACKED"), R.OK, request.result
    if request.state == RequestState.FAILED:
        if request.result is None:
            return "FAILED", R.TERMINAL_TIMEOUT, None
        return "FAILED", R.TERMINAL_ERROR, request.result
    return ("SENT" if request.state == RequestState.SENT else "QUEUED"), R.OK, None


def carried_items(
    cls: type, tlvs: Iterable[tuple[int, bytes]]
) -> tuple[list[ops.TlvItem], list[int]]:
    """Terminal TLVs as the items of a ``cls`` body, and the tags left out.

    Left out are the tags the long connection cannot embed there (the application
    family, the body's own tags such as ``0x4013``): for both bindings alike, so that a
    notification is the same whichever way it travels (D-251).
    """
    items: list[ops.TlvItem] = []
    left_out: list[int] = []
    for tag, value in tlvs:
        if embeddable(cls, tag):
            items.append(ops.TlvItem(tag=tag, value=value))
        else:
            left_out.append(tag)
    return items, left_out


def answer_items(request: Request) -> tuple[list[ops.TlvItem], list[int]]:
    """Values (ret 0) or failed tags (any other ret) of a CONFIG_GET/SET or REMOTE_CTRL answer."""
    if request.answer_body is None or request.command not in (
        Command.CONFIG_GET, Command.CONFIG_SET, Command.REMOTE_CTRL
    ):
        return [], []
    ack_type = m.MESSAGE_TYPES[request.command | 0x8000]
    try:
        ack = ack_type.decode_body(request.answer_body)
    except ProtocolError:
        return [], []
    if getattr(ack, "ret", 0) == 0 and request.command == Command.CONFIG_GET:
        return carried_items(ops.NotifyResult, ((t.tag, t.raw) for t in ack.tlvs))[0], []
    if getattr(ack, "ret", 0) != 0:
        return [], [t.tag for t in ack.tlvs]
    return [], []


def encode_notification(payload: object) -> bytes:
    """The outbox form of a notification: its element, notifyId left for the store to set."""
    return etree.tostring(soap.to_element(replace(payload, notify_id=0)))  # type: ignore[type-var]


def decode_notification(entry: AppNotification) -> Any:
    cls = ops.element_class(entry.kind)
    payload = soap.from_element(etree.fromstring(entry.body), cls)  # type: ignore[arg-type]
    payload.notify_id = entry.id
    return payload


def _bearer_name(kind: str | None) -> str:
    name = (kind or "").upper()
    return name if name in ("TCP", "UDP", "SMS") else "TCP"


@dataclass(slots=True)
class _AppState:
    """Per-application memory that need not survive a restart."""

    connections: list[Any] = field(default_factory=list)
    inflight: set[int] = field(default_factory=set)
    timer: IDelayedCall | None = None


# --- the service -----------------------------------------------------------------------


class ApplicationService(service.Service):
    """Applications, their operations and their notifications, for one gateway.

    It is the engine's :class:`~m2mgw.core.uplink.UplinkSink`.
    """

    name = "applications"
    #: Seconds an Upgrade's sourceUrl may take: below the long connection's 15 s
    #: answer timeout (6.6), so the answer still arrives.
    source_fetch_timeout = 10.0

    def __init__(self, gateway: GatewayService) -> None:
        self.gateway = gateway
        self.registry = gateway.registry
        self.engine = gateway.engine
        self.router = gateway.router
        self.config = gateway.config.app
        self.clock = gateway.reactor
        self.soap = web.SoapEndpoint(self)
        self.callbacks = web.CallbackChannel(self, self.soap.notify_session)
        self._apps: dict[str, _AppState] = {}
        self._sync_waiters: dict[int, Deferred[Request]] = {}
        self._expiry: IDelayedCall | None = None
        #: Since start-up, for the metrics: notifications the application accepted and
        #: offers that failed, by (app id, channel), and those discarded unsent by app id.
        self.delivered: Counter[tuple[str, str]] = Counter()
        self.delivery_failures: Counter[tuple[str, str]] = Counter()
        self.discarded: Counter[str] = Counter()
        #: Notifications set aside, by app id, because a binding cannot carry them (D-253,
        #: D-254); trap TLVs left out of notifications, by terminal serial (D-251).
        self.unencodable: Counter[str] = Counter()
        self.tags_left_out: Counter[str] = Counter()
        #: Logs every uplink; keeps data for EC codes no application is provisioned for.
        self.stored = gateway.uplink
        gateway.engine.uplink = self
        gateway.router.result_observers.append(self._on_result)
        gateway.engine.state_observers.append(self._on_state)

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
                   if n.created_at < limit and n.id not in self._state(app.app_id).inflight]
            if old:
                log.warn("Discarded {count} undelivered notifications of {app_id}",
                         count=len(old), app_id=app.app_id)
                self.discarded[app.app_id] += len(old)
                self.registry.delete_notifications(old)
        self._schedule_expiry()

    def _state(self, app_id: str) -> _AppState:
        state = self._apps.get(app_id)
        if state is None:
            state = self._apps[app_id] = _AppState()
        return state

    def http_site(self, root: Resource) -> Site:
        """The ``[http] listen`` site: ``root`` with the SOAP service added (4.1)."""
        return web.site(self, root)

    def listener(self) -> Factory:
        """The ``[app] listen`` factory of long connections (6.1)."""
        return server.AppFactory(self)

    # --- identity -------------------------------------------------------------------

    def application(self, app_id: str) -> Application | None:
        """An enabled application by app id (disabled ones count as unknown, 2.5)."""
        app = self.registry.application(app_id)
        return app if app is not None and app.enabled else None

    def base_key(self, app: Application, now: float) -> str | None:
        """The Base Key for a login at ``now``; None once expired (7.2 step 4)."""
        state = keys.BaseKeyState(app.cipher, app.base_key, app.base_key_expiry,
                                  app.next_base_key, app.next_base_key_from,
                                  app.next_base_key_expiry)
        current = state.current(now)
        if state.key != app.base_key:  # the scheduled rotation took effect
            app.base_key, app.base_key_expiry = state.key, state.expires_at
            app.next_base_key = app.next_base_key_from = app.next_base_key_expiry = None
            self.registry.save_application(app)
        return current

    def session_timestamp(self, app: Application, now: float) -> int:
        """A session timestamp strictly above the application's previous one (6.5.1)."""
        stamp = max(int(now), app.last_session_timestamp + 1)
        app.last_session_timestamp = stamp
        self.registry.save_application(app)
        return stamp

    def visible(self, app: Application, serial: str) -> Terminal | None:
        """The terminal if it is bound to ``app`` (2.6), else None."""
        terminal = self.registry.get(serial)
        if terminal is None:
            return None
        if serial in app.terminals or app.ec_code in terminal.apps:
            return terminal
        return terminal if terminal.default_app == app.ec_code else None

    def _apps_of(self, terminal: Terminal) -> list[Application]:
        return [app for app in self.registry.applications()
                if app.enabled and self.visible(app, terminal.serial or "") is not None]

    # --- UplinkSink -----------------------------------------------------------------

    def exists(self, app_id: str) -> bool:
        return self.registry.application_by_ec(app_id) is not None or self.stored.exists(app_id)

    def deliver(
        self, app_id: str, serial: str, message: m.TransparentData | m.TransparentCmd
    ) -> int | Deferred[int]:
        """DeliverData (3.3.1, AD-16): durable first; result 0 when a channel exists."""
        kept = self.stored.deliver(app_id, serial, message)
        app = self.registry.application_by_ec(app_id)
        if app is None:
            return kept
        if not app.enabled:
            return TransparentResult.REJECTED
        terminal = self.registry.get(serial)
        payload = ops.DeliverData(
            notify_id=0, terminal_id=serial, data=message.user_data,
            fixed_part=message.fixed_part if isinstance(message, m.TransparentCmd) else None,
            bearer=_bearer_name(terminal.bearer if terminal else None),
            receive_time=int(self.clock.seconds()),
        )
        reachable = bool(self._live(app.app_id) or app.callback_url)
        result = TransparentResult.ACCEPTED if reachable else TransparentResult.QUEUED
        # Not stored as a notification (D-253): the message log still holds it.
        return self.notify(app, payload).addCallback(
            lambda entry: result if entry is not None else kept)

    def notify_trap(self, terminal: Terminal, values: dict[int, bytes], bearer: str) -> None:
        """NotifyAlarm for an alarm report, NotifyConfigTrap for any other non-empty trap.

        Its items are the TLVs both bindings can carry (D-251); the restore code is
        escaped like every terminal string (D-252).
        """
        if not values:
            return
        now = int(self.clock.seconds())
        serial = terminal.serial or ""
        if 0x300B in values:
            def num(tag: int) -> int:
                raw = values.get(tag, b"")
                return int.from_bytes(raw, "big") if len(raw) in (1, 2, 4) else 0

            restore = values.get(0x300E)
            items, left_out = carried_items(
                ops.NotifyAlarm, ((t, v) for t, v in values.items() if t not in ALARM_TAGS))
            payload: object = ops.NotifyAlarm(
                notify_id=0, terminal_id=serial,
                alarm=ops.AlarmInfo(status=num(0x300B) & 0xFF, type=num(0x300C) & 0xFF,
                                    code=num(0x300D) & 0xFFFF, time=now,
                                    restore_code=None if restore is None
                                    else ops.terminal_text(restore.decode("latin-1"))),
                items=items, bearer=_bearer_name(bearer),  # the alarm's own (D-333)
            )
        else:
            items, left_out = carried_items(ops.NotifyConfigTrap, values.items())
            payload = ops.NotifyConfigTrap(notify_id=0, terminal_id=serial, time=now,
                                           items=items)
        if left_out:
            self.tags_left_out[serial] += len(left_out)
            log.info("CONFIG_TRAP of {serial}: {tags} left out of its notification, the "
                     "application interface uses them itself", serial=serial,
                     tags=" ".join(f"0x{tag:04X}" for tag in left_out))
        for app in self._apps_of(terminal):
            self.notify(app, payload)

    def _on_state(self, terminal: Terminal, old: str, new: str, reason: int | None) -> None:
        """NotifyTerminalState (3.3.5) to every application that sees the terminal."""
        event = _EVENTS.get(TerminalState(new))
        if event is None:
            return
        if new not in (TerminalState.LOGGED_OUT, TerminalState.OFFLINE):
            reason = None  # the reason belongs to LOGGED_OUT and OFFLINE only
        payload = ops.NotifyTerminalState(notify_id=0, terminal_id=terminal.serial or "",
                                          event=event, reason=reason,
                                          time=int(self.clock.seconds()))
        for app in self._apps_of(terminal):
            self.notify(app, payload)

    # --- request outcomes (2.7) -----------------------------------------------------------

    def _on_result(self, request: Request) -> None:
        if not request.origin.startswith(ORIGIN_PREFIX) or not request.msg_id:
            return
        waiter = self._sync_waiters.pop(int(request.msg_id), None)
        d = self.registry.app_message(int(request.msg_id))
        d.addCallback(self._report, request, waiter)
        d.addErrback(lambda f: log.failure("Cannot report request {id}", f, id=request.id))

    def _report(self, message: AppMessage | None, request: Request,
                waiter: Deferred[Request] | None) -> None:
        if message is None:
            return
        state, op_result, terminal_result = message_outcome(request)
        message.state, message.op_result, message.terminal_result = (
            state, op_result, terminal_result)
        self.registry.update_app_message(message)
        if waiter is not None and not waiter.called:
            waiter.callback(request)  # the sync GetConfig answers with the values
            return
        quiet = (message.operation in ("SendData", "SendCommand") and state == "ACKED"
                 and not message.need_ack)
        app = self.registry.application(message.app_id)
        if quiet or app is None:
            return
        items, failed = answer_items(request)
        self.notify(app, ops.NotifyResult(
            notify_id=0, msg_id=message.id or 0, biz_seq=message.biz_seq,
            operation=message.operation, terminal_id=message.serial, state=state,
            op_result=op_result, terminal_result=terminal_result, items=items,
            failed_tags=failed, time=int(self.clock.seconds()),
        ))

    # --- the outbox -----------------------------------------------------------------

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
        return self.registry.enqueue_notification(entry).addCallback(self._stored)

    def _stored(self, entry: AppNotification) -> AppNotification:
        self.pump(entry.app_id)
        return entry

    def _live(self, app_id: str) -> Any:
        """The most recently logged-in live long connection of the app (6.6), or None."""
        live = [c for c in self._state(app_id).connections if c.capacity(app_id) >= 0]
        return live[-1] if live else None

    def pump(self, app_id: str) -> None:
        """Offer the app's due notifications, oldest first, on its best channel.

        It reads the head of the app's ready queue only (D-255): what is in flight or
        leased there, then as many entries as the channel has room for.
        """
        app = self.application(app_id)
        if app is None or not self.running:
            return
        state = self._state(app_id)
        channel: Channel | None = self._live(app_id)
        if channel is None and app.callback_url:
            channel = self.callbacks
        if channel is None:
            return
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
        d = maybeDeferred(channel.offer, app, decode_notification(entry))
        counted = (app.app_id, "callback" if channel is self.callbacks else "long_connection")

        def done(ok: bool | Failure) -> None:
            state.inflight.discard(entry.id or 0)
            if not self.running:
                return  # stopping: the stored entry is offered again after the restart
            if isinstance(ok, Failure) and ok.check(ops.Unencodable):
                self._set_aside(entry, ok.value.reason)
                self.pump(app.app_id)
                return
            if isinstance(ok, Failure):
                log.failure("Notification {id} to {app_id} failed", ok, id=entry.id,
                            app_id=app.app_id)
                ok = False
            (self.delivered if ok else self.delivery_failures)[counted] += 1
            # An entry acknowledged meanwhile (AckMessages) is simply gone.
            stored = self.registry.notification(entry.id or 0) is entry
            if stored and ok:
                self.registry.delete_notifications([entry.id or 0])
            elif stored:
                self._failed(entry)
            self.pump(app.app_id)

        d.addBoth(done)

    def _set_aside(self, entry: AppNotification, reason: str) -> None:
        """Out of the line for good, never retried (D-254): FetchMessages still has it."""
        if self.registry.notification(entry.id or 0) is not entry:
            return  # acknowledged meanwhile
        entry.state = NotificationState.UNENCODABLE
        self.unencodable[entry.app_id] += 1
        log.warn("Notification {id} ({kind}) to {app_id} cannot be sent on the long "
                 "connection: {reason}; set aside for FetchMessages", id=entry.id,
                 kind=entry.kind, app_id=entry.app_id, reason=reason)
        self.registry.update_notification(entry)

    def _failed(self, entry: AppNotification) -> None:
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
        self.registry.update_notification(entry)

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

    # --- operations (3.2) -----------------------------------------------------------

    def handle(self, app: Application, request: object) -> Deferred[Any]:
        """Execute one operation for ``app``; the response (never a failure)."""
        name = type(request).__name__
        spec = ops.OPERATIONS.get(name)
        handler = getattr(self, f"_op_{name}", None)
        if spec is None or handler is None:
            return succeed(respond(ops.Response, R.UNSUPPORTED, "unsupported operation"))

        def failed(failure: Failure) -> Any:
            if failure.check(ProfileRefused):
                # The terminal's compatibility profile cannot carry it (C7, C9): 10 or 12.
                refused = failure.value
                code = R.TOO_LARGE if refused.too_large else R.UNSUPPORTED
                return respond(spec.response, code, refused.reason)
            log.failure("{operation} of {app_id} failed", failure, operation=name,
                        app_id=app.app_id)
            return respond(spec.response, R.INTERNAL_ERROR, "internal error")

        return maybeDeferred(handler, app, request).addErrback(failed)

    def _op_Heartbeat(self, app: Application, request: ops.Heartbeat) -> Any:
        return ops.HeartbeatResponse(result_desc="OK")

    # downlink ---------------------------------------------------------------------

    def _admit(self, app: Application, serial: str, ttl: int, biz_seq: str | None,
               response: type) -> tuple[Terminal | None, Any]:
        """The checks every downlink shares: binding, TTL, bizSeq (2.6, 2.7, AD-14)."""
        terminal = self.visible(app, serial)
        if terminal is None:
            return None, respond(response, R.TERMINAL_UNKNOWN, "terminal unknown or not bound")
        if not MIN_TTL <= ttl <= MAX_TTL:
            return None, respond(response, R.BAD_PARAMETER, f"ttlSeconds {ttl} not 60-604800")
        if biz_seq is not None:
            if not ops.is_valid_biz_seq(biz_seq):
                return None, respond(response, R.BAD_PARAMETER, "bad bizSeq")
            seen = self.registry.app_message_by_biz_seq(app.app_id, biz_seq)
            if seen is not None and self.clock.seconds() - seen.created_at < BIZ_SEQ_WINDOW:
                return None, respond(response, R.DUPLICATE, "duplicate bizSeq",
                                       msg_id=seen.id)
        return terminal, None

    def _submit(self, app: Application, operation: str, terminal: Terminal,
                built: build.Built, ttl: int, biz_seq: str | None,
                need_ack: bool = True) -> Deferred[tuple[int, AppMessage]]:
        """Store the msgId, queue the terminal request; (0 sent now | 5 queued, message).

        A request the terminal's profile cannot carry raises ProfileRefused first, so
        that no msgId is stored for it (issue #10).
        """
        self.engine.check_deliverable(terminal, *built)
        serial = terminal.serial or ""
        reachable = self.engine.reachable(terminal) is not None
        message = AppMessage(app_id=app.app_id, operation=operation, serial=serial,
                             biz_seq=biz_seq, need_ack=need_ack,
                             created_at=self.clock.seconds())
        self.registry.add_app_message(message)
        command, body = built
        d = self.router.submit(serial, command, body, origin=ORIGIN_PREFIX + app.app_id,
                               ttl=ttl, msg_id=str(message.id))

        def queued(request: Request) -> tuple[int, AppMessage]:
            message.request_id = request.id
            self.registry.update_app_message(message)
            log.info("{operation} {msg_id} of {app_id} for {serial}: request {id}",
                     operation=operation, msg_id=message.id, app_id=app.app_id,
                     serial=serial, id=request.id)
            return (R.OK if reachable else R.TERMINAL_OFFLINE), message

        return d.addCallback(queued)

    def _downlink(self, app: Application, request: Any, response: type,
                  make: Callable[[], build.Built], need_ack: bool = True) -> Any:
        terminal, refused = self._admit(app, request.terminal_id, request.ttl_seconds,
                                        request.biz_seq, response)
        if terminal is None:
            return refused
        try:
            built = make()
        except build.RequestError as exc:
            return respond(response, R.BAD_PARAMETER, str(exc))
        d = self._submit(app, type(request).__name__, terminal, built, request.ttl_seconds,
                         request.biz_seq, need_ack)
        return d.addCallback(lambda done: _queued(response, *done))

    def _op_SendData(self, app: Application, request: ops.SendData) -> Any:
        if len(request.data) > ops.MAX_USER_DATA:
            return respond(ops.SendDataResponse, R.TOO_LARGE, "data too large")
        return self._downlink(app, request, ops.SendDataResponse, lambda: build.transparent_data(
            {"data": request.data.hex(), "source_ec": app.ec_code}), request.need_terminal_ack)

    def _op_SendCommand(self, app: Application, request: ops.SendCommand) -> Any:
        if len(request.command) + len(request.fixed_part) > ops.MAX_USER_DATA:
            return respond(ops.SendCommandResponse, R.TOO_LARGE, "command too large")
        return self._downlink(app, request, ops.SendCommandResponse, lambda: build.transparent_cmd(
            {"fixed": request.fixed_part.hex(), "data": request.command.hex(),
             "source_ec": app.ec_code}), request.need_terminal_ack)

    def _op_SetConfig(self, app: Application, request: ops.SetConfig) -> Any:
        failed = [i.tag for i in request.items if refused_write(i.tag, app.permissions)]
        if failed or not 1 <= len(request.items) <= MAX_CONFIG_TAGS:
            return ops.SetConfigResponse(result_code=R.BAD_PARAMETER, failed_tags=failed,
                                         result_desc="tags not permitted")
        values = {f"0x{i.tag:04X}": {"hex": i.value.hex()} for i in request.items}
        return self._downlink(app, request, ops.SetConfigResponse,
                              lambda: build.config_set({"values": values}))

    def _op_RemoteControl(self, app: Application, request: ops.RemoteControl) -> Any:
        allowed = REMOTE_CODES | (REMOTE_CODES_ALL if "remote_control_all" in app.permissions
                                  else frozenset())
        if request.code not in allowed:
            return respond(ops.RemoteControlResponse, R.BAD_PARAMETER,
                             f"remote-control code {request.code} not permitted")
        params = [{"tag": i.tag, "hex": i.value.hex()} for i in request.items]
        return self._downlink(app, request, ops.RemoteControlResponse,
                              lambda: build.remote_ctrl({"code": request.code, "params": params}))

    def _op_GetConfig(self, app: Application, request: ops.GetConfig) -> Any:
        response = ops.GetConfigResponse
        failed = [tag for tag in request.tags if refused_read(tag)]
        if failed or not 1 <= len(request.tags) <= MAX_CONFIG_TAGS:
            return response(result_code=R.BAD_PARAMETER, failed_tags=failed,
                            result_desc="tags not permitted")
        if request.mode not in ("sync", "async"):
            return respond(response, R.BAD_PARAMETER, "mode must be sync or async")
        terminal, refused = self._admit(app, request.terminal_id, ops.DEFAULT_TTL, None, response)
        if terminal is None:
            return refused
        try:
            built = build.config_get({"tags": list(request.tags)})
        except build.RequestError as exc:
            return respond(response, R.BAD_PARAMETER, str(exc))
        d = self._submit(app, "GetConfig", terminal, built, ops.DEFAULT_TTL, None)
        if request.mode == "async":
            return d.addCallback(lambda done: _queued(response, *done))
        return d.addCallback(self._wait_sync)

    def _wait_sync(self, done: tuple[int, AppMessage]) -> Any:
        """AD-13: answer with the values, or 6 after ``sync_wait`` (a notification follows)."""
        result, message = done
        msg_id = message.id or 0
        response = ops.GetConfigResponse
        if result != R.OK:
            return respond(response, result, "terminal offline, queued", msg_id=msg_id)
        waiter: Deferred[Request] = Deferred()
        self._sync_waiters[msg_id] = waiter

        def timed_out(failure: Failure) -> Any:
            self._sync_waiters.pop(msg_id, None)
            return None

        waiter.addTimeout(self.config.sync_wait, self.clock).addErrback(timed_out)

        def answered(request: Request | None) -> Any:
            if request is None:
                return respond(response, R.TERMINAL_TIMEOUT, "terminal did not answer yet",
                                 msg_id=msg_id)
            state, op_result, _ = message_outcome(request)
            items, failed = answer_items(request)
            return response(result_code=op_result, result_desc=state, msg_id=msg_id,
                            items=items, failed_tags=failed)

        return waiter.addCallback(answered)

    def _op_Upgrade(self, app: Application, request: ops.Upgrade) -> Any:
        response = ops.UpgradeResponse
        if self.gateway.config.http.listen is None:
            return respond(response, R.UNSUPPORTED, "the file service is disabled")
        if (request.file_data is None) == (request.source_url is None):
            return respond(response, R.BAD_PARAMETER, "give exactly one of fileData, sourceUrl")
        terminal, refused = self._admit(app, request.terminal_id, request.ttl_seconds,
                                        request.biz_seq, response)
        if terminal is None:
            return refused
        # Before any file is fetched or stored: a terminal that cannot take one (C9).
        self.engine.check_deliverable(terminal, Command.DOWNLOAD_INFO, b"")
        if request.file_size > ops.MAX_FILE_SIZE:
            return respond(response, R.BAD_PARAMETER, "fileSize above max_file_size")
        if request.file_data is not None and len(request.file_data) != request.file_size:
            return respond(response, R.BAD_PARAMETER, "fileSize mismatch")
        try:
            build.check_version(request.version)
        except build.RequestError as exc:
            return respond(response, R.BAD_PARAMETER, str(exc))
        if request.source_url is not None:
            # Fetched once, here; the answer (msgId, or 8) waits for it, within the
            # long connection's answer timeout.
            d = fetch.fetch_file(self.clock, request.source_url, max_size=request.file_size,
                                 timeout=self.source_fetch_timeout,
                                 allowed_hosts=self.config.upgrade_source_hosts)
        else:
            d = maybeDeferred(fetch.store_bytes, request.file_data)
        d.addCallback(self._offer_upgrade, app, terminal, request)

        def refused_file(failure: Failure) -> Any:
            failure.trap(build.RequestError, fetch.FetchError)
            return respond(response, R.BAD_PARAMETER, failure.getErrorMessage())

        return d.addErrback(refused_file)

    def _offer_upgrade(self, stored: fetch.StoredFile, app: Application, terminal: Terminal,
                       request: ops.Upgrade) -> Deferred[Any]:
        """Check the file against fileSize and fileMd5, store it, send DOWNLOAD_INFO (AD-15)."""
        if stored.size != request.file_size or stored.md5 != request.file_md5.lower():
            stored.remove()
            raise fetch.FetchError("fileSize or fileMd5 mismatch")
        d = self.gateway.files.offer(terminal.serial or "", stored.path, request.version)
        d.addBoth(_remove_then, stored)
        public = self.gateway.config.http.public_url
        d.addCallback(lambda tx: self._submit(
            app, "Upgrade", terminal, build.download_info(tx, public, force=request.force),
            request.ttl_seconds, request.biz_seq))
        return d.addCallback(lambda done: _queued(ops.UpgradeResponse, *done))

    # queries ----------------------------------------------------------------------

    def _status(self, app: Application, serial: str) -> ops.TerminalStatus:
        terminal = self.visible(app, serial)
        if terminal is None:
            return ops.TerminalStatus(terminal_id=serial, state="UNKNOWN", bearer="NONE")
        online = terminal.state == TerminalState.LOGGED_IN
        return ops.TerminalStatus(
            terminal_id=serial, state=_STATES[terminal.state],
            last_login=_last_login(terminal),
            last_active=None if terminal.last_seen is None else int(terminal.last_seen),
            bearer=_bearer_name(terminal.bearer) if online else "NONE",
            address=_text(terminal.address) if online else None,
            connect_mode=terminal.connect_mode,
        )

    def _op_QueryTerminalStatus(self, app: Application, request: ops.QueryTerminalStatus) -> Any:
        if not 1 <= len(request.terminal_ids) <= MAX_STATUS_IDS:
            return respond(ops.QueryTerminalStatusResponse, R.BAD_PARAMETER, "1-100 terminals")
        return ops.QueryTerminalStatusResponse(
            result_desc="OK", statuses=[self._status(app, s) for s in request.terminal_ids])

    def _op_QueryTerminalInfo(self, app: Application, request: ops.QueryTerminalInfo) -> Any:
        terminal = self.visible(app, request.terminal_id)
        if terminal is None:
            return respond(ops.QueryTerminalInfoResponse, R.TERMINAL_UNKNOWN, "not bound")
        stored = self.registry.config_values(request.terminal_id)
        items, _ = carried_items(ops.QueryTerminalInfoResponse, (
            (tag, value) for tag, value in sorted(stored.items()) if 0x3000 <= tag <= 0x3FFF))
        info = ops.TerminalInfo(  # every string as the terminal sent it, escaped (D-252)
            terminal_id=request.terminal_id, imei=ops.terminal_text(terminal.imei),
            imsi=ops.terminal_text(terminal.imsi or ""), msisdn=_text(terminal.msisdn),
            software_version=_text(terminal.software_version),
            state=_STATES[terminal.state], connect_mode=terminal.connect_mode,
            heartbeat_interval=terminal.heartbeat_interval, items=items,
        )
        return ops.QueryTerminalInfoResponse(result_desc="OK", info=info)

    def _op_ListTerminals(self, app: Application, request: ops.ListTerminals) -> Any:
        if not 1 <= request.page_size <= 1000 or request.page_no < 1:
            return respond(ops.ListTerminalsResponse, R.BAD_PARAMETER, "bad page")
        since = request.modified_since
        serials = sorted(
            t.serial for t in self.registry.terminals()
            if t.serial and self.visible(app, t.serial) is not None
            and (since is None or t.updated_at >= since)
        )
        start = (request.page_no - 1) * request.page_size
        return ops.ListTerminalsResponse(result_desc="OK", total=len(serials),
                                         terminal_ids=serials[start:start + request.page_size])

    def _op_QueryMessageStatus(self, app: Application, request: ops.QueryMessageStatus) -> Any:
        def found(message: AppMessage | None) -> Any:
            if message is None or message.app_id != app.app_id:
                return respond(ops.QueryMessageStatusResponse, R.TERMINAL_UNKNOWN,
                                 "unknown msgId")
            state = message.state
            live = self.registry.request(message.request_id) if message.request_id else None
            if state == "QUEUED" and live is not None and live.state == RequestState.SENT:
                state = "SENT"
            final = state not in ("QUEUED", "SENT")
            return ops.QueryMessageStatusResponse(
                result_desc="OK", state=state, op_result=message.op_result if final else None,
                terminal_result=message.terminal_result, update_time=int(message.updated_at))

        return self.registry.app_message(request.msg_id).addCallback(found)

    def _op_FetchMessages(self, app: Application, request: ops.FetchMessages) -> Any:
        """Kept and unsent notifications, oldest first, leased for ``fetch_lease`` (3.2.14)."""
        if not 1 <= request.max_count <= MAX_FETCH:
            return respond(ops.FetchMessagesResponse, R.BAD_PARAMETER, "maxCount 1-500")
        now = self.clock.seconds()
        inflight = self._state(app.app_id).inflight
        free = [n for n in self.registry.notifications(app.app_id)
                if n.id not in inflight and (n.leased_until is None or n.leased_until <= now)]
        batch = free[:request.max_count]
        for entry in batch:
            entry.leased_until = now + self.config.fetch_lease
            self.registry.update_notification(entry)
        return ops.FetchMessagesResponse(
            result_desc="OK", remaining=len(free) - len(batch),
            messages=[ops.NotificationItem(create_time=int(n.created_at),
                                           notification=decode_notification(n)) for n in batch],
        )

    def _op_AckMessages(self, app: Application, request: ops.AckMessages) -> Any:
        if not 1 <= len(request.notify_ids) <= MAX_FETCH:
            return respond(ops.AckMessagesResponse, R.BAD_PARAMETER, "1-500 notifyIds")
        entries = (self.registry.notification(i) for i in set(request.notify_ids))
        mine = [n.id or 0 for n in entries if n is not None and n.app_id == app.app_id]
        return self.registry.delete_notifications(mine).addCallback(
            lambda _: ops.AckMessagesResponse(result_desc="OK"))


def _last_login(terminal: Terminal) -> int | None:
    """The session timestamp, the time the platform gave the last accepted LOGIN
    ([T] 4.4), kept as the last one once the session ends (D-331)."""
    return terminal.session_timestamp or terminal.last_session_timestamp or None


def _text(value: str | None) -> str | None:
    return None if value is None else ops.terminal_text(value)


def _remove_then(result: Any, stored: fetch.StoredFile) -> Any:
    stored.remove()
    return result


def _queued(response: type, result: int, message: AppMessage) -> Any:
    """The answer to an accepted downlink: sent now (0) or queued for later (5)."""
    desc = "OK" if result == R.OK else "terminal offline: queued"
    return respond(response, result, desc, msg_id=message.id)

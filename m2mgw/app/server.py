"""The long-connection listener (spec 6): a thin Twisted adapter of :class:`PlatformSession`.

The session decides everything about frames, digests, keys, heartbeats and the
window; this module feeds it bytes and time, writes what it produces, turns its
events into calls on the :class:`~m2mgw.app.gateway.ApplicationService` and the
:class:`~m2mgw.app.outbox.Outbox`, and keeps one timer at the session's next deadline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.app import longconn as lc
from m2mgw.app import operations as ops
from m2mgw.core.model import Application

if TYPE_CHECKING:
    from m2mgw.app.gateway import ApplicationService
    from m2mgw.app.outbox import Outbox

log = Logger()

R = ops.ResultCode
REPLACED = 3  # APP_LOGOUT reason: session replaced by a newer login (6.5.2)


class AppConnection(Protocol):
    """One application connection on the platform side."""

    def __init__(self, apps: ApplicationService, outbox: Outbox) -> None:
        self.apps = apps
        self.outbox = outbox
        self.clock = apps.clock
        self.session: lc.PlatformSession | None = None
        self.app: Application | None = None
        self.replaced = False
        self.login_type = 0
        self._timer: IDelayedCall | None = None
        #: The session deadline ``_timer`` is armed for.
        self._deadline: float | None = None
        #: Inside :meth:`_after`'s events: offers made there are written after them.
        self._acting = False
        self._offers: dict[int, Deferred[bool]] = {}
        #: The (next Base Key, effective time) last announced on this connection.
        self._announced: tuple[str, int] | None = None

    # --- transport --------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.session = lc.PlatformSession(self._credentials, self.clock.seconds())
        self._after([])

    def dataReceived(self, data: bytes) -> None:
        assert self.session is not None
        self._after(self.session.receive_data(data, self.clock.seconds()))

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.session is not None:
            self._after(self.session.connection_lost(self.clock.seconds()))
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.app is not None:
            self.outbox.connection_closed(self.app.app_id, self)

    def _credentials(self, app_id: str) -> lc.AppCredentials | None:
        app = self.apps.application(app_id)
        if app is None:
            return None
        return lc.AppCredentials(app.app_id, app.password, app.base_key, app.cipher)

    # --- the notification channel -------------------------------------------------------

    def capacity(self, app_id: str | None = None) -> int:
        """Free places in the window; -1 when the session cannot carry notifications."""
        session = self.session
        if (session is None or session.state is not lc.State.ACTIVE or self.replaced
                or not session.confirmed):
            return -1
        if session.key_update_outstanding:
            return 0  # 7.5: nothing else is sent until APP_KEY_UPDATE is answered
        return lc.WINDOW - session.outstanding

    def offer(self, app: Application, notification: object) -> Deferred[bool]:
        """Send a notification as a platform request (6.6); True on result 0 or 11.

        Fails with :class:`~m2mgw.app.operations.Unencodable` when no long-connection
        body can carry it: retrying would only put it at the head of the line again.
        """
        assert self.session is not None
        try:
            seq = self.session.send_request(notification, self.clock.seconds())
        except lc.SessionError:
            return succeed(False)
        except lc.BodyError as exc:
            return fail(ops.Unencodable(exc.reason))
        d: Deferred[bool] = Deferred()
        self._offers[seq] = d
        if not self._acting:
            self._after([])
        return d

    # --- events -----------------------------------------------------------------------

    def _after(self, events: list[Any]) -> None:
        """Act on session events, then write its output and re-arm its timer.

        The notifications that answers to earlier ones let the outbox offer go out in
        the same write (D-402); the timer is moved only when the deadline changed.
        """
        acting, self._acting = self._acting, True
        try:
            for event in events:
                self._on_event(event)
        finally:
            self._acting = acting
        session = self.session
        if session is None or self.transport is None:
            return
        data = session.data_to_send()
        if data:
            self.transport.write(data)
        deadline = session.next_deadline()
        timer = self._timer
        if timer is not None and timer.active():
            if deadline == self._deadline:
                return
            timer.cancel()
        self._deadline = deadline
        if deadline is not None:
            delay = max(0.0, deadline - self.clock.seconds())
            self._timer = self.clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        assert self.session is not None
        self._after(self.session.tick(self.clock.seconds()))

    def _on_event(self, event: Any) -> None:
        if isinstance(event, lc.LoginRequested):
            self._login(event)
        elif isinstance(event, lc.LoginConfirmed):
            self._confirmed()
        elif isinstance(event, lc.RequestReceived):
            self._request(event)
        elif isinstance(event, lc.KeyUpdated):
            log.info("Application {app_id} acknowledged key update type {key_type}",
                     app_id=self.app.app_id if self.app else None, key_type=event.key_type)
            self._announce_base_key()  # one that waited for this update's ACK (7.5)
            if self.app is not None:
                self.outbox.pump(self.app.app_id)  # resume the notifications held back
        elif isinstance(event, lc.AnswerReceived | lc.RequestFailed):
            offer = self._offers.pop(event.sequence_id, None)
            ok = isinstance(event, lc.AnswerReceived) and event.response.result_code in (
                R.OK, R.DUPLICATE)
            if offer is not None:
                offer.callback(ok)
            self._announce_base_key()  # one that waited for a place in the window
        elif isinstance(event, lc.Closed):
            log.info("Application connection of {app_id} closed: {reason}",
                     app_id=self.app.app_id if self.app else None, reason=event.reason)
            if self.transport is not None:
                self.transport.loseConnection()

    def _login(self, event: lc.LoginRequested) -> None:
        """Policy of APP_LOGIN: enabled app, Base Key, session limit (6.5.1, AD-20).

        The session limit counts confirmed sessions only, and a login of type 1
        replaces the oldest one only once it is confirmed itself (:meth:`_confirmed`):
        a replayed APP_LOGIN can neither hold a place nor take one (D-257).
        """
        session = self.session
        assert session is not None
        now = self.clock.seconds()
        app = self.apps.application(event.app_id)
        if app is None:
            session.reject_login(R.APP_UNKNOWN, now)
            return
        base_key = self.apps.base_key(app, now)
        if base_key is None:
            session.reject_login(R.AUTH_FAILED, now)
            return
        if len(self._live(app)) >= self.apps.config.max_app_connections:
            if event.request.login_type != 1:
                session.reject_login(R.DUPLICATE, now)
                return
        session.accept_login(now, timestamp=self.apps.session_timestamp(app, now),
                             session_ttl=int(self.apps.config.session_ttl), base_key=base_key)
        self.app, self.login_type = app, event.request.login_type

    def _live(self, app: Application) -> list[AppConnection]:
        """The application's confirmed sessions, oldest first."""
        return [c for c in self.outbox.connections(app.app_id) if c.capacity() >= 0]

    def _confirmed(self) -> None:
        """Signed proof after the ACK: only now does the session act for the application.

        Type 1 replaces the oldest session beyond the limit; a type 0 login that
        another session of the application beat to its confirmation is logged out
        with reason 3, as if replaced (D-257).
        """
        app, now = self.app, self.clock.seconds()
        assert app is not None and self.session is not None
        live = self._live(app)
        if len(live) >= self.apps.config.max_app_connections:
            if self.login_type != 1:
                self.replace(now)
                return
            live[0].replace(now)
        self._announce_base_key()  # first: kept notifications wait for its ACK (7.5)
        self.outbox.connection_opened(app.app_id, self)

    def base_key_scheduled(self) -> None:
        """A rotation was set on the application while this session is live: announced
        at once, not at its next login (D-344)."""
        self._announce_base_key()
        self._after([])

    def _announce_base_key(self) -> None:
        """7.2 step 3: the application's next Base Key goes out with APP_KEY_UPDATE type 2.

        Once per connection and rotation: once the login is confirmed, and when a
        rotation is set during the session. A login at or after the effective time has
        already rotated (``ApplicationService.base_key``), so nothing is left to announce
        then. It waits for another key update's ACK (7.5) or a place in the window. A
        refusal or timeout ends the session with APP_LOGOUT 6.
        """
        session = self.session
        app = None if self.app is None else self.apps.application(self.app.app_id)
        if app is None or session is None or self.capacity() <= 0:
            return
        if app.next_base_key is None or app.next_base_key_from is None:
            return
        rotation = (app.next_base_key, app.next_base_key_from)
        if rotation == self._announced:
            return
        session.announce_base_key(self.clock.seconds(), *rotation)
        self._announced = rotation
        log.info("Announced the next Base Key of {app_id}, effective {effective}",
                 app_id=app.app_id, effective=app.next_base_key_from)

    def replace(self, now: float) -> None:
        """A newer login took this application's place: APP_LOGOUT reason 3 (AD-20)."""
        assert self.session is not None
        self.replaced = True
        self.session.logout(now, REPLACED)
        self._after([])

    def _request(self, event: lc.RequestReceived) -> None:
        assert self.app is not None
        seq = event.sequence_id

        def answer(response: Any) -> None:
            session = self.session
            if session is None or session.closed:
                return
            try:
                session.answer(seq, response, self.clock.seconds())
            except lc.LongConnError as exc:  # e.g. beyond the reassembly bound (6.7)
                log.info("Answer {seq} to {app_id} not sent: {why}", seq=seq,
                         app_id=self.app.app_id if self.app else None, why=exc.reason)
            self._after([])

        self.apps.handle(self.app, event.payload).addCallback(answer)


class AppFactory(Factory):
    """Builds :class:`AppConnection` for the ``[app] listen`` endpoint."""

    def __init__(self, apps: ApplicationService, outbox: Outbox) -> None:
        self.apps = apps
        self.outbox = outbox

    def buildProtocol(self, addr: Any) -> AppConnection:
        return AppConnection(self.apps, self.outbox)

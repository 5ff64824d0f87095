"""Long-connection client for integrators (spec 6): a thin adapter of :class:`ClientSession`.

Typical use::

    client = yield connect(reactor, "127.0.0.1", 5300,
                           AppCredentials("EC0001", "s3cretPW", "AppBaseKey0123456789ABCD"),
                           on_notification=print)
    response = yield client.call(ops.SendData(terminal_id=serial, data=b"hi"))
    yield client.logout()

Requests beyond the window of 16 (AD-10) wait in a local queue. Notifications reach
``on_notification`` once per ``notifyId`` (4.7: retries may repeat one); its return
value (an int or a Deferred of one, ``None`` meaning 0) is the result sent back.

A Base Key rotation announced by the platform (APP_KEY_UPDATE type 2, 7.2) reaches
``on_base_key`` to be stored; :meth:`AppClient.credentials_at` gives the credentials
a later login must use.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.app import longconn as lc
from m2mgw.app import operations as ops
from m2mgw.app.longconn import AppCredentials
from m2mgw.protocol.errors import ProtocolError

__all__ = ["AppClient", "AppCredentials", "LoginFailed", "RequestFailed", "connect"]

log = Logger()

SEEN_NOTIFICATIONS = 10_000


class LoginFailed(ProtocolError):
    """APP_LOGIN was refused (``result``) or the connection ended first."""


class RequestFailed(ProtocolError):
    """A request got no answer (timeout) or the session ended first."""


class AppClient(Protocol):
    """One application connection; ``logged_in`` fires with the LoginResponse."""

    def __init__(
        self, credentials: AppCredentials, clock: Any, *,
        on_notification: Callable[[Any], Any] | None = None, heartbeat: int = 60,
        encrypt: bool = False, login_type: int = 0,
        on_base_key: Callable[[lc.BaseKeyAnnounced], Any] | None = None,
    ) -> None:
        self.clock = clock
        self.session = lc.ClientSession(credentials, clock.seconds(), encrypt_requests=encrypt)
        self.on_notification = on_notification or (lambda payload: None)
        self.on_base_key = on_base_key or (lambda announced: None)
        #: The last Base Key announced on this connection (7.2), if any.
        self.base_key_update: lc.BaseKeyAnnounced | None = None
        self.logged_in: Deferred[ops.LoginResponse] = Deferred()
        self.closed: Deferred[str] = Deferred()
        self._login = (login_type, heartbeat, encrypt)
        self._calls: dict[int, Deferred[Any]] = {}
        self._waiting: deque[tuple[object, Deferred[Any]]] = deque()
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._timer: IDelayedCall | None = None

    # --- API --------------------------------------------------------------------------

    def call(self, request: object) -> Deferred[Any]:
        """Send one request; fires with its response dataclass or fails RequestFailed."""
        d: Deferred[Any] = Deferred()
        self._waiting.append((request, d))
        self._drain()
        return d

    def credentials_at(self, now: float) -> AppCredentials:
        """The credentials of a login at ``now``: the announced Base Key once it applies."""
        creds = self.session.credentials
        assert creds is not None
        update = self.base_key_update
        if update is not None and (update.effective_time is None or now >= update.effective_time):
            return dataclasses.replace(creds, base_key=update.base_key)
        return creds

    def logout(self, reason: int = 0) -> Deferred[str]:
        """APP_LOGOUT; fires when the connection is closed."""
        if self.session.state is lc.State.ACTIVE:
            self.session.logout(self.clock.seconds(), reason)
            self._after([])
        else:
            self.transport.loseConnection()  # type: ignore[union-attr]
        return self.closed

    # --- transport ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        login_type, heartbeat, encrypt = self._login
        self.session.login(self.clock.seconds(), login_type=login_type,
                           heartbeat_interval=heartbeat, encrypt_notifications=encrypt)
        self._after([])

    def dataReceived(self, data: bytes) -> None:
        self._after(self.session.receive_data(data, self.clock.seconds()))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._after(self.session.connection_lost(self.clock.seconds()))
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._fail_all("connection closed")
        if not self.closed.called:
            self.closed.callback("connection closed")

    # --- internals ----------------------------------------------------------------------

    def _drain(self) -> None:
        session = self.session
        while (self._waiting and session.state is lc.State.ACTIVE
               and session.outstanding < lc.WINDOW):
            request, d = self._waiting.popleft()
            try:
                seq = session.send_request(request, self.clock.seconds())
            except ProtocolError as exc:
                d.errback(RequestFailed(exc.reason))
                continue
            self._calls[seq] = d
        self._after([])

    def _after(self, events: list[Any]) -> None:
        for event in events:
            self._on_event(event)
        if self.transport is None:
            return
        data = self.session.data_to_send()
        if data:
            self.transport.write(data)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        deadline = self.session.next_deadline()
        if deadline is not None:
            self._timer = self.clock.callLater(max(0.0, deadline - self.clock.seconds()),
                                               self._tick)

    def _tick(self) -> None:
        self._after(self.session.tick(self.clock.seconds()))
        self._drain()

    def _on_event(self, event: Any) -> None:
        if isinstance(event, lc.LoggedIn):
            self.logged_in.callback(event.response)
            self.clock.callLater(0, self._drain)
        elif isinstance(event, lc.LoginRejected):
            self.logged_in.errback(LoginFailed(f"login refused with result {event.result}",
                                               event.result))
        elif isinstance(event, lc.AnswerReceived):
            d = self._calls.pop(event.sequence_id, None)
            if d is not None:
                d.callback(event.response)
                self.clock.callLater(0, self._drain)
        elif isinstance(event, lc.RequestFailed):
            d = self._calls.pop(event.sequence_id, None)
            if d is not None:
                d.errback(RequestFailed(f"request {event.sequence_id}: {event.reason}"))
        elif isinstance(event, lc.RequestReceived):
            self._notification(event)
        elif isinstance(event, lc.BaseKeyAnnounced):
            log.info("The platform announced a new Base Key, effective {effective}",
                     effective=event.effective_time)
            self.base_key_update = event
            self.on_base_key(event)
        elif isinstance(event, lc.Closed):
            if not self.logged_in.called:
                self.logged_in.errback(LoginFailed(event.reason))
            if self.transport is not None:
                self.transport.loseConnection()

    def _notification(self, event: lc.RequestReceived) -> None:
        payload = event.payload
        response_type = ops.OPERATIONS[type(payload).__name__].response
        notify_id = getattr(payload, "notify_id", None)
        if notify_id is not None and notify_id in self._seen:
            self._answer(event.sequence_id, response_type(result_code=ops.ResultCode.DUPLICATE))
            return
        if notify_id is not None:
            self._seen[notify_id] = None
            if len(self._seen) > SEEN_NOTIFICATIONS:
                self._seen.popitem(last=False)
        d = maybeDeferred(self.on_notification, payload)

        def failed(failure: Failure) -> ops.ResultCode:
            log.failure("Notification handler failed", failure)
            return ops.ResultCode.INTERNAL_ERROR

        d.addErrback(failed)
        d.addCallback(lambda result: self._answer(
            event.sequence_id, response_type(result_code=int(result or 0))))

    def _answer(self, seq: int, response: object) -> None:
        if self.session.closed:
            return
        try:
            self.session.answer(seq, response, self.clock.seconds())
        except lc.SessionError as exc:
            log.info("Notification answer {seq} not sent: {why}", seq=seq, why=exc.reason)
        self._after([])

    def _fail_all(self, why: str) -> None:
        calls, self._calls = self._calls, {}
        waiting, self._waiting = self._waiting, deque()
        for d in [*calls.values(), *(d for _, d in waiting)]:
            d.errback(RequestFailed(why))


async def _connect(reactor: Any, host: str, port: int, client: AppClient) -> AppClient:
    await connectProtocol(TCP4ClientEndpoint(reactor, host, port), client)
    await client.logged_in
    return client


def connect(
    reactor: Any, host: str, port: int, credentials: AppCredentials, **options: Any
) -> Deferred[AppClient]:
    """Connect and log in; fires with the ready client or fails with LoginFailed."""
    return ensureDeferred(_connect(reactor, host, port, AppClient(credentials, reactor,
                                                                   **options)))

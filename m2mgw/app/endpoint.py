"""The SOAP binding without HTTP (spec 4, 5.1): bytes and a SOAPAction in, a status and bytes out.

:class:`SoapEndpoint` authenticates (5.1), applies the duplicate rule (AD-19), opens
and checks SOAP sessions (4.6) and hands every other operation to the application
service. :class:`SoapSessions` keeps those sessions; the callbacks read it too, to
encrypt notifications under the newest session that asked for it (AD-22).
:mod:`m2mgw.app.web` serves the endpoint over ``twisted.web``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.app import keys, soap
from m2mgw.app import operations as ops
from m2mgw.app.digest import ReplayCache
from m2mgw.config import AppConfig
from m2mgw.core.model import Application
from m2mgw.protocol.security import Cipher

log = Logger()

R = ops.ResultCode
SOAP_HEARTBEAT = 600
_SESSIONLESS = frozenset({"Login"})


class Operations(Protocol):
    """What the binding hands on: identities and operations (the ``ApplicationService``)."""

    def application(self, app_id: str) -> Application | None: ...

    def base_key(self, app: Application, now: float) -> str | None: ...

    def session_timestamp(self, app: Application, now: float) -> int: ...

    def handle(self, app: Application, request: object) -> Deferred[Any]: ...


@dataclass(slots=True)
class SoapSession:
    """A SOAP session (4.6): its key and its clocks."""

    session_id: str
    app_id: str
    cipher: Cipher
    created: float
    last_used: float
    encrypt_notifications: bool


class SoapSessions:
    """The live SOAP sessions by id; an idle or expired one is forgotten when next used."""

    def __init__(self, clock: IReactorTime, config: AppConfig) -> None:
        self.clock = clock
        self.config = config
        self._by_id: dict[str, SoapSession] = {}

    def get(self, session_id: str | None, app_id: str, now: float) -> SoapSession | None:
        """The application's session ``session_id`` if still live, touched at ``now``."""
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None or session.app_id != app_id:
            return None
        if (now - session.last_used > self.config.soap_session_idle
                or now - session.created > self.config.session_ttl):
            del self._by_id[session_id]
            return None
        session.last_used = now
        return session

    def of(self, app_id: str) -> list[SoapSession]:
        """The application's sessions, oldest first."""
        return sorted((s for s in self._by_id.values() if s.app_id == app_id),
                      key=lambda s: s.created)

    def add(self, session: SoapSession) -> None:
        self._by_id[session.session_id] = session

    def remove(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)

    def notify_session(self, app_id: str) -> SoapSession | None:
        """The newest live session that asked for encrypted notifications (AD-22)."""
        now = self.clock.seconds()
        wanted = [s for s in list(self._by_id.values())
                  if s.app_id == app_id and s.encrypt_notifications
                  and self.get(s.session_id, app_id, now) is not None]
        return max(wanted, key=lambda s: s.created) if wanted else None


class SoapEndpoint:
    """Authenticates, de-duplicates and executes SOAP requests of applications."""

    def __init__(self, apps: Operations, sessions: SoapSessions, clock: IReactorTime,
                 config: AppConfig) -> None:
        self.apps = apps
        self.sessions = sessions
        self.clock = clock
        self.config = config
        self.max_size = config.soap_max_request
        self.replay = ReplayCache(config.soap_duplicate_window)

    def dispatch(self, data: bytes, action: str | None) -> Deferred[tuple[int, bytes]]:
        """The HTTP status and body answering one POST; faults exactly as 4.5."""
        now = self.clock.seconds()
        try:
            envelope, app, session = self._authenticate(data, action, now)
            cached = self.replay.get(envelope.replay_key, now)
            if cached is not None:
                return succeed((200, cached))
            cipher = session.cipher if session is not None and envelope.encrypted else None
            refusal = self._refusal(envelope, app, session)
            if refusal is not None:
                spec = ops.OPERATIONS[envelope.operation]
                answer = succeed(ops.make_response(spec.response, R.SESSION_INVALID, refusal))
            else:
                answer = self._execute(app, session, envelope.payload(cipher), now)
        except soap.SoapFault as fault:
            log.info("SOAP fault: {reason}", reason=fault.faultstring)
            return succeed((fault.http_status, soap.build_fault(fault)))

        def sign(response: Any) -> tuple[int, bytes]:
            raw = soap.build_message(envelope.header.reply(self.clock.seconds()), response,
                                     app.password, cipher=cipher)
            self.replay.put(envelope.replay_key, raw, now)
            return 200, raw

        def failed(failure: Failure) -> tuple[int, bytes]:
            log.failure("SOAP {operation} failed", failure, operation=envelope.operation)
            return 500, soap.build_fault(soap.ServerFault("internal error"))

        return answer.addCallback(sign).addErrback(failed)

    def _authenticate(
        self, data: bytes, action: str | None, now: float
    ) -> tuple[soap.Envelope, Application, SoapSession | None]:
        """5.1 verification: parse, application, timestamp and digest, session."""
        envelope = soap.parse_envelope(data, soap_action=action, service="platform",
                                       max_size=self.max_size)
        app = self.apps.application(envelope.header.app_id)
        if app is None:
            raise soap.AuthFailed("unknown or disabled appId", R.APP_UNKNOWN)
        envelope.verify(app.password, now, self.config.soap_timestamp_window)
        return envelope, app, self.sessions.get(envelope.header.session_id, app.app_id, now)

    @staticmethod
    def _refusal(envelope: soap.Envelope, app: Application,
                 session: SoapSession | None) -> str | None:
        """Why the request gets result 3 (4.6), if it does."""
        if envelope.header.session_id and session is None:
            return "session invalid or expired"
        if session is None and app.require_session and envelope.operation not in _SESSIONLESS:
            return "this application requires a session"
        return None

    def _execute(self, app: Application, session: SoapSession | None, request: Any,
                 now: float) -> Deferred[Any]:
        if isinstance(request, ops.Login):
            return maybeDeferred(self._login, app, request, now)
        if isinstance(request, ops.Logout):
            if session is not None:
                self.sessions.remove(session.session_id)
            return succeed(ops.LogoutResponse(result_desc="OK"))
        return self.apps.handle(app, request)

    def _login(self, app: Application, request: ops.Login, now: float) -> ops.LoginResponse:
        """Session mode (4.6): a fresh Session Key under the Base Key (7.3), AD-20 limits."""
        base_key = self.apps.base_key(app, now)
        if base_key is None:
            return ops.LoginResponse(result_code=R.AUTH_FAILED, result_desc="Base Key expired")
        mine = self.sessions.of(app.app_id)
        if len(mine) >= self.config.max_soap_sessions:
            if request.login_type != 1:
                return ops.LoginResponse(result_code=R.DUPLICATE, result_desc="session limit")
            self.sessions.remove(mine[0].session_id)
        key = keys.generate_session_key()
        session = SoapSession(secrets.token_hex(8), app.app_id,
                              keys.session_cipher(app.cipher, key), now, now,
                              request.encrypt_notifications)
        self.sessions.add(session)
        log.info("Application {app_id} opened SOAP session", app_id=app.app_id)
        return ops.LoginResponse(
            result_desc="OK", session_id=session.session_id,
            server_time=self.apps.session_timestamp(app, now),
            session_key=keys.wrap_session_key(app.cipher, base_key, key),
            heartbeat_interval=SOAP_HEARTBEAT, session_ttl=int(self.config.session_ttl),
        )

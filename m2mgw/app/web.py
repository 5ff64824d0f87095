"""SOAP over HTTP for applications (spec 4): the platform service and the callbacks.

* :class:`SoapEndpoint` is the binding without HTTP: bytes and a SOAPAction in, an
  HTTP status and bytes out. It authenticates (5.1), applies the duplicate rule
  (AD-19), keeps the SOAP sessions (4.6) and hands operations to the
  :class:`~m2mgw.app.gateway.ApplicationService`.
* :class:`PlatformServiceResource` serves it, and the WSDLs, with ``twisted.web``;
  :class:`BoundedRequest` refuses oversized bodies without buffering them (4.1).
* :class:`CallbackChannel` calls an application's ``M2MAppNotifyService`` with treq
  and checks the digest of its answer (4.7).
"""

from __future__ import annotations

import io
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import treq
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource

from m2mgw.app import keys, soap
from m2mgw.app import operations as ops
from m2mgw.app.digest import ReplayCache
from m2mgw.core.model import Application
from m2mgw.protocol.errors import ProtocolError
from m2mgw.protocol.security import Cipher

if TYPE_CHECKING:
    from m2mgw.app.gateway import ApplicationService

log = Logger()

R = ops.ResultCode
SERVICE_PATH = (b"m2m", b"app", b"v1", b"M2MPlatformService")
SOAP_HEARTBEAT = 600
MAX_CALLBACK_ANSWER = 1024 * 1024
_SESSIONLESS = frozenset({"Login"})


# --- HTTP request size (4.1) -----------------------------------------------------------


class BoundedRequest(server.Request):
    """A request whose body beyond ``max_body`` bytes is discarded, not stored.

    The resource sees ``oversize`` and answers 413; memory stays bounded whatever the
    client declares or streams.
    """

    max_body = soap.MAX_REQUEST
    oversize = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.oversize = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self.max_body and not self.oversize:
            self.oversize = True
            self.content = io.BytesIO()
        if not self.oversize:
            super().handleContentChunk(data)


def site(apps: ApplicationService, root: Resource) -> server.Site:
    """The ``[http]`` site: ``root`` plus the platform service at its path (4.1)."""
    node = root
    for segment in SERVICE_PATH[:-1]:
        child = node.children.get(segment)
        if child is None:
            child = Resource()
            node.putChild(segment, child)
        node = child
    node.putChild(SERVICE_PATH[-1], PlatformServiceResource(apps.soap))
    bounded = type("BoundedRequest", (BoundedRequest,),
                   {"max_body": apps.config.soap_max_request})
    http_site = server.Site(root, requestFactory=bounded)
    http_site.displayTracebacks = False
    return http_site


class PlatformServiceResource(Resource):
    """``POST`` operations, ``GET ?wsdl`` and ``GET ?wsdl=notify``."""

    isLeaf = True

    def __init__(self, endpoint: SoapEndpoint) -> None:
        super().__init__()
        self.endpoint = endpoint

    def render_GET(self, request: server.Request) -> bytes:
        # twisted.web drops a bare "?wsdl" (no "="), so the query is parsed here.
        query = parse_qs(urlsplit(request.uri).query, keep_blank_values=True)
        which = query.get(b"wsdl")
        if which is None:
            request.setResponseCode(404)
            return b"append ?wsdl or ?wsdl=notify\n"
        location = request.prePathURL().decode("ascii", "replace")
        request.setHeader(b"content-type", soap.CONTENT_TYPE.encode("ascii"))
        return soap.wsdl_text("notify" if which[-1] == b"notify" else "platform", location)

    def render_POST(self, request: server.Request) -> bytes | int:
        request.setHeader(b"content-type", soap.CONTENT_TYPE.encode("ascii"))
        if getattr(request, "oversize", False):
            fault = soap.RequestTooLarge(f"request exceeds {self.endpoint.max_size} bytes")
            request.setResponseCode(fault.http_status)
            return soap.build_fault(fault)
        assert request.content is not None
        action = request.getHeader(b"soapaction")
        d = self.endpoint.dispatch(request.content.read(),
                                   None if action is None else action.decode("latin-1"))
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def write(answer: tuple[int, bytes]) -> None:
            if gone:
                return
            request.setResponseCode(answer[0])
            request.write(answer[1])
            request.finish()

        d.addCallback(write).addErrback(lambda f: log.failure("SOAP answer failed", f))
        return server.NOT_DONE_YET


# --- the binding ---------------------------------------------------------------------


@dataclass(slots=True)
class SoapSession:
    """A SOAP session (4.6): its key and its clocks."""

    session_id: str
    app_id: str
    cipher: Cipher
    created: float
    last_used: float
    encrypt_notifications: bool


class SoapEndpoint:
    """Authenticates, de-duplicates and executes SOAP requests of applications."""

    def __init__(self, apps: ApplicationService) -> None:
        self.apps = apps
        self.config = apps.config
        self.clock = apps.clock
        self.max_size = self.config.soap_max_request
        self.replay = ReplayCache(self.config.soap_duplicate_window)
        self.sessions: dict[str, SoapSession] = {}

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
        return envelope, app, self._session(envelope.header.session_id, app.app_id, now)

    @staticmethod
    def _refusal(envelope: soap.Envelope, app: Application,
                 session: SoapSession | None) -> str | None:
        """Why the request gets result 3 (4.6), if it does."""
        if envelope.header.session_id and session is None:
            return "session invalid or expired"
        if session is None and app.require_session and envelope.operation not in _SESSIONLESS:
            return "this application requires a session"
        return None

    def _session(self, session_id: str | None, app_id: str, now: float) -> SoapSession | None:
        if not session_id:
            return None
        session = self.sessions.get(session_id)
        if session is None or session.app_id != app_id:
            return None
        if (now - session.last_used > self.config.soap_session_idle
                or now - session.created > self.config.session_ttl):
            del self.sessions[session_id]
            return None
        session.last_used = now
        return session

    def _execute(self, app: Application, session: SoapSession | None, request: Any,
                 now: float) -> Deferred[Any]:
        if isinstance(request, ops.Login):
            return maybeDeferred(self._login, app, request, now)
        if isinstance(request, ops.Logout):
            if session is not None:
                self.sessions.pop(session.session_id, None)
            return succeed(ops.LogoutResponse(result_desc="OK"))
        return self.apps.handle(app, request)

    def _login(self, app: Application, request: ops.Login, now: float) -> ops.LoginResponse:
        """Session mode (4.6): a fresh Session Key under the Base Key (7.3), AD-20 limits."""
        base_key = self.apps.base_key(app, now)
        if base_key is None:
            return ops.LoginResponse(result_code=R.AUTH_FAILED, result_desc="Base Key expired")
        mine = sorted((s for s in self.sessions.values() if s.app_id == app.app_id),
                      key=lambda s: s.created)
        if len(mine) >= self.config.max_soap_sessions:
            if request.login_type != 1:
                return ops.LoginResponse(result_code=R.DUPLICATE, result_desc="session limit")
            del self.sessions[mine[0].session_id]
        key = keys.generate_session_key()
        session = SoapSession(secrets.token_hex(8), app.app_id,
                              keys.session_cipher(app.cipher, key), now, now,
                              request.encrypt_notifications)
        self.sessions[session.session_id] = session
        log.info("Application {app_id} opened SOAP session", app_id=app.app_id)
        return ops.LoginResponse(
            result_desc="OK", session_id=session.session_id,
            server_time=self.apps.session_timestamp(app, now),
            session_key=keys.wrap_session_key(app.cipher, base_key, key),
            heartbeat_interval=SOAP_HEARTBEAT, session_ttl=int(self.config.session_ttl),
        )

    def notify_session(self, app_id: str) -> SoapSession | None:
        """The newest live session that asked for encrypted notifications (AD-22)."""
        now = self.clock.seconds()
        wanted = [s for s in list(self.sessions.values())
                  if s.app_id == app_id and s.encrypt_notifications
                  and self._session(s.session_id, app_id, now) is not None]
        return max(wanted, key=lambda s: s.created) if wanted else None


# --- callbacks (4.7) -------------------------------------------------------------------


class CallbackError(ProtocolError):
    """The application's answer to a callback does not count as delivered."""


class CallbackChannel:
    """Offers notifications to ``M2MAppNotifyService`` at the application's URL."""

    def __init__(self, apps: ApplicationService, session_of: Any) -> None:
        self.apps = apps
        self.clock = apps.clock
        self.pool = HTTPConnectionPool(apps.clock, persistent=True)
        self.http = treq.client.HTTPClient(Agent(apps.clock, pool=self.pool))
        self._session_of = session_of
        self._seq: dict[str, int] = {}
        self._calls: set[Deferred[Any]] = set()
        self._busy: dict[str, int] = {}

    def capacity(self, app_id: str) -> int:
        """One call at a time per application: callbacks arrive in creation order."""
        return 1 - self._busy.get(app_id, 0)

    def offer(self, app: Application, notification: object) -> Deferred[bool]:
        seq = self._seq[app.app_id] = ops.next_id(self._seq.get(app.app_id, 0))
        name = type(notification).__name__
        session = self._session_of(app.app_id)
        header = soap.MsgHeader(msg_type=name, app_id=app.app_id, seq_id=seq,
                                timestamp=ops.format_soap_timestamp(self.clock.seconds()),
                                session_id=session.session_id if session else None)
        cipher = session.cipher if session else None
        body = soap.build_message(header, notification, app.password, cipher=cipher)
        d = self.http.post(app.callback_url or "", data=body, headers={
            b"content-type": [soap.CONTENT_TYPE.encode("ascii")],
            b"soapaction": [soap.soap_action(name).encode("ascii")],
        })
        self._calls.add(d)
        self._busy[app.app_id] = self._busy.get(app.app_id, 0) + 1
        d.addCallback(self._read)
        d.addCallback(self._accepted, app, name, seq, cipher)
        d.addBoth(self._done, d, app.app_id)
        d.addTimeout(self.apps.config.callback_timeout, self.clock)

        def failed(failure: Failure) -> bool:
            log.info("Callback {name} to {app_id} failed: {why}", name=name,
                     app_id=app.app_id, why=failure.getErrorMessage())
            return False

        return d.addErrback(failed)

    def _read(self, response: Any) -> Deferred[tuple[int, bytes]]:
        size = [0]
        chunks: list[bytes] = []

        def collect(data: bytes) -> None:
            size[0] += len(data)
            if size[0] > MAX_CALLBACK_ANSWER:
                raise CallbackError("callback answer too large")
            chunks.append(data)

        return treq.collect(response, collect).addCallback(
            lambda _: (response.code, b"".join(chunks)))

    def _accepted(self, answer: tuple[int, bytes], app: Application, name: str, seq: int,
                  cipher: Cipher | None) -> bool:
        """Delivered: HTTP 200, a verified digest, the echoed seqId, result 0 or 11."""
        status, data = answer
        if status != 200:
            raise CallbackError(f"HTTP {status}")
        envelope = soap.parse_envelope(data, service="notify", responses=True)
        if envelope.operation != name + "Response" or envelope.header.seq_id != seq:
            raise CallbackError(f"unexpected answer {envelope.operation} seq "
                                f"{envelope.header.seq_id}")
        envelope.verify(app.password, self.clock.seconds(),
                        self.apps.config.soap_timestamp_window)
        response = envelope.payload(cipher if envelope.encrypted else None)
        return response.result_code in (R.OK, R.DUPLICATE)

    def _done(self, result: Any, call: Deferred[Any], app_id: str) -> Any:
        self._calls.discard(call)
        self._busy[app_id] -= 1
        return result

    def close(self) -> Deferred[None]:
        """Abandon the calls in flight (their entries stay stored) and close connections."""
        for call in list(self._calls):
            call.cancel()
        return self.pool.closeCachedConnections()

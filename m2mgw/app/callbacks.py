"""Callbacks (spec 4.7): notifications offered to an application's ``M2MAppNotifyService``.

:class:`CallbackChannel` posts each notification with treq, one call at a time per
application so that they arrive in creation order, and counts it delivered only when
the answer's digest verifies, its seqId is echoed and its result is 0 or 11. Under a
SOAP session that asked for encrypted notifications (AD-22) the body is encrypted
with that session's key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import treq
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from m2mgw.app import operations as ops
from m2mgw.app import soap
from m2mgw.app.endpoint import SoapSession
from m2mgw.config import AppConfig
from m2mgw.core.model import Application
from m2mgw.protocol.errors import ProtocolError
from m2mgw.protocol.security import Cipher

log = Logger()

R = ops.ResultCode
MAX_CALLBACK_ANSWER = 1024 * 1024


class CallbackError(ProtocolError):
    """The application's answer to a callback does not count as delivered."""


class CallbackChannel:
    """Offers notifications to ``M2MAppNotifyService`` at the application's URL."""

    def __init__(self, clock: IReactorTime, config: AppConfig,
                 session_of: Callable[[str], SoapSession | None]) -> None:
        self.clock = clock
        self.config = config
        self.pool = HTTPConnectionPool(clock, persistent=True)
        self.http = treq.client.HTTPClient(Agent(clock, pool=self.pool))
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
        d = self.http.post(app.callback_url or "", data=body, headers=Headers({
            b"content-type": [soap.CONTENT_TYPE.encode("ascii")],
            b"soapaction": [soap.soap_action(name).encode("ascii")],
        }))
        self._calls.add(d)
        self._busy[app.app_id] = self._busy.get(app.app_id, 0) + 1
        d.addCallback(self._read)
        d.addCallback(self._accepted, app, name, seq, cipher)
        d.addBoth(self._done, d, app.app_id)
        d.addTimeout(self.config.callback_timeout, self.clock)

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
        envelope.verify(app.password, self.clock.seconds(), self.config.soap_timestamp_window)
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

"""Callbacks (spec 4.7): notifications offered to an application's ``M2MAppNotifyService``.

:class:`CallbackChannel` posts each notification with Twisted's ``Agent``, up to
``callback_concurrency`` calls at a time per application, and counts it delivered only
when the answer's digest verifies, its seqId is echoed and its result is 0 or 11.
Calls are numbered in the order the outbox offers them, which is creation order, so an
application that processes them by ``seqId`` sees them in that order although they
may arrive in any (D-403). Under a SOAP session that asked for encrypted
notifications (AD-22) the body is encrypted with that session's key.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any, cast

from hyperlink import EncodedURL
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseDone,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

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
        # One kept-alive connection per outstanding call (Twisted keeps 2 by default).
        self.pool.maxPersistentPerHost = config.callback_concurrency
        self.agent = Agent.usingEndpointFactory(clock, _Endpoints(clock), pool=self.pool)
        self._session_of = session_of
        self._seq: dict[str, int] = {}
        self._calls: set[Deferred[Any]] = set()
        self._busy: dict[str, int] = {}

    def capacity(self, app_id: str) -> int:
        """Up to ``callback_concurrency`` calls at a time per application (4.7)."""
        return self.config.callback_concurrency - self._busy.get(app_id, 0)

    def offer(self, app: Application, notification: object) -> Deferred[bool]:
        seq = self._seq[app.app_id] = ops.next_id(self._seq.get(app.app_id, 0))
        name = type(notification).__name__
        session = self._session_of(app.app_id)
        header = soap.MsgHeader(msg_type=name, app_id=app.app_id, seq_id=seq,
                                timestamp=ops.format_soap_timestamp(self.clock.seconds()),
                                session_id=session.session_id if session else None)
        cipher = session.cipher if session else None
        body = soap.build_message(header, notification, app.password, cipher=cipher)
        d: Deferred[Any] = self.agent.request(b"POST", _uri(app.callback_url or ""), Headers({
            b"content-type": [soap.CONTENT_TYPE.encode("ascii")],
            b"soapaction": [soap.soap_action(name).encode("ascii")],
        }), _Body(body))
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

    def _read(self, response: IResponse) -> Deferred[tuple[int, bytes]]:
        answer = _Answer(response.code)
        response.deliverBody(answer)
        return answer.done

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


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """The endpoints ``Agent`` would build for every request, built once per origin:
    TCP for http, TLS over TCP with the browser-like policy for https."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._tls = BrowserLikePolicyForHTTPS()
        self._known: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        origin = (uri.scheme, uri.host, uri.port)
        endpoint = self._known.get(origin)
        if endpoint is None:
            if uri.scheme not in (b"http", b"https"):
                raise SchemeNotSupported(f"unsupported scheme {uri.scheme!r}")
            endpoint = HostnameEndpoint(self._clock, uri.host.decode("ascii"), uri.port)
            if uri.scheme == b"https":
                endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port),
                                         endpoint)
            self._known[origin] = endpoint
        return endpoint


@lru_cache(maxsize=1024)
def _uri(url: str) -> bytes:
    """A callback URL as the request line needs it (IRIs encoded), once per URL."""
    return EncodedURL.from_text(url).to_uri().to_text().encode("ascii")


@implementer(IBodyProducer)
class _Body:
    """A request body already in memory, written at once."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Answer(Protocol):
    """Collects the body of a callback's answer, at most ``MAX_CALLBACK_ANSWER`` bytes."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.size = 0
        self.chunks: list[bytes] = []
        self.done: Deferred[tuple[int, bytes]] = Deferred(lambda _: self._abort())

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > MAX_CALLBACK_ANSWER:
            self._abort()
            self.done.errback(CallbackError("callback answer too large"))
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback((self.status, b"".join(self.chunks)))
        else:
            self.done.errback(reason)

    def _abort(self) -> None:
        """Stop reading: the connection is dropped, not returned to the pool."""
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

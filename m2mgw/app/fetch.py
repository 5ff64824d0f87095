"""The file of an ``Upgrade``: inline or fetched once from ``sourceUrl`` (spec 3.2.9, AD-15).

Either way the file ends up in a temporary file with its size and MD5, which the
caller checks against ``fileSize`` and ``fileMd5`` and hands to the file service.
A fetch is bounded in size (the body is cut off past the limit, whatever the
``Content-Length`` said), in time and in redirects, each of which is checked like the
first URL, and every way it can fail is a :class:`FetchError`, which the operation
answers with result 8.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss

from m2mgw.protocol.errors import ProtocolError

__all__ = ["FetchError", "StoredFile", "fetch_file", "store_bytes"]

log = Logger()

MAX_URL_LENGTH = 2048
PREFIX = "upgrade-"
#: Redirects followed from a sourceUrl, each hop checked like the first URL.
MAX_REDIRECTS = 5
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})


class FetchError(ProtocolError):
    """The source URL is unusable, or fetching it failed (result 8)."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A temporary file the caller owns (and removes): its path, size and MD5 (hex)."""

    path: str
    size: int
    md5: str

    def remove(self) -> None:
        try:
            os.remove(self.path)
        except OSError:
            pass


def store_bytes(data: bytes) -> StoredFile:
    """An inline ``fileData`` as a temporary file."""
    handle, path = tempfile.mkstemp(prefix=PREFIX)
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    return StoredFile(path, len(data), hashlib.md5(data).hexdigest())


def check_url(url: str, allowed_hosts: tuple[str, ...] = ()) -> None:
    """Only absolute ``http``/``https`` URLs with a host, in ASCII (3.2.9); with
    ``allowed_hosts`` (``[app] upgrade_source_hosts``) only those hosts, so an
    application cannot make the platform fetch from its internal network."""
    if not url.isascii() or len(url) > MAX_URL_LENGTH:
        raise FetchError(f"sourceUrl must be ASCII of at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise FetchError(f"sourceUrl is not a URL: {url!r}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise FetchError(f"sourceUrl must be an http:// or https:// URL, got {url!r}")
    if allowed_hosts and host.lower() not in allowed_hosts:
        raise FetchError(f"sourceUrl host {host!r} is not allowed")


class _FileSink(Protocol):
    """Writes a response body to a file and its MD5, and hangs up past ``max_size``."""

    def __init__(self, out: IO[bytes], max_size: int) -> None:
        self.out = out
        self.max_size = max_size
        self.size = 0
        self.md5 = hashlib.md5()
        self.refusal: FetchError | None = None
        self.finished: Deferred[None] = Deferred(lambda _: self._hang_up())

    def connectionMade(self) -> None:
        if self.refusal is not None:
            self._fail(self.refusal)

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.max_size:
            self._fail(FetchError(f"the file is larger than {self.max_size} bytes"))
            return
        self.out.write(data)
        self.md5.update(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.finished.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(None)
        else:
            self.finished.errback(FetchError(f"transfer failed: {reason.getErrorMessage()}"))

    def _fail(self, error: FetchError) -> None:
        self.finished.errback(error)
        self._hang_up()

    def _hang_up(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


class _HangUp(Protocol):
    """A redirect's body is never read: the connection is closed at once."""

    def connectionMade(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


def _redirect_target(response: Any, current: str, hops: int,
                     allowed_hosts: tuple[str, ...]) -> str:
    """Where a redirect leads, held to the rules of the first URL (:func:`check_url`)."""
    if hops >= MAX_REDIRECTS:
        raise FetchError(f"more than {MAX_REDIRECTS} redirects")
    locations = response.headers.getRawHeaders(b"location") or [b""]
    if not locations[0]:
        raise FetchError(f"HTTP status {response.code} without a Location")
    target = urljoin(current, locations[0].decode("latin-1"))
    check_url(target, allowed_hosts)
    return target


def fetch_file(
    reactor: Any, url: str, *, max_size: int, timeout: float, allowed_hosts: tuple[str, ...] = ()
) -> Deferred[StoredFile]:
    """GET ``url`` once into a temporary file, following up to :data:`MAX_REDIRECTS`.

    Redirects are followed here, hop by hop, not by treq: each Location must pass
    :func:`check_url` with ``allowed_hosts`` before it is requested, so an allowed
    host cannot send the platform on to a forbidden one.

    Fails with :class:`FetchError`: bad URL or redirect, no connection, a status other
    than 200, more than ``max_size`` bytes, or no complete answer within ``timeout``
    seconds (all hops together).
    """
    try:
        check_url(url, allowed_hosts)
    except FetchError:
        return fail()
    handle, path = tempfile.mkstemp(prefix=PREFIX)
    out = os.fdopen(handle, "wb")
    sink = _FileSink(out, max_size)
    http = HTTPClient(Agent(reactor))

    def get(target: str, hops: int) -> Deferred[None]:
        d = maybeDeferred(http.get, target, reactor=reactor, allow_redirects=False,
                          unbuffered=True)
        return d.addCallback(receive, target, hops)

    def receive(response: Any, target: str, hops: int) -> Deferred[None]:
        if response.code in _REDIRECT_CODES:
            response.deliverBody(_HangUp())
            return get(_redirect_target(response, target, hops, allowed_hosts), hops + 1)
        if response.code != 200:
            sink.refusal = FetchError(f"HTTP status {response.code}")
        elif response.length is not None and response.length > max_size:
            sink.refusal = FetchError(f"Content-Length {response.length} over {max_size}")
        response.deliverBody(sink)
        return sink.finished

    def done(result: Failure | None) -> StoredFile:
        out.close()
        if isinstance(result, Failure):
            os.remove(path)
            why = (result.value.reason if isinstance(result.value, FetchError)
                   else result.getErrorMessage() or type(result.value).__name__)
            log.info("Fetching a sourceUrl from {host} failed: {why}",
                     host=urlsplit(url).hostname, why=why)
            raise FetchError(f"fetching sourceUrl failed: {why}")
        return StoredFile(path, sink.size, sink.md5.hexdigest())

    def timed_out(result: object, seconds: float) -> None:
        raise FetchError(f"no complete answer within {seconds} s")

    d = get(url, 0)
    d.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)
    return d.addBoth(done)

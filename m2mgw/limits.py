"""Bounds on what peers can hold open: deadlines, connection caps, descriptors (D-310..D-317).

A socket costs a file descriptor, and the process has a fixed number of them: peers
that open connections and never finish a request would otherwise take them all, and
with them the terminals' logins and the applications' calls (issue #15 item 2).

* :class:`DeadlineChannel` is an HTTP channel whose requests must arrive in time: the
  request line and headers within ``header_timeout`` of the moment it began waiting for
  them (the connection, or the end of the previous answer), the body within
  ``body_timeout`` of the headers. The deadlines are absolute: Twisted's own idle
  timeout starts again at each byte, so one byte every few seconds holds a socket for
  ever (slowloris).
* :class:`CappedFactory` keeps each listener to ``max_connections``. At the cap a new
  connection closes the one idle the longest (an HTTP connection waiting for or still
  receiving a request, a long connection not logged in), or is refused if none is;
  optionally one source address holds at most so many of those it could close.
* :class:`Unauthenticated` keeps a listener's connections that have not authenticated
  yet in arrival order and per source address, so that the terminal TCP listener finds
  what to evict among its 10,000 connections in O(1) (D-351, D-352).
* :func:`fit_descriptor_limit` checks at start-up that all the caps together fit the
  open-file limit, raising the soft limit toward the hard one when they do not.
"""

from __future__ import annotations

import itertools
import resource
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, Request
from twisted.web.server import Site

if TYPE_CHECKING:
    from m2mgw.config import AppConfig, GatewayConfig

log = Logger()

#: A flood of refusals writes one line at once, then one summing up at most this often.
SUMMARY_INTERVAL = 60.0
#: Descriptors besides the listeners' connections: standard streams, the log, the
#: listening and UDP sockets, the reactor's own, SQLite's database, WAL and shm, the
#: modem, file copies, callbacks and fetches to applications (D-315).
RESERVED_DESCRIPTORS = 64
#: What a request that missed its deadline is answered before the connection closes.
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)


@dataclass(frozen=True)
class HttpLimits:
    """The bounds of one HTTP listener (``[http]``, ``[admin]``, ``[metrics]``)."""

    max_connections: int
    header_timeout: float
    body_timeout: float

    @classmethod
    def of(cls, section: Any) -> HttpLimits:
        """The bounds an ini section gives with its keys of the same names."""
        return cls(section.max_connections, section.header_timeout, section.body_timeout)


class Tally:
    """What one listener turned away: one warning at once, then at most one line per
    :data:`SUMMARY_INTERVAL` summing up, so that a flood writes a bounded log (D-317).

    ``total`` keeps every count since start-up.
    """

    def __init__(self, listener: str, clock: IReactorTime) -> None:
        self.listener = listener
        self.clock = clock
        self.total: Counter[str] = Counter()
        self._pending: Counter[str] = Counter()
        self._last: float | None = None

    def note(self, what: str) -> None:
        self.total[what] += 1
        self._pending[what] += 1
        now = self.clock.seconds()
        if self._last is not None and now < self._last + SUMMARY_INTERVAL:
            return
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(self._pending.items()))
        since = "" if self._last is None else f" in the last {now - self._last:.0f} s"
        log.warn("{listener} listener: {counts}{since}", listener=self.listener,
                 counts=counts, since=since, event="connection-limits",
                 tally=dict(self._pending))
        self._pending.clear()
        self._last = now


#: Orders the waits of all channels: the lowest has been waiting the longest.
_waits = itertools.count()


class DeadlineChannel(HTTPChannel):
    """An HTTP/1.1 channel whose requests must arrive within absolute deadlines (D-310).

    A request that misses one is answered 408 and the connection closed; an idle
    kept-alive connection whose header deadline passes before any byte of a next
    request is closed silently, as clients expect. Twisted's idle timeout stays
    in place underneath. :func:`limited_site` makes a subclass with its listener's
    ``limits`` and ``tally``.
    """

    limits: HttpLimits
    tally: Tally
    #: While waiting for or receiving a request: when the wait began, in the order of
    #: all waits (lowest: the longest); None while a request is answered (D-312).
    waiting: int | None = None
    _deadline: IDelayedCall | None = None
    _abort: IDelayedCall | None = None
    _partial = False
    _gone = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self._await_request()

    def dataReceived(self, data: bytes) -> None:
        if self.waiting is not None:
            self._partial = True
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        self._arm(self.limits.body_timeout, "body")

    def allContentReceived(self) -> None:
        self._disarm()
        self.waiting = None
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        # Before the base class replays pipelined bytes, which may start the next request.
        if self.persistent:
            self._await_request()
        super().requestDone(request)

    def connectionLost(self, reason: Failure) -> None:
        self._gone = True
        self._disarm()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        super().connectionLost(reason)

    def _await_request(self) -> None:
        if self._gone:
            return
        self.waiting = next(_waits)
        self._partial = False
        self._arm(self.limits.header_timeout, "header")

    def _arm(self, seconds: float, phase: str) -> None:
        self._disarm()
        self._deadline = self.callLater(seconds, self._expired, phase)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _expired(self, phase: str) -> None:
        self._deadline = None
        assert self.transport is not None
        if self._partial:
            self.tally.note(f"closed at the {phase} deadline")
            self.transport.write(REQUEST_TIMEOUT)
        log.debug("HTTP connection from {peer} closed at the {phase} deadline",
                  peer=self.transport.getPeer(), phase=phase)
        self.loseConnection()
        # A peer that does not read even the 408 loses the connection all the same.
        self._abort = self.callLater(self.abortTimeout, self.transport.abortConnection)


def _waiting(channel: DeadlineChannel) -> int | None:
    return channel.waiting


class CappedFactory(WrappingFactory):
    """At most ``limit`` connections of ``wrapped`` at a time (D-312, D-314).

    ``idle`` ranks a connection's protocol for eviction: None keeps it, and among the
    others the lowest rank (the oldest of equals) is closed to make room for a new
    connection at the cap. With none to close, the new connection is refused: closed
    before it is read from. With ``per_host``, a new connection from an address that
    already holds that many connections ``idle`` could close closes the lowest ranked
    of them first, at the cap or not (D-358).
    """

    def __init__(
        self,
        wrapped: Factory,
        limit: int,
        idle: Callable[[Any], int | None],
        tally: Tally,
        per_host: int | None = None,
    ) -> None:
        super().__init__(wrapped)
        self.limit = limit
        self.idle = idle
        self.tally = tally
        self.per_host = per_host

    def buildProtocol(self, addr: IAddress | None) -> ProtocolWrapper | None:  # type: ignore[override]
        host = getattr(addr, "host", None)
        if self.per_host is not None and host is not None:
            same = [wrapper for wrapper in self.protocols if _host(wrapper) == host]
            if self._evict(same, self.per_host, "evicted: too many from one address"):
                return super().buildProtocol(addr)
        if len(self.protocols) >= self.limit and not self._evict(
                self.protocols, 1, "evicted at the cap"):
            self.tally.note("refused at the cap")
            return None
        return super().buildProtocol(addr)

    def _evict(self, among: Any, threshold: int, what: str) -> bool:
        """Close the lowest ranked of ``among`` if at least ``threshold`` can be closed."""
        ranked = [
            (rank, wrapper)
            for wrapper in among
            if (rank := self.idle(wrapper.wrappedProtocol)) is not None
        ]
        if len(ranked) < threshold:
            return False
        _, victim = min(ranked, key=lambda pair: pair[0])
        del self.protocols[victim]  # its place is free now; its connectionLost comes later
        victim.transport.abortConnection()
        self.tally.note(what)
        return True

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        self.protocols.pop(p, None)


def _host(wrapper: ProtocolWrapper) -> str | None:
    return getattr(wrapper.transport.getPeer(), "host", None)


_Connection = TypeVar("_Connection", bound=Hashable)


class Unauthenticated(Generic[_Connection]):
    """A listener's connections that have not authenticated yet: oldest first, and per
    source address, each step O(1) (D-351, D-352).

    A connection joins when it is accepted and leaves when it authenticates, is closed
    or is evicted (:meth:`discard`).
    """

    __slots__ = ("_by_host", "_order")

    def __init__(self) -> None:
        self._order: OrderedDict[_Connection, str] = OrderedDict()
        self._by_host: dict[str, OrderedDict[_Connection, None]] = {}

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, connection: object) -> bool:
        return connection in self._order

    def add(self, connection: _Connection, host: str) -> None:
        self._order[connection] = host
        self._by_host.setdefault(host, OrderedDict())[connection] = None

    def discard(self, connection: _Connection) -> None:
        host = self._order.pop(connection, None)
        if host is None:
            return
        same = self._by_host[host]
        del same[connection]
        if not same:
            del self._by_host[host]

    def from_host(self, host: str) -> int:
        """How many of them came from ``host``."""
        same = self._by_host.get(host)
        return len(same) if same else 0

    def oldest(self, host: str | None = None) -> _Connection | None:
        """The one accepted first, of all or of ``host``'s; None if there is none."""
        order = self._order if host is None else self._by_host.get(host)
        return next(iter(order)) if order else None


def limited_site(listener: str, site: Site, limits: HttpLimits, clock: IReactorTime
                 ) -> CappedFactory:
    """``site`` with deadlines on its requests and a cap on its connections.

    Its channels are plain :class:`DeadlineChannel` (HTTP/1.x): none of our listeners
    negotiates HTTP/2.
    """
    tally = Tally(listener, clock)
    site.reactor = clock
    site.protocol = type(  # type: ignore[assignment]
        "DeadlineChannel", (DeadlineChannel,), {"limits": limits, "tally": tally}
    )
    return CappedFactory(site, limits.max_connections, _waiting, tally)


def _not_logged_in(connection: Any) -> int | None:
    """Long connections (``AppConnection``): those whose login is not confirmed by a
    signed message go first, oldest first; an APP_LOGIN alone proves nothing (D-358)."""
    session = connection.session
    return None if session is not None and session.confirmed else 0


def capped_long_connections(factory: Factory, section: AppConfig, clock: IReactorTime
                            ) -> CappedFactory:
    """The ``[app] listen`` factory within ``[app] max_connections`` and
    ``max_unauthenticated_per_host`` (D-314, D-358)."""
    return CappedFactory(factory, section.max_connections, _not_logged_in, Tally("app", clock),
                         per_host=section.max_unauthenticated_per_host)


# --- the descriptor budget -----------------------------------------------------------------


def descriptor_needs(config: GatewayConfig) -> dict[str, int]:
    """The descriptors each enabled listener holds at its cap, and the reserve (D-315).

    An HTTP connection counts twice: a download holds its file open too.
    """
    needs: dict[str, int] = {}
    for name, section, per_connection in (
        ("tcp", config.tcp, 1),
        ("http", config.http, 2),
        ("admin", config.admin, 1),
        ("app", config.app, 1),
        ("metrics", config.metrics, 1),
    ):
        if section.listen is not None:
            needs[name] = section.max_connections * per_connection
    needs["other"] = RESERVED_DESCRIPTORS
    return needs


def fit_descriptor_limit(needs: Mapping[str, int]) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE toward the hard limit until ``needs`` fit; log the
    limit in one line, a warning naming the numbers if they still do not fit (D-316).

    Returns the (soft, hard) limit in effect.
    """
    needed = sum(needs.values())
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = before
    if _below(soft, needed):
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if _below(soft, target):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError) as exc:
                log.warn("Cannot raise the open-file limit to {target}: {error}",
                         target=target, error=exc)
    parts = " + ".join(f"{name} {n}" for name, n in needs.items())
    shown_hard = "unlimited" if hard == resource.RLIM_INFINITY else hard
    raised = f" (raised from {before})" if soft != before else ""
    if _below(soft, needed):
        log.warn(
            "Open files: the connection caps need {needed} ({parts}) but the limit is "
            "{soft} (hard {hard}): lower the max_connections keys or raise the limit "
            "(LimitNOFILE= under systemd); past it, new connections fail",
            needed=needed, parts=parts, soft=soft, hard=shown_hard,
        )
    else:
        log.info("Open files: limit {soft}{raised} (hard {hard}); the connection caps need "
                 "{needed} ({parts})", soft=soft, raised=raised, hard=shown_hard,
                 needed=needed, parts=parts)
    return soft, hard


def _below(limit: int, needed: int) -> bool:
    return limit != resource.RLIM_INFINITY and limit < needed

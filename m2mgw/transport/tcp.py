"""TCP bearer (spec 10.2): long and short connections, framing by Total_Length.

A thin adapter: bytes in are framed and handed to the engine; the connection is
itself the :class:`~m2mgw.core.session.Bearer` its answers go back on.
"""

from __future__ import annotations

from twisted.internet import protocol
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from m2mgw.config import TcpConfig
from m2mgw.core.engine import PlatformEngine
from m2mgw.core.refusals import Reason
from m2mgw.protocol.errors import FramingError
from m2mgw.protocol.framing import StreamFramer

log = Logger()


@implementer(IPushProducer)
class TerminalConnection(protocol.Protocol):
    """One terminal TCP connection; many messages per connection (10.2)."""

    kind = "tcp"
    factory: TerminalTcpFactory

    def __init__(self) -> None:
        self.framer = StreamFramer()
        self.address = ""
        self.host = ""
        self._bound_serial: str | None = None
        #: Set once a session was bound to the connection (D-290); until then the
        #: login timer runs, whatever was answered on it.
        self.authenticated = False
        self._open = False
        self._paused = False
        self._pending_bytes = 0
        self._login_timer: IDelayedCall | None = None
        self._idle_timer: IDelayedCall | None = None

    # Bearer -----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._open

    def send(self, data: bytes) -> None:
        if not self._open:
            return
        if self._paused:
            self._pending_bytes += len(data)
            if self._pending_bytes > self.factory.config.max_write_buffer:
                log.warn(
                    "Write buffer of {peer} ({serial}) above {limit} bytes: closing",
                    limit=self.factory.config.max_write_buffer,
                    **self.log_keys,
                )
                self.transport.abortConnection()  # type: ignore[union-attr]
                return
        self.factory.engine.stats.count_sent(data)
        self.transport.write(data)  # type: ignore[union-attr]

    def close(self) -> None:
        if self._open:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def same_path(self, other: object) -> bool:
        return other is self

    @property
    def bound_serial(self) -> str | None:
        """The serial whose session this connection is bound to (10.2)."""
        return self._bound_serial

    @bound_serial.setter
    def bound_serial(self, serial: str | None) -> None:
        """The engine binds a connection only on an accepted LOGIN or a fresh verified
        message (D-290): that, and nothing it answered, authenticates the connection."""
        self._bound_serial = serial
        if serial is not None and not self.authenticated:
            self.authenticated = True
            if self._login_timer is not None and self._login_timer.active():
                self._login_timer.cancel()

    @property
    def log_keys(self) -> dict[str, object]:
        """The terminal keys of a log event about this connection (issue #8)."""
        return {"serial": self.bound_serial, "bearer": self.kind, "peer": self.address}

    # IPushProducer: the transport tells us when its buffer fills ---------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pending_bytes = 0

    def stopProducing(self) -> None:
        self._open = False

    # Backpressure: the gateway holds our reading while the registry is behind ---------

    def hold_reading(self, held: bool) -> None:
        """Stop or restart reading; unread bytes wait in the kernel, then the client."""
        if not self._open:
            return
        if held:
            self.transport.pauseProducing()  # type: ignore[union-attr]
        else:
            self.transport.resumeProducing()  # type: ignore[union-attr]

    # Protocol ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        peer: IAddress = self.transport.getPeer()  # type: ignore[union-attr]
        self.host = getattr(peer, "host", str(peer))
        self.address = f"{self.host}:{getattr(peer, 'port', '')}"
        if len(factory.connections) >= factory.config.max_connections:
            factory.engine.refusals.report(
                Reason.CONNECTION_CAP,
                f"connection cap {factory.config.max_connections} reached",
                **self.log_keys,
            )
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._open = True
        factory.connections.add(self)
        factory.opened += 1
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        if factory.reading_held:
            self.hold_reading(True)
        clock = factory.clock
        self._login_timer = clock.callLater(factory.login_timeout, self._no_login)
        self._idle_timer = clock.callLater(factory.config.idle_timeout, self._idle)

    def dataReceived(self, data: bytes) -> None:
        if not self._open:
            return
        try:
            frames = self.framer.feed(data)
        except FramingError as exc:
            self.factory.engine.refusals.report(
                Reason.FRAMING, f"{exc.reason}; closing", **self.log_keys
            )
            self._open = False
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self.factory.config.idle_timeout)
        engine = self.factory.engine
        for frame in frames:
            if not self._open:
                break
            engine.receive(frame, self)

    def _no_login(self) -> None:
        """Counted and rate-limited like any refusal: a flood of such connections writes
        a bounded number of lines (D-291)."""
        if not self.authenticated:
            self.factory.engine.refusals.report(
                Reason.LOGIN_TIMEOUT,
                f"no authenticated message within {self.factory.login_timeout:g} s; closing",
                **self.log_keys,
            )
            self.close()

    def _idle(self) -> None:
        log.info("Connection from {peer} ({serial}) idle: closing", **self.log_keys)
        self.close()

    def connectionLost(self, reason: object = None) -> None:
        was_open = self._open
        self._open = False
        for timer in (self._login_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self.factory.connections.discard(self)
        if was_open and self.framer.buffered:
            self.factory.engine.refusals.report(
                Reason.FRAMING,
                f"closed with a half frame of {self.framer.buffered} bytes",
                **self.log_keys,
            )
        if was_open or self.bound_serial:
            self.factory.engine.bearer_lost(self)


class TerminalTcpFactory(protocol.Factory):
    """Accepts terminal connections for one engine (10.2)."""

    protocol = TerminalConnection
    noisy = False

    def __init__(
        self, engine: PlatformEngine, clock: IReactorTime, config: TcpConfig, login_timeout: float
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.config = config
        self.login_timeout = login_timeout
        self.connections: set[TerminalConnection] = set()
        self.reading_held = False
        #: Connections accepted since start-up (the refused ones are refusals).
        self.opened = 0
        #: Connections closed to make room for new ones: none yet, as there is no
        #: eviction policy; the metric exists so dashboards need not change with one.
        self.evicted = 0

    def hold_reading(self, held: bool) -> None:
        """Backpressure: stop (True) or restart reading every connection, new ones too."""
        self.reading_held = held
        for connection in self.connections:
            connection.hold_reading(held)

    def close_all(self) -> None:
        for connection in list(self.connections):
            connection.close()

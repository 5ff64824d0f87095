"""TCP bearer (spec 10.2): long and short connections, framing by Total_Length.

A thin adapter: bytes in are framed and handed to the engine; the connection is
itself the :class:`~m2mgw.core.session.Bearer` its answers go back on.

Until a connection authenticates (D-290) it must complete a frame within
``[tcp] first_frame_timeout`` and authenticate within ``tcp_login_timeout``; at
``[tcp] max_connections``, or at ``max_unauthenticated_per_host`` from its address, a
new connection closes the oldest one not authenticated (D-350..D-354). While the
gateway holds a connection's input (backpressure) its timers stand still (D-357).
An answer goes straight to the socket while nothing of the connection waits to be
written (D-390).
"""

from __future__ import annotations

from collections.abc import Callable
from socket import socket

from twisted.internet import protocol, tcp
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from m2mgw.config import TcpConfig
from m2mgw.core.engine.dispatch import PlatformEngine
from m2mgw.core.refusals import Reason, TerminalKeys
from m2mgw.limits import Unauthenticated
from m2mgw.protocol.errors import FramingError
from m2mgw.protocol.framing import StreamFramer

log = Logger()


class PausableCall:
    """A delayed call whose countdown stops while paused (D-357).

    The gateway stops reading a connection while its registry is behind; the time it
    held the input must not count against the peer, whose bytes wait unread.
    """

    __slots__ = ("_call", "_clock", "_function", "_remaining")

    def __init__(self, clock: IReactorTime, seconds: float, function: Callable[[], None]
                 ) -> None:
        self._clock = clock
        self._function = function
        #: The seconds left while paused; None while running, fired or cancelled.
        self._remaining: float | None = None
        self._call: IDelayedCall = clock.callLater(seconds, function)

    def reset(self, seconds: float) -> None:
        """Count ``seconds`` again from now, or from the resumption while paused."""
        if self._remaining is not None:
            self._remaining = seconds
        elif self._call.active():
            self._call.reset(seconds)

    def pause(self) -> None:
        if self._call.active():
            self._remaining = max(0.0, self._call.getTime() - self._clock.seconds())
            self._call.cancel()

    def resume(self) -> None:
        if self._remaining is not None:
            self._call = self._clock.callLater(self._remaining, self._function)
            self._remaining = None

    def cancel(self) -> None:
        self._remaining = None
        if self._call.active():
            self._call.cancel()


@implementer(IPushProducer)
class TerminalConnection(protocol.Protocol):
    """One terminal TCP connection; many messages per connection (10.2)."""

    kind = "tcp"
    factory: TerminalTcpFactory

    def __init__(self) -> None:
        self.framer = StreamFramer()
        self.address = ""
        self.host = ""
        #: Set once a session was bound to the connection (D-290); until then the
        #: login timer runs, whatever was answered on it.
        self.authenticated = False
        self._open = False
        self._paused = False
        self._pending_bytes = 0
        self._first_frame_timer: PausableCall | None = None
        self._login_timer: PausableCall | None = None
        self._idle_timer: PausableCall | None = None
        #: The socket of a plain TCP transport, written straight to when idle (D-390).
        self._socket: socket | None = None

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
        transport = self.transport
        sock = self._socket
        if sock is not None and _nothing_waits(transport):  # type: ignore[arg-type]
            try:
                sent = sock.send(data)
            except OSError:  # full (EAGAIN), or the peer is gone: Twisted's write finds out
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        transport.write(data)  # type: ignore[union-attr]

    def close(self) -> None:
        if self._open:
            self.transport.loseConnection()  # type: ignore[union-attr]

    def same_path(self, other: object) -> bool:
        return other is self

    @property
    def bound_serial(self) -> str | None:
        """The serial whose session this connection is bound to (10.2): the engine's
        session table keeps the binding."""
        return self.factory.engine.sessions.bound_serial(self)

    def on_bound(self) -> None:
        """The engine binds a connection only on an accepted LOGIN or a fresh verified
        message (D-290): that, and nothing it answered, authenticates the connection."""
        if not self.authenticated:
            self.authenticated = True
            for timer in (self._first_frame_timer, self._login_timer):
                if timer is not None:
                    timer.cancel()
            self.factory.pending.discard(self)

    @property
    def log_keys(self) -> TerminalKeys:
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
        """Stop or restart reading; unread bytes wait in the kernel, then the client.

        The connection's timers stop meanwhile: the peer is not slow, we are (D-357).
        """
        if not self._open:
            return
        if held:
            self.transport.pauseProducing()  # type: ignore[union-attr]
        else:
            self.transport.resumeProducing()  # type: ignore[union-attr]
        for timer in self._timers():
            if held:
                timer.pause()
            else:
                timer.resume()

    def _timers(self) -> list[PausableCall]:
        timers = (self._first_frame_timer, self._login_timer, self._idle_timer)
        return [timer for timer in timers if timer is not None]

    def _stop_timers(self) -> None:
        """Cancel the timers and let go of them: each holds a bound method of this
        connection, a reference cycle that only a full garbage collection would free,
        and under a flood of connections those take a hundred milliseconds each."""
        for timer in self._timers():
            timer.cancel()
        self._first_frame_timer = self._login_timer = self._idle_timer = None

    # Protocol ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        peer: IAddress = self.transport.getPeer()  # type: ignore[union-attr]
        self.host = getattr(peer, "host", str(peer))
        self.address = f"{self.host}:{getattr(peer, 'port', '')}"
        if not factory.admit(self):
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._open = True
        factory.opened += 1
        transport = self.transport
        transport.registerProducer(self, True)  # type: ignore[union-attr]
        if isinstance(transport, tcp.Connection) and not transport.TLS:
            self._socket = transport.getHandle()
        clock = factory.clock
        self._first_frame_timer = PausableCall(
            clock, factory.config.first_frame_timeout, self._no_first_frame
        )
        self._login_timer = PausableCall(clock, factory.login_timeout, self._no_login)
        self._idle_timer = PausableCall(clock, factory.config.idle_timeout, self._idle)
        if factory.reading_held:
            self.hold_reading(True)

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
        if self._idle_timer is not None:
            self._idle_timer.reset(self.factory.config.idle_timeout)
        if frames and self._first_frame_timer is not None:
            self._first_frame_timer.cancel()
            self._first_frame_timer = None
        engine = self.factory.engine
        for frame in frames:
            if not self._open:
                break
            engine.receive(frame, self)

    def _no_first_frame(self) -> None:
        """A peer that sends nothing, or trickles bytes, holds a descriptor for
        ``first_frame_timeout`` at most (D-350); counted and rate-limited (D-291)."""
        self.factory.engine.refusals.report(
            Reason.FIRST_FRAME_TIMEOUT,
            f"no complete frame within {self.factory.config.first_frame_timeout:g} s "
            f"({self.framer.buffered} bytes); closing",
            **self.log_keys,
        )
        self.drop()

    def drop(self) -> None:
        """Close at once, reporting nothing more, and give the place up now: the
        transport's connectionLost comes later (eviction, first-frame timeout)."""
        self._open = False
        self._stop_timers()
        self.factory.release(self)
        self.transport.abortConnection()  # type: ignore[union-attr]

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
        self._stop_timers()
        self.factory.release(self)
        if was_open and self.framer.buffered:
            self.factory.engine.refusals.report(
                Reason.FRAMING,
                f"closed with a half frame of {self.framer.buffered} bytes",
                **self.log_keys,
            )
        if was_open or self.bound_serial:
            self.factory.engine.bearer_lost(self)


def _nothing_waits(transport: tcp.Connection) -> bool:
    """Whether a send now cannot overtake or outlive anything: the transport buffers
    nothing (Twisted's ``FileDescriptor`` keeps unsent bytes in ``dataBuffer`` from
    ``offset`` and in its list of later writes) and is neither closing nor aborted.

    Then ``socket.send`` does what the reactor would do on its next turn, without
    registering the socket for writing and unregistering it again (two ``epoll_ctl``
    calls and a poll event per answer, D-390).
    """
    return (
        transport.offset == len(transport.dataBuffer)
        and not transport._tempDataLen
        and not (transport.disconnecting or transport._aborting or not transport.connected)
    )


class TerminalTcpFactory(protocol.Factory[TerminalConnection]):
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
        #: Those of them not authenticated yet, oldest first (D-351).
        self.pending: Unauthenticated[TerminalConnection] = Unauthenticated()
        self.reading_held = False
        #: Connections accepted since start-up (the refused ones are refusals).
        self.opened = 0
        #: Connections closed to make room for new ones (D-351, D-352).
        self.evicted = 0

    def admit(self, connection: TerminalConnection) -> bool:
        """Make room for ``connection``, or refuse it (False) when every connection at
        the cap is authenticated (D-351): an address at ``max_unauthenticated_per_host``
        gives up its own oldest connection not authenticated (D-352), a full listener
        its oldest of all; terminals that authenticated are never closed for it."""
        config = self.config
        host = connection.host
        victim = None
        if self.pending.from_host(host) >= config.max_unauthenticated_per_host:
            victim = self.pending.oldest(host)
            why = f"{config.max_unauthenticated_per_host} connections not logged in from {host}"
        elif len(self.connections) >= config.max_connections:
            victim = self.pending.oldest()
            why = f"connection cap {config.max_connections} reached"
            if victim is None:
                self.engine.refusals.report(
                    Reason.CONNECTION_CAP, f"{why}, every connection logged in",
                    **connection.log_keys,
                )
                return False
        if victim is not None:
            self.engine.refusals.report(
                Reason.EVICTED, f"{why}; the oldest not logged in closed for {connection.address}",
                **victim.log_keys,
            )
            self.evicted += 1
            victim.drop()
        self.connections.add(connection)
        self.pending.add(connection, host)
        return True

    def release(self, connection: TerminalConnection) -> None:
        """``connection`` is closed or closing: its place is free."""
        self.connections.discard(connection)
        self.pending.discard(connection)

    def hold_reading(self, held: bool) -> None:
        """Backpressure: stop (True) or restart reading every connection, new ones too."""
        self.reading_held = held
        for connection in self.connections:
            connection.hold_reading(held)

    def close_all(self) -> None:
        for connection in list(self.connections):
            connection.close()

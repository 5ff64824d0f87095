"""UDP bearer (spec 10.3): one message per datagram, answers to the source address.

A datagram from the address of a session's UDP bearer goes to the engine at once;
any other is first counted against a token bucket of its source address and one that
all such sources share (``[udp] unauthenticated_rate``, ``unauthenticated_total_rate``),
before any parsing or digest work, so that a flood cannot starve logged-in terminals
(D-355, D-356).
"""

from __future__ import annotations

import socket
from typing import cast

from twisted.internet.interfaces import ISystemHandle, IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from m2mgw.config import UdpConfig
from m2mgw.core.engine.dispatch import PlatformEngine
from m2mgw.core.refusals import RateLimit, Reason
from m2mgw.core.stats import EngineStats
from m2mgw.protocol.constants import HEADER_SIZE, SERIAL_SIZE
from m2mgw.protocol.errors import FramingError
from m2mgw.protocol.framing import parse_datagram

log = Logger()

#: Where the 16-byte serial sits in the header (spec 2.1).
_SERIAL = slice(HEADER_SIZE - SERIAL_SIZE, HEADER_SIZE)
#: Source addresses outside the sessions whose bucket is remembered (D-356).
MAX_SOURCES = 65_536


class UdpBearer:
    """A terminal's UDP source address; sending goes out of the listening port."""

    kind = "udp"
    is_open = True
    __slots__ = ("_stats", "_transport", "addr", "address", "host")

    def __init__(
        self, transport: IUDPTransport, addr: tuple[str, int], stats: EngineStats
    ) -> None:
        self._transport = transport
        self._stats = stats
        self.addr = addr
        self.host = addr[0]
        self.address = f"{addr[0]}:{addr[1]}"

    def send(self, data: bytes) -> None:
        try:
            self._transport.write(data, self.addr)
        except OSError as exc:
            log.info(
                "UDP send to {peer} failed: {error}", bearer=self.kind, peer=self.address, error=exc
            )
        else:
            self._stats.count_sent(data)

    def close(self) -> None:
        """Nothing to close on UDP."""

    def same_path(self, other: object) -> bool:
        return isinstance(other, UdpBearer) and other.addr == self.addr


class TerminalDatagramProtocol(DatagramProtocol):
    """Hands each datagram's message to the engine (10.3)."""

    noisy = False

    def __init__(self, engine: PlatformEngine, config: UdpConfig) -> None:
        self.engine = engine
        self.reading_held = False
        self.receive_buffer = config.receive_buffer
        rate, total = config.unauthenticated_rate, config.unauthenticated_total_rate
        # A bucket holds one second's worth, and at least one datagram.
        self.limit = RateLimit(
            engine.clock.seconds(), burst=max(1.0, rate), rate=rate,
            total_burst=max(1.0, total), total_rate=total, max_sources=MAX_SOURCES,
        )

    def startProtocol(self) -> None:
        """A receive buffer large enough that the sessions' datagrams wait in it, rather
        than being dropped by the kernel, while the gateway is busy (a flood's, a
        collection, backpressure): the default 208 KiB holds some 270 small datagrams,
        27 ms of a 10,000 a second flood (D-356)."""
        # The listening port's own socket (ISystemHandle: udp.Port provides it).
        sock = cast(socket.socket, ISystemHandle(self.transport).getHandle())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        # Linux reports twice what it grants, the rest being its bookkeeping.
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        if granted < self.receive_buffer:
            log.warn(
                "UDP receive buffer {granted} bytes, not [udp] receive_buffer {asked}: the "
                "kernel caps it (raise net.core.rmem_max)",
                granted=granted, asked=self.receive_buffer,
            )

    def hold_reading(self, held: bool) -> None:
        """Backpressure: stop or restart reading the port.

        Datagrams wait in the socket's receive buffer; past it the kernel drops them
        and terminals retransmit (PD-10).
        """
        self.reading_held = held
        self._apply_hold()

    def _apply_hold(self) -> None:
        port = self.transport
        if port is not None:
            if self.reading_held:
                port.stopReading()  # type: ignore[attr-defined]
            else:
                port.startReading()  # type: ignore[attr-defined]

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        if self.reading_held:
            # The port (re)started after the hold began: hold it now.
            self._apply_hold()
        if not self._in_session(datagram, addr) and not self.limit.allow(
                addr, self.engine.clock.seconds()):
            self.engine.refusals.report(
                Reason.RATE_LIMITED, "datagram from outside every session over its rate",
                bearer=UdpBearer.kind, peer=f"{addr[0]}:{addr[1]}",
            )
            return
        try:
            frame = parse_datagram(datagram)
        except FramingError as exc:
            self.engine.refusals.report(
                Reason.FRAMING, exc.reason, bearer=UdpBearer.kind, peer=f"{addr[0]}:{addr[1]}"
            )
            return
        bearer = UdpBearer(self.transport, addr, self.engine.stats)  # type: ignore[arg-type]
        self.engine.receive(frame, bearer)

    def _in_session(self, datagram: bytes, addr: tuple[str, int]) -> bool:
        """Whether the serial the header names has a session whose UDP bearer is this
        source address (host and port, as NAT maps each terminal): one dict lookup."""
        session = self.engine.sessions.get(datagram[_SERIAL].decode("latin-1"))
        if session is None:
            return False
        bearer = session.bearer
        return isinstance(bearer, UdpBearer) and bearer.addr == addr

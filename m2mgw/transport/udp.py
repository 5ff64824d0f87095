"""UDP bearer (spec 10.3): one message per datagram, answers to the source address."""

from __future__ import annotations

from twisted.internet.interfaces import IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from m2mgw.core.engine import PlatformEngine
from m2mgw.core.refusals import Reason
from m2mgw.core.stats import EngineStats
from m2mgw.protocol.errors import FramingError
from m2mgw.protocol.framing import parse_datagram

log = Logger()


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

    def __init__(self, engine: PlatformEngine) -> None:
        self.engine = engine
        self.reading_held = False

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
        try:
            frame = parse_datagram(datagram)
        except FramingError as exc:
            self.engine.refusals.report(
                Reason.FRAMING, exc.reason, bearer=UdpBearer.kind, peer=f"{addr[0]}:{addr[1]}"
            )
            return
        bearer = UdpBearer(self.transport, addr, self.engine.stats)  # type: ignore[arg-type]
        self.engine.receive(frame, bearer)

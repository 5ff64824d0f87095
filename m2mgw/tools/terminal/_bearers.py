"""Bearer adapters: a TCP connection per terminal, one shared UDP socket, or SMS through
the modem emulator's control socket."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from m2mgw.core.model import normalize_msisdn
from m2mgw.protocol.errors import ProtocolError
from m2mgw.protocol.framing import StreamFramer, parse_datagram
from m2mgw.sms.bearer import SMS_PLATFORM_PORT, SmsReassembler, WmmpSms
from m2mgw.sms.pdu import SmsDeliver, decode_submit
from m2mgw.tools.terminal._reactor import Reactor
from m2mgw.tools.terminal._terminal import SimulatedTerminal

log = Logger()


class TerminalTcpProtocol(Protocol):
    """One terminal's TCP connection: frames by Total_Length (10.2)."""

    def __init__(self, terminal: SimulatedTerminal) -> None:
        self.terminal = terminal
        self.framer = StreamFramer()

    def connectionMade(self) -> None:
        assert self.transport is not None
        transport = self.transport
        self.terminal.connected(transport.write, transport.loseConnection)

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except ProtocolError as exc:
            assert self.transport is not None
            self.terminal.connection_lost(f"framing error: {exc.reason}")
            self.transport.loseConnection()
            return
        for frame in frames:
            self.terminal.frame_received(frame)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.terminal.connection_lost(reason.getErrorMessage() if reason else "closed")


class TcpFactory(ClientFactory):
    """Connects one terminal; a failed connection ends it."""

    def __init__(self, terminal: SimulatedTerminal) -> None:
        self.terminal = terminal

    def buildProtocol(self, addr: object) -> TerminalTcpProtocol:
        return TerminalTcpProtocol(self.terminal)

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.terminal.connection_failed(reason.getErrorMessage())


class SharedUdpProtocol(DatagramProtocol):
    """One UDP socket for all terminals; datagrams go to the terminal of their serial."""

    def __init__(self, platform: tuple[str, int]) -> None:
        self.platform = platform
        self.terminals: dict[str, SimulatedTerminal] = {}
        self._serials: dict[SimulatedTerminal, str] = {}

    def send(self, frame: bytes) -> None:
        if self.transport is not None:
            self.transport.write(frame, self.platform)

    def add(self, terminal: SimulatedTerminal) -> None:
        """Route datagrams with ``terminal``'s (current) serial to it."""
        self.forget(terminal)
        self._serials[terminal] = terminal.serial
        self.terminals[terminal.serial] = terminal

    def forget(self, terminal: SimulatedTerminal) -> None:
        serial = self._serials.pop(terminal, None)
        if serial is not None:
            self.terminals.pop(serial, None)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            frame = parse_datagram(datagram)
        except ProtocolError:
            return
        terminal = self.terminals.get(frame[12:28].decode("latin-1"))
        if terminal is not None:
            terminal.frame_received(frame)


class SubmittedSms:
    """Reassembles the platform's SMS-SUBMITs per destination MSISDN, as terminals would."""

    def __init__(self, port: int = SMS_PLATFORM_PORT) -> None:
        self._reassembler = SmsReassembler(platform_port=port, max_parts=255)

    def feed(self, tpdu: bytes, now: float) -> tuple[str, bytes] | None:
        """One TPDU (no SMSC prefix); returns (normalised MSISDN, WMMP message) once complete."""
        submit = decode_submit(tpdu)
        deliver = SmsDeliver(
            originator=submit.destination,
            scts=datetime.now(UTC),
            user_data=submit.user_data,
            udh=submit.udh,
            dcs=submit.dcs,
        )
        event = self._reassembler.feed(deliver, now)
        return (event.originator, event.message) if isinstance(event, WmmpSms) else None


class ModemControlClient(LineReceiver):
    """The modem emulator's control socket: commands in order, each answered up to OK/ERROR."""

    delimiter = b"\n"

    def __init__(self) -> None:
        self._queue: deque[tuple[str, Deferred[list[str]]]] = deque()
        self._lines: list[str] = []

    def command(self, line: str) -> Deferred[list[str]]:
        """Run one control command; fires with its data lines (queued until connected)."""
        d: Deferred[list[str]] = Deferred()
        self._queue.append((line, d))
        if len(self._queue) == 1 and self.transport is not None:
            self.sendLine(line.encode())
        return d

    def connectionMade(self) -> None:
        if self._queue:
            self.sendLine(self._queue[0][0].encode())

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        if text != "OK" and not text.startswith("ERROR"):
            self._lines.append(text)
            return
        command, d = self._queue.popleft()
        lines, self._lines = self._lines, []
        if self._queue:
            self.sendLine(self._queue[0][0].encode())
        if text == "OK":
            d.callback(lines)
        else:
            d.errback(ProtocolError(f"modem control {command.split()[0]!r}: {text}"))


class SmsModemLink:
    """Terminals on the SMS bearer through the modem emulator, keyed by MSISDN (10.4)."""

    def __init__(self, reactor: Reactor, control: ModemControlClient, poll: float) -> None:
        self.reactor = reactor
        self.control = control
        self.terminals: dict[str, SimulatedTerminal] = {}
        self._inbox = SubmittedSms()
        self._seen = 0
        self._poll = LoopingCall(self._fetch)
        self._poll.clock = reactor  # type: ignore[assignment]
        self._poll.start(poll, now=False)

    def add(self, msisdn: str, terminal: SimulatedTerminal) -> None:
        key = normalize_msisdn(msisdn)
        self.terminals[key] = terminal
        terminal.connected(
            lambda frame: self._deliver(key, frame), lambda: self.terminals.pop(key, None)
        )

    def stop(self) -> None:
        if self._poll.running:
            self._poll.stop()

    def _deliver(self, msisdn: str, frame: bytes) -> None:
        d = self.control.command(f"deliver {msisdn} {frame.hex()}")
        d.addErrback(lambda f: log.warn("SMS from {msisdn} not delivered: {e}", msisdn=msisdn,
                                        e=f.getErrorMessage()))  # fmt: skip

    def _fetch(self) -> Deferred[None]:
        d = self.control.command("sent").addCallback(self._sent)
        return d.addErrback(lambda f: log.warn("Modem control: {e}", e=f.getErrorMessage()))

    def _sent(self, lines: list[str]) -> None:
        fresh, self._seen = lines[self._seen :], len(lines)
        for line in fresh:
            try:
                complete = self._inbox.feed(bytes.fromhex(json.loads(line)["tpdu"]),
                                            self.reactor.seconds())  # fmt: skip
            except (ValueError, KeyError, ProtocolError) as exc:
                log.warn("Unreadable SMS from the modem: {e}", e=exc)
                continue
            if complete is not None and complete[0] in self.terminals:
                self.terminals[complete[0]].frame_received(complete[1])


class ControlFactory(ClientFactory):
    """The modem control connection; when it fails, every SMS terminal has failed."""

    def __init__(self, control: ModemControlClient, terminals: Sequence[SimulatedTerminal]) -> None:
        self.control = control
        self.terminals = terminals

    def buildProtocol(self, addr: object) -> ModemControlClient:
        return self.control

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        for terminal in self.terminals:
            terminal.connection_failed(f"modem control: {reason.getErrorMessage()}")

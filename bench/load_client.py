"""Load client of ``gateway.py``: many TCP terminals, a closed loop of requests.

One process holds ``--count`` connections (terminals ``--first`` onwards, identities
from :mod:`benchlib`). With ``--login`` each terminal logs in through
:class:`~m2mgw.protocol.terminal.TerminalClient` (and answers its sync CONFIG_TRAP);
without it (the bare echo server) connections are just opened. Then it prints
``{"event": "ready", ...}`` and waits on stdin:

* ``go WARMUP DURATION``: keep ``--window`` requests in flight, round-robin over the
  terminals, each terminal alternating HEART_BEAT and a signed TRANSPARENT_DATA;
  after WARMUP seconds count answers, latencies and this process's CPU for DURATION
  seconds, then print ``{"event": "result", ...}``.
* ``quit`` or end of input: exit (the connections close with the process).

Load frames are built with the codec rather than through ``TerminalClient``, and
answers are matched by Sequence_ID from the header alone: both targets get exactly
the same bytes and the client spends the same per answer on either, so the client's
cost does not bias the gateway/bare ratio. An answer must carry the request's
Command_ID (echo) or its ACK; a TRANSPARENT_DATA_ACK must carry result 0 or 1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import protocol, stdio
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.protocols.basic import LineReceiver

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import DOWNLINK_PASSWORD, UPLINK_PASSWORD, Identity, raise_nofile_limit

from m2mgw.protocol import terminal as role
from m2mgw.protocol.codec import build_frame
from m2mgw.protocol.constants import ACK_BIT, Command
from m2mgw.protocol.errors import FramingError
from m2mgw.protocol.framing import StreamFramer
from m2mgw.protocol.messages import TransparentData
from m2mgw.protocol.security import DigestKey

# Sequence_IDs of load requests start here, clear of the login exchange's.
FIRST_LOAD_SEQUENCE = 1000
PAYLOAD = bytes(range(32))
DATA_BODY = TransparentData.build(PAYLOAD).encode_body()
SYNC_CONFIG = {
    0x0002: b"CMNET",
    0x0007: b"1065840436",
    0x0009: bytes.fromhex("C000020A"),
    0x000A: bytes.fromhex("14731474"),
    0x0011: (90).to_bytes(4, "big"),
}
HEADER_SEQUENCE = slice(4, 8)
HEADER_COMMAND = slice(2, 4)
BODY_START = 28


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Link(protocol.Protocol):
    """One terminal's connection: the login through TerminalClient, then raw load."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        self.identity = Identity.of(index)
        self.framer = StreamFramer()
        self.client: role.TerminalClient | None = None
        self.key = DigestKey.make(self.identity.imei, self.identity.imsi, UPLINK_PASSWORD)
        self.timestamp = 0
        self.sequence = FIRST_LOAD_SEQUENCE
        self.data_next = False
        self.sent: dict[int, tuple[float, int]] = {}
        self.ready = False
        self.settled = False
        self.open = False

    def connectionMade(self) -> None:
        self.open = True
        if not self.fleet.login:
            self.fleet.became_ready(self)
            return
        identity = role.TerminalIdentity(
            serial=self.identity.serial,
            imei=self.identity.imei,
            imsi=self.identity.imsi,
            credentials=role.Credentials(UPLINK_PASSWORD, DOWNLINK_PASSWORD),
            config=dict(SYNC_CONFIG),
        )
        self.client = role.TerminalClient(identity, "tcp", clock=self.fleet.reactor.seconds)
        self.transport.write(self.client.login())  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except FramingError:
            self.fleet.errors += 1
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        for frame in frames:
            if self.ready:
                self.fleet.answered(self, frame)
            else:
                self._login_step(frame)

    def _login_step(self, frame: bytes) -> None:
        """Feed the login exchange; ready once logged in with nothing outstanding."""
        client = self.client
        assert client is not None
        for event in client.receive(frame, self.fleet.reactor.seconds()):
            if isinstance(event, role.LoginFailed | role.Discarded | role.RequestFailed):
                self.fleet.login_failed(self, type(event).__name__)
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
        for out in client.data_to_send():
            self.transport.write(out)  # type: ignore[union-attr]
        if client.logged_in and client.pending_requests == 0:
            self.timestamp = client.session_timestamp or 0
            self.fleet.became_ready(self)

    def send_next(self) -> None:
        """One load request: HEART_BEAT and TRANSPARENT_DATA in turn."""
        sequence = self.sequence
        self.sequence += 1
        identity = self.identity
        if self.data_next:
            command = Command.TRANSPARENT_DATA
            frame = build_frame(
                command, sequence, identity.serial, DATA_BODY, key=self.key,
                timestamp=self.timestamp,
            )  # fmt: skip
        else:
            command = Command.HEART_BEAT
            frame = build_frame(command, sequence, identity.serial, b"")
        self.data_next = not self.data_next
        self.sent[sequence] = (time.perf_counter(), command)
        self.transport.write(frame)  # type: ignore[union-attr]

    def connectionLost(self, reason: object = None) -> None:
        self.open = False
        self.fleet.lost(self)


class LinkFactory(protocol.ClientFactory):
    """One connection attempt for one :class:`Link`."""

    noisy = False

    def __init__(self, link: Link) -> None:
        self.link = link

    def buildProtocol(self, addr: object) -> Link:
        return self.link

    def clientConnectionFailed(self, connector: object, reason: Any) -> None:
        self.link.fleet.login_failed(self.link, reason.getErrorMessage())


class Fleet:
    """All links of this process, the connect/login phase and the request loop."""

    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.args = args
        self.login = args.login
        self.links = [Link(self, args.first + i) for i in range(args.count)]
        self._to_connect = iter(self.links)
        self._connecting = 0
        self.ready: list[Link] = []
        self.failed = 0
        self.failures: dict[str, int] = {}
        self.errors = 0
        self.strays = 0
        self.lost_during_load = 0
        self.started = time.monotonic()
        self.output: Any = None
        self.running = False
        self.measuring = False
        self.answers = 0
        self.latencies: list[float] = []
        self._next = 0
        self._window_start = 0.0
        self._cpu_start = 0.0

    # -- connecting and logging in --------------------------------------------------

    def start(self) -> None:
        for _ in range(self.args.connect_parallel):
            self._connect_next()
        self._check_ready()

    def _connect_next(self) -> None:
        link = next(self._to_connect, None)
        if link is None:
            return
        self._connecting += 1
        reactor: IReactorTCP = self.reactor
        reactor.connectTCP(self.args.host, self.args.port, LinkFactory(link), timeout=30)

    def _settled(self) -> None:
        """A connect/login attempt ended: start the next one."""
        self._connecting -= 1
        self._connect_next()
        self._check_ready()

    def became_ready(self, link: Link) -> None:
        if not link.settled:
            link.ready = link.settled = True
            self.ready.append(link)
            self._settled()

    def login_failed(self, link: Link, why: str) -> None:
        """The connect or login of ``link`` failed (counted once per link)."""
        if not link.settled:
            link.settled = True
            self.failures[why] = self.failures.get(why, 0) + 1
            self.failed += 1
            self._settled()

    def lost(self, link: Link) -> None:
        if not link.settled:
            self.login_failed(link, "connection lost during login")
        elif link.ready and self.running:
            self.lost_during_load += 1

    def _check_ready(self) -> None:
        if self._connecting == 0 and len(self.ready) + self.failed == len(self.links):
            self.emit(
                event="ready",
                ok=len(self.ready),
                failed=self.failed,
                failures=self.failures,
                seconds=round(time.monotonic() - self.started, 3),
            )

    # -- the load ---------------------------------------------------------------------

    def go(self, warmup: float, duration: float) -> None:
        self.running = True
        for _ in range(self.args.window):
            self._send()
        clock: IReactorTime = self.reactor
        clock.callLater(warmup, self._measure)
        clock.callLater(warmup + duration, self._finish)

    def _send(self) -> None:
        links = self.ready
        for _ in range(len(links)):
            link = links[self._next]
            self._next = (self._next + 1) % len(links)
            if link.open:
                link.send_next()
                return

    def answered(self, link: Link, frame: bytes) -> None:
        sent = link.sent.pop(int.from_bytes(frame[HEADER_SEQUENCE], "big"), None)
        if sent is None:
            self.strays += 1
            return
        started, command = sent
        answer = int.from_bytes(frame[HEADER_COMMAND], "big")
        if answer & ~ACK_BIT != command or (
            answer == Command.TRANSPARENT_DATA | ACK_BIT and frame[BODY_START] > 1
        ):
            self.errors += 1
        if self.measuring:
            self.answers += 1
            self.latencies.append(time.perf_counter() - started)
        if self.running:
            self._send()

    def _measure(self) -> None:
        self.measuring = True
        self.answers = self.errors = self.strays = self.lost_during_load = 0
        self.latencies = []
        self._window_start = time.perf_counter()
        self._cpu_start = cpu_seconds()

    def _finish(self) -> None:
        wall = time.perf_counter() - self._window_start
        cpu = cpu_seconds() - self._cpu_start
        self.running = self.measuring = False
        self.emit(
            event="result",
            answers=self.answers,
            seconds=round(wall, 4),
            errors=self.errors,
            strays=self.strays,
            lost=self.lost_during_load,
            held=sum(link.open for link in self.ready),
            cpu=round(cpu, 3),
            latencies_us=[round(x * 1e6) for x in self.latencies],
        )

    def emit(self, **record: Any) -> None:
        """One JSON line to the orchestrator, through the reactor's non-blocking stdout."""
        self.output.write(json.dumps(record).encode() + b"\n")


class Control(LineReceiver):
    """Commands from the orchestrator on stdin; its end stops this process."""

    delimiter = b"\n"

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.stopping = False

    def lineReceived(self, line: bytes) -> None:
        words = line.decode().split()
        if words[:1] == ["go"]:
            self.fleet.go(float(words[1]), float(words[2]))
        elif words[:1] == ["quit"]:
            self._stop()

    def connectionLost(self, reason: object = None) -> None:
        self._stop()

    def _stop(self) -> None:
        """``quit`` and the end of input both stop, whichever comes first."""
        if not self.stopping:
            self.stopping = True
            self.fleet.reactor.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--first", type=int, default=0, help="index of the first terminal")
    parser.add_argument("--count", type=int, required=True, help="connections to hold")
    parser.add_argument("--login", action="store_true", help="log each terminal in first")
    parser.add_argument("--window", type=int, default=64, help="requests kept in flight")
    parser.add_argument("--connect-parallel", type=int, default=200,
                        help="connect/login attempts in progress at once")  # fmt: skip
    args = parser.parse_args(argv)
    raise_nofile_limit(args.count + 256)
    from twisted.internet import reactor

    fleet = Fleet(reactor, args)
    fleet.output = stdio.StandardIO(Control(fleet))
    reactor.callWhenRunning(fleet.start)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    os._exit(0)  # skip closing thousands of sockets one by one at interpreter exit


if __name__ == "__main__":
    main()

"""Load client of ``gateway.py``: many TCP terminals, requests closed-loop or paced.

One process holds ``--count`` connections (terminals ``--first`` onwards, identities
from :mod:`benchlib`). With ``--login`` each terminal logs in through
:class:`~m2mgw.protocol.terminal.TerminalClient` (and answers its sync CONFIG_TRAP);
without it (the bare echo server) connections are just opened. Then it prints
``{"event": "ready", ...}`` and waits on stdin:

* ``closed WARMUP DURATION``: keep ``--window`` terminals busy, round-robin over all
  of them; a busy terminal has ``--depth`` requests in flight, written back to back in
  one write (pipelined), and gets its next burst when all are answered. Requests
  alternate HEART_BEAT and a signed TRANSPARENT_DATA.
* ``paced RATE WARMUP DURATION``: RATE requests per second, one at a time on the next
  terminal in turn, sent on a 1 ms tick whatever the answers do (open loop), so that a
  slow server shows as latency rather than as a lower rate.

Both count answers and latencies (from the write to the answer) after WARMUP seconds,
for DURATION seconds, then print ``{"event": "result", ...}``. ``quit`` or the end of
input exits (the connections close with the process).

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
import select
import socket
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import protocol, stdio
from twisted.internet.interfaces import IReactorTCP
from twisted.protocols.basic import LineReceiver

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import (
    DOWNLINK_PASSWORD,
    SYNC_CONFIG,
    UPLINK_PASSWORD,
    Identity,
    raise_nofile_limit,
)

from m2mgw.protocol import terminal as role
from m2mgw.protocol.codec import DIGEST_PREFIX, build_frame
from m2mgw.protocol.constants import ACK_BIT, DIGEST_TLV_SIZE, Command
from m2mgw.protocol.errors import FramingError
from m2mgw.protocol.framing import StreamFramer
from m2mgw.protocol.messages import TransparentData
from m2mgw.protocol.security import DigestKey, compute_digest

# Sequence_IDs of load requests start here, clear of the login exchange's (even: the
# first request is a HEART_BEAT).
FIRST_LOAD_SEQUENCE = 1000
PAYLOAD = bytes(range(32))
DATA_BODY = TransparentData.build(PAYLOAD).encode_body()
COMMANDS = (Command.HEART_BEAT, Command.TRANSPARENT_DATA)  # by Sequence_ID parity
HEADER_SEQUENCE = slice(4, 8)
HEADER_COMMAND = slice(2, 4)
BODY_START = 28
RECV_SIZE = 65536
#: Seconds a run waits at its end for the answers still outstanding.
DRAIN = 2.0


class Link(protocol.Protocol):
    """One terminal's connection: the login through TerminalClient, then raw load."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        self.identity = Identity.of(index)
        self.framer = StreamFramer()
        self.client: role.TerminalClient | None = None
        self.key = DigestKey.make(self.identity.imei, self.identity.imsi, UPLINK_PASSWORD)
        self.serial = self.identity.serial
        self.timestamp = 0
        self.sequence = FIRST_LOAD_SEQUENCE
        self.beat = self.data = (b"", b"")
        self.sent: dict[int, tuple[float, int]] = {}
        self.unsent = b""
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
        """The login exchange; once ready, the reactor sees only answers that came after a
        run's drain, which no run counts."""
        try:
            frames = self.framer.feed(data)
        except FramingError:
            self.fleet.login_failed(self, "framing error")
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        if not self.ready:
            for frame in frames:
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

    def prepare(self) -> None:
        """Templates of both requests: a frame built by the codec with Sequence_ID 0,
        cut around the Sequence_ID (and, for the signed one, before its digest TLV).

        :meth:`requests` splices the sequence in and signs with the codec's own
        ``compute_digest``, at a third of ``build_frame``'s cost (the client must stay
        cheaper per answer than the bare server); the first requests are checked
        against ``build_frame`` so the bytes stay exactly the codec's.
        """
        beat = build_frame(Command.HEART_BEAT, 0, self.serial, b"")
        data = build_frame(Command.TRANSPARENT_DATA, 0, self.serial, DATA_BODY, key=self.key,
                           timestamp=self.timestamp)  # fmt: skip
        self.beat = (beat[:4], beat[8:])
        self.data = (data[:4], data[8:-DIGEST_TLV_SIZE])
        for sequence in (self.sequence, self.sequence + 1):
            built = self._frame(sequence)
            command = Command.TRANSPARENT_DATA if sequence % 2 else Command.HEART_BEAT
            body, key = (DATA_BODY, self.key) if sequence % 2 else (b"", None)
            if built != build_frame(command, sequence, self.serial, body, key=key,
                                    timestamp=self.timestamp):  # fmt: skip
                raise AssertionError("request templates differ from the codec's frames")

    def _frame(self, sequence: int) -> bytes:
        """HEART_BEAT on even Sequence_IDs, TRANSPARENT_DATA on odd ones."""
        number = sequence.to_bytes(4, "big")
        if sequence & 1:
            start, rest = self.data
            unsigned = start + number + rest
            return unsigned + DIGEST_PREFIX + compute_digest(unsigned, self.timestamp, self.key)
        start, rest = self.beat
        return start + number + rest

    def requests(self, count: int, now: float) -> bytes:
        """``count`` load requests back to back: HEART_BEAT and TRANSPARENT_DATA in turn."""
        frames = []
        sent = self.sent
        for _ in range(count):
            sequence = self.sequence
            self.sequence = sequence + 1
            frames.append(self._frame(sequence))
            sent[sequence] = (now, COMMANDS[sequence & 1])
        return frames[0] if count == 1 else b"".join(frames)

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
    """All links of this process, the connect/login phase and the request loops."""

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
        self.started = time.monotonic()
        self.output: Any = None

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
            link.prepare()
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

    def load(self, mode: str, rate: float, warmup: float, duration: float) -> None:
        """One measured run (see :class:`Blast`), then the result line."""
        self.emit(event="result", **Blast(self, mode, rate).run(warmup, duration))

    def emit(self, **record: Any) -> None:
        """One JSON line to the orchestrator, through the reactor's non-blocking stdout."""
        self.output.write(json.dumps(record).encode() + b"\n")


class Blast:
    """One measured run on the logged-in links, outside the reactor.

    The sockets leave Twisted's reactor for the run and are driven by a plain epoll
    loop (one ``recv`` and one ``send`` per ready socket, no Deferreds, no buffers of
    Twisted's), which costs the client less per answer than the bare server spends
    per echo, so that several clients can load it to 100% of a role. The run blocks
    the reactor; afterwards the outstanding answers are drained and the sockets go
    back to the reactor.
    """

    def __init__(self, fleet: Fleet, mode: str, rate: float) -> None:
        self.fleet = fleet
        self.closed = mode == "closed"
        self.rate = rate
        self.depth = fleet.args.depth
        self.links = [link for link in fleet.ready if link.open]
        self.by_fd: dict[int, Link] = {}
        self.sockets: dict[int, socket.socket] = {}
        self.poll = select.epoll()
        self.next = 0
        self.measuring = False
        self.sending = True
        self.answers = 0
        self.errors = 0
        self.strays = 0
        self.lost = 0
        self.latencies: list[float] = []

    def run(self, warmup: float, duration: float) -> dict[str, Any]:
        reactor = self.fleet.reactor
        for link in self.links:
            transport = link.transport
            reactor.removeReader(transport)
            reactor.removeWriter(transport)
            sock = transport.socket  # type: ignore[union-attr]
            fd = sock.fileno()
            self.by_fd[fd] = link
            self.sockets[fd] = sock
            self.poll.register(fd, select.EPOLLIN)
        try:
            return self._loop(warmup, duration)
        finally:
            self.poll.close()
            for link in self.by_fd.values():
                if link.open:
                    reactor.addReader(link.transport)

    def _loop(self, warmup: float, duration: float) -> dict[str, Any]:
        start = time.perf_counter()
        measure_at = start + warmup
        end = measure_at + duration
        drain_end = end + DRAIN
        sent = 0
        if self.closed:
            for _ in range(self.fleet.args.window):
                self._burst(start)
        window_start = start
        window = 0.0
        while True:
            now = time.perf_counter()
            if not self.measuring and self.sending and now >= measure_at:
                self.measuring = True
                window_start = now
                self.answers = self.errors = self.strays = self.lost = 0
                self.latencies = []
            if self.sending and now >= end:
                self.sending = False
                self.measuring = False
                window = now - window_start
            if not self.sending and (now >= drain_end or not self._outstanding()):
                break
            timeout = 0.05
            if self.sending and not self.closed:
                due = int((now - start) * self.rate) - sent
                for _ in range(due):
                    self._send(self._next_link(idle_only=False), 1, now)
                sent += max(due, 0)
                timeout = max(0.0, (sent + 1) / self.rate - (now - start))
            for fd, events in self.poll.poll(timeout):
                if events & select.EPOLLOUT:
                    self._flush(fd)
                if events & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                    self._read(fd)
        return {
            "answers": self.answers,
            "seconds": round(window, 4),
            "errors": self.errors,
            "strays": self.strays,
            "lost": self.lost,
            "held": sum(link.open for link in self.links),
            "latencies_us": [round(x * 1e6) for x in self.latencies],
        }

    def _outstanding(self) -> bool:
        return any(link.sent for link in self.links if link.open)

    def _next_link(self, *, idle_only: bool) -> Link | None:
        """The next open terminal in turn (with ``idle_only``, one with nothing in flight)."""
        links = self.links
        for _ in range(len(links)):
            link = links[self.next]
            self.next = (self.next + 1) % len(links)
            if link.open and not (idle_only and link.sent):
                return link
        return None

    def _burst(self, now: float) -> None:
        self._send(self._next_link(idle_only=True), self.depth, now)

    def _send(self, link: Link | None, count: int, now: float) -> None:
        if link is None:
            return
        data = link.requests(count, now)
        if link.unsent:
            link.unsent += data
            return
        fd = link.transport.socket.fileno()  # type: ignore[union-attr]
        try:
            written = self.sockets[fd].send(data)
        except BlockingIOError:
            written = 0
        except OSError:
            self._close(fd)
            return
        if written < len(data):
            link.unsent = data[written:]
            self.poll.modify(fd, select.EPOLLIN | select.EPOLLOUT)

    def _flush(self, fd: int) -> None:
        link = self.by_fd[fd]
        try:
            written = self.sockets[fd].send(link.unsent)
        except BlockingIOError:
            return
        except OSError:
            self._close(fd)
            return
        link.unsent = link.unsent[written:]
        if not link.unsent:
            self.poll.modify(fd, select.EPOLLIN)

    def _read(self, fd: int) -> None:
        link = self.by_fd[fd]
        try:
            data = self.sockets[fd].recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(fd)
            return
        now = time.perf_counter()
        if not link.framer.buffered and len(data) == (data[0] << 8 | data[1]):
            frames: list[bytes] = [data]  # the common case: exactly one answer
        else:
            try:
                frames = link.framer.feed(data)
            except FramingError:
                self.errors += 1
                self._close(fd)
                return
        sent = link.sent
        for frame in frames:
            request = sent.pop(int.from_bytes(frame[HEADER_SEQUENCE], "big"), None)
            if request is None:
                self.strays += 1
                continue
            started, command = request
            answer = int.from_bytes(frame[HEADER_COMMAND], "big")
            if answer & ~ACK_BIT != command or (
                answer == Command.TRANSPARENT_DATA | ACK_BIT and frame[BODY_START] > 1
            ):
                self.errors += 1
            if self.measuring:
                self.answers += 1
                self.latencies.append(now - started)
        if self.closed and self.sending and not sent:
            self._burst(now)

    def _close(self, fd: int) -> None:
        """A socket failed during the run: it is lost to the load (the reactor will see
        the close once the socket is back in it)."""
        link = self.by_fd[fd]
        if link.open:
            link.open = False
            self.lost += 1
            self.poll.unregister(fd)
            link.sent.clear()
            link.transport.abortConnection()  # type: ignore[union-attr]


class Control(LineReceiver):
    """Commands from the orchestrator on stdin; its end stops this process."""

    delimiter = b"\n"

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.stopping = False

    def lineReceived(self, line: bytes) -> None:
        words = line.decode().split()
        if words[:1] == ["closed"]:
            self.fleet.load("closed", 0.0, float(words[1]), float(words[2]))
        elif words[:1] == ["paced"]:
            self.fleet.load("paced", float(words[1]), float(words[2]), float(words[3]))
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
    parser.add_argument("--window", type=int, default=64, help="terminals busy at once")
    parser.add_argument("--depth", type=int, default=1,
                        help="requests in flight per busy terminal, pipelined")  # fmt: skip
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

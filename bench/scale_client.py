"""Load client of ``scale.py``: terminals that log in, heartbeat and trickle data.

One process holds ``--count`` terminals (``--first`` onwards, identities from
:mod:`benchlib`), every connection bound to the source address ``--bind``, so that
several processes spread the terminals over 127.0.0.x addresses (and their ephemeral
ports) and over their own open-files limits. Each terminal speaks through
:class:`~m2mgw.protocol.terminal.TerminalClient`, as a real one would. Commands on stdin,
answered with one JSON line each:

* ``connect T0 DEADLINE``: every terminal not logged in connects and logs in at once
  (a login storm); a failed attempt (refused, closed, LOGIN_ACK with an error, no
  answer in ``--login-timeout``) is counted by reason and retried after 1-2 s. Prints
  ``{"event": "connected", ...}`` once all are logged in, or DEADLINE seconds after
  T0, with each login's completion in ms after T0 (a CLOCK_MONOTONIC reading of the
  orchestrator, which all processes share).
* ``steady WARMUP DURATION``: report the HEART_BEAT and TRANSPARENT_DATA answer
  latencies measured over DURATION seconds after WARMUP (``{"event": "steady"}``).
  Heartbeats run all the time once a terminal is logged in: each terminal every
  ``--heartbeat`` seconds, spread evenly over the interval; TRANSPARENT_DATA goes at
  ``--data-rate`` per second to the terminals in turn.
* ``quit`` or the end of input: exit.

* ``hold``: the gateway is about to restart; the connections it closes wait for the
  next ``connect`` (otherwise a terminal the gateway drops reconnects after 1-2 s, and
  a failed reconnection is retried likewise).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import protocol, stdio, task
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
from m2mgw.protocol.constants import Command
from m2mgw.protocol.errors import FramingError
from m2mgw.protocol.framing import StreamFramer

PAYLOAD = bytes(range(32))
TICK = 0.01
RETRY = (1.0, 2.0)
HEADER_SEQUENCE = slice(4, 8)


class Link(protocol.Protocol):
    """One terminal: a fresh TerminalClient per connection, latencies by Sequence_ID."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        self.identity = Identity.of(index)
        self.client: role.TerminalClient | None = None
        self.framer = StreamFramer()
        self.logged_in = False
        self.attempting = False
        self.sent: dict[int, tuple[float, int]] = {}
        self.deadline: Any = None

    def attempt(self) -> None:
        """Connect and log in (the caller knows no attempt is in progress)."""
        self.attempting = True
        self.framer = StreamFramer()
        self.sent.clear()
        fleet = self.fleet
        fleet.reactor.connectTCP(
            fleet.args.host, fleet.args.port, LinkFactory(self),
            timeout=fleet.args.login_timeout, bindAddress=(fleet.args.bind, 0),
        )  # fmt: skip

    def connectionMade(self) -> None:
        identity = role.TerminalIdentity(
            serial=self.identity.serial,
            imei=self.identity.imei,
            imsi=self.identity.imsi,
            credentials=role.Credentials(UPLINK_PASSWORD, DOWNLINK_PASSWORD),
            config=dict(SYNC_CONFIG),
        )
        self.client = role.TerminalClient(identity, "tcp", clock=self.fleet.reactor.seconds)
        self.deadline = self.fleet.reactor.callLater(
            self.fleet.args.login_timeout, self._timed_out
        )
        self.transport.write(self.client.login())  # type: ignore[union-attr]

    def _timed_out(self) -> None:
        self.deadline = None
        self.fleet.failed(self, "no login answer in time")
        self.transport.abortConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        client = self.client
        assert client is not None
        try:
            frames = self.framer.feed(data)
        except FramingError:
            self.fleet.failed(self, "framing error")
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        now = self.fleet.reactor.seconds()
        for frame in frames:
            timed = self.sent.pop(int.from_bytes(frame[HEADER_SEQUENCE], "big"), None)
            for event in client.receive(frame, now):
                self._event(event, timed)
        for out in client.data_to_send():
            self.transport.write(out)  # type: ignore[union-attr]
        if not self.logged_in and client.logged_in and client.pending_requests == 0:
            self._cancel_deadline()
            self.logged_in = self.fleet.login_done(self)

    def _event(self, event: Any, timed: tuple[float, int] | None) -> None:
        if isinstance(event, role.LoginFailed):
            self.fleet.failed(self, f"LOGIN_ACK result {event.result}")
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif isinstance(event, role.Discarded | role.RequestFailed):
            self.fleet.failed(self, type(event).__name__)
            self.transport.loseConnection()  # type: ignore[union-attr]
        elif isinstance(event, role.Answer) and timed is not None:
            self.fleet.answered(timed)

    def send(self, frame: bytes, command: int) -> None:
        """A request built by ``self.client``, timed until its answer."""
        self.sent[int.from_bytes(frame[HEADER_SEQUENCE], "big")] = (time.perf_counter(), command)
        self.transport.write(frame)  # type: ignore[union-attr]

    def _cancel_deadline(self) -> None:
        if self.deadline is not None and self.deadline.active():
            self.deadline.cancel()
        self.deadline = None

    def connectionLost(self, reason: object = None) -> None:
        self._cancel_deadline()
        was_in = self.logged_in
        self.logged_in = False
        self.client = None
        self.fleet.closed(self, was_in)


class LinkFactory(protocol.ClientFactory):
    """One connection attempt for one :class:`Link`."""

    noisy = False

    def __init__(self, link: Link) -> None:
        self.link = link

    def buildProtocol(self, addr: object) -> Link:
        return self.link

    def clientConnectionFailed(self, connector: object, reason: Any) -> None:
        self.link.fleet.failed(self.link, reason.getErrorMessage())
        self.link.fleet.closed(self.link, False)


class Fleet:
    """The links of this process: login storms, heartbeats, the data trickle."""

    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.args = args
        self.links = [Link(self, args.first + i) for i in range(args.count)]
        self.output: Any = None
        self.storm_t0: float | None = None
        self._give_up: Any = None
        #: Logged in during this storm and still connected: link -> seconds after T0.
        self.completions: dict[Link, float] = {}
        self.failures: dict[str, int] = {}
        self.dropped = 0
        self.reconnected = 0
        self.reconnect = False
        self.measuring = False
        self.latencies: dict[int, list[float]] = {}
        self._started = time.perf_counter()
        self._beats = 0
        self._datas = 0
        self._clock = task.LoopingCall(self._tick)

    # -- logging in ---------------------------------------------------------------------

    def connect(self, t0: float, deadline: float) -> None:
        """Log every terminal in; report when all are, or ``deadline`` s after ``t0``."""
        self.storm_t0 = t0
        self.completions = {}
        self.failures = {}
        for link in self.links:
            if not link.logged_in and not link.attempting:
                link.attempt()
        self._give_up = self.reactor.callLater(
            max(0.0, t0 + deadline - time.monotonic()), self._report_storm
        )
        self._check_storm()

    def login_done(self, link: Link) -> bool:
        link.attempting = False
        if self.storm_t0 is not None:
            self.completions[link] = time.monotonic() - self.storm_t0
            self._check_storm()
        if not self._clock.running:
            self._started = time.perf_counter()
            self._clock.start(TICK, now=False)
        return True

    def failed(self, link: Link, why: str) -> None:
        """An attempt of ``link`` failed: counted, and retried in 1-2 s."""
        if not link.attempting:
            return
        link.attempting = False
        self.failures[why] = self.failures.get(why, 0) + 1
        if self.storm_t0 is not None or self.reconnect:
            self.reactor.callLater(random.uniform(*RETRY), self._retry, link)

    def _retry(self, link: Link) -> None:
        if (self.storm_t0 is not None or self.reconnect) and not (
            link.logged_in or link.attempting
        ):
            link.attempt()

    def closed(self, link: Link, was_logged_in: bool) -> None:
        """A connection ended. A terminal the gateway dropped reconnects, as a real one
        would: at once during a storm (its close read after the ``connect``), else
        after 1-2 s, unless the orchestrator said ``hold`` (the gateway restarts)."""
        if was_logged_in:
            self.dropped += 1
            self.completions.pop(link, None)
            if self.storm_t0 is not None and not link.attempting:
                link.attempt()
            elif self.reconnect:
                self.reactor.callLater(random.uniform(*RETRY), self._reconnect, link)
        elif link.attempting:
            self.failed(link, "closed during login")

    def _reconnect(self, link: Link) -> None:
        if self.reconnect and not link.logged_in and not link.attempting:
            self.reconnected += 1
            link.attempt()

    def hold(self) -> None:
        """The gateway is about to stop: its closes are not reconnected until ``connect``."""
        self.reconnect = False
        self.emit(event="holding")

    def _check_storm(self) -> None:
        if self.storm_t0 is not None and len(self.completions) == len(self.links):
            self._report_storm()

    def _report_storm(self) -> None:
        """The storm's outcome; failed terminals are no longer retried after it."""
        if self.storm_t0 is not None:
            self.storm_t0 = None
            self.reconnect = True
            if self._give_up is not None and self._give_up.active():
                self._give_up.cancel()
            self._give_up = None
            self.emit(
                event="connected",
                logged_in=len(self.completions),
                failures=self.failures,
                completions_ms=[round(x * 1000) for x in self.completions.values()],
            )

    # -- heartbeats and data ----------------------------------------------------------------

    def _tick(self) -> None:
        """Heartbeats due since the last tick (terminal i at phase i/N of the interval),
        and the TRANSPARENT_DATA trickle, in turn over the terminals."""
        elapsed = time.perf_counter() - self._started
        links = self.links
        beats_due = int(elapsed / self.args.heartbeat * len(links))
        for serial in range(self._beats, beats_due):
            link = links[serial % len(links)]
            if link.logged_in and link.client is not None:
                link.send(link.client.heartbeat(), Command.HEART_BEAT)
        self._beats = max(self._beats, beats_due)
        datas_due = int(elapsed * self.args.data_rate)
        for serial in range(self._datas, datas_due):
            link = links[(serial * 7919) % len(links)]
            if link.logged_in and link.client is not None:
                link.send(link.client.transparent_data(PAYLOAD), Command.TRANSPARENT_DATA)
        self._datas = max(self._datas, datas_due)

    def answered(self, timed: tuple[float, int]) -> None:
        if self.measuring:
            started, command = timed
            self.latencies.setdefault(command, []).append(time.perf_counter() - started)

    def steady(self, warmup: float, duration: float) -> None:
        def measure() -> None:
            self.measuring = True
            self.latencies = {}
            self.dropped = self.reconnected = 0

        def finish() -> None:
            self.measuring = False
            self.emit(
                event="steady",
                logged_in=sum(link.logged_in for link in self.links),
                dropped=self.dropped,
                reconnected=self.reconnected,
                heartbeat_us=[round(x * 1e6) for x in self.latencies.get(Command.HEART_BEAT, [])],
                data_us=[
                    round(x * 1e6) for x in self.latencies.get(Command.TRANSPARENT_DATA, [])
                ],
            )

        self.reactor.callLater(warmup, measure)
        self.reactor.callLater(warmup + duration, finish)

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
        if words[:1] == ["connect"]:
            self.fleet.connect(float(words[1]), float(words[2]))
        elif words[:1] == ["hold"]:
            self.fleet.hold()
        elif words[:1] == ["steady"]:
            self.fleet.steady(float(words[1]), float(words[2]))
        elif words[:1] == ["quit"]:
            self._stop()

    def connectionLost(self, reason: object = None) -> None:
        self._stop()

    def _stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self.fleet.reactor.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bind", required=True, help="source address of every connection")
    parser.add_argument("--first", type=int, default=0, help="index of the first terminal")
    parser.add_argument("--count", type=int, required=True, help="terminals of this process")
    parser.add_argument("--heartbeat", type=float, default=90.0, help="seconds per terminal")
    parser.add_argument("--data-rate", type=float, default=0.0,
                        help="TRANSPARENT_DATA per second from this process")  # fmt: skip
    parser.add_argument("--login-timeout", type=float, default=30.0,
                        help="seconds an attempt may take before it counts as failed")  # fmt: skip
    args = parser.parse_args(argv)
    raise_nofile_limit(args.count + 256)
    from twisted.internet import reactor

    fleet = Fleet(reactor, args)
    fleet.output = stdio.StandardIO(Control(fleet))
    reactor.run()  # type: ignore[attr-defined]
    os._exit(0)  # skip closing thousands of sockets one by one at interpreter exit


if __name__ == "__main__":
    main()

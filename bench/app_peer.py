"""The processes of ``app.py`` around the gateway: terminals, the application, its callbacks.

Run by ``app.py`` as ``app_peer.py ROLE ...``, one process per role:

* ``terminals``: ``--terminals`` TCP terminals (identities from :mod:`benchlib`) that
  send TRANSPARENT_DATA and receive the platform's;
* ``application``: EC0001 on the long connection (receives DeliverData, sends
  SendData), and EC0002's SOAP requests (SendData over HTTP);
* ``callback``: EC0002's M2MAppNotifyService, which verifies and acknowledges the
  gateway's DeliverData callbacks.

Every message carries a stamp (phase, index, CLOCK_MONOTONIC send time, which all
processes share), so its receiver measures the latency end to end. A receiver returns
a credit per message of the current phase to the sender's credit port (one line of a
count per reactor turn); a sender in ``credit`` mode keeps at most ``--window``
messages sent and not yet credited, so the rate is what the whole path sustains and
no backlog builds up (a backlog would measure the queue, not the service).

Commands on stdin, results as JSON lines on stdout:

* ``send PHASE DEST MODE RATE WARMUP DURATION`` (terminals: TRANSPARENT_DATA to EC code
  DEST; application: SendData, DEST ``long`` or ``soap``). MODE ``acked`` (terminals
  only: closed loop on the gateway's ACKs), ``credit`` (closed loop on the receiver's
  credits) or ``paced`` (RATE per second, open loop). Reports the answers (ACKs or
  call responses) of the measured window, and the total sent and answered.
* ``count N PHASE DEST``: terminals send N messages as fast as they are acked.
* ``receive PHASE WARMUP DURATION``: count and time this phase's arrivals in the window.
* ``total PHASE``: arrivals of that phase so far (the orchestrator's drain check).
* ``logout`` / ``drain PHASE N`` (application): log EC0001 out; log it in again and
  time the delivery of N stored messages of PHASE from that login.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import defer, error, protocol, stdio, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.protocols.basic import LineReceiver
from twisted.web import server
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import BASE_KEY, DOWNLINK_PASSWORD, UPLINK_PASSWORD, Identity

from m2mgw.app import client as app_client
from m2mgw.app import operations as ops
from m2mgw.app import soap
from m2mgw.app.longconn import AppCredentials
from m2mgw.protocol import terminal as role
from m2mgw.protocol.constants import ACK_BIT, Command
from m2mgw.protocol.framing import StreamFramer

APP_PASSWORD, APP_KEY = "s3cretPW", "AppBaseKey0123456789ABCD"
LONG_APP, SOAP_APP = "EC0001", "EC0002"
STAMP = struct.Struct(">BId")  # phase, message index, send time
PADDING = bytes(32 - STAMP.size)
TERMINAL_WINDOW = 8  # TRANSPARENT_DATA in flight per terminal, unacked
SOAP_CONCURRENCY = 8
PACE_TICK = 0.001


def stamp(phase: int, index: int) -> bytes:
    return STAMP.pack(phase, index, time.monotonic()) + PADDING


def unstamp(data: bytes) -> tuple[int, int, float]:
    phase, index, sent = STAMP.unpack_from(data)
    return phase, index, sent


class Output:
    """JSON lines to the orchestrator."""

    transport: Any = None

    def emit(self, **record: Any) -> None:
        self.transport.write(json.dumps(record).encode() + b"\n")


# --- credits ---------------------------------------------------------------------------------


class CreditLine(LineReceiver):
    """Incoming credits: one count a line."""

    delimiter = b"\n"

    def __init__(self, on_credit: Callable[[int], None]) -> None:
        self.on_credit = on_credit

    def lineReceived(self, line: bytes) -> None:
        self.on_credit(int(line))


class Credits:
    """Outgoing credits to a sender's port, batched to one line per reactor turn.

    The sender may start after this process (the orchestrator starts the receivers
    first, so that they listen before the terminals log in): connecting is retried in
    the background, and credits owed meanwhile go out once connected.
    """

    def __init__(self, reactor: Any, port: int) -> None:
        self.reactor = reactor
        self.port = port
        self.owed = 0
        self.line: protocol.Protocol | None = None
        defer.ensureDeferred(self._connect())

    async def _connect(self) -> None:
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port)
        while self.line is None:
            try:
                line = await connectProtocol(endpoint, protocol.Protocol())
            except error.ConnectionRefusedError:
                await task.deferLater(self.reactor, 0.1)
            else:
                line.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
                self.line = line
                self._flush()

    def give(self) -> None:
        self.owed += 1
        if self.owed == 1:
            self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        if self.line is not None and self.owed:
            self.line.transport.write(b"%d\n" % self.owed)  # type: ignore[union-attr]
            self.owed = 0


class Arrivals:
    """What a receiver got of each phase: totals, and the measured window's latencies."""

    def __init__(self, reactor: Any, output: Output, credits: Credits | None) -> None:
        self.reactor = reactor
        self.output = output
        self.credits = credits
        self.totals: dict[int, int] = {}
        self.phase = -1
        self.measuring = False
        self.latencies: list[float] = []
        self.started = 0.0
        self.on_arrival: Callable[[int], None] = lambda phase: None

    def arrived(self, data: bytes) -> None:
        phase, _, sent = unstamp(data)
        self.totals[phase] = self.totals.get(phase, 0) + 1
        if phase == self.phase:
            if self.measuring:
                self.latencies.append(time.monotonic() - sent)
            if self.credits is not None:
                self.credits.give()
        self.on_arrival(phase)

    def receive(self, phase: int, warmup: float, duration: float) -> None:
        self.phase = phase

        def measure() -> None:
            self.measuring = True
            self.latencies = []
            self.started = time.monotonic()

        def finish() -> None:
            self.measuring = False
            self.output.emit(event="received", phase=phase,
                             seconds=time.monotonic() - self.started,
                             latencies_us=[round(x * 1e6) for x in self.latencies])  # fmt: skip

        self.reactor.callLater(warmup, measure)
        self.reactor.callLater(warmup + duration, finish)

    def total(self, phase: int) -> None:
        self.output.emit(event="total", phase=phase, count=self.totals.get(phase, 0))


# --- senders ---------------------------------------------------------------------------------


class Sender:
    """One phase's sending loop, over ``submit`` (which fires when answered)."""

    def __init__(
        self, reactor: Any, output: Output, submit: Callable[[bytes], defer.Deferred[Any] | None],
        phase: int, mode: str, rate: float, window: int,
    ) -> None:  # fmt: skip
        self.reactor = reactor
        self.output = output
        self.submit = submit
        self.phase = phase
        self.mode = mode
        self.rate = rate
        self.window = window
        self.sent = 0
        self.answered = 0
        self.credited = 0
        self.failed = 0
        self.running = False
        self.measuring = False
        self.latencies: list[float] = []
        self.limit: int | None = None
        self.started = self.window_start = 0.0
        self.done: defer.Deferred[None] = defer.Deferred()

    def run(self, warmup: float, duration: float) -> None:
        self.running = True
        self.started = time.monotonic()
        if self.mode == "paced":
            self._tick()
        else:
            self.pump()

        def measure() -> None:
            self.measuring = True
            self.latencies = []
            self.window_start = time.monotonic()

        def finish() -> None:
            self.running = self.measuring = False
            self.output.emit(event="sent", phase=self.phase,
                             seconds=time.monotonic() - self.window_start,
                             latencies_us=[round(x * 1e6) for x in self.latencies],
                             sent=self.sent, answered=self.answered,
                             failed=self.failed)  # fmt: skip

        self.reactor.callLater(warmup, measure)
        self.reactor.callLater(warmup + duration, finish)

    def in_flight(self) -> int:
        return self.sent - (self.credited if self.mode == "credit" else self.answered)

    def pump(self) -> None:
        while self.running and self.in_flight() < self.window:
            if self.limit is not None and self.sent >= self.limit:
                return
            if not self._send_one():
                return

    def _tick(self) -> None:
        if not self.running:
            return
        due = int((time.monotonic() - self.started) * self.rate) - self.sent
        for _ in range(due):
            if not self._send_one():
                break
        self.reactor.callLater(PACE_TICK, self._tick)

    def _send_one(self) -> bool:
        """False when the transport cannot take one now (the caller waits for an answer)."""
        sent_at = time.monotonic()
        d = self.submit(stamp(self.phase, self.sent))
        if d is None:
            return False
        self.sent += 1
        d.addCallbacks(self._answer, self._failure, callbackArgs=(sent_at,))
        return True

    def _answer(self, _: Any, sent_at: float) -> None:
        self.answered += 1
        if self.measuring:
            self.latencies.append(time.monotonic() - sent_at)
        if self.limit is not None and self.answered >= self.limit and not self.done.called:
            self.done.callback(None)
        if self.mode != "paced":
            self.pump()

    def _failure(self, failure: Any) -> None:
        self.failed += 1
        self.answered += 1
        if self.mode != "paced":
            self.pump()

    def credit(self, count: int) -> None:
        self.credited += count
        if self.mode == "credit":
            self.pump()


# --- terminals -------------------------------------------------------------------------------


class Terminal(protocol.Protocol):
    """One terminal: TRANSPARENT_DATA with a window of its own; the platform's
    TRANSPARENT_DATA goes to ``arrivals``."""

    def __init__(self, client: role.TerminalClient, arrivals: Arrivals) -> None:
        self.client = client
        self.arrivals = arrivals
        self.framer = StreamFramer()
        self.logged_in: defer.Deferred[None] = defer.Deferred()
        self.waiting: dict[int, defer.Deferred[None]] = {}

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        self.transport.write(self.client.login())  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        for frame in self.framer.feed(data):
            for event in self.client.receive(frame, time.time()):
                self._event(event)
        for out in self.client.data_to_send():
            self.transport.write(out)  # type: ignore[union-attr]

    def _event(self, event: Any) -> None:
        if isinstance(event, role.LoggedIn):
            self.transport.write(self.client.trap([]))  # type: ignore[union-attr]
        elif isinstance(event, role.Answer) and event.command == Command.TRANSPARENT_DATA | ACK_BIT:
            waiting = self.waiting.pop(event.sequence_id, None)
            if waiting is not None:
                waiting.callback(None)
        elif isinstance(event, role.Answer) and not self.logged_in.called:
            self.logged_in.callback(None)
        elif isinstance(event, role.PlatformRequest) and event.message.COMMAND == (
            Command.TRANSPARENT_DATA
        ):
            self.arrivals.arrived(event.message.user_data)

    def send(self, data: bytes, destination: str) -> defer.Deferred[None] | None:
        if len(self.waiting) >= TERMINAL_WINDOW:
            return None
        frame = self.client.transparent_data(data, destination)
        d: defer.Deferred[None] = defer.Deferred()
        self.waiting[int.from_bytes(frame[4:8], "big")] = d
        self.transport.write(frame)  # type: ignore[union-attr]
        return d


class Terminals:
    """The terminals role: logs all in, then sends and receives by command."""

    def __init__(self, reactor: Any, args: argparse.Namespace, output: Output) -> None:
        self.reactor = reactor
        self.args = args
        self.output = output
        self.links: list[Terminal] = []
        self.next = 0
        self.sender: Sender | None = None
        self.arrivals = Arrivals(reactor, output, Credits(reactor, args.peer))

    async def start(self) -> None:
        for index in range(self.args.terminals):
            identity = Identity.of(index)
            client = role.TerminalClient(role.TerminalIdentity(
                serial=identity.serial, imei=identity.imei, imsi=identity.imsi,
                credentials=role.Credentials(UPLINK_PASSWORD, DOWNLINK_PASSWORD,
                                             base_key=BASE_KEY),
            ), "tcp", clock=time.time)  # fmt: skip
            link = Terminal(client, self.arrivals)
            endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.args.port)
            await connectProtocol(endpoint, link)
            await link.logged_in
            self.links.append(link)
        self.output.emit(event="ready", terminals=len(self.links))

    def submitter(self, destination: str) -> Callable[[bytes], defer.Deferred[Any] | None]:
        def submit(data: bytes) -> defer.Deferred[Any] | None:
            for _ in range(len(self.links)):
                link = self.links[self.next]
                self.next = (self.next + 1) % len(self.links)
                d = link.send(data, destination)
                if d is not None:
                    return d
            return None

        return submit

    def on_credit(self, count: int) -> None:
        if self.sender is not None:
            self.sender.credit(count)

    def command(self, words: list[str]) -> None:
        if words[0] == "send":
            number, destination, mode, rate, warmup, duration = words[1:7]
            self.sender = Sender(self.reactor, self.output, self.submitter(destination),
                                 int(number), mode, float(rate), self.args.window)  # fmt: skip
            self.sender.run(float(warmup), float(duration))
        elif words[0] == "count":
            count, phase, destination = int(words[1]), int(words[2]), words[3]
            sender = Sender(self.reactor, self.output, self.submitter(destination), phase,
                            "acked", 0.0, self.args.window)  # fmt: skip
            sender.limit = count
            self.sender = sender
            started = time.monotonic()
            sender.done.addCallback(lambda _: self.output.emit(
                event="counted", phase=phase, answered=sender.answered,
                failed=sender.failed, seconds=time.monotonic() - started,
            ))  # fmt: skip
            sender.running = True
            sender.pump()
        elif words[0] == "receive":
            self.arrivals.receive(int(words[1]), float(words[2]), float(words[3]))
        elif words[0] == "total":
            self.arrivals.total(int(words[1]))


# --- the application ---------------------------------------------------------------------------


class Application:
    """EC0001 on the long connection, EC0002's SOAP requests."""

    def __init__(self, reactor: Any, args: argparse.Namespace, output: Output) -> None:
        self.reactor = reactor
        self.args = args
        self.output = output
        self.arrivals = Arrivals(reactor, output, Credits(reactor, args.peer))
        self.http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor)))
        self.sender: Sender | None = None
        self.client: app_client.AppClient | None = None
        self.next = 0
        self.soap_seq = 0
        self.soap_busy = 0

    async def start(self) -> None:
        await self._login()
        self.output.emit(event="ready")

    async def _login(self) -> None:
        self.client = await app_client.connect(
            self.reactor, "127.0.0.1", self.args.app_port,
            AppCredentials(LONG_APP, APP_PASSWORD, APP_KEY), on_notification=self._notified,
        )  # fmt: skip

    def _notified(self, payload: object) -> None:
        if isinstance(payload, ops.DeliverData):
            self.arrivals.arrived(payload.data)

    def _serial(self) -> str:
        self.next = (self.next + 1) % self.args.terminals
        return Identity.of(self.next).serial

    def send_long(self, data: bytes) -> defer.Deferred[Any] | None:
        assert self.client is not None
        return self.client.call(ops.SendData(terminal_id=self._serial(), data=data,
                                             need_terminal_ack=False))  # fmt: skip

    def send_soap(self, data: bytes) -> defer.Deferred[Any] | None:
        if self.soap_busy >= SOAP_CONCURRENCY:
            return None
        self.soap_seq += 1
        header = soap.MsgHeader(msg_type="", app_id=SOAP_APP, seq_id=self.soap_seq,
                                timestamp=ops.format_soap_timestamp(time.time()))  # fmt: skip
        body = soap.build_message(header, ops.SendData(
            terminal_id=self._serial(), data=data, need_terminal_ack=False), APP_PASSWORD)
        url = f"http://127.0.0.1:{self.args.http_port}/m2m/app/v1/M2MPlatformService"
        self.soap_busy += 1
        d = self.http.post(url, data=body, headers={
            "content-type": soap.CONTENT_TYPE, "soapaction": soap.soap_action("SendData")})
        d.addCallback(lambda response: response.content())

        def done(result: Any) -> Any:
            self.soap_busy -= 1
            return result

        return d.addBoth(done)

    def on_credit(self, count: int) -> None:
        if self.sender is not None:
            self.sender.credit(count)

    def command(self, words: list[str]) -> None:
        if words[0] == "send":
            number, destination, mode, rate, warmup, duration = words[1:7]
            submit = self.send_long if destination == "long" else self.send_soap
            self.sender = Sender(self.reactor, self.output, submit, int(number), mode,
                                 float(rate), self.args.window)  # fmt: skip
            self.sender.run(float(warmup), float(duration))
        elif words[0] == "receive":
            self.arrivals.receive(int(words[1]), float(words[2]), float(words[3]))
        elif words[0] == "total":
            self.arrivals.total(int(words[1]))
        elif words[0] == "logout":
            assert self.client is not None
            self.client.logout().addCallback(lambda _: self.output.emit(event="logged_out"))
        elif words[0] == "drain":
            defer.ensureDeferred(self._drain(int(words[1]), int(words[2])))

    async def _drain(self, phase: int, count: int) -> None:
        """Log in again and time the delivery of ``count`` stored messages of ``phase``."""
        started = time.monotonic()
        offsets: list[float] = []
        done: defer.Deferred[None] = defer.Deferred()

        def arrival(arrived_phase: int) -> None:
            if arrived_phase == phase:
                offsets.append(time.monotonic() - started)
                if len(offsets) >= count and not done.called:
                    done.callback(None)

        self.arrivals.on_arrival = arrival
        await self._login()
        done.addTimeout(self.args.drain_timeout, self.reactor)
        try:
            await done
        except defer.TimeoutError:
            pass
        self.output.emit(event="drained", phase=phase, count=len(offsets),
                         offsets_us=[round(x * 1e6) for x in offsets])  # fmt: skip


# --- the callback server -------------------------------------------------------------------------


class Receiver(Resource):
    """EC0002's M2MAppNotifyService: verifies, records and acknowledges DeliverData."""

    isLeaf = True

    def __init__(self, arrivals: Arrivals) -> None:
        super().__init__()
        self.arrivals = arrivals

    def render_POST(self, request: server.Request) -> bytes:
        content = request.content
        assert content is not None
        envelope = soap.parse_envelope(content.read(), service="notify")
        envelope.verify(APP_PASSWORD)
        payload = envelope.payload()
        if isinstance(payload, ops.DeliverData):
            self.arrivals.arrived(payload.data)
        spec = ops.OPERATIONS[envelope.operation]
        return soap.build_message(envelope.header.reply(time.time()), spec.response(),
                                  APP_PASSWORD)  # fmt: skip


class Callback:
    """The callback role: an HTTP server for the gateway's DeliverData."""

    def __init__(self, reactor: Any, args: argparse.Namespace, output: Output) -> None:
        self.reactor = reactor
        self.args = args
        self.output = output
        self.arrivals = Arrivals(reactor, output, Credits(reactor, args.peer))

    async def start(self) -> None:
        site = server.Site(Receiver(self.arrivals))
        site.noisy = False
        self.reactor.listenTCP(self.args.listen_http, site, interface="127.0.0.1")
        self.output.emit(event="ready")

    def on_credit(self, count: int) -> None:
        """A callback server sends nothing, so it gets no credits."""

    def command(self, words: list[str]) -> None:
        if words[0] == "receive":
            self.arrivals.receive(int(words[1]), float(words[2]), float(words[3]))
        elif words[0] == "total":
            self.arrivals.total(int(words[1]))


# --- main --------------------------------------------------------------------------------------


class Control(LineReceiver):
    """Commands from the orchestrator on stdin; its end stops this process."""

    delimiter = b"\n"

    def __init__(self, reactor: Any, output: Output) -> None:
        self.reactor = reactor
        self.output = output
        self.role: Terminals | Application | Callback | None = None

    def connectionMade(self) -> None:
        self.output.transport = self.transport

    def lineReceived(self, line: bytes) -> None:
        words = line.decode().split()
        if words[:1] == ["quit"]:
            self.reactor.stop()
        elif words and self.role is not None:
            self.role.command(words)

    def connectionLost(self, reason: object = None) -> None:
        if self.reactor.running:
            self.reactor.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["terminals", "application", "callback"])
    parser.add_argument("--port", type=int, help="the gateway's terminal TCP port")
    parser.add_argument("--app-port", type=int, help="the gateway's long-connection port")
    parser.add_argument("--http-port", type=int, help="the gateway's SOAP port")
    parser.add_argument("--listen-http", type=int, help="callback: the notify service's port")
    parser.add_argument("--credit-port", type=int,
                        help="where this process takes credits (not the callback's)")  # fmt: skip
    parser.add_argument("--peer", type=int, required=True,
                        help="credit port of the sender of what this process "
                        "receives")  # fmt: skip
    parser.add_argument("--terminals", type=int, default=16)
    parser.add_argument("--window", type=int, default=64,
                        help="messages in flight in credit and acked modes")  # fmt: skip
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    output = Output()
    control = Control(reactor, output)
    stdio.StandardIO(control)
    roles: dict[str, type[Terminals | Application | Callback]] = {
        "terminals": Terminals, "application": Application, "callback": Callback,
    }  # fmt: skip
    role = roles[args.role](reactor, args, output)
    control.role = role
    factory = protocol.Factory.forProtocol(lambda: CreditLine(role.on_credit))
    factory.noisy = False
    if args.role != "callback":
        reactor.listenTCP(args.credit_port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]

    def started() -> None:
        def failed(failure: Any) -> None:
            output.emit(event="ready", error=failure.getErrorMessage())

        defer.ensureDeferred(role.start()).addErrback(failed)

    reactor.callWhenRunning(started)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    os._exit(0)


if __name__ == "__main__":
    main()

"""Application interface benchmark: terminal <-> application rates and latencies, end to end.

Runs ``twistd -n m2mgw`` on loopback with a fresh database, then drives it from this
process with simulated terminals (TCP), one long-connection application (EC0001), one
SOAP application (EC0002, whose callbacks this process serves) and plain HTTP SOAP
requests. Measured, each with p50/p99 latency:

* bare:            terminal TRANSPARENT_DATA answered by the gateway, no application
                   (EC code without an application: the message log keeps it);
* uplink long:     terminal -> DeliverData on the long connection;
* uplink SOAP:     terminal -> DeliverData callback to M2MAppNotifyService;
* downlink long:   APP_SEND_DATA -> TRANSPARENT_DATA at the terminal;
* downlink SOAP:   SendData POST -> TRANSPARENT_DATA at the terminal;
* backlog drain:   ``--backlog`` uplinks stored while EC0001 is away, then delivered
                   on its next login: the rate at which a long outbox drains, with
                   p50/p99 of the time since that login (D-255).

Every figure is printed beside the bare rate of the same run. Usage::

    python bench/app.py [--terminals 8] [--messages 2000] [--phase-seconds 15]
                        [--backlog 10000]

It stops by itself (each phase is capped, and a watchdog ends the run at 150 s).
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.web import server
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from m2mgw.app import client as app_client  # noqa: E402
from m2mgw.app import operations as ops  # noqa: E402
from m2mgw.app import soap  # noqa: E402
from m2mgw.app.longconn import AppCredentials  # noqa: E402
from m2mgw.config import load_config  # noqa: E402
from m2mgw.protocol import terminal as role  # noqa: E402
from m2mgw.protocol.framing import StreamFramer  # noqa: E402
from m2mgw.web.auth import first_token  # noqa: E402

TWISTD = str(Path(sys.executable).with_name("twistd"))
PASSWORD, BASE_KEY = "s3cretPW", "AppBaseKey0123456789ABCD"
UPLINK, DOWNLINK, TERMINAL_KEY = "12345678", "87654321", "112233445566778899001234"
STAMP = struct.Struct(">Id")  # message index, send time
WINDOW = 8  # uplink messages in flight per terminal
SOAP_CONCURRENCY = 8
WATCHDOG = 150.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


class Meter:
    """Completions of one phase: count, first/last time, latencies."""

    def __init__(self, name: str, expected: int) -> None:
        self.name = name
        self.expected = expected
        self.latencies: list[float] = []
        self.started = time.monotonic()
        self.done: defer.Deferred[None] = defer.Deferred()

    def record(self, sent_at: float) -> None:
        now = time.monotonic()
        self.latencies.append(now - sent_at)
        if len(self.latencies) >= self.expected and not self.done.called:
            self.elapsed = now - self.started
            self.done.callback(None)

    def finish(self, timeout: float) -> defer.Deferred[None]:
        def late(failure: Any) -> None:
            failure.trap(defer.TimeoutError)
            self.elapsed = time.monotonic() - self.started

        return self.done.addTimeout(timeout, reactor).addErrback(late)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


class Terminal(protocol.Protocol):
    """A simulated terminal: sends stamped data with a window, records what arrives."""

    def __init__(self, client: role.TerminalClient) -> None:
        self.client = client
        self.framer = StreamFramer()
        self.logged_in: defer.Deferred[None] = defer.Deferred()
        self.on_ack: Callable[[float], None] = lambda sent: None
        self.on_data: Callable[[bytes], None] = lambda data: None
        self.sent_at: dict[int, float] = {}
        self.queue: list[bytes] = []
        self.destination = ""

    def connectionMade(self) -> None:
        self.transport.write(self.client.login())

    def dataReceived(self, data: bytes) -> None:
        for frame in self.framer.feed(data):
            for event in self.client.receive(frame, time.time()):
                self._event(event)
            for out in self.client.data_to_send():
                self.transport.write(out)

    def _event(self, event: Any) -> None:
        if isinstance(event, role.LoggedIn):
            self.transport.write(self.client.trap([]))
        elif isinstance(event, role.Answer) and event.command == 0x8004:
            self.on_ack(self.sent_at.pop(event.sequence_id))
            self.pump()
        elif isinstance(event, role.Answer) and not self.logged_in.called:
            self.logged_in.callback(None)
        elif isinstance(event, role.PlatformRequest) and event.message.COMMAND == 0x0004:
            self.on_data(event.message.user_data)

    def send_all(self, payloads: list[bytes], destination: str) -> None:
        self.queue, self.destination = list(reversed(payloads)), destination
        self.pump()

    def pump(self) -> None:
        while self.queue and len(self.sent_at) < WINDOW:
            frame = self.client.transparent_data(stamp_now(self.queue.pop()), self.destination)
            self.sent_at[struct.unpack_from(">I", frame, 4)[0]] = time.monotonic()
            self.transport.write(frame)


class Receiver(Resource):
    """EC0002's M2MAppNotifyService: verifies, records and acknowledges DeliverData."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.on_data: Callable[[bytes], None] = lambda data: None

    def render_POST(self, request: server.Request) -> bytes:
        envelope = soap.parse_envelope(request.content.read(), service="notify")
        envelope.verify(PASSWORD)
        payload = envelope.payload()
        if isinstance(payload, ops.DeliverData):
            self.on_data(payload.data)
        spec = ops.OPERATIONS[envelope.operation]
        return soap.build_message(envelope.header.reply(time.time()), spec.response(), PASSWORD)


def stamped(count: int) -> list[bytes]:
    return [STAMP.pack(i, 0.0) for i in range(count)]


def stamp_now(data: bytes) -> bytes:
    return STAMP.pack(STAMP.unpack(data)[0], time.monotonic())


class Bench:
    def __init__(self, args: argparse.Namespace, ports: dict[str, int]) -> None:
        self.args = args
        self.ports = ports
        self.terminals: list[Terminal] = []
        self.results: list[Meter] = []
        self.http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor)))

    async def setup(self, receiver: Receiver) -> None:
        for index in range(self.args.terminals):
            identity = role.TerminalIdentity(
                serial=f"A9720310{index:08d}", imei=f"86{index:013d}", imsi=f"46000{index:010d}",
                credentials=role.Credentials(UPLINK, DOWNLINK, base_key=TERMINAL_KEY))
            link = Terminal(role.TerminalClient(identity, "tcp", clock=time.time))
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports["tcp"]), link)
            await link.logged_in
            self.terminals.append(link)
        creds = AppCredentials("EC0001", PASSWORD, BASE_KEY)
        self.deliveries: Callable[[bytes], None] = lambda data: None
        self.app = await app_client.connect(reactor, "127.0.0.1", self.ports["app"], creds,
                                            on_notification=self._notified)
        self.receiver = receiver

    def _notified(self, payload: object) -> None:
        if isinstance(payload, ops.DeliverData):
            self.deliveries(payload.data)

    async def uplink(self, name: str, destination: str, sink: str | None) -> None:
        count, meter = self.args.messages, Meter(name, self.args.messages)
        if sink is None:
            for link in self.terminals:
                link.on_ack = meter.record
        else:
            for link in self.terminals:
                link.on_ack = lambda sent: None

            def arrived(data: bytes) -> None:
                meter.record(STAMP.unpack(data)[1])

            if sink == "long":
                self.deliveries = arrived
            else:
                self.receiver.on_data = arrived
        templates = stamped(count)
        for index, link in enumerate(self.terminals):
            link.send_all(templates[index::len(self.terminals)], destination)
        await meter.finish(self.args.phase_seconds)
        for link in self.terminals:
            link.queue = []
        self.results.append(meter)

    async def downlink(self, name: str, send: Callable[[str, bytes], defer.Deferred[Any]],
                       concurrency: int) -> None:
        count, meter = self.args.messages, Meter(name, self.args.messages)
        for link in self.terminals:
            link.on_data = lambda data: meter.record(STAMP.unpack(data)[1])
        jobs = [(self.terminals[i % len(self.terminals)].client.serial, i) for i in range(count)]
        deadline = time.monotonic() + self.args.phase_seconds

        async def worker() -> None:
            while jobs and time.monotonic() < deadline:
                serial, index = jobs.pop()
                await send(serial, STAMP.pack(index, time.monotonic()))

        workers = [defer.ensureDeferred(worker()) for _ in range(concurrency)]
        await meter.finish(self.args.phase_seconds + 2)
        jobs.clear()
        await defer.DeferredList(workers)
        self.results.append(meter)

    async def backlog(self, name: str, count: int) -> None:
        """Uplink to EC0001 while it is logged out, then the drain at its next login."""
        await self.app.logout()
        stored = Meter("backlog stored", count)
        for link in self.terminals:
            link.on_ack = stored.record
        templates = stamped(count)
        for index, link in enumerate(self.terminals):
            link.send_all(templates[index::len(self.terminals)], "EC0001")
        await stored.finish(self.args.phase_seconds)
        for link in self.terminals:
            link.queue, link.on_ack = [], lambda sent: None
        meter = Meter(f"{name} of {len(stored.latencies)}", len(stored.latencies))
        self.deliveries = lambda data: meter.record(meter.started)
        self.app = await app_client.connect(
            reactor, "127.0.0.1", self.ports["app"], AppCredentials("EC0001", PASSWORD, BASE_KEY),
            on_notification=self._notified)
        await meter.finish(self.args.phase_seconds)
        self.results.append(meter)

    def send_long(self, serial: str, data: bytes) -> defer.Deferred[Any]:
        return self.app.call(ops.SendData(terminal_id=serial, data=data,
                                          need_terminal_ack=False))

    def send_soap(self, serial: str, data: bytes) -> defer.Deferred[Any]:
        self._seq = getattr(self, "_seq", 0) + 1
        header = soap.MsgHeader(msg_type="", app_id="EC0002", seq_id=self._seq,
                                timestamp=ops.format_soap_timestamp(time.time()))
        body = soap.build_message(header, ops.SendData(terminal_id=serial, data=data,
                                                       need_terminal_ack=False), PASSWORD)
        url = f"http://127.0.0.1:{self.ports['http']}/m2m/app/v1/M2MPlatformService"
        d = self.http.post(url, data=body, headers={
            "content-type": soap.CONTENT_TYPE, "soapaction": soap.soap_action("SendData")})
        return d.addCallback(lambda response: response.content())


def write_ini(path: Path, work: Path, ports: dict[str, int]) -> None:
    path.write_text(f"""
[registry]
database = {work / "bench.db"}
[tcp]
listen = tcp:{ports["tcp"]}:interface=127.0.0.1
[udp]
enabled = no
[http]
listen = tcp:{ports["http"]}:interface=127.0.0.1
files_dir = {work / "files"}
[admin]
listen = tcp:{ports["admin"]}:interface=127.0.0.1
[app]
listen = tcp:{ports["app"]}:interface=127.0.0.1
[log]
level = warn
""")


def admin(ports: dict[str, int], path: str, body: Any, token: str) -> Any:
    """POST to the admin API with the token the gateway created (D-190)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{ports['admin']}{path}", data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
        method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_admin(ports: dict[str, int], child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"the gateway exited with {child.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{ports['admin']}/health", timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the gateway did not start within 60 s")


def provision(ports: dict[str, int], terminals: int, callback_url: str, token: str) -> None:
    serials = []
    for index in range(terminals):
        serial = f"A9720310{index:08d}"
        serials.append(serial)
        admin(ports, "/terminals", {
            "imei": f"86{index:013d}", "imsi": f"46000{index:010d}", "serial": serial,
            "uplink_password": UPLINK, "downlink_password": DOWNLINK,
            "base_key": TERMINAL_KEY, "apps": ["BARE"]}, token)
    admin(ports, "/apps", {"app_id": "EC0001", "password": PASSWORD, "base_key": BASE_KEY,
                           "terminals": serials}, token)
    admin(ports, "/apps", {"app_id": "EC0002", "password": PASSWORD, "base_key": BASE_KEY,
                           "terminals": serials, "callback_url": callback_url}, token)


def report(results: list[Meter]) -> None:
    bare = results[0].rate
    print(f"\n{'path':<34}{'msgs':>7}{'rate/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'bare rate/s':>13}")
    for meter in results:
        lat = [v * 1000 for v in meter.latencies]
        print(f"{meter.name:<34}{len(lat):>7}{meter.rate:>10.0f}{percentile(lat, 0.5):>9.2f}"
              f"{percentile(lat, 0.99):>9.2f}{bare:>13.0f}")


async def run(args: argparse.Namespace, ports: dict[str, int], receiver: Receiver) -> None:
    bench = Bench(args, ports)
    await bench.setup(receiver)
    await bench.uplink("bare: terminal -> gateway", "BARE", None)
    await bench.uplink("uplink: terminal -> long conn", "EC0001", "long")
    await bench.uplink("uplink: terminal -> SOAP callback", "EC0002", "soap")
    await bench.downlink("downlink: long conn -> terminal", bench.send_long, 16)
    await bench.downlink("downlink: SOAP -> terminal", bench.send_soap, SOAP_CONCURRENCY)
    if args.backlog:
        await bench.backlog("backlog drain", args.backlog)
    report(bench.results)
    await bench.app.logout()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--terminals", type=int, default=8)
    parser.add_argument("--messages", type=int, default=2000, help="per phase")
    parser.add_argument("--phase-seconds", type=float, default=15.0, help="cap per phase")
    parser.add_argument("--backlog", type=int, default=10_000,
                        help="outbox length of the drain phase (0: no such phase)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="m2mgw-bench-app-"))
    ports = {name: free_port() for name in ("tcp", "http", "admin", "app", "callback")}
    ini = work / "m2mgw.ini"
    write_ini(ini, work, ports)
    child = subprocess.Popen([TWISTD, "-n", "--pidfile=", "-l", str(work / "twistd.log"),
                              "m2mgw", "--config", str(ini)], cwd=REPO)
    try:
        wait_admin(ports, child)
        receiver = Receiver()
        token = first_token(load_config(str(ini)).admin_tokens_file) or ""
        provision(ports, args.terminals, f"http://127.0.0.1:{ports['callback']}/notify", token)
        print(f"gateway pid {child.pid}, {args.terminals} terminals, "
              f"{args.messages} messages per phase (log: {work / 'twistd.log'})")

        async def react(_: Any) -> None:
            reactor.listenTCP(ports["callback"], server.Site(receiver), interface="127.0.0.1")
            reactor.callLater(WATCHDOG, reactor.stop)
            await run(args, ports, receiver)

        try:
            task.react(lambda r: defer.ensureDeferred(react(r)))
        except SystemExit as exit_:
            return int(exit_.code or 0)
    finally:
        child.terminate()
        child.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())

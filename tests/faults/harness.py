"""Crash accounting under load (issue #11, part 2): one harness for the test and the bench.

A ``twistd -n m2mgw`` gateway on loopback is SIGKILLed at random moments and started
again while simulated TCP terminals keep sending TRANSPARENT_DATA and an application on
the long connection keeps sending SendData. Afterwards every message is accounted for
(docs/decisions.rst D-270..D-279):

* an uplink is *acked* when its terminal got TRANSPARENT_DATA_ACK result 0 or 1, and
  *delivered* when the application's handler took a DeliverData carrying its id;
* a downlink is *accepted* when the application got SendDataResponse result 0 or 5
  with a msgId, and *delivered* when its terminal received a TRANSPARENT_DATA carrying
  its id; one that was not is accounted for only by a request in ``GET /requests``
  that is still queued or sent, or that ended visibly (failed, expired, cancelled);
* every payload carries a unique id, so duplicates are counted by id: each arrival
  beyond the first, whether the application's notifyId de-duplication caught it or not.

``tests/faults/test_crash_accounting.py`` runs it for about a minute; ``bench/faults.py``
runs it longer. Everything talks to 127.0.0.1 on ports the kernel chose, every wait has
a timeout, and the gateway process is killed in a ``finally``.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import signal
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.app import client as app_client
from m2mgw.app import operations as ops
from m2mgw.app.longconn import AppCredentials
from m2mgw.protocol import terminal as role
from m2mgw.protocol.constants import ACK_BIT, Command, TransparentResult
from m2mgw.protocol.errors import FramingError
from m2mgw.protocol.framing import StreamFramer
from m2mgw.protocol.header import Header
from tests.admin_token import admin_token
from tests.app.gateway_support import BASE_KEY as APP_BASE_KEY
from tests.app.gateway_support import PASSWORD as APP_PASSWORD
from tests.e2e.support import client_for, provisioned, provisioning
from tests.twistd import free_port, gateway_argv, local, write_ini
from tests.web import call

log = Logger()

APP_ID = "EC0001"
#: TRANSPARENT_DATA_ACK results that mean the gateway took the data (D-271).
ACKED_RESULTS = frozenset({TransparentResult.ACCEPTED, TransparentResult.QUEUED})
#: SendDataResponse results that come with a msgId for a queued request (D-273).
ACCEPTED_RESULTS = frozenset({ops.ResultCode.OK, ops.ResultCode.TERMINAL_OFFLINE})
#: Request states that account for a downlink the terminal did not receive (D-274).
VISIBLE_STATES = frozenset({"queued", "sent", "failed", "expired", "cancelled"})
START_TIMEOUT = 30.0
CONNECT_TIMEOUT = 2.0
LOGIN_TIMEOUT = 5.0
#: A terminal that gets no answer for this long while it waits for one reconnects.
STALL_TIMEOUT = 10.0
RETRY_DELAY = 0.1
POLL = 0.05


def sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


@dataclass(frozen=True, slots=True)
class Plan:
    """What one run does; the same seed gives the same kill delays and downlink targets."""

    seed: int
    kills: int = 10
    terminals: int = 4
    #: Uplinks each terminal keeps in flight, and its pause after each answer (s).
    uplink_window: int = 2
    uplink_pause: float = 0.01
    #: SendData requests the application keeps in flight, and its pause after each.
    downlink_window: int = 2
    downlink_pause: float = 0.02
    #: Seconds of load (all clients logged in again) before each kill: uniform in this.
    load_between: tuple[float, float] = (0.5, 2.5)
    #: How long the last incarnation may take to deliver what is outstanding.
    drain_timeout: float = 30.0


# --- the accounting --------------------------------------------------------------------


@dataclass(slots=True)
class Ledger:
    """Every message by its unique id, as the terminals and the application saw it."""

    incarnation: int = 0
    up_sent: set[bytes] = field(default_factory=set)
    up_acked: set[bytes] = field(default_factory=set)
    up_refused: Counter[int] = field(default_factory=Counter)  # other ACK results
    up_delivered: Counter[bytes] = field(default_factory=Counter)  # handled by the app
    up_arrivals: Counter[bytes] = field(default_factory=Counter)  # repeats included
    down_sent: set[bytes] = field(default_factory=set)
    down_accepted: dict[bytes, tuple[str, int]] = field(default_factory=dict)  # (serial, msgId)
    down_refused: Counter[int] = field(default_factory=Counter)
    down_delivered: Counter[bytes] = field(default_factory=Counter)
    #: Downlinks not delivered, by the state of their request (or "missing").
    down_states: dict[bytes, str] = field(default_factory=dict)
    #: A notifyId seen again with the same content (a retry), or with other content.
    notify_repeated: int = 0
    notify_reused: Counter[str] = field(default_factory=Counter)
    #: Uplink ids in DeliverData the application discarded for a reused notifyId.
    up_discarded: set[bytes] = field(default_factory=set)
    logins: Counter[str] = field(default_factory=Counter)
    acked_per_incarnation: Counter[int] = field(default_factory=Counter)

    def uplink_answered(self, uid: bytes, result: int) -> None:
        if result in ACKED_RESULTS:
            self.up_acked.add(uid)
            self.acked_per_incarnation[self.incarnation] += 1
        else:
            self.up_refused[result] += 1

    def uplink_lost(self) -> list[bytes]:
        return sorted(uid for uid in self.up_acked if not self.up_delivered[uid])

    def downlink_missing(self) -> list[bytes]:
        return sorted(uid for uid in self.down_accepted if not self.down_delivered[uid])

    def downlink_lost(self) -> list[bytes]:
        return [uid for uid in self.downlink_missing()
                if self.down_states.get(uid, "missing") not in VISIBLE_STATES]

    def settled(self) -> bool:
        """Everything acked was delivered, everything accepted reached its terminal."""
        return not self.uplink_lost() and not self.downlink_missing()


def _duplicates(counts: Counter[bytes]) -> int:
    """Deliveries beyond the first of each id."""
    return sum(n - 1 for n in counts.values() if n > 1)


@dataclass(frozen=True, slots=True)
class Row:
    sent: int
    acked: int
    delivered: int
    pending: int
    lost: int
    duplicated: int
    unacked_delivered: int


@dataclass(slots=True)
class Report:
    """The accounting of one run; :meth:`table` prints it."""

    plan: Plan
    kills: int
    restarts: list[float]
    runtime: float
    uplink: Row
    downlink: Row
    ledger: Ledger
    lost_uplinks: list[bytes]
    lost_downlinks: list[bytes]
    root: Path

    @property
    def lost(self) -> int:
        return self.uplink.lost + self.downlink.lost

    def table(self) -> str:
        head = ("", "sent", "acked", "delivered", "pending", "lost", "duplicated",
                "unacked-delivered")
        rows = [head, ("uplink TRANSPARENT_DATA", *map(str, dataclasses.astuple(self.uplink))),
                ("downlink SendData", *map(str, dataclasses.astuple(self.downlink)))]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = [f"seed {self.plan.seed}  kills {self.kills}  terminals {self.plan.terminals}"
                 f"  runtime {self.runtime:.1f} s"]
        lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                  for r in rows]
        if self.restarts:
            lines.append(
                f"restart-to-listening (s): min {min(self.restarts):.2f}  median "
                f"{statistics.median(self.restarts):.2f}  max {max(self.restarts):.2f}"
                f"  ({len(self.restarts)} restarts)")
        ledger = self.ledger
        states = Counter(ledger.down_states.values())
        per_incarnation = [ledger.acked_per_incarnation[i] for i in range(self.kills + 1)]
        lines.append(
            f"acked per incarnation: {per_incarnation}"
            f"  refused: uplink {dict(ledger.up_refused)} downlink {dict(ledger.down_refused)}")
        lines.append(
            f"notifyId repeated (same content): {ledger.notify_repeated}  reused for other "
            f"content: {sum(ledger.notify_reused.values())} {dict(ledger.notify_reused)}"
            f"  downlinks not delivered, by request state: {dict(states)}")
        logins = ledger.logins
        lines.append(f"logins: terminals {sum(logins.values()) - logins[APP_ID]} "
                     f"({self.plan.terminals} terminals), application {logins[APP_ID]}")
        if self.lost_uplinks or self.lost_downlinks:
            discarded = sum(1 for uid in self.lost_uplinks if uid in ledger.up_discarded)
            lines.append(f"LOST uplinks: {[u.decode() for u in self.lost_uplinks[:20]]}, "
                         f"{discarded} of them discarded for a reused notifyId")
            lines.append(f"LOST downlinks: {[u.decode() for u in self.lost_downlinks[:20]]}")
            lines.append(f"gateway logs: {self.root}")
        return "\n".join(lines)


def report(plan: Plan, ledger: Ledger, kills: int, restarts: list[float], runtime: float,
           root: Path) -> Report:
    lost_up = ledger.uplink_lost()
    lost_down = ledger.downlink_lost()
    up = Row(
        sent=len(ledger.up_sent),
        acked=len(ledger.up_acked),
        delivered=sum(1 for uid in ledger.up_acked if ledger.up_delivered[uid]),
        pending=0,
        lost=len(lost_up),
        duplicated=_duplicates(ledger.up_arrivals),
        unacked_delivered=sum(1 for uid in ledger.up_delivered if uid not in ledger.up_acked),
    )
    down = Row(
        sent=len(ledger.down_sent),
        acked=len(ledger.down_accepted),
        delivered=sum(1 for uid in ledger.down_accepted if ledger.down_delivered[uid]),
        pending=len(ledger.downlink_missing()) - len(lost_down),
        lost=len(lost_down),
        duplicated=_duplicates(ledger.down_delivered),
        unacked_delivered=sum(1 for uid in ledger.down_delivered
                              if uid not in ledger.down_accepted),
    )
    return Report(plan, kills, restarts, runtime, up, down, ledger, lost_up, lost_down, root)


# --- the gateway process ---------------------------------------------------------------


class GatewayProcess:
    """``twistd -n m2mgw`` on fixed kernel-chosen loopback ports, restartable."""

    def __init__(self, reactor: Any, root: Path) -> None:
        self.reactor = reactor
        self.root = root
        self.tcp, self.app = free_port(), free_port()
        self.ini, self.admin = write_ini(
            root, tcp={"listen": local(self.tcp)}, udp={"enabled": "no"},
            http={"listen": "none"}, app={"listen": local(self.app)},
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._token: str | None = None

    def log_path(self, n: int) -> Path:
        return self.root / f"twistd-{n:02d}.log"

    async def start(self) -> float:
        """Start and wait for ``/health`` 200; the seconds that took (D-276)."""
        assert self.proc is None or self.proc.poll() is not None
        started = time.monotonic()
        self.proc = subprocess.Popen(gateway_argv(self.ini, self.log_path(self.starts)),
                                     cwd=self.root, stdin=subprocess.DEVNULL)
        self.starts += 1
        while time.monotonic() - started < START_TIMEOUT:
            if self.proc.poll() is not None:
                raise RuntimeError(f"twistd exited with {self.proc.returncode}; see "
                                   f"{self.log_path(self.starts - 1)}")
            if await self._healthy():
                return time.monotonic() - started
            await sleep(self.reactor, POLL)
        raise RuntimeError(f"gateway not healthy after {START_TIMEOUT} s")

    async def _healthy(self) -> bool:
        """``/health`` answers 200. A plain connect first: the HTTP client's endpoint
        reports a refused connection only after its 0.3 s attempt delay, which would
        blur the restart times."""
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.admin, timeout=1)
        try:
            probe = await connectProtocol(endpoint, Protocol())
        except ConnectError:
            return False
        probe.transport.abortConnection()
        code, _, _ = await call("GET", f"http://127.0.0.1:{self.admin}/health", timeout=2)
        return bool(code == 200)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process and reap it (SIGKILL: at once)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        if self._token is None:
            self._token = admin_token(self.ini)
        code, parsed, _ = await call(method, f"http://127.0.0.1:{self.admin}{path}", body,
                                     token=self._token, timeout=10)
        if code >= 300:
            raise RuntimeError(f"{method} {path}: {code} {parsed!r}")
        return parsed


# --- terminals -------------------------------------------------------------------------


class _TerminalLink(Protocol):
    """One TCP connection of a :class:`LoadTerminal`, with its own protocol state."""

    def __init__(self, owner: LoadTerminal, client: role.TerminalClient) -> None:
        self.owner = owner
        self.client = client
        self.framer = StreamFramer()
        self.login: defer.Deferred[Any] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()
        self.inflight: dict[int, bytes] = {}  # Sequence_ID -> uplink id
        self.logged_in = False
        self.progress = owner.reactor.seconds()

    def connectionMade(self) -> None:
        self.send(self.client.login())

    def send(self, frame: bytes) -> None:
        header = Header.unpack(frame)
        if not header.is_answer:
            # The next connection continues the numbering: a gateway that survived
            # may still hold answers to these Sequence_IDs in its duplicate cache (8.2).
            self.owner.next_sequence = header.sequence_id % 0xFFFFFFFF + 1
        self.transport.write(frame)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except FramingError:
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        now = self.owner.reactor.seconds()
        for frame in frames:
            for event in self.client.receive(frame, now):
                self._event(event)
            for out in self.client.data_to_send():
                self.send(out)

    def _event(self, event: Any) -> None:
        ledger = self.owner.ledger
        if isinstance(event, role.LoggedIn | role.LoginFailed) and not self.login.called:
            self.logged_in = isinstance(event, role.LoggedIn)
            self.login.callback(event)
        elif (isinstance(event, role.Answer)
              and event.command == Command.TRANSPARENT_DATA | ACK_BIT):
            uid = self.inflight.pop(event.sequence_id, None)
            if uid is not None:
                self.progress = self.owner.reactor.seconds()
                ledger.uplink_answered(uid, event.message.result)
                self.owner.reactor.callLater(self.owner.plan.uplink_pause, self.owner.fill, self)
        elif (isinstance(event, role.PlatformRequest)
              and event.message.COMMAND == Command.TRANSPARENT_DATA):
            ledger.down_delivered[bytes(event.message.user_data)] += 1

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.logged_in = False
        if not self.login.called:
            self.login.errback(ConnectionError("closed before LOGIN_ACK"))
        self.closed.callback(None)


class LoadTerminal:
    """A provisioned terminal that reconnects and re-LOGINs after every restart."""

    def __init__(self, reactor: Any, index: int, plan: Plan, ledger: Ledger,
                 port: int) -> None:
        self.reactor = reactor
        self.record = provisioned(index, apps={APP_ID}, default_app=APP_ID)
        self.plan = plan
        self.ledger = ledger
        self.port = port
        self.load = True
        self.running = True
        self.link: _TerminalLink | None = None
        self.next_sequence = 1
        self._ids = itertools.count(1)
        self._prefix = f"U{index:03d}-".encode()

    @property
    def serial(self) -> str:
        assert self.record.serial is not None
        return self.record.serial

    @property
    def online(self) -> bool:
        return self.link is not None and self.link.logged_in

    @property
    def idle(self) -> bool:
        return self.link is None or not self.link.inflight

    async def run(self) -> None:
        while self.running:
            client = client_for(self.record, "tcp", first_sequence=self.next_sequence,
                                post_login_trap=True)
            link = _TerminalLink(self, client)
            try:
                await connectProtocol(
                    TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port,
                                       timeout=CONNECT_TIMEOUT), link)
            except ConnectError:
                await sleep(self.reactor, RETRY_DELAY)
                continue
            try:
                await self._session(link)
            finally:
                self.link = None
            await sleep(self.reactor, RETRY_DELAY)

    async def _session(self, link: _TerminalLink) -> None:
        try:
            event = await link.login.addTimeout(LOGIN_TIMEOUT, self.reactor)
        except (ConnectionError, defer.TimeoutError):
            link.transport.abortConnection()  # type: ignore[union-attr]
            await link.closed
            return
        if isinstance(event, role.LoginFailed):
            log.warn("{serial}: LOGIN refused with {result}", serial=self.serial,
                     result=event.result)
            link.transport.abortConnection()  # type: ignore[union-attr]
            await link.closed
            return
        self.ledger.logins[self.serial] += 1
        self.link = link
        link.progress = self.reactor.seconds()
        for _ in range(self.plan.uplink_window):
            self.fill(link)
        watchdog = task.LoopingCall(self._watch, link)
        watchdog.clock = self.reactor
        watchdog.start(1.0, now=False)
        try:
            await link.closed
        finally:
            watchdog.stop()

    def fill(self, link: _TerminalLink) -> None:
        """Send one more uplink if this connection is logged in and has room."""
        if not (self.load and link.logged_in and len(link.inflight) < self.plan.uplink_window):
            return
        uid = self._prefix + b"%07d" % next(self._ids)
        frame = link.client.transparent_data(uid, APP_ID)
        link.inflight[Header.unpack(frame).sequence_id] = uid
        self.ledger.up_sent.add(uid)
        link.send(frame)

    def _watch(self, link: _TerminalLink) -> None:
        if link.inflight and self.reactor.seconds() - link.progress > STALL_TIMEOUT:
            log.warn("{serial}: no answer for {s} s, reconnecting", serial=self.serial,
                     s=STALL_TIMEOUT)
            link.transport.abortConnection()  # type: ignore[union-attr]

    def close(self) -> defer.Deferred[None]:
        self.running = False
        link = self.link
        if link is None or link.closed.called:
            return defer.succeed(None)
        link.transport.loseConnection()  # type: ignore[union-attr]
        return link.closed


# --- the application -------------------------------------------------------------------


class LoadApplication:
    """EC0001 on the long connection: SendData to random terminals, DeliverData taken.

    Like any application it de-duplicates notifications on ``notifyId`` (application
    spec 4.7, "MUST"), across its connections: a notifyId it has handled is answered 11
    and not handled again (D-275).
    """

    def __init__(self, reactor: Any, plan: Plan, ledger: Ledger, port: int,
                 serials: list[str], rng: random.Random) -> None:
        self.reactor = reactor
        self.plan = plan
        self.ledger = ledger
        self.port = port
        self.serials = serials
        self.rng = rng
        self.load = True
        self.running = True
        self.client: app_client.AppClient | None = None
        self.inflight = 0
        self._ids = itertools.count(1)
        self._handled: dict[int, object] = {}  # notifyId -> the notification, id zeroed

    @property
    def online(self) -> bool:
        return self.client is not None

    async def run(self) -> None:
        credentials = AppCredentials(APP_ID, APP_PASSWORD, APP_BASE_KEY)
        endpoint = TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port,
                                      timeout=CONNECT_TIMEOUT)
        while self.running:
            client = app_client.AppClient(credentials, self.reactor,
                                          on_notification=self.notified)
            try:
                await connectProtocol(endpoint, client)
            except ConnectError:
                await sleep(self.reactor, RETRY_DELAY)
                continue
            try:
                await client.logged_in.addTimeout(LOGIN_TIMEOUT, self.reactor)
            except (app_client.LoginFailed, defer.TimeoutError):
                client.transport.abortConnection()  # type: ignore[union-attr]
                await client.closed
                await sleep(self.reactor, RETRY_DELAY)
                continue
            self.ledger.logins[APP_ID] += 1
            self.client = client
            for _ in range(self.plan.downlink_window):
                self.fill(client)
            try:
                await client.closed
            finally:
                self.client = None
            await sleep(self.reactor, RETRY_DELAY)

    def fill(self, client: app_client.AppClient) -> None:
        if not (self.load and client is self.client
                and self.inflight < self.plan.downlink_window):
            return
        uid = b"D%07d" % next(self._ids)
        serial = self.rng.choice(self.serials)
        self.ledger.down_sent.add(uid)
        self.inflight += 1
        d = client.call(ops.SendData(terminal_id=serial, data=uid))

        def answered(response: Any) -> None:
            if response.result_code in ACCEPTED_RESULTS and response.msg_id:
                self.ledger.down_accepted[uid] = (serial, response.msg_id)
            else:
                self.ledger.down_refused[response.result_code] += 1

        def done(result: Any) -> Any:
            self.inflight -= 1
            self.reactor.callLater(self.plan.downlink_pause, self.fill, client)
            return result

        # RequestFailed: no answer (the gateway died): sent, not accepted.
        d.addCallbacks(answered, lambda f: f.trap(app_client.RequestFailed))
        d.addBoth(done)
        d.addErrback(lambda f: log.failure("SendData {uid} failed", f, uid=uid))

    def notified(self, payload: Any) -> int:
        """Handle each notifyId once; the result the application answers."""
        notify_id = payload.notify_id
        content = dataclasses.replace(payload, notify_id=0)
        if isinstance(payload, ops.DeliverData):
            self.ledger.up_arrivals[bytes(payload.data)] += 1
        handled = self._handled.get(notify_id)
        if handled is not None:
            if handled == content:
                self.ledger.notify_repeated += 1
            else:
                self.ledger.notify_reused[type(payload).__name__] += 1
                if isinstance(payload, ops.DeliverData):
                    self.ledger.up_discarded.add(bytes(payload.data))
            return ops.ResultCode.DUPLICATE
        self._handled[notify_id] = content
        if isinstance(payload, ops.DeliverData):
            self.ledger.up_delivered[bytes(payload.data)] += 1
        return ops.ResultCode.OK

    def close(self) -> defer.Deferred[Any]:
        self.running = False
        client = self.client
        if client is None or client.transport is None or not client.transport.connected:
            return defer.succeed(None)
        client.transport.loseConnection()
        return client.closed


# --- the run ---------------------------------------------------------------------------


async def _until(reactor: Any, ready: Callable[[], bool], timeout: float) -> bool:
    deadline = reactor.seconds() + timeout
    while not ready():
        if reactor.seconds() > deadline:
            return False
        await sleep(reactor, POLL)
    return True


async def _request_states(gateway: GatewayProcess, ledger: Ledger) -> None:
    """For each accepted downlink its terminal did not get: its request's state (D-274)."""
    missing = {ledger.down_accepted[uid]: uid for uid in ledger.downlink_missing()}
    by_serial: dict[str, set[int]] = {}
    for serial, msg_id in missing:
        by_serial.setdefault(serial, set()).add(msg_id)
    for serial, msg_ids in by_serial.items():
        path: str | None = f"/requests?serial={serial}&limit=500"
        while path and msg_ids:
            page = await gateway.api("GET", path)
            for item in page["items"]:
                msg_id = int(item["msg_id"] or 0)
                if msg_id in msg_ids:
                    one = await gateway.api("GET", f"/requests/{item['id']}")
                    ledger.down_states[missing[(serial, msg_id)]] = one["state"]
                    msg_ids.discard(msg_id)
            path = page.get("next")


async def run(reactor: Any, plan: Plan, root: Path) -> Report:
    """Load, ``plan.kills`` SIGKILLs with restarts, a drain, then the accounting."""
    began = time.monotonic()
    rng = random.Random(plan.seed)
    root.mkdir(parents=True, exist_ok=True)
    gateway = GatewayProcess(reactor, root)
    ledger = Ledger()
    restarts: list[float] = []
    kills = 0
    clients: list[LoadTerminal | LoadApplication] = []
    running: list[defer.Deferred[None]] = []
    try:
        await gateway.start()
        terminals = [LoadTerminal(reactor, i, plan, ledger, gateway.tcp)
                     for i in range(plan.terminals)]
        for terminal in terminals:
            await gateway.api("POST", "/terminals", provisioning(terminal.record))
        await gateway.api("POST", "/apps", {
            "app_id": APP_ID, "password": APP_PASSWORD, "base_key": APP_BASE_KEY,
            "terminals": [t.serial for t in terminals]})
        app = LoadApplication(reactor, plan, ledger, gateway.app,
                              [t.serial for t in terminals], rng)
        clients = [*terminals, app]
        running = [defer.ensureDeferred(c.run()) for c in clients]

        def all_online() -> bool:
            return all(c.online for c in clients)

        for _ in range(plan.kills):
            if not await _until(reactor, all_online, 15.0):
                raise RuntimeError(f"clients not back after restart {kills}")
            await sleep(reactor, rng.uniform(*plan.load_between))
            gateway.kill()
            kills += 1
            ledger.incarnation += 1
            restarts.append(await gateway.start())
        # The drain: no new messages; what is outstanding must arrive.
        for client in clients:
            client.load = False
        await _until(reactor, lambda: all_online() and app.inflight == 0
                     and all(t.idle for t in terminals) and ledger.settled(),
                     plan.drain_timeout)
        await _request_states(gateway, ledger)
        for client in clients:
            await client.close().addTimeout(5, reactor)
        await defer.DeferredList(running).addTimeout(10, reactor)
        gateway.kill(signal.SIGTERM)
        await sleep(reactor, 0.2)  # let the reactor see the last sockets close
    finally:
        for client in clients:
            client.running = False
        gateway.kill()
    return report(plan, ledger, kills, restarts, time.monotonic() - began, root)

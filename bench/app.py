"""Application paths against the bare terminal uplink, each in its own process (issue #16).

Run as ``.venv/bin/python bench/app.py [--terminals 16] [--duration 10] [--backlog N]``.
On loopback, five processes: the gateway (``twistd -n m2mgw``, temp ini and SQLite
file), and ``app_peer.py`` as the terminals (TCP), the application (EC0001 on the
long connection, EC0002's SOAP requests) and EC0002's callback server. Every phase
runs ``--warmup`` seconds, is measured for ``--duration`` seconds, and waits until
everything it sent has arrived before the next one starts:

* bare: terminal TRANSPARENT_DATA to an EC code without an application, answered by
  the gateway (the message log keeps it); closed loop on the ACKs;
* uplink long: terminal -> DeliverData on EC0001's long connection;
* uplink SOAP: terminal -> DeliverData callback of EC0002, saturated, then paced at
  ``--soap-rate`` (500) per second;
* downlink long: SendData on the long connection -> TRANSPARENT_DATA at a terminal;
* downlink SOAP: SendData over HTTP -> TRANSPARENT_DATA at a terminal;
* backlog drain (``--backlog N``): N uplinks stored while EC0001 is logged out, then
  delivered on its next login.

Saturated phases are closed loops end to end: the receiver credits each arrival back
to the sender, which keeps at most ``--window`` messages in flight, so a rate is what
the path sustains, not how fast a queue fills. Latencies run from the sender's write
to the receiver's arrival (CLOCK_MONOTONIC, shared by the processes). Each figure is
printed with its target of issue #16 and its ratio, and every process's CPU per phase.
It stops by itself; every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app_peer import APP_KEY, APP_PASSWORD, LONG_APP, SOAP_APP
from benchlib import Identity, machine
from harness import (
    BENCH,
    PYTHON,
    STOP_GRACE,
    Cpu,
    Lines,
    Processes,
    bench_terminal,
    free_port,
    gateway_ini,
    log,
    percentile,
    provision,
    ratio,
    send,
    twistd_argv,
    verdict,
    wait_listening,
)

BARE = "BARE"  # an EC code bound to the terminals without an application behind it
#: Issue #16, target 4.
TARGET_UPLINK_RATIO = 0.5
TARGET_SOAP_P50_MS = 50.0
TARGET_DOWNLINK_RATE = 3_000
ROLES = ("gateway", "terminals", "application", "callback")


@dataclass
class Phase:
    """One measured path: its rate, latencies, and every process's CPU."""

    name: str
    rate: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    cpu: list[Cpu] = field(default_factory=list)
    wall: float = 0.0
    sent: int = 0
    failed: int = 0
    drain_seconds: float = 0.0
    undelivered: int = 0
    target: str = ""
    met: bool | None = None
    versus: str = ""

    def p(self, fraction: float) -> float:
        return percentile(sorted(self.latencies_ms), fraction)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.processes = Processes()
        self.lines = Lines()
        self.ports = {name: free_port() for name in
                      ("tcp", "http", "app", "callback", "credit_t", "credit_a")}  # fmt: skip
        self.peers: dict[str, subprocess.Popen[bytes]] = {}
        self.phases: list[Phase] = []

    def start(self) -> None:
        ports, args = self.ports, self.args
        ini = self.workdir / "m2mgw.ini"
        extra = f"[app]\nlisten = tcp:{ports['app']}:interface=127.0.0.1\n"
        ini.write_text(gateway_ini(
            self.workdir / "m2mgw.db", self.workdir / "m2mgw.key", ports["tcp"], 1000,
            http=f"tcp:{ports['http']}:interface=127.0.0.1", extra=extra,
        ), encoding="ascii")  # fmt: skip
        serials = [Identity.of(i).serial for i in range(args.terminals)]
        apps: list[dict[str, Any]] = [
            {"app_id": LONG_APP, "password": APP_PASSWORD, "base_key": APP_KEY,
             "terminals": serials},
            {"app_id": SOAP_APP, "password": APP_PASSWORD, "base_key": APP_KEY,
             "terminals": serials,
             "callback_url": f"http://127.0.0.1:{ports['callback']}/notify"},
        ]  # fmt: skip
        provision(ini, (bench_terminal(i, apps=(BARE,)) for i in range(args.terminals)), apps)
        gateway = self.processes.start(
            twistd_argv(self.workdir, ini), cwd=str(self.workdir), stdout=subprocess.DEVNULL
        )
        self.peers["gateway"] = gateway
        wait_listening(ports["tcp"], gateway)
        wait_listening(ports["app"], gateway)
        common = ["--terminals", str(args.terminals), "--window", str(args.window)]
        for role, options in (
            ("callback", ["--listen-http", ports["callback"], "--peer", ports["credit_t"]]),
            ("application", ["--app-port", ports["app"], "--http-port", ports["http"],
                             "--credit-port", ports["credit_a"], "--peer", ports["credit_t"]]),
            ("terminals", ["--port", ports["tcp"], "--credit-port", ports["credit_t"],
                           "--peer", ports["credit_a"]]),
        ):  # fmt: skip
            # One after the other: the callback server listens before the application
            # logs in, both before the terminals log in (and their status is notified).
            argv = [PYTHON, str(BENCH / "app_peer.py"), role, *map(str, options), *common]
            self.peers[role] = self.processes.start(argv, stdin=True)
            record = self.lines.wait([self.peers[role]], "ready", 120)[0]
            if "error" in record:
                raise RuntimeError(f"the {role} process failed to start: {record['error']}")

    def _cpu(self) -> list[Cpu]:
        return [Cpu.of(self.peers[role].pid) for role in ROLES]

    def phase(
        self, name: str, number: int, sender: str, destination: str, mode: str,
        receiver: str | None, rate: float = 0.0,
    ) -> Phase:  # fmt: skip
        """One phase: the receiver counts arrivals (None: the sender counts answers)."""
        args = self.args
        result = Phase(name)
        if receiver is not None:
            send([self.peers[receiver]], f"receive {number} {args.warmup} {args.duration}")
        command = f"send {number} {destination} {mode} {rate} {args.warmup} {args.duration}"
        send([self.peers[sender]], command)
        time.sleep(args.warmup)
        before, started = self._cpu(), time.monotonic()
        sent = self.lines.wait([self.peers[sender]], "sent", args.duration + 60)[0]
        measured = sent
        if receiver is not None:
            measured = self.lines.wait([self.peers[receiver]], "received", 60)[0]
        result.cpu = [b - a for a, b in zip(before, self._cpu(), strict=True)]
        result.wall = time.monotonic() - started
        result.latencies_ms = [x / 1000 for x in measured["latencies_us"]]
        result.rate = len(result.latencies_ms) / measured["seconds"]
        result.sent, result.failed = sent["sent"], sent["failed"]
        if receiver is not None:
            self._drain(result, number, receiver, sent["answered"] - sent["failed"])
        self.phases.append(result)
        log(f"{name}: {result.rate:,.0f}/s")
        return result

    def _drain(self, result: Phase, number: int, receiver: str, expected: int) -> None:
        """Until the receiver has all that the gateway accepted in this phase."""
        started = time.monotonic()
        while True:
            send([self.peers[receiver]], f"total {number}")
            count = self.lines.wait([self.peers[receiver]], "total", 30)[0]["count"]
            result.undelivered = max(0, expected - count)
            if not result.undelivered or time.monotonic() - started > self.args.drain_timeout:
                break
            time.sleep(0.2)
        result.drain_seconds = time.monotonic() - started

    def backlog(self, number: int) -> Phase:
        """``--backlog`` uplinks stored while EC0001 is away, delivered at its login."""
        count = self.args.backlog
        application, terminals = self.peers["application"], self.peers["terminals"]
        send([application], "logout")
        self.lines.wait([application], "logged_out", 30)
        send([terminals], f"count {count} {number} {LONG_APP}")
        stored = self.lines.wait([terminals], "counted", self.args.drain_timeout)[0]
        before, started = self._cpu(), time.monotonic()
        send([application], f"drain {number} {stored['answered'] - stored['failed']}")
        drained = self.lines.wait([application], "drained", self.args.drain_timeout + 60)[0]
        result = Phase(f"backlog drain of {count:,} (stored at "
                       f"{stored['answered'] / stored['seconds']:,.0f}/s)")  # fmt: skip
        result.cpu = [b - a for a, b in zip(before, self._cpu(), strict=True)]
        result.wall = time.monotonic() - started
        offsets = [x / 1000 for x in drained["offsets_us"]]
        result.latencies_ms = offsets
        result.rate = len(offsets) / (offsets[-1] / 1000) if offsets else 0.0
        result.undelivered = count - drained["count"]
        self.phases.append(result)
        return result

    def run(self) -> None:
        args = self.args
        bare = self.phase("bare: terminal -> gateway (ACK)", 1, "terminals", BARE, "acked", None)
        long_up = self.phase("uplink: terminal -> long connection", 2, "terminals", LONG_APP,
                             "credit", "application")  # fmt: skip
        long_up.versus = f"ratio to bare {ratio(long_up.rate, bare.rate):.2f}"
        long_up.target = f"ratio >= {TARGET_UPLINK_RATIO}"
        long_up.met = ratio(long_up.rate, bare.rate) >= TARGET_UPLINK_RATIO
        soap_up = self.phase("uplink: terminal -> SOAP callback", 3, "terminals", SOAP_APP,
                             "credit", "callback")  # fmt: skip
        soap_up.versus = f"ratio to bare {ratio(soap_up.rate, bare.rate):.2f}"
        paced = self.phase(f"uplink: -> SOAP callback at {args.soap_rate:g}/s", 4, "terminals",
                           SOAP_APP, "paced", "callback", args.soap_rate)  # fmt: skip
        paced.target = f"p50 <= {TARGET_SOAP_P50_MS:g} ms"
        paced.met = paced.p(0.5) <= TARGET_SOAP_P50_MS and paced.rate >= 0.95 * args.soap_rate
        paced.versus = f"{paced.rate / args.soap_rate:.0%} of the rate offered"
        down = self.phase("downlink: long connection -> terminal", 5, "application", "long",
                          "credit", "terminals")  # fmt: skip
        down.target = f">= {TARGET_DOWNLINK_RATE:,}/s"
        down.met = down.rate >= TARGET_DOWNLINK_RATE
        down.versus = f"ratio to bare {ratio(down.rate, bare.rate):.2f}"
        soap_down = self.phase("downlink: SOAP -> terminal", 6, "application", "soap", "credit",
                               "terminals")  # fmt: skip
        soap_down.versus = f"ratio to bare {ratio(soap_down.rate, bare.rate):.2f}"
        if args.backlog:
            self.backlog(7)

    def stop(self) -> None:
        for role in ROLES[:0:-1]:
            if role in self.peers:
                self.processes.stop(self.peers[role], exiting=STOP_GRACE)
        self.processes.stop_all()


def report(phases: list[Phase], args: argparse.Namespace) -> None:
    print(
        f"\n{args.terminals} terminals; {args.warmup:g} s warm-up and {args.duration:g} s "
        f"measured per phase; saturated phases keep {args.window} messages in flight end "
        "to end. Latency: write at the sender to arrival at the receiver (bare: to the "
        "ACK; backlog: from the application's login). 'drain': seconds after the window "
        "until everything accepted had arrived.\n"
    )
    head = (f"{'path':<42} {'msgs':>7} {'rate/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'drain s':>7}  {'compared':<28} {'target':<16}")  # fmt: skip
    print(head)
    print("-" * (len(head) + 8))
    for ph in phases:
        met = "" if ph.met is None else verdict(ph.met)
        print(f"{ph.name:<42} {len(ph.latencies_ms):>7} {ph.rate:>8,.0f} {ph.p(0.5):>8.2f} "
              f"{ph.p(0.99):>8.2f} {ph.drain_seconds:>7.1f}  {ph.versus:<28} "
              f"{ph.target:<16} {met}")  # fmt: skip
        if ph.undelivered or ph.failed:
            print(f"{'':<42} {ph.undelivered} not delivered, {ph.failed} failed")
    print("\nCPU per phase over its measured window (user+sys s = share of the wall time):")
    print(f"{'path':<42} " + " ".join(f"{role:>20}" for role in ROLES))
    for ph in phases:
        print(f"{ph.name:<42} " + " ".join(f"{c.show(ph.wall):>20}" for c in ph.cpu))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--window", type=int, default=64,
                        help="messages in flight in a saturated phase")  # fmt: skip
    parser.add_argument("--soap-rate", type=float, default=500.0,
                        help="uplinks per second of the paced SOAP phase")  # fmt: skip
    parser.add_argument("--backlog", type=int, default=10_000,
                        help="outbox length of the drain phase (0: no such phase)")  # fmt: skip
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="seconds a phase's leftovers may take to arrive")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="m2mgw-bench-app-"))
    bench = Bench(args, workdir)
    at_start = machine()
    try:
        bench.start()
        bench.run()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except RuntimeError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    finally:
        bench.stop()
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"Machine at start: {at_start}\nMachine at end:   {machine()}")
    report(bench.phases, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One gateway with many terminals: memory, heartbeat latency, the login storm (issue #16).

Run as ``.venv/bin/python bench/scale.py [--terminals 100000] [--clients C]
[--duration S]``; ``--terminals 2000`` is a quick smoke run. On loopback only:

1. the open-files limit is read and the soft one raised to the hard one (the children
   inherit it); when the gateway's share of it cannot hold ``--terminals``
   connections, the run says so and uses the largest number it can;
2. ``--terminals`` terminals are provisioned in bulk (queued adds on the registry's
   writer) into a temp SQLite file, and ``twistd -n m2mgw`` opens it;
3. client processes (``scale_client.py``), each binding its own 127.0.0.x source
   address and holding no more terminals than its own limit allows, log all of them
   in over TCP; then every terminal heartbeats (every 90 s, or compressed, as the
   output says) and a trickle of TRANSPARENT_DATA flows; the heartbeat and data
   answer latencies are measured at steady state and the gateway's RSS read;
4. the login storm: the gateway is stopped (SIGTERM) and started again on the same
   database, and as soon as it listens every terminal reconnects at once; the time
   until all are logged in, the refusals the gateway counted (its /metrics) and the
   failed attempts the clients saw, by reason.

The figures are printed beside the targets of issue #16 (100,000 terminals: RSS at
most 1.5 GB, heartbeat p99 at most 20 ms, all logged in within 30 s after a restart,
at least 3,500 logins/s). Every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import math
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import machine
from harness import (
    BENCH,
    PYTHON,
    STOP_GRACE,
    Cpu,
    Lines,
    Processes,
    bench_terminal,
    filesystem,
    free_port,
    gateway_ini,
    log,
    memory_kb,
    nofile_limits,
    percentile,
    provision,
    send,
    split,
    twistd_argv,
    verdict,
    wait_listening,
)

from m2mgw.limits import RESERVED_DESCRIPTORS

#: Issue #16, target 3.
TARGET_TERMINALS = 100_000
TARGET_RSS_MB = 1536
TARGET_HEARTBEAT_P99_MS = 20.0
TARGET_STORM_SECONDS = 30.0
TARGET_LOGINS_PER_SECOND = 3_500
REAL_HEARTBEAT = 90.0
#: Descriptors left free besides the gateway's own reserve (the metrics scrape, the
#: listening probe, connections closing while new ones arrive).
HEADROOM = 64
#: Descriptors a client keeps besides its connections (see scale_client.py).
CLIENT_RESERVE = 256
#: Ephemeral ports of one source address that a client may use (of the kernel's range).
PORT_MARGIN = 1000
METRICS = re.compile(r"^(m2mgw_[a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+)$")


@dataclass
class Plan:
    """How many terminals the limits allow, and how they are spread."""

    asked: int
    soft_before: int
    hard: int
    terminals: int
    clients: int
    per_client: int
    heartbeat: float
    compressed: bool

    @property
    def allowed(self) -> int:
        return self.hard - RESERVED_DESCRIPTORS - HEADROOM

    def statement(self) -> str:
        """What the open-files limit allowed, in words."""
        limit = f"RLIMIT_NOFILE: soft {self.soft_before}, hard {self.hard}"
        if self.soft_before < self.hard:
            limit += f" (soft raised to {self.hard} for the gateway and the clients)"
        if self.terminals < self.asked:
            return (
                f"{limit}. One gateway process can hold at most {self.allowed:,} terminal "
                f"connections under it ({self.hard:,} less {RESERVED_DESCRIPTORS} descriptors "
                f"the gateway reserves and {HEADROOM} of headroom), so this run connects "
                f"{self.terminals:,} of the {self.asked:,} terminals asked for; the other "
                f"{self.asked - self.terminals:,} are provisioned but never connect. Raise "
                "the hard limit (LimitNOFILE= under systemd, ulimit -Hn as root) for more."
            )
        return f"{limit}: enough for all {self.asked:,} terminals."


def plan(args: argparse.Namespace) -> Plan:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    terminals = min(args.terminals, hard - RESERVED_DESCRIPTORS - HEADROOM)
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    per_client = min(hard - CLIENT_RESERVE, high - low - PORT_MARGIN)
    clients = max(args.clients, math.ceil(terminals / per_client))
    if args.heartbeat is not None:
        heartbeat, compressed = args.heartbeat, args.heartbeat < REAL_HEARTBEAT
    else:  # keep the heartbeat rate that the terminals asked for would send at 90 s
        heartbeat = REAL_HEARTBEAT * terminals / args.terminals
        compressed = terminals < args.terminals
    return Plan(args.terminals, soft, hard, terminals, clients,
                math.ceil(terminals / clients), heartbeat, compressed)  # fmt: skip


@dataclass
class Storm:
    """One round of logins: every terminal at once."""

    seconds: float = float("nan")
    logged_in: int = 0
    p50: float = float("nan")
    failures: dict[str, int] = field(default_factory=dict)
    gateway: Cpu = field(default_factory=lambda: Cpu(0.0, 0.0))
    clients: list[Cpu] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.logged_in / self.seconds if self.seconds else float("nan")


@dataclass
class Result:
    database: Path = Path()
    provision_seconds: float = 0.0
    start_seconds: float = 0.0
    restart_seconds: float = 0.0
    stop_seconds: float = 0.0
    gateway_limits: tuple[str, str] = ("?", "?")
    first: Storm = field(default_factory=Storm)
    storm: Storm = field(default_factory=Storm)
    rss_idle_kb: int = 0
    rss_steady_kb: int = 0
    hwm_kb: int = 0
    rss_after_storm_kb: int = 0
    heartbeats: list[int] = field(default_factory=list)
    datas: list[int] = field(default_factory=list)
    steady_logged_in: int = 0
    dropped: int = 0
    reconnected: int = 0
    steady_wall: float = 0.0
    steady_gateway: Cpu = field(default_factory=lambda: Cpu(0.0, 0.0))
    steady_clients: list[Cpu] = field(default_factory=list)
    counters: dict[str, dict[str, float]] = field(default_factory=dict)


def scrape(port: int) -> dict[str, dict[str, float]]:
    """The gateway's counters from its /metrics listener: name -> labels -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    found: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        match = METRICS.match(line)
        if match:
            name, labels, value = match.groups()
            found.setdefault(name, {})[labels or ""] = float(value)
    return found


class Bench:
    def __init__(self, args: argparse.Namespace, the_plan: Plan, workdir: Path) -> None:
        self.args = args
        self.plan = the_plan
        self.workdir = workdir
        self.processes = Processes()
        self.lines = Lines()
        self.port = free_port()
        self.metrics_port = free_port()
        self.ini = workdir / "m2mgw.ini"
        self.result = Result()
        self.gateway: subprocess.Popen[bytes] | None = None
        self.clients: list[subprocess.Popen[bytes]] = []

    def run(self) -> Result:
        result = self.result
        result.database = self.workdir / "m2mgw.db"
        extra = f"[metrics]\nlisten = tcp:{self.metrics_port}:interface=127.0.0.1\n"
        self.ini.write_text(
            gateway_ini(result.database, self.workdir / "m2mgw.key", self.port,
                        self.plan.terminals, extra=extra),
            encoding="ascii",
        )  # fmt: skip
        started = time.monotonic()
        provision(self.ini, (bench_terminal(i) for i in range(self.plan.asked)))
        result.provision_seconds = time.monotonic() - started
        log(f"provisioned {self.plan.asked} terminals in {result.provision_seconds:.1f} s")
        result.start_seconds = self._start_gateway()
        assert self.gateway is not None
        result.gateway_limits = nofile_limits(self.gateway.pid)
        time.sleep(1.0)
        result.rss_idle_kb = memory_kb(self.gateway.pid)["VmRSS"]
        self._start_clients()
        log(f"logging in {self.plan.terminals} terminals ...")
        result.first = self._storm()
        time.sleep(2.0)
        log(f"steady state: {self.args.warmup:g} s warm-up, {self.args.duration:g} s ...")
        self._steady()
        result.counters = scrape(self.metrics_port)
        log("login storm: restarting the gateway ...")
        send(self.clients, "hold")
        self.lines.wait(self.clients, "holding", 30)
        started = time.monotonic()
        self.processes.stop(self.gateway)
        result.stop_seconds = time.monotonic() - started
        result.restart_seconds = self._start_gateway()
        result.storm = self._storm()
        time.sleep(1.0)
        result.rss_after_storm_kb = memory_kb(self.gateway.pid)["VmRSS"]
        for name, values in scrape(self.metrics_port).items():
            for labels, value in values.items():
                total = result.counters.setdefault(name, {})
                total[labels] = total.get(labels, 0.0) + value
        return result

    def _start_gateway(self) -> float:
        """Start the gateway; the seconds until it listens."""
        started = time.monotonic()
        self.gateway = self.processes.start(
            twistd_argv(self.workdir, self.ini), cwd=str(self.workdir), stdout=subprocess.DEVNULL
        )
        wait_listening(self.port, self.gateway, timeout=300.0)
        return time.monotonic() - started

    def _start_clients(self) -> None:
        the_plan = self.plan
        first = 0
        for index, (count, rate) in enumerate(zip(
            split(the_plan.terminals, the_plan.clients),
            split(self.args.data_rate, the_plan.clients), strict=True,
        )):  # fmt: skip
            argv = [PYTHON, str(BENCH / "scale_client.py"), "--port", str(self.port),
                    "--bind", f"127.0.0.{2 + index}", "--first", str(first),
                    "--count", str(count), "--heartbeat", f"{the_plan.heartbeat:.3f}",
                    "--data-rate", str(rate)]  # fmt: skip
            self.clients.append(self.processes.start(argv, stdin=True))
            first += count

    def _pids(self) -> list[int]:
        assert self.gateway is not None
        return [self.gateway.pid] + [client.pid for client in self.clients]

    def _storm(self) -> Storm:
        """Every terminal not logged in connects now; until all are, or the deadline."""
        storm = Storm()
        before = [Cpu.of(pid) for pid in self._pids()]
        deadline = self.args.storm_timeout
        send(self.clients, f"connect {time.monotonic():.6f} {deadline}")
        reports = self.lines.wait(self.clients, "connected", deadline + 60)
        after = [Cpu.of(pid) for pid in self._pids()]
        storm.gateway, *storm.clients = (b - a for a, b in zip(before, after, strict=True))
        completions = sorted(ms for r in reports for ms in r["completions_ms"])
        storm.logged_in = len(completions)
        if completions:
            storm.seconds = completions[-1] / 1000
            storm.p50 = percentile(completions, 0.5) / 1000
        for r in reports:
            for why, n in r["failures"].items():
                storm.failures[why] = storm.failures.get(why, 0) + n
        return storm

    def _steady(self) -> None:
        args, result = self.args, self.result
        assert self.gateway is not None
        send(self.clients, f"steady {args.warmup} {args.duration}")
        time.sleep(args.warmup)
        before = [Cpu.of(pid) for pid in self._pids()]
        started = time.monotonic()
        reports = self.lines.wait(self.clients, "steady", args.duration + 60)
        after = [Cpu.of(pid) for pid in self._pids()]
        result.steady_wall = time.monotonic() - started
        result.steady_gateway, *result.steady_clients = (
            b - a for a, b in zip(before, after, strict=True)
        )
        memory = memory_kb(self.gateway.pid)
        result.rss_steady_kb, result.hwm_kb = memory["VmRSS"], memory["VmHWM"]
        result.heartbeats = sorted(x for r in reports for x in r["heartbeat_us"])
        result.datas = sorted(x for r in reports for x in r["data_us"])
        result.steady_logged_in = sum(r["logged_in"] for r in reports)
        result.dropped = sum(r["dropped"] for r in reports)
        result.reconnected = sum(r["reconnected"] for r in reports)

    def stop(self) -> None:
        for client in self.clients:
            self.processes.stop(client, exiting=STOP_GRACE)
        self.processes.stop_all()


# --- report ----------------------------------------------------------------------------------


def report(the_plan: Plan, result: Result, args: argparse.Namespace) -> None:
    n = the_plan.terminals
    print(f"\n{the_plan.statement()}")
    print(f"Gateway process: RLIMIT_NOFILE soft {result.gateway_limits[0]}, hard "
          f"{result.gateway_limits[1]} (/proc/PID/limits); [tcp] max_connections = {n}, "
          f"max_unauthenticated_per_host = {n}.")  # fmt: skip
    print(
        f"Provisioned {the_plan.asked:,} terminals in {result.provision_seconds:.1f} s into "
        f"{result.database} ({filesystem(result.database.parent)}); "
        f"{the_plan.clients} client processes from 127.0.0.2-127.0.0.{1 + the_plan.clients}, "
        f"at most {the_plan.per_client:,} terminals each."
    )
    rate = n / the_plan.heartbeat
    if the_plan.compressed:
        print(
            f"Heartbeat: each terminal every {the_plan.heartbeat:.1f} s, COMPRESSED time: "
            f"{rate:,.0f}/s at the gateway, the rate "
            f"{rate * REAL_HEARTBEAT:,.0f} terminals send at the real 90 s."
        )
    else:
        print(f"Heartbeat: each terminal every {the_plan.heartbeat:g} s (real time), "
              f"{rate:,.0f}/s at the gateway.")  # fmt: skip
    print(
        f"TRANSPARENT_DATA trickle: {args.data_rate:g}/s. Steady state measured over "
        f"{args.duration:g} s after {args.warmup:g} s: {len(result.heartbeats):,} heartbeats, "
        f"{len(result.datas):,} data messages; {result.steady_logged_in:,} logged in, "
        f"{result.dropped} dropped by the gateway ({result.reconnected} reconnected)."
    )
    wall = result.steady_wall
    print(f"CPU at steady state: gateway {result.steady_gateway.show(wall)}; clients "
          + ", ".join(c.show(wall) for c in result.steady_clients))  # fmt: skip

    def ms(values: list[int], fraction: float) -> float:
        return percentile(values, fraction) / 1000

    per_conn = (result.rss_steady_kb - result.rss_idle_kb) / max(n, 1)
    rss_mb = result.rss_steady_kb / 1024
    at_target = rss_mb + per_conn * (TARGET_TERMINALS - n) / 1024
    hb99 = ms(result.heartbeats, 0.99)
    storm = result.storm
    extrapolated = TARGET_TERMINALS / storm.rate if storm.rate == storm.rate else float("nan")
    print(f"\n{'figure':<44} {'measured':>22} {'target':>16} {'':>7}")
    print("-" * 92)
    rows: list[tuple[str, str, str, Any]] = [
        ("gateway RSS at steady state (MiB)", f"{rss_mb:,.0f}", "", None),
        ("  idle, before logins / peak (VmHWM) (MiB)",
         f"{result.rss_idle_kb / 1024:,.0f} / {result.hwm_kb / 1024:,.0f}", "", None),
        ("  per connected terminal (KiB)", f"{per_conn:.1f}", "", None),
        (f"  at {TARGET_TERMINALS:,} terminals (MiB)"
         + (" EXTRAPOLATED" if n < TARGET_TERMINALS else ""),
         f"{at_target:,.0f}", f"<= {TARGET_RSS_MB:,}", at_target <= TARGET_RSS_MB),
        ("heartbeat answer p50 / p99 (ms)",
         f"{ms(result.heartbeats, 0.5):.2f} / {hb99:.2f}",
         f"p99 <= {TARGET_HEARTBEAT_P99_MS:g}", hb99 <= TARGET_HEARTBEAT_P99_MS),
        ("TRANSPARENT_DATA answer p50 / p99 (ms)",
         f"{ms(result.datas, 0.5):.2f} / {ms(result.datas, 0.99):.2f}", "", None),
        ("first login of all (s) / logins/s",
         f"{result.first.seconds:.1f} / {result.first.rate:,.0f}", "", None),
        ("gateway stop (SIGTERM) / restart to listening (s)",
         f"{result.stop_seconds:.1f} / {result.restart_seconds:.1f}", "", None),
        (f"storm: all {n:,} logged in after (s)", f"{storm.seconds:.1f}",
         f"<= {TARGET_STORM_SECONDS:g}" if n >= TARGET_TERMINALS else "",
         storm.seconds <= TARGET_STORM_SECONDS and storm.logged_in == n
         if n >= TARGET_TERMINALS else None),
        ("  logins/s (all / by the median)", f"{storm.rate:,.0f} / "
         f"{n / 2 / storm.p50 if storm.p50 else float('nan'):,.0f}",
         f">= {TARGET_LOGINS_PER_SECOND:,}", storm.rate >= TARGET_LOGINS_PER_SECOND),
    ]  # fmt: skip
    if n < TARGET_TERMINALS:
        rows.append((f"  {TARGET_TERMINALS:,} at that rate (s) EXTRAPOLATED",
                     f"{extrapolated:.1f}", f"<= {TARGET_STORM_SECONDS:g}",
                     extrapolated <= TARGET_STORM_SECONDS))  # fmt: skip
    for name, measured, target, met in rows:
        print(f"{name:<44} {measured:>22} {target:>16} {'' if met is None else verdict(met):>7}")
    if storm.logged_in < n:
        print(f"\nStorm: only {storm.logged_in:,} of {n:,} logged in within "
              f"{args.storm_timeout:g} s.")  # fmt: skip
    print(f"Storm CPU: gateway {storm.gateway.show(storm.seconds)}; clients "
          + ", ".join(c.show(storm.seconds) for c in storm.clients))  # fmt: skip
    print(f"Failed login attempts seen by the clients (retried after 1-2 s): first login "
          f"{result.first.failures or 'none'}; storm {storm.failures or 'none'}.")  # fmt: skip
    counters = result.counters
    refusals = {labels: v for labels, v in counters.get("m2mgw_refusals_total", {}).items() if v}
    logins = {labels: v for labels, v in counters.get("m2mgw_logins_total", {}).items() if v}
    connections = {
        name.removeprefix("m2mgw_tcp_connections_").removesuffix("_total"): values.get("", 0)
        for name, values in counters.items()
        if name.startswith("m2mgw_tcp_connections_") and name.endswith("_total")
    }
    print("Gateway counters over both incarnations (/metrics): refusals "
          f"{_labels(refusals) or 'none'}; LOGIN_ACKs {_labels(logins)}; TCP connections "
          + ", ".join(f"{k} {v:,.0f}" for k, v in connections.items()))  # fmt: skip


def _labels(values: dict[str, float]) -> str:
    return ", ".join(f"{labels.partition('=')[2].strip(chr(34))} {v:,.0f}"
                     for labels, v in values.items())  # fmt: skip


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", type=int, default=TARGET_TERMINALS,
                        help="terminals to provision and connect (default 100000; "
                        "2000 for a quick run)")  # fmt: skip
    parser.add_argument("--clients", type=int, default=4,
                        help="client processes, at least (more when their open-files limit "
                        "needs it)")  # fmt: skip
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of steady state measured")  # fmt: skip
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds of steady state before measuring")  # fmt: skip
    parser.add_argument("--heartbeat", type=float, default=None,
                        help="seconds between a terminal's heartbeats (default 90, "
                        "compressed when the limit cuts --terminals, to keep their "
                        "rate)")  # fmt: skip
    parser.add_argument("--data-rate", type=int, default=50,
                        help="TRANSPARENT_DATA per second over all terminals")  # fmt: skip
    parser.add_argument("--storm-timeout", type=float, default=180.0,
                        help="seconds a login round may take")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    if args.terminals < 1 or args.clients < 1 or args.clients > 250:
        parser.error("--terminals must be positive and --clients between 1 and 250")
    the_plan = plan(args)
    log(the_plan.statement())
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="m2mgw-bench-scale-"))
    bench = Bench(args, the_plan, workdir)
    at_start = machine()
    try:
        result = bench.run()
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
    report(the_plan, result, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

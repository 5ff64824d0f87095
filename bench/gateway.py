"""Gateway under load against a bare framing echo server, in the same run (issue 3).

Run as ``.venv/bin/python bench/gateway.py [--sizes 1000,5000,10000] [--duration S]``.
For each size N, on loopback only:

1. the gateway (``twistd -n m2mgw``, temp ini and a copy of a freshly provisioned
   SQLite database holding every terminal) starts in its own process; its idle RSS
   is read from ``/proc/PID/status`` once it listens;
2. ``--clients`` load processes (``load_client.py``) connect and log in N terminals;
   the gateway's RSS is read again ("connected");
3. the clients keep ``--window`` requests in flight (HEART_BEAT and signed
   TRANSPARENT_DATA in turn, round-robin over all N terminals) for a warm-up and
   ``--duration`` seconds, measuring answers/s and answer latency themselves;
4. the same N connections and the same load go to ``bare_server.py``, which only
   frames (``StreamFramer``) and echoes.

It prints connections held, answers/s, p50/p99 latency, the server's and the
clients' CPU, the gateway's RSS per connection and the gateway/bare ratio. Every
process it starts is stopped at the end, also on Ctrl-C or an error, and dies with
it if it is killed (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import (
    APP,
    BASE_KEY,
    DOWNLINK_PASSWORD,
    UPLINK_PASSWORD,
    Identity,
    raise_nofile_limit,
)

from m2mgw.config import load_config
from m2mgw.core.model import CredentialSet, Terminal, TerminalState
from m2mgw.core.registry.sqlite import SqliteRegistry
from m2mgw.tools.cli import with_registry

BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
TWISTD = str(Path(PYTHON).with_name("twistd"))
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1
STOP_GRACE = 10.0


# --- processes ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the benchmark dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Processes:
    """Every child started by the benchmark, so that all of them are stopped."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: Sequence[str], *, stdin: bool = False, stdout: int = subprocess.PIPE,
        **kwargs: Any,
    ) -> subprocess.Popen[bytes]:  # fmt: skip
        """``argv`` with its output on a pipe; with ``stdin`` also fed through a pipe."""
        child = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=stdout,
            preexec_fn=_die_with_parent,
            **kwargs,
        )
        self.children.append(child)
        return child

    def stop(self, child: subprocess.Popen[bytes], exiting: float = 0.0) -> None:
        """Close its input (a load client's cue to quit) and wait ``exiting`` seconds,
        then SIGTERM, then SIGKILL after a grace period; always reaped."""
        if child.stdin is not None and not child.stdin.closed:
            try:
                child.stdin.close()
            except BrokenPipeError:
                pass
        if exiting:
            try:
                child.wait(exiting)
            except subprocess.TimeoutExpired:
                pass
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in list(reversed(self.children)):
            self.stop(child)


def read_json_lines(
    children: Sequence[subprocess.Popen[bytes]], event: str, timeout: float
) -> list[dict[str, Any]]:
    """The first ``{"event": event}`` line of each child, in the children's order."""
    found: dict[int, dict[str, Any]] = {}
    selector = selectors.DefaultSelector()
    buffers: dict[int, bytearray] = {}
    for index, child in enumerate(children):
        assert child.stdout is not None
        selector.register(child.stdout, selectors.EVENT_READ, index)
        buffers[index] = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while len(found) < len(children):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"no {event!r} from {len(children) - len(found)} client(s)")
            for key, _ in selector.select(remaining):
                index = key.data
                chunk = os.read(key.fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"client {index} exited before {event!r}")
                buffer = buffers[index]
                buffer += chunk
                while b"\n" in buffer:
                    line, _, rest = buffer.partition(b"\n")
                    buffer[:] = rest
                    record = json.loads(line)
                    if record.get("event") == event:
                        found[index] = record
                        selector.unregister(key.fileobj)
                        break
    finally:
        selector.close()
    return [found[i] for i in range(len(children))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, child: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"server exited with {child.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process from ``/proc/PID/stat``."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def open_sockets(pid: int) -> int:
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:")
        except OSError:
            pass
    return count


# --- the gateway's files -------------------------------------------------------------------


def write_ini(path: Path, database: Path, port: int, max_connections: int) -> None:
    path.write_text(
        f"""[registry]
database = {database}
[tcp]
listen = tcp:{port}:interface=127.0.0.1:backlog=1024
max_connections = {max_connections}
# Every load client connects from 127.0.0.1, hundreds at a time before they log in.
max_unauthenticated_per_host = {max_connections}
[udp]
enabled = no
[http]
listen = none
public_url = http://127.0.0.1:1
[admin]
listen = none
""",
        encoding="ascii",
    )


def bench_terminal(index: int) -> Terminal:
    """Terminal ``index`` of :mod:`benchlib`, pre-registered, bound to one application."""
    identity = Identity.of(index)
    return Terminal(
        imei=identity.imei,
        imsi=identity.imsi,
        serial=identity.serial,
        state=TerminalState.REGISTERED,
        current=CredentialSet(
            uplink_password=UPLINK_PASSWORD,
            downlink_password=DOWNLINK_PASSWORD,
            base_key=BASE_KEY,
        ),
        apps={APP},
        default_app=APP,
    )


def provision(ini: Path, count: int) -> None:
    """Terminals 0..count-1 in one registry session: the adds are queued back to back
    on the registry's single writer, far faster than one CLI call per terminal."""

    def add_all(registry: SqliteRegistry) -> Any:
        from twisted.internet.defer import gatherResults

        return gatherResults([registry.add(bench_terminal(i)) for i in range(count)])

    # with_registry runs a reactor, which takes SIGINT/SIGTERM over for good: restore
    # ours, or Ctrl-C would no longer stop the benchmark.
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with_registry(load_config(str(ini)), add_all, create=True)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


# --- one measurement -----------------------------------------------------------------------


@dataclass
class Measurement:
    """One server under one load, as printed."""

    target: str
    size: int
    connected: int = 0
    login_seconds: float = 0.0
    held: int = 0
    rate: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    server_cpu: float = 0.0
    client_cpu: list[float] = field(default_factory=list)
    rss_idle_kb: int = 0
    rss_connected_kb: int = 0
    rss_loaded_kb: int = 0
    server_sockets: int = 0
    failures: dict[str, int] = field(default_factory=dict)


def percentile(values: list[int], fraction: float) -> float:
    index = min(len(values) - 1, int(len(values) * fraction))
    return values[index] / 1000.0


class Bench:
    """Runs the sizes against both servers and keeps the children in check."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.processes = Processes()
        self.template = workdir / "template.db"

    def prepare(self) -> None:
        count = max(self.args.sizes)
        ini = self.workdir / "provision.ini"
        write_ini(ini, self.template, 0, count)
        started = time.monotonic()
        provision(ini, count)
        log(f"provisioned {count} terminals in {time.monotonic() - started:.1f} s")

    def gateway(self, size: int) -> Measurement:
        run = self.workdir / f"gw-{size}"
        run.mkdir()
        database = run / "m2mgw.db"
        shutil.copyfile(self.template, database)
        port = free_port()
        ini = run / "m2mgw.ini"
        write_ini(ini, database, port, max(size, 10_000))
        argv = [TWISTD, "-n", "--pidfile=", "-l", str(run / "twistd.log"),
                "m2mgw", "--config", str(ini)]  # fmt: skip
        server = self.processes.start(argv, cwd=str(run), stdout=subprocess.DEVNULL)
        try:
            wait_listening(port, server)
            time.sleep(1.0)  # let start-up garbage settle before the idle reading
            measurement = Measurement("gateway", size, rss_idle_kb=rss_kb(server.pid))
            self._load(measurement, server, port, login=True)
        finally:
            self.processes.stop(server)
        return measurement

    def bare(self, size: int) -> Measurement:
        server = self.processes.start([PYTHON, str(BENCH / "bare_server.py")])
        try:
            port = int(read_line(server.stdout).split()[1])
            measurement = Measurement("bare", size, rss_idle_kb=rss_kb(server.pid))
            self._load(measurement, server, port, login=False)
        finally:
            self.processes.stop(server)
        return measurement

    def _load(
        self, result: Measurement, server: subprocess.Popen[bytes], port: int, *, login: bool
    ) -> None:
        args = self.args
        shares = split(result.size, args.clients)
        windows = split(args.window, args.clients)
        clients = []
        first = 0
        for share, window in zip(shares, windows, strict=True):
            argv = [PYTHON, str(BENCH / "load_client.py"), "--port", str(port), "--first",
                    str(first), "--count", str(share), "--window", str(window)]  # fmt: skip
            clients.append(self.processes.start(argv + (["--login"] if login else []), stdin=True))
            first += share
        try:
            started = time.monotonic()
            ready = read_json_lines(clients, "ready", args.login_timeout)
            result.login_seconds = time.monotonic() - started
            result.connected = sum(r["ok"] for r in ready)
            for r in ready:
                for why, n in r["failures"].items():
                    result.failures[why] = result.failures.get(why, 0) + n
            time.sleep(1.0)
            result.rss_connected_kb = rss_kb(server.pid)
            result.server_sockets = open_sockets(server.pid)
            for client in clients:
                assert client.stdin is not None
                client.stdin.write(f"go {args.warmup} {args.duration}\n".encode())
                client.stdin.flush()
            time.sleep(args.warmup)
            cpu_start, wall_start = cpu_seconds(server.pid), time.monotonic()
            results = read_json_lines(clients, "result", args.duration + 60)
            result.server_cpu = (cpu_seconds(server.pid) - cpu_start) / (
                time.monotonic() - wall_start
            )
            result.rss_loaded_kb = rss_kb(server.pid)
            latencies = sorted(x for r in results for x in r["latencies_us"])
            result.held = sum(r["held"] for r in results)
            result.rate = sum(r["answers"] / r["seconds"] for r in results)
            result.errors = sum(r["errors"] + r["strays"] + r["lost"] for r in results)
            result.client_cpu = [r["cpu"] / r["seconds"] for r in results]
            if latencies:
                result.p50_ms = percentile(latencies, 0.50)
                result.p99_ms = percentile(latencies, 0.99)
        finally:
            for client in clients:
                self.processes.stop(client, exiting=STOP_GRACE)


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` shares differing by at most one."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def read_line(stream: IO[bytes] | None, timeout: float = 30.0) -> str:
    assert stream is not None
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    try:
        if not selector.select(timeout):
            raise RuntimeError("server printed nothing")
    finally:
        selector.close()
    line = stream.readline().decode()
    if not line:
        raise RuntimeError("server exited before it listened")
    return line


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- report ----------------------------------------------------------------------------------


def report(pairs: list[tuple[Measurement, Measurement]], args: argparse.Namespace) -> None:
    print(
        f"\nLoad: {args.clients} client process(es), {args.window} requests in flight, "
        f"HEART_BEAT / TRANSPARENT_DATA alternating; {args.warmup:g} s warm-up, "
        f"{args.duration:g} s measured. 'srv CPU' counts all the server's threads "
        "(the gateway's SQLite writer included); 'held': connections open at the clients "
        "after the load, 'sockets': the server's open sockets (listener included) before it.\n"
    )
    head = (
        f"{'terminals':>9} {'target':<8} {'held':>6} {'sockets':>7} {'login s':>7} "
        f"{'answers/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'srv CPU':>7} {'client CPU':>11} "
        f"{'errors':>6}"
    )
    print(head)
    print("-" * len(head))
    for pair in pairs:
        for m in pair:
            client_cpu = "+".join(f"{c:.0%}" for c in m.client_cpu)
            login = f"{m.login_seconds:.1f}" if m.target == "gateway" else "-"
            print(
                f"{m.size:>9} {m.target:<8} {m.held:>6} {m.server_sockets:>7} {login:>7} "
                f"{m.rate:>10.0f} {m.p50_ms:>7.2f} {m.p99_ms:>7.2f} {m.server_cpu:>7.0%} "
                f"{client_cpu:>11} {m.errors:>6}"
            )
            if m.failures:
                print(f"{'':>9} connected {m.connected} of {m.size}; failures: {m.failures}")
    print(
        "\nGateway RSS (MiB) idle / with the terminals connected / after the load; "
        "per connection (KiB) over idle.\nRatio gateway/bare of answers/s, and of answers "
        "per server CPU-second (the bare server is not CPU-bound here)."
    )
    head = (
        f"{'terminals':>9} {'idle':>7} {'conn.':>7} {'loaded':>7} {'KiB/conn':>9} "
        f"{'KiB/conn':>9} {'rate':>6} {'per-CPU':>7}"
    )
    print(head)
    print(f"{'':>9} {'':>7} {'':>7} {'':>7} {'conn.':>9} {'loaded':>9} {'ratio':>6} {'ratio':>7}")
    print("-" * len(head))
    for gw, bare in pairs:
        held = max(gw.held, 1)
        print(
            f"{gw.size:>9} {gw.rss_idle_kb / 1024:>7.1f} {gw.rss_connected_kb / 1024:>7.1f} "
            f"{gw.rss_loaded_kb / 1024:>7.1f} "
            f"{(gw.rss_connected_kb - gw.rss_idle_kb) / held:>9.1f} "
            f"{(gw.rss_loaded_kb - gw.rss_idle_kb) / held:>9.1f} "
            f"{ratio(gw.rate, bare.rate):>6.2f} "
            f"{ratio(gw.rate / gw.server_cpu, bare.rate / bare.server_cpu):>7.2f}"
        )
    largest = pairs[-1][0]
    rss_ok = largest.rss_loaded_kb < 1024 * 1024
    print(
        f"\nAims (issue 3): {largest.size} terminals under 1 GB RSS: "
        f"{largest.rss_loaded_kb / 1024:.0f} MiB, {'met' if rss_ok else 'MISSED'}; "
        "answers/s at least 0.3 of the bare server's: "
        + ", ".join(f"{gw.size}: {ratio(gw.rate, bare.rate):.2f}" for gw, bare in pairs)
    )


def ratio(value: float, floor: float) -> float:
    return value / floor if floor else float("nan")


# --- main ------------------------------------------------------------------------------------


def sizes(text: str) -> list[int]:
    values = sorted({int(part) for part in text.split(",") if part.strip()})
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive integers")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=sizes,
        default=[1000, 5000, 10000],
        help="connection counts, comma separated (default 1000,5000,10000)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--clients", type=int, default=2, help="load client processes")
    parser.add_argument(
        "--window", type=int, default=128, help="requests in flight, over all clients"
    )
    parser.add_argument("--login-timeout", type=float, default=300.0,
                        help="seconds allowed for connecting and logging in")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    if args.window < args.clients:
        parser.error("--window must be at least --clients")
    raise_nofile_limit(max(args.sizes) + 1024)  # inherited by every child
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="m2mgw-bench-"))
    bench = Bench(args, workdir)
    pairs: list[tuple[Measurement, Measurement]] = []
    try:
        bench.prepare()
        for size in args.sizes:
            log(f"{size} terminals: gateway ...")
            gateway = bench.gateway(size)
            log(f"{size} terminals: bare server ...")
            pairs.append((gateway, bench.bare(size)))
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except RuntimeError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    finally:
        bench.processes.stop_all()
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report(pairs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

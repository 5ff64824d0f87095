"""What the benchmarks' orchestrators share: child processes, /proc readings, the gateway.

``gateway.py``, ``scale.py`` and ``app.py`` each start a gateway (``twistd -n m2mgw``
on a temp ini and SQLite file) and load processes that talk JSON lines on their
standard streams; this module starts and always stops them, reads their CPU time and
memory from ``/proc``, and provisions the registry in bulk before the gateway opens it.
"""

from __future__ import annotations

import ctypes
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from benchlib import APP, BASE_KEY, DOWNLINK_PASSWORD, UPLINK_PASSWORD, Identity

from m2mgw.app import provision as app_provision
from m2mgw.config import load_config
from m2mgw.core.model import CredentialSet, Terminal, TerminalState
from m2mgw.core.registry.sqlite import SqliteRegistry
from m2mgw.tools.cli import with_registry

BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable
TWISTD = str(Path(PYTHON).with_name("twistd"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1
STOP_GRACE = 10.0


def log(text: str) -> None:
    """Progress on stderr; the report goes to stdout."""
    print(text, file=sys.stderr, flush=True)


# --- processes ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the benchmark dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Processes:
    """Every child started by a benchmark, so that all of them are stopped."""

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
        """Close its input (a load process's cue to quit) and wait ``exiting`` seconds,
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


def send(children: Iterable[subprocess.Popen[bytes]], line: str) -> None:
    """One command line to each child's standard input."""
    for child in children:
        assert child.stdin is not None
        child.stdin.write(line.encode() + b"\n")
        child.stdin.flush()


class Lines:
    """JSON lines from children's standard output, read without blocking on any one.

    Lines that arrive while a caller waits for another event are kept for the next
    call, so a child may report several events in a row.
    """

    def __init__(self) -> None:
        self._buffers: dict[int, bytearray] = {}
        self._pending: dict[int, list[dict[str, Any]]] = {}

    def _take(self, fd: int, event: str) -> dict[str, Any] | None:
        records = self._pending.setdefault(fd, [])
        for index, record in enumerate(records):
            if record.get("event") == event:
                return records.pop(index)
        return None

    def wait(
        self, children: Sequence[subprocess.Popen[bytes]], event: str, timeout: float
    ) -> list[dict[str, Any]]:
        """The next ``{"event": event}`` line of each child, in the children's order."""
        found: dict[int, dict[str, Any]] = {}
        fds = {}
        for index, child in enumerate(children):
            assert child.stdout is not None
            fd = child.stdout.fileno()
            record = self._take(fd, event)
            if record is None:
                fds[fd] = index
            else:
                found[index] = record
        selector = selectors.DefaultSelector()
        for fd, index in fds.items():
            selector.register(fd, selectors.EVENT_READ, index)
        deadline = time.monotonic() + timeout
        try:
            while len(found) < len(children):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = len(children) - len(found)
                    raise RuntimeError(f"no {event!r} from {missing} process(es) in {timeout:g} s")
                for key, _ in selector.select(remaining):
                    fd, index = key.fd, key.data
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        raise RuntimeError(f"process {index} exited before {event!r}")
                    buffer = self._buffers.setdefault(fd, bytearray())
                    buffer += chunk
                    while b"\n" in buffer:
                        line, _, rest = buffer.partition(b"\n")
                        buffer[:] = rest
                        self._pending.setdefault(fd, []).append(json.loads(line))
                    record = self._take(fd, event)
                    if record is not None:
                        found[index] = record
                        selector.unregister(fd)
        finally:
            selector.close()
        return [found[i] for i in range(len(children))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, child: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """Until something accepts on 127.0.0.1:``port``; fails if ``child`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"server exited with {child.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def read_line(stream: IO[bytes] | None, timeout: float = 30.0) -> str:
    """One line a child prints at start (``listening PORT``)."""
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


# --- /proc -----------------------------------------------------------------------------------


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (the peak) of a process, in KiB."""
    found = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                found[name] = int(value.split()[0])
    return found


def rss_kb(pid: int) -> int:
    return memory_kb(pid)["VmRSS"]


@dataclass(frozen=True)
class Cpu:
    """User and system CPU seconds of a process (all its threads)."""

    user: float
    system: float

    @classmethod
    def of(cls, pid: int) -> Cpu:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return cls(int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS)

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.user - other.user, self.system - other.system)

    @property
    def total(self) -> float:
        return self.user + self.system

    def show(self, wall: float) -> str:
        """``user+sys s = % of wall``, as the reports print it."""
        share = self.total / wall if wall else float("nan")
        return f"{self.user:.2f}+{self.system:.2f} s = {share:.0%}"


def open_sockets(pid: int) -> int:
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:")
        except OSError:
            pass
    return count


def nofile_limits(pid: int) -> tuple[str, str]:
    """The soft and hard RLIMIT_NOFILE of a running process, as /proc shows them."""
    with open(f"/proc/{pid}/limits", encoding="ascii") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return soft, hard
    raise RuntimeError(f"no open-files limit for {pid}")


def filesystem(path: Path) -> str:
    """The type of the filesystem holding ``path`` (its commits' cost depends on it)."""
    best, kind = "", "?"
    with open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            _, mount, fstype, *_ = line.split()
            inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, kind = mount, fstype
    return kind


# --- the gateway -------------------------------------------------------------------------------


def gateway_ini(
    database: Path, key: Path, port: int, max_connections: int, *, http: str = "none",
    extra: str = "",
) -> str:  # fmt: skip
    """A gateway on loopback with the terminal TCP bearer, on its own database.

    The master key lives beside the template database, so that every copy of the
    database opens with it; ``http`` is the SOAP and file listener (off by default);
    ``extra`` adds sections at the end.
    """
    return f"""[registry]
database = {database}
master_key_file = {key}
[tcp]
listen = tcp:{port}:interface=127.0.0.1:backlog=4096
max_connections = {max_connections}
# Every load process connects from one address, thousands at a time before they log in.
max_unauthenticated_per_host = {max_connections}
[udp]
enabled = no
[http]
listen = {http}
public_url = http://127.0.0.1:1
files_dir = {database.parent / "files"}
[admin]
listen = none
{extra}"""


def twistd_argv(run: Path, ini: Path) -> list[str]:
    """``twistd -n m2mgw`` on ``ini``, logging to ``run/twistd.log``."""
    return [TWISTD, "-n", "--pidfile=", "-l", str(run / "twistd.log"),
            "m2mgw", "--config", str(ini)]  # fmt: skip


def bench_terminal(index: int, apps: Iterable[str] = (APP,)) -> Terminal:
    """Terminal ``index`` of :mod:`benchlib`, pre-registered, bound to ``apps``."""
    identity = Identity.of(index)
    bound = set(apps)
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
        apps=bound,
        default_app=min(bound),
    )


def provision(
    ini: Path, terminals: Iterable[Terminal], apps: Iterable[dict[str, Any]] = ()
) -> None:
    """Add ``terminals`` in one registry session, then the applications ``apps`` (the
    admin API's JSON, which binds their terminals). The adds are queued back to back on
    the registry's single writer, far faster than one CLI call each.

    Runs a reactor, so at most once per process.
    """

    def add_all(registry: SqliteRegistry) -> Any:
        from twisted.internet.defer import gatherResults

        done = gatherResults([registry.add(terminal) for terminal in terminals])
        for params in apps:
            done.addCallback(lambda _, params=params: app_provision.provision(registry, params))
        return done

    # with_registry runs a reactor, which takes SIGINT/SIGTERM over for good: restore
    # ours, or Ctrl-C would no longer stop the benchmark.
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with_registry(load_config(str(ini)), add_all, create=True)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


# --- figures -----------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The value at ``fraction`` of an ascending sequence (nan when empty)."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` shares differing by at most one."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def ratio(value: float, floor: float) -> float:
    return value / floor if floor else float("nan")


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"

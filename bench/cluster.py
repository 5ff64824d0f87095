"""Several gateway nodes on one PostgreSQL against one SQLite gateway, in the same run
(issue #13).

Run as ``.venv/bin/python bench/cluster.py [--terminals 1000] [--nodes 1,2,3]``. On
loopback only, for the SQLite gateway and then for 1, 2 and 3 nodes on one throw-away
PostgreSQL cluster (``tests/pgcluster.py``, a fresh database each time):

1. the terminals are provisioned (SQLite: a database file; PostgreSQL: through the
   registry, in a child process);
2. the node processes (``twistd -n m2mgw``) start, each with its own ini and port;
   node ``k`` of ``N`` gets the ``k``-th share of the terminals and a load client
   (``load_client.py``, through ``harness.py`` as ``gateway.py`` uses them) that logs
   them in on that node;
3. the clients keep ``--window`` requests in flight in all (HEART_BEAT and signed
   TRANSPARENT_DATA in turn, ``closed`` loop), for a warm-up and ``--duration``
   measured seconds.

It prints the aggregate terminal answers/s, latency, each node's CPU and the
database server's, and answers per node CPU-second and per CPU-second of nodes and
database together: on a small machine the nodes share the same cores, so more nodes
add no throughput; what the table shows is what each answer costs when the registry
is a shared PostgreSQL instead of the node's own SQLite file.
"""

from __future__ import annotations

import argparse
import os
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

from harness import (
    BENCH,
    CLOCK_TICKS,
    PYTHON,
    STOP_GRACE,
    TWISTD,
    Cpu,
    Lines,
    Processes,
    bench_terminal,
    free_port,
    log,
    percentile,
    provision,
    send,
    split,
    wait_listening,
)

from tests.pgcluster import PgCluster


def write_ini(path: Path, port: int, connections: int, registry: dict[str, str]) -> None:
    """A node's ini: TCP terminals only, on ``port``; ``registry`` its keys."""
    keys = "".join(f"{key} = {value}\n" for key, value in registry.items())
    path.write_text(
        f"""[registry]
{keys}[tcp]
listen = tcp:{port}:interface=127.0.0.1:backlog=1024
max_connections = {connections}
max_unauthenticated_per_host = {connections}
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


def provision_postgres(url: str, key: Path, count: int) -> None:
    """Terminals 0..count-1 into the database at ``url`` (in this, a child process)."""
    from twisted.internet import task
    from twisted.internet.defer import ensureDeferred, gatherResults

    from m2mgw.core.postgres.registry import PostgresRegistry

    async def add_all(reactor: Any) -> None:
        registry = PostgresRegistry(url, reactor, master_key_file=str(key), node="provision")
        await registry.open()
        try:
            await gatherResults([registry.add(bench_terminal(i)) for i in range(count)])
        finally:
            await registry.close()

    task.react(lambda reactor: ensureDeferred(add_all(reactor)))


def postgres_cpu(cluster: PgCluster) -> float:
    """CPU seconds of the database server so far: the postmaster and its children."""
    assert cluster.root is not None
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(name) == postmaster or int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


@dataclass
class Run:
    """One configuration under the load, as printed."""

    backend: str
    nodes: int
    terminals: int
    connected: int = 0
    rate: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    node_cpu: list[float] = field(default_factory=list)
    db_cpu: float = 0.0

    @property
    def per_node_cpu(self) -> float:
        return self.rate / sum(self.node_cpu) if sum(self.node_cpu) else 0.0

    @property
    def per_cpu(self) -> float:
        spent = sum(self.node_cpu) + self.db_cpu
        return self.rate / spent if spent else 0.0


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.processes = Processes()

    def sqlite(self) -> Run:
        run = self.workdir / "sqlite"
        run.mkdir()
        ini = run / "m2mgw.ini"
        port = free_port()
        write_ini(ini, port, self.args.terminals + 64, {"database": str(run / "m2mgw.db")})
        provision(ini, [bench_terminal(i) for i in range(self.args.terminals)])
        return self._measure(Run("sqlite", 1, self.args.terminals), [(ini, port)], None)

    def postgres(self, cluster: PgCluster, count: int) -> Run:
        run = self.workdir / f"pg-{count}"
        run.mkdir()
        url = cluster.create_schema(f"bench_{count}")
        key = run / "m2mgw.key"
        child = self.processes.start([PYTHON, __file__, "--provision", url, str(key),
                                      str(self.args.terminals)], stdout=subprocess.DEVNULL)
        if child.wait() != 0:
            raise RuntimeError("provisioning the PostgreSQL registry failed")
        self.processes.children.remove(child)
        nodes = []
        for n in range(count):
            home = run / f"node-{n}"
            home.mkdir()
            ini, port = home / "m2mgw.ini", free_port()
            write_ini(ini, port, self.args.terminals + 64, {
                "url": url, "node": f"n{n}", "master_key_file": str(key),
                "database": str(home / "unused.db")})
            nodes.append((ini, port))
        return self._measure(Run("postgresql", count, self.args.terminals), nodes, cluster)

    def _measure(self, result: Run, nodes: list[tuple[Path, int]],
                 cluster: PgCluster | None) -> Run:
        args = self.args
        servers = []
        clients: list[subprocess.Popen[bytes]] = []
        try:
            for ini, _ in nodes:
                argv = [TWISTD, "-n", "--pidfile=", "-l", str(ini.parent / "twistd.log"),
                        "m2mgw", "--config", str(ini)]  # fmt: skip
                servers.append(self.processes.start(argv, cwd=str(ini.parent),
                                                    stdout=subprocess.DEVNULL))
            for server, (_, port) in zip(servers, nodes, strict=True):
                wait_listening(port, server)
            first = 0
            shares = split(args.terminals, len(nodes))
            windows = split(args.window, len(nodes))
            for (_, port), share, window in zip(nodes, shares, windows, strict=True):
                argv = [PYTHON, str(BENCH / "load_client.py"), "--port", str(port),
                        "--first", str(first), "--count", str(share), "--window",
                        str(window), "--login"]  # fmt: skip
                clients.append(self.processes.start(argv, stdin=True))
                first += share
            lines = Lines()
            ready = lines.wait(clients, "ready", args.login_timeout)
            result.connected = sum(r["ok"] for r in ready)
            time.sleep(1.0)
            send(clients, f"closed {args.warmup} {args.duration}")
            time.sleep(args.warmup)
            started = [Cpu.of(s.pid) for s in servers]
            db_started = postgres_cpu(cluster) if cluster is not None else 0.0
            wall = time.monotonic()
            results = lines.wait(clients, "result", args.duration + 60)
            elapsed = time.monotonic() - wall
            result.node_cpu = [(Cpu.of(s.pid) - c).total / elapsed
                               for s, c in zip(servers, started, strict=True)]
            if cluster is not None:
                result.db_cpu = (postgres_cpu(cluster) - db_started) / elapsed
            latencies = sorted(x for r in results for x in r["latencies_us"])
            result.rate = sum(r["answers"] / r["seconds"] for r in results)
            result.errors = sum(r["errors"] + r["strays"] + r["lost"] for r in results)
            if latencies:
                result.p50_ms = percentile(latencies, 0.50) / 1000
                result.p99_ms = percentile(latencies, 0.99) / 1000
        finally:
            for client in clients:
                self.processes.stop(client, exiting=STOP_GRACE)
            for server in servers:
                self.processes.stop(server)
        return result


def report(runs: list[Run], args: argparse.Namespace) -> None:
    print(
        f"\n{args.terminals} TCP terminals in all, split evenly over the nodes, each node's "
        f"share driven by its own load client; {args.window} requests in flight in all "
        f"(HEART_BEAT / TRANSPARENT_DATA alternating); {args.warmup:g} s warm-up, "
        f"{args.duration:g} s measured; {os.cpu_count()} cores shared by everything. "
        "'node CPU': each node process (its database threads included), 'db CPU': the "
        "PostgreSQL server's processes; per CPU-second: answers/s over the nodes' CPU, "
        "and over the nodes' and the database's together.\n"
    )
    head = (f"{'registry':<11} {'nodes':>5} {'logged in':>9} {'answers/s':>10} {'p50 ms':>7} "
            f"{'p99 ms':>7} {'node CPU':>15} {'db CPU':>7} {'per node-CPU-s':>14} "
            f"{'per CPU-s':>9} {'errors':>6}")
    print(head)
    print("-" * len(head))
    for r in runs:
        nodes_cpu = "+".join(f"{c:.0%}" for c in r.node_cpu)
        db = f"{r.db_cpu:.0%}" if r.backend != "sqlite" else "-"
        print(f"{r.backend:<11} {r.nodes:>5} {r.connected:>9} {r.rate:>10.0f} {r.p50_ms:>7.2f} "
              f"{r.p99_ms:>7.2f} {nodes_cpu:>15} {db:>7} {r.per_node_cpu:>14.0f} "
              f"{r.per_cpu:>9.0f} {r.errors:>6}")
    base = next((r for r in runs if r.backend == "sqlite"), None)
    if base is not None and base.per_node_cpu:
        print("\nPer CPU-second against the SQLite node: " + ", ".join(
            f"{r.nodes} node(s) {r.per_cpu / base.per_node_cpu:.2f}"
            for r in runs if r.backend != "sqlite"))


def node_counts(text: str) -> list[int]:
    values = sorted({int(part) for part in text.split(",") if part.strip()})
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("node counts must be positive integers")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", type=int, default=1000, help="terminals in all")
    parser.add_argument("--nodes", type=node_counts, default=[1, 2, 3],
                        help="PostgreSQL node counts, comma separated (default 1,2,3)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--window", type=int, default=96, help="requests in flight, in all")
    parser.add_argument("--login-timeout", type=float, default=300.0,
                        help="seconds allowed for connecting and logging in")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--provision", nargs=3, metavar=("URL", "KEY", "COUNT"),
                        help=argparse.SUPPRESS)  # the child that fills a database
    args = parser.parse_args(argv)
    if args.provision:
        url, key, count = args.provision
        provision_postgres(url, Path(key), int(count))
        return 0
    if args.window < max(args.nodes):
        parser.error("--window must be at least the largest node count")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="m2mgw-cluster-bench-"))
    bench = Bench(args, workdir)
    runs: list[Run] = []
    try:
        log("SQLite, one node ...")
        runs.append(bench.sqlite())
        with PgCluster() as cluster:
            for count in args.nodes:
                log(f"PostgreSQL, {count} node(s) ...")
                runs.append(bench.postgres(cluster, count))
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
    report(runs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What keeping each node's cache current costs (issue #13, D-388): the figures.

Run as ``.venv/bin/python bench/cluster_cache.py [--terminals 5000] [--rounds 300]``.
Two registries of two nodes on one throw-away PostgreSQL (``tests/pgcluster.py``),
in one process on the real reactor. Node A changes a terminal's record and tells node
B (``pg_notify`` after the commit, as ``ClusterNode`` does); B hears it on its
``Listener`` and re-reads that record. Printed, in milliseconds: A's commit, the
notification's way to B, B's re-read of one record (what a LOGIN's gate also costs),
the whole change end to end, and B re-reading every record (what a listener's
reconnection costs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import bench_terminal

from tests.pgcluster import PgCluster


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{statistics.median(ordered) * 1000:7.2f} {p99 * 1000:7.2f}"


async def measure(reactor: Any, url: str, key: Path, terminals: int, rounds: int) -> None:
    from twisted.internet.defer import Deferred, gatherResults

    from m2mgw.core.cluster.registry import NodeRegistry
    from m2mgw.core.postgres.connection import Database
    from m2mgw.core.postgres.notify import Listener, notify

    a = NodeRegistry(url, reactor, master_key_file=str(key), node="a")
    await a.open()
    await gatherResults([a.add(bench_terminal(i)) for i in range(terminals)])
    b = NodeRegistry(url, reactor, master_key_file=str(key), node="b")
    await b.open()
    tell = Database(reactor, url, connections=1)
    await tell.open()
    heard: list[Deferred[str]] = []

    def received(channel: str, payload: str) -> None:
        if heard:
            heard.pop(0).callback(payload)

    listener = Listener(reactor, url, ["bench"], received)
    await listener.start()
    commits, hops, reads, whole = [], [], [], []
    serial = bench_terminal(terminals // 2).serial or ""
    for n in range(rounds):
        terminal = a.get(serial)
        assert terminal is not None
        terminal.heartbeat_interval = 60 + n % 2
        started = time.perf_counter()
        await a.save(terminal)
        committed = time.perf_counter()
        arrived: Deferred[str] = Deferred()
        heard.append(arrived)
        await tell.transaction(notify, "bench", serial)
        await arrived
        told = time.perf_counter()
        await b.reload_terminals([serial])
        done = time.perf_counter()
        copy = b.get(serial)
        assert copy is not None and copy.heartbeat_interval == terminal.heartbeat_interval
        commits.append(committed - started)
        hops.append(told - committed)
        reads.append(done - told)
        whole.append(done - started)
    everything = []
    for _ in range(5):
        started = time.perf_counter()
        await b.reload_terminals()
        everything.append(time.perf_counter() - started)
    listener.stop()
    tell.close()
    await b.close()
    await a.close()
    print(f"\n{terminals} terminals, {rounds} changes of one record; median and p99, ms\n")
    print(f"{'':<44} {'median':>7} {'p99':>7}")
    print(f"{'A commits the change':<44} {ms(commits)}")
    print(f"{'the notification reaches B':<44} {ms(hops)}")
    print(f"{'B re-reads the record (also: a LOGIN gate)':<44} {ms(reads)}")
    print(f"{'end to end':<44} {ms(whole)}")
    print(f"{f'B re-reads all {terminals} records (reconnection)':<44} {ms(everything)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args(argv)
    from twisted.internet import task
    from twisted.internet.defer import ensureDeferred

    with PgCluster() as cluster:
        key = Path(cluster.root or ".") / "bench.key"
        task.react(lambda reactor: ensureDeferred(
            measure(reactor, cluster.url, key, args.terminals, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MemoryRegistry on a task.Clock: no reactor runs in these tests, and none is polled.

The behaviour both backends share is tested in test_registry.py and its neighbours;
here is what the memory backend adds: commits synchronous or on the clock, held
commits, atomic batches, and the writer's timers on a clock a test advances.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any, TypeVar

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from m2mgw.core.model import LogEntry, Request, RequestState, Terminal
from m2mgw.core.registry import Registry, RegistryError
from m2mgw.core.registry.memory import MemoryRegistry, MemoryStore
from m2mgw.core.registry.store import Op, Write
from m2mgw.core.registry.tables import COUNTERS, TERMINALS
from m2mgw.core.registry.writer import FLUSH_INTERVAL, GROUP_COMMIT_DELAY

SERIAL = "A972030000000001"
T = TypeVar("T")


def result(d: Deferred[T]) -> T:
    """What ``d`` fired with; it must have fired (nothing here waits for a reactor)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def opened(clock: Clock, store: MemoryStore | None = None, **kw: Any) -> MemoryRegistry:
    registry = MemoryRegistry(clock, store, **kw)
    result(registry.open())
    return registry


def request(**kw: Any) -> Request:
    return Request(serial=SERIAL, command=0x0006, body=b"\x00", created_at=1.0,
                   expires_at=9e9, origin="admin", **kw)


def entry(detail: str) -> LogEntry:
    return LogEntry(time=1.0, serial=SERIAL, direction="in", event="uplink-data", detail=detail)


def test_writes_commit_at_once_and_a_second_registry_finds_them() -> None:
    clock = Clock()
    clock.advance(1000.0)
    registry = opened(clock)
    assert isinstance(registry, Registry)
    terminal = result(registry.add(Terminal(imei="860000000000001", serial=SERIAL)))
    queued = result(registry.enqueue(request()))
    assert (terminal.id, terminal.created_at, queued.id) == (1, 1000.0, 1)
    assert [row["serial"] for row in registry.store.rows("terminals")] == [SERIAL]
    identity = registry.identity()
    assert (identity.backend, identity.location) == ("memory", "memory")
    result(registry.close())
    with pytest.raises(RegistryError, match="not open"):
        registry.identity()

    again = opened(clock, registry.store)
    assert again.get(SERIAL) == terminal and again.get(SERIAL) is not terminal
    assert [r.id for r in again.queued(SERIAL)] == [queued.id]
    assert again.identity() == identity
    assert result(again.enqueue(request())).id == 2  # ids are never reused


def test_batched_writes_wait_for_the_clock() -> None:
    clock = Clock()
    registry = opened(clock)
    result(registry.add(Terminal(imei="860000000000001", serial=SERIAL)))
    registry.touch(SERIAL, 5.0, "udp", "127.0.0.1:40000")
    registry.log(entry("batched"))
    clock.advance(FLUSH_INTERVAL - 0.01)
    assert (registry.store.rows("messages"), registry.get(SERIAL).last_seen) == ([], 5.0)
    assert registry.store.rows("terminals")[0]["last_seen"] is None
    clock.advance(0.01)  # the flush tick
    assert [r["detail"] for r in registry.store.rows("messages")] == ["batched"]
    assert registry.store.rows("terminals")[0]["last_seen"] == 5.0

    registry.touch(SERIAL, 6.0, "udp", "127.0.0.1:40000")
    committed = [registry.log_committed(entry(f"n={i}")) for i in range(3)]
    assert not any(d.called for d in committed)
    assert registry.pending_writes == 0
    clock.advance(0)  # the idle writer's group commit, with whatever else is batched
    for d in committed:
        result(d)
    assert [r["detail"] for r in registry.store.rows("messages")] == [
        "batched", "n=0", "n=1", "n=2"]
    assert registry.store.rows("terminals")[0]["last_seen"] == 6.0


def test_a_clocked_store_commits_on_the_next_turn_in_submission_order() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    registry = MemoryRegistry(clock, store)
    opening = registry.open()
    assert not opening.called
    clock.advance(0)
    result(opening)
    added = registry.add(Terminal(imei="860000000000001", serial=SERIAL))
    first = registry.enqueue(request())
    assert registry.get(SERIAL) is not None, "the cache is current at once"
    assert (added.called, first.called, registry.pending_writes, store.waiting) == (
        False, False, 2, 2)
    first_request = registry.queued(SERIAL)[0]
    first_request.state = RequestState.SUCCEEDED
    updated = registry.update_request(first_request)
    history = registry.requests(SERIAL)  # a read, queued behind the writes
    clock.advance(0)
    for d in (added, first, updated):
        result(d)
    assert [(r.id, r.state) for r in result(history)] == [(1, RequestState.SUCCEEDED)]
    assert registry.pending_writes == 0


def test_held_commits_saturate_the_writer_and_release_in_order() -> None:
    clock = Clock()
    registry = opened(clock, watermarks=(3, 1))
    result(registry.add(Terminal(imei="860000000000001", serial=SERIAL)))
    seen: list[bool] = []
    registry.add_pressure_observer(seen.append)
    registry.store.hold()
    writes = [registry.record_statistics(SERIAL, {tag: b"x"}, 1.0) for tag in range(5)]
    assert (seen, registry.saturated, registry.pending_writes) == ([True], True, 5)
    registry.store.release()
    for d in writes:
        result(d)
    assert seen == [True, False]
    assert [r["tag"] for r in registry.store.rows("statistics")] == list(range(5))


def test_a_failing_batch_leaves_nothing_behind() -> None:
    clock = Clock()
    registry = opened(clock)
    result(registry.add(Terminal(imei="860000000000001", serial=SERIAL)))
    row = TERMINALS.row(registry.get(SERIAL))
    batch = [Write(Op.UPSERT, COUNTERS, [("serial", 7)]), Write(Op.INSERT, TERMINALS, [row])]
    with pytest.raises(RegistryError, match="exists"):
        result(registry.store.apply(batch))
    assert registry.store.rows("counters") == []


def test_group_commit_waits_while_the_writer_is_busy() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    registry = MemoryRegistry(clock, store)
    opening = registry.open()
    clock.advance(0)
    result(opening)
    busy = registry.record_statistics(SERIAL, {1: b"x"}, 1.0)
    waiting = registry.log_committed(entry("grouped"))
    clock.advance(0)
    result(busy)
    assert not waiting.called, "a busy writer gathers a group first"
    clock.advance(GROUP_COMMIT_DELAY)
    clock.advance(0)
    result(waiting)
    assert [r["detail"] for r in store.rows("messages")] == ["grouped"]


def test_importing_the_registry_installs_no_reactor() -> None:
    code = ("import sys, m2mgw.core.registry.memory, m2mgw.core.registry.sqlite; "
            "sys.exit('twisted.internet.reactor' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0

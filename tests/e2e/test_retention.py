"""Retention end to end: a real gateway whose database stops growing (issue #9, D-200).

Terminals log in and out in a loop over real TCP sockets, with ``retention = 1s`` and a
pruning round every 0.2 s (compressed time). The rows written grow linearly; the
message log and the file's pages plateau.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.logger import capturedLogs
from twisted.trial import unittest

from m2mgw.config import parse_config
from m2mgw.protocol import terminal as role
from m2mgw.protocol.constants import Command
from m2mgw.service import GatewayService

from .support import TestTerminal, client_for, connect_tcp, gateway_config, provisioned

RETENTION = 1.0
INTERVAL = 0.2
TERMINALS = 4
#: Seconds each terminal waits between two cycles: a steady load the writer keeps up
#: with (a writer that is always behind prunes late, D-203).
PAUSE = 0.01
#: The loop runs this long; the windows compared lie after the log's 1 s flushes and
#: the retention have reached their steady sawtooth (seconds from the start).
LOOP = 5.0
WINDOWS = ((2.0, 3.0), (4.0, 5.0))
SAMPLE_EVERY = 0.1


class Sampler:
    """Reads the file from its own connection, as another process would."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def sample(self) -> dict[str, Any]:
        conn = self.conn
        count, last = conn.execute("SELECT count(*), coalesce(max(id), 0) FROM messages").fetchone()
        oldest = conn.execute("SELECT min(time) FROM messages").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        tables = {
            name: conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        }
        return {"rows": count, "written": last, "oldest": oldest, "pages": pages,
                "in_use": pages - free, "tables": tables, "at": time.time()}

    def close(self) -> None:
        self.conn.close()


class RetentionLoopTest(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.db = self.mktemp() + ".db"
        registry = parse_config(
            f"[registry]\ndatabase = {self.db}\nretention = {RETENTION}s\n"
            f"retention_interval = {INTERVAL}s\n"
        ).registry
        config = dataclasses.replace(gateway_config(self.db), registry=registry)
        self.gateway = GatewayService(config, reactor)
        self.gateway.startService()
        self.addCleanup(self.gateway.stopService)
        yield self.gateway.ready
        self.links: list[Any] = []
        self.addCleanup(self._close_links)

    def _close_links(self) -> defer.Deferred[Any]:
        closing = []
        for link in self.links:
            if link.transport.connected:
                link.transport.loseConnection()
                closing.append(link.terminal.closed)
        return defer.gatherResults(closing)

    @defer.inlineCallbacks
    def cycle(self, term: TestTerminal):  # type: ignore[no-untyped-def]
        """One log-in (with the trap deployed terminals send) and log-out."""
        term.send(term.client.login())
        event = yield term.wait_type(role.LoggedIn)
        self.assertIn(event.result, (0, 1))
        if event.result == 0:
            term.send(term.client.trap([]))
        yield term.answer_to(Command.CONFIG_TRAP)
        term.send(term.client.logout(0))
        yield term.wait_type(role.LoggedOut)

    @defer.inlineCallbacks
    def loop(self, term: TestTerminal, until: float):  # type: ignore[no-untyped-def]
        cycles = 0
        while time.monotonic() < until:
            yield self.cycle(term)
            cycles += 1
            yield task.deferLater(reactor, PAUSE, lambda: None)
        return cycles

    @defer.inlineCallbacks
    def test_the_database_stops_growing_in_a_login_logout_loop(self):  # type: ignore[no-untyped-def]
        terms = []
        for index in range(TERMINALS):
            record = provisioned(index)
            yield self.gateway.registry.add(record)
            term = TestTerminal(client_for(record, "tcp"))
            self.links.append((yield connect_tcp(term, self.gateway.port_of("tcp"))))
            terms.append(term)
        sampler = Sampler(self.db)
        self.addCleanup(sampler.close)
        empty = sampler.sample()
        samples: list[tuple[float, dict[str, Any]]] = []
        start = time.monotonic()
        sampling = task.LoopingCall(
            lambda: samples.append((time.monotonic() - start, sampler.sample())))
        with capturedLogs() as events:
            sampling.start(SAMPLE_EVERY)
            cycles = yield defer.gatherResults([self.loop(term, start + LOOP) for term in terms])
            sampling.stop()
        first, second = (
            [sample for at, sample in samples if lo <= at < hi] for lo, hi in WINDOWS)
        report = f"samples {samples}, cycles {cycles}"
        self.assertTrue(first and second, report)

        # Nothing outlives its retention by more than a round and some scheduling slack.
        for sample in first + second:
            self.assertLess(sample["at"] - sample["oldest"], RETENTION + INTERVAL + 1.0, report)
        # Between the windows the loop wrote on linearly, but the log (its peaks after
        # each flush) and the file's pages grew by far less than what was written.
        written = second[-1]["written"] - first[-1]["written"]
        self.assertGreater(written, max(s["rows"] for s in first), report)
        growth = max(s["rows"] for s in second) - max(s["rows"] for s in first)
        self.assertLess(growth, 0.5 * written, report)
        pages_per_row = (first[-1]["in_use"] - empty["in_use"]) / first[-1]["rows"]
        page_growth = second[-1]["pages"] - first[-1]["pages"]
        self.assertLess(page_growth, 0.5 * written * pages_per_row, report)
        # Nothing else grows in the loop.
        self.assertEqual({**second[-1]["tables"], "messages": 0},
                         {**first[0]["tables"], "messages": 0})
        summaries = [e for e in events if e["log_namespace"] == "m2mgw.retention"]
        self.assertTrue(summaries, "no pruning round was logged")
        self.assertEqual({table for e in summaries for table in e["deleted"]}, {"messages"})

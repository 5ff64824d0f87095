"""At-least-once across SIGKILLs, proven by accounting (issue #11, part 2).

A ``twistd`` gateway under load from TCP terminals and a long-connection application
is killed at 10 random moments and restarted; every TRANSPARENT_DATA it acked must
reach the application, every SendData it accepted must reach its terminal or show in
``GET /requests`` (``tests/faults/harness.py``, D-270..D-279). About a minute; run it
alone with ``pytest -m faults -s`` to see the table. ``M2MGW_FAULT_SEED`` repeats a run.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.faults.harness import Plan, run

pytestmark = pytest.mark.faults


class CrashAccountingTest(unittest.TestCase):
    timeout = 240

    def test_ten_sigkills_under_load_lose_nothing(self) -> defer.Deferred[None]:
        seed = int(os.environ.get("M2MGW_FAULT_SEED") or random.SystemRandom().randrange(2**32))
        print(f"\ncrash accounting: seed {seed} (M2MGW_FAULT_SEED={seed} repeats it)")
        return defer.ensureDeferred(self.check(Plan(seed=seed, kills=10)))

    async def check(self, plan: Plan) -> None:
        outcome = await run(reactor, plan, Path(self.mktemp()).resolve())
        table = outcome.table()
        print(table)
        self.assertEqual(outcome.kills, 10, table)
        self.assertEqual(len(outcome.restarts), 10, table)
        # Under load at every kill: each incarnation acked uplinks before it died.
        ledger = outcome.ledger
        self.assertTrue(all(ledger.acked_per_incarnation[i] > 0 for i in range(10)), table)
        self.assertGreater(outcome.downlink.acked, 0, table)
        self.assertEqual((outcome.uplink.lost, outcome.downlink.lost), (0, 0), table)
        self.assertEqual(sum(ledger.notify_reused.values()), 0, table)
        self.assertEqual((dict(ledger.up_refused), dict(ledger.down_refused)), ({}, {}), table)

"""The engine's tick looks at the sessions that are due, not at all of them (issue #16).

20,000 restored sessions (on the engine tests' MemoryRegistry: 20,000 commits to a
file would take the test's time, and the tick never touches the store): a tick where nothing is due,
and one where a few are, run a number of Python calls that does not grow with the
sessions held (counted with ``sys.setprofile``, exact on a loaded machine).
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from m2mgw.core.model import Terminal, TerminalState
from tests.spec_examples import TS_11_3

from .engine_support import EngineFixture, example_credentials

SESSIONS = 20_000


def calls_during(action: Any) -> int:
    """How many Python functions ``action()`` calls."""
    count = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal count
        count += event == "call"

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return count


class TickCostTest(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.fx = EngineFixture(heartbeat_interval_default=60)
        yield self.fx.start(provision=False)
        self.addCleanup(self.fx.stop)
        adds = []
        for i in range(SESSIONS):
            adds.append(self.fx.registry.add(Terminal(
                imei=f"86{i:013d}", imsi=f"46000{i:010d}", serial=f"A9720301{i:08d}",
                state=TerminalState.LOGGED_IN, current=example_credentials(),
                session_timestamp=TS_11_3, protocol_version=0x0300,
            )))
        yield defer.gatherResults(adds)
        self.fx.engine.restore_sessions()
        self.assertEqual(len(self.fx.sessions), SESSIONS)

    def test_a_tick_costs_what_is_due_not_what_is_held(self) -> None:
        fx = self.fx
        # A restart looks at every restored session's credentials once, at once.
        self.assertGreater(calls_during(fx.tick), SESSIONS)
        fx.clock.advance(1)
        idle = calls_during(fx.tick)
        self.assertLess(idle, 50, "nothing due: no session looked at")
        # A few terminals talk; the rest stay silent until their offline deadline.
        for session in list(fx.sessions.values())[:5]:
            session.last_valid = fx.clock.seconds()
        fx.clock.advance(1)
        self.assertLess(calls_during(fx.tick), 50)
        deadline = fx.engine.next_deadline()
        assert deadline is not None
        fx.clock.advance(deadline - fx.clock.seconds())
        due = calls_during(fx.tick)
        self.assertGreater(due, SESSIONS, "at the offline deadline every silent one is due")

"""Refusal reporting: rate-limited lines on a Clock, exact bounded counts, and the
engine reporting what it refuses with the terminal's keys."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial import unittest

from m2mgw.core.refusals import TOTAL_FACTOR, Reason, Refusals
from m2mgw.protocol import messages as m
from m2mgw.protocol.codec import encode_message
from m2mgw.protocol.constants import LoginResult
from m2mgw.protocol.security import DigestKey
from tests.spec_examples import DOWNLINK, IMEI, IMSI, SERIAL, SYNC_CRC, UPLINK

from .engine_support import EngineFixture, FakeBearer, login_bytes, terminal_message

UNKNOWN = "A972030000009999"


def refusal_lines(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == "refusal"]


def summaries(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == "refusals-suppressed"]


class RefusalsTest(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.refusals = Refusals(self.clock, burst=3, interval=60)

    def flood(self, n: int, **keys: Any) -> list[dict[str, Any]]:
        with capturedLogs() as events:
            for seq in range(n):
                self.refusals.report(
                    Reason.UNKNOWN_SERIAL, "not provisioned", sequence_id=seq, **keys
                )
        return events

    def test_a_flood_from_one_source_writes_burst_lines_then_one_summary(self) -> None:
        events = self.flood(1000, serial="A972030000000099", peer="10.0.0.1:5000")
        lines = refusal_lines(events)
        self.assertEqual([e["sequence_id"] for e in lines], [0, 1, 2])
        self.assertEqual(lines[0]["reason"], "unknown-serial")
        self.assertEqual(lines[0]["serial"], "A972030000000099")
        self.assertEqual(lines[0]["peer"], "10.0.0.1:5000")
        self.assertEqual(lines[0]["log_level"], LogLevel.info)
        self.assertEqual(summaries(events), [])
        # One summary, one interval after the first line held back.
        self.clock.advance(59)
        with capturedLogs() as later:
            self.clock.advance(1)
        [summary] = summaries(later)
        self.assertEqual(summary["suppressed"], 997)
        self.assertEqual(summary["reason"], "unknown-serial")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Counted regardless of the rate limit.
        self.assertEqual(self.refusals.totals[Reason.UNKNOWN_SERIAL], 1000)
        self.assertEqual(self.refusals.counts("A972030000000099"), {Reason.UNKNOWN_SERIAL: 1000})

    def test_the_bucket_refills_at_burst_per_interval(self) -> None:
        self.flood(3, serial="S1")
        self.assertEqual(refusal_lines(self.flood(1, serial="S1")), [])
        self.clock.advance(20)  # 60 s / 3 lines: one more token
        self.assertEqual(len(refusal_lines(self.flood(2, serial="S1"))), 1)

    def test_many_sources_share_one_total_limit(self) -> None:
        with capturedLogs() as events:
            for i in range(500):
                self.refusals.report(Reason.AUTH_FAILED, "digest", serial=f"S{i}")
            self.clock.advance(60)
        lines = refusal_lines(events)
        self.assertEqual(len(lines), 3 * TOTAL_FACTOR)
        self.assertTrue(all(e["log_level"] == LogLevel.warn for e in lines))
        [summary] = summaries(events)
        self.assertEqual(summary["suppressed"], 500 - 3 * TOTAL_FACTOR)

    def test_one_summary_line_per_reason(self) -> None:
        with capturedLogs() as events:
            for _ in range(5):
                self.refusals.report(Reason.FRAMING, "bad length", peer="10.0.0.2:1")
                self.refusals.report(Reason.BAD_VERSION, "0x0400", serial="S1")
            self.refusals.flush()
        self.assertEqual(
            {(e["reason"], e["suppressed"]) for e in summaries(events)},
            {(Reason.FRAMING, 2), (Reason.BAD_VERSION, 2)},
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_counts_stay_bounded(self) -> None:
        refusals = Refusals(self.clock, burst=1, interval=60, max_sources=10, max_serials=10)
        with capturedLogs():
            for i in range(1000):
                refusals.report(Reason.NOT_LOGGED_IN, serial=f"S{i}")
            refusals.report(Reason.NOT_LOGGED_IN, serial="S995")
            refusals.flush()
        self.assertEqual(refusals.totals[Reason.NOT_LOGGED_IN], 1001)
        self.assertEqual(refusals.counts("S0"), {})
        self.assertEqual(refusals.counts("S995"), {Reason.NOT_LOGGED_IN: 2})
        self.assertLessEqual(len(refusals._by_serial), 10)
        self.assertLessEqual(len(refusals._limit), 10)

    def test_the_text_names_what_is_known(self) -> None:
        with capturedLogs() as events:
            self.refusals.report(Reason.FRAMING, "length 3 below 28", bearer="udp", peer="h:1")
            self.refusals.report(
                Reason.UNKNOWN_SERIAL, command="LOGIN", sequence_id=7, serial="S", bearer="tcp"
            )
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                "Refused at h:1 over udp: framing (length 3 below 28)",
                "Refused LOGIN seq 7 from S over tcp: unknown-serial",
            ],
        )

    def test_the_hint_names_the_profile_that_would_accept_it(self) -> None:
        """Issue #10: not silence, but which accommodation would have taken it."""
        hint = "this terminal sends unsigned LOGOUT; the cmcc-javame profile accepts it (C3)"
        with capturedLogs() as events:
            self.refusals.report(Reason.MISSING_DIGEST, "no digest", serial="S", hint=hint)
        [line] = events
        self.assertEqual(formatEvent(line), f"Refused from S: missing-digest (no digest); {hint}")
        self.assertEqual(line["hint"], hint)


class EngineRefusalsTest(unittest.TestCase):
    """What the engine refuses reaches its Refusals with the terminal's keys."""

    @inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.fx = EngineFixture()
        yield self.fx.start()
        self.addCleanup(self.fx.stop)

    def receive(self, data: bytes, bearer: FakeBearer) -> list[dict[str, Any]]:
        with capturedLogs() as events:
            self.fx.engine.receive(data, bearer)
        return refusal_lines(events)

    def test_login_from_an_unknown_serial_is_logged_with_its_keys(self) -> None:
        bearer = FakeBearer(address="192.0.2.1:7000")
        login = encode_message(
            m.Login("1.01", SYNC_CRC), sequence_id=5, serial=UNKNOWN, key=UPLINK, flag=0x80
        )
        [line] = self.receive(login, bearer)
        [ack] = bearer.take()
        self.assertEqual(ack.result, LoginResult.UNKNOWN_SERIAL)
        self.assertEqual(
            {k: line[k] for k in ("reason", "serial", "command", "sequence_id", "bearer", "peer")},
            {
                "reason": "unknown-serial",
                "serial": UNKNOWN,
                "command": "LOGIN",
                "sequence_id": 5,
                "bearer": "udp",
                "peer": "192.0.2.1:7000",
            },
        )
        self.assertEqual(self.fx.engine.refusals.counts(UNKNOWN), {Reason.UNKNOWN_SERIAL: 1})

    def test_a_login_whose_digest_fails_is_a_warning_with_the_failure_count(self) -> None:
        wrong = DigestKey.make(IMEI, IMSI, "WRONGPWD")
        [line] = self.receive(login_bytes(seq=2, key=wrong), FakeBearer())
        self.assertEqual((line["reason"], line["failures"]), ("auth-failed", 1))
        self.assertEqual(line["log_level"], LogLevel.warn)
        self.assertEqual(self.fx.engine.refusals.counts(SERIAL), {Reason.AUTH_FAILED: 1})

    def test_a_request_before_login_is_refused_as_not_logged_in(self) -> None:
        trap = terminal_message(m.ConfigTrap(tlvs=[]), 9, key=DOWNLINK)
        [line] = self.receive(trap, FakeBearer())
        self.assertEqual(
            (line["reason"], line["command"], line["sequence_id"]),
            ("not-logged-in", "CONFIG_TRAP", 9),
        )

    def test_a_garbage_datagram_is_refused_as_malformed(self) -> None:
        [line] = self.receive(b"\x00" * 40, FakeBearer(address="192.0.2.9:1"))
        self.assertEqual((line["reason"], line["peer"]), ("malformed", "192.0.2.9:1"))

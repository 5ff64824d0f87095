"""Metrics of an in-process gateway: TCP connections, applications, and the plain
counters of :mod:`m2mgw.core.stats` (issue #9, D-210..D-219)."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

from prometheus_client import generate_latest
from twisted.internet import defer, reactor
from twisted.trial import unittest

from m2mgw.config import parse_config
from m2mgw.core.model import Application
from m2mgw.core.stats import EngineStats, Histogram
from m2mgw.protocol import messages as m
from m2mgw.protocol.codec import build_frame
from m2mgw.protocol.constants import Command
from m2mgw.service import GatewayService
from tests.e2e.support import TestTerminal, client_for, connect_tcp, provisioned, until
from tests.e2e.test_metrics import Samples, by_label, samples, value
from tests.twistd import free_port

CONFIG = """
[registry]
database = {db}
[tcp]
listen = tcp:0:interface=127.0.0.1
max_connections = 1
[udp]
enabled = no
[http]
listen = none
public_url = http://127.0.0.1:1
[admin]
listen = none
"""


class HistogramTest(unittest.TestCase):
    def test_a_value_counts_in_the_first_bucket_whose_bound_is_not_below_it(self) -> None:
        histogram = Histogram((0.1, 1.0))
        for seconds in (0.05, 0.1, 0.5, 1.0, 7.0):
            histogram.observe(seconds)
        self.assertEqual(histogram.cumulative(), [(0.1, 2), (1.0, 4), (float("inf"), 5)])
        self.assertEqual(histogram.count, 5)
        self.assertAlmostEqual(histogram.sum, 8.65)

    def test_messages_out_are_counted_by_the_command_id_of_their_header(self) -> None:
        stats = EngineStats()
        frame = build_frame(Command.HEART_BEAT | 0x8000, 7, "A972030012345678", b"")
        stats.count_sent(frame)
        stats.count_sent(frame)
        self.assertEqual(stats.sent, {Command.HEART_BEAT | 0x8000: 2})


class GatewayMetricsTest(unittest.TestCase):
    timeout = 15

    def setUp(self) -> defer.Deferred[None]:
        root = Path(tempfile.mkdtemp(prefix="m2mgw-metrics-"))
        self.gateway = GatewayService(parse_config(CONFIG.format(db=root / "m2mgw.db")), reactor)
        self.gateway.startService()
        self.addCleanup(self.gateway.stopService)
        assert self.gateway.ready is not None
        return self.gateway.ready

    def scrape(self) -> Samples:
        return samples(generate_latest(self.gateway.metrics))

    @defer.inlineCallbacks
    def test_tcp_connections_open_accepted_refused_and_the_session_that_outlives_one(
        self,
    ):  # type: ignore[no-untyped-def]
        record = provisioned()
        yield self.gateway.registry.add(record)
        terminal = TestTerminal(client_for(record, "tcp"))
        port = self.gateway.port_of("tcp")
        link = yield connect_tcp(terminal, port)
        terminal.send(terminal.client.login())
        yield terminal.answer_to(Command.CONFIG_TRAP)  # logged in, synced
        scraped = self.scrape()
        self.assertEqual(value(scraped, "m2mgw_tcp_connections"), 1)
        self.assertEqual(value(scraped, "m2mgw_tcp_connections_accepted_total"), 1)
        self.assertEqual(by_label(scraped, "m2mgw_terminals_online", "bearer"), {"tcp": 1})

        with socket.create_connection(("127.0.0.1", port)):  # over max_connections
            yield until(
                lambda: value(self.scrape(), "m2mgw_tcp_connections_refused_total") == 1,
                "the refused connection",
            )
            self.assertEqual(value(self.scrape(), "m2mgw_tcp_connections"), 1)
        link.transport.loseConnection()
        yield terminal.closed
        yield until(
            lambda: value(self.scrape(), "m2mgw_tcp_connections") == 0, "the close"
        )
        scraped = self.scrape()
        # The session survives its TCP connection (10.2): online, on no bearer now.
        self.assertEqual(by_label(scraped, "m2mgw_terminals_online", "bearer"), {"none": 1})
        self.assertEqual(value(scraped, "m2mgw_tcp_connections_accepted_total"), 1)
        self.assertEqual(value(scraped, "m2mgw_tcp_connections_evicted_total"), 0)
        self.assertEqual(value(scraped, "m2mgw_refusals_total", reason="connection-cap"), 1)

    @defer.inlineCallbacks
    def test_application_outbox_callback_failures_and_queued_requests_per_app(
        self,
    ):  # type: ignore[no-untyped-def]
        registry = self.gateway.registry
        # A callback nobody listens on: every offer fails (connection refused).
        yield registry.add_application(Application(
            app_id="watcher", password="Secret12", ec_code="EC0001", base_key="K" * 24,
            callback_url=f"http://127.0.0.1:{free_port()}/callback",
        ))
        yield registry.add_application(Application(
            app_id="idle", password="Secret12", ec_code="EC0002", base_key="K" * 24,
        ))
        record = provisioned()
        yield registry.add(record)
        body = m.ConfigGet(tlvs=[]).encode_body()
        yield self.gateway.router.submit(
            record.serial or "", Command.CONFIG_GET, body, origin="app:watcher"
        )
        scraped = self.scrape()
        self.assertEqual(by_label(scraped, "m2mgw_app_requests_queued", "app"), {"watcher": 1})

        terminal = TestTerminal(client_for(record, "tcp"))
        yield connect_tcp(terminal, self.gateway.port_of("tcp"))
        terminal.send(terminal.client.login())  # NotifyTerminalState LOGGED_IN to watcher
        yield until(
            lambda: value(self.scrape(), "m2mgw_app_notification_failures_total",
                          app="watcher", channel="callback") >= 1,
            "the failed callback",
        )
        scraped = self.scrape()
        self.assertEqual(
            value(scraped, "m2mgw_app_notifications_queued", app="watcher", state="pending"),
            len(registry.notifications("watcher")),
        )
        self.assertGreaterEqual(
            value(scraped, "m2mgw_app_notifications_queued", app="watcher", state="pending"), 1
        )
        self.assertEqual(
            value(scraped, "m2mgw_app_notifications_queued", app="idle", state="pending"), 0
        )
        self.assertEqual(
            value(scraped, "m2mgw_app_notifications_delivered_total", app="watcher",
                  channel="callback"), 0
        )
        self.assertEqual(value(scraped, "m2mgw_app_connections", app="watcher"), 0)
        self.assertGreaterEqual(
            value(scraped, "m2mgw_app_notifications_oldest_age_seconds", app="watcher"), 0
        )

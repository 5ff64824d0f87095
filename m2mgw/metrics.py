"""Prometheus metrics of one gateway (D-210..D-219).

Every gateway has its own :class:`CollectorRegistry` (``GatewayService.metrics``),
never the process-wide default, so that several gateways in one process (the tests)
do not mix their numbers. One :class:`GatewayCollector` computes every ``m2mgw_``
family when Prometheus scrapes, from the :class:`Observed` parts of the gateway:
gauges from its live state (registry cache, sessions, queues, outboxes, modem, writer
backlog), counters and histograms from the plain :mod:`m2mgw.core.stats` objects and
``collections.Counter``\\ s the core keeps. So the hot path never touches
``prometheus_client`` and the core stays free of it.

Label values are low-cardinality by construction: Command_ID names, result and
reason names, states, bearer kinds, and application ids (operator-provisioned);
never a serial, an MSISDN or an address.

``GET /metrics`` is served on the admin site (behind its token) and, with
``[metrics] listen``, on a listener of its own that serves nothing else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import NoResource, Resource
from twisted.web.server import Request as HttpRequest
from twisted.web.server import Site

import m2mgw
from m2mgw.app.outbox import Outbox
from m2mgw.app.policy import ORIGIN_PREFIX
from m2mgw.core.model import NotificationState, Request, RequestState, TerminalState
from m2mgw.core.refusals import Reason, Refusals
from m2mgw.core.registry import Registry
from m2mgw.core.session import Session
from m2mgw.core.stats import EngineStats, Histogram
from m2mgw.logsetup import DebugAccessLogSite
from m2mgw.protocol.constants import LoginResult, command_name
from m2mgw.sms.service import SmsService
from m2mgw.transport.tcp import TerminalTcpFactory
from m2mgw.transport.udp import TerminalDatagramProtocol

#: The channels a notification is offered on (the application ``Outbox``).
APP_CHANNELS = ("callback", "long_connection")
#: The bearers a session can be on; ``none``: its TCP connection closed meanwhile.
SESSION_BEARERS = ("tcp", "udp", "sms", "none")


class EngineState(Protocol):
    """What the metrics and ``GET /stats`` read of the engine: sessions and counters."""

    @property
    def sessions(self) -> Mapping[str, Session]: ...

    @property
    def stats(self) -> EngineStats: ...

    @property
    def refusals(self) -> Refusals: ...


@dataclass(frozen=True, slots=True)
class Observed:
    """The parts of a running gateway that its metrics and ``GET /stats`` read."""

    clock: IReactorTime
    registry: Registry
    engine: EngineState
    outbox: Outbox
    sms: SmsService | None = None
    tcp: TerminalTcpFactory | None = None
    udp: TerminalDatagramProtocol | None = None


def gateway_metrics(observed: Observed) -> CollectorRegistry:
    """A registry with the gateway's families and the process's standard ones."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(observed))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class GatewayCollector:
    """Reads a gateway's state at scrape time (a ``prometheus_client`` collector)."""

    def __init__(self, observed: Observed) -> None:
        self.observed = observed

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("m2mgw_build_info", "m2mgw's version.", labels=["version"])
        info.add_metric([m2mgw.__version__], 1)
        yield info
        now = self.observed.clock.seconds()
        active = self.observed.registry.active_requests()
        yield from self._terminals()
        yield from self._traffic()
        yield from self._connections()
        yield from self._queue(active, now)
        yield from self._applications(active, now)
        yield from self._sms(now)
        yield from self._registry()

    def _terminals(self) -> Iterator[Metric]:
        observed = self.observed
        states = Counter(terminal.state for terminal in observed.registry.terminals())
        known = GaugeMetricFamily(
            "m2mgw_terminals", "Terminals in the registry, by state.", labels=["state"]
        )
        for state in TerminalState:
            known.add_metric([state.value.lower()], states[state])
        yield known
        bearers = Counter(
            session.bearer.kind if session.bearer is not None else "none"
            for session in observed.engine.sessions.values()
        )
        online = GaugeMetricFamily(
            "m2mgw_terminals_online",
            "Logged-in terminals (open sessions), by the bearer of their last message.",
            labels=["bearer"],
        )
        for bearer in SESSION_BEARERS:
            online.add_metric([bearer], bearers[bearer])
        yield online

    def _traffic(self) -> Iterator[Metric]:
        engine = self.observed.engine
        stats = engine.stats
        for direction, counts, what in (
            ("in", stats.received, "Messages received from terminals and parsed"),
            ("out", stats.sent, "Messages handed to a bearer (answers, requests, repeats)"),
        ):
            family = CounterMetricFamily(
                f"m2mgw_messages_{direction}", f"{what}, by Command_ID.", labels=["command"]
            )
            for command_id, count in sorted(counts.items()):
                family.add_metric([command_name(command_id)], count)
            yield family
        logins = CounterMetricFamily(
            "m2mgw_logins", "LOGIN_ACKs sent, by result (spec 5.2).", labels=["result"]
        )
        for result in LoginResult:
            logins.add_metric([result.name.lower()], stats.logins[result])
        yield logins
        latency = HistogramMetricFamily(
            "m2mgw_answer_latency_seconds",
            "Seconds from a terminal's request received to its answer written, by the "
            "request's Command_ID.",
            labels=["command"],
        )
        for command_id, histogram in sorted(stats.answer_latency.items()):
            _add_histogram(latency, [command_name(command_id)], histogram)
        yield latency
        refusals = CounterMetricFamily(
            "m2mgw_refusals",
            "Messages, datagrams and connections refused, by reason (digest failures: "
            "auth-failed and missing-digest; framing errors: framing).",
            labels=["reason"],
        )
        for reason in Reason:
            refusals.add_metric([reason.value], engine.refusals.totals[reason])
        yield refusals
        bearers = (self.observed.tcp, self.observed.udp)
        yield GaugeMetricFamily(
            "m2mgw_terminal_input_held",
            "1 while terminal input is not read because the registry's writer is behind.",
            value=int(any(bearer.reading_held for bearer in bearers if bearer is not None)),
        )

    def _connections(self) -> Iterator[Metric]:
        tcp = self.observed.tcp
        if tcp is None:
            return
        refused = self.observed.engine.refusals.totals[Reason.CONNECTION_CAP]
        yield GaugeMetricFamily(
            "m2mgw_tcp_connections", "Terminal TCP connections open.", value=len(tcp.connections)
        )
        for name, what, value in (
            ("accepted", "accepted", tcp.opened),
            ("refused", "refused at [tcp] max_connections", refused),
            ("evicted", "closed to make room for new ones", tcp.evicted),
        ):
            yield CounterMetricFamily(
                f"m2mgw_tcp_connections_{name}", f"Terminal TCP connections {what}.", value=value
            )

    def _queue(self, active: list[Request], now: float) -> Iterator[Metric]:
        registry = self.observed.registry
        states = Counter(request.state for request in active)
        depth = GaugeMetricFamily(
            "m2mgw_queue_requests",
            "Platform requests in the durable queue, by state.",
            labels=["state"],
        )
        for state in (RequestState.QUEUED, RequestState.SENT):
            depth.add_metric([state.value], states[state])
        yield depth
        oldest = min((request.created_at for request in active), default=None)
        yield GaugeMetricFamily(
            "m2mgw_queue_oldest_age_seconds",
            "Age of the oldest request in the durable queue (0 when it is empty).",
            value=0.0 if oldest is None else max(0.0, now - oldest),
        )
        finished = CounterMetricFamily(
            "m2mgw_requests_finished",
            "Platform requests that left the queue, by Command_ID and final state.",
            labels=["command", "state"],
        )
        for (command_id, state), count in sorted(registry.request_outcomes.items()):
            finished.add_metric([command_name(command_id), state], count)
        yield finished

    def _applications(self, active: list[Request], now: float) -> Iterator[Metric]:
        registry = self.observed.registry
        apps = self.observed.outbox
        app_ids = sorted(app.app_id for app in registry.applications())
        queued = GaugeMetricFamily(
            "m2mgw_app_notifications_queued",
            "Notifications in an application's outbox, by state (kept: waiting for "
            "FetchMessages or the next long connection).",
            labels=["app", "state"],
        )
        oldest = GaugeMetricFamily(
            "m2mgw_app_notifications_oldest_age_seconds",
            "Age of the oldest notification in an application's outbox (0 when empty).",
            labels=["app"],
        )
        connections = GaugeMetricFamily(
            "m2mgw_app_connections", "Long connections of an application open.", labels=["app"]
        )
        for app_id in app_ids:
            outbox = registry.notifications(app_id)
            states = Counter(entry.state for entry in outbox)
            for state in NotificationState:
                queued.add_metric([app_id, state.value], states[state])
            first = min((entry.created_at for entry in outbox), default=None)
            oldest.add_metric([app_id], 0.0 if first is None else max(0.0, now - first))
            connections.add_metric([app_id], len(apps.connections(app_id)))
        yield queued
        yield oldest
        yield connections
        requests = Counter(
            request.origin.removeprefix(ORIGIN_PREFIX)
            for request in active
            if request.origin.startswith(ORIGIN_PREFIX)
        )
        app_requests = GaugeMetricFamily(
            "m2mgw_app_requests_queued",
            "An application's requests to terminals in the durable queue.",
            labels=["app"],
        )
        for app_id in sorted(set(app_ids) | set(requests)):
            app_requests.add_metric([app_id], requests[app_id])
        yield app_requests
        for name, what, counts in (
            ("notifications_delivered", "Notifications an application accepted",
             apps.delivered),
            ("notification_failures", "Notification offers that failed (callback errors "
             "and timeouts, long-connection refusals)", apps.delivery_failures),
        ):
            family = CounterMetricFamily(
                f"m2mgw_app_{name}", f"{what}, by channel.", labels=["app", "channel"]
            )
            for app_id in sorted(set(app_ids) | {app_id for app_id, _ in counts}):
                for channel in APP_CHANNELS:
                    family.add_metric([app_id, channel], counts[(app_id, channel)])
            yield family
        discarded = CounterMetricFamily(
            "m2mgw_app_notifications_discarded",
            "Notifications discarded undelivered after [app] notify_retention.",
            labels=["app"],
        )
        for app_id in sorted(set(app_ids) | set(apps.discarded)):
            discarded.add_metric([app_id], apps.discarded[app_id])
        yield discarded

    def _sms(self, now: float) -> Iterator[Metric]:
        sms = self.observed.sms
        if sms is None:
            return
        pending = self.observed.registry.pending_sms()
        yield GaugeMetricFamily(
            "m2mgw_sms_outbox_messages", "Messages waiting in the SMS outbox.", value=len(pending)
        )
        first = min((message.created_at for message in pending), default=None)
        yield GaugeMetricFamily(
            "m2mgw_sms_outbox_oldest_age_seconds",
            "Age of the oldest message in the SMS outbox (0 when it is empty).",
            value=0.0 if first is None else max(0.0, now - first),
        )
        counts = sms.counts
        for name, what, value in (
            ("sent", "SMS (segments) the modem confirmed sent", counts.sent),
            ("received", "SMS received from the modem", counts.received),
            ("send_errors", "SMS sends that failed (retried, or the message failed)",
             counts.send_errors),
            ("failed", "Messages of the SMS outbox given up", counts.failed),
        ):
            yield CounterMetricFamily(f"m2mgw_sms_{name}", f"{what}.", value=value)
        up = sms.modem_up
        yield GaugeMetricFamily(
            "m2mgw_modem_up", "1 while the modem port is open and initialised.", value=int(up)
        )
        signal = sms.signal if up else None
        rssi = GaugeMetricFamily(
            "m2mgw_modem_signal_rssi",
            "AT+CSQ signal quality, 0-31 (absent while unknown or the modem is down).",
        )
        dbm = GaugeMetricFamily(
            "m2mgw_modem_signal_dbm", "Received signal strength from AT+CSQ, in dBm."
        )
        if signal is not None and signal.dbm is not None:
            rssi.add_metric([], signal.rssi)
            dbm.add_metric([], signal.dbm)
        yield rssi
        yield dbm

    def _registry(self) -> Iterator[Metric]:
        registry = self.observed.registry
        yield GaugeMetricFamily(
            "m2mgw_registry_pending_writes",
            "Registry write transactions submitted and not yet committed.",
            value=registry.pending_writes,
        )
        yield GaugeMetricFamily(
            "m2mgw_registry_pending_rows",
            "Rows of the registry writes not yet committed.",
            value=registry.pending_rows,
        )
        latency = HistogramMetricFamily(
            "m2mgw_registry_commit_latency_seconds",
            "Seconds from a registry write's submission to its commit.",
        )
        _add_histogram(latency, [], registry.commit_latency)
        yield latency


def _add_histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    buckets = [(floatToGoString(bound), count) for bound, count in histogram.cumulative()]
    family.add_metric(labels, buckets, histogram.sum)


class MetricsResource(Resource):
    """``GET /metrics``: the text exposition format, or OpenMetrics when asked for."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: HttpRequest) -> bytes:
        if any(request.postpath):
            return NoResource().render(request)
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", content_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return encoder(self.registry)


def metrics_site(registry: CollectorRegistry) -> Site:
    """The ``[metrics] listen`` site: ``/metrics`` and nothing else, without a token."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry))
    site = DebugAccessLogSite(root)
    site.displayTracebacks = False
    return site

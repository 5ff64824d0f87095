"""Service assembly: one ``MultiService`` built from the ini file (design card).

Start-up is asynchronous: the registry opens (and migrates) first, then the
sessions are restored and the listeners start, so no terminal is accepted before
its record can be read. Shutdown runs the other way: stop accepting, then flush
and close the registry, so nothing accepted is lost.

Start-up is honest (D-160): the gateway is ready, logs so and tells systemd, only
once the registry is open and every listener is bound. If any of them fails, what
started is stopped again and ``ready`` fails with one :class:`StartupError` line;
under ``twistd`` that ends the process with status 1 (:func:`exit_on_startup_failure`).
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError, ReactorNotRunning
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from m2mgw.app import web as app_web
from m2mgw.app.callbacks import CallbackChannel
from m2mgw.app.endpoint import SoapEndpoint, SoapSessions
from m2mgw.app.gateway import ApplicationService
from m2mgw.app.outbox import Outbox
from m2mgw.app.server import AppFactory
from m2mgw.app.uplink import AppUplink
from m2mgw.config import GatewayConfig, RegistryConfig, with_backlog
from m2mgw.core.engine.dispatch import PlatformEngine
from m2mgw.core.engine.events import EngineEvents
from m2mgw.core.engine.frames import FrameBuilder
from m2mgw.core.files import DiskFiles
from m2mgw.core.refusals import Refusals
from m2mgw.core.registry import Registry
from m2mgw.core.registry.sqlite import SqliteRegistry
from m2mgw.core.router import Router
from m2mgw.core.session import Bearer
from m2mgw.core.sessions import SessionTable
from m2mgw.core.stats import EngineStats
from m2mgw.core.uplink import StoredUplink
from m2mgw.limits import (
    HttpLimits,
    capped_long_connections,
    descriptor_needs,
    fit_descriptor_limit,
    limited_site,
)
from m2mgw.logsetup import DebugAccessLogSite
from m2mgw.metrics import Observed, gateway_metrics, metrics_site
from m2mgw.retention import RetentionService
from m2mgw.sms.service import SmsService, WakeupSweep
from m2mgw.systemd import Notifier, inherited_socket_problem
from m2mgw.transport.tcp import TerminalTcpFactory
from m2mgw.transport.udp import TerminalDatagramProtocol
from m2mgw.web import views
from m2mgw.web.admin import AdminContext, AdminResource
from m2mgw.web.auth import AuthSetupError, TokenFile
from m2mgw.web.files import FileService

if TYPE_CHECKING:
    from m2mgw.core.cluster.node import ClusterNode
    from m2mgw.core.postgres.connection import Database

log = Logger()

TICK_INTERVAL = 1.0
EXPIRY_INTERVAL = 60.0


class StartupError(Exception):
    """The gateway could not start; the message is the one line an operator reads."""


def os_reason(error: BaseException) -> str:
    """An OS error in words ("address already in use"), else the exception's text."""
    if isinstance(error, CannotListenError) and isinstance(error.socketError, BaseException):
        error = error.socketError
    if isinstance(error, OSError) and (error.errno or error.strerror):
        # os.strerror, not strerror: pyserial puts its whole message into strerror.
        text = os.strerror(error.errno) if error.errno else str(error.strerror)
        text = text[:1].lower() + text[1:]
        return f"{error.filename}: {text}" if error.filename else text
    return str(error) or type(error).__name__


class ListeningService(service.Service):
    """Listens while running and keeps the port it got.

    ``listening`` fires once the port is bound, or fails with a one-line
    :class:`StartupError` naming the listener, its address and the reason, so the
    gateway can wait for all its listeners before it calls itself ready.
    """

    def __init__(
        self, description: str, listen: Callable[[], IListeningPort | Deferred[IListeningPort]]
    ) -> None:
        self.description = description
        self._listen = listen
        self.port: IListeningPort | None = None
        self.listening: Deferred[None] | None = None

    @classmethod
    def stream(
        cls, reactor: Any, description: str, factory: Factory, backlog: int | None = None
    ) -> ListeningService:
        """A listener on a Twisted server endpoint string (``tcp:...``, ``systemd:...``),
        with ``backlog`` as its queue unless the string gives one (D-375)."""
        endpoint = description if backlog is None else with_backlog(description, backlog)
        return cls(description, lambda: serverFromString(reactor, endpoint).listen(factory))

    def startService(self) -> None:
        super().startService()
        self.listening = maybeDeferred(self._listen).addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        log.info("{name} listening on {address}", name=self.name, address=port.getHost())

    def _failed(self, failure: Failure) -> None:
        error = failure.value
        why = inherited_socket_problem(self.description, error) or os_reason(error)
        raise StartupError(f"cannot listen for {self.name} on {self.description}: {why}")

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is None:
            return None
        port, self.port = self.port, None
        return maybeDeferred(port.stopListening)


def _registry(config: RegistryConfig, reactor: Any) -> Registry:
    """The registry ``[registry]`` names: PostgreSQL given a ``url`` (one node of
    several, D-386), else the SQLite ``database``."""
    tuning: dict[str, Any] = {"watermarks": config.write_watermarks,
                              "row_watermarks": config.row_watermarks,
                              "master_key_file": config.master_key_path}
    if config.url:
        # PostgreSQL needs the postgres extra (psycopg): imported only when used.
        from m2mgw.core.cluster.registry import NodeRegistry

        return NodeRegistry(config.url, reactor, node=config.node or None, **tuning)
    return SqliteRegistry(config.database, reactor, **tuning)


def _registry_location(config: RegistryConfig) -> str:
    if not config.url:
        return config.database
    from m2mgw.core.postgres.connection import redact

    return redact(config.url)


class GatewayService(service.MultiService):
    """The whole gateway: registry, engine, router, transports, HTTP services.

    Its constructor is the one place where the gateway is assembled: every part is
    built once and handed the collaborators it uses, in the order they need each
    other, as ``twisted/names/tap.py`` builds one resolver chain and hands it to its
    servers. Nothing is rewired afterwards.
    """

    def __init__(
        self,
        config: GatewayConfig,
        reactor: Any,
        registry: Registry | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        #: systemd's ``$NOTIFY_SOCKET`` under ``twistd``; disabled by default (tests).
        self.notifier = notifier or Notifier()
        clock: IReactorTime = reactor
        settings = config.registry
        #: Several nodes on one PostgreSQL database (issue #13): the database the
        #: cluster's lease, claims and wake-ups use; None for a single gateway.
        self.cluster_db: Database | None = None
        shared = registry is None and bool(settings.url)
        self.registry = registry or _registry(settings, reactor)
        if shared:
            from m2mgw.app.shared_outbox import SharedOutbox
            from m2mgw.core.cluster.node import ClusterNode
            from m2mgw.core.cluster.registry import NodeRegistry
            from m2mgw.core.postgres.connection import Database

            assert isinstance(self.registry, NodeRegistry)
            node = self.registry.node
            self.cluster_db = Database(reactor, settings.url, connections=1,
                                       application_name=f"m2mgw {node} cluster")
        #: When the service started (``uptime`` in ``GET /stats``).
        self.started_at: float | None = None
        #: The admin API's tokens (D-190); the file is created at start-up if missing.
        self.admin_tokens = TokenFile(config.admin_tokens_file)

        # The application side the engine hands terminal data to: the notifications'
        # outbox and its channels, then the uplink chain in front of the message log.
        soap_sessions = SoapSessions(clock, config.app)
        callbacks = CallbackChannel(clock, config.app, soap_sessions.notify_session)
        if self.cluster_db is not None:
            self.outbox: Outbox = SharedOutbox(self.registry, callbacks, clock, config.app,
                                               db=self.cluster_db, node=node)
        else:
            self.outbox = Outbox(self.registry, callbacks, clock, config.app)
        self.outbox.setServiceParent(self)
        self.uplink = AppUplink(
            self.registry, self.outbox, StoredUplink(self.registry, clock.seconds), clock
        )

        # The engine's collaborators, then the SMS bearer (the router wakes terminals
        # through it), the router and the engine itself.
        refusals = Refusals(
            clock, burst=config.log.refusal_burst, interval=config.log.refusal_interval
        )
        sessions, events, stats = SessionTable(), EngineEvents(), EngineStats()
        frames = FrameBuilder(sessions, config.protocol, refusals)
        self.sms: SmsService | None = None
        if config.sms.enabled:
            self.sms = SmsService(self.registry, self._sms_received, reactor, config.sms,
                                  stats=stats, queue_ttl=config.protocol.queue_ttl)
        self.router = Router(
            self.registry, sessions, frames, events, clock, config.protocol,
            sms_bearer=self.sms.bearer_for if self.sms is not None else None,
        )
        self.engine = PlatformEngine(
            self.registry,
            config.protocol,
            clock,
            sessions=sessions,
            frames=frames,
            events=events,
            requests=self.router,
            uplink=self.uplink,
            files=DiskFiles(),
            serial_prefix=config.registry.serial_prefix,
            refusals=refusals,
            stats=stats,
        )
        self.files = FileService(self.registry, config, clock)
        files = self.files if config.http.listen else None
        self.apps = ApplicationService(
            self.registry, self.router, self.engine, files, self.outbox, clock, config.app
        )
        self.router.result_observers.append(self.apps.on_result)
        #: This node among those sharing the database; None on SQLite.
        self.cluster: ClusterNode | None = None
        if self.cluster_db is not None:
            assert isinstance(self.registry, NodeRegistry)
            self.cluster = ClusterNode(reactor, settings.url, self.cluster_db, self.registry,
                                       engine=self.engine, router=self.router,
                                       lease_timeout=settings.node_lease)
            self.cluster.outbox_observers.append(self.outbox.pump)
        self.engine.state_observers.append(self.uplink.terminal_changed)

        # The terminal bearers.
        self.tcp_factory: TerminalTcpFactory | None = None
        self.udp_protocol: TerminalDatagramProtocol | None = None
        if config.tcp.listen:
            self.tcp_factory = TerminalTcpFactory(
                self.engine, clock, config.tcp, config.protocol.tcp_login_timeout
            )
            self._listen("tcp", config.tcp.listen, self.tcp_factory, backlog=config.tcp.backlog)
        if config.udp.enabled:
            udp = self.udp_protocol = TerminalDatagramProtocol(self.engine, config.udp)
            interface = config.udp.interface
            description = f"udp:{config.udp.port}" + (interface and f":interface={interface}")
            self._add_listener("udp", ListeningService(
                description,
                lambda: self.reactor.listenUDP(config.udp.port, udp, interface=interface),
            ))
        if self.sms is not None:
            self.sms.setServiceParent(self)
            WakeupSweep(self.registry, self.router, clock,
                        config.protocol.wakeup_min_interval).setServiceParent(self)
        self.registry.add_pressure_observer(self._hold_terminal_input)

        # The applications' listeners: SOAP over HTTP (beside the files) and long
        # connections.
        if config.http.listen:
            endpoint = SoapEndpoint(self.apps, soap_sessions, clock, config.app)
            site = app_web.site(endpoint, self.files.resource())
            self._listen_http("http", config.http.listen, site, HttpLimits.of(config.http))
        if config.app.listen:
            self._listen("app", config.app.listen, capped_long_connections(
                AppFactory(self.apps, self.outbox), config.app, clock))

        # What operators see: the admin API and the metrics.
        observed = Observed(clock, self.registry, self.engine, self.outbox, self.sms,
                            self.tcp_factory, self.udp_protocol)
        #: This gateway's Prometheus registry (D-210), served at ``/metrics``.
        self.metrics = gateway_metrics(observed)
        if config.admin.listen:
            admin = AdminResource(AdminContext(
                clock=clock,
                registry=self.registry,
                engine=self.engine,
                router=self.router,
                files=files,
                tokens=self.admin_tokens,
                allowed_hosts=config.admin.allowed_hosts,
                protocol=config.protocol,
                stats=partial(views.gateway_stats, observed, self),
                problems=self.problems,
                metrics=self.metrics,
                base_key_scheduled=self.outbox.base_key_scheduled,
            ))
            self.engine.state_observers.append(admin.events.terminal_changed)
            self.registry.request_observers.append(admin.events.request_changed)
            admin.events.setServiceParent(self)
            site = DebugAccessLogSite(admin)
            site.displayTracebacks = False
            self._listen_http("admin", config.admin.listen, site, HttpLimits.of(config.admin))
        if config.metrics.listen:
            self._listen_http("metrics", config.metrics.listen, metrics_site(self.metrics),
                              HttpLimits.of(config.metrics))

        # Time: the engine's tick, request expiry and the registry's retention.
        for interval, call in ((TICK_INTERVAL, self._tick), (EXPIRY_INTERVAL, self._expire)):
            timer = TimerService(interval, call)
            timer.clock = clock
            timer.setServiceParent(self)
        self.retention = RetentionService(self.registry, config.registry, clock)
        self.retention.setServiceParent(self)
        #: Fires once the gateway serves; fails with :class:`StartupError` otherwise.
        self.ready: Deferred[None] | None = None
        self._registry_open = False
        self._failed = False

    def _listen(
        self, name: str, description: str, factory: Factory, backlog: int | None = None
    ) -> None:
        self._add_listener(
            name, ListeningService.stream(self.reactor, description, factory, backlog)
        )

    def _listen_http(self, name: str, description: str, site: Site, limits: HttpLimits) -> None:
        """An HTTP listener with request deadlines and a connection cap (D-310..D-312)."""
        self._listen(name, description, limited_site(name, site, limits, self.reactor))

    def _add_listener(self, name: str, listener: ListeningService) -> None:
        listener.setName(name)
        listener.setServiceParent(self)

    def listeners(self) -> list[ListeningService]:
        """Every listener: start-up waits for all of them, ``/health`` checks each."""
        return [child for child in self if isinstance(child, ListeningService)]

    def port_of(self, name: str) -> int | None:
        """The bound port of listener ``tcp``, ``udp``, ``http``, ``admin``, ``app`` or
        ``metrics``."""
        try:
            listener = self.getServiceNamed(name)
        except KeyError:
            return None
        port = listener.port
        return None if port is None else port.getHost().port

    def _hold_terminal_input(self, saturated: bool) -> None:
        """Backpressure: read no terminal input while the registry's writer is behind."""
        for bearer in (self.tcp_factory, self.udp_protocol):
            if bearer is not None:
                bearer.hold_reading(saturated)

    def _sms_received(self, data: bytes, bearer: Bearer) -> None:
        """A frame the modem received enters the engine, which is built after the SMS
        service: the router before it needs the SMS bearer to wake terminals."""
        self.engine.receive(data, bearer)

    def _tick(self) -> None:
        """The engine's deadlines, looked at once a second as they always were: a
        timeout fires at the first tick after it."""
        self.engine.tick(self.reactor.seconds())

    def _expire(self) -> Deferred[Any]:
        return self.router.expire()

    def startService(self) -> None:
        """Open the registry, then start the listeners (asynchronous start-up)."""
        service.Service.startService(self)
        self.started_at = self.reactor.seconds()
        self.ready = self._start()

    @inlineCallbacks
    def _start(self):  # type: ignore[no-untyped-def]
        fit_descriptor_limit(descriptor_needs(self.config))
        try:
            yield self.registry.open()
        except Exception as exc:
            raise self._startup_failed(f"cannot open the registry: {exc}") from None
        self._registry_open = True
        try:
            self.admin_tokens.prepare(self.config.admin.listen)
        except AuthSetupError as exc:
            yield self.registry.close()
            self._registry_open = False
            raise self._startup_failed(str(exc)) from None
        if self.cluster is not None:
            try:
                held = yield self._join()
                # Of several nodes, this one resumes the sessions it held (D-410).
                self.engine.restore_sessions(set(held))
                yield self.cluster.resume()
            except Exception as exc:
                yield self.registry.close()
                self._registry_open = False
                raise self._startup_failed(f"cannot join the cluster: {exc}") from None
        else:
            self.engine.restore_sessions()
        for child in self:
            child.startService()
        outcomes = yield DeferredList(
            [listener.listening for listener in self.listeners()], consumeErrors=True
        )
        problems = [outcome.getErrorMessage() for ok, outcome in outcomes if not ok]
        if problems:
            yield self._stop_all()
            raise self._startup_failed("; ".join(problems))
        terminals, sessions = len(self.registry.terminals()), len(self.engine.sessions)
        log.info(
            "m2mgw ready: {terminals} terminals, {sessions} sessions restored",
            terminals=terminals,
            sessions=sessions,
        )
        self.notifier.notify("READY=1", f"STATUS=ready: {terminals} terminals, {sessions} sessions")
        for terminal in self.registry.terminals():
            if self.registry.queued(terminal.serial or ""):
                self.router.kick(terminal)

    @inlineCallbacks
    def _join(self):  # type: ignore[no-untyped-def]
        """Take this node's lease and listen, before any terminal is accepted; the
        terminals this node held when it stopped."""
        assert self.cluster is not None and self.cluster_db is not None
        try:
            yield self.cluster_db.open()
            held = yield self.cluster.start()
        except Exception:
            self.cluster_db.close()
            raise
        return held

    def _startup_failed(self, problem: str) -> StartupError:
        """The one line that ends a failed start-up, also shown by ``systemctl status``."""
        self._failed = True
        log.critical("m2mgw: {problem}", problem=problem)
        self.notifier.notify(f"STATUS=start-up failed: {problem}")
        return StartupError(problem)

    @inlineCallbacks
    def stopService(self):  # type: ignore[no-untyped-def]
        """Stop accepting, close connections, then flush and close the registry."""
        if self.ready is not None and not self.ready.called:
            # A DeferredList waits without taking the failure from ``ready``'s owner.
            yield DeferredList([self.ready])
        service.Service.stopService(self)
        if self._failed:
            return
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        yield self._stop_all()
        log.info("m2mgw stopped")

    @inlineCallbacks
    def _stop_all(self):  # type: ignore[no-untyped-def]
        yield DeferredList([d for child in reversed(list(self)) if (d := child.stopService())])
        self.router.stop()
        self.engine.refusals.flush()
        if self.tcp_factory is not None:
            self.tcp_factory.close_all()
        if self.cluster is not None and self.cluster.running:
            yield DeferredList([self.cluster.stop()])
        yield self.registry.close()
        self._registry_open = False
        if self.cluster_db is not None:
            self.cluster_db.close()

    @property
    def udp_port(self) -> int | None:
        """The bound UDP port (useful with ``port = 0``)."""
        return self.port_of("udp")

    def problems(self) -> list[str]:
        """What keeps the gateway from serving, one line each; empty when all is up (D-163)."""
        found = []
        if not self.running:
            found.append("gateway: stopping")
        elif self.ready is None or not self.ready.called:
            found.append("gateway: starting")
        if not self._registry_open:
            found.append(f"registry: not open ({_registry_location(self.config.registry)})")
        found += [
            f"{listener.name}: not listening on {listener.description}"
            for listener in self.listeners()
            if listener.port is None
        ]
        if self.cluster is not None and self._registry_open and not self.cluster.lease.live:
            found.append(f"cluster: node {self.cluster.node} holds no lease")
        if self.sms is not None and (modem := self._modem_problem()):
            found.append(f"modem: {modem}")
        return found

    def _modem_problem(self) -> str | None:
        assert self.sms is not None
        serial = self.sms.serial
        if serial.protocol is None:
            error = serial.last_error
            return f"not open ({serial.device}{': ' + os_reason(error) if error else ''})"
        if not serial.protocol.ready:
            return f"not initialised ({serial.device} open, AT set-up not finished)"
        return None


def exit_on_startup_failure(gateway: GatewayService) -> None:
    """Under ``twistd``: a failed start-up stops the reactor and the process exits 1 (D-161).

    twistd exits 0 after ``reactor.stop()`` whatever the reason and has no exit status
    of its own to set, so the status is applied at interpreter exit, after twistd has
    logged its last line and removed its pid file.
    """
    reactor = gateway.reactor

    def failed(failure: Failure) -> None:
        if not failure.check(StartupError):  # a bug, not an operator's problem
            log.failure("m2mgw: start-up failed", failure)
        atexit.register(_exit_now, 1)
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass

    def watch() -> None:
        assert gateway.ready is not None, "twistd starts the service before the reactor"
        gateway.ready.addErrback(failed)

    reactor.callWhenRunning(watch)


#: Allocations between collections of the young generation once the gateway serves
#: (Python's default is 700), D-396.
GC_YOUNG_THRESHOLD = 10_000


def freeze_heap_when_ready(gateway: GatewayService) -> None:
    """Under ``twistd``: once the gateway serves, collect once and freeze what start-up
    allocated (modules, the registry's records, the WSDL), so that the collector's full
    passes no longer walk it (D-359).

    A flood of short connections makes Python run full collections every few seconds;
    over the whole heap each took 100-200 ms, a stall every terminal felt. Frozen
    objects are still freed by reference counting; only cycles among them stay.

    Then the young generation is collected every :data:`GC_YOUNG_THRESHOLD`
    allocations instead of 700 (D-396): what each message allocates lives until its
    answer or its group commit, and collected that often enough of it survived two
    young collections that full ones followed every few seconds under load, 0.4-0.6 s
    each over 10,000 terminals' connections and sessions.
    """

    def freeze(_: object) -> None:
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        log.debug("{count} objects of start-up frozen", count=gc.get_freeze_count())

    def watch() -> None:
        assert gateway.ready is not None, "twistd starts the service before the reactor"
        gateway.ready.addCallback(freeze)

    gateway.reactor.callWhenRunning(watch)


def _exit_now(status: int) -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)

"""Service assembly: one ``MultiService`` built from the ini file (design card).

Start-up is asynchronous: the registry opens (and migrates) first, then the
sessions are restored and the listeners start, so no terminal is accepted before
its record can be read. Shutdown runs the other way: stop accepting, then flush
and close the registry, so nothing accepted is lost.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.application.internet import TimerService, UDPServer
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorCore, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from m2mgw.app.gateway import ApplicationService
from m2mgw.config import GatewayConfig
from m2mgw.core.engine import PlatformEngine
from m2mgw.core.refusals import Refusals
from m2mgw.core.registry import ITerminalRegistry
from m2mgw.core.router import Router
from m2mgw.core.sqlite_registry import SqliteRegistry
from m2mgw.core.uplink import StoredUplink
from m2mgw.logsetup import DebugAccessLogSite
from m2mgw.sms.service import SmsService
from m2mgw.transport.tcp import TerminalTcpFactory
from m2mgw.transport.udp import TerminalDatagramProtocol
from m2mgw.web.admin import AdminResource
from m2mgw.web.files import FileService

log = Logger()

TICK_INTERVAL = 1.0
EXPIRY_INTERVAL = 60.0


class ListeningService(service.Service):
    """Listens on a Twisted endpoint string while running; keeps the port it got."""

    def __init__(self, reactor: Any, description: str, factory: Factory) -> None:
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        d = serverFromString(self.reactor, self.description).listen(self.factory)
        d.addCallback(self._listening)
        d.addErrback(self._failed)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        log.info("{name} listening on {address}", name=self.name, address=port.getHost())

    def _failed(self, failure: Any) -> None:
        log.failure("Cannot listen on {description}", failure, description=self.description)
        if IReactorCore.providedBy(self.reactor) and self.reactor.running:
            self.reactor.stop()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is None:
            return None
        port, self.port = self.port, None
        return maybeDeferred(port.stopListening)


class GatewayService(service.MultiService):
    """The whole gateway: registry, engine, router, transports, HTTP services."""

    def __init__(
        self, config: GatewayConfig, reactor: Any, registry: ITerminalRegistry | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        clock: IReactorTime = reactor
        self.registry = registry or SqliteRegistry(
            config.registry.database,
            reactor,
            watermarks=config.registry.write_watermarks,
            row_watermarks=config.registry.row_watermarks,
        )
        self.uplink = StoredUplink(self.registry, clock.seconds)
        self.engine = PlatformEngine(
            self.registry,
            config.protocol,
            clock,
            serial_prefix=config.registry.serial_prefix,
            uplink=self.uplink,
            refusals=Refusals(
                clock, burst=config.log.refusal_burst, interval=config.log.refusal_interval
            ),
        )
        self.router = Router(self.engine, self.registry, clock, config.protocol)
        self.files = FileService(self.registry, config, clock)
        self.apps = ApplicationService(self)
        self.apps.setServiceParent(self)
        self.tcp_factory: TerminalTcpFactory | None = None
        self.udp_server: UDPServer | None = None
        self.udp_protocol: TerminalDatagramProtocol | None = None
        self.sms: SmsService | None = None
        self._build_children(clock)
        self.registry.add_pressure_observer(self._hold_terminal_input)
        self.ready: Deferred[None] | None = None

    def _build_children(self, clock: IReactorTime) -> None:
        config = self.config
        if config.tcp.listen:
            self.tcp_factory = TerminalTcpFactory(
                self.engine, clock, config.tcp, config.protocol.tcp_login_timeout
            )
            self._listen("tcp", config.tcp.listen, self.tcp_factory)
        if config.udp.enabled:
            self.udp_protocol = TerminalDatagramProtocol(self.engine)
            self.udp_server = UDPServer(
                config.udp.port, self.udp_protocol, interface=config.udp.interface
            )
            self.udp_server.setServiceParent(self)
        if config.sms.enabled:
            self.sms = SmsService(self, clock)
            self.sms.setServiceParent(self)
        if config.http.listen:
            self._listen("http", config.http.listen, self.apps.http_site(self.files.resource()))
        if config.app.listen:
            self._listen("app", config.app.listen, self.apps.listener())
        if config.admin.listen:
            admin = AdminResource(self)
            site = DebugAccessLogSite(admin)
            site.displayTracebacks = False
            self._listen("admin", config.admin.listen, site)
        for interval, call in ((TICK_INTERVAL, self.engine.tick), (EXPIRY_INTERVAL, self._expire)):
            timer = TimerService(interval, call)
            timer.clock = clock
            timer.setServiceParent(self)

    def _listen(self, name: str, description: str, factory: Factory) -> None:
        listener = ListeningService(self.reactor, description, factory)
        listener.setName(name)
        listener.setServiceParent(self)

    def port_of(self, name: str) -> int | None:
        """The bound port of listener ``tcp``, ``http`` or ``admin`` (for ``tcp:0``)."""
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

    def _expire(self) -> Deferred[Any]:
        return self.router.expire()

    def startService(self) -> None:
        """Open the registry, then start the listeners (asynchronous start-up)."""
        service.Service.startService(self)
        self.ready = self._start()

    @inlineCallbacks
    def _start(self):  # type: ignore[no-untyped-def]
        try:
            yield self.registry.open()
        except Exception:
            log.failure("Cannot open the terminal registry; stopping")
            if IReactorCore.providedBy(self.reactor) and self.reactor.running:
                self.reactor.stop()
            raise
        self.engine.restore_sessions()
        for child in self:
            child.startService()
        log.info(
            "m2mgw ready: {terminals} terminals, {sessions} sessions restored",
            terminals=len(self.registry.terminals()),
            sessions=len(self.engine.sessions),
        )
        for terminal in self.registry.terminals():
            if self.registry.queued(terminal.serial or ""):
                self.router.kick(terminal)

    @inlineCallbacks
    def stopService(self):  # type: ignore[no-untyped-def]
        """Stop accepting, close connections, then flush and close the registry."""
        if self.ready is not None and not self.ready.called:
            yield self.ready
        service.Service.stopService(self)
        yield DeferredList([d for child in reversed(list(self)) if (d := child.stopService())])
        self.router.stop()
        self.engine.refusals.flush()
        if self.tcp_factory is not None:
            self.tcp_factory.close_all()
        yield self.registry.close()
        log.info("m2mgw stopped")

    @property
    def udp_port(self) -> int | None:
        """The bound UDP port (useful with ``port = 0``)."""
        if self.udp_server is None or self.udp_server._port is None:
            return None
        return self.udp_server._port.getHost().port

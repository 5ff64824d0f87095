"""A real gateway on loopback and real terminals talking to it over sockets."""

from __future__ import annotations

import configparser
import io
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import DatagramProtocol, Protocol

from m2mgw.config import parse_config
from m2mgw.core.model import CredentialSet, Terminal, TerminalState
from m2mgw.protocol import terminal as role
from m2mgw.protocol.framing import StreamFramer
from m2mgw.service import GatewayService
from tests.spec_examples import (
    BASE_KEY,
    DOWNLINK_PASSWORD,
    IMEI,
    IMSI,
    SERIAL,
    SYNC_VALUES,
    UPLINK_PASSWORD,
)


def gateway_config(db: str, extra: str = "") -> Any:
    """The loopback test gateway's config; ``extra`` adds sections or, for the sections
    below, keys of its own (its value wins)."""
    merged = configparser.ConfigParser(interpolation=None)
    merged.read_string(_BASE_CONFIG.format(db=db))
    merged.read_string(extra)  # a second source: its sections merge into the base's
    text = io.StringIO()
    merged.write(text)
    return parse_config(text.getvalue())


_BASE_CONFIG = """
[registry]
database = {db}
[tcp]
listen = tcp:0:interface=127.0.0.1
[udp]
port = 0
interface = 127.0.0.1
[http]
listen = tcp:0:interface=127.0.0.1
public_url = http://127.0.0.1:1
files_dir = {db}.files
[admin]
listen = tcp:0:interface=127.0.0.1
"""


@defer.inlineCallbacks
def start_gateway(db: str, extra: str = ""):  # type: ignore[no-untyped-def]
    gateway = GatewayService(gateway_config(db, extra), reactor)
    gateway.startService()
    yield gateway.ready
    return gateway


@defer.inlineCallbacks
def until(  # type: ignore[no-untyped-def]
    condition: Callable[[], object], what: str = "the condition", timeout: float = 5.0
):
    """Poll ``condition`` on the real reactor until it holds; fail, naming ``what``, after
    ``timeout`` seconds. For tests of a running gateway, whose sockets, threads and
    timers are the reactor's; unit tests advance a ``task.Clock`` instead."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield task.deferLater(reactor, 0.01, lambda: None)


def provisioned(index: int = 0, **changes: Any) -> Terminal:
    """The spec's example terminal (index 0) or a numbered sibling, pre-registered."""
    fields: dict[str, Any] = dict(
        imei=f"{int(IMEI) + index:015d}",
        imsi=f"{int(IMSI) + index:015d}",
        serial=f"A97203{int(SERIAL[6:]) + index:010d}",
        state=TerminalState.REGISTERED,
        current=CredentialSet(
            uplink_password=UPLINK_PASSWORD, downlink_password=DOWNLINK_PASSWORD, base_key=BASE_KEY
        ),
        apps={"EC0001"},
        default_app="EC0001",
        cipher="legacy",
    )
    fields.update(changes)
    return Terminal(**fields)


def provisioning(terminal: Terminal | None = None) -> dict[str, Any]:
    """The admin API's ``POST /terminals`` body for ``terminal`` (by default the spec's
    example terminal, :func:`provisioned`); what the record leaves unset is left out."""
    terminal = terminal or provisioned()
    creds = terminal.current
    assert creds is not None
    body: dict[str, Any] = {
        "imei": terminal.imei, "imsi": terminal.imsi, "serial": terminal.serial,
        "uplink_password": creds.uplink_password, "downlink_password": creds.downlink_password,
        "base_key": creds.base_key, "cipher": terminal.cipher,
    }
    if terminal.apps:
        body["apps"] = sorted(terminal.apps)
    if terminal.default_app:
        body["default_app"] = terminal.default_app
    return body


def client_for(terminal: Terminal, bearer: str, **kwargs: Any) -> role.TerminalClient:
    creds = terminal.current
    assert creds is not None and terminal.serial and terminal.imsi
    identity = role.TerminalIdentity(
        serial=terminal.serial,
        imei=terminal.imei,
        imsi=terminal.imsi,
        credentials=role.Credentials(
            creds.uplink_password, creds.downlink_password, base_key=creds.base_key
        ),
        cipher=terminal.cipher if terminal.cipher != "none" else None,
        config=dict(SYNC_VALUES),
    )
    return role.TerminalClient(identity, bearer, clock=reactor.seconds, **kwargs)


class TestTerminal:
    __test__ = False

    """Drives a :class:`TerminalClient` over a real socket; waits for its events."""

    def __init__(self, client: role.TerminalClient) -> None:
        self.client = client
        self.events: list[Any] = []
        self._waiters: list[tuple[Callable[[Any], bool], defer.Deferred[Any]]] = []
        self.transmit: Callable[[bytes], None] = lambda data: None
        self.closed = defer.Deferred()

    def send(self, frame: bytes) -> None:
        self.transmit(frame)

    def received(self, frame: bytes) -> None:
        for event in self.client.receive(frame, reactor.seconds()):
            for waiter in self._waiters:
                predicate, d = waiter
                if predicate(event):
                    self._waiters.remove(waiter)
                    d.callback(event)
                    break
            else:
                self.events.append(event)
        for out in self.client.data_to_send():
            self.transmit(out)

    def wait_for(
        self, predicate: Callable[[Any], bool], timeout: float = 5.0
    ) -> defer.Deferred[Any]:
        for event in self.events:
            if predicate(event):
                self.events.remove(event)
                return defer.succeed(event)
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiters.append((predicate, d))
        d.addTimeout(timeout, reactor)
        return d

    def wait_type(self, cls: type, timeout: float = 5.0) -> defer.Deferred[Any]:
        return self.wait_for(lambda e: isinstance(e, cls), timeout)

    def answer_to(self, command: int, timeout: float = 5.0) -> defer.Deferred[Any]:
        return self.wait_for(
            lambda e: isinstance(e, role.Answer) and e.command == command | 0x8000, timeout
        )


class _TcpLink(Protocol):
    def __init__(self, terminal: TestTerminal) -> None:
        self.terminal = terminal
        self.framer = StreamFramer()

    def connectionMade(self) -> None:
        self.terminal.transmit = self.transport.write  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        for frame in self.framer.feed(data):
            self.terminal.received(frame)

    def connectionLost(self, reason: object = None) -> None:
        if not self.terminal.closed.called:
            self.terminal.closed.callback(None)


@defer.inlineCallbacks
def connect_tcp(terminal: TestTerminal, port: int):  # type: ignore[no-untyped-def]
    terminal.closed = defer.Deferred()
    link = _TcpLink(terminal)
    yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), link)
    return link


class UdpLink(DatagramProtocol):
    def __init__(self, terminal: TestTerminal, port: int) -> None:
        self.terminal = terminal
        self.target = ("127.0.0.1", port)
        self.sent: list[bytes] = []
        self.received_raw: list[bytes] = []

    def startProtocol(self) -> None:
        self.terminal.transmit = self.write

    def write(self, data: bytes) -> None:
        self.sent.append(data)
        self.transport.write(data, self.target)  # type: ignore[union-attr]

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received_raw.append(datagram)
        self.terminal.received(datagram)


def connect_udp(terminal: TestTerminal, port: int) -> tuple[UdpLink, Any]:
    link = UdpLink(terminal, port)
    listening = reactor.listenUDP(0, link, interface="127.0.0.1")
    return link, listening

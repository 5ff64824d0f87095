"""Shared pieces for engine tests: the spec's example terminal, provisioned, and a fake bearer.

:func:`engine_registry` is the one place the registry of these tests is chosen: a
:class:`~m2mgw.core.registry.memory.MemoryRegistry` on the fixture's ``task.Clock``, so
the engine and the router run with no reactor, no file and no polling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock

from m2mgw.config import ProtocolConfig
from m2mgw.core.engine.dispatch import PlatformEngine
from m2mgw.core.engine.events import EngineEvents
from m2mgw.core.engine.frames import FrameBuilder
from m2mgw.core.files import DiskFiles
from m2mgw.core.model import CredentialSet, Terminal, TerminalState
from m2mgw.core.refusals import Refusals
from m2mgw.core.registry import Registry
from m2mgw.core.registry.memory import MemoryRegistry, MemoryStore
from m2mgw.core.router import Router
from m2mgw.core.session import Bearer
from m2mgw.core.sessions import SessionTable
from m2mgw.core.stats import EngineStats
from m2mgw.core.uplink import StoredUplink, UplinkSink
from m2mgw.protocol import messages as m
from m2mgw.protocol.codec import decode_frame, encode_message, parse_frame
from m2mgw.protocol.security import DigestKey
from tests.spec_examples import (
    BASE_KEY,
    BASE_KEY_EXPIRY,
    DOWNLINK_PASSWORD,
    IMEI,
    IMSI,
    SERIAL,
    SYNC_CRC,
    SYNC_VALUES,
    TS_11_3,
    UPLINK,
    UPLINK_PASSWORD,
)


@dataclass(eq=False)
class FakeBearer:
    """Collects what the engine sends; ``kind`` tcp, udp or sms."""

    kind: str = "udp"
    address: str = "127.0.0.1:40000"
    sent: list[bytes] = field(default_factory=list)
    is_open: bool = True

    @property
    def host(self) -> str:
        return self.address.rsplit(":", 1)[0] if self.kind != "sms" else self.address

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self) -> None:
        self.is_open = False

    def same_path(self, other: object) -> bool:
        if self.kind == "tcp":
            return other is self
        return isinstance(other, FakeBearer) and other.address == self.address

    def take(self) -> list[m.Message]:
        """Decode and clear what was sent (plaintext answers only)."""
        out = [decode_frame(parse_frame(raw)) for raw in self.sent]
        self.sent.clear()
        return out


def terminal_message(
    message: m.Message,
    seq: int,
    *,
    key: DigestKey | None = UPLINK,
    timestamp: int = 0,
    flag: int = 0,
) -> bytes:
    return encode_message(
        message, sequence_id=seq, serial=SERIAL, key=key, timestamp=timestamp, flag=flag
    )


def login_bytes(seq: int = 1, key: DigestKey = UPLINK) -> bytes:
    return terminal_message(m.Login("1.01", SYNC_CRC), seq, key=key, flag=0x80)


def example_credentials(**expiries: int) -> CredentialSet:
    """The example identity's secrets as the registry stores them; expiries default to U32_MAX."""
    return CredentialSet(
        uplink_password=UPLINK_PASSWORD,
        downlink_password=DOWNLINK_PASSWORD,
        base_key=BASE_KEY,
        **expiries,
    )


def engine_registry(clock: Clock) -> MemoryRegistry:
    """The registry engine tests run on: the one place it is chosen.

    Its store commits a write as it is submitted (:attr:`EngineFixture.store`'s
    ``hold()`` makes writes wait, as a busy database would, until ``release()``); the
    writer's group commit and its flush run on ``clock``.
    """
    return MemoryRegistry(clock)


class EngineFixture:
    """A registry, an engine and its router on a Clock, and the example terminal.

    ``registry`` replaces the in-memory one, for the tests whose point is a real
    database file; ``sms_bearer`` is the router's SMS path (a modem), none by default.
    """

    def __init__(
        self,
        *,
        registry: Registry | None = None,
        uplink: UplinkSink | None = None,
        sms_bearer: Callable[[Terminal], Bearer | None] | None = None,
        **protocol: object,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(TS_11_3)
        self.registry = registry if registry is not None else engine_registry(self.clock)
        config = ProtocolConfig(**protocol)  # type: ignore[arg-type]
        refusals = Refusals(self.clock)
        self.sessions, events = SessionTable(), EngineEvents()
        self.frames = FrameBuilder(self.sessions, config, refusals)
        self.router = Router(
            self.registry, self.sessions, self.frames, events, self.clock, config,
            sms_bearer=sms_bearer,
        )
        self.engine = PlatformEngine(
            self.registry,
            config,
            self.clock,
            sessions=self.sessions,
            frames=self.frames,
            events=events,
            requests=self.router,
            uplink=uplink or StoredUplink(self.registry, self.clock.seconds),
            files=DiskFiles(),
            serial_prefix="A9720300",
            refusals=refusals,
            stats=EngineStats(),
        )

    def tick(self) -> None:
        """One tick of the engine at the clock's time (the gateway ticks once a second)."""
        self.engine.tick(self.clock.seconds())

    @property
    def store(self) -> MemoryStore:
        """The in-memory registry's store, to hold its commits back and release them."""
        assert isinstance(self.registry, MemoryRegistry), "a test on a real database file"
        return self.registry.store

    def commit(self) -> None:
        """The registry's next turn: log entries that must be durable before their
        answer (``log_committed``, group commit) are committed, and the answer sent."""
        self.clock.advance(0)

    @inlineCallbacks
    def start(self, *, provision: bool = True):  # type: ignore[no-untyped-def]
        yield self.registry.open()
        if provision:
            terminal = Terminal(
                imei=IMEI,
                imsi=IMSI,
                serial=SERIAL,
                state=TerminalState.REGISTERED,
                current=example_credentials(base_key_expiry=BASE_KEY_EXPIRY),
                apps={"EC0001"},
                default_app="EC0001",
                cipher="legacy",
            )
            yield self.registry.add(terminal)
            # The example's sync values, stored so that LOGIN answers result 0.
            yield self.registry.store_config(SERIAL, SYNC_VALUES, "reported")

    def stop(self):  # type: ignore[no-untyped-def]
        return self.registry.close()

    @property
    def terminal(self) -> Terminal:
        terminal = self.registry.get(SERIAL)
        assert terminal is not None
        return terminal

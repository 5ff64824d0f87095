"""The reactor the simulator runs on, typed by what it uses of it (the reactor is handed in)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ClientFactory, DatagramProtocol


class Reactor(TypingProtocol):
    """What the simulator needs from a reactor: time, TCP clients and UDP."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, f: Callable[..., object], *a: object) -> IDelayedCall: ...

    def connectTCP(
        self, host: str, port: int, factory: ClientFactory, timeout: float
    ) -> object: ...

    def listenUDP(self, port: int, protocol: DatagramProtocol) -> Any: ...

    def addSystemEventTrigger(
        self, phase: str, event_type: str, f: Callable[..., Any], *a: object
    ) -> Any: ...

"""UDP datagrams from outside every session are rate-limited before any parsing or digest
work, per source address and all together; a session's own address is never limited
(issue #11 part 1, D-355, D-356). The real engine on the in-memory registry, on a Clock."""

from __future__ import annotations

import socket
from pathlib import Path

from twisted.internet import defer
from twisted.internet.interfaces import ISystemHandle
from twisted.trial import unittest
from zope.interface import implementer

from m2mgw.config import UdpConfig
from m2mgw.core.refusals import RateLimit, Reason
from m2mgw.protocol.codec import parse_frame
from m2mgw.protocol.constants import ACK_BIT, Command
from m2mgw.transport.udp import TerminalDatagramProtocol
from tests.core.test_replay import HEARTBEAT
from tests.spec_examples import SERIAL

from .engine_support import EngineFixture, login_bytes

TERMINAL = ("127.0.0.1", 40001)
NEIGHBOUR = ("127.0.0.1", 40002)  # the same NAT address, another terminal's port


class Written:
    """The listening port: what the gateway sent, to whom."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def to(self, addr: tuple[str, int]) -> list[int]:
        return [parse_frame(data).header.command_id for data, to in self.sent if to == addr]


class UdpRateTest(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.fx = EngineFixture()
        yield self.fx.start()
        self.addCleanup(self.fx.stop)
        config = UdpConfig(unauthenticated_rate=2, unauthenticated_total_rate=5)
        self.udp = TerminalDatagramProtocol(self.fx.engine, config)
        self.port = self.udp.transport = Written()  # type: ignore[assignment]

    def receive(self, datagram: bytes, addr: tuple[str, int], times: int = 1) -> None:
        for _ in range(times):
            self.udp.datagramReceived(datagram, addr)

    @property
    def limited(self) -> int:
        return self.fx.engine.refusals.totals[Reason.RATE_LIMITED]

    def test_a_session_is_never_limited_and_strangers_are(self) -> None:
        self.receive(login_bytes(), TERMINAL)
        self.assertEqual(self.port.to(TERMINAL), [Command.LOGIN | ACK_BIT])
        self.assertEqual(self.fx.engine.sessions[SERIAL].bearer.addr, TERMINAL)  # type: ignore[union-attr]
        self.receive(HEARTBEAT, TERMINAL, 100)
        self.assertEqual(self.port.to(TERMINAL).count(Command.HEART_BEAT | ACK_BIT), 100)
        self.assertEqual(self.limited, 0)

        # The same serial from another port is not the session's address: 2 at once.
        received = sum(self.fx.engine.stats.received.values())
        self.receive(HEARTBEAT, NEIGHBOUR, 10)
        self.assertEqual(sum(self.fx.engine.stats.received.values()) - received, 2)
        self.assertEqual(self.limited, 8)
        # Ten more sources, one datagram each: the shared bucket (5, of which the LOGIN
        # and the neighbour took 3) lets two through.
        for port in range(50000, 50010):
            self.receive(b"\x00" * 40, ("192.0.2.9", port))
        self.assertEqual(self.limited, 16)
        self.assertEqual(self.fx.engine.refusals.totals[Reason.FRAMING], 2)

        # The session still passes at once, whatever the strangers did.
        self.receive(HEARTBEAT, TERMINAL, 50)
        self.assertEqual(self.port.to(TERMINAL).count(Command.HEART_BEAT | ACK_BIT), 150)
        self.assertEqual(self.limited, 16)
        # And a second later every bucket has a second's worth again.
        self.fx.clock.advance(1)
        self.receive(HEARTBEAT, NEIGHBOUR, 3)
        self.assertEqual(self.limited, 17)

    def test_short_datagrams_are_limited_too(self) -> None:
        self.receive(b"\x00\x05", NEIGHBOUR, 5)
        self.assertEqual((self.fx.engine.refusals.totals[Reason.FRAMING], self.limited), (2, 3))


class RateLimitTest(unittest.TestCase):
    def test_sources_are_forgotten_oldest_first(self) -> None:
        limit = RateLimit(0.0, burst=1, rate=1, total_burst=100, total_rate=100, max_sources=3)
        self.assertEqual([limit.allow(s, 0.0) for s in "abcd"], [True] * 4)
        self.assertEqual(len(limit), 3)
        self.assertFalse(limit.allow("d", 0.0))
        self.assertTrue(limit.allow("a", 0.0))  # forgotten: a full bucket again
        self.assertTrue(limit.allow("a", 1.0))


@implementer(ISystemHandle)
class Bound:
    """A listening port's socket, real and bound, as the protocol's transport."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))

    def getHandle(self) -> socket.socket:
        return self.socket


class ReceiveBufferTest(unittest.TestCase):
    def test_the_port_asks_for_its_receive_buffer(self) -> None:
        fx = EngineFixture()
        asked = 1 << 20
        udp = TerminalDatagramProtocol(fx.engine, UdpConfig(receive_buffer=asked))
        port = udp.transport = Bound()  # type: ignore[assignment]
        self.addCleanup(port.socket.close)
        udp.startProtocol()
        granted = port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2
        rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
        self.assertEqual(granted, min(asked, rmem_max))

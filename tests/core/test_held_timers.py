"""While a real gateway holds terminal input for backpressure, its first-frame, login and
idle timers do not close the connections whose bytes it leaves unread (issue #11 parts 1
and 4, D-357). The writer is made slow as in test_registry_pressure: another SQLite
connection holds the write lock."""

from __future__ import annotations

import time

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from m2mgw.config import ROW_WATERMARKS
from m2mgw.core.refusals import Reason
from tests.core.registry_backends import WriterLock
from tests.core.test_replay import HEARTBEAT
from tests.e2e.support import until
from tests.e2e.test_gateway_ip import GatewayTestCase, sleep

HOLD = 1.5


class Watched(Protocol):
    """A raw client connection that notes when the gateway closed it."""

    def __init__(self) -> None:
        self.closed_at: float | None = None

    def connectionLost(self, reason: object = None) -> None:
        self.closed_at = time.monotonic()


class HeldTimersTest(GatewayTestCase):
    extra_config = """
[tcp]
first_frame_timeout = 0.5s
idle_timeout = 1s
[protocol]
tcp_login_timeout = 1s
"""

    async def connect(self, first: bytes = b"") -> Watched:
        link = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.tcp_port), Watched())
        self.addCleanup(lambda: link.closed_at or link.transport.abortConnection())
        if first:
            link.transport.write(first)
        return link

    async def test_held_connections_outlive_their_timers_by_the_hold(self) -> None:
        record = await self.add_terminal()
        terminal = await self.open_terminal(record, "tcp")
        await self.log_in(terminal)  # then silent: only its idle timer runs
        logged_in = Watched()
        terminal.closed.addCallback(logged_in.connectionLost)
        silent = await self.connect()  # first-frame timer
        framed = await self.connect(HEARTBEAT)  # a frame, no login: login timer
        factory = self.gateway.tcp_factory
        await until(lambda: len(factory.connections) >= 3
                    and factory.pending.from_host("127.0.0.1") >= 2, "the connections")
        await sleep(0.1)  # the heartbeat is read: its first frame is in
        lock = WriterLock(self.db)
        self.addCleanup(lock.release)
        burst = self.registry.record_statistics(
            record.serial, {tag: b"\x00" for tag in range(ROW_WATERMARKS[0])}, 0.0)
        held_at = time.monotonic()
        self.assertTrue(factory.reading_held)
        await sleep(HOLD)  # longer than every timer
        links = [silent, framed]
        self.assertEqual([link.closed_at for link in links], [None, None])
        self.assertEqual(len(factory.connections), 3)
        lock.release()
        await burst
        released_at = time.monotonic()
        self.assertFalse(factory.reading_held)
        links.append(logged_in)
        await until(lambda: all(link.closed_at for link in links), "the closes")
        # Each closes once its own time has run, the hold apart: 0.5 s from the
        # connection (first frame), 1 s (login) and 1 s from the last bytes (idle).
        for link, seconds in ((silent, 0.5), (framed, 1.0), (logged_in, 1.0)):
            assert link.closed_at is not None
            self.assertGreater(link.closed_at - held_at, HOLD)
            self.assertLess(link.closed_at - released_at, seconds + 0.5)
        totals = self.gateway.engine.refusals.totals
        self.assertEqual((totals[Reason.FIRST_FRAME_TIMEOUT], totals[Reason.LOGIN_TIMEOUT]),
                         (1, 1))

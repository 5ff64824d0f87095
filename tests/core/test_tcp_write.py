"""Answers written straight to an idle socket (D-390), on real sockets on 127.0.0.1.

The terminal connection sends on the socket itself while its transport buffers
nothing, and hands Twisted whatever the kernel does not take: the bytes arrive whole
and in order however the writes split, and a peer that is gone ends the connection
the way Twisted's own write path does.
"""

from __future__ import annotations

import select
import socket
import struct

from twisted.internet import defer, reactor
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater
from twisted.trial import unittest

from m2mgw.config import TcpConfig
from m2mgw.transport.tcp import TerminalConnection, TerminalTcpFactory
from tests.e2e.support import until

from .engine_support import EngineFixture

FRAME = 100  # bytes per send: a 4-byte counter, then filler


def frames(first: int, count: int) -> bytes:
    """``count`` numbered frames: any loss, repeat or reordering shows in the counters."""
    return b"".join(struct.pack(">I", i) + bytes(FRAME - 4) for i in range(first, first + count))


class WriteThroughTest(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.fx = EngineFixture()
        yield self.fx.start()
        self.addCleanup(self.fx.stop)
        config = TcpConfig(max_connections=10, max_unauthenticated_per_host=10,
                           first_frame_timeout=60.0, idle_timeout=600.0,
                           max_write_buffer=1 << 24)
        self.factory = TerminalTcpFactory(self.fx.engine, self.fx.clock, config, 60.0)
        self.port: IListeningPort = reactor.listenTCP(  # type: ignore[attr-defined]
            0, self.factory, interface="127.0.0.1"
        )
        self.addCleanup(self.port.stopListening)

    async def accept(
        self, *, small_buffers: bool = False
    ) -> tuple[TerminalConnection, socket.socket]:
        peer = socket.socket()
        self.addCleanup(peer.close)
        if small_buffers:
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.setblocking(False)
        peer.connect_ex(("127.0.0.1", self.port.getHost().port))
        await until(lambda: len(self.factory.connections) == 1, "the connection")
        [connection] = self.factory.connections
        if small_buffers:
            connection.transport.getHandle().setsockopt(  # type: ignore[union-attr]
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
        self.addCleanup(connection.close)
        return connection, peer

    @staticmethod
    def buffered(connection: TerminalConnection) -> int:
        transport = connection.transport
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen  # type: ignore[union-attr]

    async def test_an_idle_connection_writes_at_once(self) -> None:
        connection, peer = await self.accept()
        connection.send(frames(0, 3))
        # Already in the kernel: nothing waits for the reactor's next turn.
        self.assertEqual(self.buffered(connection), 0)
        self.assertEqual(select.select([peer], [], [], 1.0)[0], [peer])
        self.assertEqual(peer.recv(65536), frames(0, 3))
        self.assertEqual(sum(self.fx.engine.stats.sent.values()), 1, "one send, counted once")

    async def test_what_the_kernel_does_not_take_follows_in_order(self) -> None:
        connection, peer = await self.accept(small_buffers=True)
        count = 20_000  # 2 MB: far beyond both socket buffers (and below the cap)
        for i in range(0, count, 100):
            connection.send(frames(i, 100))
        self.assertGreater(self.buffered(connection), 0, "the kernel took only part of it")
        connection.send(frames(count, 1))  # while Twisted holds bytes: behind them
        expected = frames(0, count + 1)
        received = bytearray()
        while len(received) < len(expected):
            await deferLater(reactor, 0.001, lambda: None)
            try:
                received.extend(peer.recv(1 << 16))
            except BlockingIOError:
                pass
        self.assertEqual(len(received), len(expected))
        self.assertTrue(received == expected, "every byte once, in order")
        self.assertEqual(self.buffered(connection), 0)

    async def test_a_peer_gone_closes_the_connection_without_raising(self) -> None:
        connection, peer = await self.accept()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # a reset, not a FIN
        for i in range(10):
            connection.send(frames(i, 1))  # the first ones may still find the socket open
        await until(lambda: not connection.is_open, "the connection closed")
        self.assertEqual(self.factory.connections, set())
        connection.send(frames(10, 1))  # after the close: ignored

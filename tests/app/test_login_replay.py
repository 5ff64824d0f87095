"""A captured APP_LOGIN replayed over a real socket (issue #15 item 9, D-256, D-257).

The bytes are captured on the wire by a TCP proxy between the application and the
gateway, then sent again from another connection. APP_LOGIN's digest has TS 0 (5.2),
so the gateway cannot tell them from a real login and answers them; but the session
they open stays unconfirmed: it receives nothing and displaces no one.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.protocols import portforward

from m2mgw.app import longconn as lc
from m2mgw.app import operations as ops
from m2mgw.protocol.constants import Command
from m2mgw.protocol.framing import StreamFramer
from tests.e2e.support import until

from .gateway_support import AppGatewayTestCase, sleep

R = ops.ResultCode
LOGIN, LOGIN_ACK = lc.Command.APP_LOGIN, lc.Command.APP_LOGIN | 0x8000


class _Recording(portforward.ProxyServer):
    """Forwards what the application sends, and keeps a copy."""

    def dataReceived(self, data: bytes) -> None:
        self.factory.captured += data  # type: ignore[attr-defined]
        super().dataReceived(data)


class _Replayer(Protocol):
    """Sends the captured bytes; collects every frame the gateway sends back."""

    def __init__(self, captured: bytes) -> None:
        self.captured = captured
        self.framer = StreamFramer()
        self.frames: list[lc.Frame] = []
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.captured)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.frames.extend(lc.parse_frame(raw) for raw in self.framer.feed(data))

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)

    def commands(self) -> list[int]:
        return [frame.header.command_id for frame in self.frames]


class LoginReplayTest(AppGatewayTestCase):
    @defer.inlineCallbacks
    def capture_login(self):  # type: ignore[no-untyped-def]
        """A real login of type 1 through a recording proxy: its APP_LOGIN bytes."""
        factory = portforward.ProxyFactory("127.0.0.1", self.app_port)
        factory.protocol = _Recording
        factory.captured = b""  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.app_port, direct = port.getHost().port, self.app_port
        client, inbox = yield self.connect_app(login_type=1)
        self.app_port = direct
        first = StreamFramer().feed(factory.captured)[0]
        frame = lc.parse_frame(first)
        self.assertEqual((frame.header.command_id, frame.body[0]), (LOGIN, 1))
        return first, client, inbox

    @defer.inlineCallbacks
    def replay(self, captured: bytes):  # type: ignore[no-untyped-def]
        replayer = _Replayer(captured)
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.app_port),
                              replayer)
        self.addCleanup(self._hang_up, replayer)
        yield until(lambda: replayer.frames, "the replayed login's answer")
        ack = replayer.frames[0]
        self.assertEqual((ack.header.command_id, ack.body[0]), (LOGIN_ACK, R.OK),
                         "the bytes are a valid login: answered like one")
        return replayer

    @staticmethod
    def _hang_up(replayer: _Replayer) -> defer.Deferred[None]:
        if replayer.transport is not None and replayer.transport.connected:
            replayer.transport.loseConnection()
        return replayer.closed

    @defer.inlineCallbacks
    def test_a_replay_neither_replaces_the_application_nor_reads_its_data(self):  # type: ignore[no-untyped-def]
        captured, client, inbox = yield self.capture_login()
        term = yield self.online_terminal()
        replayer = yield self.replay(captured)
        term.send(term.client.transparent_data(b"\x77", "EC0001"))
        ack = yield term.answer_to(Command.TRANSPARENT_DATA)
        self.assertEqual(ack.message.result, 0)
        data = yield inbox.wait(lambda n: isinstance(n, ops.DeliverData), timeout=2)
        self.assertEqual(data.data, b"\x77", "the real application still has its session")
        yield sleep(0.3)
        self.assertEqual(replayer.commands(), [LOGIN_ACK], "nothing else")
        self.assertFalse(client.closed.called, "not replaced (APP_LOGOUT 3) by the replay")
        status = yield client.call(ops.QueryTerminalStatus(terminal_ids=[self.record.serial]))
        self.assertEqual(status.statuses[0].state, "ONLINE")

    @defer.inlineCallbacks
    def test_a_replay_gets_no_kept_notification(self):  # type: ignore[no-untyped-def]
        captured, client, _ = yield self.capture_login()
        yield client.logout()
        term = yield self.online_terminal()
        term.send(term.client.transparent_data(b"\x78", "EC0001"))
        ack = yield term.answer_to(Command.TRANSPARENT_DATA)
        self.assertEqual(ack.message.result, 1, "no application connected: kept")
        replayer = yield self.replay(captured)
        yield sleep(0.3)
        self.assertEqual(replayer.commands(), [LOGIN_ACK])
        # The application itself logs in (its own bytes, the same ones) and gets it.
        _, inbox = yield self.connect_app(login_type=1)
        data = yield inbox.wait(lambda n: isinstance(n, ops.DeliverData), timeout=2)
        self.assertEqual(data.data, b"\x78")
        self.assertEqual(replayer.commands(), [LOGIN_ACK])

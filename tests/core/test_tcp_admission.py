"""Who may hold a terminal TCP connection before logging in (issue #11 part 1, D-350..D-354,
D-357): the first-frame window, eviction at the caps, and timers that stand still while
the gateway holds the input. The adapter on a Clock, the real engine on the in-memory registry."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from m2mgw.config import TcpConfig
from m2mgw.core.refusals import Reason
from m2mgw.limits import Unauthenticated
from m2mgw.transport.tcp import TerminalConnection, TerminalTcpFactory
from tests.core.test_replay import HEARTBEAT, trap

from .engine_support import EngineFixture, login_bytes

LOGIN_TIMEOUT = 60.0


class AdmissionTestCase(unittest.TestCase):
    config = TcpConfig(max_connections=4, max_unauthenticated_per_host=3,
                       first_frame_timeout=10.0, idle_timeout=600.0)

    @defer.inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.fx = EngineFixture()
        yield self.fx.start()
        self.addCleanup(self.fx.stop)
        self.factory = TerminalTcpFactory(self.fx.engine, self.fx.clock, self.config,
                                          LOGIN_TIMEOUT)
        self.ports = iter(range(40000, 50000))

    def connect(self, host: str = "127.0.0.1") -> tuple[TerminalConnection, StringTransport]:
        peer = IPv4Address("TCP", host, next(self.ports))
        connection = self.factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        connection.makeConnection(transport)
        return connection, transport

    def lose(self, connection: TerminalConnection) -> None:
        """What the reactor does after a close or abort: connectionLost."""
        connection.connectionLost()

    def advance(self, seconds: float) -> None:
        self.fx.clock.advance(seconds)

    @property
    def refusals(self) -> Any:
        return self.fx.engine.refusals.totals


class FirstFrameTest(AdmissionTestCase):
    def test_silence_and_a_trickle_are_closed_at_the_first_frame_deadline(self) -> None:
        silent, silent_t = self.connect()
        trickling, trickling_t = self.connect("127.0.0.2")
        for i in range(9):
            self.advance(1)
            trickling.dataReceived(HEARTBEAT[i : i + 1])  # a header's bytes, never a frame
        self.assertFalse(silent_t.disconnecting or trickling_t.disconnecting)
        self.advance(1)
        self.assertTrue(silent_t.disconnecting and trickling_t.disconnecting)
        self.assertEqual(self.factory.connections, set())
        for connection in (silent, trickling):
            self.lose(connection)
        self.assertEqual(self.refusals[Reason.FIRST_FRAME_TIMEOUT], 2)
        # The trickle is one refusal, not a second one for its half frame at close.
        self.assertEqual(self.refusals[Reason.FRAMING], 0)

    def test_a_complete_frame_leaves_the_login_deadline(self) -> None:
        connection, transport = self.connect()
        connection.dataReceived(HEARTBEAT)  # a whole frame, unsigned: no login
        self.advance(LOGIN_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        self.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.refusals[Reason.FIRST_FRAME_TIMEOUT], 0)
        self.assertEqual(self.refusals[Reason.LOGIN_TIMEOUT], 1)

    def test_a_login_ends_both_deadlines(self) -> None:
        connection, transport = self.connect()
        connection.dataReceived(login_bytes())
        self.assertTrue(connection.authenticated)
        self.advance(LOGIN_TIMEOUT + 1)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.factory.pending.oldest(), None)


class EvictionTest(AdmissionTestCase):
    def authenticated(self, host: str = "127.0.0.1") -> tuple[TerminalConnection, StringTransport]:
        """A connection the engine binds: the LOGIN, then verified traps on new ones."""
        connection, transport = self.connect(host)
        seq = getattr(self, "_seq", 1)
        connection.dataReceived(login_bytes() if seq == 1 else trap(seq))
        self._seq = seq + 1
        self.assertTrue(connection.authenticated)
        return connection, transport

    def test_at_the_cap_the_oldest_not_logged_in_makes_room(self) -> None:
        _logged_in, logged_in_t = self.authenticated()
        idle = [self.connect(f"127.0.0.{i}") for i in (2, 3, 4)]
        self.advance(1)
        newcomer, newcomer_t = self.connect("127.0.0.5")
        self.assertEqual([t.disconnecting for _, t in idle], [True, False, False])
        self.assertFalse(logged_in_t.disconnecting or newcomer_t.disconnecting)
        self.assertEqual(len(self.factory.connections), 4)
        self.assertEqual((self.factory.evicted, self.refusals[Reason.EVICTED]), (1, 1))
        self.lose(idle[0][0])
        # The newcomer logs in at once, as a terminal does.
        newcomer.dataReceived(trap(2))
        self.assertTrue(newcomer.authenticated)
        more = [self.connect("127.0.0.6") for _ in range(2)]
        self.assertEqual([t.disconnecting for _, t in idle[1:]], [True, True])
        self.assertFalse(any(t.disconnecting for _, t in more))
        self.assertFalse(logged_in_t.disconnecting or newcomer_t.disconnecting)
        self.assertEqual(self.factory.evicted, 3)

    def test_when_all_are_logged_in_the_newcomer_is_refused(self) -> None:
        held = [self.authenticated() for _ in range(4)]
        newcomer, newcomer_t = self.connect("127.0.0.9")
        self.assertTrue(newcomer_t.disconnecting)
        self.assertFalse(any(t.disconnecting for _, t in held))
        self.assertNotIn(newcomer, self.factory.connections)
        self.assertEqual(self.refusals[Reason.CONNECTION_CAP], 1)
        self.assertEqual(self.factory.evicted, 0)
        self.lose(newcomer)
        self.assertEqual(len(self.factory.connections), 4)

    def test_one_address_gives_up_its_own_oldest_and_no_one_elses(self) -> None:
        _other, other_t = self.connect("198.51.100.7")
        flood = [self.connect("203.0.113.1") for _ in range(3)]
        self.assertEqual(self.factory.pending.from_host("203.0.113.1"), 3)
        _fourth, fourth_t = self.connect("203.0.113.1")
        # Below the listener's cap of 4 too: only the address's own cap applies.
        self.assertEqual([t.disconnecting for _, t in flood], [True, False, False])
        self.assertFalse(other_t.disconnecting or fourth_t.disconnecting)
        self.assertEqual(self.factory.pending.from_host("203.0.113.1"), 3)
        self.assertEqual(self.factory.evicted, 1)

    def test_a_nat_pool_of_logged_in_terminals_is_not_capped(self) -> None:
        """max_unauthenticated_per_host counts only connections not logged in."""
        nat = "203.0.113.1"
        self.factory.config = TcpConfig(max_connections=10, max_unauthenticated_per_host=1)
        terminals = [self.authenticated(nat) for _ in range(5)]
        _newcomer, newcomer_t = self.connect(nat)
        self.assertFalse(newcomer_t.disconnecting)
        self.assertFalse(any(t.disconnecting for _, t in terminals))
        self.assertEqual(len(self.factory.connections), 6)


class HeldInputTest(AdmissionTestCase):
    """D-357: while the gateway holds a connection's input its timers stand still."""

    config = TcpConfig(first_frame_timeout=10.0, idle_timeout=100.0)

    def test_the_first_frame_and_login_deadlines_wait_for_the_hold(self) -> None:
        _fresh, fresh_t = self.connect()
        self.advance(4)
        self.factory.hold_reading(True)
        self.assertEqual(fresh_t.producerState, "paused")
        _late, late_t = self.connect()  # accepted during the hold: held from the start
        self.assertEqual(late_t.producerState, "paused")
        self.advance(3 * LOGIN_TIMEOUT)
        self.assertFalse(fresh_t.disconnecting or late_t.disconnecting)
        self.factory.hold_reading(False)
        self.assertEqual((fresh_t.producerState, late_t.producerState), ("producing",) * 2)
        self.advance(5.9)
        self.assertFalse(fresh_t.disconnecting)
        self.advance(0.1)  # 4 s before the hold and 6 s after it: 10 s
        self.assertTrue(fresh_t.disconnecting)
        self.assertFalse(late_t.disconnecting)
        self.advance(4)
        self.assertTrue(late_t.disconnecting)

    def test_the_login_and_idle_deadlines_too(self) -> None:
        unbound, unbound_t = self.connect()
        unbound.dataReceived(HEARTBEAT)
        bound, bound_t = self.connect()
        bound.dataReceived(login_bytes())
        self.advance(50)
        self.factory.hold_reading(True)
        self.advance(1000)
        self.factory.hold_reading(False)
        self.advance(9.9)
        self.assertFalse(unbound_t.disconnecting)
        self.advance(0.1)
        self.assertTrue(unbound_t.disconnecting)  # 60 s of login time, the hold apart
        self.assertFalse(bound_t.disconnecting)
        self.advance(40)
        self.assertTrue(bound_t.disconnecting)  # 100 s idle, the hold apart
        self.assertEqual(self.refusals[Reason.LOGIN_TIMEOUT], 1)

    def test_a_hold_released_again_and_again_never_closes_early(self) -> None:
        _connection, transport = self.connect()
        for _ in range(20):
            self.factory.hold_reading(True)
            self.advance(30)
            self.factory.hold_reading(False)
            self.advance(0.4)
        self.assertFalse(transport.disconnecting)  # 8 s counted of 10
        self.advance(2)
        self.assertTrue(transport.disconnecting)


class UnauthenticatedTest(unittest.TestCase):
    def test_order_and_hosts(self) -> None:
        pending: Unauthenticated[str] = Unauthenticated()
        for name, host in (("a", "h1"), ("b", "h2"), ("c", "h1"), ("d", "h1")):
            pending.add(name, host)
        self.assertEqual((len(pending), pending.from_host("h1")), (4, 3))
        self.assertEqual((pending.oldest(), pending.oldest("h1"), pending.oldest("h2")),
                         ("a", "a", "b"))
        pending.discard("a")
        pending.discard("b")
        pending.discard("b")
        self.assertEqual((pending.oldest(), pending.oldest("h2"), pending.from_host("h2")),
                         ("c", None, 0))
        self.assertNotIn("a", pending)
        self.assertIn("d", pending)

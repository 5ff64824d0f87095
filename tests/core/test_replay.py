"""Replays and hijacks inside the engine and the TCP adapter (issue #15 items 1, 6, 7, 8,
12): fake bearers, a Clock, and the in-memory registry."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from m2mgw.config import TcpConfig
from m2mgw.core.model import LogEntry, RequestState, TerminalState
from m2mgw.core.refusals import Reason
from m2mgw.protocol import messages as m
from m2mgw.protocol.codec import build_frame, parse_frame
from m2mgw.protocol.constants import ACK_BIT, Command
from m2mgw.protocol.replay import WINDOW
from m2mgw.protocol.security import DigestKey
from m2mgw.protocol.tlv import Tlv
from m2mgw.transport.tcp import TerminalTcpFactory
from tests.spec_examples import IMEI, IMSI, SERIAL, TS_11_3, VECTORS

from .engine_support import EngineFixture, FakeBearer, login_bytes, terminal_message

HEARTBEAT = VECTORS["11.4 HEART_BEAT"]


class CountingUplink:
    """An application side that takes everything at once and counts it."""

    def __init__(self) -> None:
        self.delivered: list[bytes] = []
        self.fail_next = False

    def exists(self, app_id: str) -> bool:
        return True

    def deliver(
        self, app_id: str, serial: str, message: Any, *, sequence_id: int, bearer: str
    ) -> Any:
        if self.fail_next:
            self.fail_next = False
            return defer.fail(RuntimeError("disk full"))
        self.delivered.append(message.user_data)
        return 0

    def notify_trap(self, terminal: Any, values: Any, bearer: str) -> None:
        pass


def data(seq: int, payload: bytes, timestamp: int = TS_11_3) -> bytes:
    message = m.TransparentData.build(payload, Tlv.of(0x4014, "EC0001"))
    return terminal_message(message, seq, timestamp=timestamp)


def trap(seq: int, *tlvs: Tlv, timestamp: int = TS_11_3) -> bytes:
    return terminal_message(m.ConfigTrap(tlvs=list(tlvs)), seq, timestamp=timestamp)


class ReplayEngineTest(unittest.TestCase):
    """The response cache forgets at once: every replay comes after it moved on."""

    @defer.inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.uplink = CountingUplink()
        self.fx = EngineFixture(uplink=self.uplink, response_cache_window=0.0)
        yield self.fx.start()
        self.addCleanup(self.fx.stop)
        self.home = FakeBearer(address="127.0.0.1:40000")
        self.fx.engine.receive(login_bytes(), self.home)
        self.fx.engine.receive(trap(2), self.home)
        self.home.sent.clear()

    @property
    def session(self):  # type: ignore[no-untyped-def]
        return self.fx.engine.sessions[SERIAL]

    def replayed(self) -> int:
        return self.fx.engine.refusals.counts(SERIAL).get(Reason.REPLAYED, 0)

    def test_signed_data_is_delivered_once(self) -> None:
        frame = data(3, b"\x01")
        self.fx.engine.receive(frame, self.home)
        self.assertEqual(self.uplink.delivered, [b"\x01"])
        self.fx.clock.advance(600)
        elsewhere = FakeBearer(address="10.9.9.9:5000")
        self.fx.engine.receive(frame, elsewhere)
        self.fx.engine.receive(frame, self.home)
        self.assertEqual(self.uplink.delivered, [b"\x01"])
        self.assertEqual(elsewhere.sent, [])
        self.assertEqual(len(self.home.sent), 1, "only the first one was answered")
        self.assertIs(self.session.bearer, self.home)
        self.assertEqual(self.session.last_valid, TS_11_3, "a replay is no traffic")
        self.assertEqual(self.replayed(), 2)

    def test_a_fresh_message_moves_the_bearer(self) -> None:
        """9.6 mixed mode stays: a new signed message from elsewhere is the new path."""
        elsewhere = FakeBearer(address="10.9.9.9:5000")
        self.fx.engine.receive(data(3, b"\x02"), elsewhere)
        self.assertEqual(len(elsewhere.sent), 1)
        self.assertIs(self.session.bearer, elsewhere)

    def test_order_is_free_within_the_window(self) -> None:
        self.fx.engine.receive(data(10, b"\x0a"), self.home)
        self.fx.engine.receive(data(5, b"\x05"), self.home)
        self.assertEqual(self.uplink.delivered, [b"\x0a", b"\x05"])

    def test_a_sequence_id_behind_the_window_is_stale(self) -> None:
        last = 3 + WINDOW  # with seq 2's trap: two more traps than the window holds
        for seq in range(3, last + 1):
            self.fx.engine.receive(trap(seq, Tlv.of(0x3007, seq % 100)), self.home)
        self.home.sent.clear()
        self.fx.engine.receive(data(3, b"\x03"), self.home)  # new bytes, a forgotten number
        self.assertEqual((self.uplink.delivered, self.home.sent), ([], []))
        self.fx.engine.receive(data(4, b"\x04"), self.home)  # still remembered around it
        self.fx.engine.receive(data(last + 1, b"\x44"), self.home)
        self.assertEqual(self.uplink.delivered, [b"\x04", b"\x44"])

    def test_a_failed_store_lets_the_retransmission_in(self) -> None:
        self.uplink.fail_next = True
        frame = data(3, b"\x04")
        self.fx.engine.receive(frame, self.home)
        self.assertEqual(self.home.sent, [])
        self.flushLoggedErrors(RuntimeError)
        self.fx.engine.receive(frame, self.home)
        self.assertEqual(self.uplink.delivered, [b"\x04"])

    @defer.inlineCallbacks
    def test_a_replayed_answer_moves_nothing(self):  # type: ignore[no-untyped-def]
        body = m.ConfigGet(tlvs=[Tlv.query(0x0011)]).encode_body()
        first = yield self.fx.router.submit(SERIAL, Command.CONFIG_GET, body)
        seq = parse_frame(self.home.sent[-1]).header.sequence_id
        answer = terminal_message(
            m.ConfigGetAck(0, tlvs=[Tlv.of(0x0011, 60)]), seq, timestamp=TS_11_3
        )
        self.fx.engine.receive(answer, self.home)
        self.assertEqual(first.state, RequestState.SUCCEEDED)
        yield self.fx.router.submit(SERIAL, Command.CONFIG_GET, body)
        elsewhere = FakeBearer(address="10.9.9.9:5000")
        self.fx.engine.receive(answer, elsewhere)
        self.assertIs(self.session.bearer, self.home)
        self.assertEqual(self.replayed(), 1)

    def test_an_unsigned_heartbeat_moves_no_bearer(self) -> None:
        """PD-25 lets the same IP keep the session alive, never take its downlink."""
        neighbour = FakeBearer(address="127.0.0.1:40001")
        self.fx.clock.advance(30)
        self.fx.engine.receive(HEARTBEAT, neighbour)
        self.assertEqual(len(neighbour.sent), 1)
        self.assertEqual(self.session.last_valid, TS_11_3 + 30)
        self.assertIs(self.session.bearer, self.home)
        self.assertIs(self.fx.engine.reachable(self.fx.terminal), self.home)


class LoginReplayEngineTest(unittest.TestCase):
    """A LOGIN's digest has timestamp 0: its bytes verify again and again (D-299)."""

    @defer.inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.fx = EngineFixture(response_cache_window=0.0)
        yield self.fx.start()
        self.addCleanup(self.fx.stop)
        self.home = FakeBearer(kind="tcp", address="127.0.0.1:40000")
        self.fx.engine.receive(login_bytes(), self.home)
        self.fx.engine.receive(trap(2), self.home)
        self.home.sent.clear()
        self.first = self.fx.engine.sessions[SERIAL]

    def test_replayed_while_logged_in(self) -> None:
        replayer = FakeBearer(kind="tcp", address="10.9.9.9:5000")
        self.fx.engine.receive(login_bytes(), replayer)
        [ack] = replayer.take()
        self.assertEqual((ack.result, ack.timestamp), (0, TS_11_3 + 1))
        self.assertIs(self.fx.engine.sessions[SERIAL], self.first)
        self.assertTrue(self.home.is_open)
        self.assertIsNone(self.fx.sessions.bound_serial(replayer))
        self.assertIs(self.fx.engine.reachable(self.fx.terminal), self.home)
        # The same bytes again: the same answer, no new timestamp or key.
        self.fx.engine.receive(login_bytes(), replayer)
        self.fx.engine.receive(login_bytes(), replayer)
        [again, third] = replayer.sent
        self.assertEqual(again, third)
        self.fx.engine.receive(HEARTBEAT, replayer)
        self.assertEqual(len(replayer.sent), 2, "its heartbeats are not answered")
        # The terminal goes on in its session.
        self.fx.engine.receive(trap(3), self.home)
        self.assertEqual(len(self.home.sent), 1)
        self.assertEqual(self.fx.engine.refusals.counts(SERIAL)[Reason.REPLAYED], 3)

    def test_a_restarted_terminal_begins_the_session_it_asked_for(self) -> None:
        restarted = FakeBearer(kind="tcp", address="127.0.0.1:40002")
        self.fx.engine.receive(login_bytes(), restarted)
        [ack] = restarted.take()
        timestamp = ack.timestamp
        self.fx.engine.receive(trap(2, timestamp=timestamp), restarted)  # its own seq 2 again
        [trap_ack] = restarted.take()
        self.assertEqual(trap_ack.ret, 0)
        session = self.fx.engine.sessions[SERIAL]
        self.assertIsNot(session, self.first)
        self.assertEqual(session.timestamp, timestamp)
        self.assertEqual(self.fx.terminal.session_timestamp, timestamp)
        self.assertFalse(self.home.is_open, "its previous connection is closed (10.2)")
        self.assertEqual(self.fx.sessions.bound_serial(restarted), SERIAL)
        # The old session's messages no longer verify.
        self.fx.engine.receive(trap(3), self.home)
        self.assertEqual(self.home.sent, [])

    def test_an_unflagged_digest_begins_nothing_under_strict(self) -> None:
        """C1 is the profile's to allow, here as in LOGIN (D-231)."""
        restarted = FakeBearer(kind="tcp", address="127.0.0.1:40002")
        self.fx.engine.receive(login_bytes(), restarted)
        [ack] = restarted.take()
        frame = build_frame(
            Command.CONFIG_TRAP, 2, SERIAL, b"", flag=0, key=login_key(),
            timestamp=ack.timestamp, flag_digest=False,
        )  # fmt: skip
        self.fx.engine.receive(frame, restarted)
        self.assertIs(self.fx.engine.sessions[SERIAL], self.first)

    def test_after_logout_the_state_waits_too(self) -> None:
        self.fx.engine.receive(terminal_message(m.Logout(0), 3, timestamp=TS_11_3), self.home)
        self.assertEqual(self.fx.terminal.state, TerminalState.LOGGED_OUT)
        replayer = FakeBearer(address="10.9.9.9:5000")
        self.fx.engine.receive(login_bytes(), replayer)
        [ack] = replayer.take()
        self.assertEqual(ack.result, 0)
        self.assertEqual(self.fx.terminal.state, TerminalState.LOGGED_OUT)
        self.assertNotIn(SERIAL, self.fx.engine.sessions)
        self.fx.engine.receive(HEARTBEAT, replayer)
        self.assertEqual(replayer.sent, [])
        # Unproven for as long as a session would live without traffic, then forgotten.
        self.fx.clock.advance(3 * 90 + 1)
        self.fx.tick()
        self.fx.engine.receive(trap(2, timestamp=ack.timestamp), replayer)
        self.assertEqual(replayer.sent, [])
        self.assertEqual(self.fx.terminal.state, TerminalState.LOGGED_OUT)

    def test_a_fresh_login_drops_the_waiting_one(self) -> None:
        replayer = FakeBearer(address="10.9.9.9:5000")
        self.fx.engine.receive(login_bytes(), replayer)
        self.fx.clock.advance(5)
        self.fx.engine.receive(login_bytes(seq=9), self.home)  # bytes never seen
        [ack] = self.home.take()
        self.assertEqual(ack.timestamp, TS_11_3 + 5)
        self.assertEqual(self.fx.engine.sessions[SERIAL].timestamp, TS_11_3 + 5)
        self.assertIsNone(self.fx.sessions.record(SERIAL).opening)

    def test_the_record_keeps_no_row_of_it(self) -> None:
        rows = logged(self.fx)
        replayer = FakeBearer(address="10.9.9.9:5000")
        for _ in range(20):
            self.fx.engine.receive(login_bytes(), replayer)
        self.assertEqual(rows, [])


def login_key() -> DigestKey:
    return DigestKey.make(IMEI, IMSI, "12345678")


def logged(fx: EngineFixture) -> list[LogEntry]:
    """The message-log rows the engine writes from now on."""
    rows: list[LogEntry] = []
    inner = fx.registry.log

    def log(entry: LogEntry) -> None:
        rows.append(entry)
        inner(entry)

    fx.registry.log = log  # type: ignore[method-assign]
    return rows


class UnauthenticatedRowsTest(unittest.TestCase):
    """Item 12: a refused frame that was not authenticated is counted, not written."""

    @defer.inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.fx = EngineFixture()
        yield self.fx.start()
        self.addCleanup(self.fx.stop)
        self.rows = logged(self.fx)

    def test_bad_logins_and_registers(self) -> None:
        bearer = FakeBearer()
        body = m.Login("1.01", 0).encode_body()
        wrong = DigestKey.make(IMEI, IMSI, "00000000")
        for seq in range(1, 51):
            self.fx.engine.receive(
                build_frame(Command.LOGIN, seq, f"A97203{seq:010d}", body, flag=0x80), bearer
            )
            self.fx.engine.receive(login_bytes(seq=seq, key=wrong), bearer)
            unsigned = build_frame(Command.LOGIN, seq, SERIAL, body, flag=0x80)
            self.fx.engine.receive(unsigned, bearer)
            register = m.Register(0, "869999999999999", IMSI).encode_body()
            self.fx.engine.receive(build_frame(Command.REGISTER, seq, SERIAL, register), bearer)
        self.assertEqual(len(bearer.sent), 200, "each one is still answered")
        self.assertEqual(self.rows, [])
        totals = self.fx.engine.refusals.totals
        self.assertEqual(
            [totals[r] for r in (Reason.UNKNOWN_SERIAL, Reason.AUTH_FAILED, Reason.MISSING_DIGEST)],
            [50, 50, 50],
        )
        self.assertEqual(totals[Reason.NOT_PROVISIONED], 50)
        self.assertEqual(self.fx.terminal.auth_failures, 100)

    def test_an_authenticated_refusal_keeps_its_row(self) -> None:
        self.fx.terminal.enabled = False
        bearer = FakeBearer()
        self.fx.engine.receive(login_bytes(), bearer)
        [ack] = bearer.take()
        self.assertEqual(ack.result, 4)
        [row] = self.rows
        self.assertEqual(row.event, "answer")
        self.assertIn("DISABLED", row.detail)

    def test_a_logout_without_a_session_changes_nothing_and_writes_nothing(self) -> None:
        bearer = FakeBearer()
        self.fx.engine.receive(login_bytes(), bearer)
        logout = terminal_message(m.Logout(0), 2, timestamp=TS_11_3)
        self.fx.engine.receive(logout, bearer)
        before = len(self.rows)
        for _ in range(10):
            self.fx.engine.receive(logout, bearer)
        self.assertEqual(len(bearer.sent), 12, "each one answered, as 4.5 says")
        self.assertEqual(len(self.rows), before)


class TcpAuthenticationTest(unittest.TestCase):
    """Item 1 in the adapter: an answer is not an authentication (D-290)."""

    @defer.inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.fx = EngineFixture()
        yield self.fx.start()
        self.addCleanup(self.fx.stop)
        self.factory = TerminalTcpFactory(self.fx.engine, self.fx.clock, TcpConfig(), 60.0)

    def connect(self) -> tuple[Any, StringTransport]:
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        connection = self.factory.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        connection.makeConnection(transport)
        return connection, transport

    def test_a_refused_login_keeps_the_login_timer(self) -> None:
        connection, transport = self.connect()
        body = m.Login("1.01", 0).encode_body()
        connection.dataReceived(build_frame(Command.LOGIN, 1, "A972030099999999", body, flag=0x80))
        self.assertEqual(parse_frame(transport.value()).header.command_id, Command.LOGIN | ACK_BIT)
        for _ in range(59):
            self.fx.clock.advance(1)
            connection.dataReceived(b"")
        self.assertFalse(transport.disconnecting)
        self.fx.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(connection.authenticated)
        self.assertEqual(self.fx.engine.refusals.totals[Reason.LOGIN_TIMEOUT], 1)

    def test_an_accepted_login_authenticates(self) -> None:
        connection, transport = self.connect()
        connection.dataReceived(login_bytes())
        self.assertTrue(connection.authenticated)
        self.assertEqual(connection.bound_serial, SERIAL)
        self.fx.clock.advance(61)
        self.assertFalse(transport.disconnecting)

    def test_a_verified_message_of_a_logged_in_terminal_authenticates(self) -> None:
        """10.2 mixed mode: any digest-verified message binds an unbound connection."""
        self.fx.engine.receive(login_bytes(), FakeBearer())
        connection, transport = self.connect()
        connection.dataReceived(HEARTBEAT)  # unsigned: binds nothing
        self.assertFalse(connection.authenticated)
        connection.dataReceived(trap(2))
        self.assertTrue(connection.authenticated)
        self.fx.clock.advance(61)
        self.assertFalse(transport.disconnecting)

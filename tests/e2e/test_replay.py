"""Issue #15 items 1, 6, 7, 8 and 12 from outside: captured bytes replayed from other
sockets, unauthenticated connections and floods, against a real gateway on loopback."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.logger import globalLogPublisher

from m2mgw.core.model import CredentialSet, RequestState, TerminalState
from m2mgw.core.refusals import TOTAL_FACTOR, Reason
from m2mgw.protocol import messages as m
from m2mgw.protocol import terminal as role
from m2mgw.protocol.codec import build_frame, parse_frame
from m2mgw.protocol.constants import ACK_BIT, Command
from m2mgw.protocol.framing import StreamFramer
from m2mgw.protocol.security import DigestKey
from m2mgw.protocol.tlv import Tlv
from tests import cmcc

from .support import TestTerminal, connect_tcp, provisioned, until
from .test_gateway_ip import GatewayTestCase, sleep

#: The response cache forgets at once, so that every replay comes "once the cache has
#: moved on"; unauthenticated connections live one second.
REPLAY_CONFIG = "[protocol]\nresponse_cache_window = 0s\ntcp_login_timeout = 1s\n"
CONFIG_GET = m.ConfigGet(tlvs=[Tlv.query(0x0002)]).encode_body()


class RawTcp(Protocol):
    """A replayer's TCP socket: writes bytes as given, frames what comes back."""

    def __init__(self) -> None:
        self.framer = StreamFramer()
        self.frames: list[bytes] = []
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.frames.extend(self.framer.feed(data))

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)

    def commands(self) -> list[int]:
        return [parse_frame(f).header.command_id for f in self.frames]


class RawUdp(DatagramProtocol):
    """A replayer's UDP socket on a port of its own."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.datagrams: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.transport.write(data, self.target)  # type: ignore[union-attr]

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.datagrams.append(datagram)


def capture(term: TestTerminal) -> list[bytes]:
    """Every frame the terminal sends from now on, as it went on the wire."""
    sent: list[bytes] = []
    inner = term.transmit

    def transmit(data: bytes) -> None:
        sent.append(data)
        inner(data)

    term.transmit = transmit
    return sent


def of_command(frames: list[bytes], command: int) -> list[bytes]:
    return [f for f in frames if parse_frame(f).header.command_id == command]


class ReplayTestCase(GatewayTestCase):
    extra_config = REPLAY_CONFIG

    @defer.inlineCallbacks
    def raw_tcp(self):  # type: ignore[no-untyped-def]
        raw = RawTcp()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.tcp_port), raw)
        self.addCleanup(lambda: raw.lost)
        self.addCleanup(raw.transport.loseConnection)
        return raw

    def raw_udp(self) -> RawUdp:
        raw = RawUdp(self.udp_port)
        port = reactor.listenUDP(0, raw, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return raw

    def refused(self, serial: str, reason: Reason) -> int:
        return self.gateway.engine.refusals.counts(serial).get(reason, 0)

    @defer.inlineCallbacks
    def uplinks(self, serial: str):  # type: ignore[no-untyped-def]
        entries = yield self.registry.messages(serial, limit=500)
        return [e for e in entries if e.event == "uplink-data"]

    @defer.inlineCallbacks
    def platform_request_reaches(self, record, term: TestTerminal):  # type: ignore[no-untyped-def]
        request = yield self.gateway.router.submit(record.serial, Command.CONFIG_GET, CONFIG_GET)
        yield term.wait_for(lambda e: isinstance(e, role.PlatformRequest))
        yield until(lambda: request.state == RequestState.SUCCEEDED)


class TcpLockoutTest(ReplayTestCase):
    """Item 1: an answer is not an authentication."""

    @defer.inlineCallbacks
    def test_a_refused_login_does_not_keep_its_connection(self):  # type: ignore[no-untyped-def]
        raw = yield self.raw_tcp()
        body = m.Login("1.01", 0).encode_body()
        raw.transport.write(build_frame(Command.LOGIN, 1, "A972030099999999", body, flag=0x80))
        yield until(lambda: raw.frames)
        self.assertEqual(raw.commands(), [Command.LOGIN | ACK_BIT])
        self.assertEqual(m.LoginAck.decode_body(parse_frame(raw.frames[0]).body).result, 3)
        # One byte at a time (of a frame never finished) keeps the idle timer young,
        # not the login timer.
        keepalive = task.LoopingCall(raw.transport.write, b"\x01")
        keepalive.start(0.2)
        self.addCleanup(lambda: keepalive.running and keepalive.stop())
        yield raw.lost.addTimeout(3, reactor)
        self.assertEqual(self.gateway.engine.refusals.totals[Reason.LOGIN_TIMEOUT], 1)

    @defer.inlineCallbacks
    def test_a_wrong_password_does_not_keep_its_connection(self):  # type: ignore[no-untyped-def]
        yield self.add_terminal()
        wrong = provisioned(
            current=CredentialSet(
                uplink_password="00000000", downlink_password="87654321", base_key="x" * 24
            )
        )
        term = yield self.open_terminal(wrong, "tcp")
        term.send(term.client.login())
        failed = yield term.wait_type(role.LoginFailed)
        self.assertEqual(failed.result, 2)
        yield term.closed.addTimeout(3, reactor)

    @defer.inlineCallbacks
    def test_a_logged_in_connection_outlives_the_login_timer(self):  # type: ignore[no-untyped-def]
        record = yield self.add_terminal()
        term = yield self.open_terminal(record, "tcp")
        yield self.log_in(term)
        yield sleep(1.5)
        self.assertFalse(term.closed.called)
        term.send(term.client.heartbeat())
        yield term.answer_to(Command.HEART_BEAT)


class LoginReplayTest(ReplayTestCase):
    """Item 6: LOGIN bytes (timestamp 0 in their digest) replayed from another socket."""

    @defer.inlineCallbacks
    def logged_in_capturing(self, record, bearer: str = "tcp"):  # type: ignore[no-untyped-def]
        term = yield self.open_terminal(record, bearer)
        sent = capture(term)
        yield self.log_in(term)
        return term, sent

    @defer.inlineCallbacks
    def test_the_login_of_a_live_session_replayed(self):  # type: ignore[no-untyped-def]
        record = yield self.add_terminal()
        term, sent = yield self.logged_in_capturing(record)
        [login] = of_command(sent, Command.LOGIN)
        session = self.gateway.engine.sessions[record.serial]
        raw = yield self.raw_tcp()
        raw.transport.write(login)
        yield until(lambda: raw.frames)
        # Answered, but the session it asks for waits for a message signed under the
        # new timestamp, which the replayer cannot make: the live session goes on.
        self.assertEqual(raw.commands(), [Command.LOGIN | ACK_BIT])
        self.assertEqual(self.refused(record.serial, Reason.REPLAYED), 1)
        self.assertIs(self.gateway.engine.sessions[record.serial], session)
        self.assertFalse(term.closed.called, "the real terminal's connection stays open")
        # The replayer's unsigned heartbeats are not answered; downlink goes to the terminal.
        raw.transport.write(term.client.heartbeat())
        yield self.platform_request_reaches(record, term)
        self.assertEqual(raw.commands(), [Command.LOGIN | ACK_BIT])
        yield raw.lost.addTimeout(3, reactor)  # never authenticated: the login timer
        term.send(term.client.heartbeat())
        yield term.answer_to(Command.HEART_BEAT)

    @defer.inlineCallbacks
    def test_an_older_login_replayed_while_logged_in(self):  # type: ignore[no-untyped-def]
        record = yield self.add_terminal()
        term, sent = yield self.logged_in_capturing(record)
        yield self.log_in(term)  # a second LOGIN: a new session (PD-19)
        first, second = of_command(sent, Command.LOGIN)
        self.assertNotEqual(first, second)
        session = self.gateway.engine.sessions[record.serial]
        raw = yield self.raw_tcp()
        raw.transport.write(first)
        yield until(lambda: raw.frames)
        self.assertEqual(self.refused(record.serial, Reason.REPLAYED), 1)
        # Sent again, the same LOGIN gets the same answer: no new timestamp, no new key.
        raw.transport.write(first)
        yield until(lambda: len(raw.frames) == 2)
        self.assertEqual(raw.frames[0], raw.frames[1])
        self.assertIs(self.gateway.engine.sessions[record.serial], session)
        self.assertFalse(term.closed.called)
        yield self.platform_request_reaches(record, term)

    @defer.inlineCallbacks
    def test_a_login_replayed_after_logout_opens_no_path(self):  # type: ignore[no-untyped-def]
        record = yield self.add_terminal()
        term, sent = yield self.logged_in_capturing(record)
        term.send(term.client.logout(0))
        yield term.wait_type(role.LoggedOut)
        [login] = of_command(sent, Command.LOGIN)
        raw = yield self.raw_tcp()
        raw.transport.write(login)
        yield until(lambda: raw.frames)
        self.assertEqual(raw.commands(), [Command.LOGIN | ACK_BIT])
        self.assertEqual(self.registry.get(record.serial).state, TerminalState.LOGGED_OUT)
        # No session yet: no heartbeat answered, no downlink, no binding.
        raw.transport.write(term.client.heartbeat())
        request = yield self.gateway.router.submit(record.serial, Command.CONFIG_GET, CONFIG_GET)
        yield sleep(0.3)
        self.assertEqual(raw.commands(), [Command.LOGIN | ACK_BIT])
        self.assertEqual(request.state, RequestState.QUEUED)
        yield raw.lost.addTimeout(3, reactor)
        # The terminal restarts (Sequence_ID 1 again): the same bytes, and its signed
        # trap begins the session; the queued request then reaches it.
        restarted = yield self.open_terminal(record, "tcp")
        again = capture(restarted)
        yield self.log_in(restarted)
        self.assertEqual(of_command(again, Command.LOGIN), [login])
        self.assertEqual(self.registry.get(record.serial).state, TerminalState.LOGGED_IN)
        yield restarted.wait_for(lambda e: isinstance(e, role.PlatformRequest))
        yield until(lambda: request.state == RequestState.SUCCEEDED)

    @defer.inlineCallbacks
    def test_a_restarted_terminal_begins_its_session(self):  # type: ignore[no-untyped-def]
        """The same bytes from the real terminal after a reboot: no lockout. Its first
        signed message begins the new session and closes the old connection (10.2)."""
        record = yield self.add_terminal()
        old, sent = yield self.logged_in_capturing(record)
        timestamp = self.gateway.engine.sessions[record.serial].timestamp
        restarted = yield self.open_terminal(record, "tcp")  # the old socket is left half-open
        again = capture(restarted)
        yield self.log_in(restarted)
        self.assertEqual(of_command(again, Command.LOGIN), of_command(sent, Command.LOGIN))
        session = self.gateway.engine.sessions[record.serial]
        self.assertEqual(restarted.client.session_timestamp, session.timestamp)
        self.assertGreater(session.timestamp, timestamp)
        yield old.closed.addTimeout(3, reactor)
        restarted.send(restarted.client.heartbeat())
        yield restarted.answer_to(Command.HEART_BEAT)
        yield self.platform_request_reaches(record, restarted)
        yield sleep(1.2)
        self.assertFalse(restarted.closed.called, "its connection was authenticated")

    @defer.inlineCallbacks
    def test_a_login_replayed_over_udp(self):  # type: ignore[no-untyped-def]
        record = yield self.add_terminal()
        term, sent = yield self.logged_in_capturing(record, "udp")
        [login] = of_command(sent, Command.LOGIN)
        session = self.gateway.engine.sessions[record.serial]
        raw = self.raw_udp()
        raw.send(login)
        yield until(lambda: raw.datagrams)
        self.assertIs(self.gateway.engine.sessions[record.serial], session)
        yield self.platform_request_reaches(record, term)
        self.assertEqual(len(raw.datagrams), 1, "the LOGIN_ACK, and no platform request")


class CompatLoginReplayTest(ReplayTestCase):
    """The CMCC client (cmcc-javame, C3) sends the LOGIN of 1.6 byte for byte at every
    start: its empty post-login trap, truly signed, begins its session."""

    @defer.inlineCallbacks
    def cmcc_logged_in(self):  # type: ignore[no-untyped-def]
        term = TestTerminal(cmcc.client(reactor.seconds))
        self.links.append((yield connect_tcp(term, self.tcp_port)))
        term.send(term.client.login())
        yield term.wait_type(role.LoggedIn)
        term.send(term.client.trap([]))
        yield term.answer_to(Command.CONFIG_TRAP)
        term.send(term.client.transparent_data(b"\xaa", "EC0001"))  # unsigned (C3)
        ack = yield term.answer_to(Command.TRANSPARENT_DATA)
        self.assertEqual(ack.message.result, 1)
        return term

    @defer.inlineCallbacks
    def test_a_restarted_cmcc_client_and_a_replayer(self):  # type: ignore[no-untyped-def]
        yield self.registry.add(cmcc.record())
        first = yield self.cmcc_logged_in()
        # A replayer with the LOGIN's bytes gets no session, and C3 gives it nothing.
        raw = yield self.raw_tcp()
        raw.transport.write(cmcc.LOGIN_1_6)
        yield until(lambda: raw.frames)
        raw.transport.write(first.client.transparent_data(b"\xbb", "EC0001"))
        yield until(lambda: self.refused(cmcc.SERIAL, Reason.MISSING_DIGEST) == 1)
        self.assertEqual(len(raw.frames), 1)
        # The client restarts: the same LOGIN, its empty trap, then its unsigned data.
        again = yield self.cmcc_logged_in()
        yield first.closed.addTimeout(3, reactor)
        self.assertEqual(len((yield self.uplinks(cmcc.SERIAL))), 2)
        again.send(again.client.logout(0))
        yield again.wait_type(role.LoggedOut)


class SignedReplayTest(ReplayTestCase):
    """Item 7: a captured signed TRANSPARENT_DATA replayed later, from elsewhere."""

    @defer.inlineCallbacks
    def test_over_tcp_from_another_connection(self):  # type: ignore[no-untyped-def]
        record = yield self.add_terminal()
        term = yield self.open_terminal(record, "tcp")
        yield self.log_in(term)
        sent = capture(term)
        term.send(term.client.transparent_data(b"\x10\x20", "EC0001"))
        yield term.answer_to(Command.TRANSPARENT_DATA)
        [data] = of_command(sent, Command.TRANSPARENT_DATA)
        session = self.gateway.engine.sessions[record.serial]
        tcp = session.tcp
        raw = yield self.raw_tcp()
        raw.transport.write(data)
        yield until(lambda: self.refused(record.serial, Reason.REPLAYED) == 1)
        self.assertEqual(raw.frames, [], "dropped: never answered, never delivered")
        self.assertEqual(len((yield self.uplinks(record.serial))), 1)
        self.assertIs(session.tcp, tcp)
        self.assertIs(session.bearer, tcp)
        # The terminal's own retransmission of it, later, on its own connection: dropped too.
        term.send(data)
        yield until(lambda: self.refused(record.serial, Reason.REPLAYED) == 2)
        self.assertEqual(len((yield self.uplinks(record.serial))), 1)
        yield self.platform_request_reaches(record, term)
        yield raw.lost.addTimeout(3, reactor)

    @defer.inlineCallbacks
    def test_over_udp_from_another_address(self):  # type: ignore[no-untyped-def]
        record = yield self.add_terminal()
        term = yield self.open_terminal(record, "udp")
        yield self.log_in(term)
        sent = capture(term)
        term.send(term.client.transparent_data(b"\x30", "EC0001"))
        yield term.answer_to(Command.TRANSPARENT_DATA)
        [data] = of_command(sent, Command.TRANSPARENT_DATA)
        session = self.gateway.engine.sessions[record.serial]
        address = session.bearer.address
        raw = self.raw_udp()
        raw.send(data)
        yield until(lambda: self.refused(record.serial, Reason.REPLAYED) == 1)
        self.assertEqual(raw.datagrams, [])
        self.assertEqual(len((yield self.uplinks(record.serial))), 1)
        self.assertEqual(session.bearer.address, address)
        yield self.platform_request_reaches(record, term)


class CachedReplayTest(ReplayTestCase):
    extra_config = "[protocol]\ntcp_login_timeout = 1s\n"

    @defer.inlineCallbacks
    def test_within_the_cache_window_the_cached_answer(self):  # type: ignore[no-untyped-def]
        """With the response cache on: the replayer gets the cached ACK, nothing else."""
        record = yield self.add_terminal()
        term = yield self.open_terminal(record, "udp")
        yield self.log_in(term)
        sent = capture(term)
        term.send(term.client.transparent_data(b"\x31", "EC0001"))
        yield term.answer_to(Command.TRANSPARENT_DATA)
        [data] = of_command(sent, Command.TRANSPARENT_DATA)
        session = self.gateway.engine.sessions[record.serial]
        address = session.bearer.address
        raw = self.raw_udp()
        raw.send(data)
        yield until(lambda: raw.datagrams)
        self.assertEqual(parse_frame(raw.datagrams[0]).header.command_id, 0x8004)
        self.assertEqual(len((yield self.uplinks(record.serial))), 1)
        self.assertEqual(session.bearer.address, address)


class HeartbeatPortTest(ReplayTestCase):
    """Item 8: behind carrier NAT the port tells devices apart."""

    @defer.inlineCallbacks
    def test_a_heartbeat_from_another_port_moves_nothing(self):  # type: ignore[no-untyped-def]
        record = yield self.add_terminal()
        term = yield self.open_terminal(record, "udp")
        yield self.log_in(term)
        session = self.gateway.engine.sessions[record.serial]
        address = session.bearer.address
        neighbour = self.raw_udp()  # same IP, another port
        neighbour.send(term.client.heartbeat())
        yield until(lambda: neighbour.datagrams)  # PD-25: the IP may keep it alive
        self.assertEqual(session.bearer.address, address)
        yield self.platform_request_reaches(record, term)
        self.assertEqual(len(neighbour.datagrams), 1)


class UnauthenticatedFloodTest(ReplayTestCase):
    """Item 12: counted and summed up, not written per frame."""

    # Every datagram to the engine: here the refusals are counted, not rate-limited (D-356).
    extra_config = REPLAY_CONFIG + "[udp]\nunauthenticated_rate = 100000\n"

    @defer.inlineCallbacks
    def test_bad_logins_write_no_rows_and_few_lines(self):  # type: ignore[no-untyped-def]
        record = yield self.add_terminal()
        lines: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(lines.append)
        self.addCleanup(globalLogPublisher.removeObserver, lines.append)
        body = m.Login("1.01", 0).encode_body()
        raw = yield self.raw_tcp()
        udp = self.raw_udp()
        wrong = DigestKey.make(record.imei, record.imsi or "", "00000000")
        count = 300
        for i in range(count):
            made_up = f"A97203{1_000_000 + i:010d}"
            raw.transport.write(build_frame(Command.LOGIN, i + 1, made_up, body, flag=0x80))
            udp.send(build_frame(Command.LOGIN, i + 1, record.serial, body, flag=0x80, key=wrong))
            if i % 50 == 49:
                yield sleep(0.02)  # within the UDP socket buffers
        yield until(lambda: len(raw.frames) == count and len(udp.datagrams) == count)
        refusals = self.gateway.engine.refusals
        self.assertEqual(refusals.totals[Reason.UNKNOWN_SERIAL], count)
        self.assertEqual(refusals.totals[Reason.AUTH_FAILED], count)
        rows = yield self.registry.message_page(limit=10_000)
        self.assertEqual(rows, [], "no message-log row for an unauthenticated frame")
        refusals.flush()
        reasons = (Reason.UNKNOWN_SERIAL, Reason.AUTH_FAILED)
        mine = [e for e in lines if e.get("reason") in reasons]
        logged = [e for e in mine if e.get("event") == "refusal"]
        summed = sum(e["suppressed"] for e in mine if e.get("event") == "refusals-suppressed")
        self.assertLessEqual(len(logged), refusals.burst * TOTAL_FACTOR)
        self.assertEqual(len(logged) + summed, 2 * count, "each one counted in a line or a sum")

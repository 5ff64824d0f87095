"""End to end over real loopback sockets: the gateway service and terminals (issue #3)."""

from __future__ import annotations

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from m2mgw.core.model import RequestState, TerminalState
from m2mgw.protocol import messages as m
from m2mgw.protocol import terminal as role
from m2mgw.protocol.constants import Command
from m2mgw.protocol.tlv import Tlv

from .support import (
    TestTerminal,
    client_for,
    connect_tcp,
    connect_udp,
    provisioned,
    start_gateway,
)


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


class GatewayTestCase(unittest.TestCase):
    extra_config = ""

    @defer.inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.db = self.mktemp() + ".db"
        self.gateway = yield start_gateway(self.db, self.extra_config)
        self.addCleanup(self.gateway.stopService)
        self.registry = self.gateway.registry
        self.tcp_port = self.gateway.port_of("tcp")
        self.udp_port = self.gateway.udp_port
        self.links: list[object] = []
        self.addCleanup(self._close_links)

    def _close_links(self) -> defer.Deferred[object]:
        closing = []
        for link in self.links:
            if hasattr(link, "stopListening"):
                closing.append(defer.maybeDeferred(link.stopListening))
            elif getattr(link, "transport", None) is not None and link.transport.connected:
                link.transport.loseConnection()
                closing.append(link.terminal.closed)
        return defer.gatherResults(closing)

    @defer.inlineCallbacks
    def add_terminal(self, index: int = 0, **changes):  # type: ignore[no-untyped-def]
        record = provisioned(index, **changes)
        yield self.registry.add(record)
        return record

    @defer.inlineCallbacks
    def open_terminal(self, record, bearer: str, **kwargs):  # type: ignore[no-untyped-def]
        term = TestTerminal(client_for(record, "udp" if bearer == "udp" else "tcp", **kwargs))
        yield self.attach(term, bearer)
        return term

    @defer.inlineCallbacks
    def attach(self, term: TestTerminal, bearer: str):  # type: ignore[no-untyped-def]
        if bearer == "udp":
            link, port = connect_udp(term, self.udp_port)
            self.links.append(port)
            return link
        link = yield connect_tcp(term, self.tcp_port)
        self.links.append(link)
        return link

    @defer.inlineCallbacks
    def log_in(self, term: TestTerminal):  # type: ignore[no-untyped-def]
        term.send(term.client.login())
        event = yield term.wait_type(role.LoggedIn)
        if event.result == 0:
            # As deployed terminals do after LOGIN_ACK 0 (spec 4.4): an empty trap.
            term.send(term.client.trap([]))
        # After LOGIN_ACK 1 the client sends its sync trap by itself.
        yield term.answer_to(Command.CONFIG_TRAP)
        return event


class FullExchangeTest(GatewayTestCase):
    """register -> login -> heartbeat -> trap -> transparent data -> logout."""

    @defer.inlineCallbacks
    def exchange(self, bearer: str):  # type: ignore[no-untyped-def]
        record = yield self.add_terminal(state=TerminalState.UNREGISTERED, imsi=None)
        record_for_client = provisioned()
        term = yield self.open_terminal(record_for_client, bearer)
        term.send(term.client.register(3))
        registered = yield term.wait_type(role.Registered)
        self.assertEqual((registered.result, registered.serial), (1, record.serial))
        self.assertEqual(record.state, TerminalState.REGISTERED)

        logged_in = yield self.log_in(term)
        self.assertEqual(logged_in.result, 1)
        self.assertEqual(record.state, TerminalState.LOGGED_IN)
        self.assertEqual(self.registry.config_values(record.serial)[0x0002], b"CMNET")

        if bearer != "tcp-short":
            term.send(term.client.heartbeat())
            yield term.answer_to(Command.HEART_BEAT)

        term.send(term.client.trap([Tlv.of(0x3007, 23)]))
        ack = yield term.answer_to(Command.CONFIG_TRAP)
        self.assertEqual(ack.message.ret, 0)
        self.assertEqual(self.registry.config_values(record.serial)[0x3007], b"\x17")

        term.send(term.client.transparent_data(b"\x01\x02\x03\x04", "EC0001"))
        ack = yield term.answer_to(Command.TRANSPARENT_DATA)
        self.assertEqual(ack.message.result, 1)  # stored for the application side

        term.send(term.client.logout(0))
        yield term.wait_type(role.LoggedOut)
        self.assertEqual(record.state, TerminalState.LOGGED_OUT)
        entries = yield self.registry.messages(record.serial, limit=200)
        uplinks = [e for e in entries if e.event == "uplink-data"]
        self.assertEqual(len(uplinks), 1)
        self.assertIn("01020304", uplinks[0].detail)
        return term

    def test_tcp_long(self):  # type: ignore[no-untyped-def]
        return self.exchange("tcp")

    def test_udp(self):  # type: ignore[no-untyped-def]
        return self.exchange("udp")

    @defer.inlineCallbacks
    def test_tcp_short(self):  # type: ignore[no-untyped-def]
        term = yield self.exchange("tcp-short")
        # A short connection closes after the logout; the next exchange opens anew.
        self.links[-1].transport.loseConnection()
        yield term.closed
        yield self.attach(term, "tcp")
        yield self.log_in(term)
        term.send(term.client.transparent_data(b"\x05", "EC0001"))
        ack = yield term.answer_to(Command.TRANSPARENT_DATA)
        self.assertEqual(ack.message.result, 1)
        term.send(term.client.logout(0))
        yield term.wait_type(role.LoggedOut)


class SessionRulesTest(GatewayTestCase):
    @defer.inlineCallbacks
    def test_bearer_switch_mid_session(self):  # type: ignore[no-untyped-def]
        """Login over TCP, then a request over UDP: answered on UDP (5.2.1, 9.6)."""
        record = yield self.add_terminal()
        term = yield self.open_terminal(record, "tcp")
        yield self.log_in(term)
        tcp_transmit = term.transmit
        udp_link = yield self.attach(term, "udp")
        term.send(term.client.transparent_data(b"\xaa", "EC0001"))
        yield term.answer_to(Command.TRANSPARENT_DATA)
        self.assertEqual(len(udp_link.received_raw), 1, "the answer came back over UDP")
        session = self.gateway.engine.sessions[record.serial]
        self.assertEqual(session.bearer.kind, "udp")
        # A platform request now prefers the bound TCP connection (9.6 order).
        body = m.ConfigGet(tlvs=[Tlv.query(0x0002)]).encode_body()
        term.transmit = tcp_transmit
        request = yield self.gateway.router.submit(record.serial, Command.CONFIG_GET, body)
        yield sleep(0.2)
        self.assertEqual(request.state, RequestState.SUCCEEDED, request.outcome)

    @defer.inlineCallbacks
    def test_requests_online_and_offline(self):  # type: ignore[no-untyped-def]
        online = yield self.add_terminal(0)
        offline = yield self.add_terminal(1)
        term = yield self.open_terminal(online, "tcp")
        yield self.log_in(term)
        get = m.ConfigGet(tlvs=[Tlv.query(0x0002), Tlv.query(0x0011)]).encode_body()
        now_request = yield self.gateway.router.submit(online.serial, Command.CONFIG_GET, get)
        yield term.wait_for(lambda e: isinstance(e, role.PlatformRequest))
        yield sleep(0.1)
        self.assertEqual(now_request.state, RequestState.SUCCEEDED)
        self.assertEqual(
            self.registry.config_values(online.serial)[0x0011], (90).to_bytes(4, "big")
        )

        ctrl = m.RemoteCtrl.build(4).encode_body()
        first = yield self.gateway.router.submit(offline.serial, Command.CONFIG_GET, get)
        second = yield self.gateway.router.submit(offline.serial, Command.REMOTE_CTRL, ctrl)
        self.assertEqual((first.state, second.state), (RequestState.QUEUED, RequestState.QUEUED))
        later = yield self.open_terminal(offline, "udp")
        yield self.log_in(later)
        first_seen = yield later.wait_for(lambda e: isinstance(e, role.PlatformRequest))
        second_seen = yield later.wait_for(lambda e: isinstance(e, role.PlatformRequest))
        self.assertEqual(
            [first_seen.message.COMMAND, second_seen.message.COMMAND],
            [Command.CONFIG_GET, Command.REMOTE_CTRL],
            "delivered after login, in order",
        )
        yield sleep(0.1)
        self.assertEqual(first.state, RequestState.SUCCEEDED)
        self.assertEqual(second.state, RequestState.SUCCEEDED)

    @defer.inlineCallbacks
    def test_wrong_digest_then_message_before_login(self):  # type: ignore[no-untyped-def]
        record = yield self.add_terminal()
        wrong = provisioned(current=None)
        wrong.current = type(record.current)(
            uplink_password="00000000", downlink_password="87654321", base_key="x" * 24
        )
        term = yield self.open_terminal(wrong, "udp")
        term.send(term.client.login())
        failed = yield term.wait_type(role.LoginFailed)
        self.assertEqual(failed.result, 2)
        self.assertEqual(record.state, TerminalState.REGISTERED)
        # Not logged in: a data message gets no answer at all (PD-20).
        good = yield self.open_terminal(record, "udp")
        frame = good.client.transparent_data(b"\x01", "EC0001")
        good.send(frame)
        yield sleep(0.3)
        self.assertFalse(
            [e for e in good.events if isinstance(e, role.Answer)], "refused before login"
        )

    @defer.inlineCallbacks
    def test_udp_retransmission_answered_from_cache_once(self):  # type: ignore[no-untyped-def]
        record = yield self.add_terminal()
        term = yield self.open_terminal(record, "udp")
        link = self.links[-1].protocol
        yield self.log_in(term)
        frame = term.client.transparent_data(b"\x42" * 8, "EC0001")
        # A copy arriving while the original is still being stored is ignored (8.2)...
        link.write(frame)
        link.write(frame)
        yield sleep(0.3)
        answers = [d for d in link.received_raw if d[2:4] == b"\x80\x04"]
        self.assertEqual(len(answers), 1)
        # ...and a retransmission after the answer gets the cached answer again.
        link.write(frame)
        yield sleep(0.3)
        answers = [d for d in link.received_raw if d[2:4] == b"\x80\x04"]
        self.assertEqual(len(answers), 2)
        self.assertEqual(answers[0], answers[1])
        entries = yield self.registry.messages(record.serial, limit=200)
        self.assertEqual(len([e for e in entries if e.event == "uplink-data"]), 1)


class HeartbeatLossTest(GatewayTestCase):
    extra_config = "[protocol]\nheartbeat_interval_default = 1s\nanswer_timeout_ip = 1s\n"

    @defer.inlineCallbacks
    def test_heartbeat_loss_makes_the_terminal_offline(self):  # type: ignore[no-untyped-def]
        record = yield self.add_terminal()
        term = yield self.open_terminal(record, "tcp")
        term.client.config[0x0011] = (1).to_bytes(4, "big")
        yield self.log_in(term)
        logout = yield term.wait_type(role.LoggedOut, timeout=10)
        self.assertEqual((logout.reason, logout.by_platform), (2, True))
        yield sleep(0.5)
        self.assertEqual(record.state, TerminalState.OFFLINE)


class GarbageTest(GatewayTestCase):
    @defer.inlineCallbacks
    def test_garbage_closes_only_that_connection(self):  # type: ignore[no-untyped-def]
        record = yield self.add_terminal()
        good = yield self.open_terminal(record, "tcp")
        yield self.log_in(good)

        class Raw(Protocol):
            def __init__(self) -> None:
                self.lost = defer.Deferred()

            def connectionLost(self, reason: object = None) -> None:
                self.lost.callback(None)

        # A Total_Length below 28 cannot be framed: the gateway closes the connection.
        raw = Raw()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.tcp_port), raw)
        raw.transport.write(b"\x00\x05garbage-garbage")
        yield raw.lost.addTimeout(5, reactor)
        # A well-framed message with a garbage header is discarded without an answer.
        noise = Raw()
        noise.dataReceived = lambda data: noise.received.append(data)  # type: ignore[method-assign]
        noise.received = []
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.tcp_port), noise)
        noise.transport.write(b"\x00\x1c\x77\x77" + b"\xee" * 24)
        half = Raw()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.tcp_port), half)
        half.transport.write(good.client.heartbeat()[:10])
        half.transport.loseConnection()
        yield half.lost.addTimeout(5, reactor)

        good.send(good.client.heartbeat())
        yield good.answer_to(Command.HEART_BEAT)
        good.send(good.client.transparent_data(b"\x07", "EC0001"))
        ack = yield good.answer_to(Command.TRANSPARENT_DATA)
        self.assertEqual(ack.message.result, 1)
        self.assertEqual(record.state, TerminalState.LOGGED_IN)
        self.assertEqual(noise.received, [])
        noise.transport.loseConnection()
        yield noise.lost


class TransferTest(GatewayTestCase):
    @defer.inlineCallbacks
    def test_fragmented_answer_to_config_req(self):  # type: ignore[no-untyped-def]
        """A CONFIG_REQ_ACK above 900 bytes goes out in 0x4008 parts (7.3)."""
        record = yield self.add_terminal()
        url = "http://platform.example/" + "x" * 1500
        yield self.registry.store_config(record.serial, {0x0008: url.encode()}, "set")
        term = yield self.open_terminal(record, "tcp")
        yield self.log_in(term)
        term.send(term.client.config_req([0x0008, 0x0002]))
        ack = yield term.answer_to(Command.CONFIG_REQ)
        self.assertEqual(ack.message.ret, 0)
        values = {t.tag: t.raw for t in ack.message.tlvs}
        self.assertEqual(values[0x0008], url.encode())
        self.assertEqual(values[0x0002], b"CMNET")

    @defer.inlineCallbacks
    def test_download_by_file_req(self):  # type: ignore[no-untyped-def]
        """DOWNLOAD_INFO from the admin side; the terminal fetches blocks by FILE_REQ."""
        record = yield self.add_terminal()
        firmware = bytes(range(256)) * 20 + b"end"
        path = self.mktemp()
        with open(path, "wb") as fh:
            fh.write(firmware)
        term = yield self.open_terminal(record, "udp", download="file")
        yield self.log_in(term)
        tx = yield self.gateway.files.offer(record.serial, path, "2.0")
        from m2mgw.core.requests import download_info

        command, body = download_info(tx, self.gateway.config.http.public_url)
        request = yield self.gateway.router.submit(record.serial, command, body)
        done = yield term.wait_type(role.FileDownloaded, timeout=10)
        self.assertTrue(done.ok)
        self.assertEqual(done.data, firmware)
        self.assertEqual(request.result, 1)  # DOWNLOAD_INFO_ACK: URL accepted
        yield sleep(0.3)  # the terminal's closing FILE_REQ (status 2) follows the last block
        self.assertEqual(self.registry.file_by_trans_id(tx.trans_id).state, "downloaded")
        self.assertEqual(request.outcome, "acknowledged")
        # The update is complete when the terminal logs in with the offered version.
        term.send(term.client.logout(0))
        yield term.wait_type(role.LoggedOut)
        term.client.identity.software_version = "2.0"
        yield self.log_in(term)
        self.assertEqual(request.outcome, "applied")

    @defer.inlineCallbacks
    def test_terminal_to_terminal_relay(self):  # type: ignore[no-untyped-def]
        """TRANSPARENT_DATA to another terminal of the same application (4.7, PD-27)."""
        sender_record = yield self.add_terminal(0)
        receiver_record = yield self.add_terminal(1)
        stranger_record = yield self.add_terminal(2, apps={"EC0002"}, default_app="EC0002")
        sender = yield self.open_terminal(sender_record, "tcp")
        receiver = yield self.open_terminal(receiver_record, "udp")
        yield self.log_in(sender)
        yield self.log_in(receiver)
        sender.send(sender.client.transparent_data(b"hello", to_terminal=receiver_record.serial))
        ack = yield sender.answer_to(Command.TRANSPARENT_DATA)
        self.assertEqual(ack.message.result, 0)  # forwarded to a reachable terminal
        got = yield receiver.wait_for(lambda e: isinstance(e, role.PlatformRequest))
        self.assertEqual(got.message.user_data, b"hello")
        self.assertEqual(got.message.source, ("terminal", sender_record.serial))
        sender.send(sender.client.transparent_data(b"no", to_terminal=stranger_record.serial))
        ack = yield sender.answer_to(Command.TRANSPARENT_DATA)
        self.assertEqual(ack.message.result, 3)  # no common application

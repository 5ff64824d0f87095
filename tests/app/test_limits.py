"""Slow and idle peers cannot hold the gateway's HTTP and long-connection sockets (issue
#15 item 2, D-310..D-317): request deadlines that trickled bytes do not extend, and a
connection cap per listener that evicts the longest idle first, over real sockets."""

from __future__ import annotations

import socket
import time
from typing import Any

import treq
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher

from m2mgw.app import longconn as lc
from m2mgw.app import operations as ops
from m2mgw.app import soap
from m2mgw.limits import REQUEST_TIMEOUT
from m2mgw.protocol.constants import ACK_BIT, Command
from m2mgw.protocol.framing import StreamFramer
from tests.admin_token import admin_token
from tests.e2e.support import until

from .gateway_support import APP_CONFIG, BASE_KEY, PASSWORD, AppGatewayTestCase, sleep

R = ops.ResultCode
TRICKLE = 0.5  # seconds between two bytes of a slow request
SERVICE = "/m2m/app/v1/M2MPlatformService"


class Slow:
    """Raw sockets that send a request one byte every :data:`TRICKLE` seconds, read
    whatever comes back and note when the gateway closed them."""

    def __init__(self, port: int, count: int, start: bytes, source: str = "") -> None:
        self.opened = time.monotonic()
        self.sockets = [socket.create_connection(("127.0.0.1", port),
                                                 source_address=(source, 0) if source else None)
                        for _ in range(count)]
        self.received = [b""] * count
        self.closed_at: dict[int, float] = {}
        for sock in self.sockets:
            if start:
                sock.sendall(start)
            sock.setblocking(False)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    def open(self) -> list[int]:
        return [i for i in range(len(self.sockets)) if i not in self.closed_at]

    def poll(self, send: bytes = b"") -> None:
        """Read what arrived; then send ``send`` on each socket still open."""
        for i in self.open():
            sock = self.sockets[i]
            try:
                while data := sock.recv(4096):
                    self.received[i] += data
                self.closed_at[i] = time.monotonic()
                continue
            except BlockingIOError:
                pass
            except ConnectionResetError:
                self.closed_at[i] = time.monotonic()
                continue
            if send:
                try:
                    sock.send(send)
                except OSError:
                    self.closed_at[i] = time.monotonic()

    @defer.inlineCallbacks
    def trickle(self, seconds: float, byte: bytes = b"X"):  # type: ignore[no-untyped-def]
        """One byte per socket every TRICKLE seconds, for ``seconds`` or until all closed."""
        end = time.monotonic() + seconds
        while self.open() and time.monotonic() < end:
            self.poll(byte)
            yield sleep(TRICKLE)
        self.poll()


def soap_call(port: int, payload: Any, seq: int) -> defer.Deferred[Any]:
    """A signed sessionless SOAP request of EC0001 on a fresh connection: its answer."""
    header = soap.MsgHeader(msg_type="", app_id="EC0001", seq_id=seq,
                            timestamp=ops.format_soap_timestamp(time.time()))
    data = soap.build_message(header, payload, PASSWORD)
    action = soap.soap_action(type(payload).__name__)
    d = treq.post(f"http://127.0.0.1:{port}{SERVICE}", data=data, persistent=False,
                  headers={"content-type": soap.CONTENT_TYPE, "soapaction": action})

    def parsed(body: bytes) -> Any:
        envelope = soap.parse_envelope(body, responses=True)
        envelope.verify(PASSWORD)
        return envelope.payload()

    return d.addCallback(treq.content).addCallback(parsed)


class LimitsTestCase(AppGatewayTestCase):
    def limit_lines(self) -> list[dict[str, Any]]:
        """The log events of the listeners' tallies, from now on."""
        events: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("event") == "connection-limits":
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return events

    def slow(self, port: int, count: int, start: bytes = b"", source: str = "") -> Slow:
        slow = Slow(port, count, start, source)
        self.addCleanup(slow.close)
        return slow

    def connections(self, listener: str) -> int:
        port = self.gateway.getServiceNamed(listener).port
        return len(port.factory.protocols)

    def until_connections(self, listener: str, count: int) -> defer.Deferred[None]:
        """Wait until the gateway has accepted ``count`` connections on ``listener``."""
        return until(lambda: self.connections(listener) >= count,
                     f"{count} connections on {listener}")

    def query(self, seq: int) -> defer.Deferred[Any]:
        return soap_call(self.http_port, ops.QueryTerminalStatus(
            terminal_ids=[self.record.serial]), seq)


class DeadlineTest(LimitsTestCase):
    extra_config = APP_CONFIG + """
[http]
header_timeout = 1s
body_timeout = 1s
[admin]
header_timeout = 1s
"""

    @defer.inlineCallbacks
    def test_trickled_headers_are_cut_at_the_deadline_and_the_rest_goes_on(self):  # type: ignore[no-untyped-def]
        lines = self.limit_lines()
        started = time.monotonic()
        http = self.slow(self.http_port, 30, f"POST {SERVICE} HTTP/1.1\r\nHost: h\r\n".encode())
        admin = self.slow(self.gateway.port_of("admin"), 10,
                          b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        trickling = defer.gatherResults([http.trickle(4.0), admin.trickle(4.0)])
        # Meanwhile a terminal logs in and an application's SOAP call is answered.
        term = yield self.online_terminal()
        answer = yield self.query(1)
        self.assertEqual((answer.result_code, answer.statuses[0].state), (R.OK, "ONLINE"))
        yield trickling
        for slow in (http, admin):
            self.assertEqual(slow.open(), [], "every trickling socket was closed")
            self.assertEqual(set(slow.received), {REQUEST_TIMEOUT})
            # One byte every 0.5 s did not extend the 1 s deadline.
            self.assertGreater(min(slow.closed_at.values()) - started, 0.9)
            self.assertLess(max(slow.closed_at.values()) - started, 2.5)
        # The terminal is still served (its TCP socket is untouched).
        term.send(term.client.heartbeat())
        yield term.answer_to(Command.HEART_BEAT)
        # 40 timeouts, one log line per listener (D-317).
        self.assertEqual(sorted(e["listener"] for e in lines), ["admin", "http"])

    @defer.inlineCallbacks
    def test_a_trickled_body_is_cut_at_its_deadline(self):  # type: ignore[no-untyped-def]
        started = time.monotonic()
        slow = self.slow(self.http_port, 5, f"POST {SERVICE} HTTP/1.1\r\nHost: h\r\n"
                         "Content-Length: 1000\r\n\r\n<".encode())
        yield slow.trickle(4.0, b"a")
        self.assertEqual(slow.open(), [])
        self.assertEqual(set(slow.received), {REQUEST_TIMEOUT})
        self.assertLess(max(slow.closed_at.values()) - started, 2.5)

    @defer.inlineCallbacks
    def test_an_idle_kept_alive_connection_is_closed_without_an_answer(self):  # type: ignore[no-untyped-def]
        slow = self.slow(self.http_port, 1, f"GET {SERVICE}?wsdl HTTP/1.1\r\nHost: h\r\n\r\n"
                         .encode())
        yield sleep(0.3)
        slow.poll()
        self.assertEqual(slow.open(), [0], "kept alive after its answer")
        self.assertIn(b"200 OK", slow.received[0])
        answered = len(slow.received[0])
        yield slow.trickle(3.0, b"")
        self.assertEqual(slow.open(), [])
        self.assertEqual(len(slow.received[0]), answered, "no 408 for a request never begun")


class CapTest(LimitsTestCase):
    extra_config = APP_CONFIG + """max_connections = 3
[http]
max_connections = 5
[admin]
max_connections = 2
"""  # the first line still in APP_CONFIG's [app]

    @defer.inlineCallbacks
    def test_at_the_cap_the_longest_idle_http_connection_makes_room(self):  # type: ignore[no-untyped-def]
        first = self.slow(self.http_port, 5)
        yield self.until_connections("http", 5)
        answer = yield self.query(1)  # the sixth connection: the oldest idle one goes
        self.assertEqual(answer.result_code, R.OK)
        first.poll()
        self.assertEqual(first.open(), [1, 2, 3, 4])
        # Socket 1 has begun a request (still incomplete: as evictable as an idle one);
        # socket 2 has had one answered, so it has been waiting only since then.
        first.sockets[1].send(b"GET / HTTP/1.1\r\n")
        first.sockets[2].send(f"GET {SERVICE}?wsdl HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        yield sleep(0.2)
        first.poll()
        self.assertIn(b"200 OK", first.received[2])
        for seq, left in ((2, [2, 3, 4]), (3, [2, 4])):
            self.slow(self.http_port, 1)  # at the cap again
            yield self.until_connections("http", 5)
            answer = yield self.query(seq)
            self.assertEqual(answer.result_code, R.OK)
            yield sleep(0.1)
            first.poll()
            self.assertEqual(first.open(), left)

    @defer.inlineCallbacks
    def test_a_new_connection_is_refused_while_every_one_is_answered(self):  # type: ignore[no-untyped-def]
        token = admin_token(self.gateway.config)
        streams = self.slow(self.gateway.port_of("admin"), 2,
                            f"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: "
                            f"Bearer {token}\r\n\r\n".encode())
        yield self.until_connections("admin", 2)
        yield sleep(0.2)
        streams.poll()
        self.assertTrue(all(b"text/event-stream" in r for r in streams.received))
        refused = self.slow(self.gateway.port_of("admin"), 1, b"")
        yield sleep(0.2)
        refused.poll()
        self.assertEqual((refused.open(), refused.received), ([], [b""]))
        streams.poll()
        self.assertEqual(streams.open(), [0, 1], "the event streams go on")
        streams.sockets[0].close()
        streams.closed_at[0] = time.monotonic()
        yield until(lambda: self.connections("admin") < 2, "the closed stream's connection")
        answer = yield treq.get(f"http://127.0.0.1:{self.gateway.port_of('admin')}/health",
                                persistent=False)
        self.assertEqual(answer.code, 200)
        yield answer.content()

    @defer.inlineCallbacks
    def test_long_connections_not_logged_in_make_room_for_a_login(self):  # type: ignore[no-untyped-def]
        idle = self.slow(self.app_port, 3)
        yield self.until_connections("app", 3)
        client, _ = yield self.connect_app()
        idle.poll()
        self.assertEqual(idle.open(), [1, 2])
        # Logged in means confirmed by a signed message after the ACK (D-358): one
        # answered call shows the gateway has read the client's confirmation.
        answer = yield client.call(ops.QueryTerminalStatus(terminal_ids=[self.record.serial]))
        self.assertEqual(answer.result_code, R.OK)
        more = self.slow(self.app_port, 3)
        yield task.deferLater(reactor, 0.2, lambda: None)
        idle.poll()
        more.poll()
        # The logged-in application keeps its place; the others take turns.
        self.assertEqual((idle.open(), more.open()), ([], [1, 2]))
        answer = yield client.call(ops.QueryTerminalStatus(terminal_ids=[self.record.serial]))
        self.assertEqual(answer.result_code, R.OK)


class LongConnectionAdmissionTest(LimitsTestCase):
    """Issue #11 part 1 on the long-connection port (D-358): an accepted APP_LOGIN that no
    signed message confirms is evicted like a stranger, and one address holds at most
    ``max_unauthenticated_per_host`` connections not logged in."""

    extra_config = APP_CONFIG + """max_connections = 3
max_unauthenticated_per_host = 2
"""

    @defer.inlineCallbacks
    def test_an_unconfirmed_login_makes_room_like_a_stranger(self):  # type: ignore[no-untyped-def]
        # What a replayer can send: a valid APP_LOGIN, and nothing signed after its ACK.
        login = lc.ClientSession(lc.AppCredentials("EC0001", PASSWORD, BASE_KEY, "legacy"),
                                 time.time())
        login.login(time.time())
        replayed = self.slow(self.app_port, 1, login.data_to_send())
        yield self.until_connections("app", 1)
        yield sleep(0.2)
        replayed.poll()
        self.assertEqual(replayed.open(), [0])
        ack = StreamFramer().feed(replayed.received[0])
        self.assertEqual([lc.parse_frame(raw).header.command_id for raw in ack],
                         [lc.Command.APP_LOGIN | ACK_BIT])
        others = self.slow(self.app_port, 2, source="127.0.0.2")
        yield self.until_connections("app", 3)
        client, _ = yield self.connect_app()  # at the cap: the unconfirmed login goes
        replayed.poll()
        others.poll()
        self.assertEqual((replayed.open(), others.open()), ([], [0, 1]))
        answer = yield client.call(ops.QueryTerminalStatus(terminal_ids=[self.record.serial]))
        self.assertEqual(answer.result_code, R.OK)

    @defer.inlineCallbacks
    def test_one_address_gives_up_its_own_oldest_and_no_one_elses(self):  # type: ignore[no-untyped-def]
        other = self.slow(self.app_port, 1, source="127.0.0.2")
        yield self.until_connections("app", 1)
        flood = self.slow(self.app_port, 2)
        yield self.until_connections("app", 3)
        more = self.slow(self.app_port, 1)  # a third from 127.0.0.1, at the cap too
        yield sleep(0.2)
        other.poll()
        flood.poll()
        more.poll()
        self.assertEqual((other.open(), flood.open(), more.open()), ([0], [1], [0]))
        self.assertEqual(self.connections("app"), 3)

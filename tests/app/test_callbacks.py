"""Callbacks (spec 4.7): a real twisted.web M2MAppNotifyService receives the notifications.

The receiver is an application as the spec describes it: it verifies each callback's
digest, answers with its own signed response, and de-duplicates on ``notifyId``
(answering 11 for a repeat). Up to ``callback_concurrency`` callbacks are outstanding
(D-403): the receiver restores creation order by ``seqId``; with 1 they also arrive in
that order.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from twisted.internet import defer, reactor
from twisted.internet.endpoints import HostnameEndpoint
from twisted.web import server
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported
from twisted.web.resource import Resource

from m2mgw.app import operations as ops
from m2mgw.app import soap
from m2mgw.app.callbacks import MAX_CALLBACK_ANSWER, _Endpoints
from m2mgw.core.model import NotificationState
from m2mgw.protocol.constants import Command
from m2mgw.protocol.tlv import Tlv
from tests.e2e.support import until

from .gateway_support import APP_CONFIG, PASSWORD, AppGatewayTestCase, Inbox, is_result, sleep

R = ops.ResultCode


class NotifyReceiver(Resource):
    """M2MAppNotifyService of application EC0001."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Any] = []  # every callback, repeats included
        self.seq_ids: list[int] = []  # the seqId of each
        self.inbox = Inbox()  # each notifyId once
        self.delay_first = 0.0
        self.status = 200
        self.transports: list[Any] = []
        #: When set, answers wait in ``held`` until :meth:`release`.
        self.hold = False
        self.held: list[tuple[server.Request, bytes]] = []
        self.most_held = 0
        self.failed: list[tuple[int, Any]] = []  # (seqId, payload) answered 503 by ``failing``
        self.failing: set[bytes] = set()  # DeliverData data answered once with HTTP 503
        self.oversized: set[bytes] = set()  # ... answered once with too long a body

    def drop_connections(self) -> None:
        """Abort the kept-alive connections, as a crashed receiver would."""
        for transport in self.transports:
            transport.abortConnection()

    def render_POST(self, request: server.Request) -> bytes | int:
        self.transports.append(request.channel.transport)
        envelope = soap.parse_envelope(request.content.read(), service="notify",
                                       soap_action=request.getHeader(b"soapaction").decode())
        envelope.verify(PASSWORD, time.time())
        payload = envelope.payload()
        status, answer = self.status, b"down for maintenance"
        if getattr(payload, "data", None) in self.failing:
            self.failing.discard(payload.data)
            self.failed.append((envelope.header.seq_id, payload))
            status = 503
        elif getattr(payload, "data", None) in self.oversized:
            self.oversized.discard(payload.data)
            self.failed.append((envelope.header.seq_id, payload))
            padding = b" " * MAX_CALLBACK_ANSWER  # a valid answer, but beyond the bound
            answer = soap.build_message(envelope.header.reply(time.time()),
                                        ops.OPERATIONS[envelope.operation].response(),
                                        PASSWORD) + padding
        else:
            duplicate = any(c.notify_id == payload.notify_id for c in self.calls)
            self.calls.append(payload)
            self.seq_ids.append(envelope.header.seq_id)
            if status == 200:
                if not duplicate:
                    self.inbox.add(payload)
                spec = ops.OPERATIONS[envelope.operation]
                answer = soap.build_message(
                    envelope.header.reply(time.time()),
                    spec.response(result_code=R.DUPLICATE if duplicate else R.OK), PASSWORD)
        request.setResponseCode(status)
        if self.hold:
            self.held.append((request, answer))
            self.most_held = max(self.most_held, len(self.held))
            return server.NOT_DONE_YET
        delay, self.delay_first = self.delay_first, 0.0
        if not delay:
            return answer

        def late() -> None:
            if not request.finished and not request._disconnected:
                request.write(answer)
                request.finish()

        reactor.callLater(delay, late)
        return server.NOT_DONE_YET

    def release(self, count: int | None = None) -> None:
        """Answer the ``count`` oldest held calls (all by default)."""
        count = len(self.held) if count is None else count
        done, self.held = self.held[:count], self.held[count:]
        for request, answer in done:
            request.write(answer)
            request.finish()

    def by_seq_id(self) -> list[Any]:
        """The calls as an application restores their order: by seqId."""
        return [call for _, call in sorted(zip(self.seq_ids, self.calls,
                                               strict=True), key=lambda pair: pair[0])]


class CallbackTestCase(AppGatewayTestCase):
    @defer.inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.receiver = NotifyReceiver()
        self.site = server.Site(self.receiver)
        self.receiver_port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        port = self.receiver_port.getHost().port
        self.callback_url = f"http://127.0.0.1:{port}/notify"
        yield super().setUp()
        self.addCleanup(self._stop_receiver)
        self.app = self.gateway.registry.application("EC0001")

    def _stop_receiver(self) -> Any:
        return self.receiver_port.stopListening()

    def outbox(self) -> list[Any]:
        return self.gateway.registry.notifications("EC0001")

    @defer.inlineCallbacks
    def settled_terminal(self):  # type: ignore[no-untyped-def]
        """A logged-in terminal whose login notifications were all delivered."""
        term = yield self.online_terminal()
        yield self.receiver.inbox.wait(lambda n: isinstance(n, ops.NotifyTerminalState))
        # A notification joins the outbox once committed (D-277): none may be on its way.
        yield until(lambda: not (self.outbox() or self.gateway.registry.pending_writes),
                    "the outbox to empty")
        return term


class CallbackDeliveryTest(CallbackTestCase):
    #: Whether callbacks also arrive in creation order, not only number it.
    arrival_ordered = False

    def assert_creation_order(self) -> None:
        ids = [n.notify_id for n in self.receiver.by_seq_id()]
        self.assertEqual(ids, sorted(ids), "seqIds number the callbacks in creation order")
        if self.arrival_ordered:
            ids = [n.notify_id for n in self.receiver.calls]
            self.assertEqual(ids, sorted(ids), "callbacks arrive in creation order")

    @defer.inlineCallbacks
    def test_every_kind_in_order(self):  # type: ignore[no-untyped-def]
        inbox = self.receiver.inbox
        term = yield self.online_terminal()
        yield inbox.wait(lambda n: isinstance(n, ops.NotifyTerminalState)
                         and n.event == "LOGGED_IN")
        for data in (b"\x01", b"\x02", b"\x03"):
            term.send(term.client.transparent_data(data, "EC0001"))
            ack = yield term.answer_to(Command.TRANSPARENT_DATA)
            self.assertEqual(ack.message.result, 0, "a callback URL: delivered")
        term.send(term.client.alarm(1, 2, 0x0101))
        term.send(term.client.trap([Tlv.of(0x3007, 23)]))
        sent = yield self.gateway.apps.handle(self.app, ops.SendData(
            terminal_id=self.record.serial, data=b"\x10"))
        yield inbox.wait(is_result(sent.msg_id, "ACKED"))
        alarm = yield inbox.wait(lambda n: isinstance(n, ops.NotifyAlarm))
        self.assertEqual((alarm.alarm.status, alarm.alarm.type, alarm.alarm.code),
                         (1, 2, 0x0101))
        trap = yield inbox.wait(lambda n: isinstance(n, ops.NotifyConfigTrap)
                                and any(i.tag == 0x3007 for i in n.items))
        self.assertIn(ops.TlvItem(tag=0x3007, value=b"\x17"), trap.items)
        delivered = [n.data for n in self.receiver.by_seq_id()
                     if isinstance(n, ops.DeliverData)]
        self.assertEqual(delivered, [b"\x01", b"\x02", b"\x03"])
        self.assert_creation_order()
        ids = [n.notify_id for n in self.receiver.calls]
        self.assertEqual(len(ids), len(set(ids)))
        yield sleep(0.1)
        self.assertEqual(self.outbox(), [], "every delivered notification left the outbox")

    @defer.inlineCallbacks
    def test_retry_after_the_receiver_was_down(self):  # type: ignore[no-untyped-def]
        term = yield self.settled_terminal()
        port = self.receiver_port.getHost().port
        yield self.receiver_port.stopListening()
        self.receiver.drop_connections()
        term.send(term.client.transparent_data(b"\x41", "EC0001"))
        yield term.answer_to(Command.TRANSPARENT_DATA)
        term.send(term.client.transparent_data(b"\x42", "EC0001"))
        yield term.answer_to(Command.TRANSPARENT_DATA)
        yield until(lambda: self.outbox()[0].attempts, "the refused first offer")
        attempts = [n.attempts for n in self.outbox()]
        if self.arrival_ordered:
            self.assertEqual(attempts, [1, 0], "first one failed, the second waits")
        else:  # the second may have been offered beside the first
            self.assertIn(attempts, ([1, 0], [1, 1]), "first one failed")
        self.receiver_port = reactor.listenTCP(port, self.site, interface="127.0.0.1")
        second = yield self.receiver.inbox.wait(
            lambda n: isinstance(n, ops.DeliverData) and n.data == b"\x42")
        yield self.receiver.inbox.wait(
            lambda n: isinstance(n, ops.DeliverData) and n.data == b"\x41")
        # In seqId order; with one call at a time also in arrival order.
        first = next(n for n in self.receiver.by_seq_id() if isinstance(n, ops.DeliverData))
        if self.arrival_ordered:
            self.assertIs(self.receiver.inbox.of("DeliverData")[0], first)
        self.assertEqual((first.data, first.notify_id < second.notify_id), (b"\x41", True))
        self.assert_creation_order()

    @defer.inlineCallbacks
    def test_timed_out_callback_is_repeated_and_deduplicated(self):  # type: ignore[no-untyped-def]
        term = yield self.settled_terminal()
        self.receiver.delay_first = 1.5  # beyond callback_timeout (1 s)
        term.send(term.client.transparent_data(b"\x51", "EC0001"))
        yield term.answer_to(Command.TRANSPARENT_DATA)
        data = yield self.receiver.inbox.wait(lambda n: isinstance(n, ops.DeliverData))
        yield sleep(1.5)  # the timeout, then a retry 0.3 s later
        repeats = [c for c in self.receiver.calls if c.notify_id == data.notify_id]
        self.assertEqual(len(repeats), 2, "offered again after the timeout")
        self.assertEqual(len(self.receiver.inbox.of("DeliverData")), 1, "de-duplicated")
        self.assertEqual(self.outbox(), [], "answer 11 counts as delivered (AD-09)")

    @defer.inlineCallbacks
    def test_failing_receiver_keeps_notifications_for_fetch(self):  # type: ignore[no-untyped-def]
        term = yield self.settled_terminal()
        self.receiver.status = 503
        term.send(term.client.transparent_data(b"\x61", "EC0001"))
        yield term.answer_to(Command.TRANSPARENT_DATA)
        yield sleep(1.6)  # the first attempt and three retries 0.3 s apart
        kept = [n for n in self.outbox() if n.kind == "DeliverData"]
        self.assertEqual([(n.state, n.attempts) for n in kept], [(NotificationState.KEPT, 4)])
        fetched = yield self.gateway.apps.handle(self.app, ops.FetchMessages())
        data = [m.notification.data for m in fetched.messages
                if isinstance(m.notification, ops.DeliverData)]
        self.assertEqual(data, [b"\x61"])
        yield self.gateway.apps.handle(self.app, ops.AckMessages(
            notify_ids=[m.notification.notify_id for m in fetched.messages]))
        self.assertEqual(self.outbox(), [])

    @defer.inlineCallbacks
    def test_outstanding_calls_are_bounded(self):  # type: ignore[no-untyped-def]
        term = yield self.settled_terminal()
        limit = self.gateway.config.app.callback_concurrency
        self.receiver.hold = True
        for i in range(limit + 2):
            term.send(term.client.transparent_data(bytes([0x70 + i]), "EC0001"))
            yield term.answer_to(Command.TRANSPARENT_DATA)
        while len(self.receiver.held) < limit:
            yield sleep(0.02)
        yield sleep(0.3)  # time for a call beyond the limit, if one were made
        self.assertEqual(len(self.receiver.held), limit, "at most the limit outstanding")
        self.receiver.release(1)
        while len(self.receiver.calls) < limit + 1:
            yield sleep(0.02)
        self.receiver.hold = False
        self.receiver.release()
        yield self.receiver.inbox.wait(lambda n: getattr(n, "data", None) == bytes([0x71 + limit]))
        self.assertEqual(self.receiver.most_held, limit)
        data = [n.data for n in self.receiver.by_seq_id() if isinstance(n, ops.DeliverData)]
        self.assertEqual(data, [bytes([0x70 + i]) for i in range(limit + 2)])
        self.assert_creation_order()
        while self.outbox():
            yield sleep(0.02)

    @defer.inlineCallbacks
    def test_a_failed_call_is_retried_alone(self):  # type: ignore[no-untyped-def]
        term = yield self.settled_terminal()
        self.receiver.failing = {b"\x81"}
        self.receiver.hold = True  # outstanding together, as far as the limit allows
        for data in (b"\x80", b"\x81", b"\x82"):
            term.send(term.client.transparent_data(data, "EC0001"))
            yield term.answer_to(Command.TRANSPARENT_DATA)
        while len(self.receiver.held) < min(3, self.gateway.config.app.callback_concurrency):
            yield sleep(0.02)
        self.receiver.hold = False
        self.receiver.release()
        for data in (b"\x80", b"\x81", b"\x82"):
            yield self.receiver.inbox.wait(lambda n, data=data: getattr(n, "data", None) == data)
        [(failed_seq, failed)] = self.receiver.failed
        self.assertEqual(failed.data, b"\x81")
        seqs = dict((n.data, seq) for seq, n in zip(self.receiver.seq_ids, self.receiver.calls,
                                                    strict=True) if isinstance(n, ops.DeliverData))
        self.assertEqual(len(self.receiver.inbox.of("DeliverData")), 3, "each delivered once")
        self.assertLess(seqs[b"\x80"], failed_seq)
        self.assertLess(failed_seq, seqs[b"\x81"], "the retry has a new seqId")
        if self.arrival_ordered:  # the retry held back the next one (D-108)
            self.assertLess(seqs[b"\x81"], seqs[b"\x82"])
        else:  # the next one was outstanding beside it
            self.assertLess(seqs[b"\x82"], seqs[b"\x81"])
        while self.outbox():
            yield sleep(0.02)

    @defer.inlineCallbacks
    def test_an_oversized_answer_fails_the_call(self):  # type: ignore[no-untyped-def]
        term = yield self.settled_terminal()
        self.receiver.oversized = {b"\x91"}
        term.send(term.client.transparent_data(b"\x91", "EC0001"))
        yield term.answer_to(Command.TRANSPARENT_DATA)
        data = yield self.receiver.inbox.wait(lambda n: getattr(n, "data", None) == b"\x91")
        [(_, failed)] = self.receiver.failed
        self.assertEqual(failed.notify_id, data.notify_id, "the same notification, retried")
        while self.outbox():
            yield sleep(0.02)


class OneAtATimeDeliveryTest(CallbackDeliveryTest):
    """``callback_concurrency = 1``: one call at a time, arriving in creation order."""

    extra_config = APP_CONFIG + "callback_concurrency = 1\n"
    arrival_ordered = True


def test_one_endpoint_per_origin() -> None:
    """Callbacks reuse the endpoint of their origin; https gets TLS, other schemes none."""
    endpoints = _Endpoints(reactor)
    plain = endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:8080/a"))
    assert endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:8080/b")) is plain
    assert endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:8081/a")) is not plain
    secure = endpoints.endpointForURI(URI.fromBytes(b"https://app.example:8443/notify"))
    assert isinstance(plain, HostnameEndpoint)
    assert not isinstance(secure, HostnameEndpoint)  # TLS around one
    with pytest.raises(SchemeNotSupported):
        endpoints.endpointForURI(URI.fromBytes(b"ftp://app.example/notify"))

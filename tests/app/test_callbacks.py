"""Callbacks (spec 4.7): a real twisted.web M2MAppNotifyService receives the notifications.

The receiver is an application as the spec describes it: it verifies each callback's
digest, answers with its own signed response, and de-duplicates on ``notifyId``
(answering 11 for a repeat).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.web import server
from twisted.web.resource import Resource

from m2mgw.app import operations as ops
from m2mgw.app import soap
from m2mgw.core.model import NotificationState
from m2mgw.protocol.constants import Command
from m2mgw.protocol.tlv import Tlv
from tests.e2e.support import until

from .gateway_support import PASSWORD, AppGatewayTestCase, Inbox, is_result, sleep

R = ops.ResultCode


class NotifyReceiver(Resource):
    """M2MAppNotifyService of application EC0001."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Any] = []  # every callback, repeats included
        self.inbox = Inbox()  # each notifyId once
        self.delay_first = 0.0
        self.status = 200
        self.transports: list[Any] = []

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
        duplicate = any(c.notify_id == payload.notify_id for c in self.calls)
        self.calls.append(payload)
        if self.status != 200:
            request.setResponseCode(self.status)
            return b"down for maintenance"
        if not duplicate:
            self.inbox.add(payload)
        spec = ops.OPERATIONS[envelope.operation]
        answer = soap.build_message(
            envelope.header.reply(time.time()),
            spec.response(result_code=R.DUPLICATE if duplicate else R.OK), PASSWORD)
        delay, self.delay_first = self.delay_first, 0.0
        if not delay:
            return answer

        def late() -> None:
            if not request.finished and not request._disconnected:
                request.write(answer)
                request.finish()

        reactor.callLater(delay, late)
        return server.NOT_DONE_YET


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
        delivered = [n.data for n in inbox.of("DeliverData")]
        self.assertEqual(delivered, [b"\x01", b"\x02", b"\x03"])
        ids = [n.notify_id for n in self.receiver.calls]
        self.assertEqual(ids, sorted(ids), "callbacks arrive in creation order")
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
        self.assertEqual([n.attempts for n in self.outbox()], [1, 0], "first one failed")
        self.receiver_port = reactor.listenTCP(port, self.site, interface="127.0.0.1")
        second = yield self.receiver.inbox.wait(
            lambda n: isinstance(n, ops.DeliverData) and n.data == b"\x42")
        first = self.receiver.inbox.of("DeliverData")[0]
        self.assertEqual((first.data, first.notify_id < second.notify_id), (b"\x41", True))

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

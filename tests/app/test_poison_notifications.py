"""What one terminal sends must not stall or break its application (issue #15 items 3, 4).

Over real sockets: a terminal on TCP, the application on the long connection (and on
SOAP through zeep), the gateway between them.
"""

from __future__ import annotations

import dataclasses

from twisted.internet import defer

from m2mgw.app import operations as ops
from m2mgw.core.model import NotificationState
from m2mgw.protocol.constants import Command
from m2mgw.protocol.tlv import Tlv
from m2mgw.web import views
from tests.e2e.support import until

from .gateway_support import PASSWORD, AppGatewayTestCase
from .test_soap_e2e import ZeepApp, in_thread

R = ops.ResultCode
STATS = Tlv(0x3007, b"\x17")


def is_kind(cls: type):  # type: ignore[no-untyped-def]
    return lambda n: isinstance(n, cls)


class PoisonTrapTest(AppGatewayTestCase):
    @defer.inlineCallbacks
    def settled(self):  # type: ignore[no-untyped-def]
        """A logged-in terminal and a live application that has had its login news."""
        term = yield self.online_terminal()
        _, inbox = yield self.connect_app()
        # The terminal's sync trap, the last news of its login.
        sync = yield inbox.wait(lambda n: isinstance(n, ops.NotifyConfigTrap)
                                and any(i.tag == 0x0025 for i in n.items))
        return term, sync, inbox

    @defer.inlineCallbacks
    def test_reserved_tags_are_left_out_and_nothing_waits(self):  # type: ignore[no-untyped-def]
        term, sync, inbox = yield self.settled()
        serial = self.record.serial
        term.send(term.client.trap([Tlv(0x4013, b"A972030000000999"), Tlv(0x5001, b"\x00\x3c"),
                                    STATS]))
        trap_ack = yield term.answer_to(Command.CONFIG_TRAP)
        self.assertEqual(trap_ack.message.ret, 0)
        term.send(term.client.transparent_data(b"\x44", "EC0001"))
        yield term.answer_to(Command.TRANSPARENT_DATA)
        # The trap arrives at once, in order, with what both bindings can carry (D-251).
        trap = yield inbox.wait(lambda n: isinstance(n, ops.NotifyConfigTrap)
                                and n.notify_id > sync.notify_id, timeout=2)
        data = yield inbox.wait(is_kind(ops.DeliverData), timeout=2)
        self.assertEqual((trap.terminal_id, trap.items),
                         (serial, [ops.TlvItem(tag=0x3007, value=b"\x17")]))
        self.assertLess(trap.notify_id, data.notify_id)
        self.assertEqual(self.gateway.uplink.tags_left_out[serial], 2)
        self.assertEqual(self.gateway.outbox.delivery_failures["EC0001", "long_connection"], 0)

    @defer.inlineCallbacks
    def test_an_unencodable_notification_is_set_aside(self):  # type: ignore[no-untyped-def]
        outbox, registry = self.gateway.outbox, self.registry
        app = registry.application("EC0001")
        serial = self.record.serial
        # As an older gateway stored it: an item the long connection cannot carry.
        poison = yield outbox.notify(app, ops.NotifyConfigTrap(
            notify_id=0, terminal_id=serial, time=1, items=[ops.TlvItem(tag=0x4013, value=b"x")]))
        after = yield outbox.notify(app, ops.NotifyTerminalState(
            notify_id=0, terminal_id=serial, event="OFFLINE", time=2))
        client, inbox = yield self.connect_app()
        state = yield inbox.wait(is_kind(ops.NotifyTerminalState), timeout=2)
        self.assertEqual(state.notify_id, after.id, "not held behind the one it cannot send")
        self.assertEqual(registry.notification(poison.id).state, NotificationState.UNENCODABLE)
        self.assertEqual(outbox.unencodable["EC0001"], 1)
        self.assertEqual(outbox.delivery_failures["EC0001", "long_connection"], 0, "no retry")
        # What the admin API and the CLI list for the operator.
        listed = views.list_notifications(registry, {"state": ["unencodable"]}, 0.0)
        self.assertEqual([(n["id"], n["state"], n["delivery"]) for n in listed["items"]],
                         [(poison.id, "unencodable", "unencodable")])
        # A new session does not put it back at the head of the line ...
        yield client.logout()
        _, inbox = yield self.connect_app()
        term = yield self.online_terminal()
        yield inbox.wait(lambda n: isinstance(n, ops.NotifyTerminalState)
                         and n.event == "LOGGED_IN", timeout=2)
        term.send(term.client.transparent_data(b"\x45", "EC0001"))
        yield inbox.wait(is_kind(ops.DeliverData), timeout=2)
        yield until(lambda: [n.id for n in registry.notifications("EC0001")] == [poison.id],
                    "the rest to be delivered")  # it alone stays
        self.assertEqual([n.id for n in registry.notifications("EC0001")], [poison.id])
        self.assertEqual(outbox.unencodable["EC0001"], 1, "not offered again")
        # ... and FetchMessages (SOAP) still has it, whole.
        fetched = yield self.gateway.apps.handle(app, ops.FetchMessages())
        [item] = fetched.messages
        self.assertEqual(item.notification.items, [ops.TlvItem(tag=0x4013, value=b"x")])


class ControlCharacterTest(AppGatewayTestCase):
    @defer.inlineCallbacks
    def test_an_alarm_with_control_bytes_breaks_nothing(self):  # type: ignore[no-untyped-def]
        term = yield self.online_terminal()
        _, inbox = yield self.connect_app()
        alarm = term.client.trap([Tlv.of(0x300B, 0), Tlv.of(0x300C, 2), Tlv.of(0x300D, 0x0101),
                                  Tlv(0x300E, b"R\x01\x80\\9")])
        # A frame pipelined behind it, in the same write, is answered too.
        term.send(alarm + term.client.heartbeat())
        trap_ack = yield term.answer_to(Command.CONFIG_TRAP)
        yield term.answer_to(Command.HEART_BEAT)
        self.assertEqual(trap_ack.message.ret, 0)
        notified = yield inbox.wait(is_kind(ops.NotifyAlarm), timeout=2)
        self.assertEqual(notified.alarm.restore_code, "R\\x01\\x80\\9")  # escaped (D-252)
        term.send(term.client.transparent_data(b"\x46", "EC0001"))
        ack = yield term.answer_to(Command.TRANSPARENT_DATA)
        self.assertEqual(ack.message.result, 0, "the connection lives on")

    @defer.inlineCallbacks
    def test_query_terminal_info_after_a_login_with_control_bytes(self):  # type: ignore[no-untyped-def]
        term = yield self.open_terminal(self.record, "tcp")
        term.client.identity = dataclasses.replace(term.client.identity,
                                                   software_version="V1\x07\x1b")
        yield self.log_in(term)
        url = f"http://127.0.0.1:{self.http_port}/m2m/app/v1/M2MPlatformService"
        app = yield in_thread(ZeepApp, url, "EC0001", PASSWORD)
        answer = yield in_thread(app.call, "QueryTerminalInfo", terminalId=self.record.serial)
        self.assertEqual(answer.resultCode, R.OK)
        self.assertEqual(answer.info.softwareVersion, "V1\\x07\\x1b")
        # The long connection answers alike, stored status tags and all.
        client, _ = yield self.connect_app()
        info = yield client.call(ops.QueryTerminalInfo(terminal_id=self.record.serial))
        self.assertEqual((info.result_code, info.info.software_version), (R.OK, "V1\\x07\\x1b"))
        self.assertNotIn(0x3004, [i.tag for i in info.info.items])

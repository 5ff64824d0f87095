"""Long connection end to end: the m2mgw-app client, the gateway and simulated terminals."""

from __future__ import annotations

import hashlib
import json
import os
import sys

from twisted.internet import defer, reactor, utils

from m2mgw.app import client as app_client
from m2mgw.app import operations as ops
from m2mgw.app.longconn import AppCredentials
from m2mgw.protocol import messages as m
from m2mgw.protocol import terminal as role
from m2mgw.protocol.constants import Command

from .gateway_support import (
    BASE_KEY,
    CONFIRM_WAIT,
    PASSWORD,
    AppGatewayTestCase,
    is_result,
    sleep,
)

R = ops.ResultCode


def platform_request(command: int):  # type: ignore[no-untyped-def]
    return lambda e: isinstance(e, role.PlatformRequest) and e.message.COMMAND == command


class LongConnectionFlowsTest(AppGatewayTestCase):
    @defer.inlineCallbacks
    def test_send_data_and_uplink(self):  # type: ignore[no-untyped-def]
        term = yield self.online_terminal()
        client, inbox = yield self.connect_app()
        response = yield client.call(ops.SendData(terminal_id=self.record.serial,
                                                  data=b"\x01\x02\x03", biz_seq="order-1"))
        self.assertEqual(response.result_code, R.OK)
        seen = yield term.wait_for(platform_request(Command.TRANSPARENT_DATA))
        self.assertEqual(seen.message.user_data, b"\x01\x02\x03")
        self.assertEqual(seen.message.source, ("application", "EC0001"))
        acked = yield inbox.wait(is_result(response.msg_id, "ACKED"))
        self.assertEqual((acked.op_result, acked.biz_seq, acked.operation),
                         (0, "order-1", "SendData"))
        # The same bizSeq again: result 11 with the original msgId, nothing sent (AD-14).
        again = yield client.call(ops.SendData(terminal_id=self.record.serial, data=b"x",
                                               biz_seq="order-1"))
        self.assertEqual((again.result_code, again.msg_id), (R.DUPLICATE, response.msg_id))
        status = yield client.call(ops.QueryMessageStatus(msg_id=response.msg_id))
        self.assertEqual((status.state, status.op_result), ("ACKED", 0))

        term.send(term.client.transparent_data(b"\xaa\xbb", "EC0001"))
        ack = yield term.answer_to(Command.TRANSPARENT_DATA)
        self.assertEqual(ack.message.result, 0, "a live application: delivered")
        data = yield inbox.wait(lambda n: isinstance(n, ops.DeliverData))
        self.assertEqual((data.terminal_id, data.data, data.bearer),
                         (self.record.serial, b"\xaa\xbb", "TCP"))

    @defer.inlineCallbacks
    def test_config_and_remote_control(self):  # type: ignore[no-untyped-def]
        yield self.online_terminal()
        client, inbox = yield self.connect_app()
        serial = self.record.serial
        got = yield client.call(ops.GetConfig(terminal_id=serial, tags=[0x0002, 0x0011],
                                              mode="sync"))
        self.assertEqual(got.result_code, R.OK)
        self.assertEqual({i.tag: i.value for i in got.items},
                         {0x0002: b"CMNET", 0x0011: (90).to_bytes(4, "big")})
        later = yield client.call(ops.GetConfig(terminal_id=serial, tags=[0x0002]))
        result = yield inbox.wait(is_result(later.msg_id, "ACKED"))
        self.assertEqual([(i.tag, i.value) for i in result.items], [(0x0002, b"CMNET")])

        heartbeat = ops.TlvItem(tag=0x0011, value=(120).to_bytes(4, "big"))
        sent = yield client.call(ops.SetConfig(terminal_id=serial, items=[heartbeat]))
        self.assertEqual(sent.result_code, R.OK)
        yield inbox.wait(is_result(sent.msg_id, "ACKED"))
        yield inbox.wait(is_result(sent.msg_id, "APPLIED"))
        # A connectivity tag needs the permission: refused, nothing sent (2.6).
        apn = ops.TlvItem(tag=0x0002, value=b"OTHER")
        refused = yield client.call(ops.SetConfig(terminal_id=serial, items=[apn]))
        self.assertEqual((refused.result_code, refused.failed_tags), (R.BAD_PARAMETER, [2]))

        ctrl = yield client.call(ops.RemoteControl(terminal_id=serial, code=6))
        self.assertEqual(ctrl.result_code, R.OK)
        yield inbox.wait(is_result(ctrl.msg_id, "ACKED"))
        forbidden = yield client.call(ops.RemoteControl(terminal_id=serial, code=0x0C))
        self.assertEqual(forbidden.result_code, R.BAD_PARAMETER)

        status = yield client.call(ops.QueryTerminalStatus(
            terminal_ids=[serial, self.other_record.serial]))
        self.assertEqual([s.state for s in status.statuses], ["ONLINE", "UNKNOWN"])
        listing = yield client.call(ops.ListTerminals())
        self.assertEqual((listing.total, listing.terminal_ids), (1, [serial]))
        yield sleep(CONFIRM_WAIT)  # the router's CONFIG_SET confirmation timer must run out

    @defer.inlineCallbacks
    def test_isolation_and_offline_queue(self):  # type: ignore[no-untyped-def]
        client, inbox = yield self.connect_app()
        other = yield client.call(ops.SendData(terminal_id=self.other_record.serial, data=b"1"))
        self.assertEqual(other.result_code, R.TERMINAL_UNKNOWN)
        info = yield client.call(ops.QueryTerminalInfo(terminal_id=self.other_record.serial))
        self.assertEqual(info.result_code, R.TERMINAL_UNKNOWN)
        # Offline: queued (5), delivered after the terminal's login, then reported.
        queued = yield client.call(ops.SendData(terminal_id=self.record.serial, data=b"\x09"))
        self.assertEqual(queued.result_code, R.TERMINAL_OFFLINE)
        term = yield self.online_terminal()
        seen = yield term.wait_for(platform_request(Command.TRANSPARENT_DATA))
        self.assertEqual(seen.message.user_data, b"\x09")
        yield inbox.wait(is_result(queued.msg_id, "ACKED"))
        yield inbox.wait(lambda n: isinstance(n, ops.NotifyTerminalState)
                         and n.event == "LOGGED_IN")
        # The other application is unaffected and sees only its own terminal.
        second, _ = yield self.connect_app("EC0002")
        mine = yield second.call(ops.QueryTerminalInfo(terminal_id=self.other_record.serial))
        self.assertEqual((mine.result_code, mine.info.imei), (R.OK, self.other_record.imei))

    @defer.inlineCallbacks
    def test_expiry_while_queued(self):  # type: ignore[no-untyped-def]
        client, inbox = yield self.connect_app()
        queued = yield client.call(ops.SendData(terminal_id=self.record.serial, data=b"\x01",
                                                ttl_seconds=60))
        request = self.registry.queued(self.record.serial)[0]
        request.expires_at = 0  # as if its 60 s had passed
        yield self.gateway.router.expire()
        expired = yield inbox.wait(is_result(queued.msg_id, "EXPIRED"))
        self.assertEqual(expired.op_result, R.TERMINAL_OFFLINE)

    @defer.inlineCallbacks
    def test_bad_logins(self):  # type: ignore[no-untyped-def]
        wrong = AppCredentials("EC0001", "wrong-password", BASE_KEY)
        with self.assertRaises(app_client.LoginFailed) as caught:
            yield app_client.connect(reactor, "127.0.0.1", self.app_port, wrong)
        self.assertEqual(caught.exception.result, R.AUTH_FAILED)
        unknown = AppCredentials("EC9999", "whatever", BASE_KEY)
        with self.assertRaises(app_client.LoginFailed) as caught:
            yield app_client.connect(reactor, "127.0.0.1", self.app_port, unknown)
        self.assertEqual(caught.exception.result, R.APP_UNKNOWN)
        # One connection per application by default: a second login type 0 gets 11,
        # type 1 replaces the first (AD-20).
        first, _ = yield self.connect_app()
        with self.assertRaises(app_client.LoginFailed) as caught:
            yield self.connect_app()
        self.assertEqual(caught.exception.result, R.DUPLICATE)
        second, _ = yield self.connect_app(login_type=1)
        yield first.closed
        answer = yield second.call(ops.QueryTerminalStatus(terminal_ids=[self.record.serial]))
        self.assertEqual(answer.statuses[0].state, "REGISTERED")

    @defer.inlineCallbacks
    def test_kept_notifications_follow_the_next_login(self):  # type: ignore[no-untyped-def]
        term = yield self.online_terminal()
        term.send(term.client.transparent_data(b"\x33", "EC0001"))
        ack = yield term.answer_to(Command.TRANSPARENT_DATA)
        self.assertEqual(ack.message.result, 1, "no channel: queued for the application")
        _, inbox = yield self.connect_app(encrypt=True)
        data = yield inbox.wait(lambda n: isinstance(n, ops.DeliverData))
        self.assertEqual(data.data, b"\x33")
        self.assertEqual(m.TransparentData.build(b"\x33").user_data, data.data)


class AppCliTest(AppGatewayTestCase):
    @defer.inlineCallbacks
    def test_send_data_and_wait_for_its_result(self):  # type: ignore[no-untyped-def]
        term = yield self.online_terminal()
        out, err, code = yield utils.getProcessOutputAndValue(sys.executable, [
            "-m", "m2mgw.tools.app", "--port", str(self.app_port), "--app-id", "EC0001",
            "--password", PASSWORD, "--base-key", BASE_KEY, "--wait", "5",
            "send-data", self.record.serial, "0a0b",
        ], env=dict(os.environ))
        self.assertEqual(code, 0, err)
        lines = [json.loads(line) for line in out.decode().splitlines()]
        kinds = [line["type"] for line in lines]
        # Kept notifications (the terminal's login) come first, pushed after APP_LOGIN.
        self.assertIn("NotifyTerminalState", kinds)
        response = lines[kinds.index("SendDataResponse")]
        result = lines[kinds.index("NotifyResult")]
        self.assertEqual(response["result_code"], 0)
        self.assertEqual((result["msg_id"], result["state"]), (response["msg_id"], "ACKED"))
        seen = yield term.wait_for(platform_request(Command.TRANSPARENT_DATA))
        self.assertEqual(seen.message.user_data, b"\x0a\x0b")


class UpgradeTest(AppGatewayTestCase):
    @defer.inlineCallbacks
    def test_upgrade_with_inline_file(self):  # type: ignore[no-untyped-def]
        term = yield self.online_terminal()
        client, inbox = yield self.connect_app()
        image = b"\x7f" * 3000
        bad = yield client.call(ops.Upgrade(
            terminal_id=self.record.serial, version="V2.0", file_data=image,
            file_md5="0" * 32, file_size=len(image)))
        self.assertEqual(bad.result_code, R.BAD_PARAMETER, "MD5 mismatch")
        sent = yield client.call(ops.Upgrade(
            terminal_id=self.record.serial, version="V2.0", file_data=image,
            file_md5=hashlib.md5(image).hexdigest(), file_size=len(image)))
        self.assertEqual(sent.result_code, R.OK)
        offer = yield term.wait_for(platform_request(Command.DOWNLOAD_INFO))
        self.assertIn("VER_DSC=V2.0", offer.message.url)
        result = yield inbox.wait(is_result(sent.msg_id, "ACKED"))
        self.assertEqual(result.terminal_result, 1)

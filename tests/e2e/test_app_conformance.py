"""What an application sees of a terminal's life, end to end (issue #14).

Real sockets throughout: terminals over TCP and, through the modem emulator, by SMS;
applications on the long connection and, with zeep, on the SOAP endpoint.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet import defer, reactor

from m2mgw.app import client as app_client
from m2mgw.app import operations as ops
from m2mgw.app import provision
from m2mgw.app.longconn import AppCredentials
from m2mgw.core.model import Terminal, TerminalState
from m2mgw.protocol import terminal as role
from m2mgw.protocol.constants import Command
from tests.app.gateway_support import BASE_KEY, PASSWORD, AppGatewayTestCase, Inbox, is_result
from tests.app.test_longconn_e2e import platform_request
from tests.app.test_soap_e2e import ZeepApp, in_thread
from tests.e2e.support import (
    TestTerminal,
    client_for,
    connect_tcp,
    provisioned,
    start_gateway,
    until,
)
from tests.sms.test_gateway_sms import E164, MSISDN, GatewaySmsTestCase
from tests.spec_examples import IMEI, IMSI, SYNC_VALUES

R = ops.ResultCode


def state_events(inbox: Inbox) -> list[tuple[str, str]]:
    return [(n.terminal_id, n.event) for n in inbox.of("NotifyTerminalState")]


class LastLoginTest(AppGatewayTestCase):
    """lastLogin of TerminalStatus (application spec 3.4), on both bindings."""

    @defer.inlineCallbacks
    def test_reported_after_login_logout_and_restart(self):  # type: ignore[no-untyped-def]
        serial = self.record.serial
        before = int(time.time())
        term = yield self.online_terminal()
        after = time.time()
        client, _ = yield self.connect_app()
        answer = yield client.call(ops.QueryTerminalStatus(terminal_ids=[serial]))
        [status] = answer.statuses
        self.assertEqual(status.state, "ONLINE")
        self.assertIsNotNone(status.last_login, "0x500F carries the login time, not 0")
        self.assertTrue(before <= status.last_login <= after, (before, status.last_login))

        url = f"http://127.0.0.1:{self.http_port}/m2m/app/v1/M2MPlatformService"
        soap = yield in_thread(ZeepApp, url, "EC0001", PASSWORD)
        got = yield in_thread(soap.call, "QueryTerminalStatus", terminalIds=[serial])
        [soap_status] = got.statuses
        self.assertIsNotNone(soap_status.lastLogin, "TerminalStatus/lastLogin is present")
        self.assertEqual(int(soap_status.lastLogin.timestamp()), status.last_login)

        # The last login stays the last one after the session ends, and after a restart.
        term.send(term.client.logout(0))
        yield term.wait_type(role.LoggedOut)
        answer = yield client.call(ops.QueryTerminalStatus(terminal_ids=[serial]))
        self.assertEqual((answer.statuses[0].state, answer.statuses[0].last_login),
                         ("LOGGED_OUT", status.last_login))
        yield self.gateway.stopService()
        self.gateway = yield start_gateway(self.db, self.extra_config)
        self.addCleanup(self.gateway.stopService)
        url = f"http://127.0.0.1:{self.gateway.port_of('http')}/m2m/app/v1/M2MPlatformService"
        soap = yield in_thread(ZeepApp, url, "EC0001", PASSWORD)
        got = yield in_thread(soap.call, "QueryTerminalStatus", terminalIds=[serial])
        self.assertEqual(int(got.statuses[0].lastLogin.timestamp()), status.last_login)


class ReconnectTest(AppGatewayTestCase):
    """A queued request and a live session coming back on a new TCP connection (9.6)."""

    @defer.inlineCallbacks
    def test_queue_moves_when_the_session_gets_a_new_connection(self):  # type: ignore[no-untyped-def]
        serial = self.record.serial
        term = yield self.online_terminal()
        # The connection drops without a LOGOUT: the session survives it (9.1).
        self.links[-1].transport.loseConnection()
        yield term.closed
        session = self.gateway.engine.sessions[serial]
        yield until(lambda: session.tcp is None, "the gateway to see the close")
        client, inbox = yield self.connect_app()
        sent = yield client.call(ops.SendData(terminal_id=serial, data=b"\x42"))
        self.assertEqual(sent.result_code, R.TERMINAL_OFFLINE, "no path: queued")

        # Back on a new connection with a signed message of the same session, no LOGIN.
        yield self.attach(term, "tcp")
        term.send(term.client.transparent_data(b"\x01", "EC0001"))
        yield term.answer_to(Command.TRANSPARENT_DATA)
        self.assertIs(self.gateway.engine.sessions[serial], session, "no new session")
        seen = yield term.wait_for(platform_request(Command.TRANSPARENT_DATA), timeout=2)
        self.assertEqual(seen.message.user_data, b"\x42")
        yield inbox.wait(is_result(sent.msg_id, "ACKED"))


class AppSmsTestCase(GatewaySmsTestCase):
    """The SMS gateway with the application long connection and EC0001 provisioned."""

    extra_config = "[app]\nlisten = tcp:0:interface=127.0.0.1\n"

    @defer.inlineCallbacks
    def connect_app(self, terminals: list[str]):  # type: ignore[no-untyped-def]
        yield provision.provision(self.registry, {
            "app_id": "EC0001", "password": PASSWORD, "base_key": BASE_KEY,
            "terminals": terminals})
        inbox = Inbox()
        client = yield app_client.connect(
            reactor, "127.0.0.1", self.gateway.port_of("app"),
            AppCredentials("EC0001", PASSWORD, BASE_KEY), on_notification=inbox.add)
        self.addCleanup(AppGatewayTestCase._close_client, client)
        return inbox

    @defer.inlineCallbacks
    def tcp_terminal(self, client: role.TerminalClient):  # type: ignore[no-untyped-def]
        term = TestTerminal(client)
        link = yield connect_tcp(term, self.gateway.port_of("tcp"))
        self.addCleanup(lambda: link.transport.loseConnection() or term.closed)
        return term

    @staticmethod
    @defer.inlineCallbacks
    def log_in(term: TestTerminal) -> Any:
        term.send(term.client.login())
        logged_in = yield term.wait_type(role.LoggedIn)
        if logged_in.result == 0:
            term.send(term.client.trap([]))
        yield term.answer_to(Command.CONFIG_TRAP)  # after result 1 the client's sync trap


class RegistrationNotifiedTest(AppSmsTestCase):
    @defer.inlineCallbacks
    def test_registered_then_logged_in(self):  # type: ignore[no-untyped-def]
        """3.3.5: REGISTER with a serial allocated, credentials by SMS, LOGIN over TCP."""
        yield self.registry.add(Terminal(imei=IMEI, msisdn=E164, apps={"EC0001"}))
        inbox = yield self.connect_app([])
        identity = role.TerminalIdentity(
            serial="A972030000000000", imei=IMEI, imsi=IMSI, config=dict(SYNC_VALUES))
        sms = TestTerminal(role.TerminalClient(identity, "sms", clock=reactor.seconds))
        self.network.attach(MSISDN, sms)
        sms.send(sms.client.register(0))
        registered = yield sms.wait_type(role.Registered)
        self.assertEqual(registered.result, 0)
        yield sms.wait_type(role.CredentialsChanged)
        record = self.registry.by_imei(IMEI)
        yield until(lambda: record.pending.delivered_at is not None, "SECURITY_CONFIG_ACK")

        # The same terminal (its flash: serial and set) logs in over its IP stack.
        term = yield self.tcp_terminal(role.TerminalClient(identity, "tcp", clock=reactor.seconds))
        yield self.log_in(term)
        self.assertEqual(record.state, TerminalState.LOGGED_IN)
        yield inbox.wait(lambda n: isinstance(n, ops.NotifyTerminalState)
                         and n.event == "LOGGED_IN")
        self.assertEqual(state_events(inbox),
                         [(registered.serial, "REGISTERED"), (registered.serial, "LOGGED_IN")])


class SmsAlarmNotifiedTest(AppSmsTestCase):
    @defer.inlineCallbacks
    def test_alarm_by_sms_is_notified_with_bearer_sms(self):  # type: ignore[no-untyped-def]
        """3.3.3: the bearer the alarm arrived on, not the last recorded one."""
        record = provisioned(0, msisdn=E164)
        yield self.registry.add(record)
        yield self.registry.store_config(record.serial, SYNC_VALUES, "reported")
        inbox = yield self.connect_app([record.serial])
        term = yield self.tcp_terminal(client_for(record, "tcp"))
        yield self.log_in(term)
        term.send(term.client.logout(0))
        yield term.wait_type(role.LoggedOut)
        self.assertEqual((record.state, record.bearer), (TerminalState.LOGGED_OUT, "tcp"))

        sms = TestTerminal(client_for(record, "sms"))
        self.network.attach(MSISDN, sms)
        sms.send(sms.client.alarm(1, 2, 0x0020))
        ack = yield sms.answer_to(Command.CONFIG_TRAP)
        self.assertEqual(ack.message.ret, 0)
        alarm = yield inbox.wait(lambda n: isinstance(n, ops.NotifyAlarm))
        self.assertEqual(
            (alarm.terminal_id, alarm.alarm.status, alarm.alarm.type, alarm.alarm.code,
             alarm.bearer),
            (record.serial, 1, 2, 0x0020, "SMS"),
        )
        self.assertEqual(record.state, TerminalState.LOGGED_OUT, "no session was started")

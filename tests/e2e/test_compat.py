"""Issue #10 end to end over loopback: a CMCC Java ME client provisioned ``--compat
cmcc-javame`` through the admin API, a long-connection application, and the same bytes
from a terminal provisioned ``strict``."""

from __future__ import annotations

from twisted.internet import defer, reactor

from m2mgw.app import operations as ops
from m2mgw.core.model import TerminalState
from m2mgw.core.refusals import Reason
from m2mgw.protocol import terminal as role
from m2mgw.protocol.constants import Command
from m2mgw.protocol.tlv import Tlv
from tests import cmcc
from tests.admin_token import admin_token
from tests.app.gateway_support import AppGatewayTestCase
from tests.web import call

from .support import TestTerminal, connect_tcp, until

R = ops.ResultCode
PROVISION = {
    "imei": cmcc.IMEI, "imsi": cmcc.IMSI, "serial": cmcc.SERIAL, "apps": ["EC0001"],
    "uplink_password": cmcc.UPLINK_PASSWORD, "downlink_password": cmcc.DOWNLINK_PASSWORD,
    "base_key": cmcc.BASE_KEY,
}  # fmt: skip


class CompatEndToEndTest(AppGatewayTestCase):
    timeout = 20

    @defer.inlineCallbacks
    def provision_cmcc(self, compat: str | None):  # type: ignore[no-untyped-def]
        """``POST /terminals`` as ``m2mgw provision --compat`` does it."""
        body = dict(PROVISION) if compat is None else {**PROVISION, "compat": compat}
        admin = f"http://127.0.0.1:{self.gateway.port_of('admin')}"
        self.admin = lambda method, path, data=None: call(
            method, admin + path, data, token=admin_token(self.gateway.config)
        )
        status, record, _ = yield defer.ensureDeferred(self.admin("POST", "/terminals", body))
        self.assertEqual(status, 201, record)
        return record

    @defer.inlineCallbacks
    def cmcc_terminal(self):  # type: ignore[no-untyped-def]
        term = TestTerminal(cmcc.client(reactor.seconds))
        link = yield connect_tcp(term, self.tcp_port)
        self.links.append(link)
        return term

    def counts(self) -> dict[Reason, int]:
        return self.gateway.engine.refusals.counts(cmcc.SERIAL)

    @defer.inlineCallbacks
    def test_a_cmcc_client_is_served_by_its_profile(self):  # type: ignore[no-untyped-def]
        record = yield self.provision_cmcc("cmcc-javame")
        self.assertEqual((record["compat"], record["compat_default"]), ("cmcc-javame", False))
        client, inbox = yield self.connect_app()
        term = yield self.cmcc_terminal()

        term.send(term.client.login())  # the LOGIN of 1.6, byte for byte
        logged_in = yield term.wait_type(role.LoggedIn)
        self.assertEqual(logged_in.result, 0)
        term.send(term.client.trap([]))  # its post-login trap, signed over the header
        ack = yield term.answer_to(Command.CONFIG_TRAP)
        self.assertEqual(ack.message.ret, 0)

        term.send(term.client.heartbeat())
        yield term.answer_to(Command.HEART_BEAT)
        term.send(term.client.transparent_data(b"\xaa\xbb\xcc", "EC0001"))  # unsigned, C5 CRC
        ack = yield term.answer_to(Command.TRANSPARENT_DATA)
        self.assertEqual(ack.message.result, 0, "a live application: delivered")
        data = yield inbox.wait(lambda n: isinstance(n, ops.DeliverData))
        self.assertEqual((data.terminal_id, data.data), (cmcc.SERIAL, b"\xaa\xbb\xcc"))

        # Its header-only-signed trap (C4) is refused, counted, and nothing is stored.
        term.send(term.client.trap([Tlv.of(0x3007, 23)]))
        yield until(lambda: self.counts().get(Reason.HEADER_ONLY_DIGEST) == 1)
        self.assertNotIn(0x3007, self.registry.config_values(cmcc.SERIAL))

        # The application cannot reach it with what it cannot take (C9): 12, at once.
        sent = yield client.call(ops.SendData(terminal_id=cmcc.SERIAL, data=b"\x01"))
        self.assertEqual(sent.result_code, R.UNSUPPORTED)  # the long connection has no text
        got = yield client.call(ops.GetConfig(terminal_id=cmcc.SERIAL, tags=[0x0011]))
        self.assertEqual(got.result_code, R.UNSUPPORTED)
        # Nor can the operator: 409 with the reason.
        status, answer, _ = yield defer.ensureDeferred(self.admin(
            "POST", f"/terminals/{cmcc.SERIAL}/requests",
            {"command": "CONFIG_GET", "tags": ["0x0011"]}))  # fmt: skip
        self.assertEqual(status, 409)
        self.assertIn("CONFIG_GET is never sent to a cmcc-javame terminal", answer["error"])
        self.assertEqual(self.registry.queued(cmcc.SERIAL), [])

        # What the console shows: the profile and the refusals by reason.
        status, view, _ = yield defer.ensureDeferred(self.admin("GET", f"/terminals/{cmcc.SERIAL}"))
        self.assertEqual(status, 200)
        self.assertEqual(view["compat"], "cmcc-javame")
        self.assertEqual(view["refusals"], {"header-only-digest": 1, "profile": 3})

        term.send(term.client.logout(0))  # unsigned, on the session's connection (C3)
        yield term.wait_type(role.LoggedOut)
        self.assertEqual(self.registry.get(cmcc.SERIAL).state, TerminalState.LOGGED_OUT)
        self.assertEqual(self.counts().get(Reason.MISSING_DIGEST), None)

    @defer.inlineCallbacks
    def test_a_strict_terminal_sending_the_same_bytes_is_refused(self):  # type: ignore[no-untyped-def]
        record = yield self.provision_cmcc(None)  # the deployment default: strict
        self.assertEqual((record["compat"], record["compat_default"]), ("strict", True))
        term = yield self.cmcc_terminal()
        term.send(term.client.login())
        failed = yield term.wait_type(role.LoginFailed)
        self.assertEqual((failed.result, failed.verified), (2, False))
        self.assertEqual(self.counts(), {Reason.MISSING_DIGEST: 1})
        self.assertEqual(self.registry.get(cmcc.SERIAL).state, TerminalState.REGISTERED)
        # An unsigned message from it is refused as well, before it is logged in.
        term.send(term.client.transparent_data(b"\x01", "EC0001"))
        yield until(lambda: self.counts().get(Reason.NOT_LOGGED_IN) == 1)
        self.assertEqual([e for e in term.events if isinstance(e, role.Answer)], [])

"""SOAP end to end: zeep loads the WSDL from the running gateway and calls it (spec 4).

zeep is blocking, so each call runs in a thread while the reactor serves the gateway
and the simulated terminals. A zeep plugin signs requests from the XML zeep actually
wrote and verifies every response's digest, exactly as an integrator would.
"""

from __future__ import annotations

import base64
import itertools
import time
from typing import Any

import requests
import zeep
from lxml import etree
from treq.client import HTTPClient
from twisted.internet import defer, reactor, threads
from twisted.web.client import Agent, HTTPConnectionPool
from zeep.plugins import Plugin

from m2mgw.app import keys, soap
from m2mgw.app import operations as ops
from m2mgw.app.digest import soap_canonical_body, soap_canonical_header, soap_digest
from m2mgw.protocol import terminal as role
from m2mgw.protocol.constants import Command

from .gateway_support import (
    BASE_KEY,
    CONFIRM_WAIT,
    OTHER_PASSWORD,
    PASSWORD,
    AppGatewayTestCase,
    sleep,
)

R = ops.ResultCode
NS = ops.NAMESPACE
HEADER_FIELDS = ("version", "msgType", "appId", "seqId", "timestamp", "sessionId", "secFlags")
SMALL_LIMIT = 65_536


class DigestPlugin(Plugin):
    """Signs what zeep sends and checks what it receives (5.1)."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.verified = 0

    @staticmethod
    def _parts(envelope: etree._Element) -> tuple[etree._Element, etree._Element]:
        header = envelope.find(f".//{{{NS}}}MsgHeader")
        body = envelope.find(f"{{{soap.SOAP_ENV}}}Body")[0]
        return header, body

    def _digest(self, envelope: etree._Element) -> tuple[etree._Element, str]:
        header, body = self._parts(envelope)
        values = [header.findtext(f"{{{NS}}}{name}") for name in HEADER_FIELDS]
        digest = soap_digest(soap_canonical_header(values), soap_canonical_body(body),
                             values[2] or "", self.password)
        return header.find(f"{{{NS}}}digest"), digest

    def egress(self, envelope, http_headers, operation, binding_options):  # type: ignore[no-untyped-def]
        element, digest = self._digest(envelope)
        element.text = digest
        return envelope, http_headers

    def ingress(self, envelope, http_headers, operation):  # type: ignore[no-untyped-def]
        if envelope.find(f".//{{{NS}}}MsgHeader") is not None:
            element, digest = self._digest(envelope)
            assert element.text == digest, "response digest mismatch"
            self.verified += 1
        return envelope, http_headers


class ZeepApp:
    """An application using zeep, in stateless or session mode."""

    def __init__(self, url: str, app_id: str, password: str) -> None:
        self.plugin = DigestPlugin(password)
        session = requests.Session()
        session.headers["Connection"] = "close"  # leave no connection open after a test
        self.client = zeep.Client(url + "?wsdl", plugins=[self.plugin],
                                  transport=zeep.Transport(session=session))
        self.app_id = app_id
        self.session_id: str | None = None
        self._seq = itertools.count(1)

    def call(self, operation: str, **params: Any) -> Any:
        header = {"version": "1.0", "msgType": operation, "appId": self.app_id,
                  "seqId": next(self._seq),
                  "timestamp": ops.format_soap_timestamp(time.time()),
                  "sessionId": self.session_id,
                  "secFlags": 48 if "encryptedBody" in params else 32, "digest": "0" * 32}
        answer = getattr(self.client.service, operation)(**params,
                                                         _soapheaders={"header": header})
        return answer.body


def in_thread(call: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
    return threads.deferToThread(call, *args, **kwargs)


class SoapFlowsTest(AppGatewayTestCase):
    extra_config = AppGatewayTestCase.extra_config + f"soap_max_request = {SMALL_LIMIT}\n"

    def setUp(self):  # type: ignore[no-untyped-def]
        d = super().setUp()

        def ready(_: Any) -> None:
            self.url = f"http://127.0.0.1:{self.http_port}/m2m/app/v1/M2MPlatformService"
            pool = HTTPConnectionPool(reactor, persistent=False)
            self.http = HTTPClient(Agent(reactor, pool=pool))

        return d.addCallback(ready)

    @defer.inlineCallbacks
    def zeep_app(self, app_id: str = "EC0001", password: str = PASSWORD):  # type: ignore[no-untyped-def]
        app = yield in_thread(ZeepApp, self.url, app_id, password)
        return app

    @defer.inlineCallbacks
    def test_wsdl_served_with_address(self):  # type: ignore[no-untyped-def]
        for query, service in (("?wsdl", "M2MPlatformService"),
                               ("?wsdl=notify", "M2MAppNotifyService")):
            response = yield self.http.get(self.url + query)
            self.assertEqual(response.code, 200)
            root = etree.fromstring((yield response.content()))
            names = [s.get("name") for s in root.iter("{*}service")]
            self.assertEqual(names, [service])
            address = next(root.iter("{http://schemas.xmlsoap.org/wsdl/soap/}address"))
            self.assertEqual(address.get("location"), self.url)

    @defer.inlineCallbacks
    def test_stateless_flows_to_the_terminal_and_back(self):  # type: ignore[no-untyped-def]
        term = yield self.online_terminal()
        app = yield self.zeep_app()
        serial = self.record.serial
        sent = yield in_thread(app.call, "SendData", terminalId=serial, data=b"\x01\x02",
                               needTerminalAck=True, ttlSeconds=600)
        self.assertEqual(sent.resultCode, R.OK)
        seen = yield term.wait_for(lambda e: isinstance(e, role.PlatformRequest)
                                   and e.message.COMMAND == Command.TRANSPARENT_DATA)
        self.assertEqual(seen.message.user_data, b"\x01\x02")
        yield sleep(0.1)
        status = yield in_thread(app.call, "QueryMessageStatus", msgId=sent.msgId)
        self.assertEqual((status.state, status.opResult), ("ACKED", 0))

        got = yield in_thread(app.call, "GetConfig", terminalId=serial, tags=[0x0011],
                              mode="sync")
        self.assertEqual((got.resultCode, got.items[0].tag), (R.OK, 0x0011))
        self.assertEqual(got.items[0].value, (90).to_bytes(4, "big"))
        item = {"tag": 0x0011, "value": (60).to_bytes(4, "big")}
        setting = yield in_thread(app.call, "SetConfig", terminalId=serial, items=[item],
                                  ttlSeconds=600)
        control = yield in_thread(app.call, "RemoteControl", terminalId=serial, code=6,
                                  ttlSeconds=600)
        self.assertEqual((setting.resultCode, control.resultCode), (R.OK, R.OK))

        term.send(term.client.transparent_data(b"\x7e", "EC0001"))
        ack = yield term.answer_to(Command.TRANSPARENT_DATA)
        self.assertEqual(ack.message.result, 1, "no callback, no long connection: kept")
        yield sleep(0.2)
        fetched = yield in_thread(app.call, "FetchMessages", maxCount=100)
        bodies = [(kind, getattr(item, kind)) for item in fetched.messages
                  for kind in ("DeliverData", "NotifyResult") if getattr(item, kind)]
        results = {(b.msgId, b.state) for kind, b in bodies if kind == "NotifyResult"}
        self.assertLessEqual({(sent.msgId, "ACKED"), (setting.msgId, "ACKED"),
                              (setting.msgId, "APPLIED"), (control.msgId, "ACKED")}, results)
        delivered = [b.data for kind, b in bodies if kind == "DeliverData"]
        self.assertEqual(delivered, [b"\x7e"])
        # Leased: not returned again at once; acknowledged ones are gone for good.
        again = yield in_thread(app.call, "FetchMessages", maxCount=100)
        self.assertEqual(again.messages, [])
        ids = [item[item_kind(item)].notifyId for item in fetched.messages]
        acked = yield in_thread(app.call, "AckMessages", notifyIds=ids)
        self.assertEqual(acked.resultCode, R.OK)
        yield sleep(CONFIRM_WAIT)
        after = yield in_thread(app.call, "FetchMessages", maxCount=100)
        self.assertEqual(after.messages, [])
        self.assertGreater(app.plugin.verified, 8)

    @defer.inlineCallbacks
    def test_session_mode_with_encrypted_bodies(self):  # type: ignore[no-untyped-def]
        yield self.online_terminal()
        app = yield self.zeep_app()
        login = yield in_thread(app.call, "Login", loginType=0)
        self.assertEqual(login.resultCode, R.OK)
        session_key = keys.unwrap_session_key("legacy", BASE_KEY, login.sessionKey)
        cipher = keys.session_cipher("legacy", session_key)
        app.session_id = login.sessionId
        plain = soap.to_element(ops.QueryTerminalStatus(terminal_ids=[self.record.serial]))
        sealed = keys.encrypt_xml(cipher, etree.tostring(plain))
        answer = yield in_thread(app.call, "QueryTerminalStatus",
                                 encryptedBody=base64.b64decode(sealed))
        opened = etree.fromstring(keys.decrypt_xml(
            cipher, base64.b64encode(answer.encryptedBody).decode()))
        response = soap.from_element(opened, ops.QueryTerminalStatusResponse)
        self.assertEqual(response.statuses[0].state, "ONLINE")
        beat = yield in_thread(app.call, "Heartbeat")
        self.assertEqual(beat.resultCode, R.OK)
        yield in_thread(app.call, "Logout", reason=0)
        gone = yield in_thread(app.call, "Heartbeat")
        self.assertEqual(gone.resultCode, R.SESSION_INVALID)

    # --- hostile and wrong input ------------------------------------------------------

    def post(self, data: bytes, action: str = soap.soap_action("SendData")) -> Any:
        return self.http.post(self.url, data=data, headers={
            "content-type": soap.CONTENT_TYPE, "soapaction": action})

    @defer.inlineCallbacks
    def fault_of(self, data: bytes, action: str = soap.soap_action("SendData")):  # type: ignore[no-untyped-def]
        response = yield self.post(data, action)
        body = yield response.content()
        with self.assertRaises(soap.RemoteFault) as caught:
            soap.parse_envelope(body, responses=True)
        return response.code, caught.exception

    def signed(self, payload: object, *, app_id: str = "EC0001", password: str = PASSWORD,
               when: float | None = None, seq: int = 1) -> bytes:
        header = soap.MsgHeader(msg_type="", app_id=app_id, seq_id=seq,
                                timestamp=ops.format_soap_timestamp(when or time.time()))
        return soap.build_message(header, payload, password)

    @defer.inlineCallbacks
    def answer_of(self, data: bytes, password: str = PASSWORD):  # type: ignore[no-untyped-def]
        response = yield self.post(data, soap.soap_action(
            etree.QName(etree.fromstring(data).find(f".//{{{soap.SOAP_ENV}}}Body")[0]).localname))
        body = yield response.content()
        envelope = soap.parse_envelope(body, responses=True)
        envelope.verify(password)
        return response.code, envelope.payload(), body

    @defer.inlineCallbacks
    def test_bad_requests_get_faults_and_others_are_served(self):  # type: ignore[no-untyped-def]
        term = yield self.online_terminal()
        good = ops.SendData(terminal_id=self.record.serial, data=b"\x05")
        code, fault = yield self.fault_of(b"<soapenv:Envelope><broken")
        self.assertEqual((code, fault.result), (500, R.BAD_PARAMETER))
        self.assertIn("m2m:BadMessage", fault.reason)
        bomb = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
                b"<lolz>&lol2;</lolz>")
        code, fault = yield self.fault_of(bomb)
        self.assertEqual((code, fault.result), (500, R.BAD_PARAMETER))
        external = self.signed(good).replace(
            b"?>", b'?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>', 1
        ).replace(b"<m2m:data>", b"<m2m:data>&xxe;")
        code, fault = yield self.fault_of(external)
        self.assertEqual((code, fault.result), (500, R.BAD_PARAMETER))
        response = yield self.post(b"<x>" + b"a" * (SMALL_LIMIT + 10) + b"</x>")
        self.assertEqual(response.code, 413)
        yield response.content()
        code, fault = yield self.fault_of(self.signed(good, password="wrong-password"))
        self.assertEqual((code, fault.result), (500, R.AUTH_FAILED))
        self.assertIn("m2m:AuthFailed", fault.reason)
        code, fault = yield self.fault_of(self.signed(good, when=time.time() - 3600))
        self.assertEqual((code, fault.result), (500, R.AUTH_FAILED))
        code, fault = yield self.fault_of(self.signed(good, app_id="NOBODY"))
        self.assertEqual((code, fault.result), (500, R.APP_UNKNOWN))
        code, fault = yield self.fault_of(self.signed(good), soap.soap_action("SendCommand"))
        self.assertEqual(fault.result, R.BAD_PARAMETER)
        # Another application's terminal: a normal response with result 4 (2.6).
        theirs = ops.SendData(terminal_id=self.other_record.serial, data=b"\x05")
        code, answer, _ = yield self.answer_of(self.signed(theirs))
        self.assertEqual((code, answer.result_code), (200, R.TERMINAL_UNKNOWN))
        # Everyone else is unaffected: this app, this terminal, and the other app.
        code, answer, raw = yield self.answer_of(self.signed(good, seq=7))
        self.assertEqual((code, answer.result_code), (200, R.OK))
        seen = yield term.wait_for(lambda e: isinstance(e, role.PlatformRequest))
        self.assertEqual(seen.message.user_data, b"\x05")
        # The duplicate rule (AD-19): the same request is answered from the cache.
        code, again, raw_again = yield self.answer_of(self.signed(good, seq=7))
        self.assertEqual((again.msg_id, raw_again), (answer.msg_id, raw))
        status = ops.QueryTerminalStatus(terminal_ids=[self.other_record.serial])
        code, other, _ = yield self.answer_of(
            self.signed(status, app_id="EC0002", password=OTHER_PASSWORD), OTHER_PASSWORD)
        self.assertEqual(other.statuses[0].state, "REGISTERED")


def item_kind(item: Any) -> str:
    return next(kind for kind in ("DeliverData", "NotifyResult", "NotifyAlarm",
                                  "NotifyConfigTrap", "NotifyTerminalState") if item[kind])

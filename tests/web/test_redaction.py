"""Secrets are *** in every admin answer unless ``?show_secrets=1`` (D-193)."""

from __future__ import annotations

import json
from typing import Any

from twisted.trial import unittest

from m2mgw.core.registry import OutgoingSms
from m2mgw.protocol.constants import Command
from m2mgw.protocol.header import pack_header
from m2mgw.web import views
from tests.web import CREDENTIALS, IMEI, IMSI, SERIAL, start_gateway

PRESET = {"imei": IMEI, "imsi": IMSI, "serial": SERIAL, "cipher": "legacy", **CREDENTIALS}
APP = {"app_id": "EC0001", "password": "AppSecret123", "base_key": "AppBaseKey0123456789ABCD"}


def hex_of(text: str) -> str:
    return text.encode("ascii").hex().upper()


class RedactionTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.gw = await start_gateway(self)
        status, _, _ = await self.gw.api("POST", "/terminals", PRESET)
        self.assertEqual(status, 201)
        gateway = self.gw.gateway
        terminal = gateway.registry.get(SERIAL)
        # What the gateway does when credentials are renewed: SECURITY_CONFIG op 0 with
        # the fresh passwords and Base Key in its body (6.3.4).
        self.fresh = gateway.engine.new_credentials("legacy", gateway.reactor.seconds())
        gateway.router.deliver_credentials(terminal, self.fresh)
        [self.request] = gateway.registry.queued(SERIAL)
        self.secrets = [self.fresh.uplink_password, self.fresh.downlink_password,
                        self.fresh.base_key]

    def assert_hidden(self, answer: Any, *, shown: bool = False) -> None:
        text = json.dumps(answer)
        for secret in self.secrets:
            self.assertIs(hex_of(secret) in text, shown, secret)
        self.assertIs(views.MASK in text, not shown)

    async def test_every_request_view_hides_the_security_config_body(self) -> None:
        request_id = self.request.id
        for path in ("/requests", f"/requests/{request_id}", f"/terminals/{SERIAL}/requests",
                     "/queue", f"/terminals/{SERIAL}"):
            for shown in (False, True):
                query = "?show_secrets=1" if shown else ""
                status, answer, _ = await self.gw.api("GET", path + query)
                self.assertEqual(status, 200, (path, answer))
                self.assert_hidden(answer, shown=shown)
        status, one, _ = await self.gw.api("GET", f"/requests/{request_id}")
        self.assertEqual((one["command"], one["body"], one["state"]),
                         ("SECURITY_CONFIG", "***", "queued"))

    async def test_the_next_page_keeps_show_secrets(self) -> None:
        await self.gw.gateway.router.submit(SERIAL, Command.CONFIG_GET, b"\x00\x11\x00\x00")
        status, page, _ = await self.gw.api("GET", "/requests?limit=1&show_secrets=1")
        self.assertEqual((status, page["items"][0]["command"]), (200, "CONFIG_GET"))
        status, following, _ = await self.gw.api("GET", page["next"])
        self.assertEqual(status, 200)
        self.assert_hidden(following, shown=True)

    async def test_the_sms_outbox_hides_a_security_config_it_carries(self) -> None:
        body = self.request.body
        frame = pack_header(28 + len(body), Command.SECURITY_CONFIG, 7, 0x0300, 0, SERIAL) + body
        await self.gw.gateway.registry.enqueue_sms(OutgoingSms(
            msisdn="8613900000001", port=2862, message=frame,
            created_at=self.gw.gateway.reactor.seconds()))
        status, page, _ = await self.gw.api("GET", "/sms/outbox")
        self.assertEqual(status, 200)
        [sms] = page["items"]
        self.assertEqual((sms["command"], sms["serial"], sms["message"]),
                         ("SECURITY_CONFIG", SERIAL, "***"))
        self.assert_hidden(page)
        status, page, _ = await self.gw.api("GET", "/sms/outbox?show_secrets=1")
        self.assertEqual(status, 200)
        self.assert_hidden(page, shown=True)

    async def test_provisioning_answers(self) -> None:
        await self.gw.gateway.registry.remove(SERIAL)
        status, answer, _ = await self.gw.api("POST", "/terminals", PRESET)
        self.assertEqual((status, [answer[k] for k in CREDENTIALS]), (201, ["***"] * 3))
        status, answer, _ = await self.gw.api("POST", "/apps?show_secrets=1", APP)
        self.assertEqual((status, answer["password"], answer["base_key"]),
                         (201, APP["password"], APP["base_key"]))
        status, answer, _ = await self.gw.api(
            "POST", "/apps", {**APP, "app_id": "EC0002", "base_key": "AppBaseKey0123456789ABCE"}
        )
        self.assertEqual((status, answer["password"], answer["base_key"]), (201, "***", "***"))


def test_redact_walks_nested_values() -> None:
    value = {"items": [{"command": "SECURITY_CONFIG", "body": "AB", "answer": None},
                       {"command": "CONFIG_GET", "body": "00110000"}],
             "app": {"password": "x", "base_key": "y", "next_base_key": None},
             "session_key": "k"}
    assert views.redact(value) == {
        "items": [{"command": "SECURITY_CONFIG", "body": "***", "answer": None},
                  {"command": "CONFIG_GET", "body": "00110000"}],
        "app": {"password": "***", "base_key": "***", "next_base_key": None},
        "session_key": "***",
    }

"""Every route of the admin API: documented in /openapi.json, and behind the token."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from m2mgw.web import openapi
from m2mgw.web.admin import OPEN, route_table
from tests.web import CREDENTIALS, IMEI, IMSI, SERIAL, call, header, start_gateway

PRESET = {"imei": IMEI, "imsi": IMSI, "serial": SERIAL, "cipher": "legacy", **CREDENTIALS}


def documented() -> dict[str, list[str]]:
    return {path: sorted(method.upper() for method in operations)
            for path, operations in openapi.spec()["paths"].items()}


def refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [value["$ref"]] if "$ref" in value else [r for v in value.values()
                                                        for r in refs(v)]
    return [r for v in value for r in refs(v)] if isinstance(value, list) else []


class RouteTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.gw = await start_gateway(self)
        status, _, _ = await self.gw.api("POST", "/terminals", PRESET)
        self.assertEqual(status, 201)
        status, request, _ = await self.gw.api(
            "POST", f"/terminals/{SERIAL}/requests", {"command": "CONFIG_GET", "tags": [17]}
        )
        self.assertEqual(status, 202)
        self.table = route_table(self.site_root())
        self.values = {"{serial}": SERIAL, "{id}": str(request["id"])}

    def site_root(self) -> Any:
        """The resource the admin listener really serves."""
        port = self.gw.gateway.getServiceNamed("admin").port
        assert port is not None
        return port.factory.wrappedFactory.resource  # inside its connection cap (D-312)

    def url(self, path: str) -> str:
        for name, value in self.values.items():
            path = path.replace(name, value)
        return self.gw.admin + path

    def test_the_openapi_description_names_every_route_and_method_and_no_other(self) -> None:
        self.assertEqual(documented(), self.table)
        for path in ("/terminals/{serial}", "/terminals/{serial}/alarms", "/sms/outbox",
                     "/stats", "/events", "/session", "/openapi.json"):
            self.assertIn(path, self.table)
        self.assertIn("DELETE", self.table["/terminals/{serial}"])

    def test_every_reference_resolves(self) -> None:
        spec = openapi.spec()
        self.assertEqual(spec["openapi"], "3.1.0")
        for ref in refs(spec):
            node: Any = spec
            for part in ref.removeprefix("#/").split("/"):
                node = node[part]
            self.assertIsInstance(node, dict, ref)

    async def test_served_at_openapi_json(self) -> None:
        status, body, _ = await self.gw.api("GET", "/openapi.json")
        self.assertEqual((status, body), (200, openapi.spec()))

    async def test_every_route_is_401_without_a_token_but_the_open_ones(self) -> None:
        checked = 0
        for path, methods in self.table.items():
            open_methods = OPEN.get(path.split("/")[1].encode(), frozenset())
            for method in methods:
                if path != "/" and (open_methods is None or method.encode() in open_methods):
                    continue  # /health, /console, POST /session: test_auth; / tells only
                    # browsers where the console is (test_exposure)
                status, body, response = await call(method, self.url(path), {})
                checked += 1
                self.assertEqual((status, body), (401, {"error": "authentication required"}),
                                 (method, path))
                self.assertEqual(header(response, "www-authenticate"), [b'Bearer realm="m2mgw"'])
        self.assertGreaterEqual(checked, 25)

    async def test_every_get_answers_with_the_bearer_and_with_the_cookie(self) -> None:
        status, _, response = await call("POST", f"{self.gw.admin}/session",
                                         {"token": self.gw.token})
        self.assertEqual(status, 204)
        cookie = header(response, "set-cookie")[0].split(b";")[0]
        for path, methods in self.table.items():
            if "GET" not in methods or path == "/events":  # /events: see test_events
                continue
            for headers in ({"Authorization": f"Bearer {self.gw.token}"}, {"Cookie": cookie}):
                status, body, _ = await call("GET", self.url(path), headers=headers,
                                             allow_redirects=False)
                expected = 302 if path == "/console" else 200  # to /console/
                self.assertEqual(status, expected, (path, headers, body))

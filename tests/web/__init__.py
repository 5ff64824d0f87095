"""Helpers for tests of the admin API and the file service against a real gateway."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.trial import unittest

from m2mgw.config import parse_config
from m2mgw.service import GatewayService
from tests.admin_token import admin_token

SERIAL = "A972030012345678"
IMEI = "860000000000001"
IMSI = "460001234567890"
CREDENTIALS = {
    "uplink_password": "Up123456",
    "downlink_password": "Dn654321",
    "base_key": "0123456789ABCDEFGHIJKLMN",
}

CONFIG = """
[registry]
database = {root}/m2mgw.db
[tcp]
listen = none
[udp]
enabled = {udp}
port = 0
[http]
listen = tcp:0:interface=127.0.0.1
public_url = http://192.0.2.10:8080
files_dir = {root}/files
[admin]
listen = tcp:0:interface=127.0.0.1
"""


@dataclass
class Running:
    """A started gateway, the base URLs of its HTTP listeners and its admin token."""

    gateway: GatewayService
    root: Path
    admin: str
    http: str
    token: str

    async def api(self, method: str, path: str, body: Any = None, **kw: Any
                  ) -> tuple[int, Any, Any]:
        """One authenticated admin API call (see :func:`call`)."""
        return await call(method, self.admin + path, body, token=self.token, **kw)


async def start_gateway(case: unittest.TestCase, *, udp: bool = False, admin: str = ""
                        ) -> Running:
    """A GatewayService on a temporary SQLite file, stopped at the end of the test;
    ``admin`` holds more lines of its ``[admin]`` section (``{root}`` is replaced)."""
    root = Path(case.mktemp()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    text = CONFIG.format(root=root, udp="yes" if udp else "no") + admin.format(root=root)
    config = parse_config(text, source="test.ini")
    gateway = GatewayService(config, reactor)
    gateway.startService()
    case.addCleanup(gateway.stopService)
    assert gateway.ready is not None
    await gateway.ready
    return Running(
        gateway,
        root,
        f"http://127.0.0.1:{gateway.port_of('admin')}",
        f"http://127.0.0.1:{gateway.port_of('http')}",
        admin_token(config),
    )


async def call(
    method: str, url: str, body: Any = None, *, raw: bytes | None = None,
    token: str | None = None, **kw: Any
) -> tuple[int, Any, Any]:
    """One HTTP request on a fresh connection: (status, JSON or bytes, response);
    with ``token``, as the admin bearer. A body goes as ``application/json`` unless
    ``headers`` give another Content-Type.

    The client keeps Content-Length out of ``response.headers``: read ``response.length``.
    """
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = dict(kw.pop("headers", {}))
    if data is not None and not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = "application/json"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    kw["headers"] = headers
    response = await treq.request(method, url, data=data, persistent=False, **kw)
    content = await treq.content(response)
    kind = response.headers.getRawHeaders(b"content-type", [b""])[0]
    parsed = json.loads(content) if kind == b"application/json" else content
    return response.code, parsed, response


def header(response: Any, name: str) -> list[bytes] | None:
    """The raw values of one response header."""
    return response.headers.getRawHeaders(name.encode("ascii"))

"""The admin JSON API on a real gateway (SQLite file, loopback sockets)."""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.internet import reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.trial import unittest

from m2mgw.core.model import RequestState, TerminalState
from m2mgw.core.requests import config_get
from m2mgw.protocol import messages as m
from m2mgw.protocol.checksum import crc16, crc32
from m2mgw.protocol.constants import Command
from m2mgw.protocol.terminal import (
    Credentials,
    TerminalClient,
    TerminalIdentity,
    parse_download_url,
)
from tests.e2e.support import until
from tests.web import CREDENTIALS, IMEI, IMSI, SERIAL, header, start_gateway

PRESET = {"imei": IMEI, "imsi": IMSI, "serial": SERIAL, "cipher": "legacy", **CREDENTIALS}


class AdminApiTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.gw = await start_gateway(self)

    async def provision(self, body: dict | None = None) -> dict:
        status, record, _ = await self.gw.api(
            "POST", "/terminals?show_secrets=1", body or PRESET
        )
        self.assertEqual(status, 201, record)
        return record

    async def test_health_is_json(self) -> None:
        status, body, response = await self.gw.api("GET", "/health")
        self.assertEqual(status, 200)
        self.assertEqual(header(response, "content-type"), [b"application/json"])
        self.assertEqual(body, {"status": "ok", "terminals": 0, "sessions": 0})

    async def test_provision_preregistered_shows_credentials_once_if_asked(self) -> None:
        status, hidden, _ = await self.gw.api("POST", "/terminals", PRESET)
        self.assertEqual(status, 201)
        self.assertEqual([hidden[k] for k in CREDENTIALS], ["***"] * 3)
        await self.gw.gateway.registry.remove(SERIAL)
        record = await self.provision()
        self.assertEqual(record["serial"], SERIAL)
        self.assertEqual(record["state"], TerminalState.REGISTERED)
        self.assertEqual(record["uplink_password"], CREDENTIALS["uplink_password"])
        self.assertEqual(record["base_key"], CREDENTIALS["base_key"])
        stored = self.gw.gateway.registry.get(SERIAL)
        self.assertEqual(stored.current.downlink_password, CREDENTIALS["downlink_password"])

        status, page, _ = await self.gw.api("GET", "/terminals?show_secrets=1")
        self.assertEqual(status, 200)
        listing = page["items"]
        self.assertEqual([t["serial"] for t in listing], [SERIAL])
        self.assertEqual(listing[0]["imsi"], IMSI)
        status, detail, _ = await self.gw.api("GET", f"/terminals/{SERIAL}?show_secrets=1")
        self.assertEqual(status, 200)
        self.assertEqual(detail["cipher"], "legacy")
        self.assertEqual((detail["queue"], detail["session"], detail["config"]), ([], None, {}))
        for shown in (listing, detail):
            for secret in CREDENTIALS.values():
                self.assertNotIn(secret, repr(shown))

    async def test_provision_without_credentials_awaits_register(self) -> None:
        record = await self.provision({"imei": IMEI, "msisdn": "13800138000", "apps": ["EC01"]})
        self.assertEqual(record["state"], TerminalState.UNREGISTERED)
        self.assertIsNone(record["serial"])
        self.assertIsNone(record["uplink_password"])
        self.assertEqual(record["msisdn"], "8613800138000")
        status, detail, _ = await self.gw.api("GET", f"/terminals/{IMEI}")
        self.assertEqual((status, detail["apps"]), (200, ["EC01"]))
        status, body, _ = await self.gw.api(
            "POST", f"/terminals/{IMEI}/requests", {"command": "CONFIG_GET", "tags": [17]}
        )
        self.assertEqual(status, 409, body)

    async def test_provision_refusals(self) -> None:
        await self.provision()
        status, body, _ = await self.gw.api("POST", "/terminals", {**PRESET, "serial": None})
        self.assertEqual(status, 400)
        self.assertIn("together", body["error"])
        status, body, _ = await self.gw.api(
            "POST", "/terminals", {**PRESET, "serial": "A972030099999999"}
        )
        self.assertEqual(status, 409, body)
        self.assertIn("imei", body["error"])
        status, body, _ = await self.gw.api("POST", "/terminals", {"imei": "12ab"})
        self.assertEqual(status, 400)

    async def test_config_get_for_offline_terminal_stays_queued(self) -> None:
        await self.provision()
        status, request, _ = await self.gw.api(
            "POST", f"/terminals/{SERIAL}/requests",
            {"command": "config_get", "tags": ["0x0011", "M2MAPN"], "ttl": 600},
        )
        self.assertEqual(status, 202, request)
        self.assertEqual((request["command"], request["state"]), ("CONFIG_GET", "queued"))
        self.assertEqual(request["expires_at"] - request["created_at"], 600)
        expected = config_get({"tags": [0x0011, 0x0002]})[1]
        self.assertEqual(bytes.fromhex(request["body"]), expected)
        # Durable: the row is in the database, not only in memory.
        stored = await self.gw.gateway.registry.requests(SERIAL, [RequestState.QUEUED])
        self.assertEqual([r.id for r in stored], [request["id"]])

        status, queue, _ = await self.gw.api("GET", "/queue")
        self.assertEqual([r["id"] for r in queue["items"]], [request["id"]])
        status, one, _ = await self.gw.api("GET", f"/requests/{request['id']}")
        self.assertEqual((status, one["state"]), (200, "queued"))
        status, history, _ = await self.gw.api("GET", f"/requests?serial={SERIAL}&state=queued")
        self.assertEqual([r["id"] for r in history["items"]], [request["id"]])
        status, none, _ = await self.gw.api("GET", "/requests?state=succeeded")
        self.assertEqual((status, none), (200, {"items": [], "next": None}))
        status, detail, _ = await self.gw.api("GET", f"/terminals/{SERIAL}")
        self.assertEqual([r["id"] for r in detail["queue"]], [request["id"]])

    async def test_bad_requests(self) -> None:
        await self.provision()
        url = f"/terminals/{SERIAL}/requests"
        cases = [
            (b"{not json", 400, "not valid JSON"),
            (b"[1, 2]", 400, "JSON object"),
            (b'{"command": "CONFIG_SET", "values": {"0xE025": "12345678"}}', 400, "security"),
            (b'{"command": "CONFIG_SET", "values": {"IMSINUM": "1"}}', 400, "read-only"),
            (b'{"command": "REMOTE_CTRL", "code": 99}', 400, "3.6.1"),
            (b'{"command": "SECURITY_CONFIG", "op": 0, "tags": ["0xE025"]}', 400, "op 0"),
            (b'{"command": "LOGIN"}', 400, "unknown command"),
            (b'{"command": "CONFIG_GET", "tags": [17], "ttl": -5}', 400, "ttl"),
            (b'{"command": "LOGOUT", "reason": 4}', 409, "not logged in"),
            (b" " * (64 * 1024 + 1), 413, "larger"),
        ]
        for raw, status, text in cases:
            got, body, response = await self.gw.api("POST", url, raw=raw)
            self.assertEqual((got, raw[:40]), (status, raw[:40]), body)
            self.assertIn(text, body["error"])
            self.assertEqual(header(response, "content-type"), [b"application/json"])
        self.assertEqual(self.gw.gateway.registry.queued(SERIAL), [])

    async def test_not_found_and_method_errors_are_json(self) -> None:
        for method, path in [
            ("GET", "/terminals/A972030000000000"),
            ("POST", "/terminals/A972030000000000/requests"),
            ("GET", "/requests/999"),
            ("GET", "/requests/abc"),
            ("GET", "/nowhere"),
            ("GET", "/terminals/x/y/z"),
        ]:
            status, body, _ = await self.gw.api(method, path, {"command": "CONFIG_GET"})
            self.assertEqual(status, 404, path)
            self.assertIn("error", body)
        status, body, response = await self.gw.api("PUT", "/terminals")
        self.assertEqual(status, 405)
        self.assertEqual(header(response, "allow"), [b"GET, POST"])
        status, body, _ = await self.gw.api("GET", "/requests?state=bogus")
        self.assertEqual(status, 400)

    async def test_download_info_offers_and_queues(self) -> None:
        await self.provision()
        image = self.gw.root / "files" / "fw 2.0.bin"  # offers come from files_dir (D-320)
        image.parent.mkdir()
        data = bytes(range(256)) * 40
        image.write_bytes(data)
        status, request, _ = await self.gw.api(
            "POST", f"/terminals/{SERIAL}/requests",
            {"command": "DOWNLOAD_INFO", "path": str(image), "version": "2.0", "force": True},
        )
        self.assertEqual(status, 202, request)
        self.assertEqual(request["command"], "DOWNLOAD_INFO")
        msg = m.DownloadInfo.decode_body(bytes.fromhex(request["body"]))
        offer = parse_download_url(msg.url or "")
        self.assertEqual(
            (offer.size, offer.crc16, offer.crc32), (len(data), crc16(data), crc32(data))
        )
        self.assertEqual((offer.version, offer.trans_id), ("2.0", request["file"]["trans_id"]))
        self.assertEqual(urlsplit(msg.url).netloc, "192.0.2.10:8080")
        self.assertIn(b"\x10\x0b\x00\x01\x01", bytes.fromhex(request["body"]))  # 0x100B = 1
        status, body, _ = await self.gw.api(
            "POST", f"/terminals/{SERIAL}/requests",
            {"command": "DOWNLOAD_INFO", "path": str(image.parent / "missing"), "version": "1"},
        )
        self.assertEqual(status, 400, body)

    async def test_delete_terminal_cancels_its_queue(self) -> None:
        await self.provision()
        gateway = self.gw.gateway
        await gateway.router.submit(SERIAL, Command.CONFIG_GET, b"\x00\x11\x00\x00")
        status, body, _ = await self.gw.api("DELETE", f"/terminals/{SERIAL}")
        self.assertEqual(status, 200, body)
        self.assertIsNone(gateway.registry.get(SERIAL))
        status, _, _ = await self.gw.api("GET", f"/terminals/{SERIAL}")
        self.assertEqual(status, 404)
        status, queue, _ = await self.gw.api("GET", "/queue")
        self.assertEqual(queue, {"items": [], "total": 0, "next": None})


class _UdpTerminal(DatagramProtocol):
    """A reference terminal (TerminalClient) on a real UDP socket."""

    def __init__(self, client: TerminalClient, gateway: tuple[str, int]) -> None:
        self.client = client
        self.gateway = gateway
        self.events: list[object] = []

    def send(self, data: bytes) -> None:
        self.transport.write(data, self.gateway)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.events.extend(self.client.receive(data, reactor.seconds()))
        for out in self.client.data_to_send():
            self.transport.write(out, addr)


class LiveTerminalTests(unittest.TestCase):
    """Requests queued through the API reach a logged-in terminal over UDP."""

    async def test_config_get_delivered_then_platform_logout(self) -> None:
        gw = await start_gateway(self, udp=True)
        status, _, _ = await gw.api("POST", "/terminals", PRESET)
        self.assertEqual(status, 201)
        creds = Credentials(CREDENTIALS["uplink_password"], CREDENTIALS["downlink_password"],
                            base_key=CREDENTIALS["base_key"])
        identity = TerminalIdentity(SERIAL, IMEI, IMSI, creds, config={0x0011: b"\x00\x00\x00\x3c"})
        terminal = _UdpTerminal(TerminalClient(identity, "udp", clock=reactor.seconds),
                                ("127.0.0.1", gw.gateway.udp_port or 0))
        port = reactor.listenUDP(0, terminal, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        terminal.send(terminal.client.login())
        await until(lambda: terminal.client.logged_in, "the login")
        status, request, _ = await gw.api(
            "POST", f"/terminals/{SERIAL}/requests",
            {"command": "CONFIG_GET", "tags": ["PERIOD_CFG"]},
        )
        self.assertEqual(status, 202, request)
        url = f"/requests/{request['id']}"
        await until(lambda: not gw.gateway.registry.request(request["id"]).active,
                    "the request's answer")
        status, done, _ = await gw.api("GET", url)
        self.assertEqual((done["state"], done["result"]), ("succeeded", 0), done)
        status, detail, _ = await gw.api("GET", f"/terminals/{SERIAL}")
        self.assertEqual(detail["config"]["PERIOD_CFG"]["value"], 60)
        self.assertEqual(detail["session"]["bearer"], "udp")
        self.assertFalse(detail["session"]["encrypted"])
        self.assertEqual(detail["state"], "LOGGED_IN")

        status, answer, _ = await gw.api(
            "POST", f"/terminals/{SERIAL}/requests", {"command": "LOGOUT", "reason": 4}
        )
        self.assertEqual((status, answer["sent"]), (202, True), answer)
        await until(lambda: SERIAL not in gw.gateway.engine.sessions, "the session's end")
        self.assertFalse(terminal.client.logged_in)
        status, health, _ = await gw.api("GET", "/health")
        self.assertEqual((health["terminals"], health["sessions"]), (1, 0))

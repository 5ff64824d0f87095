"""What a web page or a curious caller cannot make the admin API do (issue #15 item 10,
D-318..D-320): JSON bodies only, Host headers that name the listener, DOWNLOAD_INFO of
files under ``[http] files_dir`` only; and ``GET /`` sends a browser to the console."""

from __future__ import annotations

import socket

from twisted.internet import reactor, threads
from twisted.trial import unittest

from m2mgw.config import parse_config
from m2mgw.service import GatewayService
from m2mgw.tools.cli import admin_client
from tests.web import CONFIG, CREDENTIALS, IMEI, IMSI, SERIAL, call, header, start_gateway

PRESET = {"imei": IMEI, "imsi": IMSI, "serial": SERIAL, "cipher": "legacy", **CREDENTIALS}


def raw_request(port: int, request: bytes) -> bytes:
    """Send ``request`` as is and read the answer until the gateway closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    return answer


class ContentTypeTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.gw = await start_gateway(self)

    async def test_a_text_plain_post_is_refused_415_even_on_an_open_route(self) -> None:
        body = f'{{"token": "{self.gw.token}"}}'.encode()
        form = f'--x\r\nContent-Disposition: form-data; name="token"\r\n\r\n{body.decode()}' \
               '\r\n--x--\r\n'
        for kind, data in (("text/plain", body), ("application/x-www-form-urlencoded", body),
                           ("multipart/form-data; boundary=x", form.encode()),
                           ("application/jsonp", body)):
            # What a cross-origin form or fetch may send without a preflight.
            status, answer, response = await call(
                "POST", f"{self.gw.admin}/session", raw=data, headers={"Content-Type": kind})
            self.assertEqual((status, answer),
                             (415, {"error": "request bodies must be application/json"}), kind)
            self.assertIsNone(header(response, "set-cookie"), "no session for a form post")
        port = self.gw.gateway.port_of("admin")
        answer = await threads.deferToThread(  # no Content-Type at all, with the token
            raw_request, port, b"POST /terminals HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + self.gw.token.encode() + b"\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        self.assertTrue(answer.startswith(b"HTTP/1.1 415 "), answer[:40])
        status, answer, _ = await self.gw.api("GET", "/terminals")
        self.assertEqual(answer["total"], 0, "nothing was provisioned")

    async def test_json_bodies_and_bodyless_requests_pass(self) -> None:
        status, _, _ = await call("POST", f"{self.gw.admin}/session",
                                  raw=f'{{"token": "{self.gw.token}"}}'.encode(),
                                  headers={"Content-Type": "Application/JSON; charset=utf-8"})
        self.assertEqual(status, 204)
        status, _, _ = await self.gw.api("DELETE", "/session")  # no body, no type
        self.assertEqual(status, 204)
        status, body, _ = await self.gw.api("POST", "/terminals", PRESET)
        self.assertEqual(status, 201, body)


class HostTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.gw = await start_gateway(self, admin="allowed_hosts = gw.example, 192.0.2.7\n")
        self.port = self.gw.gateway.port_of("admin")

    async def host(self, value: str, path: str = "/health") -> int:
        status, _, _ = await call("GET", self.gw.admin + path, headers={"Host": value},
                                  token=self.gw.token)
        return status

    async def test_a_foreign_host_is_refused_421(self) -> None:
        for value in ("evil.example", f"evil.example:{self.port}", "127.0.0.1.evil.example",
                      "localhost.evil.example", "10.0.0.1", "gw.example.evil", "[::2]",
                      "::1", "a b", ""):
            for path in ("/health", "/terminals", "/console/", "/"):
                self.assertEqual(await self.host(value, path), 421, (value, path))
        status, body, _ = await call("GET", f"{self.gw.admin}/health",
                                     headers={"Host": "rebound.example"})
        self.assertEqual(status, 421)
        self.assertIn("allowed_hosts", body["error"])
        # Two Host headers: refused too, whichever would be read.
        answer = await threads.deferToThread(
            raw_request, self.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Host: evil.example\r\nConnection: close\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 421 "), answer[:40])

    async def test_the_listener_loopback_names_and_allowed_hosts_pass(self) -> None:
        for value in (f"127.0.0.1:{self.port}", "127.0.0.1", f"localhost:{self.port}",
                      "LOCALHOST.", f"[::1]:{self.port}", "localhost:9999",  # SSH tunnel
                      "gw.example", "GW.example:443", "192.0.2.7:8081"):
            self.assertEqual(await self.host(value), 200, value)
        # HTTP/1.0 without Host: not a browser.
        answer = await threads.deferToThread(raw_request, self.port,
                                             b"GET /health HTTP/1.0\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.0 200 "), answer[:40])

    async def test_the_cli_over_a_unix_socket_is_answered(self) -> None:
        root = self.gw.root / "unix"
        root.mkdir()
        text = CONFIG.format(root=root, udp="no").replace(
            "[admin]\nlisten = tcp:0:interface=127.0.0.1",
            f"[admin]\nlisten = unix:{root}/admin.sock")
        config = parse_config(text)
        gateway = GatewayService(config, reactor)
        gateway.startService()
        self.addCleanup(gateway.stopService)
        await gateway.ready
        client = admin_client(config)
        assert client is not None
        page = await threads.deferToThread(client.call, "GET", "/terminals")
        self.assertEqual(page["total"], 0)


class ConsoleRedirectTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.gw = await start_gateway(self)

    async def test_a_browser_at_the_root_is_sent_to_the_console_without_a_token(self) -> None:
        accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        status, _, response = await call("GET", self.gw.admin + "/", headers={"Accept": accept},
                                         allow_redirects=False)
        self.assertEqual((status, header(response, "location")), (302, [b"/console/"]))
        status, page, _ = await call("GET", self.gw.admin + "/", headers={"Accept": accept})
        self.assertEqual(status, 200)
        self.assertIn(b"<html", page.lower())

    async def test_json_clients_keep_their_answer(self) -> None:
        for headers in ({}, {"Accept": "application/json"}):
            status, body, _ = await call("GET", self.gw.admin + "/", headers=headers)
            self.assertEqual((status, body), (401, {"error": "authentication required"}))
        status, body, _ = await self.gw.api("GET", "/", headers={"Accept": "application/json"})
        self.assertEqual(status, 200)
        self.assertIn("/terminals", body["endpoints"])


class DownloadSourceTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.gw = await start_gateway(self)
        status, body, _ = await self.gw.api("POST", "/terminals", PRESET)
        self.assertEqual(status, 201, body)
        self.files = self.gw.root / "files"
        self.files.mkdir()

    async def offer(self, path: str) -> tuple[int, dict]:
        status, body, _ = await self.gw.api(
            "POST", f"/terminals/{SERIAL}/requests",
            {"command": "DOWNLOAD_INFO", "path": path, "version": "2.0"})
        return status, body

    def served(self) -> list[str]:
        return sorted(p.name for p in self.files.iterdir() if len(p.name) == 16)

    async def test_a_path_outside_files_dir_is_refused(self) -> None:
        secret = self.gw.root / "secret.bin"
        secret.write_bytes(b"private")
        secret.chmod(0o600)
        (self.files / "link.bin").symlink_to(secret)
        (self.files / "sub").mkdir()
        for path in (str(secret), str(self.gw.root / "m2mgw.db"),
                     str(self.gw.root / "admin-tokens"), "../admin-tokens",
                     "sub/../../secret.bin", "link.bin", str(self.files / "link.bin"),
                     str(self.files), "/etc/passwd"):
            status, body = await self.offer(path)
            self.assertEqual(status, 400, (path, body))
            self.assertIn("only files under [http] files_dir", body["error"], path)
        status, body = await self.offer("a\0b")
        self.assertEqual((status, body["error"]), (400, "cannot offer 'a\\x00b': not a file name"))
        self.assertEqual(self.served(), [], "nothing was copied")
        self.assertEqual(self.gw.gateway.registry.queued(SERIAL), [])

    async def test_a_file_under_files_dir_is_offered(self) -> None:
        (self.files / "fw-2.0.bin").write_bytes(b"image")
        (self.files / "sub").mkdir()
        (self.files / "sub" / "fw.bin").write_bytes(b"image 2")
        (self.files / "current.bin").symlink_to(self.files / "sub" / "fw.bin")
        sizes = []
        for path in ("fw-2.0.bin", str(self.files / "fw-2.0.bin"), "sub/fw.bin",
                     "current.bin"):  # relative paths start at files_dir, not the cwd
            status, body = await self.offer(path)
            self.assertEqual(status, 202, (path, body))
            sizes.append(body["file"]["size"])
        self.assertEqual(sizes, [5, 5, 7, 7])
        self.assertEqual(len(self.served()), 4)

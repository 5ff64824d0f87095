"""The admin API behind tokens (D-190..D-192): real gateway, real HTTP on loopback."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.trial import unittest

from m2mgw.config import GatewayConfig, parse_config
from m2mgw.service import GatewayService, StartupError
from m2mgw.web import auth
from tests.twistd import gateway_argv
from tests.web import call, header, start_gateway


class TokenTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.gw = await start_gateway(self)
        self.tokens = self.gw.root / "admin-tokens"

    def test_the_file_is_created_private_with_one_random_token(self) -> None:
        self.assertEqual(stat.S_IMODE(os.stat(self.tokens).st_mode), 0o600)
        tokens = auth.read_tokens(str(self.tokens))
        self.assertEqual(tokens, [self.gw.token])
        self.assertGreaterEqual(len(self.gw.token), 40)  # 32 random bytes, base64

    async def test_bearer_header_passes_anything_else_gets_401_and_nothing_more(self) -> None:
        status, body, _ = await self.gw.api("GET", "/terminals")
        self.assertEqual(status, 200, body)
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"},
                        {"Authorization": f"Bearer {self.gw.token}x"},
                        {"Cookie": "m2mgw_admin=nope"}):
            for path in ("/terminals", "/", "/no/such/route", "/terminals/X/requests"):
                status, body, response = await call("GET", self.gw.admin + path,
                                                    headers=headers)
                self.assertEqual((status, body), (401, {"error": "authentication required"}),
                                 (headers, path))
                self.assertEqual(header(response, "www-authenticate"), [b'Bearer realm="m2mgw"'])

    async def test_health_needs_no_token(self) -> None:
        status, body, _ = await call("GET", f"{self.gw.admin}/health")
        self.assertEqual((status, body["status"]), (200, "ok"))

    async def test_session_sets_an_http_only_strict_cookie_that_authenticates(self) -> None:
        url = f"{self.gw.admin}/session"
        status, body, _ = await call("POST", url, {"token": "wrong"})
        self.assertEqual((status, body), (401, {"error": "authentication required"}))
        status, body, response = await call("POST", url, {"token": self.gw.token})
        self.assertEqual((status, body), (204, b""))
        [cookie] = header(response, "set-cookie")
        parts = [p.strip() for p in cookie.decode().split(";")]
        self.assertEqual(parts[0], f"m2mgw_admin={self.gw.token}")
        self.assertIn("HttpOnly", parts)
        self.assertIn("Path=/", parts)
        self.assertIn("samesite=strict", [p.lower() for p in parts])
        status, body, _ = await call("GET", f"{self.gw.admin}/terminals",
                                     headers={"Cookie": parts[0]})
        self.assertEqual(status, 200, body)
        status, _, response = await call("DELETE", url, headers={"Cookie": parts[0]})
        self.assertEqual(status, 204)
        [cleared] = header(response, "set-cookie")
        self.assertTrue(cleared.startswith(b"m2mgw_admin=;"), cleared)
        self.assertIn(b"Max-Age=0", cleared)
        status, _, _ = await call("DELETE", url)
        self.assertEqual(status, 401)

    async def test_tokens_are_reread_when_the_file_changes(self) -> None:
        self.tokens.write_text("# rotated\n\nsecond-token\n  third-token  \n")
        for token, expected in ((self.gw.token, 401), ("second-token", 200),
                                ("third-token", 200)):
            status, _, _ = await call("GET", f"{self.gw.admin}/queue", token=token)
            self.assertEqual(status, expected, token)
        self.tokens.unlink()
        status, _, _ = await call("GET", f"{self.gw.admin}/queue", token="second-token")
        self.assertEqual(status, 401)


class ListenTests(unittest.TestCase):
    """``[admin] listen`` beyond loopback needs a token file with a token (D-192)."""

    def config(self, root: Path, listen: str) -> GatewayConfig:
        return parse_config(
            f"[registry]\ndatabase = {root}/m2mgw.db\n[tcp]\nlisten = none\n"
            f"[udp]\nenabled = no\n[http]\nlisten = none\n[admin]\nlisten = {listen}\n"
        )

    async def test_all_interfaces_without_a_token_is_refused_before_listening(self) -> None:
        root = Path(self.mktemp()).resolve()
        root.mkdir(parents=True)
        (root / "admin-tokens").write_text("# no token yet\n")
        gateway = GatewayService(self.config(root, "tcp:0"), reactor)
        gateway.startService()
        with self.assertRaises(StartupError) as caught:
            await gateway.ready
        await gateway.stopService()
        self.assertEqual(str(caught.exception), (
            f"[admin] listen = tcp:0 accepts other hosts, but {root}/admin-tokens holds no "
            "admin token (none in the file): add one, or listen on loopback"
        ))
        self.assertIsNone(gateway.port_of("admin"))


@pytest.mark.parametrize(
    ("listen", "local"),
    [
        ("tcp:8081:interface=127.0.0.1", True),
        ("tcp:8081:interface=127.1.2.3", True),
        ("tcp6:8081:interface=\\:\\:1", True),
        ("tcp:8081:interface=localhost", True),
        ("unix:/run/m2mgw/admin.sock", True),
        ("tcp:8081", False),
        ("tcp:8081:interface=0.0.0.0", False),
        ("tcp6:8081:interface=\\:\\:", False),
        ("tcp:8081:interface=192.0.2.1", False),
        ("systemd:domain=INET:index=0", False),
    ],
)
def test_what_counts_as_local(listen: str, local: bool) -> None:
    assert auth.is_local(listen) is local


def test_prepare_accepts_other_hosts_once_the_file_has_a_token(tmp_path: Path) -> None:
    tokens = auth.TokenFile(str(tmp_path / "admin-tokens"))
    with pytest.raises(auth.AuthSetupError, match="no such file or directory"):
        tokens.prepare("tcp:8081")
    assert not (tmp_path / "admin-tokens").exists()  # never created for other hosts
    (tmp_path / "admin-tokens").write_text("s3cret\n")
    tokens.prepare("tcp:8081")
    assert tokens.valid("s3cret") and not tokens.valid("s3cre") and not tokens.valid("")


def test_twistd_refuses_all_interfaces_without_a_token_in_one_line(tmp_path: Path) -> None:
    ini = tmp_path / "m2mgw.ini"
    ini.write_text(
        f"[registry]\ndatabase = {tmp_path}/m2mgw.db\n[tcp]\nlisten = none\n[udp]\n"
        "enabled = no\n[http]\nlisten = none\n[admin]\nlisten = tcp:0:interface=0.0.0.0\n"
    )
    result = subprocess.run(gateway_argv(ini),
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    [line] = [line for line in output.splitlines() if "critical" in line]
    assert line.endswith(
        f"m2mgw: [admin] listen = tcp:0:interface=0.0.0.0 accepts other hosts, but "
        f"{tmp_path}/admin-tokens holds no admin token (no such file or directory): add one, "
        "or listen on loopback"
    ), output
    assert "Traceback" not in output
    assert not (tmp_path / "admin-tokens").exists()

"""The ``m2mgw`` operator CLI, run as a subprocess: direct database path and live API."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

from twisted.internet import reactor, utils
from twisted.trial import unittest
from twisted.web import pages, server

from m2mgw.config import parse_config
from m2mgw.core.registry.sqlite import SqliteRegistry
from m2mgw.tools.cli import admin_client, make_parser, send_body
from tests.twistd import cli
from tests.web import IMEI, IMSI, SERIAL, start_gateway

REPO = Path(__file__).resolve().parents[2]
FIELDS = {"serial", "imei", "imsi", "msisdn", "state", "cipher",
          "uplink_password", "downlink_password", "base_key"}


def write_ini(root: Path, admin: str) -> Path:
    ini = root / "cli.ini"
    ini.write_text(f"[registry]\ndatabase = {root}/m2mgw.db\n[admin]\nlisten = {admin}\n")
    return ini


def test_send_options_become_typed_api_parameters() -> None:
    args = make_parser().parse_args([
        "send", SERIAL, "config_set", "--set", "17=60", "--set", "M2MAPN=CMNET",
        "--set", "0x0025=2,17", "--set", "0x8001=ab", "--set", "0x0002=hex:41", "--ttl", "5",
    ])
    assert send_body(args) == {
        "command": "CONFIG_SET",
        "values": {"0x0011": 60, "M2MAPN": "CMNET", "0x0025": [2, 17], "0x8001": {"hex": "ab"},
                   "0x0002": {"hex": "41"}},
        "ttl": 5.0,
    }
    args = make_parser().parse_args(
        ["send", SERIAL, "DOWNLOAD_INFO", "--file", "fw.bin", "--version", "2.0", "--force"]
    )
    assert send_body(args) == {"command": "DOWNLOAD_INFO", "path": os.path.abspath("fw.bin"),
                               "version": "2.0", "force": True}


def test_admin_api_address_from_the_ini() -> None:
    def where(listen: str) -> str | None:
        client = admin_client(parse_config(f"[admin]\nlisten = {listen}\n"))
        return None if client is None else client.where

    assert where("tcp:8081:interface=127.0.0.1") == "http://127.0.0.1:8081"
    assert where("tcp:port=9000") == "http://127.0.0.1:9000"
    assert where("tcp6:8081:interface=\\:\\:1") == "http://[::1]:8081"
    assert where("unix:/run/m2mgw/admin.sock") == "unix:/run/m2mgw/admin.sock"
    assert where("unix:address=admin.sock") == f"unix:{os.path.abspath('admin.sock')}"
    assert where("systemd:domain=INET:index=0") is None  # only systemd knows the address
    assert where("none") is None
    assert admin_client(parse_config("")).where == "http://127.0.0.1:8081"


class DirectDatabaseTests(unittest.TestCase):
    """No gateway running: the CLI opens the SQLite registry itself."""

    def setUp(self) -> None:
        self.root = Path(self.mktemp()).resolve()
        self.root.mkdir(parents=True)
        self.ini = write_ini(self.root, "none")

    def test_provision_preset_serial_generates_credentials(self) -> None:
        done = cli(self.ini, "provision", "--imei", IMEI, "--imsi", IMSI, "--serial", SERIAL,
                   "--cipher", "aes", "--msisdn", "+8613800138000", "--app", "EC01", "--json",
                   "--show-secrets")
        self.assertEqual(done.returncode, 0, done.stderr)
        record = json.loads(done.stdout)
        self.assertLessEqual(FIELDS, set(record))
        self.assertEqual(
            (record["serial"], record["imei"], record["imsi"], record["msisdn"]),
            (SERIAL, IMEI, IMSI, "8613800138000"),
        )
        self.assertEqual((record["state"], record["cipher"]), ("REGISTERED", "aes"))
        lengths = [len(record[k]) for k in ("uplink_password", "downlink_password", "base_key")]
        self.assertEqual(lengths, [8, 8, 16])
        self.assertTrue(record["base_key"].isalnum())
        rows = sqlite3.connect(self.root / "m2mgw.db").execute(
            "SELECT serial, imei, state FROM terminals"
        ).fetchall()
        self.assertEqual(rows, [(SERIAL, IMEI, "REGISTERED")])

        listed = cli(self.ini, "terminals", "--json")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        [terminal] = json.loads(listed.stdout)["items"]
        self.assertEqual((terminal["serial"], terminal["imei"]), (SERIAL, IMEI))
        self.assertNotIn(record["uplink_password"], listed.stdout)
        shown = cli(self.ini, "show", SERIAL, "--json")
        self.assertEqual(json.loads(shown.stdout)["apps"], ["EC01"])
        self.assertNotIn(record["base_key"], shown.stdout)

    def test_provision_without_serial_and_errors(self) -> None:
        done = cli(self.ini, "provision", "--imei", IMEI, "--json")
        self.assertEqual(done.returncode, 0, done.stderr)
        record = json.loads(done.stdout)
        self.assertEqual((record["state"], record["serial"], record["base_key"]),
                         ("UNREGISTERED", None, None))
        again = cli(self.ini, "provision", "--imei", IMEI)
        self.assertEqual(again.returncode, 1)
        self.assertIn("already used", again.stderr)
        for args, code, text in [
            (("provision", "--imei", "123"), 2, "imei"),
            (("provision", "--imei", IMEI, "--serial", SERIAL), 2, "needs --imsi"),
            (("provision", "--imei", IMEI, "--imsi", IMSI, "--serial", SERIAL, "--base-key", "k"),
             2, "together"),
            (("frobnicate",), 2, "invalid choice"),
            (("send", SERIAL, "CONFIG_GET", "--tag", "17"), 1, "gateway not running"),
            (("show", "nobody"), 1, "unknown terminal"),
        ]:
            done = cli(self.ini, *args)
            self.assertEqual(done.returncode, code, (args, done.stderr))
            self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
            self.assertIn(text, done.stderr)
        missing = cli(self.root / "absent.ini", "terminals")
        self.assertEqual((missing.returncode, missing.stdout), (2, ""))


async def run_cli(ini: Path, *args: str) -> tuple[int, str, str]:
    """The CLI in a subprocess, without blocking the reactor of an in-process gateway."""
    out, err, code = await utils.getProcessOutputAndValue(
        sys.executable,
        ["-m", "m2mgw.tools.cli", "--config", str(ini), *args],
        env=dict(os.environ),
        path=str(REPO),
    )
    return code, out.decode(), err.decode()


class LiveGatewayTests(unittest.TestCase):
    """A gateway running in this process; the CLI talks to its admin API."""

    async def run_cli(self, *args: str) -> tuple[int, str, str]:
        return await run_cli(self.ini, *args)

    async def test_round_trip_through_the_admin_api(self) -> None:
        running = await start_gateway(self)
        port = running.admin.rsplit(":", 1)[1]
        self.ini = write_ini(running.root, f"tcp:{port}:interface=127.0.0.1")
        registry = running.gateway.registry

        code, out, err = await self.run_cli(
            "provision", "--imei", IMEI, "--imsi", IMSI, "--serial", SERIAL, "--json",
            "--show-secrets",
        )
        self.assertEqual(code, 0, err)
        record = json.loads(out)
        self.assertEqual(registry.get(SERIAL).current.base_key, record["base_key"])

        code, out, err = await self.run_cli(
            "send", SERIAL, "CONFIG_GET", "--tag", "0x0011", "--tag", "M2MAPN", "--json"
        )
        self.assertEqual(code, 0, err)
        request = json.loads(out)
        self.assertEqual((request["state"], request["body"]), ("queued", "0011000000020000"))
        self.assertEqual([r.id for r in registry.queued(SERIAL)], [request["id"]])

        code, out, err = await self.run_cli(
            "send", SERIAL, "CONFIG_SET", "--set", "PERIOD_CFG=60", "--wait", "0.3", "--json"
        )
        self.assertEqual(code, 1)
        self.assertEqual(json.loads(out)["body"], "001100040000003C")
        self.assertIn("still queued", err)

        code, out, err = await self.run_cli("send", SERIAL, "CONFIG_SET", "--set", "0xE025=x")
        self.assertEqual((code, out), (1, ""))
        self.assertIn("security tag", err)

        code, out, err = await self.run_cli("requests", SERIAL, "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual([r["command"] for r in json.loads(out)["items"]],
                         ["CONFIG_SET", "CONFIG_GET"])


class ForeignAdminApiTests(unittest.TestCase):
    """A registry open in this process; on the ini's admin port, something else."""

    async def test_an_api_that_names_no_registry_is_not_used(self) -> None:
        root = Path(self.mktemp()).resolve()
        root.mkdir(parents=True)
        registry = SqliteRegistry(str(root / "m2mgw.db"), reactor)
        await registry.open()
        self.addCleanup(registry.close)
        port = reactor.listenTCP(0, server.Site(pages.notFound()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        ini = write_ini(root, f"tcp:{port.getHost().port}:interface=127.0.0.1")
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "m2mgw.tools.cli", "--config", str(ini), "provision", "--imei", IMEI],
            env=dict(os.environ), path=str(REPO),
        )
        self.assertEqual((code, out), (1, b""))
        self.assertEqual(err.decode().strip().splitlines(), [
            f"m2mgw: the admin API at http://127.0.0.1:{port.getHost().port} does not say "
            f"which registry it serves (HTTP 404); cannot check that it serves {root}/m2mgw.db"
        ])
        self.assertEqual(registry.terminals(), [])

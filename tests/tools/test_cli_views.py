"""The CLI's listings, ``status`` and redaction: through a running gateway and from the
file of a stopped one (D-193..D-195)."""

from __future__ import annotations

import json
from pathlib import Path

from twisted.trial import unittest

from m2mgw.core.model import Alarm, LogEntry
from m2mgw.core.registry import OutgoingSms
from m2mgw.protocol.constants import Command
from m2mgw.protocol.header import pack_header
from m2mgw.tools.cli import make_parser
from tests.tools.test_cli import cli, run_cli, write_ini
from tests.web import CREDENTIALS, IMEI, IMSI, SERIAL, start_gateway

APP = ("app-provision", "--app-id", "EC0001", "--password", "AppSecret123",
       "--base-key", "AppBaseKey0123456789ABCD", "--json")


def hex_of(text: str) -> str:
    return text.encode("ascii").hex().upper()


class LiveTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.gw = await start_gateway(self)
        port = self.gw.admin.rsplit(":", 1)[1]
        self.ini = write_ini(self.gw.root, f"tcp:{port}:interface=127.0.0.1")
        self.registry = self.gw.gateway.registry

    async def m2mgw(self, *args: str) -> tuple[str, str]:
        code, out, err = await run_cli(self.ini, *args)
        self.assertEqual(code, 0, (args, err))
        return out, err

    async def test_secrets_are_shown_only_with_show_secrets(self) -> None:
        out, _ = await self.m2mgw("provision", "--imei", IMEI, "--imsi", IMSI, "--serial", SERIAL,
                                "--json")
        record = json.loads(out)
        self.assertEqual([record[k] for k in CREDENTIALS], ["***"] * 3)
        stored = self.registry.get(SERIAL).current
        self.assertEqual(len(stored.uplink_password), 8)  # generated, kept, not shown
        out, _ = await self.m2mgw(*APP)
        self.assertEqual((json.loads(out)["password"], json.loads(out)["base_key"]),
                         ("***", "***"))
        out, _ = await self.m2mgw(*APP[:2], "EC0002", *APP[3:], "--show-secrets")
        self.assertEqual(json.loads(out)["password"], "AppSecret123")

        terminal = self.registry.get(SERIAL)
        gateway = self.gw.gateway
        fresh = gateway.engine.new_credentials("none", gateway.reactor.seconds())
        gateway.router.deliver_credentials(terminal, fresh)
        body = self.registry.queued(SERIAL)[0].body
        frame = pack_header(28 + len(body), Command.SECURITY_CONFIG, 1, 0x0300, 0, SERIAL)
        await self.registry.enqueue_sms(OutgoingSms(
            msisdn="8613900000001", port=2862, message=frame + body,
            created_at=gateway.reactor.seconds()))
        for command in (("requests", "--json"), ("requests", SERIAL), ("show", SERIAL),
                        ("outbox", "--json"), ("outbox",)):
            out, _ = await self.m2mgw(*command)
            self.assertNotIn(hex_of(fresh.base_key), out, command)
            if "--json" in command or command[0] == "show":  # the tables show no bodies
                self.assertIn("***", out, command)
                out, _ = await self.m2mgw(*command, "--show-secrets")
                self.assertIn(hex_of(fresh.base_key), out, command)

    async def test_listings_pages_and_status(self) -> None:
        await self.m2mgw("provision", "--imei", IMEI, "--imsi", IMSI, "--serial", SERIAL)
        now = self.gw.gateway.reactor.seconds()
        for index in range(3):
            await self.registry.record_alarm(Alarm(serial=SERIAL, code=index + 1, type=1,
                                                   status=1, time=now + index))
            self.registry.log(LogEntry(time=now + index, serial=SERIAL, direction="in",
                                       bearer="udp", command_id=Command.HEART_BEAT,
                                       sequence_id=index, event="heartbeat"))
        out, err = await self.m2mgw("alarms", SERIAL, "--limit", "2")
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["ID", "TIME", "SERIAL", "CODE", "TYPE", "STATUS",
                                            "CLEARED_CODE"])
        self.assertEqual([line.split()[3] for line in lines[1:]], [SERIAL, SERIAL])
        self.assertEqual([line.split()[4] for line in lines[1:]], ["0x0003", "0x0002"])
        last = json.loads((await self.m2mgw("alarms", "--json", "--limit", "2"))[0])["items"][-1]
        self.assertEqual(err.strip(), f"m2mgw: 2 shown; more with --before {last['id']}")
        out, _ = await self.m2mgw("alarms", SERIAL, "--before", str(last["id"]), "--json")
        self.assertEqual([a["code"] for a in json.loads(out)["items"]], ["0x0001"])
        out, _ = await self.m2mgw("messages", SERIAL, "--json", "--event", "heartbeat")
        self.assertEqual([m["sequence_id"] for m in json.loads(out)["items"]], [2, 1, 0])
        out, err = await self.m2mgw("terminals", "--state", "registered", "--limit", "1")
        self.assertIn(SERIAL, out)
        self.assertEqual(err, "")
        out, _ = await self.m2mgw("notifications", "--json")
        self.assertEqual(json.loads(out), {"items": [], "total": 0, "next": None})

        out, _ = await self.m2mgw("status")
        lines = out.splitlines()
        self.assertTrue(lines[0].startswith("m2mgw "), out)
        self.assertIn("running for", lines[0])
        self.assertIn("terminals  1 known (1 registered)", lines)
        self.assertIn("online     0 (tcp 0, udp 0, sms 0)", lines)
        self.assertIn("queue      0 requests", lines)
        stats = json.loads((await self.m2mgw("status", "--json"))[0])
        self.assertEqual((stats["running"], stats["terminals"]["known"]), (True, 1))


class StoppedGatewayTests(unittest.TestCase):
    """No gateway: the same commands read the registry file."""

    def setUp(self) -> None:
        self.root = Path(self.mktemp()).resolve()
        self.root.mkdir(parents=True)
        self.ini = write_ini(self.root, "none")

    def test_status_and_listings_from_the_file(self) -> None:
        done = cli(self.ini, "provision", "--imei", IMEI)
        self.assertEqual(done.returncode, 0, done.stderr)
        done = cli(self.ini, "status")
        self.assertEqual(done.returncode, 0, done.stderr)
        lines = done.stdout.splitlines()
        self.assertIn("not running (from the registry file)", lines[0])
        self.assertIn("terminals  1 known (1 unregistered)", lines)
        done = cli(self.ini, "alarms", "--json")
        self.assertEqual(json.loads(done.stdout), {"items": [], "next": None})
        done = cli(self.ini, "alarms", "--limit", "0")
        self.assertEqual(done.returncode, 2)
        self.assertIn("--limit: must be an integer 1-1000", done.stderr)


def test_every_cli_option_has_help() -> None:
    from tests.tools.test_help import walk

    missing = [where for where, action in walk(make_parser()) if not action.help]
    assert missing == []

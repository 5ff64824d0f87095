"""``m2mgw-terminal`` against a real gateway on loopback (issue #8): what a newcomer sees."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, task

from m2mgw.config import ConfigError
from m2mgw.core.model import RequestState
from m2mgw.protocol import messages as m
from m2mgw.protocol.constants import Command
from m2mgw.protocol.tlv import Tlv, tlv_dict
from m2mgw.tools import terminal as tool
from tests.e2e.test_gateway_ip import GatewayTestCase
from tests.spec_examples import (
    BASE_KEY,
    DOWNLINK_PASSWORD,
    IMEI,
    IMSI,
    SERIAL,
    UPLINK_PASSWORD,
)
from tests.twistd import free_port

IDENTITY = ["--serial", SERIAL, "--imei", IMEI, "--imsi", IMSI,
            "--uplink-password", UPLINK_PASSWORD, "--downlink-password", DOWNLINK_PASSWORD,
            "--base-key", BASE_KEY, "--cipher", "legacy"]  # fmt: skip


class TerminalToolTest(GatewayTestCase):
    timeout = 20

    @defer.inlineCallbacks
    def run_tool(self, *argv: str):  # type: ignore[no-untyped-def]
        out = io.StringIO()
        code = yield tool.run(reactor, ["--tcp-port", str(self.tcp_port), *argv], out)
        return code, out.getvalue().splitlines()

    @defer.inlineCallbacks
    def test_readable_results_by_default(self):  # type: ignore[no-untyped-def]
        yield self.add_terminal()
        code, lines = yield self.run_tool(*IDENTITY, "--send-data", "01020304",
                                          "--dest-ec", "EC0001", "--duration", "0.5")  # fmt: skip
        self.assertEqual(code, 0, lines)
        self.assertEqual(lines, [
            f"{SERIAL}: logged in, LOGIN_ACK 1 (OK_SYNC)",
            f"{SERIAL}: trap sent, CONFIG_TRAP_ACK 0 (OK)",
            f"{SERIAL}: data sent, TRANSPARENT_DATA_ACK 1 (QUEUED)",
            f"{SERIAL}: logged out, reason 0 (NORMAL)",
            "1 terminal(s), 0 failed",
        ])  # fmt: skip

    @defer.inlineCallbacks
    def test_refusals_and_errors_are_one_readable_line(self):  # type: ignore[no-untyped-def]
        code, lines = yield self.run_tool(*IDENTITY, "--duration", "0.5")
        self.assertEqual((code, lines[0]), (1, f"{SERIAL}: login refused, LOGIN_ACK 3 "
                                               "(UNKNOWN_SERIAL)"))  # fmt: skip
        out = io.StringIO()
        code = yield tool.run(reactor, ["--tcp-port", str(free_port()), *IDENTITY], out)
        first, summary = out.getvalue().splitlines()
        self.assertEqual(code, 1)
        self.assertTrue(first.startswith(f"{SERIAL}: error: cannot connect: "), first)
        self.assertIn("refused", first)
        self.assertEqual(summary, "1 terminal(s), 1 failed")

    @defer.inlineCallbacks
    def test_queued_request_is_delivered_after_the_post_login_trap(self):  # type: ignore[no-untyped-def]
        """The empty CONFIG_TRAP after LOGIN_ACK 0 releases the queue at once, not after
        sync_trap_wait (30 s); TLV 0x0011 reports --heartbeat."""
        yield self.add_terminal(sync_tags=None)
        # The first login (LOGIN_ACK 1) syncs the values; the second is consistent.
        yield self.run_tool(*IDENTITY, "--heartbeat", "5", "--duration", "0.2")
        body = m.ConfigGet(tlvs=[Tlv.query(0x0011)]).encode_body()
        queued = yield self.gateway.router.submit(SERIAL, Command.CONFIG_GET, body)
        started = reactor.seconds()
        code, lines = yield self.run_tool(*IDENTITY, "--heartbeat", "5", "--duration", "1")
        self.assertEqual(code, 0, lines)
        self.assertEqual(lines[:2], [f"{SERIAL}: logged in, LOGIN_ACK 0 (OK)",
                                     f"{SERIAL}: trap sent, CONFIG_TRAP_ACK 0 (OK)"])  # fmt: skip
        self.assertIn(f"{SERIAL}: CONFIG_GET 1 answered with 0 (OK)", lines)
        request = self.registry.request(queued.id)
        self.assertEqual(request.state, RequestState.SUCCEEDED)
        self.assertLess(request.updated_at - started, 1.0)
        answer = m.ConfigGetAck.decode_body(request.answer_body)
        self.assertEqual(tlv_dict(answer.tlvs)[0x0011], (5).to_bytes(4, "big"))

    @defer.inlineCallbacks
    def test_json_events_name_the_result_codes(self):  # type: ignore[no-untyped-def]
        yield self.add_terminal()
        code, lines = yield self.run_tool(*IDENTITY, "--duration", "0.3", "--json-events")
        records = [json.loads(line) for line in lines]
        self.assertEqual(code, 0, records)
        self.assertEqual(records[0], {"serial": SERIAL, "event": "logged_in", "result": 1,
                                      "result_name": "OK_SYNC", "timestamp": records[0][
                                          "timestamp"], "session_key": False})  # fmt: skip
        trap = next(r for r in records if r["event"] == "trap_ack")
        self.assertEqual((trap["ret"], trap["ret_name"]), (0, "OK"))
        logout = next(r for r in records if r["event"] == "logged_out")
        self.assertEqual((logout["reason"], logout["reason_name"]), (0, "NORMAL"))

    @defer.inlineCallbacks
    def test_shutdown_logs_every_terminal_out(self):  # type: ignore[no-untyped-def]
        """What SIGINT/SIGTERM do: the reactor's shutdown waits for clean logouts."""
        yield self.add_terminal()
        out = io.StringIO()
        fleet = tool.prepare(reactor, ["--tcp-port", str(self.tcp_port), *IDENTITY], out)
        result = fleet.run()
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertFalse(result.called)
        stopping = fleet.shutdown()
        assert stopping is not None
        yield stopping
        code = yield result
        self.assertEqual(code, 0, out.getvalue())
        self.assertIn(f"{SERIAL}: logged out, reason 0 (NORMAL)", out.getvalue())
        self.assertIsNone(fleet.shutdown())  # nothing left to wait for


def test_config_gives_the_platform_address(tmp_path: Path) -> None:
    ini = tmp_path / "gw.ini"
    ini.write_text("[tcp]\nlisten = tcp:15236:interface=127.0.0.2\n[udp]\nport = 15235\n")
    args = tool.parser().parse_args(["--config", str(ini)])
    tool.platform_address(args)
    assert (args.host, args.tcp_port, args.udp_port) == ("127.0.0.2", 15236, 15235)
    args = tool.parser().parse_args(["--config", str(ini), "--tcp-port", "7000"])
    tool.platform_address(args)
    assert (args.host, args.tcp_port) == ("127.0.0.2", 7000)
    args = tool.parser().parse_args([])
    tool.platform_address(args)
    assert (args.host, args.tcp_port, args.udp_port) == ("127.0.0.1", 5236, 5235)
    ini.write_text("[tcp]\nlisten = systemd:domain=INET:index=0\n")
    with pytest.raises(ConfigError, match="give --tcp-port"):
        tool.platform_address(tool.parser().parse_args(["--config", str(ini)]))


@pytest.mark.parametrize(
    "argv",
    [
        ["--heartbeat", "0"],
        ["--duration", "-1"],
        ["--count", "0"],
        ["--tcp-port", "99999"],
        ["--mode", "sms", "--msisdn", "1", "--modem-control", "nohost"],
    ],
)
def test_bad_values_are_usage_errors(argv: list[str], capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_:
        tool.prepare(reactor, argv, io.StringIO())
    assert exit_.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_heartbeat_is_reported_in_tlv_0x0011() -> None:
    args = tool.parser().parse_args(["--uplink-password", "1", "--downlink-password", "2",
                                     "--heartbeat", "5"])  # fmt: skip
    [identity] = tool.build_identities(args)
    assert identity.config[0x0011] == (5).to_bytes(4, "big")
    assert tool.reported_heartbeat(0.1) == 1

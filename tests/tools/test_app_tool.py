"""``m2mgw-app`` as docs/applications.rst uses it, against a real gateway (issue #8)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from typing import Any

import pytest
from twisted.internet import defer, reactor, utils

from m2mgw.config import parse_config
from m2mgw.tools import app as tool
from tests.app.gateway_support import BASE_KEY, PASSWORD, AppGatewayTestCase, sleep
from tests.twistd import free_port

CREDENTIALS = ["--app-id", "EC0001", "--password", PASSWORD, "--base-key", BASE_KEY]


class AppToolTest(AppGatewayTestCase):
    timeout = 20

    def args(self, *argv: str) -> Any:
        return tool.parse_args([*argv, "--port", str(self.app_port), *CREDENTIALS])

    @defer.inlineCallbacks
    def run_tool(self, *argv: str, stop: defer.Deferred[None] | None = None):  # type: ignore[no-untyped-def]
        out = io.StringIO()
        code = yield defer.ensureDeferred(tool.run(reactor, self.args(*argv), stop, out))
        return code, [json.loads(line) for line in out.getvalue().splitlines()]

    @defer.inlineCallbacks
    def test_every_notification_is_answered_before_logout(self):  # type: ignore[no-untyped-def]
        """The final NotifyResult ends the wait; it is answered, so no login gets it again."""
        yield self.online_terminal()
        code, lines = yield self.run_tool("send-data", self.record.serial, "0a0b", "--wait", "5")
        self.assertEqual(code, 0, lines)
        result = lines[-1]
        self.assertEqual((result["type"], result["state"]), ("NotifyResult", "ACKED"))
        self.assertEqual((result["op_result"], result["op_result_name"]), (0, "OK"))
        self.assertEqual(result["terminal_result_name"], "ACCEPTED")
        yield sleep(0.7)  # beyond two retries of the schedule (0.3 s)
        _, inbox = yield self.connect_app()
        yield sleep(0.5)
        again = [n for n in inbox.items if getattr(n, "notify_id", None) == result["notify_id"]]
        self.assertEqual(again, [])

    @defer.inlineCallbacks
    def test_sync_get_config_and_set_config_to_its_final_result(self):  # type: ignore[no-untyped-def]
        yield self.online_terminal()
        code, lines = yield self.run_tool("get-config", self.record.serial, "0x0011", "--sync")
        self.assertEqual(code, 0, lines)
        self.assertEqual(lines[-1]["items"], [{"type": "TlvItem", "tag": 17, "value": "0000005a"}])
        code, lines = yield self.run_tool(
            "set-config", self.record.serial, "0x0011=00000078", "--wait", "5"
        )
        self.assertEqual(code, 0, lines)
        states = [line["state"] for line in lines if line["type"] == "NotifyResult"]
        self.assertEqual(states[-1], "APPLIED")  # not the first NotifyResult, ACKED
        yield sleep(1.05)  # the router's CONFIG_SET confirmation timer must run out

    @defer.inlineCallbacks
    def test_stop_ends_the_wait_with_a_clean_logout(self):  # type: ignore[no-untyped-def]
        """What SIGINT/SIGTERM do to ``watch --wait 600``."""
        stop: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(0.3, stop.callback, None)
        started = reactor.seconds()
        code, _ = yield self.run_tool("watch", "--wait", "600", stop=stop)
        self.assertEqual(code, 0)
        self.assertLess(reactor.seconds() - started, 3)

    @defer.inlineCallbacks
    def test_the_command_line_as_the_docs_write_it(self):  # type: ignore[no-untyped-def]
        """Options after the subcommand; a refused login in one line with its name."""
        yield self.online_terminal()
        argv = ["-m", "m2mgw.tools.app", "--port", str(self.app_port), *CREDENTIALS,
                "send-data", self.record.serial, "01020304", "--wait", "5"]  # fmt: skip
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, argv, env=dict(os.environ)
        )
        self.assertEqual(code, 0, err)
        types = [json.loads(line)["type"] for line in out.decode().splitlines()]
        self.assertEqual(types[-2:], ["SendDataResponse", "NotifyResult"])
        wrong = [a if a != PASSWORD else "wrong-password" for a in argv]
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable, wrong, env=dict(os.environ)
        )
        self.assertEqual((code, out, err), (1, b"", b"m2mgw-app: login refused: 1 (AUTH_FAILED)\n"))


def test_options_go_before_or_after_the_subcommand() -> None:
    after = tool.parse_args(["send-data", "A972030000001234", "01", "--wait", "30",
                             "--port", "5301", *CREDENTIALS])  # fmt: skip
    before = tool.parse_args(["--wait", "30", "--port", "5301", *CREDENTIALS,
                              "send-data", "A972030000001234", "01"])  # fmt: skip
    mixed = tool.parse_args(["--wait", "30", "--app-id", "EC0001", "send-data",
                             "A972030000001234", "01", "--password", PASSWORD,
                             "--base-key", BASE_KEY, "--port", "5301"])  # fmt: skip
    for args in (after, before, mixed):
        assert (args.wait, args.port, args.app_id, args.host) == (30, 5301, "EC0001", "127.0.0.1")
    with pytest.raises(SystemExit) as exit_:
        tool.parse_args(["list", "--app-id", "EC0001"])
    assert exit_.value.code == 2


def test_the_answer_timeout_outlasts_the_gateways_sync_wait() -> None:
    args = tool.parse_args(["get-config", "A972030000001234", "17", "--sync", *CREDENTIALS])
    assert args.answer_timeout > parse_config("").app.sync_wait


def test_a_refused_connection_is_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "m2mgw.tools.app", "--port", str(free_port()), *CREDENTIALS,
         "list"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("m2mgw-app: cannot connect to 127.0.0.1:") and "refused" in line

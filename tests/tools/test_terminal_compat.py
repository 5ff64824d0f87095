"""``m2mgw-terminal --compat cmcc-javame`` against a real gateway on loopback (issue #10)."""

from __future__ import annotations

import io

from twisted.internet import defer, reactor

from m2mgw.core.refusals import Reason
from m2mgw.tools import terminal as tool
from tests import cmcc
from tests.e2e.test_gateway_ip import GatewayTestCase


class CmccToolTest(GatewayTestCase):
    timeout = 20

    @defer.inlineCallbacks
    def run_tool(self, *argv: str):  # type: ignore[no-untyped-def]
        out = io.StringIO()
        code = yield tool.run(reactor, ["--tcp-port", str(self.tcp_port), *cmcc.TOOL_IDENTITY,
                                        "--compat", "cmcc-javame", *argv], out)  # fmt: skip
        return code, out.getvalue().splitlines()

    @defer.inlineCallbacks
    def test_a_whole_session_as_the_cmcc_client(self):  # type: ignore[no-untyped-def]
        """Login 0, its trap, heartbeats, data, logout; the header-signed trap refused."""
        yield self.registry.add(cmcc.record())
        code, lines = yield self.run_tool(
            "--heartbeat", "0.2", "--send-data", "0102", "--dest-ec", "EC0001",
            "--trap", "0x3007=23", "--duration", "0.9",
        )  # fmt: skip
        self.assertEqual(code, 0, lines)
        s = cmcc.SERIAL
        self.assertEqual(lines[:3], [f"{s}: logged in, LOGIN_ACK 0 (OK)",
                                     f"{s}: trap sent, CONFIG_TRAP_ACK 0 (OK)",
                                     f"{s}: data sent, TRANSPARENT_DATA_ACK 1 (QUEUED)"])
        self.assertIn(f"{s}: heartbeat answered", lines)
        self.assertEqual(lines[-2:], [f"{s}: logged out, reason 0 (NORMAL)",
                                      "1 terminal(s), 0 failed"])  # fmt: skip
        counts = self.gateway.engine.refusals.counts(s)
        self.assertEqual(counts, {Reason.HEADER_ONLY_DIGEST: 1})
        self.assertNotIn(0x3007, self.registry.config_values(s))

    @defer.inlineCallbacks
    def test_the_same_client_against_a_strict_terminal_record(self):  # type: ignore[no-untyped-def]
        yield self.registry.add(cmcc.record(compat="strict"))
        code, lines = yield self.run_tool("--duration", "0.3")
        self.assertEqual(code, 1)
        self.assertEqual(lines[0], f"{cmcc.SERIAL}: login refused, LOGIN_ACK 2 (AUTH_FAILED)")
        self.assertEqual(self.gateway.engine.refusals.counts(cmcc.SERIAL),
                         {Reason.MISSING_DIGEST: 1})  # fmt: skip


def test_compat_names_the_stacks() -> None:
    args = tool.parser().parse_args(["--compat", "cmcc-javame"])
    assert args.compat == "cmcc-javame"
    assert tool.parser().parse_args([]).compat == "strict"

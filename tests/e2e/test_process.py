"""The gateway as operators run it: ``twistd -n m2mgw`` in its own process (issue #3).

The terminal here is the sans-I/O :class:`TerminalClient` over a plain blocking UDP
socket, so these tests need no reactor in the test process.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from m2mgw.protocol import terminal as role
from m2mgw.protocol.constants import Command
from tests.e2e.support import provisioning
from tests.spec_examples import SERIAL
from tests.twistd import (
    TWISTD,
    Gateway,
    UdpTerminal,
    free_port,
    gateway,
    gateway_argv,
)

#: Also what modules written against this one import from it (the fixture included).
__all__ = ["TWISTD", "Gateway", "UdpTerminal", "free_port", "gateway"]


def test_twistd_plugin_starts_and_stops_cleanly(gateway: Gateway) -> None:
    gateway.start()
    assert gateway.call("GET", "/terminals") == {"items": [], "total": 0, "next": None}
    # twistd handles SIGTERM, shuts down, then exits by the same signal (-15).
    assert gateway.stop() == -signal.SIGTERM
    log = gateway.logtext()
    assert "m2mgw ready" in log
    assert log.index("m2mgw stopped") < log.index("Server Shut Down")
    assert "Traceback" not in log


def test_bad_config_stops_start_up_with_one_line(tmp_path: Path) -> None:
    ini = tmp_path / "bad.ini"
    ini.write_text("[udp]\nport = abc\n")
    result = subprocess.run(
        gateway_argv(ini),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "[udp] port" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_sigkill_with_queued_requests_loses_nothing(gateway: Gateway) -> None:
    gateway.start()
    gateway.call("POST", "/terminals", provisioning())
    queued = [
        gateway.call(
            "POST", f"/terminals/{SERIAL}/requests", {"command": "CONFIG_GET", "tags": [tag]}
        )
        for tag in (0x0002, 0x0007, 0x0009, 0x000A, 0x0011)
    ]
    assert all(r["state"] == "queued" for r in queued)
    gateway.stop(signal.SIGKILL)

    gateway.start()
    waiting = gateway.call("GET", "/queue")["items"]
    assert [r["id"] for r in waiting] == [r["id"] for r in queued]

    terminal = UdpTerminal(gateway.udp)
    logged_in = terminal.log_in()
    assert isinstance(logged_in, role.LoggedIn)
    if logged_in.result == 0:
        terminal.send(terminal.client.trap([]))
    seen = [terminal.pump(lambda e: isinstance(e, role.PlatformRequest)).message for _ in queued]
    assert [m.COMMAND for m in seen] == [Command.CONFIG_GET] * 5
    assert [m.tlvs[0].tag for m in seen] == [0x0002, 0x0007, 0x0009, 0x000A, 0x0011]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = [gateway.call("GET", f"/requests/{r['id']}")["state"] for r in queued]
        if states == ["succeeded"] * 5:
            break
        time.sleep(0.1)
    assert states == ["succeeded"] * 5
    assert gateway.stop() == -signal.SIGTERM

"""The gateway as operators run it: ``twistd -n m2mgw`` in its own process (issue #3).

The terminal here is the sans-I/O :class:`TerminalClient` over a plain blocking UDP
socket, so these tests need no reactor in the test process.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from m2mgw.core import terminal as core
from m2mgw.protocol.constants import Command
from tests.admin_token import bearer
from tests.spec_examples import (
    BASE_KEY,
    DOWNLINK_PASSWORD,
    IMEI,
    IMSI,
    SERIAL,
    SYNC_VALUES,
    UPLINK_PASSWORD,
)

TWISTD = str(Path(sys.executable).with_name("twistd"))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """A ``twistd`` gateway process on free loopback ports."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.admin = free_port()
        self.udp = free_port(socket.SOCK_DGRAM)
        self.ini = tmp / "m2mgw.ini"
        self.ini.write_text(
            f"""
[registry]
database = {tmp / "m2mgw.db"}
[tcp]
listen = tcp:{free_port()}:interface=127.0.0.1
[udp]
port = {self.udp}
interface = 127.0.0.1
[http]
listen = tcp:{free_port()}:interface=127.0.0.1
files_dir = {tmp / "files"}
[admin]
listen = tcp:{self.admin}:interface=127.0.0.1
"""
        )
        self.log = tmp / "twistd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "-l", str(self.log), "m2mgw", "--config", str(self.ini)],
            cwd=self.tmp,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"twistd exited with {self.proc.returncode}: {self.logtext()}")
            try:
                if self.call("GET", "/health")["status"] == "ok":
                    return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise AssertionError("gateway did not come up: " + self.logtext())

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json",
                     **({} if path == "/health" else bearer(self.ini))},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process and wait; twistd re-raises a handled SIGTERM on exit."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=20)

    def logtext(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture
def gateway(tmp_path: Path):  # type: ignore[no-untyped-def]
    gw = Gateway(tmp_path)
    yield gw
    if gw.proc is not None and gw.proc.poll() is None:
        gw.proc.kill()
        gw.proc.wait()


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
        [TWISTD, "-n", "--pidfile=", "m2mgw", "--config", str(ini)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "[udp] port" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


class UdpTerminal:
    """The example terminal over a blocking UDP socket."""

    def __init__(self, port: int) -> None:
        identity = core.TerminalIdentity(
            serial=SERIAL,
            imei=IMEI,
            imsi=IMSI,
            credentials=core.Credentials(UPLINK_PASSWORD, DOWNLINK_PASSWORD, base_key=BASE_KEY),
            cipher="legacy",
            config=dict(SYNC_VALUES),
        )
        self.client = core.TerminalClient(identity, "udp", clock=time.time)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.2)
        self.target = ("127.0.0.1", port)
        self.events: list[Any] = []

    def send(self, frame: bytes) -> None:
        self.sock.sendto(frame, self.target)

    def pump(self, until: Any, timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if until(event):
                    self.events.remove(event)
                    return event
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.events.extend(self.client.receive(data, time.time()))
            for out in self.client.data_to_send():
                self.send(out)
        raise AssertionError(f"timed out; events: {self.events}")


def test_sigkill_with_queued_requests_loses_nothing(gateway: Gateway) -> None:
    gateway.start()
    gateway.call(
        "POST",
        "/terminals",
        {
            "imei": IMEI,
            "imsi": IMSI,
            "serial": SERIAL,
            "uplink_password": UPLINK_PASSWORD,
            "downlink_password": DOWNLINK_PASSWORD,
            "base_key": BASE_KEY,
            "cipher": "legacy",
            "apps": ["EC0001"],
            "default_app": "EC0001",
        },
    )
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
    terminal.send(terminal.client.login())
    logged_in = terminal.pump(lambda e: isinstance(e, core.LoggedIn | core.LoginFailed))
    assert isinstance(logged_in, core.LoggedIn)
    if logged_in.result == 0:
        terminal.send(terminal.client.trap([]))
    seen = [terminal.pump(lambda e: isinstance(e, core.PlatformRequest)).message for _ in queued]
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

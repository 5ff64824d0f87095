"""``m2mgw-modem-emulator`` starts cleanly or fails in one line, never leaving a link."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet import reactor

from m2mgw.tools.modem_emulator import ModemEmulator

EMULATOR = [sys.executable, "-m", "m2mgw.tools.modem_emulator"]


def emulator(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EMULATOR, *argv], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("argv", [["--control-port", "99999"], ["--control-port", "-1"],
                                  ["--imei", "12345"], ["--imsi", "46000x"],
                                  ["--smsc", "+86abc"]])  # fmt: skip
def test_bad_arguments_stop_before_the_pty(tmp_path: Path, argv: list[str]) -> None:
    link = tmp_path / "modem"
    result = emulator("--link", str(link), *argv)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "error: argument" in result.stderr
    assert not link.is_symlink()


def test_control_port_in_use_is_one_line_and_no_link(tmp_path: Path) -> None:
    link = tmp_path / "modem"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = emulator("--link", str(link), "--control-port", str(port))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"m2mgw-modem-emulator: cannot listen on 127.0.0.1:{port}: [Errno 98] Address already "
        "in use"
    ]
    assert not link.is_symlink()


def test_link_in_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    link = tmp_path / "missing" / "modem"
    result = emulator("--link", str(link))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"m2mgw-modem-emulator: cannot create {link}: No such file or directory"
    ]


def test_a_failed_start_closes_the_pty(tmp_path: Path) -> None:
    modem = ModemEmulator(reactor, str(tmp_path / "missing" / "modem"))
    with pytest.raises(FileNotFoundError):
        modem.start()
    assert (modem.device, modem._master, modem._slave) == (None, None, None)


def test_runs_until_sigterm_and_removes_its_link(tmp_path: Path) -> None:
    link = tmp_path / "modem"
    proc = subprocess.Popen([*EMULATOR, "--link", str(link)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        assert Path(started["device"]) == link.resolve()
        assert started["control"].startswith("127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not link.is_symlink()

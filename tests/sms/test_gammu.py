"""The emulator program driven by the real ``gammu`` CLI (an independent AT/PDU client).

One emulator process and one ``gammu batch`` session (gammu sleeps ~1 s per connection)
serve all the tests here: identify, send a two-part text SMS, read injected SMS.
gammu must be installed (``scripts/system-deps.sh``); a missing gammu fails, not skips.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from m2mgw.sms.pdu import SmsSubmit, decode_submit
from tests.spec_examples import VECTORS

TEXT = " ".join(["The quick brown fox jumps over the lazy dog."] * 4) + " [€]"
WAKEUP_HEX = VECTORS["11.8 REMOTE_CTRL"].hex()  # spec 11.8: the wake-up message


@dataclass
class GammuRun:
    output: str
    sent: list[dict[str, object]]
    stored: list[dict[str, object]]


def _control(address: tuple[str, int], command: str) -> list[str]:
    """One control-socket command; returns its data lines, fails on ERROR."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(command.encode() + b"\n")
        reader = sock.makefile("r", encoding="utf-8")
        lines = []
        for line in reader:
            line = line.rstrip("\n")
            if line == "OK":
                return lines
            assert not line.startswith("ERROR"), f"{command!r}: {line}"
            lines.append(line)
    raise AssertionError(f"{command!r}: control connection closed")


@pytest.fixture(scope="module")
def gammu_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GammuRun]:
    gammu = shutil.which("gammu")
    if gammu is None:
        pytest.fail("gammu is not installed: run scripts/system-deps.sh (apt-get install gammu)")
    directory = tmp_path_factory.mktemp("gammu")
    link = directory / "modem"
    log_path = directory / "emulator.log"
    with log_path.open("w") as log:
        emulator = subprocess.Popen(
            [sys.executable, "-m", "m2mgw.tools.modem_emulator",
             "--link", str(link), "--control-port", "0"],
            stdout=subprocess.PIPE, stderr=log, text=True,
        )  # fmt: skip
    try:
        assert emulator.stdout is not None
        info = json.loads(emulator.stdout.readline())
        host, port = info["control"].rsplit(":", 1)
        address = (host, int(port))
        assert Path(info["link"]).resolve() == Path(info["device"])
        _control(address, "deliver-text +8613900000002 Hello from a terminal")
        _control(address, "deliver-text 10086 余额不足")
        _control(address, f"deliver 13900000001 {WAKEUP_HEX}")
        gammurc = directory / "gammurc"
        gammurc.write_text(f"[gammu]\ndevice = {link}\nconnection = at\nmodel = at\n")
        batch = directory / "batch"
        batch.write_text(f'identify\nsendsms TEXT 13900000001 -len 400 -text "{TEXT}"\ngetallsms\n')
        result = subprocess.run(
            [gammu, "-c", str(gammurc), "batch", str(batch)],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        yield GammuRun(
            output=result.stdout,
            sent=[json.loads(line) for line in _control(address, "sent")],
            stored=[json.loads(line) for line in _control(address, "stored")],
        )
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
    assert not link.exists(), "emulator left its link behind"


def test_gammu_identifies_the_emulated_modem(gammu_run: GammuRun) -> None:
    assert "Manufacturer         : m2mgw" in gammu_run.output
    assert "IMEI                 : 860000000000099" in gammu_run.output
    assert "SIM IMSI             : 460000000000099" in gammu_run.output


def test_gammu_sends_a_concatenated_7_bit_sms(gammu_run: GammuRun) -> None:
    assert [sent["mr"] for sent in gammu_run.sent] == [1, 2]
    parts: list[SmsSubmit] = [
        decode_submit(bytes.fromhex(str(sent["pdu"])), smsc_prefix=True) for sent in gammu_run.sent
    ]
    for seq, sms in enumerate(parts, start=1):
        assert sms.destination.number == "13900000001"
        assert sms.udh is not None
        assert (sms.udh.concat_total, sms.udh.concat_seq) == (2, seq)
        assert sms.dcs == 0x00
    # gammu packs the septets after the 6-octet UDH with one fill bit: our decoder agrees.
    assert "".join(str(sms.user_data) for sms in parts) == TEXT


def test_gammu_reads_injected_sms(gammu_run: GammuRun) -> None:
    output = gammu_run.output
    assert "3 SMS parts in 3 SMS sequences" in output
    assert "Hello from a terminal" in output
    assert "余额不足" in output
    assert 'Remote number        : "+8613900000001"' in output
    assert "Coding               : 8-bit" in output
    assert [entry["stat"] for entry in gammu_run.stored] == [1, 1, 1]  # now read

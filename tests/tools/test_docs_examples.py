"""The README's quick start and SMS recipe and docs/applications.rst run as written (#8).

Each test takes the literal blocks out of the document, so it breaks when the document
drifts, and runs them in bash (``set -euo pipefail``) from the checkout against a real
gateway process. Only ports and paths are substituted: the ini file the commands name
becomes a temporary one on free loopback ports, the emulator's link and control port
move to free ones, and ``$M2MGW_VENV`` points ``source scripts/bootstrap.sh`` at this
test's interpreter.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from m2mgw.core.model import normalize_msisdn
from m2mgw.protocol import messages as m
from m2mgw.protocol.tlv import tlv_dict
from tests.twistd import Gateway, free_port, gateway, wait_until  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.rst"
APPLICATIONS = REPO / "docs" / "applications.rst"
SERIAL = "A972030000001234"
_UNDERLINE = re.compile(r"^([=\-~^])\1+$")


def literal_blocks(path: Path, section: str) -> list[str]:
    """The literal blocks (``::`` and ``.. code-block::``) of one section, dedented."""
    lines = path.read_text(encoding="utf-8").splitlines()

    def is_title(i: int) -> bool:
        return bool(lines[i].strip()) and i + 1 < len(lines) and bool(
            _UNDERLINE.match(lines[i + 1])
        ) and len(lines[i + 1]) >= len(lines[i])  # fmt: skip

    start = next(i for i in range(len(lines)) if lines[i] == section and is_title(i)) + 2
    end = next((i for i in range(start, len(lines)) if is_title(i)), len(lines))
    blocks, i = [], start
    while i < end:
        opens = lines[i].rstrip().endswith("::") or lines[i].startswith(".. code-block::")
        i += 1
        if not opens:
            continue
        body = []
        while i < end and (not lines[i].strip() or lines[i].startswith(" ")):
            body.append(lines[i])
            i += 1
        blocks.append(textwrap.dedent("\n".join(body)).strip("\n") + "\n")
    return blocks


def commands(block: str) -> list[str]:
    """The shell commands of a block: continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def environment(tmp_path: Path) -> dict[str, str]:
    """``$M2MGW_VENV``: this interpreter's bin/, already installed (nothing to do)."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / "bin").symlink_to(Path(sys.executable).parent)
    (venv / ".m2mgw-installed").touch()
    return {**os.environ, "M2MGW_VENV": str(venv)}


def shell(
    script: str, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in bash from the checkout, as a user would paste it."""
    try:
        return subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"") + (exc.stderr or b"")
        raise AssertionError(f"timed out: {script}\n{output.decode()}") from None


def background(script: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(["bash", "-c", script], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def stop(proc: subprocess.Popen[Any]) -> int:
    """SIGTERM to the process group (bash and what it started); its exit status."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def wait_healthy(gw: Gateway, proc: subprocess.Popen[Any], log: Path) -> None:
    """The gateway ``proc`` (started by a document's commands) serves ``/health``."""
    wait_until(lambda: gw.call("GET", "/health")["status"] == "ok", proc, log, timeout=20)


def config_get_answer(gw: Gateway, tag: int) -> bytes:
    """The value of ``tag`` in the answer of the terminal's one successful CONFIG_GET."""
    listing = gw.call("GET", f"/requests?serial={SERIAL}")
    items = listing["items"] if isinstance(listing, dict) else listing  # a page, or a list
    [request] = [r for r in items if r["command"] == "CONFIG_GET" and r["state"] == "succeeded"]
    return tlv_dict(m.ConfigGetAck.decode_body(bytes.fromhex(request["answer"])).tlvs)[tag]


def test_quick_start_runs_as_written(gateway: Gateway, tmp_path: Path) -> None:  # noqa: F811
    block, decode = literal_blocks(README, "Quick start")
    assert block.count("etc/m2mgw.ini") == 5 and block.startswith("source scripts/bootstrap.sh")
    gateway.start()  # what scripts/run.sh runs: twistd -n m2mgw --config FILE
    script = block.replace("etc/m2mgw.ini", str(gateway.ini))
    # After the block: a request the terminal refuses (it has no 0x0003) fails in one
    # line with the result named; the background terminal (SIGTERM logs it out) must end
    # cleanly.
    env = environment(tmp_path)
    refused = f"m2mgw --config {gateway.ini} send {SERIAL} CONFIG_GET --tag 0x0003 --wait 10"
    result = shell(f"{script}! {refused} 2> {tmp_path}/refused\nkill -TERM $!\nwait $!\n", env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"{SERIAL}: logged in, LOGIN_ACK 1 (OK_SYNC)" in out
    assert f"{SERIAL}: trap sent, CONFIG_TRAP_ACK 0 (OK)" in out
    assert f"{SERIAL}: CONFIG_GET 1 answered with 0 (OK)" in out
    assert f"{SERIAL}: logged out, reason 0 (NORMAL)\n1 terminal(s), 0 failed" in out
    assert config_get_answer(gateway, 0x0011) == (5).to_bytes(4, "big")  # --heartbeat 5
    [line] = (tmp_path / "refused").read_text().splitlines()
    assert line.startswith("m2mgw: request 2 failed: ") and line.endswith(
        ", CONFIG_GET_ACK 1 (ERROR)"
    ), (tmp_path / "refused").read_text()
    decoded = shell("source scripts/bootstrap.sh\n" + decode, env)  # the same shell as above
    assert decoded.returncode == 0 and json.loads(decoded.stdout)["command"] == "LOGIN"


def test_sms_recipe_runs_as_written(gateway: Gateway, tmp_path: Path) -> None:  # noqa: F811
    ini, start, block = literal_blocks(README, "SMS through a GSM modem")
    *setup, run_line = start.splitlines()
    link, control = tmp_path / "m2mgw-modem", str(free_port())

    def local(text: str) -> str:
        return (text.replace("/tmp/m2mgw-modem", str(link)).replace("17001", control)
                .replace("sms.ini", str(gateway.ini)))  # fmt: skip

    # The ini file: the gateway's on free ports, with the README's [sms] lines (and a
    # faster modem send rate than a real SIM's, to keep the test short).
    gateway.ini.write_text(gateway.ini.read_text() + local(ini) + "send_rate = 20\n")
    env = environment(tmp_path)
    emulator = background(local("\n".join(setup)) + "\nwait\n", env, tmp_path / "emulator.log")
    run = None
    try:
        deadline = time.monotonic() + 10
        while not link.is_symlink() and time.monotonic() < deadline:
            time.sleep(0.05)  # the gateway would find it later too, after a retry
        run = background(local(run_line), env, tmp_path / "run.log")
        wait_healthy(gateway, run, tmp_path / "run.log")
        result = shell(local(block), env)
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        serial = lines[1].partition(":")[0]
        assert lines[1:5] == [  # after the provisioning's JSON line
            f"{serial}: registered, REGISTER_ACK 0 (OK_SMS), serial {serial}",
            f"{serial}: SECURITY_CONFIG 1 answered with 0 (OK)",
            f"{serial}: new credentials received (SECURITY_CONFIG)",
            f"{serial}: logged in, LOGIN_ACK 1 (OK_SYNC)",
        ]
        assert lines.count(f"{serial}: trap sent, CONFIG_TRAP_ACK 0 (OK)") == 2  # sync, alarm
        assert f"{serial}: logged out, reason 0 (NORMAL)" in lines
        assert "1 terminal(s), 0 failed" in lines
        record = gateway.call("GET", "/terminals/860000000000002")
        assert (record["serial"], record["msisdn"], record["state"]) == (
            serial, normalize_msisdn("8613900000002"), "LOGGED_OUT")  # fmt: skip
    finally:
        ended = stop(run) if run is not None else None
        stop(emulator)
    assert ended in (0, -signal.SIGTERM)  # twistd exits by the signal it handled
    # The emulator, signalled with its shell, removes its link as it stops; the shell
    # may be gone a moment before it is done.
    deadline = time.monotonic() + 10
    while link.is_symlink() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not link.is_symlink()


def test_applications_long_connection_runs_as_written(gateway: Gateway, tmp_path: Path) -> None:  # noqa: F811
    provisioning, app_ini = literal_blocks(APPLICATIONS, "Provisioning")
    shell_block, _python = literal_blocks(APPLICATIONS, "Long connection")
    app_port, callback = str(free_port()), f"http://127.0.0.1:{free_port()}/notify"

    def local(text: str) -> str:
        return (text.replace("5300", app_port).replace("etc/m2mgw.ini", str(gateway.ini))
                .replace("http://app.example:8000/notify", callback))  # fmt: skip

    gateway.ini.write_text(gateway.ini.read_text() + local(app_ini))
    gateway.start()
    env = environment(tmp_path)
    env["PATH"] = f"{env['M2MGW_VENV']}/bin:{env['PATH']}"  # the quick start's shell
    # The quick start's terminal, provisioned and online, as the document assumes.
    _, provision, simulate, *_ = commands(literal_blocks(README, "Quick start")[0])
    assert shell(local(provision), env).returncode == 0
    provisioned = shell(local(provisioning), env)
    assert provisioned.returncode == 0, provisioned.stderr
    assert simulate.startswith("m2mgw-terminal") and simulate.endswith(" &")
    terminal = background(local(simulate.removesuffix(" &")), env, tmp_path / "terminal.log")
    try:
        send_data, get_config, set_config, watch = commands(local(shell_block))
        outputs = []
        for command in (send_data, get_config, set_config):
            result = shell(command, env)
            assert result.returncode == 0, command + result.stderr
            outputs.append([json.loads(line) for line in result.stdout.splitlines()])
        got = outputs[1]
        results = [[r["state"] for r in out if r["type"] == "NotifyResult"] for out in outputs]
        assert results[0] == ["ACKED"]
        # The quick start's terminal runs with --heartbeat 5.
        assert got[-1]["items"] == [{"type": "TlvItem", "tag": 17, "value": "00000005"}]
        assert results[2] == ["ACKED", "APPLIED"]  # it ends at the final one
        assert watch.endswith("watch --wait 600")
        watching = subprocess.Popen(
            ["bash", "-c", watch],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        stop(terminal)  # its logout is a notification for the watching application
        assert watching.stdout is not None
        state = json.loads(watching.stdout.readline())
        assert (state["type"], state["event"]) == ("NotifyTerminalState", "LOGGED_OUT")
        assert stop(watching) == 0  # SIGTERM: answered, logged out, exit 0
    finally:
        stop(terminal)

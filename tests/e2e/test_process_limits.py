"""``twistd -n m2mgw`` fits its connection caps to its open-file limit (issue #15 item 2,
D-315, D-316) and creates its log file private (item 12, D-321)."""

from __future__ import annotations

import os
import re
import resource
import signal
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.twistd import gateway_argv, health, processes, wait_until, write_ini

__all__ = ["processes"]  # the fixture, used by name

#: tcp 1000 + http 2 x 256 (a download holds its file too) + admin 64 + the rest 64.
NEEDED = 1000 + 2 * 256 + 64 + 64


def start(tmp: Path, started: list[subprocess.Popen[bytes]], soft: int, hard: int
          ) -> tuple[subprocess.Popen[bytes], Path]:
    """A gateway under the given RLIMIT_NOFILE and umask 022; serving once returned."""
    ini, admin = write_ini(tmp, tcp={"max_connections": "1000"})
    log = tmp / "twistd.log"

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        os.umask(0o022)

    proc = subprocess.Popen(gateway_argv(ini, log), cwd=tmp, preexec_fn=limits)
    started.append(proc)
    wait_until(lambda: health(admin)[0] == 200, proc, log)
    return proc, log


def open_files_limit(pid: int) -> int:
    """The soft limit the process runs with, as the kernel tells it."""
    text = Path(f"/proc/{pid}/limits").read_text()
    match = re.search(r"^Max open files\s+(\d+)", text, re.MULTILINE)
    assert match is not None, text
    return int(match.group(1))


def stopped_log(proc: subprocess.Popen[bytes], log: Path) -> str:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    return log.read_text()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_soft_limit_is_raised_to_what_the_caps_need(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    proc, log = start(tmp_path, processes, soft=256, hard=4096)
    assert open_files_limit(proc.pid) == NEEDED
    text = stopped_log(proc, log)
    assert (f"Open files: limit {NEEDED} (raised from 256) (hard 4096); the connection caps "
            f"need {NEEDED} (tcp 1000 + http 512 + admin 64 + other 64)") in text


def test_caps_beyond_the_hard_limit_are_one_warning_and_the_gateway_serves(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    proc, log = start(tmp_path, processes, soft=256, hard=512)
    assert open_files_limit(proc.pid) == 512
    lines = [line for line in stopped_log(proc, log).splitlines() if "Open files" in line]
    assert len(lines) == 1, lines
    assert "#warn]" in lines[0]
    assert (f"the connection caps need {NEEDED} (tcp 1000 + http 512 + admin 64 + other 64) "
            "but the limit is 512 (hard 512): lower the max_connections keys") in lines[0]


def test_the_log_file_is_created_0640_and_so_is_each_after_rotation(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    proc, log = start(tmp_path, processes, soft=4096, hard=4096)
    assert mode(log) == 0o640  # not 0644, whatever the umask lets through
    rotated = tmp_path / "twistd.log.1"
    proc.send_signal(signal.SIGUSR1)
    wait_until(exists(rotated), proc, log)
    wait_until(exists(log), proc, log)
    assert (mode(rotated), mode(log)) == (0o640, 0o640)
    stopped_log(proc, log)


def exists(path: Path) -> Callable[[], bool]:
    return path.exists

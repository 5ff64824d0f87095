"""``scripts/bootstrap.sh`` sourced by a user's shell and by scripts/test.sh (issue #8).

Each test runs the real script in a copy of the checkout's layout whose ``.venv/bin/python``
is a stand-in that records its arguments, so nothing is installed and no network is used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FAKE_PYTHON = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/../python.log"
exit {status}
"""
# Options, working directory, shell variables (less the ones bash itself changes) and PATH.
SNAPSHOT = r"""
echo "opts=$-"; set -o | tr -s ' \t' ' ' | tr '\n' ';'; echo
echo "cwd=$PWD"
compgen -v | grep -Ev '^(BASH_.*|_|PIPESTATUS|LINENO|RANDOM|SECONDS|SRANDOM|EPOCH.*|OLDPWD|PATH)$' \
    | tr '\n' ' '; echo
type -t _m2mgw_bootstrap || echo "no function"
echo ===
"""


def checkout(tmp_path: Path, status: int = 0, installed: bool = True) -> Path:
    """A checkout layout with the real bootstrap script and a stand-in virtualenv."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    for script in ("bootstrap.sh", "test.sh"):
        shutil.copy2(REPO / "scripts" / script, root / "scripts" / script)
    (root / "setup.cfg").write_text("[metadata]\nname = m2mgw\n")
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON.format(status=status))
    python.chmod(0o755)
    if installed:
        stamp = root / ".venv" / ".m2mgw-installed"
        stamp.touch()
        os.utime(root / "setup.cfg", (0, 0))  # older than the stamp: nothing to install
    return root


def source(root: Path, cwd: Path, options: str) -> subprocess.CompletedProcess[str]:
    """Source the script the way a user does, with ``options`` set, snapshot before/after."""
    script = (
        f"set {options}\n{SNAPSHOT}"
        f'source {root}/scripts/bootstrap.sh\necho "rc=$?"\n{SNAPSHOT}'
        'echo "path=$PATH"\necho "still here"\n'
    )
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=30)  # fmt: skip


@pytest.mark.parametrize("options", ["+euo pipefail", "-euo pipefail", "-e +u"])
def test_sourcing_changes_only_path(tmp_path: Path, options: str) -> None:
    root = checkout(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = source(root, elsewhere, options)
    assert result.returncode == 0, result.stderr
    before, after, rest = result.stdout.split("===\n")
    assert after.startswith("rc=0\n")
    after = after.removeprefix("rc=0\n")
    assert after == before  # the same state twice
    lines = after.splitlines()
    assert f"cwd={elsewhere}" in lines
    assert rest.startswith(f"path={root}/.venv/bin:")
    assert "no function" in lines
    assert not (root / ".venv" / "python.log").exists()  # installed already: no pip


def test_sourcing_twice_keeps_one_path_entry(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    script = f"source {root}/scripts/bootstrap.sh; source {root}/scripts/bootstrap.sh; echo $PATH"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.stdout.split(":").count(f"{root}/.venv/bin") == 1


def test_install_runs_in_the_checkout_and_stamps(tmp_path: Path) -> None:
    root = checkout(tmp_path, installed=False)
    result = source(root, tmp_path, "+e")
    assert "rc=0" in result.stdout, result.stderr
    log = (root / ".venv" / "python.log").read_text().splitlines()
    assert log[0].startswith("-m pip install -q --upgrade pip")
    assert log[1].startswith("-m pip install -q -e .[test]")
    assert (root / ".venv" / ".m2mgw-installed").exists()


def test_failed_install_returns_1_and_leaves_the_shell_alone(tmp_path: Path) -> None:
    root = checkout(tmp_path, status=1, installed=False)
    result = source(root, tmp_path, "+euo pipefail")
    before, after, rest = result.stdout.split("===\n")
    assert after.startswith("rc=1\n")
    after = after.removeprefix("rc=1\n")
    assert after == before
    assert "still here" in rest
    assert "setting up" in result.stderr and "failed" in result.stderr
    assert not (root / ".venv" / ".m2mgw-installed").exists()


def test_test_sh_stops_when_the_set_up_fails(tmp_path: Path) -> None:
    """scripts/test.sh runs under set -e: a failed bootstrap must end it before pytest."""
    root = checkout(tmp_path, status=1, installed=False)
    result = subprocess.run([str(root / "scripts" / "test.sh")], capture_output=True, text=True,
                            timeout=30)  # fmt: skip
    assert result.returncode != 0
    assert "setting up" in result.stderr
    assert len((root / ".venv" / "python.log").read_text().splitlines()) == 1  # stopped at once


def test_running_it_as_a_program_reports_the_status(tmp_path: Path) -> None:
    ok = subprocess.run([str(checkout(tmp_path / "a") / "scripts" / "bootstrap.sh")],
                        capture_output=True, timeout=30)  # fmt: skip
    failing = subprocess.run(
        [str(checkout(tmp_path / "b", status=1, installed=False) / "scripts" / "bootstrap.sh")],
        capture_output=True, timeout=30,
    )  # fmt: skip
    assert (ok.returncode, failing.returncode) == (0, 1)

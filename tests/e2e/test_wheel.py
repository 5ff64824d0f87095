"""The package as operators install it: a wheel in a fresh venv, outside the checkout.

The editable install the suite runs under puts the checkout on ``sys.path``, which
hides a wheel that forgets the twistd plugin, the WSDL or the sample ini. This test
builds the wheel, installs it (with its dependencies) into a new virtual environment,
and runs ``twistd -n m2mgw`` from a temporary directory, far from the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import zeep

from m2mgw.config import parse_config
from tests.twistd import free_port

CHECKOUT = Path(__file__).resolve().parents[2]
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)


def run(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{argv}: rc {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the built wheel and its dependencies."""
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, CHECKOUT, cwd=root)
    [wheel] = dist.glob("m2mgw-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/m2mgw_plugin.py" in names
    assert "twisted/plugins/__init__.py" not in names  # Twisted's own package owns that
    assert "m2mgw/app/wsdl/M2MPlatformService.wsdl" in names
    assert "m2mgw/app/wsdl/m2m-types.xsd" in names
    assert "m2mgw/etc/m2mgw.ini" in names
    assert any(n.startswith("m2mgw/core/registry/schema/") and n.endswith(".sql") for n in names)
    venv = root / "venv"
    run(BASE_PYTHON, "-m", "venv", venv, cwd=root)
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=root)
    return venv


def test_the_wheel_installs_the_package_outside_the_checkout(installed: Path) -> None:
    where = run(installed / "bin" / "python", "-c", "import m2mgw; print(m2mgw.__file__)",
                cwd=installed)
    assert Path(where.strip()).is_relative_to(installed)
    assert run(installed / "bin" / "m2mgw", "--version", cwd=installed).startswith("m2mgw ")
    sample = run(installed / "bin" / "m2mgw", "sample-config", cwd=installed)
    assert parse_config(sample).tcp.listen == "tcp:5236:interface=127.0.0.1"


def test_twistd_serves_the_gateway_and_its_wsdl_from_the_wheel(
    installed: Path, tmp_path: Path
) -> None:
    http, admin = free_port(), free_port()
    ini = tmp_path / "gateway.ini"
    ini.write_text(
        f"""
[tcp]
listen = tcp:{free_port()}:interface=127.0.0.1
[udp]
port = 0
[http]
listen = tcp:{http}:interface=127.0.0.1
[admin]
listen = tcp:{admin}:interface=127.0.0.1
"""
    )
    # The ini path comes from $M2MGW_CONFIG; relative paths (m2mgw.db) land in the cwd.
    env = {**os.environ, "M2MGW_CONFIG": str(ini), "PATH": f"{installed / 'bin'}:/usr/bin:/bin"}
    env.pop("PYTHONPATH", None)
    log = tmp_path / "twistd.log"
    proc = subprocess.Popen(
        [installed / "bin" / "twistd", "-n", "--pidfile=", "-l", log, "m2mgw"],
        cwd=tmp_path,
        env=env,
    )
    try:
        wait_healthy(admin, proc, log)
        wsdl = f"http://127.0.0.1:{http}/m2m/app/v1/M2MPlatformService?wsdl"
        client = zeep.Client(wsdl=wsdl)
        port = client.wsdl.services["M2MPlatformService"].ports["M2MPlatformPort"]
        assert "SendData" in port.binding._operations
        assert (tmp_path / "m2mgw.db").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def wait_healthy(admin: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"twistd exited {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/health", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError("the installed gateway did not come up: " + log.read_text())

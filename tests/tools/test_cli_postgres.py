"""The CLI on a PostgreSQL registry (``[registry] url``): no file to open, so every
command goes through a gateway's admin API, and says so in one line when it cannot
(D-385). The way through a live gateway is in tests/e2e/test_postgres_gateway.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from m2mgw.tools.cli import main
from tests.pgcluster import free_port

URL = "postgresql://m2mgw:secret@db.example:5432/m2mgw"
SHOWN = "registry postgresql://m2mgw:***@db.example:5432/m2mgw is PostgreSQL: the CLI works"


@pytest.mark.parametrize(("listen", "says"), [
    ("none", "has [admin] listen = none"),
    ("tcp:{port}:interface=127.0.0.1", "and none answers at http://127.0.0.1:"),
])
def test_without_a_reachable_gateway_a_command_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], listen: str, says: str,
) -> None:
    ini = tmp_path / "m2mgw.ini"
    ini.write_text(f"[registry]\nurl = {URL}\ndatabase = {tmp_path / 'm2mgw.db'}\n"
                   f"[admin]\nlisten = {listen.format(port=free_port())}\n"
                   f"tokens_file = {tmp_path / 'tokens'}\n")
    for command in (["terminals"], ["provision", "--imei", "860000000000001"]):
        assert main(["--config", str(ini), *command]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert SHOWN in err and says in err, err
        assert "secret" not in err
    assert not (tmp_path / "m2mgw.db").exists()  # no SQLite file made instead

"""``m2mgw provision --compat`` and ``m2mgw show`` (issue #10), on the SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

from tests import cmcc

from .test_cli import cli


def test_provision_with_a_profile_and_show_it(tmp_path: Path) -> None:
    ini = tmp_path / "cli.ini"
    ini.write_text(f"[registry]\ndatabase = {tmp_path}/m2mgw.db\n[admin]\nlisten = none\n"
                   "[protocol]\ndefault_compat = simcom\n")  # fmt: skip
    done = cli(ini, "provision", "--imei", cmcc.IMEI, "--imsi", cmcc.IMSI, "--serial",
               cmcc.SERIAL, "--compat", "cmcc-javame", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert (record["compat"], record["compat_default"]) == ("cmcc-javame", False)
    shown = json.loads(cli(ini, "show", cmcc.SERIAL, "--json").stdout)
    assert (shown["compat"], shown["compat_default"]) == ("cmcc-javame", False)
    # Without --compat the terminal follows [protocol] default_compat.
    other = cli(ini, "provision", "--imei", "354494040518571", "--json")
    assert json.loads(other.stdout)["compat"] == "simcom"
    assert json.loads(other.stdout)["compat_default"] is True
    wrong = cli(ini, "provision", "--imei", "354494040518572", "--compat", "lenient")
    assert wrong.returncode == 2
    assert "invalid choice: 'lenient'" in wrong.stderr

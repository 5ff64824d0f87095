"""One way to change the registry (issue #8): the CLI beside real ``twistd`` gateways.

A gateway holds its registry's lock; the CLI then goes through that gateway's admin
API (TCP or ``unix:``) after checking that the API serves the registry its ini names,
and never writes the file under it. With the gateway stopped it writes the file.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

from m2mgw.protocol import terminal as role
from tests.spec_examples import BASE_KEY, DOWNLINK_PASSWORD, IMEI, IMSI, SERIAL, UPLINK_PASSWORD
from tests.twistd import UdpTerminal, cli, free_port, gateway_argv, local

OTHER_IMEI = "860000000000002"
PRESET = (
    "--imei", IMEI, "--imsi", IMSI, "--serial", SERIAL, "--cipher", "legacy",
    "--uplink-password", UPLINK_PASSWORD, "--downlink-password", DOWNLINK_PASSWORD,
    "--base-key", BASE_KEY, "--app", "EC0001", "--default-app", "EC0001",
)


def write_ini(path: Path, database: Path, admin: str, udp: int = 0) -> Path:
    path.write_text(
        f"[registry]\ndatabase = {database}\n[tcp]\nlisten = none\n"
        f"[udp]\nport = {udp}\ninterface = 127.0.0.1\n[http]\nlisten = none\n"
        f"[admin]\nlisten = {admin}\n"
    )
    return path


class Gateway:
    """``twistd -n m2mgw`` on its own directory, database and free UDP port."""

    def __init__(self, root: Path, admin: str, database: Path | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.database = database or root / "m2mgw.db"
        self.udp = free_port(socket.SOCK_DGRAM)
        self.ini = write_ini(root / "m2mgw.ini", self.database, admin, self.udp)
        self.log = root / "twistd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return gateway_argv(self.ini)

    def start(self) -> None:
        """Start and wait for "m2mgw ready" (the admin API may be disabled)."""
        self.log.write_text("")
        self.proc = subprocess.Popen(gateway_argv(self.ini, self.log), cwd=self.root)
        deadline = time.monotonic() + 20
        while "m2mgw ready" not in self.log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"gateway did not come up: {self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


def imeis(database: Path) -> list[str]:
    """The terminals in the file, read by an independent connection."""
    conn = sqlite3.connect(database)
    try:
        return [row[0] for row in conn.execute("SELECT imei FROM terminals ORDER BY id")]
    finally:
        conn.close()


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and done.stdout == "", done.stderr
    return lines[0]


def test_no_write_under_a_gateway_without_admin_api(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path / "gw", "none")
    try:
        stopped = cli(gateway.ini, "provision", *PRESET, "--json")
        assert stopped.returncode == 0, stopped.stderr
        assert imeis(gateway.database) == [IMEI]

        gateway.start()
        assert gateway.proc is not None
        refused = one_line(cli(gateway.ini, "provision", "--imei", OTHER_IMEI))
        assert refused == (
            f"m2mgw: a gateway (pid {gateway.proc.pid}) runs on {gateway.database} but its "
            "admin API is not reachable ([admin] listen = none); stop it or enable "
            f"[admin] listen in {gateway.ini}"
        )
        assert imeis(gateway.database) == [IMEI]
        assert f"pid {gateway.proc.pid}" in one_line(
            cli(gateway.ini, "send", SERIAL, "CONFIG_GET", "--tag", "0x0011")
        )
        # Listings read the file read-only beside the gateway (WAL readers).
        listed = cli(gateway.ini, "terminals", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [t["serial"] for t in json.loads(listed.stdout)["items"]] == [SERIAL]

        gateway.stop()
        again = cli(gateway.ini, "provision", "--imei", OTHER_IMEI)
        assert again.returncode == 0, again.stderr
        assert imeis(gateway.database) == [IMEI, OTHER_IMEI]
    finally:
        gateway.stop()


def test_unix_admin_socket_provisions_into_the_running_gateway(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path / "gw", f"unix:{tmp_path / 'admin.sock'}")
    try:
        gateway.start()
        done = cli(gateway.ini, "provision", *PRESET, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["serial"] == SERIAL
        listed = cli(gateway.ini, "terminals", "--json")
        assert [t["serial"] for t in json.loads(listed.stdout)["items"]] == [SERIAL]

        terminal = UdpTerminal(gateway.udp)
        logged_in = terminal.log_in()
        assert isinstance(logged_in, role.LoggedIn), logged_in  # the cache saw it
    finally:
        gateway.stop()


def test_two_gateways_the_cli_refuses_the_admin_api_of_the_other(tmp_path: Path) -> None:
    ports = [free_port(), free_port()]
    first = Gateway(tmp_path / "a", local(ports[0]))
    second = Gateway(tmp_path / "b", local(ports[1]))
    # B's database, A's admin port: the mistake of an [admin] copied between ini files.
    crossed = write_ini(tmp_path / "crossed.ini", second.database,
                        local(ports[0]))
    try:
        first.start()
        second.start()
        done = cli(second.ini, "provision", "--imei", IMEI)
        assert done.returncode == 0, done.stderr
        refused = one_line(cli(crossed, "provision", "--imei", OTHER_IMEI))
        # A's API refuses B's token (D-190) before it could tell which registry it serves.
        assert refused == (
            f"m2mgw: the admin API at http://127.0.0.1:{ports[0]} refused the token of "
            f"{second.root / 'admin-tokens'}: it is not the gateway on {second.database}, or "
            f"it reads another [admin] tokens_file than {crossed} names"
        ), refused
        assert one_line(cli(crossed, "terminals")) == refused
        # With A's token too, A's API is checked for the registry it serves (D-171).
        with crossed.open("a") as ini:
            ini.write(f"tokens_file = {first.root / 'admin-tokens'}\n")
        refused = one_line(cli(crossed, "provision", "--imei", OTHER_IMEI))
        assert refused.startswith(
            f"m2mgw: the admin API at http://127.0.0.1:{ports[0]} serves registry "
            f"{first.database} (instance "
        ), refused
        assert f"not {second.database} (instance " in refused
        assert refused.endswith(f"that {crossed} names")
        listed = [json.loads(cli(gw.ini, "terminals", "--json").stdout) for gw in (first, second)]
        assert [[t["imei"] for t in page["items"]] for page in listed] == [[], [IMEI]]
        assert (imeis(first.database), imeis(second.database)) == ([], [IMEI])

        # A third gateway on A's database is refused at start-up, in one line.
        intruder = Gateway(tmp_path / "c", "none", database=first.database)
        assert first.proc is not None
        result = subprocess.run(intruder.command(), capture_output=True, text=True,
                                timeout=30, cwd=intruder.root)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert (
            f"registry {first.database} is in use by another m2mgw process "
            f"(pid {first.proc.pid})"
        ) in output
        assert "Traceback" not in output
        assert json.loads(cli(first.ini, "terminals", "--json").stdout)["items"] == []
    finally:
        first.stop()
        second.stop()

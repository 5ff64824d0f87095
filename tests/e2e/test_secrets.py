"""Secrets at rest with a real ``twistd`` gateway (issue #11 part 3, D-280..D-287).

Nothing secret reaches the database or its WAL in plaintext; a gateway killed and
started again still verifies its terminal's digests and hands out session keys under
its Base Key (so every decrypted value is right), and so does the CLI on the stopped
gateway's file; without the right key file the gateway refuses to start, in one line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
from pathlib import Path

from m2mgw.core.model import CredentialSet
from m2mgw.protocol import terminal as role
from tests.e2e.support import client_for, provisioned, provisioning
from tests.twistd import (
    NotifySocket,
    admin_call,
    cli,
    failed_start,
    free_port,
    gateway_argv,
    health,
    local,
    notify_socket,
    processes,
    tcp_login,
    wait_until,
    write_ini,
)

__all__ = ["notify_socket", "processes"]  # the fixtures, used by name
UPLINK, DOWNLINK, BASE_KEY = "Up1ink0A", "Dnl1nk0B", "BaseKey0123456789ABCDEF0"
APP = {"app_id": "EC0001", "password": "AppPassw0rd", "base_key": "AppBaseKey0123456789ABCD",
       "next_base_key": "NextBaseKey0123456789ABC", "next_base_key_from": 2_000_000_000}
TERMINAL = provisioned(current=CredentialSet(
    uplink_password=UPLINK, downlink_password=DOWNLINK, base_key=BASE_KEY))


def login(port: int) -> role.TerminalClient:
    """A LOGIN asking for a session key over TCP: it succeeds only if the gateway's
    uplink and downlink passwords are right, and the key arrives wrapped in its Base Key."""
    client = client_for(TERMINAL, "tcp")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as link:
        events = tcp_login(link, client, client.login(request_session_key=True))
    assert [type(e) for e in events] == [role.LoggedIn], events
    assert client.session_key is not None and len(client.session_key) == 16
    return client


def stored_state(database: Path, serial: str | None) -> str | None:
    """The terminal's state as committed to the file, read as another process would."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT state FROM terminals WHERE serial = ?", (serial,)).fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


def start(ini: Path, log: Path, admin: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(gateway_argv(ini, log), cwd=ini.parent)
    wait_until(lambda: health(admin)[0] == 200, proc, log)
    return proc


def on_disk(database: Path) -> bytes:
    wal = database.with_name(database.name + "-wal")
    return database.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def test_secrets_stay_sealed_and_a_restarted_gateway_still_verifies(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    tcp = free_port()
    ini, admin = write_ini(tmp_path, tcp={"listen": local(tcp)})
    database, key = tmp_path / "m2mgw.db", tmp_path / "m2mgw.key"
    log = tmp_path / "twistd.log"
    proc = start(ini, log, admin)
    processes.append(proc)
    assert admin_call(admin, "POST", "/terminals", provisioning(TERMINAL), ini)[0] == 201
    assert admin_call(admin, "POST", "/apps", APP, ini)[0] == 201
    session_key = login(tcp).session_key
    assert session_key is not None
    secrets = [UPLINK, DOWNLINK, BASE_KEY, session_key, APP["password"], APP["base_key"],
               APP["next_base_key"]]
    # The session key is in the registry (sessions survive a restart, 9.1) ...
    status, shown = admin_call(admin, "GET", f"/terminals/{TERMINAL.serial}", ini=ini)
    assert (status, shown["state"]) == (200, "LOGGED_IN"), shown
    # ... but none of the secrets is on disk in plaintext, database or WAL. The session
    # is written behind the LOGIN_ACK, with the next flush (D-02, D-392): wait until it
    # is in the file before looking, and before the SIGKILL below, which would
    # otherwise lose it by design.
    wait_until(lambda: database.with_name("m2mgw.db-wal").exists(), proc, log)
    wait_until(lambda: stored_state(database, TERMINAL.serial) == "LOGGED_IN", proc, log)
    wait_until(
        lambda: admin_call(admin, "GET", "/stats", ini=ini)[1]["registry"]["pending_writes"] == 0,
        proc, log,
    )
    raw = on_disk(database)
    assert TERMINAL.imei.encode() in raw  # the test reads the right file
    assert [s for s in secrets if s.encode() in raw] == []
    for path in (database, key, database.with_name("m2mgw.db-wal"),
                 database.with_name("m2mgw.db-shm")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    proc.send_signal(signal.SIGKILL)  # no clean close: the WAL is what holds the data
    proc.wait(timeout=10)
    assert [s for s in secrets if s.encode() in on_disk(database)] == []
    again = start(ini, log, admin)
    processes.append(again)
    # The session was read back from the file (its row holds the sealed session key)...
    status, shown = admin_call(admin, "GET", f"/terminals/{TERMINAL.serial}", ini=ini)
    assert (status, shown["state"]) == (200, "LOGGED_IN"), shown
    # ... and a new LOGIN verifies under the decrypted passwords and Base Key.
    assert login(tcp).session_key not in (None, session_key)
    again.send_signal(signal.SIGTERM)
    assert again.wait(timeout=20) == -signal.SIGTERM
    assert "Traceback" not in log.read_text()

    # The CLI on the stopped gateway's file opens the same key file (opening decrypts
    # every secret: a wrong value would fail it), and cannot without it.
    shown = cli(ini, "show", TERMINAL.serial or "", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["credentials"]["current"]["uplink_expiry"] == 0xFFFFFFFF
    key.unlink()
    refused = cli(ini, "show", TERMINAL.serial or "", "--json")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        f"m2mgw: registry {database} is encrypted, but the master key file {key} is missing "
        + refused.stderr.split("is missing ", 1)[1].strip()
    ]


def sealed_registry(tmp_path: Path) -> tuple[Path, Path]:
    """A sealed database, made by the CLI on a stopped gateway's config; (ini, key)."""
    ini, _ = write_ini(tmp_path)
    done = cli(ini, "provision", "--imei", TERMINAL.imei, "--json")
    assert done.returncode == 0, done.stderr
    key = tmp_path / "m2mgw.key"
    assert key.exists()
    return ini, key


def test_a_missing_key_file_stops_start_up_in_one_line(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    ini, key = sealed_registry(tmp_path)
    key.unlink()
    line = failed_start(ini, notify_socket, (
        f"m2mgw: cannot open the registry: registry {tmp_path / 'm2mgw.db'} is encrypted, but "
        f"the master key file {key} is missing (the registry's key has check value "))
    assert line.endswith(" UTC)"), line
    assert not key.exists(), "no new key over an encrypted database"


def test_a_different_key_file_stops_start_up_in_one_line(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    ini, key = sealed_registry(tmp_path)
    other = os.urandom(32)
    key.write_bytes(other)
    failed_start(ini, notify_socket, (
        f"m2mgw: cannot open the registry: registry {tmp_path / 'm2mgw.db'} is encrypted, but "
        f"the master key file {key} does not match (its check value is "))
    assert key.read_bytes() == other

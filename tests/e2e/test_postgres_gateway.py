"""A ``twistd`` gateway on PostgreSQL (``[registry] url``, issue #13): it starts on
the session's throw-away cluster, a terminal provisions, logs in and sends data, and
after a restart the data and the terminal's state are there; the CLI works through
the admin API."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from m2mgw.core.postgres.connection import redact
from m2mgw.core.vault import PREFIX
from m2mgw.protocol import terminal as role
from m2mgw.protocol.constants import Command
from tests.e2e.support import provisioning
from tests.pgcluster import PgCluster
from tests.spec_examples import SERIAL
from tests.twistd import Gateway, UdpTerminal, cli


@pytest.fixture
def pg_gateway(tmp_path: Path, postgres_cluster: PgCluster) -> Iterator[Gateway]:
    url = postgres_cluster.create_schema(f"gateway_{tmp_path.name[-40:].replace('-', '_')}")
    gw = Gateway(tmp_path, registry={"url": url, "node": "smoke-1",
                                     "master_key_file": str(tmp_path / "cluster.key")})
    gw.url = url  # type: ignore[attr-defined]
    yield gw
    gw.kill()


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def test_a_gateway_on_postgresql_keeps_terminals_and_data_across_a_restart(
    pg_gateway: Gateway,
) -> None:
    gateway, url = pg_gateway, pg_gateway.url  # type: ignore[attr-defined]
    gateway.start()
    served = gateway.call("GET", "/registry")
    assert (served["backend"], served["path"]) == ("postgresql", redact(url))
    gateway.call("POST", "/terminals", provisioning())

    terminal = UdpTerminal(gateway.udp)
    logged_in = terminal.log_in()
    assert isinstance(logged_in, role.LoggedIn) and logged_in.result in (0, 1)
    terminal.send(terminal.client.transparent_data(b"meter 42"))
    answer = terminal.pump(lambda e: isinstance(e, role.Answer)
                           and e.command == Command.TRANSPARENT_DATA | 0x8000)
    assert answer.message.result == 1  # kept in the log: no application is provisioned (D-03)
    before = gateway.call("GET", f"/terminals/{SERIAL}")
    assert before["state"] == "LOGGED_IN"
    # The CLI has no file to open: it goes through the gateway's admin API.
    listed = cli(gateway.ini, "terminals", "--json")
    assert listed.returncode == 0, listed.stderr
    assert SERIAL in listed.stdout
    assert gateway.stop() == -signal.SIGTERM
    assert "Traceback" not in gateway.logtext()

    # What the gateway left in the database, as another process sees it.
    [(current,)] = rows(url, f"SELECT \"current\" FROM terminals WHERE serial = '{SERIAL}'")
    assert isinstance(current, bytes) and current.startswith(PREFIX)
    assert rows(url, "SELECT detail FROM messages WHERE event = 'uplink-data'") == [
        (f"to=EC0001 data={b'meter 42'.hex()}",)]

    gateway.start()
    after = gateway.call("GET", f"/terminals/{SERIAL}")
    # The stored record whole (state, credentials, configuration, counters); of the
    # live session, what the registry keeps (no datagram came since the restart).
    session, restored = before.pop("session"), after.pop("session")
    assert after == before
    assert (restored["timestamp"], restored["synced"]) == (session["timestamp"], True)
    assert gateway.call("GET", "/registry")["instance_id"] == served["instance_id"]
    kept = gateway.call("GET", f"/terminals/{SERIAL}/messages?event=uplink-data")["items"]
    assert len(kept) == 1, kept
    # The session survived the restart: the terminal goes on where it stopped.
    terminal.send(terminal.client.transparent_data(b"meter 43"))
    answer = terminal.pump(lambda e: isinstance(e, role.Answer)
                           and e.command == Command.TRANSPARENT_DATA | 0x8000)
    assert answer.message.result == 1
    assert len(gateway.call("GET", f"/terminals/{SERIAL}/messages?event=uplink-data")
               ["items"]) == 2
    assert gateway.stop() == -signal.SIGTERM

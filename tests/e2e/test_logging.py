"""``twistd -n m2mgw`` logs as its ini says: level, JSON lines, rate-limited refusals,
and admin API access at debug only (issue #8)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from m2mgw.protocol import terminal as role
from m2mgw.protocol.constants import LoginResult
from tests.e2e.support import provisioned, provisioning
from tests.spec_examples import SERIAL
from tests.twistd import Gateway, UdpTerminal

ADMIN_PATHS = ("/health", "/terminals")


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[Any]:
    """Start a gateway whose ini ends with the given ``[log]`` lines; ``sections`` as
    in :class:`Gateway`."""
    started: list[Gateway] = []

    def start(log_section: str, **sections: dict[str, str]) -> Gateway:
        gw = Gateway(tmp_path, **sections)
        gw.ini.write_text(gw.ini.read_text() + "[log]\n" + log_section)
        gw.start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.kill()


def provision(gateway: Gateway) -> None:
    """The example terminal, bound to no application."""
    gateway.call("POST", "/terminals", provisioning(provisioned(apps=set(), default_app=None)))


def stopped_json_events(gateway: Gateway) -> list[dict[str, Any]]:
    """Stop the gateway and parse its log: every line must be one JSON object."""
    gateway.stop()
    return [json.loads(line) for line in gateway.logtext().splitlines()]


def test_a_login_writes_one_json_event_with_the_terminal_keys(gateways: Any) -> None:
    gateway = gateways("format = json\n")
    provision(gateway)
    assert isinstance(UdpTerminal(gateway.udp).log_in(), role.LoggedIn)
    gateway.call("GET", "/health")
    events = stopped_json_events(gateway)
    [login] = [e for e in events if e.get("event") == "login"]
    assert login["level"] == "info"
    assert login["serial"] == SERIAL
    assert login["command"] == "LOGIN"
    assert isinstance(login["sequence_id"], int)
    assert login["bearer"] == "udp"
    assert login["peer"].startswith("127.0.0.1:")
    assert login["text"] == f"Terminal {SERIAL} logged in over udp from {login['peer']}"
    # The admin calls above (provisioning, /health) wrote nothing at info.
    assert not [e for e in events if any(p in e["text"] for p in ADMIN_PATHS)]


def test_at_level_error_a_login_writes_no_info_line(gateways: Any) -> None:
    gateway = gateways("level = error\n")
    provision(gateway)
    assert isinstance(UdpTerminal(gateway.udp).log_in(), role.LoggedIn)
    gateway.stop()
    log = gateway.logtext()
    assert SERIAL not in log
    assert "#info]" not in log


def test_unknown_serial_logins_are_refused_in_a_bounded_number_of_lines(
    gateways: Any,
) -> None:
    # 100 LOGINs from one address in a second or two: past the rate limit of datagrams
    # from outside the sessions (D-356), which would drop most before any refusal.
    gateway = gateways("level = debug\nformat = json\nrefusal_burst = 3\nrefusal_interval = 1s\n",
                       udp={"unauthenticated_rate": "1000"})
    terminal = UdpTerminal(gateway.udp)
    for _ in range(100):  # nothing provisioned: SERIAL is unknown; a new seq each time
        refused = terminal.log_in()
        assert isinstance(refused, role.LoginFailed)
        assert refused.result == LoginResult.UNKNOWN_SERIAL
    deadline = time.monotonic() + 5
    while "refusals-suppressed" not in gateway.logtext() and time.monotonic() < deadline:
        time.sleep(0.1)
    events = stopped_json_events(gateway)
    refusals = [e for e in events if e.get("event") == "refusal"]
    assert refusals, "the first refused LOGIN is logged"
    assert {(e["reason"], e["serial"], e["command"]) for e in refusals} == {
        ("unknown-serial", SERIAL, "LOGIN")
    }
    # A burst of 3, plus what the bucket refilled (3 per second) while the LOGINs ran.
    assert len(refusals) <= 3 + 3 * 5
    summaries = [e for e in events if e.get("event") == "refusals-suppressed"]
    assert summaries, "the held-back refusals are summed up"
    assert len(refusals) + sum(s["suppressed"] for s in summaries) == 100
    # Admin access (the /health polls of start-up) is logged, at debug only.
    access = [e for e in events if e["namespace"] == "m2mgw.admin.access"]
    assert access and all(e["level"] == "debug" for e in access)
    assert "GET /health" in access[0]["text"]

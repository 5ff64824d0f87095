"""Metrics of a running ``twistd`` gateway, scraped over HTTP (issue #9, D-210..D-219).

A terminal (the sans-I/O client over a blocking UDP socket) runs a scripted exchange;
the scrapes before and after must differ by exactly what it did, and Debian's
``promtool check metrics`` must find no problem in them.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import m2mgw
from m2mgw.protocol import terminal as role
from m2mgw.protocol.constants import Command
from tests.admin_token import bearer
from tests.e2e.support import provisioning
from tests.spec_examples import BASE_KEY, DOWNLINK_PASSWORD, SERIAL
from tests.twistd import Gateway, UdpTerminal, free_port, local

HEARTBEATS = 3
ACK = 0x8000
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class MetricsGateway(Gateway):
    """The ``twistd`` gateway, with a ``[metrics] listen`` too."""

    def __init__(self, tmp: Path) -> None:
        self.metrics = free_port()
        super().__init__(tmp, metrics={"listen": local(self.metrics)})


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[MetricsGateway]:
    gw = MetricsGateway(tmp_path)
    yield gw
    gw.kill()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET; an HTTP error status is returned too."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def scrape(gateway: Gateway) -> bytes:
    """``GET /metrics`` on the admin listener, with the admin token."""
    status, kind, body = get(f"http://127.0.0.1:{gateway.admin}/metrics", bearer(gateway.ini))
    assert status == 200, body
    assert kind.startswith("text/plain; version=0.0.4")
    return body


def samples(text: bytes) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode("utf-8"))
        for sample in family.samples
    }


def value(scraped: Samples, name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def by_label(scraped: Samples, name: str, label: str) -> dict[str, float]:
    """The nonzero samples of ``name`` by the value of ``label``."""
    return {
        dict(labels)[label]: v for (n, labels), v in scraped.items() if n == name and v
    }


def delta(before: Samples, after: Samples, name: str, label: str) -> dict[str, float]:
    """How much each sample of ``name`` grew, by ``label``; unchanged ones left out."""
    keys = by_label(before, name, label).keys() | by_label(after, name, label).keys()
    grown = {
        key: value(after, name, **{label: key}) - value(before, name, **{label: key})
        for key in keys
    }
    return {key: grew for key, grew in grown.items() if grew}


def promtool(text: bytes) -> None:
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    problems = (result.stdout + result.stderr).decode("utf-8", "replace").strip()
    assert result.returncode == 0 and not problems, problems


def provision(gateway: Gateway) -> None:
    gateway.call("POST", "/terminals", provisioning())


def is_answer(command: int) -> Any:
    return lambda e: isinstance(e, role.Answer) and e.command == command | ACK


def wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_scripted_exchange_moves_the_counters_by_exactly_its_messages(
    gateway: MetricsGateway,
) -> None:
    gateway.start()
    provision(gateway)
    before = samples(scrape(gateway))
    request = gateway.call(
        "POST", f"/terminals/{SERIAL}/requests", {"command": "CONFIG_GET", "tags": [0x0002]}
    )
    queued = samples(scrape(gateway))
    assert value(queued, "m2mgw_queue_requests", state="queued") == 1
    assert value(queued, "m2mgw_queue_oldest_age_seconds") >= 0

    terminal = UdpTerminal(gateway.udp)
    logged_in = terminal.log_in()
    # Result 1, nothing synced yet: the client sends its sync CONFIG_TRAP by itself.
    assert isinstance(logged_in, role.LoggedIn) and logged_in.result == 1
    terminal.pump(is_answer(Command.CONFIG_TRAP))
    terminal.pump(lambda e: isinstance(e, role.PlatformRequest))  # the queued CONFIG_GET
    wait_for(
        lambda: gateway.call("GET", f"/requests/{request['id']}")["state"] == "succeeded",
        "the CONFIG_GET to succeed",
    )
    online = samples(scrape(gateway))
    assert by_label(online, "m2mgw_terminals_online", "bearer") == {"udp": 1}
    for _ in range(HEARTBEATS):
        terminal.send(terminal.client.heartbeat())
        terminal.pump(is_answer(Command.HEART_BEAT))
    terminal.send(terminal.client.transparent_data(b"metrics"))
    terminal.pump(is_answer(Command.TRANSPARENT_DATA))
    terminal.send(terminal.client.logout())
    terminal.pump(lambda e: isinstance(e, role.LoggedOut))

    intruder = UdpTerminal(gateway.udp)
    identity = intruder.client.identity
    identity.credentials = role.Credentials("Wrong123", DOWNLINK_PASSWORD, base_key=BASE_KEY)
    intruder.client = role.TerminalClient(identity, "udp", clock=time.time)
    failed = intruder.log_in()
    assert isinstance(failed, role.LoginFailed) and failed.result == 2
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as garbage:
        garbage.sendto(b"no frame", ("127.0.0.1", gateway.udp))
    wait_for(
        lambda: value(samples(scrape(gateway)), "m2mgw_refusals_total", reason="framing") == 1,
        "the framing refusal",
    )
    text = scrape(gateway)
    promtool(text)
    after = samples(text)

    assert delta(before, after, "m2mgw_messages_in_total", "command") == {
        "LOGIN": 2, "CONFIG_TRAP": 1, "CONFIG_GET_ACK": 1, "HEART_BEAT": HEARTBEATS,
        "TRANSPARENT_DATA": 1, "LOGOUT": 1,
    }
    assert delta(before, after, "m2mgw_messages_out_total", "command") == {
        "LOGIN_ACK": 2, "CONFIG_TRAP_ACK": 1, "CONFIG_GET": 1, "HEART_BEAT_ACK": HEARTBEATS,
        "TRANSPARENT_DATA_ACK": 1, "LOGOUT_ACK": 1,
    }
    assert delta(before, after, "m2mgw_logins_total", "result") == {
        "ok_sync": 1, "auth_failed": 1,
    }
    assert delta(before, after, "m2mgw_answer_latency_seconds_count", "command") == {
        "LOGIN": 2, "CONFIG_TRAP": 1, "HEART_BEAT": HEARTBEATS, "TRANSPARENT_DATA": 1,
        "LOGOUT": 1,
    }
    assert delta(before, after, "m2mgw_refusals_total", "reason") == {
        "auth-failed": 1, "framing": 1,
    }
    assert value(after, "m2mgw_requests_finished_total", command="CONFIG_GET",
                 state="succeeded") == 1
    assert by_label(after, "m2mgw_queue_requests", "state") == {}
    assert by_label(after, "m2mgw_terminals", "state") == {"logged_out": 1}
    assert by_label(after, "m2mgw_terminals_online", "bearer") == {}
    assert value(after, "m2mgw_registry_commit_latency_seconds_count") > 0
    assert value(after, "m2mgw_build_info", version=m2mgw.__version__) == 1


def test_metrics_listener_serves_only_metrics_and_without_a_token(gateway: MetricsGateway) -> None:
    gateway.start()
    provision(gateway)
    listener = f"http://127.0.0.1:{gateway.metrics}"
    status, kind, text = get(f"{listener}/metrics")
    assert status == 200 and kind.startswith("text/plain; version=0.0.4")
    promtool(text)
    scraped = samples(text)
    assert by_label(scraped, "m2mgw_terminals", "state") == {"registered": 1}
    for path in ("/", "/terminals", "/health", "/metrics/terminals"):
        assert get(listener + path)[0] == 404, path
    # The admin listener's /metrics is behind the token like every data route.
    status, _, body = get(f"http://127.0.0.1:{gateway.admin}/metrics")
    assert status == 401 and b"m2mgw_" not in body
    status, kind, _ = get(
        f"{listener}/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200 and kind.startswith("application/openmetrics-text")

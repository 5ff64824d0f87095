"""Applications in the registry, their provisioning (CLI, admin API) and their settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from m2mgw.app import provision
from m2mgw.app.policy import message_outcome, refused_read, refused_write
from m2mgw.config import ConfigError, parse_config
from m2mgw.core.model import AppMessage, AppNotification, NotificationState, Request
from m2mgw.core.registry import RegistryError
from m2mgw.core.requests import RequestError
from tests.admin_token import bearer
from tests.core.registry_backends import (
    MemoryBackend,
    PostgresBackend,
    RegistryContract,
    SqliteBackend,
)
from tests.e2e.support import provisioned, start_gateway
from tests.twistd import cli

KEY = "AppBaseKey0123456789ABCD"


class AppRegistryTests(RegistryContract):
    async def test_applications_outbox_and_messages_survive_a_restart(self) -> None:
        registry = await self.open()
        terminal = provisioned(0, apps=set(), default_app=None)
        await registry.add(terminal)
        view = await provision.provision(registry, {
            "app_id": "EC0001", "password": "s3cretPW", "base_key": KEY,
            "callback_url": "http://127.0.0.1:9/notify", "terminals": [terminal.serial],
            "permissions": ["connectivity"]})
        self.assertEqual((view["password"], view["base_key"]), ("s3cretPW", KEY))
        self.assertEqual(terminal.apps, {"EC0001"}, "binding adds the EC code (PD-27)")
        with self.assertRaises(RequestError):
            provision.provision(registry, {"app_id": "EC0001", "base_key": "short"})
        with self.assertRaises(RegistryError):
            provision.provision(registry, {"app_id": "EC0001"})
        first = await registry.enqueue_notification(AppNotification(
            app_id="EC0001", kind="DeliverData", body=b"<x/>", created_at=1.0))
        second = await registry.enqueue_notification(AppNotification(
            app_id="EC0001", kind="NotifyResult", body=b"<y/>", created_at=2.0))
        second.state, second.attempts = NotificationState.KEPT, 4
        await registry.update_notification(second)
        await registry.delete_notifications([first.id, 999])
        message = await registry.add_app_message(AppMessage(
            app_id="EC0001", operation="SendData", serial=terminal.serial, biz_seq="b-1",
            created_at=3.0))
        message.state, message.op_result = "ACKED", 0
        await registry.update_app_message(message)
        registry = await self.reopen(registry)
        app = registry.application("EC0001")
        self.assertEqual((app.terminals, app.permissions, app.callback_url),
                         ({terminal.serial}, {"connectivity"}, "http://127.0.0.1:9/notify"))
        self.assertIs(registry.application_by_ec("EC0001"), app)
        kept = registry.notifications("EC0001")
        self.assertEqual([(n.id, n.kind, n.state, n.attempts) for n in kept],
                         [(second.id, "NotifyResult", "kept", 4)])
        loaded = await registry.app_message(message.id)
        self.assertEqual((loaded.state, loaded.op_result, loaded.biz_seq), ("ACKED", 0, "b-1"))
        self.assertIs(registry.app_message_by_biz_seq("EC0001", "b-1"), loaded)
        missing = await registry.app_message(12345)
        self.assertIsNone(missing)
        newer = await registry.enqueue_notification(AppNotification(
            app_id="EC0001", kind="DeliverData", body=b"<z/>", created_at=4.0))
        self.assertGreater(newer.id, second.id, "notifyIds are never reused")
        await registry.close()


class SqliteAppRegistryTest(SqliteBackend, AppRegistryTests, unittest.TestCase):
    pass


class MemoryAppRegistryTest(MemoryBackend, AppRegistryTests, unittest.TestCase):
    pass


class PostgresAppRegistryTest(PostgresBackend, AppRegistryTests, unittest.TestCase):
    pass


class AdminApiTest(unittest.TestCase):
    @defer.inlineCallbacks
    def test_post_and_get_apps(self):  # type: ignore[no-untyped-def]
        gateway = yield start_gateway(self.mktemp() + ".db")
        self.addCleanup(gateway.stopService)
        terminal = provisioned(0, apps=set(), default_app=None)
        yield gateway.registry.add(terminal)
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        base = f"http://127.0.0.1:{gateway.port_of('admin')}/apps"
        auth = {"headers": bearer(gateway.config)}
        body = {"app_id": "EC0009", "password": "p4ssw0rdp4ss", "base_key": "0123456789ABCDEF",
                "cipher": "aes", "terminals": [terminal.serial]}
        response = yield http.post(base, json=body, **auth)
        created = yield response.json()
        self.assertEqual((response.code, created["ec_code"], created["cipher"]),
                         (201, "EC0009", "aes"))
        response = yield http.post(base, json={**body, "base_key": "x" * 24}, **auth)
        self.assertEqual(response.code, 400, "a 24-character key is not an aes key")
        yield response.content()
        response = yield http.post(base, json=body, **auth)
        self.assertEqual(response.code, 409, "taken app id")
        yield response.content()
        response = yield http.get(base, **auth)
        listing = (yield response.json())["items"]
        self.assertEqual([(a["app_id"], a["terminals"]) for a in listing],
                         [("EC0009", [terminal.serial])])
        self.assertNotIn("password", listing[0], "secrets are shown only once")
        self.assertIn("EC0009", terminal.apps)


def test_cli_provisions_an_application_without_a_running_gateway(tmp_path: Path) -> None:
    ini = tmp_path / "m2mgw.ini"
    ini.write_text(f"[registry]\ndatabase = {tmp_path / 'm2mgw.db'}\n[admin]\nlisten = none\n")
    done = cli(ini, "app-provision", "--app-id", "EC0001", "--password", "s3cretPW",
               "--base-key", KEY, "--callback-url", "http://127.0.0.1:9000/n", "--json",
               "--show-secrets")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert (record["app_id"], record["base_key"], record["cipher"]) == ("EC0001", KEY, "legacy")
    refused = cli(ini, "app-provision", "--app-id", "EC0002", "--password", "pw",
                  "--base-key", "short")
    assert refused.returncode == 2 and "base_key must be" in refused.stderr
    unknown = cli(ini, "app-provision", "--app-id", "EC0003", "--password", "pw",
                  "--base-key", KEY, "--terminal", "A972030000009999")
    assert unknown.returncode == 2 and "unknown terminal" in unknown.stderr
    listing = cli(ini, "apps")
    assert listing.returncode == 0
    assert "EC0001" in listing.stdout and "http://127.0.0.1:9000/n" in listing.stdout
    assert "s3cretPW" not in listing.stdout


def test_cli_provisions_a_base_key_rotation(tmp_path: Path) -> None:
    """7.2: the next Base Key and its effective time, announced at later logins."""
    ini = tmp_path / "m2mgw.ini"
    ini.write_text(f"[registry]\ndatabase = {tmp_path / 'm2mgw.db'}\n[admin]\nlisten = none\n")
    done = cli(ini, "app-provision", "--app-id", "EC0001", "--password", "s3cretPW",
               "--base-key", KEY, "--next-base-key", "NextBaseKey0123456789ABC",
               "--next-base-key-from", "1900000000", "--json", "--show-secrets")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert (record["next_base_key"], record["next_base_key_from"]) == (
        "NextBaseKey0123456789ABC", 1_900_000_000)
    half = cli(ini, "app-provision", "--app-id", "EC0002", "--password", "s3cretPW",
               "--base-key", KEY, "--next-base-key", "NextBaseKey0123456789ABC")
    assert half.returncode == 2 and "go together" in half.stderr


@pytest.mark.parametrize(("changes", "message"), [
    ({"next_base_key": "short", "next_base_key_from": 1}, "next_base_key must be"),
    ({"next_base_key": KEY, "next_base_key_from": 1}, "must differ"),
    ({"next_base_key": "NextBaseKey0123456789ABC", "next_base_key_from": "soon"}, "UNIX time"),
])
def test_rotation_parameters_are_checked(changes: dict[str, object], message: str) -> None:
    params = {"app_id": "EC0001", "password": "s3cretPW", "base_key": KEY, **changes}
    with pytest.raises(RequestError, match=message):
        provision.application_from_json(params, None)  # type: ignore[arg-type]  # no terminals


def test_app_settings() -> None:
    config = parse_config("[app]\nnotify_retry_schedule = 1s, 2m\nsync_wait = 5s\n")
    assert config.app.notify_retry_schedule == (1.0, 120.0)
    assert (config.app.sync_wait, config.app.max_app_connections) == (5.0, 1)
    with pytest.raises(ConfigError, match=r"\[app\] notify_retry_schedule: expected a comma"):
        parse_config("[app]\nnotify_retry_schedule = soon\n")


def test_authorisation_tables() -> None:
    """2.6: reads never touch security tags; writes follow the table and permissions."""
    assert refused_read(0xE025) and refused_read(0x5001) and not refused_read(0x0011)
    assert not refused_write(0x0011, set())
    assert refused_write(0x0002, set()) and not refused_write(0x0002, {"connectivity"})
    assert not refused_write(0x2001, set()) and not refused_write(0x8001, set())
    assert refused_write(0x3001, set()) and refused_write(0xE025, {"connectivity"})


@pytest.mark.parametrize(
    ("state", "result", "outcome", "expected"),
    [
        ("succeeded", 0, "ok", ("ACKED", 0, 0)),
        ("succeeded", 0, "applied", ("APPLIED", 0, 0)),
        ("failed", 3, "result 3 (REJECTED)", ("FAILED", 7, 3)),
        ("failed", None, "no answer (timeout)", ("FAILED", 6, None)),
        ("expired", None, "TTL expired while queued", ("EXPIRED", 5, None)),
        ("queued", None, None, ("QUEUED", 0, None)),
    ],
)
def test_message_outcome(state: str, result: int | None, outcome: str | None,
                         expected: tuple[str, int, int | None]) -> None:
    request = Request(serial="A972030000001234", command=4, body=b"", state=state,
                      created_at=0, expires_at=1, origin="app:EC0001", result=result,
                      outcome=outcome)
    assert message_outcome(request) == expected

"""Keys on a live long connection (issue #11, D-343, D-344; application spec 7.2-7.5).

* The platform replaces the Session Key (APP_KEY_UPDATE type 1) before ``session_ttl``
  is up, and the session goes on under the new key; one that cannot send the update
  in time still ends at its TTL with APP_LOGOUT reason 5.
* A Base Key rotation set on an application that is connected is announced at once
  (APP_KEY_UPDATE type 2), through the admin API or ``m2mgw app-rotate-key``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from m2mgw.app import longconn as lc
from m2mgw.app import operations as ops
from m2mgw.protocol.framing import StreamFramer
from tests.admin_token import admin_token
from tests.e2e.support import until
from tests.twistd import cli
from tests.web import call

from . import T0, TID
from .gateway_support import APP_CONFIG, BASE_KEY, PASSWORD, AppGatewayTestCase, sleep
from .test_app_registry import KEY
from .test_longconn import Link

R = ops.ResultCode
NEW_BASE_KEY = "NextBaseKey0123456789ABC"
TTL = 100
REFRESH = lc.KEY_REFRESH_AT * TTL


def notification(notify_id: int) -> ops.DeliverData:
    return ops.DeliverData(notify_id=notify_id, terminal_id=TID, data=b"d", bearer="TCP",
                           receive_time=T0)


def sent(raw: bytes) -> list[lc.Frame]:
    return [lc.parse_frame(frame) for frame in StreamFramer().feed(raw)]


def test_the_session_key_is_replaced_before_session_ttl_and_the_session_goes_on() -> None:
    link = Link(encrypt_notifications=True, session_ttl=TTL)
    link.client.heartbeat = 1000
    first = link.client.session_key
    link.advance(REFRESH - 1)
    assert link.platform.data_to_send() == b""
    link.advance(1)
    assert link.to_client() == [lc.KeyUpdated(1)]
    assert link.client.session_key not in (None, first)
    assert link.to_platform() == [lc.KeyUpdated(1)]
    # Past the first key's TTL: no APP_LOGOUT 5, and both ends use the new key.
    link.advance(TTL - REFRESH + 5)
    assert link.platform.state is lc.State.ACTIVE and link.platform.data_to_send() == b""
    seq = link.platform.send_request(notification(1), link.now)
    [received] = link.to_client()
    assert received.encrypted and received.payload == notification(1)
    link.client.answer(seq, ops.DeliverDataResponse(), link.now)
    [answer] = link.to_platform()
    assert isinstance(answer, lc.AnswerReceived) and answer.response.ok
    # The new key is replaced in its turn, REFRESH after its ACK.
    link.advance(REFRESH - (TTL - REFRESH + 5) - 1)
    assert link.platform.data_to_send() == b""
    link.advance(1)
    assert link.to_client() == [lc.KeyUpdated(1)]


def test_a_refresh_waits_for_a_place_in_the_window() -> None:
    link = Link(session_ttl=TTL)
    link.client.heartbeat = 1000
    link.advance(REFRESH - 0.5)
    for n in range(lc.WINDOW):
        link.platform.send_request(notification(n), link.now)
    received = link.to_client()
    link.advance(0.5)  # due, but no request may be sent now
    assert link.platform.data_to_send() == b"" and not link.platform.key_update_outstanding
    for event in received:
        link.client.answer(event.sequence_id, ops.DeliverDataResponse(), link.now)
    assert len(link.to_platform()) == lc.WINDOW
    link.advance(lc.KEY_REFRESH_RETRY)
    assert link.platform.key_update_outstanding
    assert link.to_client() == [lc.KeyUpdated(1)]


def test_a_session_that_cannot_refresh_in_time_ends_at_its_ttl_with_logout_5() -> None:
    link = Link(session_ttl=TTL)
    link.client.heartbeat = 1000
    link.advance(REFRESH - 0.5)
    for n in range(lc.WINDOW):  # never answered: they time out only after the TTL
        link.platform.send_request(notification(n), link.now)
    link.to_client()
    while link.now < TTL - 1:
        link.advance(1)
        assert link.platform.data_to_send() == b""
    link.advance(1)
    [logout] = sent(link.platform.data_to_send())
    assert (logout.header.command_id, logout.body) == (lc.Command.APP_LOGOUT, b"\x05")


def test_updates_are_wrapped_in_the_base_key_the_session_logged_in_under() -> None:
    """A login at a rotation's effective time gets its Session Key under the new Base
    Key; a later type 1 update must be under that key too, not the looked-up one."""
    link = Link(base_key=NEW_BASE_KEY)
    link.platform.update_session_key(link.now)
    assert link.to_client() == [lc.KeyUpdated(1)]
    assert link.to_platform() == [lc.KeyUpdated(1)]


class LiveSessionCase(AppGatewayTestCase):
    """Waiting for what happens on a real long connection."""

    @defer.inlineCallbacks
    def confirmed(self, app_id: str):  # type: ignore[no-untyped-def]
        yield until(lambda: self.gateway.outbox.connections(app_id), "a confirmed session")
        [connection] = self.gateway.outbox.connections(app_id)
        return connection



class SessionKeyRefreshTest(LiveSessionCase):
    """Over a real long connection; the platform's timers on a task.Clock."""

    extra_config = APP_CONFIG + "session_ttl = 60s\n"

    @defer.inlineCallbacks
    def test_refresh_over_the_wire_and_the_session_outlives_its_ttl(self):  # type: ignore[no-untyped-def]
        clock = Clock()
        clock.advance(reactor.seconds())
        self.gateway.apps.clock = clock  # connections made from now on run their timers on it
        client, _ = yield self.connect_app(encrypt=True)
        connection = yield self.confirmed("EC0001")
        first = client.session.session_key
        clock.advance(0.9 * 60 - 0.5)
        yield sleep(0.1)
        self.assertEqual(client.session.session_key, first)
        clock.advance(0.5)
        yield until(lambda: client.session.session_key != first, "the key update")
        yield until(lambda: not connection.session.key_update_outstanding, "its ACK")
        # An encrypted request under the new key: the platform switched too.
        info = yield client.call(ops.QueryTerminalInfo(terminal_id=self.record.serial))
        self.assertEqual((info.result_code, info.info.imei), (R.OK, self.record.imei))
        clock.advance(10)  # past the first key's session_ttl
        yield sleep(0.1)
        self.assertIs(connection.session.state, lc.State.ACTIVE)
        self.assertFalse(client.closed.called)
        again = yield client.call(ops.QueryTerminalStatus(terminal_ids=[self.record.serial]))
        self.assertEqual(again.result_code, R.OK)


class RotationAnnouncedAtOnceTest(LiveSessionCase):
    def admin(self, path: str, body: Any) -> defer.Deferred[tuple[int, Any, Any]]:
        url = f"http://127.0.0.1:{self.gateway.port_of('admin')}{path}"
        token = admin_token(self.gateway.config)
        return defer.ensureDeferred(call("POST", url, body, token=token))

    @defer.inlineCallbacks
    def test_a_rotation_set_while_connected_is_announced_at_once(self):  # type: ignore[no-untyped-def]
        announced: list[lc.BaseKeyAnnounced] = []
        client, _ = yield self.connect_app(on_base_key=announced.append)
        yield self.confirmed("EC0001")
        self.assertEqual(announced, [])
        effective = int(time.time()) + 3600
        status, view, _ = yield self.admin(
            "/apps/EC0001/base-key?show_secrets=1",
            {"next_base_key": NEW_BASE_KEY, "next_base_key_from": effective},
        )
        self.assertEqual((status, view["next_base_key"], view["next_base_key_from"]),
                         (200, NEW_BASE_KEY, effective))
        yield until(lambda: announced, "the announcement")
        self.assertEqual(announced, [lc.BaseKeyAnnounced(NEW_BASE_KEY, effective)])
        self.assertEqual(client.credentials_at(effective).base_key, NEW_BASE_KEY)
        # The client answered it: the session goes on, the same rotation is not repeated.
        status = yield client.call(ops.QueryTerminalStatus(terminal_ids=[self.record.serial]))
        self.assertEqual(status.result_code, R.OK)
        self.assertEqual(len(announced), 1)
        # A generated key is stored, and masked in the answer unless asked for.
        status, view, _ = yield self.admin("/apps/EC0001/base-key",
                                           {"next_base_key_from": effective + 1})
        self.assertEqual((status, view["next_base_key"]), (200, "***"))
        yield until(lambda: len(announced) == 2, "the second rotation")
        generated = self.registry.application("EC0001").next_base_key
        self.assertEqual(announced[1], lc.BaseKeyAnnounced(generated, effective + 1))
        self.assertEqual(len(generated), len(BASE_KEY))

    @defer.inlineCallbacks
    def test_bad_rotations_are_refused(self):  # type: ignore[no-untyped-def]
        cases = [
            ("/apps/NOPE/base-key", {"next_base_key_from": 2_000_000_000}, 404, "unknown app"),
            ("/apps/EC0001/base-key", {"next_base_key": BASE_KEY,
                                       "next_base_key_from": 2_000_000_000}, 400, "differ"),
            ("/apps/EC0001/base-key", {"next_base_key": "short",
                                       "next_base_key_from": 2_000_000_000}, 400, "must be"),
            ("/apps/EC0001/base-key", {"next_base_key": NEW_BASE_KEY}, 400, "required"),
            ("/apps/EC0001/base-key", {"next_base_key_from": 1, "x": 1}, 400, "unknown param"),
        ]
        for path, body, expected, message in cases:
            status, answer, _ = yield self.admin(path, body)
            self.assertEqual(status, expected, answer)
            self.assertIn(message, answer["error"])
        self.assertIsNone(self.registry.application("EC0001").next_base_key)


def test_cli_schedules_a_rotation_without_a_running_gateway(tmp_path: Path) -> None:
    ini = tmp_path / "m2mgw.ini"
    ini.write_text(f"[registry]\ndatabase = {tmp_path / 'm2mgw.db'}\n[admin]\nlisten = none\n")
    done = cli(ini, "app-provision", "--app-id", "EC0001", "--password", PASSWORD,
               "--base-key", KEY)
    assert done.returncode == 0, done.stderr
    done = cli(ini, "app-rotate-key", "--app-id", "EC0001", "--next-base-key-from",
               "1900000000", "--json", "--show-secrets")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["next_base_key_from"] == 1_900_000_000
    assert len(record["next_base_key"]) == len(KEY) and record["next_base_key"] != KEY
    masked = cli(ini, "app-rotate-key", "--app-id", "EC0001", "--next-base-key",
                 NEW_BASE_KEY, "--next-base-key-from", "1900000001", "--json")
    assert masked.returncode == 0 and NEW_BASE_KEY not in masked.stdout
    unknown = cli(ini, "app-rotate-key", "--app-id", "NOPE", "--next-base-key-from", "1")
    assert (unknown.returncode, unknown.stderr.strip()) == (1, "m2mgw: unknown application NOPE")

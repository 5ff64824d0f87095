"""Base Key rotation by APP_KEY_UPDATE type 2 on the long connection (spec 7.2, 7.5)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from twisted.internet import defer
from twisted.internet.task import Clock

from m2mgw.app import longconn as lc
from m2mgw.app import operations as ops
from m2mgw.app import provision, server
from m2mgw.app.longconn import AppCredentials

from .gateway_support import BASE_KEY, PASSWORD, AppGatewayTestCase, sleep
from .test_longconn import T0, Link

R = ops.ResultCode
NEW_BASE_KEY = "NextBaseKey0123456789ABC"


def test_unanswered_key_update_closes_with_logout_6() -> None:
    link = Link()
    link.client.heartbeat = 1000
    link.platform.announce_base_key(link.now, NEW_BASE_KEY, T0)
    assert link.platform.key_update_outstanding
    update = lc.parse_frame(link.platform.data_to_send())  # lost: never answered
    assert update.header.command_id == 0x0112
    _, platform_events = link.advance(lc.ANSWER_TIMEOUT)
    assert platform_events == [lc.Closed("key update not answered")]
    logout = lc.parse_frame(link.platform.data_to_send())
    assert logout.header.command_id == 0x0102 and logout.body == b"\x06"


def test_notifications_wait_for_the_key_update_answer() -> None:
    """7.5 / AD-12: the connection offers no notification while the update is out."""
    link = Link()
    apps, outbox = SimpleNamespace(clock=Clock()), SimpleNamespace()
    connection = server.AppConnection(apps, outbox)  # type: ignore[arg-type]
    connection.session = link.platform
    assert connection.capacity() == lc.WINDOW
    link.platform.announce_base_key(link.now, NEW_BASE_KEY, T0)
    assert connection.capacity() == 0
    link.to_client()
    assert link.to_platform() == [lc.KeyUpdated(2)]
    assert connection.capacity() == lc.WINDOW


class BaseKeyRotationTest(AppGatewayTestCase):
    @defer.inlineCallbacks
    def test_next_base_key_is_announced_and_used_from_its_time(self):  # type: ignore[no-untyped-def]
        effective = int(time.time()) + 2
        record = yield provision.provision(self.registry, {
            "app_id": "EC0003", "password": PASSWORD, "base_key": BASE_KEY,
            "next_base_key": NEW_BASE_KEY, "next_base_key_from": effective,
            "terminals": [self.record.serial],
        })
        self.assertEqual((record["next_base_key"], record["next_base_key_from"]),
                         (NEW_BASE_KEY, effective))
        announced: list[lc.BaseKeyAnnounced] = []
        first = AppCredentials("EC0003", PASSWORD, BASE_KEY)
        client, _ = yield self.connect_app("EC0003", first, on_base_key=announced.append)
        # The client answers the update at once; a request after it still works.
        status = yield client.call(ops.QueryTerminalStatus(terminal_ids=[self.record.serial]))
        self.assertEqual(status.result_code, R.OK)
        self.assertEqual(announced, [lc.BaseKeyAnnounced(NEW_BASE_KEY, effective)])
        self.assertEqual(client.credentials_at(effective - 1).base_key, BASE_KEY)
        new_credentials = client.credentials_at(effective)
        self.assertEqual(new_credentials.base_key, NEW_BASE_KEY)
        yield client.logout()

        yield sleep(max(0.0, effective - time.time()) + 0.05)
        # From the effective time the Session Key travels under the new Base Key: an
        # encrypted request only succeeds if the client unwrapped it with that key.
        again, _ = yield self.connect_app("EC0003", credentials=new_credentials, encrypt=True)
        answer = yield again.call(ops.QueryTerminalInfo(terminal_id=self.record.serial))
        self.assertEqual((answer.result_code, answer.info.imei), (R.OK, self.record.imei))
        self.assertIsNone(again.base_key_update, "nothing left to announce")
        app = self.registry.application("EC0003")
        self.assertEqual((app.base_key, app.next_base_key), (NEW_BASE_KEY, None))

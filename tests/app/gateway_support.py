"""A real gateway with two provisioned applications and their terminals, over loopback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task

from m2mgw.app import client as app_client
from m2mgw.app import provision
from m2mgw.app.longconn import AppCredentials
from tests.e2e.test_gateway_ip import GatewayTestCase

PASSWORD = "s3cretPW"
BASE_KEY = "AppBaseKey0123456789ABCD"
OTHER_PASSWORD = "0therPassword"
OTHER_BASE_KEY = "0123456789ABCDEF"
#: Seconds of the router's CONFIG_SET confirmation timer, which outlives a gateway stop.
CONFIRM_WAIT = 1.05
#: Small timeouts so that retries and expiry happen within the test budget.
APP_CONFIG = """
[protocol]
config_confirm_wait = 1s
[app]
listen = tcp:0:interface=127.0.0.1
notify_retry_schedule = 0.3s, 0.3s, 0.3s
callback_timeout = 1s
sync_wait = 3s
fetch_lease = 1s
"""


class Inbox:
    """Notifications received by an application, with waiting by predicate."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._waiters: list[tuple[Callable[[Any], bool], defer.Deferred[Any]]] = []

    def add(self, item: Any) -> None:
        self.items.append(item)
        for waiter in list(self._waiters):
            predicate, d = waiter
            if predicate(item):
                self._waiters.remove(waiter)
                d.callback(item)

    def wait(self, predicate: Callable[[Any], bool], timeout: float = 5.0) -> defer.Deferred[Any]:
        for item in self.items:
            if predicate(item):
                return defer.succeed(item)
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiters.append((predicate, d))
        return d.addTimeout(timeout, reactor)

    def of(self, kind: str) -> list[Any]:
        return [item for item in self.items if type(item).__name__ == kind]


def is_result(msg_id: int, state: str) -> Callable[[Any], bool]:
    return lambda n: (type(n).__name__ == "NotifyResult" and n.msg_id == msg_id
                      and n.state == state)


class AppGatewayTestCase(GatewayTestCase):
    """Terminal 0 belongs to EC0001, terminal 1 to EC0002."""

    extra_config = APP_CONFIG
    callback_url: str | None = None

    @defer.inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        yield super().setUp()
        self.record = yield self.add_terminal(0)
        self.other_record = yield self.add_terminal(1, apps={"EC0002"}, default_app="EC0002")
        yield self.provision_apps()
        self.app_port = self.gateway.port_of("app")
        self.http_port = self.gateway.port_of("http")

    def provision_apps(self) -> defer.Deferred[Any]:
        registry = self.gateway.registry
        first = {"app_id": "EC0001", "password": PASSWORD, "base_key": BASE_KEY,
                 "terminals": [self.record.serial]}
        if self.callback_url:
            first["callback_url"] = self.callback_url
        second = {"app_id": "EC0002", "password": OTHER_PASSWORD, "base_key": OTHER_BASE_KEY,
                  "cipher": "aes", "terminals": [self.other_record.serial]}
        return defer.gatherResults([provision.provision(registry, first),
                                    provision.provision(registry, second)])

    @defer.inlineCallbacks
    def online_terminal(self, record: Any = None):  # type: ignore[no-untyped-def]
        term = yield self.open_terminal(record or self.record, "tcp")
        yield self.log_in(term)
        return term

    @defer.inlineCallbacks
    def connect_app(self, app_id: str = "EC0001", credentials: AppCredentials | None = None,
                    **options: Any):  # type: ignore[no-untyped-def]
        inbox = Inbox()
        if credentials is None:
            secrets = {"EC0001": (PASSWORD, BASE_KEY, "legacy"),
                       "EC0002": (OTHER_PASSWORD, OTHER_BASE_KEY, "aes")}[app_id]
            credentials = AppCredentials(app_id, *secrets)
        client = yield app_client.connect(reactor, "127.0.0.1", self.app_port, credentials,
                                          on_notification=inbox.add, **options)
        self.addCleanup(self._close_client, client)
        return client, inbox

    @staticmethod
    def _close_client(client: app_client.AppClient) -> defer.Deferred[Any]:
        if client.transport is not None and client.transport.connected:
            client.transport.loseConnection()
        return client.closed


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)

"""Upgrade end to end: a file by ``sourceUrl`` (3.2.9, AD-15) and a fragmented inline file
(6.7) over the long connection, each reaching the terminal as DOWNLOAD_INFO."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.web import static
from twisted.web.server import Site

from m2mgw.app import fetch
from m2mgw.app import operations as ops
from m2mgw.protocol import terminal as role
from m2mgw.protocol.checksum import crc16, crc32
from m2mgw.protocol.constants import Command

from .gateway_support import PASSWORD, AppGatewayTestCase, is_result
from .test_longconn_e2e import platform_request
from .test_soap_e2e import ZeepApp, in_thread

R = ops.ResultCode
IMAGE = bytes(range(256)) * 200  # 51,200 bytes


class _Silent(Protocol):
    """Accepts the connection and never answers: a source that hangs."""


class UpgradeFileTest(AppGatewayTestCase):
    @defer.inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        yield super().setUp()
        folder = tempfile.mkdtemp(prefix="m2mgw-source-")
        self.addCleanup(shutil.rmtree, folder, True)
        with open(os.path.join(folder, "fw.bin"), "wb") as out:
            out.write(IMAGE)
        port = reactor.listenTCP(0, Site(static.File(folder)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.source = f"http://127.0.0.1:{port.getHost().port}"
        self.term = yield self.online_terminal()
        self.client, self.inbox = yield self.connect_app()

    def upgrade(self, data: bytes | None = None, **fields: Any) -> defer.Deferred[Any]:
        image = IMAGE if data is None else data
        request: dict[str, Any] = {
            "terminal_id": self.record.serial, "version": "V2.0",
            "file_md5": hashlib.md5(image).hexdigest(), "file_size": len(image),
            "source_url": None if data is not None else self.source + "/fw.bin",
            "file_data": data,
        }
        return self.client.call(ops.Upgrade(**(request | fields)))

    @defer.inlineCallbacks
    def assert_offered(self, sent: Any, image: bytes):  # type: ignore[no-untyped-def]
        self.assertEqual(sent.result_code, R.OK)
        yield self.assert_download_info(image)
        result = yield self.inbox.wait(is_result(sent.msg_id, "ACKED"))
        self.assertEqual(result.operation, "Upgrade")

    @defer.inlineCallbacks
    def assert_download_info(self, image: bytes):  # type: ignore[no-untyped-def]
        seen = yield self.term.wait_for(platform_request(Command.DOWNLOAD_INFO))
        offer = role.parse_download_url(seen.message.url)
        self.assertEqual((offer.size, offer.crc16, offer.crc32, offer.version),
                         (len(image), crc16(image), crc32(image), "V2.0"))

    @defer.inlineCallbacks
    def test_source_url_is_fetched_and_offered(self):  # type: ignore[no-untyped-def]
        sent = yield self.upgrade()
        yield self.assert_offered(sent, IMAGE)

    @defer.inlineCallbacks
    def test_source_url_over_soap(self):  # type: ignore[no-untyped-def]
        url = f"http://127.0.0.1:{self.http_port}/m2m/app/v1/M2MPlatformService"
        app = yield in_thread(ZeepApp, url, "EC0001", PASSWORD)
        params = {"terminalId": self.record.serial, "version": "V2.0",
                  "fileMd5": hashlib.md5(IMAGE).hexdigest().upper(), "fileSize": len(IMAGE)}
        missing = yield in_thread(app.call, "Upgrade", sourceUrl=self.source + "/x.bin",
                                  **params)
        self.assertEqual(missing.resultCode, R.BAD_PARAMETER)
        self.assertIn("HTTP status 404", missing.resultDesc)
        sent = yield in_thread(app.call, "Upgrade", sourceUrl=self.source + "/fw.bin", **params)
        self.assertEqual((sent.resultCode, sent.resultDesc), (R.OK, "OK"))
        self.assertIsNotNone(sent.msgId)
        yield self.assert_download_info(IMAGE)

    @defer.inlineCallbacks
    def test_bad_sources_give_result_8(self):  # type: ignore[no-untyped-def]
        wrong_md5 = yield self.upgrade(file_md5="0" * 32)
        self.assertEqual(wrong_md5.result_code, R.BAD_PARAMETER)
        missing = yield self.upgrade(source_url=self.source + "/missing.bin")
        self.assertEqual(missing.result_code, R.BAD_PARAMETER, "404")
        larger = yield self.upgrade(file_size=len(IMAGE) - 1)
        self.assertEqual(larger.result_code, R.BAD_PARAMETER, "more bytes than fileSize")
        scheme = yield self.upgrade(source_url="ftp://127.0.0.1/fw.bin")
        self.assertEqual(scheme.result_code, R.BAD_PARAMETER)
        silent = reactor.listenTCP(0, Factory.forProtocol(_Silent), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        self.gateway.apps.source_fetch_timeout = 0.3
        hung = yield self.upgrade(source_url=f"http://127.0.0.1:{silent.getHost().port}/x")
        self.assertEqual(hung.result_code, R.BAD_PARAMETER, "a source that never answers")
        # Nothing reached the terminal; the next good request still works.
        sent = yield self.upgrade()
        yield self.assert_offered(sent, IMAGE)
        requests = yield self.registry.requests(self.record.serial)
        self.assertEqual([r.command for r in requests].count(Command.DOWNLOAD_INFO), 1)

    @defer.inlineCallbacks
    def test_fetch_failures_are_explained_and_leave_no_file(self):  # type: ignore[no-untyped-def]
        private = tempfile.mkdtemp(prefix="m2mgw-fetch-")
        self.addCleanup(shutil.rmtree, private, True)
        self.patch(tempfile, "tempdir", private)  # where fetch_file makes its files
        silent = reactor.listenTCP(0, Factory.forProtocol(_Silent), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        cases = [
            (self.source + "/missing.bin", len(IMAGE), "HTTP status 404"),
            (self.source + "/fw.bin", 1000, "over 1000"),
            (f"http://127.0.0.1:{silent.getHost().port}/x", 10, "no complete answer within 0.3 s"),
            ("file:///etc/passwd", 10, "http:// or https://"),
        ]
        for url, limit, reason in cases:
            with self.assertRaises(fetch.FetchError) as caught:
                yield fetch.fetch_file(reactor, url, max_size=limit, timeout=0.3)
            self.assertIn(reason, caught.exception.reason)
        stored = yield fetch.fetch_file(reactor, self.source + "/fw.bin", max_size=len(IMAGE),
                                        timeout=5)
        self.addCleanup(stored.remove)
        with open(stored.path, "rb") as data:
            self.assertEqual(data.read(), IMAGE)
        self.assertEqual(stored.md5, hashlib.md5(IMAGE).hexdigest())
        self.assertEqual(os.listdir(private), [os.path.basename(stored.path)])

    @defer.inlineCallbacks
    def test_fragmented_inline_file(self):  # type: ignore[no-untyped-def]
        """About 200 kB of fileData: four 4008 parts each way, encrypted (6.7, 7.4)."""
        yield self.client.logout()
        self.client, self.inbox = yield self.connect_app(encrypt=True)
        image = os.urandom(200_000)
        sent = yield self.upgrade(image)
        yield self.assert_offered(sent, image)

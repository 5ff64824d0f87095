"""The DOWNLOAD_INFO file service: offers (copy + checksums) and HTTP GET/HEAD/Range."""

from __future__ import annotations

import os
import re
import time

from twisted.internet import reactor, task
from twisted.trial import unittest
from twisted.web.server import Site

from m2mgw.core.requests import RequestError
from m2mgw.protocol.checksum import crc16, crc32
from m2mgw.web.files import FileService
from tests.web import CREDENTIALS, IMEI, IMSI, SERIAL, call, header, start_gateway

DATA = os.urandom(3000) + b"tail"
URL_RE = re.compile(
    r"http://192\.0\.2\.10:8080/wmmp/files/(?P<token>[0-9A-F]{16,})/fw-2\.0\.bin"
    r"\?TRANS_ID=(?P<trans>[0-9A-F]{8})&FILE_SIZE=(?P<size>\d+)&CRC16=(?P<crc16>[0-9A-F]{4})"
    r"&CRC32=(?P<crc32>[0-9A-F]{8})&VER_DSC=2\.0%2Bb1"
)


class FileServiceTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.gw = await start_gateway(self)
        registry = self.gw.gateway.registry
        status, _, _ = await self.gw.api(
            "POST", "/terminals",
            {"imei": IMEI, "imsi": IMSI, "serial": SERIAL, **CREDENTIALS},
        )
        self.assertEqual(status, 201)
        self.registry = registry
        self.source = self.gw.root / "fw-2.0.bin"
        self.source.write_bytes(DATA)

    def url(self, tx: object, name: str = "fw-2.0.bin", base: str | None = None) -> str:
        return f"{base or self.gw.http}/wmmp/files/{tx.token}/{name}"  # type: ignore[attr-defined]

    async def test_offer_copies_and_checksums(self) -> None:
        files = self.gw.gateway.files
        tx = await files.offer(SERIAL, str(self.source), "2.0+b1")
        self.assertEqual((tx.size, tx.crc16, tx.crc32), (len(DATA), crc16(DATA), crc32(DATA)))
        self.assertIs(self.registry.file_by_token(tx.token), tx)
        self.assertIs(self.registry.file_by_trans_id(tx.trans_id), tx)
        self.assertEqual(tx.expires_at - tx.created_at, 7 * 86400)
        match = URL_RE.fullmatch(files.url_for(tx))
        self.assertIsNotNone(match, files.url_for(tx))
        self.assertEqual(int(match["trans"], 16), tx.trans_id)
        self.assertEqual(
            (int(match["size"]), int(match["crc16"], 16), int(match["crc32"], 16)),
            (len(DATA), crc16(DATA), crc32(DATA)),
        )
        # The served copy is independent of the source.
        self.source.write_bytes(b"changed")
        status, body, response = await call("GET", self.url(tx))
        self.assertEqual((status, body), (200, DATA))
        self.assertEqual(header(response, "content-type"), [b"application/octet-stream"])
        self.assertEqual(response.length, len(DATA))
        self.assertEqual(os.listdir(self.gw.root / "files"), [tx.token])

    async def test_head_and_range(self) -> None:
        tx = await self.gw.gateway.files.offer(SERIAL, str(self.source), "2.0")
        status, body, response = await call("HEAD", self.url(tx))
        self.assertEqual((status, body), (200, b""))
        self.assertEqual(header(response, "content-length"), [str(len(DATA)).encode()])
        self.assertEqual(header(response, "accept-ranges"), [b"bytes"])
        status, body, response = await call("GET", self.url(tx), headers={"Range": "bytes=100-199"})
        self.assertEqual((status, body), (206, DATA[100:200]))
        self.assertEqual(
            header(response, "content-range"), [f"bytes 100-199/{len(DATA)}".encode()]
        )
        status, body, _ = await call("GET", self.url(tx), headers={"Range": "bytes=-4"})
        self.assertEqual((status, body), (206, b"tail"))

    async def test_unknown_token_and_wrong_name_are_404(self) -> None:
        tx = await self.gw.gateway.files.offer(SERIAL, str(self.source), "2.0")
        for path in [
            f"/wmmp/files/{'0' * 16}/fw-2.0.bin",
            f"/wmmp/files/{tx.token}/other.bin",
            f"/wmmp/files/{tx.token}",
            f"/wmmp/files/{tx.token}/fw-2.0.bin/x",
            "/wmmp/files/",
            "/wmmp",
            "/",
        ]:
            status, _, _ = await call("GET", self.gw.http + path)
            self.assertEqual(status, 404, path)

    async def test_expired_transaction_is_404(self) -> None:
        tx = await self.gw.gateway.files.offer(SERIAL, str(self.source), "2.0")
        tx.expires_at = reactor.seconds() - 1
        status, _, _ = await call("GET", self.url(tx))
        self.assertEqual(status, 404)
        status, _, _ = await call("HEAD", self.url(tx))
        self.assertEqual(status, 404)

    async def test_lifetime_on_an_injected_clock(self) -> None:
        """With a fake clock the copy runs inline and expiry follows that clock."""
        clock = task.Clock()
        # Today, not 1970: the gateway's retention (on the real clock) prunes long-expired
        # file transactions, and would take this one while the test runs.
        start = float(int(time.time()))
        clock.advance(start)
        files = FileService(self.registry, self.gw.gateway.config, clock)
        port = reactor.listenTCP(0, Site(files.resource()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = f"http://127.0.0.1:{port.getHost().port}"
        tx = await files.offer(SERIAL, str(self.source), "2.0")
        self.assertEqual(tx.created_at, start)
        clock.advance(7 * 86400)
        status, body, _ = await call("GET", self.url(tx, base=base))
        self.assertEqual((status, body), (200, DATA))
        clock.advance(1)
        status, _, _ = await call("GET", self.url(tx, base=base))
        self.assertEqual(status, 404)

    async def test_offer_refusals_leave_nothing_behind(self) -> None:
        files = self.gw.gateway.files
        with self.assertRaises(LookupError):
            await files.offer("A972030000000000", str(self.source), "2.0")
        for path, version, text in [
            (str(self.gw.root / "missing.bin"), "2.0", "regular file"),
            (str(self.gw.root), "2.0", "regular file"),
            (str(self.source), "", "version"),
            (str(self.source), "x" * 20, "version"),
            (str(self.gw.root / ("n" * 120)), "2.0", "characters"),
        ]:
            if "n" * 120 in path:
                (self.gw.root / ("n" * 120)).write_bytes(b"x")
            with self.assertRaises(RequestError) as caught:
                await files.offer(SERIAL, path, version)
            self.assertIn(text, str(caught.exception))
        self.assertEqual(os.listdir(self.gw.root / "files"), [])

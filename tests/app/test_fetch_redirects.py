"""An Upgrade's sourceUrl through redirects: every hop is held to ``[app]
upgrade_source_hosts`` (issue #15 item 11), against a real HTTP server on loopback."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Site

from m2mgw.app import fetch

IMAGE = b"\x5a" * 1000


class _Redirect(Resource):
    """Answers 302 to ``target`` (absolute or relative)."""

    isLeaf = True

    def __init__(self, target: str, code: int = 302) -> None:
        super().__init__()
        self.target, self.code = target, code

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(self.code)
        request.setHeader(b"location", self.target.encode("ascii"))
        return b"moved"


class _File(Resource):
    """The image, counting its requests: a forbidden hop must never be fetched."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def render_GET(self, request: Any) -> bytes:
        self.requests += 1
        return IMAGE


class RedirectTest(unittest.TestCase):
    def setUp(self) -> None:
        self.file = _File()
        self.root = Resource()
        self.root.putChild(b"fw.bin", self.file)
        port = reactor.listenTCP(0, Site(self.root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def url(self, host: str, path: str) -> str:
        return f"http://{host}:{self.port}/{path}"

    def redirect(self, name: str, target: str, code: int = 302) -> str:
        self.root.putChild(name.encode(), _Redirect(target, code))
        return self.url("127.0.0.1", name)

    def fetch(self, url: str, hosts: tuple[str, ...]) -> defer.Deferred[fetch.StoredFile]:
        return fetch.fetch_file(reactor, url, max_size=len(IMAGE), timeout=5,
                                allowed_hosts=hosts)

    @defer.inlineCallbacks
    def test_a_redirect_to_a_forbidden_host_is_refused(self):  # type: ignore[no-untyped-def]
        # localhost is the same server, so following the hop would succeed: only the
        # check of the hop refuses it.
        start = self.redirect("away", self.url("localhost", "fw.bin"))
        with self.assertRaises(fetch.FetchError) as caught:
            yield self.fetch(start, ("127.0.0.1",))
        self.assertIn("'localhost' is not allowed", caught.exception.reason)
        self.assertEqual(self.file.requests, 0)

    @defer.inlineCallbacks
    def test_a_later_hop_is_checked_too(self):  # type: ignore[no-untyped-def]
        second = self.redirect("second", self.url("localhost", "fw.bin"), code=307)
        start = self.redirect("first", second, code=301)
        with self.assertRaises(fetch.FetchError) as caught:
            yield self.fetch(start, ("127.0.0.1",))
        self.assertIn("not allowed", caught.exception.reason)
        self.assertEqual(self.file.requests, 0)

    @defer.inlineCallbacks
    def test_redirects_among_allowed_hosts_are_followed(self):  # type: ignore[no-untyped-def]
        relative = self.redirect("relative", "/fw.bin", code=303)
        start = self.redirect("start", relative.replace("127.0.0.1", "localhost"))
        stored = yield self.fetch(start, ("127.0.0.1", "localhost"))
        self.addCleanup(stored.remove)
        with open(stored.path, "rb") as data:
            self.assertEqual(data.read(), IMAGE)
        self.assertEqual(self.file.requests, 1)
        # With no list every host is allowed, but a hop is still an http(s) URL.
        bad_scheme = self.redirect("ftp", "ftp://127.0.0.1/fw.bin")
        with self.assertRaises(fetch.FetchError) as caught:
            yield self.fetch(bad_scheme, ())
        self.assertIn("http:// or https://", caught.exception.reason)

    @defer.inlineCallbacks
    def test_redirect_loops_and_empty_locations_end(self):  # type: ignore[no-untyped-def]
        loop = self.redirect("loop", "/loop")
        with self.assertRaises(fetch.FetchError) as caught:
            yield self.fetch(loop, ("127.0.0.1",))
        self.assertIn(f"more than {fetch.MAX_REDIRECTS} redirects", caught.exception.reason)
        nowhere = self.redirect("nowhere", "")
        with self.assertRaises(fetch.FetchError) as caught:
            yield self.fetch(nowhere, ("127.0.0.1",))
        self.assertIn("without a Location", caught.exception.reason)

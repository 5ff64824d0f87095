"""The console's static files on a real gateway's admin listener, and what they may do."""

from __future__ import annotations

import re
from importlib.resources import files

from twisted.trial import unittest

from m2mgw.web.ui import FILES
from tests.web import call, header, start_gateway

CONSOLE = files("m2mgw.web").joinpath("console")


class ConsoleFilesTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.gw = await start_gateway(self)
        self.url = self.gw.admin + "/console/"

    async def test_files_are_served_without_a_token_and_with_a_strict_policy(self) -> None:
        for name, kind in [("", FILES["index.html"]), *FILES.items()]:
            status, body, response = await call("GET", self.url + name)
            self.assertEqual(status, 200, name)
            self.assertEqual(body, CONSOLE.joinpath(name or "index.html").read_bytes())
            self.assertEqual(header(response, "content-type"), [kind.encode()])
            [policy] = header(response, "content-security-policy") or [b""]
            self.assertIn(b"default-src 'self'", policy)
            self.assertEqual(header(response, "x-content-type-options"), [b"nosniff"])

    async def test_only_the_console_files_exist(self) -> None:
        for path in ("console/__init__.py", "console/../admin.py", "console/x.js", "console/a/b"):
            status, _, _ = await call("GET", f"{self.gw.admin}/{path}")
            self.assertEqual(status, 404, path)
        status, _, _ = await call("POST", self.url)
        self.assertEqual(status, 405)

    async def test_without_slash_redirects_and_etag_revalidates(self) -> None:
        status, _, response = await call("GET", self.gw.admin + "/console", allow_redirects=False)
        self.assertEqual((status, header(response, "location")), (302, [b"console/"]))
        _, _, response = await call("GET", self.url + "console.js")
        [etag] = header(response, "etag") or [b""]
        self.assertEqual(header(response, "cache-control"), [b"no-cache"])
        status, body, _ = await call(
            "GET", self.url + "console.js", headers={"If-None-Match": etag.decode()}
        )
        self.assertEqual((status, body), (304, b""))


def test_no_markup_from_data_and_nothing_inline() -> None:
    """Data reaches the page only as text, and the page has no inline script or style
    that the Content-Security-Policy would have to allow."""
    script = CONSOLE.joinpath("console.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    page = CONSOLE.joinpath("index.html").read_text()
    assert re.findall(r"<script\b[^>]*>", page) == ['<script type="module" src="console.js">']
    assert not re.search(r"\s(style|on[a-z]+)=", page)
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing from elsewhere

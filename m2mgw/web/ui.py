"""The operator console's static files, at ``/console/`` on the admin listener (D-220).

The console is three files shipped in the package (``m2mgw/web/console/``): no build
step, nothing from a CDN. They hold no data, so they are served without a token; the
page logs in with ``POST /session`` and reads the API with the cookie. Only these
named files are served (no directory listing, nothing else of the package), and a
strict Content-Security-Policy (no inline script, nothing from other origins) means
text a terminal sent can never run as script, even if a bug put it into markup.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files

from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request

#: The files of the console, by the name they are served under.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}
CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


class ConsoleResource(Resource):
    """Serves :data:`FILES` from memory, read once from the package at start-up."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        folder = files("m2mgw.web").joinpath("console")
        self.files: dict[bytes, tuple[bytes, bytes, bytes]] = {}
        for name, kind in FILES.items():
            data = folder.joinpath(name).read_bytes()
            etag = f'"{hashlib.sha256(data).hexdigest()[:32]}"'.encode("ascii")
            self.files[name.encode("ascii")] = (data, kind.encode("ascii"), etag)

    def render(self, request: Request) -> bytes | int:
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(http.NOT_ALLOWED)
            request.setHeader(b"allow", b"GET, HEAD")
            return b""
        return super().render(request)

    def render_GET(self, request: Request) -> bytes:
        if not request.postpath:  # "/console": relative links need the slash
            request.redirect(b"console/")
            return b""
        name = b"index.html" if request.postpath == [b""] else b"/".join(request.postpath)
        found = self.files.get(name)
        if found is None:
            request.setResponseCode(http.NOT_FOUND)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"No such console file.\n"
        data, kind, etag = found
        request.setHeader(b"content-type", kind)
        # Revalidate every time: after an upgrade the browser must not mix old and new.
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"content-security-policy", CSP.encode("ascii"))
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        if request.setETag(etag) == http.CACHED:
            return b""
        return data

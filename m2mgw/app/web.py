"""SOAP over HTTP for applications (spec 4.1): the platform service as a ``twisted.web`` resource.

:class:`PlatformServiceResource` serves the :class:`~m2mgw.app.endpoint.SoapEndpoint`
and the WSDLs; :class:`BoundedRequest` refuses oversized bodies without buffering
them. The callbacks to applications are :mod:`m2mgw.app.callbacks`.
"""

from __future__ import annotations

import io
from urllib.parse import parse_qs, urlsplit

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

from m2mgw.app import soap
from m2mgw.app.endpoint import SoapEndpoint

log = Logger()

SERVICE_PATH = (b"m2m", b"app", b"v1", b"M2MPlatformService")


# --- HTTP request size (4.1) -----------------------------------------------------------


class BoundedRequest(server.Request):
    """A request whose body beyond ``max_body`` bytes is discarded, not stored.

    The resource sees ``oversize`` and answers 413; memory stays bounded whatever the
    client declares or streams.
    """

    max_body = soap.MAX_REQUEST
    oversize = False
    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.oversize = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self.max_body and not self.oversize:
            self.oversize = True
            self.content = io.BytesIO()
        if not self.oversize:
            super().handleContentChunk(data)


def site(endpoint: SoapEndpoint, root: Resource) -> server.Site:
    """The ``[http]`` site: ``root`` plus the platform service at its path (4.1)."""
    node = root
    for segment in SERVICE_PATH[:-1]:
        child = node.children.get(segment)
        if child is None:
            child = Resource()
            node.putChild(segment, child)
        node = child
    node.putChild(SERVICE_PATH[-1], PlatformServiceResource(endpoint))
    bounded = type("BoundedRequest", (BoundedRequest,), {"max_body": endpoint.max_size})
    # A SOAP body is no form: Twisted would parse its Content-Type with the email
    # package for every POST to find out (D-406).
    http_site = server.Site(root, requestFactory=bounded, parsePOSTFormSubmission=False)
    http_site.displayTracebacks = False
    return http_site


class PlatformServiceResource(Resource):
    """``POST`` operations, ``GET ?wsdl`` and ``GET ?wsdl=notify``."""

    isLeaf = True

    def __init__(self, endpoint: SoapEndpoint) -> None:
        super().__init__()
        self.endpoint = endpoint

    def render_GET(self, request: server.Request) -> bytes:
        # twisted.web drops a bare "?wsdl" (no "="), so the query is parsed here.
        query = parse_qs(urlsplit(request.uri).query, keep_blank_values=True)
        which = query.get(b"wsdl")
        if which is None:
            request.setResponseCode(404)
            return b"append ?wsdl or ?wsdl=notify\n"
        location = request.prePathURL().decode("ascii", "replace")
        request.setHeader(b"content-type", soap.CONTENT_TYPE.encode("ascii"))
        return soap.wsdl_text("notify" if which[-1] == b"notify" else "platform", location)

    def render_POST(self, request: server.Request) -> bytes | int:
        request.setHeader(b"content-type", soap.CONTENT_TYPE.encode("ascii"))
        if getattr(request, "oversize", False):
            fault = soap.RequestTooLarge(f"request exceeds {self.endpoint.max_size} bytes")
            request.setResponseCode(fault.http_status)
            return soap.build_fault(fault)
        assert request.content is not None
        action = request.getHeader(b"soapaction")
        d = self.endpoint.dispatch(request.content.read(),
                                   None if action is None else action.decode("latin-1"))
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def write(answer: tuple[int, bytes]) -> None:
            if gone:
                return
            request.setResponseCode(answer[0])
            request.write(answer[1])
            request.finish()

        d.addCallback(write).addErrback(lambda f: log.failure("SOAP answer failed", f))
        return server.NOT_DONE_YET

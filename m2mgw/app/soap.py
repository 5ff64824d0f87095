"""SOAP 1.1 binding of the application interface (spec 4): envelopes, faults, WSDL.

Parsing is defensive: a bounded input size, no DTD of any kind (which rules out
entity expansion, billion laughs and external entities), no network, and schema
validation of the header and the body against ``wsdl/m2m-types.xsd``. Everything
wrong with a request surfaces as a :class:`SoapFault` subclass carrying the fault
code and result of 4.5, ready for :func:`build_fault`.

Typical platform use::

    env = parse_envelope(data, soap_action=action, service="platform")
    env.verify(password, now)                  # AuthFailed on digest / timestamp
    request = env.payload(cipher)              # operations dataclass
    reply = build_message(env.header.reply(now), response, password, cipher=...)
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from lxml import etree

from m2mgw.app import keys
from m2mgw.app import operations as ops
from m2mgw.app.digest import (
    ReplayKey,
    check_timestamp,
    digests_equal,
    soap_canonical_body,
    soap_canonical_header,
    soap_digest,
)
from m2mgw.protocol.errors import ProtocolError
from m2mgw.protocol.security import Cipher

__all__ = [
    "CONTENT_TYPE",
    "MAX_REQUEST",
    "SOAP_ENV",
    "AuthFailed",
    "BadMessage",
    "Envelope",
    "MsgHeader",
    "RemoteFault",
    "RequestTooLarge",
    "ServerFault",
    "SoapFault",
    "build_fault",
    "build_message",
    "from_element",
    "parse_envelope",
    "schema",
    "soap_action",
    "to_element",
    "wsdl_text",
]

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
NS = ops.NAMESPACE
MAX_REQUEST = 8 * 1024 * 1024
CONTENT_TYPE = "text/xml; charset=utf-8"
SEC_DIGEST, SEC_ENCRYPTED = 0x20, 0x30
_NSMAP = {"soapenv": SOAP_ENV, "m2m": NS}
_XSD_NS = "http://www.w3.org/2001/XMLSchema"
_WSDL_SOAP_NS = "http://schemas.xmlsoap.org/wsdl/soap/"


# --- faults (4.5) -------------------------------------------------------------------------


class SoapFault(ProtocolError):
    """A condition answered by a SOAP 1.1 Fault (HTTP ``http_status``) instead of a response."""

    faultcode = "Client"
    subcode: str | None = "m2m:BadMessage"
    default_result = ops.ResultCode.BAD_PARAMETER
    http_status = 500

    def __init__(self, reason: str, result: int | None = None) -> None:
        super().__init__(reason, self.default_result if result is None else result)

    @property
    def faultstring(self) -> str:
        return f"{self.subcode} {self.reason}" if self.subcode else self.reason


class BadMessage(SoapFault):
    """Not well formed, wrong namespace, unknown operation, schema failure, … (result 8)."""


class RequestTooLarge(BadMessage):
    """Larger than ``soap_max_request``: HTTP 413 (4.1)."""

    http_status = 413
    default_result = ops.ResultCode.TOO_LARGE


class AuthFailed(SoapFault):
    """Digest mismatch or timestamp outside the window (1); unknown/disabled appId (2)."""

    subcode = "m2m:AuthFailed"
    default_result = ops.ResultCode.AUTH_FAILED


class ServerFault(SoapFault):
    """Unexpected internal failure (99)."""

    faultcode = "Server"
    subcode = None
    default_result = ops.ResultCode.INTERNAL_ERROR


class RemoteFault(SoapFault):
    """A Fault received from the peer: unauthenticated information only (4.5)."""

    def __init__(self, faultcode: str, faultstring: str, result: int | None) -> None:
        ProtocolError.__init__(self, faultstring, result)
        self.faultcode = faultcode
        self.subcode = None


def build_fault(fault: SoapFault) -> bytes:
    """The Fault envelope of 4.5 (no MsgHeader, so no digest)."""
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap=_NSMAP)
    node = etree.SubElement(etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body"),
                            f"{{{SOAP_ENV}}}Fault")
    etree.SubElement(node, "faultcode").text = f"soapenv:{fault.faultcode}"
    etree.SubElement(node, "faultstring").text = fault.faultstring
    detail = etree.SubElement(node, "detail")
    etree.SubElement(detail, f"{{{NS}}}resultCode").text = str(
        ops.ResultCode.INTERNAL_ERROR if fault.result is None else fault.result
    )
    return _serialize(envelope)


# --- value mapping (4.3) ------------------------------------------------------------------


def _format(xs: str, value: Any) -> str:
    if xs == "boolean":
        return "true" if value else "false"
    if xs == "base64Binary":
        return base64.b64encode(value).decode("ascii")
    if xs == "dateTime":
        return ops.format_datetime(value)
    if xs == "string":
        return value
    return str(int(value))


def _parse_value(xs: str, text: str) -> Any:
    if xs == "string":
        return text
    token = text.strip()
    if xs == "boolean":
        if token in ("true", "1"):
            return True
        if token in ("false", "0"):
            return False
        raise BadMessage(f"bad boolean {token!r}")
    if xs == "base64Binary":
        try:
            return base64.b64decode("".join(token.split()), validate=True)
        except (binascii.Error, ValueError):
            raise BadMessage("bad base64Binary") from None
    if xs == "dateTime":
        try:
            return ops.parse_datetime(token)
        except ProtocolError as exc:
            raise BadMessage(exc.reason) from None
    try:
        return int(token)
    except ValueError:
        raise BadMessage(f"bad integer {token!r}") from None


def to_element(payload: object, name: str | None = None) -> etree._Element:
    """An operation dataclass (or shared type) as its element; declares ``m2m`` on itself."""
    element = etree.Element(f"{{{NS}}}{name or type(payload).__name__}", nsmap={"m2m": NS})
    _fill(element, payload)
    return element


def _fill(element: etree._Element, payload: object) -> None:
    # mypy takes type[object] for unhashable (python/mypy#20409).
    for info in ops.fields_of(type(payload)):  # type: ignore[arg-type]
        value = getattr(payload, info.name)
        for item in (value if info.many else [value]):
            if item is None:
                continue
            if info.xs == "choice":
                child = etree.SubElement(element, f"{{{NS}}}{type(item).__name__}")
                _fill(child, item)
            elif isinstance(info.xs, type):
                _fill(etree.SubElement(element, f"{{{NS}}}{info.element}"), item)
            else:
                etree.SubElement(element, f"{{{NS}}}{info.element}").text = _format(info.xs, item)


def _local(element: etree._Element) -> str:
    return etree.QName(element).localname


def _children(element: etree._Element) -> list[etree._Element]:
    return [child for child in element if isinstance(child.tag, str)]


def from_element(element: etree._Element, cls: type) -> Any:
    """The dataclass of a (schema-valid) element; structural surprises are BadMessage."""
    infos = {info.element: info for info in ops.fields_of(cls)}
    choice = next((info for info in infos.values() if info.xs == "choice"), None)
    kwargs: dict[str, Any] = {}
    for child in _children(element):
        name = _local(child)
        info = infos.get(name)
        if info is None and choice is not None and (member := ops.element_class(name)):
            kwargs[choice.name] = from_element(child, member)
            continue
        if info is None or etree.QName(child).namespace != NS:
            raise BadMessage(f"unexpected element {name!r} in {cls.__name__}")
        if isinstance(info.xs, type):
            value = from_element(child, info.xs)
        else:
            value = _parse_value(info.xs, "".join(child.itertext()))
        if info.many:
            kwargs.setdefault(info.name, []).append(value)
        else:
            kwargs[info.name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise BadMessage(f"incomplete {cls.__name__}: {exc}") from None


# --- schema and safe parsing --------------------------------------------------------------


def _resource(name: str) -> bytes:
    return resources.files("m2mgw.app").joinpath("wsdl", name).read_bytes()


def _parser() -> etree.XMLParser:
    """A fresh parser per document: no DTD, no entities, no network, no huge trees."""
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
        dtd_validation=False, remove_comments=True, remove_pis=True,
    )


@cache
def schema() -> etree.XMLSchema:
    """The compiled ``m2m-types.xsd`` (trusted package data)."""
    return etree.XMLSchema(etree.fromstring(_resource("m2m-types.xsd")))


def _safe_parse(data: bytes, what: str) -> etree._Element:
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise BadMessage(f"{what}: DOCTYPE is not allowed")
    try:
        root = etree.fromstring(data, _parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise BadMessage(f"{what} is not well formed: {exc}") from None
    tree = root.getroottree()
    if tree.docinfo.internalDTD is not None or tree.docinfo.doctype:
        raise BadMessage(f"{what}: DOCTYPE is not allowed")  # e.g. hidden by UTF-16
    if any(isinstance(node, etree._Entity) for node in root.iter()):
        raise BadMessage(f"{what}: entity references are not allowed")
    return root


def _validate(element: etree._Element, what: str) -> None:
    validator = schema()
    if not validator.validate(element):
        error = validator.error_log.last_error
        raise BadMessage(f"{what} fails the schema: {error.message if error else '?'}")


# --- header (4.2) -------------------------------------------------------------------------

_HEADER_FIELDS = ("version", "msgType", "appId", "seqId", "timestamp", "sessionId",
                  "secFlags", "digest")


@dataclass(slots=True)
class MsgHeader:
    """``m2m:MsgHeader``; ``digest`` is filled in by :func:`build_message`."""

    msg_type: str
    app_id: str
    seq_id: int
    timestamp: str
    session_id: str | None = None
    sec_flags: int = SEC_DIGEST
    version: str = "1.0"
    digest: str = field(default="", repr=False)

    def values(self) -> tuple[str | None, ...]:
        """The seven Hs values as written."""
        return (self.version, self.msg_type, self.app_id, str(self.seq_id), self.timestamp,
                self.session_id, str(self.sec_flags))

    def reply(self, now: float) -> MsgHeader:
        """A response header: same appId, seqId and sessionId, our timestamp (4.2)."""
        return MsgHeader(msg_type=self.msg_type + "Response", app_id=self.app_id,
                         seq_id=self.seq_id, timestamp=ops.format_soap_timestamp(now),
                         session_id=self.session_id)

    def to_element(self) -> etree._Element:
        element = etree.Element(f"{{{NS}}}MsgHeader", nsmap={"m2m": NS})
        for name, value in zip(_HEADER_FIELDS, (*self.values(), self.digest), strict=True):
            if value is not None:
                etree.SubElement(element, f"{{{NS}}}{name}").text = value
        return element


def _read_header(element: etree._Element) -> tuple[MsgHeader, tuple[str | None, ...]]:
    texts: dict[str, str] = {_local(c): "".join(c.itertext()) for c in _children(element)}
    try:
        header = MsgHeader(
            version=texts["version"], msg_type=texts["msgType"], app_id=texts["appId"],
            seq_id=int(texts["seqId"]), timestamp=texts["timestamp"],
            session_id=texts.get("sessionId"), sec_flags=int(texts["secFlags"]),
            digest=texts["digest"],
        )
    except (KeyError, ValueError):
        raise BadMessage("MsgHeader is incomplete") from None
    raw = tuple(texts.get(name) for name in _HEADER_FIELDS[:7])
    return header, raw


# --- envelopes ----------------------------------------------------------------------------


def soap_action(operation: str) -> str:
    """The quoted SOAPAction header value of an operation (4.1)."""
    return f'"{NS}#{operation}"'


def _service_elements(service: str | None, responses: bool) -> set[str]:
    return {
        spec.response_name if responses else spec.name
        for spec in ops.OPERATIONS.values()
        if spec.service != "longconn" and (service is None or spec.service == service)
    }


@dataclass(slots=True)
class Envelope:
    """A parsed, schema-valid message whose digest is not yet verified."""

    header: MsgHeader
    header_values: tuple[str | None, ...]
    body: etree._Element

    @property
    def operation(self) -> str:
        """The body element's local name (``SendData``, ``SendDataResponse``)."""
        return _local(self.body)

    @property
    def encrypted(self) -> bool:
        children = _children(self.body)
        return len(children) == 1 and _local(children[0]) == "encryptedBody"

    @property
    def replay_key(self) -> ReplayKey:
        """The AD-19 duplicate key."""
        return ReplayKey(self.header.app_id, self.header.msg_type, self.header.seq_id,
                         self.header.digest.lower())

    def expected_digest(self, password: str) -> str:
        return soap_digest(soap_canonical_header(self.header_values),
                           soap_canonical_body(self.body), self.header.app_id, password)

    def verify(self, password: str, now: float | None = None, window: float = 300.0) -> None:
        """5.1 verification steps 1-2: timestamp window (if ``now``) and digest."""
        if now is not None:
            try:
                check_timestamp(self.header.timestamp, now, window)
            except ProtocolError as exc:
                raise AuthFailed(exc.reason) from None
        if not digests_equal(self.expected_digest(password), self.header.digest):
            raise AuthFailed("digest mismatch")

    def payload(self, cipher: Cipher | None = None) -> Any:
        """The operation dataclass; an encrypted body needs the session ``cipher`` (4.4)."""
        cls = ops.element_class(self.operation)
        assert cls is not None  # checked at parse time
        element = self.body
        if self.encrypted:
            if cipher is None:
                raise BadMessage("encrypted body without a session")
            try:
                plain = keys.decrypt_xml(cipher, "".join(_children(self.body)[0].itertext()))
            except ProtocolError:
                raise BadMessage("body cannot be decrypted") from None
            element = _safe_parse(plain, "decrypted body")
            if element.tag != self.body.tag:
                raise BadMessage("decrypted body is not the expected element")
            _validate(element, "decrypted body")
        return from_element(element, cls)


def parse_envelope(
    data: bytes, *, soap_action: str | None = None, service: str | None = None,
    responses: bool = False, max_size: int = MAX_REQUEST,
) -> Envelope:
    """Parse and check a SOAP message (requests by default, ``responses=True`` for answers).

    ``service`` (``platform`` or ``notify``) limits the operations accepted;
    ``soap_action`` is the HTTP header value, checked against the body element.
    A received Fault raises :class:`RemoteFault`.
    """
    if not isinstance(data, bytes | bytearray):
        raise BadMessage("message must be bytes")
    if len(data) > max_size:
        raise RequestTooLarge(f"message of {len(data)} bytes exceeds {max_size}")
    root = _safe_parse(bytes(data), "message")
    if root.tag != f"{{{SOAP_ENV}}}Envelope":
        raise BadMessage("not a SOAP 1.1 Envelope")
    header_el = root.find(f"{{{SOAP_ENV}}}Header")
    body_el = root.find(f"{{{SOAP_ENV}}}Body")
    if body_el is None:
        raise BadMessage("no SOAP Body")
    body_children = _children(body_el)
    if len(body_children) != 1:
        raise BadMessage("the SOAP Body must hold exactly one element")
    body = body_children[0]
    if body.tag == f"{{{SOAP_ENV}}}Fault":
        raise _remote_fault(body)
    if etree.QName(body).namespace != NS:
        raise BadMessage(f"wrong namespace {etree.QName(body).namespace!r}")
    operation = _local(body)
    if operation not in _service_elements(service, responses):
        raise BadMessage(f"unknown operation {operation!r}")
    if soap_action is not None and soap_action.strip().strip('"') != f"{NS}#{operation}":
        raise BadMessage(f"SOAPAction {soap_action!r} does not match {operation}")
    headers = [] if header_el is None else header_el.findall(f"{{{NS}}}MsgHeader")
    if len(headers) != 1:
        raise BadMessage("missing MsgHeader")
    _validate(headers[0], "MsgHeader")
    _validate(body, operation)
    header, raw = _read_header(headers[0])
    if header.msg_type != operation:
        raise BadMessage(f"msgType {header.msg_type!r} is not the body element {operation}")
    envelope = Envelope(header, raw, body)
    expected_flags = SEC_ENCRYPTED if envelope.encrypted else SEC_DIGEST
    if header.sec_flags != expected_flags:
        raise BadMessage(f"secFlags {header.sec_flags} do not match the body")
    if envelope.encrypted and not header.session_id:
        raise BadMessage("an encrypted body needs a sessionId")
    return envelope


def _remote_fault(fault: etree._Element) -> RemoteFault:
    code = fault.findtext("faultcode") or ""
    text = fault.findtext("faultstring") or ""
    result_text = fault.findtext(f"detail/{{{NS}}}resultCode")
    try:
        result = int(result_text) if result_text is not None else None
    except ValueError:
        result = None
    return RemoteFault(code.rpartition(":")[2] or code, text, result)


def build_message(
    header: MsgHeader, payload: object, password: str, *, cipher: Cipher | None = None
) -> bytes:
    """A signed request, response or notification; encrypted under ``cipher`` (4.4).

    ``msgType``, ``secFlags`` and ``digest`` of ``header`` are set here from what is
    written, so the digest always covers the values as transmitted (5.1).
    """
    element = to_element(payload)
    if cipher is not None:
        if not header.session_id:
            raise BadMessage("encryption needs a sessionId")
        sealed = keys.encrypt_xml(cipher, etree.tostring(element, encoding="utf-8"))
        element = etree.Element(element.tag, nsmap={"m2m": NS})
        etree.SubElement(element, f"{{{NS}}}encryptedBody").text = sealed
    header = dataclasses.replace(
        header, msg_type=etree.QName(element).localname,
        sec_flags=SEC_ENCRYPTED if cipher is not None else SEC_DIGEST,
    )
    header.digest = soap_digest(soap_canonical_header(header.values()),
                                soap_canonical_body(element), header.app_id, password)
    envelope = etree.Element(f"{{{SOAP_ENV}}}Envelope", nsmap=_NSMAP)
    etree.SubElement(envelope, f"{{{SOAP_ENV}}}Header").append(header.to_element())
    etree.SubElement(envelope, f"{{{SOAP_ENV}}}Body").append(element)
    return _serialize(envelope)


def _serialize(element: etree._Element) -> bytes:
    etree.cleanup_namespaces(element, top_nsmap=_NSMAP)
    return etree.tostring(element, xml_declaration=True, encoding="UTF-8")


# --- WSDL (4.1, 4.8) ----------------------------------------------------------------------

_WSDL_FILES = {"platform": "M2MPlatformService.wsdl", "notify": "M2MAppNotifyService.wsdl"}


@cache
def _inlined_wsdl(which: str) -> bytes:
    """The WSDL with its ``xs:import`` of ``m2m-types.xsd`` replaced by the schema itself."""
    try:
        name = _WSDL_FILES[which]
    except KeyError:
        raise ValueError(f"unknown WSDL {which!r}; expected one of {sorted(_WSDL_FILES)}") from None
    root = etree.fromstring(_resource(name), _parser())
    xsd = etree.fromstring(_resource("m2m-types.xsd"), _parser())
    for placeholder in root.iter(f"{{{_XSD_NS}}}schema"):
        parent = placeholder.getparent()
        assert parent is not None  # xs:schema sits in wsdl:types
        parent.replace(placeholder, xsd)
        break
    return etree.tostring(root, encoding="UTF-8")


def wsdl_text(which: str, location: str) -> bytes:
    """The WSDL served at ``?wsdl`` (``platform``) or ``?wsdl=notify`` (``notify``).

    Static except ``soap:address``, which is set to ``location``.
    """
    root = etree.fromstring(_inlined_wsdl(which), _parser())
    for address in root.iter(f"{{{_WSDL_SOAP_NS}}}address"):
        address.set("location", location)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")

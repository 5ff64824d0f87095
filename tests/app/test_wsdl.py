"""WSDL and XSD: loadable offline by zeep, complete (3.2, 3.3), consistent with operations."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import zeep
from lxml import etree

from m2mgw.app import operations as ops
from m2mgw.app import soap

WSDL_DIR = Path(str(resources.files("m2mgw.app").joinpath("wsdl")))
NS = ops.NAMESPACE
XS = "http://www.w3.org/2001/XMLSchema"
SERVICES = {
    "platform": ("M2MPlatformService", "M2MPlatformPort", ops.PLATFORM_OPERATIONS),
    "notify": ("M2MAppNotifyService", "M2MAppNotifyPort", ops.NOTIFICATION_OPERATIONS),
}


def check_client(client: zeep.Client, which: str, location: str | None = None) -> None:
    service_name, port_name, operations = SERVICES[which]
    service = client.wsdl.services[service_name]
    port = service.ports[port_name]
    bound = port.binding._operations
    assert set(bound) == {cls.__name__ for cls in operations}
    for cls in operations:
        op = bound[cls.__name__]
        assert op.soapaction == f"{NS}#{cls.__name__}"
        assert op.input.body.qname == etree.QName(NS, cls.__name__)
        assert op.output.body.qname == etree.QName(NS, cls.__name__ + "Response")
        for message in (op.input, op.output):
            [(_, header)] = message.header.type.elements
            assert header.qname == etree.QName(NS, "MsgHeader")
    if location is not None:
        assert port.binding_options["address"] == location


@pytest.mark.parametrize("which", sorted(SERVICES))
def test_wsdl_files_load_offline_with_zeep(which: str) -> None:
    client = zeep.Client(wsdl=str(WSDL_DIR / f"{SERVICES[which][0]}.wsdl"))
    check_client(client, which)


@pytest.mark.parametrize("which", sorted(SERVICES))
def test_served_wsdl_is_self_contained(which: str, tmp_path: Path) -> None:
    location = f"https://platform.example/m2m/app/v1/{which}"
    text = soap.wsdl_text(which, location)
    root = etree.fromstring(text)
    assert root.find(f".//{{{XS}}}import") is None  # the schema is inlined
    path = tmp_path / "served.wsdl"  # nothing next to it: only inlined types can resolve
    path.write_bytes(text)
    check_client(zeep.Client(wsdl=str(path)), which, location)


def test_wsdl_text_rejects_unknown_name() -> None:
    with pytest.raises(ValueError):
        soap.wsdl_text("other", "http://x")


def test_zeep_builds_a_request_the_platform_accepts() -> None:
    client = zeep.Client(wsdl=str(WSDL_DIR / "M2MPlatformService.wsdl"))
    header = soap.MsgHeader(msg_type="SendData", app_id="EC0001", seq_id=42,
                            timestamp="20250101120000", session_id="7c9e6679f1d04b8e")
    envelope = client.create_message(
        client.service, "SendData",
        terminalId="A972030000001234", data=b"\x01\x02\x03\x04", needTerminalAck=True,
        ttlSeconds=86400, bizSeq="order-7781",
        _soapheaders={"header": {"version": "1.0", "msgType": "SendData", "appId": "EC0001",
                                 "seqId": 42, "timestamp": "20250101120000",
                                 "sessionId": "7c9e6679f1d04b8e", "secFlags": 32,
                                 "digest": "5bc947feb823cd212d4b6ae55edff703"}},
    )
    env = soap.parse_envelope(etree.tostring(envelope), service="platform")
    env.verify("s3cretPW")
    assert env.header.values() == header.values()
    assert env.payload().biz_seq == "order-7781"


def test_schema_compiles_and_matches_the_operations() -> None:
    xsd = etree.parse(str(WSDL_DIR / "m2m-types.xsd"))
    etree.XMLSchema(xsd)
    root = xsd.getroot()
    for spec in ops.OPERATIONS.values():
        if spec.service == "longconn":
            continue
        for cls in (spec.request, spec.response):
            element = root.find(f"{{{XS}}}element[@name='{cls.__name__}']")
            assert element is not None, cls.__name__
            declared = _declared_children(root, element)
            fields = ops.fields_of(cls)
            assert [(name, many) for name, many, _ in declared] == [
                (f.element, f.many) for f in fields
            ], cls.__name__
            # A scalar is required in the schema exactly when its dataclass field has no
            # default, plus resultCode/resultDesc (lists: the handler checks the count).
            for (name, many, required), f in zip(declared, fields, strict=True):
                expected = f.required or name in ("resultCode", "resultDesc")
                assert many or required == expected, (cls.__name__, name)
    for shared in (ops.TlvItem, ops.TerminalStatus, ops.TerminalInfo, ops.AlarmInfo):
        complex_type = root.find(f"{{{XS}}}complexType[@name='{shared.__name__}']")
        names = [e.get("name") for e in complex_type.iter(f"{{{XS}}}element")]
        assert names == [f.element for f in ops.fields_of(shared)]


def _declared_children(
    root: etree._Element, element: etree._Element
) -> list[tuple[str, bool, bool]]:
    """(name, is list, required) of the plaintext alternative of an operation element."""
    complex_type = element.find(f"{{{XS}}}complexType")
    if complex_type is None:  # type="tns:ResultOnly"
        name = element.get("type").split(":")[1]
        complex_type = root.find(f"{{{XS}}}complexType[@name='{name}']")
    sequence = complex_type.find(f"{{{XS}}}choice/{{{XS}}}sequence")
    return [(e.get("name"), e.get("maxOccurs") == "unbounded", e.get("minOccurs") != "0")
            for e in sequence.findall(f"{{{XS}}}element")]


def test_every_operation_element_offers_encrypted_body() -> None:
    schema = soap.schema()
    for name in ops.OPERATIONS:
        if ops.OPERATIONS[name].service == "longconn":
            continue
        for element_name in (name, name + "Response"):
            element = etree.Element(f"{{{NS}}}{element_name}", nsmap={"m2m": NS})
            etree.SubElement(element, f"{{{NS}}}encryptedBody").text = "AAAA"
            assert schema.validate(element), (element_name, schema.error_log)

"""SOAP binding: spec 8.1, digests, hostile XML, schema failures, encryption, faults."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from lxml import etree

from m2mgw.app import keys, soap
from m2mgw.app import operations as ops
from m2mgw.app.digest import (
    ReplayCache,
    ReplayKey,
    check_timestamp,
    soap_canonical_body,
    soap_canonical_header,
    soap_digest,
)
from m2mgw.protocol.errors import DigestError

from . import T0, TID, requests, responses

NS = ops.NAMESPACE
ACTION = '"urn:gbz41383:m2m:app:1#SendData"'
NOW = ops.parse_soap_timestamp("20250101120000")

REQUEST_81 = b"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
                  xmlns:m2m="urn:gbz41383:m2m:app:1">
  <soapenv:Header>
    <m2m:MsgHeader>
      <m2m:version>1.0</m2m:version>
      <m2m:msgType>SendData</m2m:msgType>
      <m2m:appId>EC0001</m2m:appId>
      <m2m:seqId>42</m2m:seqId>
      <m2m:timestamp>20250101120000</m2m:timestamp>
      <m2m:sessionId>7c9e6679f1d04b8e</m2m:sessionId>
      <m2m:secFlags>32</m2m:secFlags>
      <m2m:digest>5bc947feb823cd212d4b6ae55edff703</m2m:digest>
    </m2m:MsgHeader>
  </soapenv:Header>
  <soapenv:Body>
    <m2m:SendData>
      <m2m:terminalId>A972030000001234</m2m:terminalId>
      <m2m:data>AQIDBA==</m2m:data>
      <m2m:needTerminalAck>true</m2m:needTerminalAck>
      <m2m:ttlSeconds>86400</m2m:ttlSeconds>
      <m2m:bizSeq>order-7781</m2m:bizSeq>
    </m2m:SendData>
  </soapenv:Body>
</soapenv:Envelope>
"""

RESPONSE_81 = b"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
                  xmlns:m2m="urn:gbz41383:m2m:app:1">
  <soapenv:Header>
    <m2m:MsgHeader>
      <m2m:version>1.0</m2m:version>
      <m2m:msgType>SendDataResponse</m2m:msgType>
      <m2m:appId>EC0001</m2m:appId>
      <m2m:seqId>42</m2m:seqId>
      <m2m:timestamp>20250101120001</m2m:timestamp>
      <m2m:sessionId>7c9e6679f1d04b8e</m2m:sessionId>
      <m2m:secFlags>32</m2m:secFlags>
      <m2m:digest>33efa3fd8b04af5bc1898a984b0d4db4</m2m:digest>
    </m2m:MsgHeader>
  </soapenv:Header>
  <soapenv:Body>
    <m2m:SendDataResponse>
      <m2m:resultCode>0</m2m:resultCode>
      <m2m:resultDesc>OK</m2m:resultDesc>
      <m2m:msgId>1000123</m2m:msgId>
    </m2m:SendDataResponse>
  </soapenv:Body>
</soapenv:Envelope>
"""

SEND_DATA_81 = ops.SendData(terminal_id=TID, data=b"\x01\x02\x03\x04", biz_seq="order-7781")


def c14n(data: bytes) -> bytes:
    parser = etree.XMLParser(remove_blank_text=True)
    return etree.tostring(etree.fromstring(data, parser), method="c14n")


def header(**kw: object) -> soap.MsgHeader:
    values: dict[str, object] = {"msg_type": "", "app_id": "EC0001", "seq_id": 42,
                                 "timestamp": "20250101120000"}
    values.update(kw)
    return soap.MsgHeader(**values)  # type: ignore[arg-type]


# --- 8.1 ---------------------------------------------------------------------------------


def test_81_canonical_strings_and_digests() -> None:
    env = soap.parse_envelope(REQUEST_81, soap_action=ACTION, service="platform")
    hs = soap_canonical_header(env.header_values)
    bs = soap_canonical_body(env.body)
    assert hs == "1.0|SendData|EC0001|42|20250101120000|7c9e6679f1d04b8e|32"
    assert bs == ("bizSeq=order-7781&data=AQIDBA==&needTerminalAck=true"
                  "&terminalId=A972030000001234&ttlSeconds=86400")
    assert soap_digest(hs, bs, "EC0001", "s3cretPW") == "5bc947feb823cd212d4b6ae55edff703"
    response = soap.parse_envelope(RESPONSE_81, responses=True)
    assert soap_canonical_body(response.body) == "msgId=1000123&resultCode=0&resultDesc=OK"
    assert response.expected_digest("s3cretPW") == "33efa3fd8b04af5bc1898a984b0d4db4"


def test_81_request_parses_and_verifies() -> None:
    env = soap.parse_envelope(REQUEST_81, soap_action=ACTION, service="platform")
    env.verify("s3cretPW", now=NOW)
    assert env.operation == "SendData" and not env.encrypted
    assert env.header.seq_id == 42 and env.header.session_id == "7c9e6679f1d04b8e"
    assert env.payload() == SEND_DATA_81
    assert env.replay_key == ReplayKey("EC0001", "SendData", 42,
                                       "5bc947feb823cd212d4b6ae55edff703")


def test_81_serializes_to_the_example() -> None:
    request = soap.build_message(header(session_id="7c9e6679f1d04b8e"), SEND_DATA_81,
                                 "s3cretPW")
    assert c14n(request) == c14n(REQUEST_81)
    reply = soap.parse_envelope(REQUEST_81).header.reply(NOW + 1)
    assert reply.timestamp == "20250101120001"
    response = soap.build_message(reply, ops.SendDataResponse(result_desc="OK", msg_id=1000123),
                                  "s3cretPW")
    assert c14n(response) == c14n(RESPONSE_81)


# --- digest details ----------------------------------------------------------------------


def test_list_paths_carry_indices_and_sort_bytewise() -> None:
    items = [ops.TlvItem(tag=i, value=b"") for i in range(11)]
    element = soap.to_element(ops.GetConfigResponse(msg_id=1, items=items, failed_tags=[7]))
    bs = soap_canonical_body(element)
    paths = [pair.split("=", 1)[0] for pair in bs.split("&")]
    assert "failedTags[0]" in paths and "items[0].value" in paths
    assert paths.index("items[10].tag") < paths.index("items[2].tag")
    assert "items[0].value=" in bs.split("&")  # empty element → empty value


def test_nested_choice_paths() -> None:
    fetched = next(r for r in responses() if isinstance(r, ops.FetchMessagesResponse))
    bs = soap_canonical_body(soap.to_element(fetched))
    assert "messages[0].DeliverData.data=AQI=" in bs.split("&")
    assert "messages[0].createTime=2025-01-01T04:00:00Z" in bs.split("&")
    alarm = next(r for r in requests() if isinstance(r, ops.NotifyAlarm))
    assert "alarm.code=258" in soap_canonical_body(soap.to_element(alarm)).split("&")


def test_empty_operation_and_absent_session() -> None:
    assert soap_canonical_body(soap.to_element(ops.Heartbeat())) == ""
    assert soap_canonical_header(["1.0", "Heartbeat", "A", "1", "t", None, "32"]) == \
        "1.0|Heartbeat|A|1|t||32"


def test_digest_mismatch_and_timestamp_window() -> None:
    env = soap.parse_envelope(REQUEST_81)
    with pytest.raises(soap.AuthFailed) as info:
        env.verify("other")
    assert info.value.result == 1 and info.value.faultstring == "m2m:AuthFailed digest mismatch"
    with pytest.raises(soap.AuthFailed):
        env.verify("s3cretPW", now=NOW + 301)
    env.verify("s3cretPW", now=NOW - 300)
    with pytest.raises(DigestError):
        check_timestamp("2025010112000x", NOW)


def test_tampered_value_fails_digest() -> None:
    tampered = REQUEST_81.replace(b"AQIDBA==", b"AQIDBQ==")
    with pytest.raises(soap.AuthFailed):
        soap.parse_envelope(tampered).verify("s3cretPW")


def test_replay_cache_window() -> None:
    cache = ReplayCache(window=600, max_entries=2)
    key = ReplayKey("EC0001", "SendData", 42, "d")
    cache.put(key, b"resp", 0.0)
    assert cache.get(key, 600.0) == b"resp"
    assert cache.get(key._replace(digest="e"), 1.0) is None
    assert cache.get(key, 600.5) is None
    for i in range(3):
        cache.put(key._replace(seq_id=i), b"x", 700.0)
    assert len(cache) == 2


# --- every operation through the schema ------------------------------------------------------


@pytest.mark.parametrize("payload", requests() + responses(), ids=lambda p: type(p).__name__)
def test_every_operation_round_trips_through_the_schema(payload: object) -> None:
    is_response = type(payload).__name__.endswith("Response")
    raw = soap.build_message(header(), payload, "pw")
    env = soap.parse_envelope(raw, responses=is_response)
    env.verify("pw")
    assert env.header.msg_type == type(payload).__name__
    assert env.payload() == payload


@pytest.mark.parametrize("profile", ["legacy", "aes"])
def test_encrypted_body_round_trip(profile: str) -> None:
    cipher = keys.session_cipher(profile, bytes(range(16)))
    raw = soap.build_message(header(session_id="s1"), SEND_DATA_81, "pw", cipher=cipher)
    assert b"AQIDBA==" not in raw
    env = soap.parse_envelope(raw, soap_action=ACTION)
    assert env.encrypted and env.header.sec_flags == 48
    env.verify("pw")
    assert soap_canonical_body(env.body).startswith("encryptedBody=")
    assert env.payload(cipher) == SEND_DATA_81
    with pytest.raises(soap.BadMessage, match=r"decrypted|without"):
        env.payload(None)
    with pytest.raises(soap.BadMessage):
        env.payload(keys.session_cipher(profile, bytes(16)))


def test_encrypted_body_must_be_the_same_element() -> None:
    cipher = keys.session_cipher("aes", bytes(16))
    inner = etree.tostring(soap.to_element(ops.Heartbeat()))
    body = soap.to_element(ops.Logout())
    body.clear()
    etree.SubElement(body, f"{{{NS}}}encryptedBody").text = keys.encrypt_xml(cipher, inner)
    env = soap.parse_envelope(_wrap(body, session="s", flags=48))
    with pytest.raises(soap.BadMessage, match="expected element"):
        env.payload(cipher)


def _wrap(body: etree._Element, *, session: str | None = None, flags: int = 32,
          msg_type: str | None = None) -> bytes:
    h = header(msg_type=msg_type or etree.QName(body).localname, session_id=session,
               sec_flags=flags, digest="0" * 32)
    env = etree.Element(f"{{{soap.SOAP_ENV}}}Envelope", nsmap={"soapenv": soap.SOAP_ENV})
    etree.SubElement(env, f"{{{soap.SOAP_ENV}}}Header").append(h.to_element())
    etree.SubElement(env, f"{{{soap.SOAP_ENV}}}Body").append(body)
    return etree.tostring(env)


# --- hostile and malformed input -------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">
<soapenv:Body><x>&lol4;</x></soapenv:Body></soapenv:Envelope>"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">
<soapenv:Body><x>&xxe;</x></soapenv:Body></soapenv:Envelope>"""


@pytest.mark.parametrize("data", [
    BILLION_LAUGHS,
    XXE,
    REQUEST_81.replace(b"<soapenv:Envelope", b'<!DOCTYPE x SYSTEM "http://evil/x.dtd">'
                       b"<soapenv:Envelope", 1),
    BILLION_LAUGHS.decode().replace('"?>', '" encoding="UTF-16"?>', 1).encode("utf-16"),
    REQUEST_81.replace(b"order-7781", b"&undefined;"),
    b"<not-closed>",
    b"",
    b"\xff\xfe\x00garbage",
    REQUEST_81[:-30],
], ids=["billion-laughs", "xxe", "external-dtd", "utf16-doctype", "undefined-entity",
        "not-well-formed", "empty", "garbage", "truncated"])
def test_hostile_xml_is_bad_message(data: bytes) -> None:
    with pytest.raises(soap.BadMessage) as info:
        soap.parse_envelope(data)
    assert info.value.result == 8 and info.value.faultcode == "Client"


def test_oversize_request() -> None:
    with pytest.raises(soap.RequestTooLarge) as info:
        soap.parse_envelope(REQUEST_81, max_size=len(REQUEST_81) - 1)
    assert info.value.http_status == 413
    soap.parse_envelope(REQUEST_81, max_size=len(REQUEST_81))


@pytest.mark.parametrize(("data", "match"), [
    (REQUEST_81.replace(b'xmlns:m2m="urn:gbz41383:m2m:app:1"', b'xmlns:m2m="urn:other"'),
     "namespace"),
    (REQUEST_81.replace(b"m2m:SendData>", b"m2m:SendDatum>"), "unknown operation"),
    (REQUEST_81.replace(b"<m2m:MsgHeader>", b"<m2m:Other>")
     .replace(b"</m2m:MsgHeader>", b"</m2m:Other>"), "MsgHeader"),
    (REQUEST_81.replace(b"<m2m:msgType>SendData<", b"<m2m:msgType>SendCommand<"), "msgType"),
    (REQUEST_81.replace(b"A972030000001234", b"A97203"), "schema"),
    (REQUEST_81.replace(b">true<", b">yes<"), "schema"),
    (REQUEST_81.replace(b"<m2m:seqId>42", b"<m2m:seqId>-1"), "schema"),
    (REQUEST_81.replace(b"<m2m:data>AQIDBA==</m2m:data>", b""), "schema"),
    (REQUEST_81.replace(b"<m2m:bizSeq>", b"<m2m:extra>1</m2m:extra><m2m:bizSeq>"), "schema"),
    (REQUEST_81.replace(b">32<", b">48<"), "secFlags"),
    (REQUEST_81.replace(b"soapenv:Envelope", b"soapenv:Envelopf"), "Envelope"),
])
def test_malformed_requests_are_bad_message(data: bytes, match: str) -> None:
    with pytest.raises(soap.BadMessage, match=match) as info:
        soap.parse_envelope(data, service="platform")
    assert info.value.result == 8


def test_soap_action_and_service_checks() -> None:
    with pytest.raises(soap.BadMessage, match="SOAPAction"):
        soap.parse_envelope(REQUEST_81, soap_action='"urn:gbz41383:m2m:app:1#SendCommand"')
    with pytest.raises(soap.BadMessage, match="unknown operation"):
        soap.parse_envelope(REQUEST_81, service="notify")
    with pytest.raises(soap.BadMessage, match="unknown operation"):
        soap.parse_envelope(RESPONSE_81)  # a response where a request is expected
    assert soap.soap_action("SendData") == ACTION


# --- faults (4.5) -----------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "code", "text", "result"), [
    (soap.BadMessage("unknown operation"), "soapenv:Client", "m2m:BadMessage unknown operation",
     "8"),
    (soap.AuthFailed("digest mismatch"), "soapenv:Client", "m2m:AuthFailed digest mismatch", "1"),
    (soap.AuthFailed("unknown appId", 2), "soapenv:Client", "m2m:AuthFailed unknown appId", "2"),
    (soap.ServerFault("boom"), "soapenv:Server", "boom", "99"),
])
def test_fault_envelopes(fault: soap.SoapFault, code: str, text: str, result: str) -> None:
    root = etree.fromstring(soap.build_fault(fault))
    node = root.find(f"{{{soap.SOAP_ENV}}}Body/{{{soap.SOAP_ENV}}}Fault")
    assert root.find(f"{{{soap.SOAP_ENV}}}Header") is None
    assert node.findtext("faultcode") == code and node.findtext("faultstring") == text
    assert node.findtext(f"detail/{{{NS}}}resultCode") == result
    assert fault.http_status == 500
    with pytest.raises(soap.RemoteFault) as info:
        soap.parse_envelope(soap.build_fault(fault), responses=True)
    assert info.value.result == int(result) and info.value.reason == text


def test_value_formatting() -> None:
    item = ops.NotificationItem(create_time=T0, notification=ops.NotifyTerminalState(
        notify_id=1, terminal_id=TID, event="OFFLINE", time=T0))
    text = etree.tostring(soap.to_element(ops.FetchMessagesResponse(messages=[item])))
    assert b"<m2m:createTime>2025-01-01T04:00:00Z</m2m:createTime>" in text
    element = soap.to_element(ops.SendData(terminal_id=TID, data=bytes(100)))
    data = element.find(f"{{{NS}}}data").text
    assert "\n" not in data and base64.b64decode(data) == bytes(100)
    assert ops.parse_datetime("2025-01-01T12:00:00+08:00") == T0
    assert ops.format_soap_timestamp(T0) == "20250101120000"


def test_payload_rejects_unknown_child_even_if_schema_skipped() -> None:
    element = soap.to_element(ops.Logout())
    etree.SubElement(element, f"{{{NS}}}surprise").text = "1"
    with pytest.raises(soap.BadMessage):
        soap.from_element(element, ops.Logout)
    missing = soap.to_element(dataclasses.replace(SEND_DATA_81))
    missing.remove(missing.find(f"{{{NS}}}data"))
    with pytest.raises(soap.BadMessage, match="incomplete"):
        soap.from_element(missing, ops.SendData)

"""Pure request builders: exact bodies, the refusals of spec 4.8-4.16, JSON views."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2mgw.core import requests as rq
from m2mgw.core.model import CredentialSet, FileTransaction, Request, TerminalState
from m2mgw.protocol import messages as m
from m2mgw.protocol.checksum import crc16
from m2mgw.protocol.constants import Command
from m2mgw.protocol.security import NEVER
from m2mgw.web import views

CREDS = {"uplink_password": "Up123456", "downlink_password": "Dn654321",
         "base_key": "0123456789ABCDEF"}


def body(built: tuple[int, bytes]) -> str:
    return built[1].hex().upper()


# --- CONFIG_GET ----------------------------------------------------------------------


def test_config_get_accepts_ints_hex_and_names_once_each() -> None:
    built = rq.config_get({"tags": [0x0011, "0x0002", "m2mapn", "PERIOD_CFG", "0x8001"]})
    assert built[0] == Command.CONFIG_GET
    assert body(built) == "00110000" "00020000" "80010000"


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ({"tags": ["0xE025"]}, "security tag"),
        ({"tags": [0xE012]}, "security tag"),
        ({"tags": [0x5000]}, "unknown"),
        ({"tags": []}, "non-empty"),
        ({"tags": "0x0011"}, "non-empty list"),
        ({}, "'tags' is required"),
        ({"tags": [True]}, "unknown tag"),
        ({"tags": ["17"]}, "unknown tag"),
        ({"tags": [0x10000]}, "16-bit"),
        ({"tags": [17], "tag": [1]}, "unknown parameter(s) tag"),
    ],
)
def test_config_get_refusals(params: dict[str, Any], text: str) -> None:
    with pytest.raises(rq.RequestError, match=text.replace("(", r"\(").replace(")", r"\)")):
        rq.config_get(params)


# --- CONFIG_SET ----------------------------------------------------------------------


def test_config_set_typed_values_with_spec_widths() -> None:
    built = rq.config_set({"values": {
        "0x0011": 60,                   # PERIOD_CFG u32
        "M2MAPN": "CMNET",              # str(19)
        "TLVSYNCTAGVALUE": [2, 0x11],   # u16[]
        "PERIOD_CTRL": 90,              # u16 (PD-22: exact width)
        "0x8001": {"hex": "a1b2"},      # vendor: raw only
        "0x000A": {"hex": "14731474"},  # raw for a known tag, length checked
    }})
    assert built[0] == Command.CONFIG_SET
    assert body(built) == (
        "00110004" "0000003C" "00020005" "434D4E4554" "00250004" "00020011"
        "40040002" "005A" "80010002" "A1B2" "000A0004" "14731474"
    )


def test_config_set_platform_option_appends_4009_zero() -> None:
    assert body(rq.config_set({"values": {"0x0011": 1}}, platform_option=True)).endswith(
        "4009000100"
    )


@pytest.mark.parametrize(
    ("values", "text"),
    [
        ({"0xE025": "12345678"}, "security tag"),
        ({"BINDPARAACTIVE": 1}, "security tag"),
        ({"0x3001": "03"}, "read-only"),
        ({"0x3002": "A972030000000001"}, "read-only"),
        ({"IMSINUM": "460001234567890"}, "read-only"),
        ({"FIRMWAREREV": "1.0"}, "read-only"),
        ({"0x4009": 0}, "per-terminal option"),
        ({"0x4008": {"hex": "00010001000100"}}, "not a configuration value"),
        ({"0x4011": {"hex": ""}}, "not a configuration value"),
        ({"0x5001": {"hex": "00"}}, "unknown"),
        ({"M2MAPN": "x" * 20}, "at most 19"),
        ({"M2MAPN": 5}, "ASCII string"),
        ({"M2MAPN": "CMNÉT"}, "ASCII string"),
        ({"0x0011": "60"}, "integer"),
        ({"0x0011": True}, "integer"),
        ({"MAXLOGINRETRYTIMES": 256}, "bad value"),
        ({"0x0011": -1}, "bad value"),
        ({"0x0011": {"hex": "000001"}}, "do not fit"),
        ({"0x0011": {"hex": "zz"}}, "not valid hex"),
        ({"0x0011": {"raw": "00"}}, "raw value"),
        ({"0x8001": 5}, "vendor tag needs a raw value"),
        ({"0x0025": "0002"}, "expected a list"),
        ({}, "non-empty object"),
    ],
)
def test_config_set_refusals(values: dict[str, Any], text: str) -> None:
    with pytest.raises(rq.RequestError, match=text):
        rq.config_set({"values": values})


# --- REMOTE_CTRL, SECURITY_CONFIG ------------------------------------------------------


def test_remote_ctrl_code_and_params() -> None:
    assert body(rq.remote_ctrl({"code": 4})) == "40010001" "04"
    built = rq.remote_ctrl({"code": 0x0D, "params": [
        {"tag": "0x4021", "hex": "0102"}, {"tag": 0x9000, "value": {"hex": "FF"}},
    ]})
    assert body(built) == "40010001" "0D" "40210002" "0102" "90000001" "FF"


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ({"code": 0x0E}, "3.6.1"),
        ({"code": 256}, "0-255"),
        ({"code": True}, "integer"),
        ({"code": 1, "params": [{"tag": "0x0011", "value": 1}]}, "not 0x4021 or vendor"),
        ({"code": 1, "params": [{"hex": "00"}]}, "each param"),
        ({"code": 1, "params": [{"tag": 0x4021, "hex": "00", "x": 1}]}, "each param"),
    ],
)
def test_remote_ctrl_refusals(params: dict[str, Any], text: str) -> None:
    with pytest.raises(rq.RequestError, match=text):
        rq.remote_ctrl(params)


def test_security_config_reads_only() -> None:
    built = rq.security_config({"op": 2, "tags": ["UPLINKPASSWORD", "0xE036"]})
    assert (built[0], body(built)) == (Command.SECURITY_CONFIG, "02" "E0250000" "E0360000")
    assert body(rq.security_config({"op": 1, "tags": [0xE001]})) == "01E0010000"
    for params, text in [
        ({"op": 0, "tags": ["0xE025"]}, "op 0 is not allowed"),
        ({"op": 6, "tags": ["0xE025"]}, "op 6 is not allowed"),
        ({"op": 2, "tags": ["0x0011"]}, "not a security tag"),
        ({"op": 2, "tags": ["0xE0FF"]}, "not a security tag"),
    ]:
        with pytest.raises(rq.RequestError, match=text):
            rq.security_config(params)


# --- transparent data and commands -----------------------------------------------------


def test_transparent_data_carries_crc_and_source_ec() -> None:
    built = rq.transparent_data({"data": "01020304", "source_ec": "EC0001"})
    assert built[0] == Command.TRANSPARENT_DATA
    # As example 11.5, with the platform's source tag 0x4015 for the destination 0x4014.
    assert body(built) == "2BA1" "40150006" "454330303031" "40070004" "01020304"
    assert crc16(bytes.fromhex("01020304")) == 0x2BA1


def test_transparent_cmd_order_of_tlvs() -> None:
    built = rq.transparent_cmd({"fixed": "AA", "data": "0102", "source_ec": "APP"})
    msg = m.TransparentCmd.decode_body(built[1])
    assert [t.tag for t in msg.tlvs] == [0x4015, 0x4016, 0x4007]
    assert (msg.source, msg.fixed_part, msg.user_data) == (("application", "APP"), b"\xaa",
                                                             b"\x01\x02")


@pytest.mark.parametrize(
    ("builder", "params", "text"),
    [
        (rq.transparent_data, {"data": "0102"}, "source_ec"),
        (rq.transparent_data, {"data": "xyz", "source_ec": "A"}, "not valid hex"),
        (rq.transparent_data, {"data": "00", "source_ec": "E" * 17}, "1-16"),
        (rq.transparent_data, {"data": "00", "source_ec": "E C"}, "1-16"),
        (rq.transparent_cmd, {"fixed": "00", "source_ec": "A"}, "'data' is required"),
    ],
)
def test_transparent_refusals(builder: Any, params: dict[str, Any], text: str) -> None:
    with pytest.raises(rq.RequestError, match=text):
        builder(params)


def test_build_dispatches_case_insensitively() -> None:
    assert rq.build("config_get", {"tags": [17]}) == rq.config_get({"tags": [17]})
    with pytest.raises(rq.RequestError, match="unknown command"):
        rq.build("LOGIN", {})


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12,
)
KEYS = st.sampled_from(["tags", "values", "code", "params", "op", "data", "fixed", "source_ec"])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(rq.BUILDERS)), st.dictionaries(KEYS, JSON, max_size=3))
def test_any_json_gives_a_body_or_request_error(command: str, params: dict[str, Any]) -> None:
    try:
        command_id, built = rq.build(command, params)
    except rq.RequestError:
        return
    assert m.decode_message(command_id, built).encode_body() == built


# --- DOWNLOAD_INFO ------------------------------------------------------------------


def make_tx(**kw: Any) -> FileTransaction:
    values: dict[str, Any] = {
        "trans_id": 0x2A, "serial": "A972030000001234", "token": "3F9A0C27D1E4B856",
        "path": "/srv/files/3F9A0C27D1E4B856", "name": "fw-2.0.bin", "version": "2.0",
        "size": 65536, "crc16": 0x1D0F, "crc32": 0x0A1B2C3D, "created_at": 0.0,
        "expires_at": 604800.0,
    }
    values.update(kw)
    return FileTransaction(**values)


def test_download_url_is_the_spec_example() -> None:
    assert rq.download_url(make_tx(), "http://192.0.2.10:8080/") == (
        "http://192.0.2.10:8080/wmmp/files/3F9A0C27D1E4B856/fw-2.0.bin?TRANS_ID=0000002A"
        "&FILE_SIZE=65536&CRC16=1D0F&CRC32=0A1B2C3D&VER_DSC=2.0"
    )


def test_download_info_body_and_force_flag() -> None:
    tx = make_tx(version="2.0 beta", name="a b.bin")
    command_id, plain = rq.download_info(tx, "http://h")
    msg = m.DownloadInfo.decode_body(plain)
    assert command_id == Command.DOWNLOAD_INFO
    assert msg.url == (
        "http://h/wmmp/files/3F9A0C27D1E4B856/a%20b.bin?TRANS_ID=0000002A&FILE_SIZE=65536"
        "&CRC16=1D0F&CRC32=0A1B2C3D&VER_DSC=2.0%20beta"
    )
    assert [t.tag for t in msg.tlvs] == [0x1001]
    forced = rq.download_info(tx, "http://h", force=True)[1]
    assert forced == plain + bytes.fromhex("100B000101")


def test_download_url_refuses_more_than_200_characters() -> None:
    with pytest.raises(rq.RequestError, match="at most 200"):
        rq.download_url(make_tx(name="n" * 120), "http://192.0.2.10:8080")
    for version in ("", "v" * 20, "2.0\n"):
        with pytest.raises(rq.RequestError, match="version"):
            rq.check_version(version)


# --- JSON views and provisioning ---------------------------------------------------------


def test_describe_request() -> None:
    request = Request(id=7, serial="S", command=Command.CONFIG_GET, body=b"\x00\x11\x00\x00",
                      created_at=1.0, expires_at=2.0, origin="admin", answer_body=b"\x00")
    view = views.describe_request(request)
    assert view["command"] == "CONFIG_GET"
    assert (view["id"], view["state"], view["body"], view["answer"]) == (7, "queued",
                                                                       "00110000", "00")
    assert set(view) >= {"sequence_id", "attempts", "result", "outcome", "origin", "msg_id",
                         "created_at", "updated_at", "expires_at"}


def test_describe_config_types_values_and_hides_security_tags() -> None:
    view = views.describe_config({
        0x0011: b"\x00\x00\x00\x3c", 0x0002: b"CMNET", 0x0025: b"\x00\x02\x00\x11",
        0xE001: b"1234", 0x8001: b"\xff", 0x0009: b"\x01",
    })
    assert view["PERIOD_CFG"] == {"tag": "0x0011", "hex": "0000003C", "value": 60}
    assert view["M2MAPN"]["value"] == "CMNET"
    assert view["TLVSYNCTAGVALUE"]["value"] == [2, 0x11]
    assert view["SIMPIN1"] == {"tag": "0xE001", "redacted": True}
    assert view["VENDOR_8001"] == {"tag": "0x8001", "hex": "FF", "value": None}
    assert view["M2MIPADDR"]["value"] == 1  # lenient 1-byte integer (PD-22)


def test_terminal_from_json_preset_and_unregistered() -> None:
    terminal = rq.terminal_from_json(
        {"imei": "860000000000001", "imsi": "460001234567890", "serial": "A972030000000001",
         "cipher": "aes", "default_app": "EC01", "msisdn": "013800138000", **CREDS},
        expiry=NEVER,
    )
    assert terminal.state == TerminalState.REGISTERED
    assert terminal.current == CredentialSet(
        uplink_password="Up123456", uplink_expiry=NEVER, downlink_password="Dn654321",
        downlink_expiry=NEVER, base_key="0123456789ABCDEF", base_key_expiry=NEVER,
    )
    assert (terminal.apps, terminal.default_app) == ({"EC01"}, "EC01")
    view = views.describe_provisioned(terminal)
    assert (view["base_key"], view["uplink_expiry"], view["state"]) == (
        "0123456789ABCDEF", NEVER, "REGISTERED")
    listed = views.describe_terminal(terminal, detail=True)
    assert not {"uplink_password", "downlink_password", "base_key"} & set(listed)
    assert "Up123456" not in repr(listed)
    plain = rq.terminal_from_json({"imei": "860000000000002"}, expiry=NEVER)
    assert (plain.state, plain.serial, plain.current) == (TerminalState.UNREGISTERED, None, None)


@pytest.mark.parametrize(
    ("params", "text"),
    [
        ({"imei": "86000000000000"}, "15 decimal digits"),
        ({"imei": "86000000000000١"}, "15 decimal digits"),
        ({"imei": "860000000000001", "imsi": "46000123456789X"}, "imsi"),
        ({"imei": "860000000000001", "uplink_password": "Up123456"}, "together"),
        ({"imei": "860000000000001", "serial": "A972030000000001", **CREDS}, "together"),
        ({"imei": "860000000000001", "imsi": "460001234567890", "serial": "A97203000000001",
          **CREDS}, "16 printable"),
        ({"imei": "860000000000001", "imsi": "460001234567890", "serial": "A972030000000001",
          **CREDS, "uplink_password": "short"}, "exactly 8"),
        ({"imei": "860000000000001", "imsi": "460001234567890", "serial": "A972030000000001",
          "cipher": "legacy", **CREDS, "base_key": "k" * 20}, "24 or 16"),
        ({"imei": "860000000000001", "cipher": "rot13"}, "cipher"),
        ({"imei": "860000000000001", "require_encryption": True}, "require_encryption"),
        ({"imei": "860000000000001", "msisdn": "phone"}, "msisdn"),
        ({"imei": "860000000000001", "apps": "EC01"}, "apps"),
        ({"imei": "860000000000001", "sms_wakeup": "yes"}, "true or false"),
        ({"imei": "860000000000001", "password": "x"}, "unknown parameter"),
    ],
)
def test_terminal_from_json_refusals(params: dict[str, Any], text: str) -> None:
    with pytest.raises(rq.RequestError, match=text):
        rq.terminal_from_json(params, expiry=NEVER)


def test_generated_credentials_follow_pd39() -> None:
    for cipher, key_length in (("aes", 16), ("legacy", 24), ("none", 24)):
        creds = rq.generate_credentials(cipher)
        assert [len(creds[k]) for k in rq.CREDENTIAL_FIELDS] == [8, 8, key_length]
        assert all(v.isascii() and v.isalnum() for v in creds.values())
    assert rq.credential_expiry(1000.0, None) == NEVER
    assert rq.credential_expiry(1000.0, 60.0) == 1060



def test_a_request_view_names_its_result_code() -> None:
    def view(result: int | None) -> dict[str, Any]:
        request = Request(serial="A972030000001234", command=Command.CONFIG_SET, body=b"",
                          state="failed", created_at=0, expires_at=1, origin="admin",
                          result=result)  # fmt: skip
        return views.describe_request(request)

    assert (view(1)["result"], view(1)["result_label"]) == (1, "1 (ERROR)")
    assert view(None)["result_label"] is None

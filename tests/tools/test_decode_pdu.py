"""``m2mgw-decode --pdu`` on the spec's SMS examples 11.7 (SMS-DELIVER) and 11.8 (SUBMIT),
plus the dreamfabric.com text-SMS example and the error paths."""

from __future__ import annotations

import json
from typing import Any

import pytest

from m2mgw.sms.bearer import wmmp_submit_pdus
from m2mgw.tools.decode import main
from tests.sms.test_pdu import DREAMFABRIC_DELIVER
from tests.spec_examples import SMS_DELIVER_11_7, SMS_SUBMIT_11_8, VECTORS
from tests.tools.test_decode import run_json


def decode_json(capsys: pytest.CaptureFixture[str], data: bytes, *argv: str) -> dict[str, Any]:
    return run_json(capsys, "--pdu", data.hex(), *argv)


def test_11_7_deliver_and_its_security_config(capsys: pytest.CaptureFixture[str]) -> None:
    info = decode_json(capsys, SMS_DELIVER_11_7)
    assert info["sms"] == {
        "type": "SMS-DELIVER",
        "smsc_prefix": False,
        "smsc": None,
        "originator": "1065840436",
        "toa": 0xA1,
        "pid": 0x21,
        "dcs": 0x04,
        "scts": "2009-11-30T17:13:08+08:00",
        "udh": {"dest_port": 0, "orig_port": 49154, "port_bits": 16, "other": []},
        "concat_ref": 4,
        "concat_total": 1,
        "concat_seq": 1,
        "user_data_length": len(VECTORS["11.7 SECURITY_CONFIG"]),
    }
    assert info["command"] == "SECURITY_CONFIG"
    assert info["header"]["serial"] == "ASM7000722222222"
    assert info["header"]["security_flag"] == 0x80
    assert info["fields"] == {"op": 0}
    assert [(t["tag"], t["value"]) for t in info["tlvs"]][:2] == [
        (0xE025, "12345678"),
        (0xE027, 0xAAAAAAAA),
    ]
    assert info["digest"] is None
    assert info["warnings"] == []


def test_11_8_submit_with_and_without_smsc_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    bare = decode_json(capsys, SMS_SUBMIT_11_8)
    prefixed = decode_json(capsys, b"\x00" + SMS_SUBMIT_11_8)  # as handed to AT+CMGS
    assert (bare["sms"]["smsc_prefix"], prefixed["sms"]["smsc_prefix"]) == (False, True)
    prefixed["sms"]["smsc_prefix"] = False
    assert prefixed == bare
    sms = bare["sms"]
    assert (sms["type"], sms["destination"], sms["toa"]) == ("SMS-SUBMIT", "8613900000001", 0x91)
    assert (sms["reference"], sms["validity"], sms["dcs"]) == (0, 0xFF, 0x04)
    assert sms["udh"]["dest_port"] == 2862 and sms["udh"]["orig_port"] == 49154
    assert (sms["concat_ref"], sms["concat_total"], sms["concat_seq"]) == (1, 1, 1)
    assert bare["command"] == "REMOTE_CTRL"
    assert bare["header"]["sequence_id"] == 17
    assert bare["tlvs"][0]["tag"] == 0x4001 and bare["tlvs"][0]["value"] == 3


def test_forced_prefix_reading_is_honoured(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--pdu", "--smsc-prefix", "yes", SMS_SUBMIT_11_8.hex()]) == 2
    assert "not an SMS PDU" in capsys.readouterr().err


def test_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--pdu", SMS_SUBMIT_11_8.hex()]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("sms:      SMS-SUBMIT to 8613900000001 (toa 0x91)")
    assert out[1] == "udh:      ports 2862 <- 49154 concatenation ref=1 part 1/1"
    assert out[2].startswith("header:   length=33 command=REMOTE_CTRL")


def test_text_sms_is_shown_not_decoded(capsys: pytest.CaptureFixture[str]) -> None:
    info = decode_json(capsys, DREAMFABRIC_DELIVER)
    assert "header" not in info
    assert info["sms"]["text"] == "hellohello"
    assert info["sms"]["smsc"] == "27381000015"


def test_segment_of_a_longer_message(capsys: pytest.CaptureFixture[str]) -> None:
    first, _second = wmmp_submit_pdus(VECTORS["11.8 REMOTE_CTRL"] * 5, "13900000001", reference=7)
    info = decode_json(capsys, first)
    assert "header" not in info
    sms = info["sms"]
    assert (sms["concat_ref"], sms["concat_seq"], sms["concat_total"]) == (7, 1, 2)
    assert sms["user_data"] == (VECTORS["11.8 REMOTE_CTRL"] * 5)[:128].hex().upper()
    assert "needs every segment" in info["warnings"][0]


@pytest.mark.parametrize("hex_text", ["FF00", "51000D91683109000000F10004FF2D0B05040B2EC0020003"])
def test_garbage_is_an_error(capsys: pytest.CaptureFixture[str], hex_text: str) -> None:
    assert main(["--pdu", hex_text]) == 2
    err = capsys.readouterr().err
    assert err.startswith("m2mgw-decode: error: ") and len(err.splitlines()) == 1


def test_json_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--pdu", "--json", SMS_DELIVER_11_7.hex()]) == 0
    assert json.loads(capsys.readouterr().out)["sms"]["originator"] == "1065840436"

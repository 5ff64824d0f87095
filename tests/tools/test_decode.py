"""The ``m2mgw-decode`` tool on the spec 11 vectors: text, JSON, digest check, errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from m2mgw.tools.decode import describe, main
from tests.spec_examples import (
    DOWNLINK_PASSWORD,
    IMEI,
    IMSI,
    SERIAL,
    SESSION_KEY,
    TS_11_3,
    TS_11_9,
    UPLINK_PASSWORD,
    VECTORS,
)

UPLINK_ARGS = ["--imei", IMEI, "--imsi", IMSI, "--password", UPLINK_PASSWORD]
DOWNLINK_ARGS = ["--imei", IMEI, "--imsi", IMSI, "--password", DOWNLINK_PASSWORD]


def _hex(name: str) -> str:
    return VECTORS[name].hex()


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["--json", *argv]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert len(out.splitlines()) == 1  # one JSON object
    return json.loads(out)


def test_json_login_11_2(capsys: pytest.CaptureFixture[str]) -> None:
    info = run_json(capsys, _hex("11.2 LOGIN"))
    assert info["header"] == {
        "length": 60,
        "command_id": 1,
        "sequence_id": 1,
        "version": 0x0300,
        "security_flag": 0xA0,
        "flag_bits": ["AUTH", "DIGEST"],
        "reserved": 0,
        "serial": SERIAL,
    }
    assert info["command"] == "LOGIN"
    assert info["fields"] == {"software_version": "1.01", "sync_crc": 0xABFED4CF}
    assert info["tlvs"] == []
    assert info["digest"] == "D38359452DA7F6D53965EECA90F8A2C4"
    assert info["digest_ok"] is None  # no credentials


def test_json_tlvs_typed_and_hex(capsys: pytest.CaptureFixture[str]) -> None:
    info = run_json(capsys, _hex("11.7 SECURITY_CONFIG"))
    assert info["command"] == "SECURITY_CONFIG"
    assert info["fields"] == {"op": 0}
    assert info["tlvs"][:2] == [
        {"tag": 0xE025, "name": "UPLINKPASSWORD", "length": 8, "value": "12345678"},
        {"tag": 0xE027, "name": "UPLINKPASSWORDEXPDATE", "length": 4, "value": 0xAAAAAAAA},
    ]
    info = run_json(capsys, _hex("11.5 TRANSPARENT_DATA"))
    assert info["fields"] == {"crc16": 0x2BA1}
    assert [(t["name"], t["value"]) for t in info["tlvs"]] == [
        ("DESECCODE", "EC0001"),
        ("USERDATAID", "01020304"),
    ]


@pytest.mark.parametrize(
    ("name", "credentials", "timestamp"),
    [
        ("11.2 LOGIN", UPLINK_ARGS, None),  # LOGIN: timestamp 0 by rule
        ("11.3 LOGIN_ACK", DOWNLINK_ARGS, None),  # its own timestamp by rule
        ("11.5 TRANSPARENT_DATA", UPLINK_ARGS, TS_11_3),
        ("11.5 TRANSPARENT_DATA_ACK", DOWNLINK_ARGS, TS_11_3),
        ("11.6 CONFIG_TRAP part 1", UPLINK_ARGS, TS_11_3),
        ("11.9 LOGIN_ACK", DOWNLINK_ARGS, None),
    ],
)
def test_digest_ok_true_and_false(
    capsys: pytest.CaptureFixture[str], name: str, credentials: list[str], timestamp: int | None
) -> None:
    ts = [] if timestamp is None else ["--timestamp", hex(timestamp)]
    info = run_json(capsys, *credentials, *ts, _hex(name))
    assert info["digest_ok"] is True
    wrong = [*credentials[:-1], "00000000"]
    assert run_json(capsys, *wrong, *ts, _hex(name))["digest_ok"] is False


def test_role_names_the_expected_password(capsys: pytest.CaptureFixture[str]) -> None:
    info = run_json(capsys, *UPLINK_ARGS, _hex("11.2 LOGIN"))
    assert info["digest_check"]["sender"] == "terminal"
    assert info["digest_check"]["password"] == "uplink"
    assert info["digest_check"]["role_given"] is False
    info = run_json(capsys, "--role", "platform", *DOWNLINK_ARGS, _hex("11.3 LOGIN_ACK"))
    assert info["digest_check"] == {
        "sender": "platform",
        "role_given": True,
        "password": "downlink",
        "timestamp": TS_11_3,
    }
    assert main(["--role", "platform", *DOWNLINK_ARGS, _hex("11.3 LOGIN_ACK")]) == 0
    text = capsys.readouterr().out
    assert "verifies with the downlink password (sent by the platform, given" in text


def test_fragment_shown(capsys: pytest.CaptureFixture[str]) -> None:
    info = run_json(capsys, _hex("11.6 CONFIG_TRAP_ACK next part"))
    assert info["command"] == "CONFIG_TRAP_ACK"
    assert info["fragment"] == {
        "trans_id": 1,
        "total": 2,
        "part": 2,
        "op": 1,
        "op_name": "NEXT",
        "chunk_length": 0,
        "chunk": "",
    }
    assert info["fields"] == {}
    part1 = run_json(capsys, _hex("11.6 CONFIG_TRAP part 1"))["fragment"]
    assert (part1["part"], part1["op"], part1["chunk_length"]) == (1, 0, 900)


def test_encrypted_body_with_and_without_session_key(capsys: pytest.CaptureFixture[str]) -> None:
    raw = _hex("11.10 TRANSPARENT_DATA legacy")
    info = run_json(capsys, raw)
    assert info["encrypted"] == {"decrypted": False}
    assert [t["name"] for t in info["tlvs"]] == ["CONVSINGLEENCRYPTBODY"]
    assert info["warnings"]
    info = run_json(
        capsys, "--session-key", SESSION_KEY, *UPLINK_ARGS, "--timestamp", str(TS_11_9), raw
    )
    assert info["encrypted"]["decrypted"] is True
    assert info["encrypted"]["cipher"] == "legacy"
    assert info["fields"] == {"crc16": 0x2BA1}
    assert [t["value"] for t in info["tlvs"]] == ["EC0001", "01020304"]
    assert info["digest_ok"] is True


def test_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*UPLINK_ARGS, _hex("11.9 LOGIN")]) == 0
    out = capsys.readouterr().out
    assert "command=LOGIN (0x0001)" in out
    assert "serial=A972030000001234" in out
    assert "E03A ENCRYPTIONKEYMD5 [16] = 'CBC098D8C6D343AC5F4123A9E963C7A7'" in out
    assert "software_version = '1.01'" in out
    assert "digest verifies with the uplink password" in out


def test_whitespace_and_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spaced = " ".join(f"{b:02x}" for b in VECTORS["11.4 HEART_BEAT"])
    assert run_json(capsys, spaced)["command"] == "HEART_BEAT"
    monkeypatch.setattr(
        sys,
        "stdin",
        io.StringIO(_hex("11.8 REMOTE_CTRL")[:20] + "\n  " + _hex("11.8 REMOTE_CTRL")[20:]),
    )
    info = run_json(capsys, "-")
    assert info["command"] == "REMOTE_CTRL"
    assert info["tlvs"] == [{"tag": 0x4001, "name": "SETCOMMAND", "length": 1, "value": 3}]


def test_unaccepted_version_is_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    raw = bytearray(VECTORS["11.4 HEART_BEAT"])
    raw[8:10] = b"\x04\x00"
    info = run_json(capsys, raw.hex())
    assert info["header"]["version"] == 0x0400
    assert any("0x0400" in w for w in info["warnings"])


def test_misfit_tlv_shown_as_hex() -> None:
    """A TLV whose length does not fit its type is shown, not fatal (spec 4.9)."""
    raw = bytearray(VECTORS["11.4 HEART_BEAT"]) + bytes.fromhex("0011 0003 000102")
    raw[0:2] = len(raw).to_bytes(2, "big")  # a HEART_BEAT with a 3-byte u32 TLV
    info = describe(bytes(raw))
    assert info["tlvs"] == [
        {"tag": 0x0011, "name": "PERIOD_CFG", "length": 3, "value": "000102", "fits": False}
    ]


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["00 1"], "odd number of hex digits"),
        (["zz"], "not hexadecimal"),
        ([""], "no hex input"),
        (["001C0003"], "shorter than a header"),
        ([VECTORS["11.2 LOGIN"][:-1].hex()], "Total_Length"),
        (["--imei", IMEI, VECTORS["11.2 LOGIN"].hex()], "--imei, --imsi and --password"),
        (["--imei", "1", "--imsi", IMSI, "--password", "x", VECTORS["11.2 LOGIN"].hex()], "IMEI"),
        (
            ["--session-key", "short", VECTORS["11.10 TRANSPARENT_DATA legacy"].hex()],
            "legacy key",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("m2mgw-decode: error: ")
    assert reason in err


def test_console_script() -> None:
    script = Path(sys.executable).with_name("m2mgw-decode")
    result = subprocess.run(
        [
            str(script),
            "--json",
            *UPLINK_ARGS,
            "--timestamp",
            hex(TS_11_3),
            _hex("11.5 TRANSPARENT_DATA"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["command"], info["digest_ok"]) == ("TRANSPARENT_DATA", True)
    bad = subprocess.run(
        [str(script), "0"], capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "m2mgw-decode: error: odd number of hex digits (1)"

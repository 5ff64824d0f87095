"""``m2mgw-decode``: explain one WMMP terminal-protocol message given as hex.

The decoding itself is :func:`describe`, which returns a JSON-friendly dict; the text
and ``--json`` outputs both render that dict. Input handling is separate
(:func:`read_message`). With ``--pdu`` the input is an SMS PDU (spec 10.4):
:func:`describe_pdu` decodes it and, when it carries a whole WMMP message, that
message with :func:`describe`, adding an ``sms`` object to the same dict.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from m2mgw.protocol import codec
from m2mgw.protocol.constants import DEFAULT_ACCEPTED_VERSIONS, Command, Flag
from m2mgw.protocol.errors import ProtocolError
from m2mgw.protocol.fragment import FragmentOp, FragmentPart
from m2mgw.protocol.header import VersionError
from m2mgw.protocol.messages import LoginAck, Message, decode_message
from m2mgw.protocol.security import Cipher, DigestKey, make_cipher
from m2mgw.protocol.tags import tag_name
from m2mgw.protocol.tlv import Tlv, decode_tlvs
from m2mgw.sms import pdu

PROG = "m2mgw-decode"

# Requests only the platform initiates (spec 4.1); their answers come from terminals.
_PLATFORM_REQUESTS = frozenset(
    {Command.CONFIG_GET, Command.CONFIG_SET, Command.REMOTE_CTRL, Command.DOWNLOAD_INFO}
)
_PASSWORD_FOR = {"terminal": "uplink", "platform": "downlink"}


class UsageError(Exception):
    """Bad command-line input (not a protocol error): reported like one, exit 2."""


def _json_value(value: Any) -> Any:
    """Bytes as hex, tuples as lists, recursively; everything else as is."""
    if isinstance(value, bytes | bytearray):
        return value.hex().upper()
    if isinstance(value, tuple | list):
        return [_json_value(v) for v in value]
    return value


def describe_tlv(tlv: Tlv) -> dict[str, Any]:
    """One TLV: the registry's typed value, or hex when the tag is unknown or misfits."""
    entry: dict[str, Any] = {"tag": tlv.tag, "name": tag_name(tlv.tag), "length": len(tlv.raw)}
    try:
        entry["value"] = _json_value(tlv.value)
    except ProtocolError:
        entry["value"] = tlv.raw.hex().upper()
        entry["fits"] = False  # the length does not fit the tag's type (spec 4.9)
    return entry


def _fragment(frame: codec.Frame) -> dict[str, Any]:
    part = FragmentPart.decode(frame.container_value())
    return {
        "trans_id": part.trans_id,
        "total": part.total,
        "part": part.part,
        "op": part.op,
        "op_name": FragmentOp(part.op).name,
        "chunk_length": len(part.chunk),
        "chunk": part.chunk.hex().upper(),
    }


def _digest_timestamp(message: Message | None) -> int:
    """The TS of spec 6.2 when the user gives none: 0 (right for REGISTER and LOGIN),
    or a LOGIN_ACK's own timestamp."""
    if isinstance(message, LoginAck):
        return message.timestamp
    return 0


def describe(
    raw: bytes,
    *,
    key: DigestKey | None = None,
    timestamp: int | None = None,
    role: str | None = None,
    cipher: Cipher | None = None,
) -> dict[str, Any]:
    """Everything known about one message, as a JSON-friendly dict.

    ``key`` (IMEI, IMSI and the password of the sending side) enables the digest
    check; ``role`` is who sent the message ("terminal" or "platform"), inferred
    from the Command_ID when not given; ``cipher`` opens an ``E042`` body.
    Raises :class:`ProtocolError` when the message cannot be decoded.
    """
    warnings: list[str] = []
    try:
        frame = codec.parse_frame(raw, DEFAULT_ACCEPTED_VERSIONS)
    except VersionError as exc:
        warnings.append(
            f"{exc.reason} (accepted: {', '.join(map(hex, DEFAULT_ACCEPTED_VERSIONS))})"
        )
        frame = codec.parse_frame(raw, (exc.header.version,))
    header = frame.header
    out: dict[str, Any] = {
        "header": {
            "length": header.length,
            "command_id": header.command_id,
            "sequence_id": header.sequence_id,
            "version": header.version,
            "security_flag": header.flag,
            "flag_bits": [f.name for f in Flag if f and header.flag & f],
            "reserved": header.reserved,
            "serial": header.serial,
        },
        "command": header.command_name,
    }
    message: Message | None = None
    tlvs: list[Tlv]
    tag = frame.container_tag
    if tag == codec.TAG_FRAGMENT:
        out["fragment"] = _fragment(frame)
        tlvs = decode_tlvs(frame.body)
    elif tag == codec.TAG_ENCRYPTED and cipher is None:
        out["encrypted"] = {"decrypted": False}
        warnings.append("E042 encrypted body: give --session-key to decrypt it")
        tlvs = decode_tlvs(frame.body)
    else:
        body, padded = codec.open_body(frame, cipher)
        message = decode_message(header.command_id, body, padded=padded)
        if cipher is not None and tag == codec.TAG_ENCRYPTED:
            out["encrypted"] = {
                "decrypted": True,
                "cipher": cipher.name,
                "plain": body.hex().upper(),
            }
        tlvs = message.tlvs
    out["fields"] = {} if message is None else _json_value_dict(message.fields_dict())
    out["tlvs"] = [describe_tlv(t) for t in tlvs]
    out["digest"] = None if frame.digest is None else frame.digest.hex().upper()
    out["digest_ok"] = None
    if key is not None:
        sender = role or _infer_role(header.command_id)
        ts = _digest_timestamp(message) if timestamp is None else timestamp
        out["digest_ok"] = codec.verify_frame(frame, ts, key)
        out["digest_check"] = {
            "sender": sender,
            "role_given": role is not None,
            "password": _PASSWORD_FOR[sender],
            "timestamp": ts,
        }
        if frame.digest is None:
            warnings.append("the message carries no digest (flag 0x20 clear)")
    out["warnings"] = warnings
    return out


def _json_value_dict(values: dict[str, Any]) -> dict[str, Any]:
    return {name: _json_value(value) for name, value in values.items()}


def _infer_role(command_id: int) -> str:
    """Who sends this Command_ID (spec 4.1); commands sent by both sides give "terminal"."""
    request = command_id & 0x7FFF
    platform_request = request in _PLATFORM_REQUESTS
    is_answer = bool(command_id & 0x8000)
    both_ways = request in (
        Command.LOGOUT,
        Command.TRANSPARENT_DATA,
        Command.SECURITY_CONFIG,
        Command.TRANSPARENT_CMD,
    )
    if both_ways:
        return "terminal"
    return "platform" if platform_request != is_answer else "terminal"


def _show(value: Any) -> str:
    """repr, with integers above 9 also in hex (flags, CRCs and timestamps read better)."""
    if isinstance(value, int) and value > 9:
        return f"{value} (0x{value:X})"
    return repr(value)


def render_text(info: dict[str, Any], out: TextIO) -> None:
    """The human-readable form of :func:`describe`'s result."""
    h = info["header"]
    bits = "|".join(h["flag_bits"]) or "none"
    print(
        f"header:   length={h['length']} command={info['command']} (0x{h['command_id']:04X})"
        f" sequence={h['sequence_id']} version=0x{h['version']:04X}"
        f" flag=0x{h['security_flag']:02X} [{bits}] serial={h['serial']}",
        file=out,
    )
    if "fragment" in info:
        f = info["fragment"]
        print(
            f"fragment: TransID={f['trans_id']} total={f['total']} part={f['part']}"
            f" op={f['op']} ({f['op_name']}) chunk={f['chunk_length']} bytes",
            file=out,
        )
    if "encrypted" in info:
        enc = info["encrypted"]
        state = f"decrypted with {enc['cipher']}" if enc["decrypted"] else "not decrypted"
        print(f"body:     E042 encrypted container, {state}", file=out)
    for name, value in info["fields"].items():
        print(f"field:    {name} = {_show(value)}", file=out)
    for t in info["tlvs"]:
        misfit = "  (length does not fit the type)" if t.get("fits") is False else ""
        print(
            f"tlv:      {t['tag']:04X} {t['name']} [{t['length']}] = {_show(t['value'])}{misfit}",
            file=out,
        )
    if info["digest"] is not None:
        print(f"digest:   {info['digest']}", file=out)
    if info["digest_ok"] is not None:
        check = info["digest_check"]
        how = "given" if check["role_given"] else "assumed from the Command_ID"
        verdict = "verifies" if info["digest_ok"] else "does NOT verify"
        print(
            f"verify:   digest {verdict} with the {check['password']} password"
            f" (sent by the {check['sender']}, {how}; timestamp 0x{check['timestamp']:08X})",
            file=out,
        )
    for warning in info["warnings"]:
        print(f"warning:  {warning}", file=out)


def decode_pdu(data: bytes, smsc_prefix: bool | None = None) -> tuple[pdu.Sms, bool, list[str]]:
    """The SMS in ``data``, whether it had the SMSC prefix, and warnings.

    ``smsc_prefix`` None detects it: the decoder is strict, so normally only one
    reading succeeds; if both do, the TPDU reading wins with a warning.
    """
    readings: list[tuple[pdu.Sms, bool]] = []
    error: ProtocolError | None = None
    for prefixed in (False, True) if smsc_prefix is None else (smsc_prefix,):
        try:
            readings.append((pdu.decode(data, smsc_prefix=prefixed), prefixed))
        except ProtocolError as exc:
            error = exc
    if not readings:
        assert error is not None
        raise ProtocolError(f"not an SMS PDU: {error.reason}")
    warnings = []
    if len(readings) > 1:
        warnings.append("the PDU also decodes with an SMSC prefix: give --smsc-prefix yes")
    sms, prefixed = readings[0]
    return sms, prefixed, warnings


def describe_sms(sms: pdu.Sms, prefixed: bool) -> dict[str, Any]:
    """The ``sms`` object: addresses, PID, DCS, UDH and the concatenation fields."""
    deliver = isinstance(sms, pdu.SmsDeliver)
    address = sms.originator if isinstance(sms, pdu.SmsDeliver) else sms.destination
    udh = sms.udh
    out: dict[str, Any] = {
        "type": "SMS-DELIVER" if deliver else "SMS-SUBMIT",
        "smsc_prefix": prefixed,
        "smsc": None if sms.smsc is None else sms.smsc.number,
        "originator" if deliver else "destination": address.number,
        "toa": address.toa,
        "pid": sms.pid,
        "dcs": sms.dcs,
    }
    if isinstance(sms, pdu.SmsDeliver):
        out["scts"] = sms.scts.isoformat()
    else:
        out["reference"] = sms.reference
        validity = sms.validity
        out["validity"] = (
            validity.isoformat() if isinstance(validity, datetime) else _json_value(validity)
        )
    out["udh"] = None if udh is None else {
        "dest_port": udh.dest_port,
        "orig_port": udh.orig_port,
        "port_bits": udh.port_bits if udh.dest_port is not None else None,
        "other": [{"iei": iei, "data": data.hex().upper()} for iei, data in udh.other],
    }  # fmt: skip
    out["concat_ref"] = None if udh is None else udh.concat_ref
    out["concat_total"] = None if udh is None else udh.concat_total
    out["concat_seq"] = None if udh is None else udh.concat_seq
    out["user_data_length"] = len(sms.user_data)
    return out


def describe_pdu(
    data: bytes, *, smsc_prefix: bool | None = None, **options: Any
) -> dict[str, Any]:
    """An SMS PDU and, when it carries a whole WMMP message (10.4), that message.

    ``options`` go to :func:`describe`. A WMMP SMS has 8-bit data and a port UDH (any
    port: captured platforms use port 0, 11.7); one segment of several only gets the
    ``sms`` object, as the message needs all of them.
    """
    sms, prefixed, warnings = decode_pdu(data, smsc_prefix)
    info = describe_sms(sms, prefixed)
    udh = sms.udh
    if not isinstance(sms.user_data, bytes):
        return {"sms": {**info, "text": sms.user_data}, "warnings": warnings}
    if udh is None or udh.dest_port is None:
        warnings.append("8-bit data without application ports: not a WMMP SMS (10.4.2)")
    elif (udh.concat_total or 1) > 1:
        warnings.append(
            f"segment {udh.concat_seq}/{udh.concat_total} of a concatenated message: "
            "its WMMP message needs every segment"
        )
    else:
        described = describe(sms.user_data, **options)
        described["sms"] = info
        described["warnings"] = warnings + described["warnings"]
        return described
    return {"sms": {**info, "user_data": sms.user_data.hex().upper()}, "warnings": warnings}


def render_pdu_text(info: dict[str, Any], out: TextIO) -> None:
    """The human-readable form of :func:`describe_pdu`'s result."""
    sms = info["sms"]
    party = "from" if "originator" in sms else "to"
    number = sms.get("originator", sms.get("destination"))
    stamp = f" scts={sms['scts']}" if "scts" in sms else ""
    print(
        f"sms:      {sms['type']} {party} {number} (toa 0x{sms['toa']:02X})"
        f" pid=0x{sms['pid']:02X} dcs=0x{sms['dcs']:02X}{stamp}"
        f" smsc={sms['smsc'] or '-'}{' (prefixed)' if sms['smsc_prefix'] else ''}",
        file=out,
    )
    udh = sms["udh"]
    if udh is not None:
        concat = (
            f" concatenation ref={sms['concat_ref']} part {sms['concat_seq']}/{sms['concat_total']}"
            if sms["concat_total"] is not None
            else ""
        )
        print(f"udh:      ports {udh['dest_port']} <- {udh['orig_port']}{concat}", file=out)
    for key in ("text", "user_data"):
        if key in sms:
            print(f"{key + ':':<10}{sms[key]}", file=out)
    if "header" in info:
        render_text(info, out)
    else:
        for warning in info["warnings"]:
            print(f"warning:  {warning}", file=out)


def parse_hex(text: str) -> bytes:
    """Plain hex digits with optional whitespace anywhere."""
    digits = "".join(text.split())
    if not digits:
        raise UsageError("no hex input")
    if len(digits) % 2:
        raise UsageError(f"odd number of hex digits ({len(digits)})")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise UsageError("input is not hexadecimal") from None


def read_message(args: argparse.Namespace, stdin: TextIO) -> bytes:
    """The WMMP message bytes named on the command line (``-`` reads stdin)."""
    return parse_hex(stdin.read() if args.hex == "-" else args.hex)


def _int(text: str) -> int:
    """Decimal or 0x-prefixed integers, as timestamps are usually shown in hex."""
    return int(text, 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Decode one WMMP terminal-protocol message given as hex."
    )
    parser.add_argument("hex", metavar="HEX", help="the message as hex digits; - reads stdin")
    parser.add_argument(
        "--pdu", action="store_true", help="HEX is an SMS PDU (SMS-DELIVER or SMS-SUBMIT)"
    )
    parser.add_argument(
        "--smsc-prefix",
        choices=("auto", "yes", "no"),
        default="auto",
        help="whether the PDU starts with the SMSC address (default: detect)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--role",
        choices=("terminal", "platform"),
        help="who sent the message: terminal (uplink password) or platform (downlink)",
    )
    parser.add_argument("--imei", help="15-digit IMEI of the terminal's binding")
    parser.add_argument("--imsi", help="15-digit registered IMSI")
    parser.add_argument("--password", help="the sender's 8-character password")
    parser.add_argument("--timestamp", type=_int, help="digest timestamp (session timestamp)")
    parser.add_argument("--session-key", help="session key, to decrypt an E042 body")
    parser.add_argument("--cipher", choices=("legacy", "aes"), default="legacy")
    return parser


def _credentials(args: argparse.Namespace) -> DigestKey | None:
    given = [args.imei, args.imsi, args.password]
    if not any(given):
        return None
    if not all(given):
        raise UsageError("digest check needs --imei, --imsi and --password together")
    return DigestKey.make(args.imei, args.imsi, args.password)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``m2mgw-decode`` console script."""
    args = build_parser().parse_args(argv)
    try:
        raw = read_message(args, sys.stdin)
        cipher = None if args.session_key is None else make_cipher(args.cipher, args.session_key)
        options = dict(key=_credentials(args), timestamp=args.timestamp, role=args.role,
                       cipher=cipher)  # fmt: skip
        if args.pdu:
            prefix = {"auto": None, "yes": True, "no": False}[args.smsc_prefix]
            info = describe_pdu(raw, smsc_prefix=prefix, **options)
        else:
            info = describe(raw, **options)
    except (ProtocolError, UsageError) as exc:
        reason = " ".join(str(exc).split())  # always exactly one line
        print(f"{PROG}: error: {reason}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info))
    elif args.pdu:
        render_pdu_text(info, sys.stdout)
    else:
        render_text(info, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Who the simulated terminals are: numbered identities, credentials, traps, sync values."""

from __future__ import annotations

import argparse
import json
from typing import IO, Any

from m2mgw.protocol import tags
from m2mgw.protocol import terminal as role
from m2mgw.protocol.errors import ProtocolError
from m2mgw.protocol.tags import BY_NAME, encode_value
from m2mgw.protocol.tlv import Tlv


def derive(value: str, index: int) -> str:
    """``value`` with ``index`` added to its trailing digits, keeping the width; the
    first terminal's value is taken as given (the CMCC default serial ends in a letter)."""
    if index == 0:
        return value
    stem = value.rstrip("0123456789")
    digits = value[len(stem) :]
    if not digits:
        raise ValueError(f"{value!r} has no trailing digits to number terminals with")
    number = str(int(digits) + index)
    if len(number) > len(digits):
        raise ValueError(f"{value!r} + {index} overflows its {len(digits)} digits")
    return stem + number.zfill(len(digits))


def parse_trap(text: str) -> Tlv:
    """``TAG=VALUE``: TAG is hex (``0x3007``) or a registry name; VALUE typed by the tag,
    or raw bytes as ``hex:0A0B``."""
    tag_text, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"trap {text!r} is not TAG=VALUE")
    spec = BY_NAME.get(tag_text.upper())
    try:
        tag = spec.tag if spec else int(tag_text, 0)
        if value.startswith("hex:"):
            return Tlv(tag, bytes.fromhex(value[4:]))
        raw = encode_value(tag, int(value, 0) if _is_int(value) else value)
    except (ValueError, ProtocolError) as exc:
        raise argparse.ArgumentTypeError(f"trap {text!r}: {exc}") from None
    return Tlv(tag, raw)


def _is_int(text: str) -> bool:
    try:
        int(text, 0)
    except ValueError:
        return False
    return True


_CREDENTIAL_KEYS = (
    "uplink_password", "downlink_password", "uplink_expiry", "downlink_expiry",
    "base_key", "base_key_expiry",
)  # fmt: skip


def load_credentials(stream: IO[str]) -> list[dict[str, Any]]:
    """JSON lines as printed by ``m2mgw provision --json``; blank lines are skipped."""
    records = [json.loads(line) for line in stream if line.strip()]
    if not all(isinstance(record, dict) for record in records):
        raise ValueError("every credentials line must be a JSON object")
    return records


def build_identities(args: argparse.Namespace) -> list[role.TerminalIdentity]:
    """``--count`` identities: numbered from the given ones, credentials per line or shared."""
    records: list[dict[str, Any]] = []
    if args.credentials_file:
        with open(args.credentials_file, encoding="utf-8") as stream:
            records = load_credentials(stream)
        if len(records) < args.count:
            raise ValueError(f"{args.credentials_file} has {len(records)} lines, need {args.count}")
    shared = {
        "uplink_password": args.uplink_password,
        "downlink_password": args.downlink_password,
        "base_key": args.base_key,
    }
    config = dict(EXAMPLE_SYNC_VALUES)
    if args.heartbeat is not None:
        config[tags.HEARTBEAT] = encode_value(tags.HEARTBEAT, reported_heartbeat(args.heartbeat))
    # REGISTER op 0 by SMS: the credentials follow by SMS (6.3.4), none are needed before.
    sent_by_sms = args.mode == "sms" and args.register_op == 0
    identities = []
    for index in range(args.count):
        record = {k: v for k, v in shared.items() if v is not None}
        record.update(records[index] if records else {})
        credentials = None
        if "uplink_password" in record and "downlink_password" in record:
            credentials = role.Credentials(
                **{k: record[k] for k in _CREDENTIAL_KEYS if record.get(k) is not None}
            )
        elif not sent_by_sms:
            raise ValueError("credentials needed: --uplink-password/--downlink-password or a file")
        cipher = record.get("cipher", args.cipher)
        identities.append(
            role.TerminalIdentity(
                serial=record.get("serial") or derive(args.serial, index),
                imei=record.get("imei") or derive(args.imei, index),
                imsi=record.get("imsi") or derive(args.imsi, index),
                credentials=credentials,
                cipher=None if cipher in (None, "none") else cipher,
                software_version=args.software_version,
                config=dict(config),
            )
        )
    return identities


def reported_heartbeat(seconds: float) -> int:
    """``--heartbeat`` as TLV ``0x0011`` reports it: whole seconds, at least 1."""
    return max(1, round(seconds))


EXAMPLE_SYNC_VALUES: dict[int, bytes] = {
    tags.APN: b"CMNET",
    tags.SMS_SPECIAL_NUMBER: b"1065840436",
    tags.PLATFORM_IP: bytes.fromhex("C000020A"),
    tags.PLATFORM_PORT: bytes.fromhex("14731474"),
    tags.HEARTBEAT: (90).to_bytes(4, "big"),
}
"""The sync values of the spec's example identity (11), used by every simulated terminal;
``--heartbeat`` replaces ``0x0011``."""

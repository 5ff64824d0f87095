"""The CMCC Java ME client's default identity and the LOGIN of spec 1.6, for the tests of
the compatibility profiles (issue #10).

The LOGIN bytes are assembled here from the fields 1.6 lists and the digest is an MD5
computed with hashlib over PD-04's inputs, independently of m2mgw's codec, so that the
byte-exact tests compare m2mgw against the profile and not against itself.
"""

from __future__ import annotations

import hashlib
from typing import Any

from m2mgw.core.model import CredentialSet, Terminal, TerminalState
from m2mgw.protocol import terminal as role
from m2mgw.protocol.security import DigestKey

SERIAL = "A00MS8011390002S"
IMEI = "354494040518570"
IMSI = "460020084678120"
UPLINK_PASSWORD = "vkwF2SJa"
DOWNLINK_PASSWORD = "Uo3aHCbG"
BASE_KEY = "CmccBaseKey0123456789ABC"
SOFTWARE_VERSION = "12345678"
UPLINK = DigestKey.make(IMEI, IMSI, UPLINK_PASSWORD)
DOWNLINK = DigestKey.make(IMEI, IMSI, DOWNLINK_PASSWORD)


def _login_1_6() -> bytes:
    """``003C 0001 00000001 0300 00 00`` ‖ serial ‖ ``3132333435363738 00000000`` ‖
    ``E021 0010`` ‖ digest over the bytes as sent (timestamp 0, uplink password)."""
    signed = (
        bytes.fromhex("003C 0001 00000001 0300 00 00")
        + SERIAL.encode("ascii")
        + bytes.fromhex("3132333435363738 00000000")
    )
    inputs = signed + bytes(4) + IMEI.encode() + b"\0" + IMSI.encode() + UPLINK_PASSWORD.encode()
    return signed + bytes.fromhex("E021 0010") + hashlib.md5(inputs).digest()


LOGIN_1_6 = _login_1_6()


def record(**changes: Any) -> Terminal:
    """The CMCC terminal as provisioned: pre-registered, bound to EC0001."""
    fields: dict[str, Any] = dict(
        imei=IMEI,
        imsi=IMSI,
        serial=SERIAL,
        state=TerminalState.REGISTERED,
        current=CredentialSet(
            uplink_password=UPLINK_PASSWORD,
            downlink_password=DOWNLINK_PASSWORD,
            base_key=BASE_KEY,
        ),
        apps={"EC0001"},
        default_app="EC0001",
        compat="cmcc-javame",
    )
    fields.update(changes)
    return Terminal(**fields)


def identity() -> role.TerminalIdentity:
    return role.TerminalIdentity(
        serial=SERIAL,
        imei=IMEI,
        imsi=IMSI,
        credentials=role.Credentials(UPLINK_PASSWORD, DOWNLINK_PASSWORD, base_key=BASE_KEY),
        software_version=SOFTWARE_VERSION,
        config={0x0011: (90).to_bytes(4, "big")},
    )


def client(clock: Any, bearer: str = "tcp", **options: Any) -> role.TerminalClient:
    """A simulated CMCC Java ME client (its habits of spec 1.6)."""
    return role.TerminalClient(
        identity(), bearer, clock=clock, habits=role.HABITS["cmcc-javame"], **options
    )


#: The same identity as ``m2mgw-terminal`` takes it on the command line.
TOOL_IDENTITY = [
    "--serial", SERIAL, "--imei", IMEI, "--imsi", IMSI,
    "--uplink-password", UPLINK_PASSWORD, "--downlink-password", DOWNLINK_PASSWORD,
    "--base-key", BASE_KEY, "--software-version", SOFTWARE_VERSION,
]  # fmt: skip

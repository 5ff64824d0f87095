"""What the benchmarks' processes share: identities and the open-files limit.

The orchestrator (``gateway.py``) provisions terminal ``i`` and the load client
(``load_client.py``) logs it in; both derive the identity from the index here, so no
credentials file has to pass between them.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

from m2mgw.protocol import tags

UPLINK_PASSWORD = "12345678"
DOWNLINK_PASSWORD = "87654321"
BASE_KEY = "112233445566778899001234"
APP = "EC0001"
# Not the gateway's allocation prefix (A9720300), so no allocated serial collides.
SERIAL_STEM = "A9720301"
#: What a terminal reports in its sync CONFIG_TRAP after login: a 90 s heartbeat.
SYNC_CONFIG = {
    tags.APN: b"CMNET",
    tags.SMS_SPECIAL_NUMBER: b"1065840436",
    tags.PLATFORM_IP: bytes.fromhex("C000020A"),
    tags.PLATFORM_PORT: bytes.fromhex("14731474"),
    tags.HEARTBEAT: (90).to_bytes(4, "big"),
}


@dataclass(frozen=True, slots=True)
class Identity:
    """Serial, IMEI and IMSI of simulated terminal number ``index``."""

    serial: str
    imei: str
    imsi: str

    @classmethod
    def of(cls, index: int) -> Identity:
        return cls(f"{SERIAL_STEM}{index:08d}", f"86{index:013d}", f"46000{index:010d}")


def raise_nofile_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards ``wanted`` (at most the hard limit).

    Returns the soft limit now in force; each connection costs one descriptor.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def machine() -> str:
    """How busy the machine is: cores, load average and CPU pressure (PSI), so that a
    reader can tell a quiet machine's figures from those of a shared one."""
    one, five, fifteen = os.getloadavg()
    text = f"{os.cpu_count()} cores, load average {one:.2f} {five:.2f} {fifteen:.2f}"
    try:
        with open("/proc/pressure/cpu", encoding="ascii") as pressure:
            fields = dict(part.split("=") for part in pressure.readline().split()[1:])
        text += f", CPU pressure (PSI some) avg10 {fields['avg10']}% avg60 {fields['avg60']}%"
    except (OSError, KeyError, ValueError):
        pass
    return text

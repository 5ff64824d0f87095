"""What the gateway benchmark's processes share: identities and the open-files limit.

The orchestrator (``gateway.py``) provisions terminal ``i`` and the load client
(``load_client.py``) logs it in; both derive the identity from the index here, so no
credentials file has to pass between them.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

UPLINK_PASSWORD = "12345678"
DOWNLINK_PASSWORD = "87654321"
BASE_KEY = "112233445566778899001234"
APP = "EC0001"
# Not the gateway's allocation prefix (A9720300), so no allocated serial collides.
SERIAL_STEM = "A9720301"


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

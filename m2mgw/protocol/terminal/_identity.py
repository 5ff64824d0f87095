"""What a terminal knows about itself and its local configuration store (spec 3, 4.8-4.11).

The store maps tags to raw values, as a terminal's flash holds them; these functions read
and check it the way the terminal role answers and reports it, and compute the two CRC32s
of 6.5 (the LOGIN sync CRC, the ``0x4017`` of applied values).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from m2mgw.protocol import tags
from m2mgw.protocol.checksum import crc32
from m2mgw.protocol.errors import BodyError
from m2mgw.protocol.security import NEVER
from m2mgw.protocol.tags import BY_NAME, DEFAULT_SYNC_TAGS, decode_int, length_fits
from m2mgw.protocol.tlv import Tlv, encode_tlv, tlv_dict

#: What TLV ``0x0011`` means while the store holds no usable value (9.4).
DEFAULT_HEARTBEAT = 90

_READ_ONLY = frozenset(
    {tags.PROTOCOL_VERSION, tags.TERMINAL_SERIAL, tags.IMSI, tags.FIRMWARE_VERSION}
)
#: The statistics of 3.4 a terminal reports; only the IP byte count is really counted here.
_STATISTICS = tuple(
    BY_NAME[name].tag
    for name in (
        "MONTHLYOPERATIONSIGN", "SMSDELIVERYSUCC", "SMSDELIVERUFAIL", "SMSRECEIVEDNUM",
        "GRPSDATASIZE", "USSDSUCCNUM", "USSDFAILNUM", "USSDRECEIVEDNUM",
    )
)  # fmt: skip
_IP_BYTES = BY_NAME["GRPSDATASIZE"].tag


@dataclass(frozen=True, slots=True)
class Credentials:
    """One credential set as the terminal holds it (spec 6.3.1)."""

    uplink_password: str
    downlink_password: str
    uplink_expiry: int = NEVER
    downlink_expiry: int = NEVER
    base_key: str | None = None
    base_key_expiry: int = NEVER


@dataclass(slots=True)
class TerminalIdentity:
    """What a terminal knows about itself; ``imsi`` is the registered IMSI (PD-37).

    ``config`` maps tags to raw values (the sync values among them); ``sync_tags`` is
    the terminal's ``0x0025`` list.
    """

    serial: str
    imei: str
    imsi: str
    credentials: Credentials | None = None
    cipher: str | None = None
    software_version: str = "1.01"
    sync_tags: tuple[int, ...] = DEFAULT_SYNC_TAGS
    config: dict[int, bytes] = field(default_factory=dict)


def initial_config(identity: TerminalIdentity, connect_mode: int) -> dict[int, bytes]:
    """The store at start: the identity's values, and what the terminal knows it is."""
    config = dict(identity.config)
    config.setdefault(tags.SYNC_LIST, Tlv.of(tags.SYNC_LIST, identity.sync_tags).raw)
    config.setdefault(tags.TERMINAL_SERIAL, identity.serial.encode("ascii"))
    config.setdefault(tags.IMSI, identity.imsi.encode("ascii"))
    config.setdefault(tags.FIRMWARE_VERSION, identity.software_version.encode("ascii"))
    config.setdefault(tags.CONNECT_MODE, bytes((connect_mode,)))
    return config


def heartbeat_interval(config: dict[int, bytes]) -> int:
    """TLV ``0x0011`` of the store, which a CONFIG_SET may change (9.4)."""
    raw = config.get(tags.HEARTBEAT)
    try:
        return decode_int(raw) if raw else DEFAULT_HEARTBEAT
    except BodyError:
        return DEFAULT_HEARTBEAT


def sync_crc(sync_tags: Iterable[int], config: dict[int, bytes]) -> int:
    """CRC32 over TLV(t) for each sync tag, in list order; a missing value is empty (6.5)."""
    return crc32(b"".join(encode_tlv(tag, config.get(tag, b"")) for tag in sync_tags))


def applied_crc(tlvs: Iterable[Tlv]) -> int:
    """``0x4017``: CRC32 over the applied TLVs sorted by tag, ``0x4009`` excluded (6.5)."""
    values = tlv_dict(tlvs)
    return crc32(
        b"".join(encode_tlv(t, values[t]) for t in sorted(values) if t != tags.PLATFORM_OPTION)
    )


def sync_tlvs(sync_tags: tuple[int, ...], config: dict[int, bytes]) -> list[Tlv]:
    """``0x0025`` and every sync TLV that has a value: a sync trap's body (4.4)."""
    tlvs = [Tlv.of(tags.SYNC_LIST, sync_tags)]
    return tlvs + [Tlv(t, config[t]) for t in sync_tags if t in config]


def statistics(ip_bytes: int) -> list[Tlv]:
    """The statistics TLVs of 3.4, all 0 but the IP byte count."""
    return [Tlv.of(tag, ip_bytes if tag == _IP_BYTES else 0) for tag in _STATISTICS]


def is_security(tag: int) -> bool:
    """A tag of the security range ``0xE0xx``: never read or set as plain configuration."""
    return tag >> 8 == 0xE0


def settable(tlv: Tlv) -> bool:
    """Whether CONFIG_SET may set this TLV (4.10): no security or read-only tags."""
    if is_security(tlv.tag) or tlv.tag in _READ_ONLY:
        return False
    return length_fits(tlv.tag, len(tlv.raw)) and (bool(tlv.raw) or tlv.tag == tags.LOCAL_CONFIG)

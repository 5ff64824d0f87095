"""WMMP over SMS (spec 10.4, PD-17, PD-30): splitting, addressing and reassembly.

Pure and sans-I/O: the modem driver hands SMS-DELIVERs in and takes SMS-SUBMIT TPDUs
out; time is passed in as ``now`` so tests and the gateway own the clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from twisted.logger import Logger

from m2mgw.core.model import normalize_msisdn
from m2mgw.protocol.errors import ProtocolError
from m2mgw.sms.pdu import (
    TOA_INTERNATIONAL,
    TOA_UNKNOWN,
    Address,
    SmsDeliver,
    SmsSubmit,
    UserDataHeader,
    encode,
)

SMS_PLATFORM_PORT = 2862
SMS_ORIGIN_PORT = 49154
SMS_MAX_PARTS = 4
SMS_REASSEMBLY_TIMEOUT = 300.0
SEGMENT_SIZE = 128  # 140 octets of user data minus the 12-byte UDH (10.4.3)
COUNTRY_CODE = "86"

DCS_8BIT = 0x04
_SUBMIT_VALIDITY = 0xFF

log = Logger()


def _digits(text: str) -> str:
    return "".join(ch for ch in text if "0" <= ch <= "9")


def msisdn_address(number: str) -> Address:
    """TP-DA for a terminal: 0x91 when the number carries a country code, else 0x81.

    A number carries a country code when it was written with ``+``/``00``, when PD-30
    prefixed 86, or when its normalised form starts with 86 and is longer than a
    national number; other digit strings (short codes, IoT numbers) go out as they are.
    """
    normalised = normalize_msisdn(number)
    stripped = number.strip()
    international = (
        stripped.startswith(("+", "00"))
        or normalised != _digits(stripped)
        or (normalised.startswith(COUNTRY_CODE) and len(normalised) > 11)
    )
    if not normalised:
        raise ProtocolError(f"MSISDN {number!r} has no digits")
    return Address(normalised, TOA_INTERNATIONAL if international else TOA_UNKNOWN)


def wmmp_segments(
    message: bytes,
    reference: int,
    dest_port: int = SMS_PLATFORM_PORT,
    orig_port: int = SMS_ORIGIN_PORT,
    max_parts: int = SMS_MAX_PARTS,
) -> list[tuple[UserDataHeader, bytes]]:
    """Split a WMMP message into (12-byte UDH, ≤128 bytes) segments (10.4.2, 10.4.3)."""
    chunks = [message[i : i + SEGMENT_SIZE] for i in range(0, len(message), SEGMENT_SIZE)]
    chunks = chunks or [b""]
    if len(chunks) > max_parts:
        raise ProtocolError(
            f"message of {len(message)} bytes needs {len(chunks)} SMS, more than {max_parts}"
        )
    return [
        (
            UserDataHeader(
                dest_port=dest_port,
                orig_port=orig_port,
                concat_ref=reference & 0xFF,
                concat_total=len(chunks),
                concat_seq=seq,
            ),
            chunk,
        )
        for seq, chunk in enumerate(chunks, start=1)
    ]


def wmmp_submit_pdus(
    message: bytes,
    msisdn: str,
    reference: int,
    dest_port: int = SMS_PLATFORM_PORT,
    orig_port: int = SMS_ORIGIN_PORT,
    max_parts: int = SMS_MAX_PARTS,
) -> list[bytes]:
    """SMS-SUBMIT TPDUs (no SMSC prefix) carrying ``message`` to ``msisdn`` (10.4.1)."""
    destination = msisdn_address(msisdn)
    return [
        encode(
            SmsSubmit(
                destination=destination,
                user_data=chunk,
                udh=udh,
                reference=0,
                pid=0,
                dcs=DCS_8BIT,
                validity=_SUBMIT_VALIDITY,
            )
        )
        for udh, chunk in wmmp_segments(message, reference, dest_port, orig_port, max_parts)
    ]


class ReferenceCounter:
    """Concatenation references per destination MSISDN: an 8-bit counter each (10.4.3).

    ``last`` gives the references already used, by normalised MSISDN: each counter
    continues after its own, so a restart gives none of them again (D-341).
    """

    def __init__(self, last: Mapping[str, int] | None = None) -> None:
        self._next = {msisdn: (reference + 1) & 0xFF for msisdn, reference in (last or {}).items()}

    def next(self, msisdn: str) -> int:
        """The reference for the next message to ``msisdn``; the first is 1."""
        key = normalize_msisdn(msisdn)
        reference = self._next.get(key, 1)
        self._next[key] = (reference + 1) & 0xFF
        return reference


@dataclass(frozen=True)
class WmmpSms:
    """A complete WMMP message received by SMS."""

    message: bytes
    originator: str
    dest_port: int
    orig_port: int
    reference: int
    parts: int


@dataclass(frozen=True)
class TextSms:
    """An SMS that is not WMMP, passed up so the caller can log it."""

    originator: str
    content: str | bytes
    scts: datetime
    dest_port: int | None = None


@dataclass
class _Pending:
    first_seen: float
    dest_port: int
    orig_port: int
    parts: dict[int, bytes] = field(default_factory=dict)


class SmsReassembler:
    """Reassembles concatenated WMMP SMS by (originator, reference, total) (10.4.3)."""

    def __init__(
        self,
        platform_port: int = SMS_PLATFORM_PORT,
        max_parts: int = SMS_MAX_PARTS,
        timeout: float = SMS_REASSEMBLY_TIMEOUT,
        max_entries: int = 1024,
    ) -> None:
        self.platform_port = platform_port
        self.max_parts = max_parts
        self.timeout = timeout
        self.max_entries = max_entries
        self._pending: OrderedDict[tuple[str, int, int], _Pending] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def feed(self, deliver: SmsDeliver, now: float) -> WmmpSms | TextSms | None:
        """Take one SMS-DELIVER; return a complete message, a non-WMMP SMS, or None."""
        self.expire(now)
        originator = normalize_msisdn(deliver.originator.number)
        udh = deliver.udh
        if (
            udh is None
            or not isinstance(deliver.user_data, bytes)
            or udh.port_bits != 16
            or udh.dest_port != self.platform_port
            or udh.orig_port is None
        ):
            return TextSms(
                originator=originator or deliver.originator.number,
                content=deliver.user_data,
                scts=deliver.scts,
                dest_port=udh.dest_port if udh is not None else None,
            )
        if udh.orig_port != SMS_ORIGIN_PORT:
            log.info(
                "WMMP SMS from {msisdn} with originator port {port}",
                msisdn=originator,
                port=udh.orig_port,
            )
        reference = udh.concat_ref if udh.concat_ref is not None else 0
        total = udh.concat_total if udh.concat_total is not None else 1
        seq = udh.concat_seq if udh.concat_seq is not None else 1
        if not 1 <= seq <= total or total > self.max_parts:
            log.warn(
                "Discarding WMMP SMS segment {seq}/{total} from {msisdn} (max {max_parts})",
                seq=seq,
                total=total,
                msisdn=originator,
                max_parts=self.max_parts,
            )
            return None
        key = (originator, reference, total)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(now, udh.dest_port, udh.orig_port)
            self._bound()
        if seq in pending.parts:
            log.debug(
                "Duplicate SMS segment {seq}/{total} ref {ref} from {msisdn}",
                seq=seq,
                total=total,
                ref=reference,
                msisdn=originator,
            )
            return None
        pending.parts[seq] = deliver.user_data
        if len(pending.parts) < total:
            return None
        del self._pending[key]
        return WmmpSms(
            message=b"".join(pending.parts[i] for i in range(1, total + 1)),
            originator=originator,
            dest_port=pending.dest_port,
            orig_port=pending.orig_port,
            reference=reference,
            parts=total,
        )

    def expire(self, now: float) -> int:
        """Drop incomplete sets older than the timeout; returns how many were dropped."""
        expired = [k for k, p in self._pending.items() if now - p.first_seen >= self.timeout]
        for key in expired:
            originator, reference, total = key
            log.info(
                "SMS reassembly of ref {ref} from {msisdn} timed out with {have}/{total} parts",
                ref=reference,
                msisdn=originator,
                have=len(self._pending.pop(key).parts),
                total=total,
            )
        return len(expired)

    def next_expiry(self) -> float | None:
        """When :meth:`expire` next has work, so a caller can schedule it."""
        if not self._pending:
            return None
        return min(p.first_seen for p in self._pending.values()) + self.timeout

    def _bound(self) -> None:
        while len(self._pending) > self.max_entries:
            (originator, reference, _total), _ = self._pending.popitem(last=False)
            log.warn(
                "SMS reassembly table full: dropped ref {ref} from {msisdn}",
                ref=reference,
                msisdn=originator,
            )


def wmmp_delivers(
    originator: str,
    message: bytes,
    reference: int,
    scts: datetime,
    dest_port: int = SMS_PLATFORM_PORT,
    max_parts: int = SMS_MAX_PARTS,
) -> list[SmsDeliver]:
    """SMS-DELIVERs as a terminal's WMMP message reaches the platform (emulator, tests)."""
    sender = msisdn_address(originator)
    return [
        SmsDeliver(originator=sender, scts=scts, user_data=chunk, udh=udh, dcs=DCS_8BIT)
        for udh, chunk in wmmp_segments(message, reference, dest_port, SMS_ORIGIN_PORT, max_parts)
    ]

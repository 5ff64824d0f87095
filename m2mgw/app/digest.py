"""Digests of both bindings (spec 5) and the SOAP duplicate rule (AD-19).

The SOAP digest is computed over canonical strings of *values* (AD-03), never over
XML bytes, so no canonicalisation is needed and any SOAP stack gets the same result.
The long-connection digest is the terminal protocol's construction with the AppID and
password as identity (AD-04). All comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

from lxml import etree

from m2mgw.app.operations import ResultCode, element_class, fields_of, parse_soap_timestamp
from m2mgw.protocol.constants import DIGEST_TLV_SIZE, HEADER_SIZE, MAX_LENGTH, Flag
from m2mgw.protocol.errors import DigestError, ProtocolError

__all__ = [
    "DIGEST_TAG",
    "DIGEST_TLV_HEAD",
    "ReplayCache",
    "ReplayKey",
    "check_timestamp",
    "digests_equal",
    "lc_digest",
    "lc_sign",
    "lc_verify",
    "soap_canonical_body",
    "soap_canonical_header",
    "soap_digest",
]

DIGEST_TAG = 0xE021
#: The digest TLV's tag and length, before its 16 bytes.
DIGEST_TLV_HEAD = struct.pack(">HH", DIGEST_TAG, 16)
_DIGEST_FLAG = int(Flag.DIGEST)


# --- SOAP (5.1) --------------------------------------------------------------------------


def soap_canonical_header(values: Sequence[str | None]) -> str:
    """Hs: version|msgType|appId|seqId|timestamp|sessionId|secFlags (absent → empty)."""
    if len(values) != 7:
        raise ProtocolError("Hs needs exactly 7 header values")
    return "|".join("" if v is None else v for v in values)


def _local(element: etree._Element) -> str:
    return etree.QName(element).localname


def _children(element: etree._Element) -> list[etree._Element]:
    """Element children only: comments and processing instructions carry no values."""
    return [child for child in element if isinstance(child.tag, str)]


def _walk(
    element: etree._Element, cls: type | None, prefix: str, out: list[tuple[str, str]]
) -> None:
    infos = {info.element: info for info in fields_of(cls)} if cls is not None else {}
    counters: dict[str, int] = {}
    for child in _children(element):
        name = _local(child)
        info = infos.get(name)
        if info is not None and info.many:
            index = counters.get(name, 0)
            counters[name] = index + 1
            path = f"{prefix}{name}[{index}]"
        else:
            path = prefix + name
        grandchildren = _children(child)
        if not grandchildren:
            out.append((path, "".join(child.itertext())))
            continue
        # A complex field names its class; a choice (NotificationItem) is named by the
        # child element itself.
        child_cls = info.xs if info is not None and isinstance(info.xs, type) else None
        _walk(child, child_cls or element_class(name), path + ".", out)


def soap_canonical_body(operation: etree._Element) -> str:
    """Bs: the sorted ``path=value`` pairs of the leaves below the operation element."""
    children = _children(operation)
    if len(children) == 1 and _local(children[0]) == "encryptedBody":
        return "encryptedBody=" + "".join(children[0].itertext())
    pairs: list[tuple[str, str]] = []
    _walk(operation, element_class(_local(operation)), "", pairs)
    pairs.sort(key=lambda pair: pair[0].encode("utf-8"))
    return "&".join(f"{path}={value}" for path, value in pairs)


def soap_digest(hs: str, bs: str, app_id: str, password: str) -> str:
    """lowercase_hex(MD5(UTF8(Hs ‖ Bs ‖ U ‖ P))) (AD-03)."""
    data = (hs + bs + app_id + password).encode("utf-8", "surrogatepass")
    return hashlib.md5(data).hexdigest()


def digests_equal(expected: str | bytes, given: str | bytes) -> bool:
    """Constant-time comparison; a hex digest given in upper case is accepted."""
    if isinstance(expected, str):
        expected = expected.lower().encode("ascii", "replace")
    if isinstance(given, str):
        given = given.lower().encode("ascii", "replace")
    return hmac.compare_digest(expected, given)


def check_timestamp(timestamp: str, now: float, window: float = 300.0) -> None:
    """Reject a ``MsgHeader/timestamp`` outside ±window of our clock (4.2)."""
    try:
        sent = parse_soap_timestamp(timestamp)
    except ProtocolError:
        raise DigestError(f"bad timestamp {timestamp!r}", ResultCode.AUTH_FAILED) from None
    if abs(sent - now) > window:
        raise DigestError(
            f"timestamp {timestamp} outside ±{window:g} s", ResultCode.AUTH_FAILED
        )


class ReplayKey(NamedTuple):
    """AD-19: a repeat of all four within the window is the same request."""

    app_id: str
    msg_type: str
    seq_id: int
    digest: str


class ReplayCache:
    """Cached responses by :class:`ReplayKey`, kept ``window`` seconds (AD-19).

    Entries are inserted in time order, so expiry only ever looks at the oldest;
    ``max_entries`` bounds memory against a flood of distinct requests.
    """

    def __init__(self, window: float = 600.0, max_entries: int = 10_000) -> None:
        self.window = window
        self.max_entries = max_entries
        self._entries: OrderedDict[ReplayKey, tuple[float, bytes]] = OrderedDict()

    def _expire(self, now: float) -> None:
        while self._entries:
            key, (stored, _) = next(iter(self._entries.items()))
            if now - stored <= self.window and len(self._entries) <= self.max_entries:
                return
            del self._entries[key]

    def get(self, key: ReplayKey, now: float) -> bytes | None:
        self._expire(now)
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: ReplayKey, response: bytes, now: float) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (now, response)
        self._expire(now)

    def __len__(self) -> int:
        return len(self._entries)


# --- long connection (5.2) ---------------------------------------------------------------


def _u32(value: int) -> bytes:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise ProtocolError(f"timestamp is not a u32: {value!r}")
    return struct.pack(">I", value)


def lc_digest(m: bytes, timestamp: int, app_id: str, password: str) -> bytes:
    """MD5(H ‖ B ‖ TS ‖ U ‖ P) (AD-04); ``m`` is the header and body as sent."""
    digest = hashlib.md5(m)
    digest.update(_u32(timestamp))
    digest.update(app_id.encode("ascii", "replace"))
    digest.update(password.encode("ascii", "replace"))
    return digest.digest()


def lc_sign(frame: bytes, timestamp: int, app_id: str, password: str) -> bytes:
    """Append the digest TLV to an unsigned message, fixing Total_Length and flag 0x20."""
    length = len(frame) + DIGEST_TLV_SIZE
    if len(frame) < HEADER_SIZE or length > MAX_LENGTH:
        raise ProtocolError(f"cannot sign a {len(frame)}-byte frame")
    out = bytearray(frame)
    out[0:2] = struct.pack(">H", length)
    out[10] |= _DIGEST_FLAG
    out += DIGEST_TLV_HEAD + lc_digest(bytes(out), timestamp, app_id, password)
    return bytes(out)


def lc_verify(message: bytes, timestamp: int, app_id: str, password: str) -> bool:
    """True when ``message`` ends with a digest TLV that verifies; never raises."""
    if len(message) < HEADER_SIZE + DIGEST_TLV_SIZE or not message[10] & _DIGEST_FLAG:
        return False
    end = len(message) - DIGEST_TLV_SIZE
    if bytes(message[end : end + 4]) != DIGEST_TLV_HEAD:
        return False
    try:
        expected = lc_digest(bytes(message[:end]), timestamp, app_id, password)
    except ProtocolError:
        return False
    return hmac.compare_digest(expected, bytes(message[end + 4 :]))

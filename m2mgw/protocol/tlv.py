"""TLV stream codec (spec 3.1): tag u16 ‖ length u16 ‖ value.

A :class:`Tlv` keeps the value's raw bytes, so decoding then encoding any stream,
unknown and vendor tags included, gives back the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from m2mgw.protocol import tags
from m2mgw.protocol.errors import BodyError

_MAX_VALUE = 0xFFFF


class Tlv(NamedTuple):
    """One TLV; ``raw`` is the value exactly as on the wire."""

    tag: int
    raw: bytes

    @classmethod
    def of(cls, tag: int, value: Any = b"") -> Tlv:
        """Build from a typed value (see :func:`tags.encode_value`)."""
        return cls(tag, tags.encode_value(tag, value))

    @classmethod
    def query(cls, tag: int) -> Tlv:
        """A zero-length TLV: "this tag" in queries and error answers (spec 3.1)."""
        return cls(tag, b"")

    @property
    def name(self) -> str:
        return tags.tag_name(self.tag)

    @property
    def value(self) -> Any:
        """Typed value; raises BodyError if the length does not fit the type."""
        return tags.decode_value(self.tag, self.raw)

    def encode(self) -> bytes:
        return encode_tlv(self.tag, self.raw)


def encode_tlv(tag: int, raw: bytes) -> bytes:
    if not 0 <= tag <= 0xFFFF:
        raise BodyError(f"tag {tag} out of range")
    if len(raw) > _MAX_VALUE:
        raise BodyError(f"tag 0x{tag:04X}: value of {len(raw)} bytes is too long")
    return tag.to_bytes(2, "big") + len(raw).to_bytes(2, "big") + raw


def encode_tlvs(tlvs: Iterable[Tlv]) -> bytes:
    return b"".join(encode_tlv(t.tag, t.raw) for t in tlvs)


def decode_tlvs(data: bytes, offset: int = 0, *, padded: bool = False) -> list[Tlv]:
    """Parse TLVs from ``data[offset:]`` to the end.

    A TLV that overruns the data is a :class:`BodyError` (spec 4.2 rule 4). With
    ``padded`` (a decrypted ``legacy`` body, spec 6.4.1) up to 7 trailing 0x00 bytes
    after the last complete TLV are padding.
    """
    out: list[Tlv] = []
    end = len(data)
    pos = offset
    while pos < end:
        if padded and end - pos < 8 and not any(data[pos:]):
            break
        if end - pos < 4:
            raise BodyError(f"truncated TLV header at body offset {pos}")
        tag = (data[pos] << 8) | data[pos + 1]
        length = (data[pos + 2] << 8) | data[pos + 3]
        start = pos + 4
        pos = start + length
        if pos > end:
            raise BodyError(f"TLV 0x{tag:04X} of length {length} overruns the body")
        out.append(Tlv(tag, bytes(data[start:pos])))
    return out


def tlv_dict(tlvs: Iterable[Tlv]) -> dict[int, bytes]:
    """Tag → raw value; the last occurrence wins (spec 3.1)."""
    return {t.tag: t.raw for t in tlvs}


def find(tlvs: Iterable[Tlv], tag: int) -> bytes | None:
    """Raw value of the last TLV with this tag, or None."""
    found = None
    for t in tlvs:
        if t.tag == tag:
            found = t.raw
    return found

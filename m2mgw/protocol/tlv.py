"""TLV stream codec (spec 3.1): tag u16 ‖ length u16 ‖ value.

A :class:`Tlv` keeps the value's raw bytes, so decoding then encoding any stream,
unknown and vendor tags included, gives back the same bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, NamedTuple

from m2mgw.protocol import tags
from m2mgw.protocol.errors import BodyError

_HEAD = struct.Struct(">HH")
_pack_head = _HEAD.pack
_unpack_head = _HEAD.unpack_from
_new_tuple = tuple.__new__


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
    try:
        return _pack_head(tag, len(raw)) + raw
    except struct.error:
        if not 0 <= tag <= 0xFFFF:
            raise BodyError(f"tag {tag} out of range") from None
        raise BodyError(f"tag 0x{tag:04X}: value of {len(raw)} bytes is too long") from None


def encode_tlvs(tlvs: Iterable[Tlv]) -> bytes:
    return b"".join([encode_tlv(tag, raw) for tag, raw in tlvs])


def decode_tlvs(data: bytes, offset: int = 0, *, padded: bool = False) -> list[Tlv]:
    """Parse TLVs from ``data[offset:]`` to the end.

    A TLV that overruns the data is a :class:`BodyError` (spec 4.2 rule 4). With
    ``padded`` (a decrypted ``legacy`` body, spec 6.4.1) up to 7 trailing 0x00 bytes
    after the last complete TLV are padding.
    """
    if type(data) is not bytes:
        data = bytes(data)
    out: list[Tlv] = []
    append = out.append
    end = len(data)
    pos = offset
    while pos < end:
        start = pos + 4
        if padded and end - pos < 8 and not any(data[pos:]):
            break
        if start > end:
            raise BodyError(f"truncated TLV header at body offset {pos}")
        tag, length = _unpack_head(data, pos)
        pos = start + length
        if pos > end:
            raise BodyError(f"TLV 0x{tag:04X} of length {length} overruns the body")
        append(_new_tuple(Tlv, (tag, data[start:pos])))
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

"""Framing of messages on the IP bearers (spec 10.2, 10.3)."""

from __future__ import annotations

from m2mgw.protocol.constants import HEADER_SIZE, MAX_LENGTH
from m2mgw.protocol.errors import FramingError


class StreamFramer:
    """Cuts a TCP byte stream into messages by Total_Length.

    Partial frames wait for more bytes; several frames in one read all come out. A
    Total_Length below 28 (or above ``max_length``) cannot be resynchronised, so it
    raises :class:`FramingError` and the connection must close (spec 10.2).
    """

    __slots__ = ("_buffer", "max_length")

    def __init__(self, max_length: int = MAX_LENGTH) -> None:
        self._buffer = bytearray()
        self.max_length = max_length

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back (a half frame at close)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        pos = 0
        end = len(buffer)
        while end - pos >= 2:
            length = (buffer[pos] << 8) | buffer[pos + 1]
            if length < HEADER_SIZE or length > self.max_length:
                raise FramingError(f"Total_Length {length} cannot frame the stream")
            if end - pos < length:
                break
            frames.append(bytes(buffer[pos : pos + length]))
            pos += length
        if pos:
            del buffer[:pos]
        return frames


def parse_datagram(data: bytes) -> bytes:
    """The one message in a UDP datagram (spec 10.3).

    A datagram shorter than its Total_Length is discarded; a longer one is accepted
    only if every byte after Total_Length is 0x00 (trailing padding).
    """
    if len(data) < HEADER_SIZE:
        raise FramingError(f"datagram of {len(data)} bytes is shorter than a header")
    length = (data[0] << 8) | data[1]
    if length < HEADER_SIZE:
        raise FramingError(f"Total_Length {length} is below {HEADER_SIZE}")
    if len(data) < length:
        raise FramingError(f"datagram of {len(data)} bytes is shorter than its length {length}")
    if len(data) > length:
        if any(data[length:]):
            raise FramingError("datagram has non-zero bytes after Total_Length")
        return bytes(data[:length])
    return bytes(data)

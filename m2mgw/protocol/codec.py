"""Whole messages: header checks, digest split, containers, typed bodies (spec 2, 6, 7).

Receiving runs in the order of spec 6.4.4: :func:`parse_frame` (header checks and
the digest TLV's form), the caller verifies the digest (it knows the credentials),
then :func:`open_body` opens an ``E042`` container and :func:`decode_message` types
the body. A ``4008`` container is a fragment for :mod:`m2mgw.protocol.fragment`.
Sending is :func:`build_frame` / :func:`encode_message`.
"""

from __future__ import annotations

from dataclasses import dataclass

from m2mgw.protocol import messages
from m2mgw.protocol.constants import (
    DEFAULT_ACCEPTED_VERSIONS,
    DIGEST_TLV_SIZE,
    HEADER_SIZE,
    MAX_LENGTH,
    Flag,
)
from m2mgw.protocol.errors import BodyError, DigestError, HeaderError
from m2mgw.protocol.header import HEADER, Header, check_header, serial_field
from m2mgw.protocol.security import Cipher, DigestKey, decrypt_body, encrypt_body, sign

DIGEST_PREFIX = b"\xe0\x21\x00\x10"
TAG_ENCRYPTED = 0xE042
TAG_FRAGMENT = 0x4008
ENCRYPTED_FLAG = Flag.AUTH | Flag.KEY_REQUEST | Flag.DIGEST | Flag.CONTAINER  # 0xF0, PD-24
FRAGMENT_FLAG = Flag.DIGEST | Flag.CONTAINER  # 0x30


@dataclass(frozen=True, slots=True)
class Frame:
    """A received message that passed the header checks; ``body`` excludes the digest."""

    header: Header
    raw: bytes
    body: bytes
    digest: bytes | None

    @property
    def container_tag(self) -> int | None:
        """``0xE042`` or ``0x4008`` when the flag says container (spec 6.1), else None."""
        if not self.header.is_container or len(self.body) < 4:
            return None
        return (self.body[0] << 8) | self.body[1]

    def container_value(self) -> bytes:
        """The value of the single container TLV that makes up the body."""
        body = self.body
        length = (body[2] << 8) | body[3] if len(body) >= 4 else -1
        if length != len(body) - 4:
            raise BodyError("container TLV does not fill the body")
        return body[4:]


def parse_frame(
    raw: bytes, accepted_versions: frozenset[int] | tuple[int, ...] = DEFAULT_ACCEPTED_VERSIONS
) -> Frame:
    """Apply receiver checks 1-4 of spec 2.2 (the digest's form, not its value)."""
    header = Header.unpack(raw)
    check_header(header, len(raw), accepted_versions)
    if header.has_digest:
        if raw[-DIGEST_TLV_SIZE : -DIGEST_TLV_SIZE + 4] != DIGEST_PREFIX:
            raise DigestError("digest flag set but the message does not end with TLV E021")
        return Frame(header, raw, raw[HEADER_SIZE:-DIGEST_TLV_SIZE], raw[-16:])
    return Frame(header, raw, raw[HEADER_SIZE:], None)


def open_body(frame: Frame, cipher: Cipher | None) -> tuple[bytes, bool]:
    """The plaintext body and whether it may carry ``legacy`` zero padding.

    An ``E042`` container needs the session's cipher; without one it is refused.
    """
    if frame.container_tag == TAG_ENCRYPTED:
        if cipher is None:
            raise BodyError("encrypted body but no session key")
        return decrypt_body(cipher, frame.container_value()), cipher.name == "legacy"
    if frame.container_tag == TAG_FRAGMENT:
        raise BodyError("a fragment is not a complete body")
    return frame.body, False


def decode_frame(frame: Frame, cipher: Cipher | None = None) -> messages.Message:
    """Typed message of a complete (unfragmented) frame."""
    body, padded = open_body(frame, cipher)
    return messages.decode_message(frame.header.command_id, body, padded=padded)


def build_frame(
    command_id: int,
    sequence_id: int,
    serial: str,
    body: bytes,
    *,
    version: int = 0x0300,
    flag: int = 0,
    key: DigestKey | None = None,
    timestamp: int = 0,
) -> bytes:
    """Header + body, signed with ``key`` when given (which sets flag 0x20)."""
    length = HEADER_SIZE + len(body) + (DIGEST_TLV_SIZE if key is not None else 0)
    if length > MAX_LENGTH:
        raise BodyError(f"message of {length} bytes exceeds {MAX_LENGTH}")
    if key is not None:
        flag |= Flag.DIGEST
    elif flag & Flag.DIGEST:
        raise HeaderError("digest flag without a key to sign with")
    frame = (
        HEADER.pack(length - (DIGEST_TLV_SIZE if key else 0), command_id, sequence_id, version,
                    flag, 0, serial_field(serial))
        + body
    )  # fmt: skip
    if key is None:
        return frame
    return sign(frame, timestamp, key)


def encrypted_container(cipher: Cipher, body: bytes) -> bytes:
    """The ``E042`` TLV carrying ``body`` encrypted under the session cipher (6.4.3)."""
    value = encrypt_body(cipher, body)
    return TAG_ENCRYPTED.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value


def encode_message(
    message: messages.Message,
    *,
    sequence_id: int,
    serial: str,
    version: int = 0x0300,
    flag: int = 0,
    key: DigestKey | None = None,
    timestamp: int = 0,
    cipher: Cipher | None = None,
) -> bytes:
    """One complete message; with ``cipher`` the body goes into ``E042`` (flag 0xF0)."""
    body = message.encode_body()
    if cipher is not None:
        body = encrypted_container(cipher, body)
        flag = ENCRYPTED_FLAG
    return build_frame(
        message.COMMAND, sequence_id, serial, body,
        version=version, flag=flag, key=key, timestamp=timestamp,
    )  # fmt: skip

"""Whole messages: header checks, digest split, containers, typed bodies (spec 2, 6, 7).

Receiving runs in the order of spec 6.4.4: :func:`parse_frame` (header checks and
the digest TLV's form), the caller verifies the digest with :func:`verify_frame` (it
knows the credentials), then :func:`open_body` opens an ``E042`` container and
:func:`decode_message` types the body. A ``4008`` container is a fragment for
:mod:`m2mgw.protocol.fragment`.
Sending is :func:`build_frame` / :func:`encode_message`.
"""

from __future__ import annotations

import hmac
from typing import NamedTuple

from m2mgw.protocol import messages
from m2mgw.protocol.constants import (
    DEFAULT_ACCEPTED_VERSIONS,
    DIGEST_TLV_SIZE,
    HEADER_SIZE,
    KNOWN_COMMAND_IDS,
    MAX_LENGTH,
    Flag,
)
from m2mgw.protocol.errors import BodyError, DigestError, HeaderError, ProtocolError
from m2mgw.protocol.header import HEADER, Header, check_header, pack_header
from m2mgw.protocol.security import (
    Cipher,
    DigestKey,
    compute_digest,
    decrypt_body,
    encrypt_body,
)

DIGEST_PREFIX = b"\xe0\x21\x00\x10"
TAG_ENCRYPTED = 0xE042
TAG_FRAGMENT = 0x4008
ENCRYPTED_FLAG = Flag.AUTH | Flag.KEY_REQUEST | Flag.DIGEST | Flag.CONTAINER  # 0xF0, PD-24
FRAGMENT_FLAG = Flag.DIGEST | Flag.CONTAINER  # 0x30

# Plain ints for the per-message hot paths (IntFlag arithmetic is slow).
_DIGEST = int(Flag.DIGEST)
_CONTAINER = int(Flag.CONTAINER)
_ENCRYPTED_FLAG = int(ENCRYPTED_FLAG)
_PREFIX_AT = -DIGEST_TLV_SIZE
_DIGEST_AT = -DIGEST_TLV_SIZE + len(DIGEST_PREFIX)
_MIN_SIGNED = HEADER_SIZE + DIGEST_TLV_SIZE
_unpack_header = HEADER.unpack_from
_new_tuple = tuple.__new__


class Frame(NamedTuple):
    """A received message that passed the header checks; ``body`` excludes the digest."""

    header: Header
    raw: bytes
    body: bytes
    digest: bytes | None

    @property
    def container_tag(self) -> int | None:
        """``0xE042`` or ``0x4008`` when the flag says container (spec 6.1), else None."""
        body = self.body
        if not self.header.flag & _CONTAINER or len(body) < 4:
            return None
        return (body[0] << 8) | body[1]

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
    if type(raw) is not bytes:
        raw = bytes(raw)
    # Run per message received: one test of everything a valid header satisfies builds
    # it at once; any other goes through the checks one by one, for the error they name.
    size = len(raw)
    header = None
    if size >= HEADER_SIZE:
        length, command_id, sequence_id, version, flag, reserved, serial = _unpack_header(raw)
        if (
            length == size
            and version in accepted_versions
            and command_id in KNOWN_COMMAND_IDS
            and serial.isascii()
            and (length >= _MIN_SIGNED or not flag & _DIGEST)
        ):
            header = _new_tuple(
                Header,
                (length, command_id, sequence_id, version, flag, serial.decode("ascii"), reserved),
            )
    if header is None:
        header = Header.unpack(raw)
        check_header(header, size, accepted_versions)
    if header.flag & _DIGEST:
        if raw[_PREFIX_AT:_DIGEST_AT] != DIGEST_PREFIX:
            raise DigestError("digest flag set but the message does not end with TLV E021")
        return _new_tuple(Frame, (header, raw, raw[HEADER_SIZE:_PREFIX_AT], raw[_DIGEST_AT:]))
    return _new_tuple(Frame, (header, raw, raw[HEADER_SIZE:], None))


def verify_frame(frame: Frame, timestamp: int, key: DigestKey) -> bool:
    """Whether a parsed frame's digest verifies (spec 6.2 "Receiving" step 3).

    :func:`parse_frame` has already checked the digest TLV's form, so this is one
    MD5 and a constant-time comparison; a frame without a digest never verifies.
    """
    digest = frame.digest
    if digest is None:
        return False
    try:
        expected = compute_digest(frame.raw[:_PREFIX_AT], timestamp, key)
    except (ProtocolError, TypeError, ValueError):
        return False
    return hmac.compare_digest(expected, digest)


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
    header = frame.header
    if header.flag & _CONTAINER:
        body, padded = open_body(frame, cipher)
        return messages.decode_message(header.command_id, body, padded=padded)
    return messages.decode_message(header.command_id, frame.body)


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
    flag_digest: bool = True,
    header_only: bool = False,
) -> bytes:
    """Header + body, signed with ``key`` when given (which sets flag 0x20).

    Signing follows spec 6.2 "Sending": Total_Length and the flag already count the
    digest TLV when the MD5 over header and body is taken. Two departures of the
    CMCC Java ME client (1.6) can be reproduced, for the simulator and tests:
    ``flag_digest=False`` appends the digest without setting flag 0x20 (C1), and
    ``header_only`` digests the 28-byte header alone (C4, which every profile refuses).
    """
    if key is None:
        if flag & _DIGEST:
            raise HeaderError("digest flag without a key to sign with")
        length = HEADER_SIZE + len(body)
    else:
        if flag_digest:
            flag |= _DIGEST
        length = HEADER_SIZE + len(body) + DIGEST_TLV_SIZE
    if length > MAX_LENGTH:
        raise BodyError(f"message of {length} bytes exceeds {MAX_LENGTH}")
    header = pack_header(length, command_id, sequence_id, version, flag, serial)
    frame = header + body
    if key is None:
        return frame
    return frame + DIGEST_PREFIX + compute_digest(header if header_only else frame, timestamp, key)


def unflagged_digest(frame: Frame) -> Frame | None:
    """``frame`` read as ending in a digest TLV although flag 0x20 is clear (1.6 C1).

    None when the frame has its digest already or does not end with ``E021 0010``.
    The caller verifies the result with :func:`verify_frame` (over the bytes as sent)
    and keeps the original frame when that fails: the bytes may be data after all.
    """
    raw = frame.raw
    if frame.digest is not None or len(raw) < HEADER_SIZE + DIGEST_TLV_SIZE:
        return None
    if raw[_PREFIX_AT:_DIGEST_AT] != DIGEST_PREFIX:
        return None
    return _new_tuple(Frame, (frame.header, raw, raw[HEADER_SIZE:_PREFIX_AT], raw[_DIGEST_AT:]))


def header_only_digest(frame: Frame, timestamp: int, key: DigestKey) -> bool:
    """Whether the frame's digest is the MD5 of its 28-byte header alone (1.6 C4).

    Such a digest authenticates no body byte: it is only recognised, so that the
    refusal can say what the terminal does.
    """
    digest = frame.digest
    if digest is None:
        return False
    try:
        expected = compute_digest(frame.raw[:HEADER_SIZE], timestamp, key)
    except (ProtocolError, TypeError, ValueError):
        return False
    return hmac.compare_digest(expected, digest)


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
    """One complete message; with ``cipher`` the body goes into ``E042`` (flag 0xF0,
    or 0xD0 in the unsigned form that only tests and tools build)."""
    body = message.encode_body()
    if cipher is not None:
        body = encrypted_container(cipher, body)
        flag = _ENCRYPTED_FLAG & ~_DIGEST  # build_frame sets 0x20 again when it signs
    return build_frame(
        message.COMMAND,
        sequence_id,
        serial,
        body,
        version=version,
        flag=flag,
        key=key,
        timestamp=timestamp,
    )

"""Base Key and Session Key lifecycle, and encrypted bodies (spec 7, 4.4).

The ciphers are the terminal protocol's (AD-11): :mod:`m2mgw.protocol.security`
provides them, this module only decides which key bytes feed which cipher and how
the results travel. Every failure raises :class:`ProtocolError` (or its
:class:`CryptoError`), never a codec or cipher exception.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from m2mgw.protocol.errors import CryptoError, ProtocolError
from m2mgw.protocol.security import AesCipher, Cipher, generate_secret, make_cipher

__all__ = [
    "BASE_KEY_LENGTHS",
    "ENCRYPTED_BODY_TAG",
    "PROFILES",
    "SESSION_KEY_SIZE",
    "BaseKeyState",
    "base_cipher",
    "decrypt_lc_body",
    "decrypt_xml",
    "encrypt_lc_body",
    "encrypt_xml",
    "generate_base_key",
    "generate_password",
    "generate_session_key",
    "session_cipher",
    "unwrap_base_key",
    "unwrap_session_key",
    "wrap_base_key",
    "wrap_session_key",
]

PROFILES = ("legacy", "aes")
SESSION_KEY_SIZE = 16
BASE_KEY_LENGTHS: dict[str, tuple[int, ...]] = {"legacy": (16, 24), "aes": (16,)}
_GENERATED_BASE_KEY = {"legacy": 24, "aes": 16}
PASSWORD_LENGTH = 16
ENCRYPTED_BODY_TAG = 0xE042
_TLV_HEAD = struct.Struct(">HH")

Random = Callable[[int], bytes]


# --- generation (7.1) --------------------------------------------------------------------


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    """An application password: 12–32 characters of ``A-Z a-z 0-9`` (7.1)."""
    if not 12 <= length <= 32:
        raise ProtocolError(f"password length must be 12-32, got {length}")
    return generate_secret(length)


def generate_base_key(profile: str) -> str:
    """A Base Key: 24 ASCII characters for ``legacy``, 16 for ``aes`` (7.1)."""
    try:
        return generate_secret(_GENERATED_BASE_KEY[profile])
    except KeyError:
        raise ProtocolError(f"unknown cipher profile {profile!r}") from None


def generate_session_key(random: Random = os.urandom) -> bytes:
    """A Session Key: 16 random bytes, fresh per login (AD-11)."""
    key = random(SESSION_KEY_SIZE)
    if len(key) != SESSION_KEY_SIZE:
        raise ProtocolError("random source returned the wrong length")
    return key


def _base_key_bytes(profile: str, key: str) -> bytes:
    """The Base Key's ASCII bytes, checked against the profile's allowed lengths."""
    lengths = BASE_KEY_LENGTHS.get(profile)
    if lengths is None:
        raise ProtocolError(f"unknown cipher profile {profile!r}")
    if not isinstance(key, str) or not key.isascii() or len(key) not in lengths:
        raise ProtocolError(f"a {profile} Base Key must be {lengths} ASCII characters")
    return key.encode("ascii")


def base_cipher(profile: str, base_key: str, random: Random = os.urandom) -> Cipher:
    """The cipher keyed by a Base Key: its ASCII bytes (7.4)."""
    raw = _base_key_bytes(profile, base_key)
    return AesCipher(raw, random) if profile == "aes" else make_cipher(profile, raw)


def session_cipher(profile: str, session_key: bytes, random: Random = os.urandom) -> Cipher:
    """The cipher keyed by a Session Key: its 16 raw bytes (two-key 3DES or AES-128, 7.4)."""
    if not isinstance(session_key, bytes) or len(session_key) != SESSION_KEY_SIZE:
        raise ProtocolError("a Session Key is 16 bytes")
    if profile == "aes":
        return AesCipher(session_key, random)
    return make_cipher(profile, session_key)


# --- key transport (7.3, 7.5) ------------------------------------------------------------


def wrap_session_key(
    profile: str, base_key: str, session_key: bytes, random: Random = os.urandom
) -> bytes:
    """Enc_BaseKey(K): ``0x5002`` / SOAP ``sessionKey`` / KEY_UPDATE type 1 blob."""
    if not isinstance(session_key, bytes) or len(session_key) != SESSION_KEY_SIZE:
        raise ProtocolError("a Session Key is 16 bytes")
    return base_cipher(profile, base_key, random).encrypt(session_key)


def unwrap_session_key(profile: str, base_key: str, blob: bytes) -> bytes:
    """Decrypt a wrapped Session Key; anything but exactly 16 bytes is a CryptoError."""
    key = base_cipher(profile, base_key).decrypt(bytes(blob))
    if len(key) != SESSION_KEY_SIZE:
        raise CryptoError(f"wrapped Session Key decrypts to {len(key)} bytes")
    return key


def wrap_base_key(
    profile: str, current_base_key: str, new_base_key: str, random: Random = os.urandom
) -> bytes:
    """KEY_UPDATE type 2 blob: the new Base Key (ASCII) under the current one (7.2)."""
    new = _base_key_bytes(profile, new_base_key)
    return base_cipher(profile, current_base_key, random).encrypt(new)


def unwrap_base_key(profile: str, current_base_key: str, blob: bytes) -> str:
    """The new Base Key of a type-2 blob; ``legacy`` zero padding cannot occur (16/24)."""
    plain = base_cipher(profile, current_base_key).decrypt(bytes(blob))
    try:
        text = plain.decode("ascii")
        _base_key_bytes(profile, text)
    except (UnicodeDecodeError, ProtocolError):
        raise CryptoError("key blob does not hold a valid Base Key") from None
    return text


@dataclass(slots=True)
class BaseKeyState:
    """One application's Base Key with its expiry and a scheduled successor (7.2).

    ``next_key`` becomes current for logins at or after ``effective_time``; that is
    the moment APP_KEY_UPDATE type 2 announces with ``0x5016``.
    """

    profile: str
    key: str = field(repr=False)
    expires_at: int | None = None
    next_key: str | None = field(default=None, repr=False)
    effective_time: int | None = None
    next_expires_at: int | None = None

    def __post_init__(self) -> None:
        _base_key_bytes(self.profile, self.key)

    def schedule(self, new_key: str, effective_time: int, expires_at: int | None) -> None:
        """Plan a rotation (7.2 step 3)."""
        _base_key_bytes(self.profile, new_key)
        self.next_key, self.effective_time, self.next_expires_at = (
            new_key, effective_time, expires_at
        )

    def current(self, now: float) -> str | None:
        """The Base Key a login at ``now`` uses, or ``None`` once expired (login → 1)."""
        if self.next_key is not None and self.effective_time is not None:
            if now >= self.effective_time:
                self.key, self.expires_at = self.next_key, self.next_expires_at
                self.next_key = self.effective_time = self.next_expires_at = None
        if self.expires_at is not None and now >= self.expires_at:
            return None
        return self.key


# --- encrypted bodies (7.4, 4.4) ---------------------------------------------------------


def encrypt_lc_body(cipher: Cipher, body: bytes) -> bytes:
    """The long-connection container: ``E042`` ‖ length ‖ Enc_SessionKey(body).

    A ciphertext over 65,535 bytes (a body that is then fragmented, 6.7) continues in
    consecutive ``E042`` TLVs, by the long-value rule of 6.4.
    """
    sealed = cipher.encrypt(bytes(body))
    pieces = [sealed[i : i + 0xFFFF] for i in range(0, len(sealed), 0xFFFF)] or [b""]
    return b"".join(_TLV_HEAD.pack(ENCRYPTED_BODY_TAG, len(p)) + p for p in pieces)


def decrypt_lc_body(cipher: Cipher, container: bytes) -> bytes:
    """The plaintext of an ``E042`` container (``legacy``: still zero-padded)."""
    if len(container) < 4:
        raise CryptoError("truncated E042 container")
    sealed = bytearray()
    pos = 0
    while pos < len(container):
        if len(container) - pos < 4:
            raise CryptoError("truncated E042 container")
        tag, length = _TLV_HEAD.unpack_from(container, pos)
        pos += 4
        if tag != ENCRYPTED_BODY_TAG or pos + length > len(container):
            raise CryptoError("body is not a sequence of E042 TLVs")
        sealed += container[pos : pos + length]
        pos += length
    return cipher.decrypt(bytes(sealed))


def encrypt_xml(cipher: Cipher, plaintext: bytes) -> str:
    """``encryptedBody`` text: base64 of Enc_SessionKey(UTF-8 operation element) (4.4)."""
    return base64.b64encode(cipher.encrypt(bytes(plaintext))).decode("ascii")


def decrypt_xml(cipher: Cipher, text: str) -> bytes:
    """Inverse of :func:`encrypt_xml`; trailing NULs are ``legacy`` padding (XML has none)."""
    try:
        sealed = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError, AttributeError):
        raise CryptoError("encryptedBody is not base64") from None
    return cipher.decrypt(sealed).rstrip(b"\x00")

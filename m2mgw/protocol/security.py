"""Digests, credential proofs, ciphers and secrets of the terminal protocol (spec 6).

Everything here is pure (bytes in, bytes out) so the codec and session layers can
use it without I/O. Bad input raises only :class:`ProtocolError` or its subclass
:class:`CryptoError`; :func:`verify` never raises at all.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import string
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.ciphers import Cipher as _CryptoCipher
from cryptography.hazmat.primitives.ciphers import algorithms, modes
from cryptography.hazmat.primitives.padding import PKCS7

from m2mgw.protocol.constants import DIGEST_TLV_SIZE, HEADER_SIZE, MAX_LENGTH, Flag
from m2mgw.protocol.errors import CryptoError, ProtocolError
from m2mgw.protocol.tlv import decode_tlvs, tlv_dict

try:  # cryptography >= 43 moved TripleDES here; the old name warns when used.
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # pragma: no cover - only on cryptography 42
    from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES

__all__ = [
    "ENCRYPTION_ALGORITHM",
    "NEVER",
    "AesCipher",
    "Cipher",
    "DigestKey",
    "LegacyCipher",
    "base_key_proof",
    "compute_digest",
    "decode_session_key",
    "decrypt_body",
    "downlink_proof",
    "encode_session_key",
    "encrypt_body",
    "generate_base_key",
    "generate_password",
    "generate_secret",
    "generate_session_key",
    "imei_field",
    "make_cipher",
    "password_proof",
    "proofs_equal",
    "sign",
    "uplink_proof",
    "verify",
]

NEVER = 0xFFFFFFFF
"""Expiry value meaning "never expires" (spec 3.7)."""

ENCRYPTION_ALGORITHM: dict[str, int] = {"legacy": 1, "aes": 2}
"""Cipher profile → value of TLV ``E035`` (PD-33)."""

IMEI_SIZE = 16
IMSI_SIZE = 15
PASSWORD_SIZE = 8
SESSION_KEY_SIZE = 16
BASE_KEY_SIZE = {"legacy": 24, "aes": 16}

_TAG_DIGEST = 0xE021
_TAG_UPLINK_PASSWORD, _TAG_UPLINK_EXPIRY = 0xE025, 0xE027
_TAG_DOWNLINK_PASSWORD, _TAG_DOWNLINK_EXPIRY = 0xE028, 0xE02A
_TAG_BASE_KEY, _TAG_BASE_KEY_EXPIRY = 0xE036, 0xE038
_TAG_SESSION_KEY, _TAG_SESSION_KEY_EXPIRY = 0xE03B, 0xE03D

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_pack_u32 = _U32.pack
_md5 = hashlib.md5
_TLV_HEAD = struct.Struct(">HH")
_TLV_U32 = struct.Struct(">HHI")
_DIGEST_HEAD = _TLV_HEAD.pack(_TAG_DIGEST, 16)
_MIN_SIGNED = HEADER_SIZE + DIGEST_TLV_SIZE
_DIGEST_BIT = int(Flag.DIGEST)  # a plain int: IntFlag arithmetic costs ~1 µs per message
_SECRET_ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase


def _ascii(value: str | bytes, what: str) -> bytes:
    """Credentials arrive as str (config, database) or bytes (wire); normalise to bytes."""
    if isinstance(value, str):
        try:
            return value.encode("ascii")
        except UnicodeEncodeError:
            raise ProtocolError(f"{what} is not ASCII") from None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise ProtocolError(f"{what} must be str or bytes, not {type(value).__name__}")


def _sized(value: str | bytes, size: int, what: str) -> bytes:
    data = _ascii(value, what)
    if len(data) != size:
        raise ProtocolError(f"{what} must be {size} bytes, got {len(data)}")
    return data


def _u32(value: int, what: str) -> bytes:
    if not isinstance(value, int) or not 0 <= value <= NEVER:
        raise ProtocolError(f"{what} is not a u32: {value!r}")
    return _U32.pack(value)


def _tlv_bytes(tag: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ProtocolError(f"TLV 0x{tag:04X} value too long ({len(value)} bytes)")
    return _TLV_HEAD.pack(tag, len(value)) + value


def _tlv_u32(tag: int, value: int, what: str) -> bytes:
    return _TLV_HEAD.pack(tag, 4) + _u32(value, what)


# --- identity and digest (6.2, PD-04, PD-37) ------------------------------------------


def imei_field(imei: str | bytes) -> bytes:
    """The 16-byte IMEI field: 15 ASCII digits ‖ 0x00 (spec 3.7 ``E00E``, 6.2)."""
    if isinstance(imei, str):
        digits = _ascii(imei, "IMEI")
        field_bytes = digits + b"\x00"
    else:
        field_bytes = _ascii(imei, "IMEI")
        digits = field_bytes[:15]
        if field_bytes[15:] != b"\x00":
            raise ProtocolError("IMEI field must be 15 digits followed by 0x00")
    if len(digits) != 15 or not digits.isdigit():
        raise ProtocolError("IMEI must be 15 ASCII digits")
    return field_bytes


@dataclass(frozen=True, slots=True)
class DigestKey:
    """The per-terminal, per-direction inputs of the digest after M and TS (PD-04).

    ``suffix`` (IMEI ‖ IMSI ‖ PW, 39 bytes) is built once so that signing and
    verifying cost one MD5 and no concatenation of identity fields per message.
    """

    imei: bytes
    imsi: bytes
    password: bytes = field(repr=False)
    suffix: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for value, size, what in (
            (self.imei, IMEI_SIZE, "IMEI field"),
            (self.imsi, IMSI_SIZE, "IMSI"),
            (self.password, PASSWORD_SIZE, "password"),
        ):
            if not isinstance(value, bytes) or len(value) != size:
                raise ProtocolError(f"{what} must be {size} bytes")
        object.__setattr__(self, "suffix", self.imei + self.imsi + self.password)

    @classmethod
    def make(cls, imei: str | bytes, imsi: str | bytes, password: str | bytes) -> DigestKey:
        """Build a key from config/database values (str) or wire fields (bytes)."""
        return cls(
            imei_field(imei),
            _sized(imsi, IMSI_SIZE, "IMSI"),
            _sized(password, PASSWORD_SIZE, "password"),
        )


def compute_digest(m: bytes | bytearray, timestamp: int, key: DigestKey) -> bytes:
    """MD5(M ‖ TS u32 ‖ IMEI ‖ IMSI ‖ PW) (spec 6.2, PD-04).

    Once per message signed or verified: ``struct`` checks the timestamp as it packs it.
    """
    try:
        tail = _pack_u32(timestamp) + key.suffix
    except struct.error:
        raise ProtocolError(f"timestamp is not a u32: {timestamp!r}") from None
    digest = _md5(m)
    digest.update(tail)
    return digest.digest()


def sign(frame: bytes, timestamp: int, key: DigestKey) -> bytes:
    """Append the digest TLV to a complete unsigned message (header + body).

    Sets flag ``0x20`` and Total_Length (which M covers) before digesting, as 6.2
    "Sending" steps 2-4 require.
    """
    length = len(frame) + DIGEST_TLV_SIZE
    if length < _MIN_SIGNED or length > MAX_LENGTH:
        raise ProtocolError(f"cannot sign a {len(frame)}-byte frame")
    out = bytearray(frame)
    out[0:2] = _U16.pack(length)
    out[10] |= _DIGEST_BIT
    digest = compute_digest(out, timestamp, key)
    out += _DIGEST_HEAD
    out += digest
    return bytes(out)


def verify(message: bytes, timestamp: int, key: DigestKey) -> bool:
    """True when ``message`` carries a digest TLV that matches (spec 6.2 "Receiving").

    Never raises: any malformed input is simply "not verified".
    """
    try:
        size = len(message)
        if size < _MIN_SIGNED or not message[10] & _DIGEST_BIT:
            return False
        body_end = size - DIGEST_TLV_SIZE
        if bytes(message[body_end : body_end + 4]) != _DIGEST_HEAD:
            return False
        expected = compute_digest(message[:body_end], timestamp, key)
        return hmac.compare_digest(expected, bytes(message[body_end + 4 :]))
    except (ProtocolError, TypeError, ValueError):
        return False


# --- credential proofs (6.3.3) ---------------------------------------------------------


def password_proof(password_tag: int, password: str | bytes, expiry_tag: int, expiry: int) -> bytes:
    """MD5(TLV(credential) ‖ TLV(expiry)), the TLV using the credential's actual length."""
    plain = _tlv_bytes(password_tag, _ascii(password, "credential"))
    return hashlib.md5(plain + _tlv_u32(expiry_tag, expiry, "expiry")).digest()


def uplink_proof(password: str | bytes, expiry: int) -> bytes:
    """``E026``: proof of the uplink password ``E025`` and its expiry ``E027``."""
    return password_proof(_TAG_UPLINK_PASSWORD, password, _TAG_UPLINK_EXPIRY, expiry)


def downlink_proof(password: str | bytes, expiry: int) -> bytes:
    """``E029``: proof of the downlink password ``E028`` and its expiry ``E02A``."""
    return password_proof(_TAG_DOWNLINK_PASSWORD, password, _TAG_DOWNLINK_EXPIRY, expiry)


def base_key_proof(key: str | bytes, expiry: int | None) -> bytes:
    """``E03A``: proof of the base key ``E036``; an unset ``E038`` counts as "never"."""
    return password_proof(
        _TAG_BASE_KEY, key, _TAG_BASE_KEY_EXPIRY, NEVER if expiry is None else expiry
    )


def proofs_equal(a: bytes, b: bytes) -> bool:
    """Constant-time comparison, so a proof check leaks no prefix information."""
    return hmac.compare_digest(bytes(a), bytes(b))


# --- ciphers (6.4.1, PD-07) ------------------------------------------------------------


class Cipher(Protocol):
    """A cipher profile bound to one key; ``encrypt``/``decrypt`` are pure."""

    name: str

    def encrypt(self, plain: bytes) -> bytes: ...

    def decrypt(self, data: bytes) -> bytes: ...


class _Context(Protocol):
    """The shape shared by cryptography's cipher and padding contexts."""

    def update(self, data: bytes, /) -> bytes: ...

    def finalize(self) -> bytes: ...


def _run(context: _Context, data: bytes) -> bytes:
    """Drive a cryptography context, turning its input errors into CryptoError."""
    try:
        return context.update(data) + context.finalize()
    except (ValueError, TypeError) as exc:
        raise CryptoError(f"cipher failure: {exc}") from None


class LegacyCipher:
    """3DES-ECB with zero padding (profile ``legacy``).

    ``decrypt`` returns the padded plaintext: only the structure parser can tell
    padding from trailing zero bytes of the last element (6.4.1).
    """

    name = "legacy"
    __slots__ = ("_cipher",)

    def __init__(self, key: str | bytes) -> None:
        raw = _ascii(key, "legacy key")
        if len(raw) == 16:
            raw += raw[:8]  # two-key 3DES: K1 ‖ K2 ‖ K1
        elif len(raw) != 24:
            raise ProtocolError(f"legacy key must be 16 or 24 bytes, got {len(raw)}")
        self._cipher = _CryptoCipher(TripleDES(raw), modes.ECB())

    def encrypt(self, plain: bytes) -> bytes:
        if not plain:
            raise ProtocolError("legacy cipher cannot encrypt an empty plaintext")
        padded = bytes(plain) + b"\x00" * (-len(plain) % 8)
        return _run(self._cipher.encryptor(), padded)

    def decrypt(self, data: bytes) -> bytes:
        if not data or len(data) % 8:
            raise CryptoError(f"legacy ciphertext length {len(data)} is not a multiple of 8")
        return _run(self._cipher.decryptor(), data)


class AesCipher:
    """AES-128-CBC, PKCS#7, random IV prefixed (profile ``aes``).

    ``random`` is injectable only so that test vectors with a fixed IV can be built.
    """

    name = "aes"
    __slots__ = ("_algorithm", "_random")

    def __init__(self, key: str | bytes, random: Callable[[int], bytes] = os.urandom) -> None:
        self._algorithm = algorithms.AES(_sized(key, 16, "aes key"))
        self._random = random

    def encrypt(self, plain: bytes) -> bytes:
        iv = self._random(16)
        if len(iv) != 16:
            raise ProtocolError("IV source returned the wrong length")
        padder = PKCS7(128).padder()
        padded = padder.update(bytes(plain)) + padder.finalize()
        return iv + _run(_CryptoCipher(self._algorithm, modes.CBC(iv)).encryptor(), padded)

    def decrypt(self, data: bytes) -> bytes:
        if len(data) < 32 or len(data) % 16:
            raise CryptoError(f"aes ciphertext length {len(data)} is invalid")
        data = bytes(data)
        decryptor = _CryptoCipher(self._algorithm, modes.CBC(data[:16])).decryptor()
        return _run(PKCS7(128).unpadder(), _run(decryptor, data[16:]))


_CIPHERS: dict[str, Callable[[str | bytes], Cipher]] = {
    "legacy": LegacyCipher,
    "aes": AesCipher,
}


def make_cipher(profile: str, key: str | bytes) -> Cipher:
    """The cipher of a provisioned profile; ``none`` has no cipher and is an error here."""
    try:
        factory = _CIPHERS[profile]
    except (KeyError, TypeError):
        raise ProtocolError(f"no cipher for profile {profile!r}") from None
    return factory(key)


# --- containers (6.4.2, 6.4.3) ---------------------------------------------------------


def _limit(value: bytes) -> bytes:
    """A container value must fit a TLV length (u16)."""
    if len(value) > 0xFFFF:
        raise ProtocolError(f"encrypted value too long for a TLV ({len(value)} bytes)")
    return value


def encode_session_key(cipher: Cipher, session_key: str, expiry: int) -> bytes:
    """The ``E040`` value: Enc_base(TLV(E03B, key) ‖ TLV(E03D, expiry)) (6.4.2)."""
    key = _ascii(session_key, "session key")
    if not key:
        raise ProtocolError("empty session key")
    plain = _tlv_bytes(_TAG_SESSION_KEY, key) + _tlv_u32(
        _TAG_SESSION_KEY_EXPIRY, expiry, "session key expiry"
    )
    return _limit(cipher.encrypt(plain))


def _plain_tlvs(plain: bytes) -> dict[int, bytes]:
    """Split a decrypted TLV stream, stopping at zero padding (fewer than 8 0x00 bytes)."""
    try:
        return tlv_dict(decode_tlvs(plain, padded=True))
    except ProtocolError as exc:
        raise CryptoError(f"decrypted data: {exc.reason}") from None


def decode_session_key(cipher: Cipher, value: bytes) -> tuple[str, int]:
    """Decrypt an ``E040`` value into (session key, expiry).

    A wrong base key yields garbage rather than an error, so any parse failure of
    the plaintext is reported as :class:`CryptoError` too.
    """
    fields = _plain_tlvs(cipher.decrypt(value))
    key = fields.get(_TAG_SESSION_KEY)
    expiry = fields.get(_TAG_SESSION_KEY_EXPIRY)
    if not key or not key.isascii() or expiry is None or len(expiry) not in (1, 2, 4):
        raise CryptoError("E040 does not hold a session key and its expiry")
    return key.decode("ascii"), int.from_bytes(expiry, "big")


def encrypt_body(cipher: Cipher, body: bytes) -> bytes:
    """The ``E042`` value for a complete plaintext body (6.4.3)."""
    return _limit(cipher.encrypt(body))


def decrypt_body(cipher: Cipher, value: bytes) -> bytes:
    """The plaintext body of an ``E042`` value (zero-padded for ``legacy``)."""
    return cipher.decrypt(value)


# --- secret generation (6.3.2, PD-39) --------------------------------------------------


class _Chooser(Protocol):
    def choice(self, seq: Sequence[str], /) -> str: ...


def generate_secret(length: int, random: _Chooser = secrets) -> str:
    """A string of ``length`` characters from ``0-9A-Za-z``, CSPRNG by default."""
    if length <= 0:
        raise ProtocolError(f"secret length must be positive, got {length}")
    return "".join(random.choice(_SECRET_ALPHABET) for _ in range(length))


def generate_password(random: _Chooser = secrets) -> str:
    """An uplink or downlink password: exactly 8 characters (PD-39)."""
    return generate_secret(PASSWORD_SIZE, random)


def generate_base_key(profile: str, random: _Chooser = secrets) -> str:
    """A base key: 24 characters for ``legacy``, 16 for ``aes`` (PD-39)."""
    try:
        length = BASE_KEY_SIZE[profile]
    except (KeyError, TypeError):
        raise ProtocolError(f"no base key for profile {profile!r}") from None
    return generate_secret(length, random)


def generate_session_key(random: _Chooser = secrets) -> str:
    """A session key: 16 characters, valid for both ciphers (PD-39)."""
    return generate_secret(SESSION_KEY_SIZE, random)

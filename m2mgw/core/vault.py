"""Secrets at rest (spec 6.3.2): values sealed with AES-256-GCM under a master key.

Digests need the plaintext passwords and keys, so the registry must be able to recover
them; it stores them sealed under a 32-byte master key kept in its own file (mode
0600), never in the database, so that a copy of the database alone (a backup, a stolen
disk image) yields no credential (D-280).

A sealed value is ``PREFIX ‖ nonce ‖ ciphertext ‖ tag``: the versioned prefix tells it
from plaintext (a database from before sealing is migrated value by value), the nonce
is random per value, and the associated data is the value's *context* (table, row key
and column), so a value moved to another row or column no longer decrypts (D-282).

The module knows nothing of SQLite: the registry says what to seal and where.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections import OrderedDict
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from m2mgw.core.registry import RegistryError

#: Marks a sealed value, and its format version.
PREFIX = b"m2mgw-enc-v1:"
KEY_BYTES = 32
NONCE_BYTES = 12
#: Sealed values remembered (by context), so that writing an unchanged secret again
#: costs a comparison, not an encryption: a terminal's record is saved at every
#: request sent to it, with its credential set unchanged. It also keeps the number of
#: encryptions under one key (random nonces) far below 2**32 (D-285). About 25 MB full.
MEMO_SIZE = 32_768
_CHECK_LABEL = b"m2mgw master key check v1"
_HEADER = len(PREFIX) + NONCE_BYTES


class VaultError(RegistryError):
    """The master key or a sealed value is unusable; the message is one line."""


def is_sealed(value: object) -> bool:
    """Whether a stored value is a sealed one (plaintext is ``str``, or bytes without
    the prefix: no plaintext secret of the registry starts with it)."""
    return isinstance(value, bytes) and value.startswith(PREFIX)


class Vault:
    """Seals and opens values under one master key; each value bound to its context."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise VaultError(f"a master key has {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        #: Names the key without revealing it: recorded in the registry, so that a
        #: missing or different key file is told at start-up (D-283).
        self.check_value = hmac.new(key, _CHECK_LABEL, "sha256").hexdigest()[:16]
        self._memo: OrderedDict[str, tuple[bytes, bytes]] = OrderedDict()

    def seal(self, data: bytes, context: str) -> bytes:
        """``data`` encrypted and bound to ``context``, with a fresh nonce (unless the
        same data was sealed or opened in this context lately: then that value)."""
        memo = self._memo.get(context)
        if memo is not None and memo[0] == data:
            self._memo.move_to_end(context)
            return memo[1]
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = PREFIX + nonce + self._aead.encrypt(nonce, data, context.encode())
        self._remember(context, data, sealed)
        return sealed

    def open(self, sealed: bytes, context: str) -> bytes:
        """The data of a value sealed in ``context``; VaultError if it is not sealed,
        was altered, was sealed in another context or under another key."""
        if not is_sealed(sealed):
            raise VaultError(f"{context} is stored in plaintext where a sealed value belongs")
        nonce = sealed[len(PREFIX) : _HEADER]
        try:
            data = self._aead.decrypt(nonce, sealed[_HEADER:], context.encode())
        except InvalidTag:
            raise VaultError(
                f"{context} does not decrypt under the master key: it was altered, or "
                "moved from another row or column"
            ) from None
        self._remember(context, data, sealed)
        return data

    def _remember(self, context: str, data: bytes, sealed: bytes) -> None:
        self._memo[context] = (data, sealed)
        self._memo.move_to_end(context)
        if len(self._memo) > MEMO_SIZE:
            self._memo.popitem(last=False)


# --- the key file ----------------------------------------------------------------------


@dataclass(frozen=True)
class MasterKey:
    """A master key as read from its file; ``created``: the file's mtime (UNIX time),
    ``mode``: its permission bits."""

    key: bytes
    created: float
    mode: int

    @property
    def exposed(self) -> bool:
        """Whether users other than the owner may read the file."""
        return bool(self.mode & 0o077)


def read_key(path: str) -> MasterKey | None:
    """The key in ``path``; None if there is no such file."""
    try:
        with open(path, "rb") as f:
            key = f.read(KEY_BYTES + 1)
            info = os.fstat(f.fileno())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise VaultError(f"cannot read the master key file {path}: {exc.strerror}") from None
    if len(key) != KEY_BYTES:
        size = f"{len(key)}" if len(key) <= KEY_BYTES else f"more than {KEY_BYTES}"
        raise VaultError(
            f"the master key file {path} holds {size} bytes, not {KEY_BYTES}: it is not "
            "an m2mgw master key"
        )
    return MasterKey(key, info.st_mtime, stat.S_IMODE(info.st_mode))


def create_key(path: str) -> MasterKey:
    """A new random key written to ``path`` (mode 0600) and flushed to disk before it
    seals anything; the key already there if another process was first."""
    key = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        existing = read_key(path)
        if existing is None:  # removed again in between: a fault worth a clear line
            raise VaultError(f"the master key file {path} vanished while created") from None
        return existing
    except OSError as exc:
        raise VaultError(f"cannot create the master key file {path}: {exc.strerror}") from None
    try:
        os.write(fd, key)
        os.fsync(fd)
        info = os.fstat(fd)
    except OSError as exc:
        os.unlink(path)
        raise VaultError(f"cannot write the master key file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    _sync_directory(os.path.dirname(path) or ".")
    return MasterKey(key, info.st_mtime, stat.S_IMODE(info.st_mode))


def _sync_directory(directory: str) -> None:
    """Make a new file's directory entry durable: a crash must not lose the key after
    the database was sealed under it."""
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private(path: str) -> bool:
    """Create ``path`` empty with mode 0600 if it does not exist; whether it did.

    SQLite gives the ``-wal`` and ``-shm`` files the database file's mode, so a
    database created this way keeps all three private (D-286)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        return False
    return True

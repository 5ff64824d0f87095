"""The terminal's credentials (6.3): digest keys, ciphers, and SECURITY_CONFIG's sets (4.13)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from m2mgw.protocol import tags
from m2mgw.protocol.constants import SecurityOp
from m2mgw.protocol.errors import ProtocolError
from m2mgw.protocol.security import (
    AesCipher,
    Cipher,
    DigestKey,
    base_key_proof,
    downlink_proof,
    make_cipher,
    uplink_proof,
)
from m2mgw.protocol.tags import decode_int
from m2mgw.protocol.terminal._identity import Credentials, TerminalIdentity, is_security
from m2mgw.protocol.tlv import Tlv

CREDENTIAL_TAGS = frozenset(tags.CREDENTIAL_TAGS)
_PASSWORD_TAGS = frozenset({tags.UPLINK_PASSWORD, tags.DOWNLINK_PASSWORD})
_EXPIRY_TAGS = frozenset({tags.UPLINK_EXPIRY, tags.DOWNLINK_EXPIRY, tags.BASE_KEY_EXPIRY})
_FIELDS: dict[int, str] = {
    tags.UPLINK_PASSWORD: "uplink_password",
    tags.UPLINK_EXPIRY: "uplink_expiry",
    tags.DOWNLINK_PASSWORD: "downlink_password",
    tags.DOWNLINK_EXPIRY: "downlink_expiry",
    tags.BASE_KEY: "base_key",
    tags.BASE_KEY_EXPIRY: "base_key_expiry",
}


class TerminalStateError(ProtocolError):
    """A method was called that the terminal cannot honour (e.g. no base key)."""


def invalid_security_values(values: dict[int, bytes]) -> list[int]:
    """The op-0 tags whose values the terminal cannot use (4.13)."""
    return [tag for tag, raw in values.items() if not _usable(tag, raw)]


def _usable(tag: int, raw: bytes) -> bool:
    """8-character passwords, 16/24-character keys, integer expiries, other security tags."""
    if tag in _PASSWORD_TAGS:
        return len(raw) == 8 and raw.isascii()
    if tag == tags.BASE_KEY:
        return len(raw) in (16, 24) and raw.isascii()
    if tag in _EXPIRY_TAGS:
        return len(raw) in (1, 2, 4)
    return is_security(tag)


def register_proofs(creds: Credentials) -> list[Tlv]:
    """What REGISTER op 3 proves of a preset set (4.3): each password, and the base key."""
    return [
        Tlv(tags.UPLINK_PROOF, uplink_proof(creds.uplink_password, creds.uplink_expiry)),
        Tlv(tags.DOWNLINK_PROOF, downlink_proof(creds.downlink_password, creds.downlink_expiry)),
        Tlv(tags.BASE_KEY_PROOF, base_key_proof(creds.base_key or "", creds.base_key_expiry)),
    ]


class Keyring:
    """The credential set in use and what derives from it.

    The set itself stays in ``identity.credentials``, as in a terminal's flash; its two
    digest keys are built once per set (PD-04); a set that SECURITY_CONFIG op 0 delivered
    waits in ``staged`` until it is adopted, since the ACK and a LOGOUT 9 still use the
    old one (6.3.5).
    """

    def __init__(self, identity: TerminalIdentity, random: Callable[[int], bytes]) -> None:
        self.identity = identity
        self._random = random
        self.staged: Credentials | None = None
        self.uplink: DigestKey | None = None
        self.downlink: DigestKey | None = None
        self.rekey()

    def rekey(self) -> None:
        """Build the digest keys of the set in use for the registered IMSI."""
        creds = self.identity.credentials
        self.uplink = self.downlink = None
        if creds is not None:
            self.uplink = self.digest_key(self.identity.imsi, creds.uplink_password)
            self.downlink = self.digest_key(self.identity.imsi, creds.downlink_password)

    def digest_key(self, imsi: str, password: str) -> DigestKey:
        return DigestKey.make(self.identity.imei, imsi, password)

    def require(self) -> Credentials:
        if self.identity.credentials is None:
            raise TerminalStateError(f"{self.identity.serial} has no credentials")
        return self.identity.credentials

    def cipher(self, key: str) -> Cipher:
        """A cipher of the identity's profile; AES draws its IVs from ``random``."""
        profile = self.identity.cipher or ""
        return AesCipher(key, self._random) if profile == "aes" else make_cipher(profile, key)

    def base_cipher(self) -> Cipher:
        creds = self.require()
        if creds.base_key is None:
            raise TerminalStateError("no base key")
        return self.cipher(creds.base_key)

    def stage(self, values: dict[int, bytes]) -> Credentials | None:
        """Keep the set that op-0 ``values`` make of the current one; None when they hold
        no credential."""
        if not CREDENTIAL_TAGS & values.keys():
            return None
        changes: dict[str, Any] = {
            name: (raw.decode("ascii") if tag not in _EXPIRY_TAGS else decode_int(raw))
            for tag, name in _FIELDS.items()
            if (raw := values.get(tag)) is not None
        }
        self.staged = replace(self.identity.credentials or Credentials("", ""), **changes)
        return self.staged

    def adopt(self) -> None:
        """Switch to the staged set, if any (6.3.5)."""
        if self.staged is None:
            return
        self.identity.credentials, self.staged = self.staged, None
        self.rekey()

    def read(self, op: int, wanted: list[int]) -> tuple[list[Tlv], list[int]]:
        """SECURITY_CONFIG op 1 (values) or op 2 (proofs instead of secrets); and the
        tags that cannot be read."""
        creds = self.identity.credentials
        if creds is None:
            return [], wanted
        proofs = {
            tags.UPLINK_PASSWORD: (
                tags.UPLINK_PROOF, uplink_proof(creds.uplink_password, creds.uplink_expiry)
            ),
            tags.DOWNLINK_PASSWORD: (
                tags.DOWNLINK_PROOF,
                downlink_proof(creds.downlink_password, creds.downlink_expiry),
            ),
        }
        if creds.base_key is not None:
            proofs[tags.BASE_KEY] = (
                tags.BASE_KEY_PROOF, base_key_proof(creds.base_key, creds.base_key_expiry)
            )
        out, failing = [], []
        for tag in wanted:
            name = _FIELDS.get(tag)
            value = getattr(creds, name) if name else None
            if value is None:
                failing.append(tag)
                continue
            if tag in _EXPIRY_TAGS:
                out.append(Tlv.of(tag, value))
            elif op == SecurityOp.READ_DIGEST:
                out.append(Tlv(*proofs[tag]))
            else:
                out.append(Tlv.of(tag, value))
        return out, failing

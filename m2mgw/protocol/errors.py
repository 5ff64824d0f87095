"""The one exception family for malformed or unacceptable protocol input.

Every decoder in :mod:`m2mgw.protocol` raises :class:`ProtocolError` (or a subclass)
and nothing else, so callers can catch one type and answer or drop cleanly.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Malformed or unacceptable input.

    ``result`` is the result code to answer with where the protocol defines one
    (spec 4.2 rule 4), else ``None`` (the message is discarded).
    """

    def __init__(self, reason: str, result: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.result = result


class FramingError(ProtocolError):
    """The byte stream cannot be framed; on TCP the connection must close (spec 2.2)."""


class HeaderError(ProtocolError):
    """The 28-byte header failed a receiver check (spec 2.2)."""


class BodyError(ProtocolError):
    """A body or TLV cannot be parsed (spec 4.2 rule 4)."""


class DigestError(ProtocolError):
    """A digest is missing, malformed or does not verify (spec 6.2)."""


class CryptoError(ProtocolError):
    """A ciphertext cannot be decrypted (spec 6.4.1)."""


class FragmentError(ProtocolError):
    """A sub-packet exchange broke its rules (spec 7.4); the exchange is aborted."""

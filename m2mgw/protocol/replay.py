"""Replay detection for signed messages (issue #15, D-292..D-302), sans-I/O.

A digest (6.2) proves who signed a message, not when: within one session the bytes of
a signed request verify for as long as the session lasts, and a LOGIN's digest, made
with timestamp 0, verifies for as long as the passwords do. The response cache (8.2)
recognises a retransmission only while it holds the entry. These records remember
more, in little memory, so that a message already accepted is never acted on again:

* :class:`ReplayWindow`: one session's signed messages, by Sequence_ID and digest;
* :class:`LoginMemory`: the LOGINs each terminal had accepted.

Digests are kept as their first :data:`PREFIX` bytes: MD5 output is uniform, and two
different messages of one terminal agree on 64 bits with negligible probability.
"""

from __future__ import annotations

from enum import Enum

#: Bytes of a digest kept: enough to tell a terminal's messages apart.
PREFIX = 8
#: Signed messages one window remembers, as many as the response cache holds (PD-10):
#: reordering by up to this many messages is told from a replay exactly (D-292).
WINDOW = 32
#: LOGINs remembered per terminal (D-300).
LOGINS = 16

_MODULUS = 1 << 32
_HALF = 1 << 31
#: A window entry: Sequence_ID (u32) then the digest prefix.
_ENTRY = 4 + PREFIX


def newer(a: int, b: int) -> bool:
    """Whether Sequence_ID ``a`` comes after ``b``, counting across the wrap (8.1)."""
    return 0 < (a - b) % _MODULUS < _HALF


class Freshness(Enum):
    """What a window says of a signed message."""

    FRESH = "fresh"
    #: Its digest was accepted before in this session.
    REPLAYED = "replayed"
    #: Its Sequence_ID is at or behind the oldest one the window has forgotten: it
    #: cannot be told from a replay, so it is treated as one.
    STALE = "stale"


def _find(blob: bytes | bytearray, value: bytes, size: int, offset: int = 0) -> int:
    """The index of the record of ``size`` bytes whose bytes at ``offset`` are
    ``value``, or -1: a C-speed search held to record boundaries."""
    found = blob.find(value, offset)
    while found != -1 and (found - offset) % size:
        found = blob.find(value, found + 1)
    return -1 if found == -1 else (found - offset) // size


class ReplayWindow:
    """The signed messages of one session: a digest seen is a replay, and so is a
    Sequence_ID at or behind the newest one whose digests were all forgotten.

    Sequence_IDs need not increase (8.1): any order is accepted while the window
    remembers the digests around it. When it is full, the oldest entry goes and the
    floor rises to its Sequence_ID (to the one before, while a sibling with the same
    Sequence_ID, a fragment part, is still remembered). One entry is 12 bytes of a
    bytearray (Sequence_ID, digest prefix), oldest first.
    """

    __slots__ = ("_capacity", "_entries", "_floor")

    def __init__(self, capacity: int = WINDOW) -> None:
        if capacity < 1:
            raise ValueError("a replay window holds at least one message")
        self._capacity = capacity
        self._entries = bytearray()
        self._floor: int | None = None

    def __len__(self) -> int:
        return len(self._entries) // _ENTRY

    def check(self, sequence_id: int, digest: bytes) -> Freshness:
        """Whether a verified message with this Sequence_ID and digest is new."""
        if _find(self._entries, digest[:PREFIX], _ENTRY, 4) != -1:
            return Freshness.REPLAYED
        if self._floor is not None and not newer(sequence_id, self._floor):
            return Freshness.STALE
        return Freshness.FRESH

    def accept(self, sequence_id: int, digest: bytes) -> None:
        """Remember a message that is being acted on."""
        self._entries += sequence_id.to_bytes(4, "big") + digest[:PREFIX]
        if len(self._entries) <= self._capacity * _ENTRY:
            return
        oldest = bytes(self._entries[:4])
        del self._entries[:_ENTRY]
        sequence = int.from_bytes(oldest, "big")
        if _find(self._entries, oldest, _ENTRY) != -1:
            sequence = (sequence - 1) % _MODULUS
        if self._floor is None or newer(sequence, self._floor):
            self._floor = sequence

    def forget(self, digest: bytes) -> None:
        """Forget a message that was not acted on after all (its data could not be
        stored), so that its retransmission is processed."""
        index = _find(self._entries, digest[:PREFIX], _ENTRY, 4)
        if index != -1:
            del self._entries[index * _ENTRY : (index + 1) * _ENTRY]


class LoginMemory:
    """The digests of the last :data:`LOGINS` LOGINs each terminal had accepted.

    Only LOGINs that verified are remembered, so the serials are provisioned ones and
    the memory is bounded by the registry: about 250 bytes per terminal.
    """

    def __init__(self, per_terminal: int = LOGINS) -> None:
        self._per_terminal = per_terminal
        self._seen: dict[str, bytes] = {}

    def seen(self, serial: str, digest: bytes) -> bool:
        return _find(self._seen.get(serial, b""), digest[:PREFIX], PREFIX) != -1

    def remember(self, serial: str, digest: bytes) -> None:
        """Remember it as the newest, forgetting the oldest beyond the bound."""
        prefix = digest[:PREFIX]
        kept = self._seen.get(serial, b"")
        index = _find(kept, prefix, PREFIX)
        if index != -1:
            kept = kept[: index * PREFIX] + kept[(index + 1) * PREFIX :]
        self._seen[serial] = (kept + prefix)[-self._per_terminal * PREFIX :]

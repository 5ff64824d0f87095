"""The response cache that answers duplicate requests (spec 8.2, PD-09, PD-10), sans-I/O.

The session layer looks a request up before acting on it. A fresh entry whose request
hash matches is a duplicate: its cached answer frames are sent again (or, while the
original is still being processed, the duplicate is ignored). What is *not* cached
(HEART_BEAT, ``0x4008`` op 2/op 3) is the caller's decision.

Memory: a request is kept as a 16-byte hash, the per-terminal key as one int, and an
entry as a small tuple, so 100,000 terminals × 32 entries stays within reach.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

CacheKey = tuple[str, int, int, int]
"""(serial, request Command_ID, Sequence_ID, part number; 0 when unfragmented)."""


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A duplicate: send ``answers`` (one or more frames) again, do not act again."""

    answers: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class InProgress:
    """A duplicate of a request still being processed: ignore it (8.2)."""


IN_PROGRESS = InProgress()


class _Entry(NamedTuple):
    stored_at: float
    digest: bytes
    answers: tuple[bytes, ...] | None  # None while the request is being processed


class _TerminalEntries(OrderedDict[int, _Entry]):
    """One terminal's entries in LRU order, plus the time of its latest write."""

    __slots__ = ("last_write",)

    def __init__(self, now: float) -> None:
        super().__init__()
        self.last_write = now


def _digest(request: bytes) -> bytes:
    return hashlib.blake2b(request, digest_size=16).digest()


def _slot(command_id: int, sequence_id: int, part: int) -> int:
    """Pack (u16, u32, u16) into one int: smaller and faster to hash than a tuple."""
    return (command_id << 48) | (sequence_id << 16) | part


class ResponseCache:
    """Recent answers per terminal, keyed by :data:`CacheKey` (spec 8.2).

    Entries live ``window`` seconds from when they were written. Each terminal keeps
    at most ``entries_per_terminal``, dropping its least recently used; at most
    ``max_terminals`` terminals are kept, dropping the one written least recently.
    """

    def __init__(
        self, window: float = 300.0, entries_per_terminal: int = 32, max_terminals: int = 100_000
    ) -> None:
        if entries_per_terminal < 1 or max_terminals < 1:
            raise ValueError("cache bounds must be positive")
        self._window = window
        self._per_terminal = entries_per_terminal
        self._max_terminals = max_terminals
        self._terminals: OrderedDict[str, _TerminalEntries] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def lookup(self, key: CacheKey, request: bytes, now: float) -> CacheHit | InProgress | None:
        """The cached outcome when ``request`` duplicates a fresh entry, else ``None``.

        A cached key with different request bytes is a miss: it is a new request (for
        example after the terminal restarted its counter), to be stored over the old.
        """
        serial, command_id, sequence_id, part = key
        entries = self._terminals.get(serial)
        if entries is None:
            return None
        slot = _slot(command_id, sequence_id, part)
        entry = entries.get(slot)
        if entry is None:
            return None
        if now - entry.stored_at >= self._window:
            self._remove(serial, entries, slot)
            return None
        if entry.digest != _digest(request):
            return None
        entries.move_to_end(slot)
        return IN_PROGRESS if entry.answers is None else CacheHit(entry.answers)

    def begin(self, key: CacheKey, request: bytes, now: float) -> None:
        """Mark ``key`` as being processed, so duplicates meanwhile are ignored."""
        self._put(key, _Entry(now, _digest(request), None))

    def store(self, key: CacheKey, request: bytes, answers: list[bytes], now: float) -> None:
        """Cache the answer frames sent for ``request``, replacing any entry at ``key``."""
        self._put(key, _Entry(now, _digest(request), tuple(answers)))

    def cancel(self, key: CacheKey) -> None:
        """Forget an in-progress entry whose request produced no answer."""
        serial, command_id, sequence_id, part = key
        entries = self._terminals.get(serial)
        slot = _slot(command_id, sequence_id, part)
        if entries is not None and slot in entries and entries[slot].answers is None:
            self._remove(serial, entries, slot)

    def clear_terminal(self, serial: str, keep: CacheKey | None = None) -> None:
        """Drop a terminal's entries at a new session, except ``keep`` (its LOGIN_ACK)."""
        entries = self._terminals.pop(serial, None)
        if entries is None:
            return
        self._count -= len(entries)
        if keep is None or keep[0] != serial:
            return
        kept = entries.get(_slot(*keep[1:]))
        if kept is not None:
            self._put(keep, kept)

    def expire(self, now: float) -> int:
        """Drop the terminals whose entries are all older than the window; count entries.

        Entries of still-active terminals age out lazily on lookup or by LRU.
        """
        dropped = 0
        while self._terminals:
            serial, entries = next(iter(self._terminals.items()))
            if now - entries.last_write < self._window:
                break
            del self._terminals[serial]
            dropped += len(entries)
        self._count -= dropped
        return dropped

    def _put(self, key: CacheKey, entry: _Entry) -> None:
        serial, command_id, sequence_id, part = key
        entries = self._terminals.get(serial)
        if entries is None:
            entries = self._terminals[serial] = _TerminalEntries(entry.stored_at)
            if len(self._terminals) > self._max_terminals:
                self._count -= len(self._terminals.popitem(last=False)[1])
        else:
            self._terminals.move_to_end(serial)
            entries.last_write = max(entries.last_write, entry.stored_at)
        slot = _slot(command_id, sequence_id, part)
        if entries.pop(slot, None) is None:
            self._count += 1
        entries[slot] = entry
        if len(entries) > self._per_terminal:
            entries.popitem(last=False)
            self._count -= 1

    def _remove(self, serial: str, entries: _TerminalEntries, slot: int) -> None:
        del entries[slot]
        self._count -= 1
        if not entries:
            del self._terminals[serial]

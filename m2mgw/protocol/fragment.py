"""Sub-packet mechanism, TLV ``0x4008`` (spec section 7, PD-11, PD-28), sans-I/O.

This module works on the ``0x4008`` TLV *value* and on whole bodies. The codec layer
wraps each part into a complete message (header, digest); the session layer keeps one
:class:`ReassemblyTable` per peer and one :class:`FragmentSender` per outgoing
fragmented message, passes ``now`` in, and turns the returned events into messages:
:func:`reply_to` says which ``0x4008`` value a receiver answers a part with, the one
reply policy of every machine that reassembles. Nothing here logs: what happened is
returned, and the callers log it with their own context (serial, AppID, Sequence_ID).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from enum import IntEnum

from m2mgw.protocol.errors import FragmentError

FRAGMENT_TAG = 0x4008
MAX_PARTS = 128
DEFAULT_THRESHOLD = 900

_HEAD = struct.Struct(">HHHB")
_TLV_HEAD = struct.Struct(">HH")
_U16 = 0xFFFF
_MAX_CHUNK = _U16 - _HEAD.size  # the TLV length (7 + n) is a u16


class FragmentOp(IntEnum):
    """The op byte of a ``0x4008`` value (spec 7.2)."""

    DATA = 0
    NEXT = 1
    RECEIVER_ABORT = 2
    SENDER_ABORT = 3


_ENDING_OPS = (FragmentOp.RECEIVER_ABORT, FragmentOp.SENDER_ABORT)


@dataclass(frozen=True, slots=True)
class FragmentPart:
    """One ``0x4008`` value: TransID, part count N, part number, op and chunk."""

    trans_id: int
    total: int
    part: int
    op: int
    chunk: bytes = b""

    def __post_init__(self) -> None:
        # Only the field widths are checked here, so encode() can never fail;
        # the protocol rules are checked by decode() and by the state machines.
        if not all(
            isinstance(v, int) and 0 <= v <= _U16 for v in (self.trans_id, self.total, self.part)
        ):
            raise FragmentError("4008 TransID, total and part must be u16")
        if not (isinstance(self.op, int) and 0 <= self.op <= 0xFF):
            raise FragmentError("4008 op must be u8")
        if not isinstance(self.chunk, bytes) or len(self.chunk) > _MAX_CHUNK:
            raise FragmentError(f"4008 chunk must be bytes of at most {_MAX_CHUNK}")

    def encode(self) -> bytes:
        """The TLV value: u16 TransID ‖ u16 N ‖ u16 part ‖ u8 op ‖ chunk."""
        return _HEAD.pack(self.trans_id, self.total, self.part, self.op) + self.chunk

    def encode_tlv(self) -> bytes:
        """The whole TLV (tag, length, value), i.e. the body of a part message."""
        value = self.encode()
        return _TLV_HEAD.pack(FRAGMENT_TAG, len(value)) + value

    @classmethod
    def decode(cls, value: bytes) -> FragmentPart:
        """Parse a TLV value; FragmentError when it breaks the format of spec 7.2."""
        if len(value) < _HEAD.size:
            raise FragmentError(f"4008 value of {len(value)} bytes, need at least 7")
        trans_id, total, part, op = _HEAD.unpack_from(value)
        chunk = bytes(value[_HEAD.size :])
        if op > FragmentOp.SENDER_ABORT:
            raise FragmentError(f"4008 op {op} unknown")
        if chunk and op != FragmentOp.DATA:
            raise FragmentError(f"4008 op {op} carries a chunk")
        if not 1 <= total <= MAX_PARTS:
            raise FragmentError(f"4008 part count {total} outside 1..{MAX_PARTS}")
        if part == 0:
            raise FragmentError("4008 part number 0")
        return cls(trans_id, total, part, FragmentOp(op), chunk)


class FragmentAbort(FragmentError):
    """A part exchange ended abnormally (spec 7.5).

    ``reply`` is the ``0x4008`` op-3 value to send to the peer, or ``None`` when
    nothing is to be sent (the peer itself ended the exchange with op 2 or op 3).
    """

    def __init__(self, reason: str, reply: FragmentPart | None) -> None:
        super().__init__(reason)
        self.reply = reply


def split_body(body: bytes, threshold: int = DEFAULT_THRESHOLD) -> list[bytes]:
    """The chunks of ``body``: ⌈len/threshold⌉ of them, ``[body]`` when it fits (7.1).

    Unlike the SIMCom stack, no empty extra part is produced for exact multiples.
    """
    if threshold < 1:
        raise ValueError(f"fragment threshold {threshold} must be positive")
    if len(body) <= threshold:
        return [body]
    return [body[i : i + threshold] for i in range(0, len(body), threshold)]


class FragmentSender:
    """Hands out the parts of one outgoing body as the receiver asks for them (7.3, 7.5).

    ``first()`` gives part 1; each op-1 answer passed to ``on_answer`` gives the part to
    send next. An exchange that ends abnormally raises :class:`FragmentAbort`, whose
    ``reply`` is the op-3 part to send (``None`` after the receiver's op 2). After the
    last part the receiver sends the normal answer, which the caller handles itself;
    ``done`` is then true.
    """

    def __init__(self, body: bytes, trans_id: int, threshold: int = DEFAULT_THRESHOLD) -> None:
        self._chunks = split_body(body, threshold)
        if len(self._chunks) > MAX_PARTS:
            raise FragmentError(
                f"body of {len(body)} bytes needs {len(self._chunks)} parts, over {MAX_PARTS}"
            )
        self.trans_id = trans_id
        self.total = len(self._chunks)
        self._sent = 0
        self._failed = False

    @property
    def done(self) -> bool:
        """Every part has been handed out and the exchange did not fail."""
        return not self._failed and self._sent == self.total

    @property
    def failed(self) -> bool:
        return self._failed

    @property
    def current(self) -> FragmentPart | None:
        """The last data part handed out: what a retransmission repeats (7.5)."""
        return self._data(self._sent) if self._sent else None

    def first(self) -> FragmentPart:
        """Part 1; may be called again only while part 1 is still outstanding."""
        if self._failed or self._sent > 1:
            raise RuntimeError("first() after the exchange moved on")
        self._sent = 1
        return self._data(1)

    def on_answer(self, part: FragmentPart) -> FragmentPart:
        """The data part to send in reply to the receiver's ``part``.

        An op 1 for part k+1 after part k advances. An op 1 for the part just sent
        (k ≥ 2) is a late copy of the previous answer or a renumbered retransmission
        of the request for it, so that part is repeated unchanged. Anything else
        ends the exchange (raises :class:`FragmentAbort`).
        """
        if self._failed:
            raise FragmentAbort("part exchange already ended", None)
        if part.op in _ENDING_OPS:
            self._failed = True
            raise FragmentAbort(f"peer ended part exchange {self.trans_id} (op {part.op})", None)
        if (
            self._sent
            and part.op == FragmentOp.NEXT
            and part.trans_id == self.trans_id
            and part.total == self.total
        ):
            if part.part == self._sent + 1 <= self.total:
                self._sent = part.part
                return self._data(part.part)
            if part.part == self._sent >= 2:
                return self._data(part.part)
        raise FragmentAbort(
            f"unexpected answer {part.trans_id}/{part.total}/{part.part} op {part.op} "
            f"after part {self._sent} of exchange {self.trans_id}",
            self.abort(),
        )

    def abort(self) -> FragmentPart:
        """End the exchange from this side: the op-3 part to send."""
        self._failed = True
        return FragmentPart(self.trans_id, self.total, max(self._sent, 1), FragmentOp.SENDER_ABORT)

    def _data(self, number: int) -> FragmentPart:
        return FragmentPart(
            self.trans_id, self.total, number, FragmentOp.DATA, self._chunks[number - 1]
        )


@dataclass(frozen=True, slots=True)
class FragmentLimits:
    """Reassembly bounds (spec 1.5 ``reassembly_max_bytes``, ``_max_parts``, ``_idle_timeout``)."""

    max_bytes: int = 65536
    max_parts: int = MAX_PARTS
    idle_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class NeedPart:
    """A part was accepted: answer with op 1 asking for ``next_part``."""

    trans_id: int
    total: int
    next_part: int

    @property
    def reply(self) -> FragmentPart:
        return FragmentPart(self.trans_id, self.total, self.next_part, FragmentOp.NEXT)


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A repeat of the part last received: replay the cached answer (8.2)."""

    part: FragmentPart


@dataclass(frozen=True, slots=True)
class Complete:
    """The last part arrived: process ``body`` as if it had arrived unfragmented."""

    body: bytes


@dataclass(frozen=True, slots=True)
class Abort:
    """The exchange broke the rules: send ``abort_part`` (op 2); partial data is gone."""

    abort_part: FragmentPart


@dataclass(frozen=True, slots=True)
class Ended:
    """The peer ended the exchange (op 3, or op 2): nothing is sent."""


ReassemblyEvent = NeedPart | Duplicate | Complete | Abort | Ended


def reply_to(event: ReassemblyEvent) -> FragmentPart | None:
    """The ``0x4008`` value a receiver answers a part with (7.4, PD-28), or ``None``.

    * :class:`NeedPart`: op 1 asking for the next part;
    * :class:`Duplicate`: the answer the part had, op 1 for the part after it (PD-28:
      "the cached answer is replayed"); none after the last part, whose answer is the
      whole message's, a response cache's to replay (8.2);
    * :class:`Abort`: op 2 echoing the offending part;
    * :class:`Complete` (process the body) and :class:`Ended` (the peer ended it):
      nothing.
    """
    if isinstance(event, NeedPart):
        return event.reply
    if isinstance(event, Duplicate):
        part = event.part
        if part.part < part.total:
            return FragmentPart(part.trans_id, part.total, part.part + 1, FragmentOp.NEXT)
        return None
    if isinstance(event, Abort):
        return event.abort_part
    return None


def _abort(part: FragmentPart) -> Abort:
    """The op-2 reply to an offending part, echoing its TransID, N and part number."""
    return Abort(FragmentPart(part.trans_id, part.total, part.part, FragmentOp.RECEIVER_ABORT))


class Reassembler:
    """One reassembly (spec 7.4, PD-11, PD-28).

    After completion it keeps the TransID and last part number (not the data) so that
    a retransmitted final part is recognised as a duplicate until it goes idle.
    """

    __slots__ = (
        "_chunks",
        "_complete",
        "_last",
        "_limits",
        "_max_parts",
        "_size",
        "_total",
        "_trans_id",
        "last_activity",
    )

    def __init__(self, limits: FragmentLimits | None = None) -> None:
        self._limits = limits or FragmentLimits()
        self._max_parts = min(MAX_PARTS, self._limits.max_parts)
        self.last_activity = 0.0
        self._reset()

    def _reset(self) -> None:
        self._trans_id: int | None = None
        self._total = 0
        self._last = 0
        self._chunks: list[bytes] = []
        self._size = 0
        self._complete = False

    @property
    def active(self) -> bool:
        """An exchange is in progress or has just completed."""
        return self._trans_id is not None

    @property
    def held_bytes(self) -> int:
        """Chunk bytes held for the exchange in progress."""
        return self._size

    def expired(self, now: float) -> bool:
        """No new part for ``idle_timeout`` seconds: the reassembly is to be discarded."""
        return self.active and now - self.last_activity >= self._limits.idle_timeout

    def feed(self, part: FragmentPart, now: float) -> ReassemblyEvent:
        """Take one part from the sender and say what to answer."""
        if self.expired(now):
            self._reset()
        if part.op in _ENDING_OPS:
            if part.trans_id == self._trans_id:
                self._reset()
            return Ended()
        if part.op == FragmentOp.DATA:
            if (part.trans_id, part.total, part.part) == (self._trans_id, self._total, self._last):
                return Duplicate(part)
            if part.part == 1:
                return self._start(part, now)
            if (
                part.trans_id == self._trans_id
                and part.total == self._total
                and part.part == self._last + 1
                and not self._complete
            ):
                return self._accept(part, now)
        self._reset()
        return _abort(part)

    def _start(self, part: FragmentPart, now: float) -> ReassemblyEvent:
        """A new part 1 abandons whatever came before (7.4)."""
        self._reset()
        if not 1 <= part.total <= self._max_parts:
            return _abort(part)
        self._trans_id = part.trans_id
        self._total = part.total
        return self._accept(part, now)

    def _accept(self, part: FragmentPart, now: float) -> ReassemblyEvent:
        size = self._size + len(part.chunk)
        if size > self._limits.max_bytes:
            self._reset()
            return _abort(part)
        self._chunks.append(part.chunk)
        self._size = size
        self._last = part.part
        self.last_activity = now
        if self._last < self._total:
            return NeedPart(part.trans_id, self._total, self._last + 1)
        body = b"".join(self._chunks)
        self._chunks = []
        self._size = 0
        self._complete = True
        return Complete(body)


ReassemblyKey = tuple[str, int, Hashable]
"""(serial, request Command_ID, direction): at most one reassembly each (7.4)."""


class ReassemblyTable:
    """The reassemblies of one peer (or of all peers), bounded in count and bytes.

    Entries are kept in order of their last new part, so idle ones are found at the
    front (``expire`` is O(expired)) and, when a bound is hit, the least recently
    active reassembly is dropped first.
    """

    def __init__(
        self,
        limits: FragmentLimits | None = None,
        max_entries: int = 1024,
        max_total_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._limits = limits or FragmentLimits()
        self._max_entries = max_entries
        self._max_total_bytes = max_total_bytes
        self._entries: OrderedDict[ReassemblyKey, Reassembler] = OrderedDict()
        self._bytes = 0
        self._dropped: tuple[ReassemblyKey, ...] = ()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def held_bytes(self) -> int:
        """Chunk bytes held across all reassemblies; never above ``max_total_bytes``."""
        return self._bytes

    @property
    def dropped(self) -> tuple[ReassemblyKey, ...]:
        """The other reassemblies the latest :meth:`feed` dropped to stay within the
        bounds, least recently active first (for the caller to log)."""
        return self._dropped

    def feed(self, key: ReassemblyKey, part: FragmentPart, now: float) -> ReassemblyEvent:
        """Route ``part`` to the reassembly at ``key`` and say what to answer."""
        self._dropped = ()
        entry = self._entries.get(key)
        if entry is None:
            entry = Reassembler(self._limits)
        before, seen = entry.held_bytes, entry.last_activity
        event = entry.feed(part, now)
        self._bytes += entry.held_bytes - before
        if entry.active:
            self._entries[key] = entry
            if entry.last_activity != seen:
                self._entries.move_to_end(key)
            event = self._enforce_bounds(key, part, event)
        else:
            self._entries.pop(key, None)
        return event

    def expire(self, now: float) -> list[ReassemblyKey]:
        """Drop the reassemblies idle for ``idle_timeout``; return their keys."""
        gone: list[ReassemblyKey] = []
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if not entry.expired(now):
                break
            self._drop(key)
            gone.append(key)
        return gone

    def _enforce_bounds(
        self, key: ReassemblyKey, part: FragmentPart, event: ReassemblyEvent
    ) -> ReassemblyEvent:
        """Drop the least recently active others; abort ``key`` if it alone is too big."""
        dropped: list[ReassemblyKey] = []
        while len(self._entries) > self._max_entries or self._bytes > self._max_total_bytes:
            oldest = next(iter(self._entries))
            if oldest == key:
                break
            self._drop(oldest)
            dropped.append(oldest)
        self._dropped = tuple(dropped)
        if self._bytes > self._max_total_bytes:
            self._drop(key)
            return _abort(part)
        return event

    def _drop(self, key: ReassemblyKey) -> None:
        self._bytes -= self._entries.pop(key).held_bytes


class TransIdCounter:
    """The platform's per-terminal TransID allocator (PD-28): u16 from 1, skipping 0.

    ``last`` is the value to persist; pass it back to the constructor on restart.
    """

    __slots__ = ("_last",)

    def __init__(self, last: int = 0) -> None:
        if not 0 <= last <= _U16:
            raise ValueError(f"TransID {last} is not a u16")
        self._last = last

    @property
    def last(self) -> int:
        return self._last

    def next(self) -> int:
        self._last = self._last % _U16 + 1
        return self._last

"""Fuzzing the receive paths: only ProtocolError may escape, and memory stays bounded.

Inputs are random bytes and mutations of the spec 11 vectors (bit flips, truncations,
insertions, Total_Length changes, concatenations cut at random points). They go
through the TCP framer, the UDP datagram check, the codec (with no cipher and with
both session ciphers), the fragment reassembly table and the decode tool.
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m2mgw.protocol import codec
from m2mgw.protocol.constants import MAX_LENGTH
from m2mgw.protocol.errors import ProtocolError
from m2mgw.protocol.fragment import FragmentLimits, FragmentPart, ReassemblyTable
from m2mgw.protocol.framing import StreamFramer, parse_datagram
from m2mgw.protocol.security import AesCipher, LegacyCipher
from m2mgw.tools.decode import describe
from tests.spec_examples import SESSION_KEY, TS_11_3, UPLINK, VECTORS

SEEDS = list(VECTORS.values())
CIPHERS = (None, LegacyCipher(SESSION_KEY), AesCipher(SESSION_KEY))
TABLE_BYTES = 8192  # small bounds so that the fuzz reaches them
TABLE_LIMITS = FragmentLimits(max_bytes=4096, max_parts=8, idle_timeout=5.0)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to three random edits of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(6)
        if kind == 0 and out:  # bit flip
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncation
            del out[rng.randrange(len(out) + 1) :]
        elif kind == 2:  # insertion
            at = rng.randrange(len(out) + 1)
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        elif kind == 3 and len(out) >= 2:  # Total_Length change
            value = rng.choice([0, 1, 27, 28, 47, 48, len(out) - 1, len(out) + 1, 0xFFFF])
            out[0:2] = (value & 0xFFFF).to_bytes(2, "big")
        elif kind == 4 and len(out) > 32:  # a TLV length inside the body
            at = rng.randrange(28, len(out) - 3)
            out[at : at + 2] = rng.randrange(0x10000).to_bytes(2, "big")
        elif kind == 5 and len(out) > 11:  # flag byte, e.g. container bit on a plain body
            out[10] = rng.randrange(256)
    return bytes(out)


def split(rng: random.Random, data: bytes) -> Iterator[bytes]:
    """``data`` cut at random points (a TCP stream's reads)."""
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 200)
        yield data[pos : pos + step]
        pos += step


class Harness:
    """Runs every receive path on one input; anything but ProtocolError propagates."""

    def __init__(self) -> None:
        self.table = ReassemblyTable(TABLE_LIMITS, max_entries=4, max_total_bytes=TABLE_BYTES)
        self.now = 0.0

    def message(self, raw: bytes) -> None:
        for padding in (b"", b"\x00" * 3):
            try:
                parse_datagram(raw + padding)
            except ProtocolError:
                pass
        try:
            describe(raw, key=UPLINK)
        except ProtocolError:
            pass
        try:
            frame = codec.parse_frame(raw)
        except ProtocolError:
            return
        codec.verify_frame(frame, TS_11_3, UPLINK)
        for cipher in CIPHERS:
            try:
                for tlv in codec.decode_frame(frame, cipher).tlvs:
                    tlv.value  # noqa: B018 - the typed view must fail cleanly too
            except ProtocolError:
                pass
        if frame.container_tag == codec.TAG_FRAGMENT:
            try:
                part = FragmentPart.decode(frame.container_value())
            except ProtocolError:
                return
            self.fragment(frame.header.serial, frame.header.command_id, part)

    def fragment(self, serial: str, command_id: int, part: FragmentPart) -> None:
        self.now += 0.5
        self.table.feed((serial, command_id & 0x7FFF, "up"), part, self.now)
        assert self.table.held_bytes <= TABLE_BYTES
        assert len(self.table) <= 4
        self.table.expire(self.now)

    def stream(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        """Feed the concatenated frames in random reads; a FramingError ends the stream."""
        framer = StreamFramer()
        out: list[bytes] = []
        try:
            for chunk in split(rng, b"".join(frames)):
                out += framer.feed(chunk)
                assert framer.buffered < MAX_LENGTH
        except ProtocolError:
            return out
        for raw in out:
            self.message(raw)
        return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    Harness().message(data)
    rng = random.Random(data)
    Harness().stream(rng, [data])


@settings(max_examples=300, deadline=None)
@given(seed=st.sampled_from(SEEDS), rng=st.randoms(use_true_random=False))
def test_mutated_vectors(seed: bytes, rng: random.Random) -> None:
    Harness().message(mutate(rng, seed))


@settings(max_examples=100, deadline=None)
@given(
    picks=st.lists(st.sampled_from(SEEDS), min_size=1, max_size=6),
    rng=st.randoms(use_true_random=False),
)
def test_valid_concatenations_frame_exactly(picks: list[bytes], rng: random.Random) -> None:
    assert Harness().stream(rng, picks) == picks


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(
        st.builds(
            FragmentPart,
            st.integers(0, 3),
            st.integers(0, 10),
            st.integers(0, 10),
            st.integers(0, 3),
            st.binary(max_size=1500),
        ),
        max_size=30,
    ),
    serials=st.lists(st.sampled_from(["A", "B", "C", "D", "E", "F"]), min_size=30, max_size=30),
)
def test_reassembly_table_bounded(parts: list[FragmentPart], serials: list[str]) -> None:
    harness = Harness()
    for part, serial in zip(parts, serials, strict=False):
        if part.chunk and part.op:
            part = FragmentPart(part.trans_id, part.total, part.part, part.op)
        harness.fragment(serial, 0x0007, part)


def test_framer_rejects_lengths_it_cannot_frame() -> None:
    framer = StreamFramer()
    with pytest.raises(ProtocolError):
        framer.feed(b"\x00\x1b")  # Total_Length 27 cannot resynchronise
    small = StreamFramer(max_length=100)
    with pytest.raises(ProtocolError):
        small.feed(VECTORS["11.6 CONFIG_TRAP part 1"][:2])


def test_framer_holds_at_most_one_partial_frame() -> None:
    framer = StreamFramer()
    big = VECTORS["11.6 CONFIG_TRAP part 1"]
    assert framer.feed(big[:-1]) == []
    assert framer.buffered == len(big) - 1
    assert framer.feed(big[-1:] + big[:5]) == [big]
    assert framer.buffered == 5


def _seeded_run(rng: random.Random, harness: Harness, rounds: int) -> None:
    for _ in range(rounds):
        seed = rng.choice(SEEDS)
        if rng.random() < 0.2:
            frames = [mutate(rng, f) if rng.random() < 0.3 else f for f in rng.sample(SEEDS, 3)]
            harness.stream(rng, frames)
        else:
            harness.message(mutate(rng, seed))


def test_seeded_mutations_without_memory_growth() -> None:
    """A few thousand seeded mutations; the second half must not allocate more memory."""
    rng = random.Random(20241125)
    harness = Harness()
    _seeded_run(rng, harness, 800)  # warm-up: caches, interned strings, table at its bound
    tracemalloc.start()
    try:
        _seeded_run(rng, harness, 1200)
        first, _ = tracemalloc.get_traced_memory()
        _seeded_run(rng, harness, 1200)
        second, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert harness.table.held_bytes <= TABLE_BYTES
    assert second - first < 64 * 1024, (first, second)

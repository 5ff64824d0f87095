"""Tests for the replay window and the memory of LOGINs (issue #15, D-292, D-300)."""

from __future__ import annotations

import hashlib

import pytest

from m2mgw.protocol.replay import Freshness, LoginMemory, ReplayWindow, newer
from tests.spec_examples import SERIAL

FRESH, REPLAYED, STALE = Freshness.FRESH, Freshness.REPLAYED, Freshness.STALE


def digest(name: str) -> bytes:
    """A 16-byte digest, as an E021 value is."""
    return hashlib.md5(name.encode()).digest()


def test_newer_counts_across_the_wrap() -> None:
    assert newer(2, 1) and not newer(1, 2) and not newer(5, 5)
    assert newer(1, 0xFFFFFFFF)
    assert newer(0x7FFFFFFF, 0) and not newer(0x80000000, 0)


def test_a_digest_accepted_is_a_replay_whatever_its_sequence_id() -> None:
    window = ReplayWindow()
    assert window.check(7, digest("a")) is FRESH
    window.accept(7, digest("a"))
    assert window.check(7, digest("a")) is REPLAYED
    assert window.check(8, digest("a")) is REPLAYED
    assert window.check(7, digest("b")) is FRESH, "another message with the same Sequence_ID"


def test_any_order_within_the_window() -> None:
    """8.1: Sequence_IDs need not increase."""
    window = ReplayWindow(capacity=8)
    for seq in (10, 3, 9, 1, 2):
        assert window.check(seq, digest(f"m{seq}")) is FRESH
        window.accept(seq, digest(f"m{seq}"))
    assert len(window) == 5


def test_what_the_window_forgot_is_stale() -> None:
    window = ReplayWindow(capacity=4)
    for seq in range(1, 6):
        window.accept(seq, digest(f"m{seq}"))
    assert len(window) == 4
    # Seq 1 was forgotten: anything at or behind it cannot be told from a replay.
    assert window.check(1, digest("m1")) is STALE
    assert window.check(1, digest("new")) is STALE
    assert window.check(0, digest("older")) is STALE
    assert window.check(2, digest("m2")) is REPLAYED
    assert window.check(2, digest("new")) is FRESH
    assert window.check(6, digest("m6")) is FRESH


def test_fragment_parts_share_a_sequence_id() -> None:
    """While a sibling part is remembered, the floor stays below their Sequence_ID."""
    window = ReplayWindow(capacity=3)
    for part in "abcd":
        window.accept(7, digest(part))
    assert window.check(7, digest("e")) is FRESH, "the next part of the same message"
    assert window.check(6, digest("x")) is STALE
    for part in "fgh":
        window.accept(8, digest(part))
    assert window.check(7, digest("a")) is STALE, "all of 7 forgotten"
    assert window.check(7, digest("d")) is STALE


def test_the_floor_follows_the_wrap() -> None:
    window = ReplayWindow(capacity=2)
    for seq in (0xFFFFFFFE, 0xFFFFFFFF, 1):
        window.accept(seq, digest(f"m{seq}"))
    assert window.check(0xFFFFFFFE, digest("new")) is STALE
    assert window.check(2, digest("m2")) is FRESH


def test_forget_a_message_not_acted_on() -> None:
    window = ReplayWindow()
    window.accept(3, digest("a"))
    window.accept(4, digest("b"))
    window.forget(digest("a"))
    assert window.check(3, digest("a")) is FRESH
    assert window.check(4, digest("b")) is REPLAYED
    window.forget(digest("never"))
    assert len(window) == 1


def test_prefixes_are_compared_on_their_own_boundaries() -> None:
    """A prefix that appears across two stored ones is not a match."""
    window = ReplayWindow()
    window.accept(1, bytes(range(16)))
    window.accept(2, bytes(range(16, 32)))
    straddling = bytes(range(4, 12)) + bytes(8)
    assert window.check(3, straddling) is FRESH


def test_bad_capacity() -> None:
    with pytest.raises(ValueError):
        ReplayWindow(capacity=0)


def test_login_memory_keeps_the_last_ones() -> None:
    memory = LoginMemory(per_terminal=3)
    assert not memory.seen(SERIAL, digest("l1"))
    for name in ("l1", "l2", "l3"):
        memory.remember(SERIAL, digest(name))
    memory.remember(SERIAL, digest("l1"))  # seen again: now the newest
    memory.remember(SERIAL, digest("l4"))
    assert memory.seen(SERIAL, digest("l1"))
    assert not memory.seen(SERIAL, digest("l2"))
    assert memory.seen(SERIAL, digest("l4"))
    assert not memory.seen("A972030000000002", digest("l4"))

"""Tests for the response cache (spec 8.2, PD-09, PD-10)."""

from __future__ import annotations

import pytest

from m2mgw.protocol.dupcache import IN_PROGRESS, CacheHit, InProgress, ResponseCache
from tests.spec_examples import SERIAL

KEY = (SERIAL, 0x0007, 4, 0)
REQUEST = b"config trap request bytes"
ANSWER = [b"config trap ack"]


def test_hit_and_miss() -> None:
    cache = ResponseCache()
    assert cache.lookup(KEY, REQUEST, 0.0) is None
    cache.store(KEY, REQUEST, ANSWER, 0.0)
    assert cache.lookup(KEY, REQUEST, 1.0) == CacheHit((b"config trap ack",))
    assert cache.lookup((SERIAL, 0x0007, 5, 0), REQUEST, 1.0) is None
    assert cache.lookup((SERIAL, 0x0007, 4, 1), REQUEST, 1.0) is None
    assert cache.lookup((SERIAL, 0x0004, 4, 0), REQUEST, 1.0) is None
    assert cache.lookup(("B972030000001234", 0x0007, 4, 0), REQUEST, 1.0) is None
    assert len(cache) == 1


def test_answer_of_several_frames() -> None:
    cache = ResponseCache()
    frames = [b"frame one", b"frame two", b"frame three"]
    cache.store(KEY, REQUEST, frames, 0.0)
    frames.append(b"changed later")
    assert cache.lookup(KEY, REQUEST, 1.0) == CacheHit((b"frame one", b"frame two", b"frame three"))


def test_different_bytes_is_a_new_request_that_replaces_the_entry() -> None:
    cache = ResponseCache()
    cache.store(KEY, REQUEST, ANSWER, 0.0)
    restarted = b"another request after a counter restart"
    assert cache.lookup(KEY, restarted, 1.0) is None
    cache.store(KEY, restarted, [b"new answer"], 1.0)
    assert cache.lookup(KEY, restarted, 2.0) == CacheHit((b"new answer",))
    assert cache.lookup(KEY, REQUEST, 2.0) is None
    assert len(cache) == 1


def test_in_progress_then_stored() -> None:
    cache = ResponseCache()
    cache.begin(KEY, REQUEST, 0.0)
    assert cache.lookup(KEY, REQUEST, 1.0) is IN_PROGRESS
    assert isinstance(IN_PROGRESS, InProgress)
    assert cache.lookup(KEY, b"other bytes", 1.0) is None
    cache.store(KEY, REQUEST, ANSWER, 2.0)
    assert cache.lookup(KEY, REQUEST, 3.0) == CacheHit(tuple(ANSWER))
    assert len(cache) == 1


def test_cancel_drops_only_in_progress_entries() -> None:
    cache = ResponseCache()
    other = (SERIAL, 0x0004, 9, 0)
    cache.begin(KEY, REQUEST, 0.0)
    cache.store(other, REQUEST, ANSWER, 0.0)
    cache.cancel(KEY)
    cache.cancel(other)
    cache.cancel((SERIAL, 0x0001, 1, 0))
    cache.cancel(("unknown", 0x0001, 1, 0))
    assert cache.lookup(KEY, REQUEST, 1.0) is None
    assert cache.lookup(other, REQUEST, 1.0) == CacheHit(tuple(ANSWER))
    assert len(cache) == 1


def test_window_expiry() -> None:
    cache = ResponseCache(window=300.0)
    cache.store(KEY, REQUEST, ANSWER, 100.0)
    assert cache.lookup(KEY, REQUEST, 399.9) == CacheHit(tuple(ANSWER))
    assert cache.lookup(KEY, REQUEST, 400.0) is None
    assert len(cache) == 0


def test_in_progress_expires_too() -> None:
    cache = ResponseCache(window=10.0)
    cache.begin(KEY, REQUEST, 0.0)
    assert cache.lookup(KEY, REQUEST, 10.0) is None
    assert len(cache) == 0


def test_lru_per_terminal() -> None:
    cache = ResponseCache(entries_per_terminal=3)
    keys = [(SERIAL, 0x0004, seq, 0) for seq in range(4)]
    for key in keys[:3]:
        cache.store(key, REQUEST, ANSWER, 0.0)
    assert cache.lookup(keys[0], REQUEST, 1.0) is not None  # used: now the newest
    cache.store(keys[3], REQUEST, ANSWER, 2.0)
    assert len(cache) == 3
    assert cache.lookup(keys[1], REQUEST, 3.0) is None
    assert all(cache.lookup(k, REQUEST, 3.0) for k in (keys[0], keys[2], keys[3]))


def test_other_terminals_are_unaffected_by_lru() -> None:
    cache = ResponseCache(entries_per_terminal=2)
    other = ("B972030000001234", 0x0004, 1, 0)
    cache.store(other, REQUEST, ANSWER, 0.0)
    for seq in range(5):
        cache.store((SERIAL, 0x0004, seq, 0), REQUEST, ANSWER, 0.0)
    assert cache.lookup(other, REQUEST, 1.0) is not None
    assert len(cache) == 3


def test_global_terminal_bound() -> None:
    cache = ResponseCache(max_terminals=2)
    a, b, c = (("T" + s, 0x0004, 1, 0) for s in "abc")
    cache.store(a, REQUEST, ANSWER, 0.0)
    cache.store((a[0], 0x0004, 2, 0), REQUEST, ANSWER, 0.0)
    cache.store(b, REQUEST, ANSWER, 1.0)
    cache.store(a, REQUEST, ANSWER, 2.0)  # a written again: b is now the oldest
    cache.store(c, REQUEST, ANSWER, 3.0)
    assert cache.lookup(b, REQUEST, 4.0) is None
    assert cache.lookup(a, REQUEST, 4.0) is not None
    assert cache.lookup(c, REQUEST, 4.0) is not None
    assert len(cache) == 3


def test_clear_terminal_keeps_the_login_ack() -> None:
    cache = ResponseCache()
    login = (SERIAL, 0x0001, 77, 0)
    other = ("B972030000001234", 0x0004, 1, 0)
    for seq in range(5):
        cache.store((SERIAL, 0x0004, seq, 0), REQUEST, ANSWER, 0.0)
    cache.store(login, b"login", [b"login ack"], 1.0)
    cache.store(other, REQUEST, ANSWER, 1.0)
    cache.clear_terminal(SERIAL, keep=login)
    assert len(cache) == 2
    assert cache.lookup(login, b"login", 2.0) == CacheHit((b"login ack",))
    assert cache.lookup((SERIAL, 0x0004, 1, 0), REQUEST, 2.0) is None
    assert cache.lookup(other, REQUEST, 2.0) is not None


@pytest.mark.parametrize("keep", [None, (SERIAL, 0x0001, 1, 0), ("other", 0x0004, 1, 0)])
def test_clear_terminal_without_a_kept_entry(keep: tuple | None) -> None:
    cache = ResponseCache()
    cache.store(KEY, REQUEST, ANSWER, 0.0)
    cache.clear_terminal(SERIAL, keep=keep)
    cache.clear_terminal("never seen")
    assert len(cache) == 0
    assert cache.lookup(KEY, REQUEST, 1.0) is None


def test_expire_sweeps_idle_terminals() -> None:
    cache = ResponseCache(window=300.0)
    cache.store(("T1", 4, 1, 0), REQUEST, ANSWER, 0.0)
    cache.store(("T1", 4, 2, 0), REQUEST, ANSWER, 10.0)
    cache.store(("T2", 4, 1, 0), REQUEST, ANSWER, 100.0)
    assert cache.expire(309.0) == 0
    assert cache.expire(310.0) == 2
    assert len(cache) == 1
    assert cache.lookup(("T2", 4, 1, 0), REQUEST, 310.0) is not None
    assert cache.expire(400.0) == 1
    assert len(cache) == 0


def test_many_terminals_stay_bounded() -> None:
    cache = ResponseCache(entries_per_terminal=4, max_terminals=50)
    for n in range(2000):
        cache.store((f"T{n // 10}", 4, n, 0), REQUEST, ANSWER, float(n))
    assert len(cache) == 50 * 4
    assert cache.lookup(("T199", 4, 1999, 0), REQUEST, 2000.0) is not None
    assert cache.lookup(("T199", 4, 1990, 0), REQUEST, 2000.0) is None
    assert cache.lookup(("T149", 4, 1499, 0), REQUEST, 2000.0) is None

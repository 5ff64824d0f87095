"""Tests for the sub-packet mechanism (spec 7, PD-11, PD-28) and its 11.6 vector."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2mgw.protocol.errors import FragmentError, ProtocolError
from m2mgw.protocol.fragment import (
    FRAGMENT_TAG,
    Abort,
    Complete,
    Duplicate,
    Ended,
    FragmentAbort,
    FragmentLimits,
    FragmentOp,
    FragmentPart,
    FragmentSender,
    NeedPart,
    Reassembler,
    ReassemblyTable,
    TransIdCounter,
    reply_to,
    split_body,
)
from tests.spec_examples import SERIAL, TRAP_BODY_11_6, VECTORS

KEY = (SERIAL, 0x0007, "up")


def _wire(part: FragmentPart) -> FragmentPart:
    """Round-trip through the TLV value, as a peer would see it."""
    return FragmentPart.decode(part.encode())


def _exchange(
    body: bytes, threshold: int = 900, limits: FragmentLimits | None = None
) -> tuple[list[FragmentPart], Complete | Abort]:
    """Drive a sender and a receiver against each other until the end."""
    sender = FragmentSender(body, trans_id=7, threshold=threshold)
    receiver = Reassembler(limits)
    sent = [sender.first()]
    while True:
        event = receiver.feed(_wire(sent[-1]), now=len(sent))
        if not isinstance(event, NeedPart):
            assert isinstance(event, Complete | Abort)
            return sent, event
        sent.append(sender.on_answer(_wire(event.reply)))


def _data(trans_id: int, total: int, number: int, chunk: bytes = b"x") -> FragmentPart:
    return FragmentPart(trans_id, total, number, FragmentOp.DATA, chunk)


# --- 11.6 worked example -------------------------------------------------------------


def test_11_6_body_and_chunks_match_the_hex_dumps() -> None:
    body = TRAP_BODY_11_6
    part1 = VECTORS["11.6 CONFIG_TRAP part 1"]
    ask2 = VECTORS["11.6 CONFIG_TRAP_ACK next part"]
    part2 = VECTORS["11.6 CONFIG_TRAP part 2"]
    assert len(body) == 925
    assert body[-12:] == bytes.fromhex("66FFF8F8000008D200001032")
    assert split_body(body) == [part1[39:939], part2[39:64]]
    assert len(part2[39:64]) == 25

    sender = FragmentSender(body, trans_id=1)
    first = sender.first()
    assert first == FragmentPart(1, 2, 1, FragmentOp.DATA, body[:900])
    assert first.encode_tlv() == part1[28:939]
    assert FragmentPart.decode(part1[32:939]) == first

    receiver = Reassembler()
    ask = receiver.feed(FragmentPart.decode(part1[32:939]), now=0.0)
    assert ask == NeedPart(trans_id=1, total=2, next_part=2)
    assert ask.reply.encode_tlv() == ask2[28:39]

    second = sender.on_answer(FragmentPart.decode(ask2[32:39]))
    assert second.encode_tlv() == part2[28:64]
    assert sender.done
    assert receiver.feed(FragmentPart.decode(part2[32:64]), now=1.0) == Complete(body)


# --- part format -----------------------------------------------------------------------


def test_part_round_trip_and_tlv() -> None:
    part = FragmentPart(0xBEEF, 3, 2, FragmentOp.DATA, b"abc")
    assert part.encode() == bytes.fromhex("BEEF 0003 0002 00 616263")
    assert part.encode_tlv() == struct.pack(">HH", FRAGMENT_TAG, 10) + part.encode()
    assert FragmentPart.decode(part.encode()) == part
    assert FragmentPart.decode(bytearray(part.encode())) == part


@pytest.mark.parametrize(
    "value",
    [
        b"",
        bytes.fromhex("0001 0002 0001"),  # 6 bytes
        bytes.fromhex("0001 0002 0001 04"),  # op 4
        bytes.fromhex("0001 0002 0002 01 00"),  # chunk on op 1
        bytes.fromhex("0001 0002 0002 02 00"),  # chunk on op 2
        bytes.fromhex("0001 0002 0002 03 00"),  # chunk on op 3
        bytes.fromhex("0001 0000 0001 00"),  # N = 0
        bytes.fromhex("0001 0081 0001 00"),  # N = 129
        bytes.fromhex("0001 0002 0000 00"),  # part 0
    ],
)
def test_decode_rejects(value: bytes) -> None:
    with pytest.raises(FragmentError):
        FragmentPart.decode(value)


def test_decode_accepts_limits_and_empty_chunk() -> None:
    assert FragmentPart.decode(bytes.fromhex("0000 0080 0080 00")) == _data(0, 128, 128, b"")


@pytest.mark.parametrize(
    "fields",
    [(-1, 1, 1, 0, b""), (0x10000, 1, 1, 0, b""), (1, 1, 1, 256, b""), (1, 1, 1, 0, "x")],
)
def test_part_fields_must_fit(fields: tuple) -> None:
    with pytest.raises(FragmentError):
        FragmentPart(*fields)


# --- splitting and whole exchanges ---------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 899, 900])
def test_small_body_is_not_split(size: int) -> None:
    body = bytes(range(256)) * 4
    assert split_body(body[:size]) == [body[:size]]


@pytest.mark.parametrize("size", [0, 1, 899, 900, 901, 1800, 1801, 65536])
def test_exchange_reassembles(size: int) -> None:
    body = bytes(i * 7 % 251 for i in range(size))
    sent, event = _exchange(body)
    assert event == Complete(body)
    assert len(sent) == max(1, math.ceil(size / 900))
    assert [p.part for p in sent] == list(range(1, len(sent) + 1))
    assert {(p.trans_id, p.total) for p in sent} == {(7, len(sent))}
    assert all(len(p.chunk) == 900 for p in sent[:-1])


def test_empty_final_part_accepted() -> None:
    """SIMCom sends an empty extra part for exact multiples of 900 (PD-11)."""
    body = bytes(1800)
    receiver = Reassembler()
    assert receiver.feed(_data(0, 3, 1, body[:900]), 0.0) == NeedPart(0, 3, 2)
    assert receiver.feed(_data(0, 3, 2, body[900:]), 1.0) == NeedPart(0, 3, 3)
    assert receiver.feed(_data(0, 3, 3, b""), 2.0) == Complete(body)


@settings(max_examples=60, deadline=None)
@given(body=st.binary(max_size=5000), threshold=st.integers(min_value=40, max_value=6000))
def test_split_and_reassemble_property(body: bytes, threshold: int) -> None:
    chunks = split_body(body, threshold)
    assert b"".join(chunks) == body
    assert len(chunks) == max(1, math.ceil(len(body) / threshold))
    _, event = _exchange(body, threshold)
    assert event == Complete(body)


def test_sender_refuses_more_than_128_parts() -> None:
    with pytest.raises(FragmentError):
        FragmentSender(bytes(1281), trans_id=1, threshold=10)
    assert FragmentSender(bytes(1280), trans_id=1, threshold=10).total == 128


# --- receiver rules ------------------------------------------------------------------


def test_duplicate_of_last_part_including_after_completion() -> None:
    receiver = Reassembler()
    first, last = _data(5, 2, 1), _data(5, 2, 2)
    receiver.feed(first, 0.0)
    assert receiver.feed(first, 1.0) == Duplicate(first)
    assert receiver.feed(last, 2.0) == Complete(b"xx")
    assert receiver.feed(last, 3.0) == Duplicate(last)


@pytest.mark.parametrize(
    ("second", "why"),
    [
        (_data(5, 3, 3), "skips a part"),
        (_data(6, 3, 2), "wrong TransID"),
        (_data(5, 4, 2), "N changes"),
        (FragmentPart(5, 3, 2, FragmentOp.NEXT), "op 1 to a receiver"),
    ],
)
def test_unexpected_part_aborts_and_discards(second: FragmentPart, why: str) -> None:
    receiver = Reassembler()
    receiver.feed(_data(5, 3, 1), 0.0)
    event = receiver.feed(second, 1.0)
    assert event == Abort(FragmentPart(second.trans_id, second.total, second.part, 2)), why
    assert event.abort_part.encode()[6] == FragmentOp.RECEIVER_ABORT
    assert not receiver.active and receiver.held_bytes == 0
    assert isinstance(receiver.feed(_data(5, 3, 2), 2.0), Abort)


def test_part_beyond_completion_aborts() -> None:
    receiver = Reassembler()
    receiver.feed(_data(5, 1, 1), 0.0)
    assert isinstance(receiver.feed(_data(5, 1, 2), 1.0), Abort)


def test_sender_abort_ends_the_receiver() -> None:
    receiver = Reassembler()
    receiver.feed(_data(5, 3, 1), 0.0)
    assert receiver.feed(FragmentPart(9, 3, 2, FragmentOp.SENDER_ABORT), 1.0) == Ended()
    assert receiver.active, "an op 3 for another TransID leaves this exchange alone"
    assert receiver.feed(FragmentPart(5, 3, 2, FragmentOp.SENDER_ABORT), 1.0) == Ended()
    assert not receiver.active and receiver.held_bytes == 0


def test_oversize_aborts() -> None:
    sent, event = _exchange(bytes(65537))
    assert isinstance(event, Abort)
    assert event.abort_part.part == len(sent) == 73


@pytest.mark.parametrize(
    ("limits", "total"), [(FragmentLimits(), 129), (FragmentLimits(max_parts=4), 5)]
)
def test_too_many_parts_aborts(limits: FragmentLimits, total: int) -> None:
    receiver = Reassembler(limits)
    assert isinstance(receiver.feed(_data(1, total, 1), 0.0), Abort)
    assert receiver.feed(_data(1, total - 1, 1), 0.0) == NeedPart(1, total - 1, 2)


def test_idle_timeout() -> None:
    receiver = Reassembler()
    receiver.feed(_data(1, 3, 1), 0.0)
    receiver.feed(_data(1, 3, 2), 10.0)
    assert not receiver.expired(69.9)
    assert receiver.expired(70.0)
    assert isinstance(receiver.feed(_data(1, 3, 3), 70.0), Abort)


def test_duplicates_do_not_keep_a_reassembly_alive() -> None:
    receiver = Reassembler()
    receiver.feed(_data(1, 3, 1), 0.0)
    receiver.feed(_data(1, 3, 1), 50.0)
    assert receiver.expired(60.0)


# --- sender rules --------------------------------------------------------------------


def test_receiver_abort_ends_the_sender() -> None:
    sender = FragmentSender(bytes(2000), trans_id=3)
    sender.first()
    with pytest.raises(FragmentAbort) as info:
        sender.on_answer(FragmentPart(3, 3, 2, FragmentOp.RECEIVER_ABORT))
    assert info.value.reply is None
    assert isinstance(info.value, ProtocolError)
    assert sender.failed and not sender.done
    with pytest.raises(FragmentAbort):
        sender.on_answer(FragmentPart(3, 3, 2, FragmentOp.NEXT))


@pytest.mark.parametrize(
    "answer",
    [
        FragmentPart(3, 3, 3, FragmentOp.NEXT),  # skips part 2
        FragmentPart(3, 3, 1, FragmentOp.NEXT),  # asks for part 1
        FragmentPart(4, 3, 2, FragmentOp.NEXT),  # wrong TransID
        FragmentPart(3, 4, 2, FragmentOp.NEXT),  # wrong N
        FragmentPart(3, 3, 2, FragmentOp.DATA),  # not an op 1
    ],
)
def test_wrong_answer_makes_the_sender_abort(answer: FragmentPart) -> None:
    sender = FragmentSender(bytes(2000), trans_id=3)
    sender.first()
    with pytest.raises(FragmentAbort) as info:
        sender.on_answer(answer)
    assert info.value.reply == FragmentPart(3, 3, 1, FragmentOp.SENDER_ABORT)
    assert sender.failed


def test_sender_repeats_the_part_asked_for_again() -> None:
    sender = FragmentSender(bytes(range(200)) * 10, trans_id=3)
    sender.first()
    second = sender.on_answer(FragmentPart(3, 3, 2, FragmentOp.NEXT))
    assert sender.current == second
    assert sender.on_answer(FragmentPart(3, 3, 2, FragmentOp.NEXT)) == second
    assert sender.on_answer(FragmentPart(3, 3, 3, FragmentOp.NEXT)).part == 3
    assert sender.done
    assert sender.on_answer(FragmentPart(3, 3, 3, FragmentOp.NEXT)).part == 3
    with pytest.raises(FragmentAbort):
        sender.on_answer(FragmentPart(3, 3, 4, FragmentOp.NEXT))


def test_sender_abort_part() -> None:
    sender = FragmentSender(bytes(2000), trans_id=3)
    assert sender.current is None
    sender.first()
    assert sender.abort() == FragmentPart(3, 3, 1, FragmentOp.SENDER_ABORT)
    assert sender.failed
    with pytest.raises(RuntimeError):
        sender.first()


# --- table ---------------------------------------------------------------------------


def test_table_new_part_1_abandons_older() -> None:
    table = ReassemblyTable()
    table.feed(KEY, _data(1, 3, 1, bytes(900)), 0.0)
    table.feed(KEY, _data(1, 3, 2, bytes(900)), 1.0)
    assert table.held_bytes == 1800
    assert table.feed(KEY, _data(2, 2, 1, b"a" * 900), 2.0) == NeedPart(2, 2, 2)
    assert (len(table), table.held_bytes) == (1, 900)
    assert table.feed(KEY, _data(2, 2, 2, b"b"), 3.0) == Complete(b"a" * 900 + b"b")
    assert (len(table), table.held_bytes) == (1, 0)
    assert table.feed(KEY, _data(2, 2, 2, b"b"), 4.0) == Duplicate(_data(2, 2, 2, b"b"))


def test_table_keys_are_independent_and_aborts_drop_entries() -> None:
    table = ReassemblyTable()
    other = (SERIAL, 0x0007, "down")
    table.feed(KEY, _data(1, 2, 1), 0.0)
    table.feed(other, _data(1, 2, 1), 0.0)
    assert isinstance(table.feed(KEY, _data(1, 2, 3), 1.0), Abort)
    assert len(table) == 1
    assert table.feed(other, _data(1, 2, 2), 1.0) == Complete(b"xx")
    assert isinstance(table.feed(KEY, _data(1, 2, 2), 2.0), Abort)
    assert table.feed(KEY, FragmentPart(1, 2, 2, FragmentOp.SENDER_ABORT), 2.0) == Ended()
    assert len(table) == 1


def test_table_sender_abort_drops_the_entry() -> None:
    table = ReassemblyTable()
    table.feed(KEY, _data(1, 3, 1, bytes(900)), 0.0)
    assert table.feed(KEY, FragmentPart(1, 3, 2, FragmentOp.SENDER_ABORT), 1.0) == Ended()
    assert (len(table), table.held_bytes) == (0, 0)


def test_table_expire() -> None:
    table = ReassemblyTable()
    keys = [("S1", 7, "up"), ("S2", 7, "up"), ("S3", 7, "up")]
    for t, key in enumerate(keys):
        table.feed(key, _data(1, 2, 1), float(t * 10))
    table.feed(keys[0], _data(1, 2, 1), 25.0)  # a duplicate does not refresh
    table.feed(keys[1], _data(1, 2, 2), 30.0)  # completion does
    assert table.expire(59.0) == []
    assert table.expire(80.0) == [keys[0], keys[2]]
    assert len(table) == 1
    assert table.expire(90.0) == [keys[1]]
    assert (len(table), table.held_bytes) == (0, 0)


def test_table_entry_bound_drops_oldest() -> None:
    table = ReassemblyTable(max_entries=3)
    keys = [(f"S{i}", 7, "up") for i in range(4)]
    for t, key in enumerate(keys):
        table.feed(key, _data(1, 2, 1), float(t))
        assert table.dropped == ((keys[0],) if t == 3 else ())
    assert len(table) == 3
    assert isinstance(table.feed(keys[0], _data(1, 2, 2), 5.0), Abort)
    assert table.feed(keys[1], _data(1, 2, 2), 5.0) == Complete(b"xx")


def test_table_byte_bound() -> None:
    table = ReassemblyTable(max_total_bytes=2000)
    for t, serial in enumerate(["S1", "S2", "S3"]):
        table.feed((serial, 7, "up"), _data(1, 3, 1, bytes(900)), float(t))
    assert (len(table), table.held_bytes) == (2, 1800)
    assert table.dropped == (("S1", 7, "up"),)  # the least recently active
    assert isinstance(table.feed(("S1", 7, "up"), _data(1, 3, 2, bytes(900)), 5.0), Abort)

    small = ReassemblyTable(max_total_bytes=500)
    event = small.feed(KEY, _data(1, 3, 1, bytes(900)), 0.0)
    assert event == Abort(FragmentPart(1, 3, 1, FragmentOp.RECEIVER_ABORT))
    assert (len(small), small.held_bytes) == (0, 0)


# --- the receiver's reply ------------------------------------------------------------


def test_reply_to_each_event() -> None:
    receiver = Reassembler()
    need = receiver.feed(_data(4, 3, 1), 0.0)
    assert reply_to(need) == FragmentPart(4, 3, 2, FragmentOp.NEXT)
    # A repeat gets the answer it had: op 1 for the part after it (PD-28).
    assert reply_to(receiver.feed(_data(4, 3, 1), 1.0)) == FragmentPart(4, 3, 2, FragmentOp.NEXT)
    receiver.feed(_data(4, 3, 2), 2.0)
    assert reply_to(receiver.feed(_data(4, 3, 3), 3.0)) is None  # Complete: process it
    # The last part repeated: its answer is the whole message's, not a 4008.
    assert reply_to(receiver.feed(_data(4, 3, 3), 4.0)) is None
    abort = receiver.feed(_data(5, 3, 2), 5.0)
    assert reply_to(abort) == FragmentPart(5, 3, 2, FragmentOp.RECEIVER_ABORT)
    assert reply_to(receiver.feed(FragmentPart(5, 3, 2, FragmentOp.SENDER_ABORT), 6.0)) is None


# --- fuzz ----------------------------------------------------------------------------

_FIELD = st.one_of(st.integers(min_value=0, max_value=6), st.integers(-2, 0x10001))
_FIELDS = st.tuples(
    st.integers(min_value=0, max_value=3),
    _FIELD,
    _FIELD,
    st.integers(min_value=-1, max_value=256),
    st.binary(max_size=700),
)


@settings(max_examples=300, deadline=None)
@given(value=st.binary(max_size=40))
def test_fuzz_decode(value: bytes) -> None:
    try:
        part = FragmentPart.decode(value)
    except FragmentError:
        return
    assert part.encode() == value


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 4), _FIELDS, st.floats(0, 5)), max_size=40))
def test_fuzz_table_stays_bounded(steps: list[tuple[int, tuple, float]]) -> None:
    """Arbitrary part values: only FragmentError (bad widths), never a crash or growth."""
    limits = FragmentLimits(max_bytes=2000, max_parts=6, idle_timeout=30.0)
    table = ReassemblyTable(limits, max_entries=3, max_total_bytes=3000)
    now = 0.0
    for index, fields, dt in steps:
        now += dt
        try:
            part = FragmentPart(*fields)
        except FragmentError:
            continue
        event = table.feed((f"S{index}", 7, "up"), part, now)
        assert isinstance(event, NeedPart | Duplicate | Complete | Abort | Ended)
        assert 0 <= table.held_bytes <= 3000
        assert len(table) <= 3
        table.expire(now)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.binary(min_size=7, max_size=30), max_size=20))
def test_fuzz_table_from_bytes(values: list[bytes]) -> None:
    table = ReassemblyTable(FragmentLimits(max_bytes=50), max_entries=2, max_total_bytes=60)
    for now, value in enumerate(values):
        try:
            table.feed(KEY, FragmentPart.decode(value), float(now))
        except FragmentError:
            continue
        assert table.held_bytes <= 50


# --- TransID counter -----------------------------------------------------------------


def test_trans_id_counter() -> None:
    counter = TransIdCounter()
    assert [counter.next(), counter.next()] == [1, 2]
    restored = TransIdCounter(0xFFFE)
    assert [restored.next(), restored.next(), restored.next()] == [0xFFFF, 1, 2]
    assert restored.last == 2
    with pytest.raises(ValueError):
        TransIdCounter(0x10000)

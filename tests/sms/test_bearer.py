"""WMMP over SMS: addressing, splitting (10.4.2/10.4.3) and reassembly."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from m2mgw.protocol.errors import ProtocolError
from m2mgw.sms.bearer import (
    ReferenceCounter,
    SmsReassembler,
    TextSms,
    WmmpSms,
    msisdn_address,
    normalize_msisdn,
    wmmp_delivers,
    wmmp_submit_pdus,
)
from m2mgw.sms.pdu import Address, SmsDeliver, UserDataHeader, decode_deliver, decode_submit, encode
from tests.spec_examples import SMS_DELIVER_11_7, SMS_SUBMIT_11_8, VECTORS

CST = timezone(timedelta(hours=8))
WHEN = datetime(2024, 3, 1, 8, 0, tzinfo=CST)
TERMINAL = "8613900000001"
WAKEUP = VECTORS["11.8 REMOTE_CTRL"]  # spec 11.8: the wake-up message


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("+8613900000001", "8613900000001"),
        ("008613900000001", "8613900000001"),
        ("13900000001", "8613900000001"),
        ("139 0000 0001", "8613900000001"),
        ("8613900000001", "8613900000001"),
        ("1065840436", "1065840436"),
        ("+49 151 1234567", "491511234567"),
        ("10086", "10086"),
    ],
)
def test_normalize_msisdn(raw: str, normalised: str) -> None:
    assert normalize_msisdn(raw) == normalised


@pytest.mark.parametrize(
    ("raw", "address"),
    [
        ("8613900000001", Address("8613900000001", 0x91)),
        ("13900000001", Address("8613900000001", 0x91)),
        ("+491511234567", Address("491511234567", 0x91)),
        ("1065840436", Address("1065840436", 0x81)),
        ("1064812345678", Address("1064812345678", 0x81)),  # 13-digit IoT number
    ],
)
def test_msisdn_address(raw: str, address: Address) -> None:
    assert msisdn_address(raw) == address


def test_msisdn_without_digits_is_rejected() -> None:
    with pytest.raises(ProtocolError):
        msisdn_address("+")


def test_single_segment_submit_is_spec_example_11_8() -> None:
    assert wmmp_submit_pdus(WAKEUP, "+8613900000001", reference=1) == [SMS_SUBMIT_11_8]


def test_national_destination_uses_0x81() -> None:
    [tpdu] = wmmp_submit_pdus(WAKEUP, "1065840436", reference=9, dest_port=0)
    sms = decode_submit(tpdu)
    assert sms.destination == Address("1065840436", 0x81)
    assert sms.udh == UserDataHeader(0, 49154, concat_ref=9, concat_total=1, concat_seq=1)


def test_split_into_128_byte_segments() -> None:
    message = bytes(range(256)) + bytes(44)
    tpdus = wmmp_submit_pdus(message, TERMINAL, reference=300)
    submits = [decode_submit(t) for t in tpdus]
    assert [len(s.user_data) for s in submits] == [128, 128, 44]
    assert [len(t) for t in tpdus[:2]] == [15 + 140, 15 + 140]  # full 140-octet user data
    for seq, sms in enumerate(submits, start=1):
        assert sms.udh == UserDataHeader(2862, 49154, concat_ref=44, concat_total=3, concat_seq=seq)
        assert (sms.pid, sms.dcs, sms.validity, sms.reference) == (0, 0x04, 0xFF, 0)
        assert encode(sms)[0] == 0x51
    assert b"".join(s.user_data for s in submits) == message


def test_size_limit() -> None:
    assert len(wmmp_submit_pdus(bytes(512), TERMINAL, 1)) == 4
    with pytest.raises(ProtocolError):
        wmmp_submit_pdus(bytes(513), TERMINAL, 1)
    assert len(wmmp_submit_pdus(bytes(513), TERMINAL, 1, max_parts=5)) == 5


def test_reference_counter_per_msisdn_8_bit() -> None:
    counter = ReferenceCounter()
    assert [counter.next("13900000001") for _ in range(3)] == [1, 2, 3]
    assert counter.next("+8613900000001") == 4  # same terminal, other spelling
    assert counter.next("13900000002") == 1
    for _ in range(251):
        counter.next(TERMINAL)
    assert counter.next(TERMINAL) == 0  # wrapped after 255
    assert counter.next(TERMINAL) == 1


def _segments(message: bytes, reference: int = 7, originator: str = TERMINAL) -> list[SmsDeliver]:
    return wmmp_delivers(originator, message, reference, WHEN, max_parts=255)


def test_reassembly_in_any_order_with_duplicates() -> None:
    message = bytes(range(200)) * 2
    first, second, third, fourth = _segments(message)
    reassembler = SmsReassembler()
    for sms in (third, first, third, fourth):
        assert reassembler.feed(sms, 0.0) is None
    result = reassembler.feed(second, 1.0)
    assert result == WmmpSms(message, TERMINAL, 2862, 49154, reference=7, parts=4)
    assert len(reassembler) == 0


def test_originator_is_normalised_and_part_of_the_key() -> None:
    a1, a2 = _segments(bytes(200), originator="13900000001")
    b1, _ = _segments(bytes(200), originator="13900000002")
    reassembler = SmsReassembler()
    assert reassembler.feed(a1, 0.0) is None
    assert reassembler.feed(b1, 0.0) is None
    international = replace(a2, originator=Address("8613900000001", 0x91))
    result = reassembler.feed(international, 0.0)
    assert isinstance(result, WmmpSms) and result.originator == "8613900000001"
    assert len(reassembler) == 1


def test_total_is_part_of_the_key() -> None:
    [single] = _segments(b"x" * 10)
    first, _ = _segments(b"y" * 200)
    reassembler = SmsReassembler()
    assert reassembler.feed(first, 0.0) is None
    assert reassembler.feed(single, 0.0) == WmmpSms(b"x" * 10, TERMINAL, 2862, 49154, 7, 1)


def test_incomplete_set_expires_after_300_s() -> None:
    first, second = _segments(bytes(200))
    reassembler = SmsReassembler()
    reassembler.feed(first, 100.0)
    assert reassembler.next_expiry() == 400.0
    assert reassembler.expire(399.9) == 0
    assert reassembler.feed(second, 400.0) is None  # the first part is gone
    assert len(reassembler) == 1
    assert reassembler.expire(1000.0) == 1
    assert reassembler.next_expiry() is None


def test_total_above_max_parts_is_discarded() -> None:
    segments = _segments(bytes(5 * 128))
    reassembler = SmsReassembler()
    assert all(reassembler.feed(sms, 0.0) is None for sms in segments)
    assert len(reassembler) == 0
    assert SmsReassembler(max_parts=5).feed(segments[0], 0.0) is None


@pytest.mark.parametrize(("total", "seq"), [(2, 0), (2, 3), (0, 0)])
def test_impossible_segment_numbers_are_discarded(total: int, seq: int) -> None:
    [sms] = _segments(b"abc")
    assert sms.udh is not None
    bad = replace(sms, udh=replace(sms.udh, concat_total=total, concat_seq=seq))
    reassembler = SmsReassembler()
    assert reassembler.feed(bad, 0.0) is None
    assert len(reassembler) == 0


def test_table_is_bounded() -> None:
    reassembler = SmsReassembler(max_entries=3)
    firsts = [_segments(bytes(200), reference=r)[0] for r in range(5)]
    for sms in firsts:
        reassembler.feed(sms, 0.0)
    assert len(reassembler) == 3
    # The oldest sets were evicted: their second part starts a new set.
    second_of_0 = _segments(bytes(200), reference=0)[1]
    assert reassembler.feed(second_of_0, 0.0) is None
    second_of_4 = _segments(bytes(200), reference=4)[1]
    assert isinstance(reassembler.feed(second_of_4, 0.0), WmmpSms)


def test_missing_concat_ie_is_a_single_segment() -> None:
    sms = SmsDeliver(Address(TERMINAL), WHEN, b"data", UserDataHeader(2862, 49154))
    assert SmsReassembler().feed(sms, 0.0) == WmmpSms(b"data", TERMINAL, 2862, 49154, 0, 1)


def test_port_rule() -> None:
    [wrong_port] = wmmp_delivers(TERMINAL, b"abc", 1, WHEN, dest_port=0)
    result = SmsReassembler().feed(wrong_port, 0.0)
    assert result == TextSms(TERMINAL, b"abc", WHEN, dest_port=0)
    assert wrong_port.udh is not None
    other_origin = replace(wrong_port, udh=replace(wrong_port.udh, dest_port=2862, orig_port=1234))
    assert SmsReassembler().feed(other_origin, 0.0) == WmmpSms(b"abc", TERMINAL, 2862, 1234, 1, 1)
    eight_bit_ports = replace(wrong_port, udh=UserDataHeader(46, 2, port_bits=8))
    assert isinstance(SmsReassembler(platform_port=46).feed(eight_bit_ports, 0.0), TextSms)
    assert isinstance(SmsReassembler(platform_port=0).feed(wrong_port, 0.0), WmmpSms)


def test_spec_11_7_capture_is_not_for_the_platform_port() -> None:
    """The 11.7 SMS goes platform → terminal with destination port 0."""
    sms = decode_deliver(SMS_DELIVER_11_7)
    assert isinstance(SmsReassembler().feed(sms, 0.0), TextSms)
    result = SmsReassembler(platform_port=0).feed(sms, 0.0)
    assert result == WmmpSms(VECTORS["11.7 SECURITY_CONFIG"], "1065840436", 0, 49154, 4, 1)


def test_udhi_clear_rule_end_to_end() -> None:
    [sms] = _segments(WAKEUP)
    tpdu = bytearray(encode(sms))
    tpdu[0] &= ~0x40  # a sender that forgets TP-UDHI
    result = SmsReassembler().feed(decode_deliver(bytes(tpdu)), 0.0)
    assert result == WmmpSms(WAKEUP, TERMINAL, 2862, 49154, 7, 1)


def test_text_sms_is_reported_for_logging() -> None:
    text = SmsDeliver(Address("10086", 0x81), WHEN, "余额不足", dcs=0x08)
    assert SmsReassembler().feed(text, 0.0) == TextSms("10086", "余额不足", WHEN)
    alpha = SmsDeliver(Address("CMCC", 0xD0), WHEN, "hello", dcs=0x00)
    assert SmsReassembler().feed(alpha, 0.0) == TextSms("CMCC", "hello", WHEN)
    # 7-bit text that happens to carry the WMMP port is still not WMMP (10.4.1: 8-bit).
    ported = SmsDeliver(Address(TERMINAL), WHEN, "hi", UserDataHeader(2862, 49154), dcs=0x00)
    assert isinstance(SmsReassembler().feed(ported, 0.0), TextSms)

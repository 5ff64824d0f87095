"""TS 23.040 codec: published vectors byte-exact, round trips, and fuzzing."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from m2mgw.protocol.errors import ProtocolError
from m2mgw.sms.pdu import (
    TOA_ALPHANUMERIC,
    Address,
    Alphabet,
    PduError,
    SmsDeliver,
    SmsSubmit,
    UserDataHeader,
    dcs_alphabet,
    decode,
    decode_deliver,
    decode_submit,
    decode_timestamp,
    encode,
    encode_timestamp,
    gsm7_decode,
    gsm7_encode,
    pack_septets,
    unpack_septets,
)
from tests.spec_examples import SMS_DELIVER_11_7, SMS_SUBMIT_11_8, VECTORS

CST = timezone(timedelta(hours=8))

# dreamfabric.com "SMS messages and the PDU format" (the well-known "hellohello"
# examples, also used by many GSM 03.40 tutorials), both with SMSC information.
DREAMFABRIC_DELIVER = bytes.fromhex(
    "07917283010010F5040BC87238880900F10000993092516195800AE8329BFD4697D9EC37"
)
DREAMFABRIC_SUBMIT = bytes.fromhex("0011000B916407281553F80000AA0AE8329BFD4697D9EC37")


def test_spec_11_7_deliver_decodes_and_reencodes_byte_exact() -> None:
    assert len(SMS_DELIVER_11_7) == 135
    sms = decode_deliver(SMS_DELIVER_11_7)
    assert sms == SmsDeliver(
        originator=Address("1065840436", 0xA1),
        scts=datetime(2009, 11, 30, 17, 13, 8, tzinfo=CST),
        user_data=VECTORS["11.7 SECURITY_CONFIG"],
        udh=UserDataHeader(
            dest_port=0, orig_port=0xC002, concat_ref=4, concat_total=1, concat_seq=1
        ),
        pid=0x21,
        dcs=0x04,
        status_report_indication=True,
    )
    assert encode(sms) == SMS_DELIVER_11_7


def test_spec_11_8_submit_decodes_and_reencodes_byte_exact() -> None:
    sms = decode_submit(SMS_SUBMIT_11_8)
    assert sms == SmsSubmit(
        destination=Address("8613900000001", 0x91),
        user_data=VECTORS["11.8 REMOTE_CTRL"],
        udh=UserDataHeader(
            dest_port=2862, orig_port=49154, concat_ref=1, concat_total=1, concat_seq=1
        ),
        validity=0xFF,
    )
    assert encode(sms) == SMS_SUBMIT_11_8
    assert encode(sms, smsc_prefix=True) == b"\x00" + SMS_SUBMIT_11_8  # 11.8: "prefixed with 00"


def test_dreamfabric_deliver() -> None:
    sms = decode(DREAMFABRIC_DELIVER, smsc_prefix=True)
    assert isinstance(sms, SmsDeliver)
    assert sms.smsc == Address("27381000015", 0x91)
    assert sms.originator == Address("27838890001", 0xC8)
    assert sms.scts == datetime(1999, 3, 29, 15, 16, 59, tzinfo=timezone(timedelta(hours=2)))
    assert (sms.dcs, sms.user_data, sms.udh) == (0, "hellohello", None)
    assert encode(sms, smsc_prefix=True) == DREAMFABRIC_DELIVER


def test_dreamfabric_submit() -> None:
    sms = decode_submit(DREAMFABRIC_SUBMIT, smsc_prefix=True)
    assert sms.smsc is None
    assert sms.destination == Address("46708251358", 0x91)
    assert (sms.validity, sms.user_data) == (0xAA, "hellohello")
    assert encode(sms, smsc_prefix=True) == DREAMFABRIC_SUBMIT


def test_gsm7_packing_of_hellohello() -> None:
    # Same tutorial: "hellohello" packs to E8329BFD4697D9EC37.
    packed = pack_septets(gsm7_encode("hellohello"))
    assert packed == bytes.fromhex("E8329BFD4697D9EC37")
    assert gsm7_decode(unpack_septets(packed, 10)) == "hellohello"


def test_gsm7_extension_and_escape_rules() -> None:
    assert gsm7_encode("€[") == [0x1B, 0x65, 0x1B, 0x3C]
    assert gsm7_decode([0x1B, 0x41]) == "A"  # unknown extension: basic character
    assert gsm7_decode([0x1B, 0x1B]) == " "
    assert gsm7_decode([0x41, 0x1B]) == "A"
    with pytest.raises(PduError):
        gsm7_encode("你")


def test_gsm7_with_udh_uses_fill_bits() -> None:
    udh = UserDataHeader(concat_ref=7, concat_total=2, concat_seq=1)
    sms = SmsSubmit(Address("46708251358"), "hellohello", udh=udh, dcs=0x00)
    tpdu = encode(sms)
    # UDL = 7 header septets (6 octets + 1 fill bit) + 10 text septets.
    udl_offset = 2 + 2 + 6 + 2
    assert tpdu[udl_offset] == 17
    assert tpdu[udl_offset + 1 : udl_offset + 7] == bytes.fromhex("050003070201")
    # The text starts one bit into the first octet after the header.
    assert tpdu[udl_offset + 7 :] == pack_septets(gsm7_encode("hellohello"), fill_bits=1)
    assert decode(tpdu) == sms


def test_ucs2_text() -> None:
    sms = SmsDeliver(Address("8613900000001"), datetime(2024, 5, 1, tzinfo=CST), "你好", dcs=0x08)
    tpdu = encode(sms)
    assert tpdu.endswith(bytes.fromhex("04 4F60 597D"))
    assert decode(tpdu) == sms


def test_alphanumeric_originator() -> None:
    sender = Address("Info@Home", TOA_ALPHANUMERIC)
    sms = SmsDeliver(sender, datetime(2024, 5, 1, 12, tzinfo=CST), "hi", dcs=0)
    tpdu = encode(sms)
    # 9 characters = 63 bits = 16 semi-octets, type 0xD0.
    assert tpdu[1:3] == bytes((16, 0xD0))
    assert decode_deliver(tpdu).originator == sender


def test_timestamp_negative_zone() -> None:
    when = datetime(2023, 12, 31, 23, 59, 58, tzinfo=timezone(-timedelta(hours=5)))
    data = encode_timestamp(when)
    assert data == bytes.fromhex("3221133295850A")
    assert decode_timestamp(data) == when


@pytest.mark.parametrize(
    ("dcs", "alphabet"),
    [(0x00, Alphabet.GSM7), (0x04, Alphabet.DATA8), (0x08, Alphabet.UCS2),
     (0xF4, Alphabet.DATA8), (0xF0, Alphabet.GSM7), (0x15, Alphabet.DATA8),
     (0x24, Alphabet.DATA8), (0xE0, Alphabet.UCS2), (0x0C, Alphabet.GSM7)],
)  # fmt: skip
def test_dcs_alphabet(dcs: int, alphabet: Alphabet) -> None:
    assert dcs_alphabet(dcs) is alphabet


def test_udh_variants_round_trip() -> None:
    header = UserDataHeader(
        dest_port=0x50,
        orig_port=0x51,
        port_bits=8,
        concat_ref=0x1234,
        concat_total=3,
        concat_seq=2,
        concat_ref_bits=16,
        other=((0x24, b"\x01"),),
    )
    data = header.encode()
    assert data == bytes.fromhex("0D 04025051 080412340302 240101")
    assert UserDataHeader.decode(data + b"payload") == (header, len(data))


def test_udh_repeated_ie_last_wins_and_bad_length_rejected() -> None:
    header, _ = UserDataHeader.decode(bytes.fromhex("0A 0003010101 0003020302"))
    assert (header.concat_ref, header.concat_total, header.concat_seq) == (2, 3, 2)
    with pytest.raises(PduError):
        UserDataHeader.decode(bytes.fromhex("04 05020B2E"))


def _clear_udhi(tpdu: bytes) -> bytes:
    return bytes((tpdu[0] & ~0x40,)) + tpdu[1:]


def test_udhi_clear_but_wmmp_header_present_is_treated_as_udh() -> None:
    sms = decode_deliver(_clear_udhi(SMS_DELIVER_11_7))
    assert sms.udh is not None and sms.udh.orig_port == 0xC002
    assert sms.user_data == VECTORS["11.7 SECURITY_CONFIG"]


def test_udhi_clear_with_broken_header_stays_data() -> None:
    sms = SmsDeliver(Address("1"), datetime(2024, 1, 1, tzinfo=CST), b"\x0b\x05\x04\x00")
    assert decode_deliver(encode(sms)).user_data == b"\x0b\x05\x04\x00"
    assert decode_deliver(encode(sms)).udh is None


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        SMS_DELIVER_11_7[:-1],  # user data shorter than UDL
        SMS_DELIVER_11_7[:10],  # truncated timestamp
        bytes.fromhex("02"),  # status report: unsupported
        bytes.fromhex("040BC87238880900FF00009930925161958000"),  # filler inside address
        bytes.fromhex("040BC87238880900F10000AA30925161958000"),  # timestamp not BCD
        bytes.fromhex("040BC87238880900F1000099319251619580 00"),  # month 13
        bytes.fromhex("440BC87238880900F10000993092516195800100"),  # UDHI, UDHL past end
        bytes.fromhex("040BC87238880900F10008993092516195800141"),  # odd UCS2
    ],
)
def test_malformed_pdus_raise_pdu_error(bad: bytes) -> None:
    with pytest.raises(PduError):
        decode(bad)


def test_encode_rejects_inconsistent_messages() -> None:
    when = datetime(2024, 1, 1, tzinfo=CST)
    for sms in (
        SmsDeliver(Address("1"), when, "text", dcs=0x04),  # 8-bit needs bytes
        SmsDeliver(Address("1"), when, b"x" * 141),  # too long
        SmsDeliver(Address("1"), datetime(2024, 1, 1), b""),  # naive timestamp
        SmsSubmit(Address("12x"), b""),  # not a BCD digit
        SmsSubmit(Address("1"), b"", reference=256),
    ):
        with pytest.raises(PduError):
            encode(sms)
    assert issubclass(PduError, ProtocolError)


# --- hypothesis --------------------------------------------------------------------

_GSM7_SAMPLE = "@£$¥èéÇ\nØ\rΔ_ !\"#%&'()*+,-./09:;<=>?¡AZÄÖÑÜ§¿azäöñüà^{}\\[~]|€"
_gsm7_text = st.text(alphabet=st.sampled_from(sorted(set(_GSM7_SAMPLE))), max_size=40)
_digits = st.text(alphabet="0123456789", min_size=1, max_size=20)
_address = st.one_of(
    st.builds(Address, _digits, st.sampled_from([0x91, 0x81, 0xA1, 0xC8])),
    st.builds(Address, st.text(alphabet="ABCxyz019 @", min_size=1, max_size=11),
              st.just(TOA_ALPHANUMERIC)),
)  # fmt: skip
_zone = st.integers(-79, 79).map(lambda q: timezone(timedelta(minutes=15 * q)))
_timestamp = st.builds(
    lambda dt, tz: dt.replace(tzinfo=tz),
    st.datetimes(datetime(1969, 1, 1), datetime(2068, 12, 31, 23, 59, 59)).map(
        lambda dt: dt.replace(microsecond=0)
    ),
    _zone,
)
_udh = st.one_of(
    st.none(),
    st.builds(
        UserDataHeader,
        dest_port=st.integers(0, 0xFFFF),
        orig_port=st.integers(0, 0xFFFF),
        concat_ref=st.integers(0, 0xFF),
        concat_total=st.integers(0, 0xFF),
        concat_seq=st.integers(0, 0xFF),
    ),
    st.builds(
        UserDataHeader,
        concat_ref=st.integers(0, 0xFFFF),
        concat_total=st.integers(1, 4),
        concat_seq=st.integers(1, 4),
        concat_ref_bits=st.just(16),
        other=st.lists(st.tuples(st.integers(0x20, 0x6F), st.binary(max_size=4)), max_size=2).map(
            tuple
        ),
    ),
)
_payload = st.one_of(
    st.tuples(st.sampled_from([0x04, 0xF5]), st.binary(max_size=100)),
    st.tuples(st.sampled_from([0x00, 0xF0, 0x10]), _gsm7_text),
    st.tuples(st.just(0x08), st.text(max_size=30)),
)
_smsc = st.one_of(st.none(), st.builds(Address, _digits.filter(lambda d: len(d) <= 18)))


def _no_accidental_wmmp_header(sms: SmsDeliver | SmsSubmit) -> bool:
    """With no UDH, 8-bit data starting 0B 05 04 is read back as a header (10.4.2)."""
    return sms.udh is not None or not (
        isinstance(sms.user_data, bytes) and sms.user_data.startswith(b"\x0b\x05\x04")
    )


@settings(max_examples=150, deadline=None)
@given(_address, _timestamp, _payload, _udh, st.integers(0, 255), st.booleans(), _smsc)
def test_deliver_round_trip(address, scts, payload, udh, pid, flag, smsc) -> None:  # type: ignore[no-untyped-def]
    dcs, data = payload
    sms = SmsDeliver(address, scts, data, udh, pid, dcs, flag, not flag, flag, smsc)
    assume(_no_accidental_wmmp_header(sms))
    try:
        tpdu = encode(sms, smsc_prefix=True)
    except PduError:
        return  # too long for one SMS
    assert decode(tpdu, smsc_prefix=True) == sms
    assert decode(tpdu[1 + tpdu[0] :]) == replace(sms, smsc=None)


_validity = st.one_of(st.none(), st.integers(0, 255), _timestamp, st.binary(min_size=7, max_size=7))


@settings(max_examples=150, deadline=None)
@given(_address, _payload, _udh, st.integers(0, 255), _validity, st.booleans())
def test_submit_round_trip(address, payload, udh, reference, validity, flag) -> None:  # type: ignore[no-untyped-def]
    dcs, data = payload
    sms = SmsSubmit(address, data, udh, reference, 0x7F, dcs, validity, flag, not flag, flag)
    assume(_no_accidental_wmmp_header(sms))
    try:
        tpdu = encode(sms)
    except PduError:
        return
    assert decode(tpdu) == sms


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=180), st.booleans())
def test_fuzz_random_bytes_only_raise_pdu_error(data: bytes, smsc_prefix: bool) -> None:
    try:
        decode(data, smsc_prefix=smsc_prefix)
    except PduError:
        pass


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([SMS_DELIVER_11_7, SMS_SUBMIT_11_8, DREAMFABRIC_DELIVER[8:]]),
    st.lists(st.tuples(st.integers(0, 134), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_fuzz_mutated_vectors_only_raise_pdu_error(tpdu: bytes, edits) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(tpdu)
    for position, value in edits:
        data[position % len(data)] = value
    try:
        decode(bytes(data))
    except PduError:
        pass

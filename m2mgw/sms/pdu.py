"""3GPP TS 23.040 SMS-SUBMIT / SMS-DELIVER codec (pure, no I/O).

The gateway only needs 8-bit WMMP SMS (spec 10.4), but modems and terminals also
hand us text messages, alphanumeric senders and odd header layouts; decoding them
cleanly lets the bearer log them instead of choking.  Every decoder raises
:class:`PduError` and nothing else on malformed input.

PDUs as exchanged with a modem in PDU mode (``+CMGR``, ``+CMT``, ``AT+CMGS``) start
with the SMSC information; :func:`decode` and :func:`encode` handle that prefix when
``smsc_prefix=True``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from m2mgw.protocol.errors import ProtocolError


class PduError(ProtocolError):
    """A PDU cannot be decoded or the message cannot be encoded."""


# --- GSM 7-bit default alphabet (TS 23.038 6.2.1) ---------------------------------

_ESC = 0x1B
_GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = {
    0x0A: "\x0c", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\",
    0x3C: "[", 0x3D: "~", 0x3E: "]", 0x40: "|", 0x65: "€",
}  # fmt: skip
_GSM7_ENCODE: dict[str, tuple[int, ...]] = {
    ch: (code,) for code, ch in enumerate(_GSM7_BASIC) if code != _ESC
}
_GSM7_ENCODE.update({ch: (_ESC, code) for code, ch in _GSM7_EXTENSION.items()})


def gsm7_encode(text: str) -> list[int]:
    """Text → septet values; extension characters take two septets."""
    septets: list[int] = []
    for ch in text:
        codes = _GSM7_ENCODE.get(ch)
        if codes is None:
            raise PduError(f"character {ch!r} is not in the GSM 7-bit default alphabet")
        septets.extend(codes)
    return septets


def gsm7_decode(septets: list[int]) -> str:
    """Septet values → text.

    An escape followed by a code without an extension character shows the basic
    character, a double escape shows a space (TS 23.038 6.2.1.1); a trailing lone
    escape is dropped.
    """
    out: list[str] = []
    escaped = False
    for code in septets:
        if escaped:
            out.append(" " if code == _ESC else _GSM7_EXTENSION.get(code, _GSM7_BASIC[code]))
            escaped = False
        elif code == _ESC:
            escaped = True
        else:
            out.append(_GSM7_BASIC[code])
    return "".join(out)


def pack_septets(septets: list[int], fill_bits: int = 0) -> bytes:
    """Pack septets LSB first, starting ``fill_bits`` into the first octet."""
    value = 0
    for i, septet in enumerate(septets):
        value |= (septet & 0x7F) << (fill_bits + 7 * i)
    return value.to_bytes(_ceil_div(fill_bits + 7 * len(septets), 8), "little")


def unpack_septets(data: bytes, count: int, fill_bits: int = 0) -> list[int]:
    """Inverse of :func:`pack_septets`; ``data`` must hold ``count`` septets."""
    if _ceil_div(fill_bits + 7 * count, 8) > len(data):
        raise PduError("user data shorter than its septet count")
    value = int.from_bytes(data, "little") >> fill_bits
    return [(value >> (7 * i)) & 0x7F for i in range(count)]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# --- data coding scheme (TS 23.038 4) --------------------------------------------


class Alphabet(enum.Enum):
    """Character set of the user data, derived from TP-DCS."""

    GSM7 = "gsm7"
    DATA8 = "8bit"
    UCS2 = "ucs2"


def dcs_alphabet(dcs: int) -> Alphabet:
    """Alphabet of a TP-DCS value; reserved values read as GSM 7-bit (TS 23.038)."""
    group = dcs >> 4
    if group <= 0x7:  # general data coding, with or without automatic deletion
        if dcs & 0x20:  # compressed: we cannot decompress, so keep the octets
            return Alphabet.DATA8
        return (Alphabet.GSM7, Alphabet.DATA8, Alphabet.UCS2, Alphabet.GSM7)[(dcs >> 2) & 3]
    if group == 0xE:
        return Alphabet.UCS2
    if group == 0xF:
        return Alphabet.DATA8 if dcs & 0x04 else Alphabet.GSM7
    return Alphabet.GSM7


# --- addresses (TS 23.040 9.1.2.5) -------------------------------------------------

TOA_INTERNATIONAL = 0x91
TOA_UNKNOWN = 0x81
TOA_ALPHANUMERIC = 0xD0
_BCD_DIGITS = "0123456789*#abc"


@dataclass(frozen=True)
class Address:
    """A TP-OA/TP-DA or SMSC address: digits (or text when alphanumeric) + type."""

    number: str
    toa: int = TOA_INTERNATIONAL

    @property
    def alphanumeric(self) -> bool:
        return (self.toa >> 4) & 0x7 == 0x5


def _encode_bcd(digits: str) -> bytes:
    try:
        nibbles = [_BCD_DIGITS.index(ch) for ch in digits]
    except ValueError:
        raise PduError(f"address {digits!r} has a character that is not a BCD digit") from None
    if len(nibbles) % 2:
        nibbles.append(0xF)
    return bytes(lo | (hi << 4) for lo, hi in zip(nibbles[::2], nibbles[1::2], strict=True))


def _decode_bcd(data: bytes, count: int) -> str:
    nibbles = [n for octet in data for n in (octet & 0xF, octet >> 4)][:count]
    if 0xF in nibbles:
        raise PduError("filler nibble inside an address")
    return "".join(_BCD_DIGITS[n] for n in nibbles)


def _encode_address(address: Address) -> bytes:
    """TP-address field: length in semi-octets, type, value."""
    _check_octet(address.toa, "type of address")
    if address.alphanumeric:
        septets = gsm7_encode(address.number)
        value = pack_septets(septets)
        semi_octets = _ceil_div(7 * len(septets), 4)
    else:
        value = _encode_bcd(address.number)
        semi_octets = len(address.number)
    if len(value) > 10:
        raise PduError("address longer than 10 octets")
    return bytes((semi_octets, address.toa)) + value


def _decode_address(reader: _Reader) -> Address:
    semi_octets = reader.u8()
    toa = reader.u8()
    value = reader.take(_ceil_div(semi_octets, 2))
    if (toa >> 4) & 0x7 == 0x5:
        return Address(gsm7_decode(unpack_septets(value, semi_octets * 4 // 7)), toa)
    return Address(_decode_bcd(value, semi_octets), toa)


def encode_smsc_info(smsc: Address | None) -> bytes:
    """SMSC information as prefixed to modem PDUs: length in octets, 00 = default."""
    if smsc is None:
        return b"\x00"
    _check_octet(smsc.toa, "type of address")
    value = _encode_bcd(smsc.number)
    return bytes((len(value) + 1, smsc.toa)) + value


def _decode_smsc(reader: _Reader) -> Address | None:
    length = reader.u8()
    if length == 0:
        return None
    toa = reader.u8()
    value = reader.take(length - 1)
    digits = 2 * len(value) - (1 if value and value[-1] >> 4 == 0xF else 0)
    return Address(_decode_bcd(value, digits), toa)


# --- timestamps (TS 23.040 9.2.3.11) ---------------------------------------------


def _swap_bcd(value: int) -> int:
    return (value % 10) << 4 | (value // 10)


def _unswap_bcd(octet: int) -> int:
    lo, hi = octet & 0xF, octet >> 4
    if lo > 9 or hi > 9:
        raise PduError("timestamp octet is not BCD")
    return lo * 10 + hi


def encode_timestamp(when: datetime) -> bytes:
    """7-octet TP-SCTS; the year is stored as two digits, the zone in quarter hours."""
    offset = when.utcoffset()
    if offset is None:
        raise PduError("timestamp needs a time zone")
    quarters, rest = divmod(int(offset.total_seconds()), 900)
    if rest or not -79 <= quarters <= 79 or not 1969 <= when.year <= 2068:
        raise PduError("timestamp outside what TP-SCTS can carry")
    fields = (when.year % 100, when.month, when.day, when.hour, when.minute, when.second)
    zone = _swap_bcd(abs(quarters)) | (0x08 if quarters < 0 else 0)
    return bytes(_swap_bcd(v) for v in fields) + bytes((zone,))


def decode_timestamp(data: bytes) -> datetime:
    """7-octet TP-SCTS → aware datetime; years 69–99 are 19xx, like POSIX ``%y``."""
    year, month, day, hour, minute, second = (_unswap_bcd(octet) for octet in data[:6])
    quarters = _unswap_bcd(data[6] & 0xF7)
    if data[6] & 0x08:
        quarters = -quarters
    try:
        return datetime(
            year + (1900 if year >= 69 else 2000), month, day, hour, minute, second,
            tzinfo=timezone(timedelta(minutes=15 * quarters)),
        )  # fmt: skip
    except ValueError as exc:
        raise PduError(f"invalid timestamp: {exc}") from None


# --- user data header (TS 23.040 9.2.3.24) -----------------------------------------

IE_CONCAT_8 = 0x00
IE_PORTS_8 = 0x04
IE_PORTS_16 = 0x05
IE_CONCAT_16 = 0x08
_IE_LENGTHS = {IE_CONCAT_8: 3, IE_PORTS_8: 2, IE_PORTS_16: 4, IE_CONCAT_16: 4}


@dataclass(frozen=True)
class UserDataHeader:
    """The IEs the gateway understands, plus any others as raw (iei, data) pairs.

    ``port_bits``/``concat_ref_bits`` record which IE variant carries the value, so a
    decoded header re-encodes to the same IEs.  Encoding order is ports, concat, others
    (the 10.4.2 layout).
    """

    dest_port: int | None = None
    orig_port: int | None = None
    port_bits: int = 16
    concat_ref: int | None = None
    concat_total: int | None = None
    concat_seq: int | None = None
    concat_ref_bits: int = 8
    other: tuple[tuple[int, bytes], ...] = ()

    def encode(self) -> bytes:
        """UDHL followed by the IEs."""
        body = bytearray()
        if (self.dest_port is None) != (self.orig_port is None):
            raise PduError("ports IE needs both ports")
        if self.dest_port is not None and self.orig_port is not None:
            iei, width = {8: (IE_PORTS_8, 1), 16: (IE_PORTS_16, 2)}.get(self.port_bits, (0, 0))
            if not width:
                raise PduError("port_bits must be 8 or 16")
            body += bytes((iei, 2 * width))
            body += _to_bytes(self.dest_port, width) + _to_bytes(self.orig_port, width)
        concat = (self.concat_ref, self.concat_total, self.concat_seq)
        if concat != (None, None, None):
            ref, total, seq = concat
            if ref is None or total is None or seq is None:
                raise PduError("concatenation IE needs reference, total and sequence")
            iei, width = {8: (IE_CONCAT_8, 1), 16: (IE_CONCAT_16, 2)}.get(
                self.concat_ref_bits, (0, 0)
            )
            if not width:
                raise PduError("concat_ref_bits must be 8 or 16")
            body += bytes((iei, width + 2)) + _to_bytes(ref, width)
            body += _to_bytes(total, 1) + _to_bytes(seq, 1)
        for iei, data in self.other:
            if iei in _IE_LENGTHS:
                raise PduError(f"IE {iei:#04x} belongs in its own field")
            body += _to_bytes(iei, 1) + _to_bytes(len(data), 1) + data
        if len(body) > 139:
            raise PduError("user data header too long")
        return bytes((len(body),)) + body

    @classmethod
    def decode(cls, user_data: bytes) -> tuple[UserDataHeader, int]:
        """Parse the header at the start of ``user_data``; returns it and its octet length.

        A repeated IE overrides the earlier one (TS 23.040 9.2.3.24).
        """
        reader = _Reader(user_data)
        body = _Reader(reader.take(reader.u8()))
        header = cls()
        other: list[tuple[int, bytes]] = []
        while body.remaining:
            iei = body.u8()
            data = body.take(body.u8())
            expected = _IE_LENGTHS.get(iei)
            if expected is None:
                other.append((iei, data))
            elif len(data) != expected:
                raise PduError(f"IE {iei:#04x} has length {len(data)}, expected {expected}")
            elif iei in (IE_PORTS_8, IE_PORTS_16):
                half = len(data) // 2
                header = replace(
                    header,
                    dest_port=int.from_bytes(data[:half], "big"),
                    orig_port=int.from_bytes(data[half:], "big"),
                    port_bits=8 * half,
                )
            else:
                header = replace(
                    header,
                    concat_ref=int.from_bytes(data[:-2], "big"),
                    concat_total=data[-2],
                    concat_seq=data[-1],
                    concat_ref_bits=8 * (len(data) - 2),
                )
        return replace(header, other=tuple(other)), reader.offset


def _to_bytes(value: int, width: int) -> bytes:
    try:
        return value.to_bytes(width, "big")
    except OverflowError:
        raise PduError(f"value {value} does not fit in {width} octet(s)") from None


def _check_octet(value: int, what: str) -> None:
    if not 0 <= value <= 0xFF:
        raise PduError(f"{what} {value} is not an octet")


# --- user data (TS 23.040 9.2.3.16, 9.2.3.24) -----------------------------------------

# Marker of the 10.4.2 UDH: some senders omit TP-UDHI and we honour the header anyway.
_WMMP_UDH_START = b"\x0b\x05\x04"

UserData = bytes | str


def _encode_user_data(dcs: int, udh: UserDataHeader | None, data: UserData) -> tuple[int, bytes]:
    """Return (TP-UDL, TP-UD octets)."""
    header = udh.encode() if udh is not None else b""
    alphabet = dcs_alphabet(dcs)
    if alphabet is Alphabet.DATA8:
        if not isinstance(data, bytes):
            raise PduError("8-bit data coding needs bytes user data")
        payload = header + data
        udl = len(payload)
    else:
        if not isinstance(data, str):
            raise PduError("text data coding needs str user data")
        if alphabet is Alphabet.UCS2:
            payload = header + data.encode("utf-16-be")
            udl = len(payload)
        else:
            header_septets = _ceil_div(8 * len(header), 7)
            septets = gsm7_encode(data)
            fill = 7 * header_septets - 8 * len(header)
            payload = header + pack_septets(septets, fill)
            udl = header_septets + len(septets)
    if len(payload) > 140:
        raise PduError(f"user data of {len(payload)} octets exceeds 140")
    return udl, payload


def _decode_user_data(
    dcs: int, udhi: bool, udl: int, raw: bytes
) -> tuple[UserDataHeader | None, UserData]:
    alphabet = dcs_alphabet(dcs)
    octets = _ceil_div(7 * udl, 8) if alphabet is Alphabet.GSM7 else udl
    if octets > len(raw):
        raise PduError(f"user data length {udl} exceeds the {len(raw)} octets present")
    raw = raw[:octets]
    udh: UserDataHeader | None = None
    header_len = 0
    if udhi:
        udh, header_len = UserDataHeader.decode(raw)
    elif alphabet is Alphabet.DATA8 and raw.startswith(_WMMP_UDH_START):
        try:
            udh, header_len = UserDataHeader.decode(raw)
        except PduError:
            udh = None  # just data that happens to start like a header
    if alphabet is Alphabet.DATA8:
        return udh, raw[header_len:]
    if alphabet is Alphabet.UCS2:
        text = raw[header_len:]
        if len(text) % 2:
            raise PduError("UCS2 user data has an odd number of octets")
        return udh, text.decode("utf-16-be", errors="replace")
    header_septets = _ceil_div(8 * header_len, 7)
    if header_septets > udl:
        raise PduError("user data header longer than the user data")
    fill = 7 * header_septets - 8 * header_len
    septets = unpack_septets(raw[header_len:], udl - header_septets, fill)
    return udh, gsm7_decode(septets)


# --- TPDUs -----------------------------------------------------------------------------

_MTI_DELIVER = 0x00
_MTI_SUBMIT = 0x01
_REPLY_PATH = 0x80
_UDHI = 0x40
_REPORT = 0x20  # TP-SRI in DELIVER, TP-SRR in SUBMIT
_MMS_RD = 0x04  # TP-MMS (inverted "more messages") in DELIVER, TP-RD in SUBMIT

Validity = int | datetime | bytes | None
"""TP-VP: relative octet (int), absolute (datetime), enhanced (7 raw octets) or absent."""


@dataclass(frozen=True)
class SmsDeliver:
    """SMS-DELIVER (SC → MS).

    ``user_data`` is bytes for 8-bit data coding and str for GSM 7-bit / UCS2; it
    excludes the header.  ``more_messages`` is the inverse of the TP-MMS bit.
    """

    originator: Address
    scts: datetime
    user_data: UserData
    udh: UserDataHeader | None = None
    pid: int = 0
    dcs: int = 0x04
    more_messages: bool = False
    status_report_indication: bool = False
    reply_path: bool = False
    smsc: Address | None = None


@dataclass(frozen=True)
class SmsSubmit:
    """SMS-SUBMIT (MS → SC); ``user_data`` as in :class:`SmsDeliver`."""

    destination: Address
    user_data: UserData
    udh: UserDataHeader | None = None
    reference: int = 0
    pid: int = 0
    dcs: int = 0x04
    validity: Validity = None
    reject_duplicates: bool = False
    status_report_request: bool = False
    reply_path: bool = False
    smsc: Address | None = None


Sms = SmsDeliver | SmsSubmit


def encode(sms: Sms, *, smsc_prefix: bool = False) -> bytes:
    """Encode a TPDU, optionally preceded by the SMSC information (``sms.smsc``)."""
    tpdu = _encode_deliver(sms) if isinstance(sms, SmsDeliver) else _encode_submit(sms)
    return (encode_smsc_info(sms.smsc) if smsc_prefix else b"") + tpdu


def decode(data: bytes, *, smsc_prefix: bool = False) -> Sms:
    """Decode an SMS-DELIVER or SMS-SUBMIT TPDU (MTI 0 or 1)."""
    reader = _Reader(data)
    smsc = _decode_smsc(reader) if smsc_prefix else None
    first = reader.u8()
    mti = first & 0x03
    if mti == _MTI_DELIVER:
        return _decode_deliver(first, reader, smsc)
    if mti == _MTI_SUBMIT:
        return _decode_submit(first, reader, smsc)
    raise PduError(f"unsupported message type indicator {mti}")


def decode_deliver(data: bytes, *, smsc_prefix: bool = False) -> SmsDeliver:
    """Like :func:`decode` but insists on an SMS-DELIVER."""
    sms = decode(data, smsc_prefix=smsc_prefix)
    if not isinstance(sms, SmsDeliver):
        raise PduError("not an SMS-DELIVER")
    return sms


def decode_submit(data: bytes, *, smsc_prefix: bool = False) -> SmsSubmit:
    """Like :func:`decode` but insists on an SMS-SUBMIT."""
    sms = decode(data, smsc_prefix=smsc_prefix)
    if not isinstance(sms, SmsSubmit):
        raise PduError("not an SMS-SUBMIT")
    return sms


def _bits(*pairs: tuple[bool, int]) -> int:
    """OR together the masks whose flag is set."""
    return sum(mask for on, mask in pairs if on)


def _encode_deliver(sms: SmsDeliver) -> bytes:
    for value, what in ((sms.pid, "TP-PID"), (sms.dcs, "TP-DCS")):
        _check_octet(value, what)
    udl, ud = _encode_user_data(sms.dcs, sms.udh, sms.user_data)
    first = _MTI_DELIVER | _bits(
        (sms.reply_path, _REPLY_PATH),
        (sms.udh is not None, _UDHI),
        (sms.status_report_indication, _REPORT),
        (not sms.more_messages, _MMS_RD),
    )
    return (
        bytes((first,))
        + _encode_address(sms.originator)
        + bytes((sms.pid, sms.dcs))
        + encode_timestamp(sms.scts)
        + bytes((udl,))
        + ud
    )


def _decode_deliver(first: int, reader: _Reader, smsc: Address | None) -> SmsDeliver:
    originator = _decode_address(reader)
    pid, dcs = reader.u8(), reader.u8()
    scts = decode_timestamp(reader.take(7))
    udl = reader.u8()
    udh, user_data = _decode_user_data(dcs, bool(first & _UDHI), udl, reader.rest())
    return SmsDeliver(
        originator=originator,
        scts=scts,
        user_data=user_data,
        udh=udh,
        pid=pid,
        dcs=dcs,
        more_messages=not first & _MMS_RD,
        status_report_indication=bool(first & _REPORT),
        reply_path=bool(first & _REPLY_PATH),
        smsc=smsc,
    )


# TP-VPF values (bits 4..3 of the first octet).
_VPF_NONE, _VPF_ENHANCED, _VPF_RELATIVE, _VPF_ABSOLUTE = 0, 1, 2, 3


def _encode_validity(validity: Validity) -> tuple[int, bytes]:
    if validity is None:
        return _VPF_NONE, b""
    if isinstance(validity, datetime):
        return _VPF_ABSOLUTE, encode_timestamp(validity)
    if isinstance(validity, bytes):
        if len(validity) != 7:
            raise PduError("enhanced validity period must be 7 octets")
        return _VPF_ENHANCED, validity
    _check_octet(validity, "relative validity period")
    return _VPF_RELATIVE, bytes((validity,))


def _encode_submit(sms: SmsSubmit) -> bytes:
    for value, what in ((sms.reference, "TP-MR"), (sms.pid, "TP-PID"), (sms.dcs, "TP-DCS")):
        _check_octet(value, what)
    vpf, vp = _encode_validity(sms.validity)
    udl, ud = _encode_user_data(sms.dcs, sms.udh, sms.user_data)
    first = (
        _MTI_SUBMIT
        | vpf << 3
        | _bits(
            (sms.reply_path, _REPLY_PATH),
            (sms.udh is not None, _UDHI),
            (sms.status_report_request, _REPORT),
            (sms.reject_duplicates, _MMS_RD),
        )
    )
    return (
        bytes((first, sms.reference))
        + _encode_address(sms.destination)
        + bytes((sms.pid, sms.dcs))
        + vp
        + bytes((udl,))
        + ud
    )


def _decode_submit(first: int, reader: _Reader, smsc: Address | None) -> SmsSubmit:
    reference = reader.u8()
    destination = _decode_address(reader)
    pid, dcs = reader.u8(), reader.u8()
    vpf = (first >> 3) & 0x3
    validity: Validity = None
    if vpf == _VPF_RELATIVE:
        validity = reader.u8()
    elif vpf == _VPF_ABSOLUTE:
        validity = decode_timestamp(reader.take(7))
    elif vpf == _VPF_ENHANCED:
        validity = reader.take(7)
    udl = reader.u8()
    udh, user_data = _decode_user_data(dcs, bool(first & _UDHI), udl, reader.rest())
    return SmsSubmit(
        destination=destination,
        user_data=user_data,
        udh=udh,
        reference=reference,
        pid=pid,
        dcs=dcs,
        validity=validity,
        reject_duplicates=bool(first & _MMS_RD),
        status_report_request=bool(first & _REPORT),
        reply_path=bool(first & _REPLY_PATH),
        smsc=smsc,
    )


class _Reader:
    """Bounds-checked cursor over a PDU, so truncation becomes :class:`PduError`."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.offset = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self.offset

    def take(self, count: int) -> bytes:
        if count > self.remaining:
            raise PduError(f"PDU truncated at offset {self.offset}: need {count} more octets")
        chunk = self._data[self.offset : self.offset + count]
        self.offset += count
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def rest(self) -> bytes:
        return self.take(self.remaining)

"""The TLV tag registry of spec section 3: every known tag with its name and value type.

Values always travel as raw bytes (so unknown, vendor and odd-length values are
re-encoded unchanged); this module converts between raw bytes and typed values
where a caller wants them, and checks that a length fits a type (spec 4.9).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum
from typing import Any

from m2mgw.protocol.errors import BodyError


class Kind(Enum):
    """Value types of spec 3.1."""

    U8 = "u8"
    U16 = "u16"
    U32 = "u32"
    STR = "str"
    BYTES = "bytes"
    U16_LIST = "u16[]"
    STRUCT = "struct"
    RECORDS = "records"
    FLAG = "flag"
    FRAGMENT = "fragment"


INTEGER_KINDS = frozenset({Kind.U8, Kind.U16, Kind.U32})
_INT_WIDTH = {Kind.U8: 1, Kind.U16: 2, Kind.U32: 4}


@dataclass(frozen=True, slots=True)
class TagSpec:
    """One registry entry; ``size`` is the max string length, the fixed bytes/struct
    length or the record length, 0 when unbounded; ``valid`` the (low, high) bounds of
    an integer value that a terminal may report (D-240), None when any fits."""

    tag: int
    name: str
    kind: Kind
    size: int = 0
    opaque: bool = False
    valid: tuple[int, int] | None = None

    @property
    def is_security(self) -> bool:
        return 0xE000 <= self.tag <= 0xE0FF


def _T(
    tag: int,
    name: str,
    kind: Kind,
    size: int,
    *,
    opaque: bool = False,
    valid: tuple[int, int] | None = None,
) -> TagSpec:
    return TagSpec(tag, name, kind, size, opaque, valid)


#: Bounds of the timer tags (D-240): seconds, at least 1; an interval at most a day,
#: like the platform's own heartbeat_interval_default; a report period at most the
#: 30-day "month" of 0x2011.
_DAY = 86_400
_PERIOD = (1, _DAY)


_SPECS = (
    _T(0x0001, "GPRSDAILNUM", Kind.STR, 19),
    _T(0x0002, "M2MAPN", Kind.STR, 19),
    _T(0x0003, "GPRSUSERID", Kind.STR, 0),
    _T(0x0004, "GPRSPASSWORD", Kind.STR, 0),
    _T(0x0005, "SMSCENTRENUM", Kind.STR, 0),
    _T(0x0006, "APPSRVTRANSKEY", Kind.STR, 0, opaque=True),
    _T(0x0007, "M2MSMSPECIALNUM", Kind.STR, 19),
    _T(0x0008, "M2MURLADDR", Kind.STR, 0),
    _T(0x0009, "M2MIPADDR", Kind.U32, 0),
    _T(0x000A, "M2MPORT", Kind.U32, 0),
    _T(0x000B, "APPSMSCENTRENUM", Kind.STR, 0),
    _T(0x000C, "APPSRVURLADDR", Kind.STR, 0),
    _T(0x000D, "APPSRVIPADDR", Kind.U32, 0),
    _T(0x000E, "APPSRVPORT", Kind.U32, 0),
    _T(0x0010, "DNSADDR", Kind.STR, 0),
    _T(0x0011, "PERIOD_CFG", Kind.U32, 0, valid=_PERIOD),
    _T(0x0012, "APPUSSDSMSSPECIALNUM", Kind.STR, 0),
    _T(0x0013, "M2MAPPAPN", Kind.STR, 0),
    _T(0x0014, "BACKUPDNSADDR", Kind.STR, 0),
    _T(0x0025, "TLVSYNCTAGVALUE", Kind.U16_LIST, 0),
    _T(0x0026, "SMSRECVOVERTIME", Kind.U16, 0, valid=(1, 0xFFFF)),
    _T(0x0027, "MAXLOGINRETRYTIMES", Kind.U8, 0),
    _T(0x0028, "DEFAULTECCODE", Kind.STR, 16),
    _T(0x0101, "LOCALPTRVALUE", Kind.U16, 0, opaque=True),
    _T(0x0102, "LOCALPORTMODE", Kind.U8, 0, opaque=True),
    _T(0x0103, "LOCALPORTHALT", Kind.U8, 0, opaque=True),
    _T(0x0104, "LOCALPORTVERIFY", Kind.U8, 0, opaque=True),
    _T(0x0105, "LOCALPORTSCANPERIOD", Kind.U16, 0, opaque=True),
    _T(0x0107, "DATAPACKRESPOVERTIME", Kind.U32, 0, valid=_PERIOD),
    _T(0x0108, "TRANSFAILRETRYTIMES", Kind.U8, 0),
    _T(0x0109, "GATELIMIT", Kind.U8, 0, opaque=True),
    _T(0x1000, "UPDATEMODE", Kind.U8, 0, opaque=True),
    _T(0x1001, "UPDATESRVURLADDR", Kind.STR, 200),
    _T(0x1002, "UPDATESRVIPADDR", Kind.STR, 0),
    _T(0x1003, "UPDATESRVPORT", Kind.U16, 0),
    _T(0x1004, "UPDATESRVLOGINPASSWORD", Kind.STR, 0),
    _T(0x1005, "UPDATEFILEREV", Kind.STR, 19),
    _T(0x1006, "UPDATEFILELENGTH", Kind.U32, 0),
    _T(0x1007, "CRC16CHECK", Kind.U16, 0),
    _T(0x1008, "CRC32CHECK", Kind.U32, 0),
    _T(0x1009, "UPDATEAFFAIRTRANSID", Kind.U32, 0),
    _T(0x100A, "FILERELEASEDATA", Kind.STR, 11),
    _T(0x100B, "FORCETOUPDATEPARAM", Kind.U8, 0),
    _T(0x100C, "CURRENTFILEREV", Kind.STR, 0),
    _T(0x2001, "STATINFOREPORT", Kind.U8, 0),
    _T(0x2002, "REPORTTIME", Kind.U32, 0),
    _T(0x2003, "PERIODREPORT", Kind.U32, 0, valid=(1, 30 * _DAY)),
    _T(0x2004, "MONTHLYOPERATIONSIGN", Kind.U8, 0),
    _T(0x2005, "CLEARSTATDATA", Kind.U8, 0),
    _T(0x2006, "STATSTARTTIME", Kind.U32, 0),
    _T(0x2007, "STATFINISHTIME", Kind.U32, 0),
    _T(0x2008, "SMSDELIVERYSUCC", Kind.U32, 0),
    _T(0x2009, "SMSDELIVERUFAIL", Kind.U32, 0),
    _T(0x200A, "SMSRECEIVEDNUM", Kind.U32, 0),
    _T(0x200B, "GRPSDATASIZE", Kind.U32, 0),
    _T(0x200C, "USSDSUCCNUM", Kind.U32, 0),
    _T(0x200D, "USSDFAILNUM", Kind.U32, 0),
    _T(0x200E, "USSDRECEIVEDNUM", Kind.U32, 0),
    _T(0x2011, "SMSSTATPARAM", Kind.STRUCT, 12),
    _T(0x2012, "SMSSTATAUTOREPORTPARAM", Kind.STRUCT, 12),
    _T(0x2013, "M2MMUTUALSMSSTAT", Kind.RECORDS, 8),
    _T(0x2014, "OPERATIONMUTUALSMSSTAT", Kind.RECORDS, 8),
    _T(0x2015, "GPRSOPERATIONSTATPARAM", Kind.STRUCT, 12),
    _T(0x2016, "GPRSOPERATIONSTATREPORTPARAM", Kind.STRUCT, 12),
    _T(0x2017, "M2MMUTUALGPRSDATASIZE", Kind.RECORDS, 12),
    _T(0x2018, "OPERATIONMUTUALGPRSDATASIZE", Kind.RECORDS, 12),
    _T(0x2019, "USSDSTATPARAM", Kind.BYTES, 0, opaque=True),
    _T(0x201A, "USSDSTATREPORTPARAM", Kind.BYTES, 0, opaque=True),
    _T(0x201B, "M2MMUTUALUSSDSTAT", Kind.BYTES, 0, opaque=True),
    _T(0x201C, "OPERATIONMUTUALUSSDSTAT", Kind.BYTES, 0, opaque=True),
    _T(0x3001, "PROTOCOLREV", Kind.STR, 2),
    _T(0x3002, "TERMINALSERIESNUM", Kind.STR, 16),
    _T(0x3003, "IMSINUM", Kind.STR, 15),
    _T(0x3004, "FIRMWAREREV", Kind.STR, 8),
    _T(0x3005, "PREVPERIOD", Kind.U32, 0, opaque=True),
    _T(0x3006, "CELLULARID", Kind.STRUCT, 4),
    _T(0x3007, "SIGNALLEVEL", Kind.U8, 0),
    _T(0x3008, "INITPARAFLAG", Kind.U8, 0, opaque=True),
    _T(0x3009, "SYSTEMTIME", Kind.U32, 0),
    _T(0x300B, "ALARMSTATUS", Kind.U8, 0),
    _T(0x300C, "ALARMTYPE", Kind.U8, 0),
    _T(0x300D, "ALARMCODE", Kind.U16, 0),
    _T(0x300E, "RESTOREALARM", Kind.STR, 0),
    _T(0x300F, "M2MDEVSTATUS", Kind.BYTES, 0, opaque=True),
    _T(0x3010, "SUPPORTEDDEV", Kind.STR, 0),
    _T(0x3011, "PACKLOSTNUM", Kind.U32, 0),
    _T(0x3012, "FAILWARNING", Kind.U32, 0),
    _T(0x4001, "SETCOMMAND", Kind.U8, 0),
    _T(0x4002, "CONNECTMODE", Kind.U8, 0, valid=(0, 4)),
    _T(0x4003, "DATATRANSMODE", Kind.U8, 0, opaque=True),
    _T(0x4004, "PERIOD_CTRL", Kind.U16, 0, valid=(1, 0xFFFF)),
    _T(0x4005, "COLLECTDATATRANSMODE", Kind.U8, 0, opaque=True),
    _T(0x4006, "M2MCONNECTMODEONIP", Kind.STRUCT, 2, opaque=True),
    _T(0x4007, "USERDATAID", Kind.BYTES, 0),
    _T(0x4008, "SUBPACKMODEPARAM", Kind.FRAGMENT, 7),
    _T(0x4009, "PLATFORMPARAMOPT", Kind.U8, 0, opaque=True),
    _T(0x4010, "EXECUTEPARAMOPT", Kind.STRUCT, 5),
    _T(0x4011, "LOCALCONFIGAPPLIED", Kind.FLAG, 0),
    _T(0x4012, "DESSERIESNUM", Kind.STR, 16),
    _T(0x4013, "SRCSERIESNUM", Kind.STR, 16),
    _T(0x4014, "DESECCODE", Kind.STR, 16),
    _T(0x4015, "SRCECCODE", Kind.STR, 16),
    _T(0x4016, "TRANSCTRLCOMMANDSTATICPARAM", Kind.BYTES, 0),
    _T(0x4017, "VERIFYTLVBYCRC32", Kind.U32, 0),
    _T(0x4021, "EXTERNALDEVCTRL", Kind.BYTES, 0, opaque=True),
    _T(0xE001, "SIMPIN1", Kind.STR, 8),
    _T(0xE002, "SIMPIN1MD5", Kind.BYTES, 16, opaque=True),
    _T(0xE003, "SIMPIN1ACTIVE", Kind.U8, 0),
    _T(0xE004, "SIMPIN2", Kind.STR, 8),
    _T(0xE005, "SIMPIN2MD5", Kind.BYTES, 16, opaque=True),
    _T(0xE006, "SIMPIN2ACTIVE", Kind.U8, 0),
    _T(0xE007, "SIMPUK1", Kind.STR, 8),
    _T(0xE008, "SIMPUK1MD5", Kind.BYTES, 16, opaque=True),
    _T(0xE009, "SIMPUK1ACTIVE", Kind.U8, 0),
    _T(0xE00A, "SIMPUK2", Kind.STR, 8),
    _T(0xE00B, "SIMPUK2MD5", Kind.BYTES, 16, opaque=True),
    _T(0xE00C, "SIMPUK2ACTIVE", Kind.U8, 0),
    _T(0xE00D, "BINDPARAACTIVE", Kind.U8, 0),
    _T(0xE00E, "BINDIMEI", Kind.BYTES, 16),
    _T(0xE00F, "BINDIMEIMD5", Kind.BYTES, 16, opaque=True),
    _T(0xE010, "BINDIMEIORIG", Kind.BYTES, 16),
    _T(0xE011, "BINDIMEIORIGMD5", Kind.BYTES, 16, opaque=True),
    _T(0xE012, "BINDIMSI", Kind.STR, 15),
    _T(0xE013, "BINDIMSIMD5", Kind.BYTES, 16, opaque=True),
    _T(0xE014, "BINDIMSIORIG", Kind.STR, 15),
    _T(0xE015, "BINDIMSIORIGMD5", Kind.BYTES, 16, opaque=True),
    _T(0xE016, "BINDCURRENTMD5", Kind.BYTES, 16, opaque=True),
    _T(0xE017, "BINDORIGINALMD5", Kind.BYTES, 16, opaque=True),
    _T(0xE018, "PIN1ERRORALLOW", Kind.U16, 0),
    _T(0xE019, "PIN2ERRORALLOW", Kind.U16, 0),
    _T(0xE01A, "PUK1ERRORALLOW", Kind.U16, 0),
    _T(0xE01B, "PUK2ERRORALLOW", Kind.U16, 0),
    _T(0xE020, "M2MPASSCLEARPARA", Kind.U8, 0),
    _T(0xE021, "INITPARA", Kind.BYTES, 16),
    _T(0xE022, "INITPARAUSED", Kind.U8, 0),
    _T(0xE023, "INITCOMMAND", Kind.BYTES, 0, opaque=True),
    _T(0xE024, "INITTLVACTTAG", Kind.BYTES, 0, opaque=True),
    _T(0xE025, "UPLINKPASSWORD", Kind.STR, 8),
    _T(0xE026, "UPLINKPASSWORDMD5", Kind.BYTES, 16),
    _T(0xE027, "UPLINKPASSWORDEXPDATE", Kind.U32, 0),
    _T(0xE028, "DOWNLINKPASSWORD", Kind.STR, 8),
    _T(0xE029, "DOWNLINKPASSWORDMD5", Kind.BYTES, 16),
    _T(0xE02A, "DOWNLINKPASSWORDEXPDATE", Kind.U32, 0),
    _T(0xE031, "ENCRYPTIONSUPPORT", Kind.U8, 0),
    _T(0xE032, "ENCRYPTIONUSED", Kind.U8, 0),
    _T(0xE033, "ENCRYPTIONCOMMAND", Kind.BYTES, 0, opaque=True),
    _T(0xE034, "ENCRTYPTIONTAG", Kind.BYTES, 0, opaque=True),
    _T(0xE035, "ENCRYPTIONALGORITHM", Kind.U8, 0),
    _T(0xE036, "PUBLICKEY", Kind.STR, 24),
    _T(0xE037, "PRIVATEKEY", Kind.STR, 0),
    _T(0xE038, "PUBLICKEYEXPDATE", Kind.U32, 0),
    _T(0xE039, "ENCRYPTIONKEYALGORITHM", Kind.U8, 0, opaque=True),
    _T(0xE03A, "ENCRYPTIONKEYMD5", Kind.BYTES, 16),
    _T(0xE03B, "CONVPUBLICKEY", Kind.STR, 16),
    _T(0xE03C, "CONVPRIVATEKEY", Kind.STR, 0),
    _T(0xE03D, "CONVKEYEXPDATE", Kind.U32, 0),
    _T(0xE03E, "CONVENCRYPTIONALOG", Kind.U8, 0, opaque=True),
    _T(0xE03F, "CONVENCRYPTIONMD5", Kind.BYTES, 16, opaque=True),
    _T(0xE040, "CONVENCRYPTIONMSGBODY", Kind.BYTES, 0),
    _T(0xE041, "CONVAUTHFAILREPORT", Kind.U8, 0, opaque=True),
    _T(0xE042, "CONVSINGLEENCRYPTBODY", Kind.BYTES, 0),
)

TAGS: dict[int, TagSpec] = {spec.tag: spec for spec in _SPECS}
BY_NAME: dict[str, TagSpec] = {spec.name: spec for spec in _SPECS}

# Field layouts of the fixed-size structures (spec 3.4-3.6).
_STAT_PARAM = struct.Struct(">BHBII")
STRUCT_LAYOUTS: dict[int, struct.Struct] = {
    0x2011: _STAT_PARAM,
    0x2012: _STAT_PARAM,
    0x2015: _STAT_PARAM,
    0x2016: _STAT_PARAM,
    0x2013: struct.Struct(">IHH"),
    0x2014: struct.Struct(">IHH"),
    0x2017: struct.Struct(">III"),
    0x2018: struct.Struct(">III"),
    0x3006: struct.Struct(">HH"),
    0x4006: struct.Struct(">BB"),
    0x4010: struct.Struct(">BI"),
}

VENDOR_RANGE = range(0x8000, 0xE000)
APP_RESERVED_RANGE = range(0x5000, 0x5100)


# Named tags: the one home for the tag numbers the code acts on (issue #12). The
# table above gives each its spec name; these names say what the code uses it for.
APN = 0x0002  # M2MAPN
SMS_SPECIAL_NUMBER = 0x0007  # M2MSMSPECIALNUM
PLATFORM_URL = 0x0008  # M2MURLADDR
PLATFORM_IP = 0x0009  # M2MIPADDR
PLATFORM_PORT = 0x000A  # M2MPORT
HEARTBEAT = 0x0011  # PERIOD_CFG: the heartbeat interval
SYNC_LIST = 0x0025  # TLVSYNCTAGVALUE
UPDATE_FILE_VERSION = 0x1005  # UPDATEFILEREV
FORCE_UPDATE = 0x100B  # FORCETOUPDATEPARAM
CURRENT_VERSION = 0x100C  # CURRENTFILEREV
PROTOCOL_VERSION = 0x3001  # PROTOCOLREV
TERMINAL_SERIAL = 0x3002  # TERMINALSERIESNUM
IMSI = 0x3003  # IMSINUM
FIRMWARE_VERSION = 0x3004  # FIRMWAREREV
ALARM_STATUS = 0x300B  # ALARMSTATUS
ALARM_TYPE = 0x300C  # ALARMTYPE
ALARM_CODE = 0x300D  # ALARMCODE
ALARM_RESTORE = 0x300E  # RESTOREALARM
CONNECT_MODE = 0x4002  # CONNECTMODE
PERIOD_CTRL = 0x4004  # PERIOD_CTRL
PLATFORM_OPTION = 0x4009  # PLATFORMPARAMOPT
EXEC_REPORT = 0x4010  # EXECUTEPARAMOPT
LOCAL_CONFIG = 0x4011  # LOCALCONFIGAPPLIED
CONFIG_CRC = 0x4017  # VERIFYTLVBYCRC32
EXTERNAL_CONTROL = 0x4021  # EXTERNALDEVCTRL
BIND_IMEI = 0xE00E  # BINDIMEI
BIND_IMSI = 0xE012  # BINDIMSI
CLEAR_PASSWORDS = 0xE020  # M2MPASSCLEARPARA
UPLINK_PASSWORD = 0xE025  # UPLINKPASSWORD
UPLINK_PROOF = 0xE026  # UPLINKPASSWORDMD5
UPLINK_EXPIRY = 0xE027  # UPLINKPASSWORDEXPDATE
DOWNLINK_PASSWORD = 0xE028  # DOWNLINKPASSWORD
DOWNLINK_PROOF = 0xE029  # DOWNLINKPASSWORDMD5
DOWNLINK_EXPIRY = 0xE02A  # DOWNLINKPASSWORDEXPDATE
BASE_KEY = 0xE036  # PUBLICKEY
BASE_KEY_EXPIRY = 0xE038  # PUBLICKEYEXPDATE
BASE_KEY_PROOF = 0xE03A  # ENCRYPTIONKEYMD5
ENCRYPTED_BODY = 0xE040  # CONVENCRYPTIONMSGBODY

#: The alarm report's TLVs, in their order (9.7).
ALARM_TAGS = (ALARM_STATUS, ALARM_TYPE, ALARM_CODE, ALARM_RESTORE)
#: The credentials a SECURITY_CONFIG delivers (4.15).
CREDENTIAL_TAGS = (
    UPLINK_PASSWORD, UPLINK_EXPIRY, DOWNLINK_PASSWORD, DOWNLINK_EXPIRY, BASE_KEY, BASE_KEY_EXPIRY,
)
#: The sync list (``0x0025``) of a terminal that has not reported its own (6.5).
DEFAULT_SYNC_TAGS: tuple[int, ...] = (
    APN, SMS_SPECIAL_NUMBER, PLATFORM_IP, PLATFORM_PORT, HEARTBEAT,
)


def is_vendor(tag: int) -> bool:
    return 0x8000 <= tag <= 0xDFFF


def tag_name(tag: int) -> str:
    """Registry name, ``VENDOR_xxxx`` or ``UNKNOWN_xxxx``."""
    spec = TAGS.get(tag)
    if spec is not None:
        return spec.name
    return f"{'VENDOR' if is_vendor(tag) else 'UNKNOWN'}_{tag:04X}"


def length_fits(tag: int, length: int) -> bool:
    """Whether a received length fits the tag's type (spec 4.9 validation, PD-22).

    Unknown and vendor tags always fit; zero-length query TLVs are checked by the
    caller, which knows whether the command allows them.
    """
    spec = TAGS.get(tag)
    if spec is None:
        return True
    kind = spec.kind
    if kind in INTEGER_KINDS:
        return length in (1, 2, 4)
    if kind is Kind.STRUCT:
        return length == spec.size
    if kind is Kind.RECORDS:
        return length % spec.size == 0
    if kind is Kind.BYTES and spec.size:
        return length == spec.size
    if kind is Kind.U16_LIST:
        return length % 2 == 0
    if kind is Kind.FLAG:
        return length == 0
    if kind is Kind.FRAGMENT:
        return length >= 7
    return True


def value_error(tag: int, raw: bytes) -> str | None:
    """Why a reported integer value is unusable: outside its tag's ``valid`` bounds.

    None when the value fits, or the tag has no bounds, or the length does not fit
    (that is :func:`length_fits`' verdict). Checked wherever reported values are
    stored, whatever the terminal's compatibility profile (D-240).
    """
    spec = TAGS.get(tag)
    if spec is None or spec.valid is None or len(raw) not in (1, 2, 4):
        return None
    low, high = spec.valid
    value = int.from_bytes(raw, "big")
    if low <= value <= high:
        return None
    return f"0x{tag:04X} ({spec.name}) = {value:,} is outside {low:,}-{high:,}"


def swap_integer(tag: int, raw: bytes) -> bytes:
    """An integer tag's 2- or 4-byte value in the other byte order; anything else as is.

    Terminals that send integer TLVs little-endian (1.6 C6) are read and written
    through this, so that the registry always holds the numbers they mean.
    """
    spec = TAGS.get(tag)
    if spec is None or spec.kind not in INTEGER_KINDS or len(raw) not in (2, 4):
        return raw
    return raw[::-1]


def decode_int(raw: bytes) -> int:
    """Lenient big-endian integer of 1, 2 or 4 bytes (PD-22)."""
    if len(raw) not in (1, 2, 4):
        raise BodyError(f"integer value of length {len(raw)}")
    return int.from_bytes(raw, "big")


def decode_value(tag: int, raw: bytes) -> Any:
    """Typed view of a value: int, str, list of ints, tuple (struct), list of tuples
    (records) or the raw bytes for bytes/opaque/unknown tags. Raises BodyError when
    the length does not fit the type."""
    spec = TAGS.get(tag)
    if spec is None or spec.kind in (Kind.BYTES, Kind.FRAGMENT):
        if spec is not None and not length_fits(tag, len(raw)):
            raise BodyError(f"tag 0x{tag:04X} has length {len(raw)}")
        return raw
    kind = spec.kind
    if not length_fits(tag, len(raw)):
        raise BodyError(f"tag 0x{tag:04X} ({spec.name}) has length {len(raw)}")
    if kind in INTEGER_KINDS:
        return int.from_bytes(raw, "big")
    if kind is Kind.STR:
        return raw.decode("latin-1")
    if kind is Kind.U16_LIST:
        return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if kind is Kind.STRUCT:
        return STRUCT_LAYOUTS[tag].unpack(raw) if tag in STRUCT_LAYOUTS else raw
    if kind is Kind.RECORDS:
        layout = STRUCT_LAYOUTS[tag]
        return [layout.unpack_from(raw, i) for i in range(0, len(raw), layout.size)]
    return None  # Kind.FLAG


def encode_value(tag: int, value: Any) -> bytes:
    """Raw bytes of a typed value, with the width spec 3 gives (PD-22: send exact widths).

    ``bytes`` is always taken as the raw value, so any tag can be set byte for byte.
    """
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    spec = TAGS.get(tag)
    if spec is None:
        raise BodyError(f"tag 0x{tag:04X} is not in the registry: give raw bytes")
    kind = spec.kind
    try:
        if kind in INTEGER_KINDS:
            return int(value).to_bytes(_INT_WIDTH[kind], "big")
        if kind is Kind.STR:
            return str(value).encode("latin-1")
        if kind is Kind.U16_LIST:
            return b"".join(int(v).to_bytes(2, "big") for v in value)
        if kind is Kind.STRUCT and tag in STRUCT_LAYOUTS:
            return STRUCT_LAYOUTS[tag].pack(*value)
        if kind is Kind.RECORDS:
            layout = STRUCT_LAYOUTS[tag]
            return b"".join(layout.pack(*record) for record in value)
        if kind is Kind.FLAG and not value:
            return b""
    except (OverflowError, ValueError, TypeError, UnicodeEncodeError, struct.error) as exc:
        raise BodyError(f"tag 0x{tag:04X} ({spec.name}): bad value {value!r}: {exc}") from None
    raise BodyError(f"tag 0x{tag:04X} ({spec.name}): cannot encode {value!r}")

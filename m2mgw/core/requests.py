"""Pure builders for platform requests and provisioning records from JSON descriptions.

The admin API and the operator CLI both turn loosely typed JSON into wire bodies and
registry records; doing it here, without I/O, keeps the refusal rules of spec 4.8-4.16
(what the platform may never send) in one place and testable byte for byte. Every
problem is a :class:`RequestError` with a message fit to show to an operator.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

from m2mgw.core.model import (
    CredentialSet,
    FileTransaction,
    Terminal,
    TerminalState,
    normalize_msisdn,
)
from m2mgw.protocol import compat, tags
from m2mgw.protocol import messages as m
from m2mgw.protocol.constants import Command, RemoteControl, SecurityOp
from m2mgw.protocol.errors import ProtocolError
from m2mgw.protocol.security import NEVER, generate_base_key, generate_password
from m2mgw.protocol.tlv import Tlv

Params = Mapping[str, Any]
Built = tuple[int, bytes]


class RequestError(ValueError):
    """A request or provisioning description is invalid; the message says why."""


#: Tags the platform never writes (4.10): read-only status and binding tags.
READ_ONLY_TAGS = frozenset({
    tags.PROTOCOL_VERSION, tags.TERMINAL_SERIAL, tags.IMSI, tags.FIRMWARE_VERSION,
    tags.BIND_IMEI, tags.BIND_IMSI,
})
#: REMOTE_CTRL parameter TLVs besides the vendor range (4.12).
REMOTE_PARAM_TAGS = frozenset({tags.EXTERNAL_CONTROL})
_REMOTE_CODES = frozenset(code.value for code in RemoteControl)
#: Path of the HTTP file service under the public URL (4.14).
FILES_PATH = "/wmmp/files"
MAX_URL_LENGTH = 200
MAX_VERSION_LENGTH = tags.TAGS[tags.UPDATE_FILE_VERSION].size
CIPHERS = ("none", "legacy", "aes")
BASE_KEY_LENGTHS = {"none": (16, 24), "legacy": (24, 16), "aes": (16,)}
PASSWORD_LENGTH = 8

_HEX_TAG_RE = re.compile(r"0[xX][0-9a-fA-F]{1,4}")
_EC_RE = re.compile(r"[\x21-\x7e]{1,16}")
_SECRET_RE = re.compile(r"[\x21-\x7e]+")
_SERIAL_RE = re.compile(r"[\x21-\x7e]{16}")
_MSISDN_RE = re.compile(r"\+?[0-9]{3,20}")
_VERSION_RE = re.compile(rf"[\x20-\x7e]{{1,{MAX_VERSION_LENGTH}}}")


# --- small validators --------------------------------------------------------------------


def _fields(params: Params, command: str, allowed: Iterable[str]) -> None:
    """Unknown keys are refused so that a typo ('tag' for 'tags') is not silently ignored."""
    if not isinstance(params, Mapping):
        raise RequestError(f"{command}: parameters must be a JSON object")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise RequestError(f"{command}: unknown parameter(s) {', '.join(unknown)}")


def _require(params: Params, key: str, command: str) -> Any:
    if params.get(key) is None:
        raise RequestError(f"{command}: '{key}' is required")
    return params[key]


def _integer(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RequestError(f"{what} must be an integer {lo}-{hi}, got {value!r}")
    return value


def _hex(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise RequestError(f"{what} must be a hex string, got {value!r}")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise RequestError(f"{what} is not valid hex: {value!r}") from None


def _ascii_text(value: Any, what: str, pattern: re.Pattern[str], expected: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise RequestError(f"{what} must be {expected}, got {value!r}")
    return value


def ec_code(value: Any, what: str = "EC code") -> str:
    """An application ID: 1-16 printable ASCII characters (PD-22)."""
    return _ascii_text(value, what, _EC_RE, "1-16 printable ASCII characters")


def parse_tag(value: Any) -> int:
    """A tag given as an int, ``"0x0011"`` or a registry name (``"PERIOD_CFG"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        tag = value
    elif isinstance(value, str) and _HEX_TAG_RE.fullmatch(value.strip()):
        tag = int(value.strip(), 16)
    elif isinstance(value, str) and value.strip().upper() in tags.BY_NAME:
        return tags.BY_NAME[value.strip().upper()].tag
    else:
        raise RequestError(f"unknown tag {value!r}: give a number, 0xNNNN or a tag name")
    if not 0 <= tag <= 0xFFFF:
        raise RequestError(f"tag {value!r} is not a 16-bit value")
    return tag


def _known(tag: int, command: str) -> tags.TagSpec | None:
    """The registry entry; vendor tags (3.8) pass as None; unknown tags are never sent."""
    spec = tags.TAGS.get(tag)
    if spec is None and not tags.is_vendor(tag):
        raise RequestError(f"{command}: tag 0x{tag:04X} is unknown; the platform never sends it")
    return spec


def _tag_list(values: Any, command: str) -> list[int]:
    if not isinstance(values, list) or not values:
        raise RequestError(f"{command}: 'tags' must be a non-empty list")
    return list(dict.fromkeys(parse_tag(v) for v in values))


def _queries(tlv_tags: Iterable[int]) -> list[Tlv]:
    return [Tlv.query(tag) for tag in tlv_tags]


def _typed_value(tag: int, spec: tags.TagSpec | None, value: Any, command: str) -> Tlv:
    """A TLV from a JSON value: typed per the registry, or ``{"hex": ...}`` raw."""
    label = f"{command}: tag 0x{tag:04X}" + (f" ({spec.name})" if spec else "")
    if isinstance(value, Mapping):
        if set(value) != {"hex"}:
            raise RequestError(f"{label}: a raw value is written {{\"hex\": \"...\"}}")
        raw = _hex(value["hex"], label)
        if not tags.length_fits(tag, len(raw)):
            raise RequestError(f"{label}: {len(raw)} bytes do not fit the tag's type")
        return Tlv(tag, raw)
    if spec is None:
        raise RequestError(f"{label}: a vendor tag needs a raw value {{\"hex\": \"...\"}}")
    kind = spec.kind
    if kind in tags.INTEGER_KINDS and (isinstance(value, bool) or not isinstance(value, int)):
        raise RequestError(f"{label}: expected an integer, got {value!r}")
    if kind is tags.Kind.STR:
        if not isinstance(value, str) or not value.isascii():
            raise RequestError(f"{label}: expected an ASCII string, got {value!r}")
        if spec.size and len(value) > spec.size:
            raise RequestError(f"{label}: at most {spec.size} characters, got {len(value)}")
    if kind in (tags.Kind.U16_LIST, tags.Kind.STRUCT, tags.Kind.RECORDS) and not isinstance(
        value, list
    ):
        raise RequestError(f"{label}: expected a list, got {value!r}")
    if kind is tags.Kind.RECORDS:
        value = [tuple(v) if isinstance(v, list) else v for v in value]
    try:
        return Tlv.of(tag, value)
    except ProtocolError as exc:
        raise RequestError(f"{label}: {exc.reason}") from None


# --- request builders ---------------------------------------------------------------------


def config_get(params: Params) -> Built:
    """CONFIG_GET (4.8): zero-length TLVs; never security tags."""
    _fields(params, "CONFIG_GET", ("tags",))
    wanted = _tag_list(_require(params, "tags", "CONFIG_GET"), "CONFIG_GET")
    for tag in wanted:
        spec = _known(tag, "CONFIG_GET")
        if spec is not None and spec.is_security:
            raise RequestError(f"CONFIG_GET: security tag 0x{tag:04X} ({spec.name}) is never read")
    return Command.CONFIG_GET, m.ConfigGet(tlvs=_queries(wanted)).encode_body()


def config_set(params: Params, *, platform_option: bool = False) -> Built:
    """CONFIG_SET (4.10): no security, read-only or fragment tags; 0x4009 only by PD-32.

    ``platform_option`` is the per-terminal PD-32 option: it appends ``4009 = 0x00``.
    """
    _fields(params, "CONFIG_SET", ("values",))
    values = _require(params, "values", "CONFIG_SET")
    if not isinstance(values, Mapping) or not values:
        raise RequestError("CONFIG_SET: 'values' must be a non-empty object {tag: value}")
    tlvs: dict[int, Tlv] = {}
    for key, value in values.items():
        tag = parse_tag(key)
        spec = _known(tag, "CONFIG_SET")
        name = f"0x{tag:04X}" + (f" ({spec.name})" if spec else "")
        if spec is not None and spec.is_security:
            raise RequestError(f"CONFIG_SET: security tag {name} is never set by CONFIG_SET")
        if tag in READ_ONLY_TAGS:
            raise RequestError(f"CONFIG_SET: {name} is read-only")
        if tag == tags.PLATFORM_OPTION:
            raise RequestError(f"CONFIG_SET: {name} is sent only by the per-terminal option")
        if spec is not None and spec.kind in (tags.Kind.FRAGMENT, tags.Kind.FLAG):
            raise RequestError(f"CONFIG_SET: {name} is not a configuration value")
        tlvs[tag] = _typed_value(tag, spec, value, "CONFIG_SET")
    if platform_option:
        tlvs[tags.PLATFORM_OPTION] = Tlv.of(tags.PLATFORM_OPTION, 0)
    return Command.CONFIG_SET, m.ConfigSet(tlvs=list(tlvs.values())).encode_body()


def remote_ctrl(params: Params) -> Built:
    """REMOTE_CTRL (4.12): a code of 3.6.1, then 0x4021 or vendor parameter TLVs.

    ``params`` items are ``{"tag": T, "value": V}`` or ``{"tag": T, "hex": H}``.
    """
    _fields(params, "REMOTE_CTRL", ("code", "params"))
    code = _integer(_require(params, "code", "REMOTE_CTRL"), "REMOTE_CTRL code", 0, 0xFF)
    if code not in _REMOTE_CODES:
        raise RequestError(f"REMOTE_CTRL: code 0x{code:02X} is not in table 3.6.1")
    extra: list[Tlv] = []
    for item in params.get("params") or []:
        if not isinstance(item, Mapping) or "tag" not in item or len(item) != 2:
            raise RequestError('REMOTE_CTRL: each param is {"tag": T, "value": V or "hex": H}')
        tag = parse_tag(item["tag"])
        if tag not in REMOTE_PARAM_TAGS and not tags.is_vendor(tag):
            raise RequestError(f"REMOTE_CTRL: parameter tag 0x{tag:04X} is not 0x4021 or vendor")
        value = {"hex": item["hex"]} if "hex" in item else item.get("value")
        extra.append(_typed_value(tag, tags.TAGS.get(tag), value, "REMOTE_CTRL"))
    return Command.REMOTE_CTRL, m.RemoteCtrl.build(code, *extra).encode_body()


def security_config(params: Params) -> Built:
    """SECURITY_CONFIG read, op 1 (plaintext) or 2 (digest form) (4.13).

    Op 0 carries credentials and is the router's delivery only (PD-21); ops 3-6 are
    reserved or terminal-initiated.
    """
    _fields(params, "SECURITY_CONFIG", ("op", "tags"))
    op = _integer(_require(params, "op", "SECURITY_CONFIG"), "SECURITY_CONFIG op", 0, 0xFF)
    if op not in (SecurityOp.READ, SecurityOp.READ_DIGEST):
        raise RequestError(
            f"SECURITY_CONFIG: op {op} is not allowed here (1 = read, 2 = read digest form)"
        )
    wanted = _tag_list(_require(params, "tags", "SECURITY_CONFIG"), "SECURITY_CONFIG")
    for tag in wanted:
        spec = tags.TAGS.get(tag)
        if spec is None or not spec.is_security:
            raise RequestError(f"SECURITY_CONFIG: 0x{tag:04X} is not a security tag")
    body = m.SecurityConfig(op, tlvs=_queries(wanted)).encode_body()
    return Command.SECURITY_CONFIG, body


def _source(params: Params, command: str) -> Tlv:
    return Tlv.of(m.TAG_SRC_EC, ec_code(_require(params, "source_ec", command), "source_ec"))


def transparent_data(params: Params) -> Built:
    """TRANSPARENT_DATA to a terminal (4.7): CRC16 ‖ source 0x4015 ‖ 0x4007."""
    _fields(params, "TRANSPARENT_DATA", ("data", "source_ec"))
    data = _hex(_require(params, "data", "TRANSPARENT_DATA"), "TRANSPARENT_DATA data")
    msg = m.TransparentData.build(data, _source(params, "TRANSPARENT_DATA"))
    return Command.TRANSPARENT_DATA, msg.encode_body()


def transparent_cmd(params: Params) -> Built:
    """TRANSPARENT_CMD to a terminal (4.16, PD-16): source ‖ 0x4016 ‖ 0x4007."""
    _fields(params, "TRANSPARENT_CMD", ("fixed", "data", "source_ec"))
    fixed = _hex(params.get("fixed", ""), "TRANSPARENT_CMD fixed")
    data = _hex(_require(params, "data", "TRANSPARENT_CMD"), "TRANSPARENT_CMD data")
    tlvs = [_source(params, "TRANSPARENT_CMD"), Tlv(m.TAG_CMD_FIXED, fixed),
            Tlv(m.TAG_USER_DATA, data)]
    return Command.TRANSPARENT_CMD, m.TransparentCmd(tlvs=tlvs).encode_body()


BUILDERS: dict[str, Callable[[Params], Built]] = {
    "CONFIG_GET": config_get,
    "CONFIG_SET": config_set,
    "REMOTE_CTRL": remote_ctrl,
    "SECURITY_CONFIG": security_config,
    "TRANSPARENT_DATA": transparent_data,
    "TRANSPARENT_CMD": transparent_cmd,
}


def build(command: str, params: Params) -> Built:
    """``(command_id, body)`` for a JSON request description of one of :data:`BUILDERS`."""
    builder = BUILDERS.get(str(command).upper())
    if builder is None:
        raise RequestError(
            f"unknown command {command!r}; one of {', '.join(BUILDERS)}, DOWNLOAD_INFO, LOGOUT"
        )
    return builder(params)


# --- DOWNLOAD_INFO --------------------------------------------------------------------


def check_version(version: Any) -> str:
    """VER_DSC: 1-19 printable ASCII characters (the limit of 0x1005 UPDATEFILEREV)."""
    return _ascii_text(
        version, "version", _VERSION_RE, f"1-{MAX_VERSION_LENGTH} printable ASCII characters"
    )


def download_url(tx: FileTransaction, public_url: str) -> str:
    """The DOWNLOAD_INFO URL of a file transaction, in the exact form of 4.14."""
    url = (
        f"{public_url.rstrip('/')}{FILES_PATH}/{tx.token}/{quote(tx.name, safe='')}"
        f"?TRANS_ID={tx.trans_id:08X}&FILE_SIZE={tx.size}&CRC16={tx.crc16:04X}"
        f"&CRC32={tx.crc32:08X}&VER_DSC={quote(tx.version, safe='')}"
    )
    if len(url) > MAX_URL_LENGTH or not url.isascii():
        raise RequestError(
            f"DOWNLOAD_INFO: the URL would be {len(url)} characters (at most {MAX_URL_LENGTH}"
            " ASCII); use a shorter file name or version"
        )
    return url


def download_info(tx: FileTransaction, public_url: str, *, force: bool = False) -> Built:
    """DOWNLOAD_INFO (4.14): TLV 0x1001 URL, and 0x100B = 1 when the update is forced."""
    tlvs = [Tlv.of(m.TAG_URL, download_url(tx, public_url))]
    if force:
        tlvs.append(Tlv.of(tags.FORCE_UPDATE, 1))
    return Command.DOWNLOAD_INFO, m.DownloadInfo(tlvs=tlvs).encode_body()


# --- provisioning ----------------------------------------------------------------------

PROVISION_FIELDS = (
    "imei", "imsi", "msisdn", "cipher", "serial", "uplink_password", "downlink_password",
    "base_key", "apps", "default_app", "sms_wakeup", "sms_terminal_port",
    "require_encryption", "compat",
)
CREDENTIAL_FIELDS = ("uplink_password", "downlink_password", "base_key")


def _digits(value: Any, what: str, length: int) -> str:
    if not isinstance(value, str) or not re.fullmatch(f"[0-9]{{{length}}}", value):
        raise RequestError(f"{what} must be {length} decimal digits, got {value!r}")
    return value


def _boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"{what} must be true or false, got {value!r}")
    return value


def credential_expiry(now: float, ttl: float | None) -> int:
    """Expiry of a new credential: never, or now + ``credential_ttl`` (6.3.2)."""
    return NEVER if ttl is None else min(NEVER - 1, int(now + ttl))


def generate_credentials(cipher: str) -> dict[str, str]:
    """Fresh passwords and base key per PD-39, keyed like the provisioning fields."""
    return {
        "uplink_password": generate_password(),
        "downlink_password": generate_password(),
        "base_key": generate_base_key("aes" if cipher == "aes" else "legacy"),
    }


def _credential_set(params: Params, cipher: str, expiry: int) -> CredentialSet:
    for name in ("uplink_password", "downlink_password"):
        value = _ascii_text(params[name], name, _SECRET_RE, "printable ASCII")
        if len(value) != PASSWORD_LENGTH:
            raise RequestError(f"{name} must be exactly {PASSWORD_LENGTH} characters")
    key = _ascii_text(params["base_key"], "base_key", _SECRET_RE, "printable ASCII")
    if len(key) not in BASE_KEY_LENGTHS[cipher]:
        lengths = " or ".join(str(n) for n in BASE_KEY_LENGTHS[cipher])
        raise RequestError(f"base_key must be {lengths} characters for cipher {cipher}")
    return CredentialSet(
        uplink_password=params["uplink_password"],
        uplink_expiry=expiry,
        downlink_password=params["downlink_password"],
        downlink_expiry=expiry,
        base_key=key,
        base_key_expiry=expiry,
    )


def terminal_from_json(params: Params, *, expiry: int) -> Terminal:
    """A new terminal record from a provisioning description (spec 1.5 attributes).

    With a serial and all three credentials the terminal is pre-registered (state
    REGISTERED, the given set current; the IMSI is then required for the digests);
    without credentials it awaits its REGISTER. Partial credentials are refused.
    """
    _fields(params, "provision", PROVISION_FIELDS)
    imei = _digits(_require(params, "imei", "provision"), "imei", 15)
    imsi = params.get("imsi")
    if imsi is not None:
        imsi = _digits(imsi, "imsi", 15)
    msisdn = params.get("msisdn")
    if msisdn is not None:
        if not isinstance(msisdn, str) or not _MSISDN_RE.fullmatch(msisdn):
            raise RequestError(f"msisdn must be digits with an optional leading +: {msisdn!r}")
        msisdn = normalize_msisdn(msisdn)
    cipher = params.get("cipher") or "none"
    if cipher not in CIPHERS:
        raise RequestError(f"cipher must be one of {', '.join(CIPHERS)}, got {cipher!r}")
    serial = params.get("serial")
    if serial is not None:
        _ascii_text(serial, "serial", _SERIAL_RE, "16 printable characters")
    given = [name for name in CREDENTIAL_FIELDS if params.get(name) is not None]
    creds = None
    if given:
        if len(given) != len(CREDENTIAL_FIELDS) or serial is None or imsi is None:
            raise RequestError(
                "preset credentials need serial, imsi, uplink_password, downlink_password "
                "and base_key together"
            )
        creds = _credential_set(params, cipher, expiry)
    apps = params.get("apps") or []
    if not isinstance(apps, list):
        raise RequestError("apps must be a list of EC codes")
    app_set = {ec_code(app, "apps entry") for app in apps}
    default_app = params.get("default_app")
    if default_app is not None:
        app_set.add(ec_code(default_app, "default_app"))
    require_encryption = _boolean(params.get("require_encryption", False), "require_encryption")
    if require_encryption and cipher == "none":
        raise RequestError("require_encryption needs cipher legacy or aes")
    port = params.get("sms_terminal_port")
    profile = params.get("compat")
    if profile is not None:
        try:
            compat.profile(profile)
        except (TypeError, ValueError):
            raise RequestError(
                f"compat must be one of {', '.join(compat.NAMES)}, got {profile!r}"
            ) from None
    terminal = Terminal(
        imei=imei,
        imsi=imsi,
        msisdn=msisdn,
        serial=serial,
        state=TerminalState.REGISTERED if creds else TerminalState.UNREGISTERED,
        cipher=cipher,
        require_encryption=require_encryption,
        sms_wakeup=_boolean(params.get("sms_wakeup", True), "sms_wakeup"),
        current=creds,
        default_app=default_app,
        apps=app_set,
        compat=profile,
    )
    if port is not None:
        terminal.sms_terminal_port = _integer(port, "sms_terminal_port", 0, 0xFFFF)
    return terminal

"""Typed gateway configuration loaded from an ini file.

Each ini section maps to a frozen dataclass whose fields carry their own parser in the
field metadata, so adding a key is one line: the default, the type and the validation
live together. Every problem is reported as a one-line :class:`ConfigError` naming the
file, section and key, because a gateway that starts with a typo'd key silently on its
default is worse than one that refuses to start.

Relative paths (``[registry] database``, ``[http] files_dir``) are kept as written and
therefore resolve against the gateway's working directory (as with ``twistd --rundir``),
not against the directory of the ini file.
"""

from __future__ import annotations

import configparser
import dataclasses
import difflib
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal
from urllib.parse import urlsplit

from twisted.logger import InvalidLogLevelError, LogLevel

from m2mgw.protocol import compat
from m2mgw.protocol.constants import DEFAULT_ACCEPTED_VERSIONS
from m2mgw.protocol.tags import DEFAULT_SYNC_TAGS

Parser = Callable[[str], Any]

U32_MAX = 0xFFFFFFFF
_DAY = 86_400.0


class ConfigError(Exception):
    """A configuration file or value is unusable; the message is one line."""


class _Invalid(ValueError):
    """A raw value does not parse; the text says what was expected."""


def _setting(default: Any, parse: Parser) -> Any:
    """A dataclass field whose raw ini value is converted and checked by ``parse``."""
    return field(default=default, metadata={"parse": parse})


# --- value parsers ---------------------------------------------------------------------


def _integer(lo: int, hi: int) -> Parser:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise _Invalid(f"an integer {lo}-{hi}")
        return value

    return parse


def _number(lo: float, hi: float) -> Parser:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise _Invalid(f"a number {lo:g}-{hi:g}")
        return value

    return parse


_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?)\s*([smhd]?)", re.IGNORECASE)
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": _DAY}


def parse_duration(raw: str) -> float:
    """Seconds from ``90``, ``90s``, ``5m``, ``24h`` or ``7d``; ``ValueError`` otherwise."""
    match = _DURATION_RE.fullmatch(raw.strip())
    if match is None:
        raise _Invalid("a duration in seconds, or with a suffix s/m/h/d (e.g. 90s, 5m, 24h)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


def _seconds(value: float) -> str:
    return f"{int(value)}s" if value == int(value) else f"{value:g}s"


def _duration(lo: float = 0.0, hi: float = float(U32_MAX), *, never: bool = False) -> Parser:
    """A duration within [lo, hi]; with ``never`` the word ``never`` gives ``None``."""
    span = f"{_seconds(lo)}-{_seconds(hi)}" if hi < U32_MAX else f"of at least {_seconds(lo)}"
    bounds = f"a duration {span} (plain seconds or 90s/5m/24h/7d)"
    if never:
        bounds += " or 'never'"

    def parse(raw: str) -> float | None:
        if never and raw.strip().lower() == "never":
            return None
        try:
            value = parse_duration(raw)
        except _Invalid:
            raise _Invalid(bounds) from None
        if not lo <= value <= hi:
            raise _Invalid(bounds)
        return value

    return parse


#: The value of a key left empty, to take the value of its section's general key.
INHERIT: Literal["inherit"] = "inherit"


def _or_inherit(parse: Parser, general: str) -> Parser:
    """``parse``, or empty for :data:`INHERIT`: the value of the key ``general``."""

    def parse_or_inherit(raw: str) -> Any:
        if not raw.strip():
            return INHERIT
        try:
            return parse(raw)
        except _Invalid as e:
            raise _Invalid(f"{e}, or empty for the value of {general}") from None

    return parse_or_inherit


_BOOLEANS = {
    "yes": True,
    "true": True,
    "on": True,
    "1": True,
    "no": False,
    "false": False,
    "off": False,
    "0": False,
}


def _boolean(raw: str) -> bool:
    try:
        return _BOOLEANS[raw.strip().lower()]
    except KeyError:
        raise _Invalid("a boolean (yes/no, true/false, on/off, 1/0)") from None


def _watermarks(hi: int) -> Parser:
    """``HIGH, LOW``: two integers with 0 <= LOW < HIGH <= ``hi`` (backpressure)."""

    def parse(raw: str) -> tuple[int, int]:
        parts = [p.strip() for p in raw.split(",")]
        try:
            high, low = (int(p) for p in parts)
        except ValueError:
            high = low = -1
        if not 0 <= low < high <= hi:
            raise _Invalid(f"'HIGH, LOW' with 0 <= LOW < HIGH <= {hi}")
        return high, low

    return parse


def _duration_list(lo: float, hi: float) -> Parser:
    """A non-empty comma list of durations (``10s, 60s, 300s``)."""
    single = _duration(lo, hi)

    def parse(raw: str) -> tuple[float, ...]:
        items = [item.strip() for item in raw.split(",") if item.strip()]
        try:
            values = tuple(single(item) for item in items)
        except _Invalid:
            values = ()
        if not values:
            raise _Invalid(f"a comma list of durations {_seconds(lo)}-{_seconds(hi)} (10s, 60s)")
        return values

    return parse


def _hex_list(*, allow_empty: bool) -> Parser:
    """A comma list of u16 values in hex (``0x0300, 0x0301``)."""

    def parse(raw: str) -> tuple[int, ...]:
        items = [item.strip() for item in raw.split(",") if item.strip()]
        try:
            values = tuple(int(item, 16) for item in items)
        except ValueError:
            values = None
        if values is None or any(v > 0xFFFF for v in values) or not (values or allow_empty):
            raise _Invalid("a comma list of 16-bit hex values like 0x0300, 0x0301")
        return values

    return parse


def _text(*, allow_empty: bool) -> Parser:
    def parse(raw: str) -> str:
        if not raw and not allow_empty:
            raise _Invalid("a non-empty value")
        return raw

    return parse


def _host_list(raw: str) -> tuple[str, ...]:
    """Comma-separated host names or addresses, compared case-insensitively."""
    hosts = tuple(h.strip().lower() for h in raw.split(",") if h.strip())
    for host in hosts:
        if (
            not host.isascii()
            or host.count(":") == 1
            or any(c.isspace() or c in "/@[]" for c in host)
        ):
            raise _Invalid(f"host names or addresses without scheme, port or path, got {host!r}")
    return hosts


def _fixed_length(length: int) -> Parser:
    def parse(raw: str) -> str:
        if len(raw) != length or not raw.isascii() or not raw.isprintable():
            raise _Invalid(f"exactly {length} printable ASCII characters")
        return raw

    return parse


_PHONE_RE = re.compile(r"\+?\d{3,20}")


def _phone_number(raw: str) -> str:
    """Empty, or digits with an optional leading ``+`` (stored as written)."""
    if raw and not _PHONE_RE.fullmatch(raw):
        raise _Invalid("a phone number (digits, optional leading +) or empty")
    return raw


def _log_level(raw: str) -> LogLevel:
    try:
        return LogLevel.levelWithName(raw.strip().lower())
    except InvalidLogLevelError:
        raise _Invalid("one of debug, info, warn, error, critical") from None


def _one_of(*choices: str) -> Parser:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise _Invalid("one of " + ", ".join(choices))
        return value

    return parse


# --- endpoint descriptions ---------------------------------------------------------------

_ENDPOINT_KINDS = ("tcp", "tcp6", "ssl", "unix", "systemd")
_PORT_KINDS = ("tcp", "tcp6", "ssl")
_TCP_KEYWORDS = frozenset({"port", "interface", "backlog"})
_COLON_RE = re.compile(r"(?<!\\):")


def endpoint_parts(description: str) -> tuple[str, list[str], dict[str, str]]:
    """Split a Twisted endpoint description into (kind, positional args, keyword args).

    A light parse (escaped ``\\:`` honoured) that needs no reactor and touches no files,
    unlike ``serverFromString``, which reads TLS keys and systemd's environment.
    """
    kind, *rest = [part.replace("\\:", ":") for part in _COLON_RE.split(description)]
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part in rest:
        key, sep, value = part.partition("=")
        if sep:
            kwargs[key] = value
        else:
            args.append(part)
    return kind.lower(), args, kwargs


def connect_address(description: str | None) -> tuple[str, int] | None:
    """(host, port) where a client on this machine reaches a TCP server endpoint.

    A wildcard interface means loopback; None for ``none``, ``unix:`` and ``systemd:``,
    whose address the description does not tell.
    """
    if description is None:
        return None
    kind, args, kwargs = endpoint_parts(description)
    port = args[0] if args else kwargs.get("port", "")
    if kind not in _PORT_KINDS or not port.isdigit():
        return None
    host = kwargs.get("interface", "")
    if host in ("", "0.0.0.0", "::"):
        host = "::1" if kind == "tcp6" else "127.0.0.1"
    return host, int(port)


def with_backlog(description: str, backlog: int) -> str:
    """A ``tcp:``/``tcp6:`` description with ``backlog=`` added unless it has one.

    Twisted listens with a queue of 50: a fleet reconnecting at once after a restart
    overflows it, and each connection refused waits for the kernel's SYN retransmit
    (1, 3, 7 s ...) before it is accepted (D-375).
    """
    kind, _, kwargs = endpoint_parts(description)
    if kind not in ("tcp", "tcp6") or "backlog" in kwargs:
        return description
    return f"{description}:backlog={backlog}"


def _endpoint(raw: str) -> str | None:
    """A server endpoint description, or ``none`` (the listener is disabled)."""
    expected = (
        "'none' or a server endpoint like tcp:5236:interface=127.0.0.1 "
        f"({'/'.join(_ENDPOINT_KINDS)})"
    )
    if raw.strip().lower() == "none":
        return None
    kind, args, kwargs = endpoint_parts(raw)
    if kind not in _ENDPOINT_KINDS:
        raise _Invalid(expected)
    if kind in _PORT_KINDS:
        port = args[0] if args else kwargs.get("port", "")
        if not port.isdigit() or int(port) > 0xFFFF or len(args) > 1:
            raise _Invalid(expected + " with a port 0-65535")
        if kind != "ssl" and not _TCP_KEYWORDS.issuperset(kwargs):
            raise _Invalid(expected + "; tcp takes only interface= and backlog=")
    elif kind == "unix" and not (args or kwargs.get("address")):
        raise _Invalid(expected + " with a socket path")
    return raw


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise _Invalid("an http:// base URL like http://192.0.2.10:8080")
    return raw.rstrip("/")


def _postgres_url(raw: str) -> str:
    """Empty, or a libpq URL ``postgresql://[user@][host][:port][/database][?options]``."""
    parts = urlsplit(raw)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if raw and (parts.scheme not in ("postgresql", "postgres") or not port_ok or parts.fragment):
        raise _Invalid("empty, or a URL like postgresql://m2mgw@db.example:5432/m2mgw")
    return raw


_NODE_RE = re.compile(r"[A-Za-z0-9_.-]{1,48}")


def _node_name(raw: str) -> str:
    """Empty (the host name), or a node name: it appears in channel names and logs."""
    if raw and not _NODE_RE.fullmatch(raw):
        raise _Invalid("empty, or 1-48 of A-Z a-z 0-9 _ . -")
    return raw


def default_node() -> str:
    """This node's name when ``[registry] node`` is empty: the short host name."""
    name = "".join(c for c in socket.gethostname().split(".")[0] if _NODE_RE.fullmatch(c))
    return name[:48] or "m2mgw"


def derive_public_url(listen: str | None) -> str:
    """The file-service base URL implied by ``[http] listen`` ('' when HTTP is off)."""
    if listen is None:
        return ""
    kind, args, kwargs = endpoint_parts(listen)
    host = kwargs.get("interface", "")
    if kind not in ("tcp", "tcp6") or host in ("", "0.0.0.0", "::"):
        raise _Invalid(
            "an explicit value: it cannot be derived from [http] listen "
            f"{listen!r} (no specific interface)"
        )
    port = args[0] if args else kwargs["port"]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


# --- sections --------------------------------------------------------------------------


_RETENTION = _duration(1, never=True)
_RETENTION_KIND = _or_inherit(_RETENTION, "retention")

#: The master key file's name when ``[registry] master_key_file`` is empty.
DEFAULT_KEY_NAME = "m2mgw.key"


def default_key_path(database: str) -> str:
    """``m2mgw.key`` in the database's directory, relative like the database."""
    return os.path.join(os.path.dirname(database), DEFAULT_KEY_NAME)


#: Default ``[registry] write_watermarks``, (high, low) uncommitted write transactions.
#: Every commit costs a WAL append, about 0.1-1 ms on a busy machine, so 2000 bound the
#: drain at shutdown to about a second; 500 left queued on resume keep the writer busy
#: while reading restarts.
WRITE_WATERMARKS = (2000, 500)
#: Default ``[registry] row_watermarks``, (high, low) uncommitted rows: the memory held
#: (a few hundred bytes a row); 20 log flushes of 1000 rows, about 10 MB.
ROW_WATERMARKS = (20_000, 5_000)


@dataclass(frozen=True)
class RegistryConfig:
    """``[registry]``: the persistent terminal registry."""

    database: str = _setting("m2mgw.db", _text(allow_empty=False))
    #: PostgreSQL instead of the SQLite ``database``, for several nodes (issue #13).
    url: str = _setting("", _postgres_url)
    #: This gateway's name among the nodes sharing ``url``; empty: :func:`default_node`.
    node: str = _setting("", _node_name)
    #: How long a node's hold on its terminals outlives its last renewal (D-362).
    node_lease: float = _setting(30.0, _duration(1.0, 3600))
    #: The key secrets are sealed under (D-280); empty: :attr:`master_key_path`.
    master_key_file: str = _setting("", _text(allow_empty=True))
    serial_prefix: str = _setting("A9720300", _fixed_length(8))
    write_watermarks: tuple[int, int] = _setting(WRITE_WATERMARKS, _watermarks(1_000_000))
    row_watermarks: tuple[int, int] = _setting(ROW_WATERMARKS, _watermarks(100_000_000))
    #: History is pruned once this old (D-200); ``retention_KIND`` overrides it per kind.
    retention: float | None = _setting(30 * _DAY, _RETENTION)
    retention_messages: float | Literal["inherit"] | None = _setting(INHERIT, _RETENTION_KIND)
    retention_statistics: float | Literal["inherit"] | None = _setting(INHERIT, _RETENTION_KIND)
    retention_alarms: float | Literal["inherit"] | None = _setting(INHERIT, _RETENTION_KIND)
    retention_requests: float | Literal["inherit"] | None = _setting(INHERIT, _RETENTION_KIND)
    retention_sms: float | Literal["inherit"] | None = _setting(INHERIT, _RETENTION_KIND)
    retention_interval: float = _setting(60.0, _duration(0.1, _DAY))

    def retention_of(self, kind: str) -> float | None:
        """Seconds history of ``kind`` (messages, alarms...) is kept; None: forever."""
        value: float | Literal["inherit"] | None = getattr(self, f"retention_{kind}")
        return self.retention if value == INHERIT else value

    @property
    def master_key_path(self) -> str:
        """``master_key_file``, else ``m2mgw.key`` in the database's directory; relative
        like the database, so that the gateway and the CLI open the same file."""
        return self.master_key_file or default_key_path(self.database)


@dataclass(frozen=True)
class TcpConfig:
    """``[tcp]``: the terminal TCP bearer (spec 10.2)."""

    listen: str | None = _setting("tcp:5236:interface=127.0.0.1", _endpoint)
    #: The listen queue of a tcp:/tcp6: listener without its own backlog= (D-375).
    backlog: int = _setting(4096, _integer(1, 65_535))
    max_connections: int = _setting(10_000, _integer(1, 1_000_000))
    #: Connections not logged in from one source address (D-352).
    max_unauthenticated_per_host: int = _setting(256, _integer(1, 1_000_000))
    #: A connection must complete one frame within this (D-350).
    first_frame_timeout: float = _setting(10.0, _duration(0.1, 3600))
    idle_timeout: float = _setting(600.0, _duration(1))
    max_write_buffer: int = _setting(262_144, _integer(1024, 1 << 30))


@dataclass(frozen=True)
class UdpConfig:
    """``[udp]``: the terminal UDP bearer (spec 10.3); port 0 picks a free port."""

    port: int = _setting(5235, _integer(0, 65535))
    interface: str = _setting("127.0.0.1", _text(allow_empty=True))
    enabled: bool = _setting(True, _boolean)
    #: Datagrams a second from one source address outside every session (D-356) ...
    unauthenticated_rate: float = _setting(10.0, _number(0.1, 1_000_000))
    #: ... and from all of them together.
    unauthenticated_total_rate: float = _setting(1000.0, _number(1, 10_000_000))
    #: SO_RCVBUF of the port, in bytes: what waits while the gateway is busy (D-356).
    receive_buffer: int = _setting(4 * 1024 * 1024, _integer(65_536, 1 << 30))


@dataclass(frozen=True)
class HttpConfig:
    """``[http]``: the file service behind DOWNLOAD_INFO URLs (spec 4.14)."""

    listen: str | None = _setting("tcp:8080:interface=127.0.0.1", _endpoint)
    public_url: str = _setting("http://127.0.0.1:8080", _http_url)
    files_dir: str = _setting("files", _text(allow_empty=False))
    #: Bounds of every HTTP listener (D-310..D-313): connections, header and body time.
    max_connections: int = _setting(256, _integer(1, 1_000_000))
    header_timeout: float = _setting(20.0, _duration(0.1, 3600))
    body_timeout: float = _setting(60.0, _duration(0.1, _DAY))


@dataclass(frozen=True)
class AdminConfig:
    """``[admin]``: the JSON admin API, loopback-only by default, behind tokens."""

    listen: str | None = _setting("tcp:8081:interface=127.0.0.1", _endpoint)
    #: Empty: ``admin-tokens`` beside the database (:meth:`GatewayConfig.admin_tokens_file`).
    tokens_file: str = _setting("", _text(allow_empty=True))
    max_connections: int = _setting(64, _integer(1, 100_000))
    header_timeout: float = _setting(20.0, _duration(0.1, 3600))
    body_timeout: float = _setting(20.0, _duration(0.1, 3600))
    #: Host names (besides the listener's own address) the API answers to (D-318).
    allowed_hosts: tuple[str, ...] = _setting((), _host_list)


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: Prometheus metrics, also at ``/metrics`` of the admin API (token)."""

    #: A listener serving only ``/metrics``, without a token (loopback, scrape network).
    listen: str | None = _setting(None, _endpoint)
    max_connections: int = _setting(16, _integer(1, 100_000))
    header_timeout: float = _setting(10.0, _duration(0.1, 3600))
    body_timeout: float = _setting(10.0, _duration(0.1, 3600))


@dataclass(frozen=True)
class ProtocolConfig:
    """``[protocol]``: the profile parameters of spec 1.5 (defaults are normative)."""

    accepted_versions: tuple[int, ...] = _setting(
        DEFAULT_ACCEPTED_VERSIONS, _hex_list(allow_empty=False)
    )
    answer_timeout_ip: float = _setting(15.0, _duration(0.1, _DAY))
    udp_sends: int = _setting(3, _integer(1, 10))
    answer_timeout_sms: float = _setting(180.0, _duration(1, _DAY))
    heartbeat_interval_default: float = _setting(90.0, _duration(1, _DAY))
    offline_after_intervals: int = _setting(3, _integer(1, 100))
    response_cache_window: float = _setting(300.0, _duration(0, _DAY))
    response_cache_entries: int = _setting(32, _integer(1, 4096))
    fragment_threshold: int = _setting(900, _integer(64, 65_000))
    reassembly_max_bytes: int = _setting(65_536, _integer(1024, 16 << 20))
    reassembly_max_parts: int = _setting(128, _integer(1, 128))
    reassembly_idle_timeout: float = _setting(60.0, _duration(1, _DAY))
    tcp_login_timeout: float = _setting(60.0, _duration(1, _DAY))
    sync_trap_wait: float = _setting(30.0, _duration(1, _DAY))
    session_key_ttl: float = _setting(_DAY, _duration(60))
    credential_ttl: float | None = _setting(None, _duration(60, never=True))
    credential_renew_margin: float = _setting(7 * _DAY, _duration(0))
    wakeup_min_interval: float = _setting(600.0, _duration(0))
    file_block_max: int = _setting(887, _integer(1, 65_000))
    #: Deprecated alias (D-238): ``yes`` means ``default_compat = simcom``.
    register_op3_digest_optional: bool = _setting(False, _boolean)
    #: The compatibility profile of terminals provisioned without one (spec 1.6).
    default_compat: str = _setting("strict", _one_of(*compat.NAMES))
    default_sync_tags: tuple[int, ...] = _setting(
        DEFAULT_SYNC_TAGS, _hex_list(allow_empty=True)
    )
    config_confirm_wait: float = _setting(300.0, _duration(1))
    credential_redeliver_interval: float = _setting(_DAY, _duration(60))
    file_transaction_lifetime: float = _setting(7 * _DAY, _duration(60))
    queue_ttl: float = _setting(_DAY, _duration(1))


@dataclass(frozen=True)
class SmsConfig:
    """``[sms]``: the GSM modem bearer (spec 10.4); an empty device turns SMS off."""

    device: str = _setting("", _text(allow_empty=True))
    baudrate: int = _setting(115_200, _integer(300, 4_000_000))
    smsc: str = _setting("", _phone_number)
    platform_number: str = _setting("", _phone_number)
    platform_port: int = _setting(2862, _integer(0, 65535))
    terminal_port: int = _setting(2862, _integer(0, 65535))
    max_parts: int = _setting(4, _integer(1, 255))
    reassembly_timeout: float = _setting(300.0, _duration(1, _DAY))
    send_rate: float = _setting(1.0, _number(0.001, 1000))
    command_timeout: float = _setting(10.0, _duration(0.1, 3600))

    @property
    def enabled(self) -> bool:
        return bool(self.device)


@dataclass(frozen=True)
class AppConfig:
    """``[app]``: the application long-connection listener and callback policy."""

    listen: str | None = _setting(None, _endpoint)
    callback_timeout: float = _setting(30.0, _duration(0.1, 3600))
    callback_concurrency: int = _setting(4, _integer(1, 64))
    callback_retry_max: float = _setting(3600.0, _duration(0.1, _DAY))
    notify_retry_schedule: tuple[float, ...] = _setting(
        (10.0, 60.0, 300.0), _duration_list(0.01, _DAY)
    )
    notify_retention: float = _setting(_DAY, _duration(1))
    fetch_lease: float = _setting(60.0, _duration(0.1, _DAY))
    sync_wait: float = _setting(50.0, _duration(0.1, 3600))
    soap_max_request: int = _setting(8 * 1024 * 1024, _integer(1024, 1 << 30))
    soap_timestamp_window: float = _setting(300.0, _duration(1, _DAY))
    soap_duplicate_window: float = _setting(600.0, _duration(0, _DAY))
    soap_session_idle: float = _setting(1800.0, _duration(1, _DAY))
    session_ttl: float = _setting(_DAY, _duration(60, 30 * _DAY))
    max_soap_sessions: int = _setting(4, _integer(1, 1000))
    max_app_connections: int = _setting(1, _integer(1, 100))
    #: Long connections in all, logged in or not (D-314).
    max_connections: int = _setting(64, _integer(1, 100_000))
    #: Long connections not logged in from one source address (D-358).
    max_unauthenticated_per_host: int = _setting(16, _integer(1, 100_000))
    upgrade_source_hosts: tuple[str, ...] = _setting((), _host_list)


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: level and format of the gateway's log, and how refusals are limited."""

    # _setting returns a dataclasses.Field; ruff cannot see that LogLevel is a constant.
    level: LogLevel = _setting(LogLevel.info, _log_level)  # noqa: RUF009
    format: str = _setting("text", _one_of("text", "json"))
    refusal_burst: int = _setting(5, _integer(1, 1000))
    refusal_interval: float = _setting(60.0, _duration(1, _DAY))


@dataclass(frozen=True)
class GatewayConfig:
    """The whole configuration; ``source`` names the file it came from."""

    registry: RegistryConfig = field(default_factory=RegistryConfig)
    tcp: TcpConfig = field(default_factory=TcpConfig)
    udp: UdpConfig = field(default_factory=UdpConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    sms: SmsConfig = field(default_factory=SmsConfig)
    app: AppConfig = field(default_factory=AppConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = "<defaults>"

    @property
    def admin_tokens_file(self) -> str:
        """The admin token file: ``[admin] tokens_file``, else ``admin-tokens`` in the
        database's directory; relative like the database (gateway and CLI agree)."""
        database_dir = os.path.dirname(self.registry.database)
        return self.admin.tokens_file or os.path.join(database_dir, "admin-tokens")


_SECTIONS: dict[str, type] = {
    f.name: f.default_factory for f in dataclasses.fields(GatewayConfig) if f.name != "source"
}


# --- loading ---------------------------------------------------------------------------

CONFIG_ENV = "M2MGW_CONFIG"
SYSTEM_CONFIG = "/etc/m2mgw/m2mgw.ini"


def config_path(given: str | None) -> str:
    """The ini file to use: ``--config``, else ``$M2MGW_CONFIG``, else the system file.

    Never a path relative to the working directory by default: an installed gateway
    started from anywhere must read the same file.
    """
    return given or os.environ.get(CONFIG_ENV) or SYSTEM_CONFIG


def sample_config() -> str:
    """The documented sample ini shipped with the package (every key, its default)."""
    return resources.files("m2mgw.etc").joinpath("m2mgw.ini").read_text(encoding="utf-8")


def load_config(path: str) -> GatewayConfig:
    """Read and validate the ini file at ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such configuration file (give --config FILE or set ${CONFIG_ENV}; "
            "'m2mgw sample-config' prints a documented one)"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {_one_line(e)}") from None
    return parse_config(text, source=path)


def parse_config(text: str, source: str = "<string>") -> GatewayConfig:
    """Validate ini ``text``; ``source`` is used in error messages."""
    parser = configparser.ConfigParser(
        interpolation=None, inline_comment_prefixes=("#", ";"), empty_lines_in_values=False
    )
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        raise ConfigError(f"{source}: {_describe_parse_error(e)}") from None
    if parser.defaults():
        raise ConfigError(f"{source}: [{parser.default_section}]: section not supported")
    sections: dict[str, Any] = {}
    for name in parser.sections():
        if name not in _SECTIONS:
            raise ConfigError(f"{source}: [{name}]: unknown section{_suggest(name, _SECTIONS)}")
        sections[name] = _build_section(source, name, parser[name])
    for name, cls in _SECTIONS.items():
        sections.setdefault(name, cls())
    config = GatewayConfig(source=source, **sections)
    _check_consistency(config)
    return config


def _build_section(source: str, name: str, items: Mapping[str, str]) -> Any:
    cls = _SECTIONS[name]
    known = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, raw in items.items():
        if key not in known:
            raise ConfigError(f"{source}: [{name}] {key}: unknown key{_suggest(key, known)}")
        try:
            values[key] = known[key].metadata["parse"](raw.strip())
        except _Invalid as e:
            raise ConfigError(f"{source}: [{name}] {key}: expected {e}, got {raw!r}") from None
    if name == "protocol" and values.get("register_op3_digest_optional"):
        # D-238: the old global switch is the simcom profile for the whole deployment.
        if values.setdefault("default_compat", compat.SIMCOM.name) != compat.SIMCOM.name:
            raise ConfigError(
                f"{source}: [protocol] register_op3_digest_optional: deprecated, it means "
                f"default_compat = simcom, which contradicts default_compat = "
                f"{values['default_compat']}; remove it (give terminals --compat simcom)"
            )
    if name == "http" and "public_url" not in values:
        try:
            values["public_url"] = derive_public_url(values.get("listen", HttpConfig.listen))
        except _Invalid as e:
            raise ConfigError(f"{source}: [http] public_url: expected {e}") from None
    return cls(**values)


def _check_consistency(config: GatewayConfig) -> None:
    """Cross-key rules that a single value cannot express."""
    limit = config.protocol.fragment_threshold - 13
    if config.protocol.file_block_max > limit:
        raise ConfigError(
            f"{config.source}: [protocol] file_block_max: must be at most "
            f"fragment_threshold - 13 = {limit} so a FILE_REQ_ACK is never fragmented "
            f"(PD-36), got {config.protocol.file_block_max}"
        )


def _suggest(word: str, choices: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(choices)})"


def _describe_parse_error(error: configparser.Error) -> str:
    if isinstance(error, configparser.MissingSectionHeaderError):
        return f"line {error.lineno}: {error.line.strip()!r} is outside any [section]"
    if isinstance(error, configparser.ParsingError):
        lineno, line = error.errors[0]
        return f"line {lineno}: cannot parse {line.strip()!r}"
    if isinstance(error, configparser.DuplicateOptionError):
        return f"[{error.section}] {error.option}: duplicate key (line {error.lineno})"
    if isinstance(error, configparser.DuplicateSectionError):
        return f"[{error.section}]: duplicate section (line {error.lineno})"
    return _one_line(error)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())

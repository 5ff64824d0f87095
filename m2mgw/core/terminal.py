"""The terminal role of the protocol, as a sans-I/O state machine (spec 4-10).

:class:`TerminalClient` is what a WMMP terminal does on the wire, h11 style: methods
such as :meth:`~TerminalClient.login` return the bytes of one message to send;
:meth:`~TerminalClient.receive` takes one complete message and returns typed events;
answers to platform requests and follow-up messages (traps, next fragments, a LOGOUT
after new credentials) are collected for :meth:`~TerminalClient.data_to_send`.
Time is injected (``clock`` for sends, ``now`` for receiving and timers) and the only
randomness, AES IVs, comes from an injectable source, so every byte is reproducible.

The simulator (:mod:`m2mgw.tools.terminal`) drives it; tests use it as a reference
terminal against the gateway.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from twisted.logger import Logger

from m2mgw.protocol import messages as m
from m2mgw.protocol.checksum import crc16, crc16_cmcc, crc32
from m2mgw.protocol.codec import (
    ENCRYPTED_FLAG,
    FRAGMENT_FLAG,
    TAG_FRAGMENT,
    Frame,
    build_frame,
    decode_frame,
    encrypted_container,
    parse_frame,
)
from m2mgw.protocol.compat import C7_MAX_FRAME, integers_swapped
from m2mgw.protocol.constants import (
    ACK_BIT,
    DEFAULT_ACCEPTED_VERSIONS,
    Command,
    ConnectMode,
    FileReqStatus,
    Flag,
    LogoutReason,
    RegisterOp,
    RemoteControl,
    SecurityOp,
    command_name,
)
from m2mgw.protocol.dupcache import CacheHit, ResponseCache
from m2mgw.protocol.errors import BodyError, ProtocolError
from m2mgw.protocol.fragment import (
    DEFAULT_THRESHOLD,
    Abort,
    Complete,
    Duplicate,
    FragmentAbort,
    FragmentOp,
    FragmentPart,
    FragmentSender,
    NeedPart,
    Reassembler,
    ReassemblyTable,
    TransIdCounter,
)
from m2mgw.protocol.header import Header
from m2mgw.protocol.security import (
    NEVER,
    AesCipher,
    Cipher,
    DigestKey,
    base_key_proof,
    decode_session_key,
    downlink_proof,
    make_cipher,
    uplink_proof,
    verify,
)
from m2mgw.protocol.tags import decode_int, length_fits
from m2mgw.protocol.tlv import Tlv, encode_tlv, find, tlv_dict

__all__ = [
    "DEFAULT_SYNC_TAGS",
    "HABITS",
    "Answer",
    "Credentials",
    "CredentialsChanged",
    "Discarded",
    "DownloadInfoOffer",
    "DownloadOffered",
    "Event",
    "FileDownloaded",
    "LoggedIn",
    "LoggedOut",
    "LoginFailed",
    "PlatformRequest",
    "ProtocolErrorEvent",
    "Registered",
    "RequestFailed",
    "RequestTimedOut",
    "StackHabits",
    "TerminalClient",
    "TerminalIdentity",
    "TerminalStateError",
    "parse_download_url",
    "sync_crc",
    "verify_download",
]

log = Logger()

DEFAULT_SYNC_TAGS: tuple[int, ...] = (0x0002, 0x0007, 0x0009, 0x000A, 0x0011)
RECEIVED_KEPT = 100  # platform requests kept in ``received`` for inspection
FILE_BLOCK = 887  # file_block_max: the largest block that never fragments an answer (PD-36)

# Timers per bearer (PD-10): (answer timeout, sends in all).
BEARER_TIMERS: dict[str, tuple[float, int]] = {
    "tcp": (15.0, 1),
    "udp": (15.0, 3),
    "sms": (180.0, 1),
}
_CONNECT_MODE = {"tcp": ConnectMode.TCP_LONG, "udp": ConnectMode.UDP_LONG, "sms": ConnectMode.SMS}

_TAG_SYNC_LIST = 0x0025
_TAG_HEARTBEAT = 0x0011
_TAG_EXEC_REPORT = 0x4010
_TAG_CONFIG_CRC = 0x4017
_TAG_PARAM_OPT = 0x4009
_TAG_BASE_KEY_PROOF = 0xE03A
_READ_ONLY = frozenset({0x3001, 0x3002, 0x3003, 0x3004})
_STATISTICS = (0x2004, 0x2008, 0x2009, 0x200A, 0x200B, 0x200C, 0x200D, 0x200E)

# Security tags a SECURITY_CONFIG op 0 may carry that make up a credential set (4.13).
_UP_PW, _UP_EXP, _DOWN_PW, _DOWN_EXP, _BASE_KEY, _BASE_EXP = (
    0xE025, 0xE027, 0xE028, 0xE02A, 0xE036, 0xE038,
)  # fmt: skip
_CREDENTIAL_TAGS = frozenset({_UP_PW, _UP_EXP, _DOWN_PW, _DOWN_EXP, _BASE_KEY, _BASE_EXP})
_PASSWORD_TAGS = frozenset({_UP_PW, _DOWN_PW})
_EXPIRY_TAGS = frozenset({_UP_EXP, _DOWN_EXP, _BASE_EXP})

# Generic error result of an unparseable platform request, per answer (spec 4.2 rule 4).
_ERROR_RESULT: dict[int, int] = {
    Command.CONFIG_GET: 1,
    Command.CONFIG_SET: 1,
    Command.REMOTE_CTRL: 1,
    Command.DOWNLOAD_INFO: 4,
    Command.SECURITY_CONFIG: 2,
    Command.TRANSPARENT_DATA: 3,
    Command.TRANSPARENT_CMD: 3,
}
# Never encrypted (6.4.3).
_PLAIN_COMMANDS = frozenset({Command.REGISTER, Command.LOGIN, Command.HEART_BEAT})


class TerminalStateError(ProtocolError):
    """A method was called that the terminal cannot honour (e.g. no base key)."""


# --- deployed stacks' habits -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StackHabits:
    """How a deployed terminal stack departs from the profile on the wire (spec 1.6).

    The simulator reproduces them byte for byte, so that the gateway's compatibility
    profiles (:mod:`m2mgw.protocol.compat`, same names) are tested against what such
    terminals really send. The defaults are a terminal that follows the profile.
    """

    #: Every request and answer with flag 0x00 (the CMCC client's only value).
    zero_flag: bool = False
    #: C1: these requests carry an ``E021`` although flag 0x20 is clear.
    unflagged_digest: frozenset[int] = frozenset()
    #: C4: these requests are signed over the 28-byte header alone.
    header_only_digest: frozenset[int] = frozenset()
    #: C2: the LOGIN sync CRC32 is always 0.
    zero_sync_crc: bool = False
    #: C3: these requests, and (``unsigned_answers``) every answer, carry no digest.
    unsigned: frozenset[int] = frozenset()
    unsigned_answers: bool = False
    #: C8: the Protocol_Version of its answers, whatever the request's.
    answer_version: int | None = None
    #: C5: TRANSPARENT_DATA carries the CMCC CRC16 variant.
    crc16_cmcc: bool = False
    #: C6: integer TLVs little-endian, both ways.
    little_endian: bool = False
    #: C7: a frame longer than this breaks the receiver (Total_Length read modulo 256).
    max_frame: int | None = None
    #: C9: platform requests that are never answered.
    ignored: frozenset[int] = frozenset()
    #: PD-06: REGISTER op 3 is sent without a digest (flag 0x80).
    unsigned_register_op3: bool = False


HABITS: dict[str, StackHabits] = {
    "strict": StackHabits(),
    "cmcc-javame": StackHabits(
        zero_flag=True,
        unflagged_digest=frozenset({Command.LOGIN, Command.CONFIG_TRAP}),
        header_only_digest=frozenset({Command.CONFIG_TRAP}),
        zero_sync_crc=True,
        unsigned=frozenset({Command.LOGOUT, Command.TRANSPARENT_DATA, Command.CONFIG_REQ}),
        unsigned_answers=True,
        answer_version=0x0301,
        crc16_cmcc=True,
        little_endian=True,
        max_frame=C7_MAX_FRAME,
        ignored=frozenset({Command.CONFIG_GET, Command.TRANSPARENT_DATA, Command.DOWNLOAD_INFO}),
    ),
    "simcom": StackHabits(unsigned_register_op3=True),
}
"""The habits of each stack, by the name of the gateway's profile made for it."""


# --- identity --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    """One credential set as the terminal holds it (spec 6.3.1)."""

    uplink_password: str
    downlink_password: str
    uplink_expiry: int = NEVER
    downlink_expiry: int = NEVER
    base_key: str | None = None
    base_key_expiry: int = NEVER


@dataclass(slots=True)
class TerminalIdentity:
    """What a terminal knows about itself; ``imsi`` is the registered IMSI (PD-37).

    ``config`` maps tags to raw values (the sync values among them); ``sync_tags`` is
    the terminal's ``0x0025`` list.
    """

    serial: str
    imei: str
    imsi: str
    credentials: Credentials | None = None
    cipher: str | None = None
    software_version: str = "1.01"
    sync_tags: tuple[int, ...] = DEFAULT_SYNC_TAGS
    config: dict[int, bytes] = field(default_factory=dict)


def sync_crc(tags: Iterable[int], config: dict[int, bytes]) -> int:
    """CRC32 over TLV(t) for each sync tag, in list order; a missing value is empty (6.5)."""
    return crc32(b"".join(encode_tlv(tag, config.get(tag, b"")) for tag in tags))


def _applied_crc(tlvs: Iterable[Tlv]) -> int:
    """``0x4017``: CRC32 over the applied TLVs sorted by tag, ``0x4009`` excluded (6.5)."""
    values = tlv_dict(tlvs)
    return crc32(b"".join(encode_tlv(t, values[t]) for t in sorted(values) if t != _TAG_PARAM_OPT))


# --- downloads -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DownloadInfoOffer:
    """The parameters of a DOWNLOAD_INFO URL (4.14)."""

    url: str
    trans_id: int
    size: int
    crc16: int
    crc32: int
    version: str
    force: bool = False


def parse_download_url(url: str, force: bool = False) -> DownloadInfoOffer:
    """Read the query parameters of a DOWNLOAD_INFO URL; BodyError when any is unusable."""
    try:
        parts = urlsplit(url)
        query = parse_qs(parts.query, strict_parsing=True)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("not an http URL")
        return DownloadInfoOffer(
            url,
            int(query["TRANS_ID"][0], 16),
            int(query["FILE_SIZE"][0]),
            int(query["CRC16"][0], 16),
            int(query["CRC32"][0], 16),
            query["VER_DSC"][0],
            force,
        )
    except (KeyError, ValueError, IndexError) as exc:
        raise BodyError(f"unusable download URL {url!r}: {exc}") from None


def verify_download(data: bytes, offer: DownloadInfoOffer) -> bool:
    """Whether a downloaded file matches the size, CRC16 and CRC32 of its offer (6.5)."""
    return len(data) == offer.size and crc16(data) == offer.crc16 and crc32(data) == offer.crc32


# --- events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Registered:
    """REGISTER_ACK; ``serial`` is set for results 0, 1 and 6 (9 is read as 1, PD-13)."""

    result: int
    serial: str | None
    verified: bool


@dataclass(frozen=True, slots=True)
class LoggedIn:
    """A successful LOGIN_ACK (result 0 or 1; 8 is read as 0, PD-12)."""

    result: int
    timestamp: int
    session_key: str | None
    session_key_expiry: int | None = None


@dataclass(frozen=True, slots=True)
class LoginFailed:
    result: int
    verified: bool


@dataclass(frozen=True, slots=True)
class LoggedOut:
    """The session ended; ``by_platform`` when the platform sent the LOGOUT."""

    reason: int
    by_platform: bool


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to one of the terminal's other requests."""

    command: int
    sequence_id: int
    message: m.Message

    @property
    def name(self) -> str:
        return command_name(self.command)


@dataclass(frozen=True, slots=True)
class PlatformRequest:
    """A platform request that was answered with ``result`` (already queued)."""

    message: m.Message
    sequence_id: int
    result: int

    @property
    def name(self) -> str:
        return command_name(self.message.COMMAND)


@dataclass(frozen=True, slots=True)
class CredentialsChanged:
    """A SECURITY_CONFIG op 0 was applied: later digests use the new set."""

    credentials: Credentials


@dataclass(frozen=True, slots=True)
class DownloadOffered:
    """DOWNLOAD_INFO accepted; the driver fetches by HTTP unless FILE_REQ is in use."""

    offer: DownloadInfoOffer


@dataclass(frozen=True, slots=True)
class FileDownloaded:
    """A FILE_REQ transfer ended; ``ok`` when the whole file's CRCs matched."""

    trans_id: int
    ok: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class RequestTimedOut:
    command: int
    sequence_id: int


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """A request ended without its normal answer (e.g. a part exchange aborted)."""

    command: int
    sequence_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Discarded:
    """A received message was dropped (header, digest or matching failure)."""

    reason: str
    command: int | None = None
    sequence_id: int | None = None


@dataclass(frozen=True, slots=True)
class ProtocolErrorEvent:
    """A message was accepted but part of it could not be used (e.g. a bad ``E040``)."""

    reason: str


Event = (
    Registered | LoggedIn | LoginFailed | LoggedOut | Answer | PlatformRequest
    | CredentialsChanged | DownloadOffered | FileDownloaded | RequestTimedOut
    | RequestFailed | Discarded | ProtocolErrorEvent
)  # fmt: skip


# --- the state machine -----------------------------------------------------------------


@dataclass(slots=True)
class _Transfer:
    """A FILE_REQ download in progress (4.15)."""

    offer: DownloadInfoOffer
    block: int
    data: bytearray = field(default_factory=bytearray)


@dataclass(slots=True)
class _Pending:
    """One outstanding request of the terminal, matched by Sequence_ID (4.2 rule 5)."""

    command: int
    sequence_id: int
    frame: bytes
    timestamp: int
    deadline: float
    encrypted: bool = False
    #: False for a request sent without a digest (C3): its answer may be unsigned too.
    signed: bool = True
    sends: int = 1
    context: Any = None
    sender: FragmentSender | None = None
    reassembler: Reassembler | None = None


class TerminalClient:
    """A terminal's protocol state: credentials, session, outstanding requests.

    ``bearer`` is ``'tcp'``, ``'udp'`` or ``'sms'``: it selects the timers (PD-10), and
    on SMS no digest, encryption or fragmentation is used (10.4). With
    ``encrypt_bodies`` every message that may be is sent in ``E042`` once a session
    key exists. ``download`` is ``'file'`` to fetch offered files with FILE_REQ, or
    ``'none'`` to leave fetching to the driver. With ``post_login_trap`` a LOGIN_ACK 0
    is followed by the empty CONFIG_TRAP that terminals typically send (4.4), which
    releases the platform's queued requests at once instead of after ``sync_trap_wait``.

    The client owns ``identity`` and keeps it current, as a terminal's flash would: the
    serial after REGISTER_ACK, the credentials after SECURITY_CONFIG op 0, the sync
    list after a CONFIG_SET of ``0x0025``. ``habits`` makes it send what a deployed
    stack sends instead (:data:`HABITS`, spec 1.6); its config always holds the values
    as numbers mean them, whatever byte order ``habits`` puts on the wire.
    """

    def __init__(
        self,
        identity: TerminalIdentity,
        bearer: str = "tcp",
        *,
        clock: Callable[[], float],
        random: Callable[[int], bytes] = os.urandom,
        encrypt_bodies: bool = False,
        download: str = "none",
        want_session_key: bool = False,
        post_login_trap: bool = False,
        version: int = 0x0300,
        first_sequence: int = 1,
        accepted_versions: tuple[int, ...] = DEFAULT_ACCEPTED_VERSIONS,
        fragment_threshold: int = DEFAULT_THRESHOLD,
        habits: StackHabits = HABITS["strict"],
    ) -> None:
        if bearer not in BEARER_TIMERS:
            raise TerminalStateError(f"unknown bearer {bearer!r}")
        self.identity = identity
        self.habits = habits
        self.bearer = bearer
        self.encrypt_bodies = encrypt_bodies
        self.download = download
        self.want_session_key = want_session_key
        self.post_login_trap = post_login_trap
        self.version = version
        self.accepted_versions = accepted_versions
        self._clock = clock
        self._random = random
        self._threshold = fragment_threshold
        self._answer_timeout, self._sends = BEARER_TIMERS[bearer]
        self._sequence = first_sequence
        self._trans_ids = TransIdCounter()
        self._pending: dict[int, _Pending] = {}
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._cache = ResponseCache(entries_per_terminal=8, max_terminals=1)
        self._reassembly = ReassemblyTable(max_entries=4)
        self.logged_in = False
        self.session_timestamp: int | None = None
        self.last_session_timestamp = 0
        self.session_key: str | None = None
        self._cipher: Cipher | None = None
        self._new_credentials: Credentials | None = None
        self.received: deque[m.Message] = deque(maxlen=RECEIVED_KEPT)
        self.stats = {"sent": 0, "received": 0, "bytes": 0}
        self.config: dict[int, bytes] = dict(identity.config)
        self.config.setdefault(_TAG_SYNC_LIST, Tlv.of(_TAG_SYNC_LIST, identity.sync_tags).raw)
        self.config.setdefault(0x3002, identity.serial.encode("ascii"))
        self.config.setdefault(0x3003, identity.imsi.encode("ascii"))
        self.config.setdefault(0x3004, identity.software_version.encode("ascii"))
        self.config.setdefault(0x4002, bytes((_CONNECT_MODE[bearer],)))
        self._set_keys(identity.credentials)

    # -- properties ------------------------------------------------------------------

    @property
    def serial(self) -> str:
        return self.identity.serial

    @property
    def sync_tags(self) -> tuple[int, ...]:
        return self.identity.sync_tags

    @property
    def heartbeat_interval(self) -> int:
        """TLV ``0x0011`` (default 90 s), which a CONFIG_SET may change (9.4)."""
        raw = self.config.get(_TAG_HEARTBEAT)
        try:
            return decode_int(raw) if raw else 90
        except BodyError:
            return 90

    @property
    def pending_requests(self) -> int:
        return len(self._pending)

    # -- requests the terminal sends ------------------------------------------------

    def register(self, op: int, imsi: str | None = None) -> bytes:
        """REGISTER (4.3); ``imsi`` is the current SIM's when it differs (op 2)."""
        body_imsi = imsi or self.identity.imsi
        message = m.Register(op, self.identity.imei, body_imsi)
        key, sign = None, False
        flag = Flag.AUTH | Flag.KEY_REQUEST
        if op in (RegisterOp.REBIND, RegisterOp.PRESET_CREDENTIALS):
            creds = self._require_credentials()
            key_imsi = body_imsi if op == RegisterOp.PRESET_CREDENTIALS else self.identity.imsi
            key, sign = self._digest_key(key_imsi, creds.uplink_password), True
            flag = Flag.AUTH
            if op == RegisterOp.PRESET_CREDENTIALS:
                message.tlvs = [
                    Tlv(0xE026, uplink_proof(creds.uplink_password, creds.uplink_expiry)),
                    Tlv(0xE029, downlink_proof(creds.downlink_password, creds.downlink_expiry)),
                    Tlv(0xE03A, base_key_proof(creds.base_key or "", creds.base_key_expiry)),
                ]
                if self.habits.unsigned_register_op3:  # PD-06: the proofs alone
                    key, sign = None, False
        elif op == RegisterOp.NEW:
            flag = Flag.AUTH
        elif op == RegisterOp.CLEARED:
            message.tlvs = [Tlv.of(0xE020, 0x0E)]
        return self._request(message, flag=flag, timestamp=0, sign=sign, key=key, context=body_imsi)

    def login(self, request_session_key: bool = False) -> bytes:
        """LOGIN (4.4): digest with timestamp 0; flag ``0xE0`` and ``E03A`` for a key."""
        creds = self._require_credentials()
        crc = 0 if self.habits.zero_sync_crc else sync_crc(self.sync_tags, self.config)
        message = m.Login(self.identity.software_version, crc)
        flag = Flag.AUTH
        if request_session_key:
            if self.identity.cipher is None or creds.base_key is None:
                raise TerminalStateError("a session key needs a cipher profile and a base key")
            message.tlvs = [
                Tlv(_TAG_BASE_KEY_PROOF, base_key_proof(creds.base_key, creds.base_key_expiry))
            ]
            flag |= Flag.KEY_REQUEST
        return self._request(message, flag=flag, timestamp=0, context=request_session_key)

    def heartbeat(self, tlvs: Iterable[Tlv] = ()) -> bytes:
        """HEART_BEAT (4.6): flag 0, no digest."""
        return self._request(m.HeartBeat(tlvs=list(tlvs)), sign=False)

    def logout(self, reason: int = LogoutReason.NORMAL) -> bytes:
        """LOGOUT (4.5), signed with the session's (or the last session's) timestamp."""
        return self._request(m.Logout(reason), context=reason)

    def trap(self, tlvs: Iterable[Tlv]) -> bytes:
        """CONFIG_TRAP (4.9); a body over the threshold goes in ``4008`` parts (7)."""
        return self._request(m.ConfigTrap(tlvs=list(tlvs)))

    def alarm(self, status: int, alarm_type: int, code: int, restore: str | None = None) -> bytes:
        """An alarm report: CONFIG_TRAP with ``0x300B``-``0x300E`` (9.7)."""
        tlvs = [Tlv.of(0x300B, status), Tlv.of(0x300C, alarm_type), Tlv.of(0x300D, code)]
        if restore is not None:
            tlvs.append(Tlv.of(0x300E, restore))
        return self.trap(tlvs)

    def sync_trap(self) -> bytes:
        """CONFIG_TRAP with ``0x0025`` and every sync TLV that has a value (4.4)."""
        return self.trap(self._sync_tlvs())

    def transparent_data(
        self, data: bytes, destination: str | None = None, *, to_terminal: str | None = None
    ) -> bytes:
        """TRANSPARENT_DATA (4.7) to EC code ``destination``, a terminal, or the default."""
        message = m.TransparentData.build(data, _address(destination, to_terminal))
        if self.habits.crc16_cmcc:  # C5
            message.crc16 = int.from_bytes(crc16_cmcc(data), "big")
        return self._request(message)

    def transparent_cmd(
        self,
        command: bytes,
        fixed: bytes = b"",
        destination: str | None = None,
        *,
        to_terminal: str | None = None,
    ) -> bytes:
        """TRANSPARENT_CMD (4.16, PD-16): address ‖ ``0x4016`` ‖ ``0x4007``."""
        address = _address(destination, to_terminal)
        tlvs = ([address] if address else []) + [Tlv(0x4016, fixed), Tlv(0x4007, command)]
        return self._request(m.TransparentCmd(tlvs=tlvs))

    def config_req(self, tags: Iterable[int]) -> bytes:
        """CONFIG_REQ (4.11): zero-length TLVs naming the wanted tags."""
        return self._request(m.ConfigReq(tlvs=[Tlv.query(t) for t in tags]))

    def security_config(self, op: int, tlvs: Iterable[Tlv] = ()) -> bytes:
        """SECURITY_CONFIG from the terminal: op 4 (report) or op 6 (renewal) (4.13)."""
        return self._request(m.SecurityConfig(op, tlvs=list(tlvs)), flag=Flag.AUTH)

    def file_req(self, trans_id: int, status: int, offset: int, size: int) -> bytes:
        """One raw FILE_REQ (4.15); :meth:`download_file` runs a whole transfer."""
        return self._request(m.FileReq(trans_id, status, offset, size))

    def download_file(self, offer: DownloadInfoOffer, block: int = FILE_BLOCK) -> bytes:
        """Start a FILE_REQ transfer; it continues by itself and ends in FileDownloaded."""
        transfer = _Transfer(offer, block)
        return self._request(
            m.FileReq(offer.trans_id, FileReqStatus.BLOCK, 0, block), context=transfer
        )

    # -- output, timers -------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """Answers and follow-ups generated since the last call, in sending order."""
        out, self._out = self._out, []
        return out

    def pop_events(self) -> list[Event]:
        """Events produced outside :meth:`receive`: timeouts and their consequences."""
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`timeouts` next has something to do, or None."""
        return min((p.deadline for p in self._pending.values()), default=None)

    def timeouts(self, now: float) -> list[bytes]:
        """Retransmit what is due (UDP: same bytes, 3 sends) and give up on the rest.

        Giving up yields events for :meth:`pop_events`; a follow-up (the re-login after
        a LOGOUT 9 that got no answer) goes to :meth:`data_to_send`.
        """
        out: list[bytes] = []
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            if pending.sends < self._sends:
                pending.sends += 1
                pending.deadline = now + self._answer_timeout
                self._count(pending.frame)
                out.append(pending.frame)
                continue
            del self._pending[pending.sequence_id]
            log.info(
                "{serial}: {command} {sequence_id} timed out",
                serial=self.serial,
                command=command_name(pending.command),
                sequence_id=pending.sequence_id,
            )
            self._events.append(RequestTimedOut(pending.command, pending.sequence_id))
            if pending.command == Command.LOGOUT:
                self._events.extend(self._logged_out(pending, by_platform=False))
        self._reassembly.expire(now)
        return out

    # -- receiving ------------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> list[Event]:
        """Consume one complete message; answers and follow-ups go to data_to_send()."""
        limit = self.habits.max_frame
        if limit is not None and len(data) > limit:
            return [Discarded(f"a frame of {len(data)} bytes: this stack reads Total_Length "
                              "modulo 256 (C7)")]  # fmt: skip
        try:
            frame = parse_frame(data, self.accepted_versions)
        except ProtocolError as exc:
            return [Discarded(exc.reason)]
        header = frame.header
        self.stats["received"] += 1
        self.stats["bytes"] += len(data)
        if header.serial != self.serial:
            return [Discarded("serial mismatch", header.command_id, header.sequence_id)]
        try:
            if header.is_answer:
                return self._on_answer(frame, now)
            return self._on_request(frame, now)
        except ProtocolError as exc:
            log.debug(
                "{serial}: discarded {command} {sequence_id}: {reason}",
                serial=self.serial,
                command=header.command_name,
                sequence_id=header.sequence_id,
                reason=exc.reason,
            )
            return [Discarded(exc.reason, header.command_id, header.sequence_id)]

    # -- answers to the terminal's requests -----------------------------------------

    def _on_answer(self, frame: Frame, now: float) -> list[Event]:
        header = frame.header
        command = header.command_id & ~ACK_BIT
        pending = self._pending.get(header.sequence_id)
        if pending is None or pending.command != command:
            raise ProtocolError("answer matches no outstanding request")
        if command == Command.LOGIN:
            return self._on_login_ack(frame, pending)
        self._check_answer_digest(frame, pending)
        if frame.container_tag == TAG_FRAGMENT:
            return self._on_answer_part(frame, pending, now)
        return self._complete(pending, decode_frame(frame, self._cipher), frame.header.has_digest)

    def _check_answer_digest(self, frame: Frame, pending: _Pending) -> None:
        """REGISTER_ACK and HEART_BEAT_ACK may be unsigned, and the answer to an unsigned
        request (C3); others must verify (PD-05)."""
        optional = pending.command in (Command.REGISTER, Command.HEART_BEAT) or not pending.signed
        self._check_digest(frame, pending.timestamp, required=not optional)

    def _check_digest(self, frame: Frame, timestamp: int, *, required: bool) -> None:
        if frame.header.has_digest:
            if self._down_key is None:
                raise ProtocolError("signed message but no credentials to verify it")
            if not verify(frame.raw, timestamp, self._down_key):
                raise ProtocolError("digest does not verify")
        elif required and self.bearer != "sms":
            raise ProtocolError("digest missing")

    def _on_login_ack(self, frame: Frame, pending: _Pending) -> list[Event]:
        """LOGIN_ACK: the digest uses the ACK's own timestamp (6.2)."""
        ack = m.LoginAck.decode_body(frame.body)
        signed = frame.header.has_digest
        self._check_digest(frame, ack.timestamp, required=False)
        result = 0 if ack.result == 8 else ack.result
        if result not in (0, 1):
            del self._pending[pending.sequence_id]
            log.info("{serial}: login refused ({result})", serial=self.serial, result=result)
            return [LoginFailed(result, signed)]
        if not signed and self.bearer != "sms":
            raise ProtocolError("unsigned LOGIN_ACK with a success result")
        del self._pending[pending.sequence_id]
        events: list[Event] = []
        self.logged_in = True
        self.session_timestamp = self.last_session_timestamp = ack.timestamp
        self.session_key, self._cipher, expiry = None, None, None
        box = ack.session_key_box
        if pending.context and box is not None:
            try:
                self.session_key, expiry = decode_session_key(self._base_cipher(), box)
                self._cipher = self._make_cipher(self.session_key)
            except ProtocolError as exc:
                self.session_key = None
                events.append(ProtocolErrorEvent(f"E040 unusable: {exc.reason}"))
        log.info(
            "{serial}: logged in, timestamp {timestamp:#010x}",
            serial=self.serial,
            timestamp=ack.timestamp,
        )
        events.insert(0, LoggedIn(result, ack.timestamp, self.session_key, expiry))
        if result == 1:
            self._out.append(self.sync_trap())
        elif self.post_login_trap:
            self._out.append(self.trap([]))
        return events

    def _on_answer_part(self, frame: Frame, pending: _Pending, now: float) -> list[Event]:
        """A ``4008`` answer: the next part wanted (7.3 request) or one of a long answer."""
        part = FragmentPart.decode(frame.container_value())
        if pending.sender is not None:
            try:
                nxt = pending.sender.on_answer(part)
            except FragmentAbort as exc:
                if exc.reply is not None:
                    self._out.append(self._part_frame(pending, exc.reply, is_answer=False))
                return [self._fail(pending, exc.reason)]
            self._resend_as(pending, self._part_frame(pending, nxt, is_answer=False), now)
            return []
        if pending.reassembler is None:
            pending.reassembler = Reassembler()
        outcome = pending.reassembler.feed(part, now)
        if isinstance(outcome, NeedPart | Duplicate):
            wanted = outcome.reply if isinstance(outcome, NeedPart) else _ask_after(outcome.part)
            if wanted is not None:
                self._resend_as(pending, self._part_frame(pending, wanted, is_answer=False), now)
            return []
        if isinstance(outcome, Complete):
            body_frame = Frame(frame.header, b"", outcome.body, None)
            return self._complete(pending, decode_frame(body_frame, self._cipher), True)
        if isinstance(outcome, Abort):
            self._out.append(self._part_frame(pending, outcome.abort_part, is_answer=False))
        return [self._fail(pending, "platform ended the answer's part exchange")]

    def _complete(self, pending: _Pending, message: m.Message, signed: bool) -> list[Event]:
        """The normal answer to ``pending`` arrived (its digest checked): act on it."""
        del self._pending[pending.sequence_id]
        if self.habits.little_endian:  # C6: the platform wrote integers as this stack reads
            message.tlvs = integers_swapped(message.tlvs)
        if isinstance(message, m.RegisterAck):
            return self._on_register_ack(message, pending, signed)
        if isinstance(message, m.LogoutAck):
            return self._logged_out(pending, by_platform=False)
        events: list[Event] = [Answer(message.COMMAND, pending.sequence_id, message)]
        if isinstance(message, m.ConfigReqAck) and message.ret == 0:
            self._out.append(self._apply_config(message.tlvs, pending.sequence_id))
        elif isinstance(message, m.FileReqAck) and isinstance(pending.context, _Transfer):
            events.extend(self._on_file_block(message, pending.context))
        return events

    def _on_register_ack(self, ack: m.RegisterAck, pending: _Pending, signed: bool) -> list[Event]:
        """Adopt the serial and (after a re-bind) the body IMSI as the registered one."""
        result = 1 if ack.result == 9 else ack.result
        if result in m.RegisterAck.SERIAL_RESULTS and ack.serial:
            self.identity.serial = ack.serial
            self.identity.imsi = pending.context
            self.config[0x3002] = ack.serial.encode("latin-1")
            self.config[0x3003] = pending.context.encode("ascii")
            self._set_keys(self.identity.credentials)
        return [Registered(result, ack.serial, signed)]

    def _logged_out(self, pending: _Pending, *, by_platform: bool) -> list[Event]:
        """End the session; after SECURITY_CONFIG op 0, switch credentials and log in."""
        reason = pending.context if isinstance(pending.context, int) else 0
        self._end_session()
        events: list[Event] = [LoggedOut(reason, by_platform)]
        if self._new_credentials is not None:
            events.append(CredentialsChanged(self._new_credentials))
            self._adopt_credentials()
            self._out.append(self.login(request_session_key=self.want_session_key))
        return events

    def _fail(self, pending: _Pending, reason: str) -> RequestFailed:
        self._pending.pop(pending.sequence_id, None)
        return RequestFailed(pending.command, pending.sequence_id, reason)

    def _on_file_block(self, ack: m.FileReqAck, transfer: _Transfer) -> list[Event]:
        """Check one FILE_REQ_ACK block and ask for the next, or finish (4.15)."""
        offer, data = transfer.offer, transfer.data
        usable = (
            ack.status == 0
            and ack.trans_id == offer.trans_id
            and ack.offset == len(data)
            and crc16(ack.data) == ack.crc16
            and (ack.data or len(data) == offer.size)
        )
        if usable and len(data) + len(ack.data) < offer.size:
            data += ack.data
            self._out.append(
                self._request(
                    m.FileReq(offer.trans_id, FileReqStatus.BLOCK, len(data), transfer.block),
                    context=transfer,
                )
            )
            return []
        if usable:
            data += ack.data
        ok = usable and verify_download(bytes(data), offer)
        status = FileReqStatus.COMPLETE if ok else FileReqStatus.ABORT
        self._out.append(self.file_req(offer.trans_id, status, NEVER, 0))
        return [FileDownloaded(offer.trans_id, ok, bytes(data))]

    # -- requests from the platform -------------------------------------------------

    def _on_request(self, frame: Frame, now: float) -> list[Event]:
        header = frame.header
        self._check_digest(frame, self._timestamp(), required=True)
        part = None
        if frame.container_tag == TAG_FRAGMENT:
            part = FragmentPart.decode(frame.container_value())
        key = (self.serial, header.command_id, header.sequence_id, part.part if part else 0)
        cached = self._cache.lookup(key, frame.raw, now)
        if isinstance(cached, CacheHit):
            self._out.extend(cached.answers)
            return []
        if part is None:
            return self._process(frame, key, now)
        outcome = self._reassembly.feed((self.serial, header.command_id, "down"), part, now)
        if isinstance(outcome, Complete):
            return self._process(Frame(header, frame.raw, outcome.body, None), key, now)
        reply = None
        if isinstance(outcome, NeedPart):
            reply = outcome.reply
        elif isinstance(outcome, Duplicate):
            reply = _ask_after(outcome.part)
        elif isinstance(outcome, Abort):
            reply = outcome.abort_part
        if reply is not None:
            self._send_answer(header, reply.encode_tlv(), FRAGMENT_FLAG, key, frame.raw, now)
        return []

    def _process(self, frame: Frame, key: tuple[str, int, int, int], now: float) -> list[Event]:
        """Decode and act on a complete platform request, then queue the answer first."""
        header = frame.header
        handler = self._HANDLERS.get(header.command_id)
        if handler is None:
            raise ProtocolError(f"{header.command_name} is not a platform request")
        if header.command_id in self.habits.ignored:
            return [Discarded(f"{header.command_name} is never answered by this stack (C9)",
                              header.command_id, header.sequence_id)]  # fmt: skip
        follow: list[Callable[[], bytes | None]] = []
        try:
            message = decode_frame(frame, self._cipher)
        except BodyError as exc:
            result = _ERROR_RESULT.get(header.command_id)
            if result is None:
                raise
            error_answer = m.MESSAGE_TYPES[header.command_id | ACK_BIT](result)  # type: ignore[call-arg]
            self._answer_message(header, error_answer, key, frame.raw, now)
            return [Discarded(exc.reason, header.command_id, header.sequence_id)]
        if self.habits.little_endian:  # C6
            message.tlvs = integers_swapped(message.tlvs)
        reply, events = handler(self, header, message, follow)
        self.received.append(message)
        self._answer_message(header, reply, key, frame.raw, now)
        for make in follow:
            if (follow_up := make()) is not None:
                self._out.append(follow_up)
        fields = reply.fields_dict()
        result = fields.get("ret", fields.get("result", 0))
        return [PlatformRequest(message, header.sequence_id, result), *events]

    def _answer_message(
        self, header: Header, reply: m.Message, key: tuple[str, int, int, int], raw: bytes,
        now: float,
    ) -> None:  # fmt: skip
        body = reply.encode_body()
        flag = Flag.AUTH if header.command_id == Command.SECURITY_CONFIG else Flag.NONE
        if body and self._encrypting(reply.COMMAND):
            body, flag = encrypted_container(self._require_cipher(), body), ENCRYPTED_FLAG
        self._send_answer(header, body, flag, key, raw, now)

    def _send_answer(
        self, header: Header, body: bytes, flag: int, key: tuple[str, int, int, int],
        raw: bytes, now: float,
    ) -> None:  # fmt: skip
        """Queue an answer (request's version and Sequence_ID) and cache it (8.2); a C3
        stack answers unsigned, a C8 one in its own version."""
        habits = self.habits
        signer = None if habits.unsigned_answers else self._up_key
        if signer is None:
            flag &= ~Flag.DIGEST
        answer = self._build(
            header.command_id | ACK_BIT, header.sequence_id, body, flag=self._flag(flag),
            timestamp=self._timestamp(), key=signer,
            version=habits.answer_version or header.version,
        )  # fmt: skip
        self._cache.store(key, raw, [answer], now)
        self._out.append(answer)

    def _config_get(self, header: Header, msg: m.Message, follow: list) -> tuple[m.Message, list]:
        """CONFIG_GET (4.8): the values from the store, or ret 1 with the missing tags."""
        missing = [t.tag for t in msg.tlvs if t.tag not in self.config or t.tag >> 8 == 0xE0]
        if missing:
            return m.ConfigGetAck(1, tlvs=[Tlv.query(t) for t in missing]), []
        return m.ConfigGetAck(0, tlvs=[Tlv(t.tag, self.config[t.tag]) for t in msg.tlvs]), []

    def _config_set(self, header: Header, msg: m.Message, follow: list) -> tuple[m.Message, list]:
        """CONFIG_SET (4.10): validate, ACK, apply, then trap ``0x4010`` + ``0x4017``."""
        rejected = [t.tag for t in msg.tlvs if not _settable(t)]
        if rejected or not msg.tlvs:
            return m.ConfigSetAck(1, tlvs=[Tlv.query(t) for t in rejected]), []
        follow.append(lambda: self._apply_config(msg.tlvs, header.sequence_id))
        return m.ConfigSetAck(0), []

    def _remote_ctrl(self, header: Header, msg: m.Message, follow: list) -> tuple[m.Message, list]:
        """REMOTE_CTRL (4.12, 3.6.1): ACK, then the code's follow-up where simulated."""
        assert isinstance(msg, m.RemoteCtrl)
        code = msg.code
        if code is None:
            return m.RemoteCtrlAck(1, tlvs=[Tlv.query(m.TAG_REMOTE_CODE)]), []
        report = Tlv.of(_TAG_EXEC_REPORT, (0, header.sequence_id))
        if code == RemoteControl.REQUEST_LOGIN and not self.logged_in:
            follow.append(lambda: self.login(request_session_key=self.want_session_key))
        elif code == RemoteControl.REPORT_STATISTICS:
            follow.append(lambda: self.trap([*self._statistics(), report]))
        elif code == RemoteControl.REPORT_SYNC_TAGS:
            follow.append(lambda: self.trap([*self._sync_tlvs(), report]))
        return m.RemoteCtrlAck(0), []

    def _download_info(self, header: Header, msg: m.Message, fw: list) -> tuple[m.Message, list]:
        """DOWNLOAD_INFO (4.14): result 1 for a usable URL, 4 otherwise (5.6)."""
        assert isinstance(msg, m.DownloadInfo)
        force = find(msg.tlvs, 0x100B)
        try:
            offer = parse_download_url(msg.url or "", bool(force and force[0]))
        except BodyError:
            return m.DownloadInfoAck(4), []
        if self.download == "file":
            fw.append(lambda: self.download_file(offer))
        return m.DownloadInfoAck(1), [DownloadOffered(offer)]

    def _security_config(self, header: Header, msg: m.Message, fw: list) -> tuple[m.Message, list]:
        """SECURITY_CONFIG (4.13): op 0 stores a new set; ops 1/2 read; others refused."""
        assert isinstance(msg, m.SecurityConfig)
        if msg.op == SecurityOp.SET:
            return self._security_set(msg, fw)
        if msg.op in (SecurityOp.READ, SecurityOp.READ_DIGEST):
            values, failing = self._security_read(msg.op, [t.tag for t in msg.tlvs])
            plaintext = msg.op == SecurityOp.READ and not self._encrypting(Command.SECURITY_CONFIG)
            if failing or plaintext:  # secrets only inside E042 (PD-21)
                return m.SecurityConfigAck(2, tlvs=[Tlv.query(t) for t in failing]), []
            return m.SecurityConfigAck(0, tlvs=values), []
        return m.SecurityConfigAck(2), []

    def _security_set(self, msg: m.SecurityConfig, follow: list) -> tuple[m.Message, list]:
        """Store op-0 values; the ACK and a LOGOUT 9 still use the old set (6.3.5)."""
        values = tlv_dict(msg.tlvs)
        failing = [tag for tag, raw in values.items() if not _valid_security_value(tag, raw)]
        if failing:
            return m.SecurityConfigAck(2, tlvs=[Tlv.query(t) for t in failing]), []
        current = self.identity.credentials or Credentials("", "")
        new = replace(
            current,
            **{
                name: (raw.decode("ascii") if tag not in _EXPIRY_TAGS else decode_int(raw))
                for tag, name in _CREDENTIAL_FIELDS.items()
                if (raw := values.get(tag)) is not None
            },
        )
        for tag, raw in values.items():
            if tag not in _CREDENTIAL_TAGS:
                self.config[tag] = raw
        if not _CREDENTIAL_TAGS & values.keys():
            return m.SecurityConfigAck(0), []
        self._new_credentials = new
        if self.logged_in:
            follow.append(lambda: self.logout(LogoutReason.CREDENTIALS_CHANGED))
            return m.SecurityConfigAck(0), []
        follow.append(self._adopt_credentials)  # after the ACK, signed under the old set
        return m.SecurityConfigAck(0), [CredentialsChanged(new)]

    def _logout(self, header: Header, msg: m.Message, follow: list) -> tuple[m.Message, list]:
        """LOGOUT from the platform (4.5): answer under the ending session, then end it."""
        assert isinstance(msg, m.Logout)
        follow.append(self._end_session)
        return m.LogoutAck(), [LoggedOut(msg.reason, True)]

    def _transparent(self, header: Header, msg: m.Message, follow: list) -> tuple[m.Message, list]:
        """TRANSPARENT_DATA/CMD from the platform: record, ACK 0 (4 on a CRC mismatch)."""
        if isinstance(msg, m.TransparentData):
            return m.TransparentDataAck(0 if msg.crc_ok else 4), []
        return m.TransparentCmdAck(0), []

    _HANDLERS: ClassVar[dict[int, Callable[..., tuple[m.Message, list]]]] = {
        Command.CONFIG_GET: _config_get,
        Command.CONFIG_SET: _config_set,
        Command.REMOTE_CTRL: _remote_ctrl,
        Command.DOWNLOAD_INFO: _download_info,
        Command.SECURITY_CONFIG: _security_config,
        Command.LOGOUT: _logout,
        Command.TRANSPARENT_DATA: _transparent,
        Command.TRANSPARENT_CMD: _transparent,
    }

    # -- helpers --------------------------------------------------------------------

    def _request(
        self,
        message: m.Message,
        *,
        flag: int = Flag.NONE,
        timestamp: int | None = None,
        sign: bool = True,
        key: DigestKey | None = None,
        context: Any = None,
    ) -> bytes:
        """Number, encrypt, fragment, sign and remember one request (6.4.4, 8.1).

        ``sign`` uses the uplink key unless ``key`` is given (REGISTER's own inputs).
        """
        if timestamp is None:
            timestamp = self._timestamp()
        habits = self.habits
        command = message.COMMAND
        sign = sign and command not in habits.unsigned  # C3
        if sign and key is None:
            key = self._up_key
            if key is None and self.bearer != "sms":
                raise TerminalStateError(f"{self.serial} has no credentials to sign with")
        sequence_id = self._sequence
        self._sequence = self._sequence % 0xFFFFFFFF + 1
        if habits.little_endian:  # C6
            message.tlvs = integers_swapped(message.tlvs)
        flag = self._flag(flag)
        body = message.encode_body()
        encrypted = bool(body) and self._encrypting(message.COMMAND)
        if encrypted:
            body, flag = encrypted_container(self._require_cipher(), body), ENCRYPTED_FLAG
        pending = _Pending(
            command, sequence_id, b"", timestamp,
            self._clock() + self._answer_timeout, encrypted, sign, context=context,
        )  # fmt: skip
        if len(body) > self._threshold and self.bearer != "sms":
            pending.sender = FragmentSender(body, self._trans_ids.next(), self._threshold)
            pending.frame = self._part_frame(pending, pending.sender.first(), is_answer=False)
        else:
            pending.frame = self._build(
                command, sequence_id, body, flag=flag, timestamp=timestamp,
                key=key if sign else None, flag_digest=command not in habits.unflagged_digest,
                header_only=command in habits.header_only_digest,
            )  # fmt: skip
        self._pending[sequence_id] = pending
        return pending.frame

    def _part_frame(self, pending: _Pending, part: FragmentPart, *, is_answer: bool) -> bytes:
        """One ``4008`` message of ``pending``'s exchange, in the request Command_ID."""
        command = pending.command | (ACK_BIT if is_answer else 0)
        flag = ENCRYPTED_FLAG if pending.encrypted else FRAGMENT_FLAG
        return self._build(
            command, pending.sequence_id, part.encode_tlv(), flag=flag,
            timestamp=pending.timestamp, key=self._up_key,
        )  # fmt: skip

    def _resend_as(self, pending: _Pending, frame: bytes, now: float) -> None:
        """Move ``pending`` on to a new message of the same exchange (new timer, 7.5)."""
        pending.frame, pending.sends, pending.deadline = frame, 1, now + self._answer_timeout
        self._out.append(frame)

    def _build(
        self, command: int, sequence_id: int, body: bytes, *, flag: int, timestamp: int,
        key: DigestKey | None, version: int | None = None, flag_digest: bool = True,
        header_only: bool = False,
    ) -> bytes:  # fmt: skip
        if self.bearer == "sms":
            key, flag = None, flag & ~(Flag.DIGEST | Flag.CONTAINER)
        frame = build_frame(
            command, sequence_id, self.serial, body, version=version or self.version,
            flag=flag, key=key, timestamp=timestamp, flag_digest=flag_digest,
            header_only=header_only,
        )  # fmt: skip
        self._count(frame)
        return frame

    def _flag(self, flag: int) -> int:
        """The flag a stack that always sends 0x00 sends; a container keeps its bits."""
        if self.habits.zero_flag and not flag & Flag.CONTAINER:
            return Flag.NONE
        return flag

    def _count(self, frame: bytes) -> None:
        self.stats["sent"] += 1
        self.stats["bytes"] += len(frame)

    def _timestamp(self) -> int:
        """The session timestamp, or the last one after the session ended (6.2)."""
        if self.session_timestamp is not None:
            return self.session_timestamp
        return self.last_session_timestamp

    def _encrypting(self, command: int) -> bool:
        return (
            self.encrypt_bodies
            and self._cipher is not None
            and self.bearer != "sms"
            and (command & ~ACK_BIT) not in _PLAIN_COMMANDS
        )

    def _require_cipher(self) -> Cipher:
        if self._cipher is None:
            raise TerminalStateError("no session key")
        return self._cipher

    def _require_credentials(self) -> Credentials:
        if self.identity.credentials is None:
            raise TerminalStateError(f"{self.serial} has no credentials")
        return self.identity.credentials

    def _digest_key(self, imsi: str, password: str) -> DigestKey:
        return DigestKey.make(self.identity.imei, imsi, password)

    def _set_keys(self, creds: Credentials | None) -> None:
        """Build the two digest keys once per credential set (PD-04)."""
        self._up_key: DigestKey | None = None
        self._down_key: DigestKey | None = None
        if creds is not None:
            self._up_key = self._digest_key(self.identity.imsi, creds.uplink_password)
            self._down_key = self._digest_key(self.identity.imsi, creds.downlink_password)

    def _make_cipher(self, key: str) -> Cipher:
        profile = self.identity.cipher or ""
        return AesCipher(key, self._random) if profile == "aes" else make_cipher(profile, key)

    def _base_cipher(self) -> Cipher:
        creds = self._require_credentials()
        if creds.base_key is None:
            raise TerminalStateError("no base key")
        return self._make_cipher(creds.base_key)

    def _end_session(self) -> None:
        if self.session_timestamp is not None:
            self.last_session_timestamp = self.session_timestamp
        self.logged_in = False
        self.session_timestamp = None
        self.session_key = None
        self._cipher = None

    def _adopt_credentials(self) -> None:
        """Switch to the set of the last SECURITY_CONFIG op 0 (6.3.5)."""
        if self._new_credentials is None:
            return
        self.identity.credentials, self._new_credentials = self._new_credentials, None
        self._set_keys(self.identity.credentials)
        log.info("{serial}: new credentials in use", serial=self.serial)

    def _apply_config(self, tlvs: list[Tlv], sequence_id: int) -> bytes:
        """Store applied values; the report to send is a trap ``0x4010`` + ``0x4017`` (4.10)."""
        for tag, raw in tlv_dict(tlvs).items():
            self.config[tag] = raw
            if tag == _TAG_SYNC_LIST:
                self.identity.sync_tags = tuple(Tlv(tag, raw).value)
        report = [
            Tlv.of(_TAG_EXEC_REPORT, (0, sequence_id)),
            Tlv.of(_TAG_CONFIG_CRC, _applied_crc(tlvs)),
        ]
        return self.trap(report)

    def _sync_tlvs(self) -> list[Tlv]:
        tlvs = [Tlv.of(_TAG_SYNC_LIST, self.sync_tags)]
        return tlvs + [Tlv(t, self.config[t]) for t in self.sync_tags if t in self.config]

    def _statistics(self) -> list[Tlv]:
        """Statistics of 3.4: only the IP byte count is really counted here."""
        return [Tlv.of(tag, self.stats["bytes"] if tag == 0x200B else 0) for tag in _STATISTICS]

    def _security_read(self, op: int, tags: list[int]) -> tuple[list[Tlv], list[int]]:
        """SECURITY_CONFIG op 1 (values) or op 2 (proofs instead of secrets); and the
        tags that cannot be read."""
        creds = self.identity.credentials
        if creds is None:
            return [], tags
        proofs = {
            _UP_PW: (0xE026, uplink_proof(creds.uplink_password, creds.uplink_expiry)),
            _DOWN_PW: (0xE029, downlink_proof(creds.downlink_password, creds.downlink_expiry)),
        }
        if creds.base_key is not None:
            proofs[_BASE_KEY] = (0xE03A, base_key_proof(creds.base_key, creds.base_key_expiry))
        out, failing = [], []
        for tag in tags:
            name = _CREDENTIAL_FIELDS.get(tag)
            value = getattr(creds, name) if name else None
            if value is None:
                failing.append(tag)
                continue
            if tag in _EXPIRY_TAGS:
                out.append(Tlv.of(tag, value))
            elif op == SecurityOp.READ_DIGEST:
                out.append(Tlv(*proofs[tag]))
            else:
                out.append(Tlv.of(tag, value))
        return out, failing


_CREDENTIAL_FIELDS: dict[int, str] = {
    _UP_PW: "uplink_password",
    _UP_EXP: "uplink_expiry",
    _DOWN_PW: "downlink_password",
    _DOWN_EXP: "downlink_expiry",
    _BASE_KEY: "base_key",
    _BASE_EXP: "base_key_expiry",
}


def _address(ec_code: str | None, serial: str | None) -> Tlv | None:
    """The destination TLV of an uplink: a terminal serial or an EC code (4.7)."""
    if serial is not None:
        return Tlv.of(m.TAG_DEST_SERIAL, serial)
    if ec_code is not None:
        return Tlv.of(m.TAG_DEST_EC, ec_code)
    return None


def _ask_after(part: FragmentPart) -> FragmentPart | None:
    """The op-1 answer that a repeated part gets again: ask for the one after it."""
    if part.part >= part.total:
        return None
    return FragmentPart(part.trans_id, part.total, part.part + 1, FragmentOp.NEXT)


def _settable(tlv: Tlv) -> bool:
    """Whether CONFIG_SET may set this TLV (4.10): no security or read-only tags."""
    if tlv.tag >> 8 == 0xE0 or tlv.tag in _READ_ONLY:
        return False
    return length_fits(tlv.tag, len(tlv.raw)) and (bool(tlv.raw) or tlv.tag == 0x4011)


def _valid_security_value(tag: int, raw: bytes) -> bool:
    """Op-0 values the terminal can use: 8-character passwords, 16/24-character keys."""
    if tag in _PASSWORD_TAGS:
        return len(raw) == 8 and raw.isascii()
    if tag == _BASE_KEY:
        return len(raw) in (16, 24) and raw.isascii()
    if tag in _EXPIRY_TAGS:
        return len(raw) in (1, 2, 4)
    return tag >> 8 == 0xE0

"""The platform side of the terminal protocol: what to do with each received message.

:class:`PlatformEngine` applies spec sections 4, 6, 7, 8 and 9 to complete messages
handed in by the transports, answers on the bearer each request came from, and
keeps the logical connections. It does no I/O of its own: bytes go out through the
:class:`~m2mgw.core.session.Bearer` they belong to, records through the registry,
and time comes from the injected clock, so it is tested with fake bearers and
``task.Clock``.
"""

from __future__ import annotations

import heapq
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.config import ProtocolConfig
from m2mgw.core.model import (
    Alarm,
    CredentialSet,
    LogEntry,
    Terminal,
    TerminalState,
    normalize_msisdn,
)
from m2mgw.core.refusals import Reason, Refusals
from m2mgw.core.registry import Registry
from m2mgw.core.session import Bearer, Session, digest_keys
from m2mgw.core.stats import EngineStats
from m2mgw.core.uplink import UplinkSink
from m2mgw.protocol import compat, tags
from m2mgw.protocol import messages as m
from m2mgw.protocol.checksum import crc16, crc16_cmcc, crc32
from m2mgw.protocol.codec import (
    ENCRYPTED_FLAG,
    FRAGMENT_FLAG,
    TAG_ENCRYPTED,
    TAG_FRAGMENT,
    Frame,
    build_frame,
    encrypted_container,
    header_only_digest,
    parse_frame,
    unflagged_digest,
    verify_frame,
)
from m2mgw.protocol.compat import CompatProfile, ProfileRefused, would_accept
from m2mgw.protocol.constants import (
    ACK_BIT,
    DIGEST_TLV_SIZE,
    GENERIC_ERROR_RESULT,
    HEADER_SIZE,
    Command,
    Flag,
    LoginResult,
    LogoutReason,
    RegisterOp,
    RegisterResult,
    SecurityOp,
    TransparentResult,
)
from m2mgw.protocol.dupcache import CacheHit, CacheKey, InProgress, ResponseCache
from m2mgw.protocol.errors import BodyError, ProtocolError
from m2mgw.protocol.fragment import (
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
    ReassemblyTable,
)
from m2mgw.protocol.header import Header, VersionError
from m2mgw.protocol.replay import Freshness, LoginMemory, ReplayWindow
from m2mgw.protocol.security import (
    NEVER,
    DigestKey,
    base_key_proof,
    decrypt_body,
    downlink_proof,
    encode_session_key,
    generate_base_key,
    generate_password,
    generate_session_key,
    make_cipher,
    proofs_equal,
    uplink_proof,
)
from m2mgw.protocol.tlv import Tlv, decode_tlvs, encode_tlvs, find, tlv_dict

if TYPE_CHECKING:
    from m2mgw.core.router import Router

log = Logger()

TAG_SYNC_LIST = 0x0025
TAG_HEARTBEAT = 0x0011
TAG_PERIOD_CTRL = 0x4004
TAG_CONNECT_MODE = 0x4002
TAG_EXEC_REPORT = 0x4010
TAG_CONFIG_CRC = 0x4017
TAG_LOCAL_CONFIG = 0x4011
TAG_ALARM_STATUS = 0x300B
TAG_ALARM_TYPE = 0x300C
TAG_ALARM_CODE = 0x300D
TAG_ALARM_RESTORE = 0x300E
TAG_CURRENT_VERSION = 0x100C
TAG_BASE_KEY_PROOF = 0xE03A
TAG_UPLINK_PROOF = 0xE026
TAG_DOWNLINK_PROOF = 0xE029

# Requests a terminal that is not logged in may send (9.3); the rest are discarded.
_PRE_LOGIN = frozenset({Command.REGISTER, Command.LOGIN, Command.LOGOUT})
# Requests accepted on a TCP connection bound to another serial (10.2).
_REBINDING = frozenset({Command.REGISTER, Command.LOGIN})
# Requests only the platform initiates: a terminal sending one is discarded.
_PLATFORM_ONLY = frozenset(
    {Command.CONFIG_GET, Command.CONFIG_SET, Command.REMOTE_CTRL, Command.DOWNLOAD_INFO}
)
# Answers never encrypted (6.4.3).
_NEVER_ENCRYPTED = frozenset(
    {Command.REGISTER | ACK_BIT, Command.LOGIN | ACK_BIT, Command.HEART_BEAT | ACK_BIT}
)
_STATISTICS = range(0x2000, 0x3000)
#: Seconds after session-key expiry before the platform logs the terminal out (6.4.2).
KEY_GRACE = 300


@dataclass(slots=True)
class _Exchange:
    """One received request being answered."""

    frame: Frame
    bearer: Bearer
    now: float
    terminal: Terminal | None = None
    session: Session | None = None
    #: Key and timestamp to sign the answer with; None: unsigned (PD-05).
    key: DigestKey | None = None
    timestamp: int = 0
    cache_key: CacheKey | None = None
    #: The decoded request, logged in one row together with its answer.
    request: m.Message | None = None
    #: The request passed its digest, MSISDN or bound-connection check; and whether
    #: it was refused. A refused request that was not authenticated writes no
    #: message-log row: its refusal is counted instead (D-303).
    authenticated: bool = False
    refused: bool = False

    @property
    def header(self):
        return self.frame.header

    @property
    def sms(self) -> bool:
        return self.bearer.kind == "sms"

    @property
    def log_keys(self) -> dict[str, object]:
        """The terminal keys of a log event about this exchange (issue #8)."""
        return terminal_keys(self.header, self.bearer)


@dataclass(slots=True)
class _AnswerParts:
    """A fragmented answer being handed out part by part."""

    sender: FragmentSender
    command_id: int
    version: int
    flag: int

    def frame(
        self, part: FragmentPart, sequence_id: int, serial: str, key: DigestKey, timestamp: int
    ) -> bytes:
        return build_frame(
            self.command_id,
            sequence_id,
            serial,
            part.encode_tlv(),
            version=self.version,
            flag=self.flag,
            key=key,
            timestamp=timestamp,
        )


@dataclass(slots=True)
class _Opening:
    """An accepted LOGIN's session, and what it gives the terminal's record once begun;
    for a LOGIN seen before, kept with its digest and answer until a message signed
    under its timestamp begins it (D-299)."""

    session: Session
    software_version: str
    at: float
    session_key: str | None = None
    session_key_expiry: int | None = None
    digest: bytes | None = None
    answer: bytes = b""


class PlatformEngine:
    """Receives complete messages from any bearer and acts on them (spec 4, 9)."""

    def __init__(
        self,
        registry: Registry,
        config: ProtocolConfig,
        clock: IReactorTime,
        *,
        serial_prefix: str,
        uplink: UplinkSink,
        random_bytes: Callable[[int], bytes] = os.urandom,
        refusals: Refusals | None = None,
    ) -> None:
        self.registry = registry
        self.config = config
        self.clock = clock
        self.serial_prefix = serial_prefix
        self.uplink = uplink
        self.router: Router | None = None
        #: Every refusal of this engine and its transports is reported here.
        self.refusals = refusals or Refusals(clock)
        #: Messages by Command_ID, logins by result, answer latency (for the metrics).
        self.stats = EngineStats()
        self.sessions: dict[str, Session] = {}
        self.accepted_versions = frozenset(config.accepted_versions)
        self.cache = ResponseCache(config.response_cache_window, config.response_cache_entries)
        self.reassembly = ReassemblyTable(
            FragmentLimits(
                config.reassembly_max_bytes,
                config.reassembly_max_parts,
                config.reassembly_idle_timeout,
            ),
            max_entries=100_000,
            max_total_bytes=256 * 1024 * 1024,
        )
        self._random_bytes = random_bytes
        #: Fragmented answers in progress, by (serial, request Command_ID) (7.3).
        self._answer_parts: dict[tuple[str, int], _AnswerParts] = {}
        #: Observers of state changes: called with (terminal, old_state, new_state,
        #: logout reason or None).
        self.state_observers: list[Callable[[Terminal, str, str, int | None], None]] = []
        #: Credential upkeep (6.3.5): a heap of (due time, serial) and the live due time
        #: per serial (heap entries that disagree are stale), so a tick looks only at the
        #: terminals that are due instead of scanning every session.
        self._credential_heap: list[tuple[float, str]] = []
        self._credential_due: dict[str, float] = {}
        #: Per serial, the pending set the platform last queued and when: the re-delivery
        #: clock of a set the terminal has not acknowledged (``delivered_at`` is on the ACK).
        self._credential_sent: dict[str, tuple[CredentialSet, float]] = {}
        #: The LOGINs each terminal had accepted: their digest has timestamp 0 (D-300).
        self.logins = LoginMemory()
        #: Per serial, the session a LOGIN seen before asked for (D-299).
        self._openings: dict[str, _Opening] = {}
        if config.register_op3_digest_optional:
            log.warn(
                "[protocol] register_op3_digest_optional is deprecated: it now means "
                "default_compat = simcom; give such terminals --compat simcom (D-238)"
            )

    def profile_of(self, terminal: Terminal | None) -> CompatProfile:
        """The terminal's compatibility profile (spec 1.6): its own, else the deployment's
        ``default_compat``; ``strict`` for a message from no known terminal."""
        if terminal is None:
            return compat.STRICT
        return compat.profile(terminal.compat or self.config.default_compat)

    # ------------------------------------------------------------------ receiving

    def receive(self, data: bytes, bearer: Bearer) -> None:
        """Handle one complete message; never raises on bad input."""
        now = self.clock.seconds()
        try:
            frame = parse_frame(data, self.accepted_versions)
        except VersionError as exc:
            self._bad_version(exc, data, bearer, now)
            return
        except ProtocolError as exc:
            self.refusals.report(
                Reason.MALFORMED, exc.reason, peer=bearer.address, bearer=bearer.kind
            )
            return
        self.stats.received[frame.header.command_id] += 1
        try:
            if frame.header.is_answer:
                self._on_answer(frame, bearer, now)
            else:
                self._on_request(frame, bearer, now)
        except ProtocolError as exc:
            reason = Reason.MALFORMED if isinstance(exc, BodyError) else Reason.REJECTED
            self.refusals.report(reason, exc.reason, **terminal_keys(frame.header, bearer))

    def _bad_version(self, exc: VersionError, data: bytes, bearer: Bearer, now: float) -> None:
        header = exc.header
        self.refusals.report(
            Reason.BAD_VERSION,
            f"protocol version {header.version:#06x} not accepted",
            **terminal_keys(header, bearer),
        )
        if header.command_id == Command.LOGIN and len(data) == header.length:
            ex = _Exchange(Frame(header, data, b"", None), bearer, now, refused=True)
            self._answer(ex, m.LoginAck(LoginResult.BAD_VERSION, 0), flag=Flag.AUTH)

    def _on_request(self, frame: Frame, bearer: Bearer, now: float) -> None:
        header = frame.header
        command = header.command_id
        ex = _Exchange(frame, bearer, now)
        bound = getattr(bearer, "bound_serial", None)
        if bound and bound != header.serial and command not in _REBINDING:
            self._refuse(ex, Reason.WRONG_CONNECTION, f"connection bound to {bound}")
            return
        if command == Command.HEART_BEAT:
            self._on_heartbeat(ex)
            return
        part = self._fragment_part(frame)
        if part is not None and part.op in (FragmentOp.RECEIVER_ABORT, FragmentOp.SENDER_ABORT):
            cache_key = None
        else:
            cache_key = (header.serial, command, header.sequence_id, part.part if part else 0)
            hit = self.cache.lookup(cache_key, frame.raw, now)
            if isinstance(hit, CacheHit):
                log.debug(
                    "Duplicate {command} seq {sequence_id} from {serial}: replayed",
                    **ex.log_keys,
                )
                for answer in hit.answers:
                    bearer.send(answer)
                return
            if isinstance(hit, InProgress):
                return
        ex.cache_key = cache_key
        if command == Command.REGISTER:
            self._on_register(ex)
        elif command == Command.LOGIN:
            self._on_login(ex)
        elif command == Command.LOGOUT:
            self._on_logout(ex)
        else:
            self._on_session_request(ex, part)

    @staticmethod
    def _fragment_part(frame: Frame) -> FragmentPart | None:
        if frame.container_tag != TAG_FRAGMENT:
            return None
        return FragmentPart.decode(frame.container_value())

    # ------------------------------------------------------------------ answering

    def _answer(
        self,
        ex: _Exchange,
        message: m.Message,
        *,
        flag: int | None = None,
        encrypt: bool = True,
        row: bool = True,
    ) -> bytes | None:
        """Send the answer on the request's bearer, signed and encrypted per 6.1-6.4, and
        as the terminal's profile reads it (C6, C7); the frame sent, if any.

        The exchange is written to the message log unless ``row`` is False or the
        request was refused without being authenticated (D-303)."""
        header = ex.header
        profile = self.profile_of(ex.terminal)
        if profile.little_endian_integers and message.tlvs:
            body = replace(message, tlvs=compat.integers_swapped(message.tlvs)).encode_body()
        else:
            body = message.encode_body()
        if flag is None:
            flag = self._default_flag(message.COMMAND, ex.sms)
        key = None if ex.sms else ex.key
        session = ex.session
        if (
            encrypt
            and not ex.sms
            and session is not None
            and session.cipher is not None
            and body
            and message.COMMAND not in _NEVER_ENCRYPTED
        ):
            body = encrypted_container(session.cipher, body)
            flag = Flag.AUTH | Flag.KEY_REQUEST | Flag.CONTAINER
        limit = profile.max_frame
        if limit is not None and HEADER_SIZE + len(body) + DIGEST_TLV_SIZE * bool(key) > limit:
            self._oversized_answer(ex, message, limit)
            return None
        if len(body) > self.config.fragment_threshold and key is not None:
            frame = self._first_answer_part(ex, message.COMMAND, body, flag, key)
        else:
            frame = build_frame(
                message.COMMAND,
                header.sequence_id,
                header.serial,
                body,
                version=header.version,
                flag=flag,
                key=key,
                timestamp=ex.timestamp,
            )
        ex.bearer.send(frame)
        stats = self.stats
        stats.answer_latency[header.command_id].observe(self.clock.seconds() - ex.now)
        if isinstance(message, m.LoginAck):
            stats.logins[message.result] += 1
        if ex.cache_key is not None:
            self.cache.store(ex.cache_key, ex.frame.raw, [frame], ex.now)
        if not row or (ex.refused and not (ex.authenticated or ex.sms)):
            return frame
        if ex.request is not None:
            event, direction, command = "request", "in", header.command_id
            detail = f"{_summary(ex.request)} => {_summary(message)}"
        else:
            event, direction, command = "answer", "out", message.COMMAND
            detail = _summary(message)
        self._log(
            ex.terminal,
            header.serial,
            direction,
            ex.bearer,
            command,
            header.sequence_id,
            event,
            detail,
        )
        return frame

    def _oversized_answer(self, ex: _Exchange, message: m.Message, limit: int) -> None:
        """C7: an answer the terminal could not read goes out as the command's generic
        error answer, or not at all; either way the operator is told (issue #10)."""
        self._refuse(
            ex,
            Reason.PROFILE,
            f"{message.name} would exceed the {limit}-byte frames this terminal reads (C7)",
        )
        error = _error_answer(ex.header.command_id)  # a few bytes: always fits
        if error is not None:
            self._answer(ex, error)

    def _first_answer_part(
        self, ex: _Exchange, command_id: int, body: bytes, flag: int, key: DigestKey
    ) -> bytes:
        """Start a fragmented answer (7.3): part 1 now, the rest as the terminal asks."""
        header = ex.header
        terminal = ex.terminal
        trans_id = terminal.next_trans() if terminal is not None else 1
        sender = FragmentSender(body, trans_id, self.config.fragment_threshold)
        encrypted = bool(flag & Flag.CONTAINER)
        parts = _AnswerParts(
            sender=sender,
            command_id=command_id,
            version=header.version,
            flag=(ENCRYPTED_FLAG if encrypted else FRAGMENT_FLAG) & ~Flag.DIGEST,
        )
        self._answer_parts[(header.serial, command_id & ~ACK_BIT)] = parts
        return parts.frame(sender.first(), header.sequence_id, header.serial, key, ex.timestamp)

    def _next_answer_part(self, ex: _Exchange, part: FragmentPart) -> None:
        """The terminal asks for part k of a fragmented answer, or abandons it (7.3)."""
        header = ex.header
        key = (header.serial, header.command_id)
        parts = self._answer_parts.get(key)
        if parts is None or ex.key is None:
            self._refuse(ex, Reason.REJECTED, "part request for no fragmented answer")
            return
        try:
            reply = parts.sender.on_answer(part)
        except FragmentAbort as exc:
            del self._answer_parts[key]
            log.info(
                "Fragmented answer to {serial} ended: {reason}",
                reason=exc.reason,
                **ex.log_keys,
            )
            if exc.reply is None:
                return
            reply = exc.reply
        frame = parts.frame(reply, header.sequence_id, header.serial, ex.key, ex.timestamp)
        ex.bearer.send(frame)
        if ex.cache_key is not None:
            self.cache.store(ex.cache_key, ex.frame.raw, [frame], ex.now)

    @staticmethod
    def _default_flag(command_id: int, sms: bool) -> int:
        """The flag values of the table in spec 6.1."""
        if command_id in (Command.REGISTER | ACK_BIT, Command.LOGIN | ACK_BIT):
            return Flag.AUTH
        if command_id & ~ACK_BIT == Command.SECURITY_CONFIG:
            return Flag.AUTH
        return Flag.NONE

    # ------------------------------------------------------------------ REGISTER

    def _on_register(self, ex: _Exchange) -> None:
        frame = ex.frame
        try:
            msg = m.Register.decode_body(frame.body)
        except ProtocolError as exc:
            raise BodyError(f"REGISTER body: {exc.reason}") from None
        try:
            op = RegisterOp(msg.op)
        except ValueError:
            raise BodyError(f"unknown REGISTER op {msg.op}") from None
        terminal = self.registry.by_imei(msg.imei)
        ex.terminal = terminal
        if terminal is None or not terminal.enabled:
            state = "not provisioned" if terminal is None else "disabled"
            self._register_refused(ex, f"REGISTER op {op}: IMEI {msg.imei} {state}")
            return
        if op != RegisterOp.NEW and terminal.serial != frame.header.serial:
            self._register_refused(ex, f"REGISTER op {op}: the IMEI has another serial")
            return
        msisdn = normalize_msisdn(ex.bearer.address) if ex.sms else terminal.msisdn
        if ex.sms and terminal.msisdn and terminal.msisdn != msisdn and op != RegisterOp.REBIND:
            log.warn(
                "REGISTER by SMS from {peer} for {imei} bound to another number",
                imei=msg.imei,
                **ex.log_keys,
            )
        if op == RegisterOp.REBIND:
            self._register_rebind(ex, terminal, msg, msisdn)
        elif op == RegisterOp.PRESET_CREDENTIALS:
            self._register_preset(ex, terminal, msg, msisdn)
        else:
            self._register_deliver(ex, terminal, msg, msisdn, fresh=op == RegisterOp.CLEARED)

    def _register_ack(self, ex: _Exchange, result: int, serial: str | None) -> None:
        flag = Flag.AUTH
        self._answer(ex, m.RegisterAck(result, serial), flag=flag)

    def _register_refused(self, ex: _Exchange, detail: str) -> None:
        self._refuse(ex, Reason.NOT_PROVISIONED, detail)
        self._register_ack(ex, RegisterResult.NOT_PROVISIONED, None)

    def _register_verify(self, ex: _Exchange, imei: str, imsi: str, creds: CredentialSet) -> bool:
        """Digest of REGISTER ops 2/3: timestamp 0, uplink password (4.3, PD-37)."""
        if ex.sms:
            return True
        if ex.frame.digest is None:
            return False
        up = DigestKey.make(imei, imsi, creds.uplink_password)
        if not verify_frame(ex.frame, 0, up):
            return False
        ex.key = DigestKey.make(imei, imsi, creds.downlink_password)
        ex.timestamp = 0
        ex.authenticated = True
        return True

    def _register_rebind(
        self, ex: _Exchange, terminal: Terminal, msg: m.Register, msisdn: str | None
    ) -> None:
        creds = terminal.current
        if creds is None or terminal.imsi is None:
            self._register_refused(ex, "REGISTER op 2: no credential set to verify it")
            return
        if not self._register_verify(ex, msg.imei, terminal.imsi, creds):
            self._auth_failure(ex, terminal, "REGISTER op 2 digest does not verify")
            return
        if terminal.allowed_imsis is not None and msg.imsi not in terminal.allowed_imsis:
            self._register_refused(ex, f"REGISTER op 2: IMSI {msg.imsi} not allowed")
            return
        terminal.imsi = msg.imsi
        if msisdn:
            terminal.msisdn = msisdn
        self.registry.save(terminal)
        self._register_ack(ex, RegisterResult.OK, terminal.serial)

    def _register_preset(
        self, ex: _Exchange, terminal: Terminal, msg: m.Register, msisdn: str | None
    ) -> None:
        creds = terminal.current
        if creds is None:
            self._register_deliver(ex, terminal, msg, msisdn, fresh=False)
            return
        if not ex.sms and ex.frame.digest is None:
            if not self.profile_of(terminal).register_op3_digest_optional:
                self._auth_failure(
                    ex,
                    terminal,
                    "REGISTER op 3 lacks its digest",
                    reason=Reason.MISSING_DIGEST,
                    hint=would_accept("PD-06", "sends REGISTER op 3 without a digest"),
                )
                return
        elif not self._register_verify(ex, msg.imei, msg.imsi, creds):
            self._auth_failure(ex, terminal, "REGISTER op 3 digest does not verify")
            return
        given = tlv_dict(msg.tlvs)
        expected = {
            TAG_UPLINK_PROOF: uplink_proof(creds.uplink_password, creds.uplink_expiry),
            TAG_DOWNLINK_PROOF: downlink_proof(creds.downlink_password, creds.downlink_expiry),
            TAG_BASE_KEY_PROOF: base_key_proof(creds.base_key, creds.base_key_expiry),
        }
        if not all(proofs_equal(given.get(tag, b""), proof) for tag, proof in expected.items()):
            log.info(
                "REGISTER op 3 proofs of {serial} differ: delivering credentials",
                serial=terminal.serial,
            )
            ex.key = None
            self._register_deliver(ex, terminal, msg, msisdn, fresh=False)
            return
        ex.authenticated = True  # by the digest, or by the proofs alone (PD-06)
        same = terminal.imsi == msg.imsi and terminal.state != TerminalState.UNREGISTERED
        if not same:
            terminal.imsi = msg.imsi
            if msisdn:
                terminal.msisdn = msisdn
            self._end_session_for_register(terminal, ex.now)
            self._set_state(terminal, TerminalState.REGISTERED)
            self.registry.save(terminal)
        self._register_ack(
            ex, RegisterResult.ALREADY_REGISTERED if same else RegisterResult.OK, terminal.serial
        )

    def _register_deliver(
        self,
        ex: _Exchange,
        terminal: Terminal,
        msg: m.Register,
        msisdn: str | None,
        *,
        fresh: bool,
    ) -> None:
        """Ops 0, 1 and 4: bind, choose a credential set, deliver it by SMS (4.3)."""
        if terminal.serial is None:
            # Saved at once: whoever hears of the registration finds the terminal under
            # its serial, as the applications' NotifyTerminalState must (D-330).
            terminal.serial = self.registry.allocate_serial(self.serial_prefix)
            self.registry.save(terminal)
        if not msisdn:
            self._register_ack(ex, RegisterResult.RETRY_BY_SMS, None)
            return
        creds = self._credentials_to_deliver(terminal, fresh=fresh, now=ex.now)
        terminal.imsi = msg.imsi
        terminal.msisdn = msisdn
        self._end_session_for_register(terminal, ex.now)
        self._set_state(terminal, TerminalState.REGISTERED)
        self._register_ack_stored(ex, self.registry.save(terminal), terminal.serial or "")
        if self.router is not None:
            self.router.deliver_credentials(terminal, creds)

    def _register_ack_stored(self, ex: _Exchange, saved: Deferred[None], serial: str) -> None:
        """REGISTER_ACK once the record is committed, as stored uplinks are (D-03, D-340).

        The serial counter is written before the record, and the one writer commits in
        order; a crash before the commit would otherwise let the next start allocate the
        serial the terminal was told again. A retransmission meanwhile is ignored (8.2);
        after a failed write nothing is answered and the retransmission counts as new.
        """
        if ex.cache_key is not None:
            self.cache.begin(ex.cache_key, ex.frame.raw, ex.now)

        def failed(failure: Failure) -> None:
            log.failure("Registration of {serial} not stored", failure, serial=serial)
            if ex.cache_key is not None:
                self.cache.cancel(ex.cache_key)

        saved.addCallbacks(
            lambda _: self._register_ack(ex, RegisterResult.OK_SMS, serial), failed
        )

    def _credentials_to_deliver(
        self, terminal: Terminal, *, fresh: bool, now: float
    ) -> CredentialSet:
        """The pending set; else an unexpired current set; else a new pending set (4.3)."""
        if terminal.pending is not None:
            return terminal.pending
        if not fresh and terminal.current is not None and not _expired(terminal.current, now):
            return terminal.current
        terminal.pending = self.new_credentials(terminal.cipher, now)
        return terminal.pending

    def new_credentials(self, cipher: str, now: float) -> CredentialSet:
        """A freshly generated set (6.3.2, PD-39)."""
        ttl = self.config.credential_ttl
        expiry = NEVER if ttl is None else min(NEVER - 1, int(now + ttl))
        return CredentialSet(
            uplink_password=generate_password(),
            uplink_expiry=expiry,
            downlink_password=generate_password(),
            downlink_expiry=expiry,
            base_key=generate_base_key("aes" if cipher == "aes" else "legacy"),
            base_key_expiry=expiry,
        )

    def _end_session_for_register(self, terminal: Terminal, now: float) -> None:
        """A REGISTER accepted while logged in ends the session first (9.8)."""
        if terminal.serial in self.sessions:
            self.end_session(terminal, LogoutReason.NORMAL, TerminalState.LOGGED_OUT, now)

    # ------------------------------------------------------------------ LOGIN

    def _on_login(self, ex: _Exchange) -> None:
        frame = ex.frame
        header = frame.header
        terminal = self.registry.get(header.serial)
        ex.terminal = terminal
        if (
            terminal is None
            or terminal.imsi is None
            or (terminal.current is None and terminal.pending is None)
        ):
            detail = "not provisioned" if terminal is None else "not registered"
            self._refuse(ex, Reason.UNKNOWN_SERIAL, detail)
            self._answer(ex, m.LoginAck(LoginResult.UNKNOWN_SERIAL, 0), flag=Flag.AUTH)
            return
        if ex.sms:
            if normalize_msisdn(ex.bearer.address) != terminal.msisdn:
                self._refuse(ex, Reason.WRONG_PATH, "LOGIN by SMS from a number not bound to it")
                return
            creds = terminal.current or terminal.pending
            assert creds is not None
        else:
            verified = self._login_credentials(ex, terminal)
            if verified is None:
                self._answer(ex, m.LoginAck(LoginResult.AUTH_FAILED, 0), flag=Flag.AUTH)
                return
            creds = verified
            waiting = self._openings.get(header.serial)
            if waiting is not None and waiting.digest == ex.frame.digest:
                self._refuse(ex, Reason.REPLAYED, "a LOGIN seen before, again: its LOGIN_ACK again")
                ex.bearer.send(waiting.answer)
                return
        msg = m.Login.decode_body(ex.frame.body)
        if not terminal.enabled:
            self._refuse(ex, Reason.DISABLED, "terminal disabled")
            self._answer(ex, m.LoginAck(LoginResult.DISABLED, 0))
            return
        if creds.uplink_expiry < ex.now or creds.downlink_expiry < ex.now:
            self._refuse(ex, Reason.CREDENTIALS_EXPIRED, "uplink or downlink password expired")
            self._answer(ex, m.LoginAck(LoginResult.EXPIRED, 0))
            return
        wants_key = bool(header.flag & Flag.KEY_REQUEST) and not ex.sms
        if wants_key:
            proof = find(msg.tlvs, TAG_BASE_KEY_PROOF) or b""
            if not proofs_equal(proof, base_key_proof(creds.base_key, creds.base_key_expiry)):
                self._refuse(ex, Reason.AUTH_FAILED, "LOGIN base key proof differs")
                self._answer(ex, m.LoginAck(LoginResult.AUTH_FAILED, 0))
                return
        if creds is terminal.pending:
            terminal.current, terminal.pending = terminal.pending, None
            log.info("Credential set of {serial} committed", **ex.log_keys)
        result = (
            LoginResult.OK if self._sync_consistent(terminal, msg.sync_crc) else LoginResult.OK_SYNC
        )
        if result == LoginResult.OK_SYNC and msg.sync_crc == 0:
            log.info(
                "LOGIN of {serial} has sync CRC32 0: answered result 1; {hint}",
                hint=would_accept("C2", "may never track its sync values"),
                **ex.log_keys,
            )
        timestamp = max(int(ex.now), terminal.last_session_timestamp + 1)
        if terminal.session_timestamp is not None:
            timestamp = max(timestamp, terminal.session_timestamp + 1)
        ack = m.LoginAck(result, timestamp)
        opening = _Opening(
            Session.start(terminal, timestamp, header.version, self._interval(terminal), ex.now),
            msg.software_version,
            ex.now,
        )
        opening.session.cipher = None
        opening.session.login_result = result
        if wants_key and terminal.cipher != "none":
            key = generate_session_key()
            expiry = min(NEVER, timestamp + int(self.config.session_key_ttl))
            box = encode_session_key(make_cipher(terminal.cipher, creds.base_key), key, expiry)
            ack.tlvs.append(Tlv(0xE040, box))
            opening.session_key, opening.session_key_expiry = key, expiry
            opening.session.cipher = make_cipher(terminal.cipher, key)
        ex.session = opening.session
        ex.timestamp = timestamp
        flag = Flag.AUTH | (Flag.KEY_REQUEST if ack.tlvs else 0)
        digest = ex.frame.digest
        if digest is not None and self.logins.seen(header.serial, digest):
            # Its digest has timestamp 0: anyone who saw it can send it again. It is
            # answered, and its session begins with a message signed under this
            # LOGIN_ACK's timestamp, which only the terminal can make (D-299).
            self._refuse(
                ex, Reason.REPLAYED, "a LOGIN seen before: no session until a signed message"
            )
            opening.digest = digest
            opening.answer = self._answer(ex, ack, flag=flag, row=False) or b""
            self._openings[header.serial] = opening
            return
        session = self._begin(terminal, opening, ex)
        self._answer(ex, ack, flag=flag)
        if digest is not None:
            self.logins.remember(header.serial, digest)
        self._opened(terminal, session, ex.now)

    def _opened(self, terminal: Terminal, session: Session, now: float) -> None:
        """The new session may carry traffic: credential upkeep, queued requests after
        its first trap or ``sync_trap_wait`` (4.4), and the router hears of the login."""
        session.sync_deadline = now + self.config.sync_trap_wait
        self.schedule_credential_check(session.serial, now)
        if self.router is not None:
            self.router.on_login(terminal)

    def _proven(self, ex: _Exchange, terminal: Terminal) -> Session | None:
        """The session a LOGIN seen before asked for, begun now if this message is
        signed under its LOGIN_ACK's timestamp (D-299); None otherwise."""
        serial = terminal.serial or ""
        opening = self._openings.get(serial)
        if opening is None or ex.sms:
            return None
        frame = ex.frame
        signed = frame if frame.digest is not None else unflagged_digest(frame)
        if signed is not frame and not self.profile_of(terminal).digest_without_flag:
            return None
        session = opening.session
        if signed is None or not verify_frame(signed, session.timestamp, session.up):
            return None
        log.info(
            "A message signed under the LOGIN_ACK of a LOGIN seen before: its session begins",
            **ex.log_keys,
        )
        self._begin(terminal, opening, ex)
        self._opened(terminal, session, ex.now)
        return session

    def _login_credentials(self, ex: _Exchange, terminal: Terminal) -> CredentialSet | None:
        """The set whose uplink password verifies the LOGIN digest: current, then pending.

        A digest appended with flag 0x20 clear counts only under C1 (spec 1.6); every
        failure is refused here with its reason (2.2 step 4, 6.2).
        """
        frame = ex.frame
        signed = frame if frame.digest is not None else unflagged_digest(frame)
        found = None if signed is None else _verifying_set(terminal, signed)
        accepted = signed is frame or self.profile_of(terminal).digest_without_flag
        if signed is not None and found is not None and accepted:
            ex.frame, ex.key = signed, found[1]
            ex.authenticated = True
            return found[0]
        if frame.digest is not None:
            self._auth_failure(ex, terminal, "LOGIN digest does not verify")
            return None
        hint = None
        if found is not None:
            hint = would_accept("C1", "appends a valid E021 to LOGIN without setting flag 0x20")
        self._auth_failure(
            ex,
            terminal,
            "LOGIN lacks its digest (flag 0x20 clear)",
            reason=Reason.MISSING_DIGEST,
            hint=hint,
        )
        return None

    def _sync_consistent(self, terminal: Terminal, sync_crc: int) -> bool:
        """Step 7 of 4.4: CRC32 over the stored sync values equals the terminal's; 0 from
        a C2 terminal means "not tracked" and is consistent (spec 1.6)."""
        if sync_crc == 0 and self.profile_of(terminal).sync_crc_zero_untracked:
            return True
        values = self.registry.config_values(terminal.serial or "")
        sync_tags = terminal.sync_tags or list(self.config.default_sync_tags)
        stream = []
        for tag in sync_tags:
            raw = values.get(tag)
            if raw is None:
                return False
            stream.append(Tlv(tag, raw))
        return crc32(encode_tlvs(stream)) == sync_crc

    def _begin(self, terminal: Terminal, opening: _Opening, ex: _Exchange) -> Session:
        """Step 8 of 4.4: replace any session, bind the bearer ``ex`` came on, persist
        (PD-19); cached answers of earlier sessions are dropped (8.2)."""
        serial = terminal.serial or ""
        self._openings.pop(serial, None)
        old = self.sessions.pop(serial, None)
        if old is not None:
            if old.tcp is not None and not old.tcp.same_path(ex.bearer):
                old.tcp.close()
            if self.router is not None:
                self.router.on_session_ended(terminal, "session replaced by a new LOGIN")
        session = opening.session
        session.last_valid = ex.now
        self.sessions[serial] = session
        self._bind(session, ex.bearer)
        terminal.session_key = opening.session_key
        terminal.session_key_expiry = opening.session_key_expiry
        terminal.session_timestamp = session.timestamp
        terminal.protocol_version = session.version
        terminal.software_version = opening.software_version
        terminal.last_seen = ex.now
        self.cache.clear_terminal(serial)
        self._set_state(terminal, TerminalState.LOGGED_IN)
        self.registry.save(terminal)
        log.info(
            "Terminal {serial} logged in over {bearer} from {peer}",
            event="login",
            version=f"{session.version:#06x}",
            **ex.log_keys,
        )
        return session

    def _interval(self, terminal: Terminal) -> float:
        return float(terminal.heartbeat_interval or self.config.heartbeat_interval_default)

    def _bind(self, session: Session, bearer: Bearer) -> None:
        """Make ``bearer`` the session's current bearer (9.6, 10.2)."""
        session.bearer = bearer
        if bearer.kind == "tcp":
            if session.tcp is not None and not session.tcp.same_path(bearer):
                previous = session.tcp
                session.tcp = bearer
                _bound_serial(previous, None)
            session.tcp = bearer
            _bound_serial(bearer, session.serial)
        if bearer.kind != "sms":
            session.auth_host = bearer.host

    # ------------------------------------------------------------------ LOGOUT

    def _on_logout(self, ex: _Exchange) -> None:
        frame = ex.frame
        serial = frame.header.serial
        terminal = self.registry.get(serial)
        if terminal is None:
            self._refuse(ex, Reason.UNKNOWN_SERIAL, "not provisioned")
            return
        ex.terminal = terminal
        session = self._proven(ex, terminal) or self.sessions.get(serial)
        timestamp = session.timestamp if session else terminal.last_session_timestamp
        if not self._authenticate(ex, terminal, timestamp):
            return
        msg = m.Logout.decode_body(ex.frame.body, padded=True)
        ex.session = session
        # Without a session nothing changes, so no row either: the digest uses the last
        # session timestamp, and a replay of it would otherwise write one per copy.
        self._answer(ex, m.LogoutAck(), encrypt=False, row=session is not None)
        if session is None:
            return
        reason = msg.reason
        state = (
            TerminalState.OFFLINE
            if reason == LogoutReason.COMM_FAILURE
            else TerminalState.LOGGED_OUT
        )
        self._log(
            terminal,
            serial,
            "in",
            ex.bearer,
            Command.LOGOUT,
            frame.header.sequence_id,
            "logout",
            f"reason {reason}",
        )
        if reason == LogoutReason.RECONFIGURED and self.router is not None:
            self.router.reconfigured(terminal)
        self.end_session(terminal, reason, state, ex.now, via=ex)

    def _authenticate(self, ex: _Exchange, terminal: Terminal, timestamp: int) -> bool:
        """Digest (IP) or MSISDN (SMS) check of a request or answer; sets the answer's key
        (6.2). The terminal's profile may take a digest without its flag (C1), or no
        digest on the session's TCP connection (C3, answered unsigned as PD-05 does);
        each refusal says which profile would have taken the message (spec 1.6)."""
        if ex.sms:
            if normalize_msisdn(ex.bearer.address) != terminal.msisdn:
                self._refuse(ex, Reason.WRONG_PATH, "by SMS from a number not bound to it")
                return False
            ex.authenticated = True
            return True
        session = self.sessions.get(terminal.serial or "")
        try:
            up, down = (session.up, session.down) if session else digest_keys(terminal)
        except LookupError:
            self._refuse(ex, Reason.AUTH_FAILED, "no credential set to verify the digest")
            return False
        frame, name = ex.frame, ex.header.command_name
        profile = self.profile_of(terminal)
        signed = frame if frame.digest is not None else unflagged_digest(frame)
        if signed is not None and verify_frame(signed, timestamp, up):
            if signed is frame or profile.digest_without_flag:
                ex.frame, ex.key, ex.timestamp = signed, down, timestamp
                ex.authenticated = True
                return True
            self._refuse(
                ex,
                Reason.MISSING_DIGEST,
                f"{name} lacks its digest (flag 0x20 clear)",
                hint=would_accept("C1", f"appends a valid E021 to {name} without flag 0x20"),
            )
            return False
        if signed is not None and header_only_digest(signed, timestamp, up):
            self._auth_failure(
                ex,
                terminal,
                f"the {name} digest covers the 28-byte header alone: the body is unauthenticated",
                reason=Reason.HEADER_ONLY_DIGEST,
                hint=would_accept("C4", f"signs {name} over its header alone"),
            )
            return False
        if frame.digest is not None:
            self._auth_failure(ex, terminal, f"{name} digest does not verify")
            return False
        if not profile.accepts_unsigned(ex.header.command_id):
            self._refuse(
                ex,
                Reason.MISSING_DIGEST,
                "the required digest is missing",
                hint=compat.unsigned_hint(ex.header.command_id, name),
            )
            return False
        if session is None or session.tcp is None or not session.tcp.same_path(ex.bearer):
            self._refuse(
                ex,
                Reason.MISSING_DIGEST,
                f"unsigned {name} is accepted only on the TCP connection of the "
                "logged-in session (C3)",
            )
            return False
        ex.timestamp = timestamp
        ex.authenticated = True
        return True

    def end_session(
        self,
        terminal: Terminal,
        reason: int,
        state: str,
        now: float,
        *,
        via: _Exchange | None = None,
    ) -> None:
        """Release a logical connection (9.4, 9.5); ``via`` is the terminal's LOGOUT."""
        serial = terminal.serial or ""
        session = self.sessions.pop(serial, None)
        if via is not None:
            keys = via.log_keys
        elif session is not None and session.bearer is not None:
            keys = {"serial": serial, "bearer": session.bearer.kind, "peer": session.bearer.address}
        else:
            keys = {"serial": serial}
        if session is not None:
            terminal.last_session_timestamp = session.timestamp
            if state == TerminalState.OFFLINE and session.tcp is not None:
                session.tcp.close()
            if session.tcp is not None:
                _bound_serial(session.tcp, None)
        elif terminal.session_timestamp:
            terminal.last_session_timestamp = terminal.session_timestamp
        terminal.session_timestamp = None
        terminal.session_key = None
        terminal.session_key_expiry = None
        self.cache.clear_terminal(serial)
        for key in [k for k in self._answer_parts if k[0] == serial]:
            del self._answer_parts[key]
        self._set_state(terminal, state, reason)
        self.registry.save(terminal)
        log.info(
            "Session of {serial} ended (logout reason {logout_reason}): {state}",
            event="logout",
            logout_reason=reason,
            state=state,
            **keys,
        )
        if self.router is not None:
            self.router.on_session_ended(terminal, f"session ended (logout reason {reason})")

    # ------------------------------------------------------------------ HEART_BEAT

    def _on_heartbeat(self, ex: _Exchange) -> None:
        header = ex.header
        session = self.sessions.get(header.serial)
        if session is None:
            self._refuse(ex, Reason.NOT_LOGGED_IN, "no session (PD-20)")
            return
        bearer = ex.bearer
        if not (
            (session.tcp is not None and session.tcp.same_path(bearer))
            or (bearer.kind == "udp" and bearer.host == session.auth_host)
        ):
            self._refuse(ex, Reason.WRONG_PATH, "not the session's bearer (PD-25)")
            return
        # Traffic for offline detection (PD-25), but unsigned: it never moves the bearer,
        # as anyone behind the terminal's NAT address could send it (D-297).
        session.last_valid = ex.now
        self.registry.touch(header.serial, ex.now, bearer.kind, bearer.address)
        bearer.send(
            build_frame(
                Command.HEART_BEAT | ACK_BIT,
                header.sequence_id,
                header.serial,
                b"",
                version=header.version,
            )
        )
        self.stats.answer_latency[header.command_id].observe(self.clock.seconds() - ex.now)
        if ex.frame.body:
            try:
                tlvs = decode_tlvs(ex.frame.body)
            except ProtocolError:
                return
            terminal = self.registry.get(header.serial)
            if self.profile_of(terminal).little_endian_integers:
                tlvs = compat.integers_swapped(tlvs)
            keys = ex.log_keys
            values = tlv_dict(t for t in tlvs if not self.value_refused(terminal, t, keys))
            # Status and vendor TLVs (e.g. CSQ) ride on every heartbeat: store changes only.
            stored = self.registry.config_values(header.serial)
            changed = {tag: raw for tag, raw in values.items() if stored.get(tag) != raw}
            if changed:
                self.registry.store_config(header.serial, changed, "reported")

    # ------------------------------------------------------------------ session requests

    def _on_session_request(self, ex: _Exchange, part: FragmentPart | None) -> None:
        """Every request but REGISTER, LOGIN, LOGOUT and HEART_BEAT (9.3, 9.6)."""
        header = ex.header
        command = header.command_id
        terminal = self.registry.get(header.serial)
        ex.terminal = terminal
        if terminal is None:
            if ex.sms and command == Command.CONFIG_TRAP:
                self._alarm_without_login(ex, None)
                return
            self._refuse(ex, Reason.UNKNOWN_SERIAL, "not provisioned")
            return
        session = self._proven(ex, terminal) or self.sessions.get(header.serial)
        if session is None:
            if ex.sms and command == Command.CONFIG_TRAP:
                self._alarm_without_login(ex, terminal)
                return
            self._refuse(ex, Reason.NOT_LOGGED_IN, "no session (PD-20)")
            return
        ex.session = session
        if not self._authenticate(ex, terminal, session.timestamp):
            return
        if not self._fresh(ex, session.requests):
            return
        self._accepted(ex, session, terminal)
        if command in _PLATFORM_ONLY:
            raise ProtocolError(f"{header.command_name} is sent by the platform only")
        if ex.sms and command == Command.FILE_REQ:
            raise ProtocolError("FILE_REQ is not carried by SMS")
        if part is not None and part.op in (FragmentOp.NEXT, FragmentOp.RECEIVER_ABORT):
            self._next_answer_part(ex, part)
            return
        if part is not None:
            body = self._reassemble(ex, part)
            if body is None:
                return
            ex.cache_key = (header.serial, command, header.sequence_id, 0)
        else:
            body = ex.frame.body
        encrypted = ex.frame.container_tag == TAG_ENCRYPTED or (
            part is not None and body[:2] == TAG_ENCRYPTED.to_bytes(2, "big")
        )
        padded = False
        if encrypted:
            if session.cipher is None:
                raise ProtocolError("encrypted body but the session has no key")
            body = decrypt_body(session.cipher, _single_tlv(body, TAG_ENCRYPTED))
            padded = session.cipher.name == "legacy"
        elif terminal.require_encryption and session.cipher is not None:
            raise ProtocolError("plaintext request from a terminal that requires encryption")
        try:
            msg = m.decode_message(command, body, padded=padded)
        except BodyError as exc:
            self._unparseable(ex, command, exc)
            return
        self._read_integers(terminal, msg)
        ex.request = msg  # logged with its answer: one row per exchange
        handler = self._handlers[command]
        handler(self, ex, terminal, session, msg)

    def _read_integers(self, terminal: Terminal | None, msg: m.Message) -> None:
        """C6: a little-endian terminal's integer TLVs become the numbers they mean."""
        if self.profile_of(terminal).little_endian_integers:
            msg.tlvs = compat.integers_swapped(msg.tlvs)

    def _fresh(self, ex: _Exchange, window: ReplayWindow) -> bool:
        """Whether an authenticated message is new in its session. A signed one accepted
        before, or too old to tell, is refused: the response cache answered it if it
        still could, and nothing else is done (D-292, D-293). Unsigned ones (SMS, C3 on
        the bound connection) have no digest to compare."""
        digest = ex.frame.digest
        if digest is None:
            return True
        sequence_id = ex.header.sequence_id
        freshness = window.check(sequence_id, digest)
        if freshness is Freshness.FRESH:
            window.accept(sequence_id, digest)
            return True
        detail = (
            "accepted before in this session"
            if freshness is Freshness.REPLAYED
            else "Sequence_ID behind the session's replay window"
        )
        self._refuse(ex, Reason.REPLAYED, f"{detail}: not acted on again")
        return False

    def _accepted(self, ex: _Exchange, session: Session, terminal: Terminal) -> None:
        """A valid, fresh message: traffic for offline detection, current bearer (9.4,
        9.6, D-298)."""
        session.last_valid = ex.now
        stalled = self.reachable(terminal) is None
        self._bind(session, ex.bearer)
        self.registry.touch(terminal.serial or "", ex.now, ex.bearer.kind, ex.bearer.address)
        if stalled and self.router is not None:
            # The live session has a path again (a new connection, 9.6): its queue
            # moves now, as after a LOGIN, not at the next request that comes (D-332).
            self.router.kick(terminal)

    def _unparseable(self, ex: _Exchange, command: int, exc: BodyError) -> None:
        """Spec 4.2 rule 4: the generic error answer, or a discard."""
        self._refuse(ex, Reason.MALFORMED, exc.reason)
        error = _error_answer(command)
        if error is not None:
            self._answer(ex, error)

    def _reassemble(self, ex: _Exchange, part: FragmentPart) -> bytes | None:
        """Feed a part of a fragmented request; the body once complete (7.4)."""
        header = ex.header
        key = (header.serial, header.command_id, "in", part.trans_id)
        event = self.reassembly.feed(key[:3], part, ex.now)  # type: ignore[arg-type]
        if isinstance(event, Complete):
            return event.body
        if isinstance(event, NeedPart):
            self._answer_part(ex, event.reply)
        elif isinstance(event, Abort):
            self._answer_part(ex, event.abort_part, cache=False)
        elif isinstance(event, Duplicate | Ended):
            pass
        return None

    def _answer_part(self, ex: _Exchange, reply: FragmentPart, *, cache: bool = True) -> None:
        header = ex.header
        frame = build_frame(
            header.command_id | ACK_BIT,
            header.sequence_id,
            header.serial,
            reply.encode_tlv(),
            version=header.version,
            flag=FRAGMENT_FLAG & ~Flag.DIGEST,
            key=ex.key,
            timestamp=ex.timestamp,
        )
        ex.bearer.send(frame)
        if cache and ex.cache_key is not None:
            self.cache.store(ex.cache_key, ex.frame.raw, [frame], ex.now)

    # ------------------------------------------------------------------ handlers

    def _h_transparent(
        self, ex: _Exchange, terminal: Terminal, session: Session, msg: m.Message
    ) -> None:
        """TRANSPARENT_DATA / TRANSPARENT_CMD from a terminal (4.7, 4.16, PD-27)."""
        assert isinstance(msg, m.TransparentData | m.TransparentCmd)
        ack = m.MESSAGE_TYPES[msg.COMMAND | ACK_BIT]
        if isinstance(msg, m.TransparentData) and not self._crc_ok(ex, terminal, msg):
            self._answer(ex, ack(TransparentResult.CRC_MISMATCH))  # type: ignore[call-arg]
            return
        result = self.route_transparent(terminal, msg)
        if isinstance(result, Deferred):
            # Answer once the message is stored; duplicates meanwhile are ignored (8.2).
            if ex.cache_key is not None:
                self.cache.begin(ex.cache_key, ex.frame.raw, ex.now)

            def answer(code: int) -> None:
                self._answer(ex, ack(code))  # type: ignore[call-arg]

            def failed(failure: Failure) -> None:
                log.failure("Could not store data from {serial}", failure, serial=terminal.serial)
                if ex.cache_key is not None:
                    self.cache.cancel(ex.cache_key)
                if ex.frame.digest is not None:
                    session.requests.forget(ex.frame.digest)  # its retransmission is new

            result.addCallbacks(answer, failed)
            return
        self._answer(ex, ack(result))  # type: ignore[call-arg]

    def _crc_ok(self, ex: _Exchange, terminal: Terminal, msg: m.TransparentData) -> bool:
        """The CRC16 of 6.5, or the CMCC variant for a C5 terminal; a mismatch is
        reported (its data is dropped, result 4), naming C5 when the variant matches."""
        if msg.crc_ok:
            return True
        variant = msg.crc16.to_bytes(2, "big") == crc16_cmcc(msg.user_data)
        if variant and self.profile_of(terminal).crc16_cmcc:
            return True
        hint = would_accept("C5", "sends the CMCC CRC16 variant") if variant else None
        self._refuse(ex, Reason.CRC_MISMATCH, "CRC16 does not match the user data", hint=hint)
        return False

    def route_transparent(
        self, terminal: Terminal, msg: m.TransparentData | m.TransparentCmd
    ) -> int | Deferred[int]:
        """Deliver uplink data to an application or another terminal; the ACK result."""
        destination = msg.destination
        if destination is None:
            if not terminal.default_app:
                return TransparentResult.UNKNOWN_DESTINATION
            destination = ("application", terminal.default_app)
        kind, target = destination
        serial = terminal.serial or ""
        if kind == "application":
            if not self.uplink.exists(target):
                return TransparentResult.UNKNOWN_DESTINATION
            if target not in terminal.apps and target != terminal.default_app:
                return TransparentResult.REJECTED
            return self.uplink.deliver(target, serial, msg)
        other = self.registry.get(target)
        if other is None:
            return TransparentResult.UNKNOWN_DESTINATION
        if not (terminal.apps | {terminal.default_app}) & (other.apps | {other.default_app}) - {
            None
        }:
            return TransparentResult.REJECTED
        if self.router is None:
            return TransparentResult.UNKNOWN_DESTINATION
        return self.router.relay(terminal, other, msg)

    def _h_config_trap(
        self, ex: _Exchange, terminal: Terminal, session: Session, msg: m.Message
    ) -> None:
        """CONFIG_TRAP (4.9): validate all, store all, then act on the special tags."""
        if self._trap_refused(ex, terminal, msg.tlvs):
            return
        self._answer(ex, m.ConfigTrapAck(0))
        self.apply_trap(terminal, msg.tlvs, ex.now, session, ex.bearer.kind)

    def _trap_refused(self, ex: _Exchange, terminal: Terminal | None, tlvs: list[Tlv]) -> bool:
        """4.9 validation, and the value ranges (D-240): a trap with any unusable TLV
        is answered ret 1 with that tag, reported, and nothing of it is stored."""
        for tlv in tlvs:
            if not tags.length_fits(tlv.tag, len(tlv.raw)):
                self._refuse(ex, Reason.MALFORMED, f"0x{tlv.tag:04X} has length {len(tlv.raw)}")
            elif not self.value_refused(terminal, tlv, ex.log_keys):
                continue
            self._answer(ex, m.ConfigTrapAck(1, tlv.tag))
            return True
        return False

    def value_refused(self, terminal: Terminal | None, tlv: Tlv, keys: dict[str, object]) -> bool:
        """True, and reported, when a value the terminal reports is outside its tag's
        range (D-240): whatever the profile, such a value is never stored."""
        problem = tags.value_error(tlv.tag, tlv.raw)
        if problem is None:
            return False
        swapped = tags.swap_integer(tlv.tag, tlv.raw)
        hint = None
        if (
            not self.profile_of(terminal).little_endian_integers
            and tags.value_error(tlv.tag, swapped) is None
        ):
            number = int.from_bytes(swapped, "big")
            hint = would_accept("C6", f"may send integers little-endian (read so: {number:,})")
        self.refusals.report(Reason.OUT_OF_RANGE, f"{problem}: not stored", hint=hint, **keys)
        return True

    def apply_trap(
        self,
        terminal: Terminal,
        tlvs: list[Tlv],
        now: float,
        session: Session | None,
        bearer: str,
    ) -> None:
        """Store a valid trap's TLVs and act on sync, execution, alarm and stats tags;
        ``bearer`` is the kind it came on, which its notification names (D-333)."""
        serial = terminal.serial or ""
        values = tlv_dict(tlvs)
        changed = False
        if values:
            self.registry.store_config(serial, values, "reported")
        if TAG_SYNC_LIST in values:
            terminal.sync_tags = tags.decode_value(TAG_SYNC_LIST, values[TAG_SYNC_LIST])
            changed = True
        for tag in (TAG_HEARTBEAT, TAG_PERIOD_CTRL):
            if tag in values and len(values[tag]) in (1, 2, 4):
                terminal.heartbeat_interval = tags.decode_int(values[tag]) or None
                if session is not None:
                    session.interval = self._interval(terminal)
                changed = True
        if TAG_CONNECT_MODE in values and len(values[TAG_CONNECT_MODE]) == 1:
            terminal.connect_mode = values[TAG_CONNECT_MODE][0]
            changed = True
        if TAG_CURRENT_VERSION in values and self.router is not None:
            self.router.version_reported(terminal, values[TAG_CURRENT_VERSION].decode("latin-1"))
        if TAG_EXEC_REPORT in values and self.router is not None:
            result, sequence_id = struct.unpack(">BI", values[TAG_EXEC_REPORT])
            self.router.execution_report(terminal, sequence_id, result)
        if TAG_CONFIG_CRC in values and self.router is not None:
            ok = self.router.config_crc_matches(terminal, tags.decode_int(values[TAG_CONFIG_CRC]))
            if terminal.config_unverified == ok:
                terminal.config_unverified = not ok
                changed = True
        if TAG_ALARM_STATUS in values:
            self._record_alarm(serial, terminal.msisdn, values, now)
        stats = {tag: raw for tag, raw in values.items() if tag in _STATISTICS}
        if stats:
            self.registry.record_statistics(serial, stats, now)
        if changed:
            self.registry.save(terminal)
        if TAG_LOCAL_CONFIG in values:
            log.info("Terminal {serial} applied a local manual configuration", serial=serial)
        self.uplink.notify_trap(terminal, values, bearer)
        if session is not None and not session.synced:
            session.synced = True
            session.sync_deadline = None
            if self.router is not None:
                self.router.kick(terminal)

    def _record_alarm(
        self,
        serial: str | None,
        msisdn: str | None,
        values: dict[int, bytes],
        now: float,
        header_serial: str | None = None,
    ) -> None:
        def num(tag: int) -> int:
            raw = values.get(tag)
            return tags.decode_int(raw) if raw and len(raw) in (1, 2, 4) else 0

        restore = values.get(TAG_ALARM_RESTORE)
        alarm = Alarm(
            serial=serial,
            msisdn=msisdn,
            code=num(TAG_ALARM_CODE),
            type=num(TAG_ALARM_TYPE),
            status=num(TAG_ALARM_STATUS),
            cleared_code=None if restore is None else restore.decode("latin-1"),
            time=now,
            header_serial=header_serial or serial,
        )
        self.registry.record_alarm(alarm)
        log.warn(
            "Alarm {code:#06x} status {status} from {serial}",
            code=alarm.code,
            status=alarm.status,
            serial=serial or f"unattributed {msisdn}",
        )

    def _alarm_without_login(self, ex: _Exchange, terminal: Terminal | None) -> None:
        """An alarm CONFIG_TRAP by SMS from a terminal not logged in (10.4.6)."""
        try:
            msg = m.ConfigTrap.decode_body(ex.frame.body)
        except BodyError as exc:
            self._unparseable(ex, Command.CONFIG_TRAP, exc)
            return
        self._read_integers(terminal, msg)
        values = tlv_dict(msg.tlvs)
        if TAG_ALARM_STATUS in values and self._trap_refused(ex, terminal, msg.tlvs):
            return
        if TAG_ALARM_STATUS not in values:
            self._refuse(ex, Reason.NOT_LOGGED_IN, "no session and not an alarm (10.4.6)")
            return
        msisdn = normalize_msisdn(ex.bearer.address)
        if terminal is not None and terminal.msisdn == msisdn:
            owner: Terminal | None = terminal
        else:
            owner = self.registry.by_msisdn(msisdn)
        self._answer(ex, m.ConfigTrapAck(0))
        if owner is None:
            # Unattributed (10.4.6): recorded with the MSISDN and the header serial.
            self._record_alarm(None, msisdn, values, ex.now, ex.header.serial)
        else:
            self.apply_trap(owner, msg.tlvs, ex.now, None, ex.bearer.kind)

    def _h_config_req(
        self, ex: _Exchange, terminal: Terminal, session: Session, msg: m.Message
    ) -> None:
        """CONFIG_REQ (4.11): all requested values, or ret 1 naming the missing ones."""
        values = self.registry.config_values(terminal.serial or "")
        missing = [t.tag for t in msg.tlvs if not _requestable(t.tag, values)]
        if missing or not msg.tlvs:
            self._answer(ex, m.ConfigReqAck(1, tlvs=[Tlv.query(tag) for tag in missing]))
            return
        answer = [Tlv(t.tag, values[t.tag]) for t in msg.tlvs]
        self._answer(ex, m.ConfigReqAck(0, tlvs=answer))
        if self.router is not None:
            self.router.config_sent(terminal, ex.header.sequence_id, answer)

    def _h_file_req(
        self, ex: _Exchange, terminal: Terminal, session: Session, msg: m.Message
    ) -> None:
        """FILE_REQ (4.15, PD-36): one block of the offered file."""
        assert isinstance(msg, m.FileReq)
        tx = self.registry.file_by_trans_id(msg.trans_id)
        if tx is None or tx.serial != terminal.serial or tx.expires_at < ex.now:
            self._answer(ex, m.FileReqAck(msg.trans_id, 1, 0, msg.offset))
            return
        if msg.status in (2, 3):
            tx.state = "downloaded" if msg.status == 2 else "aborted"
            self.registry.update_file(tx)
            self._answer(ex, m.FileReqAck(msg.trans_id, 0, 0, msg.offset))
            return
        if msg.offset > tx.size:
            self._answer(ex, m.FileReqAck(msg.trans_id, 2, 0, msg.offset))
            return
        n = min(msg.size, tx.size - msg.offset, self.config.file_block_max)
        try:
            with open(tx.path, "rb") as fh:
                fh.seek(msg.offset)
                data = fh.read(n)
        except OSError as exc:
            log.error("Cannot read {path} for FILE_REQ: {error}", path=tx.path, error=exc)
            self._answer(ex, m.FileReqAck(msg.trans_id, 3, 0, msg.offset))
            return
        self._answer(
            ex, m.FileReqAck(msg.trans_id, 0, crc16(data) if data else 0, msg.offset, data)
        )

    def _h_security_config(
        self, ex: _Exchange, terminal: Terminal, session: Session, msg: m.Message
    ) -> None:
        """SECURITY_CONFIG from a terminal: op 4 report, op 6 renewal (4.13, PD-26)."""
        assert isinstance(msg, m.SecurityConfig)
        if msg.op == SecurityOp.REPORT:
            self.registry.store_config(terminal.serial or "", tlv_dict(msg.tlvs), "reported")
            self._answer(ex, m.SecurityConfigAck(0))
        elif msg.op == SecurityOp.RENEW:
            self._answer(ex, m.SecurityConfigAck(0))
            creds = self._credentials_to_deliver(terminal, fresh=True, now=ex.now)
            self._send_credentials(terminal, creds, ex.now)
        else:
            self._answer(ex, m.SecurityConfigAck(2))

    _handlers: ClassVar[dict[int, Callable[..., None]]] = {
        Command.TRANSPARENT_DATA: _h_transparent,
        Command.TRANSPARENT_CMD: _h_transparent,
        Command.CONFIG_TRAP: _h_config_trap,
        Command.CONFIG_REQ: _h_config_req,
        Command.FILE_REQ: _h_file_req,
        Command.SECURITY_CONFIG: _h_security_config,
    }

    # ------------------------------------------------------------------ answers from terminals

    def _on_answer(self, frame: Frame, bearer: Bearer, now: float) -> None:
        header = frame.header
        terminal = self.registry.get(header.serial)
        if terminal is None or self.router is None:
            self.refusals.report(
                Reason.UNKNOWN_SERIAL,
                "answer from a serial not provisioned",
                **terminal_keys(header, bearer),
            )
            return
        session = self.sessions.get(header.serial)
        ex = _Exchange(frame, bearer, now, terminal, session)
        timestamp = session.timestamp if session else terminal.last_session_timestamp
        # On SMS this is the MSISDN identification of 10.4.4 (no digest).
        if not self._authenticate(ex, terminal, timestamp):
            return
        frame = ex.frame  # C1: the digest may have been found without its flag
        if session is not None:
            if not self._fresh(ex, session.answers):
                return
            self._accepted(ex, session, terminal)
        cipher = session.cipher if session else None
        part = self._fragment_part(frame)
        if part is not None:
            self.router.on_answer_part(terminal, header, part, bearer)
            return
        message: m.Message | None
        try:
            body, padded = frame.body, False
            if frame.container_tag == TAG_ENCRYPTED:
                if cipher is None:
                    raise BodyError("encrypted answer but no session key")
                body = decrypt_body(cipher, frame.container_value())
                padded = cipher.name == "legacy"
            message = m.decode_message(header.command_id, body, padded=padded)
            self._read_integers(terminal, message)
        except ProtocolError as exc:
            self.refusals.report(Reason.MALFORMED, exc.reason, **terminal_keys(header, bearer))
            message = None
        self.router.on_answer(terminal, header, message, bearer)

    # ------------------------------------------------------------------ platform requests

    def request_frames(
        self, terminal: Terminal, command: int, sequence_id: int, body: bytes, bearer: Bearer
    ) -> list[bytes]:
        """The frame(s) of a platform-initiated request on ``bearer`` (6.1, 6.4, 7).

        More than one frame means the body is fragmented: the caller sends the first
        and the router hands out the others as the terminal asks for them.
        """
        serial = terminal.serial or ""
        session = self.sessions.get(serial)
        version = session.version if session else terminal.protocol_version or 0x0300
        self.check_deliverable(terminal, command, body)
        if self.profile_of(terminal).little_endian_integers:
            message = m.decode_message(command, body)
            message.tlvs = compat.integers_swapped(message.tlvs)  # C6, as the terminal reads
            body = message.encode_body()
        if bearer.kind == "sms":
            flag = Flag.AUTH if command == Command.SECURITY_CONFIG else Flag.NONE
            return [build_frame(command, sequence_id, serial, body, version=version, flag=flag)]
        if session is None:
            raise ProtocolError(f"no session for {serial} to sign a request in")
        flag = Flag.AUTH if command == Command.SECURITY_CONFIG else Flag.NONE
        if session.cipher is not None and body:
            body = encrypted_container(session.cipher, body)
            flag = Flag.AUTH | Flag.KEY_REQUEST | Flag.CONTAINER
            self.check_deliverable(terminal, command, body)  # C7 once the cipher padded it
        return [
            build_frame(
                command,
                sequence_id,
                serial,
                body,
                version=version,
                flag=flag,
                key=session.down,
                timestamp=session.timestamp,
            )
        ]

    def check_deliverable(self, terminal: Terminal, command: int, body: bytes) -> None:
        """Refuse, at once and reported, a platform request the terminal's profile cannot
        carry: a command it cannot take (C9), or a frame beyond what it reads (C7).

        Raises :class:`~m2mgw.protocol.compat.ProfileRefused` with the reason for the
        operator or application; the router calls this before queueing and sending.
        """
        profile = self.profile_of(terminal)
        name = m.MESSAGE_NAMES[command]
        limit = profile.max_frame
        size = HEADER_SIZE + len(body) + DIGEST_TLV_SIZE
        if command in profile.refused_requests:
            refused = ProfileRefused(
                f"{name} is never sent to a {profile.name} terminal: it cannot take one (C9)"
            )
        elif limit is not None and size > limit:
            refused = ProfileRefused(
                f"{name} of {size} bytes is more than the {limit}-byte frames a "
                f"{profile.name} terminal reads (C7)",
                too_large=True,
            )
        else:
            return
        self.refusals.report(Reason.PROFILE, refused.reason, serial=terminal.serial, command=name)
        raise refused

    def reachable(self, terminal: Terminal) -> Bearer | None:
        """The bearer for a platform request, in the order of spec 9.6."""
        session = self.sessions.get(terminal.serial or "")
        if session is None:
            return None
        if session.tcp is not None and session.tcp.is_open:
            return session.tcp
        if session.bearer is not None and session.bearer.kind == "udp":
            return session.bearer
        if session.bearer is not None and session.bearer.kind == "sms":
            return session.bearer
        return None

    # ------------------------------------------------------------------ time

    def tick(self) -> None:
        """Offline detection, sync-trap wait, credential upkeep and reassembly expiry
        (9.4, PD-29, 6.3.5, 7.4)."""
        now = self.clock.seconds()
        limit = self.config.offline_after_intervals
        for serial, session in list(self.sessions.items()):
            terminal = self.registry.get(serial)
            if terminal is None:
                self.sessions.pop(serial, None)
                continue
            if session.release_at is not None:
                if now >= session.release_at:
                    self.end_session(
                        terminal,
                        session.release_reason or 0,
                        _release_state(session.release_reason),
                        now,
                    )
                continue
            if now - session.last_valid > limit * session.interval:
                self._communication_failure(terminal, session, now)
                continue
            expiry = terminal.session_key_expiry
            if session.cipher is not None and expiry is not None and now > expiry + KEY_GRACE:
                # The terminal should have logged out with reason 8 at expiry (6.4.2).
                if not self.platform_logout(terminal, LogoutReason.EXPIRED):
                    self.end_session(terminal, LogoutReason.EXPIRED, TerminalState.LOGGED_OUT, now)
                continue
            if session.sync_deadline is not None and now >= session.sync_deadline:
                session.sync_deadline = None
                session.synced = True
                if self.router is not None:
                    if session.login_result == LoginResult.OK_SYNC:
                        self.router.sync_trap_missing(terminal)
                    self.router.kick(terminal)
        for serial, opening in list(self._openings.items()):
            # As long as its session would live without traffic (9.4).
            if now - opening.at > limit * opening.session.interval:
                del self._openings[serial]
        self._credential_upkeep(now)
        self.reassembly.expire(now)

    def _communication_failure(self, terminal: Terminal, session: Session, now: float) -> None:
        """Spec 9.4: LOGOUT reason 2 once on the IP bearer, then release OFFLINE."""
        log.info(
            "Terminal {serial} silent for {seconds:.0f} s: communication failure",
            serial=session.serial,
            seconds=now - session.last_valid,
        )
        if self.router is not None and self.platform_logout(terminal, LogoutReason.COMM_FAILURE):
            return
        self.end_session(terminal, LogoutReason.COMM_FAILURE, TerminalState.OFFLINE, now)

    def platform_logout(self, terminal: Terminal, reason: int) -> bool:
        """Send LOGOUT(reason) once on an IP bearer; release on the ACK or timeout (4.5).

        Returns False when there is no IP path (the caller releases at once).
        """
        session = self.sessions.get(terminal.serial or "")
        bearer = self.reachable(terminal)
        if session is None or bearer is None or bearer.kind == "sms" or self.router is None:
            return False
        session.release_at = self.clock.seconds() + self.config.answer_timeout_ip
        session.release_reason = reason
        self.router.send_logout(terminal, reason, bearer)
        return True

    def logout_answered(self, terminal: Terminal) -> None:
        """The terminal acknowledged the platform's LOGOUT: release now."""
        session = self.sessions.get(terminal.serial or "")
        if session is not None and session.release_at is not None:
            reason = session.release_reason or 0
            self.end_session(terminal, reason, _release_state(reason), self.clock.seconds())

    def bearer_lost(self, bearer: Bearer) -> None:
        """A TCP connection closed: the session survives it (10.2)."""
        serial = getattr(bearer, "bound_serial", None)
        session = self.sessions.get(serial) if serial else None
        if session is None:
            return
        if session.tcp is bearer:
            session.tcp = None
        if session.bearer is bearer:
            session.bearer = None
        if self.router is not None:
            terminal = self.registry.get(serial or "")
            if terminal is not None:
                self.router.bearer_lost(terminal, bearer)

    def restore_sessions(self) -> None:
        """After a restart, resume the sessions the registry says are open (9.1)."""
        now = self.clock.seconds()
        for terminal in self.registry.terminals():
            if terminal.state != TerminalState.LOGGED_IN or terminal.session_timestamp is None:
                continue
            try:
                session = Session.start(
                    terminal,
                    terminal.session_timestamp,
                    terminal.protocol_version or 0x0300,
                    self._interval(terminal),
                    now,
                )
            except (LookupError, ProtocolError):
                continue
            session.synced = True
            self.sessions[session.serial] = session
            self.schedule_credential_check(session.serial, now)

    # ------------------------------------------------------------------ credential upkeep

    def schedule_credential_check(self, serial: str, at: float) -> None:
        """Look at ``serial``'s credentials at ``at``, unless a check is due sooner (6.3.5)."""
        due = self._credential_due.get(serial)
        if due is not None and due <= at:
            return
        self._credential_due[serial] = at
        heapq.heappush(self._credential_heap, (at, serial))
        if len(self._credential_heap) > 2 * len(self._credential_due) + 64:
            # Rescheduling leaves stale entries behind: rebuild from the live ones.
            self._credential_heap = [(t, s) for s, t in self._credential_due.items()]
            heapq.heapify(self._credential_heap)

    def _credential_upkeep(self, now: float) -> None:
        """Renewal and re-delivery (6.3.5) for the logged-in terminals that are due."""
        while self._credential_heap and self._credential_heap[0][0] <= now:
            due, serial = heapq.heappop(self._credential_heap)
            if self._credential_due.get(serial) != due:
                continue
            del self._credential_due[serial]
            session = self.sessions.get(serial)
            terminal = self.registry.get(serial)
            if session is None or session.release_at is not None or terminal is None:
                # Not logged in: the next LOGIN schedules a check again.
                self._credential_sent.pop(serial, None)
                continue
            self.schedule_credential_check(serial, self._check_credentials(terminal, session, now))

    def _check_credentials(self, terminal: Terminal, session: Session, now: float) -> float:
        """Re-deliver an uncommitted pending set, or renew a current set within
        ``credential_renew_margin`` of its expiry; returns when to look again.

        A renewal replaces all three secrets, so that the first LOGIN under the new set
        verifies only under it and commits it (6.3.5).
        """
        serial = session.serial
        interval = self.config.credential_redeliver_interval
        pending = terminal.pending
        if pending is not None:
            sent = self._credential_sent.get(serial)
            queued_at = sent[1] if sent is not None and sent[0] is pending else None
            times = [t for t in (pending.delivered_at, queued_at) if t is not None]
            if not times:
                # Never queued in this run (e.g. before a restart): the clock starts now.
                self._credential_sent[serial] = (pending, now)
                return now + interval
            if now < max(times) + interval:
                return max(times) + interval
            action = "re-delivered"
        else:
            self._credential_sent.pop(serial, None)
            if terminal.current is None:
                return now + interval
            renew_at = _earliest_expiry(terminal.current) - self.config.credential_renew_margin
            if now < renew_at:
                return min(renew_at, now + interval)
            action = "renewed"
        if not self._credential_path(terminal, session):
            log.info(
                "Credentials of {serial} are due to be {action}, but there is neither a "
                "session key nor SMS to carry them (PD-21)",
                serial=serial,
                action=action,
            )
            return now + interval
        if pending is None:
            pending = terminal.pending = self.new_credentials(terminal.cipher, now)
        log.info("Credentials of {serial} {action}", serial=serial, action=action)
        self._send_credentials(terminal, pending, now)
        return now + interval

    def _credential_path(self, terminal: Terminal, session: Session) -> bool:
        """Whether an op 0 can travel now: encrypted in this session, or by SMS (PD-21).

        Without either the delivery would wait at the head of the terminal's queue and
        hold up every other platform request, so the upkeep does not queue one.
        """
        if session.cipher is not None:
            return True
        router = self.router
        return (
            router is not None
            and router.sms_bearer is not None
            and router.sms_bearer(terminal) is not None
        )

    def _send_credentials(self, terminal: Terminal, creds: CredentialSet, now: float) -> None:
        """Persist, queue SECURITY_CONFIG op 0 and start the re-delivery clock (6.3.5)."""
        serial = terminal.serial or ""
        self.registry.save(terminal)
        if self.router is not None:
            self.router.deliver_credentials(terminal, creds)
        self._credential_sent[serial] = (creds, now)
        self.schedule_credential_check(serial, now + self.config.credential_redeliver_interval)

    # ------------------------------------------------------------------ helpers

    def _set_state(self, terminal: Terminal, state: str, reason: int | None = None) -> None:
        """Change state and tell the observers; ``reason`` is the logout reason (5.3)."""
        old = terminal.state
        if old == state:
            return
        terminal.state = TerminalState(state)
        for observer in self.state_observers:
            observer(terminal, old, state, reason)

    def _refuse(
        self,
        ex: _Exchange,
        reason: Reason,
        detail: str,
        *,
        hint: str | None = None,
        **fields: object,
    ) -> None:
        """Report what this exchange is refused for, with its terminal keys; ``hint``
        names the compatibility profile that would accept it (issue #10)."""
        ex.refused = True
        self.refusals.report(reason, detail, hint=hint, **ex.log_keys, **fields)

    def _auth_failure(
        self,
        ex: _Exchange,
        terminal: Terminal,
        detail: str,
        *,
        reason: Reason = Reason.AUTH_FAILED,
        hint: str | None = None,
    ) -> None:
        """A message that failed authentication: counted on the record (6.2) and refused,
        with no message-log row (D-303)."""
        terminal.auth_failures += 1
        self._refuse(ex, reason, detail, hint=hint, failures=terminal.auth_failures)

    def _log(
        self,
        terminal: Terminal | None,
        serial: str,
        direction: str,
        bearer: Bearer,
        command_id: int,
        sequence_id: int,
        event: str,
        detail: str,
    ) -> None:
        self.registry.log(
            LogEntry(
                time=self.clock.seconds(),
                serial=terminal.serial if terminal else serial,
                direction=direction,
                bearer=bearer.kind,
                command_id=command_id,
                sequence_id=sequence_id,
                event=event,
                detail=detail,
            )
        )


def terminal_keys(header: Header, bearer: Bearer) -> dict[str, object]:
    """The keys every log event about a terminal's message carries (issue #8)."""
    return {
        "serial": header.serial,
        "command": header.command_name,
        "sequence_id": header.sequence_id,
        "bearer": bearer.kind,
        "peer": bearer.address,
    }


def _verifying_set(terminal: Terminal, frame: Frame) -> tuple[CredentialSet, DigestKey] | None:
    """The credential set (current, then pending) whose uplink password verifies a
    LOGIN's digest, with the downlink key of the answer (4.4 step 3)."""
    for creds in (terminal.current, terminal.pending):
        if creds is None:
            continue
        up, down = digest_keys(terminal, creds)
        if verify_frame(frame, 0, up):
            return creds, down
    return None


def _error_answer(command: int) -> m.Message | None:
    """The generic error answer of spec 4.2 rule 4; None for commands without one."""
    result = GENERIC_ERROR_RESULT.get(command)
    if result is None:
        return None
    cls = m.MESSAGE_TYPES[command | ACK_BIT]
    if cls is m.FileReqAck:
        return m.FileReqAck(0, result, 0, 0)
    return cls(result)  # type: ignore[call-arg]


def _requestable(tag: int, values: dict[int, bytes]) -> bool:
    """A CONFIG_REQ tag the platform can answer: known, not security, has a value (4.11)."""
    spec = tags.TAGS.get(tag)
    return spec is not None and not spec.is_security and tag in values


def _release_state(reason: int | None) -> TerminalState:
    return (
        TerminalState.OFFLINE if reason == LogoutReason.COMM_FAILURE else TerminalState.LOGGED_OUT
    )


def _earliest_expiry(creds: CredentialSet) -> int:
    return min(creds.uplink_expiry, creds.downlink_expiry, creds.base_key_expiry)


def _expired(creds: CredentialSet, now: float) -> bool:
    return _earliest_expiry(creds) < now


def _bound_serial(bearer: Bearer, serial: str | None) -> None:
    """Record on a TCP connection which session it is bound to (10.2)."""
    try:
        bearer.bound_serial = serial  # type: ignore[attr-defined]
    except AttributeError:
        pass


def _single_tlv(body: bytes, tag: int) -> bytes:
    tlvs = decode_tlvs(body)
    if len(tlvs) != 1 or tlvs[0].tag != tag:
        raise BodyError(f"body is not a single 0x{tag:04X} container")
    return tlvs[0].raw


def _summary(message: m.Message) -> str:
    fields = ", ".join(f"{k}={v!r}" for k, v in message.fields_dict().items())
    names = ", ".join(t.name for t in message.tlvs[:8])
    return f"{fields}; {names}" if names else fields

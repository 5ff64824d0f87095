"""The terminal role as a sans-I/O state machine (spec 4-10).

:class:`TerminalClient` is what a WMMP terminal does on the wire, h11 style: methods
such as :meth:`~TerminalClient.login` return the bytes of one message to send;
:meth:`~TerminalClient.receive` takes one complete message and returns typed events;
:meth:`~TerminalClient.tick` runs the answer timers that :meth:`~TerminalClient.next_deadline`
names. Answers to platform requests, retransmissions and follow-up messages (traps, next
fragments, a LOGOUT after new credentials) are collected for
:meth:`~TerminalClient.data_to_send`. Time is injected (``clock`` for sends, ``now`` for
receiving and timers) and the only randomness, AES IVs, comes from an injectable source,
so every byte is reproducible. It logs nothing: every outcome is an event for its driver.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from m2mgw.protocol import messages as m
from m2mgw.protocol import tags
from m2mgw.protocol.checksum import crc16_cmcc
from m2mgw.protocol.codec import FRAGMENT_FLAG, TAG_FRAGMENT, Frame, decode_frame, parse_frame
from m2mgw.protocol.compat import integers_swapped
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
)
from m2mgw.protocol.dupcache import CacheHit, ResponseCache
from m2mgw.protocol.errors import BodyError, ProtocolError
from m2mgw.protocol.fragment import (
    DEFAULT_THRESHOLD,
    Complete,
    Duplicate,
    FragmentAbort,
    FragmentPart,
    FragmentSender,
    NeedPart,
    Reassembler,
    ReassemblyTable,
    reply_to,
)
from m2mgw.protocol.header import Header
from m2mgw.protocol.security import (
    Cipher,
    DigestKey,
    base_key_proof,
    decode_session_key,
    verify,
)
from m2mgw.protocol.terminal._credentials import (
    CREDENTIAL_TAGS,
    Keyring,
    TerminalStateError,
    invalid_security_values,
    register_proofs,
)
from m2mgw.protocol.terminal._downloads import (
    FILE_BLOCK,
    DownloadInfoOffer,
    Transfer,
    parse_download_url,
)
from m2mgw.protocol.terminal._events import (
    Answer,
    CredentialsChanged,
    Discarded,
    DownloadOffered,
    Event,
    FileDownloaded,
    LoggedIn,
    LoggedOut,
    LoginFailed,
    PlatformRequest,
    ProtocolErrorEvent,
    Registered,
    RequestFailed,
    RequestTimedOut,
)
from m2mgw.protocol.terminal._habits import HABITS, StackHabits
from m2mgw.protocol.terminal._identity import (
    TerminalIdentity,
    applied_crc,
    heartbeat_interval,
    initial_config,
    is_security,
    settable,
    statistics,
    sync_crc,
    sync_tlvs,
)
from m2mgw.protocol.terminal._writer import Writer
from m2mgw.protocol.tlv import Tlv, find, tlv_dict

RECEIVED_KEPT = 100  # platform requests kept in ``received`` for inspection

# Timers per bearer (PD-10): (answer timeout, sends in all).
BEARER_TIMERS: dict[str, tuple[float, int]] = {
    "tcp": (15.0, 1),
    "udp": (15.0, 3),
    "sms": (180.0, 1),
}
_CONNECT_MODE = {"tcp": ConnectMode.TCP_LONG, "udp": ConnectMode.UDP_LONG, "sms": ConnectMode.SMS}

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
        self._answer_timeout, self._sends = BEARER_TIMERS[bearer]
        self._pending: dict[int, _Pending] = {}
        self._out: list[bytes] = []
        self._cache = ResponseCache(entries_per_terminal=8, max_terminals=1)
        self._reassembly = ReassemblyTable(max_entries=4)
        self.logged_in = False
        self.session_timestamp: int | None = None
        self.last_session_timestamp = 0
        self.session_key: str | None = None
        self._cipher: Cipher | None = None
        self._keys = Keyring(identity, random)
        self.received: deque[m.Message] = deque(maxlen=RECEIVED_KEPT)
        self.stats = {"sent": 0, "received": 0, "bytes": 0}
        self._writer = Writer(
            identity, self._keys, self.stats, bearer=bearer, habits=habits, version=version,
            encrypt_bodies=encrypt_bodies, first_sequence=first_sequence,
            fragment_threshold=fragment_threshold,
        )  # fmt: skip
        self.config = initial_config(identity, _CONNECT_MODE[bearer])

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
        return heartbeat_interval(self.config)

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
            creds = self._keys.require()
            key_imsi = body_imsi if op == RegisterOp.PRESET_CREDENTIALS else self.identity.imsi
            key, sign = self._keys.digest_key(key_imsi, creds.uplink_password), True
            flag = Flag.AUTH
            if op == RegisterOp.PRESET_CREDENTIALS:
                message.tlvs = register_proofs(creds)
                if self.habits.unsigned_register_op3:  # PD-06: the proofs alone
                    key, sign = None, False
        elif op == RegisterOp.NEW:
            flag = Flag.AUTH
        elif op == RegisterOp.CLEARED:
            message.tlvs = [Tlv.of(tags.CLEAR_PASSWORDS, 0x0E)]
        return self._request(message, flag=flag, timestamp=0, sign=sign, key=key, context=body_imsi)

    def login(self, request_session_key: bool = False) -> bytes:
        """LOGIN (4.4): digest with timestamp 0; flag ``0xE0`` and ``E03A`` for a key."""
        creds = self._keys.require()
        crc = 0 if self.habits.zero_sync_crc else sync_crc(self.sync_tags, self.config)
        message = m.Login(self.identity.software_version, crc)
        flag = Flag.AUTH
        if request_session_key:
            if self.identity.cipher is None or creds.base_key is None:
                raise TerminalStateError("a session key needs a cipher profile and a base key")
            message.tlvs = [
                Tlv(tags.BASE_KEY_PROOF, base_key_proof(creds.base_key, creds.base_key_expiry))
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
        values = zip(tags.ALARM_TAGS, (status, alarm_type, code, restore), strict=True)
        return self.trap([Tlv.of(tag, value) for tag, value in values if value is not None])

    def sync_trap(self) -> bytes:
        """CONFIG_TRAP with ``0x0025`` and every sync TLV that has a value (4.4)."""
        return self.trap(sync_tlvs(self.sync_tags, self.config))

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
        tlvs = [Tlv(m.TAG_CMD_FIXED, fixed), Tlv(m.TAG_USER_DATA, command)]
        return self._request(m.TransparentCmd(tlvs=([address] if address else []) + tlvs))

    def config_req(self, wanted: Iterable[int]) -> bytes:
        """CONFIG_REQ (4.11): zero-length TLVs naming the wanted tags."""
        return self._request(m.ConfigReq(tlvs=[Tlv.query(t) for t in wanted]))

    def security_config(self, op: int, tlvs: Iterable[Tlv] = ()) -> bytes:
        """SECURITY_CONFIG from the terminal: op 4 (report) or op 6 (renewal) (4.13)."""
        return self._request(m.SecurityConfig(op, tlvs=list(tlvs)), flag=Flag.AUTH)

    def file_req(self, trans_id: int, status: int, offset: int, size: int) -> bytes:
        """One raw FILE_REQ (4.15); :meth:`download_file` runs a whole transfer."""
        return self._request(m.FileReq(trans_id, status, offset, size))

    def download_file(self, offer: DownloadInfoOffer, block: int = FILE_BLOCK) -> bytes:
        """Start a FILE_REQ transfer; it continues by itself and ends in FileDownloaded."""
        transfer = Transfer(offer, block)
        return self._request(
            m.FileReq(offer.trans_id, FileReqStatus.BLOCK, 0, block), context=transfer
        )

    # -- output, timers -------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """Messages to send, in sending order: answers, retransmissions and follow-ups
        generated since the last call (each returned once)."""
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do, or None."""
        return min((p.deadline for p in self._pending.values()), default=None)

    def tick(self, now: float) -> list[Event]:
        """Retransmit what is due (UDP: same bytes, 3 sends) and give up on the rest.

        Retransmissions, and the follow-up of giving up on a LOGOUT 9 (the re-login
        with the new credentials), go to :meth:`data_to_send`.
        """
        events: list[Event] = []
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            if pending.sends < self._sends:
                pending.sends += 1
                pending.deadline = now + self._answer_timeout
                self._writer.count(pending.frame)
                self._out.append(pending.frame)
                continue
            del self._pending[pending.sequence_id]
            events.append(RequestTimedOut(pending.command, pending.sequence_id))
            if pending.command == Command.LOGOUT:
                events.extend(self._logged_out(pending, by_platform=False))
        self._reassembly.expire(now)
        return events

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
            if self._keys.downlink is None:
                raise ProtocolError("signed message but no credentials to verify it")
            if not verify(frame.raw, timestamp, self._keys.downlink):
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
                self.session_key, expiry = decode_session_key(self._keys.base_cipher(), box)
                self._cipher = self._keys.cipher(self.session_key)
            except ProtocolError as exc:
                self.session_key = None
                events.append(ProtocolErrorEvent(f"E040 unusable: {exc.reason}"))
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
                    self._out.append(self._part_frame(pending, exc.reply))
                return [self._fail(pending, exc.reason)]
            self._resend_as(pending, self._part_frame(pending, nxt), now)
            return []
        if pending.reassembler is None:
            pending.reassembler = Reassembler()
        outcome = pending.reassembler.feed(part, now)
        if isinstance(outcome, Complete):
            body_frame = Frame(frame.header, b"", outcome.body, None)
            return self._complete(pending, decode_frame(body_frame, self._cipher), True)
        reply = reply_to(outcome)
        if isinstance(outcome, NeedPart | Duplicate):
            if reply is not None:
                self._resend_as(pending, self._part_frame(pending, reply), now)
            return []
        if reply is not None:  # Abort
            self._out.append(self._part_frame(pending, reply))
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
        elif isinstance(message, m.FileReqAck) and isinstance(pending.context, Transfer):
            events.extend(self._on_file_block(message, pending.context))
        return events

    def _on_register_ack(self, ack: m.RegisterAck, pending: _Pending, signed: bool) -> list[Event]:
        """Adopt the serial and (after a re-bind) the body IMSI as the registered one."""
        result = 1 if ack.result == 9 else ack.result
        if result in m.RegisterAck.SERIAL_RESULTS and ack.serial:
            self.identity.serial = ack.serial
            self.identity.imsi = pending.context
            self.config[tags.TERMINAL_SERIAL] = ack.serial.encode("latin-1")
            self.config[tags.IMSI] = pending.context.encode("ascii")
            self._keys.rekey()
        return [Registered(result, ack.serial, signed)]

    def _logged_out(self, pending: _Pending, *, by_platform: bool) -> list[Event]:
        """End the session; after SECURITY_CONFIG op 0, switch credentials and log in."""
        reason = pending.context if isinstance(pending.context, int) else 0
        self._end_session()
        events: list[Event] = [LoggedOut(reason, by_platform)]
        if (staged := self._keys.staged) is not None:
            events.append(CredentialsChanged(staged))
            self._keys.adopt()
            self._out.append(self.login(request_session_key=self.want_session_key))
        return events

    def _fail(self, pending: _Pending, reason: str) -> RequestFailed:
        self._pending.pop(pending.sequence_id, None)
        return RequestFailed(pending.command, pending.sequence_id, reason)

    def _on_file_block(self, ack: m.FileReqAck, transfer: Transfer) -> list[Event]:
        """Ask for the next block, or end the transfer (4.15)."""
        request, ok = transfer.on_block(ack)
        self._out.append(self._request(request, context=transfer if ok is None else None))
        if ok is None:
            return []
        return [FileDownloaded(transfer.offer.trans_id, ok, bytes(transfer.data))]

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
        reply = reply_to(outcome)
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
            ack_type = m.MESSAGE_TYPES[header.command_id | ACK_BIT]
            error_answer = cast(Callable[[int], m.Message], ack_type)(result)  # result first
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
        flag: int = Flag.AUTH if header.command_id == Command.SECURITY_CONFIG else Flag.NONE
        body, flag, _ = self._writer.seal(reply.COMMAND, reply.encode_body(), flag, self._cipher)
        self._send_answer(header, body, flag, key, raw, now)

    def _send_answer(
        self, header: Header, body: bytes, flag: int, key: tuple[str, int, int, int],
        raw: bytes, now: float,
    ) -> None:  # fmt: skip
        """Queue an answer and cache it for a repeated request (8.2)."""
        answer = self._writer.answer(header, body, flag, self._timestamp())
        self._cache.store(key, raw, [answer], now)
        self._out.append(answer)

    def _config_get(self, header: Header, msg: m.Message, follow: list) -> tuple[m.Message, list]:
        """CONFIG_GET (4.8): the values from the store, or ret 1 with the missing tags."""
        missing = [t.tag for t in msg.tlvs if t.tag not in self.config or is_security(t.tag)]
        if missing:
            return m.ConfigGetAck(1, tlvs=[Tlv.query(t) for t in missing]), []
        return m.ConfigGetAck(0, tlvs=[Tlv(t.tag, self.config[t.tag]) for t in msg.tlvs]), []

    def _config_set(self, header: Header, msg: m.Message, follow: list) -> tuple[m.Message, list]:
        """CONFIG_SET (4.10): validate, ACK, apply, then trap ``0x4010`` + ``0x4017``."""
        rejected = [t.tag for t in msg.tlvs if not settable(t)]
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
        report = Tlv.of(tags.EXEC_REPORT, (0, header.sequence_id))
        if code == RemoteControl.REQUEST_LOGIN and not self.logged_in:
            follow.append(lambda: self.login(request_session_key=self.want_session_key))
        elif code == RemoteControl.REPORT_STATISTICS:
            follow.append(lambda: self.trap([*statistics(self.stats["bytes"]), report]))
        elif code == RemoteControl.REPORT_SYNC_TAGS:
            follow.append(lambda: self.trap([*sync_tlvs(self.sync_tags, self.config), report]))
        return m.RemoteCtrlAck(0), []

    def _download_info(self, header: Header, msg: m.Message, fw: list) -> tuple[m.Message, list]:
        """DOWNLOAD_INFO (4.14): result 1 for a usable URL, 4 otherwise (5.6)."""
        assert isinstance(msg, m.DownloadInfo)
        force = find(msg.tlvs, tags.FORCE_UPDATE)
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
            values, failing = self._keys.read(msg.op, [t.tag for t in msg.tlvs])
            plaintext = msg.op == SecurityOp.READ and not self._writer.encrypting(
                Command.SECURITY_CONFIG, self._cipher
            )
            if failing or plaintext:  # secrets only inside E042 (PD-21)
                return m.SecurityConfigAck(2, tlvs=[Tlv.query(t) for t in failing]), []
            return m.SecurityConfigAck(0, tlvs=values), []
        return m.SecurityConfigAck(2), []

    def _security_set(self, msg: m.SecurityConfig, follow: list) -> tuple[m.Message, list]:
        """Store op-0 values; the ACK and a LOGOUT 9 still use the old set (6.3.5)."""
        values = tlv_dict(msg.tlvs)
        failing = invalid_security_values(values)
        if failing:
            return m.SecurityConfigAck(2, tlvs=[Tlv.query(t) for t in failing]), []
        for tag, raw in values.items():
            if tag not in CREDENTIAL_TAGS:
                self.config[tag] = raw
        new = self._keys.stage(values)
        if new is None:
            return m.SecurityConfigAck(0), []
        if self.logged_in:
            follow.append(lambda: self.logout(LogoutReason.CREDENTIALS_CHANGED))
            return m.SecurityConfigAck(0), []
        follow.append(self._keys.adopt)  # after the ACK, signed under the old set
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
            key = self._keys.uplink
            if key is None and self.bearer != "sms":
                raise TerminalStateError(f"{self.serial} has no credentials to sign with")
        sequence_id = self._writer.next_sequence()
        if habits.little_endian:  # C6
            message.tlvs = integers_swapped(message.tlvs)
        body, flag, encrypted = self._writer.seal(
            command, message.encode_body(), self._writer.flag(flag), self._cipher
        )
        pending = _Pending(
            command, sequence_id, b"", timestamp,
            self._clock() + self._answer_timeout, encrypted, sign, context=context,
        )  # fmt: skip
        pending.sender = self._writer.fragments(body)
        if pending.sender is not None:
            pending.frame = self._part_frame(pending, pending.sender.first())
        else:
            pending.frame = self._writer.request(
                command, sequence_id, body, flag=flag, timestamp=timestamp,
                key=key if sign else None,
            )  # fmt: skip
        self._pending[sequence_id] = pending
        return pending.frame

    def _part_frame(self, pending: _Pending, part: FragmentPart) -> bytes:
        """One ``4008`` message of ``pending``'s exchange."""
        return self._writer.part(
            pending.command, pending.sequence_id, part, encrypted=pending.encrypted,
            timestamp=pending.timestamp,
        )  # fmt: skip

    def _resend_as(self, pending: _Pending, frame: bytes, now: float) -> None:
        """Move ``pending`` on to a new message of the same exchange (new timer, 7.5)."""
        pending.frame, pending.sends, pending.deadline = frame, 1, now + self._answer_timeout
        self._out.append(frame)

    def _timestamp(self) -> int:
        """The session timestamp, or the last one after the session ended (6.2)."""
        if self.session_timestamp is not None:
            return self.session_timestamp
        return self.last_session_timestamp

    def _end_session(self) -> None:
        if self.session_timestamp is not None:
            self.last_session_timestamp = self.session_timestamp
        self.logged_in = False
        self.session_timestamp = None
        self.session_key = None
        self._cipher = None

    def _apply_config(self, tlvs: list[Tlv], sequence_id: int) -> bytes:
        """Store applied values; the report to send is a trap ``0x4010`` + ``0x4017`` (4.10)."""
        for tag, raw in tlv_dict(tlvs).items():
            self.config[tag] = raw
            if tag == tags.SYNC_LIST:
                self.identity.sync_tags = tuple(Tlv(tag, raw).value)
        report = [
            Tlv.of(tags.EXEC_REPORT, (0, sequence_id)),
            Tlv.of(tags.CONFIG_CRC, applied_crc(tlvs)),
        ]
        return self.trap(report)


def _address(ec_code: str | None, serial: str | None) -> Tlv | None:
    """The destination TLV of an uplink: a terminal serial or an EC code (4.7)."""
    if serial is not None:
        return Tlv.of(m.TAG_DEST_SERIAL, serial)
    if ec_code is not None:
        return Tlv.of(m.TAG_DEST_EC, ec_code)
    return None


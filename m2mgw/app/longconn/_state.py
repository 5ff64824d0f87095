"""The session core both ends of a long connection share (6.6, 6.7, 7.4).

Sans-I/O like h11: bytes and time in (:meth:`~SessionCore.receive_data`,
:meth:`~SessionCore.tick`), events and bytes out (:meth:`~SessionCore.data_to_send`),
and :meth:`~SessionCore.next_deadline` for the adapter's one timer. Framing, digests,
encryption, the window of outstanding requests, answer timeouts, duplicates and the
part exchanges of fragmented messages are here; the login, the key updates and the
heartbeat rules of each side are in :mod:`m2mgw.app.longconn._connection`.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from twisted.logger import Logger

from m2mgw.app import operations as ops
from m2mgw.app.digest import lc_sign, lc_verify
from m2mgw.app.longconn._events import (
    AnswerReceived,
    Closed,
    Event,
    LogoutReceived,
    RequestFailed,
    RequestReceived,
)
from m2mgw.app.longconn._layouts import LAYOUTS, command_for, decode_body, encode_body, seal_body
from m2mgw.app.longconn._values import U32
from m2mgw.app.longconn._wire import (
    CONTAINER_FLAG,
    DIGEST_FLAG,
    PROTOCOL_VERSION,
    BodyError,
    Command,
    Frame,
    HeaderError,
    LongConnError,
    SessionError,
    Tag,
    build_unsigned,
    command_name,
    fragment_of,
    open_body,
    parse_frame,
    reassembled,
    sign_frame,
)
from m2mgw.protocol.constants import ACK_BIT
from m2mgw.protocol.errors import FramingError
from m2mgw.protocol.fragment import (
    Abort,
    Complete,
    Ended,
    FragmentAbort,
    FragmentLimits,
    FragmentOp,
    FragmentPart,
    FragmentSender,
    ReassemblyEvent,
    ReassemblyTable,
    TransIdCounter,
    reply_to,
)
from m2mgw.protocol.framing import StreamFramer
from m2mgw.protocol.security import Cipher

#: One namespace for the package's log events, the module's before it became one.
log = Logger(namespace="m2mgw.app.longconn")

ANSWER_TIMEOUT = 15.0
WINDOW = 16
LOGIN_TIMEOUT = 60.0
HEARTBEAT_DEFAULT, HEARTBEAT_MIN, HEARTBEAT_MAX = 60, 10, 600
DUPLICATE_WINDOW = 300.0
SESSION_TTL = 86_400
#: The platform replaces a Session Key (APP_KEY_UPDATE type 1) at this fraction of its
#: life, ``session_ttl``, and the new key lives ``session_ttl`` again (D-343).
KEY_REFRESH_AT = 0.9
#: Seconds until a refresh that could not be sent yet (the window full, another key
#: update or a part exchange open, the login not confirmed) is tried again.
KEY_REFRESH_RETRY = 1.0
MAX_TIMEOUTS_IN_A_ROW = 3
#: 6.7: bodies longer than this (after encryption) travel in ``4008`` parts ...
FRAGMENT_THRESHOLD = 60_000
#: ... and a reassembly holds at most 4,200,000 bytes in 128 parts, 60 s idle.
REASSEMBLY_LIMITS = FragmentLimits(max_bytes=4_200_000, max_parts=128, idle_timeout=60.0)


@dataclass(frozen=True, slots=True)
class AppCredentials:
    """What the platform knows of an application, and what the application knows itself."""

    app_id: str
    password: str = field(repr=False)
    base_key: str = field(repr=False)
    profile: str = "legacy"


class State(Enum):
    AWAIT_LOGIN = "await-login"
    LOGIN_SENT = "login-sent"  # client
    LOGIN_PENDING = "login-pending"  # platform, waiting for accept/reject
    ACTIVE = "active"
    ENDED = "ended"  # logout exchanged, waiting for the close
    CLOSED = "closed"


@dataclass(slots=True)
class Outstanding:
    command_id: int
    payload: Any
    deadline: float
    sender: FragmentSender | None = None  # a fragmented request (6.7)


@dataclass(slots=True)
class _AnswerParts:
    """An own fragmented answer: the peer asks for each next part ([T] 7.3)."""

    sender: FragmentSender
    last_activity: float


@dataclass(slots=True)
class _Incoming:
    command_id: int
    encrypted: bool
    digest: bytes


_NEVER_ENCRYPTED = frozenset({Command.APP_LOGIN, Command.APP_HEARTBEAT})


def clamp_heartbeat(requested: int | None) -> int:
    """The granted heartbeat C: requested ``0x5001`` clamped to 10–600 s, default 60 (6.6)."""
    if not requested:
        return HEARTBEAT_DEFAULT
    return max(HEARTBEAT_MIN, min(HEARTBEAT_MAX, requested))


# --- session core ------------------------------------------------------------------------


class SessionCore:
    """What both ends share: framing, digests, encryption, window, timeouts, duplicates."""

    role = "?"
    _own_requests: frozenset[int] = frozenset()
    _peer_requests: frozenset[int] = frozenset()

    def __init__(self, now: float) -> None:
        self.state = State.AWAIT_LOGIN
        self.app_id: str | None = None
        self.credentials: AppCredentials | None = None
        self.timestamp = 0
        self.heartbeat = HEARTBEAT_DEFAULT
        self.cipher: Cipher | None = None
        self.encrypt_requests = False
        #: Seconds an own request waits for its answer (AD-10); an application may wait
        #: longer, e.g. for a GetConfig sync that the platform answers after sync_wait.
        self.answer_timeout = ANSWER_TIMEOUT
        self._framer = StreamFramer()
        self._out = bytearray()
        self._events: list[Event] = []
        self._next_seq = 1
        self._outstanding: dict[int, Outstanding] = {}
        self._incoming: dict[int, _Incoming] = {}
        self._answers: dict[tuple[int, int], tuple[float, bytes, bytes]] = {}
        self._timeouts_in_a_row = 0
        self.last_sent = self.last_received = self.connected_at = now
        # 6.7: one table for the peer's fragmented requests and answers, so that all
        # of them together hold at most one reassembly's worth of bytes.
        self._trans_ids = TransIdCounter()
        self._reassembly = ReassemblyTable(REASSEMBLY_LIMITS, max_entries=2 * WINDOW,
                                           max_total_bytes=REASSEMBLY_LIMITS.max_bytes)
        self._last_part_at: float | None = None
        self._answer_parts: dict[tuple[int, int], _AnswerParts] = {}

    # public API ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def data_to_send(self) -> bytes:
        """Bytes to write to the transport, in order; each byte is returned once."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes from the transport; returns the events they caused."""
        if self.closed:
            return []
        try:
            frames = self._framer.feed(data)
        except FramingError as exc:
            self._log_discard(None, str(exc))
            self._close("framing error")
            return self._take_events()
        for raw in frames:
            if self.closed:
                break
            self.last_received = now
            try:
                self._on_frame(parse_frame(raw), now)
            except LongConnError as exc:
                self._log_discard(raw, exc.reason)
        return self._take_events()

    def send_request(self, payload: object, now: float) -> int:
        """Queue a request to the peer; returns its Sequence_ID (answer or failure follows)."""
        command_id = command_for(payload)
        if command_id not in self._own_requests:
            raise SessionError(f"{self.role} cannot send {command_name(command_id)}")
        self._check_can_send(command_id)
        return self._send_request(command_id, payload, now)

    def answer(self, sequence_id: int, response: object, now: float) -> None:
        """Answer a :class:`RequestReceived`; encrypted if the request was (7.4)."""
        pending = self._incoming.pop(sequence_id, None)
        if pending is None:
            raise SessionError(f"no unanswered request with Sequence_ID {sequence_id}")
        command_id = command_for(response)
        if command_id != pending.command_id | ACK_BIT:
            self._incoming[sequence_id] = pending
            raise SessionError(f"{type(response).__name__} does not answer "
                               f"{command_name(pending.command_id)}")
        if self.closed:
            return
        raw, sender = self._encode(command_id, sequence_id, response,
                                   encrypt=pending.encrypted and self.cipher is not None)
        if sender is not None:
            self._answer_parts[(pending.command_id, sequence_id)] = _AnswerParts(sender, now)
        self._answers[(pending.command_id, sequence_id)] = (now, pending.digest, raw)
        self._write(raw, now)

    def logout(self, now: float, reason: int = 0) -> int:
        """Send APP_LOGOUT; the session closes when its ACK arrives (6.5.2)."""
        if self.state is not State.ACTIVE:
            raise SessionError("no session to log out of")
        return self._send_request(Command.APP_LOGOUT, ops.Logout(reason=reason), now)

    def connection_lost(self, now: float) -> list[Event]:
        """The transport closed: fail every outstanding request and discard the key."""
        self._close("connection lost")
        return self._take_events()

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work to do (for the adapter's ``callLater``)."""
        if self.closed:
            return None
        times = [p.deadline for p in self._outstanding.values()]
        times.extend(self._timer_deadlines())
        idle = REASSEMBLY_LIMITS.idle_timeout
        times.extend(x.last_activity + idle for x in self._answer_parts.values())
        if len(self._reassembly) and self._last_part_at is not None:
            times.append(self._last_part_at + idle)  # every reassembly is idle by then
        return min(times) if times else None

    def tick(self, now: float) -> list[Event]:
        """Run the timers due at ``now``."""
        if not self.closed:
            for seq, pending in sorted(self._outstanding.items()):
                if pending.deadline <= now and seq in self._outstanding:
                    del self._outstanding[seq]
                    self._timeouts_in_a_row += 1
                    self._on_timeout(seq, pending, now)
            if not self.closed:
                self._on_timers(now)
            self._expire_answers(now)
            self._expire_fragments(now)
        return self._take_events()

    # role hooks ---------------------------------------------------------------------------

    def _timer_deadlines(self) -> list[float]:
        raise NotImplementedError

    def _on_timers(self, now: float) -> None:
        raise NotImplementedError

    def _on_before_login(self, frame: Frame, now: float) -> None:
        raise NotImplementedError

    def _on_verified(self, frame: Frame) -> None:
        """A frame of the session passed its digest check."""

    def _on_answer(self, seq: int, pending: Outstanding, response: Any, now: float) -> None:
        self._events.append(AnswerReceived(seq, pending.command_id, pending.payload, response))

    def _on_request(self, frame: Frame, payload: Any, encrypted: bool, now: float) -> None:
        self._incoming[frame.header.sequence_id] = _Incoming(
            frame.header.command_id, encrypted, hashlib.sha256(frame.raw).digest()
        )
        self._events.append(
            RequestReceived(frame.header.sequence_id, frame.header.command_id, payload, encrypted)
        )

    def _on_timeout(self, seq: int, pending: Outstanding, now: float) -> None:
        self._events.append(RequestFailed(seq, pending.command_id, pending.payload, "timeout"))

    def _check_can_send(self, command_id: int) -> None:
        if self.state is not State.ACTIVE:
            raise SessionError(f"cannot send in state {self.state.value}")
        if len(self._outstanding) >= WINDOW:
            raise SessionError("window of outstanding requests is full")

    # internals ----------------------------------------------------------------------------

    def _take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _log_discard(self, raw: bytes | None, reason: str) -> None:
        seq = struct.unpack_from(">I", raw, 4)[0] if raw and len(raw) >= 8 else None
        log.warn(
            "long connection ({role}) discarded {size} bytes (seq={seq}): {reason}",
            role=self.role, app_id=self.app_id, seq=seq, size=len(raw or b""), reason=reason,
        )

    def _write(self, raw: bytes, now: float) -> None:
        self._out += raw
        self.last_sent = now

    def _digest_ts(self, command_id: int, payload: object) -> int:
        if command_id == Command.APP_LOGIN:
            return 0
        if command_id == Command.APP_LOGIN | ACK_BIT:
            return getattr(payload, "server_time", None) or 0
        return self.timestamp

    def _signer(self) -> tuple[str, AppCredentials]:
        creds = self.credentials
        if creds is None or self.app_id is None:
            raise SessionError("no credentials to sign with")
        return self.app_id, creds

    def _encode(
        self, command_id: int, seq: int, payload: object, *, encrypt: bool
    ) -> tuple[bytes, FragmentSender | None]:
        """The message, or its first part and the sender of the rest (6.7, [T] 6.4.4)."""
        app_id, creds = self._signer()
        body, flags = seal_body(command_id, payload, self.cipher if encrypt else None)
        if len(body) <= FRAGMENT_THRESHOLD:
            raw = sign_frame(command_id, seq, app_id, body, flags, password=creds.password,
                             timestamp=self._digest_ts(command_id, payload))
            return raw, None
        if len(body) > REASSEMBLY_LIMITS.max_bytes:
            raise BodyError(f"{command_name(command_id)} body of {len(body)} bytes exceeds "
                            f"the reassembly bound", ops.ResultCode.TOO_LARGE)
        sender = FragmentSender(body, self._trans_ids.next(), FRAGMENT_THRESHOLD)
        return self._part_frame(command_id, seq, sender.first()), sender

    def _part_frame(self, command_id: int, seq: int, part: FragmentPart) -> bytes:
        """One ``4008`` message: flag ``0x30``, its own digest (6.2, 6.7)."""
        app_id, creds = self._signer()
        return sign_frame(command_id, seq, app_id, part.encode_tlv(), CONTAINER_FLAG,
                          timestamp=self.timestamp, password=creds.password)

    def _send_request(self, command_id: int, payload: object, now: float) -> int:
        seq = self._next_seq
        encrypt = (
            self.encrypt_requests and self.cipher is not None
            and command_id not in _NEVER_ENCRYPTED
        )
        raw, sender = self._encode(command_id, seq, payload, encrypt=encrypt)
        self._next_seq = ops.next_id(seq)
        self._outstanding[seq] = Outstanding(
            command_id, payload, now + self.answer_timeout, sender
        )
        self._write(raw, now)
        return seq

    def _answer_result(self, frame: Frame, result: int, now: float, *,
                       signed: bool = True) -> None:
        """Answer a request we do not process with a bare result (3, 8, 9, 11, 12)."""
        command_id = frame.header.command_id | ACK_BIT
        layout = LAYOUTS.get(command_id)
        payload = layout.cls(result_code=result) if layout else ops.Response(result_code=result)
        body = encode_body(command_id, payload) if layout else bytes([result])
        flags = DIGEST_FLAG if signed else 0
        raw = build_unsigned(command_id, frame.header.sequence_id, frame.header.app_id, body,
                             flags)
        if signed and self.credentials is not None:
            raw = lc_sign(raw, self._digest_ts(command_id, payload), self.credentials.app_id,
                          self.credentials.password)
        self._write(raw, now)

    def _verified(self, frame: Frame) -> bool:
        creds = self.credentials
        if creds is None or not frame.signed:
            return False
        ts = self.timestamp
        if frame.header.command_id == Command.APP_LOGIN:
            ts = 0
        elif frame.header.command_id == Command.APP_LOGIN | ACK_BIT:
            ts = U32.unpack(frame.body[1:5]) if len(frame.body) >= 5 else 0
        return lc_verify(frame.raw, ts, creds.app_id, creds.password)

    def _on_frame(self, frame: Frame, now: float) -> None:
        header = frame.header
        if self.state in (State.AWAIT_LOGIN, State.LOGIN_SENT, State.LOGIN_PENDING):
            self._on_before_login(frame, now)
            return
        if header.app_id != self.app_id:
            raise HeaderError(f"AppID {header.app_id!r} on the session of {self.app_id!r}")
        if not self._verified(frame):
            raise HeaderError(f"{command_name(header.command_id)}: digest does not verify")
        self._on_verified(frame)
        if header.is_ack:
            self._on_ack_frame(frame, now)
        else:
            self._on_request_frame(frame, now)

    def _on_ack_frame(self, frame: Frame, now: float) -> None:
        seq = frame.header.sequence_id
        pending = self._outstanding.get(seq)
        if pending is None or frame.header.command_id != pending.command_id | ACK_BIT:
            raise HeaderError(f"answer seq={seq} matches no outstanding request")
        if frame.container == Tag.FRAGMENT:
            self._on_ack_part(frame, pending, now)
        else:
            self._finish_request(frame, pending, now)

    def _finish_request(self, frame: Frame, pending: Outstanding, now: float) -> None:
        """The (possibly reassembled) answer to an own request."""
        seq = frame.header.sequence_id
        body, encrypted = open_body(frame, self.cipher)
        response = decode_body(frame.header.command_id, body,
                               padded=encrypted and self._legacy)
        del self._outstanding[seq]
        self._timeouts_in_a_row = 0
        self._on_answer(seq, pending, response, now)

    @property
    def _legacy(self) -> bool:
        return self.credentials is not None and self.credentials.profile == "legacy"

    def _replay(self, frame: Frame, now: float) -> bool:
        """Handle a duplicate request (6.6): replay its cached answer, or wait for it."""
        header = frame.header
        fingerprint = hashlib.sha256(frame.raw).digest()
        cached = self._answers.get((header.command_id, header.sequence_id))
        if cached is not None and cached[1] == fingerprint and now - cached[0] <= DUPLICATE_WINDOW:
            self._write(cached[2], now)
            return True
        pending = self._incoming.get(header.sequence_id)
        # A duplicate of a request still being processed is ignored: its answer follows.
        return pending is not None and pending.digest == fingerprint

    def _on_request_frame(self, frame: Frame, now: float) -> None:
        header = frame.header
        if self._replay(frame, now):
            return
        if header.version != PROTOCOL_VERSION:
            self._answer_result(frame, ops.ResultCode.UNSUPPORTED, now)
            return
        if header.command_id not in self._peer_requests:
            self._answer_result(frame, ops.ResultCode.UNSUPPORTED, now)
            return
        if frame.container == Tag.FRAGMENT:
            self._on_request_part(frame, now)
        else:
            self._process_request(frame, now)

    def _process_request(self, frame: Frame, now: float) -> None:
        """A whole (possibly reassembled) peer request: window, decryption, decoding."""
        header = frame.header
        if len(self._incoming) >= WINDOW:
            self._answer_result(frame, ops.ResultCode.RATE_LIMITED, now)
            return
        try:
            body, encrypted = open_body(frame, self.cipher)
            payload = decode_body(header.command_id, body, padded=encrypted and self._legacy)
        except LongConnError as exc:
            self._log_discard(frame.raw, exc.reason)
            self._answer_result(frame, exc.result or ops.ResultCode.BAD_PARAMETER, now)
            return
        self._dispatch(frame, payload, encrypted, now)

    def _dispatch(self, frame: Frame, payload: Any, encrypted: bool, now: float) -> None:
        """Session-level requests are handled here; the rest become events."""
        command_id = frame.header.command_id
        if command_id == Command.APP_HEARTBEAT:
            self._on_request(frame, payload, encrypted, now)
            self._events.pop()
            self.answer(frame.header.sequence_id, ops.HeartbeatResponse(), now)
        elif command_id == Command.APP_LOGOUT:
            self._on_request(frame, payload, encrypted, now)
            self._events.pop()
            self.answer(frame.header.sequence_id, ops.LogoutResponse(), now)
            self._events.append(LogoutReceived(payload.reason))
            self._end_session(now)
        else:
            self._on_request(frame, payload, encrypted, now)

    # fragmentation (6.7, [T] section 7) ----------------------------------------------------

    def _on_ack_part(self, frame: Frame, pending: Outstanding, now: float) -> None:
        """A ``4008`` answer: the next part wanted of our request, or a part of the answer."""
        seq = frame.header.sequence_id
        part = fragment_of(frame)
        self._timeouts_in_a_row = 0
        pending.deadline = now + self.answer_timeout
        if pending.sender is not None and not pending.sender.done:
            try:
                self._write(self._part_frame(pending.command_id, seq,
                                             pending.sender.on_answer(part)), now)
            except FragmentAbort as exc:
                if exc.reply is not None:
                    self._write(self._part_frame(pending.command_id, seq, exc.reply), now)
                self._fail_request(seq, exc.reason)
            return
        # A fragmented answer: we ask for each part in the request Command_ID, s' = s.
        outcome = self._feed("answer", pending.command_id, seq, part, now)
        if isinstance(outcome, Complete):
            self._finish_request(reassembled(frame, outcome.body), pending, now)
            return
        reply = reply_to(outcome)
        if reply is not None:
            self._write(self._part_frame(pending.command_id, seq, reply), now)
        if isinstance(outcome, Abort | Ended):
            self._fail_request(seq, "the answer's part exchange ended")

    def _on_request_part(self, frame: Frame, now: float) -> None:
        """A ``4008`` request: a part of the peer's request, or a wish for our answer's next."""
        header = frame.header
        ack = header.command_id | ACK_BIT
        try:
            part = fragment_of(frame)
        except BodyError as exc:
            self._log_discard(frame.raw, exc.reason)
            self._answer_result(frame, ops.ResultCode.BAD_PARAMETER, now)
            return
        if part.op in (FragmentOp.NEXT, FragmentOp.RECEIVER_ABORT):
            self._next_answer_part(header.command_id, header.sequence_id, part, now)
            return
        outcome = self._feed("request", header.command_id, header.sequence_id, part, now)
        if isinstance(outcome, Complete):
            self._process_request(reassembled(frame, outcome.body), now)
            return
        reply = reply_to(outcome)
        if reply is not None:
            self._write(self._part_frame(ack, header.sequence_id, reply), now)

    def _next_answer_part(self, command_id: int, seq: int, part: FragmentPart,
                          now: float) -> None:
        key = (command_id, seq)
        exchange = self._answer_parts.get(key)
        if exchange is None:
            raise HeaderError(f"{command_name(command_id)} seq={seq}: no fragmented answer")
        try:
            reply: FragmentPart | None = exchange.sender.on_answer(part)
        except FragmentAbort as exc:
            reply = exc.reply
            del self._answer_parts[key]
        else:
            exchange.last_activity = now
            if exchange.sender.done:
                del self._answer_parts[key]
        if reply is not None:
            self._write(self._part_frame(command_id | ACK_BIT, seq, reply), now)

    def _feed(self, direction: str, command_id: int, seq: int, part: FragmentPart,
              now: float) -> ReassemblyEvent:
        """Reassembly keyed by (AppID, Command_ID, direction and Sequence_ID)."""
        self._reassembly.expire(now)
        self._last_part_at = now
        table = self._reassembly
        outcome = table.feed((self.app_id or "", command_id, (direction, seq)), part, now)
        if isinstance(outcome, Abort):
            log.debug("application {app_id}: aborted the reassembly {trans_id} of the {what} "
                       "{command} seq={seq}", app_id=self.app_id, trans_id=part.trans_id,
                       what=direction, command=command_name(command_id), seq=seq)
        for _, dropped_command, exchange in table.dropped:
            log.info("application {app_id}: reassembly bound reached, dropped the one of "
                      "{command} {exchange}", app_id=self.app_id,
                      command=command_name(dropped_command), exchange=exchange)
        return outcome

    def _expire_fragments(self, now: float) -> None:
        self._reassembly.expire(now)
        idle = REASSEMBLY_LIMITS.idle_timeout
        for key in [k for k, x in self._answer_parts.items() if now - x.last_activity >= idle]:
            del self._answer_parts[key]

    @property
    def fragmenting(self) -> bool:
        """A part exchange is open in either direction (no Session Key switch now, 7.5)."""
        return bool(
            self._reassembly.held_bytes or self._answer_parts  # completed ones hold none
            or any(p.sender is not None and not p.sender.done
                   for p in self._outstanding.values())
        )

    def _fail_request(self, seq: int, reason: str) -> None:
        pending = self._outstanding.pop(seq)
        self._events.append(RequestFailed(seq, pending.command_id, pending.payload, reason))

    def _end_session(self, now: float) -> None:
        """Logout exchanged: discard the key, fail what is outstanding, await the close."""
        self.state = State.ENDED
        self.cipher = None
        self._fail_outstanding("closed")

    def _fail_outstanding(self, reason: str) -> None:
        for seq, pending in sorted(self._outstanding.items()):
            self._events.append(RequestFailed(seq, pending.command_id, pending.payload, reason))
        self._outstanding.clear()

    def _close(self, reason: str) -> None:
        if self.closed:
            return
        self._fail_outstanding("closed")
        self.state = State.CLOSED
        self.cipher = None
        self._incoming.clear()
        self._answer_parts.clear()
        self._events.append(Closed(reason))

    def _expire_answers(self, now: float) -> None:
        for key in [k for k, v in self._answers.items() if now - v[0] > DUPLICATE_WINDOW]:
            del self._answers[key]

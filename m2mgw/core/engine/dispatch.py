"""The platform side of the terminal protocol: what to do with each received message.

:class:`PlatformEngine` applies spec sections 4, 6, 7, 8 and 9 to complete messages
handed in by the transports, answers on the bearer each request came from, and
keeps the logical connections in its :class:`~m2mgw.core.sessions.SessionTable`.

It is not sans-I/O as :mod:`m2mgw.protocol` is (bytes and time in, events and bytes
out): it sends, calling :meth:`~m2mgw.core.session.Bearer.send` on the bearer a frame
belongs to, and some answers wait on a Deferred: a REGISTER_ACK for its record's
commit (D-340), the ACK of uplink data for its log entry's commit or for the
application's answer. What it never does is open a socket, import the reactor or
start a thread: the bearers, the registry, the file blocks (a
:class:`~m2mgw.core.files.FileBlocks`; the gateway's reads the disk) and the clock
are handed in, what happened is published as :mod:`~m2mgw.core.engine.events`, and
timed work runs in :meth:`PlatformEngine.tick` by :meth:`PlatformEngine.next_deadline`.
So it is tested with fake bearers, the in-memory registry and a ``task.Clock``, with
no reactor running.

This module routes each message to its phase: :mod:`.admission` (REGISTER, LOGIN,
LOGOUT, the digest), :mod:`.reports` (what a logged-in terminal sends) and the
answers to the platform's own requests; :mod:`.credentials` keeps the credential
sets, :mod:`.frames` builds what is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Container

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from m2mgw.config import ProtocolConfig
from m2mgw.core.engine.admission import Admission, release_state
from m2mgw.core.engine.context import KEY_GRACE, Context, StateObserver
from m2mgw.core.engine.credentials import Credentials
from m2mgw.core.engine.events import (
    AnswerReceived,
    BearerLost,
    EngineEvents,
    PartRequested,
    PlatformRequests,
    ReadyForRequests,
    SyncTrapMissing,
)
from m2mgw.core.engine.exchange import Exchange, single_tlv, terminal_keys
from m2mgw.core.engine.frames import DEFAULT_VERSION, FrameBuilder
from m2mgw.core.engine.reports import Reports
from m2mgw.core.files import FileBlocks
from m2mgw.core.model import CredentialSet, Terminal, TerminalState
from m2mgw.core.refusals import Reason, Refusals
from m2mgw.core.registry import Registry
from m2mgw.core.session import Bearer, Session
from m2mgw.core.sessions import Runtime, SessionTable
from m2mgw.core.stats import EngineStats
from m2mgw.core.uplink import UplinkSink
from m2mgw.protocol import messages as m
from m2mgw.protocol.codec import TAG_ENCRYPTED, TAG_FRAGMENT, Frame, parse_frame
from m2mgw.protocol.constants import (
    ACK_BIT,
    Command,
    Flag,
    LoginResult,
    LogoutReason,
    command_name,
)
from m2mgw.protocol.dupcache import CacheHit, InProgress
from m2mgw.protocol.errors import BodyError, ProtocolError
from m2mgw.protocol.fragment import (
    Abort,
    Complete,
    FragmentAbort,
    FragmentLimits,
    FragmentOp,
    FragmentPart,
    ReassemblyTable,
    reply_to,
)
from m2mgw.protocol.header import VersionError
from m2mgw.protocol.replay import Freshness, ReplayWindow
from m2mgw.protocol.security import decrypt_body

log = Logger()

# Requests accepted on a TCP connection bound to another serial (10.2).
_REBINDING = frozenset({Command.REGISTER, Command.LOGIN})
# Requests only the platform initiates: a terminal sending one is discarded.
_PLATFORM_ONLY = frozenset(
    {Command.CONFIG_GET, Command.CONFIG_SET, Command.REMOTE_CTRL, Command.DOWNLOAD_INFO}
)
_ENCRYPTED_PREFIX = TAG_ENCRYPTED.to_bytes(2, "big")


class PlatformEngine:
    """Receives complete messages from any bearer and acts on them (spec 4, 9)."""

    def __init__(
        self,
        registry: Registry,
        config: ProtocolConfig,
        clock: IReactorTime,
        *,
        sessions: SessionTable,
        frames: FrameBuilder,
        events: EngineEvents,
        requests: PlatformRequests,
        uplink: UplinkSink,
        files: FileBlocks,
        serial_prefix: str,
        refusals: Refusals,
        stats: EngineStats,
    ) -> None:
        self.registry = registry
        self.config = config
        self.clock = clock
        #: The live sessions by serial, and every terminal's runtime record.
        self.sessions = sessions
        self.events = events
        #: Every refusal of this engine and its transports is reported here.
        self.refusals = refusals
        ctx = self._ctx = Context(
            registry=registry,
            config=config,
            clock=clock,
            sessions=sessions,
            frames=frames,
            events=events,
            requests=requests,
            uplink=uplink,
            files=files,
            refusals=refusals,
            stats=stats,
        )
        #: Messages by Command_ID, logins by result, answer latency (for the metrics).
        self.stats: EngineStats = ctx.stats
        #: Observers of state changes: called with (terminal, old_state, new_state,
        #: logout reason or None).
        self.state_observers: list[StateObserver] = ctx.state_observers
        self.credentials = Credentials(ctx)
        self.admission = Admission(ctx, self.credentials, serial_prefix)
        self.reports = Reports(ctx, self.credentials)
        self.accepted_versions = frozenset(config.accepted_versions)
        self.reassembly = ReassemblyTable(
            FragmentLimits(
                config.reassembly_max_bytes,
                config.reassembly_max_parts,
                config.reassembly_idle_timeout,
            ),
            max_entries=100_000,
            max_total_bytes=256 * 1024 * 1024,
        )
        #: Several nodes on one database (D-388): returns True for a message it holds
        #: back while the terminal's record is read again.
        self.gate: Callable[[bytes, Bearer], bool] | None = None
        if config.register_op3_digest_optional:
            log.warn(
                "[protocol] register_op3_digest_optional is deprecated: it now means "
                "default_compat = simcom; give such terminals --compat simcom (D-238)"
            )

    # ------------------------------------------------------------------ receiving

    def receive(self, data: bytes, bearer: Bearer, *, gated: bool = True) -> None:
        """Handle one complete message; never raises on bad input. A :attr:`gate` may
        hold it back first and hand it in again later, ``gated=False``."""
        if gated and self.gate is not None and self.gate(data, bearer):
            return
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
            ex = Exchange(Frame(header, data, b"", None), bearer, now, refused=True)
            self._ctx.answer(ex, m.LoginAck(LoginResult.BAD_VERSION, 0), flag=Flag.AUTH)

    def _on_request(self, frame: Frame, bearer: Bearer, now: float) -> None:
        header = frame.header
        command = header.command_id
        ex = Exchange(frame, bearer, now)
        bound = self.sessions.bound_serial(bearer)
        if bound and bound != header.serial and command not in _REBINDING:
            self._ctx.refuse(ex, Reason.WRONG_CONNECTION, f"connection bound to {bound}")
            return
        if command == Command.HEART_BEAT:
            self.reports.on_heartbeat(ex)
            return
        part = _fragment_part(frame)
        if part is not None and part.op in (FragmentOp.RECEIVER_ABORT, FragmentOp.SENDER_ABORT):
            cache_key = None
        else:
            cache_key = (header.serial, command, header.sequence_id, part.part if part else 0)
            hit = self._ctx.cache.lookup(cache_key, frame.raw, now)
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
            self.admission.on_register(ex)
        elif command == Command.LOGIN:
            self.admission.on_login(ex)
        elif command == Command.LOGOUT:
            self.admission.on_logout(ex)
        else:
            self._on_session_request(ex, part)

    def _on_session_request(self, ex: Exchange, part: FragmentPart | None) -> None:
        """Every request but REGISTER, LOGIN, LOGOUT and HEART_BEAT (9.3, 9.6)."""
        ctx = self._ctx
        header = ex.header
        command = header.command_id
        terminal = self.registry.get(header.serial)
        ex.terminal = terminal
        if terminal is None:
            if ex.sms and command == Command.CONFIG_TRAP:
                self.reports.alarm_without_login(ex, None)
                return
            ctx.refuse(ex, Reason.UNKNOWN_SERIAL, "not provisioned")
            return
        session = self.admission.proven(ex, terminal) or self.sessions.get(header.serial)
        if session is None:
            if ex.sms and command == Command.CONFIG_TRAP:
                self.reports.alarm_without_login(ex, terminal)
                return
            ctx.refuse(ex, Reason.NOT_LOGGED_IN, "no session (PD-20)")
            return
        ex.session = session
        if not self.admission.authenticate(ex, terminal, session.timestamp):
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
            part is not None and body[:2] == _ENCRYPTED_PREFIX
        )
        padded = False
        if encrypted:
            if session.cipher is None:
                raise ProtocolError("encrypted body but the session has no key")
            body = decrypt_body(session.cipher, single_tlv(body, TAG_ENCRYPTED))
            padded = session.cipher.name == "legacy"
        elif terminal.require_encryption and session.cipher is not None:
            raise ProtocolError("plaintext request from a terminal that requires encryption")
        try:
            msg = m.decode_message(command, body, padded=padded)
        except BodyError as exc:
            ctx.unparseable(ex, command, exc)
            return
        self.reports.read_integers(terminal, msg)
        ex.request = msg  # logged with its answer: one row per exchange
        self.reports.handlers[command](ex, terminal, session, msg)

    def _fresh(self, ex: Exchange, window: ReplayWindow) -> bool:
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
        self._ctx.refuse(ex, Reason.REPLAYED, f"{detail}: not acted on again")
        return False

    def _accepted(self, ex: Exchange, session: Session, terminal: Terminal) -> None:
        """A valid, fresh message: traffic for offline detection, current bearer (9.4,
        9.6, D-298)."""
        session.last_valid = ex.now
        sessions = self.sessions
        stalled = sessions.reachable(terminal) is None
        sessions.bind(session, ex.bearer)
        self.registry.touch(terminal.serial or "", ex.now, ex.bearer.kind, ex.bearer.address)
        if stalled:
            # The live session has a path again (a new connection, 9.6): its queue
            # moves now, as after a LOGIN, not at the next request that comes (D-332).
            self.events.publish(ReadyForRequests(terminal))

    def _next_answer_part(self, ex: Exchange, part: FragmentPart) -> None:
        """The terminal asks for part k of a fragmented answer, or abandons it (7.3)."""
        header = ex.header
        record = self.sessions.find(header.serial)
        parts = record.answer_parts.get(header.command_id) if record is not None else None
        if record is None or parts is None or ex.key is None:
            self._ctx.refuse(ex, Reason.REJECTED, "part request for no fragmented answer")
            return
        try:
            reply = parts.sender.on_answer(part)
        except FragmentAbort as exc:
            del record.answer_parts[header.command_id]
            log.info(
                "Fragmented answer to {serial} ended: {reason}",
                reason=exc.reason,
                **ex.log_keys,
            )
            if exc.reply is None:
                return
            reply = exc.reply
        self._ctx.send_reply(ex, self._ctx.frames.answer_part(parts, reply, ex, ex.key))

    def _reassemble(self, ex: Exchange, part: FragmentPart) -> bytes | None:
        """Feed a part of a fragmented request; the body once complete (7.4). Each
        other part is answered as :func:`~m2mgw.protocol.fragment.reply_to` says, the
        policy of every machine that reassembles (PD-28, D-370); an op 2 is not cached."""
        header = ex.header
        table = self.reassembly
        event = table.feed((header.serial, header.command_id, "in"), part, ex.now)
        for serial, command_id, _ in table.dropped:
            log.info(
                "Reassembly table full: dropped the reassembly of {command} from {serial}, "
                "for {by_serial} seq {by_sequence_id}",
                serial=serial,
                command=command_name(command_id),
                by_serial=header.serial,
                by_sequence_id=header.sequence_id,
            )
        if isinstance(event, Complete):
            return event.body
        if isinstance(event, Abort):
            log.debug(
                "Aborted reassembly {trans_id} of {command} seq {sequence_id} from {serial}",
                trans_id=part.trans_id,
                **ex.log_keys,
            )
        reply = reply_to(event)
        if reply is not None:
            self._ctx.reassembly_reply(ex, reply, cache=not isinstance(event, Abort))
        return None

    # ------------------------------------------------------------------ answers from terminals

    def _on_answer(self, frame: Frame, bearer: Bearer, now: float) -> None:
        header = frame.header
        terminal = self.registry.get(header.serial)
        if terminal is None:
            self.refusals.report(
                Reason.UNKNOWN_SERIAL,
                "answer from a serial not provisioned",
                **terminal_keys(header, bearer),
            )
            return
        session = self.sessions.get(header.serial)
        ex = Exchange(frame, bearer, now, terminal, session)
        timestamp = session.timestamp if session else terminal.last_session_timestamp
        # On SMS this is the MSISDN identification of 10.4.4 (no digest).
        if not self.admission.authenticate(ex, terminal, timestamp):
            return
        frame = ex.frame  # C1: the digest may have been found without its flag
        if session is not None:
            if not self._fresh(ex, session.answers):
                return
            self._accepted(ex, session, terminal)
        cipher = session.cipher if session else None
        part = _fragment_part(frame)
        if part is not None:
            self.events.publish(PartRequested(terminal, header, part, bearer))
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
            self.reports.read_integers(terminal, message)
        except ProtocolError as exc:
            self.refusals.report(Reason.MALFORMED, exc.reason, **terminal_keys(header, bearer))
            message = None
        record = self.sessions.find(header.serial)
        if (
            record is not None
            and header.command_id == Command.LOGOUT | ACK_BIT
            and header.sequence_id == record.traffic.logout_sequence
        ):
            record.traffic.logout_sequence = None
            self.admission.logout_answered(terminal)
            self.sessions.prune(header.serial)
            return
        self.events.publish(AnswerReceived(terminal, header, message, bearer))

    # ------------------------------------------------------------------ the rest of the platform

    def check_deliverable(self, terminal: Terminal, command: int, body: bytes) -> None:
        """Raise :class:`~m2mgw.protocol.compat.ProfileRefused` for a platform request
        the terminal's profile cannot carry (C7, C9); see :class:`FrameBuilder`."""
        self._ctx.frames.check_deliverable(terminal, command, body)

    def reachable(self, terminal: Terminal) -> Bearer | None:
        """The bearer for a platform request (9.6), None while there is none."""
        return self.sessions.reachable(terminal)

    def new_credentials(self, cipher: str, now: float) -> CredentialSet:
        """A freshly generated credential set (6.3.2, PD-39)."""
        return self.credentials.new(cipher, now)

    def end_session(self, terminal: Terminal, reason: int, state: str, now: float) -> None:
        """Release the terminal's logical connection now (9.5)."""
        self.admission.end_session(terminal, reason, state, now)

    def logout(
        self, terminal: Terminal, reason: int, now: float, state: str | None = None
    ) -> bool:
        """A platform LOGOUT over IP, else end the session now (4.5); whether sent."""
        return self.admission.logout(terminal, reason, now, state)

    def bearer_lost(self, bearer: Bearer) -> None:
        """A TCP connection closed: the session survives it (10.2)."""
        serial = self.sessions.lose(bearer)
        if serial is None:
            return
        terminal = self.registry.get(serial)
        if terminal is not None:
            self.events.publish(BearerLost(terminal, bearer))

    def restore_sessions(self, only: Container[str] | None = None) -> None:
        """After a restart, resume the sessions the registry says are open (9.1); of
        several nodes, those ``only`` names, which this one held (D-410)."""
        ctx = self._ctx
        now = self.clock.seconds()
        for terminal in self.registry.terminals():
            if terminal.state != TerminalState.LOGGED_IN or terminal.session_timestamp is None:
                continue
            if only is not None and terminal.serial not in only:
                continue
            try:
                session = Session.start(
                    terminal,
                    terminal.session_timestamp,
                    terminal.protocol_version or DEFAULT_VERSION,
                    ctx.interval(terminal),
                    now,
                )
            except (LookupError, ProtocolError):
                continue
            session.synced = True
            self.sessions.begin(session)
            ctx.watch(session, terminal)
            self.sessions.credentials_at(session.serial, now)

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`tick` has work (never later than the real one; a
        reassembly's idle timeout is looked at on every tick)."""
        return self.sessions.next_deadline()

    def tick(self, now: float) -> None:
        """Offline detection, sync-trap wait, credential upkeep and reassembly expiry
        (9.4, PD-29, 6.3.5, 7.4), for the terminals whose deadline has come."""
        for record in self.sessions.due_checks(now):
            self._check(record, now)
        self.credentials.upkeep(now)
        self.reassembly.expire(now)

    def _check(self, record: Runtime, now: float) -> None:
        """One terminal's session and waiting LOGIN, as each tick used to see them."""
        serial = record.serial
        limit = self.config.offline_after_intervals
        opening = record.opening
        if opening is not None:
            # As long as its session would live without traffic (9.4).
            if now - opening.at > limit * opening.session.interval:
                record.opening = None
            else:
                self.sessions.check_at(serial, opening.at + limit * opening.session.interval)
        session = record.session
        if session is not None:
            terminal = self.registry.get(serial)
            if terminal is None:
                self.sessions.end(serial)
            elif self._check_session(terminal, session, now):
                self._ctx.watch(session, terminal)
        self.sessions.prune(serial)

    def _check_session(self, terminal: Terminal, session: Session, now: float) -> bool:
        """Release, offline, key expiry and sync wait, in that order and at most one;
        whether the session is still to be watched."""
        ctx = self._ctx
        if session.release_at is not None:
            if now >= session.release_at:
                reason = session.release_reason
                self.admission.end_session(terminal, reason or 0, release_state(reason), now)
                return False
            return True
        if now - session.last_valid > self.config.offline_after_intervals * session.interval:
            log.info(
                "Terminal {serial} silent for {seconds:.0f} s: communication failure",
                serial=session.serial,
                seconds=now - session.last_valid,
            )
            return self.admission.logout(terminal, LogoutReason.COMM_FAILURE, now)
        expiry = terminal.session_key_expiry
        if session.cipher is not None and expiry is not None and now > expiry + KEY_GRACE:
            # The terminal should have logged out with reason 8 at expiry (6.4.2).
            return self.admission.logout(terminal, LogoutReason.EXPIRED, now)
        if session.sync_deadline is not None and now >= session.sync_deadline:
            session.sync_deadline = None
            session.synced = True
            if session.login_result == LoginResult.OK_SYNC:
                ctx.events.publish(SyncTrapMissing(terminal))
            ctx.events.publish(ReadyForRequests(terminal))
        return True


def _fragment_part(frame: Frame) -> FragmentPart | None:
    if frame.container_tag != TAG_FRAGMENT:
        return None
    return FragmentPart.decode(frame.container_value())


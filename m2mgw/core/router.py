"""The command router: platform-initiated requests, store-and-forward (spec 8.3, 9.6, PD-34).

Every request is written to the registry's durable queue before anything is sent,
so a request for an offline terminal waits there (across restarts) and is delivered
in order after the terminal's next login. At most one request per terminal is
outstanding (window 1); its answer is matched by Command_ID and Sequence_ID, it
times out after ``answer_timeout_ip`` and is retransmitted on UDP. Each outcome is
recorded on the request and reported to the observers (the application side).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.config import ProtocolConfig
from m2mgw.core.engine import events as ev
from m2mgw.core.engine.exchange import terminal_keys
from m2mgw.core.engine.frames import FrameBuilder
from m2mgw.core.model import CredentialSet, Request, RequestState, Terminal
from m2mgw.core.refusals import Reason, TerminalKeys
from m2mgw.core.registry import Registry
from m2mgw.core.session import Bearer
from m2mgw.core.sessions import Outstanding, Runtime, SessionTable, Traffic
from m2mgw.protocol import messages as m
from m2mgw.protocol import tags
from m2mgw.protocol.compat import ProfileRefused
from m2mgw.protocol.constants import (
    ACK_BIT,
    Command,
    SecurityOp,
    TransparentResult,
    result_label,
)
from m2mgw.protocol.errors import ProtocolError
from m2mgw.protocol.fragment import FragmentAbort, FragmentPart, FragmentSender
from m2mgw.protocol.header import Header
from m2mgw.protocol.tlv import Tlv

log = Logger()

#: Commands whose ACK only accepts the operation; the outcome follows (PD-35).
ASYNC_COMMANDS = frozenset({Command.CONFIG_SET, Command.REMOTE_CTRL, Command.DOWNLOAD_INFO})
ORIGIN_PLATFORM = "platform"
ORIGIN_REGISTRATION = "registration"
_COMMANDS = frozenset(c.value for c in Command)


class Router:
    """Queues, sends and correlates the platform's requests to terminals."""

    def __init__(
        self,
        registry: Registry,
        sessions: SessionTable,
        frames: FrameBuilder,
        events: ev.EngineEvents,
        clock: IReactorTime,
        config: ProtocolConfig,
        *,
        sms_bearer: Callable[[Terminal], Bearer | None] | None = None,
    ) -> None:
        self.registry = registry
        #: The terminals' runtime records: the request in flight, its timers and the
        #: correlation memory live there, with the session they are sent in.
        self.sessions = sessions
        self.frames = frames
        self.clock = clock
        self.config = config
        #: Called with each request that reached a final state or a new outcome.
        self.result_observers: list[Callable[[Request], None]] = []
        #: The SMS bearer factory when a modem is configured: MSISDN -> Bearer.
        self.sms_bearer = sms_bearer
        self._handlers: dict[type, Callable[[Any], None]] = {
            ev.SessionStarted: lambda e: self._on_login(e.terminal),
            ev.SessionEnded: lambda e: self._on_session_ended(e.terminal, e.why),
            ev.Reconfiguring: lambda e: self._reconfigured(e.terminal),
            ev.ReadyForRequests: lambda e: self.kick(e.terminal),
            ev.SyncTrapMissing: lambda e: self._sync_trap_missing(e.terminal),
            ev.VersionReported: lambda e: self._version_reported(e.terminal, e.version),
            ev.ExecutionReported: lambda e: self._execution_report(
                e.terminal, e.sequence_id, e.result
            ),
            ev.ConfigReported: lambda e: self._config_sent(e.terminal, e.tlvs),
            ev.CredentialsDue: lambda e: self.deliver_credentials(e.terminal, e.credentials),
            ev.LogoutDue: lambda e: self._send_logout(e.terminal, e.reason, e.bearer),
            ev.AnswerReceived: lambda e: self._on_answer(
                e.terminal, e.header, e.message, e.bearer
            ),
            ev.PartRequested: lambda e: self._on_answer_part(
                e.terminal, e.header, e.part, e.bearer
            ),
            ev.BearerLost: lambda e: self._bearer_lost(e.terminal, e.bearer),
        }
        events.subscribe(self._on_event)

    def _on_event(self, event: ev.Event) -> None:
        self._handlers[type(event)](event)

    # ------------------------------------------------------------------ submitting

    def submit(
        self,
        serial: str,
        command: int,
        body: bytes,
        *,
        origin: str = "admin",
        ttl: float | None = None,
        msg_id: str | None = None,
    ) -> Deferred[Request]:
        """Queue a request durably; the Deferred fires once it is committed.

        A request the terminal's compatibility profile cannot carry raises
        :class:`~m2mgw.protocol.compat.ProfileRefused` at once: nothing is queued.
        """
        terminal = self.registry.get(serial)
        if terminal is None:
            raise LookupError(f"unknown terminal {serial}")
        if command & ACK_BIT or command not in _COMMANDS:
            raise ValueError(f"0x{command:04X} is not a request Command_ID")
        self.frames.check_deliverable(terminal, command, body)
        now = self.clock.seconds()
        request = Request(
            serial=serial,
            command=command,
            body=body,
            created_at=now,
            expires_at=now + (self.config.queue_ttl if ttl is None else ttl),
            origin=origin,
            msg_id=msg_id,
        )
        d = self.registry.enqueue(request)

        def queued(request: Request) -> Request:
            log.info(
                "Request {id} ({command}) for {serial} queued by {origin}",
                id=request.id,
                command=m.MESSAGE_NAMES[command],
                serial=serial,
                origin=origin,
            )
            terminal = self.registry.get(serial)
            if terminal is not None:
                self.kick(terminal)
            return request

        return d.addCallback(queued)

    def deliver_credentials(self, terminal: Terminal, creds: CredentialSet) -> None:
        """SECURITY_CONFIG op 0 with the six credential TLVs (6.3.4, PD-21)."""
        values = (
            creds.uplink_password,
            creds.uplink_expiry,
            creds.downlink_password,
            creds.downlink_expiry,
            creds.base_key,
            creds.base_key_expiry,
        )
        pairs = zip(tags.CREDENTIAL_TAGS, values, strict=True)
        tlvs = [Tlv.of(tag, value) for tag, value in pairs]
        body = m.SecurityConfig(SecurityOp.SET, tlvs=tlvs).encode_body()
        for queued in self.registry.queued(terminal.serial or ""):
            if queued.origin == ORIGIN_REGISTRATION and queued.body == body:
                return  # the same set is already on its way (4.3 step 4)
        session = self.sessions.get(terminal.serial or "")
        if self.sms_bearer is None and (session is None or session.cipher is None):
            log.warn(
                "Credentials for {serial} wait in the queue: they travel only by SMS or in "
                "an encrypted session (PD-21), and no modem is configured ([sms] device)",
                serial=terminal.serial,
            )
        self.submit(
            terminal.serial or "", Command.SECURITY_CONFIG, body, origin=ORIGIN_REGISTRATION
        ).addErrback(_log_failure)

    def relay(
        self, source: Terminal, target: Terminal, msg: m.TransparentData | m.TransparentCmd
    ) -> int | Deferred[int]:
        """Terminal-to-terminal data (4.7): queued durably, result 0 if reachable now;
        result 3 when the target's profile cannot take it (C9)."""
        address = Tlv.of(m.TAG_SRC_SERIAL, source.serial or "")
        if isinstance(msg, m.TransparentData):
            out: m.Message = m.TransparentData.build(msg.user_data, address)
        else:
            kept = [t for t in msg.tlvs if t.tag in (m.TAG_CMD_FIXED, m.TAG_USER_DATA)]
            out = m.TransparentCmd(tlvs=[address, *kept])
        reachable = self.sessions.reachable(target) is not None
        try:
            d = self.submit(
                target.serial or "",
                out.COMMAND,
                out.encode_body(),
                origin=f"terminal:{source.serial}",
            )
        except ProfileRefused:
            return TransparentResult.REJECTED
        return d.addCallback(
            lambda _: TransparentResult.ACCEPTED if reachable else TransparentResult.QUEUED
        )

    # ------------------------------------------------------------------ sending

    def kick(self, terminal: Terminal) -> None:
        """Send the terminal's next queued request if the window and a bearer allow."""
        serial = terminal.serial or ""
        record = self.sessions.find(serial)
        if record is not None and record.outstanding is not None:
            return
        session = self.sessions.get(serial)
        for request in self.registry.queued(serial):
            if request.state == RequestState.SENT:
                # Sent before a restart or a lost session and never answered: send again.
                request.state = RequestState.QUEUED
            bearer = self._bearer_for(terminal, request)
            if bearer is None and _confidential(request) and self.sessions.reachable(terminal):
                # Waits for an encrypted session or SMS (PD-21); the rest need not wait.
                continue
            if bearer is None:
                self.wake_up(terminal)
                return
            if session is not None and not session.synced and bearer.kind != "sms":
                return
            self._send(terminal, request, bearer)
            return

    def _bearer_for(self, terminal: Terminal, request: Request) -> Bearer | None:
        """9.6, with PD-21 for credentials and the SMS rules of PD-38."""
        session = self.sessions.get(terminal.serial or "")
        if _confidential(request):
            # Credentials and plaintext reads travel only encrypted or by SMS (PD-21);
            # op 1 is never sent by SMS (4.13).
            bearer = self.sessions.reachable(terminal)
            if bearer is not None and session is not None and session.cipher is not None:
                return bearer
            if request.body[:1] == b"\x01" or self.sms_bearer is None:
                return None
            return self.sms_bearer(terminal)
        bearer = self.sessions.reachable(terminal)
        if bearer is None and terminal.connect_mode == 4 and self.sms_bearer is not None:
            return self.sms_bearer(terminal)
        return bearer

    def _send(self, terminal: Terminal, request: Request, bearer: Bearer) -> None:
        serial = terminal.serial or ""
        sequence_id = terminal.next_sequence()
        try:
            frames = self.frames.request_frames(
                terminal, request.command, sequence_id, request.body, bearer
            )
        except (ProtocolError, ProfileRefused) as exc:
            self._finish(request, RequestState.FAILED, None, f"cannot be sent: {exc.reason}")
            self.kick(terminal)  # the next queued request need not wait for another kick
            return
        sender = None
        if len(request.body) > self.config.fragment_threshold and bearer.kind != "sms":
            sender = FragmentSender(
                request.body, terminal.next_trans(), self.config.fragment_threshold
            )
            first = sender.first()
            frames = [self.frames.request_part(terminal, request.command, sequence_id, first)]
        request.sequence_id = sequence_id
        request.state = RequestState.SENT
        request.attempts += 1
        request.updated_at = self.clock.seconds()
        self.registry.update_request(request)
        self.registry.save_counters(terminal)  # only they changed (D-405)
        out = Outstanding(request, frames, bearer, sender=sender)
        record = self.sessions.record(serial)
        record.outstanding = out
        if request.command in ASYNC_COMMANDS:
            record.traffic.awaiting_report[sequence_id] = request.id or 0
        bearer.send(frames[0])
        self._arm(serial, out)
        log.info(
            "Request {id} ({command}) sent to {serial} seq {sequence_id} over {bearer}",
            id=request.id,
            command=m.MESSAGE_NAMES[request.command],
            serial=serial,
            sequence_id=sequence_id,
            bearer=bearer.kind,
            peer=bearer.address,
        )

    def _arm(self, serial: str, out: Outstanding) -> None:
        timeout = (
            self.config.answer_timeout_sms
            if out.bearer.kind == "sms"
            else self.config.answer_timeout_ip
        )
        if out.timer is not None and out.timer.active():
            out.timer.cancel()
        out.timer = self.clock.callLater(timeout, self._timeout, serial, out)

    def _timeout(self, serial: str, out: Outstanding) -> None:
        if self._outstanding(serial) is not out:
            return
        if out.bearer.kind == "udp" and out.sends < self.config.udp_sends:
            out.sends += 1
            out.bearer.send(out.frames[-1])
            self._arm(serial, out)
            log.debug(
                "Request {id} to {serial} retransmitted ({sends})",
                id=out.request.id,
                serial=serial,
                sends=out.sends,
            )
            return
        self._complete(serial, RequestState.FAILED, None, "no answer (timeout)")

    # ------------------------------------------------------------------ answers

    def _on_answer(
        self, terminal: Terminal, header: Header, message: m.Message | None, bearer: Bearer
    ) -> None:
        """An answer from a terminal: complete the matching request (4.2 rule 5); the
        engine took the ACK of its own LOGOUT already."""
        serial = terminal.serial or ""
        if self._wakeup_answered(terminal, header, message):
            return
        out = self._outstanding(serial)
        request = out.request if out else None
        if (
            out is None
            or request is None
            or header.command_id != request.command | ACK_BIT
            or header.sequence_id != request.sequence_id
        ):
            self.frames.refusals.report(
                Reason.UNMATCHED_ANSWER,
                "no outstanding request with this Command_ID and Sequence_ID",
                **terminal_keys(header, bearer),
            )
            return
        if message is None:
            self._complete(serial, RequestState.FAILED, None, "unparseable answer")
            return
        result = _result_of(message)
        self._after_answer(terminal, request, message, result)
        if request.command == Command.CONFIG_SET and result == 0:
            sequence_id = request.sequence_id or 0
            self.sessions.record(serial).confirm_timers[sequence_id] = self.clock.callLater(
                self.config.config_confirm_wait, self._unconfirmed, serial, sequence_id
            )
        ok = _answer_ok(request.command, result)
        outcome = "acknowledged" if ok and request.command in ASYNC_COMMANDS else "ok"
        request.answer_body = message.encode_body()
        self._complete(
            serial,
            RequestState.SUCCEEDED if ok else RequestState.FAILED,
            result,
            outcome if ok or result is None else f"result {result_label(request.command, result)}",
        )

    def _on_answer_part(
        self, terminal: Terminal, header: Header, part: FragmentPart, bearer: Bearer
    ) -> None:
        """The terminal asks for the next part of a fragmented request (7.3)."""
        serial = terminal.serial or ""
        out = self._outstanding(serial)
        if out is None or out.sender is None or header.sequence_id != out.request.sequence_id:
            return
        try:
            nxt = out.sender.on_answer(part)
        except FragmentAbort as exc:
            if exc.reply is not None:
                bearer.send(
                    self.frames.request_part(
                        terminal, out.request.command, header.sequence_id, exc.reply
                    )
                )
            self._complete(serial, RequestState.FAILED, None, f"part exchange ended: {exc.reason}")
            return
        frame = self.frames.request_part(terminal, out.request.command, header.sequence_id, nxt)
        out.frames = [frame]
        out.sends = 1
        bearer.send(frame)
        self._arm(serial, out)

    def _after_answer(
        self, terminal: Terminal, request: Request, message: m.Message, result: int | None
    ) -> None:
        """Command-specific effects of a successful answer."""
        serial = terminal.serial or ""
        if request.command == Command.CONFIG_GET and result == 0:
            name = m.MESSAGE_NAMES[message.COMMAND]
            keys: TerminalKeys = {"serial": serial, "command": name}
            values = {
                t.tag: t.raw
                for t in message.tlvs
                if not self.frames.value_refused(terminal, t, keys)
            }
            self.registry.store_config(serial, values, "reported")
        elif request.command == Command.CONFIG_SET and result == 0:
            sent = m.ConfigSet.decode_body(request.body).tlvs
            self._config_sent(terminal, sent)
            self.registry.store_config(serial, {t.tag: t.raw for t in sent}, "set")
        elif request.command == Command.DOWNLOAD_INFO and result == 1:
            version = _offered_version(request.body)
            if version:
                self._traffic_of(serial).awaiting_version[version] = request.id or 0
        elif request.command == Command.SECURITY_CONFIG and request.body[:1] == b"\x00":
            if result == 0 and terminal.pending is not None:
                terminal.pending.delivered_at = self.clock.seconds()
            elif result != 0:
                log.warn("Terminal {serial} rejected its credential set", serial=serial)
                terminal.pending = None
            self.registry.save(terminal)

    def _complete(self, serial: str, state: str, result: int | None, outcome: str) -> None:
        record = self.sessions.find(serial)
        out = record.outstanding if record is not None else None
        if record is None or out is None:
            return
        record.outstanding = None
        self.sessions.prune(serial)
        if out.timer is not None and out.timer.active():
            out.timer.cancel()
        self._finish(out.request, state, result, outcome)
        terminal = self.registry.get(serial)
        if terminal is not None:
            self.kick(terminal)

    def _finish(self, request: Request, state: str, result: int | None, outcome: str) -> None:
        request.state = state
        request.result = result
        request.outcome = outcome
        request.updated_at = self.clock.seconds()
        self.registry.update_request(request)
        log.info(
            "Request {id} for {serial}: {state} ({outcome})",
            id=request.id,
            serial=request.serial,
            state=state,
            outcome=outcome,
        )
        for observer in self.result_observers:
            observer(request)

    # ------------------------------------------------------------------ outcomes that come later

    def _execution_report(self, terminal: Terminal, sequence_id: int, result: int) -> None:
        """TLV 0x4010 in a CONFIG_TRAP: the outcome of an asynchronous request (4.9)."""
        serial = terminal.serial or ""
        record = self.sessions.record(serial)
        timer = record.confirm_timers.pop(sequence_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        request_id = record.traffic.awaiting_report.pop(sequence_id, None)
        self.sessions.prune(serial)
        request = self.registry.request(request_id) if request_id else None
        if request is None:
            log.info(
                "Execution report for unknown seq {sequence_id} from {serial}",
                sequence_id=sequence_id,
                serial=terminal.serial,
            )
            return
        request.outcome = "applied" if result == 0 else f"not applied (report {result})"
        if result != 0:
            request.state = RequestState.FAILED
        request.updated_at = self.clock.seconds()
        self.registry.update_request(request)
        for observer in self.result_observers:
            observer(request)

    def _unconfirmed(self, serial: str, sequence_id: int) -> None:
        """No 0x4010 within config_confirm_wait of a CONFIG_SET's ACK (4.10)."""
        record = self.sessions.record(serial)
        record.confirm_timers.pop(sequence_id, None)
        request_id = record.traffic.awaiting_report.pop(sequence_id, None)
        self.sessions.prune(serial)
        request = self.registry.request(request_id) if request_id else None
        if request is None:
            return
        request.outcome = "unconfirmed"
        request.updated_at = self.clock.seconds()
        self.registry.update_request(request)
        for observer in self.result_observers:
            observer(request)

    def _config_sent(self, terminal: Terminal, tlvs: list[Tlv]) -> None:
        """Remember applied TLVs for the 0x4017 check (6.5)."""
        self._traffic_of(terminal.serial or "").applied = {
            t.tag: t.raw for t in tlvs if t.tag != tags.PLATFORM_OPTION
        }

    def _version_reported(self, terminal: Terminal, version: str) -> None:
        """A LOGIN or 0x100C with the version a DOWNLOAD_INFO offered: applied (4.14)."""
        serial = terminal.serial or ""
        request_id = self._traffic_of(serial).awaiting_version.pop(version, None)
        self.sessions.prune(serial)
        request = self.registry.request(request_id) if request_id else None
        if request is None:
            return
        log.info("Terminal {serial} runs the offered version {version}",
                 serial=terminal.serial, version=version)
        request.outcome = "applied"
        request.updated_at = self.clock.seconds()
        self.registry.update_request(request)
        for observer in self.result_observers:
            observer(request)

    # ------------------------------------------------------------------ session events

    def _on_login(self, terminal: Terminal) -> None:
        """Queued requests wait for the first CONFIG_TRAP or sync_trap_wait (4.4).

        A LOGIN after a LOGOUT reason 7 confirms the CONFIG_SETs awaiting their
        outcome: the terminal reconnected to apply them (4.10).
        """
        if terminal.software_version:
            self._version_reported(terminal, terminal.software_version)
        traffic = self._traffic_of(terminal.serial or "")
        if traffic.reconfigured:
            traffic.reconfigured = False
            for sequence_id, request_id in list(traffic.awaiting_report.items()):
                request = self.registry.request(request_id)
                if request is not None and request.command == Command.CONFIG_SET:
                    self._execution_report(terminal, sequence_id, 0)
        self.kick(terminal)

    def _reconfigured(self, terminal: Terminal) -> None:
        """The terminal logged out with reason 7 to apply a new configuration."""
        self._traffic_of(terminal.serial or "").reconfigured = True

    def _sync_trap_missing(self, terminal: Terminal) -> None:
        """PD-29: no sync trap after LOGIN_ACK 1; read the sync tags with CONFIG_GET."""
        sync_tags = terminal.sync_tags or list(self.config.default_sync_tags)
        body = m.ConfigGet(tlvs=[Tlv.query(tag) for tag in sync_tags]).encode_body()
        try:
            d = self.submit(terminal.serial or "", Command.CONFIG_GET, body, origin=ORIGIN_PLATFORM)
        except ProfileRefused:
            return  # reported: its profile takes no CONFIG_GET (C9)
        d.addErrback(_log_failure)

    def _on_session_ended(self, terminal: Terminal, why: str) -> None:
        """The outstanding request fails; queued ones stay queued (9.5)."""
        serial = terminal.serial or ""
        record = self.sessions.find(serial)
        if record is None:
            return
        record.traffic.logout_sequence = None
        if record.outstanding is not None:
            self._complete(serial, RequestState.FAILED, None, why)
        self.sessions.prune(serial)

    def _bearer_lost(self, terminal: Terminal, bearer: Bearer) -> None:
        """A TCP connection closed while a request waited on it: it fails at once (8.3)."""
        out = self._outstanding(terminal.serial or "")
        if out is not None and out.bearer is bearer:
            self._complete(
                terminal.serial or "",
                RequestState.FAILED,
                None,
                "connection closed before the answer",
            )

    def _send_logout(self, terminal: Terminal, reason: int, bearer: Bearer) -> None:
        """A platform LOGOUT, sent once outside the queue (4.5, 9.4)."""
        traffic = self._traffic_of(terminal.serial or "")
        traffic.logout_sequence = self._send_unqueued(terminal, m.Logout(reason), bearer)
        log.info(
            "Platform LOGOUT (reason {logout_reason}) sent to {serial} over {bearer}",
            event="platform-logout",
            logout_reason=reason,
            serial=terminal.serial,
            command=m.MESSAGE_NAMES[Command.LOGOUT],
            sequence_id=traffic.logout_sequence,
            bearer=bearer.kind,
            peer=bearer.address,
        )

    # ------------------------------------------------------------------ SMS wake-up

    def wake_up(self, terminal: Terminal) -> None:
        """REMOTE_CTRL code 3 by SMS for a terminal with queued requests (9.6, 10.4.7).

        Sent outside the queue, at most once per ``wakeup_min_interval``, and only to a
        terminal with an MSISDN and SMS wake-up enabled, when a modem is configured.
        """
        now = self.clock.seconds()
        last = terminal.wakeup_at
        recent = last is not None and now - last < self.config.wakeup_min_interval
        if self.sms_bearer is None or not terminal.msisdn or not terminal.sms_wakeup or recent:
            return
        bearer = self.sms_bearer(terminal)
        if bearer is None:
            return
        terminal.wakeup_at = now  # saved with the sequence counter, before the SMS is queued
        traffic = self._traffic_of(terminal.serial or "")
        traffic.wakeup_sequence = self._send_unqueued(terminal, m.RemoteCtrl.build(3), bearer)
        log.info(
            "Wake-up SMS sent to {serial} at {msisdn} seq {sequence_id}",
            serial=terminal.serial,
            msisdn=terminal.msisdn,
            sequence_id=traffic.wakeup_sequence,
        )

    def _wakeup_answered(
        self, terminal: Terminal, header: Header, message: m.Message | None
    ) -> bool:
        """The REMOTE_CTRL_ACK of a wake-up: logged; the LOGIN that follows drains the queue."""
        record = self.sessions.find(terminal.serial or "")
        if (
            record is None
            or header.command_id != Command.REMOTE_CTRL | ACK_BIT
            or header.sequence_id != record.traffic.wakeup_sequence
        ):
            return False
        traffic = record.traffic
        traffic.wakeup_sequence = None
        self.sessions.prune(terminal.serial or "")
        log.info(
            "Terminal {serial} answered the wake-up seq {sequence_id}: ret {ret}",
            serial=terminal.serial,
            sequence_id=header.sequence_id,
            ret=None if message is None else _result_of(message),
        )
        return True

    def _send_unqueued(self, terminal: Terminal, message: m.Message, bearer: Bearer) -> int:
        """Send a request once outside the window-1 queue; returns its Sequence_ID."""
        sequence_id = terminal.next_sequence()
        frames = self.frames.request_frames(
            terminal, message.COMMAND, sequence_id, message.encode_body(), bearer
        )
        # Saved first: an SMS leaves once its outbox row is committed, and so after the
        # record, whose counter (and wake-up time) a restart must not find older (D-342).
        self.registry.save(terminal)
        bearer.send(frames[0])
        return sequence_id

    def expire(self) -> Deferred[list[Request]]:
        """Fail queued requests whose TTL has passed with "expired" (9.6)."""

        def report(requests: list[Request]) -> list[Request]:
            for request in requests:
                log.info("Request {id} for {serial} expired", id=request.id, serial=request.serial)
                for observer in self.result_observers:
                    observer(request)
            return requests

        return self.registry.expire_requests(self.clock.seconds()).addCallback(report)

    def stop(self) -> None:
        """Cancel every timer; outstanding requests stay ``sent`` in the registry and
        are sent again after the terminal's next login (D-16)."""
        for record in self.sessions.records():
            self._cancel(record)
            self.sessions.prune(record.serial)

    def forget(self, serial: str) -> None:
        """Another gateway node holds the terminal's session now (D-387): its timers
        are cancelled and its memory dropped, as at a stop; the request in flight stays
        ``sent`` and that node sends it again."""
        record = self.sessions.find(serial)
        if record is not None:
            self._cancel(record)
            record.traffic = Traffic()
            self.sessions.prune(serial)

    def _cancel(self, record: Runtime) -> None:
        for timer in record.confirm_timers.values():
            if timer.active():
                timer.cancel()
        record.confirm_timers.clear()
        out = record.outstanding
        if out is not None and out.timer is not None and out.timer.active():
            out.timer.cancel()
        record.outstanding = None

    def outstanding(self, serial: str) -> Request | None:
        out = self._outstanding(serial)
        return out.request if out else None

    def _outstanding(self, serial: str) -> Outstanding | None:
        record = self.sessions.find(serial)
        return record.outstanding if record is not None else None

    def _traffic_of(self, serial: str) -> Traffic:
        return self.sessions.record(serial).traffic


def _confidential(request: Request) -> bool:
    """SECURITY_CONFIG op 0 (credentials) or op 1 (plaintext read): PD-21 applies."""
    return request.command == Command.SECURITY_CONFIG and request.body[:1] in (b"\x00", b"\x01")


def _offered_version(body: bytes) -> str | None:
    """VER_DSC of a DOWNLOAD_INFO body's URL (4.14), or None."""
    try:
        url = m.DownloadInfo.decode_body(body).url
    except ProtocolError:
        return None
    values = parse_qs(urlsplit(url or "").query).get("VER_DSC")
    return values[0] if values else None


def _result_of(message: m.Message) -> int | None:
    """The answer's result/ret field (4.2 rule 3), None for answers without one."""
    for name in ("ret", "result", "status"):
        if hasattr(message, name):
            return int(getattr(message, name))
    return None


def _answer_ok(command: int, result: int | None) -> bool:
    """Success codes per answer (5.4-5.8, PD-14)."""
    if result is None:
        return True
    if command in (Command.TRANSPARENT_DATA, Command.TRANSPARENT_CMD):
        return result in (0, 5)
    if command == Command.DOWNLOAD_INFO:
        return result == 1
    return result == 0


def _log_failure(failure: Failure) -> None:
    log.failure("Could not queue a platform request", failure)

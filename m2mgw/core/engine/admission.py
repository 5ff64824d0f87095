"""Admission: REGISTER, LOGIN and LOGOUT, the digest check, and the session's life
(spec 4.3-4.5, 6.2, 9.1-9.5)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.core.engine.context import Context
from m2mgw.core.engine.credentials import Credentials
from m2mgw.core.engine.events import (
    LogoutDue,
    Reconfiguring,
    SessionEnded,
    SessionStarted,
)
from m2mgw.core.engine.exchange import Exchange
from m2mgw.core.model import CredentialSet, Terminal, TerminalState, normalize_msisdn
from m2mgw.core.refusals import Reason
from m2mgw.core.session import Session, digest_keys
from m2mgw.core.sessions import Opening
from m2mgw.protocol import compat, tags
from m2mgw.protocol import messages as m
from m2mgw.protocol.checksum import crc32
from m2mgw.protocol.codec import Frame, header_only_digest, unflagged_digest, verify_frame
from m2mgw.protocol.compat import would_accept
from m2mgw.protocol.constants import (
    Command,
    Flag,
    LoginResult,
    LogoutReason,
    RegisterOp,
    RegisterResult,
)
from m2mgw.protocol.errors import BodyError, ProtocolError
from m2mgw.protocol.replay import LoginMemory
from m2mgw.protocol.security import (
    NEVER,
    DigestKey,
    base_key_proof,
    downlink_proof,
    encode_session_key,
    generate_session_key,
    make_cipher,
    proofs_equal,
    uplink_proof,
)
from m2mgw.protocol.tlv import Tlv, encode_tlvs, find, tlv_dict

log = Logger()


class Admission:
    """Who may talk to the platform, and the logical connections it opens and ends."""

    def __init__(self, ctx: Context, credentials: Credentials, serial_prefix: str) -> None:
        self.ctx = ctx
        self.credentials = credentials
        self.serial_prefix = serial_prefix
        #: The LOGINs each terminal had accepted: their digest has timestamp 0 (D-300).
        self.logins = LoginMemory()

    # ------------------------------------------------------------------ REGISTER

    def on_register(self, ex: Exchange) -> None:
        frame = ex.frame
        try:
            msg = m.Register.decode_body(frame.body)
        except ProtocolError as exc:
            raise BodyError(f"REGISTER body: {exc.reason}") from None
        try:
            op = RegisterOp(msg.op)
        except ValueError:
            raise BodyError(f"unknown REGISTER op {msg.op}") from None
        terminal = self.ctx.registry.by_imei(msg.imei)
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

    def _register_ack(self, ex: Exchange, result: int, serial: str | None) -> None:
        self.ctx.answer(ex, m.RegisterAck(result, serial), flag=Flag.AUTH)

    def _register_refused(self, ex: Exchange, detail: str) -> None:
        self.ctx.refuse(ex, Reason.NOT_PROVISIONED, detail)
        self._register_ack(ex, RegisterResult.NOT_PROVISIONED, None)

    def _register_verify(self, ex: Exchange, imei: str, imsi: str, creds: CredentialSet) -> bool:
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
        self, ex: Exchange, terminal: Terminal, msg: m.Register, msisdn: str | None
    ) -> None:
        creds = terminal.current
        if creds is None or terminal.imsi is None:
            self._register_refused(ex, "REGISTER op 2: no credential set to verify it")
            return
        if not self._register_verify(ex, msg.imei, terminal.imsi, creds):
            self.ctx.auth_failure(ex, terminal, "REGISTER op 2 digest does not verify")
            return
        if terminal.allowed_imsis is not None and msg.imsi not in terminal.allowed_imsis:
            self._register_refused(ex, f"REGISTER op 2: IMSI {msg.imsi} not allowed")
            return
        terminal.imsi = msg.imsi
        if msisdn:
            terminal.msisdn = msisdn
        self.ctx.registry.save(terminal)
        self._register_ack(ex, RegisterResult.OK, terminal.serial)

    def _register_preset(
        self, ex: Exchange, terminal: Terminal, msg: m.Register, msisdn: str | None
    ) -> None:
        creds = terminal.current
        if creds is None:
            self._register_deliver(ex, terminal, msg, msisdn, fresh=False)
            return
        if not ex.sms and ex.frame.digest is None:
            if not self.ctx.frames.profile_of(terminal).register_op3_digest_optional:
                self.ctx.auth_failure(
                    ex,
                    terminal,
                    "REGISTER op 3 lacks its digest",
                    reason=Reason.MISSING_DIGEST,
                    hint=would_accept("PD-06", "sends REGISTER op 3 without a digest"),
                )
                return
        elif not self._register_verify(ex, msg.imei, msg.imsi, creds):
            self.ctx.auth_failure(ex, terminal, "REGISTER op 3 digest does not verify")
            return
        given = tlv_dict(msg.tlvs)
        expected = {
            tags.UPLINK_PROOF: uplink_proof(creds.uplink_password, creds.uplink_expiry),
            tags.DOWNLINK_PROOF: downlink_proof(creds.downlink_password, creds.downlink_expiry),
            tags.BASE_KEY_PROOF: base_key_proof(creds.base_key, creds.base_key_expiry),
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
            self.ctx.set_state(terminal, TerminalState.REGISTERED)
            self.ctx.registry.save(terminal)
        self._register_ack(
            ex, RegisterResult.ALREADY_REGISTERED if same else RegisterResult.OK, terminal.serial
        )

    def _register_deliver(
        self,
        ex: Exchange,
        terminal: Terminal,
        msg: m.Register,
        msisdn: str | None,
        *,
        fresh: bool,
    ) -> None:
        """Ops 0, 1 and 4: bind, choose a credential set, deliver it by SMS (4.3)."""
        registry = self.ctx.registry
        if terminal.serial is None:
            # Saved at once: whoever hears of the registration finds the terminal under
            # its serial, as the applications' NotifyTerminalState must (D-330).
            terminal.serial = registry.allocate_serial(self.serial_prefix)
            registry.save(terminal)
        if not msisdn:
            self._register_ack(ex, RegisterResult.RETRY_BY_SMS, None)
            return
        creds = self.credentials.to_deliver(terminal, fresh=fresh, now=ex.now)
        terminal.imsi = msg.imsi
        terminal.msisdn = msisdn
        self._end_session_for_register(terminal, ex.now)
        self.ctx.set_state(terminal, TerminalState.REGISTERED)
        self._register_ack_stored(ex, registry.save(terminal), terminal.serial or "")
        self.credentials.deliver(terminal, creds)

    def _register_ack_stored(self, ex: Exchange, saved: Deferred[None], serial: str) -> None:
        """REGISTER_ACK once the record is committed, as stored uplinks are (D-03, D-340).

        The serial counter is written before the record, and the one writer commits in
        order; a crash before the commit would otherwise let the next start allocate the
        serial the terminal was told again. A retransmission meanwhile is ignored (8.2);
        after a failed write nothing is answered and the retransmission counts as new.
        """
        cache = self.ctx.cache
        if ex.cache_key is not None:
            cache.begin(ex.cache_key, ex.frame.raw, ex.now)

        def failed(failure: Failure) -> None:
            log.failure("Registration of {serial} not stored", failure, serial=serial)
            if ex.cache_key is not None:
                cache.cancel(ex.cache_key)

        saved.addCallbacks(
            lambda _: self._register_ack(ex, RegisterResult.OK_SMS, serial), failed
        )

    def _end_session_for_register(self, terminal: Terminal, now: float) -> None:
        """A REGISTER accepted while logged in ends the session first (9.8)."""
        if terminal.serial in self.ctx.sessions:
            self.end_session(terminal, LogoutReason.NORMAL, TerminalState.LOGGED_OUT, now)

    # ------------------------------------------------------------------ LOGIN

    def on_login(self, ex: Exchange) -> None:
        ctx = self.ctx
        frame = ex.frame
        header = frame.header
        terminal = ctx.registry.get(header.serial)
        ex.terminal = terminal
        if (
            terminal is None
            or terminal.imsi is None
            or (terminal.current is None and terminal.pending is None)
        ):
            detail = "not provisioned" if terminal is None else "not registered"
            ctx.refuse(ex, Reason.UNKNOWN_SERIAL, detail)
            ctx.answer(ex, m.LoginAck(LoginResult.UNKNOWN_SERIAL, 0), flag=Flag.AUTH)
            return
        if ex.sms:
            if normalize_msisdn(ex.bearer.address) != terminal.msisdn:
                ctx.refuse(ex, Reason.WRONG_PATH, "LOGIN by SMS from a number not bound to it")
                return
            creds = terminal.current or terminal.pending
            assert creds is not None
        else:
            verified = self._login_credentials(ex, terminal)
            if verified is None:
                ctx.answer(ex, m.LoginAck(LoginResult.AUTH_FAILED, 0), flag=Flag.AUTH)
                return
            creds = verified
            record = ctx.sessions.find(header.serial)
            waiting = record.opening if record is not None else None
            if waiting is not None and waiting.digest == ex.frame.digest:
                ctx.refuse(ex, Reason.REPLAYED, "a LOGIN seen before, again: its LOGIN_ACK again")
                ex.bearer.send(waiting.answer)
                return
        msg = m.Login.decode_body(ex.frame.body)
        if not terminal.enabled:
            ctx.refuse(ex, Reason.DISABLED, "terminal disabled")
            ctx.answer(ex, m.LoginAck(LoginResult.DISABLED, 0))
            return
        if creds.uplink_expiry < ex.now or creds.downlink_expiry < ex.now:
            ctx.refuse(ex, Reason.CREDENTIALS_EXPIRED, "uplink or downlink password expired")
            ctx.answer(ex, m.LoginAck(LoginResult.EXPIRED, 0))
            return
        wants_key = bool(header.flag & Flag.KEY_REQUEST) and not ex.sms
        if wants_key:
            proof = find(msg.tlvs, tags.BASE_KEY_PROOF) or b""
            if not proofs_equal(proof, base_key_proof(creds.base_key, creds.base_key_expiry)):
                ctx.refuse(ex, Reason.AUTH_FAILED, "LOGIN base key proof differs")
                ctx.answer(ex, m.LoginAck(LoginResult.AUTH_FAILED, 0))
                return
        committed = creds is terminal.pending
        if committed:
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
        opening = Opening(
            Session.start(terminal, timestamp, header.version, ctx.interval(terminal), ex.now),
            msg.software_version,
            ex.now,
            credentials_committed=committed,
        )
        opening.session.cipher = None
        opening.session.login_result = result
        if wants_key and terminal.cipher != "none":
            key = generate_session_key()
            expiry = min(NEVER, timestamp + int(ctx.config.session_key_ttl))
            box = encode_session_key(make_cipher(terminal.cipher, creds.base_key), key, expiry)
            ack.tlvs.append(Tlv(tags.ENCRYPTED_BODY, box))
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
            ctx.refuse(
                ex, Reason.REPLAYED, "a LOGIN seen before: no session until a signed message"
            )
            opening.digest = digest
            opening.answer = ctx.answer(ex, ack, flag=flag, row=False) or b""
            ctx.sessions.record(header.serial).opening = opening
            self._watch_opening(header.serial, opening)
            return
        session = self._begin(terminal, opening, ex)
        ctx.answer(ex, ack, flag=flag)
        if digest is not None:
            self.logins.remember(header.serial, digest)
        self._opened(terminal, session, ex.now)

    def _watch_opening(self, serial: str, opening: Opening) -> None:
        """A LOGIN seen before waits as long as its session would live without traffic
        (9.4); the tick drops it strictly after that."""
        limit = self.ctx.config.offline_after_intervals
        self.ctx.sessions.check_at(serial, opening.at + limit * opening.session.interval)

    def _opened(self, terminal: Terminal, session: Session, now: float) -> None:
        """The new session may carry traffic: credential upkeep, queued requests after
        its first trap or ``sync_trap_wait`` (4.4), and the router hears of the login."""
        ctx = self.ctx
        session.sync_deadline = now + ctx.config.sync_trap_wait
        ctx.watch(session, terminal)
        ctx.sessions.credentials_at(session.serial, now)
        ctx.events.publish(SessionStarted(terminal))

    def proven(self, ex: Exchange, terminal: Terminal) -> Session | None:
        """The session a LOGIN seen before asked for, begun now if this message is
        signed under its LOGIN_ACK's timestamp (D-299); None otherwise."""
        record = self.ctx.sessions.find(terminal.serial or "")
        opening = record.opening if record is not None else None
        if opening is None or ex.sms:
            return None
        frame = ex.frame
        signed = frame if frame.digest is not None else unflagged_digest(frame)
        if signed is not frame and not self.ctx.frames.profile_of(terminal).digest_without_flag:
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

    def _login_credentials(self, ex: Exchange, terminal: Terminal) -> CredentialSet | None:
        """The set whose uplink password verifies the LOGIN digest: current, then pending.

        A digest appended with flag 0x20 clear counts only under C1 (spec 1.6); every
        failure is refused here with its reason (2.2 step 4, 6.2).
        """
        frame = ex.frame
        signed = frame if frame.digest is not None else unflagged_digest(frame)
        found = None if signed is None else _verifying_set(terminal, signed)
        accepted = signed is frame or self.ctx.frames.profile_of(terminal).digest_without_flag
        if signed is not None and found is not None and accepted:
            ex.frame, ex.key = signed, found[1]
            ex.authenticated = True
            return found[0]
        if frame.digest is not None:
            self.ctx.auth_failure(ex, terminal, "LOGIN digest does not verify")
            return None
        hint = None
        if found is not None:
            hint = would_accept("C1", "appends a valid E021 to LOGIN without setting flag 0x20")
        self.ctx.auth_failure(
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
        if sync_crc == 0 and self.ctx.frames.profile_of(terminal).sync_crc_zero_untracked:
            return True
        values = self.ctx.registry.config_values(terminal.serial or "")
        sync_tags = terminal.sync_tags or list(self.ctx.config.default_sync_tags)
        stream = []
        for tag in sync_tags:
            raw = values.get(tag)
            if raw is None:
                return False
            stream.append(Tlv(tag, raw))
        return crc32(encode_tlvs(stream)) == sync_crc

    def _begin(self, terminal: Terminal, opening: Opening, ex: Exchange) -> Session:
        """Step 8 of 4.4: replace any session, bind the bearer ``ex`` came on, persist
        (PD-19: the session columns with the next flush, the whole record when the
        LOGIN committed a credential set); cached answers of earlier sessions are
        dropped (8.2)."""
        ctx = self.ctx
        serial = terminal.serial or ""
        old = ctx.sessions.detach(serial)
        if old is not None:
            if old.tcp is not None and not old.tcp.same_path(ex.bearer):
                old.tcp.close()
            ctx.events.publish(SessionEnded(terminal, "session replaced by a new LOGIN"))
        session = opening.session
        session.last_valid = ex.now
        ctx.sessions.begin(session)
        ctx.sessions.bind(session, ex.bearer)
        terminal.session_key = opening.session_key
        terminal.session_key_expiry = opening.session_key_expiry
        terminal.session_timestamp = session.timestamp
        terminal.protocol_version = session.version
        terminal.software_version = opening.software_version
        terminal.last_seen = ex.now
        ctx.cache.clear_terminal(serial)
        ctx.set_state(terminal, TerminalState.LOGGED_IN)
        if opening.credentials_committed:
            ctx.registry.save(terminal)
        else:
            ctx.registry.save_session(terminal)  # coalesced, no credentials (D-392)
        log.info(
            "Terminal {serial} logged in over {bearer} from {peer}",
            event="login",
            version=f"{session.version:#06x}",
            **ex.log_keys,
        )
        return session

    # ------------------------------------------------------------------ LOGOUT

    def on_logout(self, ex: Exchange) -> None:
        ctx = self.ctx
        frame = ex.frame
        serial = frame.header.serial
        terminal = ctx.registry.get(serial)
        if terminal is None:
            ctx.refuse(ex, Reason.UNKNOWN_SERIAL, "not provisioned")
            return
        ex.terminal = terminal
        session = self.proven(ex, terminal) or ctx.sessions.get(serial)
        timestamp = session.timestamp if session else terminal.last_session_timestamp
        if not self.authenticate(ex, terminal, timestamp):
            return
        msg = m.Logout.decode_body(ex.frame.body, padded=True)
        ex.session = session
        # Without a session nothing changes, so no row either: the digest uses the last
        # session timestamp, and a replay of it would otherwise write one per copy.
        ctx.answer(ex, m.LogoutAck(), encrypt=False, row=session is not None)
        if session is None:
            return
        reason = msg.reason
        state = (
            TerminalState.OFFLINE
            if reason == LogoutReason.COMM_FAILURE
            else TerminalState.LOGGED_OUT
        )
        ctx.log(
            terminal,
            serial,
            "in",
            ex.bearer,
            Command.LOGOUT,
            frame.header.sequence_id,
            "logout",
            f"reason {reason}",
        )
        if reason == LogoutReason.RECONFIGURED:
            ctx.events.publish(Reconfiguring(terminal))
        self.end_session(terminal, reason, state, ex.now, via=ex)

    # ------------------------------------------------------------------ digest

    def authenticate(self, ex: Exchange, terminal: Terminal, timestamp: int) -> bool:
        """Digest (IP) or MSISDN (SMS) check of a request or answer; sets the answer's key
        (6.2). The terminal's profile may take a digest without its flag (C1), or no
        digest on the session's TCP connection (C3, answered unsigned as PD-05 does);
        each refusal says which profile would have taken the message (spec 1.6)."""
        ctx = self.ctx
        if ex.sms:
            if normalize_msisdn(ex.bearer.address) != terminal.msisdn:
                ctx.refuse(ex, Reason.WRONG_PATH, "by SMS from a number not bound to it")
                return False
            ex.authenticated = True
            return True
        session = ctx.sessions.get(terminal.serial or "")
        try:
            up, down = (session.up, session.down) if session else digest_keys(terminal)
        except LookupError:
            ctx.refuse(ex, Reason.AUTH_FAILED, "no credential set to verify the digest")
            return False
        frame = ex.frame
        signed = frame if frame.digest is not None else unflagged_digest(frame)
        verified = signed is not None and verify_frame(signed, timestamp, up)
        if (
            signed is not None
            and verified
            and (signed is frame or ctx.frames.profile_of(terminal).digest_without_flag)
        ):
            ex.frame, ex.key, ex.timestamp = signed, down, timestamp
            ex.authenticated = True
            return True
        # Refused from here on: the name and the profile are for saying why.
        name, profile = ex.header.command_name, ctx.frames.profile_of(terminal)
        if verified:
            ctx.refuse(
                ex,
                Reason.MISSING_DIGEST,
                f"{name} lacks its digest (flag 0x20 clear)",
                hint=would_accept("C1", f"appends a valid E021 to {name} without flag 0x20"),
            )
            return False
        if signed is not None and header_only_digest(signed, timestamp, up):
            ctx.auth_failure(
                ex,
                terminal,
                f"the {name} digest covers the 28-byte header alone: the body is unauthenticated",
                reason=Reason.HEADER_ONLY_DIGEST,
                hint=would_accept("C4", f"signs {name} over its header alone"),
            )
            return False
        if frame.digest is not None:
            ctx.auth_failure(ex, terminal, f"{name} digest does not verify")
            return False
        if not profile.accepts_unsigned(ex.header.command_id):
            ctx.refuse(
                ex,
                Reason.MISSING_DIGEST,
                "the required digest is missing",
                hint=compat.unsigned_hint(ex.header.command_id, name),
            )
            return False
        if session is None or session.tcp is None or not session.tcp.same_path(ex.bearer):
            ctx.refuse(
                ex,
                Reason.MISSING_DIGEST,
                f"unsigned {name} is accepted only on the TCP connection of the "
                "logged-in session (C3)",
            )
            return False
        ex.timestamp = timestamp
        ex.authenticated = True
        return True

    # ------------------------------------------------------------------ the session's end

    def end_session(
        self,
        terminal: Terminal,
        reason: int,
        state: str,
        now: float,
        *,
        via: Exchange | None = None,
    ) -> None:
        """Release a logical connection (9.4, 9.5); ``via`` is the terminal's LOGOUT."""
        ctx = self.ctx
        serial = terminal.serial or ""
        session = ctx.sessions.get(serial)
        if session is not None and state == TerminalState.OFFLINE and session.tcp is not None:
            session.tcp.close()
        ctx.sessions.end(serial)
        if via is not None:
            keys = via.log_keys
        elif session is not None and session.bearer is not None:
            keys = {"serial": serial, "bearer": session.bearer.kind, "peer": session.bearer.address}
        else:
            keys = {"serial": serial}
        if session is not None:
            terminal.last_session_timestamp = session.timestamp
        elif terminal.session_timestamp:
            terminal.last_session_timestamp = terminal.session_timestamp
        terminal.session_timestamp = None
        terminal.session_key = None
        terminal.session_key_expiry = None
        ctx.cache.clear_terminal(serial)
        ctx.set_state(terminal, state, reason)
        ctx.registry.save(terminal)
        log.info(
            "Session of {serial} ended (logout reason {logout_reason}): {state}",
            event="logout",
            logout_reason=reason,
            state=state,
            **keys,
        )
        ctx.events.publish(SessionEnded(terminal, f"session ended (logout reason {reason})"))

    def logout(
        self, terminal: Terminal, reason: int, now: float, state: str | None = None
    ) -> bool:
        """LOGOUT(reason) once on an IP bearer, released on its ACK or after
        ``answer_timeout_ip`` (4.5); without an IP path the session ends now, in
        ``state`` (default: as the ACK would leave it). Whether a LOGOUT was sent."""
        if self.platform_logout(terminal, reason):
            return True
        self.end_session(terminal, reason, state or release_state(reason), now)
        return False

    def platform_logout(self, terminal: Terminal, reason: int) -> bool:
        """Send LOGOUT(reason) once on an IP bearer; release on the ACK or timeout (4.5).

        Returns False when there is no IP path (the caller releases at once).
        """
        ctx = self.ctx
        session = ctx.sessions.get(terminal.serial or "")
        bearer = ctx.sessions.reachable(terminal)
        if session is None or bearer is None or bearer.kind == "sms":
            return False
        session.release_at = ctx.clock.seconds() + ctx.config.answer_timeout_ip
        session.release_reason = reason
        ctx.watch(session, terminal)
        ctx.events.publish(LogoutDue(terminal, reason, bearer))
        return True

    def logout_answered(self, terminal: Terminal) -> None:
        """The terminal acknowledged the platform's LOGOUT: release now."""
        session = self.ctx.sessions.get(terminal.serial or "")
        if session is not None and session.release_at is not None:
            reason = session.release_reason or 0
            self.end_session(terminal, reason, release_state(reason), self.ctx.clock.seconds())


def release_state(reason: int | None) -> TerminalState:
    """The state a platform LOGOUT leaves: offline for a communication failure (9.4)."""
    return (
        TerminalState.OFFLINE if reason == LogoutReason.COMM_FAILURE else TerminalState.LOGGED_OUT
    )


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

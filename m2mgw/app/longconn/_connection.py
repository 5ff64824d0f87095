"""The two ends of a long connection: :class:`PlatformSession` and :class:`ClientSession`.

Each adds its side's rules to :class:`~m2mgw.app.longconn._state.SessionCore`: the
login (5.2, 6.5.1, D-256), heartbeats and timeouts (6.6), the Session Key's life and
its updates (7.3, 7.5), and the Base Key announcement (7.2).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from typing import Any

from m2mgw.app import keys
from m2mgw.app import operations as ops
from m2mgw.app.longconn._events import (
    BaseKeyAnnounced,
    Event,
    KeyUpdated,
    LoggedIn,
    LoginConfirmed,
    LoginRejected,
    LoginRequested,
)
from m2mgw.app.longconn._layouts import decode_body
from m2mgw.app.longconn._state import (
    ANSWER_TIMEOUT,
    HEARTBEAT_DEFAULT,
    KEY_REFRESH_AT,
    KEY_REFRESH_RETRY,
    LOGIN_TIMEOUT,
    MAX_TIMEOUTS_IN_A_ROW,
    SESSION_TTL,
    WINDOW,
    AppCredentials,
    Outstanding,
    SessionCore,
    State,
    clamp_heartbeat,
    log,
)
from m2mgw.app.longconn._wire import (
    PROTOCOL_VERSION,
    BodyError,
    Command,
    Frame,
    HeaderError,
    LongConnError,
    SessionError,
    command_name,
)
from m2mgw.protocol.constants import ACK_BIT
from m2mgw.protocol.errors import ProtocolError

_PLATFORM_REQUESTS = frozenset({
    Command.APP_LOGOUT, Command.APP_DELIVER_DATA, Command.APP_RESULT_NOTIFY,
    Command.APP_ALARM_NOTIFY, Command.APP_STATE_NOTIFY, Command.APP_CONFIG_TRAP_NOTIFY,
    Command.APP_KEY_UPDATE,
})
_APP_REQUESTS = frozenset(Command) - {
    Command.APP_DELIVER_DATA, Command.APP_RESULT_NOTIFY, Command.APP_ALARM_NOTIFY,
    Command.APP_STATE_NOTIFY, Command.APP_CONFIG_TRAP_NOTIFY, Command.APP_KEY_UPDATE,
}


class PlatformSession(SessionCore):
    """The platform end of one application connection (6.6, 7.5).

    ``lookup`` maps an AppID to its credentials (``None`` if unknown); it must not
    block. Policy (disabled apps, session limits, the session timestamp) stays with
    the caller: answer :class:`LoginRequested` with :meth:`accept_login` or
    :meth:`reject_login`.
    """

    role = "platform"
    _own_requests = _PLATFORM_REQUESTS
    _peer_requests = _APP_REQUESTS

    def __init__(
        self, lookup: Callable[[str], AppCredentials | None], now: float,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        super().__init__(now)
        self._lookup = lookup
        self._random = random
        self._login: LoginRequested | None = None
        self._login_frame: Frame | None = None
        self._ttl_end: float | None = None
        self._session_ttl = SESSION_TTL
        self._refresh_at: float | None = None
        self._key_update: tuple[int, bytes | None] | None = None  # (seq, new session key)
        #: Whether the application proved, after the ACK, that it holds the password
        #: (:class:`LoginConfirmed`); until then nothing but APP_LOGOUT is sent (D-256).
        self.confirmed = False
        self._confirm_by: float | None = None

    @property
    def encrypt_notifications(self) -> bool:
        return self.encrypt_requests

    # login --------------------------------------------------------------------------------

    def _on_before_login(self, frame: Frame, now: float) -> None:
        header = frame.header
        if self.state is State.LOGIN_PENDING or header.is_ack:
            raise HeaderError(f"{command_name(header.command_id)} while not logged in")
        if not ops.is_valid_app_id(header.app_id):
            self._log_discard(frame.raw, f"invalid AppID {header.app_id!r}")
            self._close("invalid AppID")
            return
        creds = self._lookup(header.app_id)
        if header.command_id != Command.APP_LOGIN:
            # 6.6: answer 3 (signed with TS 0 when the AppID is known), then close.
            self.credentials, self.app_id = creds, header.app_id
            self._answer_result(frame, ops.ResultCode.SESSION_INVALID, now,
                                signed=creds is not None)
            self._close("request before login")
            return
        self.app_id = header.app_id
        if header.version != PROTOCOL_VERSION:
            failure: int | None = ops.ResultCode.UNSUPPORTED
        elif creds is None:
            failure = ops.ResultCode.APP_UNKNOWN
        else:
            self.credentials = creds
            failure = None if self._verified(frame) else ops.ResultCode.AUTH_FAILED
        if failure is not None:
            self._answer_result(frame, failure, now, signed=False)
            self._close("login failed")
            return
        try:
            request = decode_body(Command.APP_LOGIN, frame.body)
        except LongConnError:
            self._answer_result(frame, ops.ResultCode.BAD_PARAMETER, now)
            self._close("login failed")
            return
        self.state = State.LOGIN_PENDING
        self._login_frame = frame
        self._login = LoginRequested(header.sequence_id, header.app_id, request)
        self._events.append(self._login)

    def accept_login(
        self, now: float, *, timestamp: int, session_ttl: int = SESSION_TTL,
        session_key: bytes | None = None, base_key: str | None = None,
    ) -> ops.LoginResponse:
        """Open the session: send APP_LOGIN_ACK 0 with a fresh wrapped Session Key.

        ``timestamp`` must exceed the application's previous session timestamp (6.5.1);
        ``base_key`` overrides the looked-up one (e.g. after a scheduled rotation), for
        the key blobs of later updates too. The Session Key is replaced before
        ``session_ttl`` is up (:data:`KEY_REFRESH_AT`).
        """
        login, creds = self._pending_login()
        if base_key is not None:
            # The key the application logged in under: 7.5 wraps updates in it too.
            creds = self.credentials = dataclasses.replace(creds, base_key=base_key)
        key = session_key if session_key is not None else keys.generate_session_key(self._random)
        response = ops.LoginResponse(
            result_code=ops.ResultCode.OK,
            server_time=timestamp,
            session_key=keys.wrap_session_key(creds.profile, creds.base_key, key, self._random),
            heartbeat_interval=clamp_heartbeat(login.request.heartbeat_interval),
            session_ttl=session_ttl,
        )
        self.timestamp = timestamp
        self.heartbeat = response.heartbeat_interval or HEARTBEAT_DEFAULT
        self.encrypt_requests = login.request.encrypt_notifications
        raw, _ = self._encode(Command.APP_LOGIN | ACK_BIT, login.sequence_id, response,
                              encrypt=False)  # a few dozen bytes: never fragmented
        assert self._login_frame is not None
        self._answers[(Command.APP_LOGIN, login.sequence_id)] = (
            now, hashlib.sha256(self._login_frame.raw).digest(), raw
        )
        self._write(raw, now)
        self.cipher = keys.session_cipher(creds.profile, key, self._random)
        self.state = State.ACTIVE
        self._session_ttl = session_ttl
        self._key_issued(now)
        # A conforming application speaks within one heartbeat interval (6.6).
        self._confirm_by = now + self.heartbeat + ANSWER_TIMEOUT
        self.last_received = now
        log.info("application {app_id} logged in (timestamp {timestamp})",
                  app_id=self.app_id, timestamp=timestamp)
        return response

    def reject_login(self, result: int, now: float) -> None:
        """Answer the pending APP_LOGIN with a failure (signed, TS 0) and close."""
        if result == ops.ResultCode.OK:
            raise SessionError("use accept_login to accept")
        self._pending_login()
        assert self._login_frame is not None
        self._answer_result(self._login_frame, result, now)
        self._close("login rejected")

    def _pending_login(self) -> tuple[LoginRequested, AppCredentials]:
        if self.state is not State.LOGIN_PENDING or self._login is None:
            raise SessionError("no APP_LOGIN is waiting for a decision")
        assert self.credentials is not None
        return self._login, self.credentials

    # requests -----------------------------------------------------------------------------

    def _on_request_frame(self, frame: Frame, now: float) -> None:
        if frame.header.command_id == Command.APP_LOGIN:
            # A retransmitted APP_LOGIN gets its cached ACK; a new one on a live session
            # is refused with 11 and the session stays (profile decision).
            if not self._replay(frame, now):
                self._answer_result(frame, ops.ResultCode.DUPLICATE, now)
            return
        super()._on_request_frame(frame, now)

    def _on_verified(self, frame: Frame) -> None:
        # A retransmitted APP_LOGIN verifies with TS 0 too: it proves nothing.
        if not self.confirmed and frame.header.command_id != Command.APP_LOGIN:
            self.confirmed = True
            self._confirm_by = None
            self._events.append(LoginConfirmed())

    def _check_can_send(self, command_id: int) -> None:
        super()._check_can_send(command_id)
        if not self.confirmed and command_id != Command.APP_LOGOUT:
            raise SessionError("the login is not confirmed yet")
        if self._key_update is not None:
            raise SessionError("a key update is outstanding (AD-12)")

    @property
    def key_update_outstanding(self) -> bool:
        """APP_KEY_UPDATE awaits its ACK: no other request may be sent (AD-12)."""
        return self._key_update is not None

    def _key_issued(self, now: float) -> None:
        """A Session Key came into use: it lives ``session_ttl`` (7.3), and is replaced
        before that (7.3 step 4) if the session is to go on."""
        self._ttl_end = now + self._session_ttl
        self._refresh_at = now + KEY_REFRESH_AT * self._session_ttl

    def update_session_key(self, now: float, session_key: bytes | None = None) -> int:
        """APP_KEY_UPDATE type 1: the new key takes effect at its ACK (7.5), for a new
        ``session_ttl``.

        Refused while a part exchange is open: its parts were (or are being) encrypted
        under the old key, and would be decrypted under the new one.
        """
        creds = self._require_active()
        if self.fragmenting:
            raise SessionError("a part exchange is open; update the key later")
        key = session_key if session_key is not None else keys.generate_session_key(self._random)
        blob = keys.wrap_session_key(creds.profile, creds.base_key, key, self._random)
        return self._send_key_update(ops.KeyUpdate(key_type=1, key_blob=blob), key, now)

    def announce_base_key(self, now: float, new_base_key: str, effective_time: int) -> int:
        """APP_KEY_UPDATE type 2: the next Base Key, under the current one (7.2)."""
        creds = self._require_active()
        blob = keys.wrap_base_key(creds.profile, creds.base_key, new_base_key, self._random)
        update = ops.KeyUpdate(key_type=2, key_blob=blob, effective_time=effective_time)
        return self._send_key_update(update, None, now)

    def _require_active(self) -> AppCredentials:
        if self.state is not State.ACTIVE or self.credentials is None:
            raise SessionError("no active session")
        return self.credentials

    def _send_key_update(self, update: ops.KeyUpdate, key: bytes | None, now: float) -> int:
        self._check_can_send(Command.APP_KEY_UPDATE)
        seq = self._send_request(Command.APP_KEY_UPDATE, update, now)
        self._key_update = (seq, key)
        return seq

    def _on_answer(self, seq: int, pending: Outstanding, response: Any, now: float) -> None:
        if pending.command_id == Command.APP_LOGOUT:
            self._close("logout")
            return
        if self._key_update is not None and self._key_update[0] == seq:
            key = self._key_update[1]
            self._key_update = None
            if response.result_code != ops.ResultCode.OK:
                self._logout_and_close(6, "key update refused", now)
                return
            if key is not None and self.credentials is not None:
                self.cipher = keys.session_cipher(self.credentials.profile, key, self._random)
                self._key_issued(now)
            self._events.append(KeyUpdated(pending.payload.key_type))
            return
        super()._on_answer(seq, pending, response, now)

    def _on_timeout(self, seq: int, pending: Outstanding, now: float) -> None:
        if pending.command_id == Command.APP_LOGOUT:
            self._close("logout not answered")
        elif self._key_update is not None and self._key_update[0] == seq:
            self._key_update = None
            self._logout_and_close(6, "key update not answered", now)
        else:
            super()._on_timeout(seq, pending, now)

    def _logout_and_close(self, reason: int, why: str, now: float) -> None:
        """Send APP_LOGOUT once (no answer awaited) and close (6.6, 7.5)."""
        seq = self._next_seq
        self._next_seq = ops.next_id(seq)
        encrypt = self.encrypt_requests and self.cipher is not None
        raw, _ = self._encode(Command.APP_LOGOUT, seq, ops.Logout(reason=reason),
                              encrypt=encrypt)  # one byte of body: never fragmented
        self._write(raw, now)
        self._close(why)

    # timers -------------------------------------------------------------------------------

    def _timer_deadlines(self) -> list[float]:
        if self.state in (State.AWAIT_LOGIN, State.LOGIN_PENDING):
            return [self.connected_at + LOGIN_TIMEOUT]
        times = [self.last_received + 3 * self.heartbeat]
        if self._ttl_end is not None and self.state is State.ACTIVE:
            times.append(self._ttl_end)
        if self._refresh_at is not None and self.state is State.ACTIVE:
            times.append(self._refresh_at)
        if self._confirm_by is not None:
            times.append(self._confirm_by)
        return times

    def _on_timers(self, now: float) -> None:
        if self.state in (State.AWAIT_LOGIN, State.LOGIN_PENDING):
            if now >= self.connected_at + LOGIN_TIMEOUT:
                self._close("no login")
        elif self._confirm_by is not None and now >= self._confirm_by:
            log.warn("application {app_id}: nothing signed followed its APP_LOGIN; closed "
                      "(a replayed login?)", app_id=self.app_id)
            self._close("login not confirmed")
        elif now >= self.last_received + 3 * self.heartbeat:
            if self.state is State.ACTIVE:
                self._logout_and_close(2, "heartbeat lost", now)
            else:
                self._close("heartbeat lost")
        elif self._ttl_end is not None and now >= self._ttl_end and self.state is State.ACTIVE:
            self._ttl_end = None
            self._key_update = None
            self._send_request(Command.APP_LOGOUT, ops.Logout(reason=5), now)
            self.state = State.ENDED  # the ACK (or its timeout) closes the connection
        elif (self._refresh_at is not None and now >= self._refresh_at
              and self.state is State.ACTIVE):
            self._refresh_key(now)

    def _refresh_key(self, now: float) -> None:
        """Replace the Session Key before its ``session_ttl`` is up (7.3 step 4, D-343);
        a session that cannot send the update yet tries again shortly, and one that
        never could still ends at its TTL with APP_LOGOUT reason 5."""
        try:
            self.update_session_key(now)
        except SessionError as exc:
            self._refresh_at = now + KEY_REFRESH_RETRY
            log.debug("application {app_id}: Session Key refresh waits: {why}",
                       app_id=self.app_id, why=exc.reason)
            return
        self._refresh_at = None
        log.info("application {app_id}: Session Key refresh sent", app_id=self.app_id)


# --- application side ----------------------------------------------------------------------


class ClientSession(SessionCore):
    """The application end: logs in, keeps the link alive, follows key updates."""

    role = "application"
    _own_requests = _APP_REQUESTS
    _peer_requests = _PLATFORM_REQUESTS

    def __init__(
        self, credentials: AppCredentials, now: float, *, encrypt_requests: bool = False
    ) -> None:
        super().__init__(now)
        self.credentials = credentials
        self.app_id = credentials.app_id
        self.encrypt_requests = encrypt_requests
        self._login_seq: int | None = None
        self.session_key: bytes | None = None

    def login(
        self, now: float, *, login_type: int = 0, heartbeat_interval: int | None = 60,
        encrypt_notifications: bool = False,
    ) -> int:
        """Send APP_LOGIN (TS 0, 5.2); :class:`LoggedIn` or :class:`LoginRejected` follows."""
        if self.state is not State.AWAIT_LOGIN:
            raise SessionError("login is only possible on a fresh connection")
        request = ops.Login(login_type=login_type, heartbeat_interval=heartbeat_interval,
                            encrypt_notifications=encrypt_notifications)
        seq = self._send_request(Command.APP_LOGIN, request, now)
        self._login_seq = seq
        self.state = State.LOGIN_SENT
        return seq

    def _on_before_login(self, frame: Frame, now: float) -> None:
        header = frame.header
        if (self.state is not State.LOGIN_SENT or header.sequence_id != self._login_seq
                or header.command_id != Command.APP_LOGIN | ACK_BIT):
            raise HeaderError(f"{command_name(header.command_id)} before the login answer")
        response = decode_body(header.command_id, frame.body)
        trusted = self._verified(frame)
        del self._outstanding[header.sequence_id]
        if response.result_code != ops.ResultCode.OK or not trusted:
            self._events.append(LoginRejected(response.result_code, trusted))
            self._close("login rejected")
            return
        creds = self.credentials
        assert creds is not None
        try:
            key = keys.unwrap_session_key(creds.profile, creds.base_key,
                                          response.session_key or b"")
        except ProtocolError:
            self._events.append(LoginRejected(ops.ResultCode.AUTH_FAILED, True))
            self._close("session key does not decrypt")
            return
        self.session_key = key
        self.cipher = keys.session_cipher(creds.profile, key)
        self.timestamp = response.server_time or 0
        self.heartbeat = clamp_heartbeat(response.heartbeat_interval)
        self.state = State.ACTIVE
        # Signed with the new session timestamp, it confirms the login at once (D-258).
        self._send_request(Command.APP_HEARTBEAT, ops.Heartbeat(), now)
        self._events.append(LoggedIn(response))

    def _dispatch(self, frame: Frame, payload: Any, encrypted: bool, now: float) -> None:
        if frame.header.command_id == Command.APP_KEY_UPDATE:
            self._on_request(frame, payload, encrypted, now)
            self._events.pop()
            self._key_update(frame.header.sequence_id, payload, now)
        else:
            super()._dispatch(frame, payload, encrypted, now)

    def _key_update(self, seq: int, update: ops.KeyUpdate, now: float) -> None:
        """7.5: answer under the old key, then switch (type 1) or report (type 2)."""
        creds = self.credentials
        assert creds is not None
        try:
            if update.key_type == 1:
                new_key = keys.unwrap_session_key(creds.profile, creds.base_key, update.key_blob)
                event: Event = KeyUpdated(1)
            elif update.key_type == 2:
                base = keys.unwrap_base_key(creds.profile, creds.base_key, update.key_blob)
                event = BaseKeyAnnounced(base, update.effective_time)
            else:
                raise BodyError(f"unknown key type {update.key_type}")
        except ProtocolError as exc:
            self._log_discard(None, f"key update refused: {exc.reason}")
            self.answer(seq, ops.KeyUpdateResponse(result_code=ops.ResultCode.BAD_PARAMETER), now)
            return
        self.answer(seq, ops.KeyUpdateResponse(), now)
        if update.key_type == 1:
            self.session_key = new_key
            self.cipher = keys.session_cipher(creds.profile, new_key)
        self._events.append(event)

    def _on_answer(self, seq: int, pending: Outstanding, response: Any, now: float) -> None:
        if pending.command_id == Command.APP_LOGOUT:
            self._close("logout")
        elif pending.command_id != Command.APP_HEARTBEAT:
            super()._on_answer(seq, pending, response, now)

    def _on_timeout(self, seq: int, pending: Outstanding, now: float) -> None:
        if pending.command_id == Command.APP_LOGIN:
            self._events.append(LoginRejected(ops.ResultCode.TERMINAL_TIMEOUT, False))
            self._close("login not answered")
        elif pending.command_id == Command.APP_LOGOUT:
            self._close("logout not answered")
        elif pending.command_id != Command.APP_HEARTBEAT:
            super()._on_timeout(seq, pending, now)

    def _timer_deadlines(self) -> list[float]:
        if self.state is State.ACTIVE:
            return [self.last_sent + self.heartbeat]
        return []

    def _on_timers(self, now: float) -> None:
        if self._timeouts_in_a_row >= MAX_TIMEOUTS_IN_A_ROW:
            self._close("three answer timeouts")
        elif (self.state is State.ACTIVE and now >= self.last_sent + self.heartbeat
              and len(self._outstanding) < WINDOW):
            self._send_request(Command.APP_HEARTBEAT, ops.Heartbeat(), now)

"""The application operations (spec 3.2): one implementation behind both bindings.

The SOAP endpoint (:mod:`m2mgw.app.endpoint`) and the long-connection listener
(:mod:`m2mgw.app.server`) only decode, authenticate and hand
:class:`ApplicationService` dataclasses of :mod:`m2mgw.app.operations`; it executes
them from an explicit table, by request class. Downlinks are queued with the router
and answered through the :class:`~m2mgw.app.outbox.Outbox` once their terminal
request has an outcome (2.7). What an application may do is :mod:`m2mgw.app.policy`;
what terminals tell applications is :mod:`m2mgw.app.uplink`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.app import fetch, keys, policy
from m2mgw.app import operations as ops
from m2mgw.app.outbox import Outbox, decode_notification
from m2mgw.config import AppConfig
from m2mgw.core import requests as build
from m2mgw.core.model import (
    Application,
    AppMessage,
    AppNotification,
    FileTransaction,
    Request,
    RequestState,
    Terminal,
    TerminalState,
)
from m2mgw.core.registry import Registry
from m2mgw.core.router import Router
from m2mgw.core.session import Bearer
from m2mgw.protocol.compat import ProfileRefused
from m2mgw.protocol.constants import Command

log = Logger()

R = ops.ResultCode
respond = ops.make_response
#: An operation's handler: the response, or a Deferred of it.
Handler = Callable[[Application, Any], Any]


class Sessions(Protocol):
    """What the operations need of the terminals' sessions (the engine satisfies it)."""

    def reachable(self, terminal: Terminal) -> Bearer | None:
        """The bearer a request to ``terminal`` would go on now, if any (9.6)."""
        ...

    def check_deliverable(self, terminal: Terminal, command: int, body: bytes) -> None:
        """Raise ``ProfileRefused`` when the terminal's profile cannot carry the request."""
        ...


class FileOffers(Protocol):
    """The HTTP file service as an Upgrade uses it (:class:`m2mgw.web.files.FileService`)."""

    @property
    def public_url(self) -> str:
        """The base of the DOWNLOAD_INFO URLs (``[http] public_url``)."""
        ...

    def offer(self, serial: str, path: str, version: str) -> Deferred[FileTransaction]:
        """Copy ``path`` for ``serial``'s update ``version``; fires once stored."""
        ...


class ApplicationService:
    """Executes the operations of applications, and tells them their requests' outcomes."""

    #: Seconds an Upgrade's sourceUrl may take: below the long connection's 15 s
    #: answer timeout (6.6), so the answer still arrives.
    source_fetch_timeout = 10.0

    def __init__(
        self,
        registry: Registry,
        router: Router,
        sessions: Sessions,
        files: FileOffers | None,
        outbox: Outbox,
        clock: IReactorTime,
        config: AppConfig,
    ) -> None:
        self.registry = registry
        self.router = router
        self.sessions = sessions
        #: None when the file service is disabled (``[http] listen = none``).
        self.files = files
        self.outbox = outbox
        self.clock = clock
        self.config = config
        self._sync_waiters: dict[int, Deferred[Request]] = {}
        #: The operations executed here (3.2), by request class; Login and Logout are
        #: the bindings' own.
        self._operations: dict[type, Handler] = {
            ops.Heartbeat: self._heartbeat,
            ops.SendData: self._send_data,
            ops.SendCommand: self._send_command,
            ops.SetConfig: self._set_config,
            ops.RemoteControl: self._remote_control,
            ops.GetConfig: self._get_config,
            ops.Upgrade: self._upgrade,
            ops.QueryTerminalStatus: self._query_terminal_status,
            ops.QueryTerminalInfo: self._query_terminal_info,
            ops.ListTerminals: self._list_terminals,
            ops.QueryMessageStatus: self._query_message_status,
            ops.FetchMessages: self._fetch_messages,
            ops.AckMessages: self._ack_messages,
        }

    # --- identity -------------------------------------------------------------------

    def application(self, app_id: str) -> Application | None:
        """An enabled application by app id (disabled ones count as unknown, 2.5)."""
        app = self.registry.application(app_id)
        return app if app is not None and app.enabled else None

    def base_key(self, app: Application, now: float) -> str | None:
        """The Base Key for a login at ``now``; None once expired (7.2 step 4)."""
        state = keys.BaseKeyState(app.cipher, app.base_key, app.base_key_expiry,
                                  app.next_base_key, app.next_base_key_from,
                                  app.next_base_key_expiry)
        current = state.current(now)
        if state.key != app.base_key:  # the scheduled rotation took effect
            app.base_key, app.base_key_expiry = state.key, state.expires_at
            app.next_base_key = app.next_base_key_from = app.next_base_key_expiry = None
            self.registry.save_application(app)
        return current

    def session_timestamp(self, app: Application, now: float) -> int:
        """A session timestamp strictly above the application's previous one (6.5.1)."""
        stamp = max(int(now), app.last_session_timestamp + 1)
        app.last_session_timestamp = stamp
        self.registry.save_application(app)
        return stamp

    def visible(self, app: Application, serial: str) -> Terminal | None:
        """The terminal if it is bound to ``app`` (2.6), else None."""
        terminal = self.registry.get(serial)
        return terminal if terminal is not None and policy.visible(app, terminal) else None

    # --- request outcomes (2.7) -----------------------------------------------------------

    def on_result(self, request: Request) -> None:
        """A router result observer: an application request's outcome is stored on its
        msgId and told to the application (NotifyResult), or answers a waiting sync
        GetConfig."""
        if not request.origin.startswith(policy.ORIGIN_PREFIX) or not request.msg_id:
            return
        waiter = self._sync_waiters.pop(int(request.msg_id), None)
        d = self.registry.app_message(int(request.msg_id))
        d.addCallback(self._report, request, waiter)
        d.addErrback(lambda f: log.failure("Cannot report request {id}", f, id=request.id))

    def _report(self, message: AppMessage | None, request: Request,
                waiter: Deferred[Request] | None) -> None:
        if message is None:
            return
        state, op_result, terminal_result = policy.message_outcome(request)
        message.state, message.op_result, message.terminal_result = (
            state, op_result, terminal_result)
        self.registry.update_app_message(message)
        if waiter is not None and not waiter.called:
            waiter.callback(request)  # the sync GetConfig answers with the values
            return
        quiet = (message.operation in ("SendData", "SendCommand") and state == "ACKED"
                 and not message.need_ack)
        app = self.registry.application(message.app_id)
        if quiet or app is None:
            return
        items, failed = policy.answer_items(request)
        self.outbox.notify(app, ops.NotifyResult(
            notify_id=0, msg_id=message.id or 0, biz_seq=message.biz_seq,
            operation=message.operation, terminal_id=message.serial, state=state,
            op_result=op_result, terminal_result=terminal_result, items=items,
            failed_tags=failed, time=int(self.clock.seconds()),
        ))

    # --- operations (3.2) -----------------------------------------------------------

    def handle(self, app: Application, request: object) -> Deferred[Any]:
        """Execute one operation for ``app``; the response (never a failure)."""
        handler = self._operations.get(type(request))
        if handler is None:
            return succeed(respond(ops.Response, R.UNSUPPORTED, "unsupported operation"))
        name = type(request).__name__
        spec = ops.OPERATIONS[name]

        def failed(failure: Failure) -> Any:
            refused = failure.value
            if isinstance(refused, ProfileRefused):
                # The terminal's compatibility profile cannot carry it (C7, C9): 10 or 12.
                code = R.TOO_LARGE if refused.too_large else R.UNSUPPORTED
                return respond(spec.response, code, refused.reason)
            log.failure("{operation} of {app_id} failed", failure, operation=name,
                        app_id=app.app_id)
            return respond(spec.response, R.INTERNAL_ERROR, "internal error")

        return maybeDeferred(handler, app, request).addErrback(failed)

    def _heartbeat(self, app: Application, request: ops.Heartbeat) -> Any:
        return ops.HeartbeatResponse(result_desc="OK")

    # downlink ---------------------------------------------------------------------

    def _admit(self, app: Application, serial: str, ttl: int, biz_seq: str | None,
               response: type) -> tuple[Terminal | None, Any]:
        """The checks every downlink shares: binding, TTL, bizSeq (2.6, 2.7, AD-14)."""
        terminal = self.visible(app, serial)
        if terminal is None:
            return None, respond(response, R.TERMINAL_UNKNOWN, "terminal unknown or not bound")
        if not policy.MIN_TTL <= ttl <= policy.MAX_TTL:
            return None, respond(response, R.BAD_PARAMETER, f"ttlSeconds {ttl} not 60-604800")
        if biz_seq is not None:
            if not ops.is_valid_biz_seq(biz_seq):
                return None, respond(response, R.BAD_PARAMETER, "bad bizSeq")
            seen = self.registry.app_message_by_biz_seq(app.app_id, biz_seq)
            if seen is not None and self.clock.seconds() - seen.created_at < policy.BIZ_SEQ_WINDOW:
                return None, respond(response, R.DUPLICATE, "duplicate bizSeq",
                                       msg_id=seen.id)
        return terminal, None

    def _submit(self, app: Application, operation: str, terminal: Terminal,
                built: build.Built, ttl: int, biz_seq: str | None,
                need_ack: bool = True) -> Deferred[tuple[int, AppMessage]]:
        """Store the msgId, queue the terminal request; (0 sent now | 5 queued, message).

        A request the terminal's profile cannot carry raises ProfileRefused first, so
        that no msgId is stored for it (issue #10).
        """
        self.sessions.check_deliverable(terminal, *built)
        serial = terminal.serial or ""
        reachable = self.sessions.reachable(terminal) is not None
        message = AppMessage(app_id=app.app_id, operation=operation, serial=serial,
                             biz_seq=biz_seq, need_ack=need_ack,
                             created_at=self.clock.seconds())
        self.registry.add_app_message(message)
        command, body = built
        d = self.router.submit(serial, command, body, origin=policy.ORIGIN_PREFIX + app.app_id,
                               ttl=ttl, msg_id=str(message.id))

        def queued(request: Request) -> tuple[int, AppMessage]:
            message.request_id = request.id
            self.registry.update_app_message(message)
            log.info("{operation} {msg_id} of {app_id} for {serial}: request {id}",
                     operation=operation, msg_id=message.id, app_id=app.app_id,
                     serial=serial, id=request.id)
            return (R.OK if reachable else R.TERMINAL_OFFLINE), message

        return d.addCallback(queued)

    def _downlink(self, app: Application, request: Any, response: type,
                  make: Callable[[], build.Built], need_ack: bool = True) -> Any:
        terminal, refused = self._admit(app, request.terminal_id, request.ttl_seconds,
                                        request.biz_seq, response)
        if terminal is None:
            return refused
        try:
            built = make()
        except build.RequestError as exc:
            return respond(response, R.BAD_PARAMETER, str(exc))
        d = self._submit(app, type(request).__name__, terminal, built, request.ttl_seconds,
                         request.biz_seq, need_ack)
        return d.addCallback(lambda done: _queued(response, *done))

    def _send_data(self, app: Application, request: ops.SendData) -> Any:
        if len(request.data) > ops.MAX_USER_DATA:
            return respond(ops.SendDataResponse, R.TOO_LARGE, "data too large")
        return self._downlink(app, request, ops.SendDataResponse, lambda: build.transparent_data(
            {"data": request.data.hex(), "source_ec": app.ec_code}), request.need_terminal_ack)

    def _send_command(self, app: Application, request: ops.SendCommand) -> Any:
        if len(request.command) + len(request.fixed_part) > ops.MAX_USER_DATA:
            return respond(ops.SendCommandResponse, R.TOO_LARGE, "command too large")
        return self._downlink(app, request, ops.SendCommandResponse, lambda: build.transparent_cmd(
            {"fixed": request.fixed_part.hex(), "data": request.command.hex(),
             "source_ec": app.ec_code}), request.need_terminal_ack)

    def _set_config(self, app: Application, request: ops.SetConfig) -> Any:
        failed = [i.tag for i in request.items if policy.refused_write(i.tag, app.permissions)]
        if failed or not 1 <= len(request.items) <= policy.MAX_CONFIG_TAGS:
            return ops.SetConfigResponse(result_code=R.BAD_PARAMETER, failed_tags=failed,
                                         result_desc="tags not permitted")
        values = {f"0x{i.tag:04X}": {"hex": i.value.hex()} for i in request.items}
        return self._downlink(app, request, ops.SetConfigResponse,
                              lambda: build.config_set({"values": values}))

    def _remote_control(self, app: Application, request: ops.RemoteControl) -> Any:
        if request.code not in policy.remote_codes(app.permissions):
            return respond(ops.RemoteControlResponse, R.BAD_PARAMETER,
                             f"remote-control code {request.code} not permitted")
        params = [{"tag": i.tag, "hex": i.value.hex()} for i in request.items]
        return self._downlink(app, request, ops.RemoteControlResponse,
                              lambda: build.remote_ctrl({"code": request.code, "params": params}))

    def _get_config(self, app: Application, request: ops.GetConfig) -> Any:
        response = ops.GetConfigResponse
        failed = [tag for tag in request.tags if policy.refused_read(tag)]
        if failed or not 1 <= len(request.tags) <= policy.MAX_CONFIG_TAGS:
            return response(result_code=R.BAD_PARAMETER, failed_tags=failed,
                            result_desc="tags not permitted")
        if request.mode not in ("sync", "async"):
            return respond(response, R.BAD_PARAMETER, "mode must be sync or async")
        terminal, refused = self._admit(app, request.terminal_id, ops.DEFAULT_TTL, None, response)
        if terminal is None:
            return refused
        try:
            built = build.config_get({"tags": list(request.tags)})
        except build.RequestError as exc:
            return respond(response, R.BAD_PARAMETER, str(exc))
        d = self._submit(app, "GetConfig", terminal, built, ops.DEFAULT_TTL, None)
        if request.mode == "async":
            return d.addCallback(lambda done: _queued(response, *done))
        return d.addCallback(self._wait_sync)

    def _wait_sync(self, done: tuple[int, AppMessage]) -> Any:
        """AD-13: answer with the values, or 6 after ``sync_wait`` (a notification follows)."""
        result, message = done
        msg_id = message.id or 0
        response = ops.GetConfigResponse
        if result != R.OK:
            return respond(response, result, "terminal offline, queued", msg_id=msg_id)
        waiter: Deferred[Request] = Deferred()
        self._sync_waiters[msg_id] = waiter

        def timed_out(failure: Failure) -> Any:
            self._sync_waiters.pop(msg_id, None)
            return None

        waiter.addTimeout(self.config.sync_wait, self.clock).addErrback(timed_out)

        def answered(request: Request | None) -> Any:
            if request is None:
                return respond(response, R.TERMINAL_TIMEOUT, "terminal did not answer yet",
                                 msg_id=msg_id)
            state, op_result, _ = policy.message_outcome(request)
            items, failed = policy.answer_items(request)
            return response(result_code=op_result, result_desc=state, msg_id=msg_id,
                            items=items, failed_tags=failed)

        return waiter.addCallback(answered)

    def _upgrade(self, app: Application, request: ops.Upgrade) -> Any:
        response = ops.UpgradeResponse
        files = self.files
        if files is None:
            return respond(response, R.UNSUPPORTED, "the file service is disabled")
        if (request.file_data is None) == (request.source_url is None):
            return respond(response, R.BAD_PARAMETER, "give exactly one of fileData, sourceUrl")
        terminal, refused = self._admit(app, request.terminal_id, request.ttl_seconds,
                                        request.biz_seq, response)
        if terminal is None:
            return refused
        # Before any file is fetched or stored: a terminal that cannot take one (C9).
        self.sessions.check_deliverable(terminal, Command.DOWNLOAD_INFO, b"")
        if request.file_size > ops.MAX_FILE_SIZE:
            return respond(response, R.BAD_PARAMETER, "fileSize above max_file_size")
        if request.file_data is not None and len(request.file_data) != request.file_size:
            return respond(response, R.BAD_PARAMETER, "fileSize mismatch")
        try:
            build.check_version(request.version)
        except build.RequestError as exc:
            return respond(response, R.BAD_PARAMETER, str(exc))
        if request.source_url is not None:
            # Fetched once, here; the answer (msgId, or 8) waits for it, within the
            # long connection's answer timeout.
            d = fetch.fetch_file(self.clock, request.source_url, max_size=request.file_size,
                                 timeout=self.source_fetch_timeout,
                                 allowed_hosts=self.config.upgrade_source_hosts)
        else:
            assert request.file_data is not None  # exactly one of the two, checked above
            d = maybeDeferred(fetch.store_bytes, request.file_data)
        d.addCallback(self._offer_upgrade, files, app, terminal, request)

        def refused_file(failure: Failure) -> Any:
            failure.trap(build.RequestError, fetch.FetchError)
            return respond(response, R.BAD_PARAMETER, failure.getErrorMessage())

        return d.addErrback(refused_file)

    def _offer_upgrade(self, stored: fetch.StoredFile, files: FileOffers, app: Application,
                       terminal: Terminal, request: ops.Upgrade) -> Deferred[Any]:
        """Check the file against fileSize and fileMd5, store it, send DOWNLOAD_INFO (AD-15)."""
        if stored.size != request.file_size or stored.md5 != request.file_md5.lower():
            stored.remove()
            raise fetch.FetchError("fileSize or fileMd5 mismatch")
        d = files.offer(terminal.serial or "", stored.path, request.version).addBoth(
            _remove_then, stored
        )
        d.addCallback(lambda tx: self._submit(
            app, "Upgrade", terminal,
            build.download_info(tx, files.public_url, force=request.force),
            request.ttl_seconds, request.biz_seq))
        return d.addCallback(lambda done: _queued(ops.UpgradeResponse, *done))

    # queries ----------------------------------------------------------------------

    def _status(self, app: Application, serial: str) -> ops.TerminalStatus:
        terminal = self.visible(app, serial)
        if terminal is None:
            return ops.TerminalStatus(terminal_id=serial, state="UNKNOWN", bearer="NONE")
        online = terminal.state == TerminalState.LOGGED_IN
        return ops.TerminalStatus(
            terminal_id=serial, state=policy.STATES[terminal.state],
            last_login=_last_login(terminal),
            last_active=None if terminal.last_seen is None else int(terminal.last_seen),
            bearer=policy.bearer_name(terminal.bearer) if online else "NONE",
            address=_text(terminal.address) if online else None,
            connect_mode=terminal.connect_mode,
        )

    def _query_terminal_status(self, app: Application, request: ops.QueryTerminalStatus) -> Any:
        if not 1 <= len(request.terminal_ids) <= policy.MAX_STATUS_IDS:
            return respond(ops.QueryTerminalStatusResponse, R.BAD_PARAMETER, "1-100 terminals")
        return ops.QueryTerminalStatusResponse(
            result_desc="OK", statuses=[self._status(app, s) for s in request.terminal_ids])

    def _query_terminal_info(self, app: Application, request: ops.QueryTerminalInfo) -> Any:
        terminal = self.visible(app, request.terminal_id)
        if terminal is None:
            return respond(ops.QueryTerminalInfoResponse, R.TERMINAL_UNKNOWN, "not bound")
        stored = self.registry.config_values(request.terminal_id)
        items, _ = policy.carried_items(ops.QueryTerminalInfoResponse, (
            (tag, value) for tag, value in sorted(stored.items()) if 0x3000 <= tag <= 0x3FFF))
        info = ops.TerminalInfo(  # every string as the terminal sent it, escaped (D-252)
            terminal_id=request.terminal_id, imei=ops.terminal_text(terminal.imei),
            imsi=ops.terminal_text(terminal.imsi or ""), msisdn=_text(terminal.msisdn),
            software_version=_text(terminal.software_version),
            state=policy.STATES[terminal.state], connect_mode=terminal.connect_mode,
            heartbeat_interval=terminal.heartbeat_interval, items=items,
        )
        return ops.QueryTerminalInfoResponse(result_desc="OK", info=info)

    def _list_terminals(self, app: Application, request: ops.ListTerminals) -> Any:
        if not 1 <= request.page_size <= 1000 or request.page_no < 1:
            return respond(ops.ListTerminalsResponse, R.BAD_PARAMETER, "bad page")
        since = request.modified_since
        serials = sorted(
            t.serial for t in self.registry.terminals()
            if t.serial and self.visible(app, t.serial) is not None
            and (since is None or t.updated_at >= since)
        )
        start = (request.page_no - 1) * request.page_size
        return ops.ListTerminalsResponse(result_desc="OK", total=len(serials),
                                         terminal_ids=serials[start:start + request.page_size])

    def _query_message_status(self, app: Application, request: ops.QueryMessageStatus) -> Any:
        def found(message: AppMessage | None) -> Any:
            if message is None or message.app_id != app.app_id:
                return respond(ops.QueryMessageStatusResponse, R.TERMINAL_UNKNOWN,
                                 "unknown msgId")
            state = message.state
            live = self.registry.request(message.request_id) if message.request_id else None
            if state == "QUEUED" and live is not None and live.state == RequestState.SENT:
                state = "SENT"
            final = state not in ("QUEUED", "SENT")
            return ops.QueryMessageStatusResponse(
                result_desc="OK", state=state, op_result=message.op_result if final else None,
                terminal_result=message.terminal_result, update_time=int(message.updated_at))

        return self.registry.app_message(request.msg_id).addCallback(found)

    def _fetch_messages(self, app: Application, request: ops.FetchMessages) -> Any:
        """Kept and unsent notifications, oldest first, leased for ``fetch_lease`` (3.2.14)."""
        if not 1 <= request.max_count <= policy.MAX_FETCH:
            return respond(ops.FetchMessagesResponse, R.BAD_PARAMETER, "maxCount 1-500")
        def leased(leased: tuple[list[AppNotification], int]) -> Any:
            batch, remaining = leased
            return ops.FetchMessagesResponse(
                result_desc="OK", remaining=remaining,
                messages=[ops.NotificationItem(create_time=int(n.created_at),
                                               notification=decode_notification(n))
                          for n in batch],
            )

        return self.outbox.lease(app.app_id, request.max_count).addCallback(leased)

    def _ack_messages(self, app: Application, request: ops.AckMessages) -> Any:
        if not 1 <= len(request.notify_ids) <= policy.MAX_FETCH:
            return respond(ops.AckMessagesResponse, R.BAD_PARAMETER, "1-500 notifyIds")
        return self.outbox.ack(app.app_id, request.notify_ids).addCallback(
            lambda _: ops.AckMessagesResponse(result_desc="OK"))


def _last_login(terminal: Terminal) -> int | None:
    """The session timestamp, the time the platform gave the last accepted LOGIN
    ([T] 4.4), kept as the last one once the session ends (D-331)."""
    return terminal.session_timestamp or terminal.last_session_timestamp or None


def _text(value: str | None) -> str | None:
    return None if value is None else ops.terminal_text(value)


def _remove_then(result: Any, stored: fetch.StoredFile) -> Any:
    stored.remove()
    return result


def _queued(response: type, result: int, message: AppMessage) -> Any:
    """The answer to an accepted downlink: sent now (0) or queued for later (5)."""
    desc = "OK" if result == R.OK else "terminal offline: queued"
    return respond(response, result, desc, msg_id=message.id)

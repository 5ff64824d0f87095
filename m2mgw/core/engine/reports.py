"""Reports from terminals: heartbeats, data, traps and alarms, CONFIG_REQ, FILE_REQ and
SECURITY_CONFIG (spec 4.6-4.9, 4.11, 4.13, 4.15, 4.16, 10.4.6)."""

from __future__ import annotations

import struct
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.core.engine.context import Context
from m2mgw.core.engine.credentials import Credentials
from m2mgw.core.engine.events import (
    ConfigReported,
    ExecutionReported,
    ReadyForRequests,
    VersionReported,
)
from m2mgw.core.engine.exchange import Exchange
from m2mgw.core.model import Alarm, Terminal, normalize_msisdn
from m2mgw.core.refusals import Reason
from m2mgw.core.session import Session
from m2mgw.protocol import compat, tags
from m2mgw.protocol import messages as m
from m2mgw.protocol.checksum import crc16, crc16_cmcc
from m2mgw.protocol.codec import build_frame
from m2mgw.protocol.compat import would_accept
from m2mgw.protocol.constants import (
    ACK_BIT,
    Command,
    FileReqStatus,
    FileStatus,
    SecurityOp,
    TransparentResult,
)
from m2mgw.protocol.errors import BodyError, ProtocolError
from m2mgw.protocol.tlv import Tlv, decode_tlvs, tlv_dict

log = Logger()

_STATISTICS = range(0x2000, 0x3000)

Handler = Callable[[Exchange, Terminal, Session, m.Message], None]


class Reports:
    """Acts on what a logged-in terminal sends, and answers it."""

    def __init__(self, ctx: Context, credentials: Credentials) -> None:
        self.ctx = ctx
        self.credentials = credentials
        #: The request handlers by Command_ID; the rest are never sent by terminals.
        self.handlers: dict[int, Handler] = {
            Command.TRANSPARENT_DATA: self._transparent,
            Command.TRANSPARENT_CMD: self._transparent,
            Command.CONFIG_TRAP: self._config_trap,
            Command.CONFIG_REQ: self._config_req,
            Command.FILE_REQ: self._file_req,
            Command.SECURITY_CONFIG: self._security_config,
        }

    def read_integers(self, terminal: Terminal | None, msg: m.Message) -> None:
        """C6: a little-endian terminal's integer TLVs become the numbers they mean."""
        if self.ctx.frames.profile_of(terminal).little_endian_integers:
            msg.tlvs = compat.integers_swapped(msg.tlvs)

    # ------------------------------------------------------------------ HEART_BEAT

    def on_heartbeat(self, ex: Exchange) -> None:
        ctx = self.ctx
        header = ex.header
        session = ctx.sessions.get(header.serial)
        if session is None:
            ctx.refuse(ex, Reason.NOT_LOGGED_IN, "no session (PD-20)")
            return
        bearer = ex.bearer
        if not (
            (session.tcp is not None and session.tcp.same_path(bearer))
            or (bearer.kind == "udp" and bearer.host == session.auth_host)
        ):
            ctx.refuse(ex, Reason.WRONG_PATH, "not the session's bearer (PD-25)")
            return
        # Traffic for offline detection (PD-25), but unsigned: it never moves the bearer,
        # as anyone behind the terminal's NAT address could send it (D-297).
        session.last_valid = ex.now
        registry = ctx.registry
        registry.touch(header.serial, ex.now, bearer.kind, bearer.address)
        bearer.send(
            build_frame(
                Command.HEART_BEAT | ACK_BIT,
                header.sequence_id,
                header.serial,
                b"",
                version=header.version,
            )
        )
        ctx.stats.answer_latency[header.command_id].observe(ctx.clock.seconds() - ex.now)
        if ex.frame.body:
            try:
                tlvs = decode_tlvs(ex.frame.body)
            except ProtocolError:
                return
            terminal = registry.get(header.serial)
            if ctx.frames.profile_of(terminal).little_endian_integers:
                tlvs = compat.integers_swapped(tlvs)
            keys = ex.log_keys
            refused = ctx.frames.value_refused
            values = tlv_dict(t for t in tlvs if not refused(terminal, t, keys))
            # Status and vendor TLVs (e.g. CSQ) ride on every heartbeat: store changes only.
            stored = registry.config_values(header.serial)
            changed = {tag: raw for tag, raw in values.items() if stored.get(tag) != raw}
            if changed:
                registry.store_config(header.serial, changed, "reported")

    # ------------------------------------------------------------------ data

    def _transparent(
        self, ex: Exchange, terminal: Terminal, session: Session, msg: m.Message
    ) -> None:
        """TRANSPARENT_DATA / TRANSPARENT_CMD from a terminal (4.7, 4.16, PD-27)."""
        assert isinstance(msg, m.TransparentData | m.TransparentCmd)
        ctx = self.ctx
        ack: type[m.TransparentDataAck | m.TransparentCmdAck] = (
            m.TransparentDataAck if isinstance(msg, m.TransparentData) else m.TransparentCmdAck
        )
        if isinstance(msg, m.TransparentData) and not self._crc_ok(ex, terminal, msg):
            ctx.answer(ex, ack(TransparentResult.CRC_MISMATCH))
            return
        result = self.route_transparent(ex, terminal, msg)
        if isinstance(result, Deferred):
            # Answer once the message is stored; duplicates meanwhile are ignored (8.2).
            cache = ctx.cache
            if ex.cache_key is not None:
                cache.begin(ex.cache_key, ex.frame.raw, ex.now)

            def answer(code: int) -> None:
                ctx.answer(ex, ack(code))

            def failed(failure: Failure) -> None:
                log.failure("Could not store data from {serial}", failure, serial=terminal.serial)
                if ex.cache_key is not None:
                    cache.cancel(ex.cache_key)
                if ex.frame.digest is not None:
                    session.requests.forget(ex.frame.digest)  # its retransmission is new

            result.addCallbacks(answer, failed)
            return
        ctx.answer(ex, ack(result))

    def _crc_ok(self, ex: Exchange, terminal: Terminal, msg: m.TransparentData) -> bool:
        """The CRC16 of 6.5, or the CMCC variant for a C5 terminal; a mismatch is
        reported (its data is dropped, result 4), naming C5 when the variant matches."""
        if msg.crc_ok:
            return True
        variant = msg.crc16.to_bytes(2, "big") == crc16_cmcc(msg.user_data)
        if variant and self.ctx.frames.profile_of(terminal).crc16_cmcc:
            return True
        hint = would_accept("C5", "sends the CMCC CRC16 variant") if variant else None
        self.ctx.refuse(ex, Reason.CRC_MISMATCH, "CRC16 does not match the user data", hint=hint)
        return False

    def route_transparent(
        self, ex: Exchange, terminal: Terminal, msg: m.TransparentData | m.TransparentCmd
    ) -> int | Deferred[int]:
        """Deliver uplink data to an application or another terminal; the ACK result.

        Data for an application is logged by the sink (its ``uplink`` row, which keeps
        the data), and that row is the exchange's (D-391)."""
        ctx = self.ctx
        destination = msg.destination
        if destination is None:
            if not terminal.default_app:
                return TransparentResult.UNKNOWN_DESTINATION
            destination = ("application", terminal.default_app)
        kind, target = destination
        serial = terminal.serial or ""
        if kind == "application":
            uplink = ctx.uplink
            if not uplink.exists(target):
                return TransparentResult.UNKNOWN_DESTINATION
            if target not in terminal.apps and target != terminal.default_app:
                return TransparentResult.REJECTED
            ex.logged = True
            return uplink.deliver(
                target, serial, msg, sequence_id=ex.header.sequence_id, bearer=ex.bearer.kind
            )
        other = ctx.registry.get(target)
        if other is None:
            return TransparentResult.UNKNOWN_DESTINATION
        if not (terminal.apps | {terminal.default_app}) & (other.apps | {other.default_app}) - {
            None
        }:
            return TransparentResult.REJECTED
        return ctx.requests.relay(terminal, other, msg)

    # ------------------------------------------------------------------ traps and alarms

    def _config_trap(
        self, ex: Exchange, terminal: Terminal, session: Session, msg: m.Message
    ) -> None:
        """CONFIG_TRAP (4.9): validate all, store all, then act on the special tags."""
        if self._trap_refused(ex, terminal, msg.tlvs):
            return
        self.ctx.answer(ex, m.ConfigTrapAck(0))
        self.apply_trap(terminal, msg.tlvs, ex.now, session, ex.bearer.kind)

    def _trap_refused(self, ex: Exchange, terminal: Terminal | None, tlvs: list[Tlv]) -> bool:
        """4.9 validation, and the value ranges (D-240): a trap with any unusable TLV
        is answered ret 1 with that tag, reported, and nothing of it is stored."""
        for tlv in tlvs:
            if not tags.length_fits(tlv.tag, len(tlv.raw)):
                self.ctx.refuse(
                    ex, Reason.MALFORMED, f"0x{tlv.tag:04X} has length {len(tlv.raw)}"
                )
            elif not self.ctx.frames.value_refused(terminal, tlv, ex.log_keys):
                continue
            self.ctx.answer(ex, m.ConfigTrapAck(1, tlv.tag))
            return True
        return False

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
        ctx = self.ctx
        registry = ctx.registry
        serial = terminal.serial or ""
        values = tlv_dict(tlvs)
        changed = False
        if values:
            registry.store_config(serial, values, "reported")
        # The record is saved only for a value that differs: a sync trap after every
        # LOGIN repeats what the record holds.
        if tags.SYNC_LIST in values:
            sync_tags = tags.decode_value(tags.SYNC_LIST, values[tags.SYNC_LIST])
            if sync_tags != terminal.sync_tags:
                terminal.sync_tags = sync_tags
                changed = True
        for tag in (tags.HEARTBEAT, tags.PERIOD_CTRL):
            if tag in values and len(values[tag]) in (1, 2, 4):
                interval = tags.decode_int(values[tag]) or None
                if interval == terminal.heartbeat_interval:
                    continue
                terminal.heartbeat_interval = interval
                if session is not None:
                    session.interval = ctx.interval(terminal)
                    ctx.watch(session, terminal)
                changed = True
        if tags.CONNECT_MODE in values and len(values[tags.CONNECT_MODE]) == 1:
            if terminal.connect_mode != values[tags.CONNECT_MODE][0]:
                terminal.connect_mode = values[tags.CONNECT_MODE][0]
                changed = True
        if tags.CURRENT_VERSION in values:
            version = values[tags.CURRENT_VERSION].decode("latin-1")
            ctx.events.publish(VersionReported(terminal, version))
        if tags.EXEC_REPORT in values:
            result, sequence_id = struct.unpack(">BI", values[tags.EXEC_REPORT])
            ctx.events.publish(ExecutionReported(terminal, sequence_id, result))
        if tags.CONFIG_CRC in values:
            record = ctx.sessions.find(serial)
            crc = tags.decode_int(values[tags.CONFIG_CRC])
            ok = record is None or record.traffic.config_crc_matches(crc)
            if terminal.config_unverified == ok:
                terminal.config_unverified = not ok
                changed = True
        if tags.ALARM_STATUS in values:
            self._record_alarm(serial, terminal.msisdn, values, now)
        stats = {tag: raw for tag, raw in values.items() if tag in _STATISTICS}
        if stats:
            registry.record_statistics(serial, stats, now)
        if changed:
            registry.save(terminal)
        if tags.LOCAL_CONFIG in values:
            log.info("Terminal {serial} applied a local manual configuration", serial=serial)
        ctx.uplink.notify_trap(terminal, values, bearer)
        if session is not None and not session.synced:
            session.synced = True
            session.sync_deadline = None
            ctx.events.publish(ReadyForRequests(terminal))

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

        restore = values.get(tags.ALARM_RESTORE)
        alarm = Alarm(
            serial=serial,
            msisdn=msisdn,
            code=num(tags.ALARM_CODE),
            type=num(tags.ALARM_TYPE),
            status=num(tags.ALARM_STATUS),
            cleared_code=None if restore is None else restore.decode("latin-1"),
            time=now,
            header_serial=header_serial or serial,
        )
        self.ctx.registry.record_alarm(alarm)
        log.warn(
            "Alarm {code:#06x} status {status} from {serial}",
            code=alarm.code,
            status=alarm.status,
            serial=serial or f"unattributed {msisdn}",
        )

    def alarm_without_login(self, ex: Exchange, terminal: Terminal | None) -> None:
        """An alarm CONFIG_TRAP by SMS from a terminal not logged in (10.4.6)."""
        ctx = self.ctx
        try:
            msg = m.ConfigTrap.decode_body(ex.frame.body)
        except BodyError as exc:
            ctx.unparseable(ex, Command.CONFIG_TRAP, exc)
            return
        self.read_integers(terminal, msg)
        values = tlv_dict(msg.tlvs)
        if tags.ALARM_STATUS in values and self._trap_refused(ex, terminal, msg.tlvs):
            return
        if tags.ALARM_STATUS not in values:
            ctx.refuse(ex, Reason.NOT_LOGGED_IN, "no session and not an alarm (10.4.6)")
            return
        msisdn = normalize_msisdn(ex.bearer.address)
        if terminal is not None and terminal.msisdn == msisdn:
            owner: Terminal | None = terminal
        else:
            owner = ctx.registry.by_msisdn(msisdn)
        ctx.answer(ex, m.ConfigTrapAck(0))
        if owner is None:
            # Unattributed (10.4.6): recorded with the MSISDN and the header serial.
            self._record_alarm(None, msisdn, values, ex.now, ex.header.serial)
        else:
            self.apply_trap(owner, msg.tlvs, ex.now, None, ex.bearer.kind)

    # ------------------------------------------------------------------ requests for values

    def _config_req(
        self, ex: Exchange, terminal: Terminal, session: Session, msg: m.Message
    ) -> None:
        """CONFIG_REQ (4.11): all requested values, or ret 1 naming the missing ones."""
        ctx = self.ctx
        values = ctx.registry.config_values(terminal.serial or "")
        missing = [t.tag for t in msg.tlvs if not _requestable(t.tag, values)]
        if missing or not msg.tlvs:
            ctx.answer(ex, m.ConfigReqAck(1, tlvs=[Tlv.query(tag) for tag in missing]))
            return
        answer = [Tlv(t.tag, values[t.tag]) for t in msg.tlvs]
        ctx.answer(ex, m.ConfigReqAck(0, tlvs=answer))
        ctx.events.publish(ConfigReported(terminal, ex.header.sequence_id, answer))

    def _file_req(
        self, ex: Exchange, terminal: Terminal, session: Session, msg: m.Message
    ) -> None:
        """FILE_REQ (4.15, PD-36): one block of the offered file."""
        assert isinstance(msg, m.FileReq)
        ctx = self.ctx
        tx = ctx.registry.file_by_trans_id(msg.trans_id)
        if tx is None or tx.serial != terminal.serial or tx.expires_at < ex.now:
            unknown = FileStatus.UNKNOWN_TRANSACTION
            ctx.answer(ex, m.FileReqAck(msg.trans_id, unknown, 0, msg.offset))
            return
        if msg.status in (FileReqStatus.COMPLETE, FileReqStatus.ABORT):
            tx.state = "downloaded" if msg.status == FileReqStatus.COMPLETE else "aborted"
            ctx.registry.update_file(tx)
            ctx.answer(ex, m.FileReqAck(msg.trans_id, FileStatus.OK, 0, msg.offset))
            return
        if msg.offset > tx.size:
            beyond = FileStatus.OFFSET_BEYOND_END
            ctx.answer(ex, m.FileReqAck(msg.trans_id, beyond, 0, msg.offset))
            return
        n = min(msg.size, tx.size - msg.offset, ctx.config.file_block_max)
        try:
            data = ctx.files.read(tx.path, msg.offset, n)
        except OSError as exc:
            log.error("Cannot read {path} for FILE_REQ: {error}", path=tx.path, error=exc)
            ctx.answer(ex, m.FileReqAck(msg.trans_id, FileStatus.ERROR, 0, msg.offset))
            return
        ctx.answer(
            ex,
            m.FileReqAck(msg.trans_id, FileStatus.OK, crc16(data) if data else 0, msg.offset, data),
        )

    def _security_config(
        self, ex: Exchange, terminal: Terminal, session: Session, msg: m.Message
    ) -> None:
        """SECURITY_CONFIG from a terminal: op 4 report, op 6 renewal (4.13, PD-26)."""
        assert isinstance(msg, m.SecurityConfig)
        ctx = self.ctx
        if msg.op == SecurityOp.REPORT:
            ctx.registry.store_config(terminal.serial or "", tlv_dict(msg.tlvs), "reported")
            ctx.answer(ex, m.SecurityConfigAck(0))
        elif msg.op == SecurityOp.RENEW:
            ctx.answer(ex, m.SecurityConfigAck(0))
            creds = self.credentials.to_deliver(terminal, fresh=True, now=ex.now)
            self.credentials.send(terminal, creds, ex.now)
        else:
            ctx.answer(ex, m.SecurityConfigAck(2))


def _requestable(tag: int, values: dict[int, bytes]) -> bool:
    """A CONFIG_REQ tag the platform can answer: known, not security, has a value (4.11)."""
    spec = tags.TAGS.get(tag)
    return spec is not None and not spec.is_security and tag in values

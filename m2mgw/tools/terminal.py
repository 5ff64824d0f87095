"""``m2mgw-terminal``: simulated WMMP terminals over TCP, UDP or SMS (spec 9.4, 10.2-10.4).

Each terminal is a :class:`~m2mgw.protocol.terminal.TerminalClient` driven by thin Twisted
adapters: a TCP connection per terminal (long or short), or one shared UDP socket for
all terminals, demultiplexed by the header serial. On SMS (``--mode sms``) the
terminals reach the gateway's modem emulator through its control socket: their
messages are injected with ``deliver``, and the SMS the gateway sent (``sent``, polled)
are picked by destination MSISDN and reassembled. One process runs thousands of
terminals: no threads, staggered starts, one timer per terminal.

Every event is one readable line on stdout (``A972030000001234: logged in, LOGIN_ACK 0
(OK)``), result codes with their names; with ``--json-events`` it is one JSON object
instead, for scripts and tests. Ctrl-C (SIGINT) or SIGTERM logs every terminal out
before the process ends. The exit code is 0 when every terminal logged in and out
cleanly.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import IntEnum
from typing import IO, Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ClientFactory, DatagramProtocol, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody

from m2mgw.config import ConfigError, connect_address, load_config
from m2mgw.core.model import normalize_msisdn
from m2mgw.protocol import messages as m
from m2mgw.protocol import tags
from m2mgw.protocol import terminal as role
from m2mgw.protocol.constants import (
    RESULT_CODES,
    Command,
    LoginResult,
    LogoutReason,
    RegisterResult,
    code_name,
    command_name,
)
from m2mgw.protocol.errors import ProtocolError
from m2mgw.protocol.framing import StreamFramer, parse_datagram
from m2mgw.protocol.tags import BY_NAME, encode_value
from m2mgw.protocol.tlv import Tlv
from m2mgw.sms.bearer import SMS_PLATFORM_PORT, SmsReassembler, WmmpSms
from m2mgw.sms.pdu import SmsDeliver, decode_submit
from m2mgw.tools import argtypes

log = Logger()

MODES = ("tcp-long", "tcp-short", "udp", "sms")
SHUTDOWN_GRACE = 5.0  # seconds the terminals get to log out at SIGINT/SIGTERM


class Reactor(TypingProtocol):
    """What the simulator needs from a reactor: time, TCP clients and UDP."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, f: Callable[..., object], *a: object) -> IDelayedCall: ...

    def connectTCP(
        self, host: str, port: int, factory: ClientFactory, timeout: float
    ) -> object: ...

    def listenUDP(self, port: int, protocol: DatagramProtocol) -> Any: ...

    def addSystemEventTrigger(
        self, phase: str, event_type: str, f: Callable[..., Any], *a: object
    ) -> Any: ...


# --- identities ------------------------------------------------------------------------


def derive(value: str, index: int) -> str:
    """``value`` with ``index`` added to its trailing digits, keeping the width; the
    first terminal's value is taken as given (the CMCC default serial ends in a letter)."""
    if index == 0:
        return value
    stem = value.rstrip("0123456789")
    digits = value[len(stem) :]
    if not digits:
        raise ValueError(f"{value!r} has no trailing digits to number terminals with")
    number = str(int(digits) + index)
    if len(number) > len(digits):
        raise ValueError(f"{value!r} + {index} overflows its {len(digits)} digits")
    return stem + number.zfill(len(digits))


def parse_trap(text: str) -> Tlv:
    """``TAG=VALUE``: TAG is hex (``0x3007``) or a registry name; VALUE typed by the tag,
    or raw bytes as ``hex:0A0B``."""
    tag_text, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"trap {text!r} is not TAG=VALUE")
    spec = BY_NAME.get(tag_text.upper())
    try:
        tag = spec.tag if spec else int(tag_text, 0)
        if value.startswith("hex:"):
            return Tlv(tag, bytes.fromhex(value[4:]))
        raw = encode_value(tag, int(value, 0) if _is_int(value) else value)
    except (ValueError, ProtocolError) as exc:
        raise argparse.ArgumentTypeError(f"trap {text!r}: {exc}") from None
    return Tlv(tag, raw)


def _is_int(text: str) -> bool:
    try:
        int(text, 0)
    except ValueError:
        return False
    return True


_CREDENTIAL_KEYS = (
    "uplink_password", "downlink_password", "uplink_expiry", "downlink_expiry",
    "base_key", "base_key_expiry",
)  # fmt: skip


def load_credentials(stream: IO[str]) -> list[dict[str, Any]]:
    """JSON lines as printed by ``m2mgw provision --json``; blank lines are skipped."""
    records = [json.loads(line) for line in stream if line.strip()]
    if not all(isinstance(record, dict) for record in records):
        raise ValueError("every credentials line must be a JSON object")
    return records


def build_identities(args: argparse.Namespace) -> list[role.TerminalIdentity]:
    """``--count`` identities: numbered from the given ones, credentials per line or shared."""
    records: list[dict[str, Any]] = []
    if args.credentials_file:
        with open(args.credentials_file, encoding="utf-8") as stream:
            records = load_credentials(stream)
        if len(records) < args.count:
            raise ValueError(f"{args.credentials_file} has {len(records)} lines, need {args.count}")
    shared = {
        "uplink_password": args.uplink_password,
        "downlink_password": args.downlink_password,
        "base_key": args.base_key,
    }
    config = dict(EXAMPLE_SYNC_VALUES)
    if args.heartbeat is not None:
        config[tags.HEARTBEAT] = encode_value(tags.HEARTBEAT, reported_heartbeat(args.heartbeat))
    # REGISTER op 0 by SMS: the credentials follow by SMS (6.3.4), none are needed before.
    sent_by_sms = args.mode == "sms" and args.register_op == 0
    identities = []
    for index in range(args.count):
        record = {k: v for k, v in shared.items() if v is not None}
        record.update(records[index] if records else {})
        credentials = None
        if "uplink_password" in record and "downlink_password" in record:
            credentials = role.Credentials(
                **{k: record[k] for k in _CREDENTIAL_KEYS if record.get(k) is not None}
            )
        elif not sent_by_sms:
            raise ValueError("credentials needed: --uplink-password/--downlink-password or a file")
        cipher = record.get("cipher", args.cipher)
        identities.append(
            role.TerminalIdentity(
                serial=record.get("serial") or derive(args.serial, index),
                imei=record.get("imei") or derive(args.imei, index),
                imsi=record.get("imsi") or derive(args.imsi, index),
                credentials=credentials,
                cipher=None if cipher in (None, "none") else cipher,
                software_version=args.software_version,
                config=dict(config),
            )
        )
    return identities


def reported_heartbeat(seconds: float) -> int:
    """``--heartbeat`` as TLV ``0x0011`` reports it: whole seconds, at least 1."""
    return max(1, round(seconds))


EXAMPLE_SYNC_VALUES: dict[int, bytes] = {
    tags.APN: b"CMNET",
    tags.SMS_SPECIAL_NUMBER: b"1065840436",
    tags.PLATFORM_IP: bytes.fromhex("C000020A"),
    tags.PLATFORM_PORT: bytes.fromhex("14731474"),
    tags.HEARTBEAT: (90).to_bytes(4, "big"),
}
"""The sync values of the spec's example identity (11), used by every simulated terminal;
``--heartbeat`` replaces ``0x0011``."""


# --- events ----------------------------------------------------------------------------


def event_record(event: role.Event) -> dict[str, Any]:
    """The JSON form of an event: ``{"event": name, ...fields}``; each result code is
    followed by its name (``"result": 2, "result_name": "AUTH_FAILED"``)."""
    if isinstance(event, role.LoggedIn):
        return {"event": "logged_in", **_named(LoginResult, "result", event.result),
                "timestamp": event.timestamp,
                "session_key": event.session_key is not None}  # fmt: skip
    if isinstance(event, role.LoginFailed):
        return {"event": "login_failed", **_named(LoginResult, "result", event.result)}
    if isinstance(event, role.Registered):
        return {"event": "registered", **_named(RegisterResult, "result", event.result),
                "new_serial": event.serial}  # fmt: skip
    if isinstance(event, role.LoggedOut):
        return {"event": "logged_out", **_named(LogoutReason, "reason", event.reason),
                "by_platform": event.by_platform}  # fmt: skip
    if isinstance(event, role.Answer):
        return _answer_record(event)
    if isinstance(event, role.PlatformRequest):
        codes = RESULT_CODES.get(event.message.COMMAND)
        return {"event": "platform_request", "command": event.name,
                "sequence_id": event.sequence_id, **_message_fields(event.message),
                **_named(codes, "result", event.result)}  # fmt: skip
    if isinstance(event, role.CredentialsChanged):
        return {"event": "credentials_changed"}
    if isinstance(event, role.DownloadOffered):
        return {"event": "download_offered", "url": event.offer.url}
    if isinstance(event, role.FileDownloaded):
        return {"event": "download", "ok": event.ok, "size": len(event.data)}
    if isinstance(event, role.RequestTimedOut):
        return {"event": "error", "kind": "timeout", "command": command_name(event.command),
                "sequence_id": event.sequence_id}  # fmt: skip
    if isinstance(event, role.RequestFailed):
        return {"event": "error", "kind": "failed", "command": command_name(event.command),
                "reason": event.reason}  # fmt: skip
    if isinstance(event, role.Discarded):
        return {"event": "error", "kind": "discarded", "reason": event.reason}
    return {"event": "error", "kind": "protocol", "reason": event.reason}


_ANSWER_EVENTS = {
    Command.HEART_BEAT: "heartbeat_ack",
    Command.TRANSPARENT_DATA: "data_ack",
    Command.TRANSPARENT_CMD: "cmd_ack",
    Command.CONFIG_TRAP: "trap_ack",
}


_RESULT_FIELDS = ("result", "ret", "status")  # what the answers call their result code


def _answer_record(event: role.Answer) -> dict[str, Any]:
    name = _ANSWER_EVENTS.get(event.command & 0x7FFF, "answer")
    record = {"event": name, "command": event.name, "sequence_id": event.sequence_id,
              **_message_fields(event.message)}  # fmt: skip
    codes = RESULT_CODES.get(event.command & 0x7FFF)
    for key in _RESULT_FIELDS:
        if isinstance(record.get(key), int):
            record.update(_named(codes, key, record[key]))
    return record


def _named(codes: type[IntEnum] | None, key: str, code: int) -> dict[str, Any]:
    """``{key: code, key_name: NAME}``; just the code where no table names it."""
    if codes is None:
        return {key: code}
    return {key: code, f"{key}_name": code_name(codes, code)}


def _message_fields(message: m.Message) -> dict[str, Any]:
    fields = {k: v for k, v in message.fields_dict().items() if isinstance(v, int | str)}
    if isinstance(message, m.TransparentData | m.TransparentCmd):
        fields["data"] = message.user_data.hex()
        fields["source"] = message.source[1] if message.source else None
    return fields


def _label(record: dict[str, Any], key: str) -> str:
    """``2 (AUTH_FAILED)`` from a record's code and its name."""
    name = record.get(f"{key}_name")
    return f"{record[key]} ({name})" if name else str(record[key])


def _answer_text(record: dict[str, Any]) -> str:
    """An answer's command and result code, e.g. ``TRANSPARENT_DATA_ACK 0 (ACCEPTED)``."""
    key = next((k for k in _RESULT_FIELDS if isinstance(record.get(k), int)), None)
    return record["command"] + (f" {_label(record, key)}" if key else "")


def describe(record: dict[str, Any]) -> str:
    """One event record as a line for people (without the serial)."""
    kind = record["event"]
    if kind == "logged_in":
        key = ", with a session key" if record["session_key"] else ""
        return f"logged in, LOGIN_ACK {_label(record, 'result')}{key}"
    if kind == "login_failed":
        return f"login refused, LOGIN_ACK {_label(record, 'result')}"
    if kind == "registered":
        serial = f", serial {record['new_serial']}" if record["new_serial"] else ""
        return f"registered, REGISTER_ACK {_label(record, 'result')}{serial}"
    if kind == "logged_out":
        who = " by the platform" if record["by_platform"] else ""
        return f"logged out{who}, reason {_label(record, 'reason')}"
    if kind == "heartbeat_ack":
        return "heartbeat answered"
    if kind in ("data_ack", "cmd_ack", "trap_ack"):
        what = {"data_ack": "data", "cmd_ack": "command", "trap_ack": "trap"}[kind]
        return f"{what} sent, {_answer_text(record)}"
    if kind == "answer":
        return f"answered: {_answer_text(record)}"
    if kind == "platform_request":
        data = f", data {record['data']}" if record.get("data") else ""
        source = f" from {record['source']}" if record.get("source") else ""
        return (f"{record['command']} {record['sequence_id']}{source} answered with "
                f"{_label(record, 'result')}{data}")  # fmt: skip
    if kind == "credentials_changed":
        return "new credentials received (SECURITY_CONFIG)"
    if kind == "download_offered":
        return f"download offered: {record['url']}"
    if kind == "download":
        outcome = "downloaded" if record["ok"] else "download failed"
        detail = f": {record['reason']}" if record.get("reason") else f", {record['size']} bytes"
        return outcome + detail
    if kind == "summary":
        return f"{record['terminals']} terminal(s), {record['failed']} failed"
    if record.get("kind") == "timeout":
        return f"error: {record['command']} {record['sequence_id']} got no answer"
    if record.get("kind") == "failed":
        return f"error: {record['command']} failed: {record['reason']}"
    if record.get("kind") == "connect":
        return f"error: cannot connect: {record['reason']}"
    if record.get("kind") == "connection":
        return f"error: connection lost: {record['reason']}"
    return f"error ({record.get('kind', kind)}): {record.get('reason', '')}"


class EventSink:
    """Writes each event as one readable line, or as one JSON line (``--json-events``)."""

    def __init__(self, stream: IO[str], *, json_lines: bool = False) -> None:
        self._stream = stream
        self._json = json_lines

    def emit(self, serial: str, record: dict[str, Any]) -> None:
        if self._json:
            line = json.dumps({"serial": serial, **record})
        elif record["event"] == "summary":
            line = describe(record)
        else:
            line = f"{serial}: {describe(record)}"
        self._stream.write(line + "\n")
        self._stream.flush()


# --- one simulated terminal ------------------------------------------------------------


class SimulatedTerminal:
    """Drives one TerminalClient through connect → (register) → login → work → logout.

    ``send`` is bound by the bearer adapter; every client interaction ends with
    :meth:`_flush`, which sends what the client queued and re-arms the one timer.
    """

    def __init__(self, client: role.TerminalClient, fleet: Fleet, *, mode: str) -> None:
        self.client = client
        self.fleet = fleet
        self.mode = mode
        self.send: Callable[[bytes], None] | None = None
        self.ok: bool | None = None
        self.done: Deferred[bool] = Deferred()
        self._outstanding: set[int] = set()
        self._worked = False
        self._finishing = False
        self._timer: IDelayedCall | None = None
        self._heartbeat: IDelayedCall | None = None
        self._last_sent = 0.0
        self.disconnect: Callable[[], None] = lambda: None

    @property
    def serial(self) -> str:
        return self.client.serial

    @property
    def _reactor(self) -> Reactor:
        return self.fleet.reactor

    # -- bearer callbacks ------------------------------------------------------------

    def connected(self, send: Callable[[bytes], None], disconnect: Callable[[], None]) -> None:
        self.send, self.disconnect = send, disconnect
        args = self.fleet.args
        if args.register_op is not None:
            self._transmit(self.client.register(args.register_op))
        else:
            self._login()

    def frame_received(self, data: bytes) -> None:
        events = self.client.receive(data, self._reactor.seconds())
        for event in events:
            self._on_event(event)
        self._flush()

    def connection_lost(self, reason: str) -> None:
        self.send = None
        if self.ok is None:
            self.emit({"event": "error", "kind": "connection", "reason": reason})
            self._end(False)

    def connection_failed(self, reason: str) -> None:
        self.emit({"event": "error", "kind": "connect", "reason": reason})
        self._end(False)

    # -- the life cycle --------------------------------------------------------------

    def _login(self) -> None:
        try:
            frame = self.client.login(request_session_key=self.fleet.args.session_key)
        except role.TerminalStateError as exc:  # e.g. registered, but no credentials came
            self.emit({"event": "error", "kind": "login", "reason": exc.reason})
            self._end(False)
            return
        self._transmit(frame)

    def _on_event(self, event: role.Event) -> None:
        self.emit(event_record(event))
        if isinstance(event, role.Registered):
            self.fleet.renamed(self)
            if event.result == 0 and self.mode == "sms":
                return  # the credentials follow by SMS (6.3.4): log in once adopted
            if event.result in (0, 1, 6):
                self._login()
            else:
                self._end(False)
        elif isinstance(event, role.LoggedIn):
            # The post-login CONFIG_TRAP (4.4) goes before any work: it releases the
            # platform's queued requests.
            for frame in self.client.data_to_send():
                self._outstanding.add(int.from_bytes(frame[4:8], "big"))
                self._transmit(frame)
            if not self._worked:
                self._worked = True
                self._work()
        elif isinstance(event, role.LoginFailed):
            self._end(False)
        elif isinstance(event, role.LoggedOut):
            self._on_logged_out(event)
        elif isinstance(event, role.Answer | role.RequestFailed | role.RequestTimedOut):
            self._on_completed(event)
        elif isinstance(event, role.CredentialsChanged) and self.mode == "sms":
            if not self.client.logged_in and not self._worked:
                self._login()
        elif isinstance(event, role.DownloadOffered) and self.fleet.args.fetch == "http":
            self.fleet.fetch(self, event.offer)

    def _on_logged_out(self, event: role.LoggedOut) -> None:
        if self._finishing:
            self._end(True)
        elif event.by_platform and event.reason == LogoutReason.EXPIRED:
            self._login()
        elif event.by_platform:
            self._end(False)

    def _on_completed(self, event: role.Answer | role.RequestFailed | role.RequestTimedOut) -> None:
        if isinstance(event, role.RequestTimedOut) and event.command == Command.LOGIN:
            self._end(False)
            return
        self._outstanding.discard(event.sequence_id)
        if not self._outstanding and self._worked and self._done_when_answered:
            self.finish()

    @property
    def _done_when_answered(self) -> bool:
        """tcp-short, or --logout-when-done: log out once what was sent is answered."""
        return self.mode == "tcp-short" or self.fleet.args.logout_when_done

    def _work(self) -> None:
        """The exchange after the first login: traps and data, then heartbeats or logout."""
        args = self.fleet.args
        frames = []
        if args.trap:
            frames.append(self.client.trap(args.trap))
        if args.send_data is not None:
            frames.append(self.client.transparent_data(args.send_data, args.dest_ec))
        for frame in frames:
            self._outstanding.add(int.from_bytes(frame[4:8], "big"))
            self._transmit(frame)
        if self._done_when_answered and not self._outstanding:
            self.finish()
        elif self.mode not in ("tcp-short", "sms"):  # HEART_BEAT is never sent by SMS (10.4.5)
            self._schedule_heartbeat()

    def finish(self) -> None:
        """Log out with reason 0; the terminal ends when LOGOUT_ACK (or its timeout) comes."""
        if self._finishing or self.ok is not None:
            return
        self._finishing = True
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        if self.send is None or not self.client.logged_in:
            self._end(False)
            return
        self._transmit(self.client.logout(LogoutReason.NORMAL))

    def abort(self, reason: str) -> None:
        """End now, as failed (no clean logout in time)."""
        if self.ok is None:
            self.emit({"event": "error", "kind": "aborted", "reason": reason})
            self._end(False)

    def _end(self, ok: bool) -> None:
        if self.ok is not None:
            return
        self.ok = ok and self._worked
        for call in (self._timer, self._heartbeat):
            if call is not None and call.active():
                call.cancel()
        self.disconnect()
        self.done.callback(self.ok)

    # -- sending and timers ----------------------------------------------------------

    def _transmit(self, frame: bytes) -> None:
        if self.send is None:
            return
        self.send(frame)
        self._last_sent = self._reactor.seconds()
        self._flush()

    def _flush(self) -> None:
        """Send what the client queued and re-arm the timer."""
        for frame in self.client.data_to_send():
            self._transmit(frame)
        if self.ok is not None:
            return
        deadline = self.client.next_deadline()
        if self._timer is not None and self._timer.active():
            if deadline is not None and self._timer.getTime() == deadline:
                return
            self._timer.cancel()
        self._timer = None
        if deadline is not None:
            delay = max(0.0, deadline - self._reactor.seconds())
            self._timer = self._reactor.callLater(delay, self._on_timer)

    def _on_timer(self) -> None:
        """Retransmissions go out first and leave the heartbeat timer be; then the
        events of giving up."""
        self._timer = None
        events = self.client.tick(self._reactor.seconds())
        if self.send is not None:
            for frame in self.client.data_to_send():
                self.send(frame)
        for event in events:
            self._on_event(event)
        self._flush()

    def _heartbeat_interval(self) -> float:
        """``--heartbeat`` while TLV 0x0011 still reports it, else 0x0011 (a CONFIG_SET)."""
        configured = self.fleet.args.heartbeat
        reported = self.client.heartbeat_interval
        if configured is not None and reported == reported_heartbeat(configured):
            return float(configured)
        return float(max(1, reported))

    def _schedule_heartbeat(self) -> None:
        due = self._last_sent + self._heartbeat_interval()
        self._heartbeat = self._reactor.callLater(
            max(0.0, due - self._reactor.seconds()), self._on_heartbeat
        )

    def _on_heartbeat(self) -> None:
        interval = self._heartbeat_interval()
        if self._reactor.seconds() - self._last_sent >= interval and self.client.logged_in:
            self._transmit(self.client.heartbeat())
        self._schedule_heartbeat()

    def emit(self, record: dict[str, Any]) -> None:
        self.fleet.sink.emit(self.serial, record)


# --- bearer adapters -------------------------------------------------------------------


class TerminalTcpProtocol(Protocol):
    """One terminal's TCP connection: frames by Total_Length (10.2)."""

    def __init__(self, terminal: SimulatedTerminal) -> None:
        self.terminal = terminal
        self.framer = StreamFramer()

    def connectionMade(self) -> None:
        assert self.transport is not None
        transport = self.transport
        self.terminal.connected(transport.write, transport.loseConnection)

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except ProtocolError as exc:
            assert self.transport is not None
            self.terminal.connection_lost(f"framing error: {exc.reason}")
            self.transport.loseConnection()
            return
        for frame in frames:
            self.terminal.frame_received(frame)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.terminal.connection_lost(reason.getErrorMessage() if reason else "closed")


class _TcpFactory(ClientFactory):
    def __init__(self, terminal: SimulatedTerminal) -> None:
        self.terminal = terminal

    def buildProtocol(self, addr: object) -> TerminalTcpProtocol:
        return TerminalTcpProtocol(self.terminal)

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.terminal.connection_failed(reason.getErrorMessage())


class SharedUdpProtocol(DatagramProtocol):
    """One UDP socket for all terminals; datagrams go to the terminal of their serial."""

    def __init__(self, platform: tuple[str, int]) -> None:
        self.platform = platform
        self.terminals: dict[str, SimulatedTerminal] = {}
        self._serials: dict[SimulatedTerminal, str] = {}

    def send(self, frame: bytes) -> None:
        if self.transport is not None:
            self.transport.write(frame, self.platform)

    def add(self, terminal: SimulatedTerminal) -> None:
        """Route datagrams with ``terminal``'s (current) serial to it."""
        self.forget(terminal)
        self._serials[terminal] = terminal.serial
        self.terminals[terminal.serial] = terminal

    def forget(self, terminal: SimulatedTerminal) -> None:
        serial = self._serials.pop(terminal, None)
        if serial is not None:
            self.terminals.pop(serial, None)

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        try:
            frame = parse_datagram(datagram)
        except ProtocolError:
            return
        terminal = self.terminals.get(frame[12:28].decode("latin-1"))
        if terminal is not None:
            terminal.frame_received(frame)


class SubmittedSms:
    """Reassembles the platform's SMS-SUBMITs per destination MSISDN, as terminals would."""

    def __init__(self, port: int = SMS_PLATFORM_PORT) -> None:
        self._reassembler = SmsReassembler(platform_port=port, max_parts=255)

    def feed(self, tpdu: bytes, now: float) -> tuple[str, bytes] | None:
        """One TPDU (no SMSC prefix); returns (normalised MSISDN, WMMP message) once complete."""
        submit = decode_submit(tpdu)
        deliver = SmsDeliver(
            originator=submit.destination,
            scts=datetime.now(UTC),
            user_data=submit.user_data,
            udh=submit.udh,
            dcs=submit.dcs,
        )
        event = self._reassembler.feed(deliver, now)
        return (event.originator, event.message) if isinstance(event, WmmpSms) else None


class ModemControlClient(LineReceiver):
    """The modem emulator's control socket: commands in order, each answered up to OK/ERROR."""

    delimiter = b"\n"

    def __init__(self) -> None:
        self._queue: deque[tuple[str, Deferred[list[str]]]] = deque()
        self._lines: list[str] = []

    def command(self, line: str) -> Deferred[list[str]]:
        """Run one control command; fires with its data lines (queued until connected)."""
        d: Deferred[list[str]] = Deferred()
        self._queue.append((line, d))
        if len(self._queue) == 1 and self.transport is not None:
            self.sendLine(line.encode())
        return d

    def connectionMade(self) -> None:
        if self._queue:
            self.sendLine(self._queue[0][0].encode())

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        if text != "OK" and not text.startswith("ERROR"):
            self._lines.append(text)
            return
        command, d = self._queue.popleft()
        lines, self._lines = self._lines, []
        if self._queue:
            self.sendLine(self._queue[0][0].encode())
        if text == "OK":
            d.callback(lines)
        else:
            d.errback(ProtocolError(f"modem control {command.split()[0]!r}: {text}"))


class SmsModemLink:
    """Terminals on the SMS bearer through the modem emulator, keyed by MSISDN (10.4)."""

    def __init__(self, reactor: Reactor, control: ModemControlClient, poll: float) -> None:
        self.reactor = reactor
        self.control = control
        self.terminals: dict[str, SimulatedTerminal] = {}
        self._inbox = SubmittedSms()
        self._seen = 0
        self._poll = LoopingCall(self._fetch)
        self._poll.clock = reactor  # type: ignore[assignment]
        self._poll.start(poll, now=False)

    def add(self, msisdn: str, terminal: SimulatedTerminal) -> None:
        key = normalize_msisdn(msisdn)
        self.terminals[key] = terminal
        terminal.connected(
            lambda frame: self._deliver(key, frame), lambda: self.terminals.pop(key, None)
        )

    def stop(self) -> None:
        if self._poll.running:
            self._poll.stop()

    def _deliver(self, msisdn: str, frame: bytes) -> None:
        d = self.control.command(f"deliver {msisdn} {frame.hex()}")
        d.addErrback(lambda f: log.warn("SMS from {msisdn} not delivered: {e}", msisdn=msisdn,
                                        e=f.getErrorMessage()))  # fmt: skip

    def _fetch(self) -> Deferred[None]:
        d = self.control.command("sent").addCallback(self._sent)
        return d.addErrback(lambda f: log.warn("Modem control: {e}", e=f.getErrorMessage()))

    def _sent(self, lines: list[str]) -> None:
        fresh, self._seen = lines[self._seen :], len(lines)
        for line in fresh:
            try:
                complete = self._inbox.feed(bytes.fromhex(json.loads(line)["tpdu"]),
                                            self.reactor.seconds())  # fmt: skip
            except (ValueError, KeyError, ProtocolError) as exc:
                log.warn("Unreadable SMS from the modem: {e}", e=exc)
                continue
            if complete is not None and complete[0] in self.terminals:
                self.terminals[complete[0]].frame_received(complete[1])


class _ControlFactory(ClientFactory):
    def __init__(self, control: ModemControlClient, fleet: Fleet) -> None:
        self.control = control
        self.fleet = fleet

    def buildProtocol(self, addr: object) -> ModemControlClient:
        return self.control

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        for terminal in self.fleet.terminals:
            terminal.connection_failed(f"modem control: {reason.getErrorMessage()}")


# --- the fleet -------------------------------------------------------------------------


class Fleet:
    """All simulated terminals of one run; ``run()`` fires with the exit code."""

    def __init__(
        self, reactor: Reactor, args: argparse.Namespace, sink: EventSink,
        identities: Sequence[role.TerminalIdentity],
    ) -> None:  # fmt: skip
        self.reactor = reactor
        self.args = args
        self.sink = sink
        bearer = args.mode if args.mode in ("udp", "sms") else "tcp"
        self.terminals = [
            SimulatedTerminal(
                role.TerminalClient(
                    identity, bearer, clock=reactor.seconds, encrypt_bodies=args.encrypt,
                    download="file" if args.fetch == "file" else "none",
                    want_session_key=args.session_key, post_login_trap=True,
                    habits=role.HABITS[args.compat],
                ),
                self,
                mode=args.mode,
            )
            for identity in identities
        ]  # fmt: skip
        self._udp: SharedUdpProtocol | None = None
        self._udp_port: Any = None
        self._sms: SmsModemLink | None = None
        self._remaining = len(self.terminals)
        self._stopped: list[Deferred[None]] = []
        self._grace: IDelayedCall | None = None
        self._deadline: IDelayedCall | None = None

    def run(self) -> Deferred[int]:
        """Start every terminal (staggered) and fire with 0 when all ended cleanly."""
        result: Deferred[int] = Deferred()
        if self.args.mode == "udp":
            self._udp = SharedUdpProtocol((self.args.host, self.args.udp_port))
            self._udp_port = self.reactor.listenUDP(0, self._udp)
        if self.args.mode == "sms":
            host, _, port = self.args.modem_control.rpartition(":")
            control = ModemControlClient()
            self._sms = SmsModemLink(self.reactor, control, self.args.sms_poll)
            self.reactor.connectTCP(host, int(port), _ControlFactory(control, self), 30)
        failures = 0

        def ended(ok: bool) -> None:
            nonlocal failures
            self._remaining -= 1
            failures += not ok
            if self._remaining == 0:
                self._stop()
                self.sink.emit("*", {"event": "summary", "terminals": len(self.terminals),
                                     "failed": failures})  # fmt: skip
                result.callback(1 if failures else 0)
                for call in (self._grace, self._deadline):
                    if call is not None and call.active():
                        call.cancel()
                for waiter in self._stopped:
                    waiter.callback(None)

        for index, terminal in enumerate(self.terminals):
            terminal.done.addCallback(ended)
            self.reactor.callLater(index * self.args.stagger, self._start, terminal)
        if self.args.duration is not None:
            self._deadline = self.reactor.callLater(self.args.duration, self.finish_all)
        return result

    def finish_all(self) -> None:
        for terminal in self.terminals:
            terminal.finish()

    def shutdown(self) -> Deferred[None] | None:
        """Before the reactor stops (SIGINT, SIGTERM): log every terminal out, or give up
        after SHUTDOWN_GRACE; the exit code still tells whether all ended cleanly."""
        if self._remaining == 0:
            return None
        waiter: Deferred[None] = Deferred()
        self._stopped.append(waiter)
        self.finish_all()
        self._grace = self.reactor.callLater(SHUTDOWN_GRACE, self._abandon)
        return waiter

    def _abandon(self) -> None:
        for terminal in self.terminals:
            terminal.abort(f"no logout within {SHUTDOWN_GRACE:g} s of the shutdown")

    def _start(self, terminal: SimulatedTerminal) -> None:
        if terminal.ok is not None:
            return
        udp = self._udp
        if udp is not None:
            udp.add(terminal)
            terminal.connected(udp.send, lambda: udp.forget(terminal))
            return
        if self._sms is not None:
            index = self.terminals.index(terminal)
            self._sms.add(derive(self.args.msisdn, index), terminal)
            return
        self.reactor.connectTCP(self.args.host, self.args.tcp_port, _TcpFactory(terminal), 30)

    def renamed(self, terminal: SimulatedTerminal) -> None:
        """A REGISTER_ACK gave ``terminal`` a new serial: route its datagrams by it."""
        if self._udp is not None:
            self._udp.add(terminal)

    def fetch(self, terminal: SimulatedTerminal, offer: role.DownloadInfoOffer) -> None:
        """Download an offered file over HTTP and check it (4.14)."""
        agent = Agent(self.reactor)  # type: ignore[arg-type]

        def check(body: bytes) -> None:
            terminal.emit({"event": "download", "ok": role.verify_download(body, offer),
                            "size": len(body)})  # fmt: skip

        def failed(reason: Failure) -> None:
            terminal.emit({"event": "download", "ok": False, "reason": reason.getErrorMessage()})

        d = agent.request(b"GET", offer.url.encode("ascii"))
        d.addCallback(readBody).addCallbacks(check, failed)

    def _stop(self) -> None:
        if self._udp_port is not None:
            self._udp_port.stopListening()
            self._udp_port = None
        if self._sms is not None:
            self._sms.stop()
            if self._sms.control.transport is not None:
                self._sms.control.transport.loseConnection()
            self._sms = None


# --- command line ----------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="m2mgw-terminal", description=__doc__.splitlines()[0].replace("``", "")
    )
    p.add_argument("--config", metavar="FILE",
                   help="the gateway's ini file: take the platform's address and ports from "
                        "its [tcp] listen and [udp] port/interface")  # fmt: skip
    p.add_argument("--host", help="the platform's address (default 127.0.0.1)")
    p.add_argument("--tcp-port", type=argtypes.port, help="the platform's TCP port (default 5236)")
    p.add_argument("--udp-port", type=argtypes.port, help="the platform's UDP port (default 5235)")
    p.add_argument("--mode", choices=MODES, default="tcp-long",
                   help="bearer and connection: TCP long or short connection, UDP, or SMS "
                        "through the modem emulator (default tcp-long)")  # fmt: skip
    p.add_argument(
        "--serial",
        default="A972030000001234",
        help="the (first) terminal's serial; later ones count up",
    )
    p.add_argument(
        "--imei", default="860000000000001", help="the (first) terminal's IMEI; later ones count up"
    )
    p.add_argument(
        "--imsi", default="460000000000001", help="the (first) terminal's IMSI; later ones count up"
    )
    p.add_argument("--uplink-password", help="the uplink password (as provisioned)")
    p.add_argument("--downlink-password", help="the downlink password (as provisioned)")
    p.add_argument("--base-key", help="the base key, for --session-key")
    p.add_argument(
        "--cipher",
        choices=("none", "legacy", "aes"),
        default="none",
        help="the cipher profile of the terminal (default none)",
    )
    p.add_argument("--session-key", action="store_true", help="request a session key at login")
    p.add_argument("--encrypt", action="store_true", help="send E042 bodies with a session key")
    p.add_argument("--software-version", default="1.01", help="reported in LOGIN (default 1.01)")
    p.add_argument("--compat", choices=tuple(role.HABITS), default="strict",
                   help="behave as a deployed stack does, byte for byte (spec 1.6): "
                        "cmcc-javame (C1-C9) or simcom (PD-06); default strict")  # fmt: skip
    p.add_argument(
        "--heartbeat",
        type=argtypes.positive,
        metavar="SECONDS",
        help="heartbeat interval, also reported in TLV 0x0011 (default 90)",
    )
    p.add_argument(
        "--register-op",
        type=int,
        choices=range(5),
        help="send REGISTER with this op first (0 new ... 4 cleared)",
    )
    p.add_argument(
        "--send-data",
        type=argtypes.hex_bytes,
        metavar="HEX",
        help="send this TRANSPARENT_DATA after login",
    )
    p.add_argument("--dest-ec", help="EC code of the data's destination application")
    p.add_argument(
        "--trap",
        type=parse_trap,
        action="append",
        metavar="TAG=VALUE",
        help="a TLV of one CONFIG_TRAP after login (repeatable), e.g. 0x300D=0x20",
    )
    p.add_argument("--fetch", choices=("none", "http", "file"), default="none",
                   help="on DOWNLOAD_INFO: nothing, an HTTP GET, or FILE_REQ")  # fmt: skip
    p.add_argument(
        "--count", type=argtypes.at_least_one, default=1, help="how many terminals (default 1)"
    )
    p.add_argument("--credentials-file", help="JSON lines: serial, imei, imsi, passwords, ...")
    p.add_argument("--stagger", type=float, default=0.005, help="seconds between starts")
    p.add_argument(
        "--duration",
        type=argtypes.positive,
        metavar="SECONDS",
        help="log every terminal out after this long (default: at Ctrl-C)",
    )
    p.add_argument(
        "--logout-when-done",
        action="store_true",
        help="log out once the post-login trap, --trap and --send-data are answered "
        "(what --mode tcp-short always does)",
    )
    p.add_argument(
        "--json-events",
        action="store_true",
        help="one JSON object per event instead of a readable line",
    )
    p.add_argument("--modem-control", type=argtypes.host_port, metavar="HOST:PORT",
                   help="--mode sms: the modem emulator's control socket")  # fmt: skip
    p.add_argument("--msisdn", help="--mode sms: the (first) terminal's MSISDN")
    p.add_argument("--sms-poll", type=argtypes.positive, default=0.5, metavar="SECONDS",
                   help="--mode sms: seconds between polls for the gateway's SMS")  # fmt: skip
    return p


def platform_address(args: argparse.Namespace) -> None:
    """Fill in --host/--tcp-port/--udp-port: given, else from --config, else the defaults."""
    host, tcp_port, udp_port = "127.0.0.1", 5236, 5235
    if args.config:
        config = load_config(args.config)
        address = connect_address(config.tcp.listen)
        if address is not None:
            host, tcp_port = address
        elif args.mode in ("tcp-long", "tcp-short") and args.tcp_port is None:
            raise ConfigError(f"{args.config}: [tcp] listen = {config.tcp.listen} names no "
                              "TCP port to connect to; give --tcp-port")  # fmt: skip
        udp_port = config.udp.port
        if args.mode == "udp":
            host = config.udp.interface if config.udp.interface not in ("", "0.0.0.0") else host
    args.host = args.host or host
    args.tcp_port = args.tcp_port or tcp_port
    args.udp_port = args.udp_port or udp_port


def prepare(reactor: Reactor, argv: Sequence[str] | None, stdout: IO[str]) -> Fleet:
    """Parse ``argv`` into a ready fleet; usage errors exit with status 2 (argparse)."""
    p = parser()
    args = p.parse_args(argv)
    if args.mode == "sms" and not (args.modem_control and args.msisdn):
        p.error("--mode sms needs --modem-control HOST:PORT and --msisdn")
    try:
        platform_address(args)
        identities = build_identities(args)
    except (ValueError, OSError, ProtocolError, ConfigError) as exc:
        p.error(str(exc))
    sink = EventSink(stdout, json_lines=args.json_events)
    return Fleet(reactor, args, sink, identities)


def run(reactor: Reactor, argv: Sequence[str] | None, stdout: IO[str]) -> Deferred[int]:
    """Parse ``argv`` and run the fleet on ``reactor``; fires with the exit code."""
    return prepare(reactor, argv, stdout).run()


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``m2mgw-terminal``."""
    from twisted.internet.task import react

    def exit_with(code: int) -> None:
        raise SystemExit(code)  # react() exits with a SystemExit's code

    def start(reactor: Reactor) -> Deferred[None]:
        fleet = prepare(reactor, argv, sys.stdout)
        reactor.addSystemEventTrigger("before", "shutdown", fleet.shutdown)
        return fleet.run().addCallback(exit_with)

    react(start)


if __name__ == "__main__":
    main()

__all__ = [
    "Fleet",
    "ModemControlClient",
    "SimulatedTerminal",
    "SubmittedSms",
    "build_identities",
    "derive",
    "describe",
    "main",
    "prepare",
    "run",
]

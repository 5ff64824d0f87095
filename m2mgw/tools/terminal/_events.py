"""Terminal events as records, printed as one readable line or one JSON line each."""

from __future__ import annotations

import json
from enum import IntEnum
from typing import IO, Any

from m2mgw.protocol import messages as m
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

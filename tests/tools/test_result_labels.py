"""Result codes are printed with their names, the same way in every tool (issue #8)."""

from __future__ import annotations

from m2mgw.app import operations as ops
from m2mgw.app.operations import ResultCode
from m2mgw.protocol.constants import (
    ACK_BIT,
    Command,
    LogoutReason,
    code_label,
    result_label,
)
from m2mgw.tools.app import to_json


def test_result_label_names_the_code_of_each_answer() -> None:
    assert result_label(Command.LOGIN | ACK_BIT, 2) == "2 (AUTH_FAILED)"
    assert result_label(Command.LOGIN, 1) == "1 (OK_SYNC)"  # the request's ID works too
    assert result_label(Command.REGISTER, 6) == "6 (ALREADY_REGISTERED)"
    assert result_label(Command.TRANSPARENT_DATA, 1) == "1 (QUEUED)"
    assert result_label(Command.CONFIG_SET | ACK_BIT, 1) == "1 (ERROR)"
    assert result_label(Command.DOWNLOAD_INFO, 1) == "1 (ACCEPTED)"
    assert result_label(Command.SECURITY_CONFIG, 2) == "2 (ERROR)"
    assert result_label(Command.FILE_REQ, 2) == "2 (OFFSET_BEYOND_END)"
    assert result_label(Command.LOGIN, 42) == "42 (reserved)"
    assert result_label(Command.HEART_BEAT, 0) == "0"  # HEART_BEAT_ACK has no result
    assert code_label(LogoutReason, 9) == "9 (CREDENTIALS_CHANGED)"
    assert code_label(ResultCode, 5) == "5 (TERMINAL_OFFLINE)"


def test_m2mgw_app_json_names_the_codes() -> None:
    response = to_json(ops.SendDataResponse(result_code=5, msg_id=7))
    assert (response["result_code"], response["result_code_name"]) == (5, "TERMINAL_OFFLINE")
    notify = to_json(ops.NotifyResult(notify_id=1, msg_id=7, operation="SendData",
                                      terminal_id="A972030000001234", state="FAILED",
                                      op_result=7, terminal_result=3, time=0))  # fmt: skip
    assert notify["op_result_name"] == "TERMINAL_ERROR"
    assert notify["terminal_result_name"] == "REJECTED"

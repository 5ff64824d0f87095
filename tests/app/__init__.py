"""Shared fixtures of the application-interface tests: one fully populated sample of
every request and response, so both bindings are exercised on the same values."""

from __future__ import annotations

from m2mgw.app import operations as ops

TID = "A972030000001234"
TID2 = "A972030000005678"
T0 = 1_735_704_000  # 2025-01-01T04:00:00Z

_ITEMS = [ops.TlvItem(tag=0x0011, value=b"\x00\x00\x00\x5a"),
          ops.TlvItem(tag=0x8001, value=b"vendor")]
_INFO = ops.TerminalInfo(
    terminal_id=TID, imei="862001234567890", imsi="460001234567890", msisdn="13800138000",
    model="M1", software_version="1.2.3", state="ONLINE", connect_mode=2,
    heartbeat_interval=90, items=[ops.TlvItem(tag=0x3005, value=b"\x01")],
)

_DELIVER = ops.DeliverData(notify_id=7, terminal_id=TID, data=b"\x01\x02", fixed_part=b"\xaa",
                           bearer="TCP", receive_time=T0)


def requests() -> list[object]:
    """One sample request per operation, every optional field set."""
    return [
        ops.Login(login_type=1, heartbeat_interval=90, encrypt_notifications=True),
        ops.Logout(reason=1),
        ops.Heartbeat(),
        ops.SendData(terminal_id=TID, data=b"\x01\x02\x03\x04", need_terminal_ack=False,
                     ttl_seconds=600, biz_seq="order-7781"),
        ops.SendCommand(terminal_id=TID, fixed_part=b"\x10\x20", command=b"\x30",
                        need_terminal_ack=False, ttl_seconds=600, biz_seq="c-1"),
        ops.GetConfig(terminal_id=TID, tags=[0x0011, 0x0002], mode="sync"),
        ops.SetConfig(terminal_id=TID, items=_ITEMS, ttl_seconds=700, biz_seq="s-1"),
        ops.RemoteControl(terminal_id=TID, code=3, items=[ops.TlvItem(tag=0x4021, value=b"\x05")],
                          ttl_seconds=800, biz_seq="r-1"),
        ops.Upgrade(terminal_id=TID, version="V2.0", file_data=b"\x7f" * 70_000,
                    file_md5="0123456789abcdef0123456789abcdef", file_size=70_000, force=True,
                    ttl_seconds=900, biz_seq="u-1"),
        ops.QueryTerminalStatus(terminal_ids=[TID, TID2]),
        ops.QueryTerminalInfo(terminal_id=TID),
        ops.ListTerminals(modified_since=T0, page_no=2, page_size=50),
        ops.QueryMessageStatus(msg_id=1000123),
        ops.FetchMessages(max_count=10),
        ops.AckMessages(notify_ids=[1, 2, 3]),
        _DELIVER,
        ops.NotifyResult(notify_id=8, msg_id=1000123, biz_seq="order-7781", operation="GetConfig",
                         terminal_id=TID, state="ACKED", op_result=0, terminal_result=0,
                         items=_ITEMS, failed_tags=[0x0003], time=T0),
        ops.NotifyAlarm(notify_id=9, terminal_id=TID,
                        alarm=ops.AlarmInfo(status=1, type=2, code=0x0102, restore_code="R1",
                                            time=T0),
                        items=[ops.TlvItem(tag=0x300F, value=b"x")], bearer="SMS"),
        ops.NotifyConfigTrap(notify_id=10, terminal_id=TID, items=_ITEMS, time=T0),
        ops.NotifyTerminalState(notify_id=11, terminal_id=TID, event="LOGGED_OUT", reason=7,
                                time=T0),
    ]


def responses() -> list[object]:
    """One sample response per operation, every optional field set."""
    return [
        ops.LoginResponse(result_desc="OK", session_id="7c9e6679f1d04b8e", server_time=0x67000000,
                          session_key=bytes(16), heartbeat_interval=60, session_ttl=86400),
        ops.LogoutResponse(),
        ops.HeartbeatResponse(),
        ops.SendDataResponse(result_code=5, msg_id=1),
        ops.SendCommandResponse(msg_id=2),
        ops.GetConfigResponse(msg_id=3, items=_ITEMS, failed_tags=[0x0007, 0x0008]),
        ops.SetConfigResponse(result_code=8, msg_id=4, failed_tags=[0xE025]),
        ops.RemoteControlResponse(msg_id=5, failed_tags=[0x4001]),
        ops.UpgradeResponse(msg_id=6),
        ops.QueryTerminalStatusResponse(statuses=[
            ops.TerminalStatus(terminal_id=TID, state="ONLINE", last_login=T0,
                               last_active=T0 + 5, bearer="TCP", address="10.0.0.1:5000",
                               connect_mode=1),
            ops.TerminalStatus(terminal_id=TID2, state="UNKNOWN", bearer="NONE"),
        ]),
        ops.QueryTerminalInfoResponse(info=_INFO),
        ops.ListTerminalsResponse(total=2, terminal_ids=[TID, TID2]),
        ops.QueryMessageStatusResponse(state="APPLIED", op_result=0, terminal_result=0,
                                       update_time=T0),
        ops.FetchMessagesResponse(messages=[ops.NotificationItem(create_time=T0,
                                                                 notification=_DELIVER)],
                                  remaining=0),
        ops.AckMessagesResponse(),
        ops.DeliverDataResponse(),
        ops.NotifyResultResponse(result_code=11),
        ops.NotifyAlarmResponse(),
        ops.NotifyConfigTrapResponse(),
        ops.NotifyTerminalStateResponse(),
    ]

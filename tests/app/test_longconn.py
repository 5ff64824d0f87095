"""Long-connection binding: spec 8.2 byte for byte, layouts, framer, both session roles."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m2mgw.app import keys
from m2mgw.app import longconn as lc
from m2mgw.app import operations as ops
from m2mgw.app.digest import lc_sign, lc_verify
from m2mgw.protocol.errors import FramingError, ProtocolError
from m2mgw.protocol.framing import StreamFramer

from . import T0, TID, requests, responses

APP = lc.AppCredentials("EC0001", "s3cretPW", "AppBaseKey0123456789ABCD", "legacy")
SESSION_KEY = bytes.fromhex("5A1C9E0F3B7D2A64C8E1F09B3D5A7C20")
TS = 0x67000000

LOGIN_HEX = """
00 37 01 01 00 00 00 01 01 00 20 00 45 43 30 30
30 31 00 00 00 00 00 00 00 00 00 00 00 50 01 00
02 00 3C E0 21 00 10 F4 BF 4D 52 15 86 74 87 2E
11 CC 12 7A 50 75 31
"""
LOGIN_ACK_HEX = """
00 57 81 01 00 00 00 01 01 00 20 00 45 43 30 30
30 31 00 00 00 00 00 00 00 00 00 00 00 67 00 00
00 50 02 00 10 C4 C2 1E 15 6D 16 6D 35 1A D2 10
66 57 4C 80 A0 50 01 00 02 00 3C 50 03 00 04 00
01 51 80 E0 21 00 10 DC EA 21 9D B7 E7 BC 26 EA
13 0C AF CD 7C 74 CB
"""
LOGIN = bytes.fromhex(LOGIN_HEX)
LOGIN_ACK = bytes.fromhex(LOGIN_ACK_HEX)
WRAPPED = bytes.fromhex("C4C21E156D166D351AD21066574C80A0")


def lc_samples() -> list[object]:
    return [p for p in requests() + responses()
            if type(p) in {layout.cls for layout in lc.LAYOUTS.values()}]


def lookup(app_id: str) -> lc.AppCredentials | None:
    return APP if app_id == APP.app_id else None


# --- 8.2 worked example --------------------------------------------------------------------


def test_login_example_encodes_byte_for_byte() -> None:
    raw = lc.encode_message(lc.Command.APP_LOGIN, 1, "EC0001", ops.Login(heartbeat_interval=60),
                            timestamp=0, password="s3cretPW")
    assert raw == LOGIN


def test_login_example_decodes() -> None:
    frame = lc.parse_frame(LOGIN)
    assert frame.header == lc.Header(55, 0x0101, 1, 0x0100, 0x20, "EC0001")
    assert lc_verify(LOGIN, 0, "EC0001", "s3cretPW")
    assert not lc_verify(LOGIN, 0, "EC0001", "wrong")
    assert lc.decode_body(frame.header.command_id, frame.body) == ops.Login(heartbeat_interval=60)


def test_login_ack_example_both_ways() -> None:
    assert keys.wrap_session_key("legacy", APP.base_key, SESSION_KEY) == WRAPPED
    ack = ops.LoginResponse(server_time=TS, session_key=WRAPPED, heartbeat_interval=60,
                            session_ttl=86400)
    raw = lc.encode_message(0x8101, 1, "EC0001", ack, timestamp=TS, password="s3cretPW")
    assert raw == LOGIN_ACK
    frame = lc.parse_frame(LOGIN_ACK)
    assert lc_verify(LOGIN_ACK, TS, "EC0001", "s3cretPW")
    assert lc.decode_body(0x8101, frame.body) == ack
    assert keys.unwrap_session_key("legacy", APP.base_key, WRAPPED) == SESSION_KEY


def test_sessions_reproduce_the_example() -> None:
    client = lc.ClientSession(APP, now=0.0)
    platform = lc.PlatformSession(lookup, now=0.0)
    client.login(0.0, heartbeat_interval=60)
    assert client.data_to_send() == LOGIN
    [event] = platform.receive_data(LOGIN, 0.0)
    assert event == lc.LoginRequested(1, "EC0001", ops.Login(heartbeat_interval=60))
    platform.accept_login(0.0, timestamp=TS, session_key=SESSION_KEY)
    assert platform.data_to_send() == LOGIN_ACK
    [logged_in] = client.receive_data(LOGIN_ACK, 0.0)
    assert isinstance(logged_in, lc.LoggedIn)
    assert client.session_key == SESSION_KEY and client.timestamp == TS


# --- layouts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", lc_samples(), ids=lambda p: type(p).__name__)
def test_every_layout_round_trips(payload: object) -> None:
    command_id = lc.command_for(payload)
    decoded = lc.decode_body(command_id, lc.encode_body(command_id, payload))
    if isinstance(payload, ops.LoginResponse):  # not carried on the long connection
        payload = dataclasses.replace(payload, result_desc="", session_id=None)
    assert decoded == payload


def test_every_command_has_request_and_ack_layout() -> None:
    for command in lc.Command:
        assert command in lc.LAYOUTS and command | 0x8000 in lc.LAYOUTS


def test_long_file_data_is_split_into_tlvs_of_one_tag() -> None:
    upgrade = next(p for p in requests() if isinstance(p, ops.Upgrade))
    body = lc.encode_body(lc.Command.APP_UPGRADE, upgrade)
    file_tlvs = [v for t, v in lc.iter_tlvs(body) if t == lc.Tag.FILE_DATA]
    assert [len(v) for v in file_tlvs] == [65535, 70_000 - 65535]


def test_embedded_tlvs_and_unknown_app_tags() -> None:
    body = (lc.tlv(0x4012, TID.encode()) + lc.tlv(0x5099, b"ignored")
            + lc.tlv(0x0011, b"\x00\x00\x00\x5a"))
    request = lc.decode_body(lc.Command.APP_CONFIG_SET, body)
    assert request.items == [ops.TlvItem(tag=0x0011, value=b"\x00\x00\x00\x5a")]
    with pytest.raises(lc.BodyError):
        lc.encode_body(lc.Command.APP_CONFIG_SET,
                       ops.SetConfig(terminal_id=TID, items=[ops.TlvItem(tag=0x5001, value=b"")]))


def test_defaults_are_not_sent_and_missing_required_tlv_fails() -> None:
    body = lc.encode_body(lc.Command.APP_SEND_DATA, ops.SendData(terminal_id=TID, data=b"x"))
    assert [t for t, _ in lc.iter_tlvs(body)] == [0x4012, 0x4007]
    with pytest.raises(lc.BodyError, match="0x4007"):
        lc.decode_body(lc.Command.APP_SEND_DATA, lc.tlv(0x4012, TID.encode()))


def test_legacy_padding_tolerated_only_when_asked() -> None:
    body = lc.encode_body(lc.Command.APP_LOGOUT, ops.Logout(reason=2)) + b"\x00" * 7
    assert lc.decode_body(lc.Command.APP_LOGOUT, body, padded=True) == ops.Logout(reason=2)
    with pytest.raises(lc.BodyError):
        lc.decode_body(lc.Command.APP_LOGOUT, body)


def test_encrypted_message_round_trip() -> None:
    cipher = keys.session_cipher("legacy", SESSION_KEY)
    payload = ops.SendData(terminal_id=TID, data=b"hello")
    raw = lc.encode_message(lc.Command.APP_SEND_DATA, 5, "EC0001", payload, timestamp=TS,
                            password="s3cretPW", cipher=cipher)
    frame = lc.parse_frame(raw)
    assert frame.header.flags == 0x30 and frame.container == lc.Tag.ENCRYPTED
    body, encrypted = lc.open_body(frame, cipher)
    assert encrypted and lc.decode_body(frame.header.command_id, body, padded=True) == payload


_tids = st.text(alphabet="0123456789ABCDEF", min_size=16, max_size=16)
_u32 = st.integers(0, 0xFFFFFFFF)
_items = st.lists(st.builds(ops.TlvItem, tag=st.integers(0x0001, 0x3FFF),
                            value=st.binary(max_size=40)), max_size=5)


@given(st.builds(ops.SendData, terminal_id=_tids, data=st.binary(max_size=2000),
                 need_terminal_ack=st.booleans(), ttl_seconds=_u32,
                 biz_seq=st.none() | st.text(alphabet="abc-123", min_size=1, max_size=32)))
def test_send_data_round_trip(payload: ops.SendData) -> None:
    assert lc.decode_body(0x0104, lc.encode_body(0x0104, payload)) == payload


@given(st.builds(ops.NotifyResult, notify_id=_u32, msg_id=_u32,
                 operation=st.sampled_from(ops.DOWNLINK_OPERATIONS), terminal_id=_tids,
                 state=st.sampled_from(ops.MSG_STATES), op_result=st.integers(0, 99),
                 terminal_result=st.none() | st.integers(0, 255), items=_items,
                 failed_tags=st.lists(st.integers(0, 0xFFFF), max_size=4), time=_u32))
def test_notify_result_round_trip(payload: ops.NotifyResult) -> None:
    assert lc.decode_body(0x010E, lc.encode_body(0x010E, payload)) == payload


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(lc.LAYOUTS)), st.binary(max_size=120), st.booleans())
def test_decode_body_fuzz_raises_only_the_family(command_id: int, body: bytes,
                                                 padded: bool) -> None:
    try:
        lc.decode_body(command_id, body, padded=padded)
    except lc.LongConnError:
        pass


# --- framer ------------------------------------------------------------------------------


@given(st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_framer_reassembles_any_split(cuts: list[int]) -> None:
    stream = LOGIN + LOGIN_ACK + LOGIN
    framer, frames, pos = StreamFramer(), [], 0
    for cut in cuts:
        frames += framer.feed(stream[pos : pos + cut])
        pos += cut
    frames += framer.feed(stream[pos:])
    assert frames == [LOGIN, LOGIN_ACK, LOGIN]
    assert framer.buffered == 0


def test_framer_several_frames_per_read_and_partial_tail() -> None:
    framer = StreamFramer()
    assert framer.feed(LOGIN + LOGIN_ACK + LOGIN[:10]) == [LOGIN, LOGIN_ACK]
    assert framer.buffered == 10
    assert framer.feed(LOGIN[10:]) == [LOGIN]


def test_framer_corrupt_length_is_fatal() -> None:
    framer = StreamFramer()
    with pytest.raises(FramingError):
        framer.feed(b"\x00\x1b" + bytes(30))
    with pytest.raises(FramingError):
        framer.feed(LOGIN)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_framer_and_parser_fuzz(data: bytes) -> None:
    try:
        for raw in StreamFramer().feed(data):
            lc.parse_frame(raw)
    except (FramingError, lc.LongConnError):
        pass


def test_header_checks() -> None:
    with pytest.raises(lc.HeaderError):
        lc.parse_frame(LOGIN[:-1])
    with pytest.raises(lc.HeaderError):
        lc.parse_frame(LOGIN[:35] + b"\xe0\x22" + LOGIN[37:])
    bad_id = LOGIN[:12] + b"\xff" * 16 + LOGIN[28:]
    with pytest.raises(lc.HeaderError):
        lc.parse_frame(bad_id)
    assert issubclass(lc.HeaderError, ProtocolError) and issubclass(FramingError, ProtocolError)


# --- sessions ------------------------------------------------------------------------------


class Link:
    """A client and a platform session wired back to back, with a shared clock."""

    def __init__(self, *, encrypt_notifications: bool = False, profile: str = "legacy",
                 session_ttl: int = lc.SESSION_TTL, base_key: str | None = None) -> None:
        """``base_key``: the one the platform logs the client in under, not the
        looked-up one (a rotation that took effect at this login)."""
        self.creds = dataclasses.replace(
            APP, profile=profile, base_key=APP.base_key[:16] if profile == "aes" else APP.base_key
        )
        self.now = 0.0
        client = self.creds if base_key is None else dataclasses.replace(self.creds,
                                                                          base_key=base_key)
        self.client = lc.ClientSession(client, self.now)
        self.platform = lc.PlatformSession(lambda a: self.creds if a == "EC0001" else None,
                                           self.now)
        self.client.login(self.now, encrypt_notifications=encrypt_notifications)
        [request] = self.to_platform()
        self.platform.accept_login(self.now, timestamp=TS, session_ttl=session_ttl,
                                   base_key=base_key)
        [logged_in] = self.to_client()
        assert isinstance(request, lc.LoginRequested) and isinstance(logged_in, lc.LoggedIn)
        # The client's heartbeat right after the ACK confirms the login (D-256, D-258).
        assert not self.platform.confirmed
        assert self.to_platform() == [lc.LoginConfirmed()] and self.platform.confirmed
        assert self.to_client() == [] and self.client.outstanding == 0

    def to_platform(self) -> list[lc.Event]:
        return self.platform.receive_data(self.client.data_to_send(), self.now)

    def to_client(self) -> list[lc.Event]:
        return self.client.receive_data(self.platform.data_to_send(), self.now)

    def advance(self, seconds: float) -> tuple[list[lc.Event], list[lc.Event]]:
        self.now += seconds
        return self.client.tick(self.now), self.platform.tick(self.now)


def test_request_answer_round_trip_both_directions() -> None:
    link = Link()
    seq = link.client.send_request(ops.SendData(terminal_id=TID, data=b"up"), link.now)
    [received] = link.to_platform()
    assert isinstance(received, lc.RequestReceived) and received.sequence_id == seq
    link.platform.answer(seq, ops.SendDataResponse(msg_id=42), link.now)
    [answer] = link.to_client()
    assert answer == lc.AnswerReceived(seq, 0x0104, received.payload,
                                       ops.SendDataResponse(msg_id=42))
    deliver = ops.DeliverData(notify_id=1, terminal_id=TID, data=b"d", bearer="UDP",
                              receive_time=T0)
    nseq = link.platform.send_request(deliver, link.now)
    [notification] = link.to_client()
    assert notification.payload == deliver and not notification.encrypted
    link.client.answer(nseq, ops.DeliverDataResponse(), link.now)
    [ack] = link.to_platform()
    assert isinstance(ack, lc.AnswerReceived) and ack.response.ok


@pytest.mark.parametrize("profile", ["legacy", "aes"])
def test_encrypted_notifications_and_answers(profile: str) -> None:
    link = Link(encrypt_notifications=True, profile=profile)
    state = ops.NotifyTerminalState(notify_id=3, terminal_id=TID, event="OFFLINE", time=T0)
    seq = link.platform.send_request(state, link.now)
    wire = link.platform.data_to_send()
    assert wire[10] == 0x30 and b"OFFLINE" not in wire
    [event] = link.client.receive_data(wire, link.now)
    assert event.encrypted and event.payload == state
    link.client.answer(seq, ops.NotifyTerminalStateResponse(), link.now)
    answer = link.client.data_to_send()
    assert answer[10] == 0x30  # the answer to an encrypted request is encrypted
    [ack] = link.platform.receive_data(answer, link.now)
    assert ack.response.ok


def test_request_before_login_is_answered_3_and_closed() -> None:
    platform = lc.PlatformSession(lookup, 0.0)
    raw = lc.encode_message(0x0103, 1, "EC0001", ops.Heartbeat(), timestamp=0,
                            password="s3cretPW")
    [closed] = platform.receive_data(raw, 0.0)
    assert isinstance(closed, lc.Closed) and platform.closed
    answer = platform.data_to_send()
    assert answer[28] == 3 and lc_verify(answer, 0, "EC0001", "s3cretPW")


@pytest.mark.parametrize(("app_id", "password", "version", "result"), [
    ("EC0001", "wrong", 0x0100, 1),
    ("EC9999", "s3cretPW", 0x0100, 2),
    ("EC0001", "s3cretPW", 0x0300, 12),
])
def test_login_failures_are_unsigned(app_id: str, password: str, version: int,
                                     result: int) -> None:
    platform = lc.PlatformSession(lookup, 0.0)
    raw = lc.encode_message(0x0101, 1, app_id, ops.Login(), timestamp=0, password=password,
                            version=version)
    [closed] = platform.receive_data(raw, 0.0)
    assert isinstance(closed, lc.Closed)
    answer = platform.data_to_send()
    assert answer[2:4] == b"\x81\x01" and answer[10] == 0x00 and answer[28] == result
    client = lc.ClientSession(APP, 0.0)
    client.login(0.0)
    client.data_to_send()
    events = client.receive_data(answer, 0.0)
    assert events[0] == lc.LoginRejected(result, trusted=False)


def test_reject_login_is_signed() -> None:
    platform = lc.PlatformSession(lookup, 0.0)
    platform.receive_data(LOGIN, 0.0)
    platform.reject_login(ops.ResultCode.DUPLICATE, 0.0)
    answer = platform.data_to_send()
    assert answer[28] == 11 and lc_verify(answer, 0, "EC0001", "s3cretPW") and platform.closed


def test_a_login_counts_once_a_message_signed_after_it_verified() -> None:
    """APP_LOGIN's digest has TS 0: its bytes replay, so only what follows proves (D-256)."""
    platform = lc.PlatformSession(lookup, 0.0)
    platform.receive_data(LOGIN, 0.0)
    platform.accept_login(0.0, timestamp=TS, session_key=SESSION_KEY)
    assert platform.data_to_send() == LOGIN_ACK and not platform.confirmed
    state = ops.NotifyTerminalState(notify_id=1, terminal_id=TID, event="OFFLINE", time=T0)
    with pytest.raises(lc.SessionError, match="not confirmed"):
        platform.send_request(state, 1.0)
    with pytest.raises(lc.SessionError, match="not confirmed"):
        platform.announce_base_key(1.0, "NextBaseKey0123456789ABC", T0)
    # The same APP_LOGIN again verifies (TS 0), is answered from the cache, proves nothing.
    assert platform.receive_data(LOGIN, 1.0) == [] and not platform.confirmed
    assert platform.data_to_send() == LOGIN_ACK
    # A message signed with the session timestamp does.
    heartbeat = lc.encode_message(0x0103, 2, "EC0001", ops.Heartbeat(), timestamp=TS,
                                  password="s3cretPW")
    assert platform.receive_data(heartbeat, 2.0) == [lc.LoginConfirmed()]
    assert platform.confirmed and platform.receive_data(
        lc.encode_message(0x0103, 3, "EC0001", ops.Heartbeat(), timestamp=TS,
                          password="s3cretPW"), 3.0) == []
    platform.send_request(state, 3.0)


def test_an_unconfirmed_login_is_closed_after_one_heartbeat_interval() -> None:
    platform = lc.PlatformSession(lookup, 0.0)
    platform.receive_data(LOGIN, 0.0)  # requests 60 s
    platform.accept_login(0.0, timestamp=TS, session_key=SESSION_KEY)
    platform.data_to_send()
    deadline = 60 + lc.ANSWER_TIMEOUT
    assert platform.next_deadline() == deadline
    # Signed with TS 0 like the login, a heartbeat is discarded: it proves nothing.
    forged = lc.encode_message(0x0103, 2, "EC0001", ops.Heartbeat(), timestamp=0,
                               password="s3cretPW")
    assert platform.receive_data(forged, 10.0) == [] and not platform.confirmed
    assert platform.tick(deadline - 1) == []
    assert platform.tick(deadline) == [lc.Closed("login not confirmed")]
    assert platform.data_to_send() == b"", "nothing for whoever sent the login"


def test_login_timeout_closes() -> None:
    platform = lc.PlatformSession(lookup, 0.0)
    assert platform.next_deadline() == 60.0
    assert platform.tick(59.0) == []
    assert platform.tick(60.0) == [lc.Closed("no login")]


def test_heartbeat_and_idle_rules() -> None:
    link = Link()
    assert link.client.next_deadline() == 60.0
    link.advance(60.0)
    heartbeat = link.client.data_to_send()
    assert heartbeat[2:4] == b"\x01\x03" and heartbeat[10] == 0x20
    assert link.platform.receive_data(heartbeat, link.now) == []  # answered internally
    assert link.to_client() == []
    assert link.client.outstanding == 0
    # The client goes silent: the platform sends APP_LOGOUT reason 2 after 3 × C.
    link.client = lc.ClientSession(APP, link.now)
    _, platform_events = link.advance(180.0)
    assert platform_events == [lc.Closed("heartbeat lost")]
    logout = lc.parse_frame(link.platform.data_to_send())
    assert logout.header.command_id == 0x0102 and logout.body == b"\x02"


def test_heartbeat_interval_is_clamped() -> None:
    assert lc.clamp_heartbeat(None) == 60
    assert lc.clamp_heartbeat(5) == 10
    assert lc.clamp_heartbeat(3600) == 600


def test_window_timeouts_and_three_strikes() -> None:
    link = Link()
    for _ in range(lc.WINDOW):
        link.client.send_request(ops.QueryMessageStatus(msg_id=1), link.now)
    with pytest.raises(lc.SessionError):
        link.client.send_request(ops.QueryMessageStatus(msg_id=1), link.now)
    events = link.to_platform()
    assert len(events) == lc.WINDOW
    client_events, _ = link.advance(15.0)
    failed = [e for e in client_events if isinstance(e, lc.RequestFailed)]
    assert len(failed) == lc.WINDOW and all(e.reason == "timeout" for e in failed)
    assert lc.Closed("three answer timeouts") in client_events


def test_peer_exceeding_the_window_gets_result_9() -> None:
    link = Link()
    # A peer that ignores the window of 16: requests built by hand, signed as the
    # client's (its own session would refuse the 17th).
    requests = b"".join(
        lc.encode_message(0x010D, seq, "EC0001", ops.QueryMessageStatus(msg_id=1),
                          timestamp=TS, password="s3cretPW")
        for seq in range(100, 101 + lc.WINDOW)
    )
    events = link.platform.receive_data(requests, link.now)
    assert len(events) == lc.WINDOW
    answer = link.platform.data_to_send()
    assert lc_verify(answer, TS, "EC0001", "s3cretPW")
    failed = lc.parse_frame(answer)
    assert failed.header.command_id == 0x810D and failed.header.sequence_id == 100 + lc.WINDOW
    assert lc.decode_body(0x810D, failed.body).result_code == 9


def test_duplicate_request_is_answered_from_cache() -> None:
    link = Link()
    link.client.send_request(ops.SendData(terminal_id=TID, data=b"x"), link.now)
    request = link.client.data_to_send()
    [event] = link.platform.receive_data(request, link.now)
    assert link.platform.receive_data(request, link.now) == []  # still being processed
    assert link.platform.data_to_send() == b""
    link.platform.answer(event.sequence_id, ops.SendDataResponse(msg_id=9), link.now)
    first = link.platform.data_to_send()
    assert link.platform.receive_data(request, link.now) == []
    assert link.platform.data_to_send() == first


def test_unknown_command_gets_result_12() -> None:
    link = Link()
    raw = lc.build_unsigned(0x0199, 77, "EC0001", b"", 0x20)
    raw = lc_sign(raw, TS, "EC0001", "s3cretPW")
    assert link.platform.receive_data(raw, link.now) == []
    answer = lc.parse_frame(link.platform.data_to_send())
    assert answer.header.command_id == 0x8199 and answer.body == b"\x0c"


def test_bad_digest_is_discarded_and_bad_body_answered_8() -> None:
    link = Link()
    raw = lc.build_unsigned(0x0104, 5, "EC0001", lc.tlv(0x4012, TID.encode()), 0x20)
    assert link.platform.receive_data(lc_sign(raw, TS, "EC0001", "nope"), link.now) == []
    assert link.platform.data_to_send() == b""
    assert link.platform.receive_data(lc_sign(raw, TS, "EC0001", "s3cretPW"), link.now) == []
    assert lc.parse_frame(link.platform.data_to_send()).body == b"\x08"


def test_logout_from_client() -> None:
    link = Link()
    link.client.logout(link.now, reason=1)
    [received] = link.to_platform()
    assert received == lc.LogoutReceived(1) and link.platform.cipher is None
    assert link.to_client() == [lc.Closed("logout")]


def test_session_ttl_sends_logout_5() -> None:
    link = Link()
    link.platform._ttl_end = link.now + 100
    link.client.heartbeat = 1000
    link.advance(100.0)
    logout = link.platform.data_to_send()
    frame = lc.parse_frame(logout)
    assert frame.header.command_id == 0x0102 and frame.body == b"\x05"
    [event] = link.client.receive_data(logout, link.now)
    assert event == lc.LogoutReceived(5)
    assert link.to_platform() == [lc.Closed("logout")]


def test_session_key_update_switches_at_the_ack() -> None:
    link = Link(encrypt_notifications=True)
    new_key = bytes(range(16))
    link.platform.update_session_key(link.now, new_key)
    with pytest.raises(lc.SessionError):
        link.platform.send_request(ops.DeliverData(notify_id=1, terminal_id=TID, data=b"",
                                                   bearer="TCP", receive_time=T0), link.now)
    assert link.to_client() == [lc.KeyUpdated(1)]
    assert link.client.session_key == new_key
    assert link.to_platform() == [lc.KeyUpdated(1)]
    link.client.encrypt_requests = True
    seq = link.client.send_request(ops.QueryTerminalInfo(terminal_id=TID), link.now)
    events = link.to_platform()
    assert events[-1].sequence_id == seq and events[-1].encrypted


def test_base_key_announcement() -> None:
    link = Link()
    link.platform.announce_base_key(link.now, "NewBaseKey0123456789ABCD", T0)
    assert link.to_client() == [lc.BaseKeyAnnounced("NewBaseKey0123456789ABCD", T0)]
    assert link.to_platform() == [lc.KeyUpdated(2)]


def test_refused_key_update_closes_with_logout_6() -> None:
    link = Link()
    update = ops.KeyUpdate(key_type=1, key_blob=b"\x00" * 5)  # cannot decrypt
    link.platform._send_key_update(update, bytes(16), link.now)
    assert link.to_client() == []
    assert link.to_platform() == [lc.Closed("key update refused")]
    logout = lc.parse_frame(link.platform.data_to_send())
    assert logout.header.command_id == 0x0102 and logout.body == b"\x06"


def test_connection_lost_fails_outstanding() -> None:
    link = Link()
    seq = link.platform.send_request(
        ops.NotifyConfigTrap(notify_id=1, terminal_id=TID, time=T0), link.now)
    events = link.platform.connection_lost(link.now)
    assert events[0].sequence_id == seq and events[0].reason == "closed"
    assert events[-1] == lc.Closed("connection lost")


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=80), max_size=5), st.booleans())
def test_sessions_survive_garbage(chunks: list[bytes], logged_in: bool) -> None:
    link = Link() if logged_in else None
    platform = link.platform if link else lc.PlatformSession(lookup, 0.0)
    client = link.client if link else lc.ClientSession(APP, 0.0)
    for chunk in chunks:
        framed = struct.pack(">H", len(chunk) + 30) + LOGIN[2:30] + chunk
        for session in (platform, client):
            session.receive_data(framed, 1.0)
            session.receive_data(chunk, 1.0)
            session.tick(2.0)


def test_retransmitted_login_replays_its_ack_and_a_new_login_gets_11() -> None:
    platform = lc.PlatformSession(lookup, 0.0)
    platform.receive_data(LOGIN, 0.0)
    platform.accept_login(0.0, timestamp=TS, session_key=SESSION_KEY)
    assert platform.data_to_send() == LOGIN_ACK
    assert platform.receive_data(LOGIN, 1.0) == []
    assert platform.data_to_send() == LOGIN_ACK
    again = lc.encode_message(0x0101, 2, "EC0001", ops.Login(), timestamp=0, password="s3cretPW")
    assert platform.receive_data(again, 1.0) == []
    assert platform.data_to_send()[28] == 11 and not platform.closed


# --- keys (section 7) ----------------------------------------------------------------------


def test_key_transport_and_generation() -> None:
    aes_key = "AppBaseKey012345"
    blob = keys.wrap_session_key("aes", aes_key, SESSION_KEY)
    assert len(blob) == 48 and keys.unwrap_session_key("aes", aes_key, blob) == SESSION_KEY
    with pytest.raises(ProtocolError):
        keys.unwrap_session_key("aes", "OtherBaseKey0123", blob)
    new = keys.generate_base_key("legacy")
    assert len(new) == 24 and len(keys.generate_base_key("aes")) == 16
    assert keys.unwrap_base_key("legacy", APP.base_key,
                                keys.wrap_base_key("legacy", APP.base_key, new)) == new
    assert 12 <= len(keys.generate_password()) <= 32
    assert len(keys.generate_session_key()) == 16
    with pytest.raises(ProtocolError):
        keys.base_cipher("legacy", "short")
    with pytest.raises(ProtocolError):
        keys.decrypt_lc_body(keys.session_cipher("legacy", SESSION_KEY), b"\x40\x08\x00\x00")


def test_base_key_rotation_and_expiry() -> None:
    state = keys.BaseKeyState("legacy", APP.base_key, expires_at=1000)
    state.schedule("NewBaseKey0123456789ABCD", effective_time=500, expires_at=5000)
    assert state.current(499) == APP.base_key
    assert state.current(500) == "NewBaseKey0123456789ABCD"
    assert state.current(4999) == "NewBaseKey0123456789ABCD"
    assert state.current(5000) is None  # expired: logins get result 1 (7.2)

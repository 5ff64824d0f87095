"""Long-connection fragmentation (spec 6.7, [T] section 7) at the session level."""

from __future__ import annotations

import hashlib
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m2mgw.app import keys
from m2mgw.app import longconn as lc
from m2mgw.app import operations as ops
from m2mgw.app.digest import lc_sign, lc_verify
from m2mgw.protocol.errors import CryptoError
from m2mgw.protocol.fragment import FragmentOp, FragmentPart
from m2mgw.protocol.framing import StreamFramer

from . import T0, TID
from .test_longconn import TS, Link

PASSWORD = "s3cretPW"
APP_ID = "EC0001"


def upgrade(size: int) -> ops.Upgrade:
    data = bytes(i % 251 for i in range(size))
    return ops.Upgrade(terminal_id=TID, version="V2.0", file_data=data,
                       file_md5=hashlib.md5(data).hexdigest(), file_size=size)


def frames(wire: bytes) -> list[lc.Frame]:
    return [lc.parse_frame(raw) for raw in StreamFramer().feed(wire)]


def part_of(frame: lc.Frame) -> FragmentPart:
    assert frame.header.flags == 0x30 and frame.container == lc.Tag.FRAGMENT
    return lc.fragment_of(frame)


def shuttle(link: Link) -> tuple[list[lc.Event], list[lc.Event], list[lc.Frame], list[lc.Frame]]:
    """Carry bytes both ways until both sides are quiet; events and frames of each side."""
    client_events: list[lc.Event] = []
    platform_events: list[lc.Event] = []
    from_client: list[lc.Frame] = []
    from_platform: list[lc.Frame] = []
    while True:
        up, down = link.client.data_to_send(), link.platform.data_to_send()
        if not up and not down:
            return client_events, platform_events, from_client, from_platform
        from_client += frames(up)
        from_platform += frames(down)
        platform_events += link.platform.receive_data(up, link.now)
        client_events += link.client.receive_data(down, link.now)


def signed(command_id: int, seq: int, body: bytes, flags: int = 0x30) -> bytes:
    return lc_sign(lc.build_unsigned(command_id, seq, APP_ID, body, flags | 0x20), TS, APP_ID,
                   PASSWORD)


@pytest.mark.parametrize("mode", ["plain", "legacy", "aes"])
def test_fragmented_request_from_the_application(mode: str) -> None:
    link = Link(profile="aes" if mode == "aes" else "legacy")
    link.client.encrypt_requests = mode != "plain"
    request = upgrade(200_000)
    body, _ = lc.seal_body(lc.Command.APP_UPGRADE, request,
                           link.client.cipher if mode != "plain" else None)
    seq = link.client.send_request(request, link.now)
    first = frames(link.client.data_to_send())
    assert len(first) == 1, "only part 1 goes before the receiver asks for more"
    platform_events = link.platform.receive_data(first[0].raw, link.now)
    _, more, from_client, from_platform = shuttle(link)
    platform_events += more
    from_client = first + from_client

    total = math.ceil(len(body) / lc.FRAGMENT_THRESHOLD)
    parts = [part_of(f) for f in from_client]
    assert [(p.total, p.part, p.op) for p in parts] == [(total, n, 0) for n in range(1, total + 1)]
    joined = b"".join(p.chunk for p in parts)
    assert joined == body if mode == "plain" else (  # AES: a fresh IV per encryption
        joined[:2] == b"\xe0\x42" and len(joined) == len(body))
    assert {f.header.sequence_id for f in from_client} == {seq}
    assert all(f.header.command_id == 0x010A and len(f.raw) <= 0xFFFF for f in from_client)
    assert all(lc_verify(f.raw, TS, APP_ID, PASSWORD) for f in from_client), "own digests"
    # The platform asked for parts 2..N in the answer Command_ID, same Sequence_ID.
    asks = [part_of(f) for f in from_platform]
    assert [(a.part, a.op) for a in asks] == [(n, FragmentOp.NEXT) for n in range(2, total + 1)]
    assert {f.header.command_id for f in from_platform} == {0x810A}
    [received] = platform_events
    assert isinstance(received, lc.RequestReceived)
    assert received.payload == request and received.encrypted == (mode != "plain")
    link.platform.answer(seq, ops.UpgradeResponse(msg_id=77), link.now)
    [answer] = link.to_client()
    assert isinstance(answer, lc.AnswerReceived) and answer.response.msg_id == 77
    assert not link.client.fragmenting and not link.platform.fragmenting


def test_fragmented_notification_from_the_platform() -> None:
    link = Link(encrypt_notifications=True)
    deliver = ops.DeliverData(notify_id=5, terminal_id=TID, data=b"\x5a" * ops.MAX_USER_DATA,
                              bearer="TCP", receive_time=T0)
    seq = link.platform.send_request(deliver, link.now)
    client_events, platform_events, from_client, from_platform = shuttle(link)
    assert [part_of(f).part for f in from_platform] == [1, 2]
    assert {f.header.command_id for f in from_platform} == {0x0105}
    assert [(f.header.command_id, part_of(f).op) for f in from_client] == [
        (0x8105, FragmentOp.NEXT)]
    assert platform_events == []
    [received] = client_events
    assert received.payload == deliver and received.encrypted
    link.client.answer(seq, ops.DeliverDataResponse(), link.now)
    [ack] = link.to_platform()
    assert isinstance(ack, lc.AnswerReceived) and ack.response.ok


def test_fragmented_answer() -> None:
    link = Link()
    seq = link.client.send_request(ops.ListTerminals(page_size=1000), link.now)
    [request] = link.to_platform()
    assert request.payload == ops.ListTerminals(page_size=1000)
    serials = [f"A9720300{n:08d}" for n in range(4000)]  # 80,000 bytes of 0x3002 TLVs
    link.platform.answer(seq, ops.ListTerminalsResponse(total=4000, terminal_ids=serials),
                         link.now)
    client_events, _, from_client, from_platform = shuttle(link)
    # The requester asks for each next part with op-1 requests: request Command_ID, s' = s.
    assert [(f.header.command_id, f.header.sequence_id, part_of(f).part, part_of(f).op)
            for f in from_client] == [(0x0113, seq, 2, FragmentOp.NEXT)]
    assert [part_of(f).part for f in from_platform] == [1, 2]
    assert all(f.header.command_id == 0x8113 for f in from_platform)
    [answer] = client_events
    assert isinstance(answer, lc.AnswerReceived) and answer.response.terminal_ids == serials
    assert not link.platform.fragmenting and link.client.outstanding == 0


def test_receiver_aborts_an_unexpected_part() -> None:
    link = Link()
    seq = link.client.send_request(upgrade(150_000), link.now)
    [first] = frames(link.client.data_to_send())
    link.platform.receive_data(first.raw, link.now)
    [ask] = frames(link.platform.data_to_send())
    assert part_of(ask).part == 2
    # Part 3 instead of part 2: the platform ends the exchange with op 2 and drops the data.
    head = part_of(first)
    wrong = FragmentPart(head.trans_id, head.total, 3, FragmentOp.DATA, b"x")
    assert link.platform.receive_data(link.client._part_frame(0x010A, seq, wrong), link.now) == []
    [abort] = frames(link.platform.data_to_send())
    assert abort.header.command_id == 0x810A and part_of(abort).op == FragmentOp.RECEIVER_ABORT
    assert not link.platform.fragmenting
    [failed] = link.client.receive_data(abort.raw, link.now)
    assert isinstance(failed, lc.RequestFailed) and failed.sequence_id == seq
    assert link.client.data_to_send() == b"", "nothing answers an op 2"


def test_sender_aborts_when_asked_for_the_wrong_part() -> None:
    link = Link()
    seq = link.client.send_request(upgrade(150_000), link.now)
    [first] = frames(link.client.data_to_send())
    link.platform.receive_data(first.raw, link.now)
    link.platform.data_to_send()
    head = part_of(first)
    skip = FragmentPart(head.trans_id, head.total, 3, FragmentOp.NEXT)
    [failed] = link.client.receive_data(link.platform._part_frame(0x810A, seq, skip), link.now)
    assert isinstance(failed, lc.RequestFailed)
    [abort] = frames(link.client.data_to_send())
    assert part_of(abort).op == FragmentOp.SENDER_ABORT and abort.header.command_id == 0x010A
    assert link.platform.receive_data(abort.raw, link.now) == []
    assert link.platform.data_to_send() == b"" and not link.platform.fragmenting


def test_body_beyond_the_reassembly_bound_is_not_sent() -> None:
    link = Link()
    with pytest.raises(lc.BodyError) as caught:
        link.client.send_request(upgrade(lc.REASSEMBLY_LIMITS.max_bytes), link.now)
    assert caught.value.result == ops.ResultCode.TOO_LARGE
    assert link.client.outstanding == 0 and link.client.data_to_send() == b""


def test_reassembly_byte_bound() -> None:
    link = Link()
    chunk = bytes(lc.FRAGMENT_THRESHOLD)
    total = lc.REASSEMBLY_LIMITS.max_bytes // len(chunk) + 1  # 71 parts: one too many bytes
    for number in range(1, total + 1):
        part = FragmentPart(9, total, number, FragmentOp.DATA, chunk)
        assert link.platform.receive_data(signed(0x010A, 4, part.encode_tlv()), link.now) == []
        [reply] = frames(link.platform.data_to_send())
        op = part_of(reply).op
        assert op == (FragmentOp.NEXT if number < total else FragmentOp.RECEIVER_ABORT)
    assert not link.platform.fragmenting


def test_part_count_bound_and_malformed_parts() -> None:
    link = Link()
    too_many = FragmentPart(9, 129, 1, FragmentOp.DATA, b"abc")
    link.platform.receive_data(signed(0x010A, 4, too_many.encode_tlv()), link.now)
    [answer] = frames(link.platform.data_to_send())
    assert answer.header.command_id == 0x810A and answer.body == b"\x08"
    trailing = FragmentPart(9, 2, 1, FragmentOp.DATA, b"abc").encode_tlv() + b"\x00"
    link.platform.receive_data(signed(0x010A, 5, trailing), link.now)
    assert frames(link.platform.data_to_send())[0].body == b"\x08"


def test_idle_reassembly_is_discarded() -> None:
    link = Link()
    link.client.heartbeat = link.platform.heartbeat = 600
    seq = link.client.send_request(upgrade(150_000), link.now)
    [first] = frames(link.client.data_to_send())
    link.platform.receive_data(first.raw, link.now)
    link.platform.data_to_send()
    assert link.platform.fragmenting
    assert link.platform.next_deadline() == link.now + 60.0
    link.now += 60.0
    link.platform.tick(link.now)
    assert not link.platform.fragmenting
    head = part_of(first)
    second = FragmentPart(head.trans_id, head.total, 2, FragmentOp.DATA, b"late")
    link.platform.receive_data(link.client._part_frame(0x010A, seq, second), link.now)
    [reply] = frames(link.platform.data_to_send())
    assert part_of(reply).op == FragmentOp.RECEIVER_ABORT


def test_no_session_key_update_while_fragmenting() -> None:
    link = Link()
    link.client.send_request(upgrade(150_000), link.now)
    link.to_platform()
    with pytest.raises(lc.SessionError):
        link.platform.update_session_key(link.now)


def test_long_ciphertext_spans_several_e042_tlvs() -> None:
    cipher = keys.session_cipher("legacy", bytes(range(16)))
    body = bytes(range(256)) * 600  # 153,600 bytes
    container = keys.encrypt_lc_body(cipher, body)
    tags = [tag for tag, _ in lc.iter_tlvs(container)]
    assert tags == [0xE042] * 3
    assert keys.decrypt_lc_body(cipher, container) == body
    with pytest.raises(CryptoError):
        keys.decrypt_lc_body(cipher, container[:-1])


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=30), st.sampled_from([0x010A, 0x810A, 0x0104]))
def test_garbage_parts_raise_nothing(value: bytes, command_id: int) -> None:
    link = Link()
    seq = 1
    if command_id & 0x8000:
        seq = link.client.send_request(upgrade(70_000), link.now)
        link.to_platform()
        receiver = link.client
    else:
        receiver = link.platform
    receiver.receive_data(signed(command_id, seq, lc.tlv(0x4008, value)), link.now)
    receiver.tick(link.now + 61)

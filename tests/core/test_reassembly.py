"""A terminal's fragmented requests (spec 7.4, PD-28): the engine feeds its reassembly
table and answers each part as :func:`m2mgw.protocol.fragment.reply_to` says, the one
policy of every machine that reassembles, and logs what the table aborted or dropped.
Fake bearers, a Clock and the in-memory registry."""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest

from m2mgw.protocol import messages as m
from m2mgw.protocol.codec import FRAGMENT_FLAG, build_frame, parse_frame
from m2mgw.protocol.constants import ACK_BIT, Command
from m2mgw.protocol.fragment import (
    FragmentLimits,
    FragmentOp,
    FragmentPart,
    FragmentSender,
    ReassemblyTable,
)
from m2mgw.protocol.security import verify
from m2mgw.protocol.tlv import Tlv
from tests.spec_examples import DOWNLINK, SERIAL, TS_11_3, UPLINK

from .engine_support import EngineFixture, FakeBearer, login_bytes

TRAP = m.ConfigTrap(tlvs=[Tlv.of(0x3007, 20), Tlv(0x8100, b"\x1f" * 10)])
TRANS_ID = 7


def parts(message: m.Message, count: int) -> list[FragmentPart]:
    """The data parts of ``message``'s body, ``count`` of them (a small threshold: the
    receiver does not check part sizes)."""
    body = message.encode_body()
    sender = FragmentSender(body, TRANS_ID, threshold=-(-len(body) // count))
    assert sender.total == count
    out = [sender.first()]
    for number in range(2, count + 1):
        out.append(sender.on_answer(FragmentPart(TRANS_ID, count, number, FragmentOp.NEXT)))
    return out


def part_frame(command: int, seq: int, part: FragmentPart) -> bytes:
    """One part of the terminal's request, signed in its session (7.2)."""
    return build_frame(
        command, seq, SERIAL, part.encode_tlv(), flag=FRAGMENT_FLAG, key=UPLINK,
        timestamp=TS_11_3,
    )


def answered(raw: bytes) -> tuple[int, int, FragmentPart]:
    """Command_ID, Sequence_ID and ``4008`` value of a part answer, its digest checked."""
    frame = parse_frame(raw)
    assert verify(raw, TS_11_3, DOWNLINK)
    return frame.header.command_id, frame.header.sequence_id, FragmentPart.decode(
        frame.container_value()
    )


class ReassemblyTest(unittest.TestCase):
    @inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.fx = EngineFixture()
        yield self.fx.start()
        self.addCleanup(self.fx.stop)
        self.bearer = FakeBearer()
        self.fx.engine.receive(login_bytes(), self.bearer)
        self.bearer.sent.clear()

    def send(self, command: int, seq: int, part: FragmentPart) -> list[bytes]:
        """What the engine sent in answer to one part."""
        self.fx.engine.receive(part_frame(command, seq, part), self.bearer)
        sent = list(self.bearer.sent)
        self.bearer.sent.clear()
        return sent

    def test_each_part_is_asked_for_then_the_whole_trap_answered(self) -> None:
        one, two, three = parts(TRAP, 3)
        [ask] = self.send(Command.CONFIG_TRAP, 5, one)
        self.assertEqual(answered(ask), (Command.CONFIG_TRAP | ACK_BIT, 5,
                                         FragmentPart(TRANS_ID, 3, 2, FragmentOp.NEXT)))
        [ask] = self.send(Command.CONFIG_TRAP, 5, two)
        self.assertEqual(answered(ask)[2], FragmentPart(TRANS_ID, 3, 3, FragmentOp.NEXT))
        [ack] = self.send(Command.CONFIG_TRAP, 5, three)
        self.assertEqual(m.decode_message(Command.CONFIG_TRAP | ACK_BIT, parse_frame(ack).body),
                         m.ConfigTrapAck(0))
        values = self.fx.registry.config_values(SERIAL)
        self.assertEqual((values[0x3007], values[0x8100]), (b"\x14", b"\x1f" * 10))

    def test_a_retransmitted_part_gets_its_cached_answer(self) -> None:
        """8.2: the same bytes again are answered from the response cache."""
        one, two = parts(TRAP, 2)
        [ask] = self.send(Command.CONFIG_TRAP, 5, one)
        self.assertEqual(self.send(Command.CONFIG_TRAP, 5, one), [ask])
        [ack] = self.send(Command.CONFIG_TRAP, 5, two)
        self.assertEqual(parse_frame(ack).header.command_id, Command.CONFIG_TRAP | ACK_BIT)

    def test_a_renumbered_copy_of_the_part_just_received_is_answered_again(self) -> None:
        """PD-28 and 7.4 (D-370): a part equal to the one last received is a duplicate
        and gets the answer it had, op 1 for the next part, here in the copy's own
        Sequence_ID (8.1); the reassembly goes on."""
        one, two = parts(TRAP, 2)
        [ask] = self.send(Command.CONFIG_TRAP, 5, one)
        [again] = self.send(Command.CONFIG_TRAP, 6, one)
        self.assertEqual(answered(again), (Command.CONFIG_TRAP | ACK_BIT, 6,
                                           FragmentPart(TRANS_ID, 2, 2, FragmentOp.NEXT)))
        self.assertEqual(answered(again)[2], answered(ask)[2])
        [ack] = self.send(Command.CONFIG_TRAP, 6, two)
        self.assertEqual(parse_frame(ack).header.command_id, Command.CONFIG_TRAP | ACK_BIT)
        self.assertEqual(self.fx.registry.config_values(SERIAL)[0x3007], b"\x14")

    def test_a_renumbered_copy_of_the_final_part_is_not_answered(self) -> None:
        """The final part's answer is the whole message's: only the response cache
        replays it (8.2), and under another Sequence_ID it has none."""
        one, two = parts(TRAP, 2)
        self.send(Command.CONFIG_TRAP, 5, one)
        self.send(Command.CONFIG_TRAP, 5, two)
        self.assertEqual(self.send(Command.CONFIG_TRAP, 6, two), [])

    def test_an_unexpected_part_aborts_with_op_2_and_a_debug_line(self) -> None:
        one, two, three = parts(TRAP, 3)
        self.send(Command.CONFIG_TRAP, 5, one)
        with capturedLogs() as events:
            [abort] = self.send(Command.CONFIG_TRAP, 5, three)
        self.assertEqual(answered(abort), (Command.CONFIG_TRAP | ACK_BIT, 5,
                                           FragmentPart(TRANS_ID, 3, 3,
                                                        FragmentOp.RECEIVER_ABORT)))
        [event] = [e for e in events if e["log_format"].startswith("Aborted reassembly")]
        self.assertEqual(event["log_level"], LogLevel.debug)
        self.assertEqual((event["serial"], event["sequence_id"], event["trans_id"]),
                         (SERIAL, 5, TRANS_ID))
        # The partial data is gone: part 2 is unexpected now too.
        [abort] = self.send(Command.CONFIG_TRAP, 5, two)
        self.assertEqual(answered(abort)[2].op, FragmentOp.RECEIVER_ABORT)

    def test_a_full_table_drops_the_least_recent_reassembly_and_says_so(self) -> None:
        engine = self.fx.engine
        engine.reassembly = ReassemblyTable(FragmentLimits(), max_entries=1)
        trap_one, trap_two = parts(TRAP, 2)
        data_one, _ = parts(m.TransparentData.build(b"\x01" * 20, Tlv.of(0x4014, "EC0001")), 2)
        self.send(Command.CONFIG_TRAP, 5, trap_one)
        with capturedLogs() as events:
            [ask] = self.send(Command.TRANSPARENT_DATA, 6, data_one)
        self.assertEqual(answered(ask)[2], FragmentPart(TRANS_ID, 2, 2, FragmentOp.NEXT))
        [event] = [e for e in events if e["log_format"].startswith("Reassembly table full")]
        self.assertEqual(event["log_level"], LogLevel.info)
        self.assertEqual(
            (event["serial"], event["command"], event["by_serial"], event["by_sequence_id"]),
            (SERIAL, "CONFIG_TRAP", SERIAL, 6),
        )
        [abort] = self.send(Command.CONFIG_TRAP, 5, trap_two)
        self.assertEqual(answered(abort)[2].op, FragmentOp.RECEIVER_ABORT)

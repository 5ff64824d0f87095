"""Bad input that passes authentication must not break the engine (brief: never crash).

Random bodies for every Command_ID, correctly signed under the session, go through
the whole engine; only its own handling may follow, and a second terminal's session
keeps working throughout.
"""

from __future__ import annotations

import random

from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from m2mgw.core.model import TerminalState
from m2mgw.protocol import messages as m
from m2mgw.protocol.codec import build_frame
from m2mgw.protocol.constants import ACK_BIT, Command, Flag
from m2mgw.protocol.fragment import FragmentPart
from m2mgw.protocol.tlv import Tlv, encode_tlvs
from tests.spec_examples import SERIAL, TS_11_3, UPLINK

from .engine_support import EngineFixture, FakeBearer, login_bytes, terminal_message

COMMANDS = [int(c) for c in Command] + [int(c) | ACK_BIT for c in Command]
TAGS = [0x0002, 0x0011, 0x0025, 0x2017, 0x3006, 0x300B, 0x300D, 0x4001, 0x4007, 0x4008,
        0x4010, 0x4012, 0x4014, 0x4017, 0x100C, 0x1001, 0xE025, 0xE03A, 0xE042, 0x8100]  # fmt: skip


def random_body(rng: random.Random) -> tuple[bytes, int]:
    """A random body and flag: raw bytes, a TLV soup, a fragment or an E042 container."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 40)), 0
    tlvs = [Tlv(rng.choice(TAGS), rng.randbytes(rng.choice([0, 1, 2, 4, 5, 12, 16])))
            for _ in range(rng.randrange(0, 6))]  # fmt: skip
    soup = rng.randbytes(rng.randrange(0, 3)) + encode_tlvs(tlvs)
    if kind == 1:
        return soup, 0
    if kind == 2:
        part = FragmentPart(rng.randrange(3), rng.randrange(1, 4), rng.randrange(1, 4),
                            rng.randrange(4), soup if rng.random() < 0.5 else b"")  # fmt: skip
        try:
            return part.encode_tlv(), int(Flag.CONTAINER)
        except Exception:
            return soup, 0
    value = rng.randbytes(rng.choice([0, 7, 8, 16, 24, 32, 48]))
    return Tlv(0xE042, value).encode(), int(Flag.CONTAINER)


class EngineFuzzTest(unittest.TestCase):
    @inlineCallbacks
    def setUp(self):  # type: ignore[no-untyped-def]
        self.fx = EngineFixture()
        yield self.fx.start()
        self.addCleanup(self.fx.stop)

    def test_signed_garbage_for_every_command(self) -> None:
        engine = self.fx.engine
        fuzzer = FakeBearer(address="127.0.0.1:40001")
        engine.receive(login_bytes(), fuzzer)
        self.assertEqual(self.fx.terminal.state, TerminalState.LOGGED_IN)
        rng = random.Random(4138)
        for i in range(3000):
            body, flag = random_body(rng)
            command = rng.choice(COMMANDS)
            if command in (Command.LOGIN, Command.REGISTER, Command.LOGOUT):
                continue  # they would end the session the rest of the run needs
            raw = build_frame(command, 1000 + i, SERIAL, body, flag=flag, key=UPLINK,
                              timestamp=TS_11_3)  # fmt: skip
            engine.receive(raw, fuzzer)  # must not raise
            if i % 500 == 0:
                self.fx.clock.advance(1)
                self.fx.tick()
        self.assertEqual(self.fx.terminal.state, TerminalState.LOGGED_IN)
        answered = {raw[2:4] for raw in fuzzer.sent}
        # The garbage got past authentication into the handlers, which answered it.
        self.assertGreaterEqual(len(answered), 5, answered)
        fuzzer.sent.clear()
        trap = m.ConfigTrap(tlvs=[Tlv.of(0x3007, 9)])
        engine.receive(terminal_message(trap, 99999, timestamp=TS_11_3), fuzzer)
        [ack] = fuzzer.take()
        self.assertEqual(ack.ret, 0, "the session still works after the garbage")

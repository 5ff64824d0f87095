"""The m2mgw-terminal simulator: its identities and traps, and a fleet against a fake platform."""

from __future__ import annotations

import io
import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.trial import unittest

from m2mgw.protocol import messages as m
from m2mgw.protocol.codec import build_frame, parse_frame
from m2mgw.protocol.constants import ACK_BIT, Command
from m2mgw.protocol.framing import StreamFramer
from m2mgw.protocol.security import DigestKey
from m2mgw.protocol.terminal import Credentials
from m2mgw.protocol.tlv import Tlv
from m2mgw.tools.terminal import build_identities, derive, parse_trap, parser, run
from tests.spec_examples import DOWNLINK_PASSWORD, IMEI, IMSI, SERIAL, TS_11_3, UPLINK_PASSWORD


def test_tool_identities_and_traps(tmp_path: Path) -> None:
    assert derive(SERIAL, 7) == "A972030000001241" and derive(IMEI, 10) == "860000000000011"
    with pytest.raises(ValueError):
        derive("ABC", 1)
    assert parse_trap("0x3007=20") == Tlv(0x3007, b"\x14")
    assert parse_trap("M2MAPN=CMNET") == Tlv(0x0002, b"CMNET")
    assert parse_trap("0x8100=hex:0A0B") == Tlv(0x8100, b"\x0a\x0b")
    lines = tmp_path / "creds.jsonl"
    lines.write_text('{"serial": "A972030000005555", "uplink_password": "UUUUuuuu", '
                     '"downlink_password": "DDDDdddd", "base_key": "0123456789abcdef", '
                     '"cipher": "aes"}\n\n{"uplink_password": "11111111", '
                     '"downlink_password": "22222222"}\n')  # fmt: skip
    args = parser().parse_args(["--count", "2", "--credentials-file", str(lines)])
    first, second = build_identities(args)
    assert (first.serial, first.cipher, first.imei) == ("A972030000005555", "aes", IMEI)
    assert first.credentials == Credentials("UUUUuuuu", "DDDDdddd", base_key="0123456789abcdef")
    assert (second.serial, second.imsi, second.cipher) == (derive(SERIAL, 1), derive(IMSI, 1), None)
    with pytest.raises(ValueError):
        build_identities(parser().parse_args(["--count", "3", "--credentials-file", str(lines)]))


class FakePlatform(Protocol):
    """Answers LOGIN, HEART_BEAT, LOGOUT, TRANSPARENT_DATA and CONFIG_TRAP, signed."""

    def __init__(self, lost: list[Deferred[None]] | None = None) -> None:
        self.framer = StreamFramer()
        self.lost: Deferred[None] = Deferred()
        if lost is not None:
            lost.append(self.lost)

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        for frame in self.framer.feed(data):
            self.transport.write(fake_answer(frame))

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


class FakeUdpPlatform(DatagramProtocol):
    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.write(fake_answer(datagram), addr)


FLEET_KEYS = {derive(SERIAL, i): DigestKey.make(derive(IMEI, i), derive(IMSI, i), DOWNLINK_PASSWORD)
              for i in range(3)}  # fmt: skip


def fake_answer(raw: bytes) -> bytes:
    header = parse_frame(raw).header
    key = FLEET_KEYS.get(header.serial)
    bodies = {
        Command.LOGIN: m.LoginAck(0, TS_11_3) if key else m.LoginAck(3, 0),
        Command.LOGOUT: m.LogoutAck(),
        Command.TRANSPARENT_DATA: m.TransparentDataAck(0),
        Command.CONFIG_TRAP: m.ConfigTrapAck(0),
        Command.HEART_BEAT: m.HeartBeatAck(),
    }
    sign = key if header.command_id != Command.HEART_BEAT else None
    body = bodies[header.command_id].encode_body()
    return build_frame(header.command_id | ACK_BIT, header.sequence_id, header.serial, body,
                       key=sign, timestamp=TS_11_3)  # fmt: skip


BASE_ARGS = ["--uplink-password", UPLINK_PASSWORD, "--downlink-password", DOWNLINK_PASSWORD,
             "--json-events", "--stagger", "0.01"]  # fmt: skip


class TerminalToolTest(unittest.TestCase):
    """The simulator over real sockets on 127.0.0.1, with the real reactor."""

    @inlineCallbacks
    def run_tool(self, argv: list[str]) -> Generator[Deferred[Any], Any, tuple[int, list[dict]]]:
        out = io.StringIO()
        code = yield run(reactor, BASE_ARGS + argv, out)
        return code, [json.loads(line) for line in out.getvalue().splitlines()]

    def listen_tcp(self) -> tuple[str, list[Deferred[None]]]:
        lost: list[Deferred[None]] = []
        factory = Factory.forProtocol(lambda: FakePlatform(lost))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return str(port.getHost().port), lost

    @inlineCallbacks
    def test_tcp_long_fleet(self) -> Generator[Deferred[Any], Any, None]:
        port, lost = self.listen_tcp()
        argv = ["--tcp-port", port, "--count", "3", "--heartbeat", "0.1", "--duration", "0.4",
                "--send-data", "0102", "--dest-ec", "EC0001", "--trap", "0x3007=20"]  # fmt: skip
        code, records = yield self.run_tool(argv)
        yield DeferredList(lost)
        kinds = [(r["serial"], r["event"]) for r in records]
        self.assertEqual(code, 0, records)
        for serial in FLEET_KEYS:
            for kind in ("logged_in", "data_ack", "trap_ack", "heartbeat_ack", "logged_out"):
                self.assertIn((serial, kind), kinds)
        self.assertEqual(records[-1], {"serial": "*", "event": "summary", "terminals": 3,
                                       "failed": 0})  # fmt: skip

    @inlineCallbacks
    def test_tcp_short_and_refused_login(self) -> Generator[Deferred[Any], Any, None]:
        port, lost = self.listen_tcp()
        code, records = yield self.run_tool(["--tcp-port", port, "--mode", "tcp-short",
                                             "--send-data", "0102"])  # fmt: skip
        yield DeferredList(lost)
        self.assertEqual(code, 0)
        self.assertEqual([r["event"] for r in records],  # the trap is the one after login (4.4)
                         ["logged_in", "trap_ack", "data_ack", "logged_out", "summary"])
        code, records = yield self.run_tool(["--tcp-port", port, "--serial", "A972030000009999"])
        yield DeferredList(lost)
        self.assertEqual(code, 1)
        self.assertEqual(records[0]["event"], "login_failed")

    @inlineCallbacks
    def test_udp_fleet(self) -> Generator[Deferred[Any], Any, None]:
        port = reactor.listenUDP(0, FakeUdpPlatform(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        argv = ["--mode", "udp", "--udp-port", str(port.getHost().port), "--count", "2",
                "--heartbeat", "0.1", "--duration", "0.3"]  # fmt: skip
        code, records = yield self.run_tool(argv)
        self.assertEqual(code, 0, records)
        events = {(r["serial"], r["event"]) for r in records}
        for serial in list(FLEET_KEYS)[:2]:
            self.assertIn((serial, "heartbeat_ack"), events)
            self.assertIn((serial, "logged_out"), events)

"""The sans-I/O AT engine driven by scripted modem bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from m2mgw.sms import at

TPDU = bytes.fromhex("0011000B916407281553F80000AA0AE8329BFD4697D9EC37")[1:]
DELIVER_PDU = "07917283010010F5040BC87238880900F10000993092516195800AE8329BFD4697D9EC37"


def started(command: at.Command) -> tuple[at.AtEngine, bytes]:
    engine = at.AtEngine()
    engine.send(command, now=0.0)
    return engine, engine.data_to_send()


def feed_bytewise(engine: at.AtEngine, data: bytes, now: float = 0.0) -> list[at.Event]:
    """Real serial ports deliver arbitrary chunks: feed one byte at a time."""
    return [event for i in range(len(data)) for event in engine.receive(data[i : i + 1], now)]


def test_send_with_prompt_without_line_end() -> None:
    engine, written = started(at.send_command(TPDU))
    assert written == f"AT+CMGS={len(TPDU)}\r".encode()
    assert feed_bytewise(engine, b"\r\n> ") == []
    assert engine.data_to_send() == b"00" + TPDU.hex().upper().encode() + b"\x1a"
    [response] = engine.receive(b"\r\n+CMGS: 17\r\n\r\nOK\r\n", 1.0)
    assert isinstance(response, at.Response) and response.ok
    assert at.parse_cmgs(response) == 17
    assert not engine.busy


def test_prompt_as_a_complete_line_and_echoed_pdu_are_handled() -> None:
    engine, _ = started(at.send_command(TPDU))
    engine.receive(b"AT+CMGS=23\r\r\n>\r\n", 0.0)
    pdu_hex = "00" + TPDU.hex().upper()
    assert engine.data_to_send() == pdu_hex.encode() + b"\x1a"
    events = engine.receive(f"{pdu_hex}\x1a\r\n+CMGS: 3\r\n\r\nOK\r\n".encode(), 0.0)
    [response] = events
    assert isinstance(response, at.Response) and response.lines == ("+CMGS: 3",)


def test_unsolicited_lines_interleaved_with_a_response() -> None:
    engine, _ = started(at.read_command(2))
    script = (
        b'\r\n+CMTI: "SM",5\r\n'
        b"\r\n+CMGR: 0,,35\r\n"
        b"RING\r\n"
        b"\r\n+CMT: ,35\r\n" + DELIVER_PDU.encode() + b"\r\n" + DELIVER_PDU.encode() + b"\r\n"
        b'+CMTI: "ME",6\r\n'
        b"\r\nOK\r\n"
        b"\r\n+CDS: 25\r\n0006D60B911326880736F4111011719551401110117195714000\r\n"
    )
    events = feed_bytewise(engine, script)
    assert events[:4] == [
        at.NewMessage("SM", 5),
        at.Ring(),
        at.IncomingPdu(bytes.fromhex(DELIVER_PDU)),
        at.NewMessage("ME", 6),
    ]
    response = events[4]
    assert isinstance(response, at.Response) and response.ok
    assert at.parse_cmgr(response) == (0, bytes.fromhex(DELIVER_PDU))
    assert isinstance(events[5], at.StatusReport)
    assert len(events) == 6


def test_noise_outside_commands_is_reported_not_fatal() -> None:
    engine = at.AtEngine()
    events = engine.receive(b"\x00\xff garbage\r\nOK\r\n\r\n+CREG: 1\r\n", 0.0)
    assert events == [
        at.Unsolicited("\x00\xff garbage"),
        at.Unsolicited("OK"),
        at.Unsolicited("+CREG: 1"),
    ]
    [overflow] = engine.receive(b"x" * (at.MAX_PARTIAL_LINE + 1), 0.0)
    assert isinstance(overflow, at.Unsolicited) and overflow.line.startswith("xxx")


def test_cmt_followed_by_a_non_hex_line() -> None:
    engine = at.AtEngine()
    assert engine.receive(b"+CMT: ,12\r\nnot hex\r\n", 0.0) == [at.Unsolicited("not hex")]


@pytest.mark.parametrize(
    ("final", "kind", "code"),
    [
        ("+CMS ERROR: 500", "CMS", 500),
        ("+CME ERROR: 10", "CME", 10),
        ("+CME ERROR: SIM not inserted", "CME", None),
        ("ERROR", None, None),
        ("NO CARRIER", None, None),
    ],
)
def test_error_results(final: str, kind: str | None, code: int | None) -> None:
    engine, _ = started(at.send_command(TPDU))
    engine.receive(b"\r\n> ", 0.0)
    engine.data_to_send()
    [response] = engine.receive(f"\r\n{final}\r\n".encode(), 0.0)
    assert isinstance(response, at.Response)
    assert (response.ok, response.error_kind, response.error_code) == (False, kind, code)


def test_timeout_before_prompt_escapes_and_starts_next_command() -> None:
    engine = at.AtEngine()
    send = at.send_command(TPDU, timeout=5.0)
    engine.send(send, 10.0)
    engine.send(at.signal_command(), 10.0)
    assert engine.data_to_send() == b"AT+CMGS=23\r"
    assert engine.deadline() == 15.0
    assert engine.advance(14.9) == []
    assert engine.advance(15.0) == [at.Timeout(send, pdu_written=False)]
    assert engine.data_to_send() == b"\x1bAT+CSQ\r"
    [response] = engine.receive(b"\r\n+CSQ: 21,99\r\n\r\nOK\r\n", 15.5)
    assert isinstance(response, at.Response)
    assert at.parse_csq(response) == (21, 99)
    assert engine.deadline() is None


def test_timeout_after_pdu_written_says_maybe_sent() -> None:
    engine, _ = started(at.send_command(TPDU, timeout=5.0))
    engine.receive(b"> ", 1.0)
    [timeout] = engine.advance(5.0)
    assert isinstance(timeout, at.Timeout) and timeout.pdu_written


def test_reset_aborts_running_and_queued_commands() -> None:
    engine = at.AtEngine()
    running, queued = at.send_command(TPDU), at.delete_command(3)
    engine.send(running, 0.0)
    engine.send(queued, 0.0)
    engine.receive(b"> ", 0.0)
    engine.receive(b"partial", 0.0)
    assert engine.reset() == [at.Aborted(running, True), at.Aborted(queued, False)]
    assert not engine.busy and engine.deadline() is None
    assert engine.data_to_send() == b""
    engine.send(at.signal_command(), 0.0)
    [response] = engine.receive(b"\r\nOK\r\n", 0.0)
    assert isinstance(response, at.Response) and response.command.line == "AT+CSQ"


def test_init_sequence_with_echo_on_and_prepend() -> None:
    engine = at.AtEngine()
    engine.send(at.list_command(), 0.0)
    assert engine.data_to_send() == b"AT+CMGL=4\r"
    engine.prepend(at.init_commands("SM"), 0.0)  # runs after the command already running
    engine.receive(b"\r\nOK\r\n", 0.0)
    lines = []
    while engine.busy:
        line = engine.data_to_send().decode().rstrip("\r")
        lines.append(line)
        echo = line.encode() + b"\r" if line in ("AT", "ATE0") else b""  # echo until ATE0
        engine.receive(echo + b"\r\nOK\r\n", 0.0)
    assert lines == [
        "AT",
        "ATE0",
        "AT+CMEE=1",
        "AT+CMGF=0",
        'AT+CPMS="SM","SM","SM"',
        "AT+CNMI=2,1,0,0,0",
    ]


def test_hold_drops_stale_output_until_release() -> None:
    engine = at.AtEngine()
    engine.hold()
    engine.send(at.signal_command(), 0.0)
    assert engine.data_to_send() == b"\x1b"  # leaves a prompt someone left open
    assert engine.receive(b"+CMGL: 1,1,,5\r\n0011\r\nOK\r\n", 0.0) == []
    engine.release(0.5)
    assert engine.data_to_send() == b"AT+CSQ\r"
    [response] = engine.receive(b"\r\nOK\r\n", 0.6)
    assert isinstance(response, at.Response) and response.lines == ()


def test_cmgl_parsing() -> None:
    command = at.list_command(at.LIST_ALL)
    response = at.Response(
        command,
        True,
        "OK",
        ("+CMGL: 1,1,,35", DELIVER_PDU, "+CMGL: 4,0,,35", DELIVER_PDU.lower()),
    )
    pdu = bytes.fromhex(DELIVER_PDU)
    assert at.parse_cmgl(response) == [(1, 1, pdu), (4, 0, pdu)]
    assert at.parse_cmgr(at.Response(command, True, "OK", ())) is None


@pytest.mark.parametrize(
    ("parser", "lines"),
    [
        (at.parse_cmgs, ()),
        (at.parse_cmgs, ("+CMGS: x",)),
        (at.parse_cmgr, ("+CMGR: 0,,3", "zz")),
        (at.parse_cmgr, ("+CMGR: 0,,3",)),
        (at.parse_cmgl, ("+CMGL: ,1,,3", "00")),
        (at.parse_csq, ("+CSQ: 1",)),
    ],
)
def test_parsers_raise_at_error_on_garbage(parser, lines) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(at.AtError):
        parser(at.Response(at.signal_command(), True, "OK", lines))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=10))
def test_fuzz_receive_never_raises(chunks: list[bytes]) -> None:
    engine = at.AtEngine()
    engine.send(at.send_command(TPDU), 0.0)
    engine.send(at.read_command(1), 0.0)
    for i, chunk in enumerate(chunks):
        for event in engine.receive(chunk, float(i)):
            if isinstance(event, at.Response):
                for parser in (at.parse_cmgr, at.parse_cmgl):
                    try:
                        parser(event)
                    except at.AtError:
                        pass
        engine.advance(float(i))

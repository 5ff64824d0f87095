"""Sans-I/O AT command engine for a GSM modem in PDU mode (3GPP TS 27.005 / 27.007).

The engine owns the command queue and the line parser; the caller feeds it received
bytes and the time, collects the bytes to write with :meth:`AtEngine.data_to_send`, and
calls :meth:`AtEngine.advance` at :meth:`AtEngine.deadline`.  It never blocks and never
touches a clock, so every modem quirk (the ``> `` prompt without line end, unsolicited
lines in the middle of a response, echo) is testable with scripted bytes.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from m2mgw.protocol.errors import ProtocolError


class AtError(ProtocolError):
    """A modem response line cannot be parsed."""


CTRL_Z = b"\x1a"
ESC = b"\x1b"
MAX_PARTIAL_LINE = 8192  # noise without line ends is dropped past this

_FINAL_ERRORS = frozenset({"ERROR", "NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE"})
_ERROR_CODE = re.compile(r"^\+(CMS|CME) ERROR:\s*(.*)$")
_CMTI = re.compile(r'^\+CMTI:\s*"?([^",]*)"?\s*,\s*(\d+)\s*$')
# Unsolicited lines whose PDU follows on the next line (PDU mode).
_PDU_FOLLOWS = ("+CMT:", "+CDS:")


@dataclass(eq=False)
class Command:
    """One AT command; ``pdu`` is written (hex + Ctrl-Z) at the ``> `` prompt.

    Identity-compared, so a caller can map a command to its waiter.
    """

    line: str
    timeout: float
    pdu: bytes | None = None


@dataclass(frozen=True)
class Response:
    """A command finished with a final result code."""

    command: Command
    ok: bool
    final: str
    lines: tuple[str, ...]
    error_kind: str | None = None  # "CMS" or "CME"
    error_code: int | None = None


@dataclass(frozen=True)
class Timeout:
    """A command got no final result in time; ``pdu_written`` tells if it may have acted."""

    command: Command
    pdu_written: bool


@dataclass(frozen=True)
class Aborted:
    """A command dropped by :meth:`AtEngine.reset` (the port went away)."""

    command: Command
    pdu_written: bool


@dataclass(frozen=True)
class NewMessage:
    """``+CMTI``: an SMS was stored at ``index`` of ``storage``."""

    storage: str
    index: int


@dataclass(frozen=True)
class IncomingPdu:
    """``+CMT``: an SMS routed directly to us (PDU with SMSC prefix)."""

    pdu: bytes


@dataclass(frozen=True)
class StatusReport:
    """``+CDS``: a status report PDU (with SMSC prefix)."""

    pdu: bytes


@dataclass(frozen=True)
class Ring:
    """``RING``: an incoming call, which an SMS gateway only logs."""


@dataclass(frozen=True)
class Unsolicited:
    """Any other line outside a command: logged as noise."""

    line: str


Event = Response | Timeout | Aborted | NewMessage | IncomingPdu | StatusReport | Ring | Unsolicited


class AtEngine:
    """Serialises commands and turns modem bytes into :data:`Event` objects."""

    def __init__(self) -> None:
        self._queue: deque[Command] = deque()
        self._current: Command | None = None
        self._deadline: float | None = None
        self._pdu_written = False
        self._lines: list[str] = []
        self._buffer = b""
        self._pdu_follows: str | None = None  # "+CMT:" / "+CDS:" awaiting its PDU line
        self._outgoing = bytearray()
        self._held = False

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._queue)

    def send(self, command: Command, now: float) -> None:
        """Queue a command at the end."""
        self._queue.append(command)
        self._start_next(now)

    def prepend(self, commands: list[Command], now: float) -> None:
        """Queue commands before everything waiting (re-initialisation)."""
        self._queue.extendleft(reversed(commands))
        self._start_next(now)

    def hold(self) -> None:
        """Start no command and ignore input until :meth:`release`.

        Used right after opening a port: answers to commands of a previous user may
        still arrive and would otherwise be taken for ours.  An ESC leaves any ``> ``
        prompt such a user left open.
        """
        self._held = True
        self._outgoing += ESC

    def release(self, now: float) -> None:
        """End :meth:`hold`, dropping anything received meanwhile."""
        self._held = False
        self._buffer = b""
        self._pdu_follows = None
        self._start_next(now)

    def data_to_send(self) -> bytes:
        """Bytes to write to the modem now (and forget)."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def deadline(self) -> float | None:
        """When :meth:`advance` must be called next, if a command is running."""
        return self._deadline

    def advance(self, now: float) -> list[Event]:
        """Time out the running command if its deadline has passed."""
        command = self._current
        if command is None or self._deadline is None or now < self._deadline:
            return []
        if command.pdu is not None and not self._pdu_written:
            self._outgoing += ESC  # leave a prompt we may never have seen
        event = Timeout(command, self._pdu_written)
        self._finish(now)
        return [event]

    def reset(self) -> list[Event]:
        """Drop all commands and input (the port is gone); report what was aborted."""
        events: list[Event] = []
        if self._current is not None:
            events.append(Aborted(self._current, self._pdu_written))
        events.extend(Aborted(command, False) for command in self._queue)
        self._queue.clear()
        self._buffer = b""
        self._pdu_follows = None
        self._outgoing.clear()
        self._idle()
        return events

    def receive(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes read from the modem."""
        events: list[Event] = []
        if self._held:
            return events
        self._buffer += data
        while True:
            match = re.search(rb"[\r\n]", self._buffer)
            if match is None:
                break
            raw, self._buffer = self._buffer[: match.start()], self._buffer[match.end() :]
            line = raw.decode("latin-1").strip()
            if line:
                self._line(line, events, now)
        self._check_prompt()
        if len(self._buffer) > MAX_PARTIAL_LINE:
            events.append(Unsolicited(self._buffer[:80].decode("latin-1") + "..."))
            self._buffer = b""
        return events

    # -- internals ------------------------------------------------------------------

    def _start_next(self, now: float) -> None:
        if self._current is not None or not self._queue or self._held:
            return
        command = self._current = self._queue.popleft()
        self._deadline = now + command.timeout
        self._pdu_written = False
        self._lines = []
        self._outgoing += command.line.encode("ascii") + b"\r"

    def _finish(self, now: float) -> None:
        self._idle()
        self._start_next(now)

    def _idle(self) -> None:
        self._current = None
        self._deadline = None
        self._pdu_written = False
        self._lines = []

    def _awaiting_prompt(self) -> bool:
        return self._current is not None and self._current.pdu is not None and not self._pdu_written

    def _check_prompt(self) -> None:
        """The ``> `` prompt has no line end: look for it in the unterminated rest."""
        if self._awaiting_prompt() and self._buffer.strip().startswith(b">"):
            self._buffer = b""
            self._write_pdu()

    def _write_pdu(self) -> None:
        assert self._current is not None and self._current.pdu is not None
        self._outgoing += self._current.pdu.hex().upper().encode("ascii") + CTRL_Z
        self._pdu_written = True

    def _line(self, line: str, events: list[Event], now: float) -> None:
        if self._pdu_follows is not None:
            kind, self._pdu_follows = self._pdu_follows, None
            try:
                pdu = bytes.fromhex(line)
            except ValueError:
                events.append(Unsolicited(line))
            else:
                events.append(IncomingPdu(pdu) if kind == "+CMT:" else StatusReport(pdu))
            return
        unsolicited = self._unsolicited(line)
        if unsolicited is not None:
            events.append(unsolicited)
            return
        for prefix in _PDU_FOLLOWS:
            if line.startswith(prefix):
                self._pdu_follows = prefix
                return
        command = self._current
        if command is None:
            events.append(Unsolicited(line))
            return
        if self._awaiting_prompt() and line.startswith(">"):
            self._write_pdu()
            return
        if self._is_echo(line, command):
            return
        response = self._final(line, command)
        if response is None:
            self._lines.append(line)
        else:
            events.append(response)
            self._finish(now)

    @staticmethod
    def _unsolicited(line: str) -> Event | None:
        if line == "RING":
            return Ring()
        match = _CMTI.match(line)
        if match:
            return NewMessage(match.group(1), int(match.group(2)))
        return None

    def _is_echo(self, line: str, command: Command) -> bool:
        text = line.lstrip("> ").rstrip("\x1a").upper()
        if text == command.line.upper():
            return True
        return command.pdu is not None and text == command.pdu.hex().upper()

    def _final(self, line: str, command: Command) -> Response | None:
        lines = tuple(self._lines)
        if line == "OK":
            return Response(command, True, line, lines)
        if line in _FINAL_ERRORS:
            return Response(command, False, line, lines)
        match = _ERROR_CODE.match(line)
        if match is None:
            return None
        code = match.group(2).strip()
        return Response(
            command, False, line, lines, match.group(1), int(code) if code.isdigit() else None
        )


# --- command builders ----------------------------------------------------------------

DEFAULT_TIMEOUT = 10.0
SEND_TIMEOUT = 60.0  # CMGS waits for the network


def init_commands(storage: str = "SM", timeout: float = DEFAULT_TIMEOUT) -> list[Command]:
    """Bring a modem into the state the driver relies on.

    No echo, numeric errors, PDU mode, one storage for everything, and new messages
    indicated by ``+CMTI`` (stored first, so nothing is lost while we are busy).
    """
    memory = f'"{storage}"'
    return [
        Command(line, timeout)
        for line in (
            "AT",
            "ATE0",
            "AT+CMEE=1",
            "AT+CMGF=0",
            f"AT+CPMS={memory},{memory},{memory}",
            "AT+CNMI=2,1,0,0,0",
        )
    ]


def send_command(tpdu: bytes, timeout: float = SEND_TIMEOUT) -> Command:
    """``AT+CMGS`` for an SMS-SUBMIT TPDU, with ``00`` (default SMSC) prefixed."""
    return Command(f"AT+CMGS={len(tpdu)}", timeout, pdu=b"\x00" + tpdu)


def read_command(index: int, timeout: float = DEFAULT_TIMEOUT) -> Command:
    return Command(f"AT+CMGR={index}", timeout)


def delete_command(index: int, timeout: float = DEFAULT_TIMEOUT) -> Command:
    return Command(f"AT+CMGD={index}", timeout)


LIST_UNREAD = 0
LIST_ALL = 4


def list_command(stat: int = LIST_ALL, timeout: float = DEFAULT_TIMEOUT) -> Command:
    return Command(f"AT+CMGL={stat}", timeout)


def signal_command(timeout: float = DEFAULT_TIMEOUT) -> Command:
    return Command("AT+CSQ", timeout)


# --- response parsers ----------------------------------------------------------------


def _info(response: Response, prefix: str) -> list[tuple[str, str | None]]:
    """(parameters, next line) for each ``prefix`` line of the response."""
    lines = response.lines
    return [
        (line[len(prefix) :].strip(), lines[i + 1] if i + 1 < len(lines) else None)
        for i, line in enumerate(lines)
        if line.startswith(prefix)
    ]


def _ints(params: str, what: str) -> list[int | None]:
    try:
        return [int(p) if p.strip() else None for p in params.split(",")]
    except ValueError:
        raise AtError(f"{what}: cannot parse {params!r}") from None


def _hex(line: str | None, what: str) -> bytes:
    if line is None:
        raise AtError(f"{what}: PDU line missing")
    try:
        return bytes.fromhex(line)
    except ValueError:
        raise AtError(f"{what}: PDU line is not hex") from None


def parse_cmgs(response: Response) -> int:
    """The TP-MR the modem assigned (``+CMGS: <mr>``)."""
    for params, _ in _info(response, "+CMGS:"):
        reference = _ints(params, "+CMGS")[0]
        if reference is not None:
            return reference
    raise AtError("no +CMGS line in the send response")


def parse_cmgr(response: Response) -> tuple[int, bytes] | None:
    """(stat, PDU with SMSC prefix) of ``+CMGR``, or None for an empty slot."""
    for params, pdu_line in _info(response, "+CMGR:"):
        stat = _ints(params.split(",")[0], "+CMGR")[0]
        return (stat if stat is not None else 0), _hex(pdu_line, "+CMGR")
    return None


def parse_cmgl(response: Response) -> list[tuple[int, int, bytes]]:
    """(index, stat, PDU with SMSC prefix) for each ``+CMGL`` entry."""
    entries = []
    for params, pdu_line in _info(response, "+CMGL:"):
        index, stat, *_ = [*_ints(",".join(params.split(",")[:2]), "+CMGL"), None]
        if index is None:
            raise AtError(f"+CMGL entry without index: {params!r}")
        entries.append((index, stat if stat is not None else 0, _hex(pdu_line, "+CMGL")))
    return entries


def parse_csq(response: Response) -> tuple[int, int]:
    """(rssi, ber) of ``+CSQ``; 99 means unknown."""
    for params, _ in _info(response, "+CSQ:"):
        values = _ints(params, "+CSQ")
        if len(values) == 2 and values[0] is not None and values[1] is not None:
            return values[0], values[1]
    raise AtError("no usable +CSQ line")

"""GSM modem emulator on a pseudo-terminal, for tests and demos without hardware.

It answers the AT subset that the m2mgw driver and ``gammu`` use in PDU mode, keeps
what clients send with ``AT+CMGS``, and injects mobile-terminated SMS (stored, then
indicated with ``+CMTI``).  Faults can be switched on to exercise the driver: no answer,
``+CMS ERROR`` on send, and the port going away.

Run ``m2mgw-modem-emulator --link /tmp/m2mgw-modem --control-port 7001`` and talk to the
control socket line by line (``help`` lists the commands); or use :class:`ModemEmulator`
in-process with a running reactor.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tty
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from twisted.internet import abstract, fdesc
from twisted.internet.interfaces import IListeningPort, IReactorCore, IReactorTCP
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from m2mgw.protocol.errors import ProtocolError
from m2mgw.sms.bearer import ReferenceCounter, msisdn_address, wmmp_delivers
from m2mgw.sms.pdu import (
    Address,
    PduError,
    SmsDeliver,
    decode_submit,
    encode,
    encode_smsc_info,
    gsm7_encode,
)
from m2mgw.tools import argtypes

log = Logger()

CHINA_TZ = timezone(timedelta(hours=8))
FAULTS = ("none", "silent", "cms", "unplug")
MAX_LINE = 1024  # longer command lines are truncated (and then fail)

# Message status values of TS 27.005 3.1 (PDU mode).
REC_UNREAD, REC_READ, STO_UNSENT, STO_SENT, ALL = 0, 1, 2, 3, 4


class CmsError(Exception):
    """Answer the current command with ``+CMS ERROR: <code>``."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class AtCommandError(Exception):
    """Answer the current command with plain ``ERROR``."""


@dataclass(frozen=True)
class SentSms:
    """A PDU a client submitted with ``AT+CMGS`` (with its SMSC prefix)."""

    reference: int
    pdu: bytes

    @property
    def tpdu(self) -> bytes:
        return self.pdu[1 + self.pdu[0] :]

    def as_json(self) -> str:
        return json.dumps({"mr": self.reference, "pdu": self.pdu.hex().upper(),
                           "tpdu": self.tpdu.hex().upper()})  # fmt: skip


@dataclass
class _Stored:
    stat: int
    pdu: bytes  # with SMSC prefix


@dataclass(frozen=True)
class Identity:
    """What the modem reports about itself and its SIM."""

    manufacturer: str = "m2mgw"
    model: str = "Emulated GSM modem"
    revision: str = "1.0"
    imei: str = "860000000000099"
    imsi: str = "460000000000099"
    smsc: str = "+8613800100500"


class VirtualModem:
    """The modem's AT interpreter: bytes in, bytes out, no I/O (27.005, 27.007, V.250)."""

    def __init__(self, identity: Identity = Identity(), capacity: int = 30) -> None:
        self.identity = identity
        self.capacity = capacity
        self.smsc = Address(identity.smsc.lstrip("+"), 0x91)
        self.commands: list[str] = []
        self.sent: list[SentSms] = []
        self.store: dict[int, _Stored] = {}
        self.fault = "none"
        self.fault_code = 500
        self._reference = 0
        self._line = bytearray()
        self._pdu_length: int | None = None  # set while collecting a CMGS PDU
        self._reset()

    def _reset(self) -> None:
        self.echo = True
        self.cmee = 0
        self.cmgf = 0
        self.cnmi = [0, 0, 0, 0, 0]
        self.charset = "GSM"

    # -- byte interface ---------------------------------------------------------------

    def receive(self, data: bytes) -> bytes:
        """Bytes from the client → the modem's answer."""
        if self.fault in ("silent", "unplug"):
            return b""
        out = bytearray()
        for byte in data:
            if self._pdu_length is not None:
                out += self._pdu_byte(byte)
            elif byte == 0x0D:
                line = self._line.decode("latin-1").strip()
                self._line.clear()
                if line:
                    if self.echo:
                        out += line.encode("latin-1") + b"\r"
                    out += self._command_line(line)
            elif byte == 0x1B:
                self._line.clear()
            elif byte != 0x0A and len(self._line) < MAX_LINE:
                self._line.append(byte)
        return bytes(out)

    def deliver(self, sms: SmsDeliver) -> bytes:
        """Inject a mobile-terminated SMS; returns the unsolicited output (+CMTI/+CMT)."""
        return self.deliver_pdu(encode_smsc_info(self.smsc) + encode(sms))

    def deliver_pdu(self, pdu: bytes) -> bytes:
        """Inject an SMS as a PDU with SMSC prefix (not checked: garbage is allowed)."""
        mode = self.cnmi[1]
        if mode == 2:
            return self._quiet(_info(f"+CMT: ,{len(pdu) - 1 - pdu[0]}", pdu.hex().upper()))
        index = next((i for i in range(1, self.capacity + 1) if i not in self.store), None)
        if index is None:
            log.warn("Emulated SIM full: SMS dropped")
            return b""
        self.store[index] = _Stored(REC_UNREAD, pdu)
        if mode in (1, 3):
            return self._quiet(_info('+CMTI: "SM",' + str(index)))
        return b""

    def _quiet(self, data: bytes) -> bytes:
        return b"" if self.fault in ("silent", "unplug") else data

    # -- command lines --------------------------------------------------------------------

    def _command_line(self, line: str) -> bytes:
        self.commands.append(line)
        if not line.upper().startswith("AT"):
            return _info("ERROR")
        out = bytearray()
        try:
            for command in _split_commands(line[2:]):
                result = self._command(command)
                if result is None:  # CMGS prompt: the answer comes after the PDU
                    return bytes(out) + b"\r\n> "
                out += result
        except CmsError as exc:
            return bytes(out) + _info(f"+CMS ERROR: {exc.code}")
        except AtCommandError:
            return bytes(out) + _info("+CME ERROR: 4" if self.cmee else "ERROR")
        return bytes(out) + _info("OK")

    def _command(self, command: str) -> bytes | None:
        upper = command.upper()
        if not upper.startswith(("+", "^")):
            return self._basic(upper)
        match = re.fullmatch(r"([+^][A-Z]+)(=\?|\?|=)?(.*)", command, re.IGNORECASE | re.DOTALL)
        if match is None:
            raise AtCommandError
        name, kind, args = match.group(1).upper(), match.group(2) or "", match.group(3)
        handler = self._handlers().get(name)
        if handler is None:
            raise AtCommandError
        return handler(kind, args)

    def _basic(self, command: str) -> bytes:
        match = re.fullmatch(r"(&?[A-Z])(\d*)", command)
        if command == "":
            return b""
        if match is None:
            raise AtCommandError
        name, value = match.group(1), match.group(2)
        if name == "E":
            self.echo = value == "1"
        elif name in ("Z", "&F"):
            self._reset()
        elif name == "I":
            i = self.identity
            return _info(i.manufacturer, i.model, f"Revision: {i.revision}")
        elif name not in ("V", "Q", "&C", "&D", "&W", "X"):
            raise AtCommandError
        return b""

    def _handlers(self) -> dict[str, Callable[[str, str], bytes | None]]:
        identity = self.identity
        return {
            "+CGMI": _constant(identity.manufacturer),
            "+GMI": _constant(identity.manufacturer),
            "+CGMM": _constant(identity.model),
            "+GMM": _constant(identity.model),
            "+CGMR": _constant(identity.revision),
            "+GMR": _constant(identity.revision),
            "+CGSN": _constant(identity.imei),
            "+GSN": _constant(identity.imei),
            "+CIMI": _constant(identity.imsi),
            "+GCAP": _constant("+GCAP: +CGSM"),
            "+CPIN": _read_only("+CPIN: READY"),
            "+CREG": _settable("+CREG: 0,1"),
            "+CGREG": _settable("+CGREG: 0,1"),
            "+COPS": _settable('+COPS: 0,0,"CHINA MOBILE"'),
            "+CSQ": _constant("+CSQ: 20,99", test="+CSQ: (0-31,99),(0-7,99)"),
            "+CMEE": self._int_setting("cmee", "+CMEE", range(3)),
            "+CMGF": self._int_setting("cmgf", "+CMGF", range(2)),
            "+CSCS": self._cscs,
            "+CSCA": self._csca,
            "+CSMS": self._csms,
            "+CPMS": self._cpms,
            "+CNMI": self._cnmi,
            "+CMGS": self._cmgs,
            "+CMGR": self._cmgr,
            "+CMGL": self._cmgl,
            "+CMGD": self._cmgd,
            "+CSDH": _settable("+CSDH: 0"),
            "+CLIP": _settable("+CLIP: 0,1"),
            "+CRC": _settable("+CRC: 0"),
            "+CBST": _settable("+CBST: 7,0,1"),
        }

    def _int_setting(self, attr: str, name: str, allowed: range) -> Callable[[str, str], bytes]:
        def handler(kind: str, args: str) -> bytes:
            if kind == "?":
                return _info(f"{name}: {getattr(self, attr)}")
            if kind == "=?":
                return _info(f"{name}: ({allowed.start}-{allowed.stop - 1})")
            if kind == "=" and args.strip().isdigit() and int(args) in allowed:
                setattr(self, attr, int(args))
                return b""
            raise AtCommandError

        return handler

    def _cscs(self, kind: str, args: str) -> bytes:
        if kind == "?":
            return _info(f'+CSCS: "{self.charset}"')
        if kind == "=?":
            return _info('+CSCS: ("GSM","IRA","UCS2","HEX")')
        charset = args.strip().strip('"').upper()
        if kind != "=" or charset not in ("GSM", "IRA", "UCS2", "HEX"):
            raise AtCommandError
        self.charset = charset
        return b""

    def _csca(self, kind: str, args: str) -> bytes:
        if kind == "?":
            return _info(f'+CSCA: "+{self.smsc.number}",145')
        if kind == "=":
            number = args.split(",")[0].strip().strip('"')
            self.smsc = Address(number.lstrip("+"), 0x91)
        return b""

    def _csms(self, kind: str, args: str) -> bytes:
        if kind == "?":
            return _info("+CSMS: 0,1,1,1")
        if kind == "=?":
            return _info("+CSMS: (0,1)")
        return _info("+CSMS: 1,1,1")

    def _cpms(self, kind: str, args: str) -> bytes:
        used, total = len(self.store), self.capacity
        if kind == "=?":
            return _info('+CPMS: ("SM"),("SM"),("SM")')
        if kind == "?":
            return _info(f'+CPMS: "SM",{used},{total},"SM",{used},{total},"SM",{used},{total}')
        memories = [m.strip().strip('"').upper() for m in args.split(",") if m.strip()]
        if kind != "=" or not memories or any(m != "SM" for m in memories):
            raise CmsError(302)
        return _info("+CPMS: " + ",".join(f"{used},{total}" for _ in memories))

    def _cnmi(self, kind: str, args: str) -> bytes:
        if kind == "?":
            return _info("+CNMI: " + ",".join(map(str, self.cnmi)))
        if kind == "=?":
            return _info("+CNMI: (0-2),(0-3),(0-3),(0-2),(0,1)")
        values = _int_args(args)
        if kind != "=" or not values or len(values) > 5:
            raise CmsError(303)
        self.cnmi[: len(values)] = values
        return b""

    def _cmgs(self, kind: str, args: str) -> bytes | None:
        if kind == "=?":
            return b""
        values = _int_args(args)
        if kind != "=" or len(values) != 1 or not 1 <= values[0] <= 164:
            raise CmsError(304)
        if self.cmgf != 0:
            raise CmsError(302)  # text-mode sending is not emulated
        self._pdu_length = values[0]
        return None

    def _pdu_byte(self, byte: int) -> bytes:
        if byte == 0x1B:  # ESC: abandon the send
            self._line.clear()
            self._pdu_length = None
            return _info("OK")
        if byte != 0x1A:
            if byte not in (0x0D, 0x0A) and len(self._line) < MAX_LINE:
                self._line.append(byte)
            return b""
        text = self._line.decode("latin-1").strip()
        length, self._pdu_length = self._pdu_length, None
        self._line.clear()
        try:
            pdu = bytes.fromhex(text)
            if not pdu or len(pdu) - 1 - pdu[0] != length:
                raise PduError("length mismatch")
            decode_submit(pdu, smsc_prefix=True)
        except (ValueError, ProtocolError):
            return _info("+CMS ERROR: 304")
        if self.fault == "cms":
            return _info(f"+CMS ERROR: {self.fault_code}")
        self._reference = (self._reference + 1) & 0xFF
        self.sent.append(SentSms(self._reference, pdu))
        return _info(f"+CMGS: {self._reference}") + _info("OK")

    def _cmgr(self, kind: str, args: str) -> bytes:
        if kind == "=?":
            return b""
        values = _int_args(args)
        stored = self.store.get(values[0]) if kind == "=" and len(values) == 1 else None
        if stored is None:
            raise CmsError(321)
        output = _pdu_entry(f"+CMGR: {stored.stat},", stored)
        if stored.stat == REC_UNREAD:
            stored.stat = REC_READ
        return output

    def _cmgl(self, kind: str, args: str) -> bytes:
        if kind == "=?":
            return _info("+CMGL: (0-4)")
        values = _int_args(args) if kind == "=" else [REC_UNREAD]
        if len(values) != 1 or not 0 <= values[0] <= ALL:
            raise CmsError(303)
        out = bytearray()
        for index in sorted(self.store):
            stored = self.store[index]
            if values[0] in (ALL, stored.stat):
                out += _pdu_entry(f"+CMGL: {index},{stored.stat},", stored)
                if stored.stat == REC_UNREAD:
                    stored.stat = REC_READ
        return bytes(out)

    def _cmgd(self, kind: str, args: str) -> bytes:
        if kind == "=?":
            return _info(f"+CMGD: (1-{self.capacity}),(0-4)")
        values = _int_args(args)
        if kind != "=" or not 1 <= len(values) <= 2:
            raise CmsError(303)
        flag = values[1] if len(values) == 2 else 0
        if flag == 0:
            self.store.pop(values[0], None)
        else:  # 1: read, 2: read+sent, 3: read+sent+unsent, 4: all
            doomed = {1: {REC_READ}, 2: {REC_READ, STO_SENT},
                      3: {REC_READ, STO_SENT, STO_UNSENT}}.get(flag)  # fmt: skip
            for index in [i for i, s in self.store.items() if doomed is None or s.stat in doomed]:
                del self.store[index]
        return b""


def _split_commands(rest: str) -> list[str]:
    """Split the part after ``AT`` into basic commands and ``;``-separated extended ones."""
    commands: list[str] = []
    while rest:
        if rest[0] in "+^":
            command, _, rest = rest.partition(";")
            commands.append(command)
            rest = rest.lstrip(";")
            continue
        match = re.match(r"&?[A-Za-z]\d*", rest)
        if match is None:
            raise AtCommandError
        commands.append(match.group(0))
        rest = rest[match.end() :].lstrip(";")
    return commands or [""]


def _int_args(args: str) -> list[int]:
    try:
        return [int(a) for a in args.split(",")]
    except ValueError:
        raise CmsError(303) from None


def _info(*lines: str) -> bytes:
    return b"".join(b"\r\n" + line.encode("latin-1") + b"\r\n" for line in lines)


def _pdu_entry(prefix: str, stored: _Stored) -> bytes:
    tpdu_length = len(stored.pdu) - 1 - stored.pdu[0] if stored.pdu else 0
    return (b"\r\n" + f"{prefix},{tpdu_length}".encode() + b"\r\n"
            + stored.pdu.hex().upper().encode() + b"\r\n")  # fmt: skip


def _constant(value: str, test: str | None = None) -> Callable[[str, str], bytes]:
    def handler(kind: str, args: str) -> bytes:
        if kind == "=?":
            return _info(test) if test else b""
        if kind:
            raise AtCommandError
        return _info(value)

    return handler


def _read_only(value: str) -> Callable[[str, str], bytes]:
    def handler(kind: str, args: str) -> bytes:
        if kind != "?":
            raise AtCommandError
        return _info(value)

    return handler


def _settable(value: str) -> Callable[[str, str], bytes]:
    """A setting the emulator accepts and ignores, always reading ``value``."""

    def handler(kind: str, args: str) -> bytes:
        return _info(value) if kind == "?" else b""

    return handler


# --- the pty and the control socket ------------------------------------------------


class _PtyMaster(abstract.FileDescriptor):
    """The master side of the pty as a Twisted transport."""

    def __init__(self, reactor: IReactorCore, fd: int, on_data: Callable[[bytes], None]) -> None:
        super().__init__(reactor)
        self._fd = fd
        self._on_data = on_data
        self.connected = 1

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> object:
        return fdesc.readFromFD(self._fd, self._on_data)

    def writeSomeData(self, data: bytes) -> object:
        return fdesc.writeToFD(self._fd, data)


class ModemEmulator:
    """A :class:`VirtualModem` on a pty, reachable through a stable symlink."""

    def __init__(
        self,
        reactor: IReactorCore,
        link: str,
        identity: Identity = Identity(),
    ) -> None:
        self.reactor = reactor
        self.link = link
        self.modem = VirtualModem(identity)
        self.device: str | None = None
        self._master: _PtyMaster | None = None
        self._slave: int | None = None
        self._references = ReferenceCounter()

    # Convenience views for tests.
    @property
    def sent(self) -> list[SentSms]:
        return self.modem.sent

    @property
    def commands(self) -> list[str]:
        return self.modem.commands

    def start(self) -> str:
        """Open the pty and point the link at it; returns the slave device path.

        On failure (e.g. the link's directory is missing) the pty is closed again and
        no link is left behind.
        """
        master, slave = os.openpty()
        self._slave = slave
        self._master = _PtyMaster(self.reactor, master, self._received)
        self.device = os.ttyname(slave)
        temporary = f"{self.link}.{os.getpid()}.tmp"
        try:
            tty.setraw(slave)
            fdesc.setNonBlocking(master)
            self._master.startReading()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            os.symlink(self.device, temporary)
            os.replace(temporary, self.link)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            self.stop()
            raise
        log.info("Modem emulator on {device} (link {link})", device=self.device, link=self.link)
        return self.device

    def stop(self) -> None:
        """Close the pty at once and remove the link (the port "disappears")."""
        if self._master is not None:
            self._master.stopReading()
            self._master.stopWriting()
            os.close(self._master.fileno())
            self._master = None
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        with contextlib.suppress(FileNotFoundError, OSError):
            if os.readlink(self.link) == self.device:
                os.unlink(self.link)
        self.device = None

    def set_fault(self, mode: str, code: int = 500) -> None:
        """``none``, ``silent``, ``cms`` (with ``code``) or ``unplug``."""
        if mode not in FAULTS:
            raise ValueError(f"unknown fault {mode!r}")
        self.modem.fault, self.modem.fault_code = mode, code
        if mode == "unplug":
            self.stop()
        elif self._master is None:
            self.start()

    def deliver_wmmp(self, originator: str, message: bytes, dest_port: int = 2862) -> None:
        """Inject a WMMP message from a terminal, split into SMS as in 10.4."""
        reference = self._references.next(originator)
        scts = datetime.now(CHINA_TZ).replace(microsecond=0)
        for sms in wmmp_delivers(originator, message, reference, scts, dest_port, max_parts=255):
            self._write(self.modem.deliver(sms))

    def deliver_text(self, originator: str, text: str) -> None:
        """Inject a text SMS (GSM 7-bit when possible, else UCS2)."""
        try:
            gsm7_encode(text)
            dcs = 0x00
        except PduError:
            dcs = 0x08
        scts = datetime.now(CHINA_TZ).replace(microsecond=0)
        sender = msisdn_address(originator)
        self._write(self.modem.deliver(SmsDeliver(sender, scts, text, dcs=dcs)))

    def deliver_pdu(self, tpdu: bytes) -> None:
        """Inject a raw TPDU (no SMSC prefix); it is not validated."""
        self._write(self.modem.deliver_pdu(encode_smsc_info(self.modem.smsc) + tpdu))

    def _received(self, data: bytes) -> None:
        self._write(self.modem.receive(data))

    def _write(self, data: bytes) -> None:
        if data and self._master is not None:
            self._master.write(data)

    def listen_control(self, reactor: IReactorTCP, port: int = 0) -> IListeningPort:
        """Serve the control protocol on 127.0.0.1 (port 0: any free port)."""
        factory = Factory.forProtocol(lambda: ControlProtocol(self))
        return reactor.listenTCP(port, factory, interface="127.0.0.1")


class ControlProtocol(LineReceiver):
    """Line-based control: each command answers data lines, then ``OK`` or ``ERROR …``."""

    delimiter = b"\n"
    HELP = (
        "deliver <originator> <hex WMMP message>",
        "deliver-text <originator> <text>",
        "deliver-pdu <hex TPDU without SMSC prefix>",
        "sent",
        "stored",
        "fault none|silent|cms <n>|unplug",
        "help",
    )

    def __init__(self, emulator: ModemEmulator) -> None:
        self.emulator = emulator

    def lineReceived(self, line: bytes) -> None:
        words = line.decode("utf-8", errors="replace").strip().split(None, 2)
        if not words:
            return
        try:
            output = self._run(words[0].lower(), words[1:])
        except (ValueError, IndexError, ProtocolError) as exc:
            self.sendLine(f"ERROR {exc}".encode())
            return
        for text in [*output, "OK"]:
            self.sendLine(text.encode())

    def _run(self, command: str, args: list[str]) -> list[str]:
        emulator = self.emulator
        if command == "deliver":
            emulator.deliver_wmmp(args[0], bytes.fromhex(args[1]))
        elif command == "deliver-text":
            emulator.deliver_text(args[0], args[1])
        elif command == "deliver-pdu":
            emulator.deliver_pdu(bytes.fromhex("".join(args)))
        elif command == "sent":
            return [sms.as_json() for sms in emulator.sent]
        elif command == "stored":
            return [
                json.dumps({"index": i, "stat": s.stat, "pdu": s.pdu.hex().upper()})
                for i, s in sorted(emulator.modem.store.items())
            ]
        elif command == "fault":
            code = int(args[1]) if len(args) > 1 else 500
            emulator.set_fault(args[0].lower(), code)
        elif command == "help":
            return list(self.HELP)
        else:
            raise ValueError(f"unknown command {command!r}")
        return []


def _digits(length: range) -> Callable[[str], str]:
    """An argparse type: a string of digits whose length is in ``length``."""

    def check(text: str) -> str:
        if not (text.isdigit() and text.isascii() and len(text) in length):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {length.start}-{length.stop - 1} digits"
            )
        return text

    return check


def _smsc(text: str) -> str:
    _digits(range(1, 21))(text.removeprefix("+"))
    return text


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="m2mgw-modem-emulator", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--link", default="/tmp/m2mgw-modem",
                        help="symlink to the pty slave: the [sms] device of the gateway "
                             "(default /tmp/m2mgw-modem)")  # fmt: skip
    parser.add_argument("--control-port", type=argtypes.listen_port, default=0,
                        help="TCP port of the control socket on 127.0.0.1 (default 0: any "
                             "free port, printed at start)")  # fmt: skip
    parser.add_argument(
        "--imei",
        type=_digits(range(15, 16)),
        default=Identity.imei,
        help=f"the modem's IMEI, 15 digits (default {Identity.imei})",
    )
    parser.add_argument(
        "--imsi",
        type=_digits(range(6, 16)),
        default=Identity.imsi,
        help=f"its SIM's IMSI (default {Identity.imsi})",
    )
    parser.add_argument(
        "--smsc",
        type=_smsc,
        default=Identity.smsc,
        help=f"the SMS centre number it reports (default {Identity.smsc})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the emulator until interrupted.

    Arguments are checked before anything is opened; a start failure (the control
    port, the link's directory) is one line on stderr, exit status 1, and no link.
    """
    args = make_parser().parse_args(argv)

    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError
    from twisted.logger import globalLogBeginner, textFileLogObserver

    emulator = ModemEmulator(
        reactor, args.link, Identity(imei=args.imei, imsi=args.imsi, smsc=args.smsc)
    )
    try:
        control = emulator.listen_control(reactor, args.control_port)
    except CannotListenError as exc:
        print(f"m2mgw-modem-emulator: cannot listen on 127.0.0.1:{args.control_port}: "
              f"{exc.socketError}", file=sys.stderr)  # fmt: skip
        return 1
    try:
        device = emulator.start()
    except OSError as exc:
        control.stopListening()
        print(f"m2mgw-modem-emulator: cannot create {args.link}: {exc.strerror or exc}",
              file=sys.stderr)  # fmt: skip
        return 1
    # From here on the log (kept until now) goes to stderr: a failed start is one line.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    address = control.getHost()
    started = {"device": device, "link": args.link, "control": f"{address.host}:{address.port}"}
    # Announced once the reactor runs, so its SIGTERM handler (which removes the link)
    # is in place before anyone who read the line can signal us.
    reactor.callWhenRunning(print, json.dumps(started), flush=True)
    reactor.addSystemEventTrigger("before", "shutdown", emulator.stop)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

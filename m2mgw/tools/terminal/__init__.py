"""``m2mgw-terminal``: simulated WMMP terminals over TCP, UDP or SMS (spec 9.4, 10.2-10.4).

Each terminal is a :class:`~m2mgw.protocol.terminal.TerminalClient` driven by thin Twisted
adapters: a TCP connection per terminal (long or short), or one shared UDP socket for
all terminals, demultiplexed by the header serial. On SMS (``--mode sms``) the
terminals reach the gateway's modem emulator through its control socket: their
messages are injected with ``deliver``, and the SMS the gateway sent (``sent``, polled)
are picked by destination MSISDN and reassembled. One process runs thousands of
terminals: no threads, staggered starts, one timer per terminal.

Every event is one readable line on stdout (``A972030000001234: logged in, LOGIN_ACK 0
(OK)``), result codes with their names; with ``--json-events`` it is one JSON object
instead, for scripts and tests. Ctrl-C (SIGINT) or SIGTERM logs every terminal out
before the process ends. The exit code is 0 when every terminal logged in and out
cleanly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import IO

from twisted.internet.defer import Deferred

from m2mgw.config import ConfigError, connect_address, load_config
from m2mgw.protocol import terminal as role
from m2mgw.protocol.errors import ProtocolError
from m2mgw.tools import argtypes
from m2mgw.tools.terminal._bearers import ModemControlClient, SubmittedSms
from m2mgw.tools.terminal._events import EventSink, describe
from m2mgw.tools.terminal._fleet import Fleet
from m2mgw.tools.terminal._identities import (
    build_identities,
    derive,
    parse_trap,
    reported_heartbeat,
)
from m2mgw.tools.terminal._reactor import Reactor
from m2mgw.tools.terminal._terminal import SimulatedTerminal

MODES = ("tcp-long", "tcp-short", "udp", "sms")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="m2mgw-terminal", description=__doc__.splitlines()[0].replace("``", "")
    )
    p.add_argument("--config", metavar="FILE",
                   help="the gateway's ini file: take the platform's address and ports from "
                        "its [tcp] listen and [udp] port/interface")  # fmt: skip
    p.add_argument("--host", help="the platform's address (default 127.0.0.1)")
    p.add_argument("--tcp-port", type=argtypes.port, help="the platform's TCP port (default 5236)")
    p.add_argument("--udp-port", type=argtypes.port, help="the platform's UDP port (default 5235)")
    p.add_argument("--mode", choices=MODES, default="tcp-long",
                   help="bearer and connection: TCP long or short connection, UDP, or SMS "
                        "through the modem emulator (default tcp-long)")  # fmt: skip
    p.add_argument(
        "--serial",
        default="A972030000001234",
        help="the (first) terminal's serial; later ones count up",
    )
    p.add_argument(
        "--imei", default="860000000000001", help="the (first) terminal's IMEI; later ones count up"
    )
    p.add_argument(
        "--imsi", default="460000000000001", help="the (first) terminal's IMSI; later ones count up"
    )
    p.add_argument("--uplink-password", help="the uplink password (as provisioned)")
    p.add_argument("--downlink-password", help="the downlink password (as provisioned)")
    p.add_argument("--base-key", help="the base key, for --session-key")
    p.add_argument(
        "--cipher",
        choices=("none", "legacy", "aes"),
        default="none",
        help="the cipher profile of the terminal (default none)",
    )
    p.add_argument("--session-key", action="store_true", help="request a session key at login")
    p.add_argument("--encrypt", action="store_true", help="send E042 bodies with a session key")
    p.add_argument("--software-version", default="1.01", help="reported in LOGIN (default 1.01)")
    p.add_argument("--compat", choices=tuple(role.HABITS), default="strict",
                   help="behave as a deployed stack does, byte for byte (spec 1.6): "
                        "cmcc-javame (C1-C9) or simcom (PD-06); default strict")  # fmt: skip
    p.add_argument(
        "--heartbeat",
        type=argtypes.positive,
        metavar="SECONDS",
        help="heartbeat interval, also reported in TLV 0x0011 (default 90)",
    )
    p.add_argument(
        "--register-op",
        type=int,
        choices=range(5),
        help="send REGISTER with this op first (0 new ... 4 cleared)",
    )
    p.add_argument(
        "--send-data",
        type=argtypes.hex_bytes,
        metavar="HEX",
        help="send this TRANSPARENT_DATA after login",
    )
    p.add_argument("--dest-ec", help="EC code of the data's destination application")
    p.add_argument(
        "--trap",
        type=parse_trap,
        action="append",
        metavar="TAG=VALUE",
        help="a TLV of one CONFIG_TRAP after login (repeatable), e.g. 0x300D=0x20",
    )
    p.add_argument("--fetch", choices=("none", "http", "file"), default="none",
                   help="on DOWNLOAD_INFO: nothing, an HTTP GET, or FILE_REQ")  # fmt: skip
    p.add_argument(
        "--count", type=argtypes.at_least_one, default=1, help="how many terminals (default 1)"
    )
    p.add_argument("--credentials-file", help="JSON lines: serial, imei, imsi, passwords, ...")
    p.add_argument("--stagger", type=float, default=0.005, help="seconds between starts")
    p.add_argument(
        "--duration",
        type=argtypes.positive,
        metavar="SECONDS",
        help="log every terminal out after this long (default: at Ctrl-C)",
    )
    p.add_argument(
        "--logout-when-done",
        action="store_true",
        help="log out once the post-login trap, --trap and --send-data are answered "
        "(what --mode tcp-short always does)",
    )
    p.add_argument(
        "--json-events",
        action="store_true",
        help="one JSON object per event instead of a readable line",
    )
    p.add_argument("--modem-control", type=argtypes.host_port, metavar="HOST:PORT",
                   help="--mode sms: the modem emulator's control socket")  # fmt: skip
    p.add_argument("--msisdn", help="--mode sms: the (first) terminal's MSISDN")
    p.add_argument("--sms-poll", type=argtypes.positive, default=0.5, metavar="SECONDS",
                   help="--mode sms: seconds between polls for the gateway's SMS")  # fmt: skip
    return p


def platform_address(args: argparse.Namespace) -> None:
    """Fill in --host/--tcp-port/--udp-port: given, else from --config, else the defaults."""
    host, tcp_port, udp_port = "127.0.0.1", 5236, 5235
    if args.config:
        config = load_config(args.config)
        address = connect_address(config.tcp.listen)
        if address is not None:
            host, tcp_port = address
        elif args.mode in ("tcp-long", "tcp-short") and args.tcp_port is None:
            raise ConfigError(f"{args.config}: [tcp] listen = {config.tcp.listen} names no "
                              "TCP port to connect to; give --tcp-port")  # fmt: skip
        udp_port = config.udp.port
        if args.mode == "udp":
            host = config.udp.interface if config.udp.interface not in ("", "0.0.0.0") else host
    args.host = args.host or host
    args.tcp_port = args.tcp_port or tcp_port
    args.udp_port = args.udp_port or udp_port


def prepare(reactor: Reactor, argv: Sequence[str] | None, stdout: IO[str]) -> Fleet:
    """Parse ``argv`` into a ready fleet; usage errors exit with status 2 (argparse)."""
    p = parser()
    args = p.parse_args(argv)
    if args.mode == "sms" and not (args.modem_control and args.msisdn):
        p.error("--mode sms needs --modem-control HOST:PORT and --msisdn")
    try:
        platform_address(args)
        identities = build_identities(args)
    except (ValueError, OSError, ProtocolError, ConfigError) as exc:
        p.error(str(exc))
    sink = EventSink(stdout, json_lines=args.json_events)
    return Fleet(reactor, args, sink, identities)


def run(reactor: Reactor, argv: Sequence[str] | None, stdout: IO[str]) -> Deferred[int]:
    """Parse ``argv`` and run the fleet on ``reactor``; fires with the exit code."""
    return prepare(reactor, argv, stdout).run()


def main(argv: Sequence[str] | None = None) -> None:
    """Console script ``m2mgw-terminal``."""
    from twisted.internet.task import react

    def exit_with(code: int) -> None:
        raise SystemExit(code)  # react() exits with a SystemExit's code

    def start(reactor: Reactor) -> Deferred[None]:
        fleet = prepare(reactor, argv, sys.stdout)
        reactor.addSystemEventTrigger("before", "shutdown", fleet.shutdown)
        return fleet.run().addCallback(exit_with)

    react(start)


__all__ = [
    "Fleet",
    "ModemControlClient",
    "SimulatedTerminal",
    "SubmittedSms",
    "build_identities",
    "derive",
    "describe",
    "main",
    "parse_trap",
    "parser",
    "platform_address",
    "prepare",
    "reported_heartbeat",
    "run",
]

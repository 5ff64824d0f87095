"""The argument parser of ``m2mgw``: its options, help texts and subcommands."""

from __future__ import annotations

import argparse
from typing import NoReturn

import m2mgw
from m2mgw.config import CONFIG_ENV, SYSTEM_CONFIG
from m2mgw.core import requests as build
from m2mgw.core.model import RequestState
from m2mgw.protocol import compat
from m2mgw.tools.cli._commands import (
    cmd_alarms,
    cmd_app_provision,
    cmd_app_rotate_key,
    cmd_apps,
    cmd_messages,
    cmd_notifications,
    cmd_outbox,
    cmd_provision,
    cmd_requests,
    cmd_sample_config,
    cmd_send,
    cmd_show,
    cmd_status,
    cmd_terminals,
)
from m2mgw.tools.cli._errors import CliError
from m2mgw.web import views

REQUEST_STATES = tuple(s.value for s in RequestState)


class _Parser(argparse.ArgumentParser):
    """Usage errors as a one-line CliError instead of argparse's usage dump."""

    def error(self, message: str) -> NoReturn:
        raise CliError(2, f"{message} (see {self.prog} --help)")


def _output_options(p: argparse.ArgumentParser, what: str = "print the page as one JSON "
                    'object ({"items": [...], "total": N, "next": ...})') -> None:
    """The output options of a command that prints records."""
    p.add_argument("--json", action="store_true", help=what)
    p.add_argument("--show-secrets", action="store_true",
                   help="show passwords, keys and SECURITY_CONFIG bodies instead of ***")


def _paging(p: argparse.ArgumentParser, *, cursor: bool) -> None:
    p.add_argument("--limit", type=_page_size, default=views.DEFAULT_LIMIT,
                   help=f"rows to show, 1-{views.MAX_LIMIT} (default {views.DEFAULT_LIMIT})")
    p.add_argument("--offset", type=_count, help="skip this many rows first")
    if cursor:
        p.add_argument("--before", type=_count, metavar="ID",
                       help="only rows older than id ID (the next page: see the last line)")


def _page_size(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= views.MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be an integer 1-{views.MAX_LIMIT}, got {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be an integer of at least 0, got {text!r}")
    return int(text)


def make_parser() -> _Parser:
    parser = _Parser(prog="m2mgw", description="Provision and inspect m2mgw terminals.")
    parser.add_argument(
        "--config",
        "-c",
        help=f"the gateway's ini file (default: ${CONFIG_ENV}, else {SYSTEM_CONFIG})",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"m2mgw {m2mgw.__version__}",
        help="print the version and exit",
    )
    sub = parser.add_subparsers(dest="subcommand", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "sample-config", help="print the documented sample ini file (every key, its default)"
    )
    p.set_defaults(run=cmd_sample_config, needs_config=False)

    p = sub.add_parser("provision", help="add a terminal")
    p.add_argument("--imei", required=True, help="the terminal's IMEI, 15 digits")
    p.add_argument("--imsi", help="the IMSI of its SIM, 15 digits (needed with --serial)")
    p.add_argument("--msisdn", help="its SIM's phone number (for SMS and wake-up)")
    p.add_argument("--cipher", choices=build.CIPHERS, help="message encryption (default: none)")
    p.add_argument("--serial", help="preset serial (credentials are generated if not given)")
    p.add_argument("--uplink-password", help="preset uplink password, 8 characters")
    p.add_argument("--downlink-password", help="preset downlink password, 8 characters")
    p.add_argument("--base-key", help="preset Base Key (legacy: 24 characters, aes: 16)")
    p.add_argument("--app", action="append", help="bound application EC code (repeatable)")
    p.add_argument("--default-app", help="EC code of the application for unaddressed data")
    p.add_argument(
        "--compat",
        choices=compat.NAMES,
        help="compatibility profile (spec 1.6): strict, cmcc-javame or simcom; "
        "default: [protocol] default_compat",
    )
    _output_options(p, "print the record as one JSON object")
    p.set_defaults(run=cmd_provision)

    p = sub.add_parser("terminals", help="list terminals")
    p.add_argument("--search", metavar="TEXT",
                   help="only terminals whose serial, IMEI, IMSI, MSISDN or address has TEXT")
    p.add_argument("--state", action="append", choices=sorted(views.TERMINAL_STATES),
                   help="only terminals in this state; online = logged in (repeatable)")
    p.add_argument("--bearer", action="append", choices=views.BEARERS,
                   help="only terminals last seen on this bearer (repeatable)")
    _paging(p, cursor=False)
    _output_options(p)
    p.set_defaults(run=cmd_terminals)

    p = sub.add_parser("show", help="one terminal in detail")
    p.add_argument("terminal", metavar="SERIAL", help="serial (or IMEI if unregistered)")
    _output_options(p, "print the record as one JSON object")
    p.set_defaults(run=cmd_show)

    p = sub.add_parser("requests", help="request history, newest first")
    p.add_argument("serial", nargs="?", metavar="SERIAL", help="only this terminal's requests")
    p.add_argument("--state", action="append", choices=REQUEST_STATES,
                   help="only requests in this state (repeatable)")
    _paging(p, cursor=True)
    _output_options(p)
    p.set_defaults(run=cmd_requests)

    p = sub.add_parser("alarms", help="alarm history, newest first (--active: raised now)")
    p.add_argument("serial", nargs="?", metavar="SERIAL", help="only this terminal's alarms")
    p.add_argument("--code", type=lambda v: int(v, 0), help="only this alarm code (0x0001)")
    p.add_argument("--status", type=int, choices=(0, 1), help="only raised (1) or cleared (0)")
    p.add_argument("--active", action="store_true", help="the alarms raised now instead")
    _paging(p, cursor=True)
    _output_options(p)
    p.set_defaults(run=cmd_alarms)

    p = sub.add_parser("outbox", help="the SMS outbox, newest first")
    p.add_argument("--state", action="append", choices=views.SMS_STATES,
                   help="only messages in this state (repeatable)")
    p.add_argument("--msisdn", help="only messages to this number")
    _paging(p, cursor=True)
    _output_options(p)
    p.set_defaults(run=cmd_outbox)

    p = sub.add_parser("notifications",
                       help="undelivered application notifications and their delivery state")
    p.add_argument("--app", metavar="APP_ID", help="only this application's")
    p.add_argument("--state", action="append", choices=views.NOTIFICATION_STATES,
                   help="only these: pending, retrying (an offer failed), leased "
                   "(fetched, not acknowledged) or kept (retries used up) (repeatable)")
    _paging(p, cursor=False)
    _output_options(p)
    p.set_defaults(run=cmd_notifications)

    p = sub.add_parser("messages", help="a terminal's message log, newest first")
    p.add_argument("serial", metavar="SERIAL", help="the terminal")
    p.add_argument("--direction", choices=("in", "out"), help="only received or sent")
    p.add_argument("--event", help="only this event (login, uplink-data, ...)")
    _paging(p, cursor=True)
    _output_options(p)
    p.set_defaults(run=cmd_messages)

    p = sub.add_parser("status", help="one-screen summary of the gateway (GET /stats)")
    p.add_argument("--json", action="store_true", help="print GET /stats as one JSON object")
    p.set_defaults(run=cmd_status)

    p = sub.add_parser("send", help="queue a platform request (gateway must be running)")
    p.add_argument("serial", metavar="SERIAL", help="the terminal")
    p.add_argument("command", metavar="COMMAND", help="CONFIG_GET, CONFIG_SET, REMOTE_CTRL, ...")
    p.add_argument("--tag", action="append", help="CONFIG_GET/SECURITY_CONFIG tag")
    p.add_argument("--set", action="append", metavar="TAG=VALUE", help="CONFIG_SET value")
    p.add_argument("--code", type=lambda v: int(v, 0), help="REMOTE_CTRL code")
    p.add_argument("--param", action="append", metavar="TAG=HEX", help="REMOTE_CTRL param")
    p.add_argument("--op", type=int, help="SECURITY_CONFIG op (1 or 2)")
    p.add_argument("--reason", type=int, help="LOGOUT reason")
    p.add_argument("--file", help="DOWNLOAD_INFO file")
    p.add_argument("--version", help="DOWNLOAD_INFO version")
    p.add_argument("--force", action="store_true", help="DOWNLOAD_INFO force flag")
    p.add_argument("--data", help="TRANSPARENT_* data in hex")
    p.add_argument("--fixed", help="TRANSPARENT_CMD fixed part in hex")
    p.add_argument("--source-ec", help="TRANSPARENT_* source EC code")
    p.add_argument("--ttl", type=float, help="queue lifetime in seconds")
    p.add_argument("--wait", type=float, metavar="SECONDS", help="wait for the outcome")
    _output_options(p, "print the request as one JSON object")
    p.set_defaults(run=cmd_send)

    p = sub.add_parser("app-provision", help="add an M2M application")
    p.add_argument("--app-id", required=True, help="user name, 1-16 of A-Z a-z 0-9 _ -")
    p.add_argument("--password", required=True, help="its password (application spec 7.1)")
    p.add_argument("--base-key", required=True, help="16 or 24 ASCII characters (aes: 16)")
    p.add_argument("--ec-code", help="EC code terminals address it by (default: the app id)")
    p.add_argument("--callback-url", help="its M2MAppNotifyService endpoint")
    p.add_argument(
        "--terminal", action="append", metavar="SERIAL", help="bound terminal (repeatable)"
    )
    p.add_argument("--cipher", choices=("legacy", "aes"), help="its cipher (default: legacy)")
    p.add_argument("--next-base-key", help="the Base Key that follows (APP_KEY_UPDATE type 2)")
    p.add_argument(
        "--next-base-key-from",
        type=int,
        metavar="TIME",
        help="UNIX time from which logins use --next-base-key",
    )
    _output_options(p, "print the record as one JSON object")
    p.set_defaults(run=cmd_app_provision)

    p = sub.add_parser("app-rotate-key", help="schedule an application's next Base Key")
    p.add_argument("--app-id", required=True, help="the provisioned application")
    p.add_argument("--next-base-key",
                   help="the Base Key that follows (default: generated; see --show-secrets)")
    p.add_argument("--next-base-key-from", type=int, required=True, metavar="TIME",
                   help="UNIX time from which logins use it; live sessions are told at once")
    _output_options(p, "print the record as one JSON object")
    p.set_defaults(run=cmd_app_rotate_key)

    p = sub.add_parser("apps", help="list applications")
    _paging(p, cursor=False)
    _output_options(p)
    p.set_defaults(run=cmd_apps)
    return parser

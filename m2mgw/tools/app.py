"""``m2mgw-app``: an application on the long connection, from the command line (spec 6).

For integrators trying the platform: log in as an application, send one request, print
its answer, optionally wait for notifications, answer each one, and log out. Everything
printed is one JSON object per line (bytes in hex, each result code followed by its
name), so the output can be piped into ``jq``::

    m2mgw-app --port 5300 --app-id EC0001 --password s3cretPW \\
        --base-key AppBaseKey0123456789ABCD send-data A972030000001234 01020304 --wait 30
    m2mgw-app --port 5300 --app-id EC0001 --password s3cretPW \\
        --base-key AppBaseKey0123456789ABCD watch --wait 60

The options may come before or after the subcommand. A Base Key rotation announced by
the platform is printed as a ``BaseKeyAnnounced`` line: pass its ``base_key`` as
``--base-key`` from its ``effective_time`` on. Ctrl-C (SIGINT) or SIGTERM ends a wait
with a clean logout.

Exit status: 0 success, 1 refused or failed (connection, login, result code, a FAILED
or EXPIRED outcome), 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import IO, Any

from twisted.internet import defer, task
from twisted.internet.error import ConnectError, DNSLookupError

from m2mgw.app import client as app_client
from m2mgw.app import operations as ops
from m2mgw.app.longconn import AppCredentials
from m2mgw.protocol.constants import RESULT_CODES, Command, code_label, code_name
from m2mgw.tools import argtypes

#: How long a request waits for the gateway's answer: above the gateway's default
#: ``[app] sync_wait`` (50 s), which a ``get-config --sync`` may take (AD-13).
ANSWER_TIMEOUT = 60.0
WATCH_DEFAULT = 60.0
SHUTDOWN_GRACE = 5.0
FINAL_STATES = frozenset({"APPLIED", "FAILED", "EXPIRED"})
#: Operations whose ACKED is final: the others report their effect later (APPLIED).
ACKED_IS_FINAL = frozenset({"SendData", "SendCommand", "GetConfig"})
_TERMINAL_COMMANDS = {
    "SendData": Command.TRANSPARENT_DATA,
    "SendCommand": Command.TRANSPARENT_CMD,
    "GetConfig": Command.CONFIG_GET,
    "SetConfig": Command.CONFIG_SET,
    "RemoteControl": Command.REMOTE_CTRL,
    "Upgrade": Command.DOWNLOAD_INFO,
}


def to_json(payload: object) -> dict[str, Any]:
    """An operation dataclass as a JSON object: its type, its fields, bytes in hex, and
    ``<field>_name`` after each result code."""

    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.hex()
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields: dict[str, Any] = {"type": type(value).__name__}
            for f in dataclasses.fields(value):
                fields[f.name] = plain(getattr(value, f.name))
                fields.update(_result_name(value, f.name))
            return fields
        if isinstance(value, list):
            return [plain(item) for item in value]
        return value

    return plain(payload)


def _result_name(payload: Any, field: str) -> dict[str, str]:
    """``{field_name: NAME}`` for a result-code field of ``payload`` that is set."""
    code = getattr(payload, field)
    if not isinstance(code, int):
        return {}
    if field in ("result_code", "op_result"):
        return {f"{field}_name": code_name(ops.ResultCode, code)}
    command = _TERMINAL_COMMANDS.get(getattr(payload, "operation", ""))
    if field == "terminal_result" and command is not None:
        return {f"{field}_name": code_name(RESULT_CODES[command], code)}
    return {}


def _tag(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a tag: {text!r} (17 or 0x0011)") from None
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"tag {text} is not 16 bits")
    return value


def _item(text: str) -> ops.TlvItem:
    tag, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected TAG=HEX, got {text!r}")
    return ops.TlvItem(tag=_tag(tag), value=argtypes.hex_bytes(value))


def build_request(args: argparse.Namespace) -> object | None:
    """The operation of the subcommand (None for ``watch``)."""
    common = {"ttl_seconds": args.ttl, "biz_seq": args.biz_seq} if "ttl" in args else {}
    command = args.command
    if command == "send-data":
        return ops.SendData(
            terminal_id=args.serial, data=args.data, need_terminal_ack=not args.no_ack, **common
        )
    if command == "send-cmd":
        return ops.SendCommand(
            terminal_id=args.serial,
            fixed_part=args.fixed,
            command=args.data,
            need_terminal_ack=not args.no_ack,
            **common,
        )
    if command == "get-config":
        return ops.GetConfig(
            terminal_id=args.serial, tags=args.tags, mode="sync" if args.sync else "async"
        )
    if command == "set-config":
        return ops.SetConfig(terminal_id=args.serial, items=args.items, **common)
    if command == "remote-ctrl":
        return ops.RemoteControl(terminal_id=args.serial, code=args.code, **common)
    if command == "status":
        return ops.QueryTerminalStatus(terminal_ids=args.serials)
    if command == "info":
        return ops.QueryTerminalInfo(terminal_id=args.serial)
    if command == "message":
        return ops.QueryMessageStatus(msg_id=args.msg_id)
    if command == "list":
        return ops.ListTerminals()
    return None


REQUIRED = ("app_id", "password", "base_key")


def _connection_options(parser: argparse.ArgumentParser, *, after: bool) -> None:
    """The options of every subcommand. Repeated on each subcommand (``after``) without
    defaults, so that they may follow it without undoing what preceded it."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if after else value

    add = parser.add_argument
    add("--host", default=default("127.0.0.1"), help="the gateway's address (default 127.0.0.1)")
    add(
        "--port",
        type=argtypes.port,
        default=default(5300),
        help="the gateway's [app] listen port (default 5300)",
    )
    add("--app-id", default=default(None), help="the application ID (required)")
    add("--password", default=default(None), help="the application's password (required)")
    add("--base-key", default=default(None), help="the application's Base Key (required)")
    add(
        "--cipher",
        choices=("legacy", "aes"),
        default=default("legacy"),
        help="the cipher profile of the Base Key (default legacy)",
    )
    add(
        "--encrypt",
        action="store_true",
        default=default(False),
        help="encrypt requests and ask for encrypted notifications",
    )
    add(
        "--wait",
        type=argtypes.positive,
        default=default(None),
        metavar="SECONDS",
        help="then print (and answer) notifications; a downlink ends at its final result "
        "(watch: default 60)",
    )
    add("--answer-timeout", type=argtypes.positive, default=default(ANSWER_TIMEOUT),
        metavar="SECONDS",
        help=f"how long a request waits for the gateway's answer (default {ANSWER_TIMEOUT:g}, "
             "above the gateway's [app] sync_wait)")  # fmt: skip


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m2mgw-app", description=__doc__.split("\n\n")[0])
    _connection_options(parser, after=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _connection_options(p, after=True)
        return p

    def downlink(name: str, help_text: str) -> argparse.ArgumentParser:
        p = command(name, help_text)
        p.add_argument("serial", metavar="SERIAL", help="the terminal's serial")
        p.add_argument(
            "--ttl",
            type=int,
            default=ops.DEFAULT_TTL,
            help=f"queue lifetime in seconds (default {ops.DEFAULT_TTL})",
        )
        p.add_argument("--biz-seq", help="your correlation key (AD-14)")
        return p

    p = downlink("send-data", "transparent data to a terminal")
    p.add_argument("data", type=argtypes.hex_bytes, metavar="HEX", help="the data, in hex")
    p.add_argument("--no-ack", action="store_true", help="no NotifyResult on success")
    p = downlink("send-cmd", "a transparent command to a terminal")
    p.add_argument("data", type=argtypes.hex_bytes, metavar="HEX", help="the command, in hex")
    p.add_argument(
        "--fixed",
        type=argtypes.hex_bytes,
        default=b"",
        metavar="HEX",
        help="the command's fixed part (TLV 0x4016), in hex",
    )
    p.add_argument("--no-ack", action="store_true", help="no NotifyResult on success")
    p = command("get-config", "read terminal parameters")
    p.add_argument("serial", metavar="SERIAL", help="the terminal's serial")
    p.add_argument("tags", type=_tag, nargs="+", metavar="TAG", help="tags, e.g. 0x0011 or 17")
    p.add_argument("--sync", action="store_true", help="wait for the values (AD-13)")
    p = downlink("set-config", "write terminal parameters")
    p.add_argument(
        "items", type=_item, nargs="+", metavar="TAG=HEX", help="values, e.g. 0x0011=0000005A"
    )
    p = downlink("remote-ctrl", "a remote-control command")
    p.add_argument(
        "code",
        type=lambda text: int(text, 0),
        metavar="CODE",
        help="the REMOTE_CTRL code, e.g. 0x02 (reboot)",
    )
    p = command("status", "terminal states")
    p.add_argument("serials", nargs="+", metavar="SERIAL", help="the terminals' serials")
    p = command("info", "one terminal's information")
    p.add_argument("serial", metavar="SERIAL", help="the terminal's serial")
    p = command("message", "the state of a msgId")
    p.add_argument("msg_id", type=int, metavar="MSGID", help="the msgId of a request")
    command("list", "your terminals")
    command("watch", "print and answer notifications until --wait runs out (default 60 s)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; the required connection options may come on either side."""
    parser = make_parser()
    args = parser.parse_args(argv)
    missing = [f"--{name.replace('_', '-')}" for name in REQUIRED if getattr(args, name) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    return args


def emit(payload: object, out: IO[str] | None = None) -> None:
    print(json.dumps(to_json(payload)), file=out or sys.stdout, flush=True)


def fail(message: str) -> int:
    print(f"m2mgw-app: {message}", file=sys.stderr, flush=True)
    return 1


async def run(
    reactor: Any,
    args: argparse.Namespace,
    stop: defer.Deferred[None] | None = None,
    out: IO[str] | None = None,
) -> int:
    """Log in, send the request, wait (until the final result, --wait or ``stop``),
    answer every notification, log out; returns the exit status. JSON lines go to
    ``out`` (stdout), errors to stderr."""
    request = build_request(args)
    done: defer.Deferred[None] = defer.Deferred()  # fires when the wait is over
    msg_id: int | None = None
    outcome: list[str] = []

    def end_wait(_: object = None) -> None:
        if not done.called:
            done.callback(None)

    def notified(payload: object) -> None:
        emit(payload, out)
        if (
            isinstance(payload, ops.NotifyResult)
            and payload.msg_id == msg_id
            and (
                payload.state in FINAL_STATES
                or (payload.state == "ACKED" and payload.operation in ACKED_IS_FINAL)
            )
        ):
            outcome.append(payload.state)
            # After this handler returns, the client answers the notification; the
            # logout that ends the wait must come after that answer.
            reactor.callLater(0, end_wait)

    if stop is not None:
        stop.addCallback(end_wait)
    creds = AppCredentials(args.app_id, args.password, args.base_key, args.cipher)
    try:
        client = await app_client.connect(
            reactor,
            args.host,
            args.port,
            creds,
            on_notification=notified,
            encrypt=args.encrypt,
            on_base_key=lambda announced: emit(announced, out),
        )
    except (ConnectError, DNSLookupError, OSError) as exc:
        return fail(f"cannot connect to {args.host}:{args.port}: {exc}")
    except app_client.LoginFailed as exc:
        if exc.result is not None:
            return fail(f"login refused: {code_label(ops.ResultCode, exc.result)}")
        return fail(f"login failed: {exc.reason}")
    client.session.answer_timeout = args.answer_timeout
    status = 0
    if request is not None:
        try:
            response = await client.call(request)
        except app_client.RequestFailed as exc:
            await client.logout()
            return fail(str(exc))
        emit(response, out)
        msg_id = getattr(response, "msg_id", None)
        status = 0 if response.result_code in (0, 5) else 1
    wait = args.wait or (WATCH_DEFAULT if request is None else 0.0)
    if wait and status == 0 and not done.called:
        timer = reactor.callLater(wait, end_wait)
        await done
        if timer.active():
            timer.cancel()
    await client.logout()
    if outcome and outcome[0] in ("FAILED", "EXPIRED"):
        status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``m2mgw-app``."""
    args = parse_args(argv)
    status: list[int] = []

    async def session(reactor: Any) -> None:
        stop: defer.Deferred[None] = defer.Deferred()
        finished = defer.ensureDeferred(run(reactor, args, stop))

        def shutdown() -> defer.Deferred[None] | None:
            """SIGINT/SIGTERM: end the wait and log out before the reactor stops."""
            if finished.called:
                return None
            stop.callback(None)
            waiter: defer.Deferred[None] = defer.Deferred()
            finished.addBoth(lambda result: (waiter.callback(None), result)[1])
            waiter.addTimeout(SHUTDOWN_GRACE, reactor)
            return waiter.addErrback(lambda failure: None)

        reactor.addSystemEventTrigger("before", "shutdown", shutdown)
        status.append(await finished)

    try:
        task.react(lambda reactor: defer.ensureDeferred(session(reactor)))
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            return int(exit_.code) if isinstance(exit_.code, int) else 1
    return status[0] if status else 1


if __name__ == "__main__":
    sys.exit(main())

"""``m2mgw-app``: an application on the long connection, from the command line (spec 6).

For integrators trying the platform: log in as an application, send one request, print
its answer, and optionally wait for notifications. Everything printed is one JSON
object per line (bytes in hex), so the output can be piped into ``jq``::

    m2mgw-app --port 5300 --app-id EC0001 --password s3cretPW \\
        --base-key AppBaseKey0123456789ABCD send-data A972030000001234 01020304 --wait 30
    m2mgw-app ... watch --seconds 60

A Base Key rotation announced by the platform is printed as a ``BaseKeyAnnounced``
line: pass its ``base_key`` as ``--base-key`` from its ``effective_time`` on.

Exit status: 0 success, 1 refused or failed (login, result code, timeout), 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from twisted.internet import defer, task

from m2mgw.app import client as app_client
from m2mgw.app import operations as ops
from m2mgw.app.longconn import AppCredentials


def to_json(payload: object) -> dict[str, Any]:
    """An operation dataclass as a JSON object: its type, its fields, bytes in hex."""

    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return value.hex()
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {"type": type(value).__name__} | {
                f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
            }
        if isinstance(value, list):
            return [plain(item) for item in value]
        return value

    return plain(payload)


def _hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not hex: {text!r}") from None


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
    return ops.TlvItem(tag=_tag(tag), value=_hex(value))


def build_request(args: argparse.Namespace) -> object | None:
    """The operation of the subcommand (None for ``watch``)."""
    common = {"ttl_seconds": args.ttl, "biz_seq": args.biz_seq} if "ttl" in args else {}
    command = args.command
    if command == "send-data":
        return ops.SendData(terminal_id=args.serial, data=args.data,
                            need_terminal_ack=not args.no_ack, **common)
    if command == "send-cmd":
        return ops.SendCommand(terminal_id=args.serial, fixed_part=args.fixed,
                               command=args.data, need_terminal_ack=not args.no_ack, **common)
    if command == "get-config":
        return ops.GetConfig(terminal_id=args.serial, tags=args.tags,
                             mode="sync" if args.sync else "async")
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


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m2mgw-app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5300, help="the gateway's [app] listen port")
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--base-key", required=True)
    parser.add_argument("--cipher", choices=("legacy", "aes"), default="legacy")
    parser.add_argument("--encrypt", action="store_true",
                        help="encrypt requests and ask for encrypted notifications")
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="then print notifications; a downlink ends at its final result")
    sub = parser.add_subparsers(dest="command", required=True)

    def downlink(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("serial", metavar="SERIAL")
        p.add_argument("--ttl", type=int, default=ops.DEFAULT_TTL, help="queue lifetime (s)")
        p.add_argument("--biz-seq", help="your correlation key (AD-14)")
        return p

    p = downlink("send-data", "transparent data to a terminal")
    p.add_argument("data", type=_hex, metavar="HEX")
    p.add_argument("--no-ack", action="store_true", help="no NotifyResult on success")
    p = downlink("send-cmd", "a transparent command to a terminal")
    p.add_argument("data", type=_hex, metavar="HEX")
    p.add_argument("--fixed", type=_hex, default=b"", metavar="HEX")
    p.add_argument("--no-ack", action="store_true")
    p = sub.add_parser("get-config", help="read terminal parameters")
    p.add_argument("serial", metavar="SERIAL")
    p.add_argument("tags", type=_tag, nargs="+", metavar="TAG")
    p.add_argument("--sync", action="store_true", help="wait for the values (AD-13)")
    p = downlink("set-config", "write terminal parameters")
    p.add_argument("items", type=_item, nargs="+", metavar="TAG=HEX")
    p = downlink("remote-ctrl", "a remote-control command")
    p.add_argument("code", type=lambda text: int(text, 0), metavar="CODE")
    p = sub.add_parser("status", help="terminal states")
    p.add_argument("serials", nargs="+", metavar="SERIAL")
    p = sub.add_parser("info", help="one terminal's information")
    p.add_argument("serial", metavar="SERIAL")
    p = sub.add_parser("message", help="the state of a msgId")
    p.add_argument("msg_id", type=int, metavar="MSGID")
    sub.add_parser("list", help="your terminals")
    p = sub.add_parser("watch", help="print notifications until --wait runs out (default 60 s)")
    return parser


def emit(payload: object) -> None:
    print(json.dumps(to_json(payload)), flush=True)


async def run(reactor: Any, args: argparse.Namespace) -> int:
    request = build_request(args)
    final: defer.Deferred[None] = defer.Deferred()
    msg_id: list[int | None] = [None]

    def notified(payload: object) -> None:
        emit(payload)
        ours = isinstance(payload, ops.NotifyResult) and payload.msg_id == msg_id[0]
        if ours and not final.called:
            final.callback(None)

    creds = AppCredentials(args.app_id, args.password, args.base_key, args.cipher)
    try:
        client = await app_client.connect(reactor, args.host, args.port, creds,
                                          on_notification=notified, encrypt=args.encrypt,
                                          on_base_key=emit)  # store it for later logins
    except (app_client.LoginFailed, OSError) as exc:
        print(f"m2mgw-app: login failed: {exc}", file=sys.stderr)
        return 1
    status = 0
    if request is not None:
        try:
            response = await client.call(request)
        except app_client.RequestFailed as exc:
            print(f"m2mgw-app: {exc}", file=sys.stderr)
            return 1
        emit(response)
        msg_id[0] = getattr(response, "msg_id", None)
        status = 0 if response.result_code in (0, 5) else 1
    wait = args.wait or (60.0 if request is None else 0.0)
    if wait:
        waited = final if msg_id[0] is not None else defer.Deferred()
        waited.addTimeout(wait, reactor).addErrback(lambda f: f.trap(defer.TimeoutError))
        await waited
    await client.logout()
    return status


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``m2mgw-app``."""
    args = make_parser().parse_args(argv)
    outcome: list[int] = []

    async def react(reactor: Any) -> None:
        outcome.append(await run(reactor, args))

    try:
        task.react(lambda reactor: defer.ensureDeferred(react(reactor)))
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            return int(exit_.code) if isinstance(exit_.code, int) else 1
    except KeyboardInterrupt:
        return 130
    return outcome[0] if outcome else 1


if __name__ == "__main__":
    sys.exit(main())

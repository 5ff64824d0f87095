"""The subcommands: each ``cmd_*`` runs one, given the context and its parsed options."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from m2mgw.app import provision
from m2mgw.config import sample_config
from m2mgw.core import requests as build
from m2mgw.core.registry.sqlite import SqliteRegistry
from m2mgw.protocol import tags
from m2mgw.protocol.constants import Command, result_label
from m2mgw.tools.cli._context import Context
from m2mgw.tools.cli._direct import find_terminal
from m2mgw.tools.cli._errors import CliError
from m2mgw.tools.cli._output import print_record, show_page
from m2mgw.web import views

POLL_INTERVAL = 0.5
FINAL_STATES = frozenset({"succeeded", "failed", "expired", "cancelled"})
LIST_COLUMNS = ("serial", "imei", "imsi", "msisdn", "state", "bearer", "last_seen")
REQUEST_COLUMNS = ("id", "serial", "command", "state", "outcome", "created_at")
APP_COLUMNS = ("app_id", "ec_code", "cipher", "callback_url", "terminals")
ALARM_COLUMNS = ("id", "time", "serial", "code", "type", "status", "cleared_code")
SMS_COLUMNS = ("id", "created_at", "msisdn", "serial", "command", "state", "parts_sent",
               "attempts", "error")
NOTIFICATION_COLUMNS = ("id", "app_id", "kind", "delivery", "attempts", "next_attempt",
                        "created_at")
MESSAGE_COLUMNS = ("id", "time", "direction", "bearer", "command", "sequence_id", "event",
                   "detail")

Query = dict[str, Any]


def _query(args: argparse.Namespace, **filters: Any) -> Query:
    """A listing's query, as the admin API takes it (views.link leaves out the unset)."""
    paging = {name: getattr(args, name, None) for name in ("limit", "offset", "before")}
    return {**paging, "show_secrets": args.show_secrets, **filters}


def _asking(args: argparse.Namespace, path: str) -> str:
    """``path``, asking the API for the secrets when ``--show-secrets`` is given."""
    return views.link(path, {"show_secrets": args.show_secrets})


def _listing(
    ctx: Context,
    args: argparse.Namespace,
    path: str,
    offline: Callable[[SqliteRegistry, Query], Any],
    query: Query,
) -> views.Page:
    """A page of a listing: through the running gateway, else from the file."""
    page: views.Page = ctx.either("GET", views.link(path, query), lambda r: offline(r, query))
    return page


def cmd_sample_config(ctx: None, args: argparse.Namespace) -> int:
    sys.stdout.write(sample_config())
    return 0


def cmd_provision(ctx: Context, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {
        name: value
        for name, value in (
            ("imei", args.imei),
            ("imsi", args.imsi),
            ("msisdn", args.msisdn),
            ("cipher", args.cipher),
            ("serial", args.serial),
            ("uplink_password", args.uplink_password),
            ("downlink_password", args.downlink_password),
            ("base_key", args.base_key),
            ("apps", args.app),
            ("default_app", args.default_app),
            ("compat", args.compat),
        )
        if value is not None
    }
    if args.serial and not args.imsi:
        raise CliError(2, "--serial needs --imsi: a pre-registered terminal is bound to its SIM")
    if args.serial and not any(params.get(name) for name in build.CREDENTIAL_FIELDS):
        params.update(build.generate_credentials(args.cipher or "none"))
    expiry = build.credential_expiry(time.time(), ctx.config.protocol.credential_ttl)
    try:  # checked here too, so that a typo creates no database file
        terminal = build.terminal_from_json(params, expiry=expiry)
    except build.RequestError as exc:
        raise CliError(2, str(exc)) from None

    def add(registry: SqliteRegistry) -> Any:
        default = ctx.config.protocol.default_compat
        return registry.add(terminal).addCallback(views.describe_provisioned, default)

    record = ctx.either("POST", _asking(args, "/terminals"), add, body=params, write=True)
    print_record(record, args)
    return 0


def cmd_app_provision(ctx: Context, args: argparse.Namespace) -> int:
    """Provision an application (application spec 7.1) and bind its terminals."""
    params: dict[str, Any] = {
        name: value
        for name, value in (
            ("app_id", args.app_id),
            ("password", args.password),
            ("base_key", args.base_key),
            ("ec_code", args.ec_code),
            ("callback_url", args.callback_url),
            ("terminals", args.terminal),
            ("cipher", args.cipher),
            ("next_base_key", args.next_base_key),
            ("next_base_key_from", args.next_base_key_from),
        )
        if value is not None
    }
    record = ctx.either(
        "POST",
        _asking(args, "/apps"),
        lambda registry: provision.provision(registry, params),
        body=params,
        write=True,
    )
    print_record(record, args)
    return 0


def cmd_app_rotate_key(ctx: Context, args: argparse.Namespace) -> int:
    """Schedule an application's next Base Key (application spec 7.2 step 3); a running
    gateway announces it at once on the application's long connection (D-344)."""
    params: dict[str, Any] = {"next_base_key_from": args.next_base_key_from}
    if args.next_base_key is not None:
        params["next_base_key"] = args.next_base_key
    record = ctx.either(
        "POST",
        _asking(args, f"/apps/{quote(args.app_id, safe='')}/base-key"),
        lambda registry: provision.schedule_rotation(registry, args.app_id, params, time.time()),
        body=params,
        write=True,
    )
    print_record(record, args)
    return 0


def cmd_apps(ctx: Context, args: argparse.Namespace) -> int:
    page = _listing(ctx, args, "/apps", views.list_apps, _query(args))
    return show_page(page, args, APP_COLUMNS,
                      lambda app: {**app, "terminals": ",".join(app["terminals"])})


def cmd_terminals(ctx: Context, args: argparse.Namespace) -> int:
    query = _query(args, search=args.search, state=args.state, bearer=args.bearer)

    def listing(registry: SqliteRegistry, query: Query) -> views.Page:
        return views.list_terminals(registry.terminals(), query, lambda t: views.describe_terminal(
            t, default_compat=ctx.config.protocol.default_compat
        ))

    return show_page(_listing(ctx, args, "/terminals", listing, query), args, LIST_COLUMNS)


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:

    def show(registry: SqliteRegistry) -> dict[str, Any]:
        terminal = find_terminal(registry, args.terminal)
        serial = terminal.serial or ""
        view = views.describe_terminal(
            terminal, detail=True, default_compat=ctx.config.protocol.default_compat
        )
        view["config"] = views.describe_config(registry.config_values(serial))
        view["queue"] = [views.describe_request(r) for r in registry.queued(serial)]
        return view

    path = _asking(args, f"/terminals/{quote(args.terminal, safe='')}")
    print_record(ctx.either("GET", path, show), args)
    return 0


def cmd_requests(ctx: Context, args: argparse.Namespace) -> int:
    query = _query(args, serial=args.serial, state=args.state)
    page = _listing(ctx, args, "/requests", views.list_requests, query)
    return show_page(page, args, REQUEST_COLUMNS)


def cmd_alarms(ctx: Context, args: argparse.Namespace) -> int:
    query = _query(args, serial=args.serial, code=args.code, status=args.status,
                   active=args.active)
    return show_page(_listing(ctx, args, "/alarms", views.list_alarms, query), args,
                      ALARM_COLUMNS)


def cmd_outbox(ctx: Context, args: argparse.Namespace) -> int:
    query = _query(args, state=args.state, msisdn=args.msisdn)
    return show_page(_listing(ctx, args, "/sms/outbox", views.list_sms, query), args,
                      SMS_COLUMNS)


def cmd_notifications(ctx: Context, args: argparse.Namespace) -> int:
    query = _query(args, app=args.app, state=args.state)

    def listing(registry: SqliteRegistry, query: Query) -> views.Page:
        return views.list_notifications(registry, query, time.time())

    return show_page(_listing(ctx, args, "/notifications", listing, query), args,
                      NOTIFICATION_COLUMNS)


def cmd_messages(ctx: Context, args: argparse.Namespace) -> int:
    query = _query(args, serial=args.serial, direction=args.direction, event=args.event)
    return show_page(_listing(ctx, args, "/messages", views.list_messages, query), args,
                      MESSAGE_COLUMNS)


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    stats = ctx.either("GET", "/stats", lambda r: views.registry_stats(r, time.time()))
    if args.json:
        print_record(stats, args)
    else:
        print("\n".join(views.status_lines(stats)))
    return 0


def cmd_send(ctx: Context, args: argparse.Namespace) -> int:
    body = send_body(args)
    api = ctx.require_live()
    serial = quote(args.serial, safe="")
    answer = api.call("POST", _asking(args, f"/terminals/{serial}/requests"), body)
    if args.wait is None or "id" not in answer:
        print_record(answer, args)
        return 0
    deadline = time.monotonic() + args.wait
    while answer["state"] not in FINAL_STATES and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        answer = api.call("GET", _asking(args, f"/requests/{answer['id']}"))
    print_record(answer, args)
    if answer["state"] not in FINAL_STATES:
        raise CliError(1, f"request {answer['id']} still {answer['state']} after {args.wait:g} s")
    if answer["state"] != "succeeded":
        result, command = answer.get("result"), Command.__members__.get(answer["command"])
        named = "" if result is None or command is None else (
            f", {command.name}_ACK {result_label(command, result)}")  # fmt: skip
        raise CliError(1, f"request {answer['id']} {answer['state']}: {answer['outcome']}{named}")
    return 0


def send_body(args: argparse.Namespace) -> dict[str, Any]:
    """The API request body from the ``send`` options; only the options given."""
    body: dict[str, Any] = {"command": args.command.upper()}
    if args.tag:
        body["tags"] = [_tag_arg(t) for t in args.tag]
    if args.set:
        body["values"] = dict(_setting(item) for item in args.set)
    if args.param:
        body["params"] = [
            {"tag": _tag_arg(tag), "hex": value}
            for tag, value in (_pair(p, "--param") for p in args.param)
        ]
    if args.file is not None:
        body["path"] = os.path.abspath(args.file)  # the gateway's working directory differs
    options = {
        "code": args.code,
        "op": args.op,
        "reason": args.reason,
        "version": args.version,
        "data": args.data,
        "fixed": args.fixed,
        "source_ec": args.source_ec,
        "ttl": args.ttl,
    }
    body.update({name: value for name, value in options.items() if value is not None})
    if args.force:
        body["force"] = True
    return body


def _tag_arg(text: str) -> str:
    """Tags as the API reads them: decimal digits become ``0xNNNN`` (JSON keys are text)."""
    return f"0x{int(text):04X}" if text.isdigit() else text


def _pair(item: str, option: str) -> tuple[str, str]:
    tag, sep, value = item.partition("=")
    if not sep or not tag:
        raise CliError(2, f"{option} takes TAG=VALUE, got {item!r}")
    return tag, value


def _setting(item: str) -> tuple[str, Any]:
    """``--set TAG=VALUE``: typed by the tag's registry type; ``hex:...`` is raw bytes."""
    key, text = _pair(item, "--set")
    key = _tag_arg(key)
    if text.lower().startswith("hex:"):
        return key, {"hex": text[4:]}
    try:
        spec = tags.TAGS.get(build.parse_tag(key))
        if spec is None or spec.kind in (tags.Kind.BYTES, tags.Kind.RECORDS):
            return key, {"hex": text}
        if spec.kind in tags.INTEGER_KINDS:
            return key, int(text, 0)
        if spec.kind in (tags.Kind.U16_LIST, tags.Kind.STRUCT):
            return key, [int(v, 0) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise CliError(2, f"--set {item!r}: {exc}") from None
    return key, text


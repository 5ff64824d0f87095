"""``m2mgw``: the operator's command line for provisioning and inspecting terminals.

A gateway owns its registry: it holds the registry's lock, and its cache is the
truth. While one runs on the database the ini names, every command goes through that
gateway's admin API (TCP or a ``unix:`` socket), after checking that the API serves
this very registry (``GET /registry``: path and stored instance id). With no gateway
on the file, ``provision``, ``app-provision`` and the listings open the SQLite file
directly, so terminals can be provisioned before the first start; ``send`` needs the
running gateway. A gateway whose admin API is out of reach is never written under;
listings then read the file read-only. The API is called with blocking
``http.client``: this is a short-lived command and needs no reactor except for the
direct database path.

Exit status: 0 success, 1 runtime failure (gateway not running, request refused or
failed), 2 usage or configuration error; the reason is one line on stderr.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn
from urllib.parse import parse_qs, quote, urlsplit

from twisted.internet import task
from twisted.internet.defer import ensureDeferred, maybeDeferred

import m2mgw
from m2mgw.app import provision
from m2mgw.config import (
    CONFIG_ENV,
    SYSTEM_CONFIG,
    ConfigError,
    GatewayConfig,
    config_path,
    connect_address,
    endpoint_parts,
    load_config,
    sample_config,
)
from m2mgw.core import requests as build
from m2mgw.core.model import RequestState
from m2mgw.core.registry import RegistryError
from m2mgw.core.registry.sqlite import SqliteRegistry, lock_holder, stored_instance_id
from m2mgw.protocol import compat, tags
from m2mgw.protocol.constants import Command, result_label
from m2mgw.web import auth, views

API_TIMEOUT = 10.0
PROBE_TIMEOUT = 3.0
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
REQUEST_STATES = tuple(s.value for s in RequestState)


class CliError(Exception):
    """Ends the command: ``code`` is the exit status, the message goes to stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """Usage errors as a one-line CliError instead of argparse's usage dump."""

    def error(self, message: str) -> NoReturn:
        raise CliError(2, f"{message} (see {self.prog} --help)")


# --- the admin API -----------------------------------------------------------------------


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a ``unix:`` admin socket (urllib speaks TCP only)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AdminClient:
    """Blocking JSON calls to the admin API: a short-lived command needs no reactor.

    Each call carries the first token of the gateway's token file (D-190), read when
    the first call is made, so commands that never reach the API never need the file.
    """

    def __init__(
        self,
        where: str,
        connect: Callable[[float], http.client.HTTPConnection],
        tokens_file: str | None = None,
    ) -> None:
        self.where = where
        self._connect = connect
        self.tokens_file = tokens_file
        self._token: str | None = None

    def token(self) -> str | None:
        if self._token is None and self.tokens_file is not None:
            try:
                self._token = auth.first_token(self.tokens_file)
            except (OSError, UnicodeDecodeError) as exc:
                raise CliError(1, f"cannot read the admin token file {self.tokens_file}: "
                               f"{auth.error_text(exc)}") from None
        return self._token

    def call(
        self, method: str, path: str, body: Any = None, *, timeout: float = API_TIMEOUT
    ) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"content-type": "application/json", "accept": "application/json"}
        token = self.token()
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        connection = self._connect(timeout)
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except (ConnectionRefusedError, FileNotFoundError):
            raise _Unreachable(self.where) from None
        except (OSError, http.client.HTTPException) as exc:
            raise CliError(1, f"admin API at {self.where} failed: {exc}") from None
        finally:
            connection.close()
        if response.status == 401:
            raise _Unauthorised(self.where, self.tokens_file if token else None)
        if response.status >= 400:
            raise _Refused(_api_error(payload, response.status))
        try:
            return json.loads(payload)
        except ValueError:
            raise CliError(1, f"admin API at {self.where} answered no JSON") from None


def admin_client(config: GatewayConfig) -> AdminClient | None:
    """The admin API that ``[admin] listen`` names; None when the CLI cannot reach one
    (``none``, or a ``systemd:`` socket whose address only systemd knows)."""
    listen = config.admin.listen
    if listen is None:
        return None
    tokens = os.path.abspath(config.admin_tokens_file)
    kind, args, kwargs = endpoint_parts(listen)
    if kind == "unix":
        path = os.path.abspath(args[0] if args else kwargs.get("address", ""))
        return AdminClient(
            f"unix:{path}", lambda timeout: _UnixConnection(path, timeout), tokens
        )
    address = connect_address(listen)
    if address is None:
        return None
    host, port = address
    scheme, connection = (
        ("https", http.client.HTTPSConnection) if kind == "ssl"
        else ("http", http.client.HTTPConnection)
    )
    shown = f"[{host}]" if ":" in host else host
    return AdminClient(
        f"{scheme}://{shown}:{port}",
        lambda timeout: connection(host, port, timeout=timeout),
        tokens,
    )


class _Unreachable(CliError):
    def __init__(self, where: str) -> None:
        super().__init__(1, f"gateway not running (admin API at {where} unreachable)")


class _Unauthorised(CliError):
    """The admin API refused our token (or its absence: ``tokens_file`` None)."""

    def __init__(self, where: str, tokens_file: str | None) -> None:
        what = f"the token of {tokens_file}" if tokens_file else "to answer without a token"
        super().__init__(1, f"the admin API at {where} refused {what}")


class _Refused(CliError):
    """The gateway answered with an error status; ``reason`` is its one-line error."""

    def __init__(self, reason: str) -> None:
        super().__init__(1, f"gateway refused: {reason}")
        self.reason = reason


def _api_error(payload: bytes, status: int) -> str:
    try:
        return str(json.loads(payload)["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}"


# --- the direct database path ------------------------------------------------------------


def with_registry(
    config: GatewayConfig,
    action: Callable[[SqliteRegistry], Any],
    *,
    create: bool,
    read_only: bool = False,
) -> Any:
    """Run ``action`` on the opened SQLite registry: read-write (and locked) when no
    gateway runs on it, ``read_only`` beside a gateway whose admin API is out of reach."""
    path = config.registry.database
    if not create and not os.path.exists(path):
        raise CliError(1, f"{path}: no such database, and the gateway is not running")
    outcome: dict[str, Any] = {}

    async def run(reactor: Any) -> None:
        registry = SqliteRegistry(
            path, reactor, read_only=read_only, master_key_file=config.registry.master_key_path
        )
        try:
            await registry.open()
            try:
                outcome["value"] = await maybeDeferred(action, registry)
            finally:
                await registry.close()
        except Exception as exc:  # reported below, after the reactor stopped
            outcome["error"] = exc

    try:
        task.react(lambda reactor: ensureDeferred(run(reactor)))
    except SystemExit:
        pass
    error = outcome.get("error")
    if isinstance(error, CliError):
        raise error
    if isinstance(error, build.RequestError):
        raise CliError(2, str(error))
    if isinstance(error, RegistryError | OSError):
        raise CliError(1, str(error))
    if isinstance(error, LookupError) and not isinstance(error, KeyError | IndexError):
        raise CliError(1, str(error))  # an unknown record, as the admin API's 404
    if error is not None:
        raise CliError(1, f"{type(error).__name__}: {error}")
    return outcome.get("value")


def _find(registry: SqliteRegistry, key: str) -> Any:
    terminal = registry.get(key) or registry.by_imei(key)
    if terminal is None:
        raise CliError(1, f"unknown terminal {key}")
    return terminal


# --- commands ------------------------------------------------------------------------


class Context:
    """The loaded configuration, and the way to its registry (D-04, D-172, D-173).

    The registry's lock says whether a gateway runs on the file the ini names. None
    does: the CLI opens the file itself (and holds the lock meanwhile). One does: the
    CLI goes through that gateway's admin API, once it checked that the API serves this
    very registry; when no API answers, it only reads, from the file, read-only.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.database = os.path.abspath(config.registry.database)
        self.api = admin_client(config)
        self._route: tuple[AdminClient | None, str | None] | None = None

    def either(
        self,
        method: str,
        path: str,
        offline: Callable[[SqliteRegistry], Any],
        *,
        body: Any = None,
        write: bool = False,
    ) -> Any:
        """Through the gateway running on the registry, else ``offline`` on the file
        (D-04: the running gateway's cache must see what the CLI changes)."""
        api, holder = self.route()
        if api is not None:
            return api.call(method, path, body)
        if holder is None:
            return with_registry(self.config, offline, create=write)
        if write:
            raise CliError(1, self._out_of_reach(holder))
        return with_registry(self.config, offline, create=False, read_only=True)

    def require_live(self) -> AdminClient:
        """The admin API of the gateway running on the registry (``send`` needs one)."""
        api, holder = self.route()
        if api is not None:
            return api
        if holder is not None:
            raise CliError(1, self._out_of_reach(holder))
        raise CliError(1, f"gateway not running (no m2mgw process has {self.database} open)")

    def route(self) -> tuple[AdminClient | None, str | None]:
        """(the checked admin API or None, the pid of the gateway on the registry or
        None when no gateway runs on it); looked up once."""
        if self._route is None:
            try:
                holder = lock_holder(self.database)
            except RegistryError as exc:
                raise CliError(1, str(exc)) from None
            api = None if holder is None or self.api is None else self._checked(self.api)
            self._route = (api, holder)
        return self._route

    def _checked(self, api: AdminClient) -> AdminClient | None:
        """``api`` if it serves the registry the ini names; None if nothing answers."""
        try:
            served = api.call("GET", "/registry", timeout=PROBE_TIMEOUT)
        except _Unreachable:
            return None
        except _Unauthorised as exc:
            raise CliError(
                1, f"{exc}: it is not the gateway on {self.database}, or it reads another "
                f"[admin] tokens_file than {self.config.source} names"
            ) from None
        except _Refused as exc:
            raise CliError(
                1, f"the admin API at {api.where} does not say which registry it serves "
                f"({exc.reason}); cannot check that it serves {self.database}"
            ) from None
        served = served if isinstance(served, dict) else {}
        path, instance = served.get("path"), served.get("instance_id")
        ours = stored_instance_id(self.database)
        if instance != ours or _same_file(path, self.database) is False:
            raise CliError(
                1, f"the admin API at {api.where} serves registry {path} (instance "
                f"{instance}), not {self.database} (instance {ours}) that "
                f"{self.config.source} names"
            )
        return api

    def _out_of_reach(self, pid: str) -> str:
        listen = self.config.admin.listen
        where = f"at {self.api.where}" if self.api else f"([admin] listen = {listen or 'none'})"
        fix = "enable" if listen is None else "fix"
        return (
            f"a gateway (pid {pid}) runs on {self.database} but its admin API is not "
            f"reachable {where}; stop it or {fix} [admin] listen in {self.config.source}"
        )


def _same_file(served: Any, database: str) -> bool | None:
    """Whether the gateway's path is our file; None when that path is not visible here."""
    try:
        return isinstance(served, str) and os.path.samefile(served, database)
    except OSError:
        return None


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
        return registry.add(terminal).addCallback(build.describe_provisioned, default)

    record = ctx.either("POST", _asking(args, "/terminals"), add, body=params, write=True)
    _print(record, args)
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
    _print(record, args)
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
    _print(record, args)
    return 0


def cmd_apps(ctx: Context, args: argparse.Namespace) -> int:
    page = _listing(ctx, args, "/apps", views.list_apps, _query(args))
    return _show_page(page, args, APP_COLUMNS,
                      lambda app: {**app, "terminals": ",".join(app["terminals"])})


def cmd_terminals(ctx: Context, args: argparse.Namespace) -> int:
    query = _query(args, search=args.search, state=args.state, bearer=args.bearer)

    def listing(registry: SqliteRegistry, query: Query) -> views.Page:
        return views.list_terminals(registry.terminals(), query, lambda t: build.describe_terminal(
            t, default_compat=ctx.config.protocol.default_compat
        ))

    return _show_page(_listing(ctx, args, "/terminals", listing, query), args, LIST_COLUMNS)


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:

    def show(registry: SqliteRegistry) -> dict[str, Any]:
        terminal = _find(registry, args.terminal)
        serial = terminal.serial or ""
        view = build.describe_terminal(
            terminal, detail=True, default_compat=ctx.config.protocol.default_compat
        )
        view["config"] = build.describe_config(registry.config_values(serial))
        view["queue"] = [build.describe_request(r) for r in registry.queued(serial)]
        return view

    path = _asking(args, f"/terminals/{quote(args.terminal, safe='')}")
    _print(ctx.either("GET", path, show), args)
    return 0


def cmd_requests(ctx: Context, args: argparse.Namespace) -> int:
    query = _query(args, serial=args.serial, state=args.state)
    page = _listing(ctx, args, "/requests", views.list_requests, query)
    return _show_page(page, args, REQUEST_COLUMNS)


def cmd_alarms(ctx: Context, args: argparse.Namespace) -> int:
    query = _query(args, serial=args.serial, code=args.code, status=args.status,
                   active=args.active)
    return _show_page(_listing(ctx, args, "/alarms", views.list_alarms, query), args,
                      ALARM_COLUMNS)


def cmd_outbox(ctx: Context, args: argparse.Namespace) -> int:
    query = _query(args, state=args.state, msisdn=args.msisdn)
    return _show_page(_listing(ctx, args, "/sms/outbox", views.list_sms, query), args,
                      SMS_COLUMNS)


def cmd_notifications(ctx: Context, args: argparse.Namespace) -> int:
    query = _query(args, app=args.app, state=args.state)

    def listing(registry: SqliteRegistry, query: Query) -> views.Page:
        return views.list_notifications(registry, query, time.time())

    return _show_page(_listing(ctx, args, "/notifications", listing, query), args,
                      NOTIFICATION_COLUMNS)


def cmd_messages(ctx: Context, args: argparse.Namespace) -> int:
    query = _query(args, serial=args.serial, direction=args.direction, event=args.event)
    return _show_page(_listing(ctx, args, "/messages", views.list_messages, query), args,
                      MESSAGE_COLUMNS)


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    stats = ctx.either("GET", "/stats", lambda r: views.registry_stats(r, time.time()))
    if args.json:
        _print(stats, args)
    else:
        print("\n".join(views.status_lines(stats)))
    return 0


def cmd_send(ctx: Context, args: argparse.Namespace) -> int:
    body = send_body(args)
    api = ctx.require_live()
    serial = quote(args.serial, safe="")
    answer = api.call("POST", _asking(args, f"/terminals/{serial}/requests"), body)
    if args.wait is None or "id" not in answer:
        _print(answer, args)
        return 0
    deadline = time.monotonic() + args.wait
    while answer["state"] not in FINAL_STATES and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        answer = api.call("GET", _asking(args, f"/requests/{answer['id']}"))
    _print(answer, args)
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


# --- output -------------------------------------------------------------------------


Query = dict[str, Any]


def _output(p: argparse.ArgumentParser, what: str = "print the page as one JSON object "
            '({"items": [...], "total": N, "next": ...})') -> None:
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


def _show_page(
    page: views.Page,
    args: argparse.Namespace,
    columns: Sequence[str],
    row: Callable[[dict[str, Any]], dict[str, Any]] = dict,
) -> int:
    """The page as a table of ``row(item)`` (or JSON); where the next page starts goes
    to stderr."""
    if args.json:
        _print(page, args)
        return 0
    _table([row(item) for item in _shown(page["items"], args)], columns)
    following = page.get("next")
    if following:
        options = parse_qs(urlsplit(following).query)
        start = (f"--before {options['before'][0]}" if "before" in options
                 else f"--offset {options['offset'][0]}")
        total = page.get("total")
        of = f" of {total}" if total is not None else ""
        print(f"m2mgw: {len(page['items'])}{of} shown; more with {start}", file=sys.stderr)
    return 0


def _shown(value: Any, args: argparse.Namespace) -> Any:
    """What may be printed: secrets masked unless ``--show-secrets`` (D-193)."""
    return value if getattr(args, "show_secrets", False) else views.redact(value)


def _print(value: Any, args: argparse.Namespace) -> None:
    value = _shown(value, args)
    print(json.dumps(value) if args.json else json.dumps(value, indent=2))


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    for line in [[c.upper() for c in columns], *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    return str(value)


# --- parser -------------------------------------------------------------------------


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
    _output(p, "print the record as one JSON object")
    p.set_defaults(run=cmd_provision)

    p = sub.add_parser("terminals", help="list terminals")
    p.add_argument("--search", metavar="TEXT",
                   help="only terminals whose serial, IMEI, IMSI, MSISDN or address has TEXT")
    p.add_argument("--state", action="append", choices=sorted(views.TERMINAL_STATES),
                   help="only terminals in this state; online = logged in (repeatable)")
    p.add_argument("--bearer", action="append", choices=views.BEARERS,
                   help="only terminals last seen on this bearer (repeatable)")
    _paging(p, cursor=False)
    _output(p)
    p.set_defaults(run=cmd_terminals)

    p = sub.add_parser("show", help="one terminal in detail")
    p.add_argument("terminal", metavar="SERIAL", help="serial (or IMEI if unregistered)")
    _output(p, "print the record as one JSON object")
    p.set_defaults(run=cmd_show)

    p = sub.add_parser("requests", help="request history, newest first")
    p.add_argument("serial", nargs="?", metavar="SERIAL", help="only this terminal's requests")
    p.add_argument("--state", action="append", choices=REQUEST_STATES,
                   help="only requests in this state (repeatable)")
    _paging(p, cursor=True)
    _output(p)
    p.set_defaults(run=cmd_requests)

    p = sub.add_parser("alarms", help="alarm history, newest first (--active: raised now)")
    p.add_argument("serial", nargs="?", metavar="SERIAL", help="only this terminal's alarms")
    p.add_argument("--code", type=lambda v: int(v, 0), help="only this alarm code (0x0001)")
    p.add_argument("--status", type=int, choices=(0, 1), help="only raised (1) or cleared (0)")
    p.add_argument("--active", action="store_true", help="the alarms raised now instead")
    _paging(p, cursor=True)
    _output(p)
    p.set_defaults(run=cmd_alarms)

    p = sub.add_parser("outbox", help="the SMS outbox, newest first")
    p.add_argument("--state", action="append", choices=views.SMS_STATES,
                   help="only messages in this state (repeatable)")
    p.add_argument("--msisdn", help="only messages to this number")
    _paging(p, cursor=True)
    _output(p)
    p.set_defaults(run=cmd_outbox)

    p = sub.add_parser("notifications",
                       help="undelivered application notifications and their delivery state")
    p.add_argument("--app", metavar="APP_ID", help="only this application's")
    p.add_argument("--state", action="append", choices=views.NOTIFICATION_STATES,
                   help="only these: pending, retrying (an offer failed), leased "
                   "(fetched, not acknowledged) or kept (retries used up) (repeatable)")
    _paging(p, cursor=False)
    _output(p)
    p.set_defaults(run=cmd_notifications)

    p = sub.add_parser("messages", help="a terminal's message log, newest first")
    p.add_argument("serial", metavar="SERIAL", help="the terminal")
    p.add_argument("--direction", choices=("in", "out"), help="only received or sent")
    p.add_argument("--event", help="only this event (login, uplink-data, ...)")
    _paging(p, cursor=True)
    _output(p)
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
    _output(p, "print the request as one JSON object")
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
    _output(p, "print the record as one JSON object")
    p.set_defaults(run=cmd_app_provision)

    p = sub.add_parser("app-rotate-key", help="schedule an application's next Base Key")
    p.add_argument("--app-id", required=True, help="the provisioned application")
    p.add_argument("--next-base-key",
                   help="the Base Key that follows (default: generated; see --show-secrets)")
    p.add_argument("--next-base-key-from", type=int, required=True, metavar="TIME",
                   help="UNIX time from which logins use it; live sessions are told at once")
    _output(p, "print the record as one JSON object")
    p.set_defaults(run=cmd_app_rotate_key)

    p = sub.add_parser("apps", help="list applications")
    _paging(p, cursor=False)
    _output(p)
    p.set_defaults(run=cmd_apps)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``m2mgw``."""
    try:
        args = make_parser().parse_args(argv)
        if not getattr(args, "needs_config", True):
            return int(args.run(None, args))
        try:
            config = load_config(config_path(args.config))
        except ConfigError as exc:
            raise CliError(2, str(exc)) from None
        return int(args.run(Context(config), args))
    except CliError as exc:
        print(f"m2mgw: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

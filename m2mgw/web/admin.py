"""The admin JSON API: provisioning, inspection and platform requests, behind tokens.

Every answer is ``application/json``; errors are ``{"error": "..."}`` with a status
that tells the operator what to fix (400 bad input, 404 unknown, 409 conflict with
the current state, 500 our fault, logged, never a traceback). Handlers return
``(status, object)`` or a Deferred of it, so a request is answered only after the
registry committed what it changed (a 202 means the request is durably queued).

Every route needs an admin token (:mod:`m2mgw.web.auth`, D-190) but the few in
:data:`OPEN`: a request without one is answered 401 and nothing else, whatever its
path, so not even the routes that exist are told. Before that, whatever the route, a
Host header that does not name this listener is answered 421 (DNS rebinding) and a
body that is not ``application/json`` 415 (a cross-origin form or ``text/plain``
POST), D-318, D-319.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from m2mgw.app import provision
from m2mgw.core import requests as build
from m2mgw.core.model import RequestState, Terminal, TerminalState
from m2mgw.core.registry import RegistryError
from m2mgw.metrics import MetricsResource
from m2mgw.protocol.compat import ProfileRefused
from m2mgw.protocol.constants import Command, LogoutReason, SecurityOp
from m2mgw.web import auth, openapi, views
from m2mgw.web.events import EventStream
from m2mgw.web.ui import ConsoleResource

if TYPE_CHECKING:
    from m2mgw.service import GatewayService

log = Logger()

MAX_BODY = 64 * 1024
MAX_TTL = float(0xFFFFFFFF)

Result = tuple[int, Any]

#: Routes served without a token, with the methods (None: all): liveness probes, the
#: console's static files (no data in them) and the console's log-in (D-191); and the
#: root, which sends browsers to the console but tells the rest nothing without one.
OPEN: dict[bytes, frozenset[bytes] | None] = {
    b"health": None,
    b"console": None,
    b"session": frozenset({b"POST"}),
    b"": frozenset({b"GET", b"HEAD"}),
}


class ApiError(Exception):
    """An error answer with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _error_of(exc: BaseException) -> tuple[int, str]:
    """Map the gateway's exception families to statuses; anything else is a 500."""
    if isinstance(exc, ApiError):
        return exc.status, exc.message
    if isinstance(exc, build.RequestError):
        return 400, str(exc)
    if isinstance(exc, LookupError) and not isinstance(exc, KeyError | IndexError):
        return 404, str(exc)
    if isinstance(exc, RegistryError | ProfileRefused):
        return 409, str(exc)
    return 500, "internal error (see the gateway log)"


def _encode(request: Request, status: int, body: Any) -> bytes:
    request.setResponseCode(status)
    if status == 204:
        return b""
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    if not _show_secrets(request):
        body = views.redact(body)
    return json.dumps(body).encode("utf-8") + b"\n"


def _show_secrets(request: Request) -> bool:
    """``?show_secrets=1``: the answer keeps passwords, keys and SECURITY_CONFIG bodies
    (D-193); without it every answer is redacted."""
    return _flag("show_secrets", _raw(request, "show_secrets")) or False


def _error(request: Request, exc: BaseException, failure: Failure | None = None) -> bytes:
    status, message = _error_of(exc)
    if status == 500:
        log.failure(
            "Admin API {method} {path} failed",
            failure or Failure(exc),
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("ascii", "replace"),
        )
    return _encode(request, status, {"error": message})


class _Json(Resource):
    """Dispatches ``do_<METHOD>`` handlers and renders their results as JSON.

    Sub-routes are declared, never hidden in code, so that :func:`route_table` (and
    the test that holds ``/openapi.json`` to it) sees every one: static children
    (``putChild``), ``routes`` made per request, and one ``item`` for any other path
    segment (``/terminals/<serial>``).
    """

    routes: ClassVar[Mapping[bytes, Callable[[Any], IResource]]] = {}
    #: (parameter name, factory(parent, segment)) of ``/<segment>`` below this resource.
    item: ClassVar[tuple[str, Callable[[Any, str], IResource]] | None] = None

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"":
            return self
        route = self.routes.get(path)
        if route is not None:
            return route(self)
        if self.item is not None:
            return self.item[1](self, path.decode("utf-8", "replace"))
        return _NotFound()

    def render(self, request: Request) -> bytes | int:
        method = request.method.decode("ascii", "replace")
        handler: Callable[[Request], Result | Deferred[Result] | int] | None = getattr(
            self, f"do_{'GET' if method == 'HEAD' else method}", None
        )
        if not methods_of(self):
            return _encode(request, 404, {"error": "no such resource"})
        if handler is None:
            allowed = sorted(name[3:] for name in dir(self) if name.startswith("do_"))
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
            return _encode(request, 405, {"error": f"method {method} not allowed here"})
        try:
            result = handler(request)
        except Exception as exc:
            return _error(request, exc)
        if isinstance(result, int):  # NOT_DONE_YET: the handler answers by itself (/events)
            return result
        if not isinstance(result, Deferred):
            return _encode(request, *result)
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def written(outcome: Result | Failure) -> None:
            if gone:
                log.info("Admin client went away before the answer to {path}",
                         path=request.path.decode("ascii", "replace"))
                return
            if isinstance(outcome, Failure):
                request.write(_error(request, outcome.value, outcome))
            else:
                request.write(_encode(request, *outcome))
            request.finish()

        result.addBoth(written).addErrback(
            lambda f: log.failure("Admin API could not answer", f)
        )
        return NOT_DONE_YET


def methods_of(resource: object) -> list[str]:
    """The HTTP methods a resource answers: its ``do_X`` (JSON) or ``render_X``; HEAD,
    which every resource answers like GET, is left out."""
    prefix = "do_" if isinstance(resource, _Json) else "render_"
    names = {n.removeprefix(prefix) for n in dir(resource) if n.startswith(prefix)}
    return sorted(n for n in names if n.isupper() and n != "HEAD")


class _NotFound(_Json):
    def render(self, request: Request) -> bytes:
        return _encode(request, 404, {"error": "no such resource"})


def _unauthorised(request: Request) -> Result:
    request.setHeader(b"www-authenticate", b'Bearer realm="m2mgw"')
    return 401, {"error": "authentication required"}


class _Refused(_Json):
    """One answer whatever the rest of the path, with no hint of what exists."""

    isLeaf = True

    def __init__(self, answer: Callable[[Request], Result]) -> None:
        super().__init__()
        self.answer = answer

    def render(self, request: Request) -> bytes:
        return _encode(request, *self.answer(request))


def _has_body(request: Request) -> bool:
    length = request.getHeader(b"content-length")
    chunked = request.getHeader(b"transfer-encoding") is not None
    return chunked or (length is not None and length.strip() not in (b"", b"0"))


def _is_json(request: Request) -> bool:
    kind = request.getHeader(b"content-type") or b""
    return kind.split(b";", 1)[0].strip().lower() == b"application/json"


class _Api(_Json):
    def __init__(self, gateway: GatewayService) -> None:
        super().__init__()
        self.gateway = gateway

    def now(self) -> float:
        return float(self.gateway.reactor.seconds())

    def terminal(self, key: str) -> Terminal:
        """A terminal by serial or, for terminals not yet registered, by IMEI."""
        registry = self.gateway.registry
        terminal = registry.get(key) or registry.by_imei(key)
        if terminal is None:
            raise ApiError(404, f"unknown terminal {key}")
        return terminal


class _Scoped(_Api):
    """A listing of the whole gateway, or of one terminal at ``/terminals/<key>/...``."""

    def __init__(self, gateway: GatewayService, key: str | None = None) -> None:
        super().__init__(gateway)
        self.key = key

    def scope(self) -> dict[str, str]:
        """The ``serial`` a terminal's listing is limited to; none for the gateway's."""
        if self.key is None:
            return {}
        terminal = self.terminal(self.key)
        if terminal.serial is None:
            raise ApiError(409, f"terminal IMEI {terminal.imei} has no serial yet (unregistered)")
        return {"serial": terminal.serial}


def _json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, at most MAX_BODY bytes."""
    assert request.content is not None
    data = request.content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise ApiError(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def _raw(request: Request, name: str) -> list[str]:
    """Query values of ``name`` as given (``search`` may hold commas)."""
    values = request.args.get(name.encode("ascii"), []) if request.args else []
    return [raw.decode("utf-8", "replace") for raw in values]


#: Parses the values of one query parameter (name, values) into its typed value.
Parse = Callable[[str, list[str]], Any]


def _text(name: str, values: list[str]) -> str | None:
    return values[-1].strip() or None


def _flag(name: str, values: list[str]) -> bool | None:
    if not values:
        return None
    if values[-1].lower() not in ("1", "true", "yes", "0", "false", "no", ""):
        raise ApiError(400, f"{name} must be 1 or 0, got {values[-1]!r}")
    return values[-1].lower() in ("1", "true", "yes")


def _integer(lo: int, hi: int) -> Parse:
    def parse(name: str, values: list[str]) -> int:
        try:
            value = int(values[-1], 0)
        except ValueError:
            value = lo - 1
        if not lo <= value <= hi:
            raise ApiError(400, f"{name} must be an integer {lo}-{hi}, got {values[-1]!r}")
        return value

    return parse


def _choices(known: Iterable[str]) -> Parse:
    """A comma list of known words (``state=queued,sent``), case-insensitive."""
    words = tuple(known)

    def parse(name: str, values: list[str]) -> list[str]:
        chosen = [v.strip().lower() for raw in values for v in raw.split(",") if v.strip()]
        bad = [v for v in chosen if v not in words]
        if bad:
            raise ApiError(400, f"unknown {name} {bad[0]!r}; one of {', '.join(words)}")
        return chosen

    return parse


def _params(request: Request, **filters: Parse) -> dict[str, Any]:
    """The paging (``limit``, ``offset``, ``before``) and ``filters`` of a listing, typed
    and checked; what was not given is left out (D-194)."""
    parsers: dict[str, Parse] = {
        "limit": _integer(1, views.MAX_LIMIT),
        "offset": _integer(0, 1 << 31),
        "before": _integer(1, 1 << 62),
        "show_secrets": _flag,
        **filters,
    }
    query = {}
    for name, parse in parsers.items():
        values = _raw(request, name)
        if values and (value := parse(name, values)) is not None:
            query[name] = value
    return query


def _path(request: Request) -> str:
    return request.path.decode("utf-8", "replace")


def _page(d: Deferred[views.Page]) -> Deferred[Result]:
    return d.addCallback(lambda page: (200, page))


_REQUEST_STATES = _choices(s.value for s in RequestState)


class AdminResource(_Api):
    """The API root: ``/health``, ``/terminals``, ``/requests``, ``/queue``."""

    def __init__(self, gateway: GatewayService) -> None:
        super().__init__(gateway)
        self.putChild(b"health", _Health(gateway))
        self.putChild(b"terminals", _Terminals(gateway))
        self.putChild(b"requests", _Requests(gateway))
        self.putChild(b"queue", _Queue(gateway))
        self.putChild(b"apps", _Apps(gateway))
        self.putChild(b"registry", _Registry(gateway))
        self.putChild(b"alarms", _Alarms(gateway))
        self.putChild(b"messages", _Messages(gateway))
        self.putChild(b"notifications", _Notifications(gateway))
        self.putChild(b"sms", _Sms(gateway))
        self.putChild(b"stats", _Stats(gateway))
        #: The ``/events`` stream; a child service of the gateway (stops with it).
        self.events = EventStream(gateway, lambda: views.gateway_stats(gateway))
        self.putChild(b"events", _Events(gateway, self.events))
        self.putChild(b"openapi.json", _OpenApi(gateway))
        self.putChild(b"metrics", MetricsResource(gateway.metrics))
        self.putChild(b"console", ConsoleResource())
        self.putChild(b"session", _Session(gateway))

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        """Every request passes here first: refuse a foreign Host (421), a body that is
        not JSON (415), then anything neither open nor authenticated (401)."""
        if not auth.host_allowed(request, self.gateway.config.admin.allowed_hosts):
            return _Refused(lambda _: (421, {
                "error": "the Host header does not name this admin listener (add the name "
                         "to [admin] allowed_hosts if it is yours)"}))
        if _has_body(request) and not _is_json(request):
            return _Refused(lambda _: (415, {"error": "request bodies must be application/json"}))
        methods = OPEN.get(path, frozenset())
        if not (methods is None or request.method in methods
                or self.gateway.admin_tokens.allows(request)):
            return _Refused(_unauthorised)
        return super().getChildWithDefault(path, request)

    def do_GET(self, request: Request) -> Result:
        """A browser is sent to the console; the list of endpoints needs a token."""
        if b"text/html" in (request.getHeader(b"accept") or b""):
            request.setHeader(b"location", b"/console/")
            return 302, {"location": "/console/"}
        if not self.gateway.admin_tokens.allows(request):
            return _unauthorised(request)
        return 200, {"endpoints": sorted(f"/{name.decode()}" for name in self.children)}


class _Stats(_Api):
    """The summary of the dashboard and ``m2mgw status`` (D-195)."""

    def do_GET(self, request: Request) -> Result:
        return 200, views.gateway_stats(self.gateway)


class _Events(_Api):
    """Server-Sent Events: stats, terminal and request changes (D-196)."""

    def __init__(self, gateway: GatewayService, stream: EventStream) -> None:
        super().__init__(gateway)
        self.stream = stream

    def do_GET(self, request: Request) -> int:  # type: ignore[override]
        return self.stream.attach(request)


class _OpenApi(_Api):
    """This API described in OpenAPI 3.1 (D-197)."""

    def do_GET(self, request: Request) -> Result:
        return 200, openapi.spec()


def route_table(root: IResource) -> dict[str, list[str]]:
    """Every route below ``root`` as an OpenAPI path template and the methods it answers:
    static children, declared ``routes`` and the ``item`` of each JSON resource. Other
    resources (the console's files, /metrics) are leaves."""
    table: dict[str, list[str]] = {}

    def walk(resource: IResource, path: str) -> None:
        methods = methods_of(resource)
        if methods:
            table[path or "/"] = methods
        if not isinstance(resource, _Json):
            return
        children: dict[bytes, IResource] = dict(resource.children)
        children.update((name, make(resource)) for name, make in resource.routes.items())
        for name, child in sorted(children.items()):
            walk(child, f"{path}/{name.decode()}")
        if resource.item is not None:
            name, make_item = resource.item
            walk(make_item(resource, f"{{{name}}}"), f"{path}/{{{name}}}")

    walk(root, "")
    return table


class _Session(_Api):
    """The console's log-in: ``POST`` a token to get it as an HttpOnly cookie."""

    def do_POST(self, request: Request) -> Result:
        token = _json_body(request).get("token")
        if not isinstance(token, str) or not self.gateway.admin_tokens.valid(token):
            return _unauthorised(request)
        self._cookie(request, token)
        return 204, None

    def do_DELETE(self, request: Request) -> Result:
        self._cookie(request, "", max_age="0")
        return 204, None

    @staticmethod
    def _cookie(request: Request, value: str, **options: Any) -> None:
        request.addCookie(
            auth.COOKIE.encode("ascii"), value.encode("utf-8"), path=b"/", httpOnly=True,
            secure=request.isSecure(), sameSite="strict", **options,
        )


class _Registry(_Api):
    """Which registry this gateway serves, so the CLI can check it reached the right one."""

    def do_GET(self, request: Request) -> Result:
        return 200, self.gateway.registry.identity().describe()


class _Health(_Api):
    """200 ``ok`` only when the gateway serves; else 503 with its problems (D-163)."""

    def do_GET(self, request: Request) -> Result:
        problems = self.gateway.problems()
        body: dict[str, Any] = {
            "status": "unavailable" if problems else "ok",
            "terminals": len(self.gateway.registry.terminals()),
            "sessions": len(self.gateway.engine.sessions),
        }
        if problems:
            body["problems"] = problems
        return (503 if problems else 200), body


class _Apps(_Api):
    """``GET`` lists applications (no secrets), ``POST`` provisions one (application 7.1)."""

    def do_GET(self, request: Request) -> Result:
        return 200, views.list_apps(self.gateway.registry, _params(request))

    item = ("app_id", lambda parent, key: _AppItem(parent.gateway, key))

    def do_POST(self, request: Request) -> Deferred[Result]:
        d = provision.provision(self.gateway.registry, _json_body(request))
        return d.addCallback(lambda view: (201, view))


class _AppItem(_Api):
    """``/apps/<app_id>``: the application's sub-resources."""

    routes: ClassVar[Mapping[bytes, Callable[[Any], IResource]]] = {
        b"base-key": lambda item: _AppBaseKey(item.gateway, item.app_id),
    }

    def __init__(self, gateway: GatewayService, app_id: str) -> None:
        super().__init__(gateway)
        self.app_id = app_id


class _AppBaseKey(_Api):
    """``POST`` sets the application's Base Key rotation (7.2 step 3), announced at once
    on its live long-connection sessions (D-344)."""

    def __init__(self, gateway: GatewayService, app_id: str) -> None:
        super().__init__(gateway)
        self.app_id = app_id

    def do_POST(self, request: Request) -> Deferred[Result]:
        gateway = self.gateway
        d = provision.schedule_rotation(
            gateway.registry, self.app_id, _json_body(request), self.now()
        )

        def stored(view: dict[str, Any]) -> Result:
            gateway.apps.base_key_scheduled(self.app_id)
            return 200, view

        return d.addCallback(stored)


class _Terminals(_Api):
    """``GET`` lists terminals (search, state, bearer; paged), ``POST`` provisions one."""

    item = ("serial", lambda parent, key: _TerminalItem(parent.gateway, key))

    def do_GET(self, request: Request) -> Result:
        query = _params(request, search=_text, state=_choices(views.TERMINAL_STATES),
                        bearer=_choices(views.BEARERS))
        default = self.gateway.config.protocol.default_compat
        return 200, views.list_terminals(
            self.gateway.registry.terminals(), query,
            lambda t: build.describe_terminal(t, default_compat=default),
        )

    def do_POST(self, request: Request) -> Deferred[Result]:
        params = _json_body(request)
        expiry = build.credential_expiry(
            self.now(), self.gateway.config.protocol.credential_ttl
        )
        terminal = build.terminal_from_json(params, expiry=expiry)
        d = self.gateway.registry.add(terminal)
        log.info(
            "Provisioned terminal IMEI {imei} serial {serial} ({state}) via admin API",
            imei=terminal.imei, serial=terminal.serial, state=terminal.state,
        )
        default = self.gateway.config.protocol.default_compat
        return d.addCallback(lambda t: (201, build.describe_provisioned(t, default)))


class _TerminalItem(_Api):
    """``/terminals/<serial or IMEI>``: details, removal, its requests, messages,
    alarms and refusals."""

    routes: ClassVar[Mapping[bytes, Callable[[Any], IResource]]] = {
        b"requests": lambda item: _TerminalRequests(item.gateway, item.key),
        b"messages": lambda item: _Messages(item.gateway, item.key),
        b"alarms": lambda item: _Alarms(item.gateway, item.key),
        b"refusals": lambda item: _Refusals(item.gateway, item.key),
    }

    def __init__(self, gateway: GatewayService, key: str) -> None:
        super().__init__(gateway)
        self.key = key

    def do_GET(self, request: Request) -> Result:
        gateway = self.gateway
        terminal = self.terminal(self.key)
        serial = terminal.serial or ""
        view = build.describe_terminal(
            terminal, detail=True, default_compat=gateway.config.protocol.default_compat
        )
        # What was refused from this terminal, by reason (issue #10: for the console).
        view["refusals"] = {str(r): n for r, n in gateway.engine.refusals.counts(serial).items()}
        view["config"] = build.describe_config(gateway.registry.config_values(serial))
        view["queue"] = [build.describe_request(r) for r in gateway.registry.queued(serial)]
        outstanding = gateway.router.outstanding(serial)
        view["outstanding"] = build.describe_request(outstanding) if outstanding else None
        session = gateway.engine.sessions.get(serial)
        view["session"] = None if session is None else {
            "timestamp": session.timestamp,
            "bearer": session.bearer.kind if session.bearer else None,
            "address": session.bearer.address if session.bearer else None,
            "encrypted": session.cipher is not None,
            "synced": session.synced,
            "protocol_version": f"0x{session.version:04X}",
            "heartbeat_interval": session.interval,
            "last_valid": session.last_valid,
        }
        return 200, view

    def do_DELETE(self, request: Request) -> Deferred[Result]:
        gateway = self.gateway
        terminal = self.terminal(self.key)
        if terminal.serial in gateway.engine.sessions:
            gateway.engine.end_session(
                terminal, LogoutReason.FORCED, TerminalState.LOGGED_OUT, self.now()
            )
        d = gateway.registry.remove(terminal.serial or terminal.imei)
        log.info("Removed terminal {serial} (IMEI {imei}) via admin API",
                 serial=terminal.serial, imei=terminal.imei)
        return d.addCallback(
            lambda _: (200, {"removed": {"serial": terminal.serial, "imei": terminal.imei}})
        )


class _TerminalRequests(_Scoped):
    """``POST`` queues a platform request; ``GET`` is the terminal's request history."""

    def do_GET(self, request: Request) -> Deferred[Result]:
        query = {**_params(request, state=_REQUEST_STATES), **self.scope()}
        return _page(views.list_requests(self.gateway.registry, query, _path(request)))

    def _serial(self) -> str:
        return self.scope()["serial"]

    def do_POST(self, request: Request) -> Result | Deferred[Result]:
        serial = self._serial()
        params = _json_body(request)
        command = str(params.pop("command", "") or "").upper()
        if not command:
            raise ApiError(400, "'command' is required")
        ttl = _ttl(params.pop("ttl", None))
        if command == "LOGOUT":
            return self._logout(serial, params)
        if command == "DOWNLOAD_INFO":
            return self._download(serial, params, ttl)
        terminal = self.terminal(serial)
        if (
            command == "SECURITY_CONFIG"
            and params.get("op") == SecurityOp.READ
            and terminal.cipher == "none"
        ):
            raise ApiError(
                400, "SECURITY_CONFIG op 1 answers in plaintext: only for encrypting terminals"
            )
        command_id, body = build.build(command, params)
        return self._submit(serial, command_id, body, ttl)

    def _submit(
        self, serial: str, command_id: int, body: bytes, ttl: float | None
    ) -> Deferred[Result]:
        d = self.gateway.router.submit(serial, command_id, body, origin="admin", ttl=ttl)
        return d.addCallback(lambda r: (202, build.describe_request(r)))

    def _logout(self, serial: str, params: Mapping[str, Any]) -> Result:
        """A platform LOGOUT (4.5) goes out at once, not through the queue."""
        if set(params) - {"reason"}:
            raise ApiError(400, "LOGOUT takes only 'reason'")
        reason = params.get("reason", LogoutReason.FORCED)
        if isinstance(reason, bool) or not isinstance(reason, int) or not 0 <= reason <= 0xFF:
            raise ApiError(400, f"LOGOUT reason must be an integer 0-255, got {reason!r}")
        engine = self.gateway.engine
        if serial not in engine.sessions:
            raise ApiError(409, f"terminal {serial} is not logged in")
        terminal = self.terminal(serial)
        sent = engine.logout(terminal, reason, self.now(), TerminalState.LOGGED_OUT)
        log.info("Platform LOGOUT of {serial} (reason {reason}) via admin API",
                 serial=serial, reason=reason)
        return 202, {"serial": serial, "command": "LOGOUT", "reason": reason, "sent": sent}

    def _download(
        self, serial: str, params: Mapping[str, Any], ttl: float | None
    ) -> Deferred[Result]:
        """Offer the file (copy, checksums, transaction), then queue its DOWNLOAD_INFO."""
        if set(params) - {"path", "version", "force"}:
            raise ApiError(400, "DOWNLOAD_INFO takes path, version and force")
        path, version = params.get("path"), params.get("version")
        force = params.get("force", False)
        if not isinstance(path, str) or not path or not isinstance(force, bool):
            raise ApiError(400, "DOWNLOAD_INFO needs 'path' (string) and boolean 'force'")
        config = self.gateway.config
        if config.http.listen is None:
            raise ApiError(409, "the HTTP file service is disabled ([http] listen = none)")
        files = self.gateway.files
        source = files.operator_file(path)  # under [http] files_dir only (D-320)
        # Before the file is copied: a terminal that cannot take one gets no offer (C9).
        self.gateway.engine.check_deliverable(self.terminal(serial), Command.DOWNLOAD_INFO, b"")

        def queue(tx: Any) -> Deferred[Result]:
            command_id, body = build.download_info(tx, config.http.public_url, force=force)
            d = self._submit(serial, command_id, body, ttl)
            return d.addCallback(
                lambda r: (r[0], {**r[1], "file": build.describe_file(tx, config.http.public_url)})
            )

        return files.offer(serial, source, version).addCallback(queue)


def _ttl(value: Any) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= MAX_TTL
    ):
        raise ApiError(400, f"ttl must be a number of seconds > 0, got {value!r}")
    return float(value)


class _Requests(_Api):
    """``/requests?serial=&state=`` history, newest first; ``/requests/<id>`` one."""

    item = ("id", lambda parent, key: _RequestItem(parent.gateway, key))

    def do_GET(self, request: Request) -> Deferred[Result]:
        query = _params(request, serial=_text, state=_REQUEST_STATES)
        return _page(views.list_requests(self.gateway.registry, query, _path(request)))


class _RequestItem(_Api):
    def __init__(self, gateway: GatewayService, key: str) -> None:
        super().__init__(gateway)
        self.key = key

    def do_GET(self, request: Request) -> Result:
        found = self.gateway.registry.request(int(self.key)) if self.key.isdigit() else None
        if found is None:
            raise ApiError(404, f"no active or recent request {self.key}")
        return 200, build.describe_request(found)


class _Queue(_Api):
    """All active (queued or sent) requests across terminals, oldest first."""

    def do_GET(self, request: Request) -> Result:
        return 200, views.list_queue(self.gateway.registry, _params(request), _path(request))


class _Alarms(_Scoped):
    """Alarm history (``active=1``: the alarms raised now), newest first."""

    def do_GET(self, request: Request) -> Deferred[Result]:
        query = {**_params(request, serial=_text, code=_integer(0, 0xFFFF),
                           status=_integer(0, 1), active=_flag), **self.scope()}
        return _page(views.list_alarms(self.gateway.registry, query, _path(request)))


class _Messages(_Scoped):
    """The message log, newest first."""

    def do_GET(self, request: Request) -> Deferred[Result]:
        query = {**_params(request, serial=_text, direction=_one_of("in", "out"),
                           event=_text), **self.scope()}
        return _page(views.list_messages(self.gateway.registry, query, _path(request)))


class _Refusals(_Scoped):
    """What the gateway refused from one terminal since start-up, by reason (D-153)."""

    def do_GET(self, request: Request) -> Result:
        serial = self.scope()["serial"]
        counts = self.gateway.engine.refusals.counts(serial)
        return 200, {"serial": serial, "total": sum(counts.values()),
                     "refusals": {str(reason): n for reason, n in sorted(counts.items())}}


class _Notifications(_Api):
    """Undelivered application notifications and where their delivery stands."""

    def do_GET(self, request: Request) -> Result:
        query = _params(request, app=_text, state=_choices(views.NOTIFICATION_STATES))
        if "app" in query and self.gateway.registry.application(query["app"]) is None:
            raise ApiError(404, f"unknown application {query['app']}")
        return 200, views.list_notifications(
            self.gateway.registry, query, self.now(), _path(request)
        )


class _Sms(_Api):
    """``/sms/outbox``: every outgoing SMS, pending, sent or failed."""

    routes: ClassVar[Mapping[bytes, Callable[[Any], IResource]]] = {
        b"outbox": lambda sms: _SmsOutbox(sms.gateway),
    }


class _SmsOutbox(_Api):
    def do_GET(self, request: Request) -> Deferred[Result]:
        query = _params(request, state=_choices(views.SMS_STATES), msisdn=_text)
        return _page(views.list_sms(self.gateway.registry, query, _path(request)))


def _one_of(*words: str) -> Parse:
    choose = _choices(words)

    def parse(name: str, values: list[str]) -> str:
        chosen = choose(name, values[-1:])
        if len(chosen) != 1:
            raise ApiError(400, f"{name} must be one of {', '.join(words)}")
        return chosen[0]

    return parse


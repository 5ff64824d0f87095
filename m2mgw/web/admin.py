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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from m2mgw.app import provision
from m2mgw.config import ProtocolConfig
from m2mgw.core import requests as build
from m2mgw.core.model import RequestState, Terminal, TerminalState
from m2mgw.core.refusals import Refusals
from m2mgw.core.registry import Registry, RegistryError
from m2mgw.core.session import Session
from m2mgw.metrics import MetricsResource
from m2mgw.protocol.compat import ProfileRefused
from m2mgw.protocol.constants import Command, LogoutReason, SecurityOp
from m2mgw.web import auth, inputs, openapi, views
from m2mgw.web.events import EventStream
from m2mgw.web.files import FileService
from m2mgw.web.inputs import ApiError
from m2mgw.web.ui import ConsoleResource

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from m2mgw.core.router import Router

log = Logger()

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


class TerminalSessions(Protocol):
    """What the admin API reads and does of the terminals' sessions (the engine)."""

    @property
    def sessions(self) -> Mapping[str, Session]: ...

    @property
    def refusals(self) -> Refusals: ...

    def check_deliverable(self, terminal: Terminal, command: int, body: bytes) -> None: ...

    def end_session(self, terminal: Terminal, reason: int, state: str, now: float) -> None: ...

    def platform_logout(self, terminal: Terminal, reason: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class AdminContext:
    """Everything the admin API reads and acts on, handed in where the gateway is built."""

    clock: IReactorTime
    registry: Registry
    engine: TerminalSessions
    router: Router
    #: None when the file service is disabled (``[http] listen = none``).
    files: FileService | None
    tokens: auth.TokenFile
    #: ``[admin] allowed_hosts``: the Host names this listener answers (D-318).
    allowed_hosts: tuple[str, ...]
    #: ``[protocol]``: the default compatibility profile and the credentials' lifetime.
    protocol: ProtocolConfig
    #: The ``GET /stats`` summary (:func:`m2mgw.web.views.gateway_stats`).
    stats: Callable[[], dict[str, Any]]
    #: What keeps the gateway from serving (``/health``).
    problems: Callable[[], list[str]]
    metrics: CollectorRegistry
    #: Tells an application's live long connections of a Base Key rotation (D-344).
    base_key_scheduled: Callable[[str], None]


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
    return inputs.flag("show_secrets", inputs.raw(request, "show_secrets")) or False


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
    def __init__(self, ctx: AdminContext) -> None:
        super().__init__()
        self.ctx = ctx

    def now(self) -> float:
        return float(self.ctx.clock.seconds())

    def terminal(self, key: str) -> Terminal:
        """A terminal by serial or, for terminals not yet registered, by IMEI."""
        registry = self.ctx.registry
        terminal = registry.get(key) or registry.by_imei(key)
        if terminal is None:
            raise ApiError(404, f"unknown terminal {key}")
        return terminal


class _Scoped(_Api):
    """A listing of the whole gateway, or of one terminal at ``/terminals/<key>/...``."""

    def __init__(self, ctx: AdminContext, key: str | None = None) -> None:
        super().__init__(ctx)
        self.key = key

    def scope(self) -> dict[str, str]:
        """The ``serial`` a terminal's listing is limited to; none for the gateway's."""
        if self.key is None:
            return {}
        terminal = self.terminal(self.key)
        if terminal.serial is None:
            raise ApiError(409, f"terminal IMEI {terminal.imei} has no serial yet (unregistered)")
        return {"serial": terminal.serial}


def _path(request: Request) -> str:
    return request.path.decode("utf-8", "replace")


def _page(d: Deferred[views.Page]) -> Deferred[Result]:
    return d.addCallback(lambda page: (200, page))


_REQUEST_STATES = inputs.choices(s.value for s in RequestState)


class AdminResource(_Api):
    """The API root: ``/health``, ``/terminals``, ``/requests``, ``/queue``."""

    def __init__(self, ctx: AdminContext) -> None:
        super().__init__(ctx)
        self.putChild(b"health", _Health(ctx))
        self.putChild(b"terminals", _Terminals(ctx))
        self.putChild(b"requests", _Requests(ctx))
        self.putChild(b"queue", _Queue(ctx))
        self.putChild(b"apps", _Apps(ctx))
        self.putChild(b"registry", _Registry(ctx))
        self.putChild(b"alarms", _Alarms(ctx))
        self.putChild(b"messages", _Messages(ctx))
        self.putChild(b"notifications", _Notifications(ctx))
        self.putChild(b"sms", _Sms(ctx))
        self.putChild(b"stats", _Stats(ctx))
        #: The ``/events`` stream; a child service of the gateway (stops with it).
        self.events = EventStream(ctx.clock, ctx.engine.sessions, ctx.stats)
        self.putChild(b"events", _Events(ctx, self.events))
        self.putChild(b"openapi.json", _OpenApi(ctx))
        self.putChild(b"metrics", MetricsResource(ctx.metrics))
        self.putChild(b"console", ConsoleResource())
        self.putChild(b"session", _Session(ctx))

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        """Every request passes here first: refuse a foreign Host (421), a body that is
        not JSON (415), then anything neither open nor authenticated (401)."""
        if not auth.host_allowed(request, self.ctx.allowed_hosts):
            return _Refused(lambda _: (421, {
                "error": "the Host header does not name this admin listener (add the name "
                         "to [admin] allowed_hosts if it is yours)"}))
        if _has_body(request) and not _is_json(request):
            return _Refused(lambda _: (415, {"error": "request bodies must be application/json"}))
        methods = OPEN.get(path, frozenset())
        if not (methods is None or request.method in methods
                or self.ctx.tokens.allows(request)):
            return _Refused(_unauthorised)
        return super().getChildWithDefault(path, request)

    def do_GET(self, request: Request) -> Result:
        """A browser is sent to the console; the list of endpoints needs a token."""
        if b"text/html" in (request.getHeader(b"accept") or b""):
            request.setHeader(b"location", b"/console/")
            return 302, {"location": "/console/"}
        if not self.ctx.tokens.allows(request):
            return _unauthorised(request)
        return 200, {"endpoints": sorted(f"/{name.decode()}" for name in self.children)}


class _Stats(_Api):
    """The summary of the dashboard and ``m2mgw status`` (D-195)."""

    def do_GET(self, request: Request) -> Result:
        return 200, self.ctx.stats()


class _Events(_Api):
    """Server-Sent Events: stats, terminal and request changes (D-196)."""

    def __init__(self, ctx: AdminContext, stream: EventStream) -> None:
        super().__init__(ctx)
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
        token = inputs.json_body(request).get("token")
        if not isinstance(token, str) or not self.ctx.tokens.valid(token):
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
        return 200, self.ctx.registry.identity().describe()


class _Health(_Api):
    """200 ``ok`` only when the gateway serves; else 503 with its problems (D-163)."""

    def do_GET(self, request: Request) -> Result:
        problems = self.ctx.problems()
        body: dict[str, Any] = {
            "status": "unavailable" if problems else "ok",
            "terminals": len(self.ctx.registry.terminals()),
            "sessions": len(self.ctx.engine.sessions),
        }
        if problems:
            body["problems"] = problems
        return (503 if problems else 200), body


class _Apps(_Api):
    """``GET`` lists applications (no secrets), ``POST`` provisions one (application 7.1)."""

    def do_GET(self, request: Request) -> Result:
        return 200, views.list_apps(self.ctx.registry, inputs.listing(request))

    item = ("app_id", lambda parent, key: _AppItem(parent.ctx, key))

    def do_POST(self, request: Request) -> Deferred[Result]:
        d = provision.provision(self.ctx.registry, inputs.json_body(request))
        return d.addCallback(lambda view: (201, view))


class _AppItem(_Api):
    """``/apps/<app_id>``: the application's sub-resources."""

    routes: ClassVar[Mapping[bytes, Callable[[Any], IResource]]] = {
        b"base-key": lambda item: _AppBaseKey(item.ctx, item.app_id),
    }

    def __init__(self, ctx: AdminContext, app_id: str) -> None:
        super().__init__(ctx)
        self.app_id = app_id


class _AppBaseKey(_Api):
    """``POST`` sets the application's Base Key rotation (7.2 step 3), announced at once
    on its live long-connection sessions (D-344)."""

    def __init__(self, ctx: AdminContext, app_id: str) -> None:
        super().__init__(ctx)
        self.app_id = app_id

    def do_POST(self, request: Request) -> Deferred[Result]:
        ctx = self.ctx
        d = provision.schedule_rotation(
            ctx.registry, self.app_id, inputs.json_body(request), self.now()
        )

        def stored(view: dict[str, Any]) -> Result:
            ctx.base_key_scheduled(self.app_id)
            return 200, view

        return d.addCallback(stored)


class _Terminals(_Api):
    """``GET`` lists terminals (search, state, bearer; paged), ``POST`` provisions one."""

    item = ("serial", lambda parent, key: _TerminalItem(parent.ctx, key))

    def do_GET(self, request: Request) -> Result:
        query = inputs.listing(request, search=inputs.text,
                               state=inputs.choices(views.TERMINAL_STATES),
                               bearer=inputs.choices(views.BEARERS))
        default = self.ctx.protocol.default_compat
        return 200, views.list_terminals(
            self.ctx.registry.terminals(), query,
            lambda t: views.describe_terminal(t, default_compat=default),
        )

    def do_POST(self, request: Request) -> Deferred[Result]:
        params = inputs.json_body(request)
        expiry = build.credential_expiry(
            self.now(), self.ctx.protocol.credential_ttl
        )
        terminal = build.terminal_from_json(params, expiry=expiry)
        d = self.ctx.registry.add(terminal)
        log.info(
            "Provisioned terminal IMEI {imei} serial {serial} ({state}) via admin API",
            imei=terminal.imei, serial=terminal.serial, state=terminal.state,
        )
        default = self.ctx.protocol.default_compat
        return d.addCallback(lambda t: (201, views.describe_provisioned(t, default)))


class _TerminalItem(_Api):
    """``/terminals/<serial or IMEI>``: details, removal, its requests, messages,
    alarms and refusals."""

    routes: ClassVar[Mapping[bytes, Callable[[Any], IResource]]] = {
        b"requests": lambda item: _TerminalRequests(item.ctx, item.key),
        b"messages": lambda item: _Messages(item.ctx, item.key),
        b"alarms": lambda item: _Alarms(item.ctx, item.key),
        b"refusals": lambda item: _Refusals(item.ctx, item.key),
    }

    def __init__(self, ctx: AdminContext, key: str) -> None:
        super().__init__(ctx)
        self.key = key

    def do_GET(self, request: Request) -> Result:
        ctx = self.ctx
        terminal = self.terminal(self.key)
        serial = terminal.serial or ""
        view = views.describe_terminal(
            terminal, detail=True, default_compat=ctx.protocol.default_compat
        )
        # What was refused from this terminal, by reason (issue #10: for the console).
        view["refusals"] = {str(r): n for r, n in ctx.engine.refusals.counts(serial).items()}
        view["config"] = views.describe_config(ctx.registry.config_values(serial))
        view["queue"] = [views.describe_request(r) for r in ctx.registry.queued(serial)]
        outstanding = ctx.router.outstanding(serial)
        view["outstanding"] = views.describe_request(outstanding) if outstanding else None
        session = ctx.engine.sessions.get(serial)
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
        ctx = self.ctx
        terminal = self.terminal(self.key)
        if terminal.serial in ctx.engine.sessions:
            ctx.engine.end_session(
                terminal, LogoutReason.FORCED, TerminalState.LOGGED_OUT, self.now()
            )
        d = ctx.registry.remove(terminal.serial or terminal.imei)
        log.info("Removed terminal {serial} (IMEI {imei}) via admin API",
                 serial=terminal.serial, imei=terminal.imei)
        return d.addCallback(
            lambda _: (200, {"removed": {"serial": terminal.serial, "imei": terminal.imei}})
        )


class _TerminalRequests(_Scoped):
    """``POST`` queues a platform request; ``GET`` is the terminal's request history."""

    def do_GET(self, request: Request) -> Deferred[Result]:
        query = {**inputs.listing(request, state=_REQUEST_STATES), **self.scope()}
        return _page(views.list_requests(self.ctx.registry, query, _path(request)))

    def _serial(self) -> str:
        return self.scope()["serial"]

    def do_POST(self, request: Request) -> Result | Deferred[Result]:
        serial = self._serial()
        params = inputs.json_body(request)
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
        d = self.ctx.router.submit(serial, command_id, body, origin="admin", ttl=ttl)
        return d.addCallback(lambda r: (202, views.describe_request(r)))

    def _logout(self, serial: str, params: Mapping[str, Any]) -> Result:
        """A platform LOGOUT (4.5) goes out at once, not through the queue."""
        if set(params) - {"reason"}:
            raise ApiError(400, "LOGOUT takes only 'reason'")
        reason = params.get("reason", LogoutReason.FORCED)
        if isinstance(reason, bool) or not isinstance(reason, int) or not 0 <= reason <= 0xFF:
            raise ApiError(400, f"LOGOUT reason must be an integer 0-255, got {reason!r}")
        engine = self.ctx.engine
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
        files = self.ctx.files
        if files is None:
            raise ApiError(409, "the HTTP file service is disabled ([http] listen = none)")
        source = files.operator_file(path)  # under [http] files_dir only (D-320)
        # Before the file is copied: a terminal that cannot take one gets no offer (C9).
        self.ctx.engine.check_deliverable(self.terminal(serial), Command.DOWNLOAD_INFO, b"")

        def queue(tx: Any) -> Deferred[Result]:
            command_id, body = build.download_info(tx, files.public_url, force=force)
            d = self._submit(serial, command_id, body, ttl)
            return d.addCallback(
                lambda r: (r[0], {**r[1], "file": views.describe_file(tx, files.public_url)})
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

    item = ("id", lambda parent, key: _RequestItem(parent.ctx, key))

    def do_GET(self, request: Request) -> Deferred[Result]:
        query = inputs.listing(request, serial=inputs.text, state=_REQUEST_STATES)
        return _page(views.list_requests(self.ctx.registry, query, _path(request)))


class _RequestItem(_Api):
    def __init__(self, ctx: AdminContext, key: str) -> None:
        super().__init__(ctx)
        self.key = key

    def do_GET(self, request: Request) -> Result:
        found = self.ctx.registry.request(int(self.key)) if self.key.isdigit() else None
        if found is None:
            raise ApiError(404, f"no active or recent request {self.key}")
        return 200, views.describe_request(found)


class _Queue(_Api):
    """All active (queued or sent) requests across terminals, oldest first."""

    def do_GET(self, request: Request) -> Result:
        return 200, views.list_queue(self.ctx.registry, inputs.listing(request), _path(request))


class _Alarms(_Scoped):
    """Alarm history (``active=1``: the alarms raised now), newest first."""

    def do_GET(self, request: Request) -> Deferred[Result]:
        query = {**inputs.listing(request, serial=inputs.text, code=inputs.integer(0, 0xFFFF),
                                  status=inputs.integer(0, 1), active=inputs.flag),
                 **self.scope()}
        return _page(views.list_alarms(self.ctx.registry, query, _path(request)))


class _Messages(_Scoped):
    """The message log, newest first."""

    def do_GET(self, request: Request) -> Deferred[Result]:
        query = {**inputs.listing(request, serial=inputs.text,
                                  direction=inputs.one_of("in", "out"), event=inputs.text),
                 **self.scope()}
        return _page(views.list_messages(self.ctx.registry, query, _path(request)))


class _Refusals(_Scoped):
    """What the gateway refused from one terminal since start-up, by reason (D-153)."""

    def do_GET(self, request: Request) -> Result:
        serial = self.scope()["serial"]
        counts = self.ctx.engine.refusals.counts(serial)
        return 200, {"serial": serial, "total": sum(counts.values()),
                     "refusals": {str(reason): n for reason, n in sorted(counts.items())}}


class _Notifications(_Api):
    """Undelivered application notifications and where their delivery stands."""

    def do_GET(self, request: Request) -> Result:
        query = inputs.listing(request, app=inputs.text,
                               state=inputs.choices(views.NOTIFICATION_STATES))
        if "app" in query and self.ctx.registry.application(query["app"]) is None:
            raise ApiError(404, f"unknown application {query['app']}")
        return 200, views.list_notifications(
            self.ctx.registry, query, self.now(), _path(request)
        )


class _Sms(_Api):
    """``/sms/outbox``: every outgoing SMS, pending, sent or failed."""

    routes: ClassVar[Mapping[bytes, Callable[[Any], IResource]]] = {
        b"outbox": lambda sms: _SmsOutbox(sms.ctx),
    }


class _SmsOutbox(_Api):
    def do_GET(self, request: Request) -> Deferred[Result]:
        query = inputs.listing(request, state=inputs.choices(views.SMS_STATES), msisdn=inputs.text)
        return _page(views.list_sms(self.ctx.registry, query, _path(request)))

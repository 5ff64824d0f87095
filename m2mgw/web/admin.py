"""The admin JSON API: provisioning, inspection and platform requests, behind tokens.

Every answer is ``application/json``; errors are ``{"error": "..."}`` with a status
that tells the operator what to fix (400 bad input, 404 unknown, 409 conflict with
the current state, 500 our fault, logged, never a traceback). Handlers return
``(status, object)`` or a Deferred of it, so a request is answered only after the
registry committed what it changed (a 202 means the request is durably queued).

Every route needs an admin token (:mod:`m2mgw.web.auth`, D-190) but the few in
:data:`OPEN`: a request without one is answered 401 and nothing else, whatever its
path, so not even the routes that exist are told.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

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
from m2mgw.web import auth
from m2mgw.web.ui import ConsoleResource

if TYPE_CHECKING:
    from m2mgw.service import GatewayService

log = Logger()

MAX_BODY = 64 * 1024
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_TTL = float(0xFFFFFFFF)

Result = tuple[int, Any]

#: Routes served without a token, with the methods (None: all): liveness probes, the
#: console's static files (no data in them) and the console's log-in (D-191).
OPEN: dict[bytes, frozenset[bytes] | None] = {
    b"health": None,
    b"console": None,
    b"session": frozenset({b"POST"}),
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
    return json.dumps(body).encode("utf-8") + b"\n"


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
    """Dispatches ``do_<METHOD>`` handlers and renders their results as JSON."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        return self if path == b"" else _NotFound()

    def render(self, request: Request) -> bytes | int:
        method = request.method.decode("ascii", "replace")
        handler: Callable[[Request], Result | Deferred[Result]] | None = getattr(
            self, f"do_{'GET' if method == 'HEAD' else method}", None
        )
        if handler is None:
            allowed = sorted(name[3:] for name in dir(self) if name.startswith("do_"))
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
            return _encode(request, 405, {"error": f"method {method} not allowed here"})
        try:
            result = handler(request)
        except Exception as exc:
            return _error(request, exc)
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


class _NotFound(_Json):
    def render(self, request: Request) -> bytes:
        return _encode(request, 404, {"error": "no such resource"})


class _Unauthorised(_Json):
    isLeaf = True  # whatever the rest of the path: 401, and no hint of what exists

    def render(self, request: Request) -> bytes:
        request.setHeader(b"www-authenticate", b'Bearer realm="m2mgw"')
        return _encode(request, 401, {"error": "authentication required"})


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


def _arg(request: Request, name: str) -> list[str]:
    """Query values of ``name``, comma lists split (``state=queued,sent``)."""
    values = request.args.get(name.encode("ascii"), []) if request.args else []
    return [
        item.strip()
        for raw in values
        for item in raw.decode("utf-8", "replace").split(",")
        if item.strip()
    ]


def _limit(request: Request) -> int:
    values = _arg(request, "limit")
    if not values:
        return DEFAULT_LIMIT
    if not values[-1].isdigit() or not 1 <= int(values[-1]) <= MAX_LIMIT:
        raise ApiError(400, f"limit must be an integer 1-{MAX_LIMIT}")
    return int(values[-1])


def _states(request: Request) -> list[str] | None:
    states = _arg(request, "state")
    known = {s.value for s in RequestState}
    bad = [s for s in states if s not in known]
    if bad:
        raise ApiError(400, f"unknown state {bad[0]!r}; one of {', '.join(sorted(known))}")
    return states or None


def _listing(requests: list[Any]) -> Result:
    return 200, [build.describe_request(r) for r in requests]


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
        self.putChild(b"metrics", MetricsResource(gateway.metrics))
        self.putChild(b"console", ConsoleResource())
        self.putChild(b"session", _Session(gateway))

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        """Every request passes here first: refuse it unless open or authenticated."""
        methods = OPEN.get(path, frozenset())
        if not (methods is None or request.method in methods
                or self.gateway.admin_tokens.allows(request)):
            return _Unauthorised()
        return super().getChildWithDefault(path, request)

    def do_GET(self, request: Request) -> Result:
        return 200, {
            "endpoints": ["/health", "/terminals", "/requests", "/queue", "/apps", "/registry"]
        }


class _Session(_Api):
    """The console's log-in: ``POST`` a token to get it as an HttpOnly cookie."""

    def do_POST(self, request: Request) -> Result:
        token = _json_body(request).get("token")
        if not isinstance(token, str) or not self.gateway.admin_tokens.valid(token):
            request.setHeader(b"www-authenticate", b'Bearer realm="m2mgw"')
            return 401, {"error": "authentication required"}
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
        apps = sorted(self.gateway.registry.applications(), key=lambda a: a.app_id)
        return 200, [provision.describe_application(a) for a in apps]

    def do_POST(self, request: Request) -> Deferred[Result]:
        d = provision.provision(self.gateway.registry, _json_body(request))
        return d.addCallback(lambda view: (201, view))


class _Terminals(_Api):
    """``GET`` lists terminals, ``POST`` provisions one."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"":
            return self
        return _TerminalItem(self.gateway, path.decode("utf-8", "replace"))

    def do_GET(self, request: Request) -> Result:
        terminals = sorted(
            self.gateway.registry.terminals(), key=lambda t: (t.serial or "", t.imei)
        )
        default = self.gateway.config.protocol.default_compat
        return 200, [build.describe_terminal(t, default_compat=default) for t in terminals]

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
    """``/terminals/<serial or IMEI>``: details, removal, and its requests."""

    def __init__(self, gateway: GatewayService, key: str) -> None:
        super().__init__(gateway)
        self.key = key

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"":
            return self
        if path == b"requests":
            return _TerminalRequests(self.gateway, self.key)
        return _NotFound()

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


class _TerminalRequests(_Api):
    """``POST`` queues a platform request; ``GET`` is the terminal's request history."""

    def __init__(self, gateway: GatewayService, key: str) -> None:
        super().__init__(gateway)
        self.key = key

    def do_GET(self, request: Request) -> Deferred[Result]:
        serial = self._serial()
        d = self.gateway.registry.requests(serial, _states(request), _limit(request))
        return d.addCallback(_listing)

    def _serial(self) -> str:
        terminal = self.terminal(self.key)
        if terminal.serial is None:
            raise ApiError(409, f"terminal IMEI {terminal.imei} has no serial yet (unregistered)")
        return terminal.serial

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
        sent = engine.platform_logout(terminal, reason)
        if not sent:
            engine.end_session(terminal, reason, TerminalState.LOGGED_OUT, self.now())
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
        # Before the file is copied: a terminal that cannot take one gets no offer (C9).
        self.gateway.engine.check_deliverable(self.terminal(serial), Command.DOWNLOAD_INFO, b"")
        files = self.gateway.files

        def queue(tx: Any) -> Deferred[Result]:
            command_id, body = build.download_info(tx, config.http.public_url, force=force)
            d = self._submit(serial, command_id, body, ttl)
            return d.addCallback(
                lambda r: (r[0], {**r[1], "file": build.describe_file(tx, config.http.public_url)})
            )

        return files.offer(serial, path, version).addCallback(queue)


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
    """``/requests?serial=&state=&limit=`` history; ``/requests/<id>`` one request."""

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"":
            return self
        return _RequestItem(self.gateway, path.decode("utf-8", "replace"))

    def do_GET(self, request: Request) -> Deferred[Result]:
        serials = _arg(request, "serial")
        d = self.gateway.registry.requests(
            serials[-1] if serials else None, _states(request), _limit(request)
        )
        return d.addCallback(_listing)


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
        registry = self.gateway.registry
        active = [
            r for t in registry.terminals() if t.serial for r in registry.queued(t.serial)
        ]
        return _listing(sorted(active, key=lambda r: r.id or 0))


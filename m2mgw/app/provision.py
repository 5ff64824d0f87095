"""Provisioning of applications from JSON descriptions (application spec 7.1, 7.2, 2.6).

Pure, like :mod:`m2mgw.core.requests`: the admin API and the operator CLI both turn
loosely typed JSON into an :class:`Application` here, so the validation lives in one
place. Every problem is a :class:`RequestError` fit to show to an operator.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, gatherResults

from m2mgw.app import keys
from m2mgw.app.operations import is_valid_app_id, is_valid_terminal_id
from m2mgw.core.model import APP_PERMISSIONS, Application
from m2mgw.core.registry import Registry
from m2mgw.core.requests import RequestError, ec_code
from m2mgw.protocol.errors import ProtocolError

APP_FIELDS = (
    "app_id", "password", "base_key", "base_key_expiry", "cipher", "ec_code", "callback_url",
    "terminals", "permissions", "require_session", "next_base_key", "next_base_key_from",
)
ROTATION_FIELDS = ("next_base_key", "next_base_key_from")
MAX_PASSWORD = 64


def _text(value: Any, what: str, *, longest: int) -> str:
    if not isinstance(value, str) or not value.isascii() or not value.isprintable():
        raise RequestError(f"{what} must be printable ASCII, got {value!r}")
    if not 1 <= len(value) <= longest or value != value.strip():
        raise RequestError(f"{what} must be 1-{longest} characters without surrounding spaces")
    return value


def _callback_url(value: Any) -> str | None:
    if value is None or value == "":
        return None
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise RequestError(f"callback_url must be an http:// or https:// URL, got {value!r}")
    return str(value)


def _base_key(value: Any, cipher: str, what: str) -> str:
    try:
        keys.base_cipher(cipher, value)
    except ProtocolError:
        lengths = " or ".join(str(n) for n in keys.BASE_KEY_LENGTHS[cipher])
        raise RequestError(f"{what} must be {lengths} ASCII characters for {cipher}") from None
    return str(value)


def _unix_time(value: Any, what: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or not 0 < value <= 0xFFFFFFFF):
        raise RequestError(f"{what} must be a UNIX time, got {value!r}")
    return value


def _rotation(next_key: Any, next_from: Any, cipher: str, base_key: str) -> tuple[str, int]:
    """7.2 step 3: the Base Key that follows ``base_key`` and the UNIX time from which
    logins use it, checked; announced by APP_KEY_UPDATE type 2 on the long connection."""
    next_key = _base_key(next_key, cipher, "next_base_key")
    if next_key == base_key:
        raise RequestError("next_base_key must differ from base_key")
    effective = _unix_time(next_from, "next_base_key_from")
    if effective is None:
        raise RequestError("next_base_key_from is required")
    return next_key, effective


def _string_set(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RequestError(f"{what} must be a list")
    return value


def application_from_json(params: Mapping[str, Any], registry: Registry) -> Application:
    """A new application record; bound terminals must exist; secrets are generated if absent.

    The password and Base Key are generated (7.1) when not given; the caller shows
    them once in the provisioning answer.
    """
    if not isinstance(params, Mapping):
        raise RequestError("app-provision: parameters must be a JSON object")
    unknown = sorted(set(params) - set(APP_FIELDS))
    if unknown:
        raise RequestError(f"app-provision: unknown parameter(s) {', '.join(unknown)}")
    app_id = params.get("app_id")
    if not isinstance(app_id, str) or not is_valid_app_id(app_id):
        raise RequestError(f"app_id must be 1-16 characters A-Z a-z 0-9 _ -, got {app_id!r}")
    cipher = params.get("cipher") or "legacy"
    if cipher not in keys.PROFILES:
        raise RequestError(f"cipher must be one of {', '.join(keys.PROFILES)}, got {cipher!r}")
    password = params.get("password") or keys.generate_password()
    _text(password, "password", longest=MAX_PASSWORD)
    base_key = _base_key(params.get("base_key") or keys.generate_base_key(cipher), cipher,
                         "base_key")
    expiry = _unix_time(params.get("base_key_expiry"), "base_key_expiry")
    next_key, next_from = params.get("next_base_key"), params.get("next_base_key_from")
    if (next_key is None) != (next_from is None):
        raise RequestError("next_base_key and next_base_key_from go together")
    if next_key is not None:
        next_key, next_from = _rotation(next_key, next_from, cipher, base_key)
    terminals = set()
    for serial in _string_set(params.get("terminals"), "terminals"):
        if not isinstance(serial, str) or not is_valid_terminal_id(serial):
            raise RequestError(f"terminal {serial!r} is not a 16-character serial")
        if registry.get(serial) is None:
            raise RequestError(f"unknown terminal {serial}")
        terminals.add(serial)
    permissions = set(_string_set(params.get("permissions"), "permissions"))
    if not permissions <= APP_PERMISSIONS:
        raise RequestError(f"permissions must be among {', '.join(sorted(APP_PERMISSIONS))}")
    require_session = params.get("require_session", False)
    if not isinstance(require_session, bool):
        raise RequestError("require_session must be true or false")
    return Application(
        app_id=app_id,
        password=password,
        ec_code=ec_code(params.get("ec_code") or app_id),
        cipher=cipher,
        base_key=base_key,
        base_key_expiry=expiry,
        next_base_key=next_key,
        next_base_key_from=next_from,
        callback_url=_callback_url(params.get("callback_url")),
        terminals=terminals,
        permissions=permissions,
        require_session=require_session,
    )


def bind_terminals(registry: Registry, app: Application) -> Deferred[Any]:
    """Put the app's EC code into each bound terminal's ``apps`` (engine routing, PD-27)."""
    saves = []
    for serial in sorted(app.terminals):
        terminal = registry.get(serial)
        if terminal is not None and app.ec_code not in terminal.apps:
            terminal.apps.add(app.ec_code)
            saves.append(registry.save(terminal))
    return gatherResults(saves, consumeErrors=True)


def provision(registry: Registry, params: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
    """Validate, store and bind a new application; fires with the provisioning answer."""
    app = application_from_json(params, registry)
    d = registry.add_application(app)
    d.addCallback(lambda _: bind_terminals(registry, app))
    return d.addCallback(lambda _: describe_application(app, secrets=True))


def schedule_rotation(
    registry: Registry, app_id: str, params: Mapping[str, Any], now: float
) -> Deferred[dict[str, Any]]:
    """Set (or replace) the Base Key rotation of a provisioned application (7.2 step 3).

    ``next_base_key`` is generated when not given and shown once in the answer, like a
    provisioned secret; ``next_base_key_from`` is required. A rotation whose time had
    come (no login since to apply it) is put in force first, so the new key follows
    the one applications were told of. Fires once stored; a running gateway then
    announces it on the application's live sessions (D-344).
    """
    if not isinstance(params, Mapping):
        raise RequestError("app-rotate-key: parameters must be a JSON object")
    unknown = sorted(set(params) - set(ROTATION_FIELDS))
    if unknown:
        raise RequestError(f"app-rotate-key: unknown parameter(s) {', '.join(unknown)}")
    app = registry.application(app_id)
    if app is None:
        raise LookupError(f"unknown application {app_id}")
    state = keys.BaseKeyState(app.cipher, app.base_key, app.base_key_expiry,
                              app.next_base_key, app.next_base_key_from,
                              app.next_base_key_expiry)
    state.current(now)
    next_key = params.get("next_base_key") or keys.generate_base_key(app.cipher)
    next_key, effective = _rotation(next_key, params.get("next_base_key_from"), app.cipher,
                                    state.key)
    app.base_key, app.base_key_expiry = state.key, state.expires_at
    app.next_base_key, app.next_base_key_from, app.next_base_key_expiry = (
        next_key, effective, None)
    d = registry.save_application(app)
    return d.addCallback(lambda _: {**describe_application(app), "next_base_key": next_key})


def describe_application(app: Application, *, secrets: bool = False) -> dict[str, Any]:
    """JSON view of an application; its password and Base Key only when ``secrets``."""
    view: dict[str, Any] = {
        "app_id": app.app_id,
        "ec_code": app.ec_code,
        "cipher": app.cipher,
        "callback_url": app.callback_url,
        "terminals": sorted(app.terminals),
        "permissions": sorted(app.permissions),
        "require_session": app.require_session,
        "enabled": app.enabled,
        "base_key_expiry": app.base_key_expiry,
        "next_base_key_from": app.next_base_key_from,
        "created_at": app.created_at,
    }
    if secrets:
        view.update(password=app.password, base_key=app.base_key)
        if app.next_base_key is not None:
            view.update(next_base_key=app.next_base_key)
    return view

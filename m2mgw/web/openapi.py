"""The admin API in OpenAPI 3.1, served at ``GET /openapi.json`` (D-197).

Written by hand, next to the code: a test walks the admin resource tree
(:func:`m2mgw.web.admin.route_table`) and fails when a route or method exists that is
not described here, or the other way round.
"""

from __future__ import annotations

from typing import Any

import m2mgw
from m2mgw.core.model import RequestState, TerminalState
from m2mgw.web import views

Json = dict[str, Any]

_ERROR = {"$ref": "#/components/schemas/Error"}


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Json, description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _page_of(item: str) -> Json:
    return {
        "allOf": [_ref("Page"),
                  {"type": "object", "properties": {"items": {"type": "array",
                                                              "items": _ref(item)}}}],
    }


def _query(name: str, description: str, schema: Json | None = None) -> Json:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


def _words(values: Any, description: str, name: str = "state") -> Json:
    """A comma list (or repeated parameter) of known words."""
    return _query(name, f"{description} (comma list or repeated)",
                  {"type": "array", "items": {"type": "string", "enum": list(values)}})


def _param(name: str) -> Json:
    return {"$ref": f"#/components/parameters/{name}"}


_ERRORS = {
    "400": _json(_ERROR, "Bad input (a parameter or the body)"),
    "401": {"$ref": "#/components/responses/Unauthorised"},
    "404": _json(_ERROR, "No such terminal, request or resource"),
    "409": _json(_ERROR, "Conflicts with the current state"),
}


def _op(
    summary: str,
    response: Json,
    *,
    status: str = "200",
    params: tuple[Json, ...] = (),
    body: Json | None = None,
    tag: str = "gateway",
    open_: bool = False,
    description: str | None = None,
) -> Json:
    op: Json = {"summary": summary, "tags": [tag], "responses": {status: response, **_ERRORS}}
    if description:
        op["description"] = description
    if params:
        op["parameters"] = list(params)
    if body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": body}}}
    if open_:
        op["security"] = []
        del op["responses"]["401"]
    return op


_SECRETS = (_param("show_secrets"),)
_OFFSET_PAGING = (_param("limit"), _param("offset"), *_SECRETS)
_CURSOR_PAGING = (_param("limit"), _param("offset"), _param("before"), *_SECRETS)
_REQUEST_STATES = _words([s.value for s in RequestState], "Only requests in these states")
_ALARM_FILTERS = (
    _query("code", "Only this alarm code (0x0001 or decimal)", {"type": "string"}),
    _query("status", "Only raised (1) or cleared (0) reports", {"type": "integer",
                                                                "enum": [0, 1]}),
    _query("active", "1: the alarms raised now (paged by offset) instead of the history",
           {"type": "integer", "enum": [0, 1]}),
)
_MESSAGE_FILTERS = (
    _query("direction", "Only received (in) or sent (out)", {"type": "string",
                                                             "enum": ["in", "out"]}),
    _query("event", "Only this event (login, uplink-data, auth-failure, ...)"),
)
_SERIAL_FILTER = _query("serial", "Only this terminal's")
_TERMINAL = (_param("serial"),)


def _paths() -> Json:
    page = "A page of the listing, newest first; next: the following page or null"
    memory_page = "A page of the listing with its total; next: the following page or null"
    return {
        "/": {"get": _op("The routes at the top", _json({"type": "object"}, "Routes"),
                         tag="meta")},
        "/health": {"get": _op(
            "Liveness: 200 only while the gateway serves, else 503 with the problems",
            _json(_ref("Health"), "Serving"), tag="meta", open_=True,
            description="No token needed: for systemd and load balancers (D-163).",
        )},
        "/session": {
            "post": _op(
                "Log in the console: the token becomes an HttpOnly cookie m2mgw_admin",
                {"description": "Logged in; Set-Cookie: m2mgw_admin=TOKEN; HttpOnly; "
                 "SameSite=Strict; Path=/"},
                status="204", tag="meta", open_=True,
                body={"type": "object", "required": ["token"],
                      "properties": {"token": {"type": "string"}}},
            ),
            "delete": _op("Log out: clears the cookie", {"description": "Logged out"},
                          status="204", tag="meta"),
        },
        "/openapi.json": {"get": _op("This description", _json({"type": "object"},
                                                                "OpenAPI 3.1"), tag="meta")},
        "/registry": {"get": _op(
            "Which registry this gateway serves (the CLI checks it)",
            _json(_ref("RegistryIdentity"), "Backend, path and instance id"), tag="meta",
        )},
        "/stats": {"get": _op("The dashboard summary (m2mgw status)",
                              _json(_ref("Stats"), "Summary"))},
        "/events": {"get": _op(
            "Server-Sent Events: stats every 2 s, terminal and request changes",
            {"description": "An endless text/event-stream: 'event: stats' (the /stats "
             "object), 'event: terminal' {serial, state, bearer, last_seen}, 'event: "
             "request' {id, serial, state, outcome}; a comment every 15 s",
             "content": {"text/event-stream": {"schema": {"type": "string"}}}},
        )},
        "/metrics": {"get": _op(
            "Prometheus metrics (text exposition format, or OpenMetrics if accepted)",
            {"description": "Metrics", "content": {"text/plain": {"schema":
                                                                  {"type": "string"}}}},
            tag="meta",
        )},
        "/console": {"get": _op(
            "The operator console: /console/ and its files (no data, no token)",
            {"description": "HTML, CSS or JavaScript",
             "content": {"text/html": {"schema": {"type": "string"}}}},
            tag="meta", open_=True,
        )},
        "/terminals": {
            "get": _op(
                "Terminals by serial, searched and filtered", _json(_page_of("Terminal"),
                                                                    memory_page),
                params=(
                    _query("search", "Only terminals whose serial, IMEI, IMSI, MSISDN or "
                           "address contains this text"),
                    _words(views.TERMINAL_STATES, "Only terminals in these states "
                           "(online: logged in; offline: any other)"),
                    _words(views.BEARERS, "Only terminals last seen on these bearers",
                           "bearer"),
                    *_OFFSET_PAGING,
                ),
            ),
            "post": _op(
                "Provision a terminal; its credentials are in the answer (show_secrets=1)",
                _json(_ref("Terminal"), "Provisioned"), status="201", params=_SECRETS,
                body=_ref("Provisioning"),
            ),
        },
        "/terminals/{serial}": {
            "get": _op("One terminal: record, configuration, queue, session",
                       _json(_ref("Terminal"), "The terminal"), params=(*_TERMINAL,
                                                                        *_SECRETS)),
            "delete": _op(
                "Remove a terminal: ends its session (forced LOGOUT), deletes its record and "
                "configuration, cancels its queued requests",
                _json({"type": "object", "properties": {"removed": {"type": "object"}}},
                      "Removed"),
                params=_TERMINAL,
            ),
        },
        "/terminals/{serial}/requests": {
            "get": _op("The terminal's requests", _json(_page_of("Request"), page),
                       params=(*_TERMINAL, _REQUEST_STATES, *_CURSOR_PAGING)),
            "post": _op(
                "Queue a platform request (CONFIG_GET, CONFIG_SET, REMOTE_CTRL, "
                "DOWNLOAD_INFO, SECURITY_CONFIG, TRANSPARENT_DATA, TRANSPARENT_CMD) or send "
                "a LOGOUT", _json(_ref("Request"), "Durably queued"), status="202",
                params=(*_TERMINAL, *_SECRETS),
                body={"type": "object", "required": ["command"],
                      "properties": {"command": {"type": "string"},
                                     "ttl": {"type": "number"}},
                      "additionalProperties": True},
            ),
        },
        "/terminals/{serial}/messages": {"get": _op(
            "The terminal's message log", _json(_page_of("Message"), page),
            params=(*_TERMINAL, *_MESSAGE_FILTERS, *_CURSOR_PAGING),
        )},
        "/terminals/{serial}/alarms": {"get": _op(
            "The terminal's alarms", _json(_page_of("Alarm"), page),
            params=(*_TERMINAL, *_ALARM_FILTERS, *_CURSOR_PAGING),
        )},
        "/terminals/{serial}/refusals": {"get": _op(
            "What was refused from the terminal since start-up, by reason",
            _json(_ref("Refusals"), "Counts"), params=_TERMINAL,
        )},
        "/requests": {"get": _op("Request history", _json(_page_of("Request"), page),
                                 params=(_SERIAL_FILTER, _REQUEST_STATES, *_CURSOR_PAGING))},
        "/requests/{id}": {"get": _op(
            "One active or recent request", _json(_ref("Request"), "The request"),
            params=({"name": "id", "in": "path", "required": True,
                     "schema": {"type": "integer"}}, *_SECRETS),
        )},
        "/queue": {"get": _op("Active (queued or sent) requests of every terminal, oldest "
                              "first", _json(_page_of("Request"), memory_page),
                              params=_OFFSET_PAGING)},
        "/apps": {
            "get": _op("Applications", _json(_page_of("Application"), memory_page),
                       params=_OFFSET_PAGING, tag="applications"),
            "post": _op("Provision an application (application spec 7.1)",
                        _json(_ref("Application"), "Provisioned"), status="201",
                        params=_SECRETS, body={"type": "object",
                                               "required": ["app_id"]},
                        tag="applications"),
        },
        "/apps/{app_id}/base-key": {"post": _op(
            "Set the application's Base Key rotation (application spec 7.2): the next key "
            "(generated if not given) and the UNIX time from which logins use it; its live "
            "long-connection sessions are told at once (APP_KEY_UPDATE type 2)",
            _json(_ref("Application"), "Scheduled; next_base_key with show_secrets=1"),
            params=({"name": "app_id", "in": "path", "required": True,
                     "schema": {"type": "string"}}, *_SECRETS),
            body={"type": "object", "required": ["next_base_key_from"],
                  "properties": {"next_base_key": {"type": "string"},
                                 "next_base_key_from": {"type": "integer"}},
                  "additionalProperties": False},
            tag="applications",
        )},
        "/alarms": {"get": _op("Alarm history", _json(_page_of("Alarm"), page),
                               params=(_SERIAL_FILTER, *_ALARM_FILTERS, *_CURSOR_PAGING))},
        "/messages": {"get": _op("The message log", _json(_page_of("Message"), page),
                                 params=(_SERIAL_FILTER, *_MESSAGE_FILTERS,
                                         *_CURSOR_PAGING))},
        "/notifications": {"get": _op(
            "Undelivered application notifications and their delivery state",
            _json(_page_of("Notification"), memory_page),
            params=(_query("app", "Only this application's"),
                    _words(views.NOTIFICATION_STATES, "Only these (stored state or "
                           "delivery state)"), *_OFFSET_PAGING),
            tag="applications",
        )},
        "/sms/outbox": {"get": _op(
            "The SMS outbox: pending, sent and failed messages",
            _json(_page_of("Sms"), page),
            params=(_words(views.SMS_STATES, "Only messages in these states"),
                    _query("msisdn", "Only messages to this number"), *_CURSOR_PAGING),
            tag="sms",
        )},
    }


def _object(**properties: Any) -> Json:
    return {"type": "object", "properties": properties}


_STRING = {"type": ["string", "null"]}
_NUMBER = {"type": ["number", "null"]}
_INTEGER = {"type": ["integer", "null"]}
_SECRET = {"type": ["string", "null"], "description": "*** unless show_secrets=1"}


def _schemas() -> Json:
    return {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}}},
        "Page": {"type": "object", "required": ["items", "next"], "properties": {
            "items": {"type": "array"},
            "total": {"type": "integer", "description": "In-memory listings only"},
            "next": {"type": ["string", "null"],
                     "description": "Path and query of the next page (before=ID cursor "
                     "for the history tables, offset otherwise); null on the last"},
        }},
        "Health": _object(status={"type": "string", "enum": ["ok", "unavailable"]},
                          terminals={"type": "integer"}, sessions={"type": "integer"},
                          problems={"type": "array", "items": {"type": "string"}}),
        "RegistryIdentity": _object(backend={"type": "string"}, path={"type": "string"},
                                    instance_id={"type": "string"}),
        "Terminal": _object(
            serial=_STRING, imei={"type": "string"}, imsi=_STRING, msisdn=_STRING,
            state={"type": "string", "enum": [s.value for s in TerminalState]},
            bearer=_STRING, address=_STRING, last_seen=_NUMBER,
            uplink_password=_SECRET, downlink_password=_SECRET, base_key=_SECRET,
        ),
        "Provisioning": {"type": "object", "required": ["imei"], "properties": {
            name: {"type": "string"} for name in ("imei", "imsi", "msisdn", "serial",
                                                   "cipher", "uplink_password",
                                                   "downlink_password", "base_key")
        }},
        "Request": _object(
            id={"type": "integer"}, serial={"type": "string"}, command={"type": "string"},
            state={"type": "string", "enum": [s.value for s in RequestState]},
            outcome=_STRING, result=_INTEGER,
            result_label={**_STRING, "description": "The result code with its name: 1 (ERROR)"},
            created_at={"type": "number"},
            body={**_STRING, "description": "Hex; *** for SECURITY_CONFIG unless "
                  "show_secrets=1"},
            answer={**_STRING, "description": "Hex, as body"},
        ),
        "Application": _object(app_id={"type": "string"}, ec_code={"type": "string"},
                               callback_url=_STRING, terminals={"type": "array"},
                               password=_SECRET, base_key=_SECRET),
        "Alarm": _object(id=_INTEGER, serial=_STRING, msisdn=_STRING,
                         code={"type": "string"}, type={"type": "integer"},
                         status={"type": "integer"}, raised={"type": "boolean"},
                         cleared_code=_STRING, time={"type": "number"}),
        "Message": _object(id={"type": "integer"}, time={"type": "number"}, serial=_STRING,
                           direction={"type": "string", "enum": ["in", "out"]},
                           bearer=_STRING, command=_STRING, command_id=_STRING,
                           sequence_id=_INTEGER, event={"type": "string"},
                           detail={"type": "string"}),
        "Sms": _object(id={"type": "integer"}, msisdn={"type": "string"}, serial=_STRING,
                       command=_STRING, state={"type": "string", "enum":
                                               list(views.SMS_STATES)},
                       parts_sent={"type": "integer"}, attempts={"type": "integer"},
                       error=_STRING, created_at={"type": "number"},
                       message={**_STRING, "description": "Hex, as a request's body"}),
        "Notification": _object(
            id={"type": "integer"}, app_id={"type": "string"}, kind={"type": "string"},
            state={"type": "string", "enum": ["pending", "kept"]},
            delivery={"type": "string", "enum": list(views.NOTIFICATION_STATES)},
            attempts={"type": "integer"}, next_attempt={"type": "number"},
            leased_until=_NUMBER, created_at={"type": "number"}, body={"type": "string"},
        ),
        "Refusals": _object(serial={"type": "string"}, total={"type": "integer"},
                            refusals={"type": "object", "additionalProperties":
                                      {"type": "integer"}}),
        "Stats": _object(
            version={"type": "string"}, running={"type": "boolean"},
            time={"type": "number"}, started_at=_NUMBER, uptime=_NUMBER,
            terminals=_object(known={"type": "integer"}, by_state={"type": "object"},
                              online=_object(total={"type": "integer"},
                                             tcp={"type": "integer"},
                                             udp={"type": "integer"},
                                             sms={"type": "integer"})),
            messages=_object(**{"in": {"type": "integer"}, "out": {"type": "integer"}}),
            queue=_object(depth={"type": "integer"}, oldest_age=_NUMBER),
            sms={"type": ["object", "null"], "properties": {
                "outbox": {"type": "integer"}, "oldest_age": _NUMBER,
                "modem": _object(device={"type": "string"}, up={"type": "boolean"},
                                 signal={"type": ["object", "null"]})}},
            applications={"type": "array", "items": _object(
                app_id={"type": "string"}, backlog={"type": "integer"},
                kept={"type": "integer"}, connections={"type": "integer"},
                callback={"type": "boolean"}, oldest_age=_NUMBER)},
            registry=_object(pending_writes={"type": "integer"},
                             pending_rows={"type": "integer"}),
            refusals={"type": "object"},
            problems={"type": "array", "items": {"type": "string"}},
        ),
    }


def spec() -> Json:
    """The OpenAPI 3.1 document of the admin API."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "m2mgw admin API",
            "version": m2mgw.__version__,
            "description": "Provisioning, inspection and platform requests of an m2mgw "
            "gateway. Every route needs a token of [admin] tokens_file, as 'Authorization: "
            "Bearer TOKEN' or the m2mgw_admin cookie of POST /session, but /health, "
            "/console and POST /session. Secrets are *** unless show_secrets=1.",
        },
        "security": [{"bearer": []}, {"cookie": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "m2mgw_admin"},
            },
            "responses": {"Unauthorised": _json(_ERROR, "No valid token: "
                                                '{"error": "authentication required"}')},
            "parameters": {
                "serial": {"name": "serial", "in": "path", "required": True,
                           "description": "Serial, or IMEI of a terminal not yet registered",
                           "schema": {"type": "string"}},
                "limit": _query("limit", f"Rows per page, 1-{views.MAX_LIMIT}",
                                {"type": "integer", "minimum": 1,
                                 "maximum": views.MAX_LIMIT,
                                 "default": views.DEFAULT_LIMIT}),
                "offset": _query("offset", "Rows to skip", {"type": "integer", "minimum": 0}),
                "before": _query("before", "Only rows with an id below this (the cursor of "
                                 "next)", {"type": "integer", "minimum": 1}),
                "show_secrets": _query("show_secrets", "1: passwords, keys and "
                                       "SECURITY_CONFIG bodies in clear",
                                       {"type": "integer", "enum": [0, 1]}),
            },
            "schemas": _schemas(),
        },
    }

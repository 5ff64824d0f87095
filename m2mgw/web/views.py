"""What the admin API and the CLI show: paged listings, their JSON views, redaction.

Both the admin API (for a running gateway) and the CLI's direct database path (for a
stopped one) build their listings here, so they answer alike. Every listing is a
page ``{"items": [...], "total": N, "next": LINK}`` (D-194): ``total`` where it is
known without a query (the in-memory listings), ``next`` the path and query of the
next page, or None on the last. Listings of the database's history tables are newest
first and their ``next`` is a ``before=ID`` cursor, stable while new rows arrive;
the others page by ``offset``.

Secrets never leave in the clear unless asked for (:func:`redact`, D-193).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlencode

from twisted.internet.defer import Deferred

import m2mgw
from m2mgw.app import provision
from m2mgw.core.model import (
    Alarm,
    AppNotification,
    CredentialSet,
    FileTransaction,
    LogEntry,
    NotificationState,
    Request,
    Terminal,
    TerminalState,
)
from m2mgw.core.registry import OutgoingSms, Registry, SmsState
from m2mgw.core.requests import CREDENTIAL_FIELDS, download_url
from m2mgw.protocol import compat, tags
from m2mgw.protocol import messages as m
from m2mgw.protocol.constants import result_label
from m2mgw.protocol.errors import ProtocolError
from m2mgw.protocol.header import Header, command_name

if TYPE_CHECKING:
    from m2mgw.metrics import Observed

T = TypeVar("T")
Page = dict[str, Any]
Query = Mapping[str, Any]

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100

# --- redaction ---------------------------------------------------------------------------

#: What a redacted secret looks like in every admin and CLI output.
MASK = "***"
#: Keys whose values are secrets wherever they appear (terminal and application records).
SECRET_FIELDS = frozenset({
    "uplink_password", "downlink_password", "base_key", "next_base_key", "password",
    "session_key",
})
#: Commands whose bodies carry secrets: SECURITY_CONFIG sets fresh passwords and a
#: Base Key (op 0) or reads them back in plaintext (op 1).
CONFIDENTIAL_COMMANDS = frozenset({"SECURITY_CONFIG", "SECURITY_CONFIG_ACK"})
#: The hex fields of a request, logged message or SMS that hold such a body.
BODY_FIELDS = frozenset({"body", "answer", "message"})


def redact(value: Any) -> Any:
    """A copy of a JSON value with every secret (a string under a secret's key) replaced
    by :data:`MASK`."""
    if isinstance(value, list):
        return [redact(item) for item in value]
    if not isinstance(value, dict):
        return value
    command = value.get("command")
    confidential = isinstance(command, str) and command in CONFIDENTIAL_COMMANDS
    hidden = SECRET_FIELDS | BODY_FIELDS if confidential else SECRET_FIELDS
    return {
        key: MASK if key in hidden and isinstance(item, str) else redact(item)
        for key, item in value.items()
    }


# --- pages -------------------------------------------------------------------------------


def link(path: str, query: Query, **changes: Any) -> str:
    """``path?query`` with ``changes`` applied; empty values are left out."""
    merged = {**query, **changes}
    pairs: list[tuple[str, str]] = []
    for key, value in merged.items():
        if value is None or value is False or value == [] or value == "":
            continue
        values = value if isinstance(value, list | tuple) else [value]
        pairs += [(key, "1" if item is True else str(item)) for item in values]
    return f"{path}?{urlencode(pairs)}" if pairs else path


def offset_page(
    items: Sequence[T], describe: Callable[[T], dict[str, Any]], path: str, query: Query
) -> Page:
    """One ``limit``/``offset`` page of an in-memory listing, with its total."""
    limit, offset = query.get("limit") or DEFAULT_LIMIT, query.get("offset") or 0
    more = offset + limit < len(items)
    return {
        "items": [describe(item) for item in items[offset : offset + limit]],
        "total": len(items),
        "next": link(path, query, offset=offset + limit) if more else None,
    }


def cursor_page(rows: Sequence[tuple[int | None, dict[str, Any]]], path: str, query: Query
                ) -> Page:
    """A page of (id, view) rows fetched newest first with ``limit + 1`` rows: the
    extra row only says that there is more, from before the last id shown."""
    limit = query.get("limit") or DEFAULT_LIMIT
    shown = rows[:limit]
    last = shown[-1][0] if shown else None
    more = len(rows) > limit
    if more and last is not None:
        following = link(path, query, before=last, offset=None)
    elif more:  # rows without ids (active alarms) page by offset
        following = link(path, query, offset=(query.get("offset") or 0) + limit)
    else:
        following = None
    return {"items": [view for _, view in shown], "next": following}


def _fetch(query: Query) -> dict[str, Any]:
    """The paging arguments of a registry history query: one row more than shown."""
    return {
        "before": query.get("before"),
        "offset": query.get("offset") or 0,
        "limit": (query.get("limit") or DEFAULT_LIMIT) + 1,
    }


# --- records: requests, files, terminals, stored configuration ---------------------------


def _hex_or_none(raw: bytes | None) -> str | None:
    return None if raw is None else raw.hex().upper()


def describe_request(request: Request) -> dict[str, Any]:
    """JSON view of a queued or finished request."""
    return {
        "id": request.id,
        "serial": request.serial,
        "command": m.MESSAGE_NAMES.get(request.command, f"0x{request.command:04X}"),
        "state": str(request.state),
        "sequence_id": request.sequence_id,
        "attempts": request.attempts,
        "result": request.result,
        "result_label": None if request.result is None
        else result_label(request.command, request.result),
        "outcome": request.outcome,
        "origin": request.origin,
        "msg_id": request.msg_id,
        "created_at": request.created_at,
        "updated_at": request.updated_at,
        "expires_at": request.expires_at,
        "body": _hex_or_none(request.body),
        "answer": _hex_or_none(request.answer_body),
    }


def describe_file(tx: FileTransaction, public_url: str) -> dict[str, Any]:
    """JSON view of a file transaction (without its local path)."""
    return {
        "trans_id": tx.trans_id,
        "serial": tx.serial,
        "name": tx.name,
        "version": tx.version,
        "size": tx.size,
        "crc16": f"{tx.crc16:04X}",
        "crc32": f"{tx.crc32:08X}",
        "state": str(tx.state),
        "expires_at": tx.expires_at,
        "url": download_url(tx, public_url),
    }


SUMMARY_FIELDS = (
    "serial", "imei", "imsi", "msisdn", "state", "bearer", "address", "last_seen",
    "software_version", "enabled",
)
DETAIL_FIELDS = (
    "cipher", "require_encryption", "sms_wakeup", "sms_terminal_port", "default_app",
    "connect_mode", "heartbeat_interval", "sync_tags", "config_unverified",
    "session_timestamp", "created_at", "updated_at",
)


def describe_terminal(
    terminal: Terminal, *, detail: bool = False, default_compat: str = compat.STRICT.name
) -> dict[str, Any]:
    """JSON view of a terminal record; never passwords or keys (6.3.2).

    ``compat`` is the profile the terminal is served by: its own, else
    ``default_compat`` (``[protocol] default_compat``), with ``compat_default`` true.
    """
    names = SUMMARY_FIELDS + DETAIL_FIELDS if detail else SUMMARY_FIELDS
    view = {name: getattr(terminal, name) for name in names}
    view["state"] = str(terminal.state)
    view["compat"] = terminal.compat or default_compat
    view["compat_default"] = terminal.compat is None
    if detail:
        view["apps"] = sorted(terminal.apps)
        view["protocol_version"] = (
            None if terminal.protocol_version is None else f"0x{terminal.protocol_version:04X}"
        )
        view["credentials"] = {
            "current": _expiries(terminal.current),
            "pending": _expiries(terminal.pending),
        }
    return view


def _expiries(creds: CredentialSet | None) -> dict[str, Any] | None:
    if creds is None:
        return None
    return {
        "uplink_expiry": creds.uplink_expiry,
        "downlink_expiry": creds.downlink_expiry,
        "base_key_expiry": creds.base_key_expiry,
        "delivered_at": creds.delivered_at,
    }


def describe_credentials(creds: CredentialSet) -> dict[str, Any]:
    """The secrets themselves: shown once, to the operator who provisions the device."""
    return {
        "uplink_password": creds.uplink_password,
        "downlink_password": creds.downlink_password,
        "base_key": creds.base_key,
        "uplink_expiry": creds.uplink_expiry,
        "downlink_expiry": creds.downlink_expiry,
        "base_key_expiry": creds.base_key_expiry,
    }


def describe_config(values: Mapping[int, bytes]) -> dict[str, Any]:
    """Stored TLV values by tag name, with hex and typed value; security values hidden."""
    view: dict[str, Any] = {}
    for tag, raw in sorted(values.items()):
        entry: dict[str, Any] = {"tag": f"0x{tag:04X}"}
        if tag >> 8 == 0xE0:
            entry["redacted"] = True
        else:
            entry["hex"] = raw.hex().upper()
            entry["value"] = _json_value(tag, raw)
        view[tags.tag_name(tag)] = entry
    return view


def _json_value(tag: int, raw: bytes) -> Any:
    try:
        value = tags.decode_value(tag, raw)
    except ProtocolError:
        return None
    if isinstance(value, bytes):
        return None
    if isinstance(value, list):
        return [list(v) if isinstance(v, tuple) else v for v in value]
    return list(value) if isinstance(value, tuple) else value




def describe_provisioned(
    terminal: Terminal, default_compat: str = compat.STRICT.name
) -> dict[str, Any]:
    """The provisioning answer: the record and, if set, its credentials in clear."""
    view = describe_terminal(terminal, detail=True, default_compat=default_compat)
    view.pop("credentials")
    empty = dict.fromkeys(CREDENTIAL_FIELDS)
    view.update(describe_credentials(terminal.current) if terminal.current else empty)
    return view


# --- terminals ---------------------------------------------------------------------------

#: ``state=`` values of the terminal listing: the states, and online/offline.
TERMINAL_STATES: dict[str, frozenset[TerminalState]] = {
    **{s.value.lower(): frozenset({s}) for s in TerminalState},
    "online": frozenset({TerminalState.LOGGED_IN}),
    "offline": frozenset(set(TerminalState) - {TerminalState.LOGGED_IN}),
}
BEARERS = ("tcp", "udp", "sms")


def _searched(t: Terminal) -> str:
    """What ``search`` looks in: serial, IMEI, IMSI, MSISDN, address (one string: this
    runs for each of up to 100k terminals)."""
    return f"{t.serial or ''}|{t.imei}|{t.imsi or ''}|{t.msisdn or ''}|{t.address or ''}".lower()


def _terminal_order(t: Terminal) -> tuple[bool, str]:
    return t.serial is None, t.serial or t.imei


def list_terminals(
    terminals: Iterable[Terminal],
    query: Query,
    describe: Callable[[Terminal], dict[str, Any]],
    path: str = "/terminals",
) -> Page:
    """Terminals by serial (unregistered ones, without serial, by IMEI), filtered by
    ``search`` (a substring of serial, IMEI, IMSI, MSISDN or address), ``state`` and
    ``bearer``. From memory: fast enough for 100k terminals."""
    search = (query.get("search") or "").lower()
    states = frozenset().union(*(TERMINAL_STATES[s] for s in query.get("state") or ()))
    bearers = frozenset(query.get("bearer") or ())
    chosen = [
        t for t in terminals
        if (not states or t.state in states)
        and (not bearers or t.bearer in bearers)
        and (not search or search in _searched(t))
    ]
    chosen.sort(key=_terminal_order)
    return offset_page(chosen, describe, path, query)


# --- requests ----------------------------------------------------------------------------


def list_requests(registry: Registry, query: Query, path: str = "/requests"
                  ) -> Deferred[Page]:
    """Request history, newest first, by ``serial`` and ``state``."""
    d = registry.requests(query.get("serial"), query.get("state") or None, **_fetch(query))
    return d.addCallback(
        lambda found: cursor_page([(r.id, describe_request(r)) for r in found], path, query)
    )


def list_queue(registry: Registry, query: Query, path: str = "/queue") -> Page:
    """Active (queued or sent) requests of every terminal, oldest first."""
    return offset_page(registry.active_requests(), describe_request, path, query)


# --- alarms ------------------------------------------------------------------------------


def describe_alarm(id: int | None, alarm: Alarm) -> dict[str, Any]:
    return {
        "id": id,
        "serial": alarm.serial,
        "header_serial": alarm.header_serial,
        "msisdn": alarm.msisdn,
        "code": f"0x{alarm.code:04X}",
        "type": alarm.type,
        "status": alarm.status,
        "raised": alarm.status == 1,
        "cleared_code": alarm.cleared_code,
        "time": alarm.time,
    }


def list_alarms(registry: Registry, query: Query, path: str = "/alarms"
                ) -> Deferred[Page]:
    """Alarm history newest first by ``serial``, ``code`` and ``status``; with
    ``active`` the alarms raised now instead."""
    d = registry.alarm_page(
        query.get("serial"), active_only=bool(query.get("active")), code=query.get("code"),
        status=query.get("status"), **_fetch(query),
    )
    return d.addCallback(
        lambda rows: cursor_page([(i, describe_alarm(i, a)) for i, a in rows], path, query)
    )


# --- SMS outbox --------------------------------------------------------------------------

SMS_STATES = tuple(s.value for s in SmsState)


def describe_sms(sms: OutgoingSms) -> dict[str, Any]:
    """An outbox row; ``command`` is read from the WMMP header it carries."""
    try:
        header = Header.unpack(sms.message)
        command: str | None = header.command_name
        serial: str | None = header.serial
    except ProtocolError:
        command = serial = None
    return {
        "id": sms.id,
        "msisdn": sms.msisdn,
        "port": sms.port,
        "serial": serial,
        "command": command,
        "state": str(sms.state),
        "size": len(sms.message),
        "reference": sms.reference,
        "parts_sent": sms.parts_sent,
        "attempts": sms.attempts,
        "uncertain": sms.uncertain,
        "error": sms.error,
        "created_at": sms.created_at,
        "updated_at": sms.updated_at,
        "message": sms.message.hex().upper(),
    }


def list_sms(registry: Registry, query: Query, path: str = "/sms/outbox"
             ) -> Deferred[Page]:
    """The SMS outbox, newest first, by ``state`` and ``msisdn``."""
    d = registry.sms_page(states=query.get("state") or None, msisdn=query.get("msisdn"),
                          **_fetch(query))
    return d.addCallback(
        lambda found: cursor_page([(s.id, describe_sms(s)) for s in found], path, query)
    )


# --- message log -------------------------------------------------------------------------


def describe_message(id: int | None, entry: LogEntry) -> dict[str, Any]:
    command = entry.command_id
    return {
        "id": id,
        "time": entry.time,
        "serial": entry.serial,
        "direction": entry.direction,
        "bearer": entry.bearer,
        "command": None if command is None else command_name(command),
        "command_id": None if command is None else f"0x{command:04X}",
        "sequence_id": entry.sequence_id,
        "event": entry.event,
        "detail": entry.detail,
    }


def list_messages(registry: Registry, query: Query, path: str = "/messages"
                  ) -> Deferred[Page]:
    """The message log newest first, by ``serial``, ``direction`` and ``event``."""
    d = registry.message_page(
        query.get("serial"), direction=query.get("direction"), event=query.get("event"),
        **_fetch(query),
    )
    return d.addCallback(
        lambda rows: cursor_page([(i, describe_message(i, e)) for i, e in rows], path, query)
    )


# --- notifications -----------------------------------------------------------------------

#: ``state=`` values of the notification listing: stored state or delivery state.
NOTIFICATION_STATES = ("pending", "retrying", "leased", "kept", "unencodable")


def delivery_state(entry: AppNotification, now: float) -> str:
    """Where an undelivered notification stands with its application's callback:
    ``kept`` (retries used up: waits for FetchMessages or a new session),
    ``unencodable`` (the long connection cannot carry it: waits for FetchMessages,
    D-254), ``leased`` (fetched, awaiting AckMessages), ``retrying`` (an offer
    failed), else ``pending``."""
    if entry.state in (NotificationState.KEPT, NotificationState.UNENCODABLE):
        return str(entry.state)
    if entry.leased_until is not None and entry.leased_until > now:
        return "leased"
    return "retrying" if entry.attempts else "pending"


def describe_notification(entry: AppNotification, now: float) -> dict[str, Any]:
    return {
        "id": entry.id,
        "app_id": entry.app_id,
        "kind": entry.kind,
        "state": str(entry.state),
        "delivery": delivery_state(entry, now),
        "attempts": entry.attempts,
        "next_attempt": entry.next_attempt,
        "leased_until": entry.leased_until,
        "created_at": entry.created_at,
        "updated_at": entry.updated_at,
        "body": entry.body.decode("utf-8", "replace"),
    }


def list_notifications(registry: Registry, query: Query, now: float,
                       path: str = "/notifications") -> Page:
    """Undelivered notifications (all in memory) by ``app`` and ``state``, oldest first."""
    apps = [query["app"]] if query.get("app") else sorted(a.app_id for a in
                                                          registry.applications())
    states = frozenset(query.get("state") or ())
    chosen = [
        n for app_id in apps for n in registry.notifications(app_id)
        if not states or n.state in states or delivery_state(n, now) in states
    ]
    chosen.sort(key=lambda n: n.id or 0)
    return offset_page(chosen, lambda n: describe_notification(n, now), path, query)


# --- applications ------------------------------------------------------------------------


def list_apps(registry: Registry, query: Query, path: str = "/apps") -> Page:
    """Applications by app id, without their secrets."""
    apps = sorted(registry.applications(), key=lambda a: a.app_id)
    return offset_page(apps, provision.describe_application, path, query)


# --- the summary (GET /stats, m2mgw status) ----------------------------------------------


def _age(now: float, since: float | None) -> float | None:
    return None if since is None else max(0.0, now - since)


def registry_stats(registry: Registry, now: float) -> dict[str, Any]:
    """What the registry alone tells: the summary of a stopped gateway (``running``
    false); :func:`gateway_stats` adds what only the running gateway knows."""
    states = Counter(terminal.state for terminal in registry.terminals())
    depth, oldest = registry.queue_stats()
    pending = registry.pending_sms()
    apps = []
    for app in sorted(registry.applications(), key=lambda a: a.app_id):
        outbox = registry.notifications(app.app_id)
        apps.append({
            "app_id": app.app_id,
            "ec_code": app.ec_code,
            "callback": app.callback_url is not None,
            "connections": None,
            "backlog": len(outbox),
            "kept": sum(n.state == NotificationState.KEPT for n in outbox),
            "oldest_age": _age(now, min((n.created_at for n in outbox), default=None)),
        })
    return {
        "version": m2mgw.__version__,
        "running": False,
        "time": now,
        "started_at": None,
        "uptime": None,
        "terminals": {
            "known": sum(states.values()),
            "by_state": {state.value.lower(): states[state] for state in TerminalState},
            "online": None,
        },
        "messages": None,
        "queue": {"depth": depth, "oldest_age": _age(now, oldest)},
        "sms": {
            "outbox": len(pending),
            "oldest_age": _age(now, pending[0].created_at if pending else None),
            "modem": None,
        },
        "applications": apps,
        "registry": {
            "pending_writes": registry.pending_writes,
            "pending_rows": registry.pending_rows,
        },
        "refusals": None,
        "problems": None,
    }


class Health(Protocol):
    """Whether the gateway serves (the ``GatewayService``): ``/health``, ``GET /stats``."""

    @property
    def started_at(self) -> float | None:
        """When the service started; None before."""
        ...

    def problems(self) -> list[str]:
        """What keeps the gateway from serving, one line each; empty when all is up."""
        ...


def gateway_stats(observed: Observed, health: Health) -> dict[str, Any]:
    """``GET /stats``: one summary for the dashboard and ``m2mgw status`` (D-195).

    ``messages`` are cumulative counts since start-up, so that a client computes rates
    from two readings. Cheap enough to send every 2 s: one pass over the terminals (in
    memory), the rest is counters.
    """
    now = float(observed.clock.seconds())
    stats = registry_stats(observed.registry, now)
    engine = observed.engine
    bearers = Counter(s.bearer.kind if s.bearer else "none" for s in engine.sessions.values())
    stats.update(
        running=True,
        started_at=health.started_at,
        uptime=_age(now, health.started_at),
        messages={"in": sum(engine.stats.received.values()),
                  "out": sum(engine.stats.sent.values())},
        refusals={str(reason): n for reason, n in sorted(engine.refusals.totals.items()) if n},
        problems=health.problems(),
    )
    stats["terminals"]["online"] = {
        "total": len(engine.sessions), **{kind: bearers[kind] for kind in BEARERS},
    }
    for app in stats["applications"]:
        app["connections"] = len(observed.outbox.connections(app["app_id"]))
    sms = observed.sms
    if sms is None:
        stats["sms"] = None
    else:
        signal = sms.signal if sms.modem_up else None
        stats["sms"]["modem"] = {
            "device": sms.serial.device,
            "up": sms.modem_up,
            "signal": None if signal is None else {
                "rssi": signal.rssi, "dbm": signal.dbm, "measured_at": signal.measured_at,
            },
        }
    return stats


def status_lines(stats: Mapping[str, Any]) -> list[str]:
    """``m2mgw status``: the summary on one screen."""
    terminals, queue = stats["terminals"], stats["queue"]
    states = ", ".join(f"{n} {state}" for state, n in terminals["by_state"].items() if n)
    if stats["running"]:
        head = f"m2mgw {stats['version']}: running for {_duration(stats['uptime'])}"
    else:
        head = f"m2mgw {stats['version']}: not running (from the registry file)"
    lines = [head, f"terminals  {terminals['known']} known" + (f" ({states})" if states else "")]
    online = terminals["online"]
    if online is not None:
        lines.append(f"online     {online['total']} (" + ", ".join(
            f"{kind} {online[kind]}" for kind in BEARERS) + ")")
    if stats["messages"] is not None:
        lines.append(f"messages   {stats['messages']['in']} in, {stats['messages']['out']} out")
    oldest = queue["oldest_age"]
    lines.append(f"queue      {queue['depth']} requests"
                 + (f", oldest {_duration(oldest)}" if oldest is not None else ""))
    sms = stats["sms"]
    if sms is None:
        lines.append("sms        off")
    else:
        modem = sms["modem"]
        where = "" if modem is None else (
            f"; modem {modem['device']} " + ("up" if modem["up"] else "DOWN")
            + (f", signal {modem['signal']['dbm']} dBm" if modem["signal"] and
               modem["signal"]["dbm"] is not None else ""))
        lines.append(f"sms        {sms['outbox']} in the outbox{where}")
    for app in stats["applications"]:
        via = [f"{app['connections']} connections"] if app["connections"] else []
        via += ["callback"] if app["callback"] else []
        kept = f" ({app['kept']} kept)" if app["kept"] else ""
        lines.append(f"app        {app['app_id']}: {app['backlog']} undelivered{kept}"
                     + (f", {', '.join(via)}" if via else ""))
    registry = stats["registry"]
    lines.append(f"registry   {registry['pending_writes']} writes "
                 f"({registry['pending_rows']} rows) not yet committed")
    if stats["refusals"]:
        lines.append("refused    " + ", ".join(f"{r} {n}" for r, n in stats["refusals"].items()))
    if stats["problems"]:
        lines += [f"PROBLEM    {problem}" for problem in stats["problems"]]
    return lines


def _duration(seconds: float | None) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12s``: two units at most."""
    left = int(seconds or 0)
    parts = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size}{unit}")
            left %= size
    return " ".join(parts[:2])

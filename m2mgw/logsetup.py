"""The gateway's log output under ``twistd``: the ini's ``[log] level`` and ``format``.

twistd owns the log observer: it builds one after the plugin's options are parsed,
from ``--logger`` (a factory it imports by name and calls without arguments) or else
from ``-l``/``--logfile``, ``-n`` and ``--syslog``. :func:`use_for_twistd` runs in the
plugin's ``postOptions`` and, unless the user gave ``--logger``, names
:func:`twistd_observer` as that factory; the factory then writes where twistd
itself would have written, filtered at the ini's level, as text or JSON lines
(D-150, D-151).

Admin API access lines go out at debug through :class:`DebugAccessLogSite` (D-154).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LegacyLogObserverWrapper,
    Logger,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile
from twisted.web import http, server

from m2mgw.config import LogConfig

#: The admin API access lines, in a namespace of their own so they can be filtered.
access_log = Logger(namespace="m2mgw.admin.access")

#: Keys a legacy ``twisted.python.log`` event carries besides its ``log_*`` keys; the
#: text says all they say.
_LEGACY_KEYS = frozenset({"message", "time", "system", "isError", "printed", "format", "why"})
_LEGACY_NAMESPACE = "log_legacy"

#: The mode of a log file the gateway creates: the log names terminals, addresses and
#: applications, so other users do not read it; the group may (log shippers). D-321.
LOG_FILE_MODE = 0o640

#: What :func:`use_for_twistd` hands to :func:`twistd_observer`. twistd calls the
#: factory without arguments, so its inputs wait here (one twistd per process).
_twistd_setup: dict[str, Any] = {}


# --- JSON lines --------------------------------------------------------------------------


def event_as_json(event: Mapping[str, Any]) -> str:
    """One event as one JSON object: ``time``, ``level``, ``namespace``, ``text``, then
    the event's own fields under their own names (D-150)."""
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0.0), UTC).isoformat(
            timespec="milliseconds"
        ),
        "level": event["log_level"].name if "log_level" in event else None,
        "namespace": event.get("log_namespace"),
        "text": formatEvent(event),
    }
    if "log_system" in event:
        record["system"] = event["log_system"]
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    legacy = event.get("log_namespace") == _LEGACY_NAMESPACE
    for key, value in event.items():
        if key.startswith("log_") or key in record or (legacy and key in _LEGACY_KEYS):
            continue
        record[key] = value
    return json.dumps(record, default=_json_value, ensure_ascii=False)


def _json_value(value: object) -> object:
    """Fields JSON has no type for: bytes as hex, sets as lists, the rest as text."""
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def json_file_observer(out: IO[Any]) -> FileLogObserver:
    """Writes each event to ``out`` as one JSON line (cf. :func:`textFileLogObserver`)."""
    return FileLogObserver(out, lambda event: event_as_json(event) + "\n")


# --- the observer ------------------------------------------------------------------------


def gateway_observer(config: LogConfig, out: IO[Any]) -> ILogObserver:
    """``out`` in the ini's format, dropping events below the ini's level."""
    if config.format == "json":
        observer: ILogObserver = json_file_observer(out)
    else:
        observer = textFileLogObserver(out)
    return level_filtered(config, observer)


def level_filtered(config: LogConfig, observer: ILogObserver) -> ILogObserver:
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(config.level)])


def use_for_twistd(twistd_options: MutableMapping[str, Any] | None, config: LogConfig) -> None:
    """Make twistd log through :func:`twistd_observer` unless ``--logger`` was given.

    Called from the plugin's ``postOptions``, which runs before twistd's own, so the
    name given here is resolved by twistd exactly like a ``--logger`` argument.
    """
    if twistd_options is None or twistd_options.get("logger") is not None:
        return
    _twistd_setup.update(options=twistd_options, config=config)
    twistd_options["logger"] = f"{__name__}.{twistd_observer.__name__}"


def twistd_observer() -> ILogObserver:
    """twistd's ``--logger`` factory: the destination twistd would pick, our filter
    and format."""
    options: Mapping[str, Any] = _twistd_setup["options"]
    config: LogConfig = _twistd_setup["config"]
    if options.get("syslog"):
        from twisted.python.syslog import SyslogObserver

        syslog = SyslogObserver(options.get("prefix") or "twisted")
        return level_filtered(config, LegacyLogObserverWrapper(syslog.emit))
    return gateway_observer(config, twistd_log_file(options))


def twistd_log_file(options: Mapping[str, Any]) -> IO[Any]:
    """The file twistd's own Unix logger would write to, chosen the same way.

    ``-l -`` or ``-n`` without ``-l``: standard output; else ``-l FILE`` (default
    ``twistd.log``) as a :class:`LogFile` that rotates by size and on SIGUSR1, created
    with :data:`LOG_FILE_MODE` (an existing file keeps its mode, and so do the files
    rotation creates after it).
    """
    name = options.get("logfile") or ""
    if name == "-" or (not name and options.get("nodaemon")):
        if not options.get("nodaemon"):
            raise SystemExit("Daemons cannot log to stdout, exiting!")
        return sys.stdout
    path = name or "twistd.log"
    logfile = LogFile.fromFullPath(
        path, defaultMode=None if os.path.exists(path) else LOG_FILE_MODE
    )
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(logfile.rotate)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return logfile


# --- the admin API's access log ------------------------------------------------------------


class DebugAccessLogSite(server.Site):
    """A Site whose access lines go to the gateway log at debug (D-154).

    The admin API is called by the CLI and by monitoring: one info line per call would
    bury what the gateway does. The lines keep Twisted's combined log format.
    """

    def log(self, request: http.Request) -> None:
        line = self._logFormatter(self._logDateTime, request)
        access_log.debug("{access}", access=line)

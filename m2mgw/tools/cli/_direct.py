"""The direct database path: the SQLite registry opened by the CLI itself."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet import task
from twisted.internet.defer import ensureDeferred, maybeDeferred

from m2mgw.config import GatewayConfig
from m2mgw.core import requests as build
from m2mgw.core.registry import RegistryError
from m2mgw.core.registry.sqlite import SqliteRegistry
from m2mgw.tools.cli._errors import CliError


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


def find_terminal(registry: SqliteRegistry, key: str) -> Any:
    """The terminal of serial ``key``, else of IMEI ``key`` (not registered yet)."""
    terminal = registry.get(key) or registry.by_imei(key)
    if terminal is None:
        raise CliError(1, f"unknown terminal {key}")
    return terminal

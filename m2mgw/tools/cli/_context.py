"""Which way a command reaches the registry: the running gateway's admin API or the file."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from m2mgw.config import GatewayConfig
from m2mgw.core.registry import RegistryError
from m2mgw.core.registry.sqlite import SqliteRegistry, lock_holder, stored_instance_id
from m2mgw.tools.cli._admin_client import (
    AdminClient,
    Refused,
    Unauthorised,
    Unreachable,
    admin_client,
)
from m2mgw.tools.cli._direct import with_registry
from m2mgw.tools.cli._errors import CliError

PROBE_TIMEOUT = 3.0


class Context:
    """The loaded configuration, and the way to its registry (D-04, D-172, D-173).

    The registry's lock says whether a gateway runs on the file the ini names. None
    does: the CLI opens the file itself (and holds the lock meanwhile). One does: the
    CLI goes through that gateway's admin API, once it checked that the API serves this
    very registry; when no API answers, it only reads, from the file, read-only. A
    PostgreSQL registry (``[registry] url``) has no file and no lock: the CLI always
    goes through the admin API of a gateway on that database.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.database = os.path.abspath(config.registry.database)
        #: The PostgreSQL registry's URL without its password; None for SQLite.
        self.url = _redacted(config.registry.url) if config.registry.url else None
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
        if self._route is None and self.url is not None:
            self._route = (self._postgres_api(self.url), None)
        if self._route is None:
            try:
                holder = lock_holder(self.database)
            except RegistryError as exc:
                raise CliError(1, str(exc)) from None
            api = None if holder is None or self.api is None else self._checked(self.api)
            self._route = (api, holder)
        return self._route

    def _served(self, api: AdminClient, registry: str) -> dict[str, Any] | None:
        """What ``api`` says of the registry it serves; None if nothing answers."""
        try:
            served = api.call("GET", "/registry", timeout=PROBE_TIMEOUT)
        except Unreachable:
            return None
        except Unauthorised as exc:
            raise CliError(
                1, f"{exc}: it is not the gateway on {registry}, or it reads another "
                f"[admin] tokens_file than {self.config.source} names"
            ) from None
        except Refused as exc:
            raise CliError(
                1, f"the admin API at {api.where} does not say which registry it serves "
                f"({exc.reason}); cannot check that it serves {registry}"
            ) from None
        return served if isinstance(served, dict) else {}

    def _postgres_api(self, url: str) -> AdminClient:
        """The admin API of a gateway on the PostgreSQL registry ``url``."""
        if self.api is None:
            raise CliError(1, f"registry {url} is PostgreSQL: the CLI works through a "
                           f"gateway's admin API, and {self.config.source} has [admin] "
                           "listen = none")
        served = self._served(self.api, url)
        if served is None:
            raise CliError(1, f"registry {url} is PostgreSQL: the CLI works through a "
                           f"running gateway's admin API, and none answers at {self.api.where}")
        if (served.get("backend"), served.get("path")) != ("postgresql", url):
            raise CliError(1, f"the admin API at {self.api.where} serves registry "
                           f"{served.get('path')}, not {url} that {self.config.source} names")
        return self.api

    def _checked(self, api: AdminClient) -> AdminClient | None:
        """``api`` if it serves the registry the ini names; None if nothing answers."""
        served = self._served(api, self.database)
        if served is None:
            return None
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


def _redacted(url: str) -> str:
    """``url`` without its password; psycopg (the postgres extra) only when there is one."""
    from m2mgw.core.postgres.connection import redact

    return redact(url)

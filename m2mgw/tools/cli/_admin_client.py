"""Blocking JSON calls to the running gateway's admin API, over TCP or a ``unix:`` socket."""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Callable
from typing import Any

from m2mgw.config import GatewayConfig, connect_address, endpoint_parts
from m2mgw.tools.cli._errors import CliError
from m2mgw.web import auth

API_TIMEOUT = 10.0


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
            raise Unreachable(self.where) from None
        except (OSError, http.client.HTTPException) as exc:
            raise CliError(1, f"admin API at {self.where} failed: {exc}") from None
        finally:
            connection.close()
        if response.status == 401:
            raise Unauthorised(self.where, self.tokens_file if token else None)
        if response.status >= 400:
            raise Refused(_api_error(payload, response.status))
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


class Unreachable(CliError):
    """Nothing answers at the admin API's address: no gateway listens there."""

    def __init__(self, where: str) -> None:
        super().__init__(1, f"gateway not running (admin API at {where} unreachable)")


class Unauthorised(CliError):
    """The admin API refused our token (or its absence: ``tokens_file`` None)."""

    def __init__(self, where: str, tokens_file: str | None) -> None:
        what = f"the token of {tokens_file}" if tokens_file else "to answer without a token"
        super().__init__(1, f"the admin API at {where} refused {what}")


class Refused(CliError):
    """The gateway answered with an error status; ``reason`` is its one-line error."""

    def __init__(self, reason: str) -> None:
        super().__init__(1, f"gateway refused: {reason}")
        self.reason = reason


def _api_error(payload: bytes, status: int) -> str:
    try:
        return str(json.loads(payload)["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}"

"""``m2mgw``: the operator's command line for provisioning and inspecting terminals.

A gateway owns its registry: it holds the registry's lock, and its cache is the
truth. While one runs on the database the ini names, every command goes through that
gateway's admin API (TCP or a ``unix:`` socket), after checking that the API serves
this very registry (``GET /registry``: path and stored instance id). With no gateway
on the file, ``provision``, ``app-provision`` and the listings open the SQLite file
directly, so terminals can be provisioned before the first start; ``send`` needs the
running gateway. A gateway whose admin API is out of reach is never written under;
listings then read the file read-only. The API is called with blocking
``http.client``: this is a short-lived command and needs no reactor except for the
direct database path.

Exit status: 0 success, 1 runtime failure (gateway not running, request refused or
failed), 2 usage or configuration error; the reason is one line on stderr.
"""

from __future__ import annotations

import sys

from m2mgw.config import ConfigError, config_path, load_config
from m2mgw.tools.cli._admin_client import AdminClient, admin_client
from m2mgw.tools.cli._commands import send_body
from m2mgw.tools.cli._context import Context
from m2mgw.tools.cli._direct import with_registry
from m2mgw.tools.cli._errors import CliError
from m2mgw.tools.cli._parser import make_parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``m2mgw``."""
    try:
        args = make_parser().parse_args(argv)
        if not getattr(args, "needs_config", True):
            return int(args.run(None, args))
        try:
            config = load_config(config_path(args.config))
        except ConfigError as exc:
            raise CliError(2, str(exc)) from None
        return int(args.run(Context(config), args))
    except CliError as exc:
        print(f"m2mgw: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


__all__ = [
    "AdminClient",
    "CliError",
    "Context",
    "admin_client",
    "main",
    "make_parser",
    "send_body",
    "with_registry",
]

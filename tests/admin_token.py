"""The admin token of a test gateway, for every test that calls its admin API.

The gateway creates ``[admin] tokens_file`` (by default ``admin-tokens`` beside the
database) on its first start; tests read it the way the CLI does.
"""

from __future__ import annotations

from pathlib import Path

from m2mgw.config import GatewayConfig, load_config
from m2mgw.web.auth import first_token


def admin_token(config: GatewayConfig | str | Path) -> str:
    """The first token of the gateway's token file (config, or its ini file)."""
    if not isinstance(config, GatewayConfig):
        config = load_config(str(config))
    token = first_token(config.admin_tokens_file)
    assert token, f"no admin token in {config.admin_tokens_file} (gateway not started?)"
    return token


def bearer(config: GatewayConfig | str | Path) -> dict[str, str]:
    """The ``Authorization`` header that authenticates to that gateway's admin API."""
    return {"Authorization": f"Bearer {admin_token(config)}"}

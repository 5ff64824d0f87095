"""The ``twistd m2mgw`` plugin: options and service (design card)."""

from __future__ import annotations

from typing import ClassVar

from twisted.application.service import IService
from twisted.python import usage

import m2mgw
from m2mgw.config import CONFIG_ENV, SYSTEM_CONFIG, ConfigError, config_path, load_config
from m2mgw.logsetup import use_for_twistd


class Options(usage.Options):
    optParameters: ClassVar[list[list[str]]] = [
        [
            "config",
            "c",
            None,
            f"Path to the gateway's ini file [default: ${CONFIG_ENV}, else {SYSTEM_CONFIG}].",
        ],
    ]

    def opt_version(self) -> None:
        """Print m2mgw's version and exit."""
        print(f"m2mgw {m2mgw.__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        try:
            self["gateway_config"] = load_config(config_path(self["config"]))
        except ConfigError as exc:
            raise usage.UsageError(str(exc)) from None
        # twistd's options (the parent) choose the log observer after ours are parsed.
        use_for_twistd(getattr(self, "parent", None), self["gateway_config"].log)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from m2mgw.service import GatewayService, exit_on_startup_failure, freeze_heap_when_ready
    from m2mgw.systemd import Notifier

    gateway = GatewayService(
        options["gateway_config"], reactor, notifier=Notifier.from_environment()
    )
    freeze_heap_when_ready(gateway)  # before: a failure handled must not look like ready
    exit_on_startup_failure(gateway)
    return gateway

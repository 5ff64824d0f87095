"""The ``twistd m2mgw`` plugin: options and service (design card)."""

from __future__ import annotations

from typing import ClassVar

from twisted.application.service import IService
from twisted.python import usage

from m2mgw.config import ConfigError, load_config


class Options(usage.Options):
    optParameters: ClassVar[list[list[str]]] = [
        ["config", "c", "etc/m2mgw.ini", "Path to the gateway's ini file."],
    ]

    def postOptions(self) -> None:
        try:
            self["gateway_config"] = load_config(self["config"])
        except ConfigError as exc:
            raise usage.UsageError(str(exc)) from None


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from m2mgw.service import GatewayService

    return GatewayService(options["gateway_config"], reactor)

"""The terminal TCP listener's queue (D-375): room for a fleet reconnecting at once."""

from __future__ import annotations

import subprocess

import pytest
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol

from m2mgw.config import parse_config, with_backlog


def test_backlog_is_added_to_tcp_listeners_without_one() -> None:
    assert with_backlog("tcp:5236:interface=127.0.0.1", 4096) == (
        "tcp:5236:interface=127.0.0.1:backlog=4096"
    )
    assert with_backlog("tcp6:5236", 100) == "tcp6:5236:backlog=100"
    # The operator's own backlog= wins; other kinds have none to set.
    assert with_backlog("tcp:5236:backlog=64", 4096) == "tcp:5236:backlog=64"
    assert with_backlog("systemd:domain=INET:index=0", 4096) == "systemd:domain=INET:index=0"
    assert with_backlog("unix:/run/m2mgw.sock", 4096) == "unix:/run/m2mgw.sock"


def test_backlog_setting() -> None:
    assert parse_config("").tcp.backlog == 4096
    assert parse_config("[tcp]\nbacklog = 1000\n").tcp.backlog == 1000
    with pytest.raises(Exception, match="backlog"):
        parse_config("[tcp]\nbacklog = 0\n")


def test_the_listening_socket_gets_the_backlog() -> None:
    """``ss`` (iproute2, scripts/system-deps.sh) shows a listening socket's queue size as
    its Send-Q."""
    ports = []
    serverFromString(reactor, with_backlog("tcp:0:interface=127.0.0.1", 777)).listen(
        Factory.forProtocol(Protocol)
    ).addCallback(ports.append)
    (port,) = ports
    try:
        number = port.getHost().port
        shown = subprocess.run(
            ["ss", "-Hltn", f"sport = :{number}"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert shown[0] == "LISTEN" and shown[2] == "777"
    finally:
        port.stopListening()

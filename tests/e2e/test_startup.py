"""Honest start-up (issue #8): fail fast in one line, ready only when serving, systemd.

Most tests run the gateway the way systemd does, ``twistd -n m2mgw`` in its own
process on free loopback ports; a real ``AF_UNIX`` datagram socket stands in for
systemd's ``$NOTIFY_SOCKET`` and a real listening socket, passed as fd 3, for a
``.socket`` unit.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.trial import unittest

from m2mgw.config import parse_config
from m2mgw.protocol import terminal as role
from m2mgw.service import GatewayService, ListeningService, StartupError
from m2mgw.systemd import Notifier
from tests.e2e.support import client_for, gateway_config, provisioned, provisioning, until
from tests.spec_examples import SERIAL
from tests.twistd import (
    TWISTD,
    NotifySocket,
    admin_call,
    failed_start,
    free_port,
    gateway_argv,
    health,
    local,
    notify_socket,
    processes,
    tcp_login,
    wait_until,
    write_ini,
)
from tests.web import call

#: Also what modules written against this one import from it (the fixtures included).
__all__ = ["NotifySocket", "admin_call", "failed_start", "gateway_argv", "health", "local",
           "notify_socket", "processes", "wait_until", "write_ini"]
ROOT = Path(__file__).resolve().parents[2]


# --- fail fast ---------------------------------------------------------------------------


def occupied_tcp() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def occupied_udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.mark.parametrize("section", ["tcp", "http", "admin", "app"])
def test_stream_port_in_use_fails_in_one_line(
    tmp_path: Path, notify_socket: NotifySocket, section: str
) -> None:
    with occupied_tcp() as taken:
        where = local(taken.getsockname()[1])
        ini, _ = write_ini(tmp_path, **{section: {"listen": where}})
        failed_start(ini, notify_socket, f"m2mgw: cannot listen for {section} on {where}: "
                     "address already in use")


def test_udp_port_in_use_fails_in_one_line(tmp_path: Path, notify_socket: NotifySocket) -> None:
    with occupied_udp() as taken:
        port = taken.getsockname()[1]
        ini, _ = write_ini(tmp_path, udp={"port": str(port)})
        failed_start(ini, notify_socket, f"m2mgw: cannot listen for udp on "
                     f"udp:{port}:interface=127.0.0.1: address already in use")


def test_registry_in_missing_directory_fails_in_one_line(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    database = tmp_path / "missing" / "m2mgw.db"
    ini, _ = write_ini(tmp_path, registry={"database": str(database)})
    line = failed_start(ini, notify_socket, "m2mgw: cannot open the registry: ")
    assert str(database) in line
    assert "no such file or directory" in line.lower()


def test_systemd_endpoint_without_its_socket_fails_in_one_line(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    ini, _ = write_ini(tmp_path, tcp={"listen": "systemd:domain=INET:index=0"})
    failed_start(ini, notify_socket, "m2mgw: cannot listen for tcp on "
                 "systemd:domain=INET:index=0: systemd passed no socket at index 0")


# --- ready and systemd -------------------------------------------------------------------


def test_ready_and_stopping_reach_systemd(
    tmp_path: Path, notify_socket: NotifySocket, processes: list[subprocess.Popen[bytes]]
) -> None:
    ini, admin = write_ini(tmp_path, app={"listen": local(free_port())})
    log = tmp_path / "twistd.log"
    proc = subprocess.Popen(
        gateway_argv(ini, log), cwd=tmp_path,
        env={**os.environ, "NOTIFY_SOCKET": notify_socket.address},
    )
    processes.append(proc)
    ready = notify_socket.receive()
    assert ready["READY"] == "1"
    assert ready["STATUS"] == "ready: 0 terminals, 0 sessions"
    # READY=1 came after every listener was up: the admin API answers at once, all ok.
    assert health(admin) == (200, {"status": "ok", "terminals": 0, "sessions": 0})
    text = log.read_text()
    ready_at = text.index("m2mgw ready")
    for name in ("tcp", "udp", "http", "app", "admin"):
        assert -1 < text.index(f"{name} listening on") < ready_at, text

    proc.send_signal(signal.SIGTERM)
    stopping = notify_socket.receive()
    assert stopping == {"STOPPING": "1", "STATUS": "stopping"}
    assert proc.wait(timeout=20) == -signal.SIGTERM
    assert "Traceback" not in log.read_text()


# Socket activation as systemd does it (sd_listen_fds(3)): the socket on fd 3,
# LISTEN_FDS/LISTEN_FDNAMES, and LISTEN_PID equal to the pid of the process that
# runs (hence exec, not fork).
ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="m2mgw-tcp")
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_terminal_logs_in_through_a_socket_from_systemd(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    ini, admin = write_ini(tmp_path, tcp={"listen": "systemd:domain=INET:index=0"})
    log = tmp_path / "twistd.log"
    with occupied_tcp() as inherited:
        port = inherited.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-c", ACTIVATE, str(inherited.fileno()), *gateway_argv(ini, log)],
            cwd=tmp_path, pass_fds=(inherited.fileno(),),
        )
    processes.append(proc)
    wait_until(lambda: health(admin)[0] == 200, proc, log)
    assert admin_call(admin, "POST", "/terminals", provisioning(), ini)[0] == 201

    client = client_for(provisioned(), "tcp")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as link:
        events = tcp_login(link, client, client.login())
        assert [type(e) for e in events] == [role.LoggedIn], events
        status, shown = admin_call(admin, "GET", f"/terminals/{SERIAL}", ini=ini)
        assert (status, shown["session"]["bearer"]) == (200, "tcp"), shown
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == -signal.SIGTERM


# --- /health -----------------------------------------------------------------------------


def test_health_reports_the_missing_modem_until_it_appears(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    link = tmp_path / "modem"
    ini, admin = write_ini(tmp_path, sms={"device": str(link)})
    log = tmp_path / "twistd.log"
    proc = subprocess.Popen(gateway_argv(ini, log), cwd=tmp_path)
    processes.append(proc)

    # A missing modem is no start-up failure (it is reopened), but the gateway is not well.
    status, body = wait_until(lambda: health(admin), proc, log)
    assert status == 503, body
    assert body["status"] == "unavailable"
    assert body["problems"] == [f"modem: not open ({link}: no such file or directory)"]
    assert "m2mgw ready" in log.read_text()

    emulator = subprocess.Popen(
        [str(Path(TWISTD).with_name("m2mgw-modem-emulator")), "--link", str(link)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    processes.append(emulator)
    assert emulator.stdout is not None
    assert json.loads(emulator.stdout.readline())["link"] == str(link)
    assert wait_until(lambda: health(admin)[0] == 200, proc, log, timeout=20)
    assert health(admin) == (200, {"status": "ok", "terminals": 0, "sessions": 0})
    emulator.terminate()
    emulator.wait(timeout=10)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == -signal.SIGTERM


class StartupOrderTests(unittest.TestCase):
    """In process: ready waits for the slowest listener; one failure undoes the rest."""

    timeout = 15

    def setUp(self) -> None:
        root = Path(self.mktemp())
        root.mkdir(parents=True)
        self.gateway = GatewayService(gateway_config(str(root / "m2mgw.db")), reactor)
        self.bound: defer.Deferred[Any] = defer.Deferred()
        slow = ListeningService("test:slow", lambda: self.bound)
        slow.setName("slow")
        slow.setServiceParent(self.gateway)

    async def test_ready_only_after_every_listener(self) -> None:
        gateway = self.gateway
        gateway.startService()
        self.addCleanup(gateway.stopService)
        await until(lambda: gateway.port_of("admin") is not None, "the admin listener")
        admin = f"http://127.0.0.1:{gateway.port_of('admin')}/health"
        status, body, _ = await call("GET", admin)
        self.assertEqual(status, 503)
        self.assertEqual(
            body["problems"], ["gateway: starting", "slow: not listening on test:slow"]
        )
        assert gateway.ready is not None
        self.assertFalse(gateway.ready.called)

        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.bound.callback(port)
        await gateway.ready
        status, body, _ = await call("GET", admin)
        self.assertEqual((status, body["status"]), (200, "ok"))

    async def test_one_failed_listener_stops_the_others(self) -> None:
        gateway = self.gateway
        gateway.startService()
        await until(lambda: gateway.port_of("admin") is not None, "the admin listener")
        admin = gateway.port_of("admin")
        self.bound.errback(CannotListenError("127.0.0.1", 1, OSError(errno.EADDRINUSE, "x")))
        assert gateway.ready is not None
        with self.assertRaises(StartupError) as caught:
            await gateway.ready
        self.assertEqual(
            str(caught.exception), "cannot listen for slow on test:slow: address already in use"
        )
        self.assertEqual([listener.port for listener in gateway.listeners()], [None] * 5)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", admin), timeout=2).close()
        self.assertIn("registry: not open", " ".join(gateway.problems()))
        await gateway.stopService()  # twistd still calls it: nothing left to do


# --- the notifier ------------------------------------------------------------------------


def test_notifier_sends_one_datagram_to_a_path(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(path)})
        assert notifier.notify("READY=1", "STATUS=ready")
        assert systemd.recv(4096) == b"READY=1\nSTATUS=ready"
    # The service manager gone: no exception, just False (and a warning).
    assert not notifier.notify("STOPPING=1")


def test_notifier_is_off_outside_systemd() -> None:
    assert not Notifier.from_environment({}).enabled
    assert not Notifier.from_environment({}).notify("READY=1")
    assert not Notifier.from_environment({"NOTIFY_SOCKET": "vsock:1:2"}).enabled


# --- the unit files ----------------------------------------------------------------------


def unit(name: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file's sections as (key, value) lists (keys may repeat, as in systemd)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in (ROOT / "etc" / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, _, value = line.partition("=")
            current.append((key, value))
    return sections


def test_service_unit_has_what_the_gateway_relies_on() -> None:
    service = dict(unit("m2mgw.service")["Service"])
    allowed = [v for k, v in unit("m2mgw.service")["Service"] if k == "DeviceAllow"]
    assert service["Type"] == "notify"
    assert service["ExecStart"].endswith(
        "/twistd -n --pidfile= m2mgw --config /etc/m2mgw/m2mgw.ini"
    )
    assert service["User"] == "m2mgw"
    assert service["Restart"] == "on-failure"
    assert service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "m2mgw"
    assert "/var/lib/m2mgw" in service["ReadWritePaths"].split()
    assert "/dev/ttyUSB0 rw" in allowed
    assert (service["PrivateTmp"], service["NoNewPrivileges"]) == ("yes", "yes")
    assert "PrivateDevices" not in service  # it would hide the modem
    socket_unit = dict(unit("m2mgw-tcp.socket")["Socket"])
    assert socket_unit["Service"] == "m2mgw.service"
    assert socket_unit["FileDescriptorName"] == "m2mgw-tcp"
    # The ini line the socket unit documents is one the config accepts as it is.
    line = "listen = systemd:domain=INET:index=0"
    assert line in (ROOT / "etc" / "m2mgw-tcp.socket").read_text()
    assert parse_config(f"[tcp]\n{line}\n").tcp.listen == "systemd:domain=INET:index=0"


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    """``systemd-analyze verify`` warns (and still exits 0) on unknown keys: no output."""
    service = (ROOT / "etc" / "m2mgw.service").read_text()
    # The unit names the /opt/m2mgw install; verify checks the binary exists.
    (tmp_path / "m2mgw.service").write_text(service.replace("/opt/m2mgw/bin/twistd", TWISTD))
    shutil.copy(ROOT / "etc" / "m2mgw-tcp.socket", tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "m2mgw.service"),
         str(tmp_path / "m2mgw-tcp.socket")],
        capture_output=True, text=True, timeout=60,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")

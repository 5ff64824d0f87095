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
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.trial import unittest

from m2mgw.config import parse_config
from m2mgw.core import terminal as core
from m2mgw.protocol.framing import StreamFramer
from m2mgw.service import GatewayService, ListeningService, StartupError
from m2mgw.systemd import Notifier
from tests.admin_token import bearer
from tests.e2e.support import client_for, gateway_config, provisioned
from tests.e2e.test_process import TWISTD, free_port
from tests.spec_examples import BASE_KEY, DOWNLINK_PASSWORD, IMEI, IMSI, SERIAL, UPLINK_PASSWORD
from tests.web import call

ROOT = Path(__file__).resolve().parents[2]
#: One line at error level or above, in twistd's text log format.
ERROR_LINE = re.compile(r"\[[^\]]*#(error|critical)\]")
TERMINAL = {
    "imei": IMEI,
    "imsi": IMSI,
    "serial": SERIAL,
    "uplink_password": UPLINK_PASSWORD,
    "downlink_password": DOWNLINK_PASSWORD,
    "base_key": BASE_KEY,
    "cipher": "legacy",
    "apps": ["EC0001"],
    "default_app": "EC0001",
}


def local(port: int) -> str:
    return f"tcp:{port}:interface=127.0.0.1"


def write_ini(tmp: Path, **sections: dict[str, str]) -> tuple[Path, int]:
    """An ini on free loopback ports, ``sections`` overriding keys; (path, admin port)."""
    admin = free_port()
    values: dict[str, dict[str, str]] = {
        "registry": {"database": str(tmp / "m2mgw.db")},
        "tcp": {"listen": local(free_port())},
        "udp": {"port": str(free_port(socket.SOCK_DGRAM)), "interface": "127.0.0.1"},
        "http": {"listen": local(free_port()), "files_dir": str(tmp / "files")},
        "admin": {"listen": local(admin)},
    }
    for name, keys in sections.items():
        values.setdefault(name, {}).update(keys)
    ini = tmp / "m2mgw.ini"
    ini.write_text(
        "".join(
            f"[{name}]\n" + "".join(f"{key} = {value}\n" for key, value in keys.items())
            for name, keys in values.items()
        )
    )
    return ini, admin


def gateway_argv(ini: Path, log: Path | None = None) -> list[str]:
    return [TWISTD, "-n", "--pidfile=", *(["-l", str(log)] if log else []),
            "m2mgw", "--config", str(ini)]


def admin_call(
    admin: int, method: str, path: str, body: Any = None, ini: Path | None = None
) -> tuple[int, Any]:
    """One admin API call: (status, JSON body), error statuses included; with the
    admin token of the gateway of ``ini`` (``/health`` needs none)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json", **(bearer(ini) if ini else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def health(admin: int) -> tuple[int, Any]:
    return admin_call(admin, "GET", "/health")


def wait_until(check: Any, proc: subprocess.Popen[bytes], log: Path, timeout: float = 15) -> Any:
    """Poll ``check()`` until it returns a true value; fail if the gateway exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited with {proc.returncode}: {log.read_text()}")
        try:
            if result := check():
                return result
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.1)
    raise AssertionError("timed out; log:\n" + (log.read_text() if log.exists() else ""))


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket, here in the abstract namespace."""

    def __init__(self) -> None:
        self.address = f"@m2mgw-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])

    def receive(self, timeout: float = 15) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def pending(self) -> list[dict[str, str]]:
        self.sock.setblocking(False)
        messages = []
        try:
            while True:
                data = self.sock.recv(4096).decode()
                messages.append(dict(line.split("=", 1) for line in data.splitlines()))
        except BlockingIOError:
            return messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    listener = NotifySocket()
    yield listener
    listener.close()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed if the test leaves them running."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


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


def failed_start(ini: Path, notify: NotifySocket, expected: str) -> str:
    """Run a gateway that must not start: status 1 within seconds, one error line."""
    started = time.monotonic()
    result = subprocess.run(
        gateway_argv(ini), capture_output=True, text=True, timeout=30, cwd=ini.parent,
        env={**os.environ, "NOTIFY_SOCKET": notify.address},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert time.monotonic() - started < 10
    errors = [line for line in output.splitlines() if ERROR_LINE.search(line)]
    assert len(errors) == 1, output
    assert expected in errors[0], output
    assert "Traceback" not in output
    assert "m2mgw ready" not in output
    # systemd hears why (systemctl status) and never READY=1.
    messages = notify.pending()
    assert messages and all("READY" not in m for m in messages), messages
    assert messages[-1]["STATUS"] == "start-up failed: " + errors[0].split("m2mgw: ", 1)[1]
    return errors[0]


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
    assert admin_call(admin, "POST", "/terminals", TERMINAL, ini)[0] == 201

    client = client_for(provisioned(), "tcp")
    framer = StreamFramer()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as link:
        link.sendall(client.login())
        events: list[Any] = []
        while not any(isinstance(e, core.LoggedIn | core.LoginFailed) for e in events):
            data = link.recv(65536)
            assert data, "the gateway closed the connection"
            for frame in framer.feed(data):
                events.extend(client.receive(frame, time.time()))
        assert [type(e) for e in events] == [core.LoggedIn], events
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
        while gateway.port_of("admin") is None:
            await deferLater(0.01)
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
        while gateway.port_of("admin") is None:
            await deferLater(0.01)
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


def deferLater(delay: float) -> defer.Deferred[None]:
    from twisted.internet import task

    return task.deferLater(reactor, delay, lambda: None)


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

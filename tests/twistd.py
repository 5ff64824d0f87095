"""The gateway as operators run it, ``twistd -n m2mgw`` in its own process, for tests.

One home for what every process test needs: free loopback ports, the ini file, the
command lines (``twistd``, the CLI), the admin API (with the gateway's token), waiting
for ``/health``, the systemd notify socket, and the example terminal over plain
blocking sockets (no reactor in the test process).
"""

from __future__ import annotations

import json
import os
import re
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

from m2mgw.protocol import terminal as role
from m2mgw.protocol.framing import StreamFramer
from tests.admin_token import bearer
from tests.e2e.support import client_for, provisioned

TWISTD = str(Path(sys.executable).with_name("twistd"))
REPO = Path(__file__).resolve().parents[1]
#: One line at error level or above, in twistd's text log format.
ERROR_LINE = re.compile(r"\[[^\]]*#(error|critical)\]")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def admin_request(
    admin: int, method: str, path: str, body: Any = None, ini: Path | None = None
) -> tuple[int, Any]:
    """One admin API call: (status, JSON body); an error status raises ``HTTPError``.
    With the admin token of the gateway of ``ini`` (``/health`` needs none)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json", **(bearer(ini) if ini else {})},
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        return answer.status, json.loads(answer.read())


def admin_call(
    admin: int, method: str, path: str, body: Any = None, ini: Path | None = None
) -> tuple[int, Any]:
    """:func:`admin_request`, error statuses returned like the others."""
    try:
        return admin_request(admin, method, path, body, ini)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def health(admin: int) -> tuple[int, Any]:
    return admin_call(admin, "GET", "/health")


def wait_until(check: Any, proc: subprocess.Popen[Any], log: Path, timeout: float = 15) -> Any:
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


def cli(ini: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``m2mgw`` CLI in a subprocess on ``ini``, from the checkout (blocking: only
    where no in-process gateway must answer)."""
    return subprocess.run(
        [sys.executable, "-m", "m2mgw.tools.cli", "--config", str(ini), *args],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; killed if the test leaves them running."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- systemd -----------------------------------------------------------------------------


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


# --- one gateway, as an object -----------------------------------------------------------


class Gateway:
    """A ``twistd`` gateway process on free loopback ports; ``sections`` as in
    :func:`write_ini`."""

    def __init__(self, tmp: Path, **sections: dict[str, str]) -> None:
        self.tmp = tmp
        self.udp = free_port(socket.SOCK_DGRAM)
        udp = {"port": str(self.udp), **sections.pop("udp", {})}
        self.ini, self.admin = write_ini(tmp, udp=udp, **sections)
        self.log = tmp / "twistd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(gateway_argv(self.ini, self.log), cwd=self.tmp)
        wait_until(lambda: self.call("GET", "/health")["status"] == "ok", self.proc, self.log,
                   timeout=20)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """An admin API call's JSON answer; an error status raises ``HTTPError``."""
        ini = None if path == "/health" else self.ini
        return admin_request(self.admin, method, path, body, ini)[1]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process and wait; twistd re-raises a handled SIGTERM on exit."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=20)

    def kill(self) -> None:
        """SIGKILL the process if it still runs (a test's clean-up)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def logtext(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(tmp_path)
    yield gw
    gw.kill()


# --- the example terminal over blocking sockets -------------------------------------------


class UdpTerminal:
    """The example terminal over a blocking UDP socket."""

    def __init__(self, port: int) -> None:
        self.client = client_for(provisioned(), "udp")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.2)
        self.target = ("127.0.0.1", port)
        self.events: list[Any] = []

    def send(self, frame: bytes) -> None:
        self.sock.sendto(frame, self.target)

    def pump(self, until: Any, timeout: float = 10) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if until(event):
                    self.events.remove(event)
                    return event
            self.receive()
        raise AssertionError(f"timed out; events: {self.events}")

    def receive(self) -> None:
        """Take the next datagram, if one comes within the socket's timeout; keep its
        events and send what the client answers."""
        try:
            data, _ = self.sock.recvfrom(65535)
        except TimeoutError:
            return
        self.events.extend(self.client.receive(data, time.time()))
        for out in self.client.data_to_send():
            self.send(out)

    def log_in(self) -> role.LoggedIn | role.LoginFailed:
        """Send a LOGIN; its outcome."""
        self.send(self.client.login())
        return self.pump(lambda e: isinstance(e, role.LoggedIn | role.LoginFailed))


def tcp_login(link: socket.socket, client: role.TerminalClient, login: bytes) -> list[Any]:
    """Send ``client``'s ``login`` frame over a connected blocking TCP socket; the
    client's events up to its answer."""
    framer = StreamFramer()
    link.sendall(login)
    events: list[Any] = []
    while not any(isinstance(e, role.LoggedIn | role.LoginFailed) for e in events):
        data = link.recv(65536)
        assert data, "the gateway closed the connection"
        for frame in framer.feed(data):
            events.extend(client.receive(frame, time.time()))
    return events

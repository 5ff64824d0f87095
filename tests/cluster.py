"""Several ``twistd -n m2mgw`` nodes on one throw-away PostgreSQL database, for tests.

Each :class:`Node` is a :class:`tests.twistd.Gateway` with its own directory, ini and
loopback ports and ``[registry] url`` on the shared database, ``node`` its name, a short
``node_lease`` so that a dead node's terminals come free within seconds, and one master
key file for all. The terminal (:class:`Terminal`) and the application
(:class:`LongConnection`) are blocking sockets driven by the test, so the test process
runs no reactor; every wait has a deadline.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from m2mgw.app import longconn as lc
from m2mgw.app import operations as ops
from m2mgw.protocol import messages as m
from m2mgw.protocol import terminal as role
from m2mgw.protocol.constants import ACK_BIT, Command
from m2mgw.protocol.framing import StreamFramer
from tests.e2e.support import client_for, provisioned, provisioning
from tests.twistd import Gateway, free_port, gateway_argv, local, wait_until

APP_ID = "EC0001"
APP_PASSWORD = "s3cretPW"
APP_BASE_KEY = "AppBaseKey0123456789ABCD"
#: Seconds a node's lease lasts in these tests (renewed every third of it).
LEASE = 3.0


class Node(Gateway):
    """One node named ``name`` on ``url``; ``sections`` as :func:`tests.twistd.write_ini`."""

    def __init__(self, root: Path, name: str, url: str, **sections: dict[str, str]) -> None:
        home = root / name
        home.mkdir()
        self.name = name
        self.url = url
        self.app_port = free_port()
        registry = {"url": url, "node": name, "node_lease": f"{LEASE}s",
                    "master_key_file": str(root / "m2mgw.key"), **sections.pop("registry", {})}
        protocol = {"sync_trap_wait": "1s", **sections.pop("protocol", {})}
        app = {"listen": local(self.app_port), **sections.pop("app", {})}
        super().__init__(home, registry=registry, protocol=protocol, app=app, **sections)

    def launch(self) -> None:
        """Start the process without waiting for it (:meth:`ready` waits)."""
        self.proc = subprocess.Popen(gateway_argv(self.ini, self.log), cwd=self.tmp)

    def ready(self) -> None:
        assert self.proc is not None
        wait_until(lambda: self.call("GET", "/health")["status"] == "ok", self.proc, self.log,
                   timeout=30)

    def provision(self, index: int) -> str:
        """Provision test terminal ``index`` through this node's admin API; its serial."""
        terminal = provisioned(index)
        self.call("POST", "/terminals", provisioning(terminal))
        assert terminal.serial
        return terminal.serial

    def provision_app(self, serials: list[str]) -> None:
        self.call("POST", "/apps", {"app_id": APP_ID, "password": APP_PASSWORD,
                                    "base_key": APP_BASE_KEY, "terminals": serials})

    def submit(self, serial: str, data: bytes) -> int:
        """Queue a TRANSPARENT_DATA to ``serial`` here; the request's id."""
        answer = self.call("POST", f"/terminals/{serial}/requests", {
            "command": "TRANSPARENT_DATA", "data": data.hex(), "source_ec": APP_ID})
        return int(answer["id"])

    def requests(self, serial: str) -> dict[int, str]:
        """Every request of ``serial`` by id, and its state, as this node reads them."""
        page = self.call("GET", f"/requests?serial={serial}&limit=1000")
        return {int(r["id"]): r["state"] for r in page["items"]}

    def terminal(self, serial: str) -> dict[str, Any]:
        return self.call("GET", f"/terminals/{serial}")

    def owner(self, serial: str) -> str | None:
        """The node the database says holds ``serial``'s session, live or not."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            row = conn.execute("SELECT node FROM terminal_owners WHERE serial = %s",
                               (serial,)).fetchone()
        return None if row is None else str(row[0])


def start_all(nodes: list[Node]) -> None:
    """Start the first node (it creates the schema and the master key), then the
    others at once."""
    first, *others = nodes
    first.start()
    for node in others:
        node.launch()
    for node in others:
        node.ready()


def eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll ``check()`` until it returns a true value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except urllib.error.HTTPError as exc:  # 404 until the node knows it...
            result = exc
        else:
            if result:
                return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}: last {result!r}")
        time.sleep(0.05)


class Terminal:
    """Test terminal ``index`` over a blocking UDP socket to one node at a time."""

    def __init__(self, index: int) -> None:
        self.client = client_for(provisioned(index), "udp")
        self.serial = self.client.serial
        self.sock: socket.socket | None = None
        self.target = ("127.0.0.1", 0)
        #: Every event of the client, in order.
        self.events: list[Any] = []

    def connect(self, node: Node) -> None:
        """Talk to ``node`` from a new socket (a new source port, as after a move)."""
        if self.sock is not None:
            self.sock.close()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.05)
        self.target = ("127.0.0.1", node.udp)

    def send(self, frame: bytes) -> None:
        assert self.sock is not None
        self.sock.sendto(frame, self.target)

    def receive(self, answer: bool = True) -> list[Any]:
        """The events of the datagrams that arrive within the socket's timeout; with
        ``answer``, what the client answers is sent."""
        assert self.sock is not None
        got: list[Any] = []
        try:
            while True:
                data, _ = self.sock.recvfrom(65535)
                got += self.client.receive(data, time.time())
        except (TimeoutError, BlockingIOError):
            pass
        outgoing = self.client.data_to_send()
        if answer:
            for frame in outgoing:
                self.send(frame)
        self.events += got
        return got

    def pump(self, until: Callable[[Any], bool], timeout: float = 15.0) -> Any:
        """Answer the node until an event satisfies ``until``; that event."""
        deadline = time.monotonic() + timeout
        seen = len(self.events)
        while time.monotonic() < deadline:
            self.receive()
            for event in self.events[seen:]:
                if until(event):
                    return event
            seen = len(self.events)
        raise AssertionError(f"timed out; events: {self.events[-10:]}")

    def log_in(self, node: Node) -> None:
        """Log in on ``node`` and send the sync trap, so that requests may follow."""
        self.connect(node)
        self.send(self.client.login())
        event = self.pump(lambda e: isinstance(e, role.LoggedIn | role.LoginFailed))
        assert isinstance(event, role.LoggedIn), event
        self.send(self.client.sync_trap())

    def uplink(self, data: bytes) -> None:
        """TRANSPARENT_DATA to the application, answered by the node."""
        self.send(self.client.transparent_data(data, APP_ID))
        self.pump(lambda e: isinstance(e, role.Answer)
                  and e.command == Command.TRANSPARENT_DATA | ACK_BIT)

    def received_data(self) -> list[bytes]:
        """The user data of every platform TRANSPARENT_DATA received, in order."""
        return [e.message.user_data for e in self.events
                if isinstance(e, role.PlatformRequest) and isinstance(e.message, m.TransparentData)]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class LongConnection:
    """The application on a blocking long connection (spec 6), answering every
    notification with result 0 and recording each one as it arrives, repeats too."""

    def __init__(self, node: Node) -> None:
        creds = lc.AppCredentials(APP_ID, APP_PASSWORD, APP_BASE_KEY)
        self.session = lc.ClientSession(creds, time.time())
        self.sock = socket.create_connection(("127.0.0.1", node.app_port), timeout=5)
        self.sock.settimeout(0.05)
        self.framer = StreamFramer()
        self.notifications: list[Any] = []
        self.answers: dict[int, Any] = {}
        self.session.login(time.time(), heartbeat_interval=60)
        self._flush()
        eventually(lambda: self.run() or self.session.state is lc.State.ACTIVE,
                   what="the application's login")

    def _flush(self) -> None:
        data = self.session.data_to_send()
        if data:
            self.sock.sendall(data)

    def run(self) -> None:
        """Take what arrived, answer it, send what is due."""
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            data = None
        now = time.time()
        events = self.session.receive_data(data, now) if data else []
        events += self.session.tick(now)
        for event in events:
            if isinstance(event, lc.RequestReceived):
                self.notifications.append(event.payload)
                response = ops.OPERATIONS[type(event.payload).__name__].response
                self.session.answer(event.sequence_id, response(), now)
            elif isinstance(event, lc.AnswerReceived):
                self.answers[event.sequence_id] = event.response
        self._flush()

    def call(self, request: object, timeout: float = 10.0) -> Any:
        """One operation (SendData...) on the long connection; its response."""
        seq = self.session.send_request(request, time.time())
        self._flush()
        eventually(lambda: self.run() or seq in self.answers, timeout, what=f"{request}")
        return self.answers.pop(seq)

    def of(self, kind: type) -> list[Any]:
        """The notifications of one kind (``ops.DeliverData``...) received so far."""
        return [n for n in self.notifications if isinstance(n, kind)]

    def settle(self, seconds: float) -> None:
        """Keep answering for ``seconds`` more (a repeat would arrive meanwhile)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.run()

    def close(self) -> None:
        self.sock.close()

"""Several real ``twistd -n m2mgw`` nodes on one throw-away PostgreSQL (issue #13).

(a) a terminal on node A gets a request submitted on node B; (b) a terminal moves from
A to B and its queued requests follow; (c) node A is SIGKILLed and its terminals log in
on B with nothing lost; (d) an application connected to B receives the uplink of
terminals on A and C exactly once per notifyId; (e) its SendData through B reaches a
terminal on A, and the outcome comes back to it on B. Each test has a schema of its own on
the session's cluster and nodes with a 3 s lease; every process is killed at the end.
"""

from __future__ import annotations

import itertools
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from m2mgw.app import operations as ops
from m2mgw.protocol import messages as m
from m2mgw.protocol import terminal as role
from tests.cluster import LEASE, LongConnection, Node, Terminal, eventually, start_all
from tests.pgcluster import PgCluster

pytestmark = pytest.mark.cluster
_schemas = itertools.count(1)


@pytest.fixture
def nodes(postgres_cluster: PgCluster, tmp_path: Path) -> Iterator[list[Node]]:
    """Three nodes a, b, c on a fresh database, started; killed afterwards."""
    url = postgres_cluster.create_schema(f"cluster_{next(_schemas)}")
    started = [Node(tmp_path, name, url) for name in "abc"]
    try:
        start_all(started)
        yield started
    finally:
        for node in started:
            node.kill()


def known(node: Node, serial: str) -> None:
    """Wait until ``node`` read the record another node provisioned."""
    eventually(lambda: node.terminal(serial), what=f"{serial} on node {node.name}")


def test_a_terminal_on_a_gets_a_request_submitted_on_b(nodes: list[Node]) -> None:
    a, b, _ = nodes
    serial = a.provision(0)
    known(b, serial)
    terminal = Terminal(0)
    terminal.log_in(a)
    eventually(lambda: b.terminal(serial)["state"] == "LOGGED_IN", what="B sees the login")
    ids = [b.submit(serial, bytes([n])) for n in range(3)]
    terminal.pump(lambda e: len(terminal.received_data()) == 3)
    assert terminal.received_data() == [b"\x00", b"\x01", b"\x02"]
    states = eventually(lambda: all(s == "succeeded" for s in b.requests(serial).values())
                        and b.requests(serial))
    assert sorted(states) == ids
    assert f"Request {ids[0]} (TRANSPARENT_DATA) sent" in a.logtext()
    assert f"Request {ids[0]} (TRANSPARENT_DATA) sent" not in b.logtext()
    # The session is A's in the database until the terminal logs out.
    assert a.owner(serial) == "a"
    terminal.send(terminal.client.logout())
    terminal.pump(lambda e: isinstance(e, role.LoggedOut))
    eventually(lambda: a.owner(serial) is None, what="the claim released")


def test_a_terminal_moves_from_a_to_b_and_its_queued_requests_follow(nodes: list[Node]) -> None:
    a, b, _ = nodes
    serial = a.provision(0)
    known(b, serial)
    terminal = Terminal(0)
    terminal.log_in(a)
    terminal.pump(lambda e: isinstance(e, role.Answer))  # the sync trap's ACK: synced
    # Three requests while the terminal stays silent: one sent (unanswered), two queued.
    ids = [a.submit(serial, bytes([n])) for n in range(3)]
    eventually(lambda: "sent" in a.requests(serial).values(), what="the first request sent")
    old = terminal.sock
    terminal.sock = None  # the old path stays open, to see what A still sends on it
    terminal.log_in(b)
    terminal.pump(lambda e: len(set(terminal.received_data())) == 3)
    assert sorted(set(terminal.received_data())) == [b"\x00", b"\x01", b"\x02"]
    eventually(lambda: all(s == "succeeded" for s in b.requests(serial).values()),
               what="every request answered on B")
    assert sorted(b.requests(serial)) == ids
    # A dropped the session without a LOGOUT to the terminal, which talks to B now.
    eventually(lambda: "dropped here: taken over by node b" in a.logtext(), what="A drops it")
    assert old is not None
    late = []
    try:
        while True:
            data, _ = old.recvfrom(65535)
            late.append(data)
    except (TimeoutError, BlockingIOError):
        pass
    old.close()
    commands = {int.from_bytes(frame[2:4], "big") for frame in late}
    assert m.Logout.COMMAND not in commands, late
    assert b.terminal(serial)["state"] == "LOGGED_IN"
    assert a.terminal(serial)["state"] == "LOGGED_IN"  # A read B's record again


def test_node_a_killed_its_terminals_log_in_on_b_with_nothing_lost(nodes: list[Node]) -> None:
    a, b, c = nodes
    serials = [a.provision(n) for n in range(3)]
    for serial in serials:
        known(b, serial)
    terminals = [Terminal(n) for n in range(3)]
    for terminal in terminals:
        terminal.log_in(a)
        terminal.pump(lambda e: isinstance(e, role.Answer))
    # Requests for the first two from C: sent by A, and none answered before A dies.
    ids = {serial: [c.submit(serial, f"{serial[-2:]}{n}".encode()) for n in range(2)]
           for serial in serials[:2]}
    eventually(lambda: all("sent" in a.requests(s).values() for s in serials[:2]),
               what="A sent the first requests")
    assert a.proc is not None
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(timeout=10)
    # They log in on B at once: no need to wait for A's lease to lapse.
    for terminal in terminals[:2]:
        terminal.log_in(b)
    for terminal, serial in zip(terminals[:2], serials[:2], strict=True):
        terminal.pump(lambda e, t=terminal: len(set(t.received_data())) == 2)
        expected = [f"{serial[-2:]}{n}".encode() for n in range(2)]
        assert sorted(set(terminal.received_data())) == expected
        eventually(lambda s=serial: set(b.requests(s).values()) == {"succeeded"},
                   what=f"{serial}'s requests answered")
        assert sorted(b.requests(serial)) == ids[serial]
    # The third never comes back: once A's lease lapsed, its session ends as offline.
    eventually(lambda: b.terminal(serials[2])["state"] == "OFFLINE", timeout=6 * LEASE,
               what="A's silent terminal offline")
    assert c.terminal(serials[0])["state"] == "LOGGED_IN"
    eventually(lambda: c.terminal(serials[2])["state"] == "OFFLINE", what="C sees it too")
    assert "node a expired" in b.logtext() + c.logtext()


def test_an_application_on_b_gets_uplink_from_a_and_c_once_per_notify_id(
    nodes: list[Node],
) -> None:
    a, b, c = nodes
    serials = [a.provision(n) for n in range(4)]
    a.provision_app(serials)
    for node in (b, c):
        eventually(lambda n=node: n.call("GET", "/apps")["items"], what="the application")
    app = LongConnection(b)
    terminals = [Terminal(n) for n in range(4)]
    for n, terminal in enumerate(terminals):
        terminal.log_in(a if n % 2 == 0 else c)
    per_terminal = 15
    for round_ in range(per_terminal):
        for terminal in terminals:
            terminal.uplink(f"{terminal.serial[-4:]}-{round_:02d}".encode())
    total = per_terminal * len(terminals)
    eventually(lambda: app.run() or len(app.of(ops.DeliverData)) >= total, timeout=20,
               what=f"{total} DeliverData")
    app.settle(2.0)
    # Each login and sync trap is told too (NotifyTerminalState...): once each as well.
    ids = Counter(n.notify_id for n in app.notifications)
    assert set(ids.values()) == {1}, ids.most_common(3)
    received = app.of(ops.DeliverData)
    assert len(received) == total
    for terminal in terminals:
        mine = [n.data for n in received if n.terminal_id == terminal.serial]
        assert mine == [f"{terminal.serial[-4:]}-{r:02d}".encode() for r in range(per_terminal)]
    app.close()


def test_an_application_on_b_sends_to_a_terminal_on_a_and_hears_the_outcome(
    nodes: list[Node],
) -> None:
    a, b, _ = nodes
    serial = a.provision(0)
    a.provision_app([serial])
    eventually(lambda: b.call("GET", "/apps")["items"], what="the application on B")
    terminal = Terminal(0)
    terminal.log_in(a)
    terminal.pump(lambda e: isinstance(e, role.Answer))
    app = LongConnection(b)
    sent = app.call(ops.SendData(terminal_id=serial, data=b"open valve", biz_seq="b-1"))
    assert sent.result_code in (ops.ResultCode.OK, ops.ResultCode.TERMINAL_OFFLINE), sent
    terminal.pump(lambda e: terminal.received_data() == [b"open valve"])
    eventually(lambda: app.run() or app.of(ops.NotifyResult), what="the NotifyResult on B")
    app.settle(1.0)
    [result] = app.of(ops.NotifyResult)
    assert (result.msg_id, result.terminal_id, result.state, result.biz_seq) == (
        sent.msg_id, serial, "ACKED", "b-1")
    status = app.call(ops.QueryMessageStatus(msg_id=sent.msg_id))
    assert status.state == "ACKED", status
    app.close()

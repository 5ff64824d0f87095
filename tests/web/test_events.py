"""``GET /events`` and ``GET /stats`` against a gateway and a terminal on loopback."""

from __future__ import annotations

import json
import socket
from typing import Any

import treq
from twisted.internet import reactor, task
from twisted.trial import unittest

import m2mgw
from m2mgw.protocol import terminal as role
from m2mgw.protocol.constants import Command
from tests.e2e.support import TestTerminal, client_for, connect_udp, provisioned, until
from tests.web import start_gateway


def parse(stream: bytes) -> list[tuple[str, Any]]:
    """The (event, data) messages of a Server-Sent Events stream; comments left out."""
    messages = []
    for block in stream.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if line and not line.startswith(":") and ": " in line)
        if "event" in fields:
            messages.append((fields["event"], json.loads(fields["data"])))
    return messages


class EventTests(unittest.TestCase):
    async def setUp(self) -> None:
        self.gw = await start_gateway(self, udp=True)
        self.gateway = self.gw.gateway
        self.stream = self.gateway.getServiceNamed("events")

    async def open_stream(self) -> list[bytes]:
        """An /events client; the chunks it received so far."""
        response = await treq.get(f"{self.gw.admin}/events", persistent=False, unbuffered=True,
                                  headers={"Authorization": f"Bearer {self.gw.token}"})
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["text/event-stream; charset=utf-8"])
        chunks: list[bytes] = []
        treq.collect(response, chunks.append).addErrback(lambda _: None)
        await until(lambda: chunks)
        return chunks

    async def log_in(self) -> TestTerminal:
        record = provisioned()
        await self.gateway.registry.add(record)
        term = TestTerminal(client_for(record, "udp"))
        _, port = connect_udp(term, self.gateway.udp_port)
        self.addCleanup(port.stopListening)
        term.send(term.client.login())
        logged_in = await term.wait_type(role.LoggedIn)
        if logged_in.result == 0:
            term.send(term.client.trap([]))
        await term.answer_to(Command.CONFIG_TRAP)
        return term

    async def test_stats_first_then_terminal_and_request_changes(self) -> None:
        chunks = await self.open_stream()
        [(event, stats)] = parse(b"".join(chunks))
        self.assertEqual((event, stats["running"], stats["version"]),
                         ("stats", True, m2mgw.__version__))
        term = await self.log_in()
        serial = term.client.identity.serial

        def events(kind: str) -> list[Any]:
            return [data for name, data in parse(b"".join(chunks)) if name == kind]

        await until(lambda: any(e["state"] == "LOGGED_IN" for e in events("terminal")))
        [login] = [e for e in events("terminal") if e["state"] == "LOGGED_IN"]
        self.assertEqual((login["serial"], login["bearer"]), (serial, "udp"))
        self.assertIsInstance(login["last_seen"], float)

        status, request, _ = await self.gw.api(
            "POST", f"/terminals/{serial}/requests", {"command": "CONFIG_GET", "tags": [17]}
        )
        self.assertEqual(status, 202)
        await until(lambda: any(e["state"] == "succeeded" for e in events("request")))
        mine = [e for e in events("request") if e["id"] == request["id"]]
        self.assertEqual([e["state"] for e in mine], ["queued", "sent", "succeeded"])
        self.assertEqual(set(mine[0]), {"id", "serial", "state", "outcome"})

        term.send(term.client.logout())
        await until(lambda: any(e["state"] == "LOGGED_OUT" for e in events("terminal")))
        # Every 2 s the summary again (the injected clock is the real reactor here).
        await until(lambda: len(events("stats")) >= 2, timeout=5)
        self.assertEqual(events("stats")[-1]["messages"]["in"],
                         sum(self.gateway.engine.stats.received.values()))

    async def test_a_client_that_does_not_read_is_dropped_and_the_others_go_on(self) -> None:
        self.stream.max_buffer = 256 * 1024
        reader = await self.open_stream()
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", self.gateway.port_of("admin")))
        self.addCleanup(slow.close)
        slow.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                     f"{self.gw.token}\r\n\r\n".encode())
        await until(lambda: len(self.stream.clients) == 2)
        chunk = "x" * 60_000
        for _ in range(400):
            if len(self.stream.clients) < 2:
                break
            self.stream.publish("test", {"data": chunk})
            await task.deferLater(reactor, 0.005)
        self.assertEqual(len(self.stream.clients), 1)
        self.stream.publish("test", {"data": "after"})
        await until(lambda: b'"after"' in b"".join(reader))

    async def test_stats_summary(self) -> None:
        status, before, _ = await self.gw.api("GET", "/stats")
        self.assertEqual(status, 200)
        self.assertEqual(set(before), {
            "version", "running", "time", "started_at", "uptime", "terminals", "messages",
            "queue", "sms", "applications", "registry", "refusals", "problems",
        })
        self.assertEqual((before["messages"], before["terminals"]["known"]),
                         ({"in": 0, "out": 0}, 0))
        self.assertEqual(before["terminals"]["online"],
                         {"total": 0, "tcp": 0, "udp": 0, "sms": 0})
        self.assertIsNone(before["sms"])  # no modem configured
        self.assertGreaterEqual(before["uptime"], 0)
        term = await self.log_in()
        await self.gateway.router.submit(term.client.identity.serial, Command.CONFIG_GET,
                                         b"\x00\x11\x00\x00")
        status, after, _ = await self.gw.api("GET", "/stats")
        # LOGIN and the CONFIG_TRAP in; their two answers (and the request) out.
        self.assertGreaterEqual(after["messages"]["in"], 2)
        self.assertGreaterEqual(after["messages"]["out"], 2)
        self.assertEqual(after["terminals"]["known"], 1)
        self.assertEqual(after["terminals"]["by_state"]["logged_in"], 1)
        self.assertEqual(after["terminals"]["online"]["udp"], 1)
        self.assertEqual(after["problems"], [])
        self.assertIn("pending_writes", after["registry"])

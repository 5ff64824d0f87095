"""``GET /events``: the gateway's changes as Server-Sent Events, for the console (D-196).

Events: ``stats`` (the ``GET /stats`` summary) on connecting and every
:data:`STATS_INTERVAL` seconds, ``terminal`` ``{"serial", "state", "bearer",
"last_seen"}`` when a terminal's state changes (login, logout, offline) and
``request`` ``{"id", "serial", "state", "outcome"}`` when a request changes state;
a comment every :data:`KEEPALIVE_INTERVAL` seconds keeps proxies from closing an
idle stream.

The gateway tells this stream of changes through observer lists (the engine's
``state_observers``, the registry's ``request_observers``; subscribed where the
gateway is assembled) rather than being polled.
Those calls sit on busy paths, so with no client attached they return at once; each
event is encoded once for all clients. A client that does not read is never waited
for: each is a push producer of its request, paused by Twisted once its transport
buffers 64 KiB, and what arrives meanwhile is kept up to :data:`MAX_BUFFER` bytes; a
client past that is dropped.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from m2mgw.core.model import Request as PlatformRequest
from m2mgw.core.model import Terminal
from m2mgw.core.session import Session
from m2mgw.web import views

log = Logger()

STATS_INTERVAL = 2.0
KEEPALIVE_INTERVAL = 15.0
#: Bytes of events kept for a client whose transport is full; past it, it is dropped.
MAX_BUFFER = 1 << 20
#: Requests whose last published state is remembered, to publish changes only.
REMEMBERED_REQUESTS = 10_000


def encode(event: str, data: Any) -> bytes:
    """One SSE message: ``event:`` and a one-line ``data:`` of JSON (redacted)."""
    text = json.dumps(views.redact(data), separators=(",", ":"))
    return f"event: {event}\ndata: {text}\n\n".encode()


@implementer(IPushProducer)
class _Client:
    """One ``/events`` request; the producer Twisted pauses while its transport is full."""

    def __init__(self, stream: EventStream, request: Request) -> None:
        self.stream = stream
        self.request = request
        self.paused = False
        self.pending: list[bytes] = []
        self.pending_bytes = 0

    def send(self, chunk: bytes) -> None:
        if not self.paused:
            self.request.write(chunk)
            return
        self.pending.append(chunk)
        self.pending_bytes += len(chunk)
        if self.pending_bytes > self.stream.max_buffer:
            log.info("Dropped an /events client at {peer}: {size} bytes unread",
                     peer=self.request.getClientAddress(), size=self.pending_bytes)
            self.stream.detach(self)
            self.request.channel.transport.abortConnection()  # type: ignore[union-attr]

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        pending, self.pending, self.pending_bytes = self.pending, [], 0
        for chunk in pending:
            self.send(chunk)

    def stopProducing(self) -> None:
        self.stream.detach(self)


class EventStream(Service):
    """The ``/events`` clients of one admin site and what is published to them."""

    name = "events"

    def __init__(
        self,
        clock: IReactorTime,
        sessions: Mapping[str, Session],
        stats: Callable[[], Any],
        *,
        max_buffer: int = MAX_BUFFER,
    ) -> None:
        """``sessions`` tell a terminal's bearer; ``stats`` is the ``GET /stats`` summary."""
        self.clock = clock
        self.sessions = sessions
        self.stats = stats
        self.max_buffer = max_buffer
        self.clients: set[_Client] = set()
        self._states: OrderedDict[int, str] = OrderedDict()
        self._timers = [
            self._every(STATS_INTERVAL, lambda: self.publish("stats", self.stats())),
            self._every(KEEPALIVE_INTERVAL, lambda: self._send_all(b": keep-alive\n\n")),
        ]

    def _every(self, interval: float, call: Callable[[], None]) -> tuple[LoopingCall, float]:
        loop = LoopingCall(call)
        loop.clock = self.clock
        return loop, interval

    # --- clients -------------------------------------------------------------------

    def attach(self, request: Request) -> int:
        """Serve ``request`` as an event stream until it goes away or the gateway stops."""
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")  # no proxy may sit on the events
        client = _Client(self, request)
        request.registerProducer(client, True)
        request.notifyFinish().addBoth(lambda _: self.detach(client))
        if not self.clients:
            for loop, interval in self._timers:
                loop.start(interval, now=False)
        self.clients.add(client)
        client.send(b"retry: 5000\n\n" + encode("stats", self.stats()))
        return NOT_DONE_YET

    def detach(self, client: _Client) -> None:
        if client not in self.clients:
            return
        self.clients.discard(client)
        if client.request.channel is not None:  # None once the connection is gone
            client.request.unregisterProducer()
        if not self.clients:
            self._states.clear()
            for loop, _ in self._timers:
                if loop.running:
                    loop.stop()

    def stopService(self) -> None:
        """End every stream: the gateway stops, and open requests must not keep it."""
        super().stopService()
        for client in list(self.clients):
            self.detach(client)
            client.request.finish()

    # --- publishing ----------------------------------------------------------------

    def publish(self, event: str, data: Any) -> None:
        if self.clients:
            self._send_all(encode(event, data))

    def _send_all(self, chunk: bytes) -> None:
        for client in list(self.clients):
            client.send(chunk)

    def terminal_changed(
        self, terminal: Terminal, old: str, new: str, reason: int | None
    ) -> None:
        """An engine state observer: login, logout, offline."""
        if not self.clients:
            return
        session = self.sessions.get(terminal.serial or "")
        bearer = session.bearer.kind if session and session.bearer else terminal.bearer
        self.publish("terminal", {"serial": terminal.serial, "state": str(new),
                                  "bearer": bearer, "last_seen": terminal.last_seen})

    def request_changed(self, request: PlatformRequest) -> None:
        """A registry request observer: published when the state differs from the last."""
        if not self.clients or request.id is None:
            return
        state = str(request.state)
        if self._states.get(request.id) == state:
            return
        self._states[request.id] = state
        self._states.move_to_end(request.id)
        if len(self._states) > REMEMBERED_REQUESTS:
            self._states.popitem(last=False)
        self.publish("request", {"id": request.id, "serial": request.serial, "state": state,
                                 "outcome": request.outcome})

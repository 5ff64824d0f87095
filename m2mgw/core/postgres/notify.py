"""Wake-ups between nodes on PostgreSQL's LISTEN/NOTIFY (D-364).

Sending: :func:`notify` inside the transaction that commits the change it announces.
PostgreSQL delivers a notification only when (and if) its transaction commits, so a
node woken always finds the change committed, and a rolled-back change wakes nobody.

Channels: :data:`BROADCAST` for every node, and :func:`node_channel` for one node.
Payloads: :func:`event`, a compact JSON object whose ``kind`` says what happened and
whose other members say to what (``{"kind":"request","serial":"A97...","id":17}``).
A notification carries no data the receiver could not read from the database: it is
only a hint to look now instead of at the next poll.

Receiving: a :class:`Listener` keeps one dedicated connection, LISTENs on its channels
and lets the reactor watch its socket (``addReader``), so a notification is handled in
the reactor thread as soon as it arrives, with no thread and no polling. When the
connection is lost it reconnects with exponential back-off; notifications sent while
it was away are lost, so after every (re)connection it calls ``connected`` and the
node re-reads what it might have missed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import sql
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from m2mgw.core.postgres.connection import Cursor, connect, one_line, redact

_log = Logger()

#: The channel every node listens on.
BROADCAST = "m2mgw"
#: NOTIFY payloads must be shorter than 8000 bytes.
MAX_PAYLOAD = 7999
#: Reconnection delays: the first, and the cap of its doubling.
BACKOFF = (0.5, 30.0)

#: A notification's receiver: (channel, payload).
Receiver = Callable[[str, str], None]


def node_channel(node: str) -> str:
    """The channel of one node: wake-ups for the terminals it holds."""
    return f"{BROADCAST}.{node}"


def event(kind: str, **members: str | int | None) -> str:
    """A payload: ``{"kind": kind, **members}`` as compact JSON, keys sorted."""
    return json.dumps({"kind": kind, **members}, separators=(",", ":"), sort_keys=True)


def parse_event(payload: str) -> dict[str, Any]:
    """The members of an :func:`event` payload; ``ValueError`` for anything else."""
    value = json.loads(payload)
    if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
        raise ValueError(f"not an m2mgw event: {payload[:80]!r}")
    return value


def notify(cursor: Cursor, channel: str, payload: str) -> None:
    """Queue a notification in the cursor's transaction: sent when it commits."""
    if len(payload.encode()) > MAX_PAYLOAD:
        raise ValueError(f"NOTIFY payload of {len(payload.encode())} bytes on {channel}: "
                         f"at most {MAX_PAYLOAD}")
    cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))


@implementer(IReadDescriptor)
class Listener:
    """LISTENs on ``channels`` and calls ``received(channel, payload)`` in the reactor
    thread for each notification, in the order the server sent them."""

    def __init__(self, reactor: Any, url: str, channels: Iterable[str], received: Receiver,
                 *, connected: Callable[[], None] | None = None,
                 backoff: tuple[float, float] = BACKOFF) -> None:
        self._reactor = reactor
        self._url = url
        self.url = redact(url)
        self.channels = tuple(channels)
        self._received = received
        self._connected = connected
        self._backoff = backoff
        self._delay = backoff[0]
        self._conn: psycopg.Connection[Any] | None = None
        #: A duplicate of the connection's socket, the one the reactor watches: libpq
        #: closes its own descriptor when it finds the connection lost, and the reactor
        #: could not unregister a closed one.
        self._fd = -1
        self._retry: Any = None
        self._running = False
        self._first: Deferred[None] | None = None
        #: Connections made, the first one included (tests and metrics read it).
        self.connections = 0

    @property
    def listening(self) -> bool:
        return self._conn is not None

    def start(self) -> Deferred[None]:
        """Connect and listen; fires once listening (it keeps retrying until then)."""
        self._running = True
        self._first = Deferred()
        self._connect()
        return self._first

    def stop(self) -> None:
        """Stop listening and retrying; the connection is closed."""
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._drop()

    # --- connecting ----------------------------------------------------------------

    def _connect(self) -> None:
        self._retry = None
        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), self._open)
        d.addCallbacks(self._opened, self._open_failed)

    def _open(self) -> psycopg.Connection[Any]:
        """Connect and LISTEN (in a thread: both wait for the server)."""
        conn = connect(self._url)
        try:
            conn.add_notify_handler(self._handled)
            for channel in self.channels:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except BaseException:
            conn.close()
            raise
        return conn

    def _opened(self, conn: psycopg.Connection[Any]) -> None:
        if not self._running:
            conn.close()
            return
        self._conn = conn
        self._fd = os.dup(conn.pgconn.socket)
        self.connections += 1
        self._delay = self._backoff[0]
        self._reactor.addReader(self)
        _log.info("listening on {url} for {channels}", url=self.url,
                  channels=", ".join(self.channels))
        if self._connected is not None:
            self._connected()
        first, self._first = self._first, None
        if first is not None:
            first.callback(None)
        self.doRead()  # what arrived between LISTEN and addReader

    def _open_failed(self, failure: Failure) -> None:
        if not self._running:
            return
        _log.warn("cannot listen on {url}: {why}; retrying in {delay:g}s", url=self.url,
                  why=failure.getErrorMessage(), delay=self._delay)
        self._schedule()

    def _schedule(self) -> None:
        self._retry = self._reactor.callLater(self._delay, self._connect)
        self._delay = min(self._delay * 2, self._backoff[1])

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._reactor.removeReader(self)
            os.close(self._fd)
            self._fd = -1
            conn.close()

    # --- IReadDescriptor -------------------------------------------------------------

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:
        """Take what the socket holds; hand each notification on."""
        conn = self._conn
        if conn is None:
            return
        pgconn = conn.pgconn
        try:
            pgconn.consume_input()
        except psycopg.OperationalError as e:
            self._lost(one_line(e))
            return
        # psycopg's handler decodes each notification and calls _handled.
        handler = pgconn.notify_handler
        while (notification := pgconn.notifies()) is not None:
            if handler is not None:
                handler(notification)

    def connectionLost(self, reason: Failure) -> None:
        self._lost(reason.getErrorMessage())

    def logPrefix(self) -> str:
        return "postgres-listener"

    def _handled(self, notification: psycopg.Notify) -> None:
        """Every notification, also one psycopg read during LISTEN (in its thread):
        queued for the reactor thread, in arrival order."""
        self._reactor.callFromThread(self._deliver, notification.channel,
                                     notification.payload)

    def _deliver(self, channel: str, payload: str) -> None:
        try:
            self._received(channel, payload)
        except Exception:
            _log.failure("notification on {channel} {payload!r} failed", channel=channel,
                         payload=payload[:200])

    def _lost(self, why: str) -> None:
        if self._conn is None:
            return
        self._drop()
        if self._running:
            _log.warn("listening on {url} lost: {why}; reconnecting in {delay:g}s",
                      url=self.url, why=why, delay=self._delay)
            self._schedule()

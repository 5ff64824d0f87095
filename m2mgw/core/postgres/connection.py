"""Transactions on a PostgreSQL database from the reactor thread (D-360).

A :class:`Database` owns a Twisted thread pool; each pool thread keeps one psycopg
connection and runs one transaction at a time, so ``transaction(fn, ...)`` calls
``fn(cursor, ...)`` in a thread inside BEGIN ... COMMIT (ROLLBACK if it raises) and
fires with its result in the reactor thread. With ``connections=1`` transactions
commit in submission order, as on the SQLite registry's one writer.

A connection found broken is replaced at the next transaction; the transaction that
met the loss fails with :class:`PostgresUnavailable` and is not retried here: when the
loss hit its COMMIT, whether it committed is unknown to the client, and only the
caller can tell whether running it again is harmless.

Every error leaves as one line naming the database by its URL without the password.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import conninfo
from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from m2mgw.core.registry.interfaces import RegistryError

P = ParamSpec("P")
T = TypeVar("T")

#: Options given to every connection unless the URL sets them: a bounded connect, and
#: TCP keepalives so that a database host that vanished without a reset is noticed in
#: about half a minute instead of the kernel's two hours.
CONNECT_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "application_name": "m2mgw",
}
#: SQLSTATEs of a session the server ended (admin, crash and cannot-connect shutdown);
#: class 08 (connection exceptions) counts too, and errors with no SQLSTATE at all,
#: which psycopg raises for a connection lost on the client's side.
_GONE_STATES = ("57P01", "57P02", "57P03")


class PostgresError(RegistryError):
    """The database cannot be used as configured; the message is one line. A
    :class:`RegistryError`, so that callers handle both registries' failures alike."""


class PostgresUnavailable(PostgresError):
    """The connection failed or was lost: the database may come back."""


class Cursor(Protocol):
    """What transaction functions use of a psycopg cursor."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, query: Any, params: Any = ...) -> Any: ...

    def executemany(self, query: Any, params_seq: Any) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit for logs and errors."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        credentials, _, host = netloc.rpartition("@")
        netloc = f"{credentials.partition(':')[0]}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def connection_options(url: str, **overrides: str) -> str:
    """The libpq connection string for ``url``, with :data:`CONNECT_DEFAULTS` where the
    URL is silent and ``overrides`` over both; a bad URL raises :class:`PostgresError`."""
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise PostgresError(
            f"registry url {redact(url)!r}: expected postgresql://[user@]host[:port]/database"
        )
    try:
        options = conninfo.conninfo_to_dict(url)
    except psycopg.Error as e:
        raise PostgresError(f"registry url {redact(url)!r}: {one_line(e)}") from None
    port = str(options.get("port", "5432"))
    if not all(p.isdigit() for p in port.split(",")):
        raise PostgresError(f"registry url {redact(url)!r}: port {port!r} is not a number")
    merged = {**CONNECT_DEFAULTS, **{k: str(v) for k, v in options.items()}, **overrides}
    return conninfo.make_conninfo(**merged)


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the connection failed or was lost, not that SQL failed."""
    if not isinstance(error, psycopg.OperationalError):
        return False
    state = error.sqlstate
    return state is None or state.startswith("08") or state in _GONE_STATES


def connect(url: str, **overrides: str) -> psycopg.Connection[Any]:
    """A blocking autocommit connection (call it in a thread): transactions are explicit
    ``conn.transaction()`` blocks. Failures as one-line errors."""
    options = connection_options(url, **overrides)
    try:
        return psycopg.connect(options, autocommit=True)
    except psycopg.Error as e:
        raise PostgresUnavailable(f"registry {redact(url)}: {one_line(e)}") from None


class Database:
    """A pool of ``connections`` psycopg connections running transactions in threads."""

    def __init__(self, reactor: Any, url: str, *, connections: int = 4,
                 application_name: str | None = None) -> None:
        self._reactor = reactor
        self._url = url
        self.url = redact(url)
        self._overrides = {} if application_name is None else {
            "application_name": application_name}
        connection_options(url)  # a bad URL fails here, before any thread starts
        self._threads = ThreadPool(minthreads=1, maxthreads=connections, name="postgres")
        self._local = threading.local()
        self._open: set[psycopg.Connection[Any]] = set()
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        self._shutdown: Any = None

    def open(self) -> Deferred[None]:
        """Start the threads and check that the database answers."""
        if self._closed:
            return fail(PostgresError(f"registry {self.url}: closed"))
        if not self._started:
            self._threads.start()
            self._started = True
            # Pool threads would keep the process alive after the reactor stopped.
            self._shutdown = self._reactor.addSystemEventTrigger(
                "during", "shutdown", self._at_shutdown)
        return self.transaction(_ping)

    def transaction(
        self, fn: Callable[Concatenate[Cursor, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> Deferred[T]:
        """Run ``fn(cursor, *args, **kwargs)`` in one transaction in a pool thread."""
        if not self._started:
            return fail(PostgresError(f"registry {self.url}: not open"))

        def work() -> T:
            conn = self._connection()
            with conn.transaction(), conn.cursor() as cursor:
                return fn(cursor, *args, **kwargs)

        d = deferToThreadPool(self._reactor, self._threads, work)
        return d.addErrback(self._translated)

    def close(self) -> None:
        """Wait for the running transactions, then close every connection, for good."""
        self._closed = True
        if self._started:
            self._started = False
            if self._shutdown is not None:
                self._reactor.removeSystemEventTrigger(self._shutdown)
                self._shutdown = None
            self._threads.stop()
        with self._lock:
            connections, self._open = self._open, set()
        for conn in connections:
            conn.close()

    def _at_shutdown(self) -> None:
        self._shutdown = None  # fired: no longer removable
        self.close()

    def _connection(self) -> psycopg.Connection[Any]:
        """This thread's connection, (re)connected when missing or broken."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None and not (conn.closed or conn.broken):
            return conn
        if conn is not None:
            with self._lock:
                self._open.discard(conn)
            conn.close()
        conn = connect(self._url, **self._overrides)
        with self._lock:
            self._open.add(conn)
        self._local.conn = conn
        return conn

    def _translated(self, failure: Failure) -> Failure:
        error = failure.value
        if isinstance(error, BaseException) and is_unavailable(error):
            return Failure(PostgresUnavailable(f"registry {self.url}: {one_line(error)}"))
        return failure


def _ping(cursor: Cursor) -> None:
    cursor.execute("SELECT 1")

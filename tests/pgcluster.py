"""A throw-away PostgreSQL cluster for tests and benchmarks.

``initdb`` into a temporary directory, ``pg_ctl start`` on a free loopback port with the
Unix socket in that directory too, a login role and database for the caller, and on
exit (also after a failure) ``pg_ctl stop -m immediate`` and the directory removed.
The server refuses to run as root, so as root (CI) every server binary runs as the
``postgres`` user through ``runuser`` and the directory is made over to it; as anyone
else they run as that user. Durability is switched off (``fsync=off``...): the data
is thrown away, and a cluster is ready in about a second.

Usable outside pytest: ``with PgCluster() as cluster: url = cluster.url`` (bench
scripts import it as ``tests.pgcluster``); ``create_schema`` gives each test a fresh,
isolated place in that database in a few milliseconds.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg

#: Overrides the directory of initdb/pg_ctl (default: the newest /usr/lib/postgresql/N/bin).
BINDIR_ENV = "M2MGW_PG_BINDIR"
SERVER_USER = "postgres"
#: The role and database the tests connect as (not a superuser: as the gateway would).
ROLE = "m2mgw"
DATABASE = "m2mgw"
#: Settings for speed over durability, and a small footprint beside ~7 other processes.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "60",
    "max_wal_size": "256MB",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",
}
START_TIMEOUT = 30


class PgClusterError(RuntimeError):
    """The cluster cannot be set up; the message says why and what to do."""


def find_bindir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``; a clear error when there is none."""
    override = os.environ.get(BINDIR_ENV)
    candidates = [override] if override else sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
    )
    for bindir in reversed(candidates):
        if all(os.access(Path(bindir, name), os.X_OK) for name in ("initdb", "pg_ctl")):
            return Path(bindir)
    where = f"${BINDIR_ENV}={override}" if override else "/usr/lib/postgresql/*/bin"
    raise PgClusterError(
        f"PostgreSQL server binaries (initdb, pg_ctl) not found in {where}: install "
        "Debian's postgresql (scripts/system-deps.sh does)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgCluster:
    """One throw-away cluster; a context manager (see the module docstring)."""

    def __init__(self, bindir: Path | None = None) -> None:
        self.bindir = bindir or find_bindir()
        self.as_root = os.geteuid() == 0
        self.root: Path | None = None
        self.port = 0
        self._running = False

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def url(self) -> str:
        """The test role's URL of the test database."""
        return self.database_url(DATABASE)

    def database_url(self, database: str, user: str = ROLE) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> PgCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        """initdb, start on a free port, create the test role and database."""
        owner = self._server_user() if self.as_root else None
        self.root = Path(tempfile.mkdtemp(prefix="m2mgw-pg-"))
        os.chmod(self.root, 0o700)
        if owner is not None:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SERVER_USER, "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")
        settings = dict(SETTINGS, unix_socket_directories=f"'{self.root}'")
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        for attempt in range(3):  # another process may take the port meanwhile
            self.port = free_port()
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
                          "-o", f"-p {self.port}", "-w", "-t", str(START_TIMEOUT), "start")
                break
            except PgClusterError:
                if attempt == 2 or "could not bind" not in self.log():
                    raise
        self._running = True
        self.psql(f"CREATE ROLE {ROLE} LOGIN", f"CREATE DATABASE {DATABASE} OWNER {ROLE}")

    def create_schema(self, name: str) -> str:
        """A new empty schema in the test database, first on the search path of the URL
        returned: a fresh database for a test at a fraction of CREATE DATABASE's cost."""
        with psycopg.connect(self.url, autocommit=True) as c:
            c.execute(f'CREATE SCHEMA "{name}"')
        return f"{self.url}?options=-csearch_path%3D{name}"

    def psql(self, *statements: str, database: str = "postgres") -> str:
        """Run SQL statements as the superuser (each in its own transaction)."""
        args = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                "-p", str(self.port), "-U", SERVER_USER, "-d", database]
        for statement in statements:
            args += ["-c", statement]
        return self._run(*args)

    def log(self) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace") if self.root else ""
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (immediately: the data is thrown away) and remove everything."""
        if self.root is None:
            return
        try:
            if self._running or (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            self._running = False
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _server_user(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise PgClusterError(
                f"running as root, but there is no {SERVER_USER!r} user to run PostgreSQL "
                "as: install Debian's postgresql (scripts/system-deps.sh does)"
            ) from None

    def _run(self, program: str, *args: str) -> str:
        command = [str(self.bindir / program), *args]
        if self.as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd="/", check=False)
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip().splitlines()
            tail = self.log().strip().splitlines()[-5:]
            raise PgClusterError(
                f"{program} failed (exit {done.returncode}): "
                + " | ".join(output[-5:] + tail)
            )
        return done.stdout

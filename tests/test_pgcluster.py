"""The throw-away PostgreSQL cluster: a real server for the tests, gone afterwards."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import psycopg
import pytest

from tests.pgcluster import BINDIR_ENV, PgCluster, PgClusterError, find_bindir


def test_the_session_cluster_serves_the_test_role_its_database(
        postgres_cluster: PgCluster) -> None:
    with psycopg.connect(postgres_cluster.url) as conn:
        user, database, superuser = conn.execute(
            "SELECT current_user, current_database(), rolsuper FROM pg_roles "
            "WHERE rolname = current_user").fetchone()  # type: ignore[misc]
        fsync = conn.execute("SHOW fsync").fetchone()[0]  # type: ignore[index]
    assert (user, database, superuser, fsync) == ("m2mgw", "m2mgw", False, "off")
    assert postgres_cluster.url.startswith("postgresql://m2mgw@127.0.0.1:")
    assert postgres_cluster.root is not None
    assert (postgres_cluster.root / f".s.PGSQL.{postgres_cluster.port}").is_socket()


def test_schemas_isolate_tests(postgres_cluster: PgCluster) -> None:
    first = postgres_cluster.create_schema("isolation_a")
    second = postgres_cluster.create_schema("isolation_b")
    with psycopg.connect(first, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    with psycopg.connect(second) as conn:
        assert conn.execute("SELECT to_regclass('t')").fetchone() == (None,)


def test_missing_binaries_say_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv(BINDIR_ENV, str(tmp_path))
    with pytest.raises(PgClusterError, match=r"not found in .*install Debian's postgresql"):
        find_bindir()


def test_a_failed_start_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    """initdb fails; the temporary directory is removed all the same."""
    made: list[str] = []
    mkdtemp = tempfile.mkdtemp

    def recorded(**kwargs: str) -> str:
        made.append(mkdtemp(**kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recorded)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("initdb", "pg_ctl"):
        (bindir / name).write_text("#!/bin/sh\necho 'simulated failure' >&2\nexit 3\n")
        os.chmod(bindir / name, 0o755)
    with pytest.raises(PgClusterError, match="initdb failed"), PgCluster(bindir=bindir):
        pass
    assert len(made) == 1
    assert not os.path.exists(made[0])

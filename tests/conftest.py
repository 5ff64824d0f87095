"""Suite-wide test plumbing."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from twisted.trial import unittest

from tests.pgcluster import PgCluster


@pytest.fixture(autouse=True)
def _trial_mktemp_in_tmp_path(request: pytest.FixtureRequest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """trial's ``mktemp`` writes under the current directory; keep it in pytest's tmp."""
    instance = request.instance
    if isinstance(instance, unittest.TestCase):
        counter = itertools.count()
        instance.mktemp = lambda: str(tmp_path / f"trial-{next(counter)}")  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PgCluster]:
    """One throw-away PostgreSQL cluster for the whole session, started at first use."""
    with PgCluster() as cluster:
        yield cluster

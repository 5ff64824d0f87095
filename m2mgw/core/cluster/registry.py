"""The registry of a gateway node on PostgreSQL: shared with the other nodes (D-386)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from m2mgw.core.postgres.registry import PostgresRegistry
from m2mgw.core.registry.shared import SharedRegistry

if TYPE_CHECKING:
    from m2mgw.core.registry.interfaces import Registry


class NodeRegistry(SharedRegistry, PostgresRegistry):
    """:class:`PostgresRegistry` as one node among several caches it
    (:mod:`m2mgw.core.registry.shared`); :class:`~m2mgw.core.cluster.node.ClusterNode`
    keeps the cache current."""


if TYPE_CHECKING:
    _conforms: type[Registry] = NodeRegistry  # mypy checks the whole contract

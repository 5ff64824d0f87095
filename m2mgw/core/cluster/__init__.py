"""Several gateway nodes on one PostgreSQL database (issue #13).

:mod:`.node` is one node's part: its lease, the terminals whose sessions it holds, the
wake-ups it sends and hears, and what it re-reads when another node changed something
(D-386..D-389); :mod:`.upkeep` is what any live node does for the terminals nobody
holds. The registry side is :mod:`m2mgw.core.registry.shared`, the applications'
outbox :mod:`m2mgw.app.shared_outbox`; the PostgreSQL pieces they use are
:mod:`m2mgw.core.postgres`.
"""

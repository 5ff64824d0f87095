"""The terminal registry: its contract (:mod:`.interfaces`) and the names importers use.

The implementations are imported from their modules: :class:`.sqlite.SqliteRegistry`
(the gateway's, on one SQLite file), :class:`m2mgw.core.postgres.registry.PostgresRegistry`
(on PostgreSQL, ``[registry] url``) and :class:`.memory.MemoryRegistry` (unit tests).
Each is a :class:`.cached.CachedRegistry`: the in-memory cache (:mod:`.cache`), the
ordered writer (:mod:`.writer`) and a store (:mod:`.store`) that holds the rows.
"""

from m2mgw.core.registry.interfaces import (
    HISTORY_TABLES,
    Applications,
    Backpressure,
    FileTransactions,
    Lifecycle,
    MessageLog,
    Notifications,
    OutgoingSms,
    PressureObserver,
    Registry,
    RegistryError,
    RegistryIdentity,
    Reports,
    RequestQueue,
    Retention,
    SmsOutbox,
    SmsState,
    Terminals,
)

__all__ = [
    "HISTORY_TABLES",
    "Applications",
    "Backpressure",
    "FileTransactions",
    "Lifecycle",
    "MessageLog",
    "Notifications",
    "OutgoingSms",
    "PressureObserver",
    "Registry",
    "RegistryError",
    "RegistryIdentity",
    "Reports",
    "RequestQueue",
    "Retention",
    "SmsOutbox",
    "SmsState",
    "Terminals",
]

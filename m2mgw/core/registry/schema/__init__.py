"""Versioned SQLite migrations ``NNN_name.sql``, applied in order by the registry.

Adding ``002_xxx.sql`` (the next free number) is all a schema change takes: it is
applied once, in its own transaction, and recorded in ``PRAGMA user_version``.
"""

"""Versioned PostgreSQL migrations ``NNN_name.sql``, applied in order at open.

Their own sequence, not SQLite's numbers: 001 is the SQLite schema as it stands at
its version 9 (D-361). A change to the SQLite schema adds its translation here as the
next file; ``tests/core/test_postgres_schema.py`` compares the two schemas.
"""

"""PostgreSQL for several gateway nodes on one database (issue #13).

:mod:`.connection` runs transactions on a small pool of psycopg connections;
:mod:`.migrations` keeps the schema (``schema/NNN_*.sql``, the SQLite schema translated,
plus the tables only several nodes need); :mod:`.registry` is the terminal registry on
it (:mod:`.store` its rows, :mod:`.ids` the ids of new rows, in blocks per node);
:mod:`.leases` records which node holds each terminal's session; :mod:`.notify`
carries wake-ups between nodes on LISTEN/NOTIFY; :mod:`.outbox` lets nodes claim an
application's notifications so that each is delivered by one node, in order.
"""

"""What any live node does for the terminals no node holds (D-389).

A node expires the queued requests of the terminals whose sessions it holds from its
cache, as a single gateway does; those of every other terminal are in no cache (D-386),
so every node, each lease timeout, runs :func:`sweep`: one transaction that expires
the unheld terminals' requests whose TTL passed and ends the sessions a dead node
left behind. Its UPDATEs change a row only while it still qualifies, so when two nodes
sweep at once each row is changed, and reported, by one of them.
"""

from __future__ import annotations

from typing import NamedTuple

from m2mgw.core.cluster.events import terminals_changed
from m2mgw.core.model import RequestState, TerminalState
from m2mgw.core.postgres.connection import Cursor
from m2mgw.core.postgres.notify import BROADCAST, notify
from m2mgw.core.registry.tables import REQUESTS, Row

#: The outcome of a request expired while queued, as the single gateway writes it.
EXPIRED_OUTCOME = "TTL expired while queued"
_UNHELD = (
    "NOT EXISTS (SELECT 1 FROM terminal_owners o JOIN nodes n ON n.node = o.node "
    "WHERE o.serial = {table}.serial AND n.expires_at >= now())"
)
_RETURNED = ", ".join(f'requests."{c}"' for c in REQUESTS.columns)

_EXPIRE = f"""
UPDATE requests SET state = %(expired)s, outcome = %(outcome)s, updated_at = %(now)s
WHERE state = %(queued)s AND expires_at <= %(now)s AND {_UNHELD.format(table="requests")}
RETURNING {_RETURNED}
"""

# A session no live node holds, and silent for a lease timeout: its node died. It ends
# as the offline check of 9.4 would have ended it (D-331's last session timestamp).
_ABANDON = f"""
UPDATE terminals SET state = %(offline)s,
    last_session_timestamp = COALESCE(session_timestamp, last_session_timestamp),
    session_timestamp = NULL, session_key = NULL, session_key_expiry = NULL,
    updated_at = %(now)s
WHERE state = %(logged_in)s AND serial IS NOT NULL AND COALESCE(last_seen, 0) < %(silent)s
  AND {_UNHELD.format(table="terminals")}
RETURNING serial
"""


class Swept(NamedTuple):
    """What one :func:`sweep` changed: request rows expired (REQUESTS' columns) and the
    serials of the sessions it ended."""

    expired: list[Row]
    ended: list[str]


def sweep(cursor: Cursor, node: str, now: float, silent_for: float) -> Swept:
    """Expire the unheld terminals' queued requests due at ``now`` (the gateway's
    clock), and end the unheld sessions silent for ``silent_for`` seconds; every node
    hears of the records changed."""
    cursor.execute(_EXPIRE, {"expired": RequestState.EXPIRED.value, "outcome": EXPIRED_OUTCOME,
                             "now": now, "queued": RequestState.QUEUED.value})
    expired = [tuple(row) for row in cursor.fetchall()]
    cursor.execute(_ABANDON, {"offline": TerminalState.OFFLINE.value, "now": now,
                              "logged_in": TerminalState.LOGGED_IN.value,
                              "silent": now - silent_for})
    ended = sorted(row[0] for row in cursor.fetchall())
    for payload in terminals_changed(node, ended, ()):
        notify(cursor, BROADCAST, payload)
    return Swept(expired, ended)

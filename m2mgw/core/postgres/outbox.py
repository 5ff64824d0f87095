"""Nodes claiming an application's notifications for delivery (D-365).

Any node may store a notification (the terminal's uplink arrived there); the node that
offers it is the one that claims it. :func:`claim_notifications` takes the next
notifications of one application, oldest first, with ``SELECT ... FOR UPDATE SKIP
LOCKED`` and marks them ``claimed_by`` this node until a lease runs out, so no two
nodes ever offer the same notifyId at once. Per application the claims also keep the
creation order the spec asks for (application spec 4.7): claims of one application
take turns on an advisory lock, none is made while another node's claims of that
application are live, and none passes a notification waiting for its retry (the rule
of the single-node pump, D-255).

Delivered: :func:`finish_notifications` deletes them. Failed: the registry records the
attempt and :func:`release_notifications` gives them back. A node that dies holding
claims holds them back until the claim lease ends, or until it registers again under
its name (:func:`m2mgw.core.postgres.leases.register_node`). Lease times are the
database's clock; ``now`` (the gateway's clock, as in ``next_attempt``) decides which
notifications are due.
"""

from __future__ import annotations

from collections.abc import Sequence

from m2mgw.core.model import AppNotification
from m2mgw.core.postgres.connection import Cursor
from m2mgw.core.postgres.migrations import APP_OUTBOX_LOCK_CLASS
from m2mgw.core.postgres.notify import BROADCAST, event, notify

#: Seconds a claim lasts: longer than an offer can take ([app] callback_timeout is 30 s
#: by default), short enough that a dead node's claims come free soon.
CLAIM_LEASE = 120.0
_COLUMNS = ("id", "app_id", "kind", "body", "state", "attempts", "next_attempt",
            "leased_until", "created_at", "updated_at")
_RETURNED = ", ".join(f"n.{c}" for c in _COLUMNS)

_CLAIM = f"""
WITH busy AS (
    SELECT 1 FROM app_notifications
    WHERE app_id = %(app)s AND claimed_by <> %(node)s AND claimed_until > now()
    LIMIT 1
), waiting AS (
    SELECT min(id) AS id FROM app_notifications
    WHERE app_id = %(app)s AND state = 'pending' AND next_attempt > %(now)s
), ready AS (
    SELECT id FROM app_notifications
    WHERE app_id = %(app)s AND state = 'pending'
      AND (leased_until IS NULL OR leased_until <= %(now)s)
      AND (claimed_until IS NULL OR claimed_until <= now())
      AND (id < (SELECT id FROM waiting) OR (SELECT id FROM waiting) IS NULL)
      AND NOT EXISTS (SELECT 1 FROM busy)
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE app_notifications n
SET claimed_by = %(node)s, claimed_until = now() + make_interval(secs => %(lease)s)
FROM ready WHERE n.id = ready.id
RETURNING {_RETURNED}
"""


def claim_notifications(cursor: Cursor, app_id: str, node: str, now: float, limit: int,
                        lease: float = CLAIM_LEASE) -> list[AppNotification]:
    """Up to ``limit`` of ``app_id``'s due notifications, now claimed by ``node``, in
    notifyId order; none while another node's claims of the application are live.
    Those ``node`` has claimed already are in flight and not returned again."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                   (APP_OUTBOX_LOCK_CLASS, app_id))
    cursor.execute(_CLAIM, {"app": app_id, "node": node, "now": now, "limit": limit,
                            "lease": lease})
    rows = sorted(cursor.fetchall())
    return [AppNotification(**dict(zip(_COLUMNS, row, strict=True))) for row in rows]


def finish_notifications(cursor: Cursor, node: str, ids: Sequence[int]) -> list[int]:
    """Delivered: delete those of ``ids`` that ``node`` still claims; their ids."""
    cursor.execute(
        "DELETE FROM app_notifications WHERE id = ANY(%s) AND claimed_by = %s RETURNING id",
        (list(ids), node),
    )
    return sorted(row[0] for row in cursor.fetchall())


def release_notifications(cursor: Cursor, node: str, ids: Sequence[int]) -> list[int]:
    """Not delivered: give back those of ``ids`` that ``node`` claims, and wake the
    nodes to their applications' outboxes; their ids."""
    cursor.execute(
        "UPDATE app_notifications SET claimed_by = NULL, claimed_until = NULL "
        "WHERE id = ANY(%s) AND claimed_by = %s RETURNING id, app_id",
        (list(ids), node),
    )
    rows = cursor.fetchall()
    for app_id in sorted({row[1] for row in rows}):
        wake_outbox(cursor, app_id)
    return sorted(row[0] for row in rows)


def wake_outbox(cursor: Cursor, app_id: str) -> None:
    """Tell every node, once this transaction commits, that ``app_id`` has
    notifications to claim (a new one, or claims given back)."""
    notify(cursor, BROADCAST, event("outbox", app=app_id))

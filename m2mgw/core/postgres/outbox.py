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
from typing import Any

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
    return _notifications(sorted(cursor.fetchall()))


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


def release_claims(cursor: Cursor, nodes: Sequence[str]) -> list[str]:
    """Give back every claim of ``nodes`` (stopped or dead), waking every node to the
    applications concerned; those applications."""
    cursor.execute(
        "UPDATE app_notifications SET claimed_by = NULL, claimed_until = NULL "
        "WHERE claimed_by = ANY(%s) RETURNING app_id", (list(nodes),))
    apps = sorted({row[0] for row in cursor.fetchall()})
    for app_id in apps:
        wake_outbox(cursor, app_id)
    return apps


def wake_outbox(cursor: Cursor, app_id: str) -> None:
    """Tell every node, once this transaction commits, that ``app_id`` has
    notifications to claim (a new one, or claims given back)."""
    notify(cursor, BROADCAST, event("outbox", app=app_id))


# --- the rest of an outbox that lives in the database (m2mgw.app.shared_outbox) -----------

_FREE = ("(leased_until IS NULL OR leased_until <= %(now)s) "
         "AND (claimed_until IS NULL OR claimed_until <= now())")


def _notifications(rows: Sequence[Sequence[Any]]) -> list[AppNotification]:
    return [AppNotification(**dict(zip(_COLUMNS, row, strict=True))) for row in rows]


def claim_due(cursor: Cursor, app_id: str, node: str, now: float, limit: int,
              lease: float = CLAIM_LEASE) -> tuple[list[AppNotification], float | None]:
    """:func:`claim_notifications`, and when the application's next retry is due (None:
    no notification waits for one)."""
    claimed = claim_notifications(cursor, app_id, node, now, limit, lease)
    cursor.execute("SELECT min(next_attempt) FROM app_notifications "
                   "WHERE app_id = %s AND state = 'pending' AND next_attempt > %s",
                   (app_id, now))
    return claimed, cursor.fetchone()[0]


def retry_notification(cursor: Cursor, node: str, entry: AppNotification) -> bool:
    """An offer failed: record ``entry``'s attempts, state and next attempt as the
    outbox set them, and give its claim back (every node is woken); False if ``node``
    no longer claims it (acknowledged meanwhile, or the claim lapsed)."""
    cursor.execute(
        "UPDATE app_notifications SET state = %s, attempts = %s, next_attempt = %s, "
        "updated_at = %s, claimed_by = NULL, claimed_until = NULL "
        "WHERE id = %s AND claimed_by = %s",
        (entry.state, entry.attempts, entry.next_attempt, entry.updated_at, entry.id, node),
    )
    if cursor.rowcount != 1:
        return False
    wake_outbox(cursor, entry.app_id)
    return True


def lease_notifications(cursor: Cursor, app_id: str, now: float, count: int,
                        until: float) -> tuple[list[AppNotification], int]:
    """``FetchMessages``: up to ``count`` of the application's notifications that no
    node is offering and no fetch holds, oldest first, leased until ``until``; and how
    many more are free."""
    params = {"app": app_id, "now": now, "count": count, "until": until}
    cursor.execute(
        f"""WITH free AS (
            SELECT id FROM app_notifications WHERE app_id = %(app)s AND {_FREE}
            ORDER BY id LIMIT %(count)s FOR UPDATE SKIP LOCKED
        )
        UPDATE app_notifications n SET leased_until = %(until)s FROM free
        WHERE n.id = free.id RETURNING {_RETURNED}""", params)
    leased = sorted(_notifications(cursor.fetchall()), key=lambda n: n.id or 0)
    cursor.execute(f"SELECT count(*) FROM app_notifications WHERE app_id = %(app)s AND {_FREE}",
                   params)
    return leased, cursor.fetchone()[0]


def ack_notifications(cursor: Cursor, app_id: str, ids: Sequence[int]) -> list[int]:
    """``AckMessages``: delete those of ``ids`` that are ``app_id``'s; their ids."""
    cursor.execute("DELETE FROM app_notifications WHERE app_id = %s AND id = ANY(%s) "
                   "RETURNING id", (app_id, list(ids)))
    return sorted(row[0] for row in cursor.fetchall())


def set_aside_notification(cursor: Cursor, node: str, notify_id: int, now: float) -> bool:
    """Out of the line for good (D-254), its claim given back; False if not claimed."""
    cursor.execute(
        "UPDATE app_notifications SET state = 'unencodable', updated_at = %s, "
        "claimed_by = NULL, claimed_until = NULL WHERE id = %s AND claimed_by = %s",
        (now, notify_id, node),
    )
    return cursor.rowcount == 1


def reset_notifications(cursor: Cursor, app_id: str, now: float) -> int:
    """A new long-connection session (6.6): kept notifications and those waiting for
    a retry are offered again from now; how many."""
    cursor.execute(
        "UPDATE app_notifications SET state = 'pending', attempts = 0, next_attempt = %(now)s, "
        "updated_at = %(now)s WHERE app_id = %(app)s "
        "AND (state = 'kept' OR (state = 'pending' AND next_attempt > %(now)s))",
        {"app": app_id, "now": now},
    )
    return cursor.rowcount


def expire_notifications(cursor: Cursor, before: float) -> dict[str, int]:
    """Delete the notifications created before ``before`` that no node is offering;
    how many, by application."""
    cursor.execute(
        "DELETE FROM app_notifications WHERE created_at < %s "
        "AND (claimed_until IS NULL OR claimed_until <= now()) RETURNING app_id", (before,))
    counts: dict[str, int] = {}
    for (app_id,) in cursor.fetchall():
        counts[app_id] = counts.get(app_id, 0) + 1
    return counts

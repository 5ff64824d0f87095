"""Which gateway node holds each terminal's session (D-362, D-363).

A node's lease is its row in ``nodes``; a terminal belongs to the node named by its row
in ``terminal_owners`` while that node's lease runs. So a node renews the ownership of
all its terminals with one UPDATE of one row (:func:`renew_node`), and a dead node loses
all of them at once when its lease lapses: nobody owns them any more (:func:`owner`),
and :func:`expire_nodes` deletes the node, its ownership rows with it. A login on
another node takes a terminal over (:func:`claim_terminal`) and tells the node it was
taken from, after commit, on that node's channel.

The functions take a cursor and run inside the caller's transaction, so a claim
commits together with the login it belongs to. All times are the database's clock.
A lease not renewed within its timeout is lost even if nobody reaped it yet: the node
that lost it must drop its sessions and register afresh (:class:`NodeLease` says so).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.core.postgres.connection import Cursor, Database, PostgresError
from m2mgw.core.postgres.notify import event, node_channel, notify
from m2mgw.core.postgres.outbox import release_claims

_log = Logger()

#: Seconds a node's lease lasts unrenewed; after that its terminals belong to nobody.
LEASE_TIMEOUT = 30.0
#: Seconds between renewals: a third of the timeout, so two renewals in a row may fail
#: (a database restart, a long pause) before the lease lapses.
RENEW_INTERVAL = 10.0
#: Node names: they become part of a NOTIFY channel name (at most 63 bytes).
_NODE_RE = re.compile(r"[A-Za-z0-9_.-]{1,48}")


class LeaseLost(PostgresError):
    """This node's lease lapsed or was reaped: it owns no terminal any more."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A terminal's ownership as :func:`claim_terminal` left it."""

    serial: str
    node: str
    #: Grows with every claim of any terminal: a larger epoch supersedes a smaller one.
    epoch: int
    #: The node the terminal was taken from (None: unowned or already this node's).
    taken_from: str | None


def check_node(node: str) -> str:
    if not _NODE_RE.fullmatch(node):
        raise ValueError(f"node name {node!r}: expected 1-48 of A-Z a-z 0-9 _ . -")
    return node


def register_node(cursor: Cursor, node: str, timeout: float = LEASE_TIMEOUT) -> int:
    """Start ``node``'s lease. A node that starts holds no session, so whatever its
    name held before (a restart) is released: terminals and notification claims.
    Returns the number of terminals released."""
    check_node(node)
    cursor.execute(
        "INSERT INTO nodes (node, started_at, expires_at) "
        "VALUES (%s, now(), now() + make_interval(secs => %s)) "
        "ON CONFLICT (node) DO UPDATE SET started_at = excluded.started_at, "
        "expires_at = excluded.expires_at",
        (node, timeout),
    )
    cursor.execute("DELETE FROM terminal_owners WHERE node = %s", (node,))
    released = cursor.rowcount
    cursor.execute(
        "UPDATE app_notifications SET claimed_by = NULL, claimed_until = NULL "
        "WHERE claimed_by = %s", (node,),
    )
    return released


def renew_node(cursor: Cursor, node: str, timeout: float = LEASE_TIMEOUT) -> bool:
    """Extend ``node``'s lease, and with it its ownership of every terminal: False if
    the lease had lapsed or was reaped, which it then stays."""
    cursor.execute(
        "UPDATE nodes SET expires_at = now() + make_interval(secs => %s) "
        "WHERE node = %s AND expires_at >= now()",
        (timeout, node),
    )
    return cursor.rowcount == 1


def expire_nodes(cursor: Cursor) -> list[str]:
    """Delete the nodes whose lease lapsed, releasing their terminals and their claims
    of notifications (every node is woken to those applications); their names."""
    cursor.execute("DELETE FROM nodes WHERE expires_at < now() RETURNING node")
    dead = sorted(row[0] for row in cursor.fetchall())
    if dead:
        release_claims(cursor, dead)
    return dead


def leave_node(cursor: Cursor, node: str) -> None:
    """A clean stop: ``node`` releases its terminals at once instead of at lapse."""
    cursor.execute("DELETE FROM nodes WHERE node = %s", (node,))


def lapse_node(cursor: Cursor, node: str) -> None:
    """A clean stop that may be a restart (D-410): the lease ends now, so its terminals
    belong to nobody at once (:func:`owner`), but their rows stay until a live node
    reaps them; a node restarting before that resumes those sessions
    (:func:`held_by`, :func:`resume_terminals`)."""
    cursor.execute("UPDATE nodes SET expires_at = now() - interval '1 millisecond' "
                   "WHERE node = %s", (node,))


def held_by(cursor: Cursor, node: str) -> list[str]:
    """The terminals whose rows name ``node``, its lease live or not."""
    cursor.execute("SELECT serial FROM terminal_owners WHERE node = %s ORDER BY serial",
                   (node,))
    return [row[0] for row in cursor.fetchall()]


def resume_terminals(cursor: Cursor, node: str, serials: list[str]) -> dict[str, int]:
    """Claim those of ``serials`` that nobody holds (a restarted node resuming the
    sessions it held); their epochs. One another node took meanwhile stays its own."""
    cursor.execute(
        "INSERT INTO terminal_owners (serial, node, epoch, previous_node, claimed_at) "
        "SELECT s, %s, nextval('terminal_owner_epochs'), NULL, now() FROM unnest(%s::text[]) s "
        "ON CONFLICT (serial) DO NOTHING RETURNING serial, epoch",
        (node, serials),
    )
    return {row[0]: row[1] for row in cursor.fetchall()}


_CLAIM = (
    "INSERT INTO terminal_owners AS o (serial, node, epoch, previous_node, claimed_at) "
    "SELECT %(serial)s, %(node)s, nextval('terminal_owner_epochs'), NULL, now() "
    "WHERE EXISTS (SELECT 1 FROM nodes WHERE node = %(node)s AND expires_at >= now()) "
    "ON CONFLICT (serial) DO UPDATE SET node = excluded.node, "
    # Numbered once the row is locked: epochs then grow in the order claims commit.
    "epoch = nextval('terminal_owner_epochs'), "
    "previous_node = o.node, claimed_at = excluded.claimed_at "
    "RETURNING epoch, previous_node"
)


def claim_terminal(cursor: Cursor, serial: str, node: str) -> Claim:
    """Make ``node`` the owner of ``serial``, taking it from whichever node held it;
    that node hears ``takeover`` on its channel once this transaction commits.
    Raises :class:`LeaseLost` if ``node``'s own lease is not live."""
    lost = LeaseLost(f"node {node} holds no live lease: cannot claim terminal {serial}")
    try:
        cursor.execute(_CLAIM, {"serial": serial, "node": node})
    except psycopg.errors.ForeignKeyViolation:  # reaped between the check and the insert
        raise lost from None
    row = cursor.fetchone()
    if row is None:
        raise lost
    epoch, previous = row
    taken_from = previous if previous not in (None, node) else None
    if taken_from is not None:
        notify(cursor, node_channel(taken_from),
               event("takeover", serial=serial, node=node, epoch=epoch))
    return Claim(serial, node, epoch, taken_from)


def release_terminal(cursor: Cursor, serial: str, node: str) -> bool:
    """The session on ``node`` ended: ``serial`` belongs to nobody until its next
    login. False if another node had taken it over meanwhile (nothing changes)."""
    cursor.execute("DELETE FROM terminal_owners WHERE serial = %s AND node = %s",
                   (serial, node))
    return cursor.rowcount == 1


def owner(cursor: Cursor, serial: str) -> str | None:
    """The node holding ``serial``'s session, if that node's lease is live."""
    cursor.execute(
        "SELECT o.node FROM terminal_owners o JOIN nodes n ON n.node = o.node "
        "WHERE o.serial = %s AND n.expires_at >= now()",
        (serial,),
    )
    row = cursor.fetchone()
    return None if row is None else str(row[0])


class NodeLease:
    """Keeps one node's lease: registers it, renews it every ``interval`` seconds and
    reaps dead nodes meanwhile. ``lost`` is called (once) when the lease is gone: when a
    renewal finds it lapsed, or when no renewal succeeded for ``timeout`` seconds, after
    which other nodes consider this one dead whatever the database says later."""

    def __init__(self, db: Database, node: str, clock: IReactorTime, lost: Callable[[], None], *,
                 timeout: float = LEASE_TIMEOUT, interval: float = RENEW_INTERVAL) -> None:
        self.db = db
        self.node = check_node(node)
        self.clock = clock
        self.timeout = timeout
        self._lost = lost
        self._loop = LoopingCall(self.renew)
        self._loop.clock = clock
        self._interval = interval
        self._renewed_at = 0.0
        self.live = False

    def start(self) -> Deferred[None]:
        """Register; fires once the lease is held (its failure if it cannot be)."""
        started = self.clock.seconds()

        def registered(released: int) -> None:
            self._renewed_at = started
            self.live = True
            if released:
                _log.info("node {node}: released {count} terminals of its last run",
                          node=self.node, count=released)
            self._loop.start(self._interval, now=False)

        return self.db.transaction(register_node, self.node, self.timeout).addCallback(
            registered)

    def stop(self, *, leave: bool = True) -> Deferred[None]:
        """Stop renewing and leave: this node's terminals are released at once; with
        ``leave`` False the lease only lapses now (:func:`lapse_node`)."""
        if self._loop.running:
            self._loop.stop()
        was_live, self.live = self.live, False
        if not was_live:
            return succeed(None)
        return self.db.transaction(leave_node if leave else lapse_node, self.node)

    def renew(self) -> Deferred[None]:
        """Renew now (the loop does every ``interval``); fires when done, never fails."""
        attempted = self.clock.seconds()

        def renewed(result: tuple[bool, list[str]]) -> None:
            ok, dead = result
            for name in dead:
                _log.warn("node {dead} expired: its terminals belong to nobody now", dead=name)
            if not self.live:
                return
            if ok:
                self._renewed_at = attempted
            else:
                self._lapse("its lease had lapsed")

        def failed(failure: Failure) -> None:
            _log.warn("node {node}: lease renewal failed: {why}", node=self.node,
                      why=failure.getErrorMessage())
            if self.live and self.clock.seconds() - self._renewed_at >= self.timeout:
                self._lapse(f"no renewal for {self.timeout:g}s")

        return self.db.transaction(_renew_and_reap, self.node, self.timeout).addCallbacks(
            renewed, failed)

    def _lapse(self, why: str) -> None:
        self.live = False
        if self._loop.running:
            self._loop.stop()
        _log.error("node {node}: lost its lease ({why}); its sessions must end",
                   node=self.node, why=why)
        self._lost()


def _renew_and_reap(cursor: Cursor, node: str, timeout: float) -> tuple[bool, list[str]]:
    """Renew, and reap the dead while at it; only a live node reaps."""
    renewed = renew_node(cursor, node, timeout)
    return renewed, expire_nodes(cursor) if renewed else []


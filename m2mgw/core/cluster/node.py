"""One gateway node among several on one PostgreSQL database (issue #13, D-386..D-389).

:class:`ClusterNode` is driven by the engine's events and the database's notifications:

- **Ownership.** A terminal's session belongs to the node it logged in on: when the
  session starts the node claims the terminal (``claim_terminal``), when it ends the
  node releases it. A claim by another node arrives as ``takeover`` on this node's
  channel: the session is dropped here without a LOGOUT (the terminal talks to the
  other node now) and without a write, its timers and queue forgotten; the request in
  flight stays ``sent`` and the new holder sends it again (D-387). The node's lease is
  renewed every third of ``[registry] node_lease``; a lease found lost drops every
  session, and the node registers again.
- **Routing.** A request committed here for a terminal whose session another node
  holds is announced on that node's channel (``request``) once every write before it
  committed; that node reads the terminal's queue and sends it. A terminal nobody
  holds keeps its queue in the database until its next login anywhere, and any node
  expires it (:mod:`.upkeep`).
- **Caches.** Each committed change of a terminal or application record is told to
  every node (``terminals``, ``application``), which re-reads it; the session holder
  keeps its own session columns (D-386). A LOGIN for a terminal whose session this
  node does not hold is held back until the terminal's record has been read again
  (the engine's gate, D-388): what another node wrote last counts. After every
  (re)connection of the listener the node re-reads every record, and the queues of
  its sessions, for what it may have missed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.core.cluster import events as ce
from m2mgw.core.cluster.registry import NodeRegistry
from m2mgw.core.cluster.upkeep import Swept, sweep
from m2mgw.core.engine import events as ev
from m2mgw.core.engine.dispatch import PlatformEngine
from m2mgw.core.model import Request
from m2mgw.core.postgres.connection import Cursor, Database
from m2mgw.core.postgres.leases import (
    Claim,
    LeaseLost,
    NodeLease,
    claim_terminal,
    held_by,
    owner,
    release_terminal,
    resume_terminals,
)
from m2mgw.core.postgres.notify import (
    BACKOFF,
    BROADCAST,
    Listener,
    node_channel,
    notify,
    parse_event,
)
from m2mgw.core.postgres.notify import event as payload
from m2mgw.core.registry.shared import Change
from m2mgw.core.router import Router
from m2mgw.core.session import Bearer
from m2mgw.protocol.constants import HEADER_SIZE, Command
from m2mgw.protocol.errors import HeaderError
from m2mgw.protocol.header import Header

log = Logger()


def _notify_all(cursor: Cursor, messages: list[tuple[str, str]]) -> None:
    for channel, text in messages:
        notify(cursor, channel, text)


def _route(cursor: Cursor, node: str, requests: list[tuple[str, int]]) -> list[str]:
    """Announce each request to the node holding its terminal's session; the serials
    among them whose sessions are this node's (begun meanwhile)."""
    here = []
    for serial, request_id in requests:
        holder = owner(cursor, serial)
        if holder == node:
            here.append(serial)
        elif holder is not None:
            notify(cursor, node_channel(holder), payload(ce.REQUEST, serial=serial, id=request_id))
    return here


class ClusterNode:
    """This node's membership, ownership and routing; see the module docstring.

    ``db`` is a :class:`Database` of one connection for the lease, claims and
    announcements (they take turns in submission order); the registry's own store
    carries what must follow its writes.
    """

    def __init__(self, reactor: Any, url: str, db: Database, registry: NodeRegistry, *,
                 engine: PlatformEngine, router: Router, lease_timeout: float,
                 backoff: tuple[float, float] = BACKOFF) -> None:
        self.reactor = reactor
        self.db = db
        self.registry = registry
        self.node = registry.node
        self.engine = engine
        self.sessions = engine.sessions
        self.router = router
        self.lease = NodeLease(db, self.node, reactor, self._lease_lost,
                               timeout=lease_timeout, interval=lease_timeout / 3)
        self.listener = Listener(reactor, url, (BROADCAST, node_channel(self.node)),
                                 self._received, connected=self._connected, backoff=backoff)
        #: Called with an app id when another node stored or gave back notifications
        #: of that application (the shared outbox pumps it).
        self.outbox_observers: list[Callable[[str], None]] = []
        #: The epoch of each claim this node holds (a takeover must be newer).
        self._epochs: dict[str, int] = {}
        self._unclaimed: set[str] = set()
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            ce.TAKEOVER: self._taken_over,
            ce.REQUEST: lambda e: self._refresh_queue(e["serial"]),
            ce.TERMINALS: self._terminals_changed,
            ce.APPLICATION: self._application_changed,
            ce.OUTBOX: lambda e: self._wake_local(e["app"]),
        }
        # Batched to the end of the reactor turn: announcements, routes, re-reads.
        self._turn: IDelayedCall | None = None
        self._changed_terminals: set[str] = set()
        self._changed_apps: set[str] = set()
        self._woken_apps: set[str] = set()
        self._routes: list[tuple[str, int]] = []
        self._stale: set[str] = set()
        #: LOGINs held back by the gate, by serial, with the frames that followed.
        self._held: dict[str, list[tuple[bytes, Bearer]]] = {}
        self._gating: set[str] = set()
        #: Queue reads in flight, by serial: True when another was asked meanwhile.
        self._reading: dict[str, bool] = {}
        self._upkeep = LoopingCall(self.upkeep)
        self._upkeep.clock = reactor
        self._rejoin: IDelayedCall | None = None
        self.running = False
        registry.change_observers.append(self._changed)
        registry.queued_observers.append(self._queued)
        engine.events.subscribe(self._on_event)
        engine.gate = self.gate

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> Deferred[list[str]]:
        """Hold the lease, then listen; fires once both are done, with the terminals
        this node held when it stopped: the engine may resume their sessions, and
        :meth:`resume` claims them again (D-410)."""
        self.running = True
        d = self.db.transaction(held_by, self.node)

        def held(serials: list[str]) -> Deferred[list[str]]:
            joined = self.lease.start()
            joined.addCallback(lambda _: self.listener.start())
            return joined.addCallback(self._started, serials)

        return d.addCallback(held)

    def _started(self, _: object, held: list[str]) -> list[str]:
        # Its Deferred fires when the loop stops: not waited for.
        self._upkeep.start(self.lease.timeout, now=False)
        return held

    def resume(self) -> Deferred[None]:
        """Claim the sessions the engine resumed; those another node took meanwhile
        are dropped here."""
        serials = sorted(self.sessions)

        def claimed(epochs: dict[str, int]) -> None:
            self._epochs.update(epochs)
            for serial in serials:
                if serial in epochs:
                    self._refresh_queue(serial)
                else:
                    self.drop(serial, "another node holds it since")
            if serials:
                log.info("{count} sessions of this node's last run resumed",
                         count=len(epochs))

        return self.db.transaction(resume_terminals, self.node, serials).addCallback(claimed)

    def stop(self) -> Deferred[None]:
        """Stop listening, finish this turn's routes and announcements, and let the
        lease lapse: the terminals of this node are nobody's at once; restarted before
        another node reaps it, this node resumes their sessions (D-410)."""
        self.running = False
        if self._upkeep.running:
            self._upkeep.stop()
        for call in (self._turn, self._rejoin):
            if call is not None and call.active():
                call.cancel()
        self._turn = self._rejoin = None
        self.listener.stop()
        finished = self._end_of_turn()
        return finished.addBoth(lambda _: self.lease.stop(leave=False))

    # --- engine events -------------------------------------------------------------------

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.SessionStarted):
            self._session_started(event.terminal.serial or "")
        elif isinstance(event, ev.SessionEnded):
            # A LOGIN replacing a session ends it and starts the next one: released
            # only if no session follows in this turn.
            self.reactor.callLater(0, self._session_gone, event.terminal.serial or "")

    def _session_started(self, serial: str) -> None:
        self._claim(serial)
        self._refresh_queue(serial)

    def _claim(self, serial: str) -> None:
        def claimed(claim: Claim) -> None:
            self._unclaimed.discard(serial)
            if serial not in self.sessions:
                return  # ended meanwhile: its release follows
            self._epochs[serial] = claim.epoch
            if claim.taken_from is not None:
                log.info("Terminal {serial} taken over from node {previous}", serial=serial,
                         previous=claim.taken_from)

        def failed(failure: Failure) -> None:
            if failure.check(LeaseLost):
                self.drop(serial, "this node holds no lease")
                return
            self._unclaimed.add(serial)  # claimed again at the next upkeep
            log.warn("Terminal {serial}: cannot claim its session: {why}", serial=serial,
                     why=failure.getErrorMessage())

        self.db.transaction(claim_terminal, serial, self.node).addCallbacks(claimed, failed)

    def _session_gone(self, serial: str) -> None:
        if serial in self.sessions:
            return
        self._epochs.pop(serial, None)
        self._unclaimed.discard(serial)
        self.db.transaction(release_terminal, serial, self.node).addErrback(
            _warn, "cannot release terminal {serial}", serial=serial)

    def drop(self, serial: str, why: str) -> None:
        """Forget ``serial``'s session here without a word to the terminal or a write:
        another node holds it (or will); its record is read again."""
        session = self.sessions.get(serial)
        record = self.sessions.find(serial)
        if record is not None:
            record.opening = None
        self.sessions.end(serial)
        self.router.forget(serial)
        self.registry.forget_queue(serial)
        self._epochs.pop(serial, None)
        self._unclaimed.discard(serial)
        if session is not None:
            if session.tcp is not None:
                session.tcp.close()
            log.info("Session of {serial} dropped here: {why}", serial=serial, why=why)
        self._stale.add(serial)
        self._next_turn()

    def _lease_lost(self) -> None:
        """Other nodes may have taken any terminal: every session goes, the node
        registers again."""
        for serial in list(self.sessions):
            self.drop(serial, "this node's lease was lost")
        self._schedule_rejoin()

    def _schedule_rejoin(self) -> None:
        if self.running:
            self._rejoin = self.reactor.callLater(self.lease.timeout / 3, self._join_again)

    def _join_again(self) -> None:
        self._rejoin = None

        def failed(failure: Failure) -> None:
            _warn(failure, "node {node}: cannot register again", node=self.node)
            self._schedule_rejoin()

        self.lease.start().addErrback(failed)

    # --- the gate: a LOGIN reads its terminal's record first ----------------------------------

    def gate(self, data: bytes, bearer: Bearer) -> bool:
        """Hold back a LOGIN for a terminal whose session this node does not hold, and
        what follows it from that terminal, until its record was read again."""
        if len(data) < HEADER_SIZE:
            return False
        try:
            header = Header.unpack(data)
        except HeaderError:
            return False
        serial = header.serial
        held = self._held.get(serial)
        if held is not None:
            held.append((data, bearer))
            return True
        if header.command_id != Command.LOGIN or serial in self.sessions:
            return False
        self._held[serial] = [(data, bearer)]
        self._gating.add(serial)
        self._next_turn()
        return True

    def _read_gated(self) -> None:
        serials, self._gating = self._gating, set()

        def release(result: Any) -> None:
            if isinstance(result, Failure):
                _warn(result, "cannot read the records of {count} terminals logging in",
                      count=len(serials))
            for serial in sorted(serials):
                for data, bearer in self._held.pop(serial, []):
                    self.engine.receive(data, bearer, gated=False)

        self.registry.reload_terminals(serials, held=self.sessions).addBoth(release)

    # --- requests for terminals held elsewhere ---------------------------------------------

    def _queued(self, request: Request) -> None:
        """A request committed here: its terminal's queue is the holder's business."""
        if request.serial in self.sessions:
            return
        # Forgotten at the turn's end: the router looks at the queue first, and may
        # wake the terminal by SMS.
        self._routes.append((request.serial, request.id or 0))
        self._next_turn()

    def _refresh_queue(self, serial: str) -> None:
        """Read the queue of a terminal whose session this node holds, then send."""
        if serial not in self.sessions:
            return
        if serial in self._reading:
            self._reading[serial] = True
            return
        self._reading[serial] = False

        def read(result: Any) -> None:
            if isinstance(result, Failure):
                _warn(result, "cannot read the queue of {serial}", serial=serial)
            again = self._reading.pop(serial, False)
            if serial not in self.sessions:  # dropped meanwhile: the queue is not ours
                self.registry.forget_queue(serial)
                return
            if again:
                self._refresh_queue(serial)
                return
            terminal = self.registry.get(serial)
            if terminal is not None:
                self.router.kick(terminal)

        self.registry.reload_queue(serial).addBoth(read)

    # --- what other nodes changed -----------------------------------------------------------

    def _changed(self, change: Change) -> None:
        if change.kind == "terminal":
            self._changed_terminals.add(change.key)
        else:
            self._changed_apps.add(change.key)
        self._next_turn()

    def wake_outbox(self, app_id: str) -> None:
        """Tell every node that ``app_id`` has notifications to claim."""
        self._woken_apps.add(app_id)
        self._next_turn()

    def _received(self, channel: str, text: str) -> None:
        try:
            fields = parse_event(text)
        except ValueError as exc:
            log.warn("notification on {channel} ignored: {why}", channel=channel, why=str(exc))
            return
        handler = self._handlers.get(fields["kind"])
        if handler is not None:
            handler(fields)

    def _taken_over(self, fields: dict[str, Any]) -> None:
        serial, taker = fields["serial"], fields["node"]
        if taker != self.node and fields["epoch"] > self._epochs.get(serial, -1):
            self.drop(serial, f"taken over by node {taker}")

    def _terminals_changed(self, fields: dict[str, Any]) -> None:
        if fields["node"] == self.node:
            return
        live = set(ce.serials_of(fields["live"]))
        for serial in ce.serials_of(fields["serials"]):
            # A login there: the takeover this node hears next drops the session.
            if not (serial in live and serial in self.sessions):
                self._stale.add(serial)
        self._next_turn()

    def _application_changed(self, fields: dict[str, Any]) -> None:
        if fields["node"] != self.node:
            self.registry.reload_applications([fields["app"]]).addErrback(
                _warn, "cannot read application {app_id}", app_id=fields["app"])

    def _wake_local(self, app_id: str) -> None:
        for observer in self.outbox_observers:
            observer(app_id)

    def _connected(self) -> None:
        """The listener is (again) connected: re-read what may have changed unheard."""
        d = self.registry.reload_terminals(None, held=self.sessions)
        d.addCallback(lambda _: self.registry.reload_applications())
        d.addCallbacks(self._caught_up, _warn, errbackArgs=("cannot read the registry again",))

    def _caught_up(self, _: object) -> None:
        for app in self.registry.applications():
            self._wake_local(app.app_id)
        self.db.transaction(held_by, self.node).addCallbacks(
            self._still_held, _warn, errbackArgs=("cannot read this node's terminals",))

    def _still_held(self, held: list[str]) -> None:
        """A takeover may have gone unheard: the sessions whose claims another node
        superseded are dropped, the others' queues read again."""
        mine = set(held)
        for serial in list(self.sessions):
            if serial in self._epochs and serial not in mine:
                self.drop(serial, "another node took it over meanwhile")
            else:
                self._refresh_queue(serial)

    # --- the end of each turn -----------------------------------------------------------------

    def _next_turn(self) -> None:
        if self._turn is None:
            self._turn = self.reactor.callLater(0, self._end_of_turn)

    def _end_of_turn(self) -> Deferred[Any]:
        """Read what is stale, route what was queued and announce what changed; fires
        once the routes and announcements are sent."""
        self._turn = None
        sent: list[Deferred[Any]] = []
        if self._gating:
            self._read_gated()
        if self._stale:
            stale, self._stale = self._stale, set()
            self.registry.reload_terminals(stale, held=self.sessions).addErrback(
                _warn, "cannot read {count} changed terminals", count=len(stale))
        if self._routes:
            routes, self._routes = self._routes, []
            for serial, _ in routes:
                if serial not in self.sessions:
                    self.registry.forget_queue(serial)
            # On the registry's connection: after every write submitted before (the
            # msgId's request id...), so the holder reads all of it.
            d = self.registry.store.transaction(_route, self.node, routes)
            sent.append(d.addCallbacks(self._routed, _warn,
                                       errbackArgs=("cannot route requests",)))
        sent.append(self._announce())
        return gatherResults(sent)

    def _routed(self, here: list[str]) -> None:
        for serial in here:
            self._refresh_queue(serial)

    def _announce(self) -> Deferred[None]:
        messages = [(BROADCAST, text) for text in ce.terminals_changed(
            self.node, self._changed_terminals, self.sessions)]
        messages += [(BROADCAST, payload(ce.APPLICATION, app=app_id, node=self.node))
                     for app_id in sorted(self._changed_apps)]
        messages += [(BROADCAST, payload(ce.OUTBOX, app=app_id))
                     for app_id in sorted(self._woken_apps)]
        self._changed_terminals, self._changed_apps, self._woken_apps = set(), set(), set()
        if not messages:
            return succeed(None)
        return self.db.transaction(_notify_all, messages).addErrback(
            _warn, "cannot tell the other nodes of {count} changes", count=len(messages))

    # --- upkeep ---------------------------------------------------------------------------------

    def upkeep(self) -> Deferred[None]:
        """Every lease timeout: claim what could not be claimed, and sweep (D-389)."""
        if not self.lease.live:
            return succeed(None)
        for serial in sorted(self._unclaimed):
            if serial in self.sessions:
                self._claim(serial)
        d = self.registry.store.transaction(sweep, self.node, self.reactor.seconds(),
                                            self.lease.timeout)
        return d.addCallbacks(self._swept, _warn, errbackArgs=("sweep failed",))

    def _swept(self, swept: Swept) -> None:
        for request in self.registry.adopt_requests(swept.expired):
            log.info("Request {id} for {serial} expired", id=request.id, serial=request.serial)
            for observer in self.router.result_observers:
                observer(request)
        if swept.ended:
            log.info("{count} sessions no live node holds ended: {serials}",
                     count=len(swept.ended), serials=", ".join(swept.ended))
            self._stale.update(swept.ended)
            self._next_turn()


def _warn(failure: Failure, text: str, **keys: Any) -> None:
    log.warn(text + ": {why}", why=failure.getErrorMessage(), **keys)

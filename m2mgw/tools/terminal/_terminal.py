"""One simulated terminal: its life cycle from connect to logout, its one timer."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from m2mgw.protocol import terminal as role
from m2mgw.protocol.constants import Command, LogoutReason
from m2mgw.tools.terminal._events import EventSink, event_record
from m2mgw.tools.terminal._identities import reported_heartbeat
from m2mgw.tools.terminal._reactor import Reactor


class FleetView(TypingProtocol):
    """What a terminal asks of the fleet it belongs to (:class:`._fleet.Fleet`)."""

    reactor: Reactor
    args: argparse.Namespace
    sink: EventSink

    def renamed(self, terminal: SimulatedTerminal) -> None: ...

    def fetch(self, terminal: SimulatedTerminal, offer: role.DownloadInfoOffer) -> None: ...


class SimulatedTerminal:
    """Drives one TerminalClient through connect → (register) → login → work → logout.

    ``send`` is bound by the bearer adapter; every client interaction ends with
    :meth:`_flush`, which sends what the client queued and re-arms the one timer.
    """

    def __init__(self, client: role.TerminalClient, fleet: FleetView, *, mode: str) -> None:
        self.client = client
        self.fleet = fleet
        self.mode = mode
        self.send: Callable[[bytes], None] | None = None
        self.ok: bool | None = None
        self.done: Deferred[bool] = Deferred()
        self._outstanding: set[int] = set()
        self._worked = False
        self._finishing = False
        self._timer: IDelayedCall | None = None
        self._heartbeat: IDelayedCall | None = None
        self._last_sent = 0.0
        self.disconnect: Callable[[], None] = lambda: None

    @property
    def serial(self) -> str:
        return self.client.serial

    @property
    def _reactor(self) -> Reactor:
        return self.fleet.reactor

    # -- bearer callbacks ------------------------------------------------------------

    def connected(self, send: Callable[[bytes], None], disconnect: Callable[[], None]) -> None:
        self.send, self.disconnect = send, disconnect
        args = self.fleet.args
        if args.register_op is not None:
            self._transmit(self.client.register(args.register_op))
        else:
            self._login()

    def frame_received(self, data: bytes) -> None:
        events = self.client.receive(data, self._reactor.seconds())
        for event in events:
            self._on_event(event)
        self._flush()

    def connection_lost(self, reason: str) -> None:
        self.send = None
        if self.ok is None:
            self.emit({"event": "error", "kind": "connection", "reason": reason})
            self._end(False)

    def connection_failed(self, reason: str) -> None:
        self.emit({"event": "error", "kind": "connect", "reason": reason})
        self._end(False)

    # -- the life cycle --------------------------------------------------------------

    def _login(self) -> None:
        try:
            frame = self.client.login(request_session_key=self.fleet.args.session_key)
        except role.TerminalStateError as exc:  # e.g. registered, but no credentials came
            self.emit({"event": "error", "kind": "login", "reason": exc.reason})
            self._end(False)
            return
        self._transmit(frame)

    def _on_event(self, event: role.Event) -> None:
        self.emit(event_record(event))
        if isinstance(event, role.Registered):
            self.fleet.renamed(self)
            if event.result == 0 and self.mode == "sms":
                return  # the credentials follow by SMS (6.3.4): log in once adopted
            if event.result in (0, 1, 6):
                self._login()
            else:
                self._end(False)
        elif isinstance(event, role.LoggedIn):
            # The post-login CONFIG_TRAP (4.4) goes before any work: it releases the
            # platform's queued requests.
            for frame in self.client.data_to_send():
                self._outstanding.add(int.from_bytes(frame[4:8], "big"))
                self._transmit(frame)
            if not self._worked:
                self._worked = True
                self._work()
        elif isinstance(event, role.LoginFailed):
            self._end(False)
        elif isinstance(event, role.LoggedOut):
            self._on_logged_out(event)
        elif isinstance(event, role.Answer | role.RequestFailed | role.RequestTimedOut):
            self._on_completed(event)
        elif isinstance(event, role.CredentialsChanged) and self.mode == "sms":
            if not self.client.logged_in and not self._worked:
                self._login()
        elif isinstance(event, role.DownloadOffered) and self.fleet.args.fetch == "http":
            self.fleet.fetch(self, event.offer)

    def _on_logged_out(self, event: role.LoggedOut) -> None:
        if self._finishing:
            self._end(True)
        elif event.by_platform and event.reason == LogoutReason.EXPIRED:
            self._login()
        elif event.by_platform:
            self._end(False)

    def _on_completed(self, event: role.Answer | role.RequestFailed | role.RequestTimedOut) -> None:
        if isinstance(event, role.RequestTimedOut) and event.command == Command.LOGIN:
            self._end(False)
            return
        self._outstanding.discard(event.sequence_id)
        if not self._outstanding and self._worked and self._done_when_answered:
            self.finish()

    @property
    def _done_when_answered(self) -> bool:
        """tcp-short, or --logout-when-done: log out once what was sent is answered."""
        return self.mode == "tcp-short" or self.fleet.args.logout_when_done

    def _work(self) -> None:
        """The exchange after the first login: traps and data, then heartbeats or logout."""
        args = self.fleet.args
        frames = []
        if args.trap:
            frames.append(self.client.trap(args.trap))
        if args.send_data is not None:
            frames.append(self.client.transparent_data(args.send_data, args.dest_ec))
        for frame in frames:
            self._outstanding.add(int.from_bytes(frame[4:8], "big"))
            self._transmit(frame)
        if self._done_when_answered and not self._outstanding:
            self.finish()
        elif self.mode not in ("tcp-short", "sms"):  # HEART_BEAT is never sent by SMS (10.4.5)
            self._schedule_heartbeat()

    def finish(self) -> None:
        """Log out with reason 0; the terminal ends when LOGOUT_ACK (or its timeout) comes."""
        if self._finishing or self.ok is not None:
            return
        self._finishing = True
        if self._heartbeat is not None and self._heartbeat.active():
            self._heartbeat.cancel()
        if self.send is None or not self.client.logged_in:
            self._end(False)
            return
        self._transmit(self.client.logout(LogoutReason.NORMAL))

    def abort(self, reason: str) -> None:
        """End now, as failed (no clean logout in time)."""
        if self.ok is None:
            self.emit({"event": "error", "kind": "aborted", "reason": reason})
            self._end(False)

    def _end(self, ok: bool) -> None:
        if self.ok is not None:
            return
        self.ok = ok and self._worked
        for call in (self._timer, self._heartbeat):
            if call is not None and call.active():
                call.cancel()
        self.disconnect()
        self.done.callback(self.ok)

    # -- sending and timers ----------------------------------------------------------

    def _transmit(self, frame: bytes) -> None:
        if self.send is None:
            return
        self.send(frame)
        self._last_sent = self._reactor.seconds()
        self._flush()

    def _flush(self) -> None:
        """Send what the client queued and re-arm the timer."""
        for frame in self.client.data_to_send():
            self._transmit(frame)
        if self.ok is not None:
            return
        deadline = self.client.next_deadline()
        if self._timer is not None and self._timer.active():
            if deadline is not None and self._timer.getTime() == deadline:
                return
            self._timer.cancel()
        self._timer = None
        if deadline is not None:
            delay = max(0.0, deadline - self._reactor.seconds())
            self._timer = self._reactor.callLater(delay, self._on_timer)

    def _on_timer(self) -> None:
        """Retransmissions go out first and leave the heartbeat timer be; then the
        events of giving up."""
        self._timer = None
        events = self.client.tick(self._reactor.seconds())
        if self.send is not None:
            for frame in self.client.data_to_send():
                self.send(frame)
        for event in events:
            self._on_event(event)
        self._flush()

    def _heartbeat_interval(self) -> float:
        """``--heartbeat`` while TLV 0x0011 still reports it, else 0x0011 (a CONFIG_SET)."""
        configured = self.fleet.args.heartbeat
        reported = self.client.heartbeat_interval
        if configured is not None and reported == reported_heartbeat(configured):
            return float(configured)
        return float(max(1, reported))

    def _schedule_heartbeat(self) -> None:
        due = self._last_sent + self._heartbeat_interval()
        self._heartbeat = self._reactor.callLater(
            max(0.0, due - self._reactor.seconds()), self._on_heartbeat
        )

    def _on_heartbeat(self) -> None:
        interval = self._heartbeat_interval()
        if self._reactor.seconds() - self._last_sent >= interval and self.client.logged_in:
            self._transmit(self.client.heartbeat())
        self._schedule_heartbeat()

    def emit(self, record: dict[str, Any]) -> None:
        self.fleet.sink.emit(self.serial, record)

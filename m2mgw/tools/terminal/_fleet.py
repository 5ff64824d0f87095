"""All simulated terminals of one run: staggered starts, shared bearers, the exit code."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure
from twisted.web.client import Agent, readBody

from m2mgw.protocol import terminal as role
from m2mgw.tools.terminal._bearers import (
    ControlFactory,
    ModemControlClient,
    SharedUdpProtocol,
    SmsModemLink,
    TcpFactory,
)
from m2mgw.tools.terminal._events import EventSink
from m2mgw.tools.terminal._identities import derive
from m2mgw.tools.terminal._reactor import Reactor
from m2mgw.tools.terminal._terminal import SimulatedTerminal

SHUTDOWN_GRACE = 5.0  # seconds the terminals get to log out at SIGINT/SIGTERM


class Fleet:
    """All simulated terminals of one run; ``run()`` fires with the exit code."""

    def __init__(
        self, reactor: Reactor, args: argparse.Namespace, sink: EventSink,
        identities: Sequence[role.TerminalIdentity],
    ) -> None:  # fmt: skip
        self.reactor = reactor
        self.args = args
        self.sink = sink
        bearer = args.mode if args.mode in ("udp", "sms") else "tcp"
        self.terminals = [
            SimulatedTerminal(
                role.TerminalClient(
                    identity, bearer, clock=reactor.seconds, encrypt_bodies=args.encrypt,
                    download="file" if args.fetch == "file" else "none",
                    want_session_key=args.session_key, post_login_trap=True,
                    habits=role.HABITS[args.compat],
                ),
                self,
                mode=args.mode,
            )
            for identity in identities
        ]  # fmt: skip
        self._udp: SharedUdpProtocol | None = None
        self._udp_port: Any = None
        self._sms: SmsModemLink | None = None
        self._remaining = len(self.terminals)
        self._stopped: list[Deferred[None]] = []
        self._grace: IDelayedCall | None = None
        self._deadline: IDelayedCall | None = None

    def run(self) -> Deferred[int]:
        """Start every terminal (staggered) and fire with 0 when all ended cleanly."""
        result: Deferred[int] = Deferred()
        if self.args.mode == "udp":
            self._udp = SharedUdpProtocol((self.args.host, self.args.udp_port))
            self._udp_port = self.reactor.listenUDP(0, self._udp)
        if self.args.mode == "sms":
            host, _, port = self.args.modem_control.rpartition(":")
            control = ModemControlClient()
            self._sms = SmsModemLink(self.reactor, control, self.args.sms_poll)
            self.reactor.connectTCP(host, int(port), ControlFactory(control, self.terminals), 30)
        failures = 0

        def ended(ok: bool) -> None:
            nonlocal failures
            self._remaining -= 1
            failures += not ok
            if self._remaining == 0:
                self._stop()
                self.sink.emit("*", {"event": "summary", "terminals": len(self.terminals),
                                     "failed": failures})  # fmt: skip
                result.callback(1 if failures else 0)
                for call in (self._grace, self._deadline):
                    if call is not None and call.active():
                        call.cancel()
                for waiter in self._stopped:
                    waiter.callback(None)

        for index, terminal in enumerate(self.terminals):
            terminal.done.addCallback(ended)
            self.reactor.callLater(index * self.args.stagger, self._start, terminal)
        if self.args.duration is not None:
            self._deadline = self.reactor.callLater(self.args.duration, self.finish_all)
        return result

    def finish_all(self) -> None:
        for terminal in self.terminals:
            terminal.finish()

    def shutdown(self) -> Deferred[None] | None:
        """Before the reactor stops (SIGINT, SIGTERM): log every terminal out, or give up
        after SHUTDOWN_GRACE; the exit code still tells whether all ended cleanly."""
        if self._remaining == 0:
            return None
        waiter: Deferred[None] = Deferred()
        self._stopped.append(waiter)
        self.finish_all()
        self._grace = self.reactor.callLater(SHUTDOWN_GRACE, self._abandon)
        return waiter

    def _abandon(self) -> None:
        for terminal in self.terminals:
            terminal.abort(f"no logout within {SHUTDOWN_GRACE:g} s of the shutdown")

    def _start(self, terminal: SimulatedTerminal) -> None:
        if terminal.ok is not None:
            return
        udp = self._udp
        if udp is not None:
            udp.add(terminal)
            terminal.connected(udp.send, lambda: udp.forget(terminal))
            return
        if self._sms is not None:
            index = self.terminals.index(terminal)
            self._sms.add(derive(self.args.msisdn, index), terminal)
            return
        self.reactor.connectTCP(self.args.host, self.args.tcp_port, TcpFactory(terminal), 30)

    def renamed(self, terminal: SimulatedTerminal) -> None:
        """A REGISTER_ACK gave ``terminal`` a new serial: route its datagrams by it."""
        if self._udp is not None:
            self._udp.add(terminal)

    def fetch(self, terminal: SimulatedTerminal, offer: role.DownloadInfoOffer) -> None:
        """Download an offered file over HTTP and check it (4.14)."""
        agent = Agent(self.reactor)  # type: ignore[arg-type]

        def check(body: bytes) -> None:
            terminal.emit({"event": "download", "ok": role.verify_download(body, offer),
                            "size": len(body)})  # fmt: skip

        def failed(reason: Failure) -> None:
            terminal.emit({"event": "download", "ok": False, "reason": reason.getErrorMessage()})

        d = agent.request(b"GET", offer.url.encode("ascii"))
        d.addCallback(readBody).addCallbacks(check, failed)

    def _stop(self) -> None:
        if self._udp_port is not None:
            self._udp_port.stopListening()
            self._udp_port = None
        if self._sms is not None:
            self._sms.stop()
            if self._sms.control.transport is not None:
                self._sms.control.transport.loseConnection()
            self._sms = None

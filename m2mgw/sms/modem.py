"""Twisted adapter for a GSM modem on a serial port: sending and receiving SMS.

:class:`ModemProtocol` is a thin shell around the sans-I/O :class:`~m2mgw.sms.at.AtEngine`:
it moves bytes, arms one timer for the engine's deadline, and turns finished commands
into Deferreds.  :class:`SerialService` keeps the serial port open, reopening it with
``ClientService``'s back-off when the device is missing or disappears (USB modems do).

Sending is made safe to retry: :meth:`ModemProtocol.send_pdu` succeeds only on
``+CMGS``; every failure says whether the PDU reached the modem (``maybe_sent``), so a
durable outbox resends only what surely was not sent, or accepts a rare duplicate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.serialport import SerialPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.protocol.errors import ProtocolError
from m2mgw.sms import at
from m2mgw.sms.pdu import SmsDeliver, decode_deliver

log = Logger()

REC_UNREAD, REC_READ = 0, 1


class ModemError(Exception):
    """A modem operation failed; ``maybe_sent`` if an SMS may have gone out anyway."""

    def __init__(self, message: str, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent


class CommandFailed(ModemError):
    """The modem answered ERROR, ``+CMS ERROR`` or ``+CME ERROR`` (nothing was sent)."""

    def __init__(self, response: at.Response) -> None:
        super().__init__(f"{response.command.line}: {response.final}")
        self.response = response
        self.error_kind = response.error_kind
        self.error_code = response.error_code


class CommandTimeout(ModemError):
    """The modem did not answer in time."""


class ModemUnavailable(ModemError):
    """No port is open, or it went away while the command was running."""


SmsHandler = Callable[[SmsDeliver], object]


def _message_reference(response: at.Response) -> int:
    """TP-MR of a successful send; an OK without it still means the SMS went out."""
    try:
        return at.parse_cmgs(response)
    except at.AtError as exc:
        raise ModemError(f"send acknowledged without a reference: {exc}", maybe_sent=True) from exc


class ModemProtocol(Protocol):
    """Drives one open modem port: init, send, read-and-delete of incoming SMS.

    ``on_sms`` is called once per received SMS-DELIVER, before the message is deleted
    from the modem storage, so an SMS survives a crash in between (it is re-read by the
    start-up sweep).  Undecodable stored messages are logged and deleted.
    """

    def __init__(
        self,
        clock: IReactorTime,
        on_sms: SmsHandler,
        *,
        storage: str = "SM",
        command_timeout: float = at.DEFAULT_TIMEOUT,
        send_timeout: float = at.SEND_TIMEOUT,
        max_timeouts: int = 3,
        retry_init_after: float = 30.0,
        settle_time: float = 0.3,
    ) -> None:
        self.clock = clock
        self.on_sms = on_sms
        self.storage = storage
        self.command_timeout = command_timeout
        self.send_timeout = send_timeout
        self.max_timeouts = max_timeouts
        self.retry_init_after = retry_init_after
        self.settle_time = settle_time
        self.ready = False
        self._engine = at.AtEngine()
        self._waiting: dict[at.Command, Deferred[at.Response]] = {}
        #: Storage slots being read or handed over, not yet deleted.
        self._claimed: set[int] = set()
        self._timer: IDelayedCall | None = None
        self._retry: IDelayedCall | None = None
        self._settle: IDelayedCall | None = None
        self._consecutive_timeouts = 0
        self._initialising = False
        self._ready_waiters: list[Deferred[None]] = []
        self._lost_waiters: list[Deferred[None]] = []
        self._connected = False

    # -- public API -------------------------------------------------------------------

    def send_pdu(self, tpdu: bytes) -> Deferred[int]:
        """Send an SMS-SUBMIT TPDU; fires with the TP-MR from ``+CMGS``.

        Fails with :class:`CommandFailed` (e.g. ``+CMS ERROR``, never sent),
        :class:`CommandTimeout` or :class:`ModemUnavailable` (``maybe_sent`` set when
        the PDU had been written).
        """
        d = self.command(at.send_command(tpdu, self.send_timeout))
        return d.addCallback(_message_reference)

    def command(self, command: at.Command) -> Deferred[at.Response]:
        """Run any AT command; fires with its OK response."""
        if not self._connected:
            return fail(ModemUnavailable("modem port is not open"))
        d: Deferred[at.Response] = Deferred()
        self._waiting[command] = d
        self._engine.send(command, self.clock.seconds())
        self._pump()
        return d

    def when_ready(self) -> Deferred[None]:
        """Fires when the init sequence has completed (at once if it has)."""
        if self.ready:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        return d

    def when_lost(self) -> Deferred[None]:
        """Fires when the port connection is lost."""
        d: Deferred[None] = Deferred()
        if not self._connected and self.transport is not None:
            d.callback(None)
        else:
            self._lost_waiters.append(d)
        return d

    # -- Protocol ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        self._connected = True
        self._engine.hold()
        self._pump()
        self._settle = self.clock.callLater(self.settle_time, self._settled)

    def _settled(self) -> None:
        """Stale output has drained: start talking (SMS indicated meanwhile are swept)."""
        self._settle = None
        self._engine.release(self.clock.seconds())
        self._initialise()

    def dataReceived(self, data: bytes) -> None:
        self._handle(self._engine.receive(data, self.clock.seconds()))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._connected = False
        self.ready = False
        for delayed in (self._timer, self._retry, self._settle):
            if delayed is not None and delayed.active():
                delayed.cancel()
        self._timer = self._retry = self._settle = None
        log.warn("Modem port lost: {reason}", reason=reason.getErrorMessage())
        aborted = self._engine.reset()
        # Observers (the service) first, so a failed send sees the port as gone.
        waiters, self._lost_waiters = self._lost_waiters, []
        for d in waiters:
            d.callback(None)
        self._handle(aborted)
        never_ready, self._ready_waiters = self._ready_waiters, []
        for d in never_ready:
            d.errback(ModemUnavailable("port lost before the modem was ready"))

    # -- internals ----------------------------------------------------------------------

    def _initialise(self) -> None:
        """(Re)run the init sequence ahead of queued commands, then sweep stored SMS."""
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._initialising or not self._connected:
            return
        self._initialising = True
        self.ready = False
        commands = at.init_commands(self.storage, self.command_timeout)
        deferreds = [self._track(command) for command in commands]
        self._engine.prepend(commands, self.clock.seconds())
        self._pump()
        for d in deferreds[:-1]:
            d.addErrback(self._init_step_failed)
        deferreds[-1].addCallbacks(self._init_done, self._init_failed)

    def _track(self, command: at.Command) -> Deferred[at.Response]:
        d: Deferred[at.Response] = Deferred()
        self._waiting[command] = d
        return d

    def _init_step_failed(self, failure: Failure) -> None:
        """Some modems refuse optional settings; the last step decides the outcome."""
        log.warn("Modem init step failed: {error}", error=failure.getErrorMessage())

    def _init_done(self, _response: at.Response) -> None:
        self._initialising = False
        self.ready = True
        log.info("Modem initialised")
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(None)
        self.command(at.list_command(at.LIST_ALL, self.command_timeout)).addCallbacks(
            self._swept, self._log_failure, errbackArgs=("listing stored SMS",)
        )

    def _init_failed(self, failure: Failure) -> None:
        self._initialising = False
        log.warn("Modem init failed: {error}", error=failure.getErrorMessage())
        if self._connected and failure.check(CommandTimeout, CommandFailed):
            self._retry = self.clock.callLater(self.retry_init_after, self._initialise)

    def _swept(self, response: at.Response) -> None:
        for index, stat, pdu in at.parse_cmgl(response):
            if stat in (REC_UNREAD, REC_READ) and self._claim(index):
                self._take(index, pdu)

    def _claim(self, index: int) -> bool:
        """Whether storage slot ``index`` is free to handle: a +CMTI arriving during
        the start-up sweep must not hand the same SMS over twice."""
        if index in self._claimed:
            return False
        self._claimed.add(index)
        return True

    def _read(self, index: int) -> None:
        if not self._claim(index):
            return
        d = self.command(at.read_command(index, self.command_timeout)).addCallback(at.parse_cmgr)
        d.addCallback(self._read_done, index)
        d.addErrback(self._release, index)
        d.addErrback(self._log_failure, f"reading SMS {index}")

    def _release(self, failure: Failure, index: int) -> Failure:
        self._claimed.discard(index)
        return failure

    def _read_done(self, entry: tuple[int, bytes] | None, index: int) -> None:
        if entry is None:  # the slot was empty
            self._claimed.discard(index)
        else:
            self._take(index, entry[1])

    def _take(self, index: int, pdu: bytes) -> None:
        """Hand a stored SMS to ``on_sms``, then delete it."""
        self._dispatch(pdu, f"stored SMS {index}")
        d = self.command(at.delete_command(index, self.command_timeout))
        d.addErrback(self._log_failure, f"deleting SMS {index}")
        d.addBoth(lambda _: self._claimed.discard(index))

    def _dispatch(self, pdu: bytes, where: str) -> None:
        try:
            deliver = decode_deliver(pdu, smsc_prefix=True)
        except ProtocolError as exc:
            log.warn("Dropping undecodable {where}: {error}", where=where, error=exc)
            return
        try:
            self.on_sms(deliver)
        except Exception:
            log.failure("SMS handler failed for {where}", where=where)

    def _log_failure(self, failure: Failure, what: str) -> None:
        log.warn("Modem: {what} failed: {error}", what=what, error=failure.getErrorMessage())

    def _handle(self, events: list[at.Event]) -> None:
        for event in events:
            self._event(event)
        self._pump()

    def _event(self, event: at.Event) -> None:
        if isinstance(event, at.Response):
            self._consecutive_timeouts = 0
            d = self._waiting.pop(event.command)
            if event.ok:
                d.callback(event)
            else:
                d.errback(CommandFailed(event))
        elif isinstance(event, at.Timeout):
            self._consecutive_timeouts += 1
            self._waiting.pop(event.command).errback(
                CommandTimeout(f"{event.command.line}: no answer", event.pdu_written)
            )
            if self._consecutive_timeouts >= self.max_timeouts and not self._initialising:
                log.warn(
                    "Modem gave no answer {count} times in a row: re-initialising",
                    count=self._consecutive_timeouts,
                )
                self._initialise()
        elif isinstance(event, at.Aborted):
            self._waiting.pop(event.command).errback(
                ModemUnavailable(f"{event.command.line}: port lost", event.pdu_written)
            )
        elif isinstance(event, at.NewMessage):
            self._read(event.index)
        elif isinstance(event, at.IncomingPdu):
            self._dispatch(event.pdu, "+CMT SMS")
        elif isinstance(event, at.StatusReport):
            log.info("Status report: {pdu}", pdu=event.pdu.hex())
        elif isinstance(event, at.Unsolicited):
            log.debug("Modem noise: {line!r}", line=event.line)
        else:
            log.info("Modem: {event}", event=event)

    def _pump(self) -> None:
        """Write what the engine wants written and arm the timer for its deadline."""
        data = self._engine.data_to_send()
        if data and self._connected and self.transport is not None:
            self.transport.write(data)
        deadline = self._engine.deadline()
        if self._timer is not None and self._timer.active():
            if deadline is not None and self._timer.getTime() == deadline:
                return
            self._timer.cancel()
        self._timer = None
        if deadline is not None and self._connected:
            delay = max(0.0, deadline - self.clock.seconds())
            self._timer = self.clock.callLater(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._handle(self._engine.advance(self.clock.seconds()))


class SerialService(Service):
    """Keeps a :class:`ModemProtocol` connected to a serial device, reopening it.

    Retries follow ``twisted.application.internet.ClientService``: the n-th consecutive
    failure waits ``retry_policy(n)`` seconds (``backoffPolicy()`` by default).
    """

    def __init__(
        self,
        reactor: Any,
        device: str,
        protocol_factory: Callable[[], ModemProtocol],
        baudrate: int = 115200,
        retry_policy: Callable[[int], float] | None = None,
    ) -> None:
        self.reactor = reactor
        self.device = device
        self.protocol_factory = protocol_factory
        self.baudrate = baudrate
        self.retry_policy = retry_policy or backoffPolicy()
        self.protocol: ModemProtocol | None = None
        self._port: SerialPort | None = None
        #: Why the last open failed, for ``/health``; None once the port opened.
        self.last_error: OSError | None = None
        self._failures = 0
        self._retry: IDelayedCall | None = None
        self._connected_waiters: list[Deferred[ModemProtocol]] = []

    def startService(self) -> None:
        super().startService()
        self._open()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        waiters, self._connected_waiters = self._connected_waiters, []
        for d in waiters:
            d.errback(ModemUnavailable("service stopped"))
        if self._port is None or self.protocol is None:
            return succeed(None)
        lost = self.protocol.when_lost()
        self._port.loseConnection()
        return lost

    def when_connected(self) -> Deferred[ModemProtocol]:
        """Fires with the protocol once the port is open (at once if it is)."""
        if self.protocol is not None:
            return succeed(self.protocol)
        d: Deferred[ModemProtocol] = Deferred()
        self._connected_waiters.append(d)
        return d

    def send_pdu(self, tpdu: bytes) -> Deferred[int]:
        """:meth:`ModemProtocol.send_pdu` on the open port, else fail at once."""
        if self.protocol is None:
            return fail(ModemUnavailable(f"{self.device} is not open"))
        return self.protocol.send_pdu(tpdu)

    def _open(self) -> None:
        self._retry = None
        protocol = self.protocol_factory()
        try:
            self._port = SerialPort(protocol, self.device, self.reactor, baudrate=self.baudrate)
        except OSError as exc:  # pyserial's SerialException is an OSError
            self.last_error = exc
            self._schedule_retry(str(exc))
            return
        self.last_error = None
        self._failures = 0
        self.protocol = protocol
        log.info("Opened modem port {device}", device=self.device)
        protocol.when_lost().addCallback(self._lost, protocol)
        waiters, self._connected_waiters = self._connected_waiters, []
        for d in waiters:
            d.callback(protocol)

    def _lost(self, _: None, protocol: ModemProtocol) -> None:
        if self.protocol is protocol:
            self.protocol = None
            self._port = None
        if self.running:
            self._schedule_retry("port lost")

    def _schedule_retry(self, why: str) -> None:
        self._failures += 1
        delay = self.retry_policy(self._failures)
        log.warn(
            "Modem port {device} unavailable ({why}); retry {attempt} in {delay:.1f} s",
            device=self.device,
            why=why,
            attempt=self._failures,
            delay=delay,
        )
        self._retry = self.reactor.callLater(delay, self._open)

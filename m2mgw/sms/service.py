"""The SMS bearer inside the gateway (spec 10.4, 9.6): modem, reassembly, durable outbox.

:class:`SmsService` owns the serial modem. Received SMS-DELIVERs are reassembled
(10.4.3) and each complete WMMP message goes to ``receive`` (the engine's) on an
:class:`SmsBearer` for its originating MSISDN; the engine identifies the terminal by
that MSISDN (10.4.4) and refuses unknown numbers. Text SMS are logged. The router
sends through the bearers of :meth:`SmsService.bearer_for`; :class:`WakeupSweep`
has it wake again the terminals whose requests still wait.

Sending is store-and-forward. :meth:`SmsBearer.send` is synchronous (the engine's
bearer contract), so it puts the message into the registry's SMS outbox, whose
in-memory view is updated at once and whose row is committed in submission order
with the writes before it (the engine's and router's own state, e.g. the request
marked sent). The message gets its concatenation reference there, recorded in the
row's transaction, and leaves only once that row is committed: a restart continues
each MSISDN's counter after the last reference given, and never gives again one a
terminal may still be reassembling (D-341). The outbox is drained at ``send_rate`` SMS
per second; each message is split when it is sent and every segment the modem
confirms (``+CMGS``) is recorded, so a retry after a modem fault or a restart resends
only the remaining segments, under the same reference.

Failures (``ModemError``):

* ``maybe_sent`` false (``+CMS ERROR``, no prompt, port lost before the PDU was
  written): nothing went out, the segment is resent after a back-off; nothing is lost
  and nothing is sent twice.
* ``maybe_sent`` true (no answer or port lost after the PDU was written): the segment
  is resent too and counted as ``uncertain``. A duplicate costs one SMS and is
  harmless: terminals drop duplicate segments (10.4.3) and answer a repeated request
  from their response cache (PD-09), while a loss would fail the exchange (SMS has no
  retransmission, PD-10).
* A message the modem refuses ``max_refusals`` times in a row (``+CMS ERROR``:
  the network or SIM rejects it) is marked failed, so it cannot block the outbox; so
  is one older than ``queue_ttl``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.application.internet import TimerService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from m2mgw.config import SmsConfig
from m2mgw.core.model import Request, Terminal, normalize_msisdn
from m2mgw.core.registry import OutgoingSms, Registry, SmsState
from m2mgw.core.session import Bearer
from m2mgw.core.stats import EngineStats
from m2mgw.protocol.errors import ProtocolError
from m2mgw.sms import at
from m2mgw.sms.bearer import (
    SEGMENT_SIZE,
    SMS_ORIGIN_PORT,
    ReferenceCounter,
    SmsReassembler,
    TextSms,
    WmmpSms,
    wmmp_submit_pdus,
)
from m2mgw.sms.modem import CommandFailed, ModemError, ModemProtocol, SerialService
from m2mgw.sms.pdu import SmsDeliver

log = Logger()

#: The shortest period of the re-wake sweep, whatever ``wakeup_min_interval`` is.
MIN_REWAKE_PERIOD = 60.0
#: Received SMS-DELIVERs remembered to drop a second presentation of the same one.
RECENT_SMS = 256


@dataclass(frozen=True)
class ModemTuning:
    """Driver timings and retry policies: the defaults suit a real modem; tests shorten them."""

    send_timeout: float = at.SEND_TIMEOUT
    settle_time: float = 0.3
    max_timeouts: int = 3
    retry_init_after: float = 30.0
    #: Seconds before reopening a missing port, by consecutive failure (1, 2, ...).
    reopen_policy: Callable[[int], float] = field(default_factory=backoffPolicy)
    #: Seconds before resending after a failed send, by consecutive failure.
    retry_policy: Callable[[int], float] = field(
        default_factory=lambda: backoffPolicy(initialDelay=1.0, maxDelay=60.0)
    )
    #: Consecutive ``+CMS``/``+CME ERROR`` refusals after which a message fails.
    max_refusals: int = 5
    #: Seconds between ``AT+CSQ`` signal readings while the modem is ready.
    signal_interval: float = 60.0


@dataclass(frozen=True, slots=True)
class Signal:
    """The modem's last ``+CSQ`` reading (27.007 8.5); 99 means unknown."""

    rssi: int
    ber: int
    measured_at: float

    @property
    def dbm(self) -> int | None:
        """The received strength: rssi 0 is -113 dBm or less, 31 is -51 dBm or more."""
        return -113 + 2 * self.rssi if 0 <= self.rssi <= 31 else None


@dataclass(slots=True)
class SmsCounts:
    """What the modem did since start-up, for the metrics."""

    #: SMS (segments) the modem confirmed sent (``+CMGS``).
    sent: int = 0
    #: SMS-DELIVERs from the modem, second presentations of one not counted.
    received: int = 0
    #: Segment sends that failed (each is retried, or its message fails).
    send_errors: int = 0
    #: Messages of the outbox given up (state failed).
    failed: int = 0


class SmsBearer:
    """A terminal's MSISDN as a bearer (``Bearer`` protocol): sends go to the outbox."""

    kind = "sms"

    def __init__(self, service: SmsService, msisdn: str) -> None:
        self._service = service
        self.address = self.host = normalize_msisdn(msisdn)

    @property
    def is_open(self) -> bool:
        return True

    def send(self, data: bytes) -> None:
        self._service.submit(self.address, data)

    def close(self) -> None:
        """Nothing to close: an MSISDN stays reachable."""

    def same_path(self, other: Bearer) -> bool:
        return other.kind == "sms" and other.address == self.address

    def __repr__(self) -> str:
        return f"<SmsBearer {self.address}>"


class SmsService(MultiService):
    """The modem, the reassembly of received SMS and the outbox sender (spec 10.4)."""

    def __init__(
        self,
        registry: Registry,
        receive: Callable[[bytes, Bearer], None],
        reactor: Any,
        config: SmsConfig,
        *,
        stats: EngineStats,
        queue_ttl: float,
        tuning: ModemTuning | None = None,
    ) -> None:
        """``reactor`` runs the timers and opens the serial port; ``stats`` counts the
        messages sent; an outbox message older than ``queue_ttl`` is given up."""
        super().__init__()
        self.registry = registry
        self._receive = receive
        self.clock: IReactorTime = reactor
        self.config = config
        self._stats = stats
        self._queue_ttl = queue_ttl
        #: Read when the service starts: replace it before ``startService``.
        self.tuning = tuning or ModemTuning()
        self.reassembler = SmsReassembler(
            self.config.platform_port, self.config.max_parts, self.config.reassembly_timeout
        )
        #: Restored from the registry at start (D-341).
        self.references = ReferenceCounter()
        #: Ids of outbox messages whose rows are not committed yet: none leaves before.
        self._storing: set[int] = set()
        self.serial = SerialService(
            reactor, self.config.device, self._new_protocol, self.config.baudrate
        )
        self.serial.setServiceParent(self)
        self._sending: Deferred[Any] | None = None
        self._idle_waiters: list[Deferred[None]] = []
        self._retry: IDelayedCall | None = None
        self._expiry: IDelayedCall | None = None
        self._awaiting_modem = False
        self._stopping = False
        self._next_send = 0.0
        self._failures = 0
        self._refusals: dict[int, int] = {}
        self._recent: OrderedDict[SmsDeliver, None] = OrderedDict()
        self.counts = SmsCounts()
        #: The last signal reading of the modem now open, if any.
        self.signal: Signal | None = None
        self._signal_poll = LoopingCall(self._read_signal)
        self._signal_poll.clock = reactor

    # ------------------------------------------------------------------ lifecycle

    def startService(self) -> None:
        self._stopping = False
        self.references = ReferenceCounter(self.registry.sms_references())
        self.serial.retry_policy = self.tuning.reopen_policy
        super().startService()
        self._signal_poll.start(self.tuning.signal_interval, now=False)
        self._pump()

    @inlineCallbacks
    def stopService(self) -> Generator[Deferred[Any], Any, None]:
        """Let a send in progress finish and be recorded, then close the port."""
        self._stopping = True
        if self._signal_poll.running:
            self._signal_poll.stop()
        for delayed in (self._retry, self._expiry):
            if delayed is not None and delayed.active():
                delayed.cancel()
        self._retry = self._expiry = None
        if self._sending is not None:
            waiter: Deferred[None] = Deferred()
            self._idle_waiters.append(waiter)
            yield waiter
        yield super().stopService()

    # ------------------------------------------------------------------ bearers

    def bearer_for(self, terminal: Terminal) -> Bearer | None:
        """The router's SMS bearer: the terminal's MSISDN, if it has one."""
        return SmsBearer(self, terminal.msisdn) if terminal.msisdn else None

    def submit(self, msisdn: str, message: bytes) -> Deferred[OutgoingSms] | None:
        """Queue a WMMP message for ``msisdn`` in the durable outbox; None if too long."""
        msisdn = normalize_msisdn(msisdn)
        limit = self.config.max_parts * SEGMENT_SIZE
        if len(message) > limit:
            log.warn(
                "Message of {size} bytes for {msisdn} exceeds {limit} bytes: not sent by SMS",
                size=len(message),
                msisdn=msisdn,
                limit=limit,
            )
            return None
        terminal = self.registry.by_msisdn(msisdn)
        port = terminal.sms_terminal_port if terminal is not None else self.config.terminal_port
        sms = OutgoingSms(
            msisdn=msisdn,
            port=port,
            message=message,
            reference=self.references.next(msisdn),
            created_at=self.clock.seconds(),
        )
        d = self.registry.enqueue_sms(sms)
        d.addErrback(lambda failure: log.failure("Outgoing SMS not stored", failure))
        self._storing.add(sms.id or 0)
        d.addBoth(self._stored, sms.id or 0)
        self._stats.count_sent(message)
        log.debug(
            "SMS {id} to {msisdn} queued ({size} bytes)",
            id=sms.id,
            msisdn=msisdn,
            size=len(message),
        )
        return d

    def _stored(self, result: object, sms_id: int) -> object:
        """The row's transaction ended: the message may leave now."""
        self._storing.discard(sms_id)
        self._pump()
        return result

    # ------------------------------------------------------------------ receiving

    def _new_protocol(self) -> ModemProtocol:
        tuning = self.tuning
        protocol = ModemProtocol(
            self.clock,
            self._on_sms,
            command_timeout=self.config.command_timeout,
            send_timeout=tuning.send_timeout,
            max_timeouts=tuning.max_timeouts,
            retry_init_after=tuning.retry_init_after,
            settle_time=tuning.settle_time,
        )
        if self.config.smsc:
            protocol.when_ready().addCallback(lambda _: self._set_smsc(protocol))
        # The first reading at once; a port lost before the modem was ready has none.
        protocol.when_ready().addCallbacks(
            lambda _: self._read_signal(), lambda failure: failure.trap(ModemError)
        )
        return protocol

    def _set_smsc(self, protocol: ModemProtocol) -> None:
        """``AT+CSCA`` with the configured SMS centre (27.005 3.3.1), before any send."""
        smsc = self.config.smsc
        toa = 145 if smsc.startswith("+") else 129
        d = protocol.command(at.Command(f'AT+CSCA="{smsc}",{toa}', self.config.command_timeout))
        d.addErrback(lambda f: log.warn("Cannot set the SMSC: {e}", e=f.getErrorMessage()))

    @property
    def modem_up(self) -> bool:
        """Whether the modem port is open and initialised, so SMS can go out."""
        protocol = self.serial.protocol
        return protocol is not None and protocol.ready

    def _read_signal(self) -> None:
        """``AT+CSQ`` (27.007 8.5) while the modem is ready; ``signal`` keeps the answer."""
        protocol = self.serial.protocol
        if protocol is None or not protocol.ready:
            self.signal = None
            return
        d = protocol.command(at.signal_command(self.config.command_timeout))
        d.addCallback(at.parse_csq)
        d.addCallbacks(self._signal_read, self._signal_failed)

    def _signal_read(self, reading: tuple[int, int]) -> None:
        self.signal = Signal(*reading, measured_at=self.clock.seconds())
        log.debug("Modem signal: rssi {rssi}, ber {ber}", rssi=reading[0], ber=reading[1])

    def _signal_failed(self, failure: Failure) -> None:
        self.signal = None
        failure.trap(ModemError, at.AtError)
        log.info("Cannot read the modem's signal: {error}", error=failure.getErrorMessage())

    def _on_sms(self, deliver: SmsDeliver) -> None:
        """One SMS-DELIVER from the modem: reassemble, then hand WMMP to the engine.

        The modem hands an SMS over before deleting it (at-least-once): the start-up
        sweep and a ``+CMTI`` can both read it, so an identical one (same originator,
        timestamp and content) seen recently is dropped.
        """
        if deliver in self._recent:
            log.debug("SMS from {msisdn} presented again: dropped", msisdn=deliver.originator)
            return
        self.counts.received += 1
        self._recent[deliver] = None
        if len(self._recent) > RECENT_SMS:
            self._recent.popitem(last=False)
        event = self.reassembler.feed(deliver, self.clock.seconds())
        self._arm_expiry()
        if isinstance(event, WmmpSms):
            log.debug(
                "WMMP message from {msisdn}: {size} bytes in {parts} SMS",
                msisdn=event.originator,
                size=len(event.message),
                parts=event.parts,
            )
            self._receive(event.message, SmsBearer(self, event.originator))
        elif isinstance(event, TextSms):
            log.info(
                "Non-WMMP SMS from {msisdn} (port {port}) ignored: {content!r}",
                msisdn=event.originator,
                port=event.dest_port,
                content=event.content,
            )

    def _arm_expiry(self) -> None:
        """One timer for the reassembler's next expiry (10.4.3)."""
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        due = self.reassembler.next_expiry()
        if due is not None and self.running and not self._stopping:
            delay = max(0.0, due - self.clock.seconds())
            self._expiry = self.clock.callLater(delay, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        self.reassembler.expire(self.clock.seconds())
        self._arm_expiry()

    # ------------------------------------------------------------------ the outbox

    def _pump(self) -> None:
        """Start the next segment send if the modem, the rate and the back-off allow."""
        if not self.running or self._stopping or self._sending is not None:
            return
        if self._retry is not None and self._retry.active():
            return
        protocol = self.serial.protocol
        now = self.clock.seconds()
        for sms in self.registry.pending_sms():
            if sms.id in self._storing:
                return  # the rows after it were submitted later: not committed either
            if now - sms.created_at > self._queue_ttl:
                self._give_up(sms, "expired in the outbox")
                continue
            # Given at submit; migration 009 numbered the messages queued before it.
            assert sms.reference is not None
            try:
                pdus = wmmp_submit_pdus(
                    sms.message,
                    sms.msisdn,
                    sms.reference,
                    dest_port=sms.port,
                    orig_port=SMS_ORIGIN_PORT,
                    max_parts=self.config.max_parts,
                )
            except ProtocolError as exc:
                self._give_up(sms, f"cannot be sent by SMS: {exc.reason}")
                continue
            if protocol is None or not protocol.ready:
                self._await_modem()
            elif now < self._next_send:
                self._retry = self.clock.callLater(self._next_send - now, self._retried)
            else:
                self._next_send = now + 1.0 / self.config.send_rate
                self._send(protocol, sms, pdus)
            return

    def _send(self, protocol: ModemProtocol, sms: OutgoingSms, pdus: list[bytes]) -> None:
        d = self._sending = protocol.send_pdu(pdus[sms.parts_sent])
        d.addCallbacks(
            self._segment_sent,
            self._segment_failed,
            callbackArgs=(sms, len(pdus)),
            errbackArgs=(sms,),
        )
        d.addBoth(self._send_done)

    def _segment_sent(self, reference: int, sms: OutgoingSms, total: int) -> None:
        self._failures = 0
        self._refusals.pop(sms.id or 0, None)
        self.counts.sent += 1
        sms.parts_sent += 1
        if sms.parts_sent >= total:
            sms.state = SmsState.SENT
            sms.error = None
        self.registry.update_sms(sms)
        log.info(
            "SMS {id} to {msisdn}: segment {part}/{total} sent (TP-MR {mr})",
            id=sms.id,
            msisdn=sms.msisdn,
            part=sms.parts_sent,
            total=total,
            mr=reference,
        )

    def _segment_failed(self, failure: Failure, sms: OutgoingSms) -> None:
        error = failure.value
        if not isinstance(error, ModemError):  # a bug: retried, as if maybe sent
            log.failure("Unexpected error sending SMS {id}", failure, id=sms.id)
            error = ModemError(failure.getErrorMessage(), maybe_sent=True)
        self._failures += 1
        self.counts.send_errors += 1
        sms.attempts += 1
        sms.error = str(error)
        if error.maybe_sent:
            sms.uncertain += 1
        refusals = self._refusals.get(sms.id or 0, 0) + 1 if isinstance(error, CommandFailed) else 0
        self._refusals[sms.id or 0] = refusals
        if refusals >= self.tuning.max_refusals:
            self._give_up(sms, f"refused {refusals} times: {error}")
            return
        self.registry.update_sms(sms)
        delay = self.tuning.retry_policy(self._failures)
        log.warn(
            "SMS {id} to {msisdn} segment {part} failed ({error}{maybe}); retry in {delay:.1f} s",
            id=sms.id,
            msisdn=sms.msisdn,
            part=sms.parts_sent + 1,
            error=error,
            maybe=", may have been sent" if error.maybe_sent else "",
            delay=delay,
        )
        if not self._stopping:
            self._retry = self.clock.callLater(delay, self._retried)

    def _send_done(self, _: object) -> None:
        self._sending = None
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self._pump()

    def _retried(self) -> None:
        self._retry = None
        self._pump()

    def _give_up(self, sms: OutgoingSms, why: str) -> None:
        self._refusals.pop(sms.id or 0, None)
        self.counts.failed += 1
        sms.state = SmsState.FAILED
        sms.error = why
        self.registry.update_sms(sms)
        log.error("SMS {id} to {msisdn} dropped: {why}", id=sms.id, msisdn=sms.msisdn, why=why)

    def _await_modem(self) -> None:
        """Resume sending once the port is open and the modem initialised."""
        if self._awaiting_modem:
            return
        self._awaiting_modem = True
        d = self.serial.when_connected()
        d.addCallback(lambda protocol: protocol.when_ready())
        d.addBoth(self._modem_ready)

    def _modem_ready(self, result: object) -> None:
        """Ready, or the port was lost again meanwhile: either way look again."""
        self._awaiting_modem = False
        if isinstance(result, Failure) and not result.check(ModemError):
            log.failure("Waiting for the modem failed", result)
        self._pump()


class Waker(Protocol):
    """What the wake-up sweep needs of the router."""

    def outstanding(self, serial: str) -> Request | None:
        """The terminal's request sent and not yet answered, if any."""
        ...

    def kick(self, terminal: Terminal) -> None:
        """Send the terminal's next queued request, or wake it by SMS (9.6)."""
        ...


class WakeupSweep(TimerService):
    """Wakes again the terminals whose requests still wait (9.6: while queued).

    Runs every ``wakeup_min_interval``, at least every :data:`MIN_REWAKE_PERIOD`
    seconds; the router decides whether a wake-up SMS is due.
    """

    def __init__(self, registry: Registry, router: Waker, clock: IReactorTime,
                 wakeup_min_interval: float) -> None:
        super().__init__(max(MIN_REWAKE_PERIOD, wakeup_min_interval), self.sweep)
        self.clock = clock
        self.registry = registry
        self.router = router

    def sweep(self) -> None:
        for terminal in self.registry.terminals():
            serial = terminal.serial
            if serial and self.registry.queued(serial) and self.router.outstanding(serial) is None:
                self.router.kick(terminal)

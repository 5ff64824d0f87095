"""What the gateway refuses: one log line per refusal, rate-limited, and counted.

Every message, datagram or connection the gateway turns away is reported here with a
:class:`Reason`. Reporting is rate-limited so that a flood (a million LOGINs from an
unknown serial, a scanner sending garbage) writes a bounded number of lines: each
source (reason and serial, else peer) has a token bucket of ``burst`` lines per
``interval``, all sources together share one of ``20 * burst``, and what the buckets
hold back is summed up in one line per reason once per ``interval`` (D-152).

The counts are kept regardless of the rate limit, per reason and per (serial,
reason), for metrics and the console; memory stays bounded because the least
recently refused serials and sources are forgotten first (D-153).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypedDict

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel

log = Logger()

#: Lines all sources together may write per interval, as a multiple of ``burst``.
TOTAL_FACTOR = 20


class Reason(StrEnum):
    """Why something was refused; stable names, for log searches and metrics."""

    UNKNOWN_SERIAL = "unknown-serial"
    NOT_PROVISIONED = "not-provisioned"
    AUTH_FAILED = "auth-failed"
    MISSING_DIGEST = "missing-digest"
    DISABLED = "disabled"
    CREDENTIALS_EXPIRED = "credentials-expired"
    BAD_VERSION = "bad-version"
    NOT_LOGGED_IN = "not-logged-in"
    WRONG_CONNECTION = "wrong-connection"
    WRONG_PATH = "wrong-path"
    MALFORMED = "malformed"
    FRAMING = "framing"
    CONNECTION_CAP = "connection-cap"
    UNMATCHED_ANSWER = "unmatched-answer"
    REJECTED = "rejected"
    #: A TRANSPARENT_DATA whose CRC16 does not match its data (answered result 4).
    CRC_MISMATCH = "crc-mismatch"
    #: A digest over the 28-byte header alone (spec 1.6 C4): no profile accepts it.
    HEADER_ONLY_DIGEST = "header-only-digest"
    #: A reported value outside its tag's range, not stored (D-240).
    OUT_OF_RANGE = "out-of-range"
    #: A platform request or answer the terminal's compatibility profile cannot take.
    PROFILE = "profile"
    #: A signed message or LOGIN accepted before, or too old to tell (D-293, D-299).
    REPLAYED = "replayed"
    #: A TCP connection closed for carrying no authenticated message in time (D-291).
    LOGIN_TIMEOUT = "login-timeout"
    #: A TCP connection closed for completing no frame in time (D-350).
    FIRST_FRAME_TIMEOUT = "first-frame-timeout"
    #: A TCP connection not logged in, closed to make room for a new one (D-351, D-352).
    EVICTED = "evicted"
    #: A datagram from outside every session, over its source's or the total rate (D-356).
    RATE_LIMITED = "rate-limited"


#: Refusals that point at an attack or a misconfigured secret: logged as warnings.
_WARN = frozenset(
    {Reason.AUTH_FAILED, Reason.MISSING_DIGEST, Reason.HEADER_ONLY_DIGEST, Reason.CONNECTION_CAP,
     Reason.EVICTED, Reason.RATE_LIMITED}
)

#: The optional terminal keys of a refusal line, in the order its text names them.
_TEXT_PARTS = (
    ("command", " {command}"),
    ("sequence_id", " seq {sequence_id}"),
    ("serial", " from {serial}"),
    ("peer", " at {peer}"),
    ("bearer", " over {bearer}"),
)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float

    def take(self, now: float, capacity: float, rate: float) -> bool:
        """Refill for the time since the last call, then spend one token if there is one."""
        self.tokens = min(capacity, self.tokens + (now - self.updated) * rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class RateLimit:
    """A token bucket per source under one bucket that all sources share.

    A source may pass ``burst`` events at once, then ``rate`` a second; all sources
    together ``total_burst``, then ``total_rate`` a second. The source's own bucket is
    tried first, so one noisy source cannot use up the shared one. Past ``max_sources``
    the least recently seen source is forgotten (it starts again with a full bucket:
    the shared one still holds). Each check is O(1). Refusal lines (D-152) and UDP
    datagrams from outside any session (D-356) are limited this way.
    """

    __slots__ = ("_buckets", "_total", "burst", "max_sources", "rate", "total_burst",
                 "total_rate")

    def __init__(self, now: float, *, burst: float, rate: float, total_burst: float,
                 total_rate: float, max_sources: int) -> None:
        self.burst, self.rate = burst, rate
        self.total_burst, self.total_rate = total_burst, total_rate
        self.max_sources = max_sources
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()
        self._total = _Bucket(float(total_burst), now)

    def __len__(self) -> int:
        """Sources remembered (at most ``max_sources``)."""
        return len(self._buckets)

    def allow(self, source: Hashable, now: float) -> bool:
        """Spend a token of ``source`` and one of the shared bucket, if both have one."""
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = _Bucket(float(self.burst), now)
            if len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source)
        if not bucket.take(now, self.burst, self.rate):
            return False
        return self._total.take(now, self.total_burst, self.total_rate)


class TerminalKeys(TypedDict, total=False):
    """The keys naming a terminal and its message in a log event (issue #8): the
    keyword parameters of :meth:`Refusals.report`, so ``**keys`` type-checks."""

    serial: str | None
    peer: str
    bearer: str
    command: str
    sequence_id: int


class Refusals:
    """Rate-limited refusal lines and per-(serial, reason) counts (issue #8)."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        burst: int = 5,
        interval: float = 60.0,
        max_sources: int = 4096,
        max_serials: int = 10_000,
    ) -> None:
        self.clock = clock
        self.burst = burst
        self.interval = interval
        self.max_sources = max_sources
        self.max_serials = max_serials
        #: Refusals per reason since start-up, logged or not.
        self.totals: Counter[Reason] = Counter()
        self._by_serial: OrderedDict[str, Counter[Reason]] = OrderedDict()
        now = clock.seconds()
        total = burst * TOTAL_FACTOR
        self._limit = RateLimit(now, burst=burst, rate=burst / interval, total_burst=total,
                                total_rate=total / interval, max_sources=max_sources)
        #: Lines held back per reason since ``_window_start``, reported by ``flush``.
        self._suppressed: Counter[Reason] = Counter()
        self._window_start = now
        self._summary: IDelayedCall | None = None

    def report(
        self,
        reason: Reason,
        detail: str = "",
        *,
        serial: str | None = None,
        peer: str | None = None,
        bearer: str | None = None,
        command: str | None = None,
        sequence_id: int | None = None,
        hint: str | None = None,
        **fields: object,
    ) -> None:
        """Count one refusal and log it unless its source or the whole gateway is over
        its rate; ``hint`` ends the line (which compatibility profile would accept the
        message, issue #10); ``fields`` are extra event keys."""
        self.totals[reason] += 1
        if serial:
            self._count(serial, reason)
        now = self.clock.seconds()
        if not self._allowed(reason, serial or peer or "", now):
            if not self._suppressed:
                self._window_start = now
                self._summary = self.clock.callLater(self.interval, self.flush)
            self._suppressed[reason] += 1
            return
        keys = {
            "serial": serial,
            "peer": peer,
            "bearer": bearer,
            "command": command,
            "sequence_id": sequence_id,
        }
        present = {k: v for k, v in keys.items() if v is not None}
        text = "Refused" + "".join(part for k, part in _TEXT_PARTS if k in present)
        text += ": {reason} ({detail})" if detail else ": {reason}"
        if hint:
            present["hint"] = hint
            text += "; {hint}"
        log.emit(
            LogLevel.warn if reason in _WARN else LogLevel.info,
            text,
            event="refusal",
            reason=reason,
            detail=detail,
            **present,
            **fields,
        )

    def counts(self, serial: str) -> dict[Reason, int]:
        """The refusals counted for ``serial`` by reason (empty once forgotten)."""
        return dict(self._by_serial.get(serial, {}))

    def flush(self) -> None:
        """Write the summary of the lines held back, one line per reason, and start a
        new window."""
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
        self._summary = None
        seconds = self.clock.seconds() - self._window_start
        for reason, count in sorted(self._suppressed.items()):
            log.info(
                "{suppressed} more {reason} refusals not logged in the last {seconds:.0f} s",
                event="refusals-suppressed",
                reason=reason,
                suppressed=count,
                seconds=seconds,
            )
        self._suppressed.clear()

    def _allowed(self, reason: Reason, source: str, now: float) -> bool:
        return self._limit.allow((reason, source), now)

    def _count(self, serial: str, reason: Reason) -> None:
        counter = self._by_serial.get(serial)
        if counter is None:
            counter = self._by_serial[serial] = Counter()
            if len(self._by_serial) > self.max_serials:
                self._by_serial.popitem(last=False)
        else:
            self._by_serial.move_to_end(serial)
        counter[reason] += 1
